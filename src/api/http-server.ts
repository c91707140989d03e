/**
 * The HTTP operations API (node:http, no framework): routing, bearer-token auth, JSON and Prometheus responses.
 * What the documents contain is status-model.ts's business, what the metrics are is metrics.ts's; this module owns
 * the socket, the routes, the status codes and the safety rules (loopback unless a token is configured).
 *
 * Routes (GET unless said; HEAD is answered like GET without a body):
 *   /v1/status                                   server version, uptime, I/O backend and why, listen addresses
 *   /v1/timelines                                every timeline, summarized
 *   /v1/tenant/:tenant_id/timeline/:timeline_id  one timeline, Neon TimelineStatus shape (404 when unknown);
 *                                                DELETE removes it while serving (admin tokens only; answers once
 *                                                its streams ended with 57P04 and its directory is gone)
 *   /v1/tenant/:tenant_id/timeline/:timeline_id/slots         the timeline's replication slots;
 *                                                POST {"name", "reserve_wal"?} creates a persistent slot (201)
 *   /v1/tenant/:tenant_id/timeline/:timeline_id/slots/:name   DELETE drops a slot (409 while a connection has it)
 *   /metrics                                     Prometheus text exposition
 *
 * The slot routes change state; they follow the same token rule as the rest (loopback without a token, anywhere
 * else only with one), so whoever may read replica positions may also manage slots, as a PostgreSQL role with
 * REPLICATION may both stream and create slots. Removing a timeline destroys data and ends other clients' streams,
 * so it is server-wide business: a tenant token gets 403 even for its own tenant.
 */
import assert from 'node:assert/strict';
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { mayAccessTenant, type TokenClaims, type TokenVerifier } from '../auth/jwt.js';
import type { ServerTls } from '../tls/server-tls.js';
import { formatListenAddress, isLoopbackHost, type ListenAddress } from '../config/listen-address.js';
import { WalcastError, type WalcastErrorCode } from '../errors.js';
import { Timeline } from '../timeline/timeline.js';
import type { Socket } from 'node:net';
import type { Logger } from '../log.js';
import { stringifyJson } from './json.js';
import type { OperationsMetrics } from './metrics.js';
import { renderTimelineDocument } from './timeline-document.js';
import { serverStatus, slotsStatus, timelineSummary, unavailableTimelineSummary, type ServerView } from './status-model.js';

/** A client must send its request headers within this time (slowloris bound; node's default is 60 s). */
export const HTTP_HEADERS_TIMEOUT_MS = 10_000;
/** A whole request, headers and (ignored) body, within this time. */
export const HTTP_REQUEST_TIMEOUT_MS = 30_000;
/** Idle keep-alive connections are closed after this long; scrapers reconnect cheaply. */
export const HTTP_KEEP_ALIVE_TIMEOUT_MS = 5_000;
/** Monitoring needs a handful of connections; this bounds what a misbehaving client can hold open. */
export const HTTP_CONNECTIONS_MAX = 256;
/**
 * How often node looks for connections past headersTimeout/requestTimeout. Node's default is 30 s, so a documented
 * 10 s header timeout really fired after up to 40 s; at 1 s it fires within 11 s, for one timer per server.
 */
export const HTTP_CONNECTIONS_CHECK_INTERVAL_MS = 1_000;
/** Header lines per request: a real client sends about ten. */
export const HTTP_HEADERS_COUNT_MAX = 64;
/** Tenant and timeline ids are 32 lowercase hex digits (Neon's TenantId / TimelineId). */
const ID_PATTERN = /^[0-9a-f]{32}$/;
const TIMELINE_ROUTE = /^\/v1\/tenant\/([^/]+)\/timeline\/([^/]+)\/?$/;
const SLOTS_ROUTE = /^\/v1\/tenant\/([^/]+)\/timeline\/([^/]+)\/slots\/?$/;
/** The tenant part of every per-tenant route. */
const TENANT_PATH = /^\/v1\/tenant\/([^/]+)(\/|$)/;
const SLOT_ROUTE = /^\/v1\/tenant\/([^/]+)\/timeline\/([^/]+)\/slots\/([^/]+)\/?$/;
/** A slot creation body is a name and a flag, well under 1 KiB; a longer body is refused unread (413). */
export const HTTP_BODY_BYTES_MAX = 4096;
const JSON_CONTENT_TYPE = 'application/json';
/** SHA-256 digest length: tokens are compared as digests so both sides have the same length. */
const DIGEST_BYTES = 32;

export interface HttpApiOptions {
  readonly listen: ListenAddress;
  /** Bearer token every request must carry; required when `listen` is not a loopback address. */
  readonly authToken: string | undefined;
  /**
   * Ed25519 JWTs accepted as Bearer tokens (Neon's model): a `tenant` token reads only /v1/tenant/<its tenant>/...,
   * a `safekeeperdata` token everything. The static authToken, when also set, stays an admin token.
   */
  readonly tokens?: TokenVerifier | undefined;
  /** Serve HTTPS with the replication port's certificate (--http-tls); reloads follow the replication port's. */
  readonly tls?: ServerTls | undefined;
  readonly view: ServerView;
  readonly metrics: OperationsMetrics;
  readonly log: Logger;
}

export interface HttpApi {
  address(): ListenAddress;
  close(): Promise<void>;
}

interface Reply {
  readonly status: number;
  readonly contentType: string;
  readonly body: string;
  readonly headers?: Record<string, string>;
}

export async function startHttpApi(options: HttpApiOptions): Promise<HttpApi> {
  if (options.authToken === undefined && options.tokens === undefined && !isLoopbackHost(options.listen.host)) {
    // Replica addresses, LSNs and xmins are not for the whole network: off loopback only with a token.
    throw new WalcastError('WALCAST_ERR_CONFIG', `--http ${formatListenAddress(options.listen)} is not a loopback address: it needs --http-auth-token-file or --auth jwt`);
  }
  const tokenDigest = options.authToken === undefined ? undefined : digest(options.authToken);
  const handler = (request: IncomingMessage, response: ServerResponse): void => {
    handleRequest(options, tokenDigest, request, response).catch((error: unknown) => {
      options.log.error({ err: error, url: request.url }, 'HTTP handler failed');
      if (!response.headersSent) send(response, request, jsonReply(500, 'internal_error', 'internal error'));
      else response.destroy();
    });
  };
  const server = options.tls === undefined ? createServer({ connectionsCheckingInterval: HTTP_CONNECTIONS_CHECK_INTERVAL_MS }, handler) : httpsServer(options.tls, handler);
  configureBounds(server);
  reserveForRequests(server);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.listen.port, options.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    address() {
      const address = server.address();
      assert.ok(address !== null && typeof address === 'object', 'the HTTP API is listening');
      return { host: address.address, port: address.port };
    },
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

/**
 * HTTPS with the replication port's material. Each handshake takes the ServerTls's current context (through
 * SNICallback when the client names a host, and the default context refreshed on every reload otherwise).
 */
function httpsServer(tls: ServerTls, handler: (request: IncomingMessage, response: ServerResponse) => void): Server {
  const pem = tls.pem();
  const server = createHttpsServer(
    { connectionsCheckingInterval: HTTP_CONNECTIONS_CHECK_INTERVAL_MS, cert: pem.cert, key: pem.key, SNICallback: (_name, done) => done(null, tls.secureContext()) },
    handler,
  );
  tls.onReload(() => {
    const current = tls.pem();
    server.setSecureContext({ cert: current.cert, key: current.key });
  });
  return server as unknown as Server;
}

function configureBounds(server: Server): void {
  server.headersTimeout = HTTP_HEADERS_TIMEOUT_MS;
  server.requestTimeout = HTTP_REQUEST_TIMEOUT_MS;
  server.keepAliveTimeout = HTTP_KEEP_ALIVE_TIMEOUT_MS;
  server.maxHeadersCount = HTTP_HEADERS_COUNT_MAX;
  assert.ok(server.headersTimeout <= server.requestTimeout, 'node requires headersTimeout <= requestTimeout');
  assert.ok(HTTP_CONNECTIONS_CHECK_INTERVAL_MS < HTTP_HEADERS_TIMEOUT_MS, 'the timeout is checked more often than it lasts');
}

/**
 * Bounds connections at HTTP_CONNECTIONS_MAX without letting slow-header clients lock /metrics and /v1/status
 * out: node's own maxConnections drops the newcomer, so 256 sockets that never finish their headers blocked the
 * API until their timeout. Here a newcomer beyond the bound closes the oldest connection that has not yet sent a
 * whole request head (a slowloris or a silent socket); only when every connection is serving a request is the
 * newcomer dropped. A real scraper sends its request at once, so the room is effectively reserved for requests.
 */
function reserveForRequests(server: Server): void {
  /** Connections that have not delivered a request head yet, oldest first (Set keeps insertion order). */
  const waiting = new Set<Socket>();
  let open = 0;
  server.on('connection', (socket: Socket) => {
    open++;
    waiting.add(socket);
    socket.once('close', () => {
      open--;
      waiting.delete(socket);
    });
    if (open <= HTTP_CONNECTIONS_MAX) return;
    const victim = waiting.values().next().value;
    assert.ok(victim !== undefined, 'the newcomer itself is waiting');
    // The newcomer is the victim only when nothing older is waiting: every other connection is serving.
    victim.destroy();
  });
  server.on('request', (request: IncomingMessage) => waiting.delete(request.socket));
}

async function handleRequest(options: HttpApiOptions, tokenDigest: Buffer | undefined, request: IncomingMessage, response: ServerResponse): Promise<void> {
  const reply = await route(options, tokenDigest, request);
  options.log.debug({ method: request.method, url: request.url, status: reply.status }, 'HTTP request');
  send(response, request, reply);
}

/** Who the request is: an admin (static token, safekeeperdata JWT, or no auth configured on loopback) or a tenant. */
type Access = { readonly admin: true } | { readonly admin: false; readonly claims: TokenClaims };

const UNAUTHORIZED: Reply = { ...jsonReply(401, 'unauthorized', 'missing or wrong bearer token'), headers: { 'www-authenticate': 'Bearer' } };

async function authorize(options: HttpApiOptions, tokenDigest: Buffer | undefined, header: string | undefined): Promise<Access | undefined> {
  if (tokenDigest === undefined && options.tokens === undefined) return { admin: true };
  if (tokenDigest !== undefined && isAuthorized(header, tokenDigest)) return { admin: true };
  if (options.tokens === undefined) return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  if (match === null) return undefined;
  try {
    const claims = await options.tokens.verify(match[1]!);
    return claims.scope === 'safekeeperdata' ? { admin: true } : { admin: false, claims };
  } catch (error) {
    if (error instanceof WalcastError) return undefined;
    throw error;
  }
}

/** Neon's per-tenant scoping: /v1/tenant/:t/... needs a token for t; everything else is server-wide (admin). */
function scopeRefusal(access: Access, path: string): Reply | undefined {
  if (access.admin) return undefined;
  const tenant = TENANT_PATH.exec(path);
  if (tenant === null) return jsonReply(403, 'forbidden', 'a tenant token cannot read server-wide endpoints: use a safekeeperdata token');
  if (!mayAccessTenant(access.claims, decodePathPart(tenant[1] ?? ''))) return jsonReply(403, 'forbidden', 'the token does not grant access to this tenant');
  return undefined;
}

async function route(options: HttpApiOptions, tokenDigest: Buffer | undefined, request: IncomingMessage): Promise<Reply> {
  const access = await authorize(options, tokenDigest, request.headers.authorization);
  if (access === undefined) return UNAUTHORIZED;
  const path = requestPath(request.url ?? '/');
  if (path === undefined) return jsonReply(400, 'bad_request', 'malformed request target');
  const refusal = scopeRefusal(access, path);
  if (refusal !== undefined) return refusal;
  const slotsMatch = SLOTS_ROUTE.exec(path) ?? SLOT_ROUTE.exec(path);
  if (slotsMatch !== null) return slotRoutes(options.view, request, slotsMatch);
  const removeMatch = request.method === 'DELETE' ? TIMELINE_ROUTE.exec(path) : null;
  if (removeMatch !== null) return removeTimelineRoute(options.view, access, removeMatch[1] ?? '', removeMatch[2] ?? '');
  if (request.method !== 'GET' && request.method !== 'HEAD') return methodNotAllowed(request, TIMELINE_ROUTE.test(path) ? 'GET, HEAD, DELETE' : 'GET, HEAD');
  const now = new Date();
  if (path === '/metrics') {
    const { contentType, body } = await options.metrics.render();
    return { status: 200, contentType, body };
  }
  if (path === '/v1/status') return jsonOk(serverStatus(options.view, now));
  if (path === '/v1/timelines') {
    return jsonOk([...options.view.timelines.list().map(timelineSummary), ...options.view.timelines.listUnavailable().map(unavailableTimelineSummary)]);
  }
  const match = TIMELINE_ROUTE.exec(path);
  if (match !== null) return timelineRoute(options.view, match[1] ?? '', match[2] ?? '', now);
  return jsonReply(404, 'not_found', `no route for ${path}`);
}

async function timelineRoute(view: ServerView, tenantText: string, timelineText: string, now: Date): Promise<Reply> {
  const timeline = findTimeline(view, tenantText, timelineText);
  if (!(timeline instanceof Timeline)) return timeline;
  const { tenantId, timelineId } = timeline;
  const status = { upstream: view.upstreamStatus?.(tenantId, timelineId), retention: view.retentionStatus?.(tenantId, timelineId), offload: view.offloadStatus?.(tenantId, timelineId) };
  // Sliced (a walsender object per replica): the event loop that sends WAL gets turns while it is written.
  return { status: 200, contentType: JSON_CONTENT_TYPE, body: (await renderTimelineDocument(timeline, now, status)) + '\n' };
}

/** Removal errors as HTTP statuses; anything else is a failed removal (500, the timeline listed as unavailable). */
const REMOVAL_ERROR_STATUS: Partial<Record<WalcastErrorCode, number>> = {
  WALCAST_ERR_NO_TIMELINE: 404,
  WALCAST_ERR_SHUTDOWN: 503,
};

/** DELETE /v1/tenant/:t/timeline/:l: removes the timeline while serving (timeline/timeline-removal.ts). */
async function removeTimelineRoute(view: ServerView, access: Access, tenantText: string, timelineText: string): Promise<Reply> {
  if (!access.admin) return jsonReply(403, 'forbidden', 'removing a timeline needs an admin token (the static token or a safekeeperdata token)');
  const ids = parseIds(tenantText, timelineText);
  if ('status' in ids) return ids;
  if (view.removeTimeline === undefined) return jsonReply(501, 'not_implemented', 'this server cannot remove timelines');
  try {
    const result = await view.removeTimeline(ids.tenantId, ids.timelineId);
    return jsonOk({ tenant_id: ids.tenantId, timeline_id: ids.timelineId, removed: true, connections_ended: result.connectionsEnded });
  } catch (error) {
    const code = error instanceof WalcastError ? error.code : undefined;
    const status = code === undefined ? 500 : (REMOVAL_ERROR_STATUS[code] ?? 500);
    return jsonReply(status, status === 500 ? 'removal_failed' : (code ?? 'removal_failed'), error instanceof Error ? error.message : String(error));
  }
}

function parseIds(tenantText: string, timelineText: string): { tenantId: string; timelineId: string } | Reply {
  const tenantId = decodePathPart(tenantText).toLowerCase();
  const timelineId = decodePathPart(timelineText).toLowerCase();
  if (!ID_PATTERN.test(tenantId)) return jsonReply(400, 'bad_request', `tenant_id must be 32 hex digits, got "${tenantText}"`);
  if (!ID_PATTERN.test(timelineId)) return jsonReply(400, 'bad_request', `timeline_id must be 32 hex digits, got "${timelineText}"`);
  return { tenantId, timelineId };
}

function findTimeline(view: ServerView, tenantText: string, timelineText: string): Timeline | Reply {
  const ids = parseIds(tenantText, timelineText);
  if ('status' in ids) return ids;
  const { tenantId, timelineId } = ids;
  if (view.timelines.removalError(tenantId, timelineId) !== undefined) return jsonReply(503, 'timeline_removing', `timeline ${tenantId}/${timelineId} is being removed`);
  const timeline = view.timelines.get(tenantId, timelineId);
  const unavailable = view.timelines.getUnavailable(tenantId, timelineId);
  if (unavailable !== undefined) return jsonReply(503, 'timeline_unavailable', `timeline ${tenantId}/${timelineId} is not served: ${unavailable.error.message}`);
  if (timeline === undefined) return jsonReply(404, 'not_found', `timeline ${tenantId}/${timelineId} is not served here`);
  return timeline;
}

/** GET/POST .../slots and DELETE .../slots/:name. */
async function slotRoutes(view: ServerView, request: IncomingMessage, match: RegExpExecArray): Promise<Reply> {
  const timeline = findTimeline(view, match[1] ?? '', match[2] ?? '');
  if (!(timeline instanceof Timeline)) return timeline;
  const slotName = match[3] === undefined ? undefined : decodePathPart(match[3]);
  try {
    if (slotName === undefined) {
      if (request.method === 'GET' || request.method === 'HEAD') return jsonOk(slotsStatus(timeline, view.retentionStatus?.(timeline.tenantId, timeline.timelineId)));
      if (request.method !== 'POST') return methodNotAllowed(request, 'GET, HEAD, POST');
      const body = await readJsonBody(request);
      if (typeof body === 'string') return jsonReply(body === 'too_large' ? 413 : 400, 'bad_request', body === 'too_large' ? `the body exceeds ${HTTP_BODY_BYTES_MAX} bytes` : body);
      return await createSlotRoute(timeline, body);
    }
    if (request.method !== 'DELETE') return methodNotAllowed(request, 'DELETE');
    await timeline.slots.drop(slotName);
    return jsonOk({ slot_name: slotName, dropped: true });
  } catch (error) {
    if (error instanceof WalcastError && SLOT_ERROR_STATUS[error.code] !== undefined) {
      return { status: SLOT_ERROR_STATUS[error.code] ?? 400, contentType: JSON_CONTENT_TYPE, body: stringifyJson({ error: error.code, sqlstate: error.sqlState, msg: error.message }) + '\n' };
    }
    throw error;
  }
}

/** Slot errors as HTTP statuses: the client's mistake (400), a missing slot (404), a conflict with live state (409). */
const SLOT_ERROR_STATUS: Partial<Record<WalcastErrorCode, number>> = {
  WALCAST_ERR_SLOT_NAME_INVALID: 400,
  WALCAST_ERR_SLOT_NAME_TOO_LONG: 400,
  WALCAST_ERR_SLOT_UNKNOWN: 404,
  WALCAST_ERR_SLOT_EXISTS: 409,
  WALCAST_ERR_SLOT_ACTIVE: 409,
  WALCAST_ERR_SLOT_LIMIT: 409,
  WALCAST_ERR_SHUTDOWN: 503,
};

async function createSlotRoute(timeline: Timeline, body: Record<string, unknown>): Promise<Reply> {
  const { name, reserve_wal: reserveWal } = body;
  if (typeof name !== 'string') return jsonReply(400, 'bad_request', 'the body needs "name", a string');
  if (reserveWal !== undefined && typeof reserveWal !== 'boolean') return jsonReply(400, 'bad_request', '"reserve_wal" must be true or false');
  // As CREATE_REPLICATION_SLOT ... RESERVE_WAL: hold from the current commit LSN.
  await timeline.slots.create(name, { temporary: false, restartLsn: reserveWal === true ? timeline.commitLsn.get() : undefined });
  const created = slotsStatus(timeline).find((slot) => slot.slot_name === name);
  return { ...jsonOk(created), status: 201 };
}

/** Reads at most HTTP_BODY_BYTES_MAX bytes of a JSON object; returns an error text instead of throwing. */
async function readJsonBody(request: IncomingMessage): Promise<Record<string, unknown> | string> {
  const declared = Number(request.headers['content-length'] ?? 0);
  if (declared > HTTP_BODY_BYTES_MAX) return 'too_large';
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of request) {
    total += (chunk as Buffer).length;
    if (total > HTTP_BODY_BYTES_MAX) return 'too_large';
    chunks.push(chunk as Buffer);
  }
  try {
    const parsed: unknown = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) return parsed as Record<string, unknown>;
  } catch {
    // Reported below.
  }
  return 'the body must be a JSON object';
}

function methodNotAllowed(request: IncomingMessage, allow: string): Reply {
  return { ...jsonReply(405, 'method_not_allowed', `method ${request.method ?? '?'} is not allowed`), headers: { allow } };
}

/**
 * The path of a request target, or undefined when it is not one: URL throws on targets such as "//" or "/\\"
 * (a network-path reference without a host), which the fuzz suite found reaching the 500 handler.
 */
function requestPath(target: string): string | undefined {
  try {
    return new URL(target, 'http://localhost').pathname;
  } catch {
    return undefined;
  }
}

/** A malformed %-escape is the client's mistake: keep the raw text, which then fails the id check with a 400. */
function decodePathPart(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/**
 * Compares digests of the presented and configured tokens with timingSafeEqual: equal-length inputs, and a
 * comparison whose time does not depend on where the first wrong byte is.
 */
export function isAuthorized(header: string | undefined, tokenDigest: Buffer): boolean {
  assert.equal(tokenDigest.length, DIGEST_BYTES);
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  const presented = digest(match?.[1] ?? '');
  assert.equal(presented.length, tokenDigest.length);
  // Even an absent header costs one comparison, so a missing token and a wrong one look alike from outside.
  return timingSafeEqual(presented, tokenDigest) && match !== null;
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

function jsonOk(document: unknown): Reply {
  return { status: 200, contentType: JSON_CONTENT_TYPE, body: stringifyJson(document) + '\n' };
}

/** Errors carry Neon's HttpErrorBody field `msg`, plus a stable `error` code for scripts. */
function jsonReply(status: number, error: string, message: string): Reply {
  return { status, contentType: JSON_CONTENT_TYPE, body: stringifyJson({ error, msg: message }) + '\n' };
}

function send(response: ServerResponse, request: IncomingMessage, reply: Reply): void {
  const body = Buffer.from(reply.body, 'utf8');
  response.writeHead(reply.status, { 'content-type': reply.contentType, 'content-length': body.length, 'cache-control': 'no-store', ...reply.headers });
  response.end(request.method === 'HEAD' ? undefined : body);
}
