/**
 * `walcast status`: asks a running server's HTTP API for its status, timelines and replicas and prints them as a
 * table for humans, or (--json) as one JSON document for scripts: {"server": /v1/status, "timelines": [each
 * /v1/tenant/:t/timeline/:tl]}. The JSON pieces are passed through as the server wrote them, so 64-bit numbers
 * (xmin, timestamps) stay exact.
 */
import assert from 'node:assert/strict';
import { renderStatus } from '../api/status-table.js';
import { readSecret } from '../config/secrets.js';

/** The whole status call (several small requests) must finish within this; a hung server is reported, not waited on. */
export const STATUS_TIMEOUT_MS = 10_000;
/** More timelines than this are listed in the summary but not fetched one by one (a bound on requests). */
export const STATUS_TIMELINES_MAX = 1000;

interface StatusFlags {
  readonly http: string;
  readonly json?: boolean;
  readonly httpAuthTokenFile?: string;
}

export async function runStatus(rawFlags: Record<string, unknown>): Promise<void> {
  const flags = rawFlags as unknown as StatusFlags;
  const token = await readSecret({ file: flags.httpAuthTokenFile, envName: 'WALCAST_HTTP_AUTH_TOKEN', what: 'HTTP auth token' });
  const client = new StatusClient(parseBaseUrl(flags.http), token, AbortSignal.timeout(STATUS_TIMEOUT_MS));
  const serverText = await client.get('/v1/status');
  const summaries = JSON.parse(await client.get('/v1/timelines')) as Array<{ tenant_id: string; timeline_id: string }>;
  assert.ok(Array.isArray(summaries), '/v1/timelines returns a list');
  const timelineTexts: string[] = [];
  for (const summary of summaries.slice(0, STATUS_TIMELINES_MAX)) {
    timelineTexts.push(await client.get(`/v1/tenant/${encodeURIComponent(summary.tenant_id)}/timeline/${encodeURIComponent(summary.timeline_id)}`));
  }
  if (flags.json === true) {
    process.stdout.write(`{"server":${serverText.trim()},"timelines":[${timelineTexts.map((text) => text.trim()).join(',')}]}\n`);
    return;
  }
  const timelines = timelineTexts.map((text) => JSON.parse(text) as Record<string, unknown>);
  process.stdout.write(renderStatus(JSON.parse(serverText) as Record<string, unknown>, timelines));
}

/** Accepts a URL or a bare HOST:PORT (as given to `serve --http`). Throws a RangeError naming the flag. */
export function parseBaseUrl(text: string): URL {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `http://${text}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new RangeError(`--http must be a URL or HOST:PORT, got "${text}"`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new RangeError(`--http must be an http(s) URL, got "${text}"`);
  return url;
}

class StatusClient {
  constructor(
    private readonly base: URL,
    private readonly token: string | undefined,
    private readonly signal: AbortSignal,
  ) {}

  /** GETs a path below the base URL and returns the body; any non-200 answer is an error carrying the server's msg. */
  async get(path: string): Promise<string> {
    assert.ok(path.startsWith('/'));
    const url = new URL(this.base.pathname.replace(/\/$/, '') + path, this.base);
    let response: Response;
    try {
      response = await fetch(url, { signal: this.signal, headers: this.token === undefined ? {} : { authorization: `Bearer ${this.token}` } });
    } catch (cause) {
      const why = this.signal.aborted ? `no answer within ${STATUS_TIMEOUT_MS} ms` : describeFetchError(cause);
      throw new Error(`cannot reach the walcast HTTP API at ${url.origin}: ${why}`, { cause });
    }
    const body = await response.text();
    if (response.status !== 200) throw new Error(`${url.pathname}: HTTP ${response.status}: ${serverMessage(body)}`);
    return body;
  }
}

function describeFetchError(cause: unknown): string {
  // undici hides the socket error (ECONNREFUSED ...) in `cause`.
  const inner = (cause as { cause?: { code?: string; message?: string } }).cause;
  return inner?.code ?? inner?.message ?? (cause as Error).message;
}

function serverMessage(body: string): string {
  try {
    const parsed = JSON.parse(body) as { msg?: unknown };
    if (typeof parsed.msg === 'string') return parsed.msg;
  } catch {
    // Not our JSON (a proxy's error page): show its start.
  }
  return body.slice(0, 200);
}
