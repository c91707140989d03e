/**
 * Writing received WAL into a timeline's segment files, durably: the segment being filled is `NAME.partial`,
 * pre-allocated to the full segment size (so that a torn or unwritten tail reads as zeros and the file's size never
 * changes under an fdatasync), written at the WAL's own offsets, and renamed to `NAME` once complete and durable.
 *
 * Pre-allocation is `sparse` by default (ftruncate to the segment size) rather than PostgreSQL's zero-fill
 * (xlog.c XLogFileInitInternal, pg_receivewal): zero-filling writes every segment twice, and on this project's
 * reference VM (ext4, ~630 MB/s disk) that capped sustained ingest at ~300-320 MB/s against ~870-1230 MB/s sparse,
 * with the same fdatasync latency for small commits (0.2 ms median; rechecked under load on 2026-12-06 through live
 * ingest at 100 commits/s, the two modes interleaved: fdatasync p50 1.03 vs 1.08 ms, flush p50 1.33 vs 1.32 ms, the
 * same as a cascading PostgreSQL standby's walreceiver on that disk). `zero` remains selectable.
 *
 * Writes stay on node:fs: a C comparison on the same VM (1 GiB in 128 KiB writes, a datasync per 4 MiB) ran
 * pwrite+fdatasync at 1.43 GB/s and io_uring WRITE+FSYNC(DATASYNC) at 1.32-1.44 GB/s, and this writer alone
 * sustains ~2 GB/s into the page cache: ingest is bound by the upstream and the disk, not by the write syscalls.
 *
 * Durability is a group commit: `write` copies bytes into the page cache at once (pwrite on the calling thread —
 * ~40 µs per 128 KiB, cheaper than a thread-pool round trip); `flush` makes everything written before it started
 * durable with ONE fdatasync per dirty file, however many messages that covers. The caller starts a flush whenever
 * none is running, so an idle stream pays one fsync per message (lowest latency) and a busy one pays one fsync per
 * batch (highest throughput). What `flush` resolves with is the only position anyone may publish.
 *
 * Page checksums: as pages fill, their CRC-32C (computed from the received bytes, not read back) is appended to the
 * segment's sidecar (page-checksums.ts). A completed segment's sidecar is fsynced with the segment by the flush that
 * completes it, before its rename and before any position past it is published (recovery does not revisit segments
 * before the control file's flush LSN). The sidecar of the segment being filled is NOT fsynced by the flushes that
 * publish its pages: readers see it in the page cache, and after a crash recovery rebuilds it from the durable
 * segment bytes (recovery.ts rebuilds every sidecar from the segment holding the control file's flush LSN on),
 * while each fsync that grew the file cost the commit it rode with a journal commit (~1 commit in 55 at 150-byte
 * commits: above the 1 % that sets a p99). It is fsynced off the commit path instead, by `syncOpenSidecar` before
 * each control-file write (ingest/follower.ts), so pages up to the control file's flush LSN keep durable entries
 * even before recovery has run, and by `close`. The page being filled has no entry until it is full; the writer
 * keeps its bytes (one 8 KiB page) so the send path can check a prefix of it (`tailPagePrefixCrc`), and `close`
 * records it as it stands (bytes past the end are zeros on disk).
 *
 * It knows nothing of the protocol or of who publishes; recovery (the CRC walk) decides where writing resumes.
 */
import assert from 'node:assert/strict';
import { closeSync, fdatasync, fstatSync, fsync, ftruncateSync, openSync, readSync, renameSync, writeSync, constants as fsConstants } from 'node:fs';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { WalcastError } from '../errors.js';
import { failpoint } from '../failpoints.js';
import { WAL_PAGE_BYTES, assertLsn, formatLsn, type Lsn } from '../lsn.js';
import { CRC32C_INITIAL, crc32c, crc32cFinish, crc32cUpdate } from './crc32c.js';
import { SidecarAppender, sidecarPathFor } from './page-checksums.js';
import { PARTIAL_SUFFIX, assertSegmentSize, offsetInSegment, segmentFileName, segmentOf, segmentStartLsn } from './segment-name.js';

/** Zero-fill is written in pieces of this size: big enough to be cheap, small enough not to hold a big buffer. */
export const ZERO_FILL_CHUNK_BYTES = 1024 * 1024;
/** Completed segments waiting for their fdatasync + rename; one batch rarely spans more than two (128 KiB chunks). */
export const PENDING_COMPLETED_SEGMENTS_MAX = 64;

const fdatasyncAsync = promisify(fdatasync);
const fsyncAsync = promisify(fsync);
const ZERO_CHUNK = Buffer.alloc(ZERO_FILL_CHUNK_BYTES);

export interface WalWriterOptions {
  readonly dir: string;
  readonly pgTimelineId: number;
  readonly segmentBytes: number;
  /** Where writing resumes: recovery guarantees every byte before it is valid and every byte after it is zero. */
  readonly startLsn: Lsn;
  /** How a new segment file is pre-allocated (see the module comment); default `sparse`. */
  readonly preallocation?: Preallocation;
}

export type Preallocation = 'sparse' | 'zero';

interface OpenSegment {
  readonly segno: bigint;
  readonly fd: number;
  readonly partialPath: string;
  readonly finalPath: string;
  readonly sidecar: SidecarAppender;
}

export interface WalWriterStats {
  /** fdatasyncs of segment files. */
  fsyncCount: number;
  /** fdatasyncs of checksum sidecars: a completed segment's by its flush, the open one's by syncOpenSidecar and close. */
  sidecarSyncCount: number;
  bytesWritten: number;
  segmentsCompleted: number;
}

export class WalWriter {
  readonly dir: string;
  readonly pgTimelineId: number;
  readonly segmentBytes: number;
  readonly preallocation: Preallocation;
  private writtenLsnValue: Lsn;
  private durableLsnValue: Lsn;
  private current: OpenSegment | undefined;
  /** Completed, not yet durable nor renamed; oldest first. */
  private completed: OpenSegment[] = [];
  private currentDirty = false;
  /** A file was created since the last flush: the directory entry needs an fsync too. */
  private directoryDirty = false;
  private flushing: Promise<Lsn> | undefined;
  private closed = false;
  /** The page being filled: its first LSN, its bytes so far (zeros after), and how many there are. */
  private tailPageLsn: Lsn;
  private readonly tailPage = Buffer.alloc(WAL_PAGE_BYTES);
  private tailPageFill = 0;
  /**
   * The CRC-32C state of tailPage[0, tailPageFill), kept as bytes arrive: the send path asks for the prefix checksum
   * of the page being filled at every publish, and that prefix is usually everything written (a whole prefix of up
   * to 8 KiB checksummed per commit before its first replica send, now only the commit's own bytes, once).
   */
  private tailPageCrcState = CRC32C_INITIAL;
  readonly stats: WalWriterStats = { fsyncCount: 0, sidecarSyncCount: 0, bytesWritten: 0, segmentsCompleted: 0 };

  constructor(options: WalWriterOptions) {
    assertSegmentSize(options.segmentBytes);
    assertLsn(options.startLsn);
    this.dir = options.dir;
    this.pgTimelineId = options.pgTimelineId;
    this.segmentBytes = options.segmentBytes;
    this.preallocation = options.preallocation ?? 'sparse';
    this.writtenLsnValue = options.startLsn;
    this.durableLsnValue = options.startLsn;
    this.tailPageLsn = options.startLsn - (options.startLsn % BigInt(WAL_PAGE_BYTES));
  }

  /** Received: in the page cache, maybe not durable. */
  get writtenLsn(): Lsn {
    return this.writtenLsnValue;
  }

  /** Durable: covered by a completed flush. */
  get durableLsn(): Lsn {
    return this.durableLsnValue;
  }

  isFlushing(): boolean {
    return this.flushing !== undefined;
  }

  /** Appends WAL that starts exactly at the written position (contiguity is the caller's contract with the upstream). */
  write(dataStart: Lsn, data: Buffer): void {
    assert.ok(!this.closed, 'write after close');
    assert.equal(dataStart, this.writtenLsnValue, 'WAL is written contiguously');
    let offset = 0;
    while (offset < data.length) {
      const lsn = this.writtenLsnValue;
      const segment = this.segmentFor(lsn);
      const fileOffset = offsetInSegment(lsn, this.segmentBytes);
      const bytes = Math.min(data.length - offset, this.segmentBytes - fileOffset);
      writeFully(segment.fd, data, offset, bytes, fileOffset, segment.partialPath);
      this.recordPages(segment, data, offset, fileOffset, bytes);
      this.currentDirty = true;
      offset += bytes;
      this.writtenLsnValue = lsn + BigInt(bytes);
      this.stats.bytesWritten += bytes;
      if (fileOffset + bytes === this.segmentBytes) this.completeCurrent();
    }
    assert.equal(this.writtenLsnValue, dataStart + BigInt(data.length));
  }

  /**
   * The CRC-32C of the first `prefixBytes` bytes of the page starting at `pageLsn`, when that is the page being
   * filled and holds that many bytes; undefined otherwise (then the page is full and its sidecar entry counts).
   */
  tailPagePrefixCrc(pageLsn: Lsn, prefixBytes: number): number | undefined {
    assert.ok(prefixBytes > 0 && prefixBytes <= WAL_PAGE_BYTES, 'a prefix of one page');
    if (pageLsn !== this.tailPageLsn || prefixBytes > this.tailPageFill) return undefined;
    if (prefixBytes === this.tailPageFill) return crc32cFinish(this.tailPageCrcState);
    return crc32c(this.tailPage, 0, prefixBytes);
  }

  /** Checksums every page this write completed (into the sidecar) and keeps the bytes of the page left partial. */
  private recordPages(segment: OpenSegment, data: Buffer, dataOffset: number, fileOffset: number, bytes: number): void {
    const completed: number[] = [];
    const firstPage = Math.floor(fileOffset / WAL_PAGE_BYTES);
    let position = fileOffset;
    while (position < fileOffset + bytes) {
      const inPage = position % WAL_PAGE_BYTES;
      const take = Math.min(WAL_PAGE_BYTES - inPage, fileOffset + bytes - position);
      const source = dataOffset + (position - fileOffset);
      assert.equal(inPage, this.tailPageFill, 'pages fill contiguously');
      if (inPage === 0 && take === WAL_PAGE_BYTES) {
        completed.push(crc32c(data, source, source + WAL_PAGE_BYTES));
      } else {
        data.copy(this.tailPage, inPage, source, source + take);
        this.tailPageCrcState = crc32cUpdate(this.tailPageCrcState, data, source, source + take);
        this.tailPageFill += take;
        if (this.tailPageFill === WAL_PAGE_BYTES) completed.push(crc32cFinish(this.tailPageCrcState));
      }
      position += take;
      if (position % WAL_PAGE_BYTES === 0) this.startNextTailPage();
    }
    segment.sidecar.append(firstPage, completed);
  }

  private startNextTailPage(): void {
    // Pages written whole never touch the buffer, so it only needs clearing after a partial one.
    if (this.tailPageFill > 0) this.tailPage.fill(0);
    this.tailPageFill = 0;
    this.tailPageCrcState = CRC32C_INITIAL;
    this.tailPageLsn += BigInt(WAL_PAGE_BYTES);
  }

  /**
   * Makes everything written so far durable; resolves with the new durable LSN. Concurrent calls share the
   * flush in progress and then run one more if more was written meanwhile.
   */
  async flush(): Promise<Lsn> {
    while (this.flushing !== undefined) await this.flushing;
    if (this.writtenLsnValue === this.durableLsnValue) return this.durableLsnValue;
    // Cleared in this call's own continuation, the first to run when the flush settles (its await was registered
    // first), so callers waiting above see it gone. A `.finally` on the flush put two more microtask turns and two
    // promises between the fdatasync's completion and every commit's publish.
    const flushing = this.flushOnce();
    this.flushing = flushing;
    try {
      return await flushing;
    } finally {
      if (this.flushing === flushing) this.flushing = undefined;
    }
  }

  private async flushOnce(): Promise<Lsn> {
    const target = this.writtenLsnValue;
    const completed = this.completed;
    this.completed = [];
    const current = this.currentDirty ? this.current : undefined;
    this.currentDirty = false;
    const directoryDirty = this.directoryDirty || completed.length > 0;
    this.directoryDirty = false;
    failpoint('wal-after-write');
    if (completed.length === 0) {
      // A commit's flush: the open segment alone, awaited directly (no Promise.all of Promise.alls between the
      // fdatasync's completion and the publish).
      if (current !== undefined) {
        await syncFile(current);
        this.stats.fsyncCount++;
      }
    } else {
      const syncs = completed.map((segment) => syncFile(segment));
      if (current !== undefined) syncs.push(syncFile(current));
      // Completed segments' only: the open segment's is synced off the commit path (syncOpenSidecar, module comment).
      const sidecarSyncs = completed.map((segment) => syncSidecar(segment));
      const [, sidecarsSynced] = await Promise.all([Promise.all(syncs), Promise.all(sidecarSyncs)]);
      this.stats.fsyncCount += syncs.length;
      this.stats.sidecarSyncCount += sidecarsSynced.filter((synced) => synced).length;
    }
    for (const segment of completed) {
      renameSync(segment.partialPath, segment.finalPath);
      closeSync(segment.fd);
      segment.sidecar.close();
      this.stats.segmentsCompleted++;
    }
    if (directoryDirty) await syncDirectory(this.dir);
    failpoint('wal-after-fsync');
    assert.ok(target >= this.durableLsnValue, 'the durable position only moves forward');
    this.durableLsnValue = target;
    return target;
  }

  /**
   * Makes the entries of the open segment's sidecar appended so far durable (flushes leave them to this; see the
   * module comment). Waits for a sync of it already running. The caller runs it before recording a flushed position.
   */
  async syncOpenSidecar(): Promise<void> {
    const current = this.current;
    if (current === undefined || this.closed) return;
    if (await syncSidecar(current)) this.stats.sidecarSyncCount++;
  }

  /** Flushes what is written, then closes every file. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.flush();
    this.closed = true;
    if (this.current !== undefined) {
      this.recordPartialPage(this.current);
      if (await syncSidecar(this.current)) this.stats.sidecarSyncCount++;
      closeSync(this.current.fd);
      this.current.sidecar.close();
    }
    this.current = undefined;
    assert.equal(this.completed.length, 0, 'a flush renamed every completed segment');
  }

  /**
   * On close, the page left partial gets its entry as it stands: with no writer its bytes no longer change (the
   * rest is zeros on disk), and a writer that resumes cuts the entry off again (SidecarAppender).
   */
  private recordPartialPage(segment: OpenSegment): void {
    if (this.tailPageFill === 0) return;
    segment.sidecar.append(Math.floor(offsetInSegment(this.tailPageLsn, this.segmentBytes) / WAL_PAGE_BYTES), [crc32c(this.tailPage)]);
  }

  /** Closes the files without flushing: for a failed writer whose unflushed bytes recovery will judge. */
  abandon(): void {
    if (this.closed) return;
    this.closed = true;
    for (const segment of [...this.completed, ...(this.current === undefined ? [] : [this.current])]) {
      closeSync(segment.fd);
      segment.sidecar.close();
    }
    this.completed = [];
    this.current = undefined;
  }

  private segmentFor(lsn: Lsn): OpenSegment {
    const segno = segmentOf(lsn, this.segmentBytes);
    if (this.current?.segno === segno) return this.current;
    assert.equal(this.current, undefined, 'the previous segment was completed before the next one opens');
    this.current = this.openSegment(segno);
    return this.current;
  }

  private completeCurrent(): void {
    const segment = this.current;
    assert.ok(segment !== undefined, 'a segment is open');
    assert.equal(this.writtenLsnValue, segmentStartLsn(segment.segno + 1n, this.segmentBytes), 'a segment completes at its end');
    assert.ok(this.completed.length < PENDING_COMPLETED_SEGMENTS_MAX, 'too many completed segments await a flush');
    this.completed.push(segment);
    this.current = undefined;
    // The completed file is in `completed` now; it is synced by the next flush whether or not `current` is dirty.
    this.currentDirty = false;
  }

  /** Opens NAME.partial for writing, creating and pre-allocating it when absent or short. */
  private openSegment(segno: bigint): OpenSegment {
    const name = segmentFileName(this.pgTimelineId, segno, this.segmentBytes);
    const partialPath = join(this.dir, name + PARTIAL_SUFFIX);
    const finalPath = join(this.dir, name);
    let fd: number;
    try {
      fd = openSync(partialPath, fsConstants.O_RDWR | fsConstants.O_CREAT, 0o600);
    } catch (cause) {
      throw ioError(`cannot open ${partialPath}`, cause);
    }
    const size = fstatSync(fd).size;
    if (size < this.segmentBytes) {
      if (this.preallocation === 'zero') zeroFill(fd, size, this.segmentBytes, partialPath);
      else extendSparse(fd, this.segmentBytes, partialPath);
      this.directoryDirty = true;
    }
    const resumeOffset = segmentOf(this.writtenLsnValue, this.segmentBytes) === segno ? offsetInSegment(this.writtenLsnValue, this.segmentBytes) : 0;
    const sidecar = new SidecarAppender(sidecarPathFor(this.dir, name), fd, Math.floor(resumeOffset / WAL_PAGE_BYTES));
    this.loadTailPage(fd, resumeOffset);
    return { segno, fd, partialPath, finalPath, sidecar };
  }

  /** Resuming inside a page: its stored prefix (validated by recovery) is the start of the page being filled. */
  private loadTailPage(fd: number, resumeOffset: number): void {
    const inPage = resumeOffset % WAL_PAGE_BYTES;
    this.tailPage.fill(0);
    this.tailPageFill = inPage;
    this.tailPageCrcState = CRC32C_INITIAL;
    if (inPage === 0) return;
    const got = readSync(fd, this.tailPage, 0, inPage, resumeOffset - inPage);
    assert.equal(got, inPage, 'the stored prefix of the page being resumed is readable');
    this.tailPageCrcState = crc32cUpdate(CRC32C_INITIAL, this.tailPage, 0, inPage);
  }
}

function writeFully(fd: number, data: Buffer, offset: number, bytes: number, fileOffset: number, path: string): void {
  let done = 0;
  while (done < bytes) {
    let wrote: number;
    try {
      wrote = writeSync(fd, data, offset + done, bytes - done, fileOffset + done);
    } catch (cause) {
      throw ioError(`cannot write ${bytes} bytes at offset ${fileOffset} of ${path}`, cause);
    }
    assert.ok(wrote > 0, 'pwrite makes progress');
    done += wrote;
  }
}

/** Writes zeros over [from, to) of a file. Used to pre-allocate a segment and to erase an invalid tail. */
export function zeroFill(fd: number, from: number, to: number, path: string): void {
  assert.ok(from >= 0 && from <= to, 'zero-fill range is ordered');
  for (let position = from; position < to; position += ZERO_FILL_CHUNK_BYTES) {
    writeFully(fd, ZERO_CHUNK, 0, Math.min(ZERO_FILL_CHUNK_BYTES, to - position), position, path);
  }
}

/** Sets the file's size; the new range is a hole that reads as zeros (POSIX ftruncate). */
function extendSparse(fd: number, bytes: number, path: string): void {
  try {
    ftruncateSync(fd, bytes);
  } catch (cause) {
    throw ioError(`cannot size ${path} to ${bytes} bytes`, cause);
  }
}

/**
 * Makes [from, end of file) read as zeros without writing them: cut the file at `from` (the kernel zeroes the rest of
 * that block) and grow it back to `bytes`. Used by recovery to erase an invalid tail.
 */
export function eraseFrom(fd: number, from: number, bytes: number, path: string): void {
  assert.ok(from >= 0 && from <= bytes, 'erase range is inside the file');
  try {
    ftruncateSync(fd, from);
  } catch (cause) {
    throw ioError(`cannot truncate ${path} at ${from}`, cause);
  }
  extendSparse(fd, bytes, path);
}

/** True when it ran an fdatasync (false: nothing appended since the last one started, which it waited for). */
async function syncSidecar(segment: OpenSegment): Promise<boolean> {
  try {
    return await segment.sidecar.sync();
  } catch (cause) {
    throw ioError(`fdatasync of ${segment.sidecar.path} failed`, cause);
  }
}

async function syncFile(segment: OpenSegment): Promise<void> {
  try {
    await fdatasyncAsync(segment.fd);
  } catch (cause) {
    // PostgreSQL PANICs on a failed fsync (the kernel may have dropped the dirty pages); so does ingest, by failing.
    throw ioError(`fdatasync of ${segment.partialPath} failed`, cause);
  }
}

/** fsync of a directory makes creations and renames in it durable (POSIX leaves them volatile until then). */
export async function syncDirectory(dir: string): Promise<void> {
  let fd: number;
  try {
    fd = openSync(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  } catch (cause) {
    throw ioError(`cannot open directory ${dir}`, cause);
  }
  try {
    await fsyncAsync(fd);
  } catch (cause) {
    throw ioError(`fsync of directory ${dir} failed`, cause);
  } finally {
    closeSync(fd);
  }
}

function ioError(message: string, cause: unknown): WalcastError {
  const errno = (cause as NodeJS.ErrnoException | undefined)?.code;
  return new WalcastError('WALCAST_ERR_WAL_WRITE', errno === undefined ? message : `${message}: ${errno}`, { cause });
}

/** For log lines: "0/3000000 (segment 000000010000000000000003)". */
export function describeWritePosition(writer: WalWriter): string {
  return `${formatLsn(writer.writtenLsn)} (segment ${segmentFileName(writer.pgTimelineId, segmentOf(writer.writtenLsn, writer.segmentBytes), writer.segmentBytes)})`;
}
