/**
 * The startup phase of a server connection (postmaster.c ProcessStartupPacket, auth.c ClientAuthentication,
 * postinit.c): TLS/GSS negotiation refusals, the StartupMessage, authentication, then the ParameterStatus set,
 * BackendKeyData and the first ReadyForQuery. Every failure closes the connection with a FATAL ErrorResponse,
 * as PostgreSQL does, and rejects.
 */
import assert from 'node:assert/strict';
import { WalcastError, isWalcastError } from '../errors.js';
import {
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
import { SCRAM_MECHANISM, ScramServerExchange, parseSaslInitialResponse, type ScramVerifier } from './scram.js';

export type AuthConfig = { readonly method: 'trust' } | { readonly method: 'scram-sha-256'; readonly verifier: ScramVerifier };

export interface StartupOptions {
  readonly auth: AuthConfig;
  readonly serverVersion: string;
  readonly backendPid: number;
  readonly secretKey: number;
  readonly startupTimeoutMs: number;
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
    const packet = await readStartupMessage(conn, remainingMs);
    const result = checkStartupMessage(packet);
    await authenticate(conn, options.auth, result.user, remainingMs);
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

async function readStartupMessage(conn: PgConnection, remainingMs: () => number): Promise<Extract<StartupPacket, { type: 'startup' }>> {
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

async function authenticate(conn: PgConnection, auth: AuthConfig, user: string, remainingMs: () => number): Promise<void> {
  if (auth.method === 'trust') {
    await conn.write(authenticationOk());
    return;
  }
  await conn.write(authenticationSasl([SCRAM_MECHANISM]));
  const exchange = new ScramServerExchange(auth.verifier);
  const initial = parseSaslInitialResponse(await readPassword(conn, remainingMs));
  if (initial.mechanism !== SCRAM_MECHANISM) {
    throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `client selected an invalid SASL authentication mechanism ${quoteClientText(initial.mechanism)}`);
  }
  await conn.write(authenticationSaslContinue(exchange.serverFirst(initial.data)));
  const final = exchange.verifyClientFinal((await readPassword(conn, remainingMs)).toString('utf8'));
  if (final === undefined) {
    // The text is a contract: PostgreSQL clients and operators grep for it (auth.c auth_failed).
    throw new WalcastError('WALCAST_ERR_AUTH_FAILED', `password authentication failed for user ${quoteClientText(user)}`);
  }
  await conn.write([authenticationSaslFinal(final), authenticationOk()]);
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
