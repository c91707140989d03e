/** Reconnect backoff: doubling from the minimum, capped, jittered downwards only, reset on success. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Backoff, RECONNECT_DELAY_MAX_MS, RECONNECT_DELAY_MIN_MS } from './backoff.js';

test('doubles from 100 ms to the 10 s cap without jitter', () => {
  const backoff = new Backoff(RECONNECT_DELAY_MIN_MS, RECONNECT_DELAY_MAX_MS, () => 0);
  const delays = Array.from({ length: 10 }, () => backoff.nextDelayMs());
  assert.deepEqual(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
  backoff.reset();
  assert.equal(backoff.nextDelayMs(), 100);
});

test('jitter only shortens a delay, never past 80 %', () => {
  const backoff = new Backoff(100, 10_000, () => 0.999);
  assert.equal(backoff.nextDelayMs(), 80);
  for (let index = 0; index < 50; index++) assert.ok(backoff.nextDelayMs() <= 10_000);
});
