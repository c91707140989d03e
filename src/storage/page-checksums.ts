/**
 * Page checksums of stored WAL: one sidecar file per segment, `<SEGMENT NAME>.crc` next to the segment (never with
 * `.partial`, so the segment's rename on completion leaves its sidecar alone), holding one little-endian CRC-32C
 * per 8 KiB WAL page: entry i is the checksum of the page's 8,192 bytes as stored (bytes past the end of WAL read
 * as zeros: segments are pre-allocated and recovery erases invalid tails). Entries are a prefix: a sidecar of
 * n × 4 bytes vouches for pages 0 .. n-1 and nothing else.
 *
 * Who writes it, always from bytes that were just validated and before the position covering them is published:
 * the WAL writer (live ingest) as pages fill, fsynced before the control file vouches for them and with the
 * flush that completes the segment (wal-writer.ts; recovery rebuilds the open segment's); `walcast import` for
 * every segment it copies; crash recovery for every segment its record walk re-validated. Who reads it: the page
 * verifier (page-verifier.ts), before bytes are sent. Retention must delete `NAME.crc` with `NAME`
 * (`sidecarNameFor`). A damaged sidecar makes its pages fail verification: refused, never sent unchecked.
 */
import assert from 'node:assert/strict';
import { closeSync, constants as fsConstants, fdatasync, fdatasyncSync, fstatSync, ftruncateSync, openSync, readSync, renameSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { WAL_PAGE_BYTES } from '../lsn.js';
import { crc32c } from './crc32c.js';
import { PARTIAL_SUFFIX, isSegmentFileName } from './segment-name.js';

const fdatasyncAsync = promisify(fdatasync);

/** The sidecar's name suffix. */
export const SIDECAR_SUFFIX = '.crc';
/** Bytes per sidecar entry: one CRC-32C. */
export const SIDECAR_ENTRY_BYTES = 4;
/** Pages read per pread when checksumming a stored segment: 1 MiB bounds the buffer and amortises the call. */
export const CHECKSUM_READ_PAGES = 128;

/** `000000010000000000000003.partial` → `000000010000000000000003.crc`. */
export function sidecarNameFor(segmentFileName: string): string {
  const base = segmentFileName.endsWith(PARTIAL_SUFFIX) ? segmentFileName.slice(0, -PARTIAL_SUFFIX.length) : segmentFileName;
  return base + SIDECAR_SUFFIX;
}

/** Whether a directory entry is a segment's sidecar (the timeline start-up check accepts these). */
export function isSidecarFileName(name: string): boolean {
  return name.endsWith(SIDECAR_SUFFIX) && isSegmentFileName(name.slice(0, -SIDECAR_SUFFIX.length));
}

/**
 * The segment name a directory entry belongs to: NAME for NAME, NAME.partial and the sidecar NAME.crc. Retention and
 * a timeline switch remove a segment's files by it, the sidecar with its segment.
 */
export function segmentNameOfEntry(entry: string): string {
  if (isSidecarFileName(entry)) return entry.slice(0, -SIDECAR_SUFFIX.length);
  return entry.endsWith(PARTIAL_SUFFIX) ? entry.slice(0, -PARTIAL_SUFFIX.length) : entry;
}

export function sidecarPathFor(dir: string, segmentName: string): string {
  return join(dir, sidecarNameFor(segmentName));
}

/** Entries [firstPage, …) of a sidecar, as many as it holds; an absent sidecar holds none. */
export async function readSidecar(path: string, firstPage: number): Promise<Uint32Array> {
  assert.ok(Number.isInteger(firstPage) && firstPage >= 0, 'first page is a page index');
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return new Uint32Array(0);
    throw error;
  }
  try {
    const size = (await handle.stat()).size;
    const entries = Math.max(0, Math.floor(size / SIDECAR_ENTRY_BYTES) - firstPage);
    const bytes = Buffer.alloc(entries * SIDECAR_ENTRY_BYTES);
    const { bytesRead } = await handle.read(bytes, 0, bytes.length, firstPage * SIDECAR_ENTRY_BYTES);
    return decodeEntries(bytes.subarray(0, bytesRead - (bytesRead % SIDECAR_ENTRY_BYTES)));
  } finally {
    await handle.close();
  }
}

/** Pure: little-endian entries to numbers. */
export function decodeEntries(bytes: Buffer): Uint32Array {
  assert.equal(bytes.length % SIDECAR_ENTRY_BYTES, 0, 'whole entries');
  const entries = new Uint32Array(bytes.length / SIDECAR_ENTRY_BYTES);
  for (let index = 0; index < entries.length; index++) entries[index] = bytes.readUInt32LE(index * SIDECAR_ENTRY_BYTES);
  return entries;
}

/** Pure: numbers to little-endian entries. */
export function encodeEntries(crcs: readonly number[] | Uint32Array): Buffer {
  const bytes = Buffer.allocUnsafe(crcs.length * SIDECAR_ENTRY_BYTES);
  for (let index = 0; index < crcs.length; index++) bytes.writeUInt32LE(crcs[index]!, index * SIDECAR_ENTRY_BYTES);
  return bytes;
}

/** CRC-32C of pages [firstPage, endPage) of an open segment file (pages past its end read as zeros). */
export function checksumStoredPages(fd: number, firstPage: number, endPage: number): number[] {
  assert.ok(firstPage >= 0 && firstPage <= endPage, 'page range is ordered');
  const buffer = Buffer.alloc(CHECKSUM_READ_PAGES * WAL_PAGE_BYTES);
  const crcs: number[] = [];
  for (let page = firstPage; page < endPage; page += CHECKSUM_READ_PAGES) {
    const pages = Math.min(CHECKSUM_READ_PAGES, endPage - page);
    const bytes = pages * WAL_PAGE_BYTES;
    let filled = 0;
    while (filled < bytes) {
      const got = readSync(fd, buffer, filled, bytes - filled, page * WAL_PAGE_BYTES + filled);
      if (got === 0) break;
      filled += got;
    }
    buffer.fill(0, filled, bytes);
    for (let index = 0; index < pages; index++) crcs.push(crc32c(buffer, index * WAL_PAGE_BYTES, (index + 1) * WAL_PAGE_BYTES));
  }
  return crcs;
}

/**
 * Writes a whole sidecar for `pages` pages of a stored segment, checksummed from the file as it is now (the
 * caller has just validated it), under a temp name, fsynced, then renamed over any old one. The caller fsyncs
 * the directory with the segment's own rename.
 */
export function writeSidecarFromSegment(segmentPath: string, sidecarPath: string, pages: number): void {
  const segmentFd = openSync(segmentPath, 'r');
  let crcs: number[];
  try {
    crcs = checksumStoredPages(segmentFd, 0, pages);
  } finally {
    closeSync(segmentFd);
  }
  const tempPath = `${sidecarPath}.tmp`;
  const fd = openSync(tempPath, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_TRUNC, 0o600);
  try {
    writeAll(fd, encodeEntries(crcs), 0);
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tempPath, sidecarPath);
}

/**
 * The live writer's handle on one segment's sidecar: entries are appended in page order and made durable by
 * `sync`, which the writer runs with the fdatasync of the segment that completes it, before that flush is
 * published, and on close (wal-writer.ts: the open segment's sidecar is rebuilt by recovery after a crash).
 */
export class SidecarAppender {
  private readonly fd: number;
  /** Entries on file (written, maybe not yet durable). */
  private entriesValue: number;
  /**
   * Written (or cut) since the last `sync` started. A clean sidecar is not fsynced again: most commits complete no
   * page, and a second fdatasync per flush on an unchanged file still costs a pool thread and, on ext4, a device
   * cache flush that the segment's own fdatasync then queues behind.
   */
  private dirty = true;
  /** The fdatasync running now, if any: it covers every entry appended before it started. */
  private syncing: Promise<void> | undefined;

  /**
   * Opens (creating) the sidecar of a segment whose first `validPages` pages hold published WAL. Entries past them
   * are cut (a closed writer's entry for its partial last page); missing ones are checksummed from the segment.
   */
  constructor(
    readonly path: string,
    segmentFd: number,
    validPages: number,
  ) {
    this.fd = openSync(path, fsConstants.O_RDWR | fsConstants.O_CREAT, 0o600);
    const entries = Math.floor(fstatSync(this.fd).size / SIDECAR_ENTRY_BYTES);
    if (entries > validPages) ftruncateSync(this.fd, validPages * SIDECAR_ENTRY_BYTES);
    if (entries < validPages) writeAll(this.fd, encodeEntries(checksumStoredPages(segmentFd, entries, validPages)), entries * SIDECAR_ENTRY_BYTES);
    else if (entries * SIDECAR_ENTRY_BYTES !== fstatSync(this.fd).size) ftruncateSync(this.fd, validPages * SIDECAR_ENTRY_BYTES);
    this.entriesValue = validPages;
  }

  get entries(): number {
    return this.entriesValue;
  }

  /** Records the checksums of pages firstPage, firstPage + 1, …; firstPage must be the next one. One pwrite. */
  append(firstPage: number, crcs: readonly number[]): void {
    assert.equal(firstPage, this.entriesValue, 'sidecar entries are appended in page order');
    if (crcs.length === 0) return;
    this.dirty = true;
    writeAll(this.fd, encodeEntries(crcs), firstPage * SIDECAR_ENTRY_BYTES);
    this.entriesValue += crcs.length;
  }

  /**
   * Makes every entry appended so far durable; true when it ran an fdatasync. With nothing appended since the last
   * sync started, it only waits for that one if it still runs (two callers: the writer's flush of a completed
   * segment and the follower's control-file write). An append during a running sync marks it dirty again.
   */
  async sync(): Promise<boolean> {
    // One at a time, so the writer never closes the file under a sync still queued for it. A failed one left the
    // file dirty: this one retries it and reports its own outcome.
    while (this.syncing !== undefined) await this.syncing.catch(() => undefined);
    if (!this.dirty) return false;
    this.dirty = false;
    const running = fdatasyncAsync(this.fd).catch((error: unknown) => {
      this.dirty = true;
      throw error;
    });
    this.syncing = running;
    try {
      await running;
    } finally {
      if (this.syncing === running) this.syncing = undefined;
    }
    return true;
  }

  close(): void {
    closeSync(this.fd);
  }
}

function writeAll(fd: number, bytes: Buffer, position: number): void {
  let done = 0;
  while (done < bytes.length) {
    const wrote = writeSync(fd, bytes, done, bytes.length - done, position + done);
    assert.ok(wrote > 0, 'pwrite makes progress');
    done += wrote;
  }
}
