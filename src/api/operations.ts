/**
 * Wires the operations surface into `walcast serve`: turns the --http flags into settings (refusing an HTTP API off
 * loopback without a bearer token, before any socket opens), and starts the HTTP API over a running server.
 * serve-command.ts calls these two functions and creates the metrics (whose hooks the server needs at start).
 */
import { formatListenAddress, isLoopbackHost, parseListenAddress, type ListenAddress } from '../config/listen-address.js';
import { readSecret } from '../config/secrets.js';
import { WalcastError } from '../errors.js';
import type { IoSelection } from '../io/select-backend.js';
import type { Logger } from '../log.js';
import type { TokenVerifier } from '../auth/jwt.js';
import type { ServerTls } from '../tls/server-tls.js';
import type { WalcastServer } from '../server.js';
import { startHttpApi, type HttpApi } from './http-server.js';
import type { OperationsMetrics } from './metrics.js';
import type { ServerView, TcpCongestionView } from './status-model.js';
import { describeResolved, type TcpCongestion } from '../net/tcp-congestion.js';

/** The environment variable that may hold the bearer token instead of --http-auth-token-file. */
export const HTTP_AUTH_TOKEN_ENV = 'WALCAST_HTTP_AUTH_TOKEN';

export interface HttpSettings {
  readonly listen: ListenAddress;
  readonly authToken: string | undefined;
}

/** undefined when --no-http; throws WALCAST_ERR_CONFIG for a non-loopback address without a token or JWTs. */
export async function resolveHttpSettings(http: string | false, tokenFile: string | undefined, jwt = false): Promise<HttpSettings | undefined> {
  if (http === false) return undefined;
  const listen = parseListenAddress(http, '--http');
  const authToken = await readSecret({ file: tokenFile, envName: HTTP_AUTH_TOKEN_ENV, what: 'HTTP auth token' });
  if (authToken === undefined && !jwt && !isLoopbackHost(listen.host)) {
    throw new WalcastError('WALCAST_ERR_CONFIG', `--http ${formatListenAddress(listen)} is not a loopback address: it needs --http-auth-token-file or --auth jwt`);
  }
  return { listen, authToken };
}

export interface OperationsApiOptions {
  readonly settings: HttpSettings;
  readonly server: WalcastServer;
  readonly selection: IoSelection;
  /** The congestion control accepted connections get (status `io.tcp_congestion`); absent: not shown. */
  readonly tcpCongestion?: TcpCongestion | undefined;
  readonly metrics: OperationsMetrics;
  readonly startedAt: Date;
  readonly log: Logger;
  /** JWTs accepted as Bearer tokens, scoped per tenant (--auth jwt). */
  readonly tokens?: TokenVerifier | undefined;
  /** HTTPS with this material (--http-tls). */
  readonly tls?: ServerTls | undefined;
}

export async function startOperationsApi(options: OperationsApiOptions): Promise<HttpApi> {
  const { server, selection } = options;
  let api: HttpApi | undefined;
  const view: ServerView = {
    timelines: server.timelines,
    io: ioView(options),
    startedAt: options.startedAt,
    listenAddresses: () => ({
      postgres: formatListenAddress(server.address()),
      ...(api === undefined ? {} : { http: formatListenAddress(api.address()) }),
    }),
    connectionCount: () => server.connectionCount(),
    upstreamStatus: (tenantId, timelineId) =>
      server.ingest?.followers.map((follower) => follower.status()).find((status) => status.tenantId === tenantId && status.timelineId === timelineId),
    retentionStatus: (tenantId, timelineId) => server.retention?.status(tenantId, timelineId),
    offloadStatus: (tenantId, timelineId) => server.offload?.status(tenantId, timelineId),
    removeTimeline: (tenantId, timelineId) => server.removeTimeline(tenantId, timelineId, 'HTTP API'),
  };
  api = await startHttpApi({ listen: options.settings.listen, authToken: options.settings.authToken, tokens: options.tokens, tls: options.tls, view, metrics: options.metrics, log: options.log });
  const address = api.address();
  const auth = [options.settings.authToken === undefined ? undefined : 'bearer', options.tokens === undefined ? undefined : 'jwt'].filter((name) => name !== undefined).join('+');
  options.log.info({ http: formatListenAddress(address), https: options.tls !== undefined, auth: auth === '' ? 'none (loopback)' : auth }, 'HTTP API listening');
  return api;
}

/** The backend as chosen at start; the congestion control counts read at each request (a getter, never spread). */
function ioView(options: OperationsApiOptions): ServerView['io'] {
  const { selection } = options;
  const fixed = { backend: selection.backend.kind, strategy: selection.backend.strategy, reason: selection.reason, kernelTls: selection.backend.kernelTls };
  const congestion = options.tcpCongestion;
  if (congestion === undefined) return fixed;
  return {
    ...fixed,
    get tcpCongestion() {
      return tcpCongestionView(congestion);
    },
  };
}

/** The status API's view of the congestion control choice and its per-class socket counts. */
function tcpCongestionView(tcpCongestion: TcpCongestion): TcpCongestionView {
  const chosen = tcpCongestion.describe();
  const counts = tcpCongestion.counts();
  const peerView = (peer: 'loopback' | 'remote') => ({ algorithm: describeResolved(chosen[peer]), sockets_set: counts.set.get(peer) ?? 0, sockets_failed: counts.failed.get(peer) ?? 0 });
  return { loopback: peerView('loopback'), remote: peerView('remote') };
}
