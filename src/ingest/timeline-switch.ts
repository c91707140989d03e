/**
 * Following an upstream onto a new PostgreSQL timeline (a promotion upstream): deciding from the upstream's history
 * what ingest must do (stream the rest of the old timeline, switch now, or refuse a diverged history), and the
 * storage steps of a switch, in the order that keeps a crash safe: the history file, then the new timeline's first
 * segment (the old timeline's bytes before the switch point, as xlog.c XLogInitNewTimeline copies them), made
 * durable, and only then the control file, which commits the switch.
 */
import assert from 'node:assert/strict';
import { WalcastError } from '../errors.js';
import { alignDown, formatLsn, lsnDistance, type Lsn } from '../lsn.js';
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
}

/**
 * Stores the switch and returns the new timeline's writer (positioned at the switch point) and control state. The
 * old timeline's segment of the switch point stays as it is (NAME.partial, as PostgreSQL renames it at promotion).
 */
export async function storeTimelineSwitch(input: SwitchStorageInput): Promise<WalWriter> {
  assert.equal(input.writtenLsn, input.switchLsn, 'a switch happens exactly at the switch point');
  assert.ok(input.nextPgTimelineId > input.pgTimelineId, 'the next timeline is newer');
  await writeHistoryFile(input.dir, input.nextPgTimelineId, input.historyContent);
  const segmentStart = alignDown(input.switchLsn, input.segmentBytes);
  const writer = new WalWriter({ dir: input.dir, pgTimelineId: input.nextPgTimelineId, segmentBytes: input.segmentBytes, startLsn: segmentStart });
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
  return writer;
}
