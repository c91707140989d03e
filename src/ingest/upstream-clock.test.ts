import assert from 'node:assert/strict';
import { test } from 'node:test';
import { performance } from 'node:perf_hooks';
import { PG_EPOCH_OFFSET_MICROS, pgNowMicros } from '../replication/stream-messages.js';
import { UpstreamClock } from './upstream-clock.js';

test('an upstream send timestamp of now converts to performance.now(), to within Date.now()\'s millisecond', () => {
  const clock = new UpstreamClock();
  clock.recheck();
  const before = performance.now();
  const converted = clock.toMonotonicMs(pgNowMicros());
  const after = performance.now();
  assert.ok(converted !== undefined);
  assert.ok(converted > before - 2 && converted < after + 2, `${converted} vs [${before}, ${after}]`);
});

test('a send timestamp 3.25 ms in the past converts to 3.25 ms before one of now, with µs resolution', () => {
  const clock = new UpstreamClock();
  const now = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) - PG_EPOCH_OFFSET_MICROS;
  const a = clock.toMonotonicMs(now);
  const b = clock.toMonotonicMs(now - 3250n);
  assert.ok(a !== undefined && b !== undefined);
  assert.ok(Math.abs(a - b - 3.25) < 1e-6, `${a - b}`);
});

test('a sender that does not stamp (0) gives no time', () => {
  assert.equal(new UpstreamClock().toMonotonicMs(0n), undefined);
});
