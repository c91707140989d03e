/**
 * Verified reads handed to the send that follows: the TS backend's page verification (checksumPages) reads a
 * chunk's pages into a buffer to checksum them, and the sender's next step is to send that very chunk, which
 * used to read the same bytes again. Here the verification buffer is kept, already laid out as a frame (the bytes
 * start XLOG_DATA_HEADER_BYTES in, room for the header), and the send takes it instead of reading: one pread,
 * thread-pool hop and page-cache copy less per chunk (issue 13: the TS backend's CPU per GB).
 *
 * What is sent is then exactly what was checksummed, never a second read of the file: a page cannot change
 * between its verification and its send.
 *
 * A kept read is matched by a range that contains the chunk and by its file: the very handle object (never its fd
 * number, which the OS reuses after a close), or the same "dev:ino" identity while the kept read's own handle is
 * still open. The second is what lets the prefetcher's verify-ahead (which reads through a reader and handles of
 * its own) feed the sends of the same stream: on the TS backend that pass read every byte twice, once to checksum
 * it ahead and once to send it (docs/benchmarks.md, "The TS backend's first pass"). An open descriptor pins its
 * inode, so an equal identity then names the same file, never a later one that reuses the inode number; a kept
 * read whose handle was closed matches its own handle object only (which a send refuses: WalFileHandle.closed).
 * A read is taken by one send only (the send writes its header into it). The buffers come from the verification
 * pool and at most VERIFIED_READS_KEPT_MAX are kept; the oldest goes back to the pool when another is kept. A kept
 * read nobody sends (the stream ended, another stream sent that range first, the chunk failed verification) costs
 * nothing but its buffer until it is pushed out.
 */
import assert from 'node:assert/strict';
import { XLOG_DATA_HEADER_BYTES, type WalChunk, type WalFileHandle } from './backend.js';
import type { BufferPool } from './buffer-pool.js';

/**
 * Verification buffers kept for a send: 48 × 128 KiB = 6 MiB. The sender's own check is taken by the send that
 * follows it directly, but the prefetcher verifies whole pieces up to its window (PREFETCH_WINDOW_BYTES, 4 MiB =
 * 32 buffers) ahead of the send, so a stream's verify-ahead needs that many kept to reach its sends; with more
 * streams than that allows the oldest are pushed out and those sends read again, as before. The rest of the
 * verification pool (CHECKSUM_BUFFERS_MAX) stays free for verifications in progress.
 */
export const VERIFIED_READS_KEPT_MAX = 48;

interface KeptRead {
  readonly file: WalFileHandle;
  readonly fileOffset: number;
  readonly byteCount: number;
  /** The range's bytes at [XLOG_DATA_HEADER_BYTES, XLOG_DATA_HEADER_BYTES + byteCount). */
  readonly buffer: Buffer;
}

/** A chunk's bytes as a frame: the header goes into frame[0, XLOG_DATA_HEADER_BYTES). */
export interface VerifiedFrame {
  /** The pool buffer holding the frame; it belongs to the taker now. */
  readonly buffer: Buffer;
  /** Where the frame starts in `buffer`; the chunk's bytes follow the header room. */
  readonly frameOffset: number;
}

export class VerifiedReads {
  /** Oldest first. */
  private kept: KeptRead[] = [];

  /** `pool`: the verification pool the kept buffers come from and go back to. */
  constructor(readonly pool: BufferPool) {}

  /** Keeps `buffer` (from the pool) with the verified bytes of the range; the oldest kept read goes back if full. */
  keep(file: WalFileHandle, fileOffset: number, byteCount: number, buffer: Buffer): void {
    assert.ok(byteCount > 0 && XLOG_DATA_HEADER_BYTES + byteCount <= buffer.length, 'the range fits the buffer behind the header room');
    if (this.kept.length >= VERIFIED_READS_KEPT_MAX) this.pool.release(this.kept.shift()!.buffer);
    this.kept.push({ file, fileOffset, byteCount, buffer });
  }

  /** The kept read containing the chunk, if any, as a frame; removed from the kept reads. */
  take(chunk: WalChunk): VerifiedFrame | undefined {
    // A closed handle is left to the read, which refuses it (WalFileHandle.closed).
    if (chunk.file.closed === true) return undefined;
    const chunkEnd = chunk.fileOffset + chunk.byteCount;
    for (let index = this.kept.length - 1; index >= 0; index--) {
      const read = this.kept[index]!;
      if (!sameFile(read.file, chunk.file) || read.fileOffset > chunk.fileOffset || read.fileOffset + read.byteCount < chunkEnd) continue;
      this.kept.splice(index, 1);
      // The frame starts header-room bytes before the chunk's first byte: over bytes of a page before the chunk
      // (verified, not sent) or the buffer's own header room.
      return { buffer: read.buffer, frameOffset: chunk.fileOffset - read.fileOffset };
    }
    return undefined;
  }

  /** Kept reads (a gauge for tests). */
  size(): number {
    return this.kept.length;
  }
}

/**
 * The kept read's file is the chunk's: the same handle, or the same "dev:ino" while the kept read's handle is marked open
 * (its descriptor pins the inode, so the number cannot name a newer file). The chunk's handle is open (take checks).
 */
function sameFile(kept: WalFileHandle, wanted: WalFileHandle): boolean {
  if (kept === wanted) return true;
  // `closed === false`, not absent: a handle without the flag may be closed by its creator without a mark once it is
  // no longer used (WalFileHandle.closed), and a kept read outlives that use.
  return kept.closed === false && kept.identity !== undefined && kept.identity === wanted.identity;
}
