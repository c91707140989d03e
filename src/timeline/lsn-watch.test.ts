/** The LSN watch: forward only, wakes waiters the moment it passes their position, times out, honours abort. */
import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { test } from 'node:test';
import { LsnWatch } from './lsn-watch.js';

test('a waiter beyond the current value wakes when the watch passes its position, not before', async () => {
  const watch = new LsnWatch(100n);
  let woken: bigint | undefined | 'pending' = 'pending';
  const waiting = watch.waitBeyond(150n, 10_000).then((lsn) => (woken = lsn));
  watch.advance(150n);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(woken, 'pending', 'reaching the position is not passing it');
  watch.advance(151n);
  await waiting;
  assert.equal(woken, 151n);
  assert.equal(watch.waiterCount(), 0);
});

test('waitBeyond resolves at once when the value is already beyond', async () => {
  const watch = new LsnWatch(500n);
  assert.equal(await watch.waitBeyond(499n, 10_000), 500n);
});

test('a wait times out with undefined and leaves no waiter behind', async () => {
  const watch = new LsnWatch(1n);
  assert.equal(await watch.waitBeyond(1n, 20), undefined);
  assert.equal(watch.waiterCount(), 0);
});

test('abort ends a wait with undefined', async () => {
  const watch = new LsnWatch(1n);
  const controller = new AbortController();
  const waiting = watch.waitBeyond(1n, 10_000, controller.signal);
  controller.abort();
  assert.equal(await waiting, undefined);
  assert.equal(watch.waiterCount(), 0);
  assert.equal(await watch.waitBeyond(1n, 10_000, controller.signal), undefined, 'an aborted signal does not wait');
});

test('many waiters at different positions wake in the right batches', async () => {
  const watch = new LsnWatch(0n);
  const results = new Map<number, bigint | undefined>();
  const waits = [10, 20, 30, 40].map((position) => watch.waitBeyond(BigInt(position), 10_000).then((lsn) => results.set(position, lsn)));
  watch.advance(25n);
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual([...results.keys()].sort(), [10, 20]);
  watch.advance(45n);
  await Promise.all(waits);
  assert.equal(results.get(40), 45n);
});

test('the watch never moves back', () => {
  const watch = new LsnWatch(10n);
  assert.throws(() => watch.advance(9n));
  watch.advance(10n);
  assert.equal(watch.get(), 10n);
});

test('a stream waiting once per publish keeps one abort listener, and abort still ends its current wait', async () => {
  const watch = new LsnWatch(0n);
  const controller = new AbortController();
  for (let lsn = 1n; lsn <= 100n; lsn++) {
    const woken = watch.waitBeyond(lsn - 1n, 10_000, controller.signal);
    watch.advance(lsn);
    assert.equal(await woken, lsn);
  }
  assert.ok(getEventListeners(controller.signal, 'abort').length <= 1, 'listeners do not pile up with the waits');
  const other = new AbortController();
  const bystander = watch.waitBeyond(100n, 10_000, other.signal);
  const current = watch.waitBeyond(100n, 10_000, controller.signal);
  controller.abort();
  assert.equal(await current, undefined);
  watch.advance(101n);
  assert.equal(await bystander, 101n, 'another signal\'s wait is not ended by it');
  assert.equal(watch.waiterCount(), 0);
});

test('a listener is called synchronously on every move, not on a non-move, until it stops listening', () => {
  const watch = new LsnWatch(10n);
  const heard: bigint[] = [];
  const stop = watch.listen((lsn) => heard.push(lsn));
  assert.equal(watch.listenerCount(), 1);
  watch.advance(20n);
  assert.deepEqual(heard, [20n], 'within advance');
  watch.advance(20n);
  watch.advance(30n);
  assert.deepEqual(heard, [20n, 30n]);
  stop();
  stop();
  watch.advance(40n);
  assert.deepEqual(heard, [20n, 30n]);
  assert.equal(watch.listenerCount(), 0);
});

test('a listener that stops listening during a move does not keep the others from hearing it', () => {
  const watch = new LsnWatch(1n);
  const heard: string[] = [];
  const stopFirst = watch.listen(() => {
    heard.push('first');
    stopFirst();
  });
  watch.listen(() => heard.push('second'));
  watch.advance(2n);
  watch.advance(3n);
  assert.deepEqual(heard, ['first', 'second', 'second']);
});
