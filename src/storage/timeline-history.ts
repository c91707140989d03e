/**
 * PostgreSQL timeline history files (%08X.history) as a timeline directory holds them: reading one for
 * TIMELINE_HISTORY (walsender.c SendTimeLineHistory). Import copies them in; this module only reads.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { WalcastError } from '../errors.js';
import { historyFileName } from './segment-name.js';

export interface TimelineHistory {
  /** The file's name, which TIMELINE_HISTORY returns in its first column. */
  readonly fileName: string;
  readonly content: string;
}

/** Reads the history file of PostgreSQL timeline `pgTimelineId`; WALCAST_ERR_WAL_REMOVED when it is not held. */
export async function readTimelineHistory(timelineDir: string, pgTimelineId: number): Promise<TimelineHistory> {
  assert.ok(Number.isInteger(pgTimelineId), 'a timeline id is an integer');
  assert.ok(pgTimelineId >= 1, 'timeline ids start at 1');
  const fileName = historyFileName(pgTimelineId);
  try {
    return { fileName, content: await readFile(join(timelineDir, fileName), 'utf8') };
  } catch (cause) {
    // walsender.c SendTimeLineHistory reports a missing file as "could not open file" (58P01).
    const reason = (cause as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file or directory' : (cause as Error).message;
    throw new WalcastError('WALCAST_ERR_WAL_REMOVED', `could not open file "${fileName}": ${reason}`, { cause });
  }
}
