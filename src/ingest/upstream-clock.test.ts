import assert from 'node:assert/strict';
import { test } from 'node:test';
import { performance } from 'node:perf_hooks';
import { PG_EPOCH_OFFSET_MICROS, pgNowMicros } from '../replication/stream-messages.js';
import { UpstreamClock } from './upstream-clock.js';

test('an upstream send timestamp of now converts to performance.now(), to within Date.now()\'s millisecond', () => {
  // A wall-clock step between the recheck and the timestamp (VM guests get them; a CI run saw one of 17 ms) is no
  // error of the conversion: such an attempt is taken again, at most five times, and any other miss fails at once.
  const wallMinusMonotonic = (): number => Date.now() - performance.now();
  for (let attempt = 1; ; attempt++) {
    const offsetBefore = wallMinusMonotonic();
    const clock = new UpstreamClock();
    clock.recheck();
    const before = performance.now();
    const converted = clock.toMonotonicMs(pgNowMicros());
    const after = performance.now();
    const stepped = Math.abs(wallMinusMonotonic() - offsetBefore) > 2;
    assert.ok(converted !== undefined);
    if (stepped && attempt < 5) continue;
    assert.ok(converted > before - 2 && converted < after + 2, `${converted} vs [${before}, ${after}]${stepped ? ' (the wall clock stepped in every attempt)' : ''}`);
    return;
  }
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

test('after a step back of the wall clock, rechecks bring the offset back to within 0.1 ms of the truth, not 1 ms low', () => {
  // A simulated machine: monotonic time advances by 1,000.37 ms between rechecks (random phases of the wall clock's
  // millisecond), the wall clock reads the true wall time truncated to the ms, and steps back 5 ms at the start.
  let monotonicMs = 10_000.123;
  let trueOffsetMs = 1_700_000_000_000.456;
  const clock = new UpstreamClock(() => Math.floor(trueOffsetMs + monotonicMs), () => monotonicMs, trueOffsetMs);
  const errorMs = (): number => {
    // A send timestamp of "now" (µs) converted back: its distance from the monotonic now is the offset's error.
    const nowMicros = BigInt(Math.round((trueOffsetMs + monotonicMs) * 1000)) - PG_EPOCH_OFFSET_MICROS;
    return monotonicMs - clock.toMonotonicMs(nowMicros)!;
  };
  clock.recheck();
  assert.ok(Math.abs(errorMs()) < 0.01, `no step: the start offset stands (${errorMs()} ms)`);
  trueOffsetMs -= 5;
  const errors: number[] = [];
  for (let recheck = 0; recheck < 30; recheck++) {
    monotonicMs += 1000.37;
    clock.recheck();
    errors.push(errorMs());
  }
  // The estimate errs only low: a converted send time at or after the truth (error <= 0), hops read short, never long.
  assert.ok(errors.every((error) => error <= 1e-6 && error > -1), `within the truncation after the step: ${errors.join(', ')}`);
  assert.ok(errors.at(-1)! > -0.1, `refined to within 0.1 ms after 30 rechecks: ${errors.at(-1)} ms`);
});
