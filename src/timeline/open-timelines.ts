/**
 * Opens every timeline in a data directory at server start: `DATA/<tenant_id>/<timeline_id>/walcast.control`.
 * A directory without a control file is not a timeline (an import that never finished leaves none); a control file
 * that fails its checksum stops the server rather than serving WAL it cannot vouch for.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { formatLsn } from '../lsn.js';
import { readSlotFile, slotFileStore } from '../slots/slot-file.js';
import { SlotTable } from '../slots/slot-table.js';
import { CONTROL_FILE_NAME, readControlFile } from '../storage/control-file.js';
import { Timeline } from './timeline.js';
import { TimelineRegistry } from './timeline-registry.js';

const TIMELINE_ID_PATTERN = /^[0-9a-f]{32}$/;

export async function openTimelines(dataDir: string, log: Logger): Promise<TimelineRegistry> {
  const registry = new TimelineRegistry();
  for (const tenantId of await listIdDirs(dataDir)) {
    for (const timelineId of await listIdDirs(join(dataDir, tenantId))) {
      const dir = join(dataDir, tenantId, timelineId);
      const entries = await readdir(dir);
      if (!entries.includes(CONTROL_FILE_NAME)) {
        log.warn({ dir }, 'skipping a timeline directory without a control file');
        continue;
      }
      registry.add(await openTimeline(dir, log));
    }
  }
  for (const timeline of registry.list()) {
    log.info(
      { tenantId: timeline.tenantId, timelineId: timeline.timelineId, startLsn: formatLsn(timeline.timelineStartLsn), commitLsn: formatLsn(timeline.commitLsn.get()) },
      'timeline opened',
    );
  }
  return registry;
}

/** Reads a timeline's control file and slot file; without a logger, failed background slot saves go unreported. */
export async function openTimeline(dir: string, log?: Logger): Promise<Timeline> {
  const control = await readControlFile(dir);
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
    },
    { flushLsn: control.flushLsn, commitLsn: control.commitLsn },
    slots,
  );
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
