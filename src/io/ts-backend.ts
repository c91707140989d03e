/**
 * The pure-TypeScript I/O backend (node:fs + node:net): walcast's I/O on every OS, and on Linux whenever the native
 * addon is absent. Each chunk is read with an asynchronous pread (libuv's thread pool, so a page-cache miss never
 * blocks the event loop) straight into a pooled buffer after 30 bytes of room, its header is copied in front, and
 * the whole frame goes out in one socket write: one copy of the payload (kernel to buffer), no allocation.
 *
 * Up to STREAM_CHUNKS_IN_FLIGHT_MAX chunks per stream are queued in the socket at once, so the read of the next
 * chunk overlaps the send of the previous one; the buffer pool bounds the total across streams.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { WalcastError } from '../errors.js';
import { MAX_SEND_BYTES, XLOG_DATA_HEADER_BYTES, type IoBackend, type StreamWriter, type WalChunk } from './backend.js';
import { BufferPool } from './buffer-pool.js';
import { TAIL_READ_BYTES_MAX, TailReadCache, readExactly } from './tail-read-cache.js';

/** Frames per stream handed to the socket and not yet flushed: two overlap a read with a send. */
export const STREAM_CHUNKS_IN_FLIGHT_MAX = 2;
/** Send buffers across all streams: 512 × 128 KiB = 64 MiB, the backend's memory bound for WAL in flight. */
export const POOL_BUFFERS_MAX = 512;
/** Each pooled buffer holds one frame: the header and a full chunk. */
export const FRAME_BYTES_MAX = XLOG_DATA_HEADER_BYTES + MAX_SEND_BYTES;

export function createTsBackend(): IoBackend {
  const pool = new BufferPool(FRAME_BYTES_MAX, POOL_BUFFERS_MAX);
  const tailCache = new TailReadCache();
  return {
    kind: 'ts',
    strategy: 'fs-net',
    openStream: async (socket: Socket) => new TsStreamWriter(socket, pool, tailCache),
    close: async () => undefined,
  };
}

class TsStreamWriter implements StreamWriter {
  bytesSent = 0;
  private inFlight = 0;
  private failure: WalcastError | undefined;
  /** Resolved (and replaced) whenever an in-flight write completes or the stream fails; any number may wait on it. */
  private progress: { promise: Promise<void>; resolve: () => void } = deferred();
  private readonly onClose = (): void => this.fail(new Error('socket closed'));

  constructor(
    private readonly socket: Socket,
    private readonly pool: BufferPool,
    private readonly tailCache: TailReadCache,
  ) {
    socket.once('close', this.onClose);
  }

  async sendChunk(header: Buffer, chunk: WalChunk): Promise<void> {
    assert.equal(header.length, XLOG_DATA_HEADER_BYTES, 'header size');
    assert.ok(chunk.byteCount > 0 && chunk.byteCount <= MAX_SEND_BYTES, 'chunk size');
    await this.waitForRoom();
    const frame = await this.pool.acquire();
    let handedOff = false;
    try {
      this.throwIfFailed();
      if (chunk.byteCount <= TAIL_READ_BYTES_MAX) {
        // The live tail: every caught-up replica wants these same bytes; one read serves them all.
        (await this.tailCache.read(chunk)).copy(frame, XLOG_DATA_HEADER_BYTES);
      } else {
        await readExactly(chunk, frame, XLOG_DATA_HEADER_BYTES);
      }
      this.throwIfFailed();
      header.copy(frame, 0, 0, XLOG_DATA_HEADER_BYTES);
      handedOff = true;
      this.write(frame.subarray(0, XLOG_DATA_HEADER_BYTES + chunk.byteCount), () => this.pool.release(frame));
    } finally {
      if (!handedOff) this.pool.release(frame);
    }
  }

  async sendMessage(bytes: Buffer): Promise<void> {
    await this.waitForRoom();
    this.throwIfFailed();
    this.write(bytes, () => undefined);
  }

  /** Asynchronous reads never block the event loop on a cache miss, so there is nothing to prefetch. */
  async prefetch(_chunk: WalChunk): Promise<void> {}

  async release(): Promise<void> {
    while (this.inFlight > 0 && this.failure === undefined) await this.waitForProgress();
    this.socket.off('close', this.onClose);
  }

  private write(bytes: Buffer, done: () => void): void {
    this.inFlight++;
    this.socket.write(bytes, (error) => {
      this.inFlight--;
      done();
      if (error === undefined || error === null) this.bytesSent += bytes.length;
      else this.fail(error);
      this.signalProgress();
    });
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
    this.signalProgress();
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure;
    if (this.socket.destroyed) this.fail(new Error('socket destroyed'));
    if (this.failure !== undefined) throw this.failure;
  }
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve: () => void = () => undefined;
  const promise = new Promise<void>((settle) => (resolve = settle));
  return { promise, resolve };
}
