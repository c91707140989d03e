/**
 * bench/run.ts --cold-warm-server warms a fresh server on the first half of the prepared range and measures the
 * second (bench/scenarios/streaming.ts rangeOf): the halves must split at a segment boundary (a replica may start
 * there), cover the range exactly, and not overlap, or the measured run would re-read pages the server verified in
 * its warm-up run and checksum nothing.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { rangeOf } from '../bench/scenarios/streaming.js';

const SEGMENT = 16 * 1024 * 1024;

test('the halves of a range split at a segment boundary, cover it and do not overlap', () => {
  const wal = { startLsn: 0x1000000n, endLsn: 0x43000000n, segmentBytes: SEGMENT };
  const first = rangeOf(wal, 'first-half');
  const second = rangeOf(wal, 'second-half');
  assert.deepEqual(rangeOf(wal), { startLsn: wal.startLsn, endLsn: wal.endLsn });
  assert.equal(first.startLsn, wal.startLsn);
  assert.equal(first.endLsn, second.startLsn);
  assert.equal(second.endLsn, wal.endLsn);
  assert.equal(second.startLsn % BigInt(SEGMENT), 0n);
  // 66 segments: 33 each.
  assert.equal(first.endLsn - first.startLsn, 33n * BigInt(SEGMENT));
  assert.equal(second.endLsn - second.startLsn, 33n * BigInt(SEGMENT));
});

test('an odd number of segments gives the second half the extra one; a range that ends mid-segment keeps its tail', () => {
  const wal = { startLsn: 0x1000000n, endLsn: 0x1000000n + 3n * BigInt(SEGMENT) + 8192n, segmentBytes: SEGMENT };
  const first = rangeOf(wal, 'first-half');
  const second = rangeOf(wal, 'second-half');
  assert.equal(first.endLsn - first.startLsn, BigInt(SEGMENT));
  assert.equal(second.endLsn, wal.endLsn);
  assert.equal(second.startLsn, first.endLsn);
});

test('a range of less than two segments cannot be split', () => {
  const wal = { startLsn: 0x1000000n, endLsn: 0x1000000n + BigInt(SEGMENT) + 4096n, segmentBytes: SEGMENT };
  assert.throws(() => rangeOf(wal, 'second-half'), /too short to split/);
});
