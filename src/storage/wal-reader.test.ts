/** WalReader: chunks across segment boundaries, descriptor reuse and retirement, .partial renames, errors. */
import assert from 'node:assert/strict';
import { fstatSync } from 'node:fs';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { parseLsnOrThrow } from '../lsn.js';
import { segmentFileName } from './segment-name.js';
import { SegmentPins } from './segment-pins.js';
import { OpenSegments } from './open-segments.js';
import { ReaderClosedError, WalReader, startAheadError, type SegmentLayout } from './wal-reader.js';

const SEGMENT_BYTES = 1024 * 1024;
const FIRST_SEGNO = 4n;
const SEGMENT_COUNT = 4;
const layout: SegmentLayout = { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1, timelineStartLsn: FIRST_SEGNO * BigInt(SEGMENT_BYTES) };
let dir: string;

/** Segment i is filled with byte (i * 7 + offset / 8192) & 0xff, so every page is recognisable. */
function segmentContent(segno: bigint): Buffer {
  const bytes = Buffer.alloc(SEGMENT_BYTES);
  for (let page = 0; page < SEGMENT_BYTES / 8192; page++) bytes.fill((Number(segno) * 7 + page) & 0xff, page * 8192, (page + 1) * 8192);
  return bytes;
}

function nameOf(segno: bigint): string {
  return segmentFileName(1, segno, SEGMENT_BYTES);
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'walcast-reader-'));
  for (let index = 0; index < SEGMENT_COUNT; index++) {
    const segno = FIRST_SEGNO + BigInt(index);
    const last = index === SEGMENT_COUNT - 1;
    await writeFile(join(dir, nameOf(segno) + (last ? '.partial' : '')), segmentContent(segno));
  }
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function isOpen(fd: number): boolean {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

test('locate cuts at the segment end and reuses the open descriptor within a segment', async () => {
  const reader = new WalReader(dir, layout);
  const start = layout.timelineStartLsn + 1000n;
  const first = await reader.locate(start, start + 4096n);
  assert.deepEqual({ fileOffset: first.fileOffset, byteCount: first.byteCount }, { fileOffset: 1000, byteCount: 4096 });
  assert.equal(first.file.path, join(dir, nameOf(FIRST_SEGNO)));
  const second = await reader.locate(start + 4096n, start + 10n * BigInt(SEGMENT_BYTES));
  assert.equal(second.file.fd, first.file.fd);
  assert.equal(second.byteCount, SEGMENT_BYTES - 1000 - 4096, 'cut at the segment end');
  await reader.close();
  assert.equal(isOpen(first.file.fd), false, 'close() closes it');
});

test('the previous segment stays open one segment longer (in-flight sends), then is closed', async () => {
  const reader = new WalReader(dir, layout);
  const base = layout.timelineStartLsn;
  const segmentA = await reader.locate(base, base + 100n);
  const segmentB = await reader.locate(base + BigInt(SEGMENT_BYTES), base + BigInt(SEGMENT_BYTES) + 100n);
  assert.notEqual(segmentA.file.fd, segmentB.file.fd);
  assert.equal(isOpen(segmentA.file.fd), true, 'A still open after moving to B');
  const segmentC = await reader.locate(base + 2n * BigInt(SEGMENT_BYTES), base + 2n * BigInt(SEGMENT_BYTES) + 100n);
  assert.equal(isOpen(segmentB.file.fd), true, 'B still open after moving to C');
  assert.ok(segmentC.file.fd !== segmentA.file.fd || !isOpen(segmentA.file.fd));
  await reader.close();
  assert.equal(isOpen(segmentB.file.fd), false);
  assert.equal(isOpen(segmentC.file.fd), false);
});

test('readRange copies across segment boundaries, including the .partial one', async () => {
  const reader = new WalReader(dir, layout);
  const lsn = layout.timelineStartLsn + BigInt(SEGMENT_BYTES) * 2n + BigInt(SEGMENT_BYTES - 5000);
  const target = Buffer.alloc(20_000);
  assert.equal(await reader.readRange(lsn, target), target.length);
  const expected = Buffer.concat([segmentContent(FIRST_SEGNO + 2n).subarray(SEGMENT_BYTES - 5000), segmentContent(FIRST_SEGNO + 3n).subarray(0, 15_000)]);
  assert.ok(target.equals(expected));
  await reader.close();
});

test('a .partial renamed to its final name is still found', async () => {
  const segno = FIRST_SEGNO + 3n;
  await rename(join(dir, nameOf(segno) + '.partial'), join(dir, nameOf(segno)));
  const reader = new WalReader(dir, layout);
  const chunk = await reader.locate(segno * BigInt(SEGMENT_BYTES), segno * BigInt(SEGMENT_BYTES) + 10n);
  assert.equal(chunk.file.path, join(dir, nameOf(segno)));
  await reader.close();
  await rename(join(dir, nameOf(segno)), join(dir, nameOf(segno) + '.partial'));
});

test('before the timeline start or a missing segment: 58P01 "has already been removed"', async () => {
  const reader = new WalReader(dir, layout);
  const early = layout.timelineStartLsn - 1n;
  await assert.rejects(reader.locate(early, early + 10n), (error) => {
    assert.ok(isWalcastError(error, 'WALCAST_ERR_WAL_REMOVED'));
    assert.equal(error.sqlState, '58P01');
    assert.equal(error.message, 'requested WAL segment 000000010000000000000003 has already been removed');
    return true;
  });
  const missing = (FIRST_SEGNO + BigInt(SEGMENT_COUNT)) * BigInt(SEGMENT_BYTES);
  await assert.rejects(reader.locate(missing, missing + 10n), (error) => isWalcastError(error, 'WALCAST_ERR_WAL_REMOVED') && error.message.includes(nameOf(FIRST_SEGNO + BigInt(SEGMENT_COUNT))));
  await assert.rejects(reader.locate(missing, missing), /the range is not empty/);
  await reader.close();
});

test('startAheadError has PostgreSQL\'s text and SQLSTATE XX000', () => {
  const error = startAheadError(parseLsnOrThrow('0/99000000'), parseLsnOrThrow('0/49006040'));
  assert.equal(error.code, 'WALCAST_ERR_START_AHEAD');
  assert.equal(error.sqlState, 'XX000');
  assert.equal(error.message, 'requested starting point 0/99000000 is ahead of the WAL flush position of this server 0/49006040');
});

test('a truncated segment: the chunk is cut at the file end, then XX001 names the segment and the exact offset', async () => {
  const shortDir = await mkdtemp(join(tmpdir(), 'walcast-reader-short-'));
  const segno = FIRST_SEGNO;
  const keptBytes = 3 * 8192 + 100;
  await writeFile(join(shortDir, nameOf(segno)), segmentContent(segno).subarray(0, keptBytes));
  const reader = new WalReader(shortDir, layout);
  try {
    const start = layout.timelineStartLsn + 8192n;
    const chunk = await reader.locate(start, start + 128n * 1024n);
    assert.deepEqual([chunk.fileOffset, chunk.byteCount], [8192, keptBytes - 8192]);
    const end = layout.timelineStartLsn + BigInt(keptBytes);
    await assert.rejects(reader.locate(end, end + 10n), (error) => {
      assert.ok(isWalcastError(error, 'WALCAST_ERR_SEGMENT_TRUNCATED'));
      assert.equal(error.sqlState, 'XX001');
      assert.ok(error.message.includes(`${nameOf(segno)} is truncated at offset ${keptBytes} `) && error.message.endsWith(`(offset ${keptBytes})`), error.message);
      return true;
    });
  } finally {
    await reader.close();
    await rm(shortDir, { recursive: true, force: true });
  }
});

test('locateNow answers exactly as locate inside the open segment and defers to it for anything needing I/O or a check', async () => {
  const shortDir = await mkdtemp(join(tmpdir(), 'walcast-reader-now-'));
  const keptBytes = 5 * 8192;
  await writeFile(join(shortDir, nameOf(FIRST_SEGNO)), segmentContent(FIRST_SEGNO).subarray(0, keptBytes));
  await writeFile(join(shortDir, nameOf(FIRST_SEGNO + 1n)), segmentContent(FIRST_SEGNO + 1n));
  let history: SegmentLayout['history'] = [{ pgTimelineId: 1, beginLsn: 0n, endLsn: undefined }];
  const switching: SegmentLayout = {
    segmentBytes: SEGMENT_BYTES,
    pgTimelineId: 1,
    timelineStartLsn: FIRST_SEGNO * BigInt(SEGMENT_BYTES),
    get history() {
      return history;
    },
  };
  const reader = new WalReader(shortDir, switching);
  try {
    const start = switching.timelineStartLsn;
    assert.equal(reader.locateNow(start, start + 8192n), undefined, 'nothing open yet: locate opens the segment');
    const first = await reader.locate(start, start + 8192n);
    const now = reader.locateNow(start + 8192n, start + 3n * 8192n);
    assert.deepEqual(now, await reader.locate(start + 8192n, start + 3n * 8192n), 'the same chunk as locate');
    assert.equal(now?.file, first.file, 'from the open descriptor');
    assert.equal(reader.locateNow(start + 4n * 8192n, start + 6n * 8192n), undefined, 'past the known size: locate stats the file (and cuts the chunk)');
    assert.equal(reader.locateNow(start - 8192n, start), undefined, 'before the timeline start: locate throws 58P01');
    const nextSegment = start + BigInt(SEGMENT_BYTES);
    assert.equal(reader.locateNow(nextSegment, nextSegment + 8192n), undefined, 'another segment: locate opens it');
    // A new history (a PostgreSQL timeline switch) may rename segments: the name is checked by locate again.
    history = [...history];
    assert.equal(reader.locateNow(start + 8192n, start + 2n * 8192n), undefined, 'a new history: locate checks the name');
    assert.equal((await reader.locate(start + 8192n, start + 2n * 8192n)).file, first.file, 'still the same file under the same name');
    await reader.close();
    assert.equal(reader.locateNow(start + 8192n, start + 2n * 8192n), undefined, 'a closed reader hands out nothing');
  } finally {
    await reader.close();
    await rm(shortDir, { recursive: true, force: true });
  }
});

/** A pinner like Timeline.pinSegment: refuses segments before `floor`, counts pins per segment. */
function countingPinner(floor: bigint): { pinSegment(segno: bigint): (() => void) | undefined; pinned: ReadonlyMap<bigint, number>; floor: bigint } {
  const pins = new SegmentPins();
  const pinner = {
    floor,
    pinned: pins.pinned,
    pinSegment: (segno: bigint) => (segno < pinner.floor ? undefined : pins.pin(segno)),
  };
  return pinner;
}

test('a pinned reader holds the current and the retained previous segment, and releases each after closing it', async () => {
  const pinner = countingPinner(FIRST_SEGNO);
  const reader = new WalReader(dir, layout, pinner);
  const segmentStart = (segno: bigint): bigint => segno * BigInt(SEGMENT_BYTES);
  await reader.locate(segmentStart(FIRST_SEGNO), segmentStart(FIRST_SEGNO) + 10n);
  assert.deepEqual([...pinner.pinned.keys()], [FIRST_SEGNO]);
  await reader.locate(segmentStart(FIRST_SEGNO + 1n), segmentStart(FIRST_SEGNO + 1n) + 10n);
  assert.deepEqual([...pinner.pinned.keys()].sort(), [FIRST_SEGNO, FIRST_SEGNO + 1n], 'the previous segment stays pinned while it stays open');
  await reader.locate(segmentStart(FIRST_SEGNO + 2n), segmentStart(FIRST_SEGNO + 2n) + 10n);
  assert.deepEqual([...pinner.pinned.keys()].sort(), [FIRST_SEGNO + 1n, FIRST_SEGNO + 2n], 'retired: closed, then unpinned');
  await reader.close();
  assert.equal(pinner.pinned.size, 0);
});

test('releaseSegments closes both open segments and drops their pins; the reader stays usable and the next locate reopens and pins', async () => {
  const pinner = countingPinner(FIRST_SEGNO);
  const reader = new WalReader(dir, layout, pinner);
  const segmentStart = (segno: bigint): bigint => segno * BigInt(SEGMENT_BYTES);
  const first = await reader.locate(segmentStart(FIRST_SEGNO), segmentStart(FIRST_SEGNO) + 10n);
  const second = await reader.locate(segmentStart(FIRST_SEGNO + 1n), segmentStart(FIRST_SEGNO + 1n) + 10n);
  assert.equal(pinner.pinned.size, 2);
  const releasing = reader.releaseSegments();
  // Marked closed at once, before the descriptors are: nothing hands out or sends from them from here on.
  assert.equal(first.file.closed, true);
  assert.equal(second.file.closed, true);
  assert.equal(reader.locateNow(segmentStart(FIRST_SEGNO + 1n), segmentStart(FIRST_SEGNO + 1n) + 10n), undefined);
  await releasing;
  assert.equal(pinner.pinned.size, 0, 'nothing pinned while released');
  const again = await reader.locate(segmentStart(FIRST_SEGNO + 1n) + 8192n, segmentStart(FIRST_SEGNO + 1n) + 8202n);
  assert.notEqual(again.file, second.file, 'a new handle');
  assert.ok(isOpen(again.file.fd));
  assert.deepEqual([...pinner.pinned.keys()], [FIRST_SEGNO + 1n], 'the reopened segment is pinned again');
  await reader.releaseSegments();
  await reader.releaseSegments();
  assert.equal(pinner.pinned.size, 0, 'a second release is a no-op');
  await reader.close();
  assert.equal(pinner.pinned.size, 0);
});

test('concurrent locates of one new segment share one open and one pin; the segment before it stays open', async () => {
  // As the prefetcher's pieces of a window that crosses into the next segment (or a fresh window after a resume).
  const pinner = countingPinner(FIRST_SEGNO);
  const reader = new WalReader(dir, layout, pinner);
  const seg = BigInt(SEGMENT_BYTES);
  const start = layout.timelineStartLsn;
  try {
    const before = await reader.locate(start, start + 100n);
    const chunks = await Promise.all([0n, 1n, 2n, 3n].map((piece) => reader.locate(start + seg + piece * 65536n, start + seg + piece * 65536n + 100n)));
    assert.ok(chunks.every((chunk) => chunk.file === chunks[0]?.file), 'one handle for all four');
    assert.notEqual(chunks[0]?.file.closed, true);
    assert.deepEqual([...pinner.pinned.entries()].sort(), [[FIRST_SEGNO, 1], [FIRST_SEGNO + 1n, 1]], 'one pin each');
    assert.notEqual(before.file.closed, true, 'the segment before is kept one segment longer');
    assert.ok(isOpen(before.file.fd));
  } finally {
    await reader.close();
  }
  assert.equal(pinner.pinned.size, 0);
});

test('a refused pin is 58P01 for that segment even though the file is still there; a failed open releases its pin', async () => {
  const pinner = countingPinner(FIRST_SEGNO + 1n);
  const reader = new WalReader(dir, layout, pinner);
  const inFirst = FIRST_SEGNO * BigInt(SEGMENT_BYTES) + 100n;
  await assert.rejects(reader.locate(inFirst, inFirst + 10n), (error) => isWalcastError(error, 'WALCAST_ERR_WAL_REMOVED') && error.message.includes(nameOf(FIRST_SEGNO)));
  assert.equal(pinner.pinned.size, 0);
  const missing = (FIRST_SEGNO + BigInt(SEGMENT_COUNT)) * BigInt(SEGMENT_BYTES);
  await assert.rejects(reader.locate(missing, missing + 10n), (error) => isWalcastError(error, 'WALCAST_ERR_WAL_REMOVED'));
  assert.equal(pinner.pinned.size, 0, 'the pin of a segment that could not be opened is released');
  await reader.close();
});

test('a segment closed while a locate awaited is never handed out: the chunk of a closed reader is refused', async () => {
  // The prefetcher's reader is closed when the stream ends, possibly while a locate is between its awaits (here:
  // the retired segment's close inside the switch). The chunk that locate would return names a descriptor number
  // that accept() may already have given to a new client; a late prefetch of it once read that client's socket.
  const seg = BigInt(SEGMENT_BYTES);
  for (let round = 0; round < 20; round++) {
    const reader = new WalReader(dir, layout);
    const start = layout.timelineStartLsn;
    await reader.locate(start, start + 100n);
    await reader.locate(start + seg, start + seg + 100n);
    // Moving two segments on retires the first one: locate awaits its close, and close() runs meanwhile.
    const racing = reader.locate(start + 2n * seg, start + 2n * seg + 100n).then(
      (chunk) => chunk,
      (error: unknown) => error as Error,
    );
    await reader.close();
    const outcome = await racing;
    if (outcome instanceof Error) {
      assert.equal(outcome.name, 'ReaderClosedError');
      continue;
    }
    assert.notEqual(outcome.file.closed, true, 'a chunk handed out refers to an open segment');
    assert.fail('the reader was closed before the locate finished, so no chunk can be handed out');
  }
});

test('a segment retired by a concurrent locate while another locate awaited is reopened, not handed out closed', async () => {
  const seg = BigInt(SEGMENT_BYTES);
  const reader = new WalReader(dir, layout);
  try {
    const start = layout.timelineStartLsn;
    // Two windows on one reader, as the sender's prefetcher does; each result must be an open descriptor of its file.
    // Checked as the prefetcher uses a chunk: at once, when its locate resolves.
    const chunks = await Promise.all(
      [0n, 2n, 1n, 3n, 0n, 2n].map((segment) =>
        reader.locate(start + segment * seg, start + segment * seg + 100n).then((chunk) => {
          assert.notEqual(chunk.file.closed, true, 'never a closed handle');
          assert.ok(isOpen(chunk.file.fd), 'an open descriptor');
          assert.equal(chunk.file.path.replace(/\.partial$/, ''), join(dir, nameOf(FIRST_SEGNO + segment)));
          return chunk;
        }),
      ),
    );
    const last = chunks.at(-1)!;
    assert.equal(last.file.path, join(dir, nameOf(FIRST_SEGNO + 2n)));
  } finally {
    await reader.close();
  }
});

test('a remote segment whose cache file was evicted before it was opened is fetched again; served bytes say remote', async () => {
  const remoteDir = await mkdtemp(join(tmpdir(), 'walcast-reader-remote-'));
  try {
    const segno = FIRST_SEGNO - 1n;
    const cached = join(remoteDir, nameOf(segno));
    const fetched: string[] = [];
    const remote = {
      async fetch(asked: bigint): Promise<string | undefined> {
        assert.equal(asked, segno);
        // First answer: a path the cache has already unlinked again; second: the file fetched anew.
        if (fetched.length === 0) {
          fetched.push('evicted');
          return join(remoteDir, 'evicted-before-open');
        }
        await writeFile(cached, segmentContent(segno));
        fetched.push(cached);
        return cached;
      },
    };
    const reader = new WalReader(dir, layout, countingPinner(FIRST_SEGNO), remote);
    const target = Buffer.alloc(SEGMENT_BYTES);
    assert.equal(await reader.readRange(segno * BigInt(SEGMENT_BYTES), target), SEGMENT_BYTES);
    assert.ok(target.equals(segmentContent(segno)));
    assert.deepEqual(fetched, ['evicted', cached]);
    assert.equal(reader.locatedRemote, true);
    await reader.locate(FIRST_SEGNO * BigInt(SEGMENT_BYTES), FIRST_SEGNO * BigInt(SEGMENT_BYTES) + 100n);
    assert.equal(reader.locatedRemote, false, 'a local segment is not remote');
    await reader.close();
  } finally {
    await rm(remoteDir, { recursive: true, force: true });
  }
});

/** A pinner that also counts pin calls: each segment open pins once, so this counts opens. */
function openCountingPinner(): { pinSegment(segno: bigint): (() => void) | undefined; pinned: ReadonlyMap<bigint, number>; opens: number } {
  const inner = countingPinner(FIRST_SEGNO);
  const pinner = {
    opens: 0,
    pinned: inner.pinned,
    pinSegment: (segno: bigint) => {
      pinner.opens++;
      return inner.pinSegment(segno);
    },
  };
  return pinner;
}

test('two readers sharing OpenSegments open each segment once; it closes only when neither holds it', async () => {
  const pinner = openCountingPinner();
  const segments = new OpenSegments();
  const ahead = new WalReader(dir, layout, pinner, undefined, segments);
  const behind = new WalReader(dir, layout, pinner, undefined, segments);
  const at = (index: bigint, offset = 0n): bigint => (FIRST_SEGNO + index) * BigInt(SEGMENT_BYTES) + offset;
  try {
    const aheadFirst = await ahead.locate(at(0n), at(0n, 100n));
    const behindFirst = await behind.locate(at(0n, 100n), at(0n, 200n));
    assert.equal(behindFirst.file, aheadFirst.file, 'the same handle');
    assert.equal(pinner.opens, 1, 'opened once');
    // The reader ahead moves two segments on: it lets its hold of the first go, the other still reads it.
    await ahead.locate(at(1n), at(1n, 100n));
    await ahead.locate(at(2n), at(2n, 100n));
    assert.equal(aheadFirst.file.closed, false, 'still held by the reader behind');
    assert.ok(isOpen(aheadFirst.file.fd));
    assert.deepEqual(behind.locateNow(at(0n, 200n), at(0n, 300n))?.file, aheadFirst.file, 'and still handed out to it');
    assert.equal(pinner.opens, 3);
    // The reader behind follows: nothing is opened again, and the first segment closes once it is two segments on.
    const behindSecond = await behind.locate(at(1n), at(1n, 100n));
    assert.equal(aheadFirst.file.closed, false, 'kept one segment longer by the reader behind');
    const behindThird = await behind.locate(at(2n), at(2n, 100n));
    assert.equal(pinner.opens, 3, 'the reader behind opened nothing');
    assert.equal(aheadFirst.file.closed, true);
    assert.equal(isOpen(aheadFirst.file.fd), false, 'its descriptor closed (nothing opened since to reuse the number)');
    assert.equal(behindSecond.file.closed, false);
    assert.deepEqual([...pinner.pinned.entries()].sort(), [[FIRST_SEGNO + 1n, 1], [FIRST_SEGNO + 2n, 1]], 'one pin per open segment, however many hold it');
    await ahead.close();
    assert.equal(behindThird.file.closed, false, 'closing one reader leaves the other its segments');
    assert.ok(isOpen(behindThird.file.fd));
  } finally {
    await Promise.all([ahead.close(), behind.close()]);
  }
  assert.equal(segments.size, 0);
  assert.equal(pinner.pinned.size, 0, 'every pin released');
});

test('two readers opening one segment at the same moment share one open', async () => {
  const pinner = openCountingPinner();
  const segments = new OpenSegments();
  const readers = [new WalReader(dir, layout, pinner, undefined, segments), new WalReader(dir, layout, pinner, undefined, segments)];
  const start = layout.timelineStartLsn + BigInt(SEGMENT_BYTES);
  try {
    const chunks = await Promise.all(readers.map((reader, index) => reader.locate(start + BigInt(index) * 8192n, start + BigInt(index) * 8192n + 100n)));
    assert.equal(chunks[0]?.file, chunks[1]?.file);
    assert.equal(pinner.opens, 1);
    await readers[0]?.releaseSegments();
    assert.equal(chunks[1]?.file.closed, false, 'a parked reader lets go of its share only');
    await readers[1]?.releaseSegments();
    assert.equal(chunks[1]?.file.closed, true, 'the last holder closes it');
    assert.equal(pinner.pinned.size, 0);
  } finally {
    await Promise.all(readers.map((reader) => reader.close()));
  }
});

test('a reader closed while its open was under way lets its share go; the other reader keeps the segment', async () => {
  const pinner = openCountingPinner();
  const segments = new OpenSegments();
  const closing = new WalReader(dir, layout, pinner, undefined, segments);
  const staying = new WalReader(dir, layout, pinner, undefined, segments);
  const start = layout.timelineStartLsn;
  try {
    const refused = closing.locate(start, start + 100n);
    const kept = staying.locate(start + 4096n, start + 4196n);
    await closing.close();
    await assert.rejects(refused, (error: unknown) => error instanceof ReaderClosedError);
    const chunk = await kept;
    assert.equal(chunk.file.closed, false);
    assert.ok(isOpen(chunk.file.fd));
    assert.deepEqual([...pinner.pinned.entries()], [[FIRST_SEGNO, 1]]);
  } finally {
    await staying.close();
  }
  assert.equal(pinner.pinned.size, 0);
  assert.equal(segments.size, 0);
});
