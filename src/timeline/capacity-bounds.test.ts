/**
 * The capacity bounds agree: every `--max-connections` the ceiling accepts fits under the replica registry's and the
 * LSN watches' leak guards, and a setting above the ceiling is refused with WALCAST_ERR_CONFIG (it used to start, and
 * the 100,000th replica would then hit an assertion).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { LSN_WATCH_WAITERS_MAX } from './lsn-watch.js';
import { REPLICAS_PER_TIMELINE_MAX } from './replica-registry.js';
import { CONNECTIONS_MAX, checkMaxConnections } from '../config/limits.js';

test('the registry and watch bounds derive from the connection ceiling', () => {
  assert.ok(REPLICAS_PER_TIMELINE_MAX >= CONNECTIONS_MAX);
  assert.ok(LSN_WATCH_WAITERS_MAX >= CONNECTIONS_MAX);
});

test('checkMaxConnections accepts 1..CONNECTIONS_MAX and refuses the rest with a message naming the range', () => {
  assert.equal(checkMaxConnections(1), 1);
  assert.equal(checkMaxConnections(CONNECTIONS_MAX), CONNECTIONS_MAX);
  for (const bad of [0, -1, 1.5, CONNECTIONS_MAX + 1, Number.NaN]) {
    assert.throws(() => checkMaxConnections(bad), (error: unknown) => isWalcastError(error, 'WALCAST_ERR_CONFIG') && /from 1 to 100000/.test(error.message));
  }
});
