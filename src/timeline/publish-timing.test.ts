/**
 * The publish timing bookkeeping on its own: which publishes a stream owes, when they count, and its bounds.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { test } from 'node:test';
import { LsnWatch } from './lsn-watch.js';
import { LatencyHistogram, OWED_PUBLISHES_PER_STREAM_MAX, PUBLISH_LATENCY_BUCKETS_SECONDS, PublishTiming } from './publish-timing.js';

test('a histogram puts each observation in the first bucket whose bound holds it, and above every bound in +Inf', () => {
  const histogram = new LatencyHistogram();
  histogram.observe(0);
  histogram.observe(PUBLISH_LATENCY_BUCKETS_SECONDS[0] ?? 0);
  histogram.observe(0.00095);
  histogram.observe(0.0011);
  histogram.observe(1_000);
  assert.equal(histogram.count, 5);
  assert.equal(histogram.counts[0], 2);
  assert.equal(histogram.counts[PUBLISH_LATENCY_BUCKETS_SECONDS.indexOf(0.001)], 1);
  assert.equal(histogram.counts[PUBLISH_LATENCY_BUCKETS_SECONDS.indexOf(0.00125)], 1, '1.1 ms is told from 1 ms and from 2.5 ms');
  assert.equal(histogram.counts[PUBLISH_LATENCY_BUCKETS_SECONDS.length], 1);
});

test('every value lands in the bucket a linear scan of the bounds picks; observeMany counts n of one value', () => {
  const bounds = PUBLISH_LATENCY_BUCKETS_SECONDS;
  assert.ok(bounds.every((bound, index) => index === 0 || bound > (bounds[index - 1] ?? 0)), 'bounds ascend');
  const values = [0, ...bounds.flatMap((bound) => [bound * 0.999, bound, bound * 1.001]), 1e9];
  for (const value of values) {
    const histogram = new LatencyHistogram();
    histogram.observeMany(value, 3);
    let expected = bounds.findIndex((bound) => value <= bound);
    if (expected === -1) expected = bounds.length;
    assert.equal(histogram.counts[expected], 3, `${value} s`);
    assert.equal(histogram.count, 3);
    assert.equal(histogram.sumSeconds, value * 3);
  }
});

test('publishes before a stream first waits are not owed; a written report completes every publish up to it', () => {
  const timing = new PublishTiming();
  const watch = new LsnWatch(100n, timing);
  const stream = timing.openStream();
  watch.advance(200n);
  assert.equal(stream.chunkAccepted(200n), false, 'not live yet: nothing owed');
  stream.waiting(200n);
  watch.advance(300n);
  watch.advance(400n);
  assert.equal(stream.chunkAccepted(250n), false, 'the chunk does not reach the first owed publish');
  assert.equal(stream.chunkAccepted(400n), true);
  assert.equal(stream.chunkAccepted(400n), false, 'one report covers it already');
  stream.written(400n);
  assert.equal(timing.publishToSocket.waiting.count, 1);
  assert.equal(timing.publishToSocket.busy.count, 1);
  assert.equal(timing.fanout.count, 2);
  stream.close();
  watch.advance(500n);
  assert.equal(timing.fanout.count, 2);
});

test('a stream that owes more than the bound is dropped from the timing until it waits again, and its publishes settle', () => {
  const timing = new PublishTiming();
  const watch = new LsnWatch(0n, timing);
  const slow = timing.openStream();
  const fast = timing.openStream();
  slow.waiting(0n);
  fast.waiting(0n);
  for (let lsn = 1n; lsn <= BigInt(OWED_PUBLISHES_PER_STREAM_MAX) + 1n; lsn++) {
    watch.advance(lsn);
    assert.equal(fast.chunkAccepted(lsn), true);
    fast.written(lsn);
    fast.waiting(lsn);
  }
  assert.equal(timing.streamsDropped, 1);
  assert.equal(timing.liveStreams(), 1);
  assert.equal(timing.fanout.count, OWED_PUBLISHES_PER_STREAM_MAX + 1, 'the publishes the slow stream owed settle when it is dropped');
  assert.equal(timing.publishToSocket.waiting.count, OWED_PUBLISHES_PER_STREAM_MAX + 1, 'only the fast stream wrote');
  assert.equal(timing.publishToSocket.busy.count, 0);
  slow.waiting(watch.get());
  assert.equal(timing.liveStreams(), 2);
});

test('a written report stamped by the caller (one clock read for a whole batch) counts from the publish to that stamp', async () => {
  const timing = new PublishTiming();
  const watch = new LsnWatch(0n, timing);
  const stream = timing.openStream();
  stream.waiting(0n);
  watch.advance(100n);
  assert.equal(stream.chunkAccepted(100n), true);
  const stampMs = performance.now();
  // Bookkeeping after the write that takes longer than the 2.5 ms bucket must not be counted.
  await new Promise((resolve) => setTimeout(resolve, 30));
  stream.written(100n, stampMs);
  assert.equal(timing.fanout.count, 1);
  assert.ok(timing.fanout.sumSeconds < 0.025, `counted until the stamp, not until the report: ${timing.fanout.sumSeconds} s`);
  assert.equal(timing.publishToSocket.waiting.count, 1);
  assert.ok(timing.publishToSocket.waiting.sumSeconds < 0.025);
});
