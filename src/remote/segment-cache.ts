/**
 * Reading offloaded WAL back: a bounded local cache directory of segments fetched from the object store. The WAL
 * reader asks for a segment that is no longer on local disk; the cache downloads it (ranged GETs of
 * REMOTE_GET_RANGE_BYTES, each retried), writes it to a temp file, renames it into place and hands back the path,
 * so both I/O backends keep sending from a local file (sendfile / io_uring) and bytes stay byte-identical.
 *
 * Bounds: one download per segment at a time (concurrent readers of one segment share it), at most
 * REMOTE_FETCHES_IN_FLIGHT_MAX downloads at once, memory of one write batch per download (a GET's body streams
 * into the cache file), and the directory's size capped
 * (least recently used segments are unlinked first; a reader that has one open keeps reading it, as Linux keeps an
 * unlinked open file). A segment the store does not have ends the reader's stream with 58P01, and a log line
 * names the object. Any other failure is retried (REMOTE_GET_ATTEMPTS_MAX per range, doubling pauses, on top of the
 * SDK's own few attempts); when it persists, the fetch rejects with WALCAST_ERR_REMOTE_STORAGE (XX000) naming the
 * object, which ends only the streams that need this segment with an ErrorResponse.
 */
import assert from 'node:assert/strict';
import { mkdir, open, readdir, rename, stat, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { WalcastError } from '../errors.js';
import type { Logger } from '../log.js';
import { failpoint } from '../failpoints.js';
import { WAL_PAGE_BYTES } from '../lsn.js';
import { SIDECAR_ENTRY_BYTES, SIDECAR_SUFFIX, sidecarPathFor } from '../storage/page-checksums.js';
import { segmentFileName } from '../storage/segment-name.js';
import { segmentPgTimeline, type TimelineHistory } from '../storage/timeline-history.js';
import type { RemoteSegmentSource } from '../storage/wal-reader.js';
import { ObjectNotFoundError, type ObjectStore } from './object-store.js';
import { segmentKey, type TimelineKeys } from './remote-layout.js';

/**
 * One GET (a whole 16 MiB segment). Its body streams into the cache file, so memory does not grow with it; what
 * it bounds is the work a failed GET repeats. Each GET costs the AWS SDK about a millisecond of CPU (middleware,
 * signing; perf), which at 4 MiB per GET was ~15% of walcast's CPU in a catch-up from the bucket.
 */
export const REMOTE_GET_RANGE_BYTES = 16 * 1024 * 1024;
/** Attempts per range before the read fails (transient faults; a missing object is not retried). */
export const REMOTE_GET_ATTEMPTS_MAX = 5;
/** First pause after a failed GET; doubles per attempt. */
export const REMOTE_GET_RETRY_DELAY_MS = 200;
/** Segment downloads at once per timeline: catch-up readers rarely need more than one segment ahead each. */
export const REMOTE_FETCHES_IN_FLIGHT_MAX = 4;
/**
 * How long a segment's failed download answers for it: the send reader and the prefetch reader of one stream (and
 * streams asking at the same moment) get that failure instead of each starting the whole retry sequence again.
 * Short, so a store that recovers is tried again by the next stream.
 */
export const REMOTE_FAILURE_REMEMBER_MS = 5_000;
/**
 * Segments fetched ahead of a reader: asking for segment N also starts N+1 .. N+REMOTE_READ_AHEAD_SEGMENTS (those
 * before the local start, not cached, not being fetched, while a download slot is free). A catch-up reads segments
 * in order, and without this each one was fetched only when the sender's 4 MiB prefetch window reached it: one GET
 * in flight at a time, the sender idle while a whole segment downloads, the store idle while it is sent.
 */
export const REMOTE_READ_AHEAD_SEGMENTS = 2;
/** Default cache size: 16 segments of 16 MiB; enough for a few replicas catching up from object storage. */
export const REMOTE_CACHE_BYTES_DEFAULT = 256 * 1024 * 1024;

assert.ok(REMOTE_GET_RANGE_BYTES <= REMOTE_CACHE_BYTES_DEFAULT);
assert.ok(REMOTE_READ_AHEAD_SEGMENTS < REMOTE_FETCHES_IN_FLIGHT_MAX, 'read-ahead leaves a download slot for a reader');

/** Remote reads for the status API and /metrics. */
export interface RemoteReadStats {
  segmentsFetched: number;
  bytesFetched: number;
  fetchMsTotal: number;
  cacheHits: number;
  /** Segment fetches that failed for good (after REMOTE_GET_ATTEMPTS_MAX attempts of a range). */
  fetchErrors: number;
  /** Failed GETs that were retried (each also logged as a warning). */
  getRetries: number;
  /** Of segmentsFetched, those started by read-ahead (REMOTE_READ_AHEAD_SEGMENTS), not by a reader. */
  readAheadFetched: number;
  /** Read-ahead segments a reader then asked for (while downloading or cached). */
  readAheadUsed: number;
  /** Read-ahead segments evicted before any reader asked for them: downloads that were wasted. */
  readAheadEvictedUnused: number;
}

export interface SegmentCacheOptions {
  readonly store: ObjectStore;
  readonly keys: TimelineKeys;
  readonly dir: string;
  readonly segmentBytes: number;
  /** The timeline's PostgreSQL timeline history now: a segment's object is named by the TLI it assigns it. */
  readonly history: () => TimelineHistory;
  readonly cacheBytesMax?: number;
  /**
   * The first segment on local disk now (the timeline start moves forward with retention): segments from it on
   * are never read ahead. Without it nothing is read ahead.
   */
  readonly localStartSegment?: () => bigint;
  readonly log: Logger;
}

export class SegmentCache implements RemoteSegmentSource {
  readonly stats: RemoteReadStats = {
    segmentsFetched: 0,
    bytesFetched: 0,
    fetchMsTotal: 0,
    cacheHits: 0,
    fetchErrors: 0,
    getRetries: 0,
    readAheadFetched: 0,
    readAheadUsed: 0,
    readAheadEvictedUnused: 0,
  };
  /**
   * Read-ahead segments no reader has asked for yet: downloading, and cached. Once fetched, each ends up counted
   * exactly once as used or as evicted unused (or is still in `readAheadUnused`); both sets are bounded by the cache.
   */
  private readonly readAheadPending = new Set<bigint>();
  private readonly readAheadUnused = new Set<bigint>();
  /** Cached segment files, least recently used first (Map keeps insertion order; a hit re-inserts). */
  private readonly cached = new Map<bigint, string>();
  private readonly downloads = new Map<bigint, Promise<string | undefined>>();
  /** Recent download failures by segment (bounded: entries older than REMOTE_FAILURE_REMEMBER_MS are dropped). */
  private readonly failures = new Map<bigint, { readonly error: WalcastError; readonly atMs: number }>();
  private readonly waiting: (() => void)[] = [];
  private ready: Promise<void> | undefined;

  constructor(private readonly options: SegmentCacheOptions) {
    assert.ok((options.cacheBytesMax ?? REMOTE_CACHE_BYTES_DEFAULT) >= options.segmentBytes, 'the cache holds at least one segment');
  }

  /** The local path of segment `segno` fetched from the store, or undefined when the store does not have it. */
  async fetch(segno: bigint): Promise<string | undefined> {
    await (this.ready ??= this.prepare());
    const path = this.cached.get(segno);
    if (path !== undefined) {
      this.cached.delete(segno);
      this.cached.set(segno, path);
      this.stats.cacheHits++;
      if (this.readAheadUnused.delete(segno)) this.stats.readAheadUsed++;
      this.readAhead(segno);
      return path;
    }
    const failed = this.recentFailure(segno);
    if (failed !== undefined) throw failed;
    // A reader joining a read-ahead download makes it used (counted when it completes).
    this.readAheadPending.delete(segno);
    const download = this.downloads.get(segno) ?? this.startDownload(segno, false);
    this.readAhead(segno);
    return download;
  }

  private startDownload(segno: bigint, readAhead: boolean): Promise<string | undefined> {
    if (readAhead) this.readAheadPending.add(segno);
    const download = this.download(segno, readAhead).finally(() => {
      this.downloads.delete(segno);
      this.readAheadPending.delete(segno);
    });
    this.downloads.set(segno, download);
    return download;
  }

  /**
   * Starts downloads of the segments after `segno` (REMOTE_READ_AHEAD_SEGMENTS). Never queued behind readers'
   * downloads (only while a slot is free) and only when the cache holds them beside the segment being read and
   * one more, so read-ahead cannot evict what a reader is about to open. A read-ahead download is an ordinary one:
   * a reader reaching the segment joins it, and its failure is logged, counted and remembered as any other.
   */
  private readAhead(segno: bigint): void {
    const localStart = this.options.localStartSegment?.();
    if (localStart === undefined) return;
    const cap = this.options.cacheBytesMax ?? REMOTE_CACHE_BYTES_DEFAULT;
    if ((REMOTE_READ_AHEAD_SEGMENTS + 2) * this.options.segmentBytes > cap) return;
    for (let next = segno + 1n; next <= segno + BigInt(REMOTE_READ_AHEAD_SEGMENTS) && next < localStart; next++) {
      if (this.cached.has(next) || this.downloads.has(next) || this.recentFailure(next) !== undefined) continue;
      if (this.active + this.waiting.length >= REMOTE_FETCHES_IN_FLIGHT_MAX) return;
      // Nobody awaits it yet: a failure is handled (logged, remembered) inside download, and seen by a later reader.
      this.startDownload(next, true).catch(() => undefined);
    }
  }

  private recentFailure(segno: bigint): WalcastError | undefined {
    const now = Date.now();
    for (const [failedSegno, failure] of this.failures) if (now - failure.atMs >= REMOTE_FAILURE_REMEMBER_MS) this.failures.delete(failedSegno);
    return this.failures.get(segno)?.error;
  }

  /** Creates the directory and forgets files of an earlier run (their completeness is not known). */
  private async prepare(): Promise<void> {
    await mkdir(this.options.dir, { recursive: true });
    for (const name of await readdir(this.options.dir)) await unlink(join(this.options.dir, name)).catch(() => undefined);
  }

  private async download(segno: bigint, readAhead: boolean): Promise<string | undefined> {
    await this.acquireSlot();
    try {
      return await this.downloadInSlot(segno, readAhead);
    } finally {
      this.releaseSlot();
    }
  }

  private async downloadInSlot(segno: bigint, readAhead: boolean): Promise<string | undefined> {
    const { store, keys, segmentBytes, dir } = this.options;
    // The uploader's naming rule (segment-uploader.ts), so a segment of an older TLI is read from its own object.
    const pgTimelineId = segmentPgTimeline(segno, segmentBytes, this.options.history());
    const name = segmentFileName(pgTimelineId, segno, segmentBytes);
    const key = store.key(segmentKey(keys, pgTimelineId, segno, segmentBytes));
    const startedMs = Date.now();
    const tempPath = join(dir, `${name}.download`);
    const path = join(dir, name);
    try {
      const handle = await open(tempPath, 'w');
      try {
        for (let position = 0; position < segmentBytes; position += REMOTE_GET_RANGE_BYTES) {
          const length = Math.min(REMOTE_GET_RANGE_BYTES, segmentBytes - position);
          await this.getWithRetries(key, position, length, handle);
        }
      } finally {
        await handle.close();
      }
      // The sidecar goes in place first: the verifier must never find this segment without the checksums it came
      // with. Inside this try, so a sidecar that cannot be read fails the download visibly, like the segment.
      const hasSidecar = await this.fetchSidecar(key, name);
      if (!hasSidecar) this.options.log.warn({ object: key + SIDECAR_SUFFIX, segment: name }, 'no page-checksum sidecar in object storage for this segment: it is served unverified');
      await rename(tempPath, path);
    } catch (error) {
      await unlink(tempPath).catch(() => undefined);
      if (error instanceof ObjectNotFoundError) {
        this.options.log.error({ object: key, segment: name }, 'WAL segment is neither on local disk nor in object storage');
        return undefined;
      }
      // Permanent after the retries (or a local write failure): the streams reading this segment end with an
      // ErrorResponse (XX000) that names the object; other streams, and a later attempt at this one, go on.
      this.stats.fetchErrors++;
      this.options.log.error({ err: error, object: key, segment: name }, 'reading WAL segment from object storage failed');
      const failure = new WalcastError('WALCAST_ERR_REMOTE_STORAGE', `could not read WAL segment ${name} from object storage (object ${key}): ${(error as Error).message}`, {
        cause: error,
      });
      this.failures.set(segno, { error: failure, atMs: Date.now() });
      throw failure;
    }
    this.stats.segmentsFetched++;
    this.stats.bytesFetched += segmentBytes;
    this.stats.fetchMsTotal += Date.now() - startedMs;
    if (readAhead) {
      this.stats.readAheadFetched++;
      if (this.readAheadPending.has(segno)) this.readAheadUnused.add(segno);
      else this.stats.readAheadUsed++;
    }
    this.cached.set(segno, path);
    await this.evict(segno);
    return path;
  }

  /**
   * Fetches `<segment key>.crc` into the cache directory next to the segment; false when the bucket has none. One
   * GET of the whole object (no HEAD first: a request fewer per segment), refused when larger than a segment's
   * entries or not whole entries.
   */
  private async fetchSidecar(segmentObjectKey: string, name: string): Promise<boolean> {
    const sidecarKey = segmentObjectKey + SIDECAR_SUFFIX;
    const entriesMax = (this.options.segmentBytes / WAL_PAGE_BYTES) * SIDECAR_ENTRY_BYTES;
    let bytes: Buffer;
    try {
      bytes = await this.withRetries(sidecarKey, () => this.options.store.getObject(sidecarKey, entriesMax));
    } catch (error) {
      if (error instanceof ObjectNotFoundError) return false;
      throw error;
    }
    if (bytes.length % SIDECAR_ENTRY_BYTES !== 0) throw new Error(`object ${sidecarKey} holds ${bytes.length} bytes, not whole checksum entries`);
    const sidecarPath = sidecarPathFor(this.options.dir, name);
    await writeFile(`${sidecarPath}.download`, bytes);
    await rename(`${sidecarPath}.download`, sidecarPath);
    return true;
  }

  /**
   * A GET of segment bytes into the download file: the one the `remote-read-after-get` failpoint counts (not
   * sidecars). A short answer (the object is shorter than a segment: empty, cut, or being replaced on a store that
   * does not replace atomically) is a failed attempt like a transport fault, retried and then reported naming the
   * object; the range is written again from its start.
   */
  private async getWithRetries(key: string, position: number, length: number, file: FileHandle): Promise<void> {
    await this.withRetries(key, async () => {
      const written = await this.options.store.getRangeToFile(key, position, length, file, position);
      failpoint('remote-read-after-get');
      if (written !== length) throw new Error(`object ${key} answered ${written} bytes at offset ${position}, expected ${length}: it is shorter than a segment`);
    });
  }

  /** `get`, retried on any failure but a missing object (REMOTE_GET_ATTEMPTS_MAX attempts, doubling pauses). */
  private async withRetries<T>(key: string, get: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await get();
      } catch (error) {
        if (error instanceof ObjectNotFoundError || attempt >= REMOTE_GET_ATTEMPTS_MAX) throw error;
        this.stats.getRetries++;
        this.options.log.warn({ err: error, object: key, attempt }, 'object storage GET failed; retrying');
        await new Promise((resolve) => setTimeout(resolve, REMOTE_GET_RETRY_DELAY_MS * 2 ** (attempt - 1)));
      }
    }
  }

  /** Unlinks least recently used segments until the cache fits its cap; never the one just fetched. */
  private async evict(keep: bigint): Promise<void> {
    const cap = this.options.cacheBytesMax ?? REMOTE_CACHE_BYTES_DEFAULT;
    while (this.cached.size * this.options.segmentBytes > cap) {
      const oldest = [...this.cached.keys()].find((segno) => segno !== keep);
      if (oldest === undefined) break;
      const path = this.cached.get(oldest);
      this.cached.delete(oldest);
      if (this.readAheadUnused.delete(oldest)) this.stats.readAheadEvictedUnused++;
      if (path !== undefined) {
        await unlink(path).catch(() => undefined);
        await unlink(sidecarPathFor(dirname(path), basename(path))).catch(() => undefined);
      }
    }
  }

  private async acquireSlot(): Promise<void> {
    while (this.active >= REMOTE_FETCHES_IN_FLIGHT_MAX) {
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    }
    this.active++;
  }

  private releaseSlot(): void {
    this.active--;
    this.waiting.shift()?.();
  }

  private active = 0;

  /** Bytes the cache directory holds now (tests). */
  async cachedBytes(): Promise<number> {
    let total = 0;
    for (const path of this.cached.values()) total += (await stat(path).catch(() => undefined))?.size ?? 0;
    return total;
  }
}
