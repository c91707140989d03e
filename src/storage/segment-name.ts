/**
 * WAL segment math: file names, segment numbers and offsets. The ONE place in walcast that turns an LSN into a
 * segment and back (PostgreSQL src/include/access/xlog_internal.h: XLByteToSeg, XLogSegNoOffsetToRecPtr,
 * XLogSegmentOffset, XLogFileName, TLHistoryFileName).
 */
import assert from 'node:assert/strict';
import { WalcastError } from '../errors.js';
import { WAL_PAGE_BYTES, assertLsn, isPowerOfTwo, type Lsn } from '../lsn.js';

/** initdb --wal-segsize bounds (xlog_internal.h WalSegMinSize / WalSegMaxSize). */
export const SEGMENT_BYTES_MIN = 1024 * 1024;
export const SEGMENT_BYTES_MAX = 1024 * 1024 * 1024;
/** PostgreSQL's default --wal-segsize. */
export const SEGMENT_BYTES_DEFAULT = 16 * 1024 * 1024;

/** A segment file name is three 8-digit upper-case hex fields: TLI, log id, segment in log. */
export const SEGMENT_NAME_LENGTH = 24;
/** pg_receivewal (and walcast) write the segment still being filled under this suffix. */
export const PARTIAL_SUFFIX = '.partial';

const SEGMENT_NAME = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$/;
const HISTORY_NAME = /^([0-9A-F]{8})\.history$/;
/** 2^32: one "xlogid" spans this many bytes of LSN space (XLogSegmentsPerXLogId). */
const XLOG_ID_BYTES = 0x1_0000_0000n;

assert.ok(SEGMENT_BYTES_MIN % WAL_PAGE_BYTES === 0, 'the page size divides every segment size');
assert.ok(isPowerOfTwo(SEGMENT_BYTES_MIN) && isPowerOfTwo(SEGMENT_BYTES_MAX));

/** Throws WALCAST_ERR_SEGMENT_SIZE unless `bytes` is a power of two in [1 MiB, 1 GiB] (IsValidWalSegSize). */
export function assertSegmentSize(bytes: number): void {
  const valid = isPowerOfTwo(bytes) && bytes >= SEGMENT_BYTES_MIN && bytes <= SEGMENT_BYTES_MAX;
  if (!valid) {
    throw new WalcastError('WALCAST_ERR_SEGMENT_SIZE', `WAL segment size ${bytes} is invalid: it must be a power of two between 1 MB and 1 GB`);
  }
}

function segmentsPerXLogId(segmentBytes: number): bigint {
  assert.ok(isPowerOfTwo(segmentBytes), 'segment size is a power of two');
  return XLOG_ID_BYTES / BigInt(segmentBytes);
}

function hex8(value: bigint | number): string {
  return value.toString(16).toUpperCase().padStart(8, '0');
}

/** XLogFileName: "%08X%08X%08X" of the PostgreSQL timeline id, segno / segments-per-id, segno % segments-per-id. */
export function segmentFileName(pgTimelineId: number, segno: bigint, segmentBytes: number): string {
  assertPgTimelineId(pgTimelineId);
  assert.ok(segno >= 0n, 'segment number is not negative');
  const perId = segmentsPerXLogId(segmentBytes);
  const logId = segno / perId;
  assert.ok(logId <= 0xffff_ffffn, 'segment number fits the file name');
  return hex8(pgTimelineId) + hex8(logId) + hex8(segno % perId);
}

export interface ParsedSegmentName {
  readonly pgTimelineId: number;
  readonly segno: bigint;
}

/** Parses a plain 24-hex segment name (no suffix); undefined for anything else or a segment field out of range. */
export function parseSegmentFileName(name: string, segmentBytes: number): ParsedSegmentName | undefined {
  const match = SEGMENT_NAME.exec(name);
  if (match === null) return undefined;
  const perId = segmentsPerXLogId(segmentBytes);
  const pgTimelineId = Number.parseInt(match[1] ?? '', 16);
  const logId = BigInt('0x' + match[2]);
  const segInLog = BigInt('0x' + match[3]);
  if (pgTimelineId === 0 || segInLog >= perId) return undefined;
  return { pgTimelineId, segno: logId * perId + segInLog };
}

/** True for a 24-hex segment name, with or without `.partial`; the size-independent part of the check. */
export function isSegmentFileName(name: string): boolean {
  const base = name.endsWith(PARTIAL_SUFFIX) ? name.slice(0, -PARTIAL_SUFFIX.length) : name;
  return SEGMENT_NAME.test(base);
}

/** XLByteToSeg. */
export function segmentOf(lsn: Lsn, segmentBytes: number): bigint {
  assertLsn(lsn);
  assert.ok(isPowerOfTwo(segmentBytes), 'segment size is a power of two');
  return lsn / BigInt(segmentBytes);
}

/** XLogSegNoOffsetToRecPtr(segno, 0). */
export function segmentStartLsn(segno: bigint, segmentBytes: number): Lsn {
  assert.ok(segno >= 0n, 'segment number is not negative');
  assert.ok(isPowerOfTwo(segmentBytes), 'segment size is a power of two');
  return segno * BigInt(segmentBytes);
}

/** XLogSegmentOffset: the byte offset of `lsn` inside its segment file. */
export function offsetInSegment(lsn: Lsn, segmentBytes: number): number {
  assertLsn(lsn);
  assert.ok(isPowerOfTwo(segmentBytes), 'segment size is a power of two');
  return Number(lsn % BigInt(segmentBytes));
}

/** TLHistoryFileName: "%08X.history". */
export function historyFileName(pgTimelineId: number): string {
  assertPgTimelineId(pgTimelineId);
  return `${hex8(pgTimelineId)}.history`;
}

/** The PostgreSQL timeline id of a history file name, or undefined. */
export function parseHistoryFileName(name: string): number | undefined {
  const match = HISTORY_NAME.exec(name);
  if (match === null) return undefined;
  const pgTimelineId = Number.parseInt(match[1] ?? '', 16);
  return pgTimelineId === 0 ? undefined : pgTimelineId;
}

function assertPgTimelineId(pgTimelineId: number): void {
  assert.ok(Number.isInteger(pgTimelineId), 'timeline id is an integer');
  assert.ok(pgTimelineId >= 1 && pgTimelineId <= 0xffff_ffff, 'timeline id is a positive 32-bit number');
}
