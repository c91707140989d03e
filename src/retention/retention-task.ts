/**
 * The background removal of one timeline's old WAL. Each pass: compute the removal horizon (horizon.ts) from the
 * timeline's positions, its slots and the operator's limits; invalidate slots past --max-slot-wal-keep-size; move
 * the timeline start to the horizon, but never past a segment a WAL reader has pinned (open or about to be opened);
 * persist that start in the control file (fsync'd, through the timeline's one control-file writer); and only then
 * unlink the segments wholly before it, a few per event-loop turn, with asynchronous unlinks. After a promotion
 * upstream that means the segments of every PostgreSQL timeline in the directory, not only the current one's
 * (see segmentFilesOnDisk), so the WAL kept from before the switch does not grow without bound.
 *
 * Crash safety: the start is durable before any file goes, so a crash between the two leaves files below the
 * recorded start (swept by the next pass, also after a restart), never a hole inside the range the control file
 * claims. The in-memory start moves first, in the same synchronous step that checks the pins, so no reader can
 * pin (and so open) a segment after it was chosen for removal.
 */
import assert from 'node:assert/strict';
import { lstat, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { formatLsn, maxLsn, type Lsn } from '../lsn.js';
import { fsyncDirectory } from '../storage/control-file.js';
import { isSidecarFileName, segmentNameOfEntry } from '../storage/page-checksums.js';
import { parseSegmentFileName, segmentOf, segmentStartLsn } from '../storage/segment-name.js';
import type { Timeline } from '../timeline/timeline.js';
import { DISK_USAGE_FULL_REFRESH_MS, DiskUsageCache } from './disk-usage.js';
import { computeHorizon, type Horizon, type SlotHold } from './horizon.js';

/**
 * PostgreSQL's wal_keep_size defaults to 0, but a PostgreSQL primary also keeps max_wal_size (1 GB) of WAL between
 * checkpoints, which is what lets a standby without a slot reconnect after a short outage. walcast has no
 * checkpoints, so its default floor keeps the same 1 GiB: 64 segments of 16 MiB, several minutes of WAL of a
 * busy primary, enough for a standby restart or a network blip.
 */
export const WAL_KEEP_BYTES_DEFAULT = 1024 * 1024 * 1024;
/** A pass runs at most this often per timeline: it bounds the work (and the control-file fsyncs) to one a second. */
export const RETENTION_PASS_INTERVAL_MS = 1_000;
/** Unlinks started per event-loop turn; each is an async libuv request, so a turn stays well under a millisecond. */
export const UNLINKS_PER_TURN_MAX = 4;
/**
 * Disk usage is re-measured at most this often while WAL arrives, or after a removal: new files and .partial ones at
 * once, the rest at least every DISK_USAGE_FULL_REFRESH_MS (disk-usage.ts). A timeline that receives nothing is
 * measured again only every DISK_USAGE_FULL_REFRESH_MS (sidecars growing as pages are first verified, files changed
 * by hand).
 */
export const DISK_USAGE_REFRESH_MS = 2_000;
/**
 * A pass whose start is the one the previous pass already removed everything before does not list the directory
 * again (nothing writes below the start), except at least this often. Why: one readdir a second per timeline, of
 * every segment file it keeps (6,400 names with slots holding 100 GiB), was most of what an idle server did.
 */
export const REMOVAL_RELIST_MS = DISK_USAGE_FULL_REFRESH_MS;
/** A slot that holds more WAL than this is logged at warn (once, until it falls back under), like a lagging standby. */
export const SLOT_RETAINED_BYTES_WARN = 16 * 1024 * 1024 * 1024;
/** POSIX st_blocks counts 512-byte units whatever the file system block size. */
const STAT_BLOCK_BYTES = 512;

export interface RetentionSettings {
  /** --wal-keep-size in bytes. */
  readonly walKeepBytes: number;
  /** --max-slot-wal-keep-size in bytes; undefined: unlimited (-1). */
  readonly maxSlotWalKeepBytes: number | undefined;
}

export const RETENTION_SETTINGS_DEFAULT: RetentionSettings = { walKeepBytes: WAL_KEEP_BYTES_DEFAULT, maxSlotWalKeepBytes: undefined };

/** The file operations a pass uses; tests substitute them to simulate a crash between persisting and unlinking. */
export interface RetentionFs {
  /** The names in the timeline directory. */
  readdir(dir: string): Promise<string[]>;
  unlink(path: string): Promise<void>;
  /** Bytes the file occupies on disk (allocated blocks: a preallocated, sparse .partial counts what is written). */
  diskBytes(path: string): Promise<number>;
  syncDir(dir: string): Promise<void>;
}

const NODE_FS: RetentionFs = {
  readdir: (dir) => readdir(dir),
  unlink,
  diskBytes: async (path) => (await lstat(path)).blocks * STAT_BLOCK_BYTES,
  syncDir: fsyncDirectory,
};

interface SegmentFile {
  readonly name: string;
  readonly segno: bigint;
  readonly path: string;
  /** A segment's page-checksum sidecar (NAME.crc): removed and measured with it, not counted as a segment. */
  readonly sidecar: boolean;
}

export interface RetentionTaskOptions {
  readonly timeline: Timeline;
  readonly settings: RetentionSettings;
  readonly log: Logger;
  /** Object-storage offload's "everything before this is backed up"; absent today (holds nothing). */
  readonly backupLsn?: () => Lsn | undefined;
  readonly fs?: RetentionFs;
  readonly slotRetainedBytesWarn?: number;
  /** False: only measure disk usage (a timeline that does not grow keeps all its WAL). Default true. */
  readonly removes?: boolean;
}

/** What the status API and /metrics show of a timeline's retention. */
export interface RetentionStatus {
  /** Whether this timeline's WAL is removed at all (only timelines that follow an upstream). */
  readonly removes: boolean;
  readonly walKeepBytes: number;
  readonly maxSlotWalKeepBytes: number | undefined;
  readonly horizonLsn: Lsn | undefined;
  /**
   * Every segment file (of any TLI) before this LSN was gone when the last pass ended; undefined before a pass has
   * removed through the recorded start. It trails the horizon by the WAL that arrived while passes ran, which is
   * how far past --wal-keep-size the disk may be at that moment.
   */
  readonly removedBeforeLsn: Lsn | undefined;
  readonly limitedBy: string | undefined;
  readonly limitingSlot: string | undefined;
  /** Bytes of segment files on disk, and how many files, at the last measurement. */
  readonly diskBytes: number;
  readonly segmentFiles: number;
  readonly passes: number;
  readonly segmentsRemoved: number;
  readonly slotsInvalidated: number;
  readonly failures: number;
}

export class RetentionTask {
  private readonly timeline: Timeline;
  private readonly log: Logger;
  private readonly fs: RetentionFs;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private horizon: Horizon | undefined;
  private removedBeforeLsn: Lsn | undefined;
  private diskMeasuredAt = Number.NEGATIVE_INFINITY;
  /** The flush LSN at the last disk measurement: unchanged, nothing was written since. */
  private diskMeasuredFlushLsn: Lsn | undefined;
  /** When removeSegmentsBefore last listed the directory. */
  private listedAt = Number.NEGATIVE_INFINITY;
  private readonly diskUsage: DiskUsageCache;
  private diskBytes = 0;
  private segmentFiles = 0;
  private passes = 0;
  private segmentsRemoved = 0;
  private slotsInvalidated = 0;
  private failures = 0;
  /** Slots currently past SLOT_RETAINED_BYTES_WARN (logged once each). */
  private readonly slotsWarned = new Set<string>();

  constructor(private readonly options: RetentionTaskOptions) {
    assert.ok(options.settings.walKeepBytes >= 0);
    this.timeline = options.timeline;
    this.fs = options.fs ?? NODE_FS;
    this.diskUsage = new DiskUsageCache((path) => this.fs.diskBytes(path));
    this.log = options.log.child({ tenantId: this.timeline.tenantId, timelineId: this.timeline.timelineId });
  }

  /** Runs a pass now and then every RETENTION_PASS_INTERVAL_MS until stop(). */
  start(): void {
    assert.equal(this.timer, undefined, 'a retention task starts once');
    this.timer = setInterval(() => void this.runPass(), RETENTION_PASS_INTERVAL_MS);
    this.timer.unref();
    void this.runPass();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /** One pass (or the one already running); never rejects: failures are logged and counted, the next pass retries. */
  runPass(): Promise<void> {
    if (this.running !== undefined) return this.running;
    const pass = this.pass()
      .catch((error: unknown) => {
        this.failures++;
        this.log.error({ err: error }, 'WAL removal pass failed; the next pass retries');
      })
      .finally(() => {
        this.running = undefined;
      });
    this.running = pass;
    return pass;
  }

  status(): RetentionStatus {
    return {
      removes: this.options.removes !== false,
      walKeepBytes: this.options.settings.walKeepBytes,
      maxSlotWalKeepBytes: this.options.settings.maxSlotWalKeepBytes,
      horizonLsn: this.horizon?.horizonLsn,
      removedBeforeLsn: this.removedBeforeLsn,
      limitedBy: this.horizon?.limitedBy,
      limitingSlot: this.horizon?.limitingSlot,
      diskBytes: this.diskBytes,
      segmentFiles: this.segmentFiles,
      passes: this.passes,
      segmentsRemoved: this.segmentsRemoved,
      slotsInvalidated: this.slotsInvalidated,
      failures: this.failures,
    };
  }

  private async pass(): Promise<void> {
    if (this.stopped) return;
    this.passes++;
    if (this.options.removes === false) {
      await this.measureDiskUsage(false);
      return;
    }
    const timeline = this.timeline;
    const holds = timeline.slots.holds();
    const horizon = computeHorizon({
      segmentBytes: timeline.segmentBytes,
      commitLsn: timeline.commitLsn.get(),
      // Published flush positions are durable (fdatasync'd before publish); persistStart raises the control file's
      // lagging copy (ingest persists it once a second) when the new start needs it.
      durableLsn: timeline.flushLsn.get(),
      walKeepBytes: this.options.settings.walKeepBytes,
      maxSlotWalKeepBytes: this.options.settings.maxSlotWalKeepBytes,
      slots: holds,
      backupLsn: this.options.backupLsn?.(),
    });
    this.horizon = horizon;
    this.invalidateSlots(horizon);
    this.warnAboutLargeHolds(holds);
    this.advanceStartInMemory(horizon);
    const persistedStart = await this.persistStart();
    const startSegno = segmentOf(persistedStart, timeline.segmentBytes);
    const startLsn = segmentStartLsn(startSegno, timeline.segmentBytes);
    // The last pass that succeeded removed everything before this same start: only a relist could find more.
    const settled = this.removedBeforeLsn === startLsn && Date.now() - this.listedAt < REMOVAL_RELIST_MS;
    const removed = settled ? 0 : await this.removeSegmentsBefore(startSegno);
    this.removedBeforeLsn = startLsn;
    await this.measureDiskUsage(removed > 0);
  }

  /** PostgreSQL InvalidatePossiblyObsoleteSlot: the slot gives up its WAL; a later start from it gets 58P01. */
  private invalidateSlots(horizon: Horizon): void {
    for (const slot of horizon.slotsToInvalidate) {
      const restartLsn = slot.restartLsn ?? 0n;
      const reason = `its restart_lsn ${formatLsn(restartLsn)} exceeds max_slot_wal_keep_size`;
      this.timeline.slots.invalidate(slot.name, reason);
      this.slotsInvalidated++;
      this.log.warn(
        { slot: slot.name, restartLsn: formatLsn(restartLsn), horizon: formatLsn(horizon.horizonLsn), maxSlotWalKeepBytes: this.options.settings.maxSlotWalKeepBytes },
        `invalidating slot "${slot.name}" because ${reason}`,
      );
    }
  }

  private warnAboutLargeHolds(holds: readonly SlotHold[]): void {
    const threshold = this.options.slotRetainedBytesWarn ?? SLOT_RETAINED_BYTES_WARN;
    const commitLsn = this.timeline.commitLsn.get();
    const over = new Set<string>();
    for (const hold of holds) {
      if (hold.invalidated || hold.restartLsn === undefined || commitLsn - hold.restartLsn <= BigInt(threshold)) continue;
      over.add(hold.name);
      if (this.slotsWarned.has(hold.name)) continue;
      this.log.warn({ slot: hold.name, restartLsn: formatLsn(hold.restartLsn), retainedBytes: Number(commitLsn - hold.restartLsn), thresholdBytes: threshold }, `slot "${hold.name}" holds more WAL than the warning threshold`);
    }
    this.slotsWarned.clear();
    for (const name of over) this.slotsWarned.add(name);
  }

  /**
   * The fence: in one synchronous step, read the lowest pinned segment and move the start to the horizon or to that
   * pin, whichever is lower. Readers pin before opening, so after this no reader can open a segment before the start.
   */
  private advanceStartInMemory(horizon: Horizon): void {
    const timeline = this.timeline;
    const lowestPinned = timeline.lowestPinnedSegment();
    const target = lowestPinned !== undefined && lowestPinned < horizon.keepFromSegno ? lowestPinned : horizon.keepFromSegno;
    const targetLsn = segmentStartLsn(target, timeline.segmentBytes);
    if (targetLsn <= timeline.timelineStartLsn) return;
    timeline.advanceStart(targetLsn);
    this.log.info({ startLsn: formatLsn(targetLsn), limitedBy: lowestPinned === target ? 'open segment' : horizon.limitedBy, slot: horizon.limitingSlot }, 'timeline start advanced');
  }

  /** Records the in-memory start in the control file (durably) and returns the start the file now records. */
  private async persistStart(): Promise<Lsn> {
    const timeline = this.timeline;
    const startLsn = timeline.timelineStartLsn;
    const flushLsn = timeline.flushLsn.get();
    const commitLsn = timeline.commitLsn.get();
    assert.ok(startLsn <= flushLsn, 'the start never passes the durable flush LSN');
    const state = await timeline.controlFile.update((current) => {
      if (current.timelineStartLsn >= startLsn) return undefined;
      // The file must stay consistent (start <= flush): raise its flush and commit LSN to the published, durable
      // ones when ingest has not persisted them yet. Both only ever grow, so ingest's next patch agrees.
      return { ...current, timelineStartLsn: startLsn, flushLsn: maxLsn(current.flushLsn, flushLsn), commitLsn: maxLsn(current.commitLsn, commitLsn) };
    });
    assert.ok(state.timelineStartLsn >= startLsn, 'the control file records the start before anything is unlinked');
    if (state.flushLsn > timeline.persistedFlushLsn) timeline.recordPersistedFlush(state.flushLsn);
    return state.timelineStartLsn;
  }

  /** Unlinks this timeline's segment files (of every TLI) before `startSegno`, UNLINKS_PER_TURN_MAX per event-loop turn. */
  private async removeSegmentsBefore(startSegno: bigint): Promise<number> {
    const timeline = this.timeline;
    const lowestPinned = timeline.lowestPinnedSegment();
    assert.ok(lowestPinned === undefined || lowestPinned >= startSegno, 'no pinned segment lies before the recorded start');
    this.listedAt = Date.now();
    const doomed = (await this.segmentFilesOnDisk()).filter((entry) => entry.segno < startSegno);
    for (let index = 0; index < doomed.length; index += UNLINKS_PER_TURN_MAX) {
      const batch = doomed.slice(index, index + UNLINKS_PER_TURN_MAX);
      await Promise.all(batch.map((entry) => this.unlinkQuietly(entry.path)));
      await new Promise((resolve) => setImmediate(resolve));
    }
    if (doomed.length === 0) return 0;
    await this.fs.syncDir(timeline.dir);
    const segmentsDoomed = doomed.filter((entry) => !entry.sidecar);
    this.segmentsRemoved += segmentsDoomed.length;
    this.log.info({ removed: segmentsDoomed.length, first: doomed[0]?.name, last: doomed.at(-1)?.name, startLsn: formatLsn(timeline.timelineStartLsn) }, 'removed old WAL segments');
    return segmentsDoomed.length;
  }

  /**
   * Every segment file in the timeline directory, of whichever PostgreSQL timeline (TLI) names it, NAME and
   * NAME.partial alike, and each segment's page-checksum sidecar (NAME.crc, storage/page-checksums.ts), by segment
   * number: a segment's sidecar goes with it.
   *
   * All TLIs, not only the current one: after a promotion upstream the WAL before the switch point stays in files
   * named by the old TLI (`000000010000000000000005` once the timeline is on TLI 2), and the reader picks each
   * segment's file through the history (timeline-history.ts segmentPgTimeline). The removal rule needs no history:
   * the reader serves nothing before the recorded start, so a segment wholly before it is dead under every name
   * (old TLI, current TLI, or a TLI no history lists). At and after the start every file stays, the old TLI's
   * `.partial` of the switch segment included (as PostgreSQL keeps it), so whatever the history maps a served LSN
   * to is still there.
   */
  private async segmentFilesOnDisk(): Promise<SegmentFile[]> {
    const { dir, segmentBytes } = this.timeline;
    const found: SegmentFile[] = [];
    for (const name of await this.fs.readdir(dir)) {
      const parsed = parseSegmentFileName(segmentNameOfEntry(name), segmentBytes);
      if (parsed !== undefined) found.push({ name, segno: parsed.segno, path: join(dir, name), sidecar: isSidecarFileName(name) });
    }
    return found.sort((a, b) => (a.segno < b.segno ? -1 : a.segno > b.segno ? 1 : 0));
  }

  private async unlinkQuietly(path: string): Promise<void> {
    try {
      await this.fs.unlink(path);
    } catch (error) {
      // Gone already (a previous pass was interrupted after the unlink): the goal is reached.
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }

  private async measureDiskUsage(force: boolean): Promise<void> {
    const now = Date.now();
    const flushLsn = this.timeline.flushLsn.get();
    const since = now - this.diskMeasuredAt;
    const due = since >= DISK_USAGE_FULL_REFRESH_MS || (since >= DISK_USAGE_REFRESH_MS && flushLsn !== this.diskMeasuredFlushLsn);
    if (!force && !due) return;
    this.diskMeasuredAt = now;
    this.diskMeasuredFlushLsn = flushLsn;
    const entries = await this.segmentFilesOnDisk();
    this.diskBytes = (await this.diskUsage.total(entries, now)).bytes;
    this.segmentFiles = entries.filter((entry) => !entry.sidecar).length;
  }
}
