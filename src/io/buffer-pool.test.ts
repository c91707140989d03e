/**
 * BufferPool: where its buffers come from (the allocator, then the heap), and its written-off budget: a written-off
 * buffer is replaced (the first waiter gets one at once), no more than writtenOffMax are out at once, and one that
 * comes back is taken in again only while the pool is below its bound.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BufferPool } from './buffer-pool.js';

test('written-off buffers are replaced within the budget, and memory stays within pool + budget', async () => {
  const pool = new BufferPool(16, 2, 1);
  const first = pool.tryAcquire()!;
  const second = pool.tryAcquire()!;
  assert.equal(pool.tryAcquire(), undefined);
  let got: Buffer | undefined;
  const waiting = pool.acquire().then((buffer) => (got = buffer));
  assert.equal(pool.waiting(), 1);
  assert.equal(pool.writeOff(first), true);
  await waiting;
  assert.ok(got !== undefined && got !== first && got !== second, 'the waiter got a fresh buffer');
  assert.deepEqual([pool.inUse(), pool.writtenOff(), pool.writtenOffTotal()], [2, 1, 1]);
  assert.equal(pool.writeOff(second), false, 'the budget is spent: the buffer stays the pool\'s');
  assert.equal(pool.tryAcquire(), undefined, 'nothing allocated past pool + budget');
  // The written-off buffer comes back while the pool is full: dropped, the budget frees.
  pool.release(first);
  assert.deepEqual([pool.inUse(), pool.writtenOff()], [2, 0]);
  assert.equal(pool.tryAcquire(), undefined);
  // Written off again, and back once the pool has room: taken in (no allocation for the next acquire).
  assert.equal(pool.writeOff(second), true);
  pool.release(got!);
  assert.deepEqual([pool.inUse(), pool.writtenOff()], [0, 1]);
  pool.release(second);
  assert.deepEqual([pool.inUse(), pool.writtenOff()], [0, 0]);
  const again = [pool.tryAcquire(), pool.tryAcquire()];
  assert.ok(again.includes(second) && again.includes(got), 'the returned buffers are reused');
  assert.equal(pool.tryAcquire(), undefined);
});

test('a pool without a budget never writes off', () => {
  const pool = new BufferPool(16, 1);
  const buffer = pool.tryAcquire()!;
  assert.equal(pool.writeOff(buffer), false);
  assert.equal(pool.inUse(), 1);
  pool.release(buffer);
  assert.equal(pool.inUse(), 0);
});

test('buffers come from the allocator while it has them, then from the heap; the bound is the same either way', () => {
  const given: Buffer[] = [Buffer.alloc(64, 1), Buffer.alloc(64, 2)];
  const asked: number[] = [];
  const pool = new BufferPool(64, 3, 0, (bytes) => {
    asked.push(bytes);
    return given.shift();
  });
  const first = pool.tryAcquire();
  const second = pool.tryAcquire();
  const third = pool.tryAcquire();
  assert.deepEqual(asked, [64, 64, 64], 'asked once per buffer, at its size');
  assert.equal(first![0], 1);
  assert.equal(second![0], 2);
  assert.ok(third !== undefined && third.length === 64 && third.buffer.byteLength === 64, 'then a heap buffer of its own');
  assert.equal(pool.tryAcquire(), undefined, 'buffersMax holds');
  pool.release(second!);
  assert.equal(pool.tryAcquire(), second, 'a returned buffer is reused, the allocator not asked again');
  assert.equal(asked.length, 3);
});
