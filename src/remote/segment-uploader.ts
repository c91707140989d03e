/**
 * The uploader of one timeline: offloads every completed segment below the durable flush LSN to the object store,
 * once, and advances the timeline's backup LSN only over a contiguous run of confirmed uploads.
 *
 * - At most REMOTE_UPLOADS_IN_FLIGHT_MAX segments upload at once; each streams from its file (the store reads it
 *   in pieces), so memory stays bounded whatever the segment size and however far behind the uploader is.
 * - A failed upload is retried after a capped exponential backoff; the others keep going, but the backup LSN waits
 *   at the failed segment, so retention (which keeps everything from the backup LSN on) never removes it locally.
 * - The backup LSN is persisted (the caller's `persistBackupLsn`, the control file) only after the uploads below
 *   it are confirmed by the store; after a crash the uploader starts again from the persisted value and uploads
 *   some segments a second time, which is harmless (same key, same bytes).
 * - After each advance the timeline's metadata object is rewritten, so the bucket alone describes the timeline.
 * - Each segment is named with the PostgreSQL timeline (TLI) its history assigns it, the rule the WAL reader uses
 *   (timeline-history.ts segmentPgTimeline: the segment holding a switch point comes from the new TLI's file). The
 *   history is read at each upload, not once: ingest moves the timeline to a new TLI while the server runs (a
 *   promotion upstream), and a name fixed at start would look for old-TLI files that never come, stalling the
 *   backup LSN and with it retention. Before the first segment of a TLI goes up, the history files of it and its
 *   ancestors go up, byte-identical (the bucket is a WAL archive as pg_wal is: recovery needs `0000000N.history`),
 *   and the metadata object names the current TLI only once its history file is in the bucket.
 */
import assert from 'node:assert/strict';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { failpoint } from '../failpoints.js';
import type { Logger } from '../log.js';
import { WAL_PAGE_BYTES, formatLsn, type Lsn } from '../lsn.js';
import { SIDECAR_ENTRY_BYTES, SIDECAR_SUFFIX, sidecarPathFor } from '../storage/page-checksums.js';
import { PARTIAL_SUFFIX, historyFileName, segmentFileName, segmentOf, segmentStartLsn } from '../storage/segment-name.js';
import { HISTORY_FILE_BYTES_MAX, segmentPgTimeline, type TimelineHistory } from '../storage/timeline-history.js';
import type { ObjectStore } from './object-store.js';
import type { RemoteReadStats } from './segment-cache.js';
import { REMOTE_METADATA_FORMAT_VERSION, encodeRemoteMetadata, historyKey, metadataKey, segmentKey, type RemoteTimelineMetadata, type TimelineKeys } from './remote-layout.js';

/** Concurrent segment uploads per timeline: enough to hide one request's latency, few enough not to flood a link. */
export const REMOTE_UPLOADS_IN_FLIGHT_MAX = 4;
/** How often the uploader looks for newly completed segments: segments complete at most a few per second. */
export const REMOTE_UPLOAD_POLL_MS = 500;
/** First retry delay after a failed upload. */
export const REMOTE_RETRY_DELAY_MIN_MS = 200;
/** Retry delay cap: a store that is down for long is tried again every 10 s, not hammered. */
export const REMOTE_RETRY_DELAY_MAX_MS = 10_000;

assert.ok(REMOTE_RETRY_DELAY_MIN_MS < REMOTE_RETRY_DELAY_MAX_MS);

/** Counters for the status API and /metrics. */
export interface UploaderStats {
  bytesUploaded: number;
  segmentsUploaded: number;
  uploadErrors: number;
  /** Completed segments not yet confirmed in the store (in flight or waiting). */
  queueDepth: number;
}

/** What the status API and /metrics show of a timeline's offload. */
export interface OffloadStatus extends Readonly<UploaderStats> {
  readonly backupLsn: Lsn;
  readonly store: string;
  /** Reads back from the store (src/remote/segment-cache.ts), when the cache exists. */
  readonly remoteReads?: Readonly<RemoteReadStats> | undefined;
}

export interface UploaderOptions {
  readonly store: ObjectStore;
  readonly dir: string;
  readonly keys: TimelineKeys;
  /** Everything the metadata object says, except the backup LSN, which the uploader owns, and the TLI (`history`). */
  readonly identity: Omit<RemoteTimelineMetadata, 'backupLsn' | 'formatVersion' | 'pgTimelineId'>;
  /**
   * The timeline's PostgreSQL timeline history now (the Timeline object's `history`, replaced by a switch); its
   * newest entry is the current TLI. Read at every upload.
   */
  readonly history: () => TimelineHistory;
  /** The persisted backup LSN (a segment start), or the timeline start when nothing was offloaded yet. */
  readonly backupLsn: Lsn;
  /** End of durable WAL now; segments wholly below it are complete. */
  readonly flushLsn: () => Lsn;
  /** Makes the new backup LSN durable (control file); the uploader awaits it before publishing the value. */
  readonly persistBackupLsn: (lsn: Lsn) => Promise<void>;
  readonly log: Logger;
  readonly inFlightMax?: number;
  readonly pollMs?: number;
  readonly retryDelayMinMs?: number;
}

export class SegmentUploader {
  readonly stats: UploaderStats = { bytesUploaded: 0, segmentsUploaded: 0, uploadErrors: 0, queueDepth: 0 };
  /** Persisted and published: everything before it is in the store and the control file says so. */
  private confirmedBackupLsn: Lsn;
  /** The end of the contiguous run of confirmed uploads (>= confirmedBackupLsn); persisted next. */
  private uploadedLsn: Lsn;
  /** Segments at or past the backup LSN whose upload is confirmed, waiting for the ones before them. */
  private readonly confirmed = new Set<bigint>();
  private readonly inFlight = new Set<bigint>();
  /** Segment → earliest time (ms) of its next attempt after a failure, and its failure count. */
  private readonly retries = new Map<bigint, { notBeforeMs: number; failures: number }>();
  private readonly stop = new AbortController();
  private loop: Promise<void> | undefined;
  private persisting: Promise<void> = Promise.resolve();
  /** One persist waits at most behind the running one; it takes the newest uploaded end when it starts. */
  private persistQueued = false;
  private wake: (() => void) | undefined;
  /** History files in the bucket (TLI → its put, shared by concurrent uploads); a failed put is forgotten. */
  private readonly histories = new Map<number, Promise<void>>();

  constructor(private readonly options: UploaderOptions) {
    assert.ok(options.backupLsn % BigInt(options.identity.segmentBytes) === 0n, 'the backup LSN is a segment start');
    this.confirmedBackupLsn = options.backupLsn;
    this.uploadedLsn = options.backupLsn;
  }

  /** Everything before this is confirmed in the store and persisted locally. */
  get backupLsn(): Lsn {
    return this.confirmedBackupLsn;
  }

  status(): OffloadStatus {
    return { ...this.stats, backupLsn: this.confirmedBackupLsn, store: this.options.store.description };
  }

  start(): void {
    assert.ok(this.loop === undefined, 'an uploader starts once');
    this.loop = this.run();
  }

  /** Looks for new segments now rather than at the next poll (tests, shutdown flush). */
  poke(): void {
    this.wake?.();
  }

  /** Stops starting uploads, aborts those in flight, and waits for the loop and any persist to end. */
  async close(): Promise<void> {
    this.stop.abort();
    this.wake?.();
    await this.loop;
    await this.persisting;
  }

  private async run(): Promise<void> {
    const pollMs = this.options.pollMs ?? REMOTE_UPLOAD_POLL_MS;
    await this.putMetadata(this.confirmedBackupLsn).catch((error: unknown) => {
      this.options.log.warn({ err: error }, 'could not write the timeline metadata object; it is written again after the next upload');
    });
    while (!this.stop.signal.aborted) {
      if (this.uploadedLsn > this.confirmedBackupLsn) this.persistSoon();
      this.startUploads();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, pollMs);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
    while (this.inFlight.size > 0) await new Promise((resolve) => setTimeout(resolve, 10));
  }

  /** Starts uploads of the oldest complete segments not yet confirmed, up to the in-flight bound. */
  private startUploads(): void {
    const { segmentBytes } = this.options.identity;
    const inFlightMax = this.options.inFlightMax ?? REMOTE_UPLOADS_IN_FLIGHT_MAX;
    const endSegno = segmentOf(this.options.flushLsn(), segmentBytes);
    const now = Date.now();
    // From the uploaded run's end, not the persisted one: segments in between are done and must not go again
    // (retention may remove them the moment their persist completes).
    let segno = segmentOf(this.uploadedLsn, segmentBytes);
    this.stats.queueDepth = Math.max(0, Number(endSegno - segno) - this.confirmed.size);
    for (; segno < endSegno && this.inFlight.size < inFlightMax && !this.stop.signal.aborted; segno++) {
      if (this.confirmed.has(segno) || this.inFlight.has(segno)) continue;
      if ((this.retries.get(segno)?.notBeforeMs ?? 0) > now) continue;
      this.launch(segno);
    }
  }

  private launch(segno: bigint): void {
    this.inFlight.add(segno);
    void this.upload(segno).finally(() => {
      this.inFlight.delete(segno);
      this.wake?.();
    });
  }

  private async upload(segno: bigint): Promise<void> {
    const { identity, keys, store } = this.options;
    // Complete segments never change TLI: a switch only renames from the segment of its switch point on, which was
    // not complete before it. So the history read now names this segment as any later history will.
    const history = this.options.history();
    const pgTimelineId = segmentPgTimeline(segno, identity.segmentBytes, history);
    const key = store.key(segmentKey(keys, pgTimelineId, segno, identity.segmentBytes));
    try {
      await this.putHistories(history, pgTimelineId);
      const path = await this.segmentPath(segno, pgTimelineId);
      await store.putFile(key, path, identity.segmentBytes, this.stop.signal);
      await this.putSidecar(key, segno, pgTimelineId);
      failpoint('offload-after-put');
      this.stats.bytesUploaded += identity.segmentBytes;
      this.stats.segmentsUploaded++;
      this.retries.delete(segno);
      this.confirmed.add(segno);
      this.advance();
    } catch (error) {
      if (this.stop.signal.aborted) return;
      this.stats.uploadErrors++;
      const failures = (this.retries.get(segno)?.failures ?? 0) + 1;
      const delayMs = retryDelayMs(failures, this.options.retryDelayMinMs ?? REMOTE_RETRY_DELAY_MIN_MS);
      this.retries.set(segno, { notBeforeMs: Date.now() + delayMs, failures });
      this.options.log.warn({ err: error, object: key, failures, retryInMs: delayMs }, 'segment upload failed; retrying');
    }
  }

  /**
   * Puts the segment's page-checksum sidecar as `<segment key>.crc`, so a segment read back from the bucket is
   * verified page by page before it is sent, like one on local disk (storage/page-checksums.ts). Part of the
   * segment's upload: the backup LSN covers a segment only once both are stored. A segment stored before sidecars
   * existed has none; it goes up alone and is served from the bucket with the verifier's "unverifiable" warning.
   */
  private async putSidecar(segmentObjectKey: string, segno: bigint, pgTimelineId: number): Promise<void> {
    const { identity, dir, store } = this.options;
    const name = segmentFileName(pgTimelineId, segno, identity.segmentBytes);
    const bytes = await readFile(sidecarPathFor(dir, name)).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw error;
    });
    if (bytes === undefined) {
      this.options.log.warn({ segment: name }, 'segment has no page-checksum sidecar: offloaded without one, served from object storage unverified');
      return;
    }
    assert.ok(bytes.length <= (identity.segmentBytes / WAL_PAGE_BYTES) * SIDECAR_ENTRY_BYTES, 'a sidecar holds at most an entry per page');
    await store.putBytes(segmentObjectKey + SIDECAR_SUFFIX, bytes, this.stop.signal);
  }

  /** NAME once complete; a segment whose rename has not happened yet is still NAME.partial (same bytes). */
  private async segmentPath(segno: bigint, pgTimelineId: number): Promise<string> {
    const { identity, dir } = this.options;
    const name = segmentFileName(pgTimelineId, segno, identity.segmentBytes);
    for (const candidate of [name, name + PARTIAL_SUFFIX]) {
      const path = join(dir, candidate);
      const info = await stat(path).catch(() => undefined);
      if (info !== undefined && info.size >= identity.segmentBytes) return path;
    }
    throw new Error(`segment ${name} is not on local disk in full`);
  }

  /** Moves the uploaded run's end over the contiguous confirmed segments, then persists it as the backup LSN. */
  private advance(): void {
    const { segmentBytes } = this.options.identity;
    let segno = segmentOf(this.uploadedLsn, segmentBytes);
    if (!this.confirmed.has(segno)) return;
    while (this.confirmed.delete(segno)) segno++;
    this.uploadedLsn = segmentStartLsn(segno, segmentBytes);
    this.persistSoon();
  }

  /** Chains one persist of the newest uploaded end; a failed persist is tried again by the next poll. */
  private persistSoon(): void {
    if (this.persistQueued) return;
    this.persistQueued = true;
    this.persisting = this.persisting.then(() => {
      this.persistQueued = false;
      return this.persist(this.uploadedLsn);
    });
  }

  private async persist(target: Lsn): Promise<void> {
    if (target <= this.confirmedBackupLsn) return;
    try {
      await this.options.persistBackupLsn(target);
      assert.ok(target > this.confirmedBackupLsn, 'persists run one at a time, in order');
      this.confirmedBackupLsn = target;
    } catch (error) {
      this.options.log.warn({ err: error, backupLsn: formatLsn(target) }, 'could not persist the backup LSN; retrying');
      this.stats.uploadErrors++;
      return;
    }
    await this.putMetadata(target).catch((error: unknown) => {
      this.options.log.warn({ err: error }, 'could not write the timeline metadata object; it is written again after the next upload');
    });
  }

  /**
   * Puts the history files of `upTo` and every older TLI of `history` that the timeline directory holds, each once
   * per uploader. The oldest TLI of a history has no file (TLI 1, or a timeline imported without its history); a
   * later one always has (a switch writes it before committing, create fetches every ancestor's), so one missing
   * is logged but does not hold the segments back: the newest history file lists every ancestor anyway.
   */
  private async putHistories(history: TimelineHistory, upTo: number): Promise<void> {
    const puts: Promise<void>[] = [];
    for (const [index, entry] of history.entries()) {
      if (entry.pgTimelineId > upTo) break;
      let put = this.histories.get(entry.pgTimelineId);
      if (put === undefined) {
        put = this.putHistory(entry.pgTimelineId, index === 0);
        this.histories.set(entry.pgTimelineId, put);
        put.catch(() => this.histories.delete(entry.pgTimelineId));
      }
      puts.push(put);
    }
    await Promise.all(puts);
  }

  private async putHistory(pgTimelineId: number, oldest: boolean): Promise<void> {
    const { dir, keys, store } = this.options;
    const name = historyFileName(pgTimelineId);
    let bytes: Buffer;
    try {
      bytes = await readFile(join(dir, name));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      if (!oldest) this.options.log.warn({ file: name }, 'history file of a timeline in the history is not on local disk; it is not offloaded');
      return;
    }
    if (bytes.length > HISTORY_FILE_BYTES_MAX) throw new Error(`history file ${name} has ${bytes.length} bytes`);
    // Not aborted by close(), as the metadata object: a history file is tiny, and a truncated one would mislead.
    await store.putBytes(store.key(historyKey(keys, pgTimelineId)), bytes);
    this.options.log.info({ object: store.key(historyKey(keys, pgTimelineId)) }, 'timeline history file offloaded');
  }

  private async putMetadata(backupLsn: Lsn): Promise<void> {
    const { keys, store, identity } = this.options;
    const history = this.options.history();
    const pgTimelineId = history[history.length - 1]?.pgTimelineId;
    assert.ok(pgTimelineId !== undefined, 'a history is never empty');
    // The metadata names the current TLI; restore reads that TLI's history file, so it goes up first.
    await this.putHistories(history, pgTimelineId);
    const metadata: RemoteTimelineMetadata = { formatVersion: REMOTE_METADATA_FORMAT_VERSION, ...identity, pgTimelineId, backupLsn };
    // Not aborted by close(): an interrupted put could leave a truncated object on servers that store what they got
    // (s3rver does); the request timeout bounds it instead.
    await store.putBytes(store.key(metadataKey(keys)), encodeRemoteMetadata(metadata));
  }
}

/** Exponential from `minMs`, capped at REMOTE_RETRY_DELAY_MAX_MS. Pure. */
export function retryDelayMs(failures: number, minMs: number): number {
  assert.ok(failures >= 1, 'a retry follows a failure');
  return Math.min(REMOTE_RETRY_DELAY_MAX_MS, minMs * 2 ** Math.min(failures - 1, 16));
}
