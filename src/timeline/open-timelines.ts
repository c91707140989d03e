/**
 * Opens every timeline in a data directory at server start: `DATA/<tenant_id>/<timeline_id>/walcast.control`.
 * A directory without a control file is not a timeline (an import that never finished leaves none).
 *
 * One damaged timeline never stops the server. A control file that cannot be read or fails its checksum makes the
 * timeline unavailable: logged at error level, listed by the status API, and refused to replicas with that error,
 * because without it nothing says how far the WAL goes. The files of an opened timeline are checked against its
 * control file (storage/timeline-check.ts): a hole is logged at error level and shown in the status API, and the
 * timeline is still served, because the WAL before and after a hole is good and most replicas want only the newest;
 * a stream that reaches the hole ends there with an ErrorResponse naming the segment and offset (wal-reader.ts).
 * A `walcast.control.tmp` left by a crash mid-rename is removed.
 *
 * A timeline whose directory holds a removal request (`walcast.remove`, see timeline-removal.ts) is never opened:
 * its removal is finished here instead (rename out of the way, delete), and at start `.removing-*` directories a
 * crash left behind are deleted.
 */
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { WalcastError } from '../errors.js';
import type { Logger } from '../log.js';
import { formatLsn } from '../lsn.js';
import { isWalcastError } from '../errors.js';
import { readSlotFile, slotFileStore } from '../slots/slot-file.js';
import { SlotTable } from '../slots/slot-table.js';
import { CONTROL_FILE_NAME, readControlFile, removeStaleControlTemp, type ControlState } from '../storage/control-file.js';
import { historyFileName } from '../storage/segment-name.js';
import { checkTimelineFiles } from '../storage/timeline-check.js';
import { REMOVE_MARKER_FILE_NAME, deleteRetiredDir, retireTimelineDir, sweepRetiredTimelineDirs } from '../storage/timeline-removal-files.js';
import { HISTORY_FILE_BYTES_MAX, parseTimelineHistory, singleTimelineHistory, type TimelineHistory } from '../storage/timeline-history.js';
import { Timeline } from './timeline.js';
import { TimelineRegistry } from './timeline-registry.js';

const TIMELINE_ID_PATTERN = /^[0-9a-f]{32}$/;

export async function openTimelines(dataDir: string, log: Logger): Promise<TimelineRegistry> {
  const registry = new TimelineRegistry();
  for (const path of await sweepRetiredTimelineDirs(dataDir)) log.warn({ dir: path }, 'deleted the rest of a timeline removal a stop interrupted');
  await openNewTimelines(dataDir, registry, log, { warnIncomplete: true });
  return registry;
}

/**
 * Opens and registers every timeline of the data directory that `registry` does not hold yet, and returns them.
 * Serve calls this again while it runs, so a `walcast timeline create` needs no restart: create lays a timeline out
 * in a temp directory and renames it into place with its control file, so a directory that holds a control file is
 * complete, and one without is skipped (an import still in progress, or one that never finished).
 */
export async function openNewTimelines(dataDir: string, registry: TimelineRegistry, log: Logger, options: { warnIncomplete: boolean } = { warnIncomplete: false }): Promise<Timeline[]> {
  const opened: Timeline[] = [];
  for (const tenantId of await listIdDirs(dataDir)) {
    for (const timelineId of await listIdDirs(join(dataDir, tenantId))) {
      if (registry.get(tenantId, timelineId) !== undefined || registry.getUnavailable(tenantId, timelineId) !== undefined) continue;
      if (registry.removalError(tenantId, timelineId) !== undefined) continue;
      const dir = join(dataDir, tenantId, timelineId);
      const entries = await readdir(dir);
      if (entries.includes(REMOVE_MARKER_FILE_NAME)) {
        await finishRequestedRemoval(registry, { tenantId, timelineId, dir }, log);
        continue;
      }
      if (!entries.includes(CONTROL_FILE_NAME)) {
        if (options.warnIncomplete) log.warn({ dir }, 'skipping a timeline directory without a control file');
        continue;
      }
      const timeline = await openOrReport(registry, { tenantId, timelineId, dir }, log);
      if (timeline !== undefined) opened.push(timeline);
    }
  }
  return opened;
}

/**
 * A timeline marked for removal that nothing serves (the request came while serve was down, or serve stopped
 * mid-removal): removed on the files. A failure is logged and the timeline listed as unavailable, never served.
 */
async function finishRequestedRemoval(registry: TimelineRegistry, where: { tenantId: string; timelineId: string; dir: string }, log: Logger): Promise<void> {
  const timelineLog = log.child({ tenantId: where.tenantId, timelineId: where.timelineId });
  try {
    const retired = await retireTimelineDir(where.dir);
    await deleteRetiredDir(retired);
    registry.removals.completed++;
    timelineLog.info({ dir: where.dir }, 'timeline removed (its removal was requested while it was not served)');
  } catch (error) {
    timelineLog.error({ err: error, dir: where.dir }, 'timeline removal failed: the timeline is not served');
    registry.removals.failed++;
    registry.addUnavailable({ ...where, error: new Error(`removal failed: ${(error as Error).message}`, { cause: error }), removalFailed: true });
  }
}

/** Opens one timeline and registers it, or registers it as unavailable (and returns undefined) when its control file is unusable. */
async function openOrReport(registry: TimelineRegistry, where: { tenantId: string; timelineId: string; dir: string }, log: Logger): Promise<Timeline | undefined> {
  const timelineLog = log.child({ tenantId: where.tenantId, timelineId: where.timelineId });
  if (await removeStaleControlTemp(where.dir)) timelineLog.warn({ dir: where.dir }, 'removed a walcast.control.tmp left by an interrupted control-file update');
  let control: ControlState;
  try {
    control = await readControlFile(where.dir);
  } catch (error) {
    if (!isWalcastError(error, 'WALCAST_ERR_CONTROL_FILE')) throw error;
    timelineLog.error({ err: error.message, code: error.code }, 'timeline unavailable: its control file is unusable; it is not served');
    registry.addUnavailable({ ...where, error });
    return undefined;
  }
  const timeline = await timelineFromControl(where.dir, control, log);
  timeline.storageProblems = await checkTimelineFiles(where.dir, { ...control, history: timeline.history });
  for (const problem of timeline.storageProblems) {
    const fields = { kind: problem.kind, file: problem.file, ...(problem.lsn === undefined ? {} : { lsn: formatLsn(problem.lsn) }) };
    if (problem.severity === 'error') timelineLog.error(fields, `timeline storage damaged: ${problem.message}`);
    else timelineLog.warn(fields, `timeline storage: ${problem.message}`);
  }
  registry.add(timeline);
  timelineLog.info({ startLsn: formatLsn(timeline.timelineStartLsn), commitLsn: formatLsn(timeline.commitLsn.get()) }, 'timeline opened');
  return timeline;
}

/** Reads a timeline's control file and slot file; without a logger, failed background slot saves go unreported. */
export async function openTimeline(dir: string, log?: Logger): Promise<Timeline> {
  return timelineFromControl(dir, await readControlFile(dir), log);
}

async function timelineFromControl(dir: string, control: ControlState, log?: Logger): Promise<Timeline> {
  const slots = new SlotTable({
    store: slotFileStore(dir),
    initial: await readSlotFile(dir),
    // A failed save leaves the table dirty; the next change or the shutdown flush retries it.
    onSaveError: (error) => log?.error({ err: error, dir }, 'saving replication slots failed'),
  });
  return new Timeline(
    {
      tenantId: control.tenantId,
      timelineId: control.timelineId,
      dir,
      systemId: control.systemId,
      pgVersion: control.pgVersion,
      segmentBytes: control.segmentBytes,
      pgTimelineId: control.pgTimelineId,
      timelineStartLsn: control.timelineStartLsn,
      history: await readHistory(dir, control.pgTimelineId),
    },
    { flushLsn: control.flushLsn, commitLsn: control.commitLsn },
    slots,
  );
}

/**
 * The history of the control file's current TLI, from its `%08X.history` (which lists every ancestor). TLI 1 has
 * none; a higher TLI without one (a timeline imported without its history) is served as a single timeline.
 */
export async function readHistory(dir: string, pgTimelineId: number): Promise<TimelineHistory> {
  if (pgTimelineId === 1) return singleTimelineHistory(1);
  let content: Buffer;
  try {
    content = await readFile(join(dir, historyFileName(pgTimelineId)));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return singleTimelineHistory(pgTimelineId);
    throw error;
  }
  if (content.length > HISTORY_FILE_BYTES_MAX) throw new WalcastError('WALCAST_ERR_WAL_INVALID', `history file ${historyFileName(pgTimelineId)} in ${dir} is too large`);
  return parseTimelineHistory(content.toString('utf8'), pgTimelineId);
}

/** Subdirectories named by 32 hex digits; a missing data directory holds no timelines. */
async function listIdDirs(dir: string): Promise<string[]> {
  try {
    const entries = await readdir(dir, { withFileTypes: true });
    return entries.filter((entry) => entry.isDirectory() && TIMELINE_ID_PATTERN.test(entry.name)).map((entry) => entry.name).sort();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}
