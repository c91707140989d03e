/**
 * Verifying stored WAL before it is sent: one `PageVerifier` per timeline checks every 8 KiB page a chunk touches
 * against the page's checksum in its segment's sidecar (page-checksums.ts) before the sender hands the chunk to
 * the I/O backend, and refuses what fails.
 *
 * Cost: a page is checksummed when it first comes into this process's view, not once per replica. Each segment
 * has a verified-page bitmap shared by every stream of the timeline; a page whose bit is set is sent without
 * being read again. Bitmaps live in an LRU of VERIFIED_SEGMENTS_MAX segments and are dropped with it, or when the
 * segment file is replaced (another device/inode), so fan-out to 1,000 replicas costs one checksum per page per
 * residency, and the backend computes it (the native one in place in the page cache with the CPU's CRC-32C
 * instruction; the TS one after a read). The page being filled by live ingest has no sidecar entry yet: its
 * prefix is checked against the writer's in-memory copy (`TailPageSource`), per prefix length, shared likewise.
 * The sender first calls `verifyNow`, which does the common case (pages verified already, or recorded pages the
 * backend can checksum synchronously) without a promise; anything else, every failure included, goes to `verify`.
 *
 * What it catches: any change to a page's stored bytes between the moment its checksum was recorded (from the
 * bytes ingest received, import copied or recovery re-validated) and the moment the page is first verified in
 * this process: bit rot, torn or misdirected writes, a zeroed or overwritten block, an edited or truncated file, a
 * damaged sidecar (then the page is refused too, which is safe). What it cannot catch: damage to a page after it
 * was verified while its bit stays set (e.g. a page-cache or memory error, or an on-disk change under an
 * unevicted bitmap), damage that happened before the checksum was recorded (ingest validates what it receives;
 * see follower.ts), and pages of segments written before sidecars existed (logged once per segment and sent).
 *
 * A mismatch quarantines the page for the timeline: every stream reaching it is refused (XX001, naming the file
 * and byte offset) until the page verifies again (e.g. after the segment was re-imported); only the first
 * detection logs at error level and counts in `corruptionsDetected`, so a retrying replica cannot flood the log.
 */
import assert from 'node:assert/strict';
import { fstatSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { WalcastError, type WalcastErrorCode } from '../errors.js';
import type { WalChunk, WalFileHandle } from './wal-chunk.js';
import type { Logger } from '../log.js';
import { WAL_PAGE_BYTES, formatLsn, type Lsn } from '../lsn.js';
import { readSidecar, sidecarPathFor } from './page-checksums.js';
import { PARTIAL_SUFFIX, isSegmentFileName, segmentFileName, segmentOf, segmentStartLsn } from './segment-name.js';

/**
 * Segments whose verified-page bitmaps are kept per timeline: 256 × 16 MiB = 4 GiB of WAL; the memory is small (a bit
 * per page plus the sidecar: ~8.5 KiB per 16 MiB segment, ~2.2 MiB in all). The LRU meets sequential readers: a
 * catch-up over more segments than it holds drops each bitmap before the next reader of that range comes, so every
 * later catch-up checksums every byte again. At 64 (until 2026-12-06) the 1 GiB catch-up benchmark's 66 segments did
 * exactly that on every run (issue 13: the CRC of every byte, ~40-60% of the sender's CPU in that profile).
 */
export const VERIFIED_SEGMENTS_MAX = 256;
/** Pages quarantined per timeline before the oldest is forgotten (it is still refused: it never verifies). */
export const QUARANTINED_PAGES_MAX = 1024;
/**
 * Checksum result arrays kept for reuse, and the smallest one made (pages: 256 KiB of WAL, two full chunks). A fresh
 * small Uint32Array per check lives on V8's heap, and the addon reading it made V8 move it off the heap with a
 * malloc, freed again by the GC: visible in the one-receiver profile (issue 14). Checks of different streams may be
 * under way at once, so results are not shared, only recycled once read.
 */
const SPARE_RESULTS_MAX = 8;
const RESULT_PAGES_MIN = 32;

/** Computes the CRC-32C of each page-sized piece of a file range: the I/O backend's `checksumPages`. */
export interface PageChecksummer {
  checksumPages(chunk: WalChunk, pageBytes: number, out: Uint32Array): Promise<void>;
  /** The same without waiting, where the backend can (io/backend.ts): what verifyNow uses. */
  checksumPagesNow?(chunk: WalChunk, pageBytes: number, out: Uint32Array): void;
}

/** The live writer's page being filled (storage/wal-writer.ts `tailPagePrefixCrc`). */
export interface TailPageSource {
  tailPagePrefixCrc(pageLsn: Lsn, prefixBytes: number): number | undefined;
}

export interface VerifyContext {
  readonly checksummer: PageChecksummer;
  readonly tail: TailPageSource | undefined;
  readonly log: Logger;
}

/** Stored WAL failed its page checksum. `goodBytes`: how much of the chunk, from its start, did verify. */
export class WalCorruptionError extends WalcastError {
  constructor(
    message: string,
    readonly goodBytes: number,
    readonly segmentPath: string,
    readonly fileOffset: number,
    code: WalcastErrorCode = 'WALCAST_ERR_WAL_CORRUPTED',
  ) {
    super(code, message);
  }
}

interface SegmentState {
  readonly identity: string;
  readonly path: string;
  readonly sidecarPath: string;
  /** Entries 0 .. n-1 as last read. */
  sidecar: Uint32Array;
  /** One bit per page: verified since this state was made. */
  readonly verified: Uint8Array;
  /** The writer's partial page: its index and the longest prefix verified. */
  tailPage: number;
  tailBytes: number;
  /**
   * The tail check under way, if any: the streams a publish wakes all ask for the same prefix at once, before the
   * first check finished, so without this each computed the writer's CRC and checksummed the page itself
   * (profiled at 1,000 waiting replicas: a seventh of the event loop). A stream needing at most this prefix of
   * this page waits for it instead, and checks on its own only if it did not verify.
   */
  tailCheck: { readonly page: number; readonly prefixBytes: number; readonly done: Promise<void> } | undefined;
  /**
   * Pages whose check is under way, with that check. Streams fanned out from the same position reach a page together,
   * and its bit is set only when the first check's continuation runs: without this each checksummed it (measured
   * at 100 receivers: ~3× the verification of one pass, issue 14). A stream meeting a page here waits for that
   * check and checks on its own only if the page did not verify. Runs [first, end), not pages: a Map entry per page
   * cost a set and a delete per page, visible in the one-receiver profile; at most one run per stream checking this
   * segment is under way, usually none or one.
   */
  readonly checking: { readonly first: number; readonly end: number; readonly done: Promise<void> }[];
  warnedUnverifiable: boolean;
  /**
   * The sidecar as read is all it will ever hold for this file: it was read while the file was a complete segment
   * (NAME, not NAME.partial), which no writer appends to (ingest writes NAME.partial and renames it when full; import
   * and the segment cache put the sidecar in place before the segment). Then a page without an entry has none for
   * good, and the sidecar is not read again for it.
   */
  sidecarFinal: boolean;
}

export class PageVerifier {
  /** First detections of corrupted pages since start (a metric). */
  corruptionsDetected = 0;
  private readonly segments = new Map<bigint, SegmentState>();
  /**
   * The state stateFor returned last, and its segment number: the newest entry of `segments` already. Every publish
   * asks for the same segment (the live tail's), and moving it to the end again (a delete and a set per call) was
   * ~7 µs of each commit's fan-out (CPU profile, 1 replica, issue 13): deletes fill the hash table with holes it
   * keeps rebuilding.
   */
  private recent: { readonly segno: bigint; readonly state: SegmentState } | undefined;
  /** Quarantined pages by "segno:page", with where they are. */
  private readonly quarantine = new Map<string, { readonly path: string; readonly fileOffset: number }>();
  private readonly pagesPerSegment: number;
  private readonly spareResults: Uint32Array[] = [];

  constructor(
    private readonly dir: string,
    private readonly layout: { readonly segmentBytes: number; readonly pgTimelineId: number },
  ) {
    assert.equal(layout.segmentBytes % WAL_PAGE_BYTES, 0, 'pages divide a segment');
    this.pagesPerSegment = layout.segmentBytes / WAL_PAGE_BYTES;
  }

  get quarantinedPages(): number {
    return this.quarantine.size;
  }

  /** Resolves when every page the chunk touches verified; rejects with WalCorruptionError at the first that did not. */
  async verify(chunk: WalChunk, chunkLsn: Lsn, context: VerifyContext): Promise<void> {
    const segno = segmentOf(chunkLsn, this.layout.segmentBytes);
    const state = this.stateFor(segno, chunk.file);
    const endOffset = chunk.fileOffset + chunk.byteCount;
    const firstPage = Math.floor(chunk.fileOffset / WAL_PAGE_BYTES);
    const endPage = Math.ceil(endOffset / WAL_PAGE_BYTES);
    assert.ok(endPage <= this.pagesPerSegment, 'a chunk stays inside its segment');
    let page = firstPage;
    while (page < endPage) {
      if (isVerified(state, page)) {
        page++;
        continue;
      }
      const underWay = checkUnderWay(state, page);
      if (underWay !== undefined) {
        await underWay.catch(() => undefined);
        if (isVerified(state, page)) {
          page++;
          continue;
        }
      }
      let runEnd = page + 1;
      while (runEnd < endPage && !isVerified(state, runEnd) && checkUnderWay(state, runEnd) === undefined) runEnd++;
      const run = { first: page, end: runEnd, done: this.verifyRun(state, segno, page, runEnd, chunk, context) };
      state.checking.push(run);
      try {
        await run.done;
      } finally {
        state.checking.splice(state.checking.indexOf(run), 1);
      }
      page = runEnd;
    }
  }

  /**
   * verify() without waiting, where that can be done: true when every page the chunk touches is verified, already or
   * now by a synchronous checksum (checksumPagesNow) that matched the sidecar entries already read, or for the live
   * writer's partial page the writer's prefix checksum (verifyTailNow; only with `context.tail`). False, with
   * nothing marked, whenever anything else is needed (the sidecar read or reread, a writer page that moved on, a check
   * under way, a failed read, a mismatch, a page to check and a checksummer that cannot answer now): then verify()
   * does all of it, with the quarantine, the log and the error. The sender tries this first: one synchronous call per
   * chunk instead of a promise chain (~0.03 CPU s/GB of JavaScript on one receiver, issue 14). Same rule as
   * verifyRecorded.
   */
  verifyNow(chunk: WalChunk, chunkLsn: Lsn, context: VerifyContext): boolean {
    const segno = segmentOf(chunkLsn, this.layout.segmentBytes);
    const state = this.stateFor(segno, chunk.file);
    const chunkEnd = chunk.fileOffset + chunk.byteCount;
    const firstPage = Math.floor(chunk.fileOffset / WAL_PAGE_BYTES);
    const endPage = Math.ceil(chunkEnd / WAL_PAGE_BYTES);
    let page = firstPage;
    while (page < endPage) {
      if (isVerified(state, page)) {
        page++;
        continue;
      }
      let runEnd = page;
      while (runEnd < endPage && !isVerified(state, runEnd)) {
        if (checkUnderWay(state, runEnd) !== undefined) return false;
        runEnd++;
      }
      // Every page of the run needs an entry already read, except the chunk's last page when it is the live writer's
      // partial page (verifyTailNow); a later entry or the chunk's end decides below whether a page is done for good,
      // as in verifyRecorded.
      const checksumNow = context.checksummer.checksumPagesNow;
      if (checksumNow === undefined) return false;
      const writerPage = runEnd > state.sidecar.length;
      if (writerPage) {
        if (runEnd !== endPage || state.sidecar.length !== endPage - 1 || state.sidecarFinal) return false;
        runEnd--;
        if (runEnd === page) return this.verifyTailNow(state, segno, endPage - 1, chunk, context);
      }
      const actual = this.takeResults(runEnd - page);
      try {
        try {
          checksumNow.call(context.checksummer, { file: chunk.file, fileOffset: page * WAL_PAGE_BYTES, byteCount: (runEnd - page) * WAL_PAGE_BYTES }, WAL_PAGE_BYTES, actual);
        } catch {
          return false;
        }
        for (let checked = page; checked < runEnd; checked++) if (actual[checked - page] !== state.sidecar[checked]) return false;
      } finally {
        this.recycle(actual);
      }
      for (let checked = page; checked < runEnd; checked++) {
        this.passed(state, segno, checked, context);
        if (checked + 1 < state.sidecar.length || (checked + 1) * WAL_PAGE_BYTES <= chunkEnd) setVerified(state, checked);
      }
      if (writerPage) return this.verifyTailNow(state, segno, endPage - 1, chunk, context);
      page = runEnd;
    }
    return true;
  }

  /**
   * verifyUnrecorded without waiting, for verifyNow: the live writer's partial page `page` (the chunk's last, no
   * sidecar entry yet) checked against the writer's own prefix checksum with the synchronous file checksum. A live
   * publish's chunk ends in that page, so every publish needed verify's promise chain for it (about 0.035 ms of each
   * publish's fan-out, issue 13). False, with nothing marked, whenever verify must decide (no writer page to compare
   * with, a check under way, a failed read, a mismatch: verify then quarantines, logs and throws).
   */
  private verifyTailNow(state: SegmentState, segno: bigint, page: number, chunk: WalChunk, context: VerifyContext): boolean {
    const pageOffset = page * WAL_PAGE_BYTES;
    const prefixBytes = tailPrefixBytes(page, chunk);
    if (state.tailPage === page && state.tailBytes >= prefixBytes) return true;
    const checksumNow = context.checksummer.checksumPagesNow;
    if (checksumNow === undefined || state.tailCheck !== undefined) return false;
    const expected = context.tail?.tailPagePrefixCrc(this.pageLsn(segno, page), prefixBytes);
    if (expected === undefined) return false;
    const actual = this.takeResults(1);
    try {
      try {
        checksumNow.call(context.checksummer, { file: chunk.file, fileOffset: pageOffset, byteCount: prefixBytes }, WAL_PAGE_BYTES, actual);
      } catch {
        return false;
      }
      if (actual[0] !== expected) return false;
    } finally {
      this.recycle(actual);
    }
    this.passed(state, segno, page, context);
    recordTailChecked(state, page, prefixBytes);
    return true;
  }

  /** Pages [firstPage, endPage), none verified yet: those with sidecar entries in one checksum call, then the rest. */
  private async verifyRun(state: SegmentState, segno: bigint, firstPage: number, endPage: number, chunk: WalChunk, context: VerifyContext): Promise<void> {
    // Reread only when a page before the last lacks its entry. The last page may be the live writer's partial page,
    // which has none: verifyUnrecorded checks it against the writer and rereads the sidecar itself if the writer has
    // moved on. Rereading for it here cost every live stream an open + stat + read + close per publish: a third of
    // the event loop at 1,000 waiting replicas (profiled, issue 13).
    let readNow = false;
    if (state.sidecar.length < endPage - 1 && !state.sidecarFinal) {
      await this.rereadSidecar(state, chunk);
      readNow = true;
    }
    const recordedEnd = Math.min(endPage, state.sidecar.length);
    if (recordedEnd > firstPage) await this.verifyRecorded(state, segno, firstPage, recordedEnd, chunk, context);
    const chunkEnd = chunk.fileOffset + chunk.byteCount;
    for (let page = Math.max(firstPage, recordedEnd); page < endPage; page++) {
      // Ingest appends a page's entry when the page fills, before the flush that publishes it, so a page this chunk
      // holds whole (it lies below the published position) without an entry in a sidecar read since the chunk was
      // located has none: an old segment's. Only the writer's partial page, which the chunk ends in, is asked about.
      // Before, each such page reread the sidecar (a failed open per page per stream on segments from before
      // sidecars: ~2.8 CPU s/GB, issue 13) and stayed unsettled, so every stream paid it again.
      if ((readNow || state.sidecarFinal) && (page + 1) * WAL_PAGE_BYTES <= chunkEnd) {
        this.settleUnrecorded(state, page, context);
        continue;
      }
      await this.verifyUnrecorded(state, segno, page, chunk, context);
    }
  }

  /** Reads the sidecar next to the chunk's file again; final when the file is a complete segment (see sidecarFinal). */
  private async rereadSidecar(state: SegmentState, chunk: WalChunk): Promise<void> {
    const complete = !chunk.file.path.endsWith(PARTIAL_SUFFIX);
    state.sidecar = await readSidecar(state.sidecarPath, 0);
    if (complete) state.sidecarFinal = true;
  }

  /**
   * A page with no recorded checksum is sent unverified (one warning per segment) and settled: its bit is set, so no
   * stream asks again while this state lives. A re-import that records it replaces the file, hence the state.
   */
  private settleUnrecorded(state: SegmentState, page: number, context: VerifyContext): void {
    this.warnUnverifiable(state, page, context);
    setVerified(state, page);
  }

  private async verifyRecorded(state: SegmentState, segno: bigint, firstPage: number, endPage: number, chunk: WalChunk, context: VerifyContext): Promise<void> {
    const actual = await this.checksum(state, firstPage * WAL_PAGE_BYTES, (endPage - firstPage) * WAL_PAGE_BYTES, chunk, context).catch((error: unknown) =>
      this.truncatedOrRethrow(error, state, segno, firstPage, endPage, chunk, context),
    );
    const chunkEnd = chunk.fileOffset + chunk.byteCount;
    try {
      for (let page = firstPage; page < endPage; page++) {
        if (actual[page - firstPage] !== state.sidecar[page]) {
          // The sidecar may have changed since it was read (a writer resumed a closed partial page): reread once.
          state.sidecar = await readSidecar(state.sidecarPath, 0);
          if (actual[page - firstPage] !== state.sidecar[page]) this.fail(state, segno, page, chunk, context, actual[page - firstPage], state.sidecar[page]);
        }
        this.passed(state, segno, page, context);
        // A page is done for good once a later page is recorded or it lies below what may be sent: only the last
        // recorded page can be a closed writer's partial one, which a resumed writer extends and records anew.
        if (page + 1 < state.sidecar.length || (page + 1) * WAL_PAGE_BYTES <= chunkEnd) setVerified(state, page);
      }
    } finally {
      this.recycle(actual);
    }
  }

  /** A page without a sidecar entry: the live writer's partial page, checked by prefix against its memory. */
  private async verifyUnrecorded(state: SegmentState, segno: bigint, page: number, chunk: WalChunk, context: VerifyContext): Promise<void> {
    const prefixBytes = tailPrefixBytes(page, chunk);
    if (state.tailPage === page && state.tailBytes >= prefixBytes) return;
    const underWay = state.tailCheck;
    if (underWay !== undefined && underWay.page === page && underWay.prefixBytes >= prefixBytes) {
      await underWay.done.catch(() => undefined);
      // Verified by prefix against the writer, or (the page filled meanwhile) whole against the sidecar.
      if (isVerified(state, page) || (state.tailPage === page && state.tailBytes >= prefixBytes)) return;
    }
    const done = this.checkTail(state, segno, page, prefixBytes, chunk, context);
    state.tailCheck = { page, prefixBytes, done };
    try {
      await done;
    } finally {
      if (state.tailCheck?.done === done) state.tailCheck = undefined;
    }
  }

  private async checkTail(state: SegmentState, segno: bigint, page: number, prefixBytes: number, chunk: WalChunk, context: VerifyContext): Promise<void> {
    const expected = context.tail?.tailPagePrefixCrc(this.pageLsn(segno, page), prefixBytes);
    if (expected === undefined) {
      // The page filled meanwhile (its entry is in the sidecar now), or nobody recorded it (an old segment).
      if (!state.sidecarFinal) await this.rereadSidecar(state, chunk);
      if (page < state.sidecar.length) return this.verifyRecorded(state, segno, page, page + 1, chunk, context);
      // Settled when nothing can record it any more: the sidecar is final, or the chunk holds the page whole.
      if (state.sidecarFinal || (page + 1) * WAL_PAGE_BYTES <= chunk.fileOffset + chunk.byteCount) this.settleUnrecorded(state, page, context);
      else this.warnUnverifiable(state, page, context);
      return;
    }
    const results = await this.checksum(state, page * WAL_PAGE_BYTES, prefixBytes, chunk, context);
    const actual = results[0];
    this.recycle(results);
    if (actual !== expected) this.fail(state, segno, page, chunk, context, actual, expected);
    this.passed(state, segno, page, context);
    recordTailChecked(state, page, prefixBytes);
  }

  /** The LSN at which page `page` of segment `segno` starts. */
  private pageLsn(segno: bigint, page: number): Lsn {
    return segmentStartLsn(segno, this.layout.segmentBytes) + BigInt(page * WAL_PAGE_BYTES);
  }

  /** The page checksums of the range, in an array at least that long; hand it to recycle() once read. */
  private async checksum(state: SegmentState, fileOffset: number, byteCount: number, chunk: WalChunk, context: VerifyContext): Promise<Uint32Array> {
    const out = this.takeResults(Math.ceil(byteCount / WAL_PAGE_BYTES));
    try {
      await context.checksummer.checksumPages({ file: chunk.file, fileOffset, byteCount }, WAL_PAGE_BYTES, out);
    } catch (error) {
      this.recycle(out);
      throw error;
    }
    assert.ok(state.path.length > 0, 'a segment state names its file');
    return out;
  }

  private takeResults(pages: number): Uint32Array {
    const spare = this.spareResults.pop();
    return spare !== undefined && spare.length >= pages ? spare : new Uint32Array(Math.max(pages, RESULT_PAGES_MIN));
  }

  private recycle(results: Uint32Array): void {
    if (this.spareResults.length < SPARE_RESULTS_MAX) this.spareResults.push(results);
  }

  /**
   * A recorded page the file no longer holds whole (the segment was truncated after its checksum was recorded): the
   * whole pages before the cut are verified and sent, then the stream ends with WALCAST_ERR_SEGMENT_TRUNCATED. The
   * partial page at the cut is never sent, since its bytes cannot be checked against a whole page's checksum.
   * Any other checksum failure is rethrown as it is.
   */
  private async truncatedOrRethrow(error: unknown, state: SegmentState, segno: bigint, firstPage: number, endPage: number, chunk: WalChunk, context: VerifyContext): Promise<never> {
    // A handle storage started closing names nothing reliable: its number may be another file's by now.
    if (chunk.file.closed === true) throw error;
    const fileBytes = fstatSync(chunk.file.fd).size;
    if (fileBytes >= endPage * WAL_PAGE_BYTES) throw error;
    const wholePages = Math.floor(fileBytes / WAL_PAGE_BYTES);
    if (wholePages > firstPage) await this.verifyRecorded(state, segno, firstPage, Math.min(wholePages, endPage), chunk, context);
    const goodBytes = Math.max(0, wholePages * WAL_PAGE_BYTES - chunk.fileOffset);
    assert.ok(goodBytes < chunk.byteCount, 'the cut lies inside the chunk');
    const name = basename(chunk.file.path);
    throw new WalCorruptionError(
      `WAL segment ${name} is truncated at offset ${fileBytes} (${this.layout.segmentBytes} expected): the page at offset ${wholePages * WAL_PAGE_BYTES} cannot be verified`,
      goodBytes,
      chunk.file.path,
      wholePages * WAL_PAGE_BYTES,
      'WALCAST_ERR_SEGMENT_TRUNCATED',
    );
  }

  private fail(state: SegmentState, segno: bigint, page: number, chunk: WalChunk, context: VerifyContext, actual: number | undefined, expected: number | undefined): never {
    const fileOffset = page * WAL_PAGE_BYTES;
    const lsn = segmentStartLsn(segno, this.layout.segmentBytes) + BigInt(fileOffset);
    const key = `${segno}:${page}`;
    if (!this.quarantine.has(key)) {
      if (this.quarantine.size >= QUARANTINED_PAGES_MAX) this.quarantine.delete(this.quarantine.keys().next().value as string);
      this.quarantine.set(key, { path: chunk.file.path, fileOffset });
      this.corruptionsDetected++;
      context.log.error(
        { segment: chunk.file.path, offset: fileOffset, lsn: formatLsn(lsn), expectedCrc: hex(expected), actualCrc: hex(actual) },
        'stored WAL failed its page checksum; the page is refused to every replica until it verifies again',
      );
    }
    const goodBytes = Math.max(0, fileOffset - chunk.fileOffset);
    throw new WalCorruptionError(
      `stored WAL is corrupted: the page at ${formatLsn(lsn)} (byte offset ${fileOffset} of ${chunk.file.path}) failed its checksum`,
      goodBytes,
      chunk.file.path,
      fileOffset,
    );
  }

  private passed(state: SegmentState, segno: bigint, page: number, context: VerifyContext): void {
    // The common case, without building a key per page (a string from a bigint: measurable at 131,072 pages/GB).
    if (this.quarantine.size === 0) return;
    const key = `${segno}:${page}`;
    if (!this.quarantine.has(key)) return;
    this.quarantine.delete(key);
    context.log.info({ segment: state.path, offset: page * WAL_PAGE_BYTES }, 'a quarantined WAL page verifies again and is served');
  }

  private warnUnverifiable(state: SegmentState, page: number, context: VerifyContext): void {
    if (state.warnedUnverifiable) return;
    state.warnedUnverifiable = true;
    context.log.warn({ segment: state.path, firstPage: page }, 'WAL pages without a recorded checksum are sent unverified (re-import the segment to record them)');
  }

  /** The segment's state, made anew when the file behind it changed; the least recently used beyond the bound is dropped. */
  private stateFor(segno: bigint, file: WalFileHandle): SegmentState {
    const identity = file.identity ?? file.path;
    const recent = this.recent;
    if (recent !== undefined && recent.segno === segno && recent.state.identity === identity) return recent.state;
    const existing = this.segments.get(segno);
    this.segments.delete(segno);
    if (existing !== undefined && existing.identity === identity) {
      this.segments.set(segno, existing);
      this.recent = { segno, state: existing };
      return existing;
    }
    // The sidecar of the file actually read: after a PostgreSQL timeline switch the same segment number is read from
    // the new timeline's file (storage/wal-reader.ts), whose checksums are its own.
    const name = segmentNameOfPath(file.path) ?? segmentFileName(this.layout.pgTimelineId, segno, this.layout.segmentBytes);
    const state: SegmentState = {
      identity,
      path: file.path,
      // Next to the file read: a segment fetched back from object storage lives in the cache directory with the
      // sidecar fetched with it (remote/segment-cache.ts), not in the timeline directory.
      sidecarPath: sidecarPathFor(file.path.includes('/') ? dirname(file.path) : this.dir, name),
      sidecar: new Uint32Array(0),
      verified: new Uint8Array(Math.ceil(this.pagesPerSegment / 8)),
      tailPage: -1,
      tailBytes: 0,
      tailCheck: undefined,
      checking: [],
      warnedUnverifiable: false,
      sidecarFinal: false,
    };
    this.segments.set(segno, state);
    if (this.segments.size > VERIFIED_SEGMENTS_MAX) this.segments.delete(this.segments.keys().next().value as bigint);
    this.recent = { segno, state };
    return state;
  }
}

function isVerified(state: SegmentState, page: number): boolean {
  return (state.verified[page >> 3]! & (1 << (page & 7))) !== 0;
}

/** The check under way that covers the page, if any. */
function checkUnderWay(state: SegmentState, page: number): Promise<void> | undefined {
  for (const run of state.checking) if (page >= run.first && page < run.end) return run.done;
  return undefined;
}

function setVerified(state: SegmentState, page: number): void {
  state.verified[page >> 3] = (state.verified[page >> 3] ?? 0) | (1 << (page & 7));
}

function hex(value: number | undefined): string {
  return value === undefined ? 'none' : value.toString(16).padStart(8, '0');
}

/** NAME of a segment file path (NAME or NAME.partial), or undefined for a path that is not a segment file. */
function segmentNameOfPath(path: string): string | undefined {
  const base = basename(path);
  const name = base.endsWith(PARTIAL_SUFFIX) ? base.slice(0, -PARTIAL_SUFFIX.length) : base;
  return isSegmentFileName(name) ? name : undefined;
}

/** The bytes of page `page` the chunk reaches: the prefix of the live writer's partial page that is checked. */
function tailPrefixBytes(page: number, chunk: WalChunk): number {
  return Math.min(WAL_PAGE_BYTES, chunk.fileOffset + chunk.byteCount - page * WAL_PAGE_BYTES);
}

/**
 * The writer's page `page` matched its prefix of `prefixBytes`. Never shrinks: a shorter check finishing after a longer
 * one of the same page must not undo it.
 */
function recordTailChecked(state: SegmentState, page: number, prefixBytes: number): void {
  if (state.tailPage !== page || state.tailBytes < prefixBytes) {
    state.tailPage = page;
    state.tailBytes = prefixBytes;
  }
}
