/**
 * Locating stored WAL for the sender: turns an LSN range into a byte range of an open segment file
 * (a `WalChunk` for the I/O backend), and the errors PostgreSQL sends when a start cannot be served.
 *
 * File descriptors: the reader keeps the current segment open and reuses it while the stream stays in that
 * segment. When it moves on, the I/O backend may still hold in-flight sends (sendfile / io_uring) on the old
 * descriptor, and closing it would let the kernel reuse the number for another file under those sends. So the
 * previous segment stays open one segment longer: it is closed when the reader moves two segments on (by then a
 * whole segment, at least 1 MiB, was located after it, far more than any backend's in-flight bound) or on close().
 * A handle is marked `closed` synchronously when its close starts, and locate never returns a chunk of a handle closed
 * during its awaits (a concurrent locate or close() may retire it): the number may already be a new client's socket.
 * The readers of one stream (send and prefetch) share their open segments through one OpenSegments
 * (open-segments.ts): each segment is opened once per stream, and closed when no reader holds it any more.
 *
 * Damaged storage is reported at the exact byte: a segment file shorter than the range asked for yields a chunk cut
 * at the file's end, and the next locate (at that end) throws WALCAST_ERR_SEGMENT_TRUNCATED (XX001) naming the segment
 * and offset; a segment missing inside the timeline throws WALCAST_ERR_WAL_REMOVED (58P01) naming it. No backend is
 * ever handed a range the file does not hold, so a replica receives every stored byte before the damage and then
 * an ErrorResponse, never a short CopyData or a silent close.
 *
 * Retention: with a `SegmentPinner` (the Timeline), the reader pins a segment before it opens it and unpins it
 * after closing it, so retention never unlinks a file a sender has open or is about to open. A refused pin means
 * the segment is before the timeline start: WALCAST_ERR_WAL_REMOVED, as PostgreSQL's CheckXLogRemoved.
 */
import assert from 'node:assert/strict';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { WalcastError } from '../errors.js';
import type { WalChunk } from './wal-chunk.js';
import { OpenSegments, type OpenSegment } from './open-segments.js';
import { formatLsn, minLsn, type Lsn } from '../lsn.js';
import { PARTIAL_SUFFIX, offsetInSegment, segmentFileName, segmentOf, segmentStartLsn } from './segment-name.js';
import { segmentPgTimeline, type TimelineHistory } from './timeline-history.js';

/**
 * What the reader needs to know about a timeline; the Timeline object satisfies it. With a `history`, each segment
 * is read from the file of the PostgreSQL timeline that holds its last byte (as pg_wal after a promotion); the
 * history is read at every segment change, so a reader follows a timeline switch made while it runs.
 */
export interface SegmentLayout {
  readonly segmentBytes: number;
  readonly pgTimelineId: number;
  readonly timelineStartLsn: Lsn;
  readonly history?: TimelineHistory;
}

/** Guards segment files against removal while they are open (src/timeline Timeline.pinSegment). */
export interface SegmentPinner {
  /** Pins `segno`; returns the release function, or undefined when the segment is no longer held. */
  pinSegment(segno: bigint): (() => void) | undefined;
}

/**
 * Where segments no longer on local disk come from (src/remote SegmentCache: fetched from object storage into a
 * local cache file). Resolves a local path holding the whole segment, or undefined when it is held nowhere.
 */
export interface RemoteSegmentSource {
  fetch(segno: bigint): Promise<string | undefined>;
}

/** PostgreSQL's message when a start is past the end (walsender.c StartReplication); SQLSTATE XX000. */
export function startAheadError(startLsn: Lsn, endLsn: Lsn): WalcastError {
  return new WalcastError(
    'WALCAST_ERR_START_AHEAD',
    `requested starting point ${formatLsn(startLsn)} is ahead of the WAL flush position of this server ${formatLsn(endLsn)}`,
  );
}

/** Fetch-and-open attempts of one remote segment whose cache file vanished before it was opened (evicted). */
const REMOTE_OPEN_ATTEMPTS_MAX = 3;

export class WalReader {
  private current: OpenSegment | undefined;
  private previous: OpenSegment | undefined;
  private closed = false;
  /** The open switchTo has under way, by segment name (see switchTo). */
  private opening: { readonly name: string; readonly opened: Promise<OpenSegment> } | undefined;

  constructor(
    private readonly dir: string,
    private readonly layout: SegmentLayout,
    private readonly pinner?: SegmentPinner,
    private readonly remote?: RemoteSegmentSource,
    /** Shared with the stream's other reader (see open-segments.ts); a reader of its own by default. */
    private readonly segments: OpenSegments = new OpenSegments(),
  ) {
    assert.ok(layout.timelineStartLsn % BigInt(layout.segmentBytes) === 0n, 'a timeline starts at a segment start');
  }

  /** PostgreSQL's message for WAL not held (walsender.c XLogRead / CheckXLogRemoved); SQLSTATE 58P01. */
  removedError(lsn: Lsn): WalcastError {
    const name = this.segmentName(segmentOf(lsn, this.layout.segmentBytes));
    return new WalcastError('WALCAST_ERR_WAL_REMOVED', `requested WAL segment ${name} has already been removed`);
  }

  /**
   * locate's answer without I/O or awaits, when there is one: the open segment holds `lsn` under the same name it was
   * opened by, and the range lies inside the file's known size. Undefined otherwise (locate then opens, stats or
   * throws). The sender calls this for every chunk first: a 16 MiB segment is 128 chunks, of which only the first
   * needs the asynchronous path.
   */
  locateNow(lsn: Lsn, endLsn: Lsn): WalChunk | undefined {
    const segment = this.current;
    if (segment === undefined || this.closed || segment.file.closed || endLsn <= lsn) return undefined;
    const { segmentBytes, timelineStartLsn } = this.layout;
    if (lsn < timelineStartLsn && this.remote === undefined) return undefined;
    if (segment.namedFor.history !== this.layout.history || segment.namedFor.pgTimelineId !== this.layout.pgTimelineId) return undefined;
    const segno = segmentOf(lsn, segmentBytes);
    if (segno !== segment.segno) return undefined;
    const segmentEnd = segmentStartLsn(segno + 1n, segmentBytes);
    const wantedBytes = Number(minLsn(endLsn, segmentEnd) - lsn);
    const fileOffset = offsetInSegment(lsn, segmentBytes);
    if (fileOffset + wantedBytes > segment.bytes) return undefined;
    return { file: segment.file, fileOffset, byteCount: wantedBytes };
  }

  /** The file range [lsn, min(endLsn, end of lsn's segment)). Throws WALCAST_ERR_WAL_REMOVED when not held. */
  async locate(lsn: Lsn, endLsn: Lsn): Promise<WalChunk> {
    assert.ok(endLsn > lsn, 'locate: the range is not empty');
    if (this.closed) throw new ReaderClosedError();
    if (lsn < this.layout.timelineStartLsn && this.remote === undefined) throw this.removedError(lsn);
    const { segmentBytes } = this.layout;
    const segno = segmentOf(lsn, segmentBytes);
    // Keyed by name, not segno: after a timeline switch the same segment number is read from the new TLI's file.
    const name = this.segmentName(segno);
    const segment = this.current?.name === name ? this.current : await this.switchTo(segno, name, lsn);
    const segmentEnd = segmentStartLsn(segno + 1n, segmentBytes);
    const wantedBytes = Number(minLsn(endLsn, segmentEnd) - lsn);
    const fileOffset = offsetInSegment(lsn, segmentBytes);
    assert.ok(wantedBytes > 0 && fileOffset + wantedBytes <= segmentBytes, 'the chunk stays inside its segment');
    if (fileOffset + wantedBytes > segment.bytes) segment.bytes = (await segment.handle.stat()).size;
    if (fileOffset >= segment.bytes) throw this.truncatedError(segment, lsn);
    const byteCount = Math.min(wantedBytes, segment.bytes - fileOffset);
    assert.ok(byteCount > 0 && fileOffset + byteCount <= segment.bytes, 'the chunk is inside the file');
    // The awaits above (open, stat, the retired segment's close) let other work run: a close() of this reader, or a
    // concurrent locate (the sender's prefetcher runs two windows on one reader) that moved two segments on, may have
    // closed this segment meanwhile. Its descriptor number may already belong to a new client's socket, so the
    // chunk is never handed out: locate again (reopening the segment), or fail when the reader itself closed.
    if (segment.file.closed) {
      if (this.closed) throw new ReaderClosedError();
      return this.locate(lsn, endLsn);
    }
    return { file: segment.file, fileOffset, byteCount };
  }

  /** A segment file that ends before the WAL it must hold (XX001: stored data is damaged). */
  private truncatedError(segment: OpenSegment, lsn: Lsn): WalcastError {
    const name = segment.name;
    const offset = offsetInSegment(lsn, this.layout.segmentBytes);
    return new WalcastError(
      'WALCAST_ERR_SEGMENT_TRUNCATED',
      `WAL segment ${name} is truncated at offset ${segment.bytes} (${this.layout.segmentBytes} expected): cannot send WAL at ${formatLsn(lsn)} (offset ${offset})`,
    );
  }

  /** A segment inside the timeline that is not there (58P01, as PostgreSQL's "has already been removed"). */
  private missingError(lsn: Lsn): WalcastError {
    const name = this.segmentName(segmentOf(lsn, this.layout.segmentBytes));
    const offset = offsetInSegment(lsn, this.layout.segmentBytes);
    return new WalcastError('WALCAST_ERR_WAL_REMOVED', `WAL segment ${name} is missing from storage: cannot send WAL at ${formatLsn(lsn)} (offset ${offset})`);
  }

  /**
   * Copies WAL from `lsn` into `target` across segments (tests, benchmarks, validation). Resolves the bytes
   * copied: fewer than asked only if a file is shorter than its segment.
   */
  async readRange(lsn: Lsn, target: Buffer): Promise<number> {
    let filled = 0;
    while (filled < target.length) {
      const position = lsn + BigInt(filled);
      const chunk = await this.locate(position, position + BigInt(target.length - filled));
      const segment = this.current;
      assert.ok(segment !== undefined);
      const { bytesRead } = await segment.handle.read(target, filled, chunk.byteCount, chunk.fileOffset);
      filled += bytesRead;
      if (bytesRead < chunk.byteCount) break;
    }
    return filled;
  }

  /** Whether the segment of the last located chunk was read back from object storage (bytes-served accounting). */
  get locatedRemote(): boolean {
    return this.current?.remote === true;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.releaseSegments();
  }

  /**
   * Lets go of the open segments (closed, and their pins released, once the stream's other reader lets go of them
   * too: ParkedReaders releases both), the reader staying usable: the next locate opens again. For a
   * sender parked in the commit batch (replication/send-wal.ts ParkedReaders), which reads nothing meanwhile: its
   * segments would otherwise stay pinned, and unremovable, for as long as the batch sends for it. The caller makes
   * sure no backend still sends from them and no locate is under way (one would locate again, or fail on the closed
   * handle as after close()).
   */
  async releaseSegments(): Promise<void> {
    const segments = [this.previous, this.current];
    this.previous = undefined;
    this.current = undefined;
    await Promise.all(segments.map((segment) => this.segments.release(segment)));
  }

  /**
   * Concurrent locates of one segment share its open: the prefetcher locates up to a window of pieces at once, and
   * each opening the new segment on its own made a second open retire the first one's handle, or the segment before
   * it, while a piece may still have been reading it (the previous segment is kept open one segment longer for that),
   * and pinned and opened the segment once per piece.
   */
  private async switchTo(segno: bigint, name: string, lsn: Lsn): Promise<OpenSegment> {
    const pending = this.opening;
    if (pending !== undefined && pending.name === name) return pending.opened;
    const opened = this.openAndInstall(segno, name, lsn);
    const entry = { name, opened };
    this.opening = entry;
    try {
      return await opened;
    } finally {
      if (this.opening === entry) this.opening = undefined;
    }
  }

  private async openAndInstall(segno: bigint, name: string, lsn: Lsn): Promise<OpenSegment> {
    // Open already when the stream's other reader holds it (the prefetch reader runs ahead of the send reader).
    const opened = await this.segments.acquire(name, () => this.openSegment(segno, lsn));
    if (this.closed) {
      await this.segments.release(opened);
      throw new ReaderClosedError();
    }
    const retired = this.previous;
    this.previous = this.current;
    this.current = opened;
    await this.segments.release(retired);
    return opened;
  }

  /** What segmentName depends on besides the segment number, as it is now. */
  private namingNow(): OpenSegment['namedFor'] {
    return { history: this.layout.history, pgTimelineId: this.layout.pgTimelineId };
  }

  private segmentName(segno: bigint): string {
    const { history, segmentBytes } = this.layout;
    const pgTimelineId = history === undefined ? this.layout.pgTimelineId : segmentPgTimeline(segno, segmentBytes, history);
    return segmentFileName(pgTimelineId, segno, segmentBytes);
  }

  private async openSegment(segno: bigint, lsn: Lsn): Promise<OpenSegment> {
    const unpin = this.pinner === undefined ? noUnpin : this.pinner.pinSegment(segno);
    if (unpin === undefined) return this.openRemote(segno, lsn);
    try {
      return await this.openPinned(segno, lsn, unpin);
    } catch (error) {
      unpin();
      throw error;
    }
  }

  /**
   * A segment before the local start: from object storage through the cache, when offload is on. The cache file is
   * not pinned: the cache may unlink it under us, and the open descriptor keeps its bytes readable.
   */
  private async openRemote(segno: bigint, lsn: Lsn): Promise<OpenSegment> {
    const { handle, path } = await this.openFetched(segno, lsn);
    const info = await handle.stat();
    return { segno, name: this.segmentName(segno), handle, file: { fd: handle.fd, path, identity: `${info.dev}:${info.ino}`, closed: false }, bytes: info.size, unpin: noUnpin, remote: true, namedFor: this.namingNow() };
  }

  /**
   * Fetches and opens a remote segment. The cache may evict the file between handing out its path and our open (a
   * small cache, many readers): then it is fetched again, a bounded number of times.
   */
  private async openFetched(segno: bigint, lsn: Lsn): Promise<{ readonly handle: FileHandle; readonly path: string }> {
    for (let attempt = 1; ; attempt++) {
      const path = this.remote === undefined ? undefined : await this.remote.fetch(segno);
      if (path === undefined) throw this.removedError(lsn);
      try {
        return { handle: await open(path, 'r'), path };
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= REMOTE_OPEN_ATTEMPTS_MAX) throw error;
      }
    }
  }

  private async openPinned(segno: bigint, lsn: Lsn, unpin: () => void): Promise<OpenSegment> {
    const namedFor = this.namingNow();
    const name = this.segmentName(segno);
    // NAME first: every segment but the one being filled is complete, so a catch-up opens each with one open instead
    // of a failed open of NAME.partial first (an ENOENT error object and a thread-pool round trip per segment and
    // reader). Then NAME.partial (the segment being filled), then NAME again: the writer renames NAME.partial to NAME
    // when the segment completes, and that may happen between the first two tries.
    for (const candidate of [name, name + PARTIAL_SUFFIX, name]) {
      const path = join(this.dir, candidate);
      try {
        const handle = await open(path, 'r');
        const info = await handle.stat();
        return { segno, name, handle, file: { fd: handle.fd, path, identity: `${info.dev}:${info.ino}`, closed: false }, bytes: info.size, unpin, remote: false, namedFor };
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      }
    }
    throw this.missingError(lsn);
  }
}

function noUnpin(): void {}

/**
 * A locate that ran into (or after) close(): the stream ended meanwhile, typically while the sender's prefetcher was
 * still looking ahead. Not a storage failure; the prefetcher ignores it and the send reader is never closed early.
 */
export class ReaderClosedError extends Error {
  constructor() {
    super('the WAL reader was closed during locate');
    this.name = 'ReaderClosedError';
  }
}
