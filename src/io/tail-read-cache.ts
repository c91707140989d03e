/**
 * A small cache of the newest WAL reads, shared by every stream of the TS backend.
 *
 * When new WAL is committed, every caught-up replica wakes and asks for the same few kilobytes: without this, a
 * thousand replicas make a thousand thread-pool reads of identical bytes per commit (the live-latency benchmark
 * measured ~120 ms at 1,000 replicas). Here the first request reads and the others share its result, including
 * while the read is still in flight.
 *
 * Safe because published WAL never changes: senders read only below the commit LSN, and bytes below it are
 * immutable for the life of the process (recovery truncates only what was never published, and runs before any
 * sender). The key is the exact file path and range, so a renamed .partial or another timeline is simply a miss.
 * Only small reads are cached — the live tail — so catch-up (128 KiB chunks) pays no extra copy.
 */
import assert from 'node:assert/strict';
import { read } from 'node:fs';
import { WalcastError } from '../errors.js';
import type { WalChunk } from './backend.js';

/** Reads up to this size are cached: commit-sized tails, not catch-up chunks. */
export const TAIL_READ_BYTES_MAX = 16 * 1024;
/** Entries kept: a few recent commits on each of a few timelines. Memory bound: 64 × 16 KiB = 1 MiB. */
export const TAIL_READ_ENTRIES_MAX = 64;

export class TailReadCache {
  /** Insertion-ordered: the first key is the least recently used. */
  private readonly entries = new Map<string, Promise<Buffer>>();

  /** The chunk's bytes; shared with every other caller of the same range. The caller must not modify them. */
  read(chunk: WalChunk): Promise<Buffer> {
    assert.ok(chunk.byteCount > 0 && chunk.byteCount <= TAIL_READ_BYTES_MAX, 'only small reads are cached');
    const key = `${chunk.file.path}\0${chunk.fileOffset}\0${chunk.byteCount}`;
    const cached = this.entries.get(key);
    if (cached !== undefined) {
      this.entries.delete(key);
      this.entries.set(key, cached);
      return cached;
    }
    const reading = readRange(chunk);
    this.entries.set(key, reading);
    // A failed read is not remembered: the next caller tries again (and reports its own error).
    reading.catch(() => this.entries.get(key) === reading && this.entries.delete(key));
    for (const oldest of this.entries.keys()) {
      if (this.entries.size <= TAIL_READ_ENTRIES_MAX) break;
      this.entries.delete(oldest);
    }
    return reading;
  }

  size(): number {
    return this.entries.size;
  }
}

/** Reads the chunk's whole range into a buffer of its own; a short read of a stored range is an I/O error. */
export async function readExactly(chunk: WalChunk, target: Buffer, targetOffset: number): Promise<void> {
  assert.ok(target.length - targetOffset >= chunk.byteCount, 'target too small');
  // A closed handle's number may be a client's socket by now, and a read would consume its bytes (WalFileHandle.closed).
  assert.ok(chunk.file.closed !== true, `${chunk.file.path} is read after storage closed it`);
  let done = 0;
  while (done < chunk.byteCount) {
    const bytesRead = await readAt(chunk.file.fd, target, targetOffset + done, chunk.byteCount - done, chunk.fileOffset + done);
    if (bytesRead === 0) {
      throw new WalcastError('WALCAST_ERR_STREAM_IO', `short read from ${chunk.file.path} at ${chunk.fileOffset + done}: the segment is shorter than its WAL`);
    }
    done += bytesRead;
  }
}

async function readRange(chunk: WalChunk): Promise<Buffer> {
  const bytes = Buffer.allocUnsafe(chunk.byteCount);
  await readExactly(chunk, bytes, 0);
  return bytes;
}

function readAt(fd: number, target: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    read(fd, target, offset, length, position, (error, bytesRead) => (error === null ? resolve(bytesRead) : reject(error)));
  });
}
