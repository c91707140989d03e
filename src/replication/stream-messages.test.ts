/** Chunking rule and stream message layouts, checked against bytes built independently here. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_SEND_BYTES, XLOG_DATA_HEADER_BYTES, decideChunkEnd, encodeKeepalive, pgMicrosToDate, pgNowMicros, writeXLogDataHeader } from './stream-messages.js';

const MiB = 1024 * 1024;
const SEGMENT_16_MIB = 16 * MiB;

test('a chunk is at most 128 KiB and cut down to a page boundary when WAL goes on', () => {
  // Start mid-page: 0/1000010 + 128 KiB = 0/1020010, rounded down to the page at 0/1020000.
  assert.equal(decideChunkEnd(0x1000010n, 0x2000000n, SEGMENT_16_MIB), 0x1020000n);
  // Page-aligned start: a full 128 KiB chunk.
  assert.equal(decideChunkEnd(0x1000000n, 0x2000000n, SEGMENT_16_MIB), 0x1000000n + BigInt(MAX_SEND_BYTES));
});

test('a chunk that reaches the end of available WAL ends exactly there, mid-page if need be', () => {
  assert.equal(decideChunkEnd(0x1000010n, 0x1000123n, SEGMENT_16_MIB), 0x1000123n);
  assert.equal(decideChunkEnd(0x1000000n, 0x1020000n, SEGMENT_16_MIB), 0x1020000n);
});

test('a chunk never crosses a segment boundary, for several segment sizes', () => {
  for (const segmentBytes of [1 * MiB, 16 * MiB, 64 * MiB, 1024 * MiB]) {
    const segmentEnd = BigInt(segmentBytes) * 3n;
    const start = segmentEnd - 1000n;
    assert.equal(decideChunkEnd(start, segmentEnd + 5_000_000n, segmentBytes), segmentEnd);
  }
});

test('chunks from any start cover the range contiguously with no empty chunk', () => {
  let position = 0x2fffe123n;
  const end = 0x30050007n;
  let chunks = 0;
  while (position < end) {
    const next = decideChunkEnd(position, end, SEGMENT_16_MIB);
    assert.ok(next > position && next - position <= BigInt(MAX_SEND_BYTES));
    if (next < end && next % BigInt(SEGMENT_16_MIB) !== 0n) assert.equal(next % 8192n, 0n, 'intermediate cuts are page aligned');
    position = next;
    chunks++;
    assert.ok(chunks < 1000);
  }
  assert.equal(position, end);
});

test('decideChunkEnd refuses an empty range', () => {
  assert.throws(() => decideChunkEnd(100n, 100n, SEGMENT_16_MIB));
});

test('the XLogData header is CopyData + w + start + end + time', () => {
  const header = Buffer.alloc(XLOG_DATA_HEADER_BYTES);
  writeXLogDataHeader(header, 0x0000_0001_0000_2000n, 0x0000_0001_0000_9000n, 0x0102_0304_0506_0708n, 4096);
  const expected = Buffer.from(
    [
      '64', // d
      (4 + 25 + 4096).toString(16).padStart(8, '0'),
      '77', // w
      '0000000100002000',
      '0000000100009000',
      '0102030405060708',
    ].join(''),
    'hex',
  );
  assert.deepEqual(header, expected);
});

test('the keepalive is exactly 17 bytes after its tag, inside CopyData', () => {
  const message = encodeKeepalive(0xabcdefn, 42n, true);
  assert.deepEqual(message, Buffer.from('64' + '00000016' + '6b' + '0000000000abcdef' + '000000000000002a' + '01', 'hex'));
  assert.equal(encodeKeepalive(1n, 1n, false)[22], 0);
});

test('PostgreSQL timestamps round-trip through the 2000-01-01 epoch', () => {
  assert.equal(pgMicrosToDate(0n).toISOString(), '2000-01-01T00:00:00.000Z');
  const now = pgNowMicros();
  assert.ok(Math.abs(pgMicrosToDate(now).getTime() - Date.now()) < 5000);
});
