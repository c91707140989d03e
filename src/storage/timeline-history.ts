/**
 * PostgreSQL timeline history: parsing a `%08X.history` file's text (timeline.c readTimeLineHistory), answering
 * which PostgreSQL timeline (TLI) holds an LSN (tliOfPointInHistory), where a timeline ends (tliSwitchPoint), which
 * TLI's segment file holds a segment (walsender.c WalSndSegmentOpen reads the segment of a switch point from the new
 * timeline's file), reading a history file for TIMELINE_HISTORY (walsender.c SendTimeLineHistory), and writing one
 * durably, byte for byte as the upstream sent it.
 *
 * The history of TLI n is the file of TLI n plus n itself (open-ended); TLI 1 has no file.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { WalcastError } from '../errors.js';
import { formatLsn, parseLsn, type Lsn } from '../lsn.js';
import { replaceFileDurably } from './durable-file.js';
import { historyFileName, segmentStartLsn } from './segment-name.js';

/** A history file has one short line per earlier timeline; PostgreSQL's are far below this. */
export const HISTORY_FILE_BYTES_MAX = 1024 * 1024;

export interface TimelineHistoryEntry {
  readonly pgTimelineId: number;
  /** The first LSN on this timeline (0 for the oldest). */
  readonly beginLsn: Lsn;
  /** The switch point where the next timeline begins; undefined for the newest (open-ended) timeline. */
  readonly endLsn: Lsn | undefined;
}

/** Oldest first; the last entry is the newest timeline and has no end. */
export type TimelineHistory = readonly TimelineHistoryEntry[];

/** The history of a TLI without a history file (TLI 1, or a timeline whose file is not held). */
export function singleTimelineHistory(pgTimelineId: number): TimelineHistory {
  return [{ pgTimelineId, beginLsn: 0n, endLsn: undefined }];
}

/**
 * readTimeLineHistory: lines "parentTLI <tab> switchpoint <tab> reason"; blank lines and lines starting with '#'
 * are skipped; TLIs must increase. Throws WALCAST_ERR_WAL_INVALID naming the problem. Pure.
 */
export function parseTimelineHistory(content: string, pgTimelineId: number): TimelineHistory {
  const fail = (why: string): never => {
    throw new WalcastError('WALCAST_ERR_WAL_INVALID', `history file ${historyFileName(pgTimelineId)} is invalid: ${why}`);
  };
  const entries: TimelineHistoryEntry[] = [];
  let previousEnd: Lsn = 0n;
  for (const rawLine of content.split('\n')) {
    const line = rawLine.trimStart();
    if (line.length === 0 || line.startsWith('#')) continue;
    const fields = line.split(/\s+/);
    const parent = /^\d+$/.test(fields[0] ?? '') ? Number(fields[0]) : NaN;
    const switchLsn = parseLsn(fields[1] ?? '');
    if (!Number.isSafeInteger(parent) || parent < 1) fail(`syntax error in "${rawLine}": expected a numeric timeline ID`);
    if (switchLsn === undefined) fail(`syntax error in "${rawLine}": expected a write-ahead log switchpoint location`);
    const last = entries[entries.length - 1];
    if (last !== undefined && parent <= last.pgTimelineId) fail('timeline IDs must be in increasing sequence');
    assert.ok(switchLsn !== undefined);
    entries.push({ pgTimelineId: parent, beginLsn: previousEnd, endLsn: switchLsn });
    previousEnd = switchLsn;
  }
  const last = entries[entries.length - 1];
  if (last !== undefined && pgTimelineId <= last.pgTimelineId) fail('timeline IDs must be less than child timeline\'s ID');
  entries.push({ pgTimelineId, beginLsn: previousEnd, endLsn: undefined });
  return entries;
}

/** tliOfPointInHistory: the TLI current at `lsn`; a switch point belongs to the new timeline. */
export function pgTimelineAt(lsn: Lsn, history: TimelineHistory): number {
  assertHistory(history);
  for (const entry of history) {
    if (lsn >= entry.beginLsn && (entry.endLsn === undefined || lsn < entry.endLsn)) return entry.pgTimelineId;
  }
  // Only reachable for an LSN before the first entry's begin, which is 0.
  assert.fail(`LSN ${formatLsn(lsn)} is in no timeline of the history`);
}

/** The entry of `pgTimelineId`, or undefined when that TLI is not in this history. */
export function historyEntryOf(pgTimelineId: number, history: TimelineHistory): TimelineHistoryEntry | undefined {
  return history.find((entry) => entry.pgTimelineId === pgTimelineId);
}

/** tliSwitchPoint: where `pgTimelineId` ends and which TLI follows it; undefined for the newest timeline. */
export function switchPointOf(pgTimelineId: number, history: TimelineHistory): { readonly switchLsn: Lsn; readonly nextPgTimelineId: number } | undefined {
  const index = history.findIndex((entry) => entry.pgTimelineId === pgTimelineId);
  assert.ok(index >= 0, 'the timeline is in the history');
  const entry = history[index];
  const next = history[index + 1];
  if (entry?.endLsn === undefined || next === undefined) return undefined;
  return { switchLsn: entry.endLsn, nextPgTimelineId: next.pgTimelineId };
}

/**
 * The TLI whose file holds segment `segno`: the timeline of the segment's last byte. A segment that contains a
 * switch point is read from the new timeline's file, which starts with the old timeline's bytes (xlog.c
 * XLogInitNewTimeline copies them; walsender.c WalSndSegmentOpen reads it so).
 */
export function segmentPgTimeline(segno: bigint, segmentBytes: number, history: TimelineHistory): number {
  return pgTimelineAt(segmentStartLsn(segno + 1n, segmentBytes) - 1n, history);
}

function assertHistory(history: TimelineHistory): void {
  assert.ok(history.length > 0, 'a history has at least one timeline');
  assert.equal(history[history.length - 1]?.endLsn, undefined, 'the newest timeline is open-ended');
}

/** Writes `%08X.history` atomically and durably with exactly `content` (temp file, fsync, rename, fsync dir). */
export async function writeHistoryFile(dir: string, pgTimelineId: number, content: string): Promise<void> {
  const bytes = Buffer.from(content, 'utf8');
  assert.ok(bytes.length <= HISTORY_FILE_BYTES_MAX, 'a history file is small');
  const name = historyFileName(pgTimelineId);
  await replaceFileDurably(dir, name, bytes, { tempName: `${name}.tmp` });
}

/** A history file as TIMELINE_HISTORY returns it. */
export interface HistoryFileText {
  /** The file's name, which TIMELINE_HISTORY returns in its first column. */
  readonly fileName: string;
  readonly content: string;
}

/** Reads the history file of PostgreSQL timeline `pgTimelineId`; WALCAST_ERR_WAL_REMOVED when it is not held. */
export async function readTimelineHistory(timelineDir: string, pgTimelineId: number): Promise<HistoryFileText> {
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
