/**
 * One vectored read (preadv, on libuv's thread pool) of a contiguous file range into several buffers: the TS
 * backend's run path reads the chunks of a catch-up run, which follow each other in one segment file, into their
 * own frame buffers (each behind its header room) with one read instead of one per chunk. Per 128 KiB chunk, the
 * thread-pool hop (a futex wake, a worker switch, an eventfd wake-up of the loop, a request object, a promise) cost
 * more CPU than the read itself (profile in docs/benchmarks.md, "The TS backend's CPU per GB"); a run of four chunks
 * pays it once.
 *
 * With a SyncReadGate that allows it (sync-read-gate.ts: page cache, not the disk, as far as the gate can tell), the read
 * runs on the calling thread instead: the same preadv, without the thread-pool round trip.
 *
 * Exactly the bytes of the range are read, never past its end: the caller's views add up to the range, and a read
 * that ends early (the file is shorter than the range) is an I/O error naming the file and offset, as readExactly's.
 */
import assert from 'node:assert/strict';
import { readv, readvSync } from 'node:fs';
import { WalcastError } from '../errors.js';
import type { WalFileHandle } from './backend.js';
import type { SyncReadGate } from './sync-read-gate.js';

/**
 * Fills `views` in order with the file's bytes from `fileOffset` on (as many as the views hold together). `views`
 * may be changed (consumed views are replaced by what is left of them) when a read returns less than asked.
 */
export async function readRangeInto(file: WalFileHandle, fileOffset: number, views: Buffer[], gate?: SyncReadGate): Promise<void> {
  // A closed handle's number may be a client's socket by now, and a read would consume its bytes (WalFileHandle.closed).
  assert.ok(file.closed !== true, `${file.path} is read after storage closed it`);
  let position = fileOffset;
  let first = 0;
  while (first < views.length) {
    const pending = first === 0 ? views : views.slice(first);
    const bytesRead = await readSomeAt(file.fd, pending, position, gate);
    if (bytesRead === 0) {
      throw new WalcastError('WALCAST_ERR_STREAM_IO', `short read from ${file.path} at ${position}: the segment is shorter than its WAL`);
    }
    position += bytesRead;
    // Skip the views filled whole; the one read in part continues where the read stopped.
    let left = bytesRead;
    while (first < views.length && left >= views[first]!.length) left -= views[first++]!.length;
    if (left > 0) views[first] = views[first]!.subarray(left);
  }
}

/** One preadv of the pending views: on this thread when the gate allows it, else on the pool. */
function readSomeAt(fd: number, views: Buffer[], position: number, gate: SyncReadGate | undefined): Promise<number> | number {
  if (gate === undefined) return readvAt(fd, views, position);
  let bytes = 0;
  for (const view of views) bytes += view.length;
  if (gate.allows(bytes)) return gate.readNow(bytes, () => readvSync(fd, views, position));
  gate.countPoolRead();
  return readvAt(fd, views, position);
}

function readvAt(fd: number, views: Buffer[], position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    readv(fd, views, position, (error, bytesRead) => (error === null ? resolve(bytesRead) : reject(error)));
  });
}
