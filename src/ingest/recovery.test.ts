/**
 * Recovery without valid WAL records: the control file's flush LSN is the floor, everything past the resume point
 * is zeroed, later segments are removed, and a complete segment that is cut short becomes `.partial` again.
 * (Recovery over real PostgreSQL WAL after SIGKILL is covered by test/ingest.test.ts.)
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { silentLogger } from '../log.js';
import { crc32c } from '../storage/crc32c.js';
import { recoverTimelineEnd } from './recovery.js';

const SEGMENT_BYTES = 1024 * 1024;
const START_LSN = 4n * BigInt(SEGMENT_BYTES);
let dir = '';

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'walcast-recovery-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const input = (controlFlushLsn: bigint) => ({ dir, segmentBytes: SEGMENT_BYTES, pgTimelineId: 1, systemId: 1n, timelineStartLsn: START_LSN, controlFlushLsn });

test('keeps what the control file vouches for, zeroes the rest, removes later segments', async () => {
  writeFileSync(join(dir, '000000010000000000000004.partial'), Buffer.alloc(SEGMENT_BYTES, 0xaa));
  writeFileSync(join(dir, '000000010000000000000005.partial'), Buffer.alloc(SEGMENT_BYTES, 0xbb));
  const result = await recoverTimelineEnd(input(START_LSN + 1000n), silentLogger());
  assert.equal(result.resumeLsn, START_LSN + 1000n);
  const file = readFileSync(join(dir, '000000010000000000000004.partial'));
  assert.ok(file.subarray(0, 1000).equals(Buffer.alloc(1000, 0xaa)));
  assert.ok(file.subarray(1000).equals(Buffer.alloc(SEGMENT_BYTES - 1000)));
  assert.deepEqual(result.removedFiles, ['000000010000000000000005.partial']);
  assert.ok(!existsSync(join(dir, '000000010000000000000005.partial')));
});

test('a complete segment holding the resume point becomes .partial; segments before the walk are left alone', async () => {
  writeFileSync(join(dir, '000000010000000000000004.partial'), Buffer.alloc(SEGMENT_BYTES, 0xaa));
  writeFileSync(join(dir, '000000010000000000000005'), Buffer.alloc(SEGMENT_BYTES, 0xcc));
  const result = await recoverTimelineEnd(input(START_LSN + BigInt(SEGMENT_BYTES) + 8192n), silentLogger());
  assert.equal(result.resumeLsn, START_LSN + BigInt(SEGMENT_BYTES) + 8192n);
  assert.ok(existsSync(join(dir, '000000010000000000000004.partial')), 'a segment before the walk start is not touched');
  assert.ok(!existsSync(join(dir, '000000010000000000000005')));
  const file = readFileSync(join(dir, '000000010000000000000005.partial'));
  assert.ok(file.subarray(0, 8192).equals(Buffer.alloc(8192, 0xcc)));
  assert.ok(file.subarray(8192).equals(Buffer.alloc(SEGMENT_BYTES - 8192)));
});

test('an empty timeline resumes at its start', async () => {
  const result = await recoverTimelineEnd(input(START_LSN), silentLogger());
  assert.equal(result.resumeLsn, START_LSN);
  assert.deepEqual(result.removedFiles, []);
});

test('the open segment\'s sidecar is rebuilt from its stored bytes: entries lost in a crash (never fsynced) come back', async () => {
  // Live ingest does not fsync the open segment's sidecar on the commit path (storage/wal-writer.ts) but relies on this.
  const stored = Buffer.alloc(SEGMENT_BYTES);
  for (let index = 0; index < 3 * 8192 + 500; index++) stored[index] = (index * 7 + 3) & 0xff;
  writeFileSync(join(dir, '000000010000000000000004.partial'), stored);
  writeFileSync(join(dir, '000000010000000000000004.crc'), Buffer.alloc(0));
  const result = await recoverTimelineEnd(input(START_LSN + 3n * 8192n + 500n), silentLogger());
  assert.equal(result.resumeLsn, START_LSN + 3n * 8192n + 500n);
  const sidecar = readFileSync(join(dir, '000000010000000000000004.crc'));
  assert.equal(sidecar.length, 3 * 4, 'one entry per whole page below the resume point');
  for (let page = 0; page < 3; page++) assert.equal(sidecar.readUInt32LE(page * 4), crc32c(stored, page * 8192, (page + 1) * 8192));
});
