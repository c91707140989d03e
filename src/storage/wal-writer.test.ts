/** The segment writer: pre-allocation, offsets, crossing segments, group-commit flushes, rename on completion. */
import assert from 'node:assert/strict';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { crc32c } from './crc32c.js';
import { WalWriter, eraseFrom } from './wal-writer.js';

const SEGMENT_BYTES = 1024 * 1024;
let dir = '';

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'walcast-writer-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function pattern(bytes: number, seed: number): Buffer {
  const buffer = Buffer.allocUnsafe(bytes);
  for (let index = 0; index < bytes; index++) buffer[index] = (index * 31 + seed) & 0xff;
  return buffer;
}

test('writes at segment offsets into a zero-filled .partial and publishes only after flush', async () => {
  const start = 3n * BigInt(SEGMENT_BYTES) + 8192n;
  const writer = new WalWriter({ dir, pgTimelineId: 1, segmentBytes: SEGMENT_BYTES, startLsn: start });
  const data = pattern(5000, 1);
  writer.write(start, data);
  assert.equal(writer.writtenLsn, start + 5000n);
  assert.equal(writer.durableLsn, start, 'nothing is durable before a flush');
  assert.equal(await writer.flush(), start + 5000n);
  assert.equal(writer.durableLsn, start + 5000n);
  const path = join(dir, '000000010000000000000003.partial');
  assert.equal(statSync(path).size, SEGMENT_BYTES);
  const file = readFileSync(path);
  assert.ok(file.subarray(8192, 8192 + 5000).equals(data));
  assert.ok(file.subarray(0, 8192).equals(Buffer.alloc(8192)), 'bytes before the start stay zero');
  assert.ok(file.subarray(8192 + 5000).equals(Buffer.alloc(SEGMENT_BYTES - 8192 - 5000)));
  await writer.close();
});

test('a write across a segment boundary completes, syncs and renames the first segment', async () => {
  const start = BigInt(SEGMENT_BYTES) - 1000n;
  const writer = new WalWriter({ dir, pgTimelineId: 2, segmentBytes: SEGMENT_BYTES, startLsn: start });
  const data = pattern(3000, 7);
  writer.write(start, data);
  assert.ok(existsSync(join(dir, '000000020000000000000000.partial')), 'renamed only after the flush');
  await writer.flush();
  assert.ok(!existsSync(join(dir, '000000020000000000000000.partial')));
  const first = readFileSync(join(dir, '000000020000000000000000'));
  const second = readFileSync(join(dir, '000000020000000000000001.partial'));
  assert.ok(first.subarray(SEGMENT_BYTES - 1000).equals(data.subarray(0, 1000)));
  assert.ok(second.subarray(0, 2000).equals(data.subarray(1000)));
  assert.equal(writer.stats.segmentsCompleted, 1);
  await writer.close();
});

test('many writes share one flush while it runs (group commit)', async () => {
  const writer = new WalWriter({ dir, pgTimelineId: 1, segmentBytes: SEGMENT_BYTES, startLsn: 0n });
  writer.write(0n, pattern(100, 0));
  const first = writer.flush();
  for (let index = 1; index < 50; index++) writer.write(writer.writtenLsn, pattern(100, index));
  const second = writer.flush();
  const third = writer.flush();
  assert.equal(await first, 100n, 'the first flush covers only what was written before it started');
  assert.equal(await second, 5000n);
  assert.equal(await third, 5000n);
  assert.ok(writer.stats.fsyncCount <= 3, `expected at most 3 fdatasyncs, got ${writer.stats.fsyncCount}`);
  await writer.close();
});

test('resumes in an existing .partial without clearing what is before the start, and extends a short one', async () => {
  const path = join(dir, '000000010000000000000000.partial');
  writeFileSync(path, pattern(4096, 3));
  const writer = new WalWriter({ dir, pgTimelineId: 1, segmentBytes: SEGMENT_BYTES, startLsn: 4096n });
  writer.write(4096n, pattern(10, 9));
  await writer.close();
  const file = readFileSync(path);
  assert.equal(file.length, SEGMENT_BYTES);
  assert.ok(file.subarray(0, 4096).equals(pattern(4096, 3)));
  assert.ok(file.subarray(4096, 4106).equals(pattern(10, 9)));
});

test('a whole segment in many writes, then the next one; non-contiguous writes are refused', async () => {
  const writer = new WalWriter({ dir, pgTimelineId: 1, segmentBytes: SEGMENT_BYTES, startLsn: 0n });
  const chunk = pattern(128 * 1024, 5);
  for (let index = 0; index < 9; index++) writer.write(writer.writtenLsn, chunk);
  assert.throws(() => writer.write(writer.writtenLsn + 1n, chunk), /contiguously/);
  await writer.flush();
  assert.equal(statSync(join(dir, '000000010000000000000000')).size, SEGMENT_BYTES);
  assert.ok(existsSync(join(dir, '000000010000000000000001.partial')));
  await writer.close();
  assert.throws(() => writer.write(writer.writtenLsn, chunk), /after close/);
});

test('a write error becomes WALCAST_ERR_WAL_WRITE', () => {
  const writer = new WalWriter({ dir: join(dir, 'missing'), pgTimelineId: 1, segmentBytes: SEGMENT_BYTES, startLsn: 0n });
  assert.throws(() => writer.write(0n, pattern(10, 0)), (error: Error & { code?: string }) => error.code === 'WALCAST_ERR_WAL_WRITE');
});

test('zero pre-allocation writes the zeros; both modes read the same', async () => {
  for (const preallocation of ['zero', 'sparse'] as const) {
    const sub = join(dir, preallocation);
    mkdirSync(sub);
    const writer = new WalWriter({ dir: sub, pgTimelineId: 1, segmentBytes: SEGMENT_BYTES, startLsn: 100n, preallocation });
    writer.write(100n, pattern(50, 2));
    await writer.close();
    const file = readFileSync(join(sub, '000000010000000000000000.partial'));
    assert.equal(file.length, SEGMENT_BYTES);
    assert.ok(file.subarray(100, 150).equals(pattern(50, 2)));
    assert.ok(file.subarray(150).equals(Buffer.alloc(SEGMENT_BYTES - 150)));
    if (preallocation === 'zero') assert.ok(statSync(join(sub, '000000010000000000000000.partial')).blocks * 512 >= SEGMENT_BYTES, 'zero-fill allocates every block');
  }
});

test('eraseFrom makes the tail read as zeros and keeps the size', () => {
  const path = join(dir, 'segment');
  writeFileSync(path, pattern(SEGMENT_BYTES, 4));
  const fd = openSync(path, 'r+');
  eraseFrom(fd, 12345, SEGMENT_BYTES, path);
  closeSync(fd);
  const file = readFileSync(path);
  assert.equal(file.length, SEGMENT_BYTES);
  assert.ok(file.subarray(0, 12345).equals(pattern(SEGMENT_BYTES, 4).subarray(0, 12345)));
  assert.ok(file.subarray(12345).equals(Buffer.alloc(SEGMENT_BYTES - 12345)));
});

test('flushes fsync the sidecar of a segment they complete, not the open one\'s; syncOpenSidecar and close do, once per change', async () => {
  const writer = new WalWriter({ dir, pgTimelineId: 1, segmentBytes: SEGMENT_BYTES, startLsn: 0n });
  const data = pattern(SEGMENT_BYTES + 8192, 5);
  // 100-byte commits across three page boundaries: every flush fsyncs the segment, none the open segment's sidecar.
  let written = 0;
  for (; written < 3 * 8192 + 100; written += 100) {
    writer.write(BigInt(written), data.subarray(written, written + 100));
    await writer.flush();
  }
  assert.equal(writer.stats.fsyncCount, written / 100, 'every flush fsyncs the segment');
  assert.equal(writer.stats.sidecarSyncCount, 0, 'no flush fsynced the open segment\'s sidecar');
  const sidecarPath = join(dir, '000000010000000000000000.crc');
  const entries = readFileSync(sidecarPath);
  assert.equal(entries.length, 3 * 4, 'the completed pages have entries (in the page cache) for the send path');
  for (let page = 0; page < 3; page++) assert.equal(entries.readUInt32LE(page * 4), crc32c(data, page * 8192, (page + 1) * 8192));
  // Off the commit path: once per change, and waiting for one already running.
  await Promise.all([writer.syncOpenSidecar(), writer.syncOpenSidecar()]);
  assert.equal(writer.stats.sidecarSyncCount, 1);
  await writer.syncOpenSidecar();
  assert.equal(writer.stats.sidecarSyncCount, 1, 'a clean sidecar is not fsynced again');
  // The flush that completes the segment fsyncs its sidecar, before the rename, even with a sync of it running.
  writer.write(BigInt(written), data.subarray(written, 4 * 8192));
  const running = writer.syncOpenSidecar();
  writer.write(4n * 8192n, data.subarray(4 * 8192, SEGMENT_BYTES + 100));
  assert.equal(await writer.flush(), BigInt(SEGMENT_BYTES + 100));
  await running;
  assert.equal(writer.stats.sidecarSyncCount, 3);
  const completed = readFileSync(join(dir, '000000010000000000000000.crc'));
  assert.equal(completed.length, (SEGMENT_BYTES / 8192) * 4, 'the completed segment\'s sidecar is whole');
  assert.equal(completed.readUInt32LE(completed.length - 4), crc32c(data, SEGMENT_BYTES - 8192, SEGMENT_BYTES));
  assert.ok(existsSync(join(dir, '000000010000000000000000')));
  // close records the next segment's partial page and fsyncs its sidecar.
  await writer.close();
  assert.equal(writer.stats.sidecarSyncCount, 4);
  assert.equal(readFileSync(join(dir, '000000010000000000000001.crc')).length, 4);
});
