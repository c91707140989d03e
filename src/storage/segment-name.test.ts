/** Segment naming and offsets for 1 MiB, 16 MiB and 1 GiB segments, checked against PostgreSQL's names. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { parseLsnOrThrow } from '../lsn.js';
import {
  assertSegmentSize,
  historyFileName,
  isSegmentFileName,
  offsetInSegment,
  parseHistoryFileName,
  parseSegmentFileName,
  segmentFileName,
  segmentOf,
  segmentStartLsn,
} from './segment-name.js';

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

test('16 MiB: LSN 0/49006040 is in 000000010000000000000049', () => {
  const lsn = parseLsnOrThrow('0/49006040');
  assert.equal(segmentOf(lsn, 16 * MIB), 0x49n);
  assert.equal(segmentFileName(1, segmentOf(lsn, 16 * MIB), 16 * MIB), '000000010000000000000049');
  assert.equal(offsetInSegment(lsn, 16 * MIB), 0x6040);
  assert.equal(segmentStartLsn(0x49n, 16 * MIB), parseLsnOrThrow('0/49000000'));
});

test('16 MiB: the segment after FF of a log id rolls into the next log id', () => {
  const lsn = parseLsnOrThrow('16/B374D848');
  assert.equal(segmentFileName(1, segmentOf(lsn, 16 * MIB), 16 * MIB), '0000000100000016000000B3');
  assert.equal(segmentFileName(2, 0x100n, 16 * MIB), '000000020000000100000000');
});

test('1 MiB: 4096 segments per log id', () => {
  assert.equal(segmentFileName(1, 9n, MIB), '000000010000000000000009');
  assert.equal(segmentFileName(1, 0xfffn, MIB), '000000010000000000000FFF');
  assert.equal(segmentFileName(1, 0x1000n, MIB), '000000010000000100000000');
  assert.equal(segmentOf(parseLsnOrThrow('1/00100000'), MIB), 0x1001n);
});

test('1 GiB: segno 5 is 000000010000000100000001', () => {
  assert.equal(segmentFileName(1, 5n, GIB), '000000010000000100000001');
  assert.equal(segmentStartLsn(5n, GIB), parseLsnOrThrow('1/40000000'));
});

test('parseSegmentFileName inverts segmentFileName and rejects impossible names', () => {
  for (const size of [MIB, 16 * MIB, GIB]) {
    for (const segno of [1n, 0xffn, 0x12345n]) {
      assert.deepEqual(parseSegmentFileName(segmentFileName(3, segno, size), size), { pgTimelineId: 3, segno });
    }
  }
  assert.equal(parseSegmentFileName('000000010000000000000100', 16 * MIB), undefined, 'segment field above FF for 16 MiB');
  assert.equal(parseSegmentFileName('000000000000000000000001', 16 * MIB), undefined, 'timeline 0');
  assert.equal(parseSegmentFileName('00000001000000000000000a', 16 * MIB), undefined, 'lower case');
  assert.equal(parseSegmentFileName('000000010000000000000001.partial', 16 * MIB), undefined);
  assert.equal(isSegmentFileName('000000010000000000000001.partial'), true);
  assert.equal(isSegmentFileName('00000002.history'), false);
});

test('history file names', () => {
  assert.equal(historyFileName(2), '00000002.history');
  assert.equal(historyFileName(0x1a), '0000001A.history');
  assert.equal(parseHistoryFileName('0000001A.history'), 0x1a);
  assert.equal(parseHistoryFileName('00000000.history'), undefined);
  assert.equal(parseHistoryFileName('0000001A.history.tmp'), undefined);
});

test('assertSegmentSize accepts powers of two from 1 MiB to 1 GiB only', () => {
  for (const size of [MIB, 2 * MIB, 16 * MIB, GIB]) assertSegmentSize(size);
  for (const size of [0, 512 * 1024, 3 * MIB, 2 * GIB, 16 * MIB + 1]) {
    assert.throws(() => assertSegmentSize(size), (error) => isWalcastError(error, 'WALCAST_ERR_SEGMENT_SIZE'));
  }
});
