/**
 * Crash recovery of a followed timeline before ingest resumes: find where durable, valid WAL ends, erase what lies
 * past it, make the result durable, and say where writing resumes.
 *
 * After kill -9 the newest segment may hold bytes that were written but never fdatasynced (and, after a power
 * loss, torn pages). The control file's flush LSN is persisted about once a second, so it may lag but is always
 * durable. Recovery walks records with their CRCs (storage/wal-validate.ts) from the start of the segment that
 * holds the control file's flush LSN; the resume point is the later of that walk's end and the control flush LSN
 * (bytes up to the latter were fdatasynced before it was written, even when they end inside a record). Every byte
 * past the resume point is erased (truncated and re-extended: it reads as zeros), later segment files are removed, and only then is anything published.
 * The page-checksum sidecars of the segments the walk re-validated are rebuilt from their stored bytes (a crash may
 * have left entries for pages that never became durable); the page being filled gets its entry from the writer.
 */
import assert from 'node:assert/strict';
import { closeSync, constants as fsConstants, fdatasyncSync, fstatSync, openSync, renameSync, unlinkSync } from 'node:fs';
import type { Logger } from '../log.js';
import { alignDown, formatLsn, maxLsn, type Lsn } from '../lsn.js';
import { listSegmentFiles } from '../storage/timeline-dir.js';
import { PARTIAL_SUFFIX, offsetInSegment, segmentOf } from '../storage/segment-name.js';
import { WAL_PAGE_BYTES } from '../lsn.js';
import { sidecarPathFor, writeSidecarFromSegment } from '../storage/page-checksums.js';
import { findValidWalEnd } from '../storage/wal-validate.js';
import { eraseFrom, syncDirectory } from '../storage/wal-writer.js';

export interface RecoveryInput {
  readonly dir: string;
  readonly segmentBytes: number;
  readonly pgTimelineId: number;
  readonly systemId: bigint;
  readonly timelineStartLsn: Lsn;
  /** The control file's flush LSN: durable, possibly behind. */
  readonly controlFlushLsn: Lsn;
}

export interface RecoveryResult {
  /** Where ingest resumes; everything before it is durable and may be published. */
  readonly resumeLsn: Lsn;
  /** The CRC walk's end of valid records. */
  readonly walkEndLsn: Lsn;
  readonly stopReason: string;
  readonly removedFiles: readonly string[];
}

export async function recoverTimelineEnd(input: RecoveryInput, log: Logger): Promise<RecoveryResult> {
  assert.ok(input.controlFlushLsn >= input.timelineStartLsn, 'the flush LSN is not before the timeline start');
  const walkStart = maxLsn(alignDown(input.controlFlushLsn, input.segmentBytes), input.timelineStartLsn);
  const walk = await findValidWalEnd({
    dir: input.dir,
    layout: { segmentBytes: input.segmentBytes, pgTimelineId: input.pgTimelineId },
    startLsn: walkStart,
    systemId: input.systemId,
  });
  const resumeLsn = maxLsn(walk.endLsn, input.controlFlushLsn);
  assert.ok(resumeLsn >= input.controlFlushLsn, 'recovery never takes back what was published');
  const removedFiles = await truncateAfter(input, walkStart, resumeLsn);
  log.info(
    { walkStart: formatLsn(walkStart), walkEnd: formatLsn(walk.endLsn), controlFlush: formatLsn(input.controlFlushLsn), resume: formatLsn(resumeLsn), stop: walk.stopReason, removed: removedFiles.length },
    'recovered the end of stored WAL',
  );
  return { resumeLsn, walkEndLsn: walk.endLsn, stopReason: walk.stopReason, removedFiles };
}

/**
 * After a write or fsync failed in this process (ENOSPC, EIO, EROFS): every byte up to `durableLsn` was fdatasynced
 * before it was published; everything after it is thrown away, without reading it back (after a failed fsync the page
 * cache may hold bytes that never reached the disk, and a CRC walk would believe them). The upstream sends them again.
 */
export async function discardAfter(input: Pick<RecoveryInput, 'dir' | 'segmentBytes' | 'pgTimelineId'>, durableLsn: Lsn): Promise<readonly string[]> {
  return truncateAfter(input, alignDown(durableLsn, input.segmentBytes), durableLsn);
}

/**
 * Leaves the segment holding `resumeLsn` as a full-size NAME.partial with zeros past it, no segment of this timeline
 * after it, and every segment the walk vouched for fdatasynced: after kill -9 their bytes may exist only in the page
 * cache, and nothing may be published before it is durable. Segments before the walk's start were durable already.
 */
async function truncateAfter(input: Pick<RecoveryInput, 'dir' | 'segmentBytes' | 'pgTimelineId'>, walkStart: Lsn, resumeLsn: Lsn): Promise<string[]> {
  const resumeSegno = segmentOf(resumeLsn, input.segmentBytes);
  const walkStartSegno = segmentOf(walkStart, input.segmentBytes);
  const removed: string[] = [];
  let changed = false;
  for (const entry of await listSegmentFiles(input.dir, input.segmentBytes)) {
    if (entry.pgTimelineId !== input.pgTimelineId || entry.segno < walkStartSegno) continue;
    if (entry.segno < resumeSegno) {
      syncFileAt(entry.path);
      // Complete (the walk went past it) and now durable, but its rename was lost in the crash.
      const finalPath = entry.partial ? entry.path.slice(0, -PARTIAL_SUFFIX.length) : entry.path;
      if (entry.partial) renameSync(entry.path, finalPath);
      writeSidecarFromSegment(finalPath, sidecarPathFor(input.dir, entry.name), input.segmentBytes / WAL_PAGE_BYTES);
      changed = true;
      continue;
    }
    if (entry.segno > resumeSegno) {
      unlinkSync(entry.path);
      removed.push(entry.name);
      changed = true;
      continue;
    }
    // A complete file that recovery cuts short is partial again; NAME and NAME.partial never coexist after this.
    const partialPath = entry.partial ? entry.path : entry.path + PARTIAL_SUFFIX;
    if (!entry.partial) {
      renameSync(entry.path, partialPath);
      changed = true;
    }
    eraseTail(partialPath, offsetInSegment(resumeLsn, input.segmentBytes), input.segmentBytes);
    writeSidecarFromSegment(partialPath, sidecarPathFor(input.dir, entry.name), Math.floor(offsetInSegment(resumeLsn, input.segmentBytes) / WAL_PAGE_BYTES));
    changed = true;
  }
  if (changed) await syncDirectory(input.dir);
  return removed;
}

function syncFileAt(path: string): void {
  const fd = openSync(path, fsConstants.O_RDWR);
  try {
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function eraseTail(path: string, fromOffset: number, segmentBytes: number): void {
  const fd = openSync(path, fsConstants.O_RDWR);
  try {
    const size = fstatSync(fd).size;
    assert.ok(size <= segmentBytes, 'a segment file is not larger than the segment size');
    eraseFrom(fd, fromOffset, segmentBytes, path);
    // The bytes kept may only be in the page cache (written before the crash, never synced): make them durable
    // before anyone is told they exist.
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
