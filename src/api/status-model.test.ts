/** The timeline status document: Neon's fields, and the upstream (live ingest) section walcast adds. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Timeline } from '../timeline/timeline.js';
import { timelineStatus } from './status-model.js';

const timeline = new Timeline(
  { tenantId: 'a'.repeat(32), timelineId: 'b'.repeat(32), dir: '/nonexistent', systemId: 7n, pgVersion: 150000, segmentBytes: 16 << 20, pgTimelineId: 1, timelineStartLsn: 0x1000000n },
  { flushLsn: 0x1000200n, commitLsn: 0x1000100n },
);

test('a timeline without an upstream shows upstream null; with one, its state and counters', () => {
  const plain = timelineStatus(timeline, new Date());
  assert.equal(plain.upstream, null);
  assert.equal(plain.commit_lsn, '0/1000100');
  assert.equal(plain.flush_lsn, '0/1000200');
  const following = timelineStatus(timeline, new Date(), {
    tenantId: timeline.tenantId,
    timelineId: timeline.timelineId,
    upstream: '127.0.0.1:5432',
    state: 'streaming',
    failure: undefined,
    pausedReason: undefined,
    bytesReceived: 4096,
    messagesReceived: 3,
    statusSent: 2,
    hotStandbySent: 1,
    connects: 1,
  });
  assert.deepEqual(following.upstream, {
    upstream: '127.0.0.1:5432',
    state: 'streaming',
    failure: null,
    paused_reason: null,
    bytes_received: 4096,
    messages_received: 3,
    status_updates_sent: 2,
    hot_standby_feedback_sent: 1,
    connects: 1,
  });
});

test('slot wal_status follows the retention limits where WAL is removed, as pg_replication_slots', async () => {
  const slotted = new Timeline(
    { tenantId: 'c'.repeat(32), timelineId: 'd'.repeat(32), dir: '/nonexistent', systemId: 7n, pgVersion: 150000, segmentBytes: 16 << 20, pgTimelineId: 1, timelineStartLsn: 0x1000000n },
    { flushLsn: 0x9000000n, commitLsn: 0x9000000n },
  );
  await slotted.slots.create('near', { temporary: false, restartLsn: 0x8f00000n });
  await slotted.slots.create('behind', { temporary: false, restartLsn: 0x5000000n });
  await slotted.slots.create('far', { temporary: false, restartLsn: 0x1000000n });
  const retention = { removes: true, walKeepBytes: 32 << 20, maxSlotWalKeepBytes: 96 << 20, horizonLsn: undefined, removedBeforeLsn: undefined, limitedBy: undefined, limitingSlot: undefined, diskBytes: 0, segmentFiles: 0, passes: 0, segmentsRemoved: 0, slotsInvalidated: 0, failures: 0 };
  const statusOf = (document: Record<string, unknown>): Record<string, unknown> =>
    Object.fromEntries((document.slots as { slot_name: string; wal_status: unknown }[]).map((slot) => [slot.slot_name, slot.wal_status]));
  assert.deepEqual(statusOf(timelineStatus(slotted, new Date(), undefined, retention)), { near: 'reserved', behind: 'extended', far: 'unreserved' });
  assert.deepEqual(statusOf(timelineStatus(slotted, new Date(), undefined, { ...retention, removes: false })), { near: 'reserved', behind: 'reserved', far: 'reserved' }, 'nothing is removed, so every slot is reserved');
});
