/**
 * A bounded pool of equal-sized send buffers shared by every stream of the TS backend. A chunk is read from its
 * segment straight into a pooled buffer behind room for its header and written from there, so the hot path makes
 * no per-chunk allocation (fresh 128 KiB buffers cost page faults and GC, see the native I/O measurements).
 *
 * The pool is the backend-wide memory bound: when every buffer is out, callers wait in FIFO order, so a thousand
 * catching-up replicas share the budget instead of each allocating its own.
 *
 * Written-off buffers (writeOff): a buffer stuck in the write queue of a socket whose peer stopped reading would hold
 * its place in the pool until the replica timeout ends the stream, so enough stalled replicas would make every
 * healthy stream wait. The pool can forget such a buffer and allocate a replacement, within `writtenOffMax` buffers
 * written off and not yet back: memory stays within (buffersMax + writtenOffMax) × bufferBytes. A written-off buffer
 * that comes back (its write completed or failed) is taken in again while the pool is below buffersMax, else dropped
 * for the GC; either way it leaves the written-off count.
 *
 * Where buffers come from is the creator's choice (`allocate`): the TS backend takes them from the CRC-32C loop's
 * WebAssembly memory while it has room (allocateCrc32cBuffer), so pages read into them are checksummed in place;
 * the default, and the fallback when that answers undefined, is a heap buffer of its own.
 */
import assert from 'node:assert/strict';

/** A buffer of `bytes`, or undefined to have the pool allocate one on the heap. */
export type BufferAllocator = (bytes: number) => Buffer | undefined;

export class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly waiters: Array<(buffer: Buffer) => void> = [];
  /** Buffers the pool owns: free or handed out (not counting written-off ones). */
  private allocated = 0;
  /** Buffers written off and not yet returned: at most writtenOffMax. */
  private readonly writtenOffNow = new Set<Buffer>();
  private writtenOffCount = 0;

  constructor(
    readonly bufferBytes: number,
    readonly buffersMax: number,
    /** Buffers that may be written off at once (0: none; the pool is then a plain bounded pool). */
    readonly writtenOffMax = 0,
    private readonly allocator?: BufferAllocator,
  ) {
    assert.ok(Number.isSafeInteger(bufferBytes) && bufferBytes > 0);
    assert.ok(Number.isSafeInteger(buffersMax) && buffersMax > 0);
    assert.ok(Number.isSafeInteger(writtenOffMax) && writtenOffMax >= 0);
  }

  /** A buffer, at once when one is free or may still be allocated, else when one is returned or written off. */
  acquire(): Promise<Buffer> {
    const buffer = this.tryAcquire();
    if (buffer !== undefined) return Promise.resolve(buffer);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  tryAcquire(): Buffer | undefined {
    const reused = this.free.pop();
    if (reused !== undefined) return reused;
    if (this.allocated >= this.buffersMax) return undefined;
    return this.allocate();
  }

  release(buffer: Buffer): void {
    assert.equal(buffer.length, this.bufferBytes, 'a buffer from another pool');
    if (this.writtenOffNow.size > 0 && this.writtenOffNow.delete(buffer)) {
      // No waiter can exist below buffersMax (writeOff hands it a replacement), so this one goes to `free`.
      if (this.allocated >= this.buffersMax) return;
      this.allocated++;
    }
    const waiter = this.waiters.shift();
    if (waiter !== undefined) {
      waiter(buffer);
      return;
    }
    assert.ok(this.free.length < this.allocated, 'a buffer released twice');
    this.free.push(buffer);
  }

  /**
   * Forgets `buffer` (handed out, and held by a socket that is not draining): the pool may allocate another in its
   * place, and the first waiter gets one at once. False when writtenOffMax buffers are already written off: the
   * buffer stays the pool's. Its holder still calls release() when done with it.
   */
  writeOff(buffer: Buffer): boolean {
    if (this.writtenOffNow.size >= this.writtenOffMax) return false;
    assert.ok(!this.writtenOffNow.has(buffer) && !this.free.includes(buffer), 'only a buffer handed out is written off, once');
    this.writtenOffNow.add(buffer);
    this.writtenOffCount++;
    this.allocated--;
    const waiter = this.waiters.shift();
    if (waiter !== undefined) waiter(this.allocate());
    return true;
  }

  /** Buffers handed out and not yet returned (written-off ones not counted). */
  inUse(): number {
    return this.allocated - this.free.length;
  }

  /** Buffers written off and not yet returned. */
  writtenOff(): number {
    return this.writtenOffNow.size;
  }

  /** Buffers written off since the pool was made. */
  writtenOffTotal(): number {
    return this.writtenOffCount;
  }

  /** Callers waiting for a buffer. */
  waiting(): number {
    return this.waiters.length;
  }

  private allocate(): Buffer {
    this.allocated++;
    const buffer = this.allocator?.(this.bufferBytes);
    if (buffer !== undefined) {
      assert.equal(buffer.length, this.bufferBytes, 'the allocator returns buffers of the size asked');
      return buffer;
    }
    // allocUnsafeSlow: a buffer of its own, not a slice of Node's shared 8 KiB pool.
    return Buffer.allocUnsafeSlow(this.bufferBytes);
  }
}
