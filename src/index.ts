/**
 * walcast's programmatic API (`import { startWalcast } from 'walcast'`): start a WAL streaming server on a data
 * directory and stop it, for embedders and tests. It composes what `walcast serve` composes, minus the HTTP
 * operations API and signal handling (the embedding program owns its process). docs/api.md documents it.
 */
import { TokenVerifier } from './auth/jwt.js';
import type { ListenAddress } from './config/listen-address.js';
import { resolveTransportSecurity } from './config/transport-security.js';
import { WalcastError } from './errors.js';
import type { KernelTlsStatus } from './io/backend.js';
import { createIoBackend, type IoChoice, type NativeStrategyChoice } from './io/select-backend.js';
import { createLogger, type Logger } from './log.js';
import { startTcpCongestion } from './net/tcp-congestion.js';
import { WalcastServer } from './server.js';
import { WALCAST_VERSION } from './version.js';
import { ServerTls, type TlsMode } from './tls/server-tls.js';
import { createScramVerifier } from './wire/scram.js';
import type { AuthConfig } from './wire/startup.js';

export { WalcastError } from './errors.js';
export type { Logger } from './log.js';
export { WALCAST_VERSION } from './version.js';
export type { IoChoice, NativeStrategyChoice } from './io/select-backend.js';
export type { KernelTlsStatus } from './io/backend.js';
export type { TlsMode } from './tls/server-tls.js';

/** `walcast serve --max-connections`'s default: far more replicas than one process serves well. */
export const MAX_CONNECTIONS_DEFAULT = 4096;
/** `walcast serve --replica-timeout`'s default, PostgreSQL's wal_sender_timeout. */
export const REPLICA_TIMEOUT_MS_DEFAULT = 60_000;

export interface WalcastOptions {
  /** The data directory: `<tenant>/<timeline>/` segment directories, as `walcast import` writes them. */
  readonly dataDir: string;
  /**
   * Default 127.0.0.1. `trust` auth is refused on anything but a loopback address, and off loopback any other auth
   * needs `tls` (jwt: with mode 'require') unless `allowPlaintext` (the rule `walcast serve` applies too).
   */
  readonly host?: string;
  /** Default 0: the system picks a free port; read it from `Walcast.port`. */
  readonly port?: number;
  /**
   * Default trust (loopback only). scram-sha-256: replicas log in with the password (SCRAM-SHA-256-PLUS with
   * channel binding when TLS is on). cert: a client certificate chaining to `tls.caFile`, CN or SAN = user. jwt:
   * an EdDSA token as the password, checked against Ed25519 public keys (PEM or JWK files), scoped per tenant.
   */
  readonly auth?: WalcastAuth;
  /** TLS on the replication port: PEM certificate and key, optional client CA, mode 'prefer' (default) or 'require'. */
  readonly tls?: WalcastTls;
  /** Off loopback, start without TLS anyway (credentials and WAL travel in clear text; a warning is logged). */
  readonly allowPlaintext?: boolean;
  /** I/O backend: `auto` (default: native on Linux when the addon loads, else ts), `native` (an error if it cannot load) or `ts`. */
  readonly io?: IoChoice;
  /** The native backend's send strategy; its default when left out. */
  readonly nativeStrategy?: NativeStrategyChoice;
  /**
   * TCP congestion control of accepted connections per peer class: algorithm names tried in order (one the kernel
   * refuses at start-up is a WALCAST_ERR_CONFIG), or 'system'. Default: loopback peers cubic, else reno (no pacing;
   * a preference, kept to the system's with a warning when refused); other peers the system's (docs/operations.md).
   */
  readonly tcpCongestion?: { readonly loopback?: 'system' | readonly string[]; readonly remote?: 'system' | readonly string[] };
  /** Default MAX_CONNECTIONS_DEFAULT. */
  readonly maxConnections?: number;
  /** A replica silent for this long is disconnected. Default REPLICA_TIMEOUT_MS_DEFAULT. */
  readonly replicaTimeoutMs?: number;
  /** Follow the upstreams recorded for timelines (`walcast timeline create`). Default true. */
  readonly ingest?: boolean;
  /** The password for those upstreams. */
  readonly upstreamPassword?: string;
  /** A pino logger; default: JSON lines on stdout at level `warn`. */
  readonly logger?: Logger;
}

export type WalcastAuth =
  | { readonly method: 'trust' }
  | { readonly method: 'scram-sha-256'; readonly password: string }
  | { readonly method: 'cert' }
  | { readonly method: 'jwt'; readonly publicKeyFiles: readonly string[] };

export interface WalcastTls {
  readonly certFile: string;
  readonly keyFile: string;
  /** Client certificates are asked for and checked against it; `auth: { method: 'cert' }` needs it. */
  readonly caFile?: string;
  /** 'require': plain connections are refused with 28000. Default 'prefer'. */
  readonly mode?: TlsMode;
}

export interface Walcast {
  /** The address the server listens on (the port the system chose when `port` was 0). */
  readonly host: string;
  readonly port: number;
  /** The I/O backend that runs and why, as `walcast serve` logs it. */
  readonly io: { readonly backend: 'ts' | 'native'; readonly strategy: string; readonly reason: string; readonly kernelTls: KernelTlsStatus };
  readonly version: string;
  /**
   * Re-reads the TLS certificate, key and CA and the token public keys (what SIGHUP does for `walcast serve`): new
   * connections use them, open ones keep theirs. Rejects, keeping the previous material, when a file is bad.
   */
  reload(): Promise<void>;
  /** Stops accepting, ends every stream (bounded wait) and frees the I/O backend. Idempotent. */
  stop(): Promise<void>;
}

/** Starts a server on `options.dataDir`; resolves once it listens. Throws WalcastError (WALCAST_ERR_CONFIG ...) or RangeError for bad options. */
export async function startWalcast(options: WalcastOptions): Promise<Walcast> {
  const listen: ListenAddress = { host: options.host ?? '127.0.0.1', port: options.port ?? 0 };
  if (!Number.isInteger(listen.port) || listen.port < 0 || listen.port > 65535) throw new RangeError(`port must be 0-65535, got ${listen.port}`);
  const authOption = options.auth ?? { method: 'trust' };
  if (options.tls?.mode !== undefined && options.tls.mode !== 'prefer' && options.tls.mode !== 'require') throw new RangeError(`tls.mode must be 'prefer' or 'require', got "${String(options.tls.mode)}"`);
  // Refused before any file is read or socket opened, by the same rule as `walcast serve`.
  const transport = resolveTransportSecurity({ host: listen.host, authMethod: authOption.method, tlsMode: options.tls === undefined ? undefined : (options.tls.mode ?? 'prefer'), allowPlaintext: options.allowPlaintext === true, vocabulary: 'api' });
  const log = options.logger ?? createLogger({ level: 'warn', pretty: false });
  if (transport.warning !== undefined) log.warn({ listen: listen.host, auth: authOption.method }, transport.warning);
  const tls = options.tls === undefined ? undefined : await ServerTls.load({ certFile: options.tls.certFile, keyFile: options.tls.keyFile, caFile: options.tls.caFile }, options.tls.mode ?? 'prefer');
  const auth = await resolveAuth(authOption, tls);
  const selection = await createIoBackend(options.nativeStrategy === undefined ? { io: options.io ?? 'auto', log } : { io: options.io ?? 'auto', strategy: options.nativeStrategy, log });
  let server: WalcastServer;
  try {
    const given = options.tcpCongestion;
    const asText = (choice: 'system' | readonly string[] | undefined): string | undefined => (choice === undefined || choice === 'system' ? choice : choice.join(','));
    const tcpCongestion = startTcpCongestion({ loopback: asText(given?.loopback), remote: asText(given?.remote) }, { loopback: 'tcpCongestion.loopback', remote: 'tcpCongestion.remote' }, log);
    server = await WalcastServer.start({
      dataDir: options.dataDir,
      listen,
      auth,
      tls,
      backend: selection.backend,
      maxConnections: options.maxConnections ?? MAX_CONNECTIONS_DEFAULT,
      replicaTimeoutMs: options.replicaTimeoutMs ?? REPLICA_TIMEOUT_MS_DEFAULT,
      log,
      ingest: options.ingest ?? true,
      upstreamPassword: options.upstreamPassword,
      tcpCongestion,
    });
  } catch (error) {
    await selection.backend.close();
    throw error;
  }
  const address = server.address();
  const io = { backend: selection.backend.kind, strategy: selection.backend.strategy, reason: selection.reason, kernelTls: selection.backend.kernelTls };
  // Both are tried, as SIGHUP does: a bad certificate file must not keep new token keys from loading.
  const reload = async (): Promise<void> => {
    const results = await Promise.allSettled([tls?.reload(), auth.method === 'jwt' ? auth.tokens.reload() : undefined]);
    const failed = results.find((result): result is PromiseRejectedResult => result.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
  };
  return { host: address.host, port: address.port, io, version: WALCAST_VERSION, reload, stop: () => server.stop() };
}

/** The auth method's material; whether it may run on this address was decided by resolveTransportSecurity. */
async function resolveAuth(auth: WalcastAuth, tls: ServerTls | undefined): Promise<AuthConfig> {
  switch (auth.method) {
    case 'trust':
      return { method: 'trust' };
    case 'scram-sha-256':
      if (auth.password === '') throw new WalcastError('WALCAST_ERR_CONFIG', 'scram-sha-256 auth needs a non-empty password');
      return { method: 'scram-sha-256', verifier: createScramVerifier(auth.password) };
    case 'cert':
      if (tls === undefined || !tls.requestClientCertificate) throw new WalcastError('WALCAST_ERR_CONFIG', 'cert auth needs tls: { certFile, keyFile, caFile } (the CA client certificates chain to)');
      return { method: 'cert' };
    case 'jwt':
      if (auth.publicKeyFiles.length === 0) throw new WalcastError('WALCAST_ERR_CONFIG', 'jwt auth needs publicKeyFiles (Ed25519, PEM or JWK)');
      return { method: 'jwt', tokens: await TokenVerifier.load(auth.publicKeyFiles) };
    default:
      throw new RangeError(`auth.method must be trust, scram-sha-256, cert or jwt, got "${String((auth as { method: unknown }).method)}"`);
  }
}

