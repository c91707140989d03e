/** Timeline selection from startup options: Neon's names and aliases, the single-timeline default, bad ids. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { selectTimeline } from './timeline-selection.js';

const TENANT = '0123456789abcdef0123456789abcdef';
const TIMELINE = 'fedcba9876543210fedcba9876543210';
const sole = { tenantId: 'a'.repeat(32), timelineId: 'b'.repeat(32) };

test('tenant_id/timeline_id and the old ztenantid/ztimelineid names select a timeline', () => {
  assert.deepEqual(selectTimeline(new Map([['tenant_id', TENANT], ['timeline_id', TIMELINE]]), sole), { tenantId: TENANT, timelineId: TIMELINE });
  assert.deepEqual(selectTimeline(new Map([['ztenantid', TENANT.toUpperCase()], ['ztimelineid', TIMELINE]]), undefined), { tenantId: TENANT, timelineId: TIMELINE });
});

test('no ids: the sole timeline, or none when there is no single one', () => {
  assert.deepEqual(selectTimeline(new Map(), sole), sole);
  assert.equal(selectTimeline(new Map([['application_name', 'x']]), undefined), undefined);
});

test('half a key or a malformed id is refused with 22023', () => {
  for (const options of [new Map([['tenant_id', TENANT]]), new Map([['tenant_id', TENANT], ['timeline_id', 'xyz']]), new Map([['tenant_id', 'g'.repeat(32)], ['timeline_id', TIMELINE]])]) {
    assert.throws(
      () => selectTimeline(options, sole),
      (error: unknown) => isWalcastError(error, 'WALCAST_ERR_INVALID_STARTUP_PARAMETER') && error.sqlState === '22023',
    );
  }
});
