/**
 * The removal horizon of one timeline: the first segment that must be kept, and which slots fall behind the
 * `--max-slot-wal-keep-size` cap. Pure: the retention task (retention-task.ts) feeds it the timeline's positions
 * and slots and acts on the answer.
 *
 * It follows PostgreSQL 15's KeepLogSeg and InvalidateObsoleteReplicationSlots (src/backend/access/transam/xlog.c),
 * in whole segments as they are:
 * - start from the segment of the end of durable, served WAL (the commit LSN, and no further than the durable flush
 *   LSN);
 * - the oldest restart LSN of the non-invalidated slots keeps its segment, except that with a cap a slot keeps at
 *   most `cap / segment size` segments behind the end;
 * - `--wal-keep-size` keeps at least `keep / segment size` segments behind the end, slot or not (so a slot inside
 *   that window is never invalidated, as in PostgreSQL);
 * - the backup LSN (object-storage offload, a later issue; absent today) keeps everything not yet backed up;
 * - slots whose restart LSN lies before the first kept segment are invalidated (PostgreSQL: wal_status "lost").
 * Replicas without a slot hold nothing here; the retention task separately never removes a segment a sender has open.
 */
import assert from 'node:assert/strict';
import { minLsn, type Lsn } from '../lsn.js';
import type { SlotHold } from '../slots/slot-table.js';
import { segmentOf, segmentStartLsn } from '../storage/segment-name.js';

/** What retention reads of one slot: SlotTable.holds(). A slot without a restart LSN (no RESERVE_WAL, unused) holds nothing. */
export type { SlotHold };

export interface HorizonInput {
  readonly segmentBytes: number;
  /** The end of WAL served to replicas. */
  readonly commitLsn: Lsn;
  /** The durable flush LSN; the horizon never passes it. */
  readonly durableLsn: Lsn;
  /** --wal-keep-size in bytes (0: keep nothing for slotless replicas). */
  readonly walKeepBytes: number;
  /** --max-slot-wal-keep-size in bytes; undefined: unlimited (-1). */
  readonly maxSlotWalKeepBytes: number | undefined;
  readonly slots: readonly SlotHold[];
  /** Everything before this is safe in object storage; undefined: no offload, so this input holds nothing. */
  readonly backupLsn?: Lsn | undefined;
}

export type HorizonLimit = 'end_of_wal' | 'slot' | 'max_slot_wal_keep_size' | 'wal_keep_size' | 'backup';

export interface Horizon {
  /** The first segment kept: every segment before it is wholly below the horizon and may be removed. */
  readonly keepFromSegno: bigint;
  /** segmentStart(keepFromSegno): the timeline start once those segments are gone. */
  readonly horizonLsn: Lsn;
  /** Which input set the horizon (for logs and the status API). */
  readonly limitedBy: HorizonLimit;
  /** The slot holding the horizon when limitedBy is 'slot'. */
  readonly limitingSlot: string | undefined;
  /** Slots past the cap, to be invalidated: their restart LSN lies before the horizon. */
  readonly slotsToInvalidate: readonly SlotHold[];
}

export function computeHorizon(input: HorizonInput): Horizon {
  assert.ok(input.walKeepBytes >= 0, 'wal keep size is not negative');
  assert.ok(input.maxSlotWalKeepBytes === undefined || input.maxSlotWalKeepBytes >= 0, 'the slot cap is not negative');
  const segmentBytes = BigInt(input.segmentBytes);
  const endSegno = segmentOf(minLsn(input.commitLsn, input.durableLsn), input.segmentBytes);
  let keepFromSegno = endSegno;
  let limitedBy: HorizonLimit = 'end_of_wal';
  let limitingSlot: string | undefined;
  const oldest = oldestSlot(input.slots);
  if (oldest !== undefined && oldest.restartLsn !== undefined) {
    let slotSegno = segmentOf(oldest.restartLsn, input.segmentBytes);
    let capped = false;
    if (input.maxSlotWalKeepBytes !== undefined) {
      const slotKeepSegments = BigInt(input.maxSlotWalKeepBytes) / segmentBytes;
      capped = endSegno - slotSegno > slotKeepSegments;
      if (capped) slotSegno = endSegno - slotKeepSegments;
    }
    if (slotSegno < keepFromSegno) {
      keepFromSegno = slotSegno;
      limitedBy = capped ? 'max_slot_wal_keep_size' : 'slot';
      limitingSlot = capped ? undefined : oldest.name;
    }
  }
  const keepSegments = BigInt(input.walKeepBytes) / segmentBytes;
  if (endSegno - keepFromSegno < keepSegments) {
    keepFromSegno = endSegno > keepSegments ? endSegno - keepSegments : 0n;
    limitedBy = 'wal_keep_size';
    limitingSlot = undefined;
  }
  if (input.backupLsn !== undefined && segmentOf(input.backupLsn, input.segmentBytes) < keepFromSegno) {
    keepFromSegno = segmentOf(input.backupLsn, input.segmentBytes);
    limitedBy = 'backup';
    limitingSlot = undefined;
  }
  const horizonLsn = segmentStartLsn(keepFromSegno, input.segmentBytes);
  const slotsToInvalidate = input.maxSlotWalKeepBytes === undefined ? [] : input.slots.filter((slot) => holds(slot) && (slot.restartLsn ?? 0n) < horizonLsn);
  assert.ok(keepFromSegno <= endSegno, 'the horizon never passes the end of durable WAL');
  assert.ok(horizonLsn <= minLsn(input.commitLsn, input.durableLsn));
  return { keepFromSegno, horizonLsn, limitedBy, limitingSlot, slotsToInvalidate };
}

function holds(slot: SlotHold): boolean {
  return !slot.invalidated && slot.restartLsn !== undefined;
}

/** The non-invalidated slot with the oldest restart LSN (XLogGetReplicationSlotMinimumLSN), if any holds WAL. */
function oldestSlot(slots: readonly SlotHold[]): SlotHold | undefined {
  let oldest: SlotHold | undefined;
  for (const slot of slots) {
    if (!holds(slot)) continue;
    if (oldest === undefined || (slot.restartLsn ?? 0n) < (oldest.restartLsn ?? 0n)) oldest = slot;
  }
  return oldest;
}
