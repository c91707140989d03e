/**
 * Objects that are empty, shorter than expected, or replaced while walcast reads them, against a real S3 API server
 * (s3rver, made atomic on PUT by test/support/s3.ts as S3 is) and, for interleavings, the fault proxy in front of it.
 * A fresh-clone CI run once failed "a ranged get asks for at least one byte": a reader took an object's size from a
 * HEAD while the uploader was rewriting it (s3rver then showed it empty) and asked for a 0-byte range.
 * - the test server replaces an object atomically: readers see one version whole, never an empty or mixed one;
 * - a range at or past an object's end (an empty object included) answers no bytes (S3's 416), not an error;
 * - restore while the timeline's metadata object is rewritten just before restore's GET reaches the store: restore
 *   uses the version it got, whole (it took a HEAD's size for the GET before, and cut the longer new JSON);
 * - restore of a segment object shorter than a segment fails with WALCAST_ERR_REMOTE_STORAGE naming the object
 *   (an assertion before);
 * - the segment cache reading a segment object that answers short once and whole after (replaced meanwhile):
 *   retried, counted, served byte-identical; one that stays short fails the fetch naming the object, counted.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { isWalcastError } from '../src/errors.js';
import { silentLogger } from '../src/log.js';
import { type Lsn } from '../src/lsn.js';
import { REMOTE_METADATA_FORMAT_VERSION, encodeRemoteMetadata, metadataKey, segmentKey, type RemoteTimelineMetadata } from '../src/remote/remote-layout.js';
import { restoreTimeline } from '../src/remote/restore-timeline.js';
import { S3ObjectStore } from '../src/remote/s3-object-store.js';
import { REMOTE_GET_ATTEMPTS_MAX, SegmentCache } from '../src/remote/segment-cache.js';
import { readControlFile } from '../src/storage/control-file.js';
import { segmentFileName, segmentStartLsn } from '../src/storage/segment-name.js';
import { singleTimelineHistory } from '../src/storage/timeline-history.js';
import { startS3FaultProxy, type S3FaultProxy } from './support/s3-fault-proxy.js';
import { startTestS3, testStore, type TestS3 } from './support/s3.js';
import { waitFor } from './support/wait-for.js';

const SEG = 1024 * 1024;
const seg = (segno: number): Lsn => segmentStartLsn(BigInt(segno), SEG);

let s3: TestS3;
let proxy: S3FaultProxy;
let root: string;

before(async () => {
  s3 = await startTestS3();
  proxy = await startS3FaultProxy(() => s3.port);
  root = await mkdtemp(join(tmpdir(), 'walcast-remote-changes-'));
});

after(async () => {
  await proxy?.close();
  await s3?.dispose();
  await rm(root, { recursive: true, force: true });
});

function directStore(prefix: string): S3ObjectStore {
  return testStore(s3.endpoint, prefix);
}

function proxiedStore(prefix: string): S3ObjectStore {
  return testStore(proxy.endpoint, prefix);
}

function metadataOf(keys: { tenantId: string; timelineId: string }, backupLsn: Lsn, upstream?: string): RemoteTimelineMetadata {
  return {
    formatVersion: REMOTE_METADATA_FORMAT_VERSION,
    ...keys,
    systemId: 7_000_000_000_000_000_001n,
    pgVersion: 150_000,
    segmentBytes: SEG,
    pgTimelineId: 1,
    timelineStartLsn: seg(2),
    backupLsn,
    upstream,
  };
}

test('the test S3 server replaces an object atomically: every read while it is rewritten sees one version whole', async () => {
  const objects = directStore('atomic');
  const key = objects.key('t/object');
  // Different sizes and bytes, large enough that a PUT's body arrives in many pieces.
  const versions = [Buffer.alloc(2 * SEG + 5, 0x61), Buffer.alloc(3 * SEG + 11, 0x62)];
  await objects.putBytes(key, versions[0]!);
  let writing = true;
  const writer = (async () => {
    for (let round = 0; round < 30; round++) await objects.putBytes(key, versions[(round + 1) % 2]!);
    writing = false;
  })();
  let reads = 0;
  try {
    while (writing) {
      const whole = await objects.getObject(key, versions[1]!.length);
      assert.ok(versions.some((version) => version.equals(whole)), `a GET during rewrites answered ${whole.length} bytes that are neither version`);
      const head = await objects.head(key);
      assert.ok(head !== undefined && versions.some((version) => version.length === head.sizeBytes), `a HEAD during rewrites answered ${head?.sizeBytes} bytes`);
      reads++;
    }
  } finally {
    await writer;
  }
  assert.ok(reads > 0);
  objects.close();
});

test('a range at or past the end of an object, an empty one included, answers no bytes (S3: 416), not an error', async () => {
  const objects = directStore('ranges');
  const key = objects.key('t/short');
  await objects.putBytes(key, Buffer.from('0123456789'));
  assert.deepEqual(await objects.getRange(key, 5, 100), Buffer.from('56789'), 'a range over the end answers what there is');
  assert.equal((await objects.getRange(key, 10, 100)).length, 0, 'a range from the end answers nothing');
  const empty = objects.key('t/empty');
  await objects.putBytes(empty, Buffer.alloc(0));
  assert.equal((await objects.getRange(empty, 0, 16)).length, 0, 'an empty object has nothing to read');
  const file = await open(join(root, 'range-into'), 'w+');
  try {
    assert.equal(await objects.getRangeToFile(empty, 0, 16, file, 0), 0);
  } finally {
    await file.close();
  }
  objects.close();
});

test("restore while the timeline's metadata object is rewritten just before restore's GET: restore uses the new version whole", async () => {
  const keys = { tenantId: 'c'.repeat(32), timelineId: 'd'.repeat(32) };
  const direct = directStore('restore-race');
  const segments = new Map<number, Buffer>();
  for (const segno of [2, 3, 4]) {
    segments.set(segno, randomBytes(SEG));
    await direct.putBytes(direct.key(segmentKey(keys, 1, BigInt(segno), SEG)), segments.get(segno)!);
  }
  const metadataObject = direct.key(metadataKey(keys));
  const older = encodeRemoteMetadata(metadataOf(keys, seg(4)));
  // What the offloading walcast writes next: a later backup LSN, and longer (an upstream recorded meanwhile).
  const newer = encodeRemoteMetadata(metadataOf(keys, seg(5), 'host=primary.example port=5432 user=replicator application_name=walcast'));
  assert.ok(newer.length > older.length);
  await direct.putBytes(metadataObject, older);
  // Restore's GET of the metadata waits at the proxy; meanwhile the object is replaced (whatever restore learned of
  // it before, e.g. a HEAD's size, is then stale).
  const held = proxy.inject({ method: 'GET', pathIncludes: 'walcast.timeline.json', delayMs: 1_500, times: 1 });
  const store = proxiedStore('restore-race');
  try {
    const dataDir = join(root, 'restored-race');
    const restoring = restoreTimeline({ dataDir, store, keys });
    await waitFor(async () => (held.hits > 0 ? true : undefined), 60_000, { what: "restore's GET of the metadata reached the proxy", pollMs: 5 });
    await direct.putBytes(metadataObject, newer);
    const result = await restoring;
    assert.equal(result.backupLsn, seg(5), 'the version restore read is the new one, whole');
    const restored = join(dataDir, keys.tenantId, keys.timelineId);
    assert.ok((await readFile(join(restored, segmentFileName(1, 4n, SEG)))).equals(segments.get(4)!));
    const control = await readControlFile(restored);
    assert.equal(control.backupLsn, seg(5));
    assert.equal(control.upstream, 'host=primary.example port=5432 user=replicator application_name=walcast');
  } finally {
    held.remove();
    store.close();
    direct.close();
  }
});

test('restore of a segment object shorter than a segment fails with WALCAST_ERR_REMOTE_STORAGE naming the object, and leaves nothing', async () => {
  const keys = { tenantId: 'e'.repeat(32), timelineId: 'f'.repeat(32) };
  const store = directStore('restore-short');
  const segmentObject = store.key(segmentKey(keys, 1, 3n, SEG));
  await store.putBytes(segmentObject, randomBytes(SEG / 2));
  await store.putBytes(store.key(metadataKey(keys)), encodeRemoteMetadata(metadataOf(keys, seg(4))));
  const dataDir = join(root, 'restored-short');
  await assert.rejects(restoreTimeline({ dataDir, store, keys }), (error: unknown) => {
    assert.ok(isWalcastError(error), `a WalcastError, not ${String(error)}`);
    assert.equal(error.code, 'WALCAST_ERR_REMOTE_STORAGE');
    assert.ok(error.message.includes(segmentObject) && /shorter than/.test(error.message), error.message);
    return true;
  });
  assert.deepEqual(await readdir(join(dataDir, keys.tenantId)), [], 'no timeline and no temp directory left');
  // An empty metadata object (never written so by walcast; a store fault): a clear metadata error too.
  await store.putBytes(store.key(metadataKey(keys)), Buffer.alloc(0));
  await assert.rejects(restoreTimeline({ dataDir, store, keys }), (error: unknown) => isWalcastError(error) && error.code === 'WALCAST_ERR_REMOTE_METADATA' && /is empty/.test(error.message));
  store.close();
});

test('the segment cache: a segment object that answers short once and whole after is retried and served byte-identical; one that stays short fails the fetch naming it', async () => {
  const keys = { tenantId: '1'.repeat(32), timelineId: '2'.repeat(32) };
  const store = directStore('cache-short');
  const whole = randomBytes(SEG);
  const replacedKey = store.key(segmentKey(keys, 1, 3n, SEG));
  const shortKey = store.key(segmentKey(keys, 1, 4n, SEG));
  await store.putBytes(replacedKey, whole.subarray(0, SEG / 4));
  await store.putBytes(shortKey, whole.subarray(0, SEG / 4));
  // The real store, with the object replaced right after the first GET of it answered: the interleaving of a
  // reader with a re-upload (after a crash the uploader puts segments again), made deterministic.
  const getRangeToFile = store.getRangeToFile.bind(store);
  let replaced = false;
  store.getRangeToFile = async (key, ...rest) => {
    const written = await getRangeToFile(key, ...rest);
    if (key === replacedKey && !replaced) {
      replaced = true;
      await store.putBytes(replacedKey, whole);
    }
    return written;
  };
  const dir = await mkdtemp(join(root, 'cache-'));
  const cache = new SegmentCache({ store, keys, dir, segmentBytes: SEG, history: () => singleTimelineHistory(1), log: silentLogger() });
  const path = await cache.fetch(3n);
  assert.ok(path !== undefined && (await readFile(path)).equals(whole), 'the segment is served whole after the retry');
  assert.equal(cache.stats.getRetries, 1);
  assert.equal(cache.stats.fetchErrors, 0);
  await assert.rejects(cache.fetch(4n), (error: unknown) => {
    assert.ok(isWalcastError(error) && error.code === 'WALCAST_ERR_REMOTE_STORAGE', String(error));
    assert.ok(error.message.includes(shortKey) && /shorter than a segment/.test(error.message), error.message);
    return true;
  });
  assert.equal(cache.stats.fetchErrors, 1);
  assert.equal(cache.stats.getRetries, 1 + REMOTE_GET_ATTEMPTS_MAX - 1, 'the short answers were retried');
  assert.deepEqual((await readdir(dir)).filter((name) => name.endsWith('.download')), [], 'no partial download left');
  store.close();
});
