/**
 * The pure-TypeScript I/O backend (node:fs + node:net): walcast's I/O on every OS, and on Linux whenever the native
 * addon is absent. Each chunk is read with an asynchronous pread (libuv's thread pool, so a page-cache miss never
 * blocks the event loop) straight into a pooled buffer after 30 bytes of room, its header is copied in front, and
 * the whole frame goes out in one socket write: one copy of the payload (kernel to buffer), no allocation. A catch-up
 * run (sendChunkRun: up to 512 KiB of chunks that follow each other in one segment) is read with one vectored read
 * into its chunks' frames and written corked, as one writev: per 128 KiB chunk, the thread-pool hop and the socket
 * write's JavaScript cost more CPU than the copies (docs/benchmarks.md, "The TS backend's CPU per GB"), so a run
 * pays them once. The run's read runs on the event-loop thread itself while page cache serves such reads, and on the
 * pool as soon as one waited for the disk (sync-read-gate.ts: the hop costs more CPU than the 512 KiB copy). The
 * bytes on the wire are those of the run's chunks sent one by one. A TLS socket is not corked: it is given one frame
 * at a time (a TLSSocket's writev copies all its buffers into one before encrypting).
 *
 * Up to STREAM_CHUNKS_IN_FLIGHT_MAX frames per stream are being read or queued in the socket at once, so the read of
 * the next chunk overlaps the send of the previous one; the buffer pool bounds the total across streams. Sends of one
 * stream run one after another in call order (the sender's chunks and the reply reader's keepalives), so bytes reach
 * the socket in that order and the in-flight bound cannot be passed by two sends that both saw room. A replica that
 * stops reading keeps its frames queued in its socket until the replica timeout; so that such replicas cannot hold
 * the whole pool meanwhile, frames of a stream whose socket completed no write for SEND_STALL_MS are written off the
 * pool when others wait for it (send-stall.ts), within WRITTEN_OFF_BUFFERS_MAX.
 *
 * Page verification (checksumPages) reads into buffers of its own bounded pool (CHECKSUM_BUFFERS_MAX), not the send
 * pool: a verification and a send of one stream then never wait on each other, and 1,000 replicas verifying at once
 * neither allocate a fresh buffer per call (page faults and GC on the send path) nor grow memory past the bound.
 * A verification read is laid out as a frame (header room first) and kept for the send that follows
 * (verified-reads.ts): that send writes the verified buffer instead of reading the chunk again, and gives the
 * verification pool the send buffer it acquired in exchange (all buffers of both pools are FRAME_BYTES_MAX long),
 * so each pool keeps its count and bound.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { WalcastError } from '../errors.js';
import { readSync } from 'node:fs';
import {
  BatchOutcome,
  CHUNK_RUN_CHUNKS_MAX,
  MAX_SEND_BYTES,
  STREAM_WRITE_OBSERVERS_MAX,
  XLOG_DATA_HEADER_BYTES,
  type ChunkBatch,
  type IoBackend,
  type KernelTlsStatus,
  type SendBufferStats,
  type StreamWriter,
  type WalChunk,
} from './backend.js';
import { ARENA_ALIGNMENT, ARENA_BYTES } from '../storage/crc32c-wasm.js';
import { allocateCrc32cBuffer, crc32c } from '../storage/crc32c.js';
import { BufferPool } from './buffer-pool.js';
import { TAIL_READ_BYTES_MAX, TailReadCache, readExactly } from './tail-read-cache.js';
import { VERIFIED_READS_KEPT_MAX, VerifiedReads } from './verified-reads.js';
import { readRangeInto } from './vectored-read.js';
import { SyncReadGate, type GateClosure } from './sync-read-gate.js';
import { SEND_STALL_CHECK_MS, SEND_STALL_MS, SendStallWatch, type StallWatched } from './send-stall.js';
import type { Logger } from '../log.js';

/**
 * Frames per stream handed to the socket and not yet written, counting frames being read for a send (a message
 * counts as one): the stream's share of the send pool. Several overlap a read with a send; four are one part of a
 * run (sendChunkRun), the sender's 512 KiB turn of full chunks, read with one vectored read and written corked. A
 * run part takes the room there is, so a replica that stops reading pins at most this many send buffers.
 */
export const STREAM_CHUNKS_IN_FLIGHT_MAX = 4;
/** Send buffers across all streams: 512 × 128 KiB = 64 MiB, the backend's memory bound for WAL in flight. */
export const POOL_BUFFERS_MAX = 512;
/**
 * Send buffers written off from the pool at once (send-stall.ts): frames stuck in the sockets of replicas that stopped
 * reading, replaced so healthy streams go on. With the pool: (512 + 512) × 128 KiB = 128 MiB at most for WAL in flight.
 */
export const WRITTEN_OFF_BUFFERS_MAX = POOL_BUFFERS_MAX;
/**
 * Sends of one stream waiting behind the one being written. The sender has one outstanding at a time; keepalives
 * the replica asks for add one each, so only a replica that asks faster than it reads ever reaches this, and
 * its stream fails rather than queue without bound.
 */
export const STREAM_SENDS_WAITING_MAX = 64;
/**
 * Bytes of fan-out batch frames (TsChunkBatch: one frame per group, written to every socket of the group) handed to
 * sockets and not yet written by all of them. At the bound the batch accepts no stream, so they send on their own
 * through the pool; a batch may pass it by its one frame (at most FRAME_BYTES_MAX).
 */
export const BATCH_FRAME_BYTES_IN_FLIGHT_MAX = 32 * 1024 * 1024;
/**
 * Bytes of batch frames written off BATCH_FRAME_BYTES_IN_FLIGHT_MAX because a stream holding them is stalled (its
 * socket completed no write for SEND_STALL_MS, as send-stall.ts defines it): a replica that stops reading keeps its
 * frames (up to STREAM_CHUNKS_IN_FLIGHT_MAX) until the replica timeout, and ~64 of them with full chunks would
 * otherwise fill the in-flight bound and switch the batch off for every healthy stream meanwhile. Past this budget
 * nothing more is written off and the in-flight bound holds again: batch frames stay within 32 + 32 MiB (and a frame).
 */
export const BATCH_FRAME_BYTES_WRITTEN_OFF_MAX = 32 * 1024 * 1024;
/**
 * Chunks staged (TsChunkBatch.stage) and not yet sent. A batcher stages one group and sends it before the next, so
 * this only has to cover batchers of several timelines whose stage and send interleave; an evicted one is read again
 * at its send.
 */
export const BATCH_STAGED_CHUNKS_MAX = 8;
/** Each pooled buffer holds one frame: the header and a full chunk. */
export const FRAME_BYTES_MAX = XLOG_DATA_HEADER_BYTES + MAX_SEND_BYTES;
/**
 * Largest range checksumPages reads at once: a chunk's worth, which holds the pages of every chunk but a rare
 * first one that starts and ends inside a page (that one is read in two pieces and not kept for its send).
 */
export const CHECKSUM_RANGE_BYTES_MAX = MAX_SEND_BYTES;
/**
 * Pieces (buffers) one verification reads with one vectored read when its pieces are kept for sends: the
 * prefetcher's 1 MiB verify-ahead piece is one thread-pool hop instead of eight (the hop costs more CPU than the
 * copy, see vectored-read.ts).
 */
export const CHECKSUM_READ_PIECES_MAX = 8;
/** A verification buffer is a send frame: header room, then the range read, so its send can take it as it is. */
export const CHECKSUM_BUFFER_BYTES = FRAME_BYTES_MAX;
/**
 * Verification read buffers across all streams: 80 × 128 KiB = 10 MiB, of which up to VERIFIED_READS_KEPT_MAX (48)
 * are kept for sends and at least 32 serve verifications in progress. A verification holds one buffer at a time and
 * a kept one goes back when a send takes it (another in exchange) or a newer one pushes it out, so this bounds
 * concurrency (more wait in FIFO order), never holds up a send.
 */
export const CHECKSUM_BUFFERS_MAX = 80;
assert.ok(CHECKSUM_BUFFERS_MAX >= VERIFIED_READS_KEPT_MAX + 32 && CHECKSUM_READ_PIECES_MAX <= 32, 'kept reads leave buffers for verifications in progress');
/**
 * Both pools' buffers come from the CRC-32C loop's WebAssembly memory (allocateCrc32cBuffer): a verification reads
 * pages into it and checksums them in place, no copy in (~0.02-0.03 CPU s/GB of the CRC's ~0.25). The send pool's
 * too, because a send exchanges its buffer with the verification pool's (verified-reads.ts): with send buffers on
 * the heap, the verification pool would end up holding only those. Buffers past the arena (written-off
 * replacements beyond its spare room, a second backend in one process) are heap buffers, checksummed with the copy.
 */
assert.ok((POOL_BUFFERS_MAX + CHECKSUM_BUFFERS_MAX) * (Math.ceil(FRAME_BYTES_MAX / ARENA_ALIGNMENT) * ARENA_ALIGNMENT) <= ARENA_BYTES, 'both pools fit the CRC-32C arena');

/** The ts backend never loads the addon, so it does not probe the kernel: TLS goes through Node's TLSSocket. */
const TS_BACKEND_KERNEL_TLS: KernelTlsStatus = {
  state: 'not-probed',
  code: 'TS_BACKEND',
  detail: 'the ts backend sends through Node sockets (TLS streams through node:tls); kernel TLS is probed by the native backend only',
};

export interface TsBackendOptions {
  /**
   * The send buffers (tests pass a small pool of FRAME_BYTES_MAX buffers to watch it); default POOL_BUFFERS_MAX of
   * them, WRITTEN_OFF_BUFFERS_MAX of which may be written off (a pool with writtenOffMax 0 never writes off).
   */
  readonly sendPool?: BufferPool;
  /** The verification buffers (tests watch it too); default createChecksumPool(). */
  readonly checksumPool?: BufferPool;
  /** Where a stream whose send buffers are written off is reported (once per stream, at warn). */
  readonly log?: Logger;
  /** How long a stream's socket completes no write before its buffers are written off; default SEND_STALL_MS. */
  readonly sendStallMs?: number;
  /** Offer ChunkBatch (the commit fan-out batch, TsChunkBatch); default on, off for A/B (WALCAST_FANOUT_BATCH=off). */
  readonly chunkBatch?: boolean;
  /** The batch's bounds (tests make them small); default BATCH_FRAME_BYTES_IN_FLIGHT_MAX and BATCH_FRAME_BYTES_WRITTEN_OFF_MAX. */
  readonly batchFrameBytesInFlightMax?: number;
  readonly batchFrameBytesWrittenOffMax?: number;
  /**
   * Read catch-up runs on the event-loop thread while page cache serves them (sync-read-gate.ts); default on, off
   * (every read on the thread pool) for A/B runs (WALCAST_TS_SYNC_READS=off) and on storage where a read may block.
   */
  readonly syncReads?: boolean;
}

export function createTsBackend(options: TsBackendOptions = {}): IoBackend {
  const pool = options.sendPool ?? new BufferPool(FRAME_BYTES_MAX, POOL_BUFFERS_MAX, WRITTEN_OFF_BUFFERS_MAX, allocateCrc32cBuffer);
  assert.equal(pool.bufferBytes, FRAME_BYTES_MAX, 'send buffers hold a frame (and are exchanged with verification buffers)');
  const verifiedReads = new VerifiedReads(options.checksumPool ?? createChecksumPool());
  const tailCache = new TailReadCache();
  const sendStallMs = options.sendStallMs ?? SEND_STALL_MS;
  const stallWatch = new SendStallWatch(pool, sendStallMs);
  const log = options.log;
  const readGate = options.syncReads === false ? undefined : new SyncReadGate({ onClose: (closure) => logGateClosure(log, closure) });
  const batch =
    options.chunkBatch === false
      ? undefined
      : new TsChunkBatch(tailCache, {
          inFlightMax: options.batchFrameBytesInFlightMax ?? BATCH_FRAME_BYTES_IN_FLIGHT_MAX,
          writtenOffMax: options.batchFrameBytesWrittenOffMax ?? BATCH_FRAME_BYTES_WRITTEN_OFF_MAX,
          stallMs: sendStallMs,
        });
  return {
    kind: 'ts',
    strategy: 'fs-net',
    kernelTls: TS_BACKEND_KERNEL_TLS,
    ...(batch === undefined ? {} : { chunkBatch: batch }),
    openStream: async (socket: Socket) => new TsStreamWriter(socket, pool, tailCache, verifiedReads, stallWatch, log, readGate, batch),
    checksumPages: (chunk, pageBytes, out) => checksumPagesByReading(chunk, pageBytes, out, verifiedReads.pool, verifiedReads),
    sendBufferStats: () => ({ ...sendBufferStatsOf(pool), ...(batch === undefined ? {} : batch.stats()) }),
    ...(readGate === undefined ? {} : { chunkReadStats: () => readGate.stats() }),
    close: async () => stallWatch.stop(),
  };
}

/** A synchronous read waited for the disk (at most once per back-off, so never a flood). */
function logGateClosure(log: Logger | undefined, closure: GateClosure): void {
  log?.info(
    { elapsedMs: Number(closure.elapsedMs.toFixed(3)), blockInputs: closure.blockInputs, voluntarySwitches: closure.voluntarySwitches, backoffMs: closure.backoffMs },
    'a catch-up read on the event-loop thread waited for the disk; reading on the thread pool for a while',
  );
}

/** The send pool's counts for /metrics (walcast_ts_send_buffers_*). */
export function sendBufferStatsOf(pool: BufferPool): SendBufferStats {
  return { inUse: pool.inUse(), buffersMax: pool.buffersMax, writtenOff: pool.writtenOff(), writtenOffMax: pool.writtenOffMax, writtenOffTotal: pool.writtenOffTotal() };
}

/** A pool of verification read buffers (one per TS backend; tests and the benchmark make their own). */
export function createChecksumPool(buffersMax = CHECKSUM_BUFFERS_MAX): BufferPool {
  return new BufferPool(CHECKSUM_BUFFER_BYTES, buffersMax, 0, allocateCrc32cBuffer);
}

/**
 * The TS backend's page checksums: an asynchronous read (the thread pool, as for sends) into a buffer from `pool`,
 * behind XLOG_DATA_HEADER_BYTES of header room, and the TypeScript CRC-32C. Ranges larger than the buffer's room
 * are read in pieces of that size, a buffer each, up to CHECKSUM_READ_PIECES_MAX with one vectored read (one
 * buffer for all of them when nothing is kept). Each piece read and checksummed is handed to
 * `kept` for the send of the same bytes (the buffer goes back to the pool from there), so the prefetcher's 1 MiB
 * verify-ahead pieces feed the sends that follow instead of being read a second time; without `kept`, or when a
 * read fails, the buffer goes back to the pool at once.
 */
export async function checksumPagesByReading(chunk: WalChunk, pageBytes: number, out: Uint32Array, pool: BufferPool, kept?: VerifiedReads): Promise<void> {
  const pieceBytes = pool.bufferBytes - XLOG_DATA_HEADER_BYTES;
  assert.ok(pageBytes > 0 && pieceBytes > 0 && pieceBytes % pageBytes === 0, 'pages divide the read size');
  assert.ok(out.length >= Math.ceil(chunk.byteCount / pageBytes), 'out holds a checksum per page');
  assert.ok(kept === undefined || kept.pool === pool, 'kept reads go back to the pool they came from');
  const buffers: Buffer[] = [];
  const views: Buffer[] = [];
  for (let done = 0; done < chunk.byteCount; ) {
    // The first buffer may wait for the pool; more only while it has them free (and only when the pieces are kept:
    // otherwise one buffer serves every piece), so a call never holds buffers while it waits for more.
    buffers.push(await pool.acquire());
    const piecesLeft = Math.ceil((chunk.byteCount - done) / pieceBytes);
    while (kept !== undefined && buffers.length < Math.min(piecesLeft, CHECKSUM_READ_PIECES_MAX)) {
      const more = pool.tryAcquire();
      if (more === undefined) break;
      buffers.push(more);
    }
    let handedOff = 0;
    try {
      views.length = 0;
      let readBytes = 0;
      for (const buffer of buffers) {
        const bytes = Math.min(pieceBytes, chunk.byteCount - done - readBytes);
        views.push(buffer.subarray(XLOG_DATA_HEADER_BYTES, XLOG_DATA_HEADER_BYTES + bytes));
        readBytes += bytes;
      }
      await readRangeInto(chunk.file, chunk.fileOffset + done, views);
      for (const buffer of buffers) {
        const bytes = Math.min(pieceBytes, chunk.byteCount - done);
        // One CRC call per page straight on the read buffer: no copy, no allocation.
        for (let offset = 0; offset < bytes; offset += pageBytes) {
          const start = XLOG_DATA_HEADER_BYTES + offset;
          out[(done + offset) / pageBytes] = crc32c(buffer, start, start + Math.min(pageBytes, bytes - offset));
        }
        // Kept once its pages are checksummed; a send takes it only for a chunk the verifier has passed.
        if (kept !== undefined) {
          kept.keep(chunk.file, chunk.fileOffset + done, bytes, buffer);
          handedOff++;
        }
        done += bytes;
      }
    } finally {
      for (let index = handedOff; index < buffers.length; index++) pool.release(buffers[index]!);
      buffers.length = 0;
    }
  }
}

/**
 * The ts backend's commit fan-out (replication/fanout-batch.ts decides who gets what): per group of streams at one
 * send position, stage reads the chunk once (the tail cache for a commit-sized tail, so streams on their own share
 * it too), and send builds one frame (the group's header and those bytes) and writes it to every socket of the group
 * synchronously, in the group's order. Without it every waiting stream resumed its own promise chain per publish
 * (inOrder, waitForRoom, pool acquire, tail-cache await, copy into its pool buffer, write): at 1,000 replicas that
 * was most of a publish's fan-out. A batch frame counts as one frame in flight on each stream (the stream's bound
 * holds), never comes from the send pool, and is not modified after its first write (every socket may still hold
 * it); BATCH_FRAME_BYTES_IN_FLIGHT_MAX bounds their total. At that bound the batch looks (at most every
 * SEND_STALL_CHECK_MS, only while at the bound) for streams stalled as send-stall.ts defines it, and moves the frames
 * they hold to a written-off budget of its own (BATCH_FRAME_BYTES_WRITTEN_OFF_MAX): stalled replicas then cannot
 * switch the batch off for every healthy stream until they time out. A stalled stream is not batched meanwhile (its
 * in-flight bound is full, or its new frames are written off at the next check).
 */
class TsChunkBatch implements ChunkBatch {
  /** Bytes of frames some socket of their group has not written yet, not written off. */
  frameBytesInFlight = 0;
  /** Bytes of frames written off (held by a stalled stream) that some socket has not written yet. */
  frameBytesWrittenOff = 0;
  /** Bytes written off since the backend started. */
  private frameBytesWrittenOffTotal = 0;
  /** Streams holding batch frames (written off or not): where a check looks for stalls. */
  private readonly holders = new Set<TsStreamWriter>();
  private lastCheckAt = -Infinity;
  private readonly checkMs: number;
  /** Staged chunk bytes, by the chunk the batcher will send (it passes the same object to stage and send). */
  private readonly staged = new Map<WalChunk, Buffer>();

  constructor(
    private readonly tailCache: TailReadCache,
    private readonly bounds: { readonly inFlightMax: number; readonly writtenOffMax: number; readonly stallMs: number },
  ) {
    this.checkMs = Math.min(SEND_STALL_CHECK_MS, bounds.stallMs);
  }

  accepts(writer: StreamWriter): boolean {
    if (!(writer instanceof TsStreamWriter && writer.batchable(this))) return false;
    if (this.frameBytesInFlight < this.bounds.inFlightMax) return true;
    this.writeOffStalled();
    return this.frameBytesInFlight < this.bounds.inFlightMax;
  }

  /** The written-off counts for /metrics (SendBufferStats). */
  stats(): { readonly batchFrameBytesWrittenOff: number; readonly batchFrameBytesWrittenOffMax: number; readonly batchFrameBytesWrittenOffTotal: number } {
    return { batchFrameBytesWrittenOff: this.frameBytesWrittenOff, batchFrameBytesWrittenOffMax: this.bounds.writtenOffMax, batchFrameBytesWrittenOffTotal: this.frameBytesWrittenOffTotal };
  }

  /** A stream now holds batch frames, or holds none any more. */
  holding(stream: TsStreamWriter, holds: boolean): void {
    if (holds) this.holders.add(stream);
    else this.holders.delete(stream);
  }

  /** Moves `frame` from the in-flight bound to the written-off budget, if the budget has room for it. */
  writeOff(frame: BatchFrame): boolean {
    if (frame.writtenOff) return true;
    if (this.frameBytesWrittenOff + frame.bytes > this.bounds.writtenOffMax) return false;
    frame.writtenOff = true;
    this.frameBytesInFlight -= frame.bytes;
    this.frameBytesWrittenOff += frame.bytes;
    this.frameBytesWrittenOffTotal += frame.bytes;
    return true;
  }

  /** One socket is finished with `frame` (written or failed); the last one frees its bytes from whichever count holds them. */
  frameDone(frame: BatchFrame): void {
    if (--frame.writesLeft > 0) return;
    if (frame.writtenOff) this.frameBytesWrittenOff -= frame.bytes;
    else this.frameBytesInFlight -= frame.bytes;
  }

  /** At the in-flight bound, at most every checkMs: the frames of stalled streams are written off, within the budget. */
  private writeOffStalled(): void {
    const now = performance.now();
    if (now - this.lastCheckAt < this.checkMs) return;
    this.lastCheckAt = now;
    for (const stream of this.holders) {
      if (this.frameBytesWrittenOff >= this.bounds.writtenOffMax) return;
      const since = stream.batchFramesPendingSince();
      if (since !== undefined && now - since >= this.bounds.stallMs) stream.writeOffBatchFrames(this);
    }
  }

  stage(chunk: WalChunk): Promise<void> | undefined {
    validateChunk(chunk);
    if (this.staged.has(chunk) || chunk.file.closed === true) return undefined;
    const reading = chunk.byteCount <= TAIL_READ_BYTES_MAX ? this.tailCache.read(chunk) : readWhole(chunk);
    // A failed read is not staged: send reads again and fails the group's streams with the error (their loops report it).
    return reading.then(
      (bytes) => {
        this.staged.set(chunk, bytes);
        for (const oldest of this.staged.keys()) {
          if (this.staged.size <= BATCH_STAGED_CHUNKS_MAX) break;
          this.staged.delete(oldest);
        }
      },
      () => undefined,
    );
  }

  send(writers: readonly (StreamWriter | undefined)[], count: number, header: Buffer, chunk: WalChunk, outcomes: Int32Array): (Error | undefined)[] | undefined {
    assert.equal(header.length, XLOG_DATA_HEADER_BYTES, 'header size');
    validateChunk(chunk);
    assert.ok(count > 0 && count <= writers.length && outcomes.length >= count, 'batch send: count fits writers and outcomes');
    const streams: TsStreamWriter[] = [];
    for (let index = 0; index < count; index++) {
      const writer = writers[index];
      assert.ok(writer instanceof TsStreamWriter && writer.batchable(this), 'batch send: every writer was accepted');
      streams.push(writer);
    }
    const frame = Buffer.allocUnsafe(XLOG_DATA_HEADER_BYTES + chunk.byteCount);
    header.copy(frame, 0, 0, XLOG_DATA_HEADER_BYTES);
    const staged = this.staged.get(chunk);
    this.staged.delete(chunk);
    if (staged !== undefined) {
      staged.copy(frame, XLOG_DATA_HEADER_BYTES, 0, chunk.byteCount);
    } else {
      // Not staged (its read failed, or other timelines' batches pushed it out): read now, from the page cache the
      // commit just went through. A failure fails every stream of the group, as a failed write would.
      try {
        readWholeNow(chunk, frame, XLOG_DATA_HEADER_BYTES);
      } catch (error) {
        const cause = error instanceof Error ? error : new Error(String(error));
        outcomes.fill(BatchOutcome.failed, 0, count);
        return streams.map((stream) => stream.failWith(cause));
      }
    }
    const record: BatchFrame = { bytes: frame.length, writesLeft: count, writtenOff: false };
    this.frameBytesInFlight += frame.length;
    let errors: (Error | undefined)[] | undefined;
    for (let index = 0; index < count; index++) {
      const outcome = streams[index]!.sendFrameNow(frame, record);
      outcomes[index] = outcome;
      if (outcome === BatchOutcome.failed) (errors ??= [])[index] = streams[index]!.failWith(new Error('batched send failed'));
    }
    return errors;
  }
}

/** A batch frame's accounting: its bytes count in flight (or written off) until every socket of its group is done with it. */
interface BatchFrame {
  readonly bytes: number;
  writesLeft: number;
  writtenOff: boolean;
}

/** The chunk's bytes into a buffer of their own (a catch-up-sized chunk the tail cache does not keep). */
async function readWhole(chunk: WalChunk): Promise<Buffer> {
  const bytes = Buffer.allocUnsafe(chunk.byteCount);
  await readExactly(chunk, bytes, 0);
  return bytes;
}

/** readExactly on the event-loop thread: only for a chunk the batch did not stage (see TsChunkBatch.send). */
function readWholeNow(chunk: WalChunk, target: Buffer, targetOffset: number): void {
  assert.ok(chunk.file.closed !== true, `${chunk.file.path} is read after storage closed it`);
  for (let done = 0; done < chunk.byteCount; ) {
    const bytesRead = readSync(chunk.file.fd, target, targetOffset + done, chunk.byteCount - done, chunk.fileOffset + done);
    if (bytesRead === 0) {
      throw new WalcastError('WALCAST_ERR_STREAM_IO', `short read from ${chunk.file.path} at ${chunk.fileOffset + done}: the segment is shorter than its WAL`);
    }
    done += bytesRead;
  }
}

class TsStreamWriter implements StreamWriter, StallWatched {
  bytesSent = 0;
  /** socket.write on a TLSSocket encrypts in OpenSSL before the bytes reach the kernel. */
  readonly path: string;
  private inFlight = 0;
  /** The last send queued on this stream; the next one starts when it settles (its failure is the caller's). */
  private sendsTail: Promise<void> = Promise.resolve();
  private sendsWaiting = 0;
  private failure: WalcastError | undefined;
  /** Resolved (and replaced) whenever an in-flight write completes or the stream fails; any number may wait on it. */
  private progress: { promise: Promise<void>; resolve: () => void } = deferred();
  private readonly onClose = (): void => {
    this.stallWatch.delete(this);
    this.fail(new Error('socket closed'));
  };
  /** Pooled frames handed to the socket, not yet written (nor written off): what a stall would write off. */
  private readonly pooledInFlight: Buffer[] = [];
  /** Batch frames handed to the socket, not yet written (at most STREAM_CHUNKS_IN_FLIGHT_MAX). */
  private readonly batchInFlight: BatchFrame[] = [];
  /** performance.now() when a write last completed, or when the first of the frames in flight went out. */
  private drainedAt = 0;
  /** Send buffers of this stream written off so far (the first write-off is logged). */
  private writtenOff = 0;
  /** Sends accepted so far, numbered in call order (which is also the order their writes complete in). */
  private sendsAccepted = 0;
  /** The number of the latest send whose socket write completed. */
  private sendsWritten = 0;
  /** afterWritten observers with the send number they wait for, in ascending order. */
  private writeObservers: { readonly send: number; readonly observer: () => void }[] = [];
  /** The frames of the part being sent, where each frame starts in its buffer, and the views one read fills: reused. */
  private readonly runFrames: Buffer[] = [];
  private readonly frameOffsets = new Int32Array(STREAM_CHUNKS_IN_FLIGHT_MAX);
  private readonly readViews: Buffer[] = [];
  /**
   * TLS sockets get one write at a time: frames handed to write() wait here (at most STREAM_CHUNKS_IN_FLIGHT_MAX,
   * they count as in flight) until the TLSSocket's write before them completes. Several writes queued in a TLSSocket
   * reach TLSWrap as one writev, which copies all their bytes into one new buffer before encrypting: 0.42-0.43 vs
   * 0.33-0.40 CPU s/GB in a corked 4-frame vs one-at-a-time loopback test (docs/benchmarks.md, TLS runs).
   */
  private readonly tlsQueue: { readonly bytes: Buffer; readonly send: number; readonly done: () => void }[] = [];
  private tlsWriting = false;
  private readonly tls: boolean;
  /** Sends queued or running in inOrder: while any is, a batch write could overtake it, so the stream is not batchable. */
  private sendsActive = 0;
  /** release() was called: the socket goes back to Node, no batch writes to it any more. */
  private releasing = false;

  constructor(
    private readonly socket: Socket,
    private readonly pool: BufferPool,
    private readonly tailCache: TailReadCache,
    private readonly verifiedReads: VerifiedReads,
    private readonly stallWatch: SendStallWatch,
    private readonly log: Logger | undefined,
    private readonly readGate: SyncReadGate | undefined,
    private readonly batch?: TsChunkBatch,
  ) {
    socket.once('close', this.onClose);
    stallWatch.add(this);
    this.tls = socket instanceof TLSSocket;
    this.path = this.tls ? 'fs-net+tls' : 'fs-net';
  }

  sendChunk(header: Buffer, chunk: WalChunk): Promise<void> {
    assert.equal(header.length, XLOG_DATA_HEADER_BYTES, 'header size');
    validateChunk(chunk);
    const send = ++this.sendsAccepted;
    return this.inOrder(() => this.sendChunksNow(header, [chunk], send));
  }

  sendChunkRun(headers: Buffer, headerBytes: number, chunks: readonly WalChunk[]): Promise<void> {
    assert.equal(headerBytes, XLOG_DATA_HEADER_BYTES, 'header size');
    assert.ok(chunks.length >= 1 && chunks.length <= CHUNK_RUN_CHUNKS_MAX, `a run of ${chunks.length} chunks is outside 1..${CHUNK_RUN_CHUNKS_MAX}`);
    assert.ok(headers.length >= chunks.length * headerBytes, 'a header per chunk');
    for (const chunk of chunks) validateChunk(chunk);
    // One send number for the whole run: it counts as written (afterWritten) once its last frame is.
    const send = ++this.sendsAccepted;
    return this.inOrder(() => this.sendChunksNow(headers, chunks, send));
  }

  sendMessage(bytes: Buffer): Promise<void> {
    const send = ++this.sendsAccepted;
    return this.inOrder(() => this.sendMessageNow(bytes, send));
  }

  afterWritten(observer: () => void): boolean {
    if (this.sendsWritten >= this.sendsAccepted) {
      observer();
      return true;
    }
    if (this.writeObservers.length >= STREAM_WRITE_OBSERVERS_MAX) return false;
    this.writeObservers.push({ send: this.sendsAccepted, observer });
    return true;
  }

  /**
   * Sends chunks[i] behind headers[i * 30, (i + 1) * 30) for every i, in parts as large as the stream's room below
   * STREAM_CHUNKS_IN_FLIGHT_MAX: per part, frame buffers from the pool (at least one, more only while the pool has
   * them free, so a part never holds buffers while it waits for more), one vectored read per stretch of the part's
   * chunks that follow each other in one file, into those frames behind their header room, and one corked write of
   * all the part's frames (a single writev). The caller's `headers` and `chunks` are read before this resolves.
   */
  private async sendChunksNow(headers: Buffer, chunks: readonly WalChunk[], send: number): Promise<void> {
    for (let taken = 0; taken < chunks.length; ) {
      await this.waitForRoom();
      const frames = this.runFrames;
      frames.length = 0;
      frames.push(await this.stallWatch.acquire());
      // Only this send writes or reads for the stream now: the room can only have grown while it waited for the pool.
      const partEnd = Math.min(chunks.length, taken + STREAM_CHUNKS_IN_FLIGHT_MAX - this.inFlight);
      for (let index = taken + 1; index < partEnd; index++) {
        const frame = this.pool.tryAcquire();
        if (frame === undefined) break;
        frames.push(frame);
      }
      const count = frames.length;
      let handedOff = false;
      try {
        this.throwIfFailed();
        await this.fillFrames(chunks, taken, frames);
        this.throwIfFailed();
        for (let index = 0; index < count; index++) {
          const headerStart = (taken + index) * XLOG_DATA_HEADER_BYTES;
          headers.copy(frames[index]!, this.frameOffsets[index]!, headerStart, headerStart + XLOG_DATA_HEADER_BYTES);
        }
        handedOff = true;
        // Written only when the run's last frame is: afterWritten counts the run as one send.
        this.writeFrames(frames, chunks, taken, taken + count === chunks.length ? send : 0);
      } finally {
        if (!handedOff) for (const frame of frames) this.pool.release(frame);
      }
      taken += count;
    }
  }

  /**
   * Puts chunks[taken + i]'s bytes into frames[i] at frameOffsets[i] + XLOG_DATA_HEADER_BYTES: a verified read kept
   * for the chunk takes the frame's place, a small chunk comes from the tail cache, and the rest is read with one
   * vectored read per stretch of chunks that follow each other in one file.
   */
  private async fillFrames(chunks: readonly WalChunk[], taken: number, frames: Buffer[]): Promise<void> {
    const views = this.readViews;
    let stretchStart = -1;
    const readStretch = async (end: number): Promise<void> => {
      if (stretchStart < 0) return;
      const first = chunks[taken + stretchStart]!;
      views.length = 0;
      for (let index = stretchStart; index < end; index++) {
        views.push(frames[index]!.subarray(XLOG_DATA_HEADER_BYTES, XLOG_DATA_HEADER_BYTES + chunks[taken + index]!.byteCount));
      }
      stretchStart = -1;
      await readRangeInto(first.file, first.fileOffset, views, this.readGate);
    };
    for (let index = 0; index < frames.length; index++) {
      const chunk = chunks[taken + index]!;
      this.frameOffsets[index] = 0;
      const verified = this.verifiedReads.take(chunk);
      if (verified !== undefined) {
        // The bytes just verified, already behind header room: sent as they are. The buffer joins the send pool (it
        // is released there after its write) and the one acquired takes its place in the verification pool. Swapped
        // before the stretch before it is read: the taken buffer is then in `frames`, and goes back if that read fails.
        this.verifiedReads.pool.release(frames[index]!);
        frames[index] = verified.buffer;
        this.frameOffsets[index] = verified.frameOffset;
        await readStretch(index);
      } else if (chunk.byteCount <= TAIL_READ_BYTES_MAX) {
        await readStretch(index);
        // The live tail: every caught-up replica wants these same bytes; one read serves them all.
        (await this.tailCache.read(chunk)).copy(frames[index]!, XLOG_DATA_HEADER_BYTES);
      } else if (stretchStart >= 0 && !followsInFile(chunks[taken + index - 1]!, chunk)) {
        await readStretch(index);
        stretchStart = index;
      } else if (stretchStart < 0) {
        stretchStart = index;
      }
    }
    await readStretch(frames.length);
  }

  private async sendMessageNow(bytes: Buffer, send: number): Promise<void> {
    await this.waitForRoom();
    this.write(bytes, send, () => undefined);
  }

  /**
   * Whether `batch` (this stream's backend's) may write a frame to this stream now: a plain socket, open, below its
   * in-flight bound, and no send of its own queued or running (a batch write goes straight to the socket, so it
   * would overtake one).
   */
  batchable(batch: TsChunkBatch): boolean {
    return (
      this.batch === batch &&
      !this.tls &&
      !this.releasing &&
      this.sendsActive === 0 &&
      this.inFlight < STREAM_CHUNKS_IN_FLIGHT_MAX &&
      this.failure === undefined &&
      !this.socket.destroyed
    );
  }

  /**
   * A batch frame (the group's header and chunk, shared by every stream of the group: never modified) written now,
   * after everything sent before: one send, one frame in flight. `done` is called once the socket is finished with it
   * (written or failed).
   */
  sendFrameNow(frame: Buffer, record: BatchFrame): BatchOutcome {
    const send = ++this.sendsAccepted;
    const batch = this.batch;
    assert.ok(batch !== undefined);
    this.batchInFlight.push(record);
    if (this.batchInFlight.length === 1) batch.holding(this, true);
    this.write(frame, send, () => {
      const index = this.batchInFlight.indexOf(record);
      if (index >= 0) this.batchInFlight.splice(index, 1);
      if (this.batchInFlight.length === 0) batch.holding(this, false);
      batch.frameDone(record);
    });
    if (this.failure !== undefined) return BatchOutcome.failed;
    // A write the kernel took whole leaves nothing queued in the socket (its callback only comes on the next tick).
    if (this.socket.writableLength === 0) return BatchOutcome.written;
    return this.inFlight >= STREAM_CHUNKS_IN_FLIGHT_MAX ? BatchOutcome.full : BatchOutcome.queued;
  }

  /** Fails the stream with `cause` (a batched send that failed on it); its error, as its next call rejects with. */
  failWith(cause: Error): WalcastError {
    this.fail(cause);
    assert.ok(this.failure !== undefined);
    return this.failure;
  }

  /** Runs `send` after every send queued before it has settled: one send of this stream at a time. */
  private inOrder(send: () => Promise<void>): Promise<void> {
    if (this.sendsWaiting >= STREAM_SENDS_WAITING_MAX) {
      this.fail(new Error(`more than ${STREAM_SENDS_WAITING_MAX} sends waiting: the replica is not reading`));
    }
    if (this.failure !== undefined) return Promise.reject(this.failure);
    this.sendsWaiting++;
    this.sendsActive++;
    const run = this.sendsTail.then(async () => {
      this.sendsWaiting--;
      try {
        return await send();
      } finally {
        this.sendsActive--;
      }
    });
    this.sendsTail = run.catch(() => undefined);
    return run;
  }

  /** Asynchronous reads never block the event loop on a cache miss, so there is nothing to prefetch. */
  async prefetch(_chunk: WalChunk): Promise<void> {}

  /** StreamWriter.prefetchNow: prefetch is a no-op here, so there is never anything to wait for. */
  prefetchNow(_chunk: WalChunk): undefined {
    return undefined;
  }

  async release(): Promise<void> {
    this.releasing = true;
    // A keepalive queued by the reply reader goes out before the socket is handed back, not after.
    await this.sendsTail;
    while (this.inFlight > 0 && this.failure === undefined) await this.waitForProgress();
    this.socket.off('close', this.onClose);
    this.stallWatch.delete(this);
    // A send that failed before its write leaves its observers unanswered: they are dropped with the stream.
    this.writeObservers = [];
  }

  private write(bytes: Buffer, send: number, done: () => void): void {
    // Only the one running send writes, after waitForRoom: the bound holds however sends interleave with I/O.
    assert.ok(this.inFlight < STREAM_CHUNKS_IN_FLIGHT_MAX, 'frames in flight stay within the stream bound');
    if (this.inFlight === 0) this.drainedAt = performance.now();
    this.inFlight++;
    if (this.tls) {
      this.tlsQueue.push({ bytes, send, done });
      if (!this.tlsWriting) this.writeNextTls();
      return;
    }
    this.socket.write(bytes, (error) => this.written(bytes, send, done, error));
  }

  /** A write handed to the socket completed (or failed, or was never made after a failure): its accounting, once. */
  private written(bytes: Buffer, send: number, done: () => void, error: Error | null | undefined): void {
    this.inFlight--;
    this.drainedAt = performance.now();
    done();
    if (error === undefined || error === null) {
      this.bytesSent += bytes.length;
      this.wrote(send);
    } else {
      this.fail(error);
    }
    this.signalProgress();
  }

  /** Hands the TLS socket the next queued frame when its last write completed; after a failure, returns them unwritten. */
  private writeNextTls(): void {
    for (;;) {
      const next = this.tlsQueue.shift();
      if (next === undefined) {
        this.tlsWriting = false;
        return;
      }
      if (this.failure !== undefined) {
        this.written(next.bytes, next.send, next.done, this.failure);
        continue;
      }
      this.tlsWriting = true;
      this.socket.write(next.bytes, (error) => {
        this.written(next.bytes, next.send, next.done, error);
        this.writeNextTls();
      });
      return;
    }
  }

  /**
   * Writes frames[i] (the frame at frameOffsets[i]: chunks[taken + i]'s header and bytes) for every i, corked, so Node
   * hands them to the kernel in one writev (a TLS socket: one at a time, see tlsQueue). Each frame goes back to the pool when its write completes (failed or not:
   * Node calls every callback once, in order); the last frame's counts the send as written.
   */
  private writeFrames(frames: readonly Buffer[], chunks: readonly WalChunk[], taken: number, send: number): void {
    const last = frames.length - 1;
    // A TLS socket is given one frame at a time instead (write): its writev copies.
    const cork = last > 0 && !this.tls;
    if (cork) this.socket.cork();
    for (let index = 0; index <= last; index++) {
      const frame = frames[index]!;
      const offset = this.frameOffsets[index]!;
      this.pooledInFlight.push(frame);
      this.write(frame.subarray(offset, offset + XLOG_DATA_HEADER_BYTES + chunks[taken + index]!.byteCount), index === last ? send : 0, () => this.frameDone(frame));
    }
    if (cork) this.socket.uncork();
  }

  /** A pooled frame's write completed or failed: back to the pool (which knows whether it was written off). */
  private frameDone(frame: Buffer): void {
    const index = this.pooledInFlight.indexOf(frame);
    if (index >= 0) this.pooledInFlight.splice(index, 1);
    this.pool.release(frame);
  }

  /** Like pooledFramesPendingSince, for the batch frames this stream holds (TsChunkBatch's stall check). */
  batchFramesPendingSince(): number | undefined {
    return this.batchInFlight.length > 0 ? this.drainedAt : undefined;
  }

  /** The batch frames this stream holds stop counting against the batch's in-flight bound (as its budget allows). */
  writeOffBatchFrames(batch: TsChunkBatch): void {
    for (const frame of this.batchInFlight) if (!batch.writeOff(frame)) return;
  }

  pooledFramesPendingSince(): number | undefined {
    return this.pooledInFlight.length > 0 ? this.drainedAt : undefined;
  }

  writeOffPooledFrames(stalledMs: number): void {
    let count = 0;
    while (this.pooledInFlight.length > 0 && this.pool.writeOff(this.pooledInFlight[0]!)) {
      this.pooledInFlight.shift();
      count++;
    }
    if (count === 0) return;
    if (this.writtenOff === 0) {
      this.log?.warn(
        { addr: `${this.socket.remoteAddress}:${this.socket.remotePort}`, buffers: count, stalledMs: Math.round(stalledMs), writtenOffNow: this.pool.writtenOff(), writtenOffMax: this.pool.writtenOffMax },
        'replica not reading: its send buffers are written off the TS send pool so other streams go on (the replica timeout ends it)',
      );
    }
    this.writtenOff += count;
  }

  /** Send number `send` is written, and (writes completing in order) every send before it. */
  private wrote(send: number): void {
    if (send > this.sendsWritten) this.sendsWritten = send;
    let answered = 0;
    while (answered < this.writeObservers.length && (this.writeObservers[answered]?.send ?? Infinity) <= this.sendsWritten) answered++;
    if (answered === 0) return;
    const ready = this.writeObservers.slice(0, answered);
    this.writeObservers = this.writeObservers.slice(answered);
    for (const { observer } of ready) observer();
  }

  private async waitForRoom(): Promise<void> {
    while (this.inFlight >= STREAM_CHUNKS_IN_FLIGHT_MAX) {
      this.throwIfFailed();
      await this.waitForProgress();
    }
    this.throwIfFailed();
  }

  private waitForProgress(): Promise<void> {
    return this.progress.promise;
  }

  private signalProgress(): void {
    const current = this.progress;
    this.progress = deferred();
    current.resolve();
  }

  private fail(cause: Error): void {
    this.failure ??= new WalcastError('WALCAST_ERR_STREAM_IO', `sending WAL failed: ${cause.message}`, { cause });
    this.writeObservers = [];
    this.signalProgress();
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure;
    if (this.socket.destroyed) this.fail(new Error('socket destroyed'));
    if (this.failure !== undefined) throw this.failure;
  }
}

function validateChunk(chunk: WalChunk): void {
  assert.ok(chunk.byteCount > 0, 'chunk is not empty');
  assert.ok(chunk.byteCount <= MAX_SEND_BYTES, 'chunk fits one frame');
}

/** True when `next` starts in `previous`'s file where `previous` ends: one read covers both. */
function followsInFile(previous: WalChunk, next: WalChunk): boolean {
  return next.file === previous.file && next.fileOffset === previous.fileOffset + previous.byteCount;
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve: () => void = () => undefined;
  const promise = new Promise<void>((settle) => (resolve = settle));
  return { promise, resolve };
}
