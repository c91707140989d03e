/**
 * `walcast serve`: turns flags and environment into a server configuration, starts the server, and stops it on
 * SIGINT/SIGTERM; SIGHUP reloads the TLS certificate and key and the token public keys. Refuses unsafe
 * configurations before opening any socket (config/transport-security.ts, the rule startWalcast shares): trust auth
 * off loopback, and off loopback any auth without TLS (unless --allow-plaintext) or tokens that could travel in
 * clear text.
 */
import { mkdir } from 'node:fs/promises';
import { createOperationsMetrics, type OperationsMetrics } from '../api/metrics.js';
import { SIZE_UNLIMITED, megabytesToBytes, parseSizeMegabytes } from '../config/size.js';
import type { RetentionSettings } from '../retention/retention-task.js';
import { parseRemoteStorageUrl, type RemoteStorageConfig } from '../remote/remote-config.js';
import { resolveHttpSettings, startOperationsApi, type HttpSettings } from '../api/operations.js';
import { WalcastError } from '../errors.js';
import { createIoBackend, type IoSelection } from '../io/select-backend.js';
import { createLogger, type Logger } from '../log.js';
import { WalcastServer } from '../server.js';
import { createScramVerifier } from '../wire/scram.js';
import { TokenVerifier } from '../auth/jwt.js';
import { ServerTls, type TlsMode } from '../tls/server-tls.js';
import type { AuthConfig } from '../wire/startup.js';
import { formatListenAddress, parseListenAddress } from '../config/listen-address.js';
import { resolveTransportSecurity } from '../config/transport-security.js';
import { readSecret } from '../config/secrets.js';
import { removeServerState, writeServerState } from './server-state.js';
import { missingServeNodeFlags } from './node-flags.js';
import { startTcpCongestion, type TcpCongestion } from '../net/tcp-congestion.js';

export interface ServeFlags {
  readonly dataDir: string;
  readonly listen: string;
  readonly auth: 'trust' | 'scram-sha-256' | 'cert' | 'jwt';
  readonly passwordFile?: string;
  readonly tlsCert?: string;
  readonly tlsKey?: string;
  readonly tlsCa?: string;
  readonly tlsMode: TlsMode;
  readonly allowPlaintext?: boolean;
  readonly jwtPublicKey?: readonly string[];
  readonly httpTls?: boolean;
  readonly upstreamPasswordFile?: string;
  readonly io?: string;
  readonly nativeStrategy?: string;
  readonly tcpCongestionLoopback?: string;
  readonly tcpCongestion?: string;
  readonly maxConnections: number;
  readonly maxStartupConnections?: number;
  readonly maxStartupConnectionsPerAddress?: number;
  readonly authenticationTimeout?: number;
  readonly replicaTimeout: number;
  readonly walKeepSize: string;
  readonly remoteStorage?: string;
  readonly remoteStorageEndpoint?: string;
  readonly remoteStorageRegion?: string;
  readonly maxSlotWalKeepSize: string;
  readonly http: string | false;
  readonly httpAuthTokenFile?: string;
  readonly logLevel: string;
}

export async function runServe(rawFlags: Record<string, unknown>): Promise<void> {
  const flags = rawFlags as unknown as ServeFlags;
  const log = createLogger({ level: flags.logLevel as 'info' });
  const missingNodeFlags = missingServeNodeFlags(process.execArgv);
  if (missingNodeFlags.length > 0) {
    log.warn({ missing: missingNodeFlags, node_args: process.execArgv }, 'started without the node flags walcast serve runs with (npm start and the walcast command set them): expect heap-shrinking GC pauses of ~20 ms after busy spells (src/cli/node-flags.ts)');
  }
  const listen = parseListenAddress(flags.listen, '--listen');
  const retention = resolveRetention(flags);
  const tls = await resolveTls(flags);
  if (flags.httpTls === true && tls === undefined) throw new WalcastError('WALCAST_ERR_CONFIG', '--http-tls needs --tls-cert and --tls-key');
  // Before any secret is read: a configuration that would expose credentials is refused whatever they are.
  const transport = resolveTransportSecurity({ host: listen.host, authMethod: flags.auth, tlsMode: tls?.mode, allowPlaintext: flags.allowPlaintext === true, vocabulary: 'cli' });
  if (transport.warning !== undefined) log.warn({ listen: listen.host, auth: flags.auth }, transport.warning);
  const auth = await resolveAuth(flags, tls);
  const http = await resolveHttpSettings(flags.http, flags.httpAuthTokenFile, auth.method === 'jwt');
  const remoteStorage = resolveRemoteStorage(flags);
  const startedAt = new Date();
  // The data directory is made when missing (owner only, as PostgreSQL's): `npm start` on a fresh checkout serves
  // ./walcast-data, which nothing has created yet, and serve writes walcast.server.json into it.
  if ((await mkdir(flags.dataDir, { recursive: true, mode: 0o700 })) !== undefined) log.info({ dataDir: flags.dataDir }, 'data directory created');
  const selection = await createIoBackend({ ...resolveIoChoice(flags), log });
  const kernelTls = selection.backend.kernelTls;
  log.info({ io: selection.backend.kind, strategy: selection.backend.strategy, why: selection.reason, kernel_tls: kernelTls.state, kernel_tls_code: kernelTls.code, kernel_tls_detail: kernelTls.detail }, 'I/O backend selected');
  const tcpCongestion = startTcpCongestion({ loopback: flags.tcpCongestionLoopback, remote: flags.tcpCongestion }, { loopback: '--tcp-congestion-loopback', remote: '--tcp-congestion' }, log);
  const idleFallbacks = selection.backend.prefetchIdleFallbacks?.bind(selection.backend);
  const sendBufferStats = selection.backend.sendBufferStats?.bind(selection.backend);
  const chunkReadStats = selection.backend.chunkReadStats?.bind(selection.backend);
  const metrics = createOperationsMetrics({
    backend: selection.backend.kind,
    strategy: selection.backend.strategy,
    kernelTls,
    ...(idleFallbacks === undefined ? {} : { prefetchIdleFallbacks: idleFallbacks }),
    ...(sendBufferStats === undefined ? {} : { sendBufferStats }),
    ...(chunkReadStats === undefined ? {} : { chunkReadStats }),
    tcpCongestion,
  });
  // SIGINT/SIGTERM are caught from before anything starts: the HTTP API answers before walcast.server.json is
  // written and the server is up, and a signal in that window (a supervisor, a test) killed the process with the
  // default action — exit by signal, state file left behind. Now it stops cleanly once start-up is done.
  const signalled = waitForSignal(log);
  const server = await WalcastServer.start({
    dataDir: flags.dataDir,
    listen,
    auth,
    tls,
    backend: selection.backend,
    maxConnections: flags.maxConnections,
    maxStartupConnections: flags.maxStartupConnections,
    maxStartupConnectionsPerAddress: flags.maxStartupConnectionsPerAddress,
    authenticationTimeoutMs: flags.authenticationTimeout,
    replicaTimeoutMs: flags.replicaTimeout,
    retention,
    remoteStorage,
    log,
    hooks: metrics.hooks,
    tcpCongestion,
    upstreamPassword: await readSecret({ file: flags.upstreamPasswordFile, envName: 'WALCAST_UPSTREAM_PASSWORD', what: 'upstream password' }),
  });
  metrics.bindTimelines(
    server.timelines,
    (timeline) => server.retention?.status(timeline.tenantId, timeline.timelineId),
    (timeline) => server.offload?.status(timeline.tenantId, timeline.timelineId),
  );
  const httpSecurity = { tokens: auth.method === 'jwt' ? auth.tokens : undefined, tls: flags.httpTls === true ? tls : undefined };
  const stopHttp = await startHttpIfWanted(http, { server, selection, metrics, startedAt, log, tcpCongestion, ...httpSecurity });
  // `walcast slot` finds the running server (and its API) through this file; see server-state.ts.
  await writeServerState(flags.dataDir, { pid: process.pid, http: stopHttp.address ?? null });
  const address = server.address();
  log.info({ listen: formatListenAddress(address), port: address.port, dataDir: flags.dataDir, timelines: server.timelines.list().length, auth: auth.method, tls: tls?.mode ?? 'off' }, 'listening');
  if (server.timelines.list().length === 0) {
    log.warn({ dataDir: flags.dataDir }, 'no timelines to serve yet: add one with `walcast import --from PG_WAL_DIR` or `walcast timeline create --upstream ...`, then restart');
  }
  const stopReloading = reloadOnSighup({ tls, tokens: auth.method === 'jwt' ? auth.tokens : undefined }, log);
  await signalled;
  stopReloading();
  await stopHttp();
  await server.stop();
  await removeServerState(flags.dataDir);
  log.info('stopped');
}

/** --remote-storage and its companions; the companions alone are a usage error. */
function resolveRemoteStorage(flags: ServeFlags): RemoteStorageConfig | undefined {
  if (flags.remoteStorage === undefined) {
    if (flags.remoteStorageEndpoint !== undefined || flags.remoteStorageRegion !== undefined) {
      throw new WalcastError('WALCAST_ERR_CONFIG', '--remote-storage-endpoint and --remote-storage-region need --remote-storage');
    }
    return undefined;
  }
  return parseRemoteStorageUrl(flags.remoteStorage, { endpoint: flags.remoteStorageEndpoint, region: flags.remoteStorageRegion });
}

/** The size flags in PostgreSQL's syntax; a bad value is a RangeError (exit 2) naming the flag. */
function resolveRetention(flags: ServeFlags): RetentionSettings {
  const walKeepMegabytes = parseSizeMegabytes(flags.walKeepSize, { name: '--wal-keep-size', allowUnlimited: false });
  const capMegabytes = parseSizeMegabytes(flags.maxSlotWalKeepSize, { name: '--max-slot-wal-keep-size', allowUnlimited: true });
  return {
    walKeepBytes: megabytesToBytes(walKeepMegabytes),
    maxSlotWalKeepBytes: capMegabytes === SIZE_UNLIMITED ? undefined : megabytesToBytes(capMegabytes),
  };
}

async function resolveTls(flags: ServeFlags): Promise<ServerTls | undefined> {
  if ((flags.tlsCert === undefined) !== (flags.tlsKey === undefined)) throw new WalcastError('WALCAST_ERR_CONFIG', '--tls-cert and --tls-key go together');
  if (flags.tlsCert === undefined || flags.tlsKey === undefined) {
    if (flags.tlsCa !== undefined) throw new WalcastError('WALCAST_ERR_CONFIG', '--tls-ca needs --tls-cert and --tls-key');
    if (flags.tlsMode === 'require') throw new WalcastError('WALCAST_ERR_CONFIG', '--tls-mode require needs --tls-cert and --tls-key');
    return undefined;
  }
  return ServerTls.load({ certFile: flags.tlsCert, keyFile: flags.tlsKey, caFile: flags.tlsCa }, flags.tlsMode);
}

/** The auth method's material; whether the method may run on this address was decided by resolveTransportSecurity. */
async function resolveAuth(flags: ServeFlags, tls: ServerTls | undefined): Promise<AuthConfig> {
  switch (flags.auth) {
    case 'trust':
      return { method: 'trust' };
    case 'cert':
      if (tls === undefined || !tls.requestClientCertificate) throw new WalcastError('WALCAST_ERR_CONFIG', '--auth cert needs --tls-cert, --tls-key and --tls-ca (the CA client certificates chain to)');
      return { method: 'cert' };
    case 'jwt':
      if (flags.jwtPublicKey === undefined || flags.jwtPublicKey.length === 0) throw new WalcastError('WALCAST_ERR_CONFIG', '--auth jwt needs --jwt-public-key FILE (Ed25519, PEM or JWK)');
      return { method: 'jwt', tokens: await TokenVerifier.load(flags.jwtPublicKey) };
    case 'scram-sha-256': {
      const password = await readSecret({ file: flags.passwordFile, envName: 'WALCAST_PASSWORD', what: 'password' });
      if (password === undefined) throw new WalcastError('WALCAST_ERR_CONFIG', '--auth scram-sha-256 needs --password-file FILE or the WALCAST_PASSWORD environment variable');
      return { method: 'scram-sha-256', verifier: createScramVerifier(password) };
    }
  }
}

/** SIGHUP reloads what can change without a restart; a failed reload keeps the old material and logs why. */
function reloadOnSighup(reloadable: { tls: ServerTls | undefined; tokens: TokenVerifier | undefined }, log: Logger): () => void {
  const onHangup = (): void => {
    void (async () => {
      for (const [what, target] of [['TLS certificate and key', reloadable.tls], ['token public keys', reloadable.tokens]] as const) {
        if (target === undefined) continue;
        try {
          await target.reload();
          log.info({ what }, 'reloaded on SIGHUP');
        } catch (error) {
          log.error({ err: error, what }, 'reload on SIGHUP failed; still using the previous ones');
        }
      }
    })();
  };
  process.on('SIGHUP', onHangup);
  return () => process.off('SIGHUP', onHangup);
}

function resolveIoChoice(flags: ServeFlags): { io: 'auto' | 'native' | 'ts'; strategy?: 'sendfile' | 'writev' | 'uring'; chunkBatch?: boolean; syncReads?: boolean } {
  // The flag wins over the environment, as the issue asks.
  const io = flags.io ?? process.env.WALCAST_IO ?? 'auto';
  if (io !== 'auto' && io !== 'native' && io !== 'ts') throw new RangeError(`WALCAST_IO must be auto, native or ts, got "${io}"`);
  const strategy = flags.nativeStrategy ?? process.env.WALCAST_NATIVE_STRATEGY;
  if (strategy !== undefined && strategy !== 'sendfile' && strategy !== 'writev' && strategy !== 'uring') {
    throw new RangeError(`WALCAST_NATIVE_STRATEGY must be sendfile, writev or uring, got "${strategy}"`);
  }
  // The commit fan-out batch (replication/fanout-batch.ts) is on by default; off is for A/B measurements.
  const batch = onOffFromEnv('WALCAST_FANOUT_BATCH');
  // The TS backend's catch-up reads on the event loop while page cache serves them (io/sync-read-gate.ts); off is for
  // A/B measurements and storage where any read may block.
  const syncReads = onOffFromEnv('WALCAST_TS_SYNC_READS');
  return { io, ...(strategy === undefined ? {} : { strategy }), ...(batch === 'off' ? { chunkBatch: false } : {}), ...(syncReads === 'off' ? { syncReads: false } : {}) };
}

/** An on/off switch from the environment: unset is undefined, anything but on or off a RangeError naming it. */
function onOffFromEnv(name: string): 'on' | 'off' | undefined {
  const value = process.env[name];
  if (value !== undefined && value !== 'on' && value !== 'off') throw new RangeError(`${name} must be on or off, got "${value}"`);
  return value;
}

/** Starts the HTTP status/metrics API unless --no-http; a failure to bind stops the server rather than leave it half up. */
async function startHttpIfWanted(
  settings: HttpSettings | undefined,
  context: { server: WalcastServer; selection: IoSelection; metrics: OperationsMetrics; startedAt: Date; log: Logger; tokens: TokenVerifier | undefined; tls: ServerTls | undefined; tcpCongestion: TcpCongestion },
): Promise<(() => Promise<void>) & { address?: string }> {
  if (settings === undefined) return async () => undefined;
  try {
    const api = await startOperationsApi({ settings, ...context });
    return Object.assign(() => api.close(), { address: formatListenAddress(api.address()) });
  } catch (error) {
    await context.server.stop();
    throw error;
  }
}

function waitForSignal(log: Logger): Promise<void> {
  return new Promise((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      log.info({ signal }, 'shutting down');
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolve();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}

