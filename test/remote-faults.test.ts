/**
 * Object storage that misbehaves: a fault-injecting proxy (test/support/s3-fault-proxy.ts) in front of a real S3 API
 * server (s3rver) answers some requests with 5xx, delays others, or fails one object for good.
 * - uploads that fail are retried until they succeed, and the objects are byte-identical;
 * - ranged GETs that fail are retried, and the fetched segment is byte-identical;
 * - a real primary, walcast offloading to the bucket, then a walcast restored from the bucket serving old WAL through
 *   the proxy: GETs slower than the 2 s replica timeout do not end a pg_receivewal -s 0 stream (keepalives go on
 *   while the GET is in flight), and a segment whose GETs always fail ends that stream with an ErrorResponse naming
 *   the object while a concurrent stream of local WAL completes byte-identical.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { parseRemoteStorageUrl, type RemoteStorageConfig } from '../src/remote/remote-config.js';
import { segmentKey } from '../src/remote/remote-layout.js';
import { S3ObjectStore } from '../src/remote/s3-object-store.js';
import { SegmentCache } from '../src/remote/segment-cache.js';
import { SegmentUploader } from '../src/remote/segment-uploader.js';
import { PARTIAL_SUFFIX, segmentFileName, segmentStartLsn } from '../src/storage/segment-name.js';
import { firstDifference, makeTempDir, runReceiveWal, startPrimary, type PgCluster } from './support/postgres.js';
import { startS3FaultProxy, type S3FaultProxy } from './support/s3-fault-proxy.js';
import { TEST_BUCKET, startTestS3, type TestS3 } from './support/s3.js';
import { runWalcastCli, startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const MIB = 1024 * 1024;
const WAIT_MS = 120_000;

let s3: TestS3;
let proxy: S3FaultProxy;
let root: string;

before(async () => {
  s3 = await startTestS3();
  proxy = await startS3FaultProxy(() => s3.port);
  root = await mkdtemp(join(tmpdir(), 'walcast-remote-faults-'));
});
after(async () => {
  await proxy?.close();
  await s3?.dispose();
  await rm(root, { recursive: true, force: true });
});

function proxiedStore(prefix: string): S3ObjectStore {
  return new S3ObjectStore(parseRemoteStorageUrl(`s3://${TEST_BUCKET}/${prefix}`, { endpoint: proxy.endpoint }));
}

function directStore(prefix: string): S3ObjectStore {
  return new S3ObjectStore(parseRemoteStorageUrl(`s3://${TEST_BUCKET}/${prefix}`, { endpoint: s3.endpoint }));
}

async function until(condition: () => boolean, what: string): Promise<void> {
  await waitFor(async () => (condition() ? true : undefined), WAIT_MS, { what, pollMs: 50 });
}

describe('uploads and reads through a failing store', { timeout: 300_000 }, () => {
  const SEGMENT_BYTES = MIB;
  const keys = { tenantId: 'a'.repeat(32), timelineId: 'b'.repeat(32) };

  test('PUTs answered 500 and 503 are retried until they succeed; every object is byte-identical', async () => {
    const dir = await mkdtemp(join(root, 'up-'));
    const segments = new Map<bigint, Buffer>();
    for (let segno = 2n; segno <= 5n; segno++) {
      const bytes = randomBytes(SEGMENT_BYTES);
      segments.set(segno, bytes);
      await writeFile(join(dir, segmentFileName(1, segno, SEGMENT_BYTES) + (segno === 5n ? PARTIAL_SUFFIX : '')), bytes);
    }
    // More failures in a row than the SDK's own attempts, so the uploader's retry has to do part of the work.
    const failing = proxy.inject({ method: 'PUT', pathIncludes: segmentFileName(1, 3n, SEGMENT_BYTES), status: 500, times: 7 });
    const slowDown = proxy.inject({ method: 'PUT', pathIncludes: segmentFileName(1, 4n, SEGMENT_BYTES), status: 503, times: 4 });
    const store = proxiedStore('up');
    const uploader = new SegmentUploader({
      store,
      dir,
      keys,
      identity: { ...keys, systemId: 7n, pgVersion: 150000, segmentBytes: SEGMENT_BYTES, pgTimelineId: 1, timelineStartLsn: segmentStartLsn(2n, SEGMENT_BYTES) },
      backupLsn: segmentStartLsn(2n, SEGMENT_BYTES),
      flushLsn: () => segmentStartLsn(5n, SEGMENT_BYTES) + 100n,
      persistBackupLsn: async () => undefined,
      log: silentLogger(),
      pollMs: 50,
      retryDelayMinMs: 50,
    });
    try {
      uploader.start();
      await until(() => uploader.backupLsn === segmentStartLsn(5n, SEGMENT_BYTES), 'the backup LSN passes the failing segments');
    } finally {
      await uploader.close();
      failing.remove();
      slowDown.remove();
    }
    assert.equal(failing.hits, 7, 'every injected PUT failure was met');
    assert.equal(slowDown.hits, 4);
    assert.ok(uploader.stats.uploadErrors >= 1, `the uploader saw failures (${uploader.stats.uploadErrors})`);
    const direct = directStore('up');
    for (let segno = 2n; segno <= 4n; segno++) {
      const stored = await direct.getRange(direct.key(segmentKey(keys, 1, segno, SEGMENT_BYTES)), 0, SEGMENT_BYTES);
      assert.equal(firstDifference(stored, segments.get(segno) ?? Buffer.alloc(0)), -1, `segment ${segno} is byte-identical in the bucket`);
    }
    direct.close();
    store.close();
  });

  test('GETs answered 500 are retried; the fetched segment is byte-identical; retries are counted', async () => {
    const direct = directStore('get');
    const bytes = randomBytes(SEGMENT_BYTES);
    const name = segmentFileName(1, 9n, SEGMENT_BYTES);
    await direct.putBytes(direct.key(segmentKey(keys, 1, 9n, SEGMENT_BYTES)), bytes);
    const failing = proxy.inject({ method: 'GET', pathIncludes: name, status: 500, times: 5 });
    const store = proxiedStore('get');
    const cache = new SegmentCache({ store, keys, dir: await mkdtemp(join(root, 'cache-')), segmentBytes: SEGMENT_BYTES, pgTimelineId: 1, log: silentLogger() });
    try {
      const path = await cache.fetch(9n);
      assert.ok(path !== undefined);
      assert.equal(firstDifference(await readFile(path), bytes), -1, 'the fetched segment is byte-identical');
    } finally {
      failing.remove();
      store.close();
      direct.close();
    }
    assert.equal(failing.hits, 5);
    assert.ok(cache.stats.getRetries >= 1, JSON.stringify(cache.stats));
    assert.equal(cache.stats.fetchErrors, 0);
    assert.equal(cache.stats.segmentsFetched, 1);
  });
});
