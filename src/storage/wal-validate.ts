/**
 * Finding the end of valid WAL: walks XLOG records from a known start through stored segments, checking every
 * page header and every record (PostgreSQL 15 xlogreader.c: XLogDecodeNextRecord, ValidXLogRecordHeader,
 * ValidXLogRecord, XLogReaderValidatePageHeader) and reports where the last good record ends and why the walk
 * stopped. Used by `walcast import` and, later, by crash recovery of a timeline.
 *
 * Memory is bounded: segments are read in READ_WINDOW_BYTES pieces and records are never reassembled; the
 * CRC-32C is folded in incrementally, piece by piece, so a 1 GiB record costs no more memory than a small one.
 * Positions inside the walk are (segment number, offset) pairs of plain numbers; a segment never crosses a
 * 4 GiB boundary (2^32 is a multiple of every segment size), so an LSN's low 32 bits are the segment's plus the
 * offset and the hot path needs no bigint arithmetic.
 */
import assert from 'node:assert/strict';
import { WAL_PAGE_BYTES, formatLsn, type Lsn } from '../lsn.js';
import { CRC32C_INITIAL, crc32cFinish, crc32cUpdate } from './crc32c.js';
import { assertSegmentSize, segmentOf, segmentStartLsn, offsetInSegment, SEGMENT_BYTES_MIN } from './segment-name.js';
import { directorySegmentSource, type WalSegmentSource } from './segment-source.js';
import { XLP_FIRST_IS_CONTRECORD, XLP_FIRST_IS_OVERWRITE_CONTRECORD, checkPage, type WalPageHeader } from './wal-page.js';

/** How much of a segment is read at a time: big enough to amortise the read call, small enough to bound memory. */
export const READ_WINDOW_BYTES = 1024 * 1024;
/** SizeOfXLogRecord. */
export const RECORD_HEADER_BYTES = 24;
/** Offset of xl_crc in the record header; the CRC covers the header bytes before it. */
const RECORD_CRC_OFFSET = 20;
const RECORD_PREV_OFFSET = 8;
const RECORD_INFO_OFFSET = 16;
const RECORD_RMID_OFFSET = 17;
/** MAXALIGN on 64-bit platforms. */
export const MAXALIGN_BYTES = 8;
/**
 * XLogRecordMaxSize (PostgreSQL 16 xlogrecord.h, 1020 MiB): no valid record is longer; a longer xl_tot_len is
 * garbage, so the walk treats it as the end of WAL rather than trying to follow it.
 */
export const RECORD_BYTES_MAX = 1020 * 1024 * 1024;
/** RM_MAX_BUILTIN_ID of PostgreSQL 15 (rmgrlist.h) and RM_MIN_CUSTOM_ID (rmgr.h). */
const RMGR_BUILTIN_MAX = 21;
const RMGR_CUSTOM_MIN = 128;
/** RM_XLOG_ID and XLOG_SWITCH (pg_control.h): the rest of the segment after this record is padding. */
const RM_XLOG_ID = 0;
const XLOG_SWITCH = 0x40;
const XLR_RMGR_INFO_MASK = 0xf0;

assert.ok(READ_WINDOW_BYTES % WAL_PAGE_BYTES === 0, 'windows end on page boundaries');
assert.ok(READ_WINDOW_BYTES <= SEGMENT_BYTES_MIN, 'a window never spans two segments');

export type WalkStopKind =
  | 'invalid-record' // bad length, rmgr, prev-link, CRC or contrecord: the normal end of WAL
  | 'invalid-page' // bad page header: a recycled or zeroed page, another system, another size
  | 'missing-segment' // the next segment is not held
  | 'truncated-segment' // a segment file is shorter than the segment size
  | 'stop-lsn'; // reached the caller's limit

export interface WalkResult {
  /** End of the last valid record, MAXALIGN'd (the next segment start after XLOG_SWITCH); the start if none. */
  readonly endLsn: Lsn;
  /** Start of the last valid record, or undefined when none was found. */
  readonly lastRecordLsn: Lsn | undefined;
  readonly recordCount: number;
  readonly stopKind: WalkStopKind;
  /** Human text of why the walk stopped, naming the LSN. */
  readonly stopReason: string;
  /** Where the problem was found. */
  readonly stopLsn: Lsn;
  /** The segment that was missing, for stopKind 'missing-segment'. */
  readonly missingSegno: bigint | undefined;
  /** The system id of the first long page header seen (or the expected one). */
  readonly systemId: bigint | undefined;
  /** The PostgreSQL timeline id of the last page read. */
  readonly pgTimelineId: number | undefined;
}

export interface WalkOptions {
  readonly source: WalSegmentSource;
  readonly segmentBytes: number;
  /** A record start, or a page start (a leading continuation, FIRST_IS_CONTRECORD, is skipped). */
  readonly startLsn: Lsn;
  /** The start of the record before `startLsn`, to check the first xl_prev; unchecked when absent. */
  readonly prevRecordLsn?: Lsn | undefined;
  /** Pages must carry this system id; taken from the first long header when absent. */
  readonly systemId?: bigint | undefined;
  /** Stop before starting a record at or after this LSN. */
  readonly stopLsn?: Lsn | undefined;
  /**
   * Told when the walk moves past the end of a segment (every record starting in it was valid, though a record
   * continuing into the next segment may still fail). Import starts copying the segment then.
   */
  readonly onSegmentPassed?: ((segno: bigint) => void) | undefined;
}

interface Stop {
  readonly kind: WalkStopKind;
  readonly reason: string;
  readonly missingSegno?: bigint;
}

/** Walks records from `startLsn` until the WAL stops being valid. Never throws for bad WAL; I/O errors propagate. */
export async function walkWal(options: WalkOptions): Promise<WalkResult> {
  assertSegmentSize(options.segmentBytes);
  const walker = new RecordWalker(options);
  const window = Buffer.allocUnsafe(READ_WINDOW_BYTES);
  for (;;) {
    const stop = (await walker.loadWindow(options.source, window)) ?? walker.walkWindow(window);
    if (stop !== undefined) return walker.result(stop);
  }
}

/** The timeline-directory form used by recovery: reads `dir` (NAME.partial, then NAME) and closes it after. */
export async function findValidWalEnd(options: {
  readonly dir: string;
  readonly layout: { readonly segmentBytes: number; readonly pgTimelineId: number };
  readonly startLsn: Lsn;
  readonly prevRecordLsn?: Lsn | undefined;
  readonly systemId?: bigint | undefined;
}): Promise<WalkResult> {
  const source = directorySegmentSource(options.dir, options.layout.pgTimelineId, options.layout.segmentBytes);
  try {
    return await walkWal({ ...options, source, segmentBytes: options.layout.segmentBytes });
  } finally {
    await source.close();
  }
}

/** The walk's state. Offsets are plain numbers inside the current segment. */
class RecordWalker {
  private readonly segmentBytes: number;
  private segno: bigint;
  private segmentLow = 0;
  private segmentHigh = 0;
  private offset: number;
  /** Bytes of the current segment held in the window, from windowOffset. */
  private windowOffset = 0;
  private windowBytes = 0;
  private stopOffset = Number.POSITIVE_INFINITY;
  private readonly stopLsn: Lsn | undefined;
  private readonly onSegmentPassed: ((segno: bigint) => void) | undefined;
  private skippingContinuation: boolean;
  private checkStartPage: boolean;
  // The record being read.
  private inRecord = false;
  private recordOffset = 0;
  private recordSegno = 0n;
  private recordLow = 0;
  private recordHigh = 0;
  private readonly recordHeader = Buffer.alloc(RECORD_HEADER_BYTES);
  private headerFilled = 0;
  private totalBytes = 0;
  private gotBytes = 0;
  private crcState = CRC32C_INITIAL;
  // The last good record.
  private prevLow = 0;
  private prevHigh = 0;
  private havePrev: boolean;
  /** The last good record's start, kept as (segment, offset) so the hot path allocates no bigint. */
  private lastRecordSegno: bigint | undefined;
  private lastRecordOffset = 0;
  private endSegno: bigint;
  private endOffset: number;
  private recordCount = 0;
  private systemId: bigint | undefined;
  private pgTimelineId: number | undefined;

  constructor(options: WalkOptions) {
    this.segmentBytes = options.segmentBytes;
    this.segno = segmentOf(options.startLsn, options.segmentBytes);
    this.offset = offsetInSegment(options.startLsn, options.segmentBytes);
    assert.equal(this.offset % MAXALIGN_BYTES, 0, 'the walk starts at a MAXALIGN boundary');
    this.endSegno = this.segno;
    this.endOffset = this.offset;
    this.stopLsn = options.stopLsn;
    this.onSegmentPassed = options.onSegmentPassed;
    this.systemId = options.systemId;
    this.skippingContinuation = this.offset % WAL_PAGE_BYTES === 0;
    this.checkStartPage = this.offset % WAL_PAGE_BYTES !== 0;
    this.havePrev = options.prevRecordLsn !== undefined;
    if (options.prevRecordLsn !== undefined) {
      this.prevLow = Number(options.prevRecordLsn & 0xffff_ffffn);
      this.prevHigh = Number(options.prevRecordLsn >> 32n);
    }
    this.enterSegment();
  }

  /** Reads the window holding `offset` (moving to the next segment at a segment end). */
  async loadWindow(source: WalSegmentSource, window: Buffer): Promise<Stop | undefined> {
    if (this.offset === this.segmentBytes) {
      this.onSegmentPassed?.(this.segno);
      this.segno += 1n;
      this.offset = 0;
      this.enterSegment();
    }
    if (this.reachedStop()) return { kind: 'stop-lsn', reason: `reached the stop position ${formatLsn(this.stopLsn ?? 0n)}` };
    const start = this.offset - (this.offset % WAL_PAGE_BYTES);
    const length = Math.min(READ_WINDOW_BYTES, this.segmentBytes - start);
    const bytesRead = await source.readSegment(this.segno, start, window, length);
    if (bytesRead === undefined) {
      return { kind: 'missing-segment', reason: `WAL segment ${this.segno} is not held (needed at ${formatLsn(this.here())})`, missingSegno: this.segno };
    }
    this.windowOffset = start;
    this.windowBytes = bytesRead - (bytesRead % WAL_PAGE_BYTES);
    if (this.windowBytes === 0 || this.windowOffset + this.windowBytes <= this.offset) {
      return { kind: 'truncated-segment', reason: `WAL segment file ends before ${formatLsn(this.here())}` };
    }
    return undefined;
  }

  /** Walks every page of the loaded window (synchronously). */
  walkWindow(window: Buffer): Stop | undefined {
    const windowEnd = this.windowOffset + this.windowBytes;
    if (this.checkStartPage) {
      this.checkStartPage = false;
      const pageOffset = this.offset - (this.offset % WAL_PAGE_BYTES);
      const page = this.checkPageAt(window, pageOffset);
      if (!page.ok) return { kind: 'invalid-page', reason: page.reason };
    }
    while (this.offset < windowEnd) {
      const stop = this.offset % WAL_PAGE_BYTES === 0 ? this.enterPage(window) : this.walkPage(window);
      if (stop !== undefined) return stop;
    }
    return undefined;
  }

  result(stop: Stop): WalkResult {
    return {
      endLsn: segmentStartLsn(this.endSegno, this.segmentBytes) + BigInt(this.endOffset),
      lastRecordLsn: this.lastRecordSegno === undefined ? undefined : segmentStartLsn(this.lastRecordSegno, this.segmentBytes) + BigInt(this.lastRecordOffset),
      recordCount: this.recordCount,
      stopKind: stop.kind,
      stopReason: stop.reason,
      stopLsn: this.here(),
      missingSegno: stop.missingSegno,
      systemId: this.systemId,
      pgTimelineId: this.pgTimelineId,
    };
  }

  private enterSegment(): void {
    const base = segmentStartLsn(this.segno, this.segmentBytes);
    this.segmentLow = Number(base & 0xffff_ffffn);
    this.segmentHigh = Number(base >> 32n);
    const stopLsn = this.stopLsn;
    if (stopLsn === undefined || stopLsn >= base + BigInt(this.segmentBytes)) this.stopOffset = Number.POSITIVE_INFINITY;
    else this.stopOffset = stopLsn <= base ? 0 : Number(stopLsn - base);
  }

  private here(): Lsn {
    return segmentStartLsn(this.segno, this.segmentBytes) + BigInt(this.offset);
  }

  private reachedStop(): boolean {
    return !this.inRecord && this.offset >= this.stopOffset;
  }

  private checkPageAt(window: Buffer, pageOffset: number): ReturnType<typeof checkPage> {
    const pageLsn = segmentStartLsn(this.segno, this.segmentBytes) + BigInt(pageOffset);
    return checkPage(window, pageOffset - this.windowOffset, {
      pageLsn,
      segmentBytes: this.segmentBytes,
      systemId: this.systemId,
      minPgTimelineId: this.pgTimelineId,
    });
  }

  /** At a page start: validate the header, then check or skip the continuation it announces. */
  private enterPage(window: Buffer): Stop | undefined {
    const page = this.checkPageAt(window, this.offset);
    if (!page.ok) return { kind: 'invalid-page', reason: page.reason };
    const header = page.header;
    if (header.long !== undefined) this.systemId ??= header.long.systemId;
    this.pgTimelineId = header.pgTimelineId;
    this.offset += header.headerBytes;
    const isContinuation = (header.info & XLP_FIRST_IS_CONTRECORD) !== 0;
    if (this.inRecord) return this.checkContinuation(header, isContinuation);
    if (this.skippingContinuation) {
      this.skipContinuation(header, isContinuation);
      return undefined;
    }
    if (isContinuation) return { kind: 'invalid-record', reason: `contrecord is requested by ${formatLsn(this.here())}` };
    return undefined;
  }

  private checkContinuation(header: WalPageHeader, isContinuation: boolean): Stop | undefined {
    if ((header.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD) !== 0) {
      // xlogreader.c: the continuation was overwritten after a crash (XLOG_OVERWRITE_CONTRECORD). The unfinished
      // record is abandoned and reading restarts at this page; the new record's xl_prev is the last good record.
      this.inRecord = false;
      return undefined;
    }
    if (!isContinuation) return { kind: 'invalid-record', reason: `there is no contrecord flag at ${formatLsn(this.here())}` };
    const remaining = this.totalBytes - this.gotBytes;
    if (header.remainingBytes === 0 || header.remainingBytes !== remaining) {
      return { kind: 'invalid-record', reason: `invalid contrecord length ${header.remainingBytes} (expected ${remaining}) at ${formatLsn(this.here())}` };
    }
    return undefined;
  }

  /** XLogFindNextRecord: the first full record starts after the continued one, MAXALIGN'd. */
  private skipContinuation(header: WalPageHeader, isContinuation: boolean): void {
    const pageEnd = this.offset - (this.offset % WAL_PAGE_BYTES) + WAL_PAGE_BYTES;
    if (!isContinuation || header.remainingBytes === 0) {
      this.skippingContinuation = false;
    } else if (this.offset + header.remainingBytes < pageEnd) {
      this.skippingContinuation = false;
      this.offset = alignUp(this.offset + header.remainingBytes);
    } else {
      // The continuation fills this page; the next page says how much of it is left.
      this.offset = pageEnd;
      return;
    }
    this.endSegno = this.segno;
    this.endOffset = this.offset;
  }

  /** Consumes record bytes from `offset` to the end of its page (or the end of the record). */
  private walkPage(window: Buffer): Stop | undefined {
    const pageEnd = this.offset - (this.offset % WAL_PAGE_BYTES) + WAL_PAGE_BYTES;
    if (!this.inRecord) {
      const stop = this.beginRecord(window);
      if (stop !== undefined) return stop;
      // The common case: the whole record is on this page; check it in place, without copying the header.
      if (this.offset + this.totalBytes <= pageEnd) return this.walkWholeRecord(window);
    }
    let index = this.offset - this.windowOffset;
    let available = pageEnd - this.offset;
    if (this.headerFilled < RECORD_HEADER_BYTES) {
      const take = Math.min(RECORD_HEADER_BYTES - this.headerFilled, available);
      window.copy(this.recordHeader, this.headerFilled, index, index + take);
      this.headerFilled += take;
      this.gotBytes += take;
      index += take;
      available -= take;
      this.offset += take;
      if (this.headerFilled === RECORD_HEADER_BYTES) {
        const stop = this.checkRecordHeader(this.recordHeader, 0);
        if (stop !== undefined) return stop;
      }
    }
    if (this.headerFilled === RECORD_HEADER_BYTES) {
      const take = Math.min(this.totalBytes - this.gotBytes, available);
      this.crcState = crc32cUpdate(this.crcState, window, index, index + take);
      this.gotBytes += take;
      this.offset += take;
      if (this.gotBytes === this.totalBytes) return this.finishRecord(this.recordHeader, 0);
    }
    return undefined;
  }

  /** A record entirely inside the current page: header checks, CRC and commit straight from the window. */
  private walkWholeRecord(window: Buffer): Stop | undefined {
    const index = this.offset - this.windowOffset;
    const stop = this.checkRecordHeader(window, index);
    if (stop !== undefined) return stop;
    this.crcState = crc32cUpdate(CRC32C_INITIAL, window, index + RECORD_HEADER_BYTES, index + this.totalBytes);
    this.offset += this.totalBytes;
    return this.finishRecord(window, index);
  }

  /** ValidXLogRecordHeader's length check, on the first 4 bytes (always on this page: records are 8-aligned). */
  private beginRecord(window: Buffer): Stop | undefined {
    if (this.reachedStop()) return { kind: 'stop-lsn', reason: `reached the stop position ${formatLsn(this.stopLsn ?? 0n)}` };
    const totalBytes = window.readUInt32LE(this.offset - this.windowOffset);
    if (totalBytes < RECORD_HEADER_BYTES) {
      return { kind: 'invalid-record', reason: `invalid record length at ${formatLsn(this.here())}: wanted ${RECORD_HEADER_BYTES}, got ${totalBytes}` };
    }
    if (totalBytes > RECORD_BYTES_MAX) return { kind: 'invalid-record', reason: `record length ${totalBytes} at ${formatLsn(this.here())} too long` };
    this.inRecord = true;
    this.recordOffset = this.offset;
    this.recordSegno = this.segno;
    this.recordLow = this.segmentLow + this.offset;
    this.recordHigh = this.segmentHigh;
    this.headerFilled = 0;
    this.totalBytes = totalBytes;
    this.gotBytes = 0;
    this.crcState = CRC32C_INITIAL;
    return undefined;
  }

  /** ValidXLogRecordHeader: rmgr id and prev-link, on the header at `at` in `header`. */
  private checkRecordHeader(header: Buffer, at: number): Stop | undefined {
    const rmid = header[at + RECORD_RMID_OFFSET]!;
    if (rmid > RMGR_BUILTIN_MAX && rmid < RMGR_CUSTOM_MIN) {
      return { kind: 'invalid-record', reason: `invalid resource manager ID ${rmid} at ${formatLsn(this.recordLsn())}` };
    }
    const prevLow = header.readUInt32LE(at + RECORD_PREV_OFFSET);
    const prevHigh = header.readUInt32LE(at + RECORD_PREV_OFFSET + 4);
    if (this.havePrev && (prevLow !== this.prevLow || prevHigh !== this.prevHigh)) {
      const prev = (BigInt(prevHigh) << 32n) | BigInt(prevLow);
      return { kind: 'invalid-record', reason: `record with incorrect prev-link ${formatLsn(prev)} at ${formatLsn(this.recordLsn())}` };
    }
    return undefined;
  }

  /** ValidXLogRecord: CRC over the data (already folded in), then over the header up to xl_crc; then commit. */
  private finishRecord(header: Buffer, at: number): Stop | undefined {
    const state = crc32cUpdate(this.crcState, header, at, at + RECORD_CRC_OFFSET);
    if (crc32cFinish(state) !== header.readUInt32LE(at + RECORD_CRC_OFFSET)) {
      return { kind: 'invalid-record', reason: `incorrect resource manager data checksum in record at ${formatLsn(this.recordLsn())}` };
    }
    this.inRecord = false;
    this.recordCount += 1;
    this.prevLow = this.recordLow;
    this.prevHigh = this.recordHigh;
    this.havePrev = true;
    this.lastRecordSegno = this.recordSegno;
    this.lastRecordOffset = this.recordOffset;
    const info = header[at + RECORD_INFO_OFFSET]!;
    const isSwitch = header[at + RECORD_RMID_OFFSET] === RM_XLOG_ID && (info & XLR_RMGR_INFO_MASK) === XLOG_SWITCH;
    // xlogreader.c: an XLOG_SWITCH record "extends" to the end of its segment; the rest is padding.
    this.offset = isSwitch ? this.segmentBytes : alignUp(this.offset);
    this.endSegno = this.segno;
    this.endOffset = this.offset;
    return undefined;
  }

  private recordLsn(): Lsn {
    return segmentStartLsn(this.recordSegno, this.segmentBytes) + BigInt(this.recordOffset);
  }
}

function alignUp(offset: number): number {
  return offset + ((MAXALIGN_BYTES - (offset % MAXALIGN_BYTES)) % MAXALIGN_BYTES);
}
