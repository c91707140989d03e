/**
 * The registry's removal states: a timeline being removed is neither served nor unavailable but still the sole
 * timeline a default connection means; a failed removal lists it as unavailable; the counters feed /metrics.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WalcastError } from '../errors.js';
import { Timeline } from './timeline.js';
import { TimelineRegistry } from './timeline-registry.js';

const TENANT = 'ab'.repeat(16);
const TIMELINE = 'cd'.repeat(16);

function timeline(): Timeline {
  return new Timeline(
    { tenantId: TENANT, timelineId: TIMELINE, dir: '/nonexistent', systemId: 1n, pgVersion: 150018, segmentBytes: 16 * 1024 * 1024, pgTimelineId: 1, timelineStartLsn: 0x1000000n },
    { flushLsn: 0x1000100n, commitLsn: 0x1000100n },
  );
}

test('a timeline being removed is out of service, refuses with its error, and stays the sole default until gone', () => {
  const registry = new TimelineRegistry();
  const served = timeline();
  registry.add(served);
  const error = new WalcastError('WALCAST_ERR_TIMELINE_REMOVED', 'removed');
  assert.equal(registry.beginRemoval(TENANT, TIMELINE, error).timeline, served);
  assert.equal(registry.get(TENANT, TIMELINE), undefined);
  assert.equal(registry.getUnavailable(TENANT, TIMELINE), undefined);
  assert.equal(registry.removalError(TENANT, TIMELINE), error);
  assert.deepEqual(registry.soleTimelineKey(), { tenantId: TENANT, timelineId: TIMELINE });
  assert.equal(registry.removingCount(), 1);
  assert.throws(() => registry.beginRemoval(TENANT, TIMELINE, error), /being removed already/);
  registry.endRemoval(TENANT, TIMELINE);
  assert.equal(registry.removalError(TENANT, TIMELINE), undefined);
  assert.equal(registry.soleTimelineKey(), undefined);
  assert.deepEqual(registry.removals, { completed: 1, failed: 0 });
});

test('a failed removal is listed as unavailable with removalFailed, and can be begun again', () => {
  const registry = new TimelineRegistry();
  registry.add(timeline());
  const error = new WalcastError('WALCAST_ERR_TIMELINE_REMOVED', 'removed');
  registry.beginRemoval(TENANT, TIMELINE, error);
  registry.endRemoval(TENANT, TIMELINE, { tenantId: TENANT, timelineId: TIMELINE, dir: '/nonexistent', error: new Error('removal failed: EACCES') });
  const listed = registry.getUnavailable(TENANT, TIMELINE);
  assert.equal(listed?.removalFailed, true);
  assert.deepEqual(registry.removals, { completed: 0, failed: 1 });
  assert.equal(registry.beginRemoval(TENANT, TIMELINE, error).unavailable, listed);
  registry.endRemoval(TENANT, TIMELINE);
  assert.deepEqual(registry.listUnavailable(), []);
});
