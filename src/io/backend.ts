/**
 * The I/O backend boundary: the only way the replication sender moves WAL bytes to a replica's socket.
 *
 * Two implementations exist: `ts` (node:fs + node:net, every OS) and `native` (the C++ addon on Linux:
 * sendfile / writev / io_uring). The sender loop encodes every protocol byte itself and hands the backend
 * either a small finished message or "this header, then these bytes of this segment file", so no backend
 * knows anything about PostgreSQL. Both must put exactly the same bytes on the wire, in call order.
 */
import type { Socket } from 'node:net';
import { WAL_PAGE_BYTES } from '../lsn.js';
import type { WalChunk } from '../storage/wal-chunk.js';
import type { ChunkReadStats } from './sync-read-gate.js';

// The file range types belong to storage (it opens the files and cuts the ranges); re-exported because they are
// part of this interface.
export type { WalChunk, WalFileHandle } from '../storage/wal-chunk.js';
export type { ChunkReadStats } from './sync-read-gate.js';

/**
 * The largest chunk the sender hands to sendChunk: MAX_SEND_SIZE in walsender.c and Neon's send_wal.rs
 * (XLOG_BLCKSZ * 16). Backends size their buffers from it, so it lives at this boundary, below replication.
 */
export const MAX_SEND_BYTES = WAL_PAGE_BYTES * 16;
/**
 * The header sendChunk puts before a chunk's bytes: the CopyData envelope and the XLogData header
 * (replication/stream-messages.ts lays it out and asserts the sum).
 */
export const XLOG_DATA_HEADER_BYTES = 30;

/**
 * Write observers one stream may have waiting (StreamWriter.afterWritten). The sender asks for at most one per chunk
 * it has handed over and not yet seen written, and backends bound those chunks to a few, so more means a bug.
 */
export const STREAM_WRITE_OBSERVERS_MAX = 16;

/**
 * Chunks one StreamWriter.sendChunkRun call takes (the native addon's kRunChunksMax). The sender's runs are at most
 * its per-turn budget (512 KiB: four full chunks); the bound leaves room for short chunks.
 */
export const CHUNK_RUN_CHUNKS_MAX = 16;

export type IoBackendKind = 'ts' | 'native';

/**
 * What the kernel could do for TLS streams (kernel TLS: the `tls` TCP upper-layer protocol), as the native
 * backend probes it once per process (native/kernel-tls.cc). walcast does not hand TLS sessions to the kernel
 * (docs/security.md, "Kernel TLS"): TLS streams always take the encrypting TypeScript path. The probe is reported
 * (startup log, per-stream log, status `io.kernel_tls`, metric walcast_io_kernel_tls_info) so an operator sees
 * whether the kernel side of that work would be there.
 */
export interface KernelTlsStatus {
  /**
   * available: the kernel took the `tls` ULP and TLS_TX keys on a loopback socket; unavailable: it refused (code
   * = errno name, e.g. ENOENT: no tls module); error: the probe's loopback connection failed; not-probed: the ts
   * backend (it never loads the addon).
   */
  readonly state: 'available' | 'unavailable' | 'error' | 'not-probed';
  /** OK, an errno name, or TS_BACKEND. */
  readonly code: string;
  /** One sentence for logs and the status API. */
  readonly detail: string;
}

/** The TS backend's send pool (buffer-pool.ts, send-stall.ts): buffers in use and written off. */
export interface SendBufferStats {
  /** Pooled send buffers handed out now (written-off ones not counted). */
  readonly inUse: number;
  readonly buffersMax: number;
  /** Buffers written off (held by sockets that stopped draining) and not yet returned. */
  readonly writtenOff: number;
  readonly writtenOffMax: number;
  /** Buffers written off since the backend started. */
  readonly writtenOffTotal: number;
  /**
   * The ts fan-out batch (absent without it): bytes of batch frames held by stalled streams and written off its
   * in-flight bound now, that budget (BATCH_FRAME_BYTES_WRITTEN_OFF_MAX), and bytes written off since the start.
   */
  readonly batchFrameBytesWrittenOff?: number;
  readonly batchFrameBytesWrittenOffMax?: number;
  readonly batchFrameBytesWrittenOffTotal?: number;
}

export interface IoBackend {
  readonly kind: IoBackendKind;
  /** 'fs-net' for ts; 'sendfile' | 'writev' | 'uring' for native. */
  readonly strategy: string;
  /** The kernel TLS probe's answer (not-probed on the ts backend). */
  readonly kernelTls: KernelTlsStatus;
  /**
   * Native only: when prefetch reads could not be put at idle I/O priority (native/readahead-thread.h: the kernel
   * refused ioprio_set, or WALCAST_PREFETCH_IOPRIO=default), why; the status API's I/O reason shows it.
   */
  readonly prefetchPriorityNote?: string;
  /**
   * Native only: prefetch reads taken back from a readahead thread after a starved wait (io-engine.h
   * kIdleReadWaitMaxMs: a disk busy with best-effort I/O held the idle-priority read back) and read at the engine's
   * own priority instead. Exported as walcast_prefetch_idle_fallbacks_total.
   */
  prefetchIdleFallbacks?(): number;
  /**
   * The TS send pool's counts (the ts backend, and the native one for the TLS streams it sends through a ts
   * backend): exported as walcast_ts_send_buffers_*. Absent where no send pool exists.
   */
  sendBufferStats?(): SendBufferStats;
  /**
   * The TS backend's catch-up reads: how many ran on the event-loop thread and how many on the thread pool, and the
   * gate between them (sync-read-gate.ts): exported as walcast_ts_chunk_reads_total and walcast_ts_sync_read_*.
   * Absent where reads never run on the event loop (native, or WALCAST_TS_SYNC_READS=off).
   */
  chunkReadStats?(): ChunkReadStats;
  /**
   * Takes over writes to `socket` for one replication stream. Until `release()` resolves, nobody else
   * writes to the socket; reading (replica feedback) stays with Node.
   */
  openStream(socket: Socket): Promise<StreamWriter>;
  /**
   * out[i] = CRC-32C of the i-th `pageBytes` piece of the chunk's range, as the file holds it now (the last piece
   * may be shorter). The page verifier calls it before bytes are sent; `byteCount` may exceed MAX_SEND_BYTES by
   * the pages the chunk only partly covers. Rejects with a WalcastError when the range cannot be read.
   */
  checksumPages(chunk: WalChunk, pageBytes: number, out: Uint32Array): Promise<void>;
  /**
   * The same, synchronously, for a backend that computes it without I/O waits (the native one, in place in the page
   * cache); throws where checksumPages rejects. Lets the verifier check a chunk without a promise chain per chunk.
   */
  checksumPagesNow?(chunk: WalChunk, pageBytes: number, out: Uint32Array): void;
  /**
   * The same off the event-loop thread (the native one on a libuv pool thread), for checks nobody waits on right
   * away: the sender's prefetcher verifies window pieces ahead with it. Rejects for a handle storage is closing.
   */
  checksumPagesOffThread?(chunk: WalChunk, pageBytes: number, out: Uint32Array): Promise<void>;
  /** Frees backend-wide resources (event sources, buffer pools). */
  close(): Promise<void>;
  /**
   * One chunk to many streams in one call (replication/fanout-batch.ts): present on backends that can do it (the
   * native one, unless turned off); absent, every stream sends on its own.
   */
  readonly chunkBatch?: ChunkBatch;
}

/** What a batched send did on one stream (ChunkBatch.send), as the native engine's SendStatus. */
export enum BatchOutcome {
  /** Failed: the stream is failed, its error is in the returned array, its next call throws it. */
  failed = -1,
  /** Header and payload reached the kernel. */
  written = 0,
  /** Accepted; the socket had no room for all of it, the rest is queued in the backend, in order. */
  queued = 1,
  /** Accepted and queued, and the stream is at its in-flight bound: it must not take another chunk until it drains. */
  full = 2,
}

export interface ChunkBatch {
  /** True when `writer` is this backend's, open, and below its in-flight bound: it may take part in `send`. */
  accepts(writer: StreamWriter): boolean;
  /**
   * sendChunk(header, chunk) on writers[0..count), in that order, in one crossing: each stream takes the same header
   * and range, after everything it was sent before. outcomes[i] tells what happened on writers[i]; the returned
   * array holds the error of each failed writer at its index (undefined when none failed). `writers` is the caller's
   * reused array (slots past `count` may be empty): neither it nor `outcomes` is kept after the call.
   */
  send(writers: readonly (StreamWriter | undefined)[], count: number, header: Buffer, chunk: WalChunk, outcomes: Int32Array): (Error | undefined)[] | undefined;
  /**
   * Gets the chunk's bytes ready for `send` (which is synchronous) once for the whole group: undefined when they are
   * ready now, else a promise that settles when they are (it never rejects: a failed read leaves `send` to read or
   * fail itself). Present on a backend that sends from its own memory (the ts one: one file read per group, every
   * socket written from that one buffer); absent, `send` moves the bytes itself (native: from the page cache).
   */
  stage?(chunk: WalChunk): Promise<void> | undefined;
}

export interface StreamWriter {
  /**
   * Sends `header` and then the chunk's bytes as one unit, after everything sent earlier on this stream.
   * Resolves once the backend has accepted the unit within its in-flight bound (the caller may reuse
   * `header` then). Rejects with a StreamIoError when the peer is gone or the write fails.
   */
  sendChunk(header: Buffer, chunk: WalChunk): Promise<void>;
  /**
   * sendChunk for a run of 1..CHUNK_RUN_CHUNKS_MAX chunks in one call (catch-up): chunk i goes out as
   * headers[i * headerBytes, (i + 1) * headerBytes) followed by chunks[i]'s bytes, exactly as chunks.length sendChunk
   * calls in that order would put them on the wire. Resolves once every chunk is accepted within the in-flight bound
   * (the caller may reuse `headers` then); rejects as sendChunk, and then none of the run counts as sent. Present
   * where one call is cheaper than a call per chunk (the native backend: JavaScript is entered once per run, not
   * once per 128 KiB); absent, the sender calls sendChunk per chunk.
   */
  sendChunkRun?(headers: Buffer, headerBytes: number, chunks: readonly WalChunk[]): Promise<void>;
  /** Sends a small complete message (keepalive, ErrorResponse, CopyDone ...) in order with chunks. */
  sendMessage(bytes: Buffer): Promise<void>;
  /**
   * Makes sure the range is in page cache before it is sent, without blocking the event loop on disk.
   * Best effort: resolves (never rejects) once the range is cached or the attempt failed.
   */
  prefetch(chunk: WalChunk): Promise<void>;
  /**
   * The pieces the sender's prefetcher asks `prefetch` for and checks ahead, and how far past the send position it asks
   * (replication/send-wal.ts Prefetcher): the piece at least one chunk, the window a whole number of pieces. Absent:
   * PREFETCH_PIECE_BYTES and PREFETCH_WINDOW_BYTES (1 and 4 MiB). Native streams take larger pieces
   * (NATIVE_PREFETCH_SHAPE: each piece costs a thread read, an event and a pool check).
   */
  readonly prefetchShape?: { readonly pieceBytes: number; readonly windowBytes: number };
  /**
   * prefetch without a promise where none is needed: undefined when the range is in page cache now (nothing to wait
   * for), else prefetch's promise for it. The fan-out batch asks this once per publish for the live tail, which ingest
   * has just written and is always cached: awaiting a resolved promise there put microtask hops between the publish
   * and the replicas' sends (~20 µs of each publish's fan-out, issue 13). Absent, callers await prefetch.
   */
  prefetchNow?(chunk: WalChunk): Promise<void> | undefined;
  /**
   * Calls `observer` once every byte accepted on this stream so far (sends that resolved or are queued) has been
   * written to the socket (handed to the kernel), at once when that is already so. Never called when the stream
   * fails or is released first. Returns false, without registering, when STREAM_WRITE_OBSERVERS_MAX observers
   * already wait. Backends may report later than the exact moment (native: when the stream's queue is empty), never
   * earlier.
   */
  afterWritten(observer: () => void): boolean;
  /** Waits until every accepted byte reached the kernel, then gives the socket back to Node. Idempotent. */
  release(): Promise<void>;
  /** Payload + header bytes handed to the kernel so far. */
  readonly bytesSent: number;
  /** How this stream's bytes reach the socket (the log names it per stream): e.g. 'sendfile', 'fs-net', 'fs-net+tls'. */
  readonly path: string;
}
