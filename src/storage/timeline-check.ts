/**
 * The start-up check of a timeline's files against its control file: every segment between the timeline start and
 * the flush LSN is present, full-sized and named for the timeline's PostgreSQL timeline; only the segment holding the
 * flush LSN (or a later one, being filled) is `.partial`; nothing else that looks like ours lies around.
 *
 * A hole (a missing or short segment) is an `error`: the WAL up to it can still be served, the WAL after it can
 * too, but a stream that reaches it must end with an ErrorResponse (storage/wal-reader.ts does that). Anything that
 * cannot cause a wrong byte to be served is a `warning`. `findTimelineProblems` is pure; `checkTimelineFiles` lists
 * the directory and stats its entries.
 */
import assert from 'node:assert/strict';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { formatLsn, type Lsn } from '../lsn.js';
import { isSidecarFileName } from './page-checksums.js';
import { CONTROL_FILE_NAME, CONTROL_TEMP_NAME, type ControlState } from './control-file.js';

import { PARTIAL_SUFFIX, isSegmentFileName, parseHistoryFileName, parseSegmentFileName, segmentFileName, segmentOf, segmentStartLsn } from './segment-name.js';
import { historyEntryOf, segmentPgTimeline, type TimelineHistory } from './timeline-history.js';

/**
 * walcast's own state files are named `walcast.*` (walcast.control, walcast.slots, their .tmp files, and what later
 * features add): each feature checks its own file, so this check leaves them alone.
 */
const OWN_FILE_PREFIX = 'walcast.';
assert.ok(CONTROL_FILE_NAME.startsWith(OWN_FILE_PREFIX) && CONTROL_TEMP_NAME.startsWith(OWN_FILE_PREFIX), 'the control file is one of walcast\'s own files');
/** Problems reported per timeline: a directory with a million stray files must not produce a million log lines. */
export const TIMELINE_PROBLEMS_MAX = 64;

export type TimelineProblemKind =
  | 'missing_segment'
  | 'truncated_segment'
  | 'oversized_segment'
  | 'partial_not_last'
  | 'duplicate_segment'
  | 'segment_before_start'
  | 'foreign_segment'
  | 'segment_past_flush'
  | 'unexpected_file';

export interface TimelineProblem {
  readonly kind: TimelineProblemKind;
  readonly severity: 'error' | 'warning';
  /** The file concerned (the expected name for a missing segment). */
  readonly file: string;
  /** The first LSN that cannot be served because of it (holes only). */
  readonly lsn?: Lsn;
  readonly message: string;
}

export interface DirectoryEntry {
  readonly name: string;
  readonly bytes: number;
  readonly isFile: boolean;
}

/**
 * With a `history` (a timeline that followed a promotion), each segment is expected under the TLI that holds its
 * last byte, as pg_wal names them; segments of older TLIs in the history (the old timeline's `.partial` of the
 * switch point's segment) are kept as PostgreSQL keeps them and not reported.
 */
type Layout = Pick<ControlState, 'segmentBytes' | 'pgTimelineId' | 'timelineStartLsn' | 'flushLsn' | 'upstream'> & { readonly history?: TimelineHistory };

/** Lists and stats `dir`, then checks it; entries that vanish while we look are skipped. */
export async function checkTimelineFiles(dir: string, control: Layout): Promise<TimelineProblem[]> {
  const entries: DirectoryEntry[] = [];
  for (const name of await readdir(dir)) {
    try {
      const info = await stat(join(dir, name));
      entries.push({ name, bytes: info.size, isFile: info.isFile() });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }
  return findTimelineProblems(entries, control);
}

/** The problems of one timeline directory's entries, holes first (by LSN), then the rest; at most TIMELINE_PROBLEMS_MAX. */
export function findTimelineProblems(entries: readonly DirectoryEntry[], control: Layout): TimelineProblem[] {
  assert.ok(control.flushLsn >= control.timelineStartLsn, 'the control file was validated');
  const segments = new Map<bigint, DirectoryEntry[]>();
  const problems: TimelineProblem[] = [];
  for (const entry of entries) {
    const segno = ownSegmentNumber(entry, control);
    if (segno === undefined) {
      const problem = describeOtherEntry(entry, control);
      if (problem !== undefined) problems.push(problem);
      continue;
    }
    segments.set(segno, [...(segments.get(segno) ?? []), entry]);
  }
  const holes = checkHeldRange(segments, control);
  const beyond = checkOutsideRange(segments, control);
  return [...holes, ...beyond, ...problems].slice(0, TIMELINE_PROBLEMS_MAX);
}

/** The segment number of a segment file of this timeline's PostgreSQL timeline, else undefined. */
function ownSegmentNumber(entry: DirectoryEntry, control: Layout): bigint | undefined {
  const base = entry.name.endsWith(PARTIAL_SUFFIX) ? entry.name.slice(0, -PARTIAL_SUFFIX.length) : entry.name;
  const parsed = parseSegmentFileName(base, control.segmentBytes);
  if (parsed === undefined || parsed.pgTimelineId !== expectedPgTimeline(parsed.segno, control) || !entry.isFile) return undefined;
  return parsed.segno;
}

function expectedPgTimeline(segno: bigint, control: Layout): number {
  return control.history === undefined ? control.pgTimelineId : segmentPgTimeline(segno, control.segmentBytes, control.history);
}

/** A segment file of an older PostgreSQL timeline of this history (superseded by the newer TLI's copy). */
function isOlderTimelineSegment(name: string, control: Layout): boolean {
  if (control.history === undefined) return false;
  const base = name.endsWith(PARTIAL_SUFFIX) ? name.slice(0, -PARTIAL_SUFFIX.length) : name;
  const parsed = parseSegmentFileName(base, control.segmentBytes);
  return parsed !== undefined && historyEntryOf(parsed.pgTimelineId, control.history) !== undefined;
}

function describeOtherEntry(entry: DirectoryEntry, control: Layout): TimelineProblem | undefined {
  if (entry.name.startsWith(OWN_FILE_PREFIX) || parseHistoryFileName(entry.name) !== undefined) return undefined;
  // A segment's page checksums (page-checksums.ts): NAME.crc lives and goes with NAME.
  if (isSidecarFileName(entry.name) && entry.isFile) return undefined;
  if (entry.isFile && isOlderTimelineSegment(entry.name, control)) return undefined;
  if (isSegmentFileName(entry.name) && entry.isFile) {
    return warning('foreign_segment', entry.name, `${entry.name} is not a segment of PostgreSQL timeline ${control.pgTimelineId}: it is ignored`);
  }
  return warning('unexpected_file', entry.name, `${entry.name} does not belong in a timeline directory: it is ignored`);
}

/** [timeline start, flush LSN) must be held by full-size files, and only the last may be `.partial`. */
function checkHeldRange(segments: ReadonlyMap<bigint, DirectoryEntry[]>, control: Layout): TimelineProblem[] {
  const problems: TimelineProblem[] = [];
  if (control.flushLsn === control.timelineStartLsn) return problems;
  const first = segmentOf(control.timelineStartLsn, control.segmentBytes);
  const last = segmentOf(control.flushLsn - 1n, control.segmentBytes);
  for (let segno = first; segno <= last && problems.length < TIMELINE_PROBLEMS_MAX; segno++) {
    const name = segmentFileName(expectedPgTimeline(segno, control), segno, control.segmentBytes);
    const start = segmentStartLsn(segno, control.segmentBytes);
    const found = segments.get(segno) ?? [];
    const chosen = found.find((entry) => entry.name.endsWith(PARTIAL_SUFFIX)) ?? found[0];
    if (chosen === undefined) {
      problems.push(hole('missing_segment', name, start, `segment ${name} is missing: the WAL from ${formatLsn(start)} to ${formatLsn(start + BigInt(control.segmentBytes))} cannot be served`));
      continue;
    }
    problems.push(...checkHeldSegment(chosen, found, segno === last, start, control));
  }
  return problems;
}

function checkHeldSegment(chosen: DirectoryEntry, found: readonly DirectoryEntry[], isLast: boolean, start: Lsn, control: Layout): TimelineProblem[] {
  const problems: TimelineProblem[] = [];
  const neededBytes = isLast ? Number(control.flushLsn - start) : control.segmentBytes;
  if (chosen.bytes < neededBytes) {
    const firstMissing = start + BigInt(chosen.bytes);
    problems.push(hole('truncated_segment', chosen.name, firstMissing, `segment ${chosen.name} is truncated: ${chosen.bytes} bytes, the control file needs ${neededBytes}; the WAL from ${formatLsn(firstMissing)} cannot be served`));
  } else if (chosen.bytes > control.segmentBytes) {
    problems.push(warning('oversized_segment', chosen.name, `segment ${chosen.name} has ${chosen.bytes} bytes, more than the segment size ${control.segmentBytes}: the rest is ignored`));
  }
  if (found.length > 1) {
    problems.push(warning('duplicate_segment', chosen.name, `both ${found.map((entry) => entry.name).join(' and ')} exist: ${chosen.name} is served`));
  } else if (!isLast && chosen.name.endsWith(PARTIAL_SUFFIX)) {
    problems.push(warning('partial_not_last', chosen.name, `${chosen.name} is below the flush LSN ${formatLsn(control.flushLsn)} but still .partial`));
  }
  return problems;
}

/**
 * Segments before the start, or after the flush LSN. A followed timeline may legitimately hold the latter after a
 * crash (written, not yet recorded in the control file): recovery judges them, so they are not reported.
 */
function checkOutsideRange(segments: ReadonlyMap<bigint, DirectoryEntry[]>, control: Layout): TimelineProblem[] {
  const problems: TimelineProblem[] = [];
  const first = segmentOf(control.timelineStartLsn, control.segmentBytes);
  const flushSegno = segmentOf(control.flushLsn, control.segmentBytes);
  const atBoundary = control.flushLsn % BigInt(control.segmentBytes) === 0n;
  for (const [segno, found] of segments) {
    for (const entry of found) {
      if (segno < first) {
        problems.push(warning('segment_before_start', entry.name, `${entry.name} lies before the timeline start ${formatLsn(control.timelineStartLsn)}: it is ignored`));
      } else if (control.upstream === undefined && segno > flushSegno - (atBoundary ? 1n : 0n) && !(segno === flushSegno && entry.name.endsWith(PARTIAL_SUFFIX))) {
        problems.push(warning('segment_past_flush', entry.name, `${entry.name} lies past the flush LSN ${formatLsn(control.flushLsn)}: it is ignored`));
      }
    }
  }
  return problems;
}

function hole(kind: 'missing_segment' | 'truncated_segment', file: string, lsn: Lsn, message: string): TimelineProblem {
  return { kind, severity: 'error', file, lsn, message };
}

function warning(kind: TimelineProblemKind, file: string, message: string): TimelineProblem {
  return { kind, severity: 'warning', file, message };
}
