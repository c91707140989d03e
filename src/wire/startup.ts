/**
 * The startup phase of a server connection (postmaster.c ProcessStartupPacket, auth.c ClientAuthentication,
 * postinit.c): TLS negotiation (SSLRequest answered 'S' when TLS is configured; GSSENCRequest always 'N'), the
 * StartupMessage, the `--tls-mode require` check (as pg_hba hostssl), authentication (trust, SCRAM-SHA-256 with
 * -PLUS over TLS, client certificates, tokens), then the ParameterStatus set, BackendKeyData and the first
 * ReadyForQuery. Every failure closes the connection with a FATAL ErrorResponse,
 * as PostgreSQL does, and rejects.
 */
import assert from 'node:assert/strict';
import { WalcastError, isWalcastError } from '../errors.js';
import {
  authenticationCleartextPassword,
  authenticationOk,
  authenticationSasl,
  authenticationSaslContinue,
  authenticationSaslFinal,
  backendKeyData,
  parameterStatus,
  readyForQuery,
} from './backend-serializer.js';
import { quoteClientText } from './client-text.js';
import type { PgConnection } from './connection.js';
import { StartupCode, type StartupPacket } from './messages.js';
import { SCRAM_MECHANISM, SCRAM_PLUS_MECHANISM, ScramServerExchange, parseSaslInitialResponse, type ScramVerifier } from './scram.js';
import type { TokenClaims, TokenVerifier } from '../auth/jwt.js';
import { clientCertificateNames, type ServerTls } from '../tls/server-tls.js';

export type AuthConfig =
  | { readonly method: 'trust' }
  | { readonly method: 'scram-sha-256'; readonly verifier: ScramVerifier }
  /** PostgreSQL's cert method: a client certificate that chains to --tls-ca, whose CN (or a SAN) is the user. */
  | { readonly method: 'cert' }
  /** Neon's model: the password is an Ed25519-signed JWT; its claims scope the connection to a tenant. */
  | { readonly method: 'jwt'; readonly tokens: TokenVerifier };

export interface StartupOptions {
  readonly auth: AuthConfig;
  readonly serverVersion: string;
  readonly backendPid: number;
  readonly secretKey: number;
  readonly startupTimeoutMs: number;
  /** TLS material and mode; undefined: SSLRequest gets 'N', as before TLS existed. */
  readonly tls?: ServerTls | undefined;
  /**
   * Checks the accepted startup parameters after authentication and before ReadyForQuery, as PostgreSQL checks the
   * database and GUCs: throwing a WalcastError refuses the connection with that FATAL error.
   */
  readonly validate?: (result: StartupResult) => void;
}

export interface StartupResult {
  readonly user: string;
  readonly database: string | undefined;
  readonly replication: string | undefined;
  readonly applicationName: string;
  /** `options` "-c k=v" / "--k=v" / "k=v" tokens, Neon style. */
  readonly options: ReadonlyMap<string, string>;
  readonly parameters: ReadonlyMap<string, string>;
  /** The token's claims when the auth method is jwt: the session checks them against the timeline it serves. */
  readonly token?: TokenClaims | undefined;
}

/** SSLRequest + GSSENCRequest: a client may try each once before its StartupMessage (libpq does at most both). */
export const MAX_NEGOTIATION_REQUESTS = 2;
/** The single byte that refuses TLS or GSS encryption; the client then continues in plain text. */
const REFUSE_ENCRYPTION = Buffer.from('N', 'latin1');

/** Accepts one connection's startup. Rejects (after closing the connection) on any failure. */
export async function acceptStartup(conn: PgConnection, options: StartupOptions): Promise<StartupResult> {
  assert.ok(options.startupTimeoutMs > 0);
  // One deadline for the whole phase, like PostgreSQL's authentication_timeout.
  const deadline = Date.now() + options.startupTimeoutMs;
  const remainingMs = (): number => Math.max(1, deadline - Date.now());
  try {
    const packet = await readStartupMessage(conn, options.tls, remainingMs);
    const checked = checkStartupMessage(packet);
    if (options.tls?.mode === 'require' && !conn.encrypted) throw tlsRequiredError(conn, checked);
    const token = await authenticate(conn, options.auth, checked.user, remainingMs);
    const result = token === undefined ? checked : { ...checked, token };
    options.validate?.(result);
    await conn.write([...sessionParameters(options.serverVersion, result), backendKeyData(options.backendPid, options.secretKey), readyForQuery('I')]);
    return result;
  } catch (error) {
    if (isWalcastError(error)) await conn.close({ sqlState: error.sqlState, message: error.message });
    else await conn.close();
    throw error;
  }
}

/** Thrown (and the connection closed without a reply) when the packet was a CancelRequest: walcast runs no queries to cancel. */
export class CancelRequestReceived extends Error {
  constructor() {
    super('cancel request received; walcast has nothing to cancel');
    this.name = 'CancelRequestReceived';
  }
}

async function readStartupMessage(conn: PgConnection, tls: ServerTls | undefined, remainingMs: () => number): Promise<Extract<StartupPacket, { type: 'startup' }>> {
  for (let negotiations = 0; ; negotiations++) {
    const packet = await conn.readStartupPacket(remainingMs());
    switch (packet.type) {
      case 'startup':
        return packet;
      case 'cancelRequest':
        throw new CancelRequestReceived();
      case 'sslRequest':
      case 'gssEncRequest':
        if (negotiations >= MAX_NEGOTIATION_REQUESTS) {
          throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', 'too many SSL/GSS negotiation requests');
        }
        if (conn.encrypted) {
          // postmaster.c: a negotiation request inside TLS is a protocol violation, not a second handshake.
          throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', 'encryption negotiation request received over an encrypted connection');
        }
        if (packet.type === 'sslRequest' && tls !== undefined) {
          await conn.startTls({ secureContext: tls.secureContext(), requestClientCertificate: tls.requestClientCertificate, handshakeTimeoutMs: remainingMs() });
          break;
        }
        await conn.write(REFUSE_ENCRYPTION);
    }
  }
}

function checkStartupMessage(packet: Extract<StartupPacket, { type: 'startup' }>): StartupResult {
  if (packet.protocolVersion !== StartupCode.protocol3) {
    const major = packet.protocolVersion >>> 16;
    const minor = packet.protocolVersion & 0xffff;
    throw new WalcastError('WALCAST_ERR_UNSUPPORTED_PROTOCOL', `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.0`);
  }
  const parameters = packet.parameters;
  const user = parameters.get('user');
  if (user === undefined || user === '') {
    // PostgreSQL: "no PostgreSQL user name specified in startup packet" (SQLSTATE 28000).
    throw new WalcastError('WALCAST_ERR_AUTH_METHOD', 'no PostgreSQL user name specified in startup packet');
  }
  return {
    user,
    database: parameters.get('database'),
    replication: parameters.get('replication'),
    applicationName: parameters.get('application_name') ?? '',
    options: parseOptions(parameters.get('options') ?? ''),
    parameters,
  };
}

/**
 * Collects k=v settings from the `options` startup parameter: "-c k=v", "-ck=v", "--k=v" and bare "k=v"
 * (postinit.c process_startup_options; Neon's pageserver and walproposer put tenant_id/timeline_id there).
 * A backslash escapes the next character, as pg_split_opts allows. Tokens without '=' are ignored.
 */
export function parseOptions(text: string): ReadonlyMap<string, string> {
  const result = new Map<string, string>();
  const tokens = splitOptions(text);
  for (let index = 0; index < tokens.length; index++) {
    let token = tokens[index]!;
    if (token === '-c') {
      token = tokens[++index] ?? '';
    } else if (token.startsWith('--')) {
      token = token.slice(2);
    } else if (token.startsWith('-c')) {
      token = token.slice(2);
    }
    const equals = token.indexOf('=');
    if (equals <= 0) continue;
    // PostgreSQL accepts "--foo-bar=x" for foo_bar.
    const name = token.slice(0, equals).replace(/-/g, '_');
    result.set(name, token.slice(equals + 1));
  }
  return result;
}

/** pg_split_opts: whitespace separates tokens; a backslash makes the next character literal. */
function splitOptions(text: string): string[] {
  const tokens: string[] = [];
  let current = '';
  let inToken = false;
  for (let index = 0; index < text.length; index++) {
    const char = text[index]!;
    if (/\s/.test(char)) {
      if (inToken) tokens.push(current);
      current = '';
      inToken = false;
      continue;
    }
    inToken = true;
    if (char === '\\' && index + 1 < text.length) current += text[++index];
    else current += char;
  }
  if (inToken) tokens.push(current);
  return tokens;
}

/** PostgreSQL parse_bool for `replication`: physical when true/on/yes/1 (any case, unambiguous prefixes too). */
export function isPhysicalReplication(value: string): boolean {
  const lower = value.trim().toLowerCase();
  if (lower === '') return false;
  if (lower === '1' || lower === 'on') return true;
  return 'true'.startsWith(lower) || 'yes'.startsWith(lower);
}

/** PostgreSQL parse_bool's false: false/off/no/0 (any case; prefixes of false and no, and "of"). */
function isParseBoolFalse(value: string): boolean {
  const lower = value.trim().toLowerCase();
  if (lower === '') return false;
  if (lower === '0' || lower === 'of' || lower === 'off') return true;
  return 'false'.startsWith(lower) || 'no'.startsWith(lower);
}

/**
 * What kind of connection the `replication` startup parameter asks for (postmaster.c ProcessStartupPacket):
 * absent or false is a normal SQL connection, true a physical walsender, "database" a logical one; any other
 * value is refused by PostgreSQL as invalid.
 */
export type ReplicationMode = 'none' | 'physical' | 'logical' | 'invalid';

export function replicationMode(value: string | undefined): ReplicationMode {
  if (value === undefined) return 'none';
  if (isPhysicalReplication(value)) return 'physical';
  if (value.toLowerCase() === 'database') return 'logical';
  return isParseBoolFalse(value) ? 'none' : 'invalid';
}

/** Runs the configured method; returns the token's claims for jwt, undefined otherwise. Throws when refused. */
async function authenticate(conn: PgConnection, auth: AuthConfig, user: string, remainingMs: () => number): Promise<TokenClaims | undefined> {
  switch (auth.method) {
    case 'trust':
      await conn.write(authenticationOk());
      return undefined;
    case 'scram-sha-256':
      await authenticateScram(conn, auth.verifier, user, remainingMs);
      return undefined;
    case 'cert':
      checkClientCertificate(conn, user);
      await conn.write(authenticationOk());
      return undefined;
    case 'jwt':
      return authenticateToken(conn, auth.tokens, remainingMs);
  }
}

async function authenticateScram(conn: PgConnection, verifier: ScramVerifier, user: string, remainingMs: () => number): Promise<void> {
  // Over TLS PostgreSQL offers the PLUS variant first (auth.c CheckSASLAuth / be-secure.c be_tls_get_certificate_hash).
  const endPoint = conn.tlsEndPoint();
  await conn.write(authenticationSasl(endPoint === undefined ? [SCRAM_MECHANISM] : [SCRAM_PLUS_MECHANISM, SCRAM_MECHANISM]));
  const initial = parseSaslInitialResponse(await readPassword(conn, remainingMs));
  const plusSelected = initial.mechanism === SCRAM_PLUS_MECHANISM && endPoint !== undefined;
  if (initial.mechanism !== SCRAM_MECHANISM && !plusSelected) {
    throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `client selected an invalid SASL authentication mechanism ${quoteClientText(initial.mechanism)}`);
  }
  const exchange = new ScramServerExchange(verifier, undefined, { plusSelected, endPoint });
  await conn.write(authenticationSaslContinue(exchange.serverFirst(initial.data)));
  const final = exchange.verifyClientFinal((await readPassword(conn, remainingMs)).toString('utf8'));
  if (final === undefined) {
    // The text is a contract: PostgreSQL clients and operators grep for it (auth.c auth_failed).
    throw new WalcastError('WALCAST_ERR_AUTH_FAILED', `password authentication failed for user ${quoteClientText(user)}`);
  }
  await conn.write([authenticationSaslFinal(final), authenticationOk()]);
}

/** auth.c CheckCertAuth: a verified client certificate whose CN (or, here, a SAN) equals the user name. */
function checkClientCertificate(conn: PgConnection, user: string): void {
  const presented = conn.clientCertificate();
  if (presented === undefined) {
    // PostgreSQL: "connection requires a valid client certificate" (auth.c ClientAuthentication, uaCert).
    throw new WalcastError('WALCAST_ERR_CERT_AUTH', 'connection requires a valid client certificate');
  }
  if (!presented.verified) {
    throw new WalcastError('WALCAST_ERR_CERT_AUTH', `certificate authentication failed for user "${user}": the certificate is not trusted (${presented.why ?? 'unverified'})`);
  }
  if (!clientCertificateNames(presented.certificate).includes(user)) {
    throw new WalcastError('WALCAST_ERR_CERT_AUTH', `certificate authentication failed for user "${user}": the certificate's CN and SANs do not name this user`);
  }
}

/** The token travels as a cleartext password message, as Neon's compute sends it (so only over TLS off loopback). */
async function authenticateToken(conn: PgConnection, tokens: TokenVerifier, remainingMs: () => number): Promise<TokenClaims> {
  await conn.write(authenticationCleartextPassword());
  const payload = await readPassword(conn, remainingMs);
  // PasswordMessage: the password as a NUL-terminated string.
  const end = payload.indexOf(0);
  const token = payload.subarray(0, end < 0 ? payload.length : end).toString('utf8');
  const claims = await tokens.verify(token);
  await conn.write(authenticationOk());
  return claims;
}

/** pg_hba hostssl refusing a plain connection, in PostgreSQL's words plus the fix. */
function tlsRequiredError(conn: PgConnection, startup: StartupResult): WalcastError {
  const host = conn.remoteAddress.replace(/:\d+$/, '');
  const kind = startup.replication === undefined ? 'connection' : 'replication connection';
  return new WalcastError('WALCAST_ERR_TLS_REQUIRED', `no pg_hba.conf entry for ${kind} from host "${host}", user "${startup.user}", no encryption: walcast requires TLS (--tls-mode require)`, {
    hint: 'connect with sslmode=require (or verify-ca / verify-full)',
  });
}

/** The next 'p' message; a client that gives up sends Terminate or hangs up, which ends the startup. */
async function readPassword(conn: PgConnection, remainingMs: () => number): Promise<Buffer> {
  const message = await conn.readMessage(remainingMs());
  if (message.type === 'password') return message.payload;
  if (message.type === 'terminate') throw new WalcastError('WALCAST_ERR_AUTH_METHOD', 'the client ended the connection during authentication');
  throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `expected SASL response, got message type "${message.type}"`);
}

/** The ParameterStatus set PostgreSQL 15 sends a replication connection (guc.c GUC_REPORT variables). */
function sessionParameters(serverVersion: string, result: StartupResult): Buffer[] {
  const values: Array<[string, string]> = [
    ['application_name', result.applicationName],
    // PostgreSQL reports the encoding a client asked for; replication clients normally ask for none.
    ['client_encoding', result.parameters.get('client_encoding') ?? 'SQL_ASCII'],
    ['DateStyle', 'ISO, MDY'],
    ['default_transaction_read_only', 'off'],
    ['in_hot_standby', 'off'],
    ['integer_datetimes', 'on'],
    ['IntervalStyle', 'postgres'],
    ['is_superuser', 'off'],
    ['server_encoding', 'SQL_ASCII'],
    ['server_version', serverVersion],
    ['session_authorization', result.user],
    ['standard_conforming_strings', 'on'],
    ['TimeZone', 'UTC'],
  ];
  return values.map(([name, value]) => parameterStatus(name, value));
}
