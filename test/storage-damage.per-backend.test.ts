/**
 * Damaged timeline storage, on each I/O backend: a truncated segment, a missing segment, extra garbage files and a
 * corrupt control file, in copies of WAL a real PostgreSQL 15 wrote (1 MiB segments) and walcast imported.
 *
 * For each: the start-up check reports it (error-level log line, the timeline's storage problems), the server keeps
 * running, every byte a replica receives equals the primary's, and a stream that reaches the damage ends with an
 * ErrorResponse (XX001 for a short file, after the last whole page that still verifies against its checksum;
 * 58P01 for a missing one, at its first byte) naming the segment and offset,
 * logged at error level with the real end position.
 */
import assert from 'node:assert/strict';
import { cp, readFile, readdir, rm, truncate, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { WAL_PAGE_BYTES, formatLsn, type Lsn } from '../src/lsn.js';
import { createIoBackend } from '../src/io/select-backend.js';
import { WalcastServer } from '../src/server.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import { importWal } from '../src/storage/wal-import.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { connectReplication, type ReplicationStream, type StreamEnd } from '../src/wire/client.js';
import { firstDifference, makeTempDir, startPrimary, type PgCluster } from './support/postgres.js';
import { backendUnderTest } from './support/walcast.js';

const SEGMENT_BYTES = 1024 * 1024;
const TIMEOUT_MS = 180_000;
/** Not page-aligned on purpose: the stream must stop at the exact byte, not at a page or chunk boundary. */
const KEPT_BYTES = 5 * 8192 + 777;

let primary: PgCluster;
let importedDir: string;
let startLsn: Lsn;
let endLsn: Lsn;

before(async () => {
  primary = await startPrimary({ walSegmentMb: 1 });
  await primary.sql('CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 60000) g');
  await primary.stop();
  importedDir = await makeTempDir('walcast-damage-base');
  const imported = await importWal({ dataDir: importedDir, fromDir: primary.walDir });
  startLsn = imported.startLsn;
  endLsn = imported.endLsn;
  assert.ok(endLsn - startLsn > 4n * BigInt(SEGMENT_BYTES), 'the WAL spans enough segments to damage a middle one');
}, { timeout: TIMEOUT_MS });

interface Served {
  readonly server: WalcastServer;
  readonly timelineDir: string;
  readonly logLines: Record<string, unknown>[];
  readonly port: number;
}

const running: WalcastServer[] = [];
after(async () => {
  for (const server of running) await server.stop();
});

/** A copy of the imported data directory, damaged by `damage(timelineDir)`, served with a log we can read. */
async function serveDamaged(damage: (timelineDir: string, dataDir: string) => Promise<void>): Promise<Served> {
  const dataDir = await makeTempDir('walcast-damage');
  await cp(importedDir, dataDir, { recursive: true });
  const [tenantId] = await readdir(dataDir);
  const [timelineId] = await readdir(join(dataDir, tenantId ?? ''));
  const timelineDir = join(dataDir, tenantId ?? '', timelineId ?? '');
  await damage(timelineDir, dataDir);
  const logLines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => logLines.push(JSON.parse(line) as Record<string, unknown>) });
  const { backend } = await createIoBackend(backendUnderTest());
  const server = await WalcastServer.start({ dataDir, listen: { host: '127.0.0.1', port: 0 }, auth: { method: 'trust' }, backend, maxConnections: 64, replicaTimeoutMs: 60_000, log });
  running.push(server);
  return { server, timelineDir, logLines, port: server.address().port };
}

function segmentStart(index: number): Lsn {
  return startLsn - (startLsn % BigInt(SEGMENT_BYTES)) + BigInt(index) * BigInt(SEGMENT_BYTES);
}

function segmentName(lsn: Lsn): string {
  return segmentFileName(1, lsn / BigInt(SEGMENT_BYTES), SEGMENT_BYTES);
}

async function primaryWal(from: Lsn, to: Lsn): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let position = from; position < to; ) {
    const segno = position / BigInt(SEGMENT_BYTES);
    const until = to < (segno + 1n) * BigInt(SEGMENT_BYTES) ? to : (segno + 1n) * BigInt(SEGMENT_BYTES);
    const file = await readFile(join(primary.walDir, segmentFileName(1, segno, SEGMENT_BYTES)));
    parts.push(file.subarray(Number(position % BigInt(SEGMENT_BYTES)), Number(until - segno * BigInt(SEGMENT_BYTES))));
    position = until;
  }
  return Buffer.concat(parts);
}

interface StreamResult {
  readonly wal: Buffer;
  readonly end: StreamEnd;
}

/** Streams from `from` until the server ends the stream, or (then CopyDone) until `until` was received. */
async function streamFrom(port: number, from: Lsn, until: Lsn, options?: string): Promise<StreamResult> {
  const client = await connectReplication({ host: '127.0.0.1', port, user: 'repl', applicationName: 'damage-test', timeoutMs: 10_000, options });
  try {
    const stream: ReplicationStream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(from)}`);
    const parts: Buffer[] = [];
    let position = from;
    for (;;) {
      if (position >= until) return { wal: Buffer.concat(parts), end: await stream.sendCopyDone() };
      const payload = await stream.read();
      if (payload === undefined) return { wal: Buffer.concat(parts), end: await stream.ended };
      if (payload[0] !== 0x77) continue;
      assert.equal(payload.readBigUInt64BE(1), position, 'chunks are contiguous');
      parts.push(payload.subarray(25));
      position += BigInt(payload.length - 25);
    }
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function assertEqualsPrimary(wal: Buffer, from: Lsn): Promise<void> {
  const expected = await primaryWal(from, from + BigInt(wal.length));
  assert.equal(firstDifference(wal, expected), -1, `received WAL from ${formatLsn(from)} equals the primary's`);
}

function soleTimeline(served: Served): Timeline {
  const [timeline] = served.server.timelines.list();
  assert.ok(timeline !== undefined);
  return timeline;
}

function errorLines(served: Served, text: string): Record<string, unknown>[] {
  return served.logLines.filter((line) => line.level === 50 && String(line.msg).includes(text));
}

/** The server's own record of a stream that hit damage: error level, the real end position. */
async function assertStreamEndLogged(served: Served, code: string, endPosition: Lsn): Promise<void> {
  const deadline = Date.now() + 10_000;
  let lines: Record<string, unknown>[] = [];
  while (Date.now() < deadline && (lines = errorLines(served, 'stream ended by a storage error')).length === 0) await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(lines.length, 1, 'one error-level stream-end line');
  assert.equal(lines[0]?.code, code);
  assert.equal(lines[0]?.endLsn, formatLsn(endPosition), 'the logged end is where the replica\'s WAL stops');
}

describe(`damaged storage (${process.env.WALCAST_IO ?? 'ts'} ${process.env.WALCAST_NATIVE_STRATEGY ?? ''})`, { timeout: TIMEOUT_MS }, () => {
  test('a truncated segment: found at start; a stream gets every verifiable whole page before the cut, then XX001 naming the offset', async () => {
    const damagedStart = segmentStart(2);
    const served = await serveDamaged((dir) => truncate(join(dir, segmentName(damagedStart)), KEPT_BYTES));
    const cut = damagedStart + BigInt(KEPT_BYTES);
    const problems = soleTimeline(served).storageProblems;
    assert.deepEqual(problems.map((problem) => [problem.kind, problem.severity, problem.lsn]), [['truncated_segment', 'error', cut]]);
    assert.equal(errorLines(served, segmentName(damagedStart)).length, 1, 'the start-up check logs the damage at error level');
    const result = await streamFrom(served.port, startLsn, endLsn);
    assert.equal(result.end.how, 'error');
    assert.ok(result.end.how === 'error');
    assert.equal(result.end.error.sqlState, 'XX001');
    assert.match(result.end.error.message, new RegExp(`${segmentName(damagedStart)} is truncated at offset ${KEPT_BYTES} `));
    // Every page is verified against its recorded checksum before it is sent (storage/page-verifier.ts): the whole
    // pages before the cut go out, the partial page at the cut cannot be verified and does not.
    const lastVerifiable = damagedStart + BigInt(Math.floor(KEPT_BYTES / WAL_PAGE_BYTES) * WAL_PAGE_BYTES);
    assert.equal(startLsn + BigInt(result.wal.length), lastVerifiable, 'the stream ends at the last whole page before the cut');
    await assertEqualsPrimary(result.wal, startLsn);
    await assertStreamEndLogged(served, 'WALCAST_ERR_SEGMENT_TRUNCATED', lastVerifiable);
    // The WAL after the damaged segment is intact and still served.
    const after = await streamFrom(served.port, segmentStart(3), endLsn);
    assert.equal(after.end.how, 'completed');
    assert.equal(segmentStart(3) + BigInt(after.wal.length), endLsn);
    await assertEqualsPrimary(after.wal, segmentStart(3));
  });

  test('a missing segment: found at start; a stream ends at its first byte with 58P01 naming it', async () => {
    const missingStart = segmentStart(2);
    const served = await serveDamaged((dir) => unlink(join(dir, segmentName(missingStart))));
    assert.deepEqual(soleTimeline(served).storageProblems.map((problem) => [problem.kind, problem.lsn]), [['missing_segment', missingStart]]);
    assert.equal(errorLines(served, `segment ${segmentName(missingStart)} is missing`).length, 1);
    const result = await streamFrom(served.port, startLsn, endLsn);
    assert.ok(result.end.how === 'error', `the stream ended with an error, not ${result.end.how}`);
    assert.equal(result.end.error.sqlState, '58P01');
    assert.match(result.end.error.message, new RegExp(`${segmentName(missingStart)} is missing from storage: cannot send WAL at ${formatLsn(missingStart)} \\(offset 0\\)`));
    assert.equal(startLsn + BigInt(result.wal.length), missingStart);
    await assertEqualsPrimary(result.wal, startLsn);
    await assertStreamEndLogged(served, 'WALCAST_ERR_WAL_REMOVED', missingStart);
  });

  test('extra garbage files: reported as warnings, ignored, and the whole WAL is served unchanged', async () => {
    const served = await serveDamaged(async (dir) => {
      await writeFile(join(dir, 'garbage.bin'), Buffer.from('not WAL'));
      await writeFile(join(dir, segmentFileName(1, endLsn / BigInt(SEGMENT_BYTES) + 5n, SEGMENT_BYTES)), Buffer.alloc(4096, 0xab));
      await writeFile(join(dir, segmentFileName(7, startLsn / BigInt(SEGMENT_BYTES), SEGMENT_BYTES)), Buffer.alloc(SEGMENT_BYTES, 0xcd));
    });
    const problems = soleTimeline(served).storageProblems;
    assert.deepEqual(problems.map((problem) => problem.kind).sort(), ['foreign_segment', 'segment_past_flush', 'unexpected_file']);
    assert.ok(problems.every((problem) => problem.severity === 'warning'));
    assert.equal(served.logLines.filter((line) => line.level === 50).length, 0, 'nothing to log as an error');
    const result = await streamFrom(served.port, startLsn, endLsn);
    assert.equal(result.end.how, 'completed');
    assert.equal(startLsn + BigInt(result.wal.length), endLsn);
    await assertEqualsPrimary(result.wal, startLsn);
  });

  test('a corrupt control file: that timeline is refused with a clear error, the server serves the others', async () => {
    let brokenId = '';
    let tenant = '';
    const served = await serveDamaged(async (dir, dataDir) => {
      [tenant = ''] = await readdir(dataDir);
      brokenId = 'f'.repeat(32);
      const brokenDir = join(dataDir, tenant, brokenId);
      await cp(dir, brokenDir, { recursive: true });
      const control = await readFile(join(brokenDir, 'walcast.control'));
      control[20] = (control[20] ?? 0) ^ 0x01;
      await writeFile(join(brokenDir, 'walcast.control'), control);
    });
    const unavailable = served.server.timelines.listUnavailable();
    assert.deepEqual(unavailable.map((entry) => entry.timelineId), [brokenId]);
    assert.equal(errorLines(served, 'timeline unavailable').length, 1);
    const client = await connectReplication({ host: '127.0.0.1', port: served.port, user: 'repl', timeoutMs: 10_000, options: `-c tenant_id=${tenant} -c timeline_id=${brokenId}` });
    try {
      await assert.rejects(client.query('IDENTIFY_SYSTEM'), (error: Error & { sqlState?: string }) => {
        assert.equal(error.sqlState, 'XX001');
        assert.match(error.message, /is not served: control file .* is corrupt: checksum mismatch/);
        return true;
      });
    } finally {
      await client.end();
    }
    const healthy = soleTimeline(served);
    const result = await streamFrom(served.port, startLsn, endLsn, `-c tenant_id=${healthy.tenantId} -c timeline_id=${healthy.timelineId}`);
    assert.equal(result.end.how, 'completed');
    assert.equal(startLsn + BigInt(result.wal.length), endLsn);
    await assertEqualsPrimary(result.wal, startLsn);
  });
});

after(async () => {
  await rm(importedDir, { recursive: true, force: true }).catch(() => undefined);
});
