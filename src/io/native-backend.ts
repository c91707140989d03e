/**
 * The `native` I/O backend: streams WAL from segment files to replica sockets through the C++ addon (native/),
 * so the payload never enters the JavaScript heap. This file owns the TypeScript side of that: argument checks
 * before anything crosses into C++, one engine per backend, per-stream promises (in-flight bound, release,
 * failure), prefetch tokens, handing a socket to the addon and back, and turning native errors into WalcastErrors.
 *
 * Socket ownership while a stream is open: the addon writes through its own dup of the socket's fd (write
 * interest only, in its epoll set); Node keeps reading replica feedback through libuv and must not write. The
 * first native write waits until libuv's write queue is empty; release() waits until the addon's queue is empty,
 * then the addon removes and closes its dup, and Node may write again. See native/README.md.
 *
 * Importing this file loads nothing: the addon is loaded, and its self-test run, on the first probeNative(),
 * defaultNativeStrategy() or createNativeBackend() (cached per process), so importing it for its types or
 * constants costs no dlopen and no socketpair.
 *
 * It knows nothing about PostgreSQL: headers arrive finished from the sender loop.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { WalcastError } from '../errors.js';
import {
  CHUNK_RUN_CHUNKS_MAX,
  MAX_SEND_BYTES,
  STREAM_WRITE_OBSERVERS_MAX,
  type ChunkBatch,
  type IoBackend,
  type KernelTlsStatus,
  type SendBufferStats,
  type StreamWriter,
  type WalChunk,
} from './backend.js';
import {
  NATIVE_STRATEGY_CODES,
  NativeEventKind,
  NativeIoError,
  NativeSendStatus,
  loadNativeAddon,
  type NativeAddon,
  type NativeEngine,
  type NativeEventHandler,
} from './native-binding.js';
import { POOL_BUFFERS_MAX, WRITTEN_OFF_BUFFERS_MAX, createTsBackend } from './ts-backend.js';
import type { Logger } from '../log.js';
import { socketFd } from './socket-fd.js';

export type NativeStrategy = 'sendfile' | 'writev' | 'uring';

export const NATIVE_STRATEGIES: readonly NativeStrategy[] = ['sendfile', 'writev', 'uring'];

/**
 * The default strategy, chosen from `npm run bench:full` across the scenarios users run (2026-12-06, native/README.md
 * "Strategy choice"): sendfile had the lowest server CPU per GB in every table (catch-up with the C consumer,
 * pg_receivewal and a replaying standby; fan-out to 10, 100 and 1,000; cold catch-up; idle and under load) and the
 * highest MB/s in most of them. writev and uring pay a copy of every payload into the socket (sendmsg from the
 * mapping) plus page faults on the mapping; sendfile hands page-cache pages to the socket.
 */
export const MEASURED_FASTEST_STRATEGY: NativeStrategy = 'sendfile';
/**
 * Where io_uring is unavailable (kernel.io_uring_disabled, container seccomp profiles that block it) uring
 * cannot start; sendfile needs nothing but the socket and has the lowest CPU per GB.
 */
export const NO_RING_STRATEGY: NativeStrategy = 'sendfile';

let probeResult: { ok: true } | { ok: false; reason: string } | undefined;
/** Whether the self-test could set up an io_uring (false until probed, or when the probe failed). */
let ringAvailable = false;

/** Largest header sendChunk takes: the addon's inline header room (io-engine.h kHeaderBytesMax). */
export const NATIVE_HEADER_BYTES_MAX = 64;
/** Largest sendMessage: control messages are tiny; the bound keeps a bug from queueing megabytes natively. */
export const NATIVE_MESSAGE_BYTES_MAX = 1024 * 1024;
/** Largest single prefetch request the addon takes (io-engine.h kPrefetchBytesMax); larger ones are split. */
export const NATIVE_PREFETCH_BYTES_MAX = 4 * 1024 * 1024;
/**
 * The sender's prefetch pieces on native streams (StreamWriter.prefetchShape): 4 MiB, and two of them ahead (an 8 MiB
 * window). Each piece costs a sender wait, a check ahead on the libuv pool (its own mapping) and their promises (its
 * reads go to the addon in NATIVE_PREFETCH_READ_BYTES requests: four since 2026-12-07, one before); next to a busy
 * CPU a cold catch-up is CPU-bound, and at 1 MiB pieces the per-piece costs were about a quarter of its CPU per GB
 * (4 MiB: ~0.78x with one request per piece, docs/benchmarks.md "Cold catch-up next to a busy CPU"). The window
 * doubles with the piece so that the sender stays as far ahead of its waits as with four 1 MiB pieces (a 4 MiB window of one 4 MiB piece waited ~35 % longer for the disk per GiB). The TS backend keeps 1
 * and 4 MiB: its checks ahead read into kept send buffers (VERIFIED_READS_KEPT_MAX, 6 MiB) that a larger window
 * would overflow.
 */
export const NATIVE_PREFETCH_SHAPE = { pieceBytes: NATIVE_PREFETCH_BYTES_MAX, windowBytes: 2 * NATIVE_PREFETCH_BYTES_MAX } as const;
/**
 * Each prefetch request the native backend hands the addon reads at most this much: a 4 MiB piece
 * (NATIVE_PREFETCH_SHAPE) goes as four requests, read one after another by the file's readahead thread. The sender
 * keeps its 4 MiB pieces (one wait, one check ahead, one set of promises per piece): only the reads are smaller. Reads
 * of 4 MiB held the live writer's fdatasync behind them on the disk: with three cold files read as fast as the disk
 * goes, a commit's fdatasync took ~16 ms (p50) beside 4 MiB requests and ~8 ms beside 1 MiB ones, whatever the window
 * (4 or 8 MiB; bench/prefetch-shape-sync.ts, docs/benchmarks.md "Live replicas beside cold catch-ups"). The price: ~5-10 %
 * more cold catch-up CPU per GB than one 4 MiB request (three more requests, thread hand-offs and events per piece).
 * The split is the addon's: one request, token, event and promise per piece, and the engine queues its 1 MiB jobs in
 * file order (Engine::Prefetch), so the readahead threads and the disk see 1 MiB jobs with gaps between them (the
 * same split done in JavaScript measured 0.96-1.04x the CPU per GB: docs/benchmarks.md "A cold catch-up's CPU,
 * thread by thread").
 */
export const NATIVE_PREFETCH_READ_BYTES = 1024 * 1024;
/**
 * Largest range prefetch() takes: the sender's Prefetcher passes whole windows (4 MiB, cut at segment ends),
 * not send-sized chunks, so the bound is PostgreSQL's largest segment size (1 GiB), not MAX_SEND_BYTES.
 */
export const PREFETCH_RANGE_BYTES_MAX = 1024 * 1024 * 1024;

assert.ok(MAX_SEND_BYTES <= NATIVE_PREFETCH_BYTES_MAX, 'one chunk fits one prefetch request');
assert.ok(NATIVE_PREFETCH_READ_BYTES <= NATIVE_PREFETCH_BYTES_MAX && NATIVE_PREFETCH_SHAPE.pieceBytes % NATIVE_PREFETCH_READ_BYTES === 0, 'a piece is whole reads');

/**
 * checksumPagesOffThread calls on the libuv pool at once, process-wide; more wait in a queue for one of these slots
 * (OFF_THREAD_CHECKSUMS_QUEUED_MAX). The pool (4 threads by default) also serves storage's file operations (segment
 * opens, sidecar reads, the WAL writer's syncs): many cold streams verifying ahead must not queue those behind their
 * checksums, so one thread of the default four stays theirs. One cold stream found the slots taken for 8% of its
 * checks with 3 (readahead completes several pieces at once), 19% with 2.
 */
export const OFF_THREAD_CHECKSUMS_MAX = 3;
/**
 * Checks ahead waiting, process-wide, for an OFF_THREAD_CHECKSUMS_MAX slot; past this many a check runs inline on the
 * event loop (the path every check found a full pool on until 2026-12-07). Inline, one check of a 4 MiB prefetch piece
 * (NATIVE_PREFETCH_SHAPE) holds the event loop ~1 ms, where the live replicas' commits wait (issue 13), whenever the
 * checks checksum: WAL this process has not verified yet (in bench/ingest-latency-ab.ts's repeated cold passes they
 * find their pages verified and checksum nothing, docs/benchmarks.md "Live replicas beside cold catch-ups"). The
 * sender awaits a queued check anyway (its piece's prefetch promise includes it), so a queue is as fast for the cold
 * stream and free for the loop. Each stream has at most window/piece + 1 = 3 checks ahead pending: 1,024 covers ~340 cold streams at
 * once; an entry is a closure (the result array belongs to the caller).
 */
export const OFF_THREAD_CHECKSUMS_QUEUED_MAX = 1024;

/** Pool threads checksums never take: the WAL writer's fdatasync (publish waits on it) must always find one free. */
export const POOL_THREADS_KEPT_FOR_STORAGE = 1;

/**
 * libuv's pool size as libuv computes it from UV_THREADPOOL_SIZE at the pool's first use (threadpool.c: unset → 4,
 * atoi, 0 → 1, at most 1024). It is read from the environment the process started with: node's module loader uses
 * the pool before any walcast code runs, so setting it from JS later changes nothing (checked on node 20: with 4
 * pool threads blocked, an fs call starves whatever process.env says by then).
 */
export function libuvPoolThreads(env: NodeJS.ProcessEnv = process.env): number {
  const value = env['UV_THREADPOOL_SIZE'];
  if (value === undefined) return 4;
  const parsed = Number.parseInt(value, 10);
  if (!Number.isFinite(parsed) || parsed <= 0) return 1;
  return Math.min(parsed, 1024);
}

/**
 * checksumPagesOffThread calls allowed on the pool at once: OFF_THREAD_CHECKSUMS_MAX, but never the whole pool. With
 * UV_THREADPOOL_SIZE=3 (or less) a fixed 3 would let cold streams hold every thread, and the live ingest's fdatasync,
 * and so every live replica's commit, would wait behind their checksums (issue 13, production mix).
 */
export function offThreadChecksumsMax(poolThreads: number = libuvPoolThreads()): number {
  return Math.max(0, Math.min(OFF_THREAD_CHECKSUMS_MAX, poolThreads - POOL_THREADS_KEPT_FOR_STORAGE));
}

/** Units one native stream may queue, chunks and messages together (io-engine.h kQueuedUnitsHardMax). */
export const NATIVE_QUEUED_UNITS_MAX = 64;

/**
 * Heap bytes one native stream may hold however slow its replica: the engine's stream record and a full queue of
 * units whose heads are inline (headers and the sender's control messages are at most NATIVE_HEADER_BYTES_MAX).
 * WAL payloads are never copied: they stay in the page cache, sent by sendfile or from a shared mapping of the
 * segment file (file-backed memory, bounded by the stored WAL, not by the number of replicas).
 */
export function nativeStreamHeapBytesMax(addon: NativeAddon): number {
  return addon.streamRecordBytes + NATIVE_QUEUED_UNITS_MAX * addon.sendUnitBytes;
}

/**
 * The strategy `auto` and an unset --native-strategy use: the measured fastest that can run here (uring when the
 * self-test could set up an io_uring, else sendfile). Probes the addon on first use.
 */
export function defaultNativeStrategy(): NativeStrategy {
  return probeNative().ok && ringAvailable ? MEASURED_FASTEST_STRATEGY : NO_RING_STRATEGY;
}

/** Loads the addon and runs its self-test (sendfile and sendmsg over a socketpair). Cached per process. */
export function probeNative(): { ok: true } | { ok: false; reason: string } {
  probeResult ??= runProbe();
  return probeResult;
}

function runProbe(): { ok: true } | { ok: false; reason: string } {
  const loaded = loadNativeAddon();
  if (!loaded.ok) return { ok: false, reason: loaded.reason };
  const mismatch = checkAddonBounds(loaded.addon);
  if (mismatch !== undefined) return { ok: false, reason: mismatch };
  try {
    ringAvailable = loaded.addon.selfTest().ring;
    return { ok: true };
  } catch (error) {
    return { ok: false, reason: `the native self-test failed: ${(error as Error).message}` };
  }
}

/** The addon and this file must agree on their bounds (an old build next to new TypeScript would not). */
function checkAddonBounds(addon: NativeAddon): string | undefined {
  if (addon.headerBytesMax !== NATIVE_HEADER_BYTES_MAX) return `addon header bound ${addon.headerBytesMax} != ${NATIVE_HEADER_BYTES_MAX}`;
  if (addon.payloadBytesMax < MAX_SEND_BYTES) return `addon payload bound ${addon.payloadBytesMax} < ${MAX_SEND_BYTES}`;
  if (addon.prefetchBytesMax !== NATIVE_PREFETCH_BYTES_MAX) return `addon prefetch bound ${addon.prefetchBytesMax} != ${NATIVE_PREFETCH_BYTES_MAX}`;
  if (addon.messageBytesMax !== NATIVE_MESSAGE_BYTES_MAX) return `addon message bound ${addon.messageBytesMax} != ${NATIVE_MESSAGE_BYTES_MAX}`;
  if (addon.runChunksMax !== CHUNK_RUN_CHUNKS_MAX) return `addon run bound ${addon.runChunksMax} != ${CHUNK_RUN_CHUNKS_MAX}`;
  if (addon.queuedUnitsHardMax !== NATIVE_QUEUED_UNITS_MAX) return `addon queue bound ${addon.queuedUnitsHardMax} != ${NATIVE_QUEUED_UNITS_MAX}`;
  return undefined;
}

let kernelTlsResult: KernelTlsStatus | undefined;

/**
 * Whether this kernel could carry TLS records itself (kTLS), probed once per process through the addon. Only
 * reported: TLS streams take the encrypting TS path either way (docs/security.md, "Kernel TLS").
 */
export function probeKernelTls(): KernelTlsStatus {
  kernelTlsResult ??= runKernelTlsProbe();
  return kernelTlsResult;
}

function runKernelTlsProbe(): KernelTlsStatus {
  const loaded = loadNativeAddon();
  if (!loaded.ok) return { state: 'error', code: 'ADDON_UNAVAILABLE', detail: `the native addon did not load: ${loaded.reason}` };
  if (typeof loaded.addon.probeKernelTls !== 'function') return { state: 'error', code: 'ADDON_TOO_OLD', detail: 'the loaded addon has no kernel TLS probe (rebuild it: npm run build:native)' };
  const probe = loaded.addon.probeKernelTls();
  const notUsed = 'walcast does not hand TLS sessions to the kernel, TLS streams take the encrypting TypeScript path';
  switch (probe.state) {
    case 'available':
      return { state: 'available', code: probe.code, detail: `the kernel accepts the tls ULP and TLS_TX keys; ${notUsed}` };
    case 'unavailable': {
      const why = probe.code === 'ENOENT' && probe.step === 'setsockopt(TCP_ULP)' ? ' (no tls module: not built in, not loaded; modprobe tls)' : '';
      return { state: 'unavailable', code: probe.code, detail: `${probe.step} failed with ${probe.code}${why}; ${notUsed}` };
    }
    default:
      return { state: 'error', code: probe.code, detail: `the probe's loopback connection failed at ${probe.step} with ${probe.code}; ${notUsed}` };
  }
}

export interface NativeBackendOptions {
  /**
   * Offer ChunkBatch (one addon call sends a commit's chunk to every waiting replica: replication/fanout-batch.ts).
   * Default on; off leaves every stream on its own sendChunk (for A/B measurements: WALCAST_FANOUT_BATCH=off).
   */
  readonly chunkBatch?: boolean;
  /** For the TLS streams' ts backend: where written-off send buffers are reported. */
  readonly log?: Logger;
  /** Largest prefetch request to the addon (default NATIVE_PREFETCH_READ_BYTES); other sizes are for measurements. */
  readonly prefetchReadBytes?: number;
}

export async function createNativeBackend(strategy: NativeStrategy, options: NativeBackendOptions = {}): Promise<IoBackend> {
  if (!NATIVE_STRATEGIES.includes(strategy)) throw new RangeError(`native strategy must be one of ${NATIVE_STRATEGIES.join(', ')}, got "${String(strategy)}"`);
  const probe = probeNative();
  const loaded = loadNativeAddon();
  if (!probe.ok || !loaded.ok) {
    throw new WalcastError('WALCAST_ERR_NATIVE_UNAVAILABLE', `the native I/O addon is unavailable: ${probe.ok ? 'load failed' : probe.reason}`);
  }
  const readBytes = options.prefetchReadBytes ?? NATIVE_PREFETCH_READ_BYTES;
  if (!Number.isInteger(readBytes) || readBytes < 1 || readBytes > NATIVE_PREFETCH_BYTES_MAX) throw new RangeError(`prefetchReadBytes must be 1..${NATIVE_PREFETCH_BYTES_MAX}, got ${readBytes}`);
  return new NativeBackend(loaded.addon, strategy, options.chunkBatch ?? true, options.log, readBytes);
}

class NativeBackend implements IoBackend {
  readonly kind = 'native' as const;
  readonly strategy: NativeStrategy;
  readonly kernelTls = probeKernelTls();
  readonly prefetchPriorityNote: string | undefined;
  private readonly engine: NativeEngine;
  private readonly streams = new Map<number, NativeStreamWriter>();
  private readonly prefetches = new Map<number, () => void>();
  private nextPrefetchToken = 1;
  /** checksumPagesOffThread calls on the pool now (at most offThreadChecksumsLimit), a slot handed on counting. */
  private offThreadChecksums = 0;
  /** checksumPagesOffThread calls waiting for a slot, oldest first (at most OFF_THREAD_CHECKSUMS_QUEUED_MAX). */
  private readonly offThreadChecksumWaiters: (() => void)[] = [];
  /** Checks that found the pool's share and its queue full and ran inline, for the status API and tests. */
  private inlineChecksums = 0;
  /** offThreadChecksumsMax() for this process's pool. */
  private readonly offThreadChecksumsLimit = offThreadChecksumsMax();
  private fallback: IoBackend | undefined;
  private closed = false;
  readonly chunkBatch: ChunkBatch | undefined;
  /** sendChunkBatch's stream ids, grown to the largest batch (bounded by the streams open at once). */
  private batchIds = new Float64Array(64);

  constructor(
    private readonly addon: NativeAddon,
    strategy: NativeStrategy,
    batch: boolean,
    private readonly log: Logger | undefined,
    /** Largest request prefetchNow hands the addon (NATIVE_PREFETCH_READ_BYTES unless measuring). */
    private readonly prefetchReadBytes: number,
  ) {
    this.strategy = strategy;
    this.chunkBatch = batch ? { accepts: (writer) => this.batchAccepts(writer), send: (writers, count, header, chunk, outcomes) => this.sendBatch(writers, count, header, chunk, outcomes) } : undefined;
    try {
      this.engine = new addon.Engine(NATIVE_STRATEGY_CODES[strategy], this.onEvent);
    } catch (error) {
      throw new WalcastError('WALCAST_ERR_NATIVE_UNAVAILABLE', `the native ${strategy} engine could not start: ${(error as Error).message}`, { cause: error });
    }
    // A refused ioprio_set is no failure: prefetch reads then run at the event loop's I/O priority, as before.
    const stats = this.engine.stats();
    this.prefetchPriorityNote = stats.ring && !stats.lowPriorityReads ? `prefetch reads at normal I/O priority (${stats.lowPriorityReadsFailure ?? 'unknown'})` : undefined;
  }

  prefetchIdleFallbacks(): number {
    return this.engine.stats().idleReadFallbacks;
  }

  /** The TLS streams' send pool (the ts fallback), all zero before the first TLS stream. */
  sendBufferStats(): SendBufferStats {
    return this.fallback?.sendBufferStats?.() ?? { inUse: 0, buffersMax: POOL_BUFFERS_MAX, writtenOff: 0, writtenOffMax: WRITTEN_OFF_BUFFERS_MAX, writtenOffTotal: 0 };
  }

  async openStream(socket: Socket): Promise<StreamWriter> {
    if (this.closed) throw new WalcastError('WALCAST_ERR_STREAM_IO', 'the native I/O backend is closed');
    const fd = socketFd(socket);
    // TLS sockets encrypt in Node (walcast does not hand sessions to kTLS: docs/security.md), so their bytes must
    // go through socket.write: the TS path.
    if (socket instanceof TLSSocket || fd === undefined) {
      this.fallback ??= createTsBackend(this.log === undefined ? {} : { log: this.log });
      return this.fallback.openStream(socket);
    }
    await waitForEmptyWriteQueue(socket);
    if (socket.destroyed) throw new WalcastError('WALCAST_ERR_STREAM_IO', 'the replica socket closed before streaming started');
    let id: number;
    try {
      id = this.engine.openStream(fd);
    } catch (error) {
      throw new WalcastError('WALCAST_ERR_NATIVE_IO', `the native backend could not take the socket: ${(error as Error).message}`, { cause: error });
    }
    const writer = new NativeStreamWriter(this, this.engine, id, socket);
    this.streams.set(id, writer);
    return writer;
  }

  /** In place in the page cache, with the CPU's CRC-32C instruction (native/crc32c.cc). */
  async checksumPages(chunk: WalChunk, pageBytes: number, out: Uint32Array): Promise<void> {
    this.checksumPagesNow(chunk, pageBytes, out);
  }

  /**
   * checksumPages on a libuv pool thread (crc32cFilePagesAsync): the mapping's page faults and the checksum stay off
   * the event loop. The sender's prefetcher verifies whole window pieces through it before the sender reaches them;
   * everything the sender or the fan-out batch waits on at once (the live tail page) stays inline, without a hop.
   * With the pool's share taken the check waits for a slot (OFF_THREAD_CHECKSUMS_QUEUED_MAX), first come first served.
   */
  async checksumPagesOffThread(chunk: WalChunk, pageBytes: number, out: Uint32Array): Promise<void> {
    const checksumAsync = this.addon.crc32cFilePagesAsync;
    const full = this.offThreadChecksums >= this.offThreadChecksumsLimit;
    // No slot at all (a pool of one thread) or the queue at its bound: the old inline path.
    if (checksumAsync === undefined || this.offThreadChecksumsLimit === 0 || (full && this.offThreadChecksumWaiters.length >= OFF_THREAD_CHECKSUMS_QUEUED_MAX)) {
      this.inlineChecksums++;
      this.checksumPagesNow(chunk, pageBytes, out);
      return;
    }
    validateChunk(chunk, this.addon.crc32cFileRangeBytesMax);
    if (!Number.isInteger(pageBytes) || pageBytes <= 0) throw new RangeError(`pageBytes must be a positive integer, got ${pageBytes}`);
    if (out.length < Math.ceil(chunk.byteCount / pageBytes)) throw new RangeError('out must hold a checksum per page');
    const failed = (error: unknown): WalcastError =>
      new WalcastError('WALCAST_ERR_NATIVE_IO', `checksumming ${chunk.file.path} at ${chunk.fileOffset} failed: ${(error as Error).message}`, { cause: error });
    const refuseClosed = (): void => {
      if (chunk.file.closed === true) throw new WalcastError('WALCAST_ERR_NATIVE_IO', `checksumming ${chunk.file.path}: the file was closed`);
      if (this.closed) throw new WalcastError('WALCAST_ERR_NATIVE_IO', `checksumming ${chunk.file.path}: the native I/O backend is closed`);
    };
    refuseClosed();
    // A slot: free now, or handed on by the check that ends (it stays counted, so nobody overtakes the queue).
    if (full) await new Promise<void>((resolve) => this.offThreadChecksumWaiters.push(resolve));
    else this.offThreadChecksums++;
    try {
      // The number is duplicated synchronously below; once storage started closing the handle (perhaps while this
      // check waited for its slot) it may name anything.
      refuseClosed();
      await new Promise<void>((resolve, reject) => {
        try {
          checksumAsync.call(this.addon, chunk.file.fd, chunk.fileOffset, chunk.byteCount, pageBytes, out, (error) => (error === null ? resolve() : reject(failed(error))));
        } catch (error) {
          reject(error instanceof TypeError || error instanceof RangeError ? error : failed(error));
        }
      });
    } finally {
      const next = this.offThreadChecksumWaiters.shift();
      if (next !== undefined) next();
      else this.offThreadChecksums--;
    }
  }

  /** checksumPagesOffThread calls on the pool now, for tests of the bound. */
  get offThreadChecksumsInFlight(): number {
    return this.offThreadChecksums;
  }

  /** checksumPagesOffThread calls waiting for a pool slot now, for tests of the queue. */
  get offThreadChecksumsQueued(): number {
    return this.offThreadChecksumWaiters.length;
  }

  /** checksumPagesOffThread calls that ran inline on the event loop (no slot and the queue full), for tests. */
  get offThreadChecksumsInline(): number {
    return this.inlineChecksums;
  }

  checksumPagesNow(chunk: WalChunk, pageBytes: number, out: Uint32Array): void {
    // Once storage started closing the handle its number may name another file (a later segment the same reader
    // opened): checksumming that would take good WAL for damaged. checksumPagesOffThread falls back to this path
    // when the pool and its queue are full, after awaiting the piece's prefetch, by which time the prefetch reader may
    // have moved on.
    if (chunk.file.closed === true) throw new WalcastError('WALCAST_ERR_NATIVE_IO', `checksumming ${chunk.file.path}: the file was closed`);
    validateChunk(chunk, this.addon.crc32cFileRangeBytesMax);
    if (!Number.isInteger(pageBytes) || pageBytes <= 0) throw new RangeError(`pageBytes must be a positive integer, got ${pageBytes}`);
    if (out.length < Math.ceil(chunk.byteCount / pageBytes)) throw new RangeError('out must hold a checksum per page');
    try {
      this.addon.crc32cFilePages(chunk.file.fd, chunk.fileOffset, chunk.byteCount, pageBytes, out);
    } catch (error) {
      if (error instanceof TypeError || error instanceof RangeError) throw error;
      throw new WalcastError('WALCAST_ERR_NATIVE_IO', `checksumming ${chunk.file.path} at ${chunk.fileOffset} failed: ${(error as Error).message}`, { cause: error });
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const writer of this.streams.values()) writer.abort(new Error('the native I/O backend closed'));
    this.streams.clear();
    this.engine.close();
    for (const resolve of this.prefetches.values()) resolve();
    this.prefetches.clear();
    await this.fallback?.close();
  }

  /**
   * Best effort, never rejects: resolves once every piece is cached or its read finished (or failed). A handle storage
   * has closed is skipped: its number may be a client's socket by now (the addon also refuses anything but a regular
   * file, so a READ never consumes socket bytes even if a stale number slipped through).
   */
  prefetch(chunk: WalChunk): Promise<void> {
    return this.prefetchNow(chunk) ?? Promise.resolve();
  }

  /** StreamWriter.prefetchNow: undefined when every piece was cached at the call (the addon answers that synchronously). */
  prefetchNow(chunk: WalChunk): Promise<void> | undefined {
    validateChunk(chunk, PREFETCH_RANGE_BYTES_MAX);
    if (this.closed || chunk.file.closed === true) return undefined;
    // One addon request per NATIVE_PREFETCH_BYTES_MAX (a sender's whole piece); the addon splits it into
    // prefetchReadBytes reads itself, with one event for the piece (until 2026-12-07 the split was here: a request,
    // a token and a promise per MiB).
    if (chunk.byteCount <= NATIVE_PREFETCH_BYTES_MAX) return this.prefetchPiece(chunk.file.fd, chunk.fileOffset, chunk.byteCount);
    let pieces: Promise<void>[] | undefined;
    for (let done = 0; done < chunk.byteCount; done += NATIVE_PREFETCH_BYTES_MAX) {
      const bytes = Math.min(NATIVE_PREFETCH_BYTES_MAX, chunk.byteCount - done);
      const reading = this.prefetchPiece(chunk.file.fd, chunk.fileOffset + done, bytes);
      if (reading !== undefined) (pieces ??= []).push(reading);
    }
    return pieces === undefined ? undefined : Promise.all(pieces).then(() => undefined);
  }

  /** undefined when the piece is cached (or the advisory call failed); else resolves when its read finished. */
  private prefetchPiece(fd: number, offset: number, bytes: number): Promise<void> | undefined {
    const token = this.nextPrefetchToken++;
    try {
      if (this.engine.prefetch(fd, offset, bytes, token, this.prefetchReadBytes)) return undefined;
    } catch {
      // Advisory: a bad descriptor shows up again, as an error, when the range is sent.
      return undefined;
    }
    return new Promise((resolve) => this.prefetches.set(token, resolve));
  }

  private batchAccepts(writer: StreamWriter): boolean {
    return writer instanceof NativeStreamWriter && writer.backendIs(this) && writer.batchable;
  }

  /**
   * ChunkBatch.send: one addon call for every stream; each stream's outcome is applied as its own sendChunk would. It
   * allocates nothing per stream (the ids go in a reused Float64Array, the writers are read from the caller's array):
   * it runs for every publish at every replica count.
   */
  private sendBatch(writers: readonly (StreamWriter | undefined)[], count: number, header: Buffer, chunk: WalChunk, outcomes: Int32Array): (Error | undefined)[] | undefined {
    validateHeader(header);
    validateChunk(chunk);
    assert.ok(chunk.file.closed !== true, `sendChunkBatch: ${chunk.file.path} was closed by storage`);
    assert.ok(count > 0 && count <= writers.length && outcomes.length >= count, 'sendChunkBatch: count fits writers and outcomes');
    if (this.batchIds.length < count) this.batchIds = new Float64Array(Math.max(count, this.batchIds.length * 2));
    for (let index = 0; index < count; index++) {
      const writer = this.batchWriter(writers, index);
      assert.ok(writer.batchable, 'sendChunkBatch: every writer was accepted');
      this.batchIds[index] = writer.streamId;
    }
    let errors: (Error | undefined)[] | undefined;
    try {
      errors = this.engine.sendChunkBatch(this.batchIds, count, header, chunk.file.fd, chunk.fileOffset, chunk.byteCount, outcomes);
    } catch (error) {
      if (error instanceof TypeError || error instanceof RangeError) throw error;
      // The engine refused the whole call (closed): every stream fails as its own sendChunk would have.
      outcomes.fill(NativeSendStatus.failed, 0, count);
      const failures: Error[] = [];
      for (let index = 0; index < count; index++) failures.push(this.batchWriter(writers, index).failWith(error));
      return failures;
    }
    for (let index = 0; index < count; index++) {
      const outcome = outcomes[index];
      if (outcome === NativeSendStatus.queueFull) this.batchWriter(writers, index).markFull();
      else if (outcome === NativeSendStatus.failed) {
        errors ??= [];
        errors[index] = this.batchWriter(writers, index).failWith(errors[index] ?? new Error('native batch send failed'));
      }
    }
    return errors;
  }

  /** writers[index] of a batch, which ChunkBatch.accepts took: one of this backend's native writers. */
  private batchWriter(writers: readonly (StreamWriter | undefined)[], index: number): NativeStreamWriter {
    const writer = writers[index];
    assert.ok(writer instanceof NativeStreamWriter && writer.backendIs(this), 'sendChunkBatch: every writer was accepted');
    return writer;
  }

  forget(id: number): void {
    this.streams.delete(id);
  }

  private readonly onEvent: NativeEventHandler = (kind, id, error) => {
    if (kind === NativeEventKind.prefetched) {
      const resolve = this.prefetches.get(id);
      this.prefetches.delete(id);
      resolve?.();
      return;
    }
    this.streams.get(id)?.onEngineEvent(kind, error);
  };
}

interface Waiter {
  resolve(): void;
  reject(error: Error): void;
}

class NativeStreamWriter implements StreamWriter {
  get path(): string {
    return this.backend.strategy;
  }

  private open = true;
  private failure: WalcastError | undefined;
  private readonly spaceWaiters: Waiter[] = [];
  private drainWaiter: (() => void) | undefined;
  /**
   * afterWritten observers: all answered by the next `drained` event, which the addon sends once the stream's queue
   * is empty (flush). A stream that keeps its queue busy answers late, never early.
   */
  private writeObservers: (() => void)[] = [];
  private releasing: Promise<void> | undefined;
  private finalBytesSent = 0;
  /** A send left the queue at its bound: no batched chunk until the engine's space event (sendChunk waits for it). */
  private full = false;
  /** sendChunkRun's ranges (fd, offset, bytes per chunk) and the addon's answer (chunks taken, last status). */
  private readonly runRanges = new Float64Array(CHUNK_RUN_CHUNKS_MAX * 3);
  private readonly runResult = new Int32Array(2);
  private readonly onClose = (): void => this.abort(new Error('the replica socket closed'));

  constructor(
    private readonly backend: NativeBackend,
    private readonly engine: NativeEngine,
    private readonly id: number,
    private readonly socket: Socket,
  ) {
    socket.once('close', this.onClose);
  }

  get streamId(): number {
    return this.id;
  }

  backendIs(backend: NativeBackend): boolean {
    return this.backend === backend;
  }

  /** May take a batched chunk now: open, not failed, not released, below its in-flight bound. */
  get batchable(): boolean {
    return this.open && this.failure === undefined && this.releasing === undefined && !this.full;
  }

  markFull(): void {
    this.full = true;
  }

  get bytesSent(): number {
    return this.open ? this.engine.bytesSent(this.id) : this.finalBytesSent;
  }

  async sendChunk(header: Buffer, chunk: WalChunk): Promise<void> {
    validateHeader(header);
    validateChunk(chunk);
    // The send reader closes its segments only after the sender loop ended; a closed handle here is a lifetime bug,
    // and its number may be another file's now (WalFileHandle.closed).
    assert.ok(chunk.file.closed !== true, `sendChunk: ${chunk.file.path} was closed by storage`);
    this.throwIfUnusable();
    let status: NativeSendStatus;
    try {
      status = this.engine.sendChunk(this.id, header, chunk.file.fd, chunk.fileOffset, chunk.byteCount);
    } catch (error) {
      throw this.failWith(error);
    }
    if (status === NativeSendStatus.queueFull) {
      this.full = true;
      await this.waitForSpace();
    }
  }

  /**
   * The run in one addon call while the stream takes it; when a chunk leaves the stream at its in-flight bound, the
   * rest waits for the space event and goes in the next call, as the same chunks' sendChunk calls would wait.
   */
  async sendChunkRun(headers: Buffer, headerBytes: number, chunks: readonly WalChunk[]): Promise<void> {
    const count = chunks.length;
    if (!Buffer.isBuffer(headers)) throw new TypeError('sendChunkRun: headers must be a Buffer');
    if (count < 1 || count > CHUNK_RUN_CHUNKS_MAX) throw new RangeError(`sendChunkRun: a run of ${count} chunks is outside 1..${CHUNK_RUN_CHUNKS_MAX}`);
    if (!Number.isInteger(headerBytes) || headerBytes < 1 || headerBytes > NATIVE_HEADER_BYTES_MAX) throw new RangeError(`sendChunkRun: headers of ${headerBytes} bytes are outside 1..${NATIVE_HEADER_BYTES_MAX}`);
    if (headers.length < count * headerBytes) throw new RangeError(`sendChunkRun: ${headers.length} header bytes do not hold ${count} headers of ${headerBytes}`);
    const ranges = this.runRanges;
    for (let index = 0; index < count; index++) {
      const chunk = chunks[index]!;
      validateChunk(chunk);
      assert.ok(chunk.file.closed !== true, `sendChunkRun: ${chunk.file.path} was closed by storage`);
      ranges[index * 3] = chunk.file.fd;
      ranges[index * 3 + 1] = chunk.fileOffset;
      ranges[index * 3 + 2] = chunk.byteCount;
    }
    let taken = 0;
    while (taken < count) {
      this.throwIfUnusable();
      const result = this.runResult;
      try {
        this.engine.sendChunkRun(this.id, headers, headerBytes, ranges, taken, count - taken, result);
      } catch (error) {
        throw this.failWith(error);
      }
      assert.ok(result[0]! >= 1 && result[0]! <= count - taken, 'sendChunkRun: the addon took part of the run');
      taken += result[0]!;
      if (result[1] === NativeSendStatus.queueFull) {
        this.full = true;
        await this.waitForSpace();
      }
    }
  }

  /** Accepted at once (bytes copied natively), sent in order after the chunks queued before it. */
  async sendMessage(bytes: Buffer): Promise<void> {
    if (!Buffer.isBuffer(bytes)) throw new TypeError('sendMessage: bytes must be a Buffer');
    if (bytes.length === 0 || bytes.length > NATIVE_MESSAGE_BYTES_MAX) throw new RangeError(`sendMessage: ${bytes.length} bytes is outside 1..${NATIVE_MESSAGE_BYTES_MAX}`);
    this.throwIfUnusable();
    try {
      this.engine.sendMessage(this.id, bytes);
    } catch (error) {
      throw this.failWith(error);
    }
  }

  readonly prefetchShape = NATIVE_PREFETCH_SHAPE;

  prefetch(chunk: WalChunk): Promise<void> {
    return this.backend.prefetch(chunk);
  }

  prefetchNow(chunk: WalChunk): Promise<void> | undefined {
    return this.backend.prefetchNow(chunk);
  }

  afterWritten(observer: () => void): boolean {
    if (!this.open || this.failure !== undefined) return true;
    if (this.engine.flush(this.id)) {
      observer();
      return true;
    }
    if (this.writeObservers.length >= STREAM_WRITE_OBSERVERS_MAX) return false;
    this.writeObservers.push(observer);
    return true;
  }

  release(): Promise<void> {
    this.releasing ??= this.drainAndClose();
    return this.releasing;
  }

  /** Stops the stream now: drops what is queued, rejects waiters, closes the addon's descriptor. */
  abort(cause: Error): void {
    if (!this.open) return;
    this.failWith(cause);
    this.closeNative();
  }

  onEngineEvent(kind: NativeEventKind, error: NativeIoError | undefined): void {
    if (kind === NativeEventKind.space) this.wakeSpaceWaiters();
    if (kind === NativeEventKind.drained) {
      this.wakeDrainWaiter();
      this.answerWriteObservers();
    }
    if (kind === NativeEventKind.failed) this.failWith(error ?? new Error('native write failed'));
  }

  private async drainAndClose(): Promise<void> {
    if (this.open && this.failure === undefined && !this.engine.flush(this.id)) {
      await new Promise<void>((resolve) => (this.drainWaiter = resolve));
    }
    this.closeNative();
  }

  private closeNative(): void {
    if (!this.open) return;
    this.finalBytesSent = this.engine.bytesSent(this.id);
    this.open = false;
    // Removes the dup from the epoll set, then closes it: from here on the socket is Node's alone.
    this.engine.closeStream(this.id);
    this.backend.forget(this.id);
    this.socket.off('close', this.onClose);
    this.writeObservers = [];
    this.wakeDrainWaiter();
  }

  private waitForSpace(): Promise<void> {
    return new Promise((resolve, reject) => this.spaceWaiters.push({ resolve, reject }));
  }

  private wakeSpaceWaiters(): void {
    this.full = false;
    for (const waiter of this.spaceWaiters.splice(0)) waiter.resolve();
  }

  private answerWriteObservers(): void {
    const observers = this.writeObservers;
    this.writeObservers = [];
    for (const observer of observers) observer();
  }

  private wakeDrainWaiter(): void {
    const resolve = this.drainWaiter;
    this.drainWaiter = undefined;
    resolve?.();
  }

  /** Records the first failure, rejects waiters with it, and returns it (to throw). Programmer errors pass through. */
  failWith(cause: unknown): Error {
    if (cause instanceof TypeError || cause instanceof RangeError) return cause;
    const message = cause instanceof Error ? cause.message : String(cause);
    this.failure ??= new WalcastError('WALCAST_ERR_STREAM_IO', `sending WAL failed: ${message}`, { cause });
    for (const waiter of this.spaceWaiters.splice(0)) waiter.reject(this.failure);
    this.writeObservers = [];
    // Release must not wait for bytes that can no longer leave.
    this.wakeDrainWaiter();
    return this.failure;
  }

  private throwIfUnusable(): void {
    if (this.failure !== undefined) throw this.failure;
    if (!this.open || this.releasing !== undefined) throw new WalcastError('WALCAST_ERR_STREAM_IO', 'the native stream was released');
  }
}

/** libuv writes immediately only while its queue is empty; a native write before that would reorder bytes. */
async function waitForEmptyWriteQueue(socket: Socket): Promise<void> {
  while (socket.writableLength > 0 && !socket.destroyed) {
    await new Promise<void>((resolve) => {
      const done = (): void => {
        socket.off('drain', done);
        socket.off('close', done);
        resolve();
      };
      socket.once('drain', done);
      socket.once('close', done);
    });
  }
}

function validateHeader(header: Buffer): void {
  if (!Buffer.isBuffer(header)) throw new TypeError('sendChunk: header must be a Buffer');
  if (header.length === 0 || header.length > NATIVE_HEADER_BYTES_MAX) throw new RangeError(`sendChunk: header of ${header.length} bytes is outside 1..${NATIVE_HEADER_BYTES_MAX}`);
}

function validateChunk(chunk: WalChunk, byteCountMax = MAX_SEND_BYTES): void {
  const { fd } = chunk.file;
  if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`chunk.file.fd must be a descriptor, got ${fd}`);
  if (!Number.isSafeInteger(chunk.fileOffset) || chunk.fileOffset < 0) throw new RangeError(`chunk.fileOffset must be a non-negative integer, got ${chunk.fileOffset}`);
  if (!Number.isInteger(chunk.byteCount) || chunk.byteCount < 1 || chunk.byteCount > byteCountMax) {
    throw new RangeError(`chunk.byteCount must be 1..${byteCountMax}, got ${chunk.byteCount}`);
  }
}
