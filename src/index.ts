/**
 * walcast's programmatic API (`import { startWalcast } from 'walcast'`): start a WAL streaming server on a data
 * directory and stop it, for embedders and tests. It composes what `walcast serve` composes, minus the HTTP
 * operations API and signal handling (the embedding program owns its process). docs/api.md documents it.
 */
import { isLoopbackHost, type ListenAddress } from './config/listen-address.js';
import { WalcastError } from './errors.js';
import { createIoBackend, type IoChoice, type NativeStrategyChoice } from './io/select-backend.js';
import { createLogger, type Logger } from './log.js';
import { WalcastServer } from './server.js';
import { WALCAST_VERSION } from './version.js';
import { createScramVerifier } from './wire/scram.js';
import type { AuthConfig } from './wire/startup.js';

export { WalcastError } from './errors.js';
export type { Logger } from './log.js';
export { WALCAST_VERSION } from './version.js';
export type { IoChoice, NativeStrategyChoice } from './io/select-backend.js';

/** `walcast serve --max-connections`'s default: far more replicas than one process serves well. */
export const MAX_CONNECTIONS_DEFAULT = 4096;
/** `walcast serve --replica-timeout`'s default, PostgreSQL's wal_sender_timeout. */
export const REPLICA_TIMEOUT_MS_DEFAULT = 60_000;

export interface WalcastOptions {
  /** The data directory: `<tenant>/<timeline>/` segment directories, as `walcast import` writes them. */
  readonly dataDir: string;
  /** Default 127.0.0.1. `trust` auth is refused on anything but a loopback address. */
  readonly host?: string;
  /** Default 0: the system picks a free port; read it from `Walcast.port`. */
  readonly port?: number;
  /** Default trust (loopback only). With a password, replicas must log in with SCRAM-SHA-256. */
  readonly auth?: { readonly method: 'trust' } | { readonly method: 'scram-sha-256'; readonly password: string };
  /** I/O backend: `auto` (default: native on Linux when the addon loads, else ts), `native` (an error if it cannot load) or `ts`. */
  readonly io?: IoChoice;
  /** The native backend's send strategy; its default when left out. */
  readonly nativeStrategy?: NativeStrategyChoice;
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

export interface Walcast {
  /** The address the server listens on (the port the system chose when `port` was 0). */
  readonly host: string;
  readonly port: number;
  /** The I/O backend that runs and why, as `walcast serve` logs it. */
  readonly io: { readonly backend: 'ts' | 'native'; readonly strategy: string; readonly reason: string };
  readonly version: string;
  /** Stops accepting, ends every stream (bounded wait) and frees the I/O backend. Idempotent. */
  stop(): Promise<void>;
}

/** Starts a server on `options.dataDir`; resolves once it listens. Throws WalcastError (WALCAST_ERR_CONFIG ...) or RangeError for bad options. */
export async function startWalcast(options: WalcastOptions): Promise<Walcast> {
  const listen: ListenAddress = { host: options.host ?? '127.0.0.1', port: options.port ?? 0 };
  if (!Number.isInteger(listen.port) || listen.port < 0 || listen.port > 65535) throw new RangeError(`port must be 0-65535, got ${listen.port}`);
  const auth = resolveAuth(options.auth ?? { method: 'trust' }, listen);
  const selection = await createIoBackend(options.nativeStrategy === undefined ? { io: options.io ?? 'auto' } : { io: options.io ?? 'auto', strategy: options.nativeStrategy });
  const log = options.logger ?? createLogger({ level: 'warn', pretty: false });
  let server: WalcastServer;
  try {
    server = await WalcastServer.start({
      dataDir: options.dataDir,
      listen,
      auth,
      backend: selection.backend,
      maxConnections: options.maxConnections ?? MAX_CONNECTIONS_DEFAULT,
      replicaTimeoutMs: options.replicaTimeoutMs ?? REPLICA_TIMEOUT_MS_DEFAULT,
      log,
      ingest: options.ingest ?? true,
      upstreamPassword: options.upstreamPassword,
    });
  } catch (error) {
    await selection.backend.close();
    throw error;
  }
  const address = server.address();
  const io = { backend: selection.backend.kind, strategy: selection.backend.strategy, reason: selection.reason };
  return { host: address.host, port: address.port, io, version: WALCAST_VERSION, stop: () => server.stop() };
}

function resolveAuth(auth: NonNullable<WalcastOptions['auth']>, listen: ListenAddress): AuthConfig {
  if (auth.method === 'trust') {
    if (!isLoopbackHost(listen.host)) throw new WalcastError('WALCAST_ERR_CONFIG', `trust auth is allowed only on a loopback address, not ${listen.host}: use scram-sha-256 with a password`);
    return { method: 'trust' };
  }
  if (auth.password === '') throw new WalcastError('WALCAST_ERR_CONFIG', 'scram-sha-256 auth needs a non-empty password');
  return { method: 'scram-sha-256', verifier: createScramVerifier(auth.password) };
}
