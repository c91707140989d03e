/**
 * Fault suite, whole sessions: a real WalcastServer on loopback (stored WAL from a real PostgreSQL 15) fed random and
 * mutated startup packets, frontend messages, replication commands and r/h/z feedback, and its HTTP API fed random
 * request heads, while one bystander replica streams throughout. Properties: no session fails with a bug (an
 * error-level log), every ErrorResponse carries a catalogued SQLSTATE, no HTTP 500, and the bystander receives WAL
 * byte-identical to the primary's.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import pino from 'pino';
import { createOperationsMetrics } from '../src/api/metrics.js';
import { startHttpApi, type HttpApi } from '../src/api/http-server.js';
import { createIoBackend } from '../src/io/select-backend.js';
import { formatLsn } from '../src/lsn.js';
import { WalcastServer } from '../src/server.js';
import { connectReplication, type ReplicationClient, type ReplicationStream } from '../src/wire/client.js';
import { isCataloguedSqlState, fuzzParameters } from './support/fuzz.js';
import { queryMessage, startupPacket, typedMessage } from './support/raw-client.js';
import { makeStoredWal, type StoredWal } from './support/stored-wal.js';
import { backendUnderTest } from './support/walcast.js';

const TIMEOUT_MS = 300_000;
/** How long a case's connection is watched for answers before the client hangs up. */
const CASE_WATCH_MS = 60;

let wal: StoredWal;
let server: WalcastServer;
let api: HttpApi;
let bystander: ReplicationClient;
let bystanderStream: ReplicationStream;
const bugLogs: string[] = [];

before(async () => {
  wal = await makeStoredWal('walcast-fuzz');
  const { backend } = await createIoBackend(backendUnderTest());
  // Error-level lines are bugs ('session failed', 'HTTP handler failed'): collect them.
  const log = pino({ level: 'error' }, { write: (line: string) => void bugLogs.push(line) });
  server = await WalcastServer.start({ dataDir: wal.dataDir, listen: { host: '127.0.0.1', port: 0 }, auth: { method: 'trust' }, backend, maxConnections: 4096, replicaTimeoutMs: 60_000, log });
  const metrics = createOperationsMetrics({ backend: backend.kind, strategy: backend.strategy });
  metrics.bindTimelines(server.timelines);
  const view = { timelines: server.timelines, io: { backend: backend.kind, strategy: backend.strategy, reason: 'test' }, startedAt: new Date(), listenAddresses: () => ({ postgres: '127.0.0.1' }), connectionCount: () => server.connectionCount() };
  api = await startHttpApi({ listen: { host: '127.0.0.1', port: 0 }, authToken: undefined, view, metrics, log });
  bystander = await connectReplication({ host: '127.0.0.1', port: server.address().port, user: 'repl', applicationName: 'bystander', timeoutMs: 30_000 });
  bystanderStream = await bystander.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(wal.startLsn)}`);
}, { timeout: TIMEOUT_MS });

after(async () => {
  await api?.close();
  await server?.stop();
});

/** Sends `bytes` on a fresh connection, watches the answer briefly, hangs up; returns what came back. */
function exchange(port: number, bytes: Buffer): Promise<{ received: Buffer; closedByServer: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let closedByServer = false;
    const socket = connect({ host: '127.0.0.1', port }, () => socket.write(bytes));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => undefined);
    socket.on('end', () => (closedByServer = true));
    const timer = setTimeout(() => socket.destroy(), CASE_WATCH_MS);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ received: Buffer.concat(chunks), closedByServer });
    });
  });
}

/**
 * Runs one case and checks that the server logged nothing at error level meanwhile. Whatever fails (an assertion on
 * the answer, or a bug log), the error names the server's error-level lines of this case, formatted for reading
 * (message, error and stack), so fast-check's report of the shrunk counterexample carries what is needed to
 * reproduce and diagnose it, not only "expected [] to equal [...]".
 */
/** The failure of the last failing case: after shrinking, the counterexample fast-check reports. */
let lastCaseFailure: string | undefined;

async function checkCase(run: () => Promise<void>): Promise<void> {
  const logsBefore = bugLogs.length;
  let failure: unknown;
  try {
    await run();
  } catch (error) {
    failure = error;
  }
  // The server logs asynchronously after the client hung up: give it a turn.
  await new Promise((resolve) => setImmediate(resolve));
  const lines = bugLogs.slice(logsBefore);
  if (failure === undefined && lines.length === 0) return;
  const why = failure === undefined ? 'the server logged at error level' : (failure as Error).message;
  const shown = lines.length === 0 ? '(none)' : lines.map(formatLogLine).join('\n');
  lastCaseFailure = `${why}\nserver error-level log lines of this case:\n${shown}`;
  throw new Error(lastCaseFailure, { cause: failure });
}

/**
 * fast-check's report names the seed, the path and the shrunk counterexample, but not what went wrong in it: the
 * last failing case's failure (that counterexample's) is appended, server log lines included.
 */
async function withCaseFailure(property: Promise<void>): Promise<void> {
  lastCaseFailure = undefined;
  try {
    await property;
  } catch (error) {
    throw new Error(`${(error as Error).message}\n\nWhat failed in the counterexample:\n${lastCaseFailure ?? '(not recorded)'}`, { cause: error });
  }
}

/** A pino JSON line as "msg: err.type err.message" and the stack below it; the raw line when it is not JSON. */
function formatLogLine(line: string): string {
  try {
    const entry = JSON.parse(line) as { msg?: string; err?: { type?: string; message?: string; stack?: string } };
    const error = entry.err === undefined ? '' : `: ${entry.err.type ?? 'Error'} ${entry.err.message ?? ''}`;
    const stack = entry.err?.stack === undefined ? '' : `\n    ${entry.err.stack.split('\n').slice(1, 8).map((frame) => frame.trim()).join('\n    ')}`;
    return `  - ${entry.msg ?? '(no msg)'}${error}${stack}\n    ${line.trim()}`;
  } catch {
    return `  - ${line.trim()}`;
  }
}

/** SQLSTATEs of every complete ErrorResponse in a backend byte stream (a cut-off last message is ignored). */
function errorSqlStates(received: Buffer): string[] {
  const states: string[] = [];
  for (let offset = 0; offset + 5 <= received.length; ) {
    const tag = received[offset];
    const length = received.readInt32BE(offset + 1);
    if (length < 4) throw new Error(`bad backend message length ${length} at ${offset}`);
    const end = offset + 1 + length;
    if (end > received.length) break;
    if (tag === 0x45) {
      const body = received.subarray(offset + 5, end);
      for (let field = 0; field < body.length && body[field] !== 0; ) {
        const close = body.indexOf(0, field + 1);
        if (body[field] === 0x43) states.push(body.subarray(field + 1, close).toString('latin1'));
        field = close + 1;
      }
    }
    offset = end;
  }
  return states;
}

const bytes = (maxLength: number): fc.Arbitrary<Buffer> => fc.uint8Array({ maxLength }).map((array) => Buffer.from(array));
const text = fc.string({ unit: fc.constantFrom('a', '0', '=', ' ', '-', '\0', '\n', '"', 'é', '/', 'X'), maxLength: 16 });
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });

function feedback(): fc.Arbitrary<Buffer> {
  const lsnBytes = u64.map((value) => {
    const out = Buffer.alloc(8);
    out.writeBigUInt64BE(value);
    return out;
  });
  const r = fc.tuple(fc.array(lsnBytes, { minLength: 4, maxLength: 4 }), fc.integer({ min: 0, max: 2 })).map(([parts, flag]) => Buffer.concat([Buffer.from('r'), ...parts, Buffer.from([flag])]));
  const h = fc.tuple(lsnBytes, bytes(20)).map(([time, rest]) => Buffer.concat([Buffer.from('h'), time, rest]));
  const z = bytes(40).map((body) => Buffer.concat([Buffer.from('z'), body]));
  const other = fc.tuple(fc.integer({ min: 0, max: 255 }), bytes(40)).map(([tag, body]) => Buffer.concat([Buffer.from([tag]), body]));
  return fc.oneof(r, h, z, other).map((payload) => typedMessage('d', payload));
}

function commandText(): fc.Arbitrary<string> {
  const lsn = fc.oneof(fc.constant(formatLsn(wal.startLsn)), fc.constant(formatLsn(wal.endLsn)), u64.map((value) => formatLsn(value)), text);
  return fc.oneof(
    lsn.map((position) => `START_REPLICATION PHYSICAL ${position}`),
    fc.tuple(lsn, fc.integer({ min: 0, max: 3 })).map(([position, tli]) => `START_REPLICATION ${position} TIMELINE ${tli}`),
    fc.constantFrom('IDENTIFY_SYSTEM', 'SHOW wal_segment_size', 'TIMELINE_HISTORY 1', 'TIMELINE_HISTORY 2', 'READ_REPLICATION_SLOT x', 'BASE_BACKUP', 'SELECT 1', ''),
    text.map((name) => `SHOW ${name}`),
    text,
  );
}

/** A startup (valid, mutated, or random), then random messages, commands and feedback. */
function session(): fc.Arbitrary<Buffer> {
  const params = fc.record({ user: fc.oneof(fc.constant('repl'), text), replication: fc.constantFrom('true', 'database', 'maybe', 'on', '1'), options: fc.oneof(fc.constant(''), text.map((value) => `-c tenant_id=${value}`)) });
  const startup = fc.oneof(
    params.map((values) => startupPacket(Object.fromEntries(Object.entries(values).map(([key, value]) => [key, value.replaceAll('\0', '')])))),
    fc.tuple(params, fc.nat(), fc.integer({ min: 0, max: 255 })).map(([values, at, value]) => {
      const packet = startupPacket({ user: values.user.replaceAll('\0', ''), replication: 'true' });
      packet[at % packet.length] = value;
      return packet;
    }),
    bytes(24),
  );
  const message = fc.oneof(
    commandText().map((sql) => queryMessage(sql.replaceAll('\0', ''))),
    feedback(),
    fc.tuple(fc.constantFrom('X', 'S', 'H', 'c', 'f', 'p', 'P', 'B', '\0', 'Q'), bytes(24)).map(([type, body]) => typedMessage(type, body)),
    bytes(12),
  );
  return fc.tuple(startup, fc.array(message, { maxLength: 5 })).map(([first, rest]) => Buffer.concat([first, ...rest]));
}

test('random sessions: only catalogued SQLSTATEs, no session failure, the bystander streams on', { timeout: TIMEOUT_MS }, async () => {
  const port = server.address().port;
  await withCaseFailure(fc.assert(
    fc.asyncProperty(session(), (input) =>
      checkCase(async () => {
        const { received } = await exchange(port, input);
        for (const sqlState of errorSqlStates(received)) assert.ok(isCataloguedSqlState(sqlState), `uncatalogued SQLSTATE ${sqlState}`);
      }),
    ),
    fuzzParameters(0.02, 50),
  ));
  // The bystander got every byte of the stored WAL, identical to the primary's, while all that went on.
  const parts: Buffer[] = [];
  let received = 0;
  const wanted = Number(wal.endLsn - wal.startLsn);
  while (received < wanted) {
    const payload = await bystanderStream.read();
    assert.ok(payload !== undefined, `the bystander's stream ended after ${received} bytes`);
    if (payload[0] !== 0x77) continue;
    parts.push(payload.subarray(25));
    received += payload.length - 25;
  }
  assert.ok(Buffer.concat(parts).subarray(0, wanted).equals(await wal.primaryWal(wal.startLsn, wal.endLsn)), 'byte-identical WAL');
  await bystanderStream.sendCopyDone();
  await bystander.end();
});

test('random HTTP request heads: an answer or a close, never a 500', { timeout: TIMEOUT_MS }, async () => {
  const port = api.address().port;
  const method = fc.constantFrom('GET', 'HEAD', 'POST', 'DELETE', 'G\0T', 'BREW', '');
  const path = fc.oneof(
    fc.constantFrom('/metrics', '/v1/status', '/v1/timelines', '/v1/tenant/%zz/timeline/%', '/v1/tenant/' + '0'.repeat(32) + '/timeline/' + 'f'.repeat(32), '*', '//', '/%00'),
    fc.string({ maxLength: 40 }).map((value) => `/${value}`),
  );
  const header = fc.tuple(fc.string({ maxLength: 12 }), fc.string({ maxLength: 24 })).map(([name, value]) => `${name}: ${value}\r\n`);
  const head = fc.tuple(method, path, fc.constantFrom('HTTP/1.1', 'HTTP/1.0', 'HTTP/9', ''), fc.array(header, { maxLength: 4 }), fc.boolean()).map(
    ([verb, target, version, headers, finished]) => Buffer.from(`${verb} ${target} ${version}\r\nHost: x\r\n${headers.join('')}${finished ? '\r\n' : ''}`, 'utf8'),
  );
  await withCaseFailure(fc.assert(
    fc.asyncProperty(fc.oneof(head, bytes(64)), (request) =>
      checkCase(async () => {
        const { received } = await exchange(port, request);
        const statusLine = /^HTTP\/1\.[01] (\d{3})/.exec(received.toString('latin1'));
        if (statusLine !== null) assert.notEqual(statusLine[1], '500', received.toString('latin1').slice(0, 200));
      }),
    ),
    fuzzParameters(0.03, 50),
  ));
});
