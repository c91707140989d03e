/**
 * A bounded pool of equal-sized send buffers shared by every stream of the TS backend. A chunk is read from its
 * segment straight into a pooled buffer behind room for its header and written from there, so the hot path makes
 * no per-chunk allocation (fresh 128 KiB buffers cost page faults and GC, see the native I/O measurements).
 *
 * The pool is the backend-wide memory bound: when every buffer is out, callers wait in FIFO order, so a thousand
 * catching-up replicas share the budget instead of each allocating its own.
 */
import assert from 'node:assert/strict';

export class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly waiters: Array<(buffer: Buffer) => void> = [];
  private allocated = 0;

  constructor(
    readonly bufferBytes: number,
    readonly buffersMax: number,
  ) {
    assert.ok(Number.isSafeInteger(bufferBytes) && bufferBytes > 0);
    assert.ok(Number.isSafeInteger(buffersMax) && buffersMax > 0);
  }

  /** A buffer, at once when one is free or may still be allocated, else when one is returned. */
  acquire(): Promise<Buffer> {
    const buffer = this.tryAcquire();
    if (buffer !== undefined) return Promise.resolve(buffer);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  tryAcquire(): Buffer | undefined {
    const reused = this.free.pop();
    if (reused !== undefined) return reused;
    if (this.allocated >= this.buffersMax) return undefined;
    this.allocated++;
    // allocUnsafeSlow: a buffer of its own, not a slice of Node's shared 8 KiB pool.
    return Buffer.allocUnsafeSlow(this.bufferBytes);
  }

  release(buffer: Buffer): void {
    assert.equal(buffer.length, this.bufferBytes, 'a buffer from another pool');
    const waiter = this.waiters.shift();
    if (waiter !== undefined) {
      waiter(buffer);
      return;
    }
    assert.ok(this.free.length < this.allocated, 'a buffer released twice');
    this.free.push(buffer);
  }

  /** Buffers handed out and not yet returned. */
  inUse(): number {
    return this.allocated - this.free.length;
  }
}
