/**
 * WAL page headers: pure decoding and validation of XLogPageHeaderData / XLogLongPageHeaderData
 * (PostgreSQL 15 src/include/access/xlog_internal.h; checks as in xlogreader.c XLogReaderValidatePageHeader).
 * Little-endian, as written by PostgreSQL on x86-64 and arm64. No I/O here.
 */
import assert from 'node:assert/strict';
import { WAL_PAGE_BYTES, formatLsn, type Lsn } from '../lsn.js';

/** XLOG_PAGE_MAGIC of PostgreSQL 15; every major version changes it. */
export const XLOG_PAGE_MAGIC = 0xd110;

/** xlp_info bits. */
export const XLP_FIRST_IS_CONTRECORD = 0x0001;
export const XLP_LONG_HEADER = 0x0002;
export const XLP_BKP_REMOVABLE = 0x0004;
export const XLP_FIRST_IS_OVERWRITE_CONTRECORD = 0x0008;
export const XLP_ALL_FLAGS = 0x000f;

/** SizeOfXLogShortPHD: MAXALIGN(20). */
export const SHORT_PAGE_HEADER_BYTES = 24;
/** SizeOfXLogLongPHD: MAXALIGN(40). */
export const LONG_PAGE_HEADER_BYTES = 40;

/** Field offsets inside the header. */
const MAGIC_OFFSET = 0;
const INFO_OFFSET = 2;
const TLI_OFFSET = 4;
const PAGEADDR_OFFSET = 8;
const REM_LEN_OFFSET = 16;
const SYSID_OFFSET = 24;
const SEG_SIZE_OFFSET = 32;
const XLOG_BLCKSZ_OFFSET = 36;

assert.ok(LONG_PAGE_HEADER_BYTES < WAL_PAGE_BYTES, 'a page has room for data after its header');
assert.equal(XLOG_BLCKSZ_OFFSET + 4, LONG_PAGE_HEADER_BYTES);

export interface LongHeaderFields {
  readonly systemId: bigint;
  readonly segmentBytes: number;
  readonly pageBytes: number;
}

export interface WalPageHeader {
  readonly magic: number;
  readonly info: number;
  readonly pgTimelineId: number;
  /** xlp_pageaddr: the LSN this page was written for. Recycled segments keep an old one. */
  readonly pageAddress: Lsn;
  /** xlp_rem_len: bytes of a record continued from the previous page. */
  readonly remainingBytes: number;
  /** Present when XLP_LONG_HEADER is set (first page of a segment). */
  readonly long: LongHeaderFields | undefined;
  /** Where record data starts on this page. */
  readonly headerBytes: number;
}

export type PageHeaderResult = { readonly ok: true; readonly header: WalPageHeader } | { readonly ok: false; readonly reason: string };

/** Decodes the header at `offset` (a page start in `bytes`). Only checks what decoding needs: length. */
export function decodePageHeader(bytes: Uint8Array, offset = 0): PageHeaderResult {
  assert.ok(offset >= 0, 'page offset is not negative');
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (offset + SHORT_PAGE_HEADER_BYTES > view.length) return { ok: false, reason: 'page header is truncated' };
  const info = view.readUInt16LE(offset + INFO_OFFSET);
  const isLong = (info & XLP_LONG_HEADER) !== 0;
  if (isLong && offset + LONG_PAGE_HEADER_BYTES > view.length) return { ok: false, reason: 'long page header is truncated' };
  const header: WalPageHeader = {
    magic: view.readUInt16LE(offset + MAGIC_OFFSET),
    info,
    pgTimelineId: view.readUInt32LE(offset + TLI_OFFSET),
    pageAddress: view.readBigUInt64LE(offset + PAGEADDR_OFFSET),
    remainingBytes: view.readUInt32LE(offset + REM_LEN_OFFSET),
    long: isLong
      ? {
          systemId: view.readBigUInt64LE(offset + SYSID_OFFSET),
          segmentBytes: view.readUInt32LE(offset + SEG_SIZE_OFFSET),
          pageBytes: view.readUInt32LE(offset + XLOG_BLCKSZ_OFFSET),
        }
      : undefined,
    headerBytes: isLong ? LONG_PAGE_HEADER_BYTES : SHORT_PAGE_HEADER_BYTES,
  };
  return { ok: true, header };
}

/** What the page must match. */
export interface PageExpectation {
  /** The LSN of the page start. */
  readonly pageLsn: Lsn;
  readonly segmentBytes: number;
  /** Checked against the long header when known. */
  readonly systemId?: bigint | undefined;
  /** PostgreSQL timeline ids never decrease along the WAL. */
  readonly minPgTimelineId?: number | undefined;
}

/** XLogReaderValidatePageHeader: undefined when the page is valid, else the reason. */
export function validatePageHeader(header: WalPageHeader, expect: PageExpectation): string | undefined {
  assert.ok(expect.pageLsn % BigInt(WAL_PAGE_BYTES) === 0n, 'the expected page LSN is page aligned');
  const where = `page ${formatLsn(expect.pageLsn)}`;
  if (header.magic !== XLOG_PAGE_MAGIC) return `invalid magic number ${hex4(header.magic)} at ${where}`;
  if ((header.info & ~XLP_ALL_FLAGS) !== 0) return `invalid info bits ${hex4(header.info)} at ${where}`;
  const atSegmentStart = expect.pageLsn % BigInt(expect.segmentBytes) === 0n;
  const longReason = validateLongFields(header, expect, atSegmentStart, where);
  if (longReason !== undefined) return longReason;
  if (header.pageAddress !== expect.pageLsn) return `unexpected pageaddr ${formatLsn(header.pageAddress)} at ${where}`;
  if (header.pgTimelineId === 0) return `invalid timeline id 0 at ${where}`;
  if (expect.minPgTimelineId !== undefined && header.pgTimelineId < expect.minPgTimelineId) {
    return `out-of-sequence timeline ID ${header.pgTimelineId} (after ${expect.minPgTimelineId}) at ${where}`;
  }
  return undefined;
}

function validateLongFields(header: WalPageHeader, expect: PageExpectation, atSegmentStart: boolean, where: string): string | undefined {
  if (header.long === undefined) {
    return atSegmentStart ? `missing long page header at segment start ${where}` : undefined;
  }
  if (expect.systemId !== undefined && header.long.systemId !== expect.systemId) {
    return `WAL file is from a different database system: system id ${header.long.systemId}, expected ${expect.systemId}, at ${where}`;
  }
  if (header.long.segmentBytes !== expect.segmentBytes) {
    return `WAL segment size ${header.long.segmentBytes} in the page header is not ${expect.segmentBytes} at ${where}`;
  }
  if (header.long.pageBytes !== WAL_PAGE_BYTES) return `WAL page size ${header.long.pageBytes} is not ${WAL_PAGE_BYTES} at ${where}`;
  return undefined;
}

/** Decode and validate in one step: the header, or the reason the page is not valid WAL for `expect`. */
export function checkPage(bytes: Uint8Array, offset: number, expect: PageExpectation): PageHeaderResult {
  const decoded = decodePageHeader(bytes, offset);
  if (!decoded.ok) return decoded;
  const reason = validatePageHeader(decoded.header, expect);
  return reason === undefined ? decoded : { ok: false, reason };
}

function hex4(value: number): string {
  return value.toString(16).toUpperCase().padStart(4, '0');
}
