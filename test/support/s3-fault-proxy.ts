/**
 * A fault-injecting HTTP proxy in front of the test S3 server (test/support/s3.ts). walcast's SDK client is pointed
 * at the proxy; every request is forwarded unchanged (method, path, headers, body: the SigV4 signature covers the
 * Host header, which s3rver checks against the same value), except those a rule matches, which are
 *   - answered with an injected status (500 InternalError, 503 SlowDown …) and an S3 XML error body, after the request
 *     body was read (a client still sending a PUT body would otherwise see a reset instead of the answer), or
 *   - delayed before being forwarded (a slow store), or
 *   - forwarded, with the connection reset part-way through the answer's body (a transfer cut short).
 * A rule applies to `times` matching requests (Infinity: a permanent failure) and counts its hits, so a test can
 * assert the fault really happened. The store behind it stays the real s3rver: nothing of the SDK is mocked.
 */
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';

export interface FaultRule {
  /** HTTP method to match (GET, PUT, HEAD …); any when absent. */
  readonly method?: string;
  /** Matches when the request path (with query) contains this text, e.g. a segment name. */
  readonly pathIncludes?: string;
  /** Answer with this status instead of forwarding. */
  readonly status?: number;
  /** Wait this long before forwarding (or before answering with `status`). */
  readonly delayMs?: number;
  /**
   * Forward the store's answer, but reset the connection after this many bytes of its body (a GET cut short mid-
   * transfer: the client has already consumed part of the body when the failure comes).
   */
  readonly cutBodyAfterBytes?: number;
  /** Matching requests the rule applies to; Infinity for a permanent fault. */
  readonly times: number;
}

export interface ActiveFault {
  readonly rule: FaultRule;
  /** Requests this rule has applied to so far. */
  readonly hits: number;
  remove(): void;
}

export interface S3FaultProxy {
  readonly endpoint: string;
  inject(rule: FaultRule): ActiveFault;
  clear(): void;
  /** Every request seen: method, path, and the status answered (injected or from the store). */
  readonly requests: readonly { method: string; path: string; status: number; injected: boolean }[];
  close(): Promise<void>;
}

/** S3's error codes for the statuses tests inject; the SDK classifies retries by status and code. */
const ERROR_CODES: Readonly<Record<number, string>> = { 500: 'InternalError', 503: 'SlowDown', 403: 'AccessDenied' };

/** The proxy in front of the S3 server listening on 127.0.0.1:`targetPort()` (read per request: it may restart). */
export async function startS3FaultProxy(targetPort: () => number): Promise<S3FaultProxy> {
  const faults: { rule: FaultRule; hits: number }[] = [];
  const requests: { method: string; path: string; status: number; injected: boolean }[] = [];

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const method = req.method ?? 'GET';
    const path = req.url ?? '/';
    const fault = faults.find((candidate) => candidate.hits < candidate.rule.times && (candidate.rule.method === undefined || candidate.rule.method === method) && path.includes(candidate.rule.pathIncludes ?? ''));
    if (fault !== undefined) fault.hits++;
    // Watched from the start: a client killed during an injected delay must not have its request forwarded later
    // (its 'close' would have fired before a listener set after the delay, and the forwarded upload would hang
    // half-sent: s3rver then held a truncated object under the key, clobbering the restarted walcast's upload).
    let clientGone = false;
    res.on('close', () => {
      clientGone = !res.writableFinished;
    });
    if (fault?.rule.delayMs !== undefined) await delay(fault.rule.delayMs);
    if (clientGone || req.destroyed) {
      res.destroy();
      return;
    }
    if (fault?.rule.status !== undefined) {
      const status = fault.rule.status;
      // Read the whole body first: the client then gets this answer, not a connection reset mid-upload.
      for await (const piece of req) void piece;
      const code = ERROR_CODES[status] ?? 'InternalError';
      const body = method === 'HEAD' ? '' : `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>injected by the test proxy</Message><RequestId>walcast-test</RequestId></Error>`;
      requests.push({ method, path, status, injected: true });
      res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body), 'x-amz-request-id': 'walcast-test' });
      res.end(body);
      return;
    }
    const upstream = httpRequest({ host: '127.0.0.1', port: targetPort(), method, path, headers: req.headers }, (answer) => {
      requests.push({ method, path, status: answer.statusCode ?? 0, injected: false });
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      const cutAfter = fault?.rule.cutBodyAfterBytes;
      if (cutAfter === undefined) {
        answer.pipe(res);
        return;
      }
      let sent = 0;
      answer.on('data', (piece: Buffer) => {
        if (sent >= cutAfter) return;
        const part = piece.subarray(0, cutAfter - sent);
        sent += part.length;
        res.write(part);
        if (sent >= cutAfter) {
          answer.destroy();
          // Flushed first, so the client really has the first bytes before the reset.
          setTimeout(() => res.destroy(), 50);
        }
      });
    });
    upstream.on('error', () => res.destroy());
    // A client that goes away (killed walcast) takes its forwarded request with it, as a real network would: the
    // store then sees an aborted upload, never a request left hanging that could complete later.
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    // A request body cut short (the client reset the connection) aborts the forwarded request: pipe alone would
    // leave it open, half-sent.
    req.on('aborted', () => upstream.destroy());
    req.on('error', () => upstream.destroy());
    req.pipe(upstream);
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    inject: (rule) => {
      const entry = { rule, hits: 0 };
      faults.push(entry);
      return {
        rule,
        get hits() {
          return entry.hits;
        },
        remove: () => {
          const index = faults.indexOf(entry);
          if (index >= 0) faults.splice(index, 1);
        },
      };
    },
    clear: () => faults.splice(0),
    requests,
    close: async () => {
      const closing = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closing;
    },
  };
}
