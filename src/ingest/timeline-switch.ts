/**
 * Following an upstream onto a new PostgreSQL timeline (a promotion upstream): deciding from the upstream's history
 * what ingest must do (stream the rest of the old timeline, switch now, or refuse a diverged history), and the
 * storage steps of a switch, in the order that keeps a crash safe: every file already named with the new TLI
 * removed (left by an earlier attempt that did not commit) and the directory fsync'd; the history file; then the new
 * timeline's first segment (the old timeline's bytes before the switch point, as xlog.c XLogInitNewTimeline copies
 * them), made durable; and only then the control file, which commits the switch.
 *
 * Why the removal: until the control file records the new TLI, nothing named with it is part of the timeline. An
 * attempt that crashed (or failed) after writing new-TLI files but before the commit leaves them behind, and a
 * retry must not build on them: the WAL writer reopens an existing `NAME.partial` as it is, so a stale switch
 * segment would keep its old bytes past the switch point (recovery and the reader trust every byte after the
 * position to be zero), and stale later segments or sidecars would sit where the new timeline's WAL goes. The
 * upstream may even be a different promotion than last time. Removal is made durable before the commit, so after
 * any crash the directory holds either no new-TLI file from before or a committed switch.
 */
import assert from 'node:assert/strict';
import { readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { WalcastError } from '../errors.js';
import type { Logger } from '../log.js';
import { alignDown, formatLsn, lsnDistance, type Lsn } from '../lsn.js';
import { fsyncDirectory } from '../storage/durable-file.js';
import { segmentNameOfEntry } from '../storage/page-checksums.js';
import { parseSegmentFileName } from '../storage/segment-name.js';
import { historyEntryOf, switchPointOf, writeHistoryFile, type TimelineHistory } from '../storage/timeline-history.js';
import { WalReader } from '../storage/wal-reader.js';
import { WalWriter } from '../storage/wal-writer.js';

export type SwitchPlan =
  /** The upstream ends our timeline later than we hold: stream it up to the switch point first. */
  | { readonly kind: 'catch_up'; readonly switchLsn: Lsn }
  /** We hold exactly up to the switch point: move to the next timeline now. */
  | { readonly kind: 'switch'; readonly switchLsn: Lsn; readonly nextPgTimelineId: number }
  /** We hold WAL the new upstream never had (or our timeline is not in its history): never serve it onward. */
  | { readonly kind: 'diverged'; readonly error: WalcastError };

/** What to do when the upstream's newest timeline has `upstreamHistory` and ours is `pgTimelineId`, written to `writtenLsn`. */
export function planTimelineSwitch(pgTimelineId: number, writtenLsn: Lsn, upstreamHistory: TimelineHistory): SwitchPlan {
  const upstreamTli = upstreamHistory[upstreamHistory.length - 1]?.pgTimelineId;
  assert.ok(upstreamTli !== undefined && upstreamTli > pgTimelineId, 'the upstream is on a newer timeline');
  if (historyEntryOf(pgTimelineId, upstreamHistory) === undefined) {
    return { kind: 'diverged', error: divergedError(`timeline ${pgTimelineId} is not in the history of the upstream's timeline ${upstreamTli}`) };
  }
  const end = switchPointOf(pgTimelineId, upstreamHistory);
  assert.ok(end !== undefined, 'an older timeline of the history has an end');
  if (writtenLsn > end.switchLsn) {
    return {
      kind: 'diverged',
      error: divergedError(
        `walcast holds timeline ${pgTimelineId} up to ${formatLsn(writtenLsn)}, past the upstream's switch point ${formatLsn(end.switchLsn)} to timeline ${end.nextPgTimelineId}: the WAL after the switch point never reached the new primary`,
      ),
    };
  }
  if (writtenLsn < end.switchLsn) return { kind: 'catch_up', switchLsn: end.switchLsn };
  return { kind: 'switch', switchLsn: end.switchLsn, nextPgTimelineId: end.nextPgTimelineId };
}

function divergedError(why: string): WalcastError {
  return new WalcastError('WALCAST_ERR_UPSTREAM_DIVERGED', `the upstream's timeline history does not contain walcast's position: ${why}; ingest stopped and nothing past the fork is served on the new timeline`);
}

export interface SwitchStorageInput {
  readonly dir: string;
  readonly segmentBytes: number;
  /** The PostgreSQL timeline being left. */
  readonly pgTimelineId: number;
  /** The old timeline's writer, closed (everything written is durable) and ending exactly at the switch point. */
  readonly writtenLsn: Lsn;
  readonly switchLsn: Lsn;
  readonly nextPgTimelineId: number;
  /** The new timeline's history file, exactly as the upstream sent it. */
  readonly historyContent: string;
  /** Records the new TLI and the switch point in the control file (through the timeline's one control writer). */
  readonly commitSwitch: () => Promise<unknown>;
  readonly log: Logger;
  /** The directory operations of the stale-file removal; tests substitute them to see the order and to fail them. */
  readonly fs?: SwitchFs;
}

export interface SwitchFs {
  readdir(dir: string): Promise<string[]>;
  unlink(path: string): Promise<void>;
  syncDir(dir: string): Promise<void>;
}

const NODE_FS: SwitchFs = { readdir: (dir) => readdir(dir), unlink, syncDir: fsyncDirectory };

/**
 * Stores the switch and returns the new timeline's writer (positioned at the switch point) and control state. The
 * old timeline's segment of the switch point stays as it is (NAME.partial, as PostgreSQL renames it at promotion).
 */
export async function storeTimelineSwitch(input: SwitchStorageInput): Promise<WalWriter> {
  assert.equal(input.writtenLsn, input.switchLsn, 'a switch happens exactly at the switch point');
  assert.ok(input.nextPgTimelineId > input.pgTimelineId, 'the next timeline is newer');
  await removeStaleTimelineFiles(input);
  await writeHistoryFile(input.dir, input.nextPgTimelineId, input.historyContent);
  const segmentStart = alignDown(input.switchLsn, input.segmentBytes);
  const writer = new WalWriter({ dir: input.dir, pgTimelineId: input.nextPgTimelineId, segmentBytes: input.segmentBytes, startLsn: segmentStart });
  try {
    if (segmentStart < input.switchLsn) {
      const prefix = Buffer.alloc(lsnDistance(input.switchLsn, segmentStart));
      const reader = new WalReader(input.dir, { segmentBytes: input.segmentBytes, pgTimelineId: input.pgTimelineId, timelineStartLsn: segmentStart });
      try {
        const copied = await reader.readRange(segmentStart, prefix);
        assert.equal(copied, prefix.length, 'the old timeline holds its segment up to the switch point');
      } finally {
        await reader.close();
      }
      writer.write(segmentStart, prefix);
    }
    await writer.flush();
    assert.equal(writer.durableLsn, input.switchLsn);
    await input.commitSwitch();
  } catch (error) {
    // Not committed: the files written stay behind as stale new-TLI files, which the retry removes first.
    writer.abandon();
    throw error;
  }
  return writer;
}

/**
 * Removes every segment, `.partial` and sidecar named with the new TLI (none belongs to the timeline before the
 * commit), then fsyncs the directory so the removal is durable before anything new is written under that TLI.
 */
async function removeStaleTimelineFiles(input: SwitchStorageInput): Promise<void> {
  const fs = input.fs ?? NODE_FS;
  const stale = (await fs.readdir(input.dir)).filter((name) => parseSegmentFileName(segmentNameOfEntry(name), input.segmentBytes)?.pgTimelineId === input.nextPgTimelineId);
  if (stale.length === 0) return;
  input.log.warn(
    { pgTimelineId: input.nextPgTimelineId, files: stale.length, first: stale[0], switchLsn: formatLsn(input.switchLsn) },
    `removing ${stale.length} file(s) of PostgreSQL timeline ${input.nextPgTimelineId} left by an earlier switch attempt that was not committed`,
  );
  for (const name of stale) {
    try {
      await fs.unlink(join(input.dir, name));
    } catch (error) {
      // Gone already (removed by an attempt interrupted before its directory fsync): the goal is reached.
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }
  await fs.syncDir(input.dir);
}
