/**
 * Whether the TS backend reads a catch-up run on the event-loop thread (a synchronous preadv) or on libuv's thread
 * pool, and the evidence that decides it.
 *
 * Why read on the event loop at all: an asynchronous read is a thread-pool round trip (a futex wake of a pool thread,
 * its switch, an eventfd wake-up of the loop, a request object, a promise), about six futex calls and two extra
 * wake-ups per 512 KiB run, and on the 2-vCPU paravirtualized guest the benchmarks run on those cost more CPU than
 * copying the run out of page cache: a warm 512 KiB preadv takes 0.05-0.12 ms. Held A/B, same tree, the gate forced
 * open against the pool: CPU per GB 0.74x with the C consumer, 0.87x with pg_receivewal, 0.79x with pg_receivewal
 * beside a busy CPU (docs/benchmarks.md, "The TS backend's reads on the event loop").
 *
 * Why not always: a read that misses page cache waits for the disk, and the event loop serves every replica, the
 * reply readers, the live ingest and the status API. So the gate closes as soon as a synchronous read took longer than
 * SYNC_READ_DISK_MIN_MS while the process's block-input count (getrusage's ru_inblock) moved (ru_inblock counts every
 * thread's reads, and a pool thread's read of a checksum sidecar during a 0.1 ms copy from page cache is not this read
 * waiting for the disk), or longer than SYNC_READ_SLOW_MS while some thread of the process slept (getrusage's
 * ru_nvcsw moved: NFS, FUSE, a page another process is reading in). A slow read during which no thread slept did not
 * wait for anything: its thread lost the CPU to another process (an involuntary switch), and the pool would not have
 * spared the event loop that. On the 2-vCPU benchmark guest a replaying standby beside the server preempted one read
 * per catch-up for 2-5 ms, each closing the gate for a back-off in which the pool read the stream in 128 KiB parts
 * (~400 round trips per 512 MiB, docs/benchmarks.md); such reads are counted (preemptedSyncReads) and change nothing.
 * While closed, reads go to the pool; it opens again after a back-off that starts at
 * SYNC_READ_BACKOFF_MS and doubles, up to SYNC_READ_BACKOFF_MAX_MS, each time the first read after a back-off is
 * slow again (a cold catch-up); a fast one resets it. So the event loop waits for the disk at most once per back-off,
 * whatever the number of streams. And it copies at most SYNC_READ_BYTES_PER_TURN_MAX per event-loop turn (as the
 * native engine's per-iteration budget): past it, reads of that turn go to the pool, where up to four run at once.
 */
import assert from 'node:assert/strict';

/** A synchronous read that takes longer than this while a thread slept closes the gate (a warm 512 KiB read takes 0.05-0.3 ms). */
export const SYNC_READ_SLOW_MS = 2;
/** A read that took longer than this while the process read from a block device closes the gate too. */
export const SYNC_READ_DISK_MIN_MS = 0.25;
/**
 * First back-off after a slow synchronous read; doubled while the first read after a back-off is slow again. Short,
 * because a catch-up at 1 GB/s makes 2,000 reads a second, and one page missing from a warm range (reclaimed by the
 * kernel) should not send a whole second of them to the pool; a cold range doubles it quickly.
 */
export const SYNC_READ_BACKOFF_MS = 250;
export const SYNC_READ_BACKOFF_MAX_MS = 32_000;
/** Bytes read on the event-loop thread per loop turn, over all streams (~0.5 ms of copying at page-cache speed). */
export const SYNC_READ_BYTES_PER_TURN_MAX = 4 * 1024 * 1024;

/** What /metrics shows of the gate (walcast_ts_chunk_reads_total, walcast_ts_sync_read_gate_*). */
export interface ChunkReadStats {
  /** Catch-up reads done on the event-loop thread, and on the thread pool, since start. */
  readonly syncReads: number;
  readonly poolReads: number;
  /** Synchronous reads that touched the disk or were slow, each closing the gate. */
  readonly slowSyncReads: number;
  /** Synchronous reads slower than SYNC_READ_SLOW_MS during which no thread slept: the thread lost its CPU (no closure). */
  readonly preemptedSyncReads: number;
  /** Whether the next read may be synchronous (not in a back-off). */
  readonly open: boolean;
}

export interface SyncReadGateOptions {
  /** Milliseconds, monotonic (performance.now). */
  readonly now?: () => number;
  /** The process's block input operations and voluntary context switches so far (process.resourceUsage()). */
  readonly usage?: () => ProcessUsage;
  /** Runs `reset` once the current event-loop turn is over (setImmediate). */
  readonly afterTurn?: (reset: () => void) => void;
  /** Told each time a slow read closes the gate (the server logs it). */
  readonly onClose?: (closure: GateClosure) => void;
}

/** The two getrusage counters the gate reads around each synchronous read (all threads of the process). */
export interface ProcessUsage {
  /** ru_inblock: block input operations. */
  readonly blockInputs: number;
  /** ru_nvcsw: switches away from a thread that went to sleep (waiting for I/O, a lock, a futex). */
  readonly voluntarySwitches: number;
}

export interface GateClosure {
  readonly elapsedMs: number;
  readonly blockInputs: number;
  readonly voluntarySwitches: number;
  readonly backoffMs: number;
}

/**
 * Whether getrusage counts voluntary switches here. libuv's Windows getrusage leaves ru_nvcsw at 0: there a slow read
 * closes the gate whether or not anything slept, as before the rule existed.
 */
const VOLUNTARY_SWITCHES_COUNTED = process.platform !== 'win32';

function processUsage(): ProcessUsage {
  const usage = process.resourceUsage();
  return { blockInputs: usage.fsRead, voluntarySwitches: usage.voluntaryContextSwitches };
}

export class SyncReadGate {
  private readonly now: () => number;
  private readonly usage: () => ProcessUsage;
  private readonly afterTurn: (reset: () => void) => void;
  private closedUntil = Number.NEGATIVE_INFINITY;
  private backoffMs = SYNC_READ_BACKOFF_MS;
  /** The gate reopened after a back-off and no read has shown yet whether the disk is still in the way. */
  private probing = false;
  private bytesThisTurn = 0;
  private turnResetPending = false;
  private syncReads = 0;
  private poolReads = 0;
  private slowSyncReads = 0;
  private preemptedSyncReads = 0;

  constructor(private readonly options: SyncReadGateOptions = {}) {
    this.now = options.now ?? (() => performance.now());
    this.usage = options.usage ?? processUsage;
    this.afterTurn = options.afterTurn ?? ((reset) => void setImmediate(reset));
  }

  /** Whether a read of `bytes` may run on this thread now; false: read on the pool (and call countPoolRead). */
  allows(bytes: number): boolean {
    assert.ok(bytes > 0, 'a read reads something');
    if (this.now() < this.closedUntil) return false;
    return this.bytesThisTurn + bytes <= SYNC_READ_BYTES_PER_TURN_MAX;
  }

  /** Runs `read` (a synchronous read of `bytes` the gate allowed) on this thread and learns from how it went. */
  readNow<T>(bytes: number, read: () => T): T {
    this.bytesThisTurn += bytes;
    if (!this.turnResetPending) {
      this.turnResetPending = true;
      this.afterTurn(() => {
        this.turnResetPending = false;
        this.bytesThisTurn = 0;
      });
    }
    const before = this.usage();
    const startedAt = this.now();
    try {
      return read();
    } finally {
      // A failed read is judged too: one that failed after waiting for the disk waited all the same.
      const elapsedMs = this.now() - startedAt;
      const after = this.usage();
      const blockInputs = after.blockInputs - before.blockInputs;
      const voluntarySwitches = after.voluntarySwitches - before.voluntarySwitches;
      this.syncReads++;
      const slept = voluntarySwitches > 0 || !VOLUNTARY_SWITCHES_COUNTED;
      if ((blockInputs > 0 && elapsedMs > SYNC_READ_DISK_MIN_MS) || (slept && elapsedMs > SYNC_READ_SLOW_MS)) {
        this.close(elapsedMs, blockInputs, voluntarySwitches);
      } else {
        if (elapsedMs > SYNC_READ_SLOW_MS) this.preemptedSyncReads++;
        this.fast();
      }
    }
  }

  countPoolRead(): void {
    this.poolReads++;
  }

  stats(): ChunkReadStats {
    return {
      syncReads: this.syncReads,
      poolReads: this.poolReads,
      slowSyncReads: this.slowSyncReads,
      preemptedSyncReads: this.preemptedSyncReads,
      open: this.now() >= this.closedUntil,
    };
  }

  private close(elapsedMs: number, blockInputs: number, voluntarySwitches: number): void {
    this.slowSyncReads++;
    // Slow again right after a back-off: the disk is still in the way (a cold catch-up), so wait longer.
    if (this.probing) this.backoffMs = Math.min(this.backoffMs * 2, SYNC_READ_BACKOFF_MAX_MS);
    this.closedUntil = this.now() + this.backoffMs;
    this.probing = true;
    this.options.onClose?.({ elapsedMs, blockInputs, voluntarySwitches, backoffMs: this.backoffMs });
  }

  private fast(): void {
    if (!this.probing) return;
    this.probing = false;
    this.backoffMs = SYNC_READ_BACKOFF_MS;
  }
}
