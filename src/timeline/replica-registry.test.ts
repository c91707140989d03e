/** Replica registry: registration by handle, feedback of each kind, aggregates refreshed on every kind. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { HotStandbyFeedback, PageserverFeedback, StandbyReply } from './replica-feedback.js';
import { ReplicaRegistry } from './replica-registry.js';
import { Timeline } from './timeline.js';

const info = (appName: string) => ({ appName, remoteAddress: '127.0.0.1:1', startLsn: 0x100n, startedAt: new Date(), connId: 1 });
const reply = (write: bigint, flush: bigint, apply: bigint): StandbyReply => ({ kind: 'standby_reply', writeLsn: write, flushLsn: flush, applyLsn: apply, replyTimeMicros: 0n, replyRequested: false });
const hot = (xmin: bigint, catalogXmin = 0n): HotStandbyFeedback => ({ kind: 'hot_standby', timeMicros: 0n, xmin, catalogXmin });
const pageserver = (lastReceived: bigint, remoteConsistent: bigint): PageserverFeedback => ({
  kind: 'pageserver',
  currentTimelineSize: 0n,
  lastReceivedLsn: lastReceived,
  diskConsistentLsn: 0n,
  remoteConsistentLsn: remoteConsistent,
  replyTimeMicros: 0n,
  shardNumber: 0,
  corruptionDetected: false,
});

test('standby status alone refreshes the flush aggregate (Neon refreshed only on h)', () => {
  const registry = new ReplicaRegistry();
  const a = registry.register(info('a'));
  const b = registry.register(info('b'));
  a.update(reply(0x500n, 0x400n, 0x300n));
  assert.equal(registry.aggregates().standbyFlushLsn, 0x400n);
  b.update(reply(0x200n, 0x150n, 0x100n));
  assert.equal(registry.aggregates().standbyFlushLsn, 0x150n);
  assert.equal(registry.aggregates().standbyApplyLsn, 0x100n);
  b.unregister();
  assert.equal(registry.aggregates().standbyFlushLsn, 0x400n, 'an unregistered replica leaves the aggregate');
  assert.equal(registry.count(), 1);
});

test('hot-standby xmin aggregate is the minimum non-zero full xid', () => {
  const registry = new ReplicaRegistry();
  const a = registry.register(info('a'));
  const b = registry.register(info('b'));
  a.update(hot((1n << 32n) | 500n, 0n));
  b.update(hot(0n, 0n));
  assert.equal(registry.aggregates().hotStandbyXmin, (1n << 32n) | 500n);
  assert.equal(registry.aggregates().hotStandbyCatalogXmin, undefined);
  b.update(hot(900n, 800n));
  assert.equal(registry.aggregates().hotStandbyXmin, 900n);
  assert.equal(registry.aggregates().hotStandbyCatalogXmin, 800n);
});

test('pageserver feedback: laggard is the minimum received, remote-consistent the maximum ever', () => {
  const registry = new ReplicaRegistry();
  const a = registry.register(info('pageserver-1'));
  const b = registry.register(info('pageserver-2'));
  a.update(pageserver(0x900n, 0x800n));
  b.update(pageserver(0x700n, 0x100n));
  assert.equal(registry.aggregates().pageserverLaggardLsn, 0x700n);
  assert.equal(registry.aggregates().remoteConsistentLsn, 0x800n);
  a.unregister();
  assert.equal(registry.aggregates().remoteConsistentLsn, 0x800n, 'kept after the reporter disconnects');
  assert.equal(b.remoteConsistentLsn(), 0x100n);
  assert.deepEqual(registry.feedbackTotals, { standbyReply: 0, hotStandby: 0, pageserver: 2 });
});

test('snapshots show sent position, bytes and feedback per replica; unregister is idempotent', () => {
  const registry = new ReplicaRegistry();
  const handle = registry.register(info('stby'));
  handle.setSentLsn(0x2000n);
  handle.addBytesSent(4096);
  handle.update(reply(1n, 1n, 1n));
  const [snapshot] = registry.snapshot();
  assert.ok(snapshot !== undefined);
  assert.equal(snapshot.sentLsn, 0x2000n);
  assert.equal(snapshot.bytesSent, 4096);
  assert.equal(snapshot.feedbackCounts.standbyReply, 1);
  assert.ok(snapshot.lastFeedbackAt instanceof Date);
  assert.throws(() => handle.setSentLsn(0x1000n), 'the sent position never goes back');
  handle.unregister();
  handle.unregister();
  assert.equal(registry.snapshot().length, 0);
  handle.update(reply(2n, 2n, 2n));
  assert.equal(registry.feedbackTotals.standbyReply, 1, 'feedback after unregister is dropped');
});

test('shouldSenderStop: caught-up pageserver and no writer; never for replicas without remote-consistent LSN', () => {
  const timeline = new Timeline(
    { tenantId: 'a'.repeat(32), timelineId: 'b'.repeat(32), dir: '/nonexistent', systemId: 1n, pgVersion: 150000, segmentBytes: 16 << 20, pgTimelineId: 1, timelineStartLsn: 0x1000000n },
    { flushLsn: 0x2000000n, commitLsn: 0x2000000n },
  );
  assert.equal(timeline.shouldSenderStop(undefined), false);
  assert.equal(timeline.shouldSenderStop(0x1ffffffn), false);
  assert.equal(timeline.shouldSenderStop(0x2000000n), true);
  const detach = timeline.attachWriter();
  assert.equal(timeline.shouldSenderStop(0x2000000n), false, 'a writer keeps senders alive');
  detach();
  detach();
  assert.equal(timeline.hasWriter(), false);
  assert.throws(() => timeline.publish({ flushLsn: 0x3000000n, commitLsn: 0x3000001n }), 'commit never passes flush');
});
