/**
 * Send buffers of stalled streams, written off so that healthy streams are not starved (the TS backend's send pool,
 * buffer-pool.ts). A socket whose peer stops reading keeps the frames written to it referenced in Node's write
 * queue until the replica timeout ends the stream; with one run (STREAM_CHUNKS_IN_FLIGHT_MAX frames) per stream,
 * POOL_BUFFERS_MAX / 4 such replicas would hold every pooled buffer, and every other stream would wait in
 * acquire() until they time out: one kind of bad client stalling everyone.
 *
 * The watch costs nothing while the pool has buffers: only a send that finds it empty starts a check every
 * SEND_STALL_CHECK_MS (while anyone waits), and each check writes off the pooled frames of every stream that has had
 * frames in flight without one completing for SEND_STALL_MS. The pool then allocates replacements, within its
 * written-off budget (BufferPool.writtenOffMax), so memory stays bounded; a stalled stream takes no more buffers
 * meanwhile, as its in-flight bound is full (or gets written off at the next check once it is).
 */
import type { BufferPool } from './buffer-pool.js';

/** A stream whose socket has completed no write for this long while it had frames in flight is stalled. */
export const SEND_STALL_MS = 1000;
/** How often stalls are looked for while sends wait for the pool. */
export const SEND_STALL_CHECK_MS = 250;

export interface StallWatched {
  /** When a write of this stream last completed (or its first frame went out), if it has pooled frames not yet written off in flight. */
  pooledFramesPendingSince(): number | undefined;
  /** Writes off the pooled frames in flight (as the pool's budget allows); the stream logs the first time. */
  writeOffPooledFrames(stalledMs: number): void;
}

export class SendStallWatch {
  private readonly streams = new Set<StallWatched>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly pool: BufferPool,
    private readonly stallMs = SEND_STALL_MS,
    private readonly checkMs = Math.min(SEND_STALL_CHECK_MS, stallMs),
  ) {}

  add(stream: StallWatched): void {
    this.streams.add(stream);
  }

  delete(stream: StallWatched): void {
    this.streams.delete(stream);
  }

  /** A buffer from the pool; when it has none, stalled streams are looked for now and then until one comes. */
  acquire(): Promise<Buffer> {
    const buffer = this.pool.tryAcquire();
    if (buffer !== undefined) return Promise.resolve(buffer);
    // A pool that never writes off (writtenOffMax 0) is a plain pool: nothing to look for.
    if (this.pool.writtenOffMax === 0) return this.pool.acquire();
    this.check();
    const waiting = this.pool.acquire();
    if (this.pool.waiting() > 0 && this.timer === undefined) {
      this.timer = setInterval(() => {
        this.check();
        if (this.pool.waiting() === 0) this.stop();
      }, this.checkMs);
      // Sends waiting keep their streams' sockets (and the process) alive; the check alone must not.
      this.timer.unref();
    }
    return waiting;
  }

  /** Stops the check (the backend is closing). */
  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  private check(): void {
    const now = performance.now();
    for (const stream of this.streams) {
      if (this.pool.writtenOff() >= this.pool.writtenOffMax) return;
      const since = stream.pooledFramesPendingSince();
      if (since !== undefined && now - since >= this.stallMs) stream.writeOffPooledFrames(now - since);
    }
  }
}
