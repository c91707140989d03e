/** computeHorizon: each input limiting in turn, PostgreSQL's segment arithmetic, and slot invalidation by the cap. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { computeHorizon, type HorizonInput, type SlotHold } from './horizon.js';

const SEG = 16 * 1024 * 1024;
const seg = (segno: number, offset = 0): bigint => BigInt(segno) * BigInt(SEG) + BigInt(offset);
const slot = (name: string, restartLsn: bigint | undefined, invalidated = false): SlotHold => ({ name, restartLsn, invalidated });

function input(overrides: Partial<HorizonInput>): HorizonInput {
  return { segmentBytes: SEG, commitLsn: seg(100, 500), durableLsn: seg(100, 500), walKeepBytes: 0, maxSlotWalKeepBytes: undefined, slots: [], ...overrides };
}

test('nothing holds: everything before the segment of the end of WAL goes, that segment stays', () => {
  const horizon = computeHorizon(input({}));
  assert.equal(horizon.keepFromSegno, 100n);
  assert.equal(horizon.horizonLsn, seg(100));
  assert.equal(horizon.limitedBy, 'end_of_wal');
  assert.deepEqual(horizon.slotsToInvalidate, []);
});

test('the control file flush LSN bounds the horizon when it lags the commit LSN', () => {
  assert.equal(computeHorizon(input({ durableLsn: seg(97, 1) })).keepFromSegno, 97n);
});

test('wal_keep_size keeps whole segments behind the end, rounded down (ConvertToXSegs), and never below 0', () => {
  assert.equal(computeHorizon(input({ walKeepBytes: 10 * SEG })).keepFromSegno, 90n);
  assert.equal(computeHorizon(input({ walKeepBytes: 10 * SEG + SEG - 1 })).keepFromSegno, 90n);
  const huge = computeHorizon(input({ walKeepBytes: 1000 * SEG }));
  assert.equal(huge.keepFromSegno, 0n);
  assert.equal(huge.limitedBy, 'wal_keep_size');
});

test("the oldest non-invalidated slot's restart segment is kept; invalidated and unreserved slots hold nothing", () => {
  const slots = [slot('a', seg(80, 7)), slot('b', seg(60, 9), true), slot('c', undefined), slot('d', seg(95))];
  const horizon = computeHorizon(input({ slots, walKeepBytes: 5 * SEG }));
  assert.equal(horizon.keepFromSegno, 80n);
  assert.equal(horizon.limitedBy, 'slot');
  assert.equal(horizon.limitingSlot, 'a');
  assert.deepEqual(horizon.slotsToInvalidate, [], 'no cap: no slot is invalidated');
});

test('wal_keep_size wins over a slot that is closer to the end', () => {
  const horizon = computeHorizon(input({ slots: [slot('a', seg(98))], walKeepBytes: 10 * SEG }));
  assert.equal(horizon.keepFromSegno, 90n);
  assert.equal(horizon.limitedBy, 'wal_keep_size');
});

test('max_slot_wal_keep_size: a slot further behind is cut to the cap and invalidated', () => {
  const slots = [slot('far', seg(50)), slot('near', seg(85))];
  const horizon = computeHorizon(input({ slots, maxSlotWalKeepBytes: 20 * SEG }));
  assert.equal(horizon.keepFromSegno, 80n);
  assert.equal(horizon.limitedBy, 'max_slot_wal_keep_size');
  assert.deepEqual(horizon.slotsToInvalidate.map((s) => s.name), ['far']);
});

test('a slot exactly at the cap stays; one byte further behind is lost', () => {
  assert.deepEqual(computeHorizon(input({ slots: [slot('s', seg(80))], maxSlotWalKeepBytes: 20 * SEG })).slotsToInvalidate, []);
  assert.deepEqual(computeHorizon(input({ slots: [slot('s', seg(80) - 1n)], maxSlotWalKeepBytes: 20 * SEG })).slotsToInvalidate.map((s) => s.name), ['s']);
});

test('a slot behind the cap but inside wal_keep_size is kept, as in PostgreSQL (wal_keep_size lowers the cut first)', () => {
  const horizon = computeHorizon(input({ slots: [slot('s', seg(75))], maxSlotWalKeepBytes: 10 * SEG, walKeepBytes: 30 * SEG }));
  assert.equal(horizon.keepFromSegno, 70n);
  assert.deepEqual(horizon.slotsToInvalidate, []);
});

test('a cap of 0 invalidates every slot behind the end segment', () => {
  const horizon = computeHorizon(input({ slots: [slot('s', seg(99, 100)), slot('t', seg(100, 1))], maxSlotWalKeepBytes: 0 }));
  assert.equal(horizon.keepFromSegno, 100n);
  assert.deepEqual(horizon.slotsToInvalidate.map((s) => s.name), ['s']);
});

test('the backup LSN hook keeps everything not yet backed up', () => {
  const horizon = computeHorizon(input({ walKeepBytes: 2 * SEG, backupLsn: seg(40, 3) }));
  assert.equal(horizon.keepFromSegno, 40n);
  assert.equal(horizon.limitedBy, 'backup');
  assert.equal(computeHorizon(input({ backupLsn: seg(100, 400) })).limitedBy, 'end_of_wal', 'a backup at the end holds nothing more');
});
