/**
 * SegmentUploader against a real S3 API server (s3rver): segment files in a temp timeline directory (1 MiB
 * segments of random bytes: the uploader does not read WAL structure), a flush LSN the test moves, and the
 * backup LSNs it persists recorded. Checks byte identity in the bucket, contiguous backup LSN advance, the
 * metadata object, the in-flight bound, the store going away and coming back, and resuming after a restart.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { createLogger, silentLogger } from '../src/log.js';
import { WAL_PAGE_BYTES, type Lsn } from '../src/lsn.js';
import { REMOTE_METADATA_BYTES_MAX, decodeRemoteMetadata, metadataKey, segmentKey } from '../src/remote/remote-layout.js';
import { parseRemoteStorageUrl } from '../src/remote/remote-config.js';
import { S3ObjectStore } from '../src/remote/s3-object-store.js';
import { REMOTE_READ_AHEAD_SEGMENTS, SegmentCache } from '../src/remote/segment-cache.js';
import { SegmentUploader } from '../src/remote/segment-uploader.js';
import { SIDECAR_SUFFIX, sidecarPathFor, writeSidecarFromSegment } from '../src/storage/page-checksums.js';
import { PARTIAL_SUFFIX, isSegmentFileName, segmentFileName, segmentStartLsn } from '../src/storage/segment-name.js';
import { singleTimelineHistory } from '../src/storage/timeline-history.js';
import { TEST_BUCKET, startTestS3, type TestS3 } from './support/s3.js';
import { waitFor } from './support/wait-for.js';

const SEGMENT_BYTES = 1024 * 1024;
const WAIT_MS = 60_000;
let s3: TestS3;
let root: string;
let caseNumber = 0;

before(async () => {
  s3 = await startTestS3();
  root = await mkdtemp(join(tmpdir(), 'walcast-uploader-'));
});
after(async () => {
  await s3.dispose();
  await rm(root, { recursive: true, force: true });
});

interface Fixture {
  readonly dir: string;
  readonly store: S3ObjectStore;
  readonly keys: { tenantId: string; timelineId: string };
  readonly segments: Map<bigint, Buffer>;
  readonly persisted: Lsn[];
  flushLsn: Lsn;
}

async function fixture(segmentCount: number, firstSegno = 2n): Promise<Fixture> {
  caseNumber++;
  const dir = await mkdtemp(join(root, 'tl-'));
  const keys = { tenantId: caseNumber.toString(16).padStart(32, '0'), timelineId: 'f'.repeat(32) };
  const segments = new Map<bigint, Buffer>();
  for (let index = 0; index < segmentCount; index++) {
    const segno = firstSegno + BigInt(index);
    const bytes = randomBytes(SEGMENT_BYTES);
    segments.set(segno, bytes);
    const last = index === segmentCount - 1;
    await writeFile(join(dir, segmentFileName(1, segno, SEGMENT_BYTES) + (last ? PARTIAL_SUFFIX : '')), bytes);
  }
  const store = new S3ObjectStore(parseRemoteStorageUrl(`s3://${TEST_BUCKET}/up`, { endpoint: s3.endpoint }));
  const flushLsn = segmentStartLsn(firstSegno + BigInt(segmentCount - 1), SEGMENT_BYTES) + 100n;
  return { dir, store, keys, segments, persisted: [], flushLsn };
}

function uploader(f: Fixture, backupLsn: Lsn, overrides: { inFlightMax?: number; store?: S3ObjectStore } = {}): SegmentUploader {
  return new SegmentUploader({
    store: overrides.store ?? f.store,
    dir: f.dir,
    keys: f.keys,
    identity: { ...f.keys, systemId: 7n, pgVersion: 150000, segmentBytes: SEGMENT_BYTES, timelineStartLsn: segmentStartLsn(2n, SEGMENT_BYTES) },
    history: () => singleTimelineHistory(1),
    backupLsn,
    flushLsn: () => f.flushLsn,
    persistBackupLsn: async (lsn) => {
      f.persisted.push(lsn);
    },
    log: process.env.DEBUG_UPLOADER ? createLogger({ level: 'warn', pretty: false }) : silentLogger(),
    pollMs: 50,
    retryDelayMinMs: 50,
    ...(overrides.inFlightMax === undefined ? {} : { inFlightMax: overrides.inFlightMax }),
  });
}

/** waitFor over a synchronous condition. */
async function until(condition: () => boolean, what: string): Promise<void> {
  await waitFor(async () => (condition() ? true : undefined), WAIT_MS, { what, pollMs: 20 });
}

async function assertInBucket(f: Fixture, segnos: readonly bigint[]): Promise<void> {
  for (const segno of segnos) {
    const key = f.store.key(segmentKey(f.keys, 1, segno, SEGMENT_BYTES));
    const stored = await f.store.getRange(key, 0, SEGMENT_BYTES);
    assert.ok(stored.equals(f.segments.get(segno) ?? Buffer.alloc(0)), `segment ${segno} is byte-identical in the bucket`);
  }
}

test('every completed segment below the flush LSN is uploaded once, byte-identical; the one being filled is not', async () => {
  const f = await fixture(6);
  const up = uploader(f, segmentStartLsn(2n, SEGMENT_BYTES));
  up.start();
  await until(() => up.backupLsn === segmentStartLsn(7n, SEGMENT_BYTES), 'backup LSN reaches the segment being filled');
  await up.close();
  await assertInBucket(f, [2n, 3n, 4n, 5n, 6n]);
  assert.equal(up.stats.segmentsUploaded, 5);
  assert.equal(up.stats.bytesUploaded, 5 * SEGMENT_BYTES);
  assert.equal(await f.store.head(f.store.key(segmentKey(f.keys, 1, 7n, SEGMENT_BYTES))), undefined);
  assert.deepEqual([...f.persisted].sort((a, b) => (a < b ? -1 : 1)), f.persisted, 'persisted backup LSNs only grow');
  assert.equal(f.persisted.at(-1), segmentStartLsn(7n, SEGMENT_BYTES));
  const metadata = decodeRemoteMetadata(await f.store.getObject(f.store.key(metadataKey(f.keys)), REMOTE_METADATA_BYTES_MAX), 'test');
  assert.equal(metadata.backupLsn, segmentStartLsn(7n, SEGMENT_BYTES));
  assert.equal(metadata.segmentBytes, SEGMENT_BYTES);
  f.store.close();
});

test('never more than the in-flight bound of uploads at once', async () => {
  const f = await fixture(9);
  let running = 0;
  let peak = 0;
  const counting = new S3ObjectStore(parseRemoteStorageUrl(`s3://${TEST_BUCKET}/up`, { endpoint: s3.endpoint }));
  const putFile = counting.putFile.bind(counting);
  counting.putFile = async (...args) => {
    running++;
    peak = Math.max(peak, running);
    try {
      await putFile(...args);
    } finally {
      running--;
    }
  };
  const up = uploader(f, segmentStartLsn(2n, SEGMENT_BYTES), { inFlightMax: 2, store: counting });
  up.start();
  await until(() => up.backupLsn === segmentStartLsn(10n, SEGMENT_BYTES), 'all uploaded');
  await up.close();
  assert.ok(peak <= 2, `peak ${peak} uploads in flight`);
  assert.ok(peak >= 1);
  counting.close();
  f.store.close();
});

test('the store stopped: errors counted, the backup LSN waits; the store back: the uploader catches up', async () => {
  const f = await fixture(4);
  await s3.stop();
  const up = uploader(f, segmentStartLsn(2n, SEGMENT_BYTES));
  try {
    up.start();
    await until(() => up.stats.uploadErrors >= 3, 'failed uploads');
    assert.equal(up.backupLsn, segmentStartLsn(2n, SEGMENT_BYTES));
    assert.deepEqual(f.persisted, []);
  } finally {
    await s3.start();
  }
  await until(() => up.backupLsn === segmentStartLsn(5n, SEGMENT_BYTES), 'catch-up after the store returns');
  await up.close();
  await assertInBucket(f, [2n, 3n, 4n]);
  f.store.close();
});

test('a restart resumes from the persisted backup LSN; new segments follow', async () => {
  const f = await fixture(5);
  const first = uploader(f, segmentStartLsn(4n, SEGMENT_BYTES));
  first.start();
  await until(() => first.backupLsn === segmentStartLsn(6n, SEGMENT_BYTES), 'first run');
  await first.close();
  assert.equal(first.stats.segmentsUploaded, 2, 'segments before the persisted backup LSN are not uploaded again');
  assert.equal(await f.store.head(f.store.key(segmentKey(f.keys, 1, 2n, SEGMENT_BYTES))), undefined);
  await rename(join(f.dir, segmentFileName(1, 6n, SEGMENT_BYTES) + PARTIAL_SUFFIX), join(f.dir, segmentFileName(1, 6n, SEGMENT_BYTES)));
  const extra = randomBytes(SEGMENT_BYTES);
  f.segments.set(7n, extra);
  await writeFile(join(f.dir, segmentFileName(1, 7n, SEGMENT_BYTES) + PARTIAL_SUFFIX), extra);
  f.flushLsn = segmentStartLsn(7n, SEGMENT_BYTES) + 8n;
  const second = uploader(f, first.backupLsn);
  second.start();
  await until(() => second.backupLsn === segmentStartLsn(7n, SEGMENT_BYTES), 'second run');
  await second.close();
  assert.equal(second.stats.segmentsUploaded, 1);
  await assertInBucket(f, [4n, 5n, 6n]);
  f.store.close();
});

test('page-checksum sidecars go up with their segments and come back with them into the segment cache', async () => {
  const f = await fixture(3);
  const sidecars = new Map<bigint, Buffer>();
  for (const segno of [2n, 3n]) {
    const name = segmentFileName(1, segno, SEGMENT_BYTES);
    writeSidecarFromSegment(join(f.dir, name), sidecarPathFor(f.dir, name), SEGMENT_BYTES / WAL_PAGE_BYTES);
    sidecars.set(segno, await readFile(sidecarPathFor(f.dir, name)));
  }
  const up = uploader(f, segmentStartLsn(2n, SEGMENT_BYTES));
  up.start();
  await until(() => up.backupLsn === segmentStartLsn(4n, SEGMENT_BYTES), 'backup LSN reaches the segment being filled');
  await up.close();
  for (const [segno, expected] of sidecars) {
    const key = f.store.key(segmentKey(f.keys, 1, segno, SEGMENT_BYTES)) + SIDECAR_SUFFIX;
    assert.ok((await f.store.getRange(key, 0, expected.length)).equals(expected), `sidecar of segment ${segno} is in the bucket byte-identical`);
  }
  const cacheDir = join(f.dir, 'cache');
  const cache = new SegmentCache({ store: f.store, keys: f.keys, dir: cacheDir, segmentBytes: SEGMENT_BYTES, history: () => singleTimelineHistory(1), log: silentLogger() });
  const path = await cache.fetch(3n);
  assert.ok(path !== undefined);
  assert.ok((await readFile(path)).equals(f.segments.get(3n) ?? Buffer.alloc(0)), 'the segment comes back byte-identical');
  assert.ok((await readFile(sidecarPathFor(cacheDir, segmentFileName(1, 3n, SEGMENT_BYTES)))).equals(sidecars.get(3n) ?? Buffer.alloc(0)), 'with its sidecar next to it');
  f.store.close();
});

test('the segment cache reads ahead: fetching a segment starts the next REMOTE_READ_AHEAD_SEGMENTS before the local start, byte-identical, within the cache bound', async () => {
  const f = await fixture(6);
  for (const segno of f.segments.keys()) {
    const name = segmentFileName(1, segno, SEGMENT_BYTES);
    const path = join(f.dir, name + (segno === 7n ? PARTIAL_SUFFIX : ''));
    writeSidecarFromSegment(path, sidecarPathFor(f.dir, name), SEGMENT_BYTES / WAL_PAGE_BYTES);
  }
  const up = uploader(f, segmentStartLsn(2n, SEGMENT_BYTES));
  up.start();
  await until(() => up.backupLsn === segmentStartLsn(7n, SEGMENT_BYTES), 'backup LSN reaches the segment being filled');
  await up.close();
  const cacheDir = join(f.dir, 'cache');
  // Segments 2..5 are in the bucket; 6 is "on local disk" (the local start), so it is never read ahead.
  const localStart = 6n;
  const cacheBytesMax = (REMOTE_READ_AHEAD_SEGMENTS + 2) * SEGMENT_BYTES;
  const cache = new SegmentCache({
    store: f.store,
    keys: f.keys,
    dir: cacheDir,
    segmentBytes: SEGMENT_BYTES,
    history: () => singleTimelineHistory(1),
    localStartSegment: () => localStart,
    cacheBytesMax,
    log: silentLogger(),
  });
  assert.ok(REMOTE_READ_AHEAD_SEGMENTS >= 1);
  assert.ok((await cache.fetch(2n)) !== undefined);
  const readAheadEnd = 2n + BigInt(REMOTE_READ_AHEAD_SEGMENTS) < localStart ? 2n + BigInt(REMOTE_READ_AHEAD_SEGMENTS) : localStart - 1n;
  await until(() => cache.stats.segmentsFetched === Number(readAheadEnd - 2n) + 1, 'the segments after it are fetched without being asked for');
  const hits = cache.stats.cacheHits;
  for (let segno = 3n; segno < localStart; segno++) {
    const path = await cache.fetch(segno);
    assert.ok(path !== undefined);
    assert.ok((await readFile(path)).equals(f.segments.get(segno) ?? Buffer.alloc(0)), `segment ${segno} comes back byte-identical`);
    const name = segmentFileName(1, segno, SEGMENT_BYTES);
    assert.ok((await readFile(sidecarPathFor(cacheDir, name))).equals(await readFile(sidecarPathFor(f.dir, name))), `with its sidecar (${segno})`);
    assert.ok((await cache.cachedBytes()) <= cacheBytesMax, 'the cache stays within its bound');
  }
  assert.ok(cache.stats.cacheHits > hits, `read-ahead segments were cache hits (${JSON.stringify(cache.stats)})`);
  await until(() => cache.stats.segmentsFetched === Number(localStart - 2n), 'every segment before the local start fetched once');
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(cache.stats.segmentsFetched, Number(localStart - 2n), 'nothing at or past the local start is read ahead, nothing twice');
  assert.equal(cache.stats.fetchErrors, 0);
  // Only 2 was a reader's download; every read-ahead segment was then read, none wasted.
  assert.equal(cache.stats.readAheadFetched, Number(localStart - 3n), JSON.stringify(cache.stats));
  assert.equal(cache.stats.readAheadUsed, cache.stats.readAheadFetched);
  assert.equal(cache.stats.readAheadEvictedUnused, 0);

  // A read-ahead segment evicted before anyone read it counts as wasted. Segments 2..6 are in the bucket; with 7 the
  // local start and room for REMOTE_READ_AHEAD_SEGMENTS + 2 segments, reading 2 reads ahead 3 and 4, reading 5
  // reads ahead 6; reading 2 again makes the first of 3 and 4 to arrive (they download side by side) the least
  // recently used, so it is evicted, never read, for 5 and 6.
  assert.equal(REMOTE_READ_AHEAD_SEGMENTS, 2, 'the segment numbers below assume two segments of read-ahead');
  const second = new SegmentCache({
    store: f.store,
    keys: f.keys,
    dir: join(f.dir, 'cache2'),
    segmentBytes: SEGMENT_BYTES,
    history: () => singleTimelineHistory(1),
    localStartSegment: () => 7n,
    cacheBytesMax,
    log: silentLogger(),
  });
  assert.ok((await second.fetch(2n)) !== undefined);
  await until(() => second.stats.segmentsFetched === 3, 'segments 3 and 4 read ahead');
  assert.deepEqual([second.stats.readAheadFetched, second.stats.readAheadUsed, second.stats.readAheadEvictedUnused], [2, 0, 0]);
  assert.ok((await second.fetch(2n)) !== undefined);
  assert.ok((await second.fetch(5n)) !== undefined);
  await until(() => second.stats.segmentsFetched === 5, 'segment 6 read ahead');
  await until(() => second.stats.readAheadEvictedUnused === 1, 'the eviction for 5 and 6 done');
  assert.deepEqual(
    { fetched: second.stats.segmentsFetched, readAhead: second.stats.readAheadFetched, used: second.stats.readAheadUsed, evictedUnused: second.stats.readAheadEvictedUnused },
    { fetched: 5, readAhead: 3, used: 0, evictedUnused: 1 },
    `3, 4 and 6 read ahead: one of 3 and 4 evicted unread, the other and 6 still cached unread (${JSON.stringify(second.stats)})`,
  );
  // The count goes up as the entry leaves the cache; its file is unlinked right after.
  let cached2: string[] = [];
  for (let attempt = 0; attempt < 100; attempt++) {
    cached2 = (await readdir(join(f.dir, 'cache2'))).filter((name) => isSegmentFileName(name));
    if (cached2.length <= 4) break;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.equal(cached2.length, 4, `the cache holds four segments: ${cached2.join(' ')}`);
  assert.equal([3n, 4n].filter((segno) => cached2.includes(segmentFileName(1, segno, SEGMENT_BYTES))).length, 1, 'exactly one of 3 and 4 was evicted');
  f.store.close();
});
