/** Page header decoding and validation, built by an independent byte builder. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseLsnOrThrow } from '../lsn.js';
import { checkPage, decodePageHeader, validatePageHeader, LONG_PAGE_HEADER_BYTES, SHORT_PAGE_HEADER_BYTES } from './wal-page.js';

const SEGMENT_BYTES = 16 * 1024 * 1024;
const SYSTEM_ID = 7312345678901234567n;

function buildHeader(fields: { magic?: number; info: number; tli?: number; pageAddress: bigint; remLen?: number; sysid?: bigint; segSize?: number; blcksz?: number }): Buffer {
  const bytes = Buffer.alloc(8192);
  bytes.writeUInt16LE(fields.magic ?? 0xd110, 0);
  bytes.writeUInt16LE(fields.info, 2);
  bytes.writeUInt32LE(fields.tli ?? 1, 4);
  bytes.writeBigUInt64LE(fields.pageAddress, 8);
  bytes.writeUInt32LE(fields.remLen ?? 0, 16);
  if ((fields.info & 2) !== 0) {
    bytes.writeBigUInt64LE(fields.sysid ?? SYSTEM_ID, 24);
    bytes.writeUInt32LE(fields.segSize ?? SEGMENT_BYTES, 32);
    bytes.writeUInt32LE(fields.blcksz ?? 8192, 36);
  }
  return bytes;
}

const segmentStart = parseLsnOrThrow('0/49000000');
const midPage = parseLsnOrThrow('0/49006000');

test('a long header at a segment start decodes and validates', () => {
  const result = checkPage(buildHeader({ info: 0x2 | 0x1, pageAddress: segmentStart, remLen: 100 }), 0, { pageLsn: segmentStart, segmentBytes: SEGMENT_BYTES, systemId: SYSTEM_ID });
  assert.ok(result.ok, result.ok ? '' : result.reason);
  assert.equal(result.header.headerBytes, LONG_PAGE_HEADER_BYTES);
  assert.equal(result.header.remainingBytes, 100);
  assert.deepEqual(result.header.long, { systemId: SYSTEM_ID, segmentBytes: SEGMENT_BYTES, pageBytes: 8192 });
});

test('a short header mid-segment decodes and validates', () => {
  const result = checkPage(buildHeader({ info: 0x4, pageAddress: midPage, tli: 3 }), 0, { pageLsn: midPage, segmentBytes: SEGMENT_BYTES, minPgTimelineId: 2 });
  assert.ok(result.ok);
  assert.equal(result.header.headerBytes, SHORT_PAGE_HEADER_BYTES);
  assert.equal(result.header.pgTimelineId, 3);
});

test('bad headers are refused with a reason', () => {
  const cases: [Buffer, bigint, RegExp, { systemId?: bigint; minPgTimelineId?: number }?][] = [
    [buildHeader({ magic: 0xd10d, info: 0, pageAddress: midPage }), midPage, /invalid magic number D10D/],
    [buildHeader({ info: 0x10, pageAddress: midPage }), midPage, /invalid info bits 0010/],
    [buildHeader({ info: 0, pageAddress: segmentStart }), segmentStart, /missing long page header/],
    [buildHeader({ info: 0, pageAddress: midPage - 8192n }), midPage, /unexpected pageaddr 0\/49004000/],
    [buildHeader({ info: 2, pageAddress: segmentStart, sysid: 1n }), segmentStart, /different database system/, { systemId: SYSTEM_ID }],
    [buildHeader({ info: 2, pageAddress: segmentStart, segSize: 1024 * 1024 }), segmentStart, /segment size 1048576/],
    [buildHeader({ info: 2, pageAddress: segmentStart, blcksz: 4096 }), segmentStart, /page size 4096/],
    [buildHeader({ info: 0, pageAddress: midPage, tli: 1 }), midPage, /out-of-sequence timeline ID 1/, { minPgTimelineId: 2 }],
    [buildHeader({ info: 0, pageAddress: midPage, tli: 0 }), midPage, /invalid timeline id 0/],
  ];
  for (const [bytes, pageLsn, reason, extra] of cases) {
    const result = checkPage(bytes, 0, { pageLsn, segmentBytes: SEGMENT_BYTES, ...extra });
    assert.ok(!result.ok, `expected ${reason}`);
    assert.match(result.reason, reason);
  }
});

test('truncated input is a reason, not an exception; offsets inside a buffer work', () => {
  assert.deepEqual(decodePageHeader(Buffer.alloc(10)), { ok: false, reason: 'page header is truncated' });
  const longOnly = buildHeader({ info: 2, pageAddress: segmentStart }).subarray(0, 30);
  assert.equal(decodePageHeader(longOnly).ok, false);
  const twoPages = Buffer.concat([buildHeader({ info: 2, pageAddress: segmentStart }), buildHeader({ info: 0, pageAddress: segmentStart + 8192n })]);
  const second = decodePageHeader(twoPages, 8192);
  assert.ok(second.ok);
  assert.equal(validatePageHeader(second.header, { pageLsn: segmentStart + 8192n, segmentBytes: SEGMENT_BYTES }), undefined);
});
