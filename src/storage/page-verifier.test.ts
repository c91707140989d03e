/**
 * The page verifier on real files written by the real WAL writer: full pages against the sidecar, the page being
 * filled against the writer's copy, one checksum per page however many replicas ask (one after another or at once),
 * corruption refused with the verified prefix, logged and counted once, quarantined until the page verifies again,
 * pages nobody recorded, and a second catch-up over 100 segments that checksums nothing again.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readSync, renameSync, rmdirSync, rmSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { pino } from 'pino';
import type { WalChunk } from './wal-chunk.js';
import { WAL_PAGE_BYTES } from '../lsn.js';
import { crc32c } from './crc32c.js';
import { sidecarPathFor, writeSidecarFromSegment } from './page-checksums.js';
import { PageVerifier, WalCorruptionError, type PageChecksummer, type VerifyContext } from './page-verifier.js';
import { segmentFileName } from './segment-name.js';
import { WalWriter } from './wal-writer.js';

const SEGMENT_BYTES = 1024 * 1024;
const SEGMENT = '000000010000000000000000';
let dir = '';
let fd = -1;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'walcast-verifier-'));
});
afterEach(() => {
  if (fd >= 0) closeSync(fd);
  fd = -1;
  rmSync(dir, { recursive: true, force: true });
});

/** Reads and checksums, counting the pages it checksummed (what fan-out must not multiply). */
class CountingChecksummer implements PageChecksummer {
  pages = 0;
  async checksumPages(chunk: WalChunk, pageBytes: number, out: Uint32Array): Promise<void> {
    const bytes = Buffer.alloc(chunk.byteCount);
    readSync(chunk.file.fd, bytes, 0, chunk.byteCount, chunk.fileOffset);
    for (let offset = 0, index = 0; offset < chunk.byteCount; offset += pageBytes, index++) {
      out[index] = crc32c(bytes, offset, Math.min(offset + pageBytes, chunk.byteCount));
      this.pages++;
    }
  }
}

function captureLog(): { context: (checksummer: PageChecksummer, tail?: VerifyContext['tail']) => VerifyContext; lines: { level: number; msg: string }[] } {
  const lines: { level: number; msg: string }[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line) as { level: number; msg: string }) });
  return { lines, context: (checksummer, tail) => ({ checksummer, tail, log }) };
}

async function writeWal(bytes: number): Promise<{ writer: WalWriter; data: Buffer }> {
  const writer = new WalWriter({ dir, pgTimelineId: 1, segmentBytes: SEGMENT_BYTES, startLsn: 0n });
  const data = randomBytes(bytes);
  writer.write(0n, data);
  await writer.flush();
  fd = openSync(join(dir, `${SEGMENT}.partial`), 'r+');
  return { writer, data };
}

function chunkOf(fileOffset: number, byteCount: number): WalChunk {
  return { file: { fd, path: join(dir, `${SEGMENT}.partial`), identity: 'test-file' }, fileOffset, byteCount };
}

const PAGE_ERROR_LEVEL = 50;

/**
 * Damages one byte of the test segment on disk by flipping its bits: writing a fixed value instead left the random WAL
 * intact whenever it held that value there (1 run in 256), and the test expecting a refusal failed.
 */
function flipByte(fileOffset: number): void {
  const byte = Buffer.alloc(1);
  readSync(fd, byte, 0, 1, fileOffset);
  byte[0]! ^= 0xff;
  writeSync(fd, byte, 0, 1, fileOffset);
}

test('full pages verify once for any number of replicas; the partial page against the writer', async () => {
  const { writer } = await writeWal(20 * WAL_PAGE_BYTES + 3000);
  const verifier = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  const checksummer = new CountingChecksummer();
  const { context, lines } = captureLog();
  for (let replica = 0; replica < 1000; replica++) await verifier.verify(chunkOf(100, 16 * WAL_PAGE_BYTES), 100n, context(checksummer, writer));
  assert.equal(checksummer.pages, 17, 'pages 0..16, each checksummed once for 1,000 replicas');
  const tailChunk = chunkOf(20 * WAL_PAGE_BYTES, 3000);
  for (let replica = 0; replica < 1000; replica++) await verifier.verify(tailChunk, BigInt(20 * WAL_PAGE_BYTES), context(checksummer, writer));
  assert.equal(checksummer.pages, 18, 'the tail prefix is checked once per length');
  assert.equal(lines.length, 0, 'nothing to report');
  await writer.close();
});

test('the page being filled is checked against the writer without rereading the sidecar; a page it completed is read from it', async () => {
  const { writer, data } = await writeWal(20 * WAL_PAGE_BYTES + 3000);
  const verifier = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  const checksummer = new CountingChecksummer();
  const { context, lines } = captureLog();
  await verifier.verify(chunkOf(19 * WAL_PAGE_BYTES, WAL_PAGE_BYTES + 3000), BigInt(19 * WAL_PAGE_BYTES), context(checksummer, writer));
  // Every live stream verifies the growing tail at each publish: the sidecar must not be read for it. A directory in
  // its place makes any read fail, so a reread would reject here.
  const sidecar = sidecarPathFor(dir, SEGMENT);
  renameSync(sidecar, `${sidecar}.away`);
  mkdirSync(sidecar);
  const more = randomBytes(500);
  writer.write(BigInt(data.length), more);
  await writer.flush();
  for (let replica = 0; replica < 100; replica++) await verifier.verify(chunkOf(20 * WAL_PAGE_BYTES, 3500), BigInt(20 * WAL_PAGE_BYTES), context(checksummer, writer));
  assert.equal(checksummer.pages, 3, 'pages 19 and 20 once, then the longer tail prefix once');
  // Once the writer completes the page, the next chunk needs its sidecar entry: read, and a damaged copy refused.
  rmdirSync(sidecar);
  renameSync(`${sidecar}.away`, sidecar);
  writer.write(BigInt(data.length + more.length), randomBytes(WAL_PAGE_BYTES));
  await writer.flush();
  const pastTail = chunkOf(20 * WAL_PAGE_BYTES, WAL_PAGE_BYTES + 100);
  await verifier.verify(pastTail, BigInt(20 * WAL_PAGE_BYTES), context(checksummer, writer));
  const page20 = Buffer.alloc(WAL_PAGE_BYTES);
  readSync(fd, page20, 0, WAL_PAGE_BYTES, 20 * WAL_PAGE_BYTES);
  page20[4000]! ^= 0x01;
  writeSync(fd, page20, 0, WAL_PAGE_BYTES, 20 * WAL_PAGE_BYTES);
  const fresh = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  await assert.rejects(fresh.verify(pastTail, BigInt(20 * WAL_PAGE_BYTES), context(checksummer, writer)), WalCorruptionError);
  assert.equal(lines.filter((line) => line.level === PAGE_ERROR_LEVEL).length, 1, 'the damage is reported');
  await writer.close();
});

test('streams woken together share one check of the tail prefix; a damaged tail is refused to each of them', async () => {
  const { writer, data } = await writeWal(4 * WAL_PAGE_BYTES + 1000);
  const verifier = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  const checksummer = new CountingChecksummer();
  const { context, lines } = captureLog();
  // An earlier publish: the segment's state is known, so the next verifies start without any I/O of their own.
  await verifier.verify(chunkOf(4 * WAL_PAGE_BYTES, 500), BigInt(4 * WAL_PAGE_BYTES), context(checksummer, writer));
  // 100 streams at the same position, woken by one publish: concurrent, so none finished before the others asked.
  const tail = (): Promise<void> => verifier.verify(chunkOf(4 * WAL_PAGE_BYTES, 1000), BigInt(4 * WAL_PAGE_BYTES), context(checksummer, writer));
  await Promise.all(Array.from({ length: 100 }, tail));
  assert.equal(checksummer.pages, 2, 'one checksum of the longer tail prefix for 100 streams');
  // The next publish lands on a damaged file: every stream that asks is refused, with what did verify before the page.
  writer.write(BigInt(data.length), randomBytes(700));
  await writer.flush();
  const page = Buffer.alloc(1700);
  readSync(fd, page, 0, page.length, 4 * WAL_PAGE_BYTES);
  page[1500]! ^= 0x40;
  writeSync(fd, page, 0, page.length, 4 * WAL_PAGE_BYTES);
  const fromEarlier = verifier.verify(chunkOf(3 * WAL_PAGE_BYTES, WAL_PAGE_BYTES + 1700), BigInt(3 * WAL_PAGE_BYTES), context(checksummer, writer));
  const atTail = Array.from({ length: 20 }, () => verifier.verify(chunkOf(4 * WAL_PAGE_BYTES, 1700), BigInt(4 * WAL_PAGE_BYTES), context(checksummer, writer)));
  const results = await Promise.allSettled([fromEarlier, ...atTail]);
  const goodBytes = results.map((result) => (result.status === 'rejected' && result.reason instanceof WalCorruptionError ? result.reason.goodBytes : -1));
  assert.deepEqual(goodBytes, [WAL_PAGE_BYTES, ...atTail.map(() => 0)], 'each refused, each with its own verified prefix');
  assert.equal(lines.filter((line) => line.level === PAGE_ERROR_LEVEL).length, 1, 'logged once');
  await writer.close();
});

test('streams reaching the same recorded pages together share one check of each; a damaged one is refused to each of them', async () => {
  const { writer } = await writeWal(24 * WAL_PAGE_BYTES);
  await writer.close();
  const verifier = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  const checksummer = new CountingChecksummer();
  const { context, lines } = captureLog();
  // The segment's sidecar is read, so the concurrent verifies below start without any I/O of their own.
  await verifier.verify(chunkOf(0, WAL_PAGE_BYTES), 0n, context(checksummer));
  // 100 fanned-out streams at the same position, all asking before any check finished.
  const same = (): Promise<void> => verifier.verify(chunkOf(WAL_PAGE_BYTES, 16 * WAL_PAGE_BYTES), BigInt(WAL_PAGE_BYTES), context(checksummer));
  await Promise.all(Array.from({ length: 100 }, same));
  assert.equal(checksummer.pages, 17, 'pages 1..16 checksummed once for 100 concurrent streams');
  // Overlapping ranges, one of them damaged: each stream is refused with its own verified prefix, logged once.
  const bad = Buffer.alloc(WAL_PAGE_BYTES);
  readSync(fd, bad, 0, WAL_PAGE_BYTES, 20 * WAL_PAGE_BYTES);
  bad[99]! ^= 0x01;
  writeSync(fd, bad, 0, WAL_PAGE_BYTES, 20 * WAL_PAGE_BYTES);
  const starts = [17, 18, 18, 19, 17].map((page) => page * WAL_PAGE_BYTES);
  const results = await Promise.allSettled(starts.map((start) => verifier.verify(chunkOf(start, 22 * WAL_PAGE_BYTES - start), BigInt(start), context(checksummer))));
  const goodBytes = results.map((result) => (result.status === 'rejected' && result.reason instanceof WalCorruptionError ? result.reason.goodBytes : -1));
  assert.deepEqual(goodBytes, starts.map((start) => 20 * WAL_PAGE_BYTES - start), 'each refused at the damaged page');
  assert.equal(verifier.corruptionsDetected, 1);
  assert.equal(lines.filter((line) => line.level === PAGE_ERROR_LEVEL).length, 1, 'logged once');
});

test('a chunk whose file storage has started closing is refused as an I/O failure, never counted as damage', async () => {
  await writeWal(12 * WAL_PAGE_BYTES);
  const verifier = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  const { context } = captureLog();
  const refusesClosed: PageChecksummer = {
    checksumPages: (chunk) => Promise.reject(chunk.file.closed === true ? new Error('the file was closed') : new Error('unexpected')),
  };
  // A number nothing has open: the verifier must not fstat it to look for a truncation (it may name another file).
  const retired: WalChunk = { file: { fd: 1_000_000, path: join(dir, `${SEGMENT}.partial`), identity: 'test-file', closed: true }, fileOffset: 0, byteCount: 4 * WAL_PAGE_BYTES };
  await assert.rejects(verifier.verify(retired, 0n, context(refusesClosed)), (error: unknown) => !(error instanceof WalCorruptionError) && (error as Error).message === 'the file was closed');
  assert.equal(verifier.corruptionsDetected, 0);
  assert.equal(verifier.quarantinedPages, 0);
});

/** A checksummer that can answer synchronously too, as the native backend does. */
class SyncCountingChecksummer extends CountingChecksummer {
  checksumPagesNow(chunk: WalChunk, pageBytes: number, out: Uint32Array): void {
    const bytes = Buffer.alloc(chunk.byteCount);
    if (readSync(chunk.file.fd, bytes, 0, chunk.byteCount, chunk.fileOffset) < chunk.byteCount) throw new Error('short read');
    for (let offset = 0, index = 0; offset < chunk.byteCount; offset += pageBytes, index++) {
      out[index] = crc32c(bytes, offset, Math.min(offset + pageBytes, chunk.byteCount));
      this.pages++;
    }
  }
}

test('verifyNow checks recorded pages without waiting, and leaves everything else (and every failure) to verify', async () => {
  const { writer } = await writeWal(12 * WAL_PAGE_BYTES + 500);
  const verifier = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  const checksummer = new SyncCountingChecksummer();
  const { context, lines } = captureLog();
  assert.equal(verifier.verifyNow(chunkOf(0, WAL_PAGE_BYTES), 0n, context(checksummer, writer)), false, 'the sidecar is not read yet');
  assert.equal(checksummer.pages, 0);
  await verifier.verify(chunkOf(0, WAL_PAGE_BYTES), 0n, context(checksummer, writer));
  assert.equal(verifier.verifyNow(chunkOf(WAL_PAGE_BYTES + 10, 4 * WAL_PAGE_BYTES), BigInt(WAL_PAGE_BYTES + 10), context(checksummer, writer)), true);
  assert.equal(checksummer.pages, 1 + 5, 'pages 1..5 checksummed synchronously');
  assert.equal(verifier.verifyNow(chunkOf(2 * WAL_PAGE_BYTES, 2 * WAL_PAGE_BYTES), BigInt(2 * WAL_PAGE_BYTES), context(checksummer, writer)), true);
  assert.equal(checksummer.pages, 6, 'verified pages are not checksummed again');
  assert.equal(verifier.verifyNow(chunkOf(12 * WAL_PAGE_BYTES, 500), BigInt(12 * WAL_PAGE_BYTES), context(checksummer)), false, 'without the writer the live page is left to verify');
  assert.equal(verifier.verifyNow(chunkOf(12 * WAL_PAGE_BYTES, 500), BigInt(12 * WAL_PAGE_BYTES), context(checksummer, writer)), true, 'the live page is checked against the writer at once');
  assert.equal(verifier.verifyNow(chunkOf(0, 4 * WAL_PAGE_BYTES), 0n, context(new CountingChecksummer(), writer)), true, 'nothing left to check');
  assert.equal(verifier.verifyNow(chunkOf(6 * WAL_PAGE_BYTES, WAL_PAGE_BYTES), BigInt(6 * WAL_PAGE_BYTES), context(new CountingChecksummer(), writer)), false, 'a checksummer without checksumPagesNow');
  // A damaged page: verifyNow marks nothing and verify refuses it, logged and counted once.
  const bad = Buffer.alloc(WAL_PAGE_BYTES);
  readSync(fd, bad, 0, WAL_PAGE_BYTES, 8 * WAL_PAGE_BYTES);
  bad[5]! ^= 0x80;
  writeSync(fd, bad, 0, WAL_PAGE_BYTES, 8 * WAL_PAGE_BYTES);
  const damaged = chunkOf(7 * WAL_PAGE_BYTES, 3 * WAL_PAGE_BYTES);
  assert.equal(verifier.verifyNow(damaged, BigInt(7 * WAL_PAGE_BYTES), context(checksummer, writer)), false);
  assert.equal(verifier.corruptionsDetected, 0, 'verifyNow decides nothing about a mismatch');
  await assert.rejects(verifier.verify(damaged, BigInt(7 * WAL_PAGE_BYTES), context(checksummer, writer)), (error: unknown) => error instanceof WalCorruptionError && error.goodBytes === WAL_PAGE_BYTES);
  assert.equal(verifier.verifyNow(damaged, BigInt(7 * WAL_PAGE_BYTES), context(checksummer, writer)), false, 'still refused');
  assert.equal(verifier.corruptionsDetected, 1);
  assert.equal(lines.filter((line) => line.level === PAGE_ERROR_LEVEL).length, 1);
  await writer.close();
});

test('verifyNow checks the live writer\'s partial page against the writer without waiting, as each publish grows it; a damaged one is left to verify', async () => {
  const { writer, data } = await writeWal(3 * WAL_PAGE_BYTES + 500);
  const verifier = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  const checksummer = new SyncCountingChecksummer();
  const { context, lines } = captureLog();
  await verifier.verify(chunkOf(0, WAL_PAGE_BYTES), 0n, context(checksummer, writer));
  const pagesBefore = checksummer.pages;
  assert.equal(verifier.verifyNow(chunkOf(2 * WAL_PAGE_BYTES, WAL_PAGE_BYTES + 500), BigInt(2 * WAL_PAGE_BYTES), context(checksummer, writer)), true, 'a recorded page and the live one');
  assert.equal(checksummer.pages, pagesBefore + 2, 'page 2 against the sidecar, the live prefix against the writer');
  // The next publish: the page holds more, and only the longer prefix is checked again.
  let written = data.length;
  const publish = async (bytes: number): Promise<void> => {
    writer.write(BigInt(written), randomBytes(bytes));
    await writer.flush();
    written += bytes;
  };
  await publish(300);
  const live = (): WalChunk => chunkOf(3 * WAL_PAGE_BYTES + 500, written - (3 * WAL_PAGE_BYTES + 500));
  assert.equal(verifier.verifyNow(live(), BigInt(3 * WAL_PAGE_BYTES + 500), context(checksummer)), false, 'without the writer the longer prefix is verify\'s');
  assert.equal(verifier.verifyNow(live(), BigInt(3 * WAL_PAGE_BYTES + 500), context(checksummer, writer)), true);
  assert.equal(checksummer.pages, pagesBefore + 3);
  // Damage on disk under the live page: verifyNow decides nothing, verify refuses it and reports it once.
  await publish(200);
  flipByte(3 * WAL_PAGE_BYTES + 20);
  assert.equal(verifier.verifyNow(live(), BigInt(3 * WAL_PAGE_BYTES + 500), context(checksummer, writer)), false, 'a mismatch is verify\'s');
  assert.equal(verifier.corruptionsDetected, 0);
  await assert.rejects(verifier.verify(live(), BigInt(3 * WAL_PAGE_BYTES + 500), context(checksummer, writer)), WalCorruptionError);
  assert.equal(verifier.corruptionsDetected, 1);
  assert.equal(lines.filter((line) => line.level === PAGE_ERROR_LEVEL).length, 1);
  writer.abandon();
});

test('a damaged page is refused with the verified prefix, logged and counted once, and served again once repaired', async () => {
  const { writer } = await writeWal(8 * WAL_PAGE_BYTES);
  await writer.close();
  const verifier = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  const { context, lines } = captureLog();
  const good = Buffer.alloc(WAL_PAGE_BYTES);
  readSync(fd, good, 0, WAL_PAGE_BYTES, 5 * WAL_PAGE_BYTES);
  const bad = Buffer.from(good);
  bad[700]! ^= 0x10;
  writeSync(fd, bad, 0, WAL_PAGE_BYTES, 5 * WAL_PAGE_BYTES);
  for (let attempt = 0; attempt < 3; attempt++) {
    await assert.rejects(verifier.verify(chunkOf(2 * WAL_PAGE_BYTES + 10, 6 * WAL_PAGE_BYTES - 10), BigInt(2 * WAL_PAGE_BYTES + 10), context(new CountingChecksummer())), (error: unknown) => {
      assert.ok(error instanceof WalCorruptionError);
      assert.equal(error.sqlState, 'XX001');
      assert.equal(error.goodBytes, 3 * WAL_PAGE_BYTES - 10, 'pages 2..4 verified before the bad one');
      assert.equal(error.fileOffset, 5 * WAL_PAGE_BYTES);
      assert.match(error.message, new RegExp(`byte offset ${5 * WAL_PAGE_BYTES} of \\S*${SEGMENT}`));
      return true;
    });
  }
  assert.equal(verifier.corruptionsDetected, 1);
  assert.equal(verifier.quarantinedPages, 1);
  assert.equal(lines.filter((line) => line.level === PAGE_ERROR_LEVEL).length, 1, 'one error line, not one per refusal');
  await assert.rejects(verifier.verify(chunkOf(5 * WAL_PAGE_BYTES + 100, 50), BigInt(5 * WAL_PAGE_BYTES + 100), context(new CountingChecksummer())), WalCorruptionError, 'any range of the page is refused');
  writeSync(fd, good, 0, WAL_PAGE_BYTES, 5 * WAL_PAGE_BYTES);
  await verifier.verify(chunkOf(0, 8 * WAL_PAGE_BYTES), 0n, context(new CountingChecksummer()));
  assert.equal(verifier.quarantinedPages, 0, 'repaired');
  assert.ok(lines.some((line) => /verifies again/.test(line.msg)));
});

test('a damaged partial page of the live writer is refused', async () => {
  const { writer } = await writeWal(3 * WAL_PAGE_BYTES + 500);
  const verifier = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  const { context } = captureLog();
  flipByte(3 * WAL_PAGE_BYTES + 20);
  await assert.rejects(verifier.verify(chunkOf(3 * WAL_PAGE_BYTES, 500), BigInt(3 * WAL_PAGE_BYTES), context(new CountingChecksummer(), writer)), WalCorruptionError);
  writer.abandon();
});

test('pages without a recorded checksum (segments from before sidecars) are sent with one warning per segment', async () => {
  const { writer } = await writeWal(4 * WAL_PAGE_BYTES);
  await writer.close();
  unlinkSync(join(dir, `${SEGMENT}.crc`));
  const verifier = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  const { context, lines } = captureLog();
  await verifier.verify(chunkOf(0, 2 * WAL_PAGE_BYTES), 0n, context(new CountingChecksummer()));
  await verifier.verify(chunkOf(2 * WAL_PAGE_BYTES, 2 * WAL_PAGE_BYTES), BigInt(2 * WAL_PAGE_BYTES), context(new CountingChecksummer()));
  assert.equal(lines.filter((line) => /without a recorded checksum/.test(line.msg)).length, 1);
});

test('pages without a recorded checksum are settled: other streams do not read the sidecar for them again', async () => {
  const { writer } = await writeWal(4 * WAL_PAGE_BYTES);
  await writer.close();
  unlinkSync(join(dir, `${SEGMENT}.crc`));
  const verifier = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  const checksummer = new CountingChecksummer();
  const { context, lines } = captureLog();
  await verifier.verify(chunkOf(0, 2 * WAL_PAGE_BYTES), 0n, context(checksummer));
  // A directory in the sidecar's place makes any read of it fail: a reread would reject from here on.
  const sidecar = sidecarPathFor(dir, SEGMENT);
  mkdirSync(sidecar);
  for (let replica = 0; replica < 100; replica++) await verifier.verify(chunkOf(0, 2 * WAL_PAGE_BYTES), 0n, context(checksummer));
  assert.equal(checksummer.pages, 0, 'nothing to check them against');
  assert.equal(lines.filter((line) => /without a recorded checksum/.test(line.msg)).length, 1);
  // verifyNow now answers for them too, without a promise.
  assert.equal(verifier.verifyNow(chunkOf(0, 2 * WAL_PAGE_BYTES), 0n, context(checksummer)), true);
  rmdirSync(sidecar);
});

test('a complete segment (NAME) without a sidecar reads it once for the whole segment', async () => {
  // A complete segment without a sidecar, as one from before sidecars existed.
  const segmentPath = join(dir, SEGMENT);
  writeFileSync(segmentPath, randomBytes(SEGMENT_BYTES));
  fd = openSync(segmentPath, 'r');
  const verifier = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  const { context, lines } = captureLog();
  const chunkAt = (page: number): WalChunk => ({ file: { fd, path: segmentPath, identity: 'complete-file' }, fileOffset: page * WAL_PAGE_BYTES, byteCount: 16 * WAL_PAGE_BYTES });
  await verifier.verify(chunkAt(0), 0n, context(new CountingChecksummer()));
  const sidecar = sidecarPathFor(dir, SEGMENT);
  mkdirSync(sidecar);
  // Every later chunk of the segment, ending mid-page included: no reread (it would fail on the directory).
  for (let page = 16; page < SEGMENT_BYTES / WAL_PAGE_BYTES; page += 16) await verifier.verify(chunkAt(page), BigInt(page * WAL_PAGE_BYTES), context(new CountingChecksummer()));
  const midPage: WalChunk = { file: { fd, path: segmentPath, identity: 'complete-file' }, fileOffset: 0, byteCount: 100 };
  await verifier.verify(midPage, 0n, context(new CountingChecksummer()));
  assert.equal(lines.filter((line) => /without a recorded checksum/.test(line.msg)).length, 1, 'one warning for the segment');
  rmdirSync(sidecar);
});

test('a segment read from another directory (fetched back from object storage) is verified against the sidecar next to it', async () => {
  // The segment cache keeps fetched segments and their sidecars in its own directory; the timeline directory has
  // neither any more (retention removed them), so the sidecar must be looked up next to the file actually read.
  const cacheDir = join(dir, 'remote-cache');
  mkdirSync(cacheDir);
  const segmentPath = join(cacheDir, SEGMENT);
  writeFileSync(segmentPath, randomBytes(SEGMENT_BYTES));
  writeSidecarFromSegment(segmentPath, sidecarPathFor(cacheDir, SEGMENT), SEGMENT_BYTES / WAL_PAGE_BYTES);
  fd = openSync(segmentPath, 'r+');
  const chunk: WalChunk = { file: { fd, path: segmentPath, identity: 'cached-file' }, fileOffset: 0, byteCount: 16 * WAL_PAGE_BYTES };
  const checksummer = new CountingChecksummer();
  const { context, lines } = captureLog();
  await new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 }).verify(chunk, 0n, context(checksummer));
  assert.equal(checksummer.pages, 16, 'every page was checked');
  assert.deepEqual(lines, [], 'verified, not sent with an "unverifiable" warning');
  const page = Buffer.alloc(WAL_PAGE_BYTES);
  readSync(fd, page, 0, WAL_PAGE_BYTES, 3 * WAL_PAGE_BYTES);
  page[100]! ^= 0x01;
  writeSync(fd, page, 0, WAL_PAGE_BYTES, 3 * WAL_PAGE_BYTES);
  const fresh = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  await assert.rejects(fresh.verify(chunk, 0n, context(checksummer)), WalCorruptionError);
});

test('a catch-up over 100 segments, read again in order, checksums no page the second time (the bitmaps outlast a 1 GiB scan)', async () => {
  // Sequential readers meet the LRU at its worst: with room for fewer segments than one catch-up reads, each bitmap
  // is dropped just before the next reader of its range comes (the 1 GiB benchmark, 66 segments of 16 MiB, did that
  // with room for 64). Two pages per segment file are enough: the bound is on segments.
  const segmentCount = 100;
  const pages = 2;
  const files: { fd: number; path: string }[] = [];
  try {
    for (let segno = 0; segno < segmentCount; segno++) {
      const name = segmentFileName(1, BigInt(segno), SEGMENT_BYTES);
      const path = join(dir, name);
      writeFileSync(path, randomBytes(pages * WAL_PAGE_BYTES));
      writeSidecarFromSegment(path, sidecarPathFor(dir, name), pages);
      files.push({ fd: openSync(path, 'r'), path });
    }
    const verifier = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
    const checksummer = new CountingChecksummer();
    const { context, lines } = captureLog();
    const catchUp = async (): Promise<void> => {
      for (const [segno, file] of files.entries()) {
        const chunk: WalChunk = { file: { ...file, identity: file.path }, fileOffset: 0, byteCount: pages * WAL_PAGE_BYTES };
        await verifier.verify(chunk, BigInt(segno * SEGMENT_BYTES), context(checksummer));
      }
    };
    await catchUp();
    assert.equal(checksummer.pages, segmentCount * pages, 'the first catch-up checksums every page once');
    await catchUp();
    assert.equal(checksummer.pages, segmentCount * pages, 'the second one finds every page verified');
    assert.deepEqual(lines, []);
  } finally {
    for (const file of files) closeSync(file.fd);
  }
});

test('verifyNow leaves the live page to verify while a tail check is under way, and once the writer filled the page and moved on', async () => {
  const { writer, data } = await writeWal(3 * WAL_PAGE_BYTES + 500);
  const verifier = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  const checksummer = new SyncCountingChecksummer();
  const { context } = captureLog();
  await verifier.verify(chunkOf(0, WAL_PAGE_BYTES), 0n, context(checksummer, writer));
  const tail = chunkOf(3 * WAL_PAGE_BYTES, 500);
  // Another stream's check of the same prefix is under way: verifyNow does not check beside it, nor mark anything.
  const underWay = verifier.verify(tail, BigInt(3 * WAL_PAGE_BYTES), context(checksummer, writer));
  const pagesAtStart = checksummer.pages;
  assert.equal(verifier.verifyNow(tail, BigInt(3 * WAL_PAGE_BYTES), context(checksummer, writer)), false, 'a check under way is verify\'s');
  assert.equal(checksummer.pages, pagesAtStart, 'nothing checksummed beside it');
  await underWay;
  const pagesAfterCheck = checksummer.pages;
  assert.equal(verifier.verifyNow(tail, BigInt(3 * WAL_PAGE_BYTES), context(checksummer, writer)), true, 'the prefix verified by that check');
  assert.equal(checksummer.pages, pagesAfterCheck, 'and not checked again');
  // The writer fills page 3 and moves on: a longer prefix of it is no longer the writer's, and the sidecar as read has
  // no entry for it, so verifyNow leaves it to verify (which rereads the sidecar); then the entry answers at once.
  writer.write(BigInt(data.length), randomBytes(WAL_PAGE_BYTES));
  await writer.flush();
  const longer = chunkOf(3 * WAL_PAGE_BYTES, 1000);
  assert.equal(verifier.verifyNow(longer, BigInt(3 * WAL_PAGE_BYTES), context(checksummer, writer)), false, 'a writer page that moved on is verify\'s');
  await verifier.verify(longer, BigInt(3 * WAL_PAGE_BYTES), context(checksummer, writer));
  assert.equal(verifier.verifyNow(longer, BigInt(3 * WAL_PAGE_BYTES), context(checksummer, writer)), true, 'the page against its sidecar entry');
  // Damage in the filled page under the verified prefix: the sidecar entry refuses it (the old prefix does not pass it).
  flipByte(3 * WAL_PAGE_BYTES + 700);
  const fresh = new PageVerifier(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 });
  await fresh.verify(chunkOf(0, WAL_PAGE_BYTES), 0n, context(checksummer, writer));
  assert.equal(fresh.verifyNow(longer, BigInt(3 * WAL_PAGE_BYTES), context(checksummer, writer)), false);
  await assert.rejects(fresh.verify(longer, BigInt(3 * WAL_PAGE_BYTES), context(checksummer, writer)), WalCorruptionError);
  writer.abandon();
});
