/**
 * The HTTP operations API (node:http, no framework): routing, bearer-token auth, JSON and Prometheus responses.
 * What the documents contain is status-model.ts's business, what the metrics are is metrics.ts's; this module owns
 * the socket, the routes, the status codes and the safety rules (loopback unless a token is configured).
 *
 * Routes (all GET; HEAD is answered like GET without a body):
 *   /v1/status                                   server version, uptime, I/O backend and why, listen addresses
 *   /v1/timelines                                every timeline, summarized
 *   /v1/tenant/:tenant_id/timeline/:timeline_id  one timeline, Neon TimelineStatus shape (404 when unknown)
 *   /metrics                                     Prometheus text exposition
 */
import assert from 'node:assert/strict';
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { formatListenAddress, isLoopbackHost, type ListenAddress } from '../config/listen-address.js';
import { WalcastError } from '../errors.js';
import type { Logger } from '../log.js';
import { stringifyJson } from './json.js';
import type { OperationsMetrics } from './metrics.js';
import { serverStatus, timelineStatus, timelineSummary, type ServerView } from './status-model.js';

/** A client must send its request headers within this time (slowloris bound; node's default is 60 s). */
export const HTTP_HEADERS_TIMEOUT_MS = 10_000;
/** A whole request, headers and (ignored) body, within this time. */
export const HTTP_REQUEST_TIMEOUT_MS = 30_000;
/** Idle keep-alive connections are closed after this long; scrapers reconnect cheaply. */
export const HTTP_KEEP_ALIVE_TIMEOUT_MS = 5_000;
/** Monitoring needs a handful of connections; this bounds what a misbehaving client can hold open. */
export const HTTP_CONNECTIONS_MAX = 256;
/** Header lines per request: a real client sends about ten. */
export const HTTP_HEADERS_COUNT_MAX = 64;
/** Tenant and timeline ids are 32 lowercase hex digits (Neon's TenantId / TimelineId). */
const ID_PATTERN = /^[0-9a-f]{32}$/;
const TIMELINE_ROUTE = /^\/v1\/tenant\/([^/]+)\/timeline\/([^/]+)\/?$/;
const JSON_CONTENT_TYPE = 'application/json';
/** SHA-256 digest length: tokens are compared as digests so both sides have the same length. */
const DIGEST_BYTES = 32;

export interface HttpApiOptions {
  readonly listen: ListenAddress;
  /** Bearer token every request must carry; required when `listen` is not a loopback address. */
  readonly authToken: string | undefined;
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
  if (options.authToken === undefined && !isLoopbackHost(options.listen.host)) {
    // Replica addresses, LSNs and xmins are not for the whole network: off loopback only with a token.
    throw new WalcastError('WALCAST_ERR_CONFIG', `--http ${formatListenAddress(options.listen)} is not a loopback address: it needs --http-auth-token-file`);
  }
  const tokenDigest = options.authToken === undefined ? undefined : digest(options.authToken);
  const server = createServer((request, response) => {
    handleRequest(options, tokenDigest, request, response).catch((error: unknown) => {
      options.log.error({ err: error, url: request.url }, 'HTTP handler failed');
      if (!response.headersSent) send(response, request, jsonReply(500, 'internal_error', 'internal error'));
      else response.destroy();
    });
  });
  configureBounds(server);
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

function configureBounds(server: Server): void {
  server.headersTimeout = HTTP_HEADERS_TIMEOUT_MS;
  server.requestTimeout = HTTP_REQUEST_TIMEOUT_MS;
  server.keepAliveTimeout = HTTP_KEEP_ALIVE_TIMEOUT_MS;
  server.maxHeadersCount = HTTP_HEADERS_COUNT_MAX;
  server.maxConnections = HTTP_CONNECTIONS_MAX;
  assert.ok(server.headersTimeout <= server.requestTimeout, 'node requires headersTimeout <= requestTimeout');
}

async function handleRequest(options: HttpApiOptions, tokenDigest: Buffer | undefined, request: IncomingMessage, response: ServerResponse): Promise<void> {
  const reply = await route(options, tokenDigest, request);
  options.log.debug({ method: request.method, url: request.url, status: reply.status }, 'HTTP request');
  send(response, request, reply);
}

async function route(options: HttpApiOptions, tokenDigest: Buffer | undefined, request: IncomingMessage): Promise<Reply> {
  if (tokenDigest !== undefined && !isAuthorized(request.headers.authorization, tokenDigest)) {
    return { ...jsonReply(401, 'unauthorized', 'missing or wrong bearer token'), headers: { 'www-authenticate': 'Bearer' } };
  }
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    return { ...jsonReply(405, 'method_not_allowed', `method ${request.method ?? '?'} is not allowed`), headers: { allow: 'GET, HEAD' } };
  }
  const path = new URL(request.url ?? '/', 'http://localhost').pathname;
  const now = new Date();
  if (path === '/metrics') {
    const { contentType, body } = await options.metrics.render();
    return { status: 200, contentType, body };
  }
  if (path === '/v1/status') return jsonOk(serverStatus(options.view, now));
  if (path === '/v1/timelines') return jsonOk(options.view.timelines.list().map(timelineSummary));
  const match = TIMELINE_ROUTE.exec(path);
  if (match !== null) return timelineRoute(options.view, decodePathPart(match[1] ?? ''), decodePathPart(match[2] ?? ''), now);
  return jsonReply(404, 'not_found', `no route for ${path}`);
}

function timelineRoute(view: ServerView, tenantText: string, timelineText: string, now: Date): Reply {
  const tenantId = tenantText.toLowerCase();
  const timelineId = timelineText.toLowerCase();
  if (!ID_PATTERN.test(tenantId)) return jsonReply(400, 'bad_request', `tenant_id must be 32 hex digits, got "${tenantText}"`);
  if (!ID_PATTERN.test(timelineId)) return jsonReply(400, 'bad_request', `timeline_id must be 32 hex digits, got "${timelineText}"`);
  const timeline = view.timelines.get(tenantId, timelineId);
  if (timeline === undefined) return jsonReply(404, 'not_found', `timeline ${tenantId}/${timelineId} is not served here`);
  return jsonOk(timelineStatus(timeline, now, view.upstreamStatus?.(timeline.tenantId, timeline.timelineId)));
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
