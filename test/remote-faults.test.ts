/**
 * Object storage that misbehaves: a fault-injecting proxy (test/support/s3-fault-proxy.ts) in front of a real S3 API
 * server (s3rver) answers some requests with 5xx, delays others, or fails one object for good.
 * - uploads that fail are retried until they succeed, and the objects are byte-identical;
 * - ranged GETs that fail are retried, and the fetched segment is byte-identical;
 * - a real primary, walcast offloading to the bucket, then a walcast restored from the bucket serving old WAL through
 *   the proxy: GETs slower than the 2 s replica timeout do not end a pg_receivewal -s 0 stream (keepalives go on
 *   while the GET is in flight), and a segment whose GETs always fail ends that stream with an ErrorResponse naming
 *   the object while a concurrent stream of local WAL completes byte-identical;
 * - a standby from a base backup older than the restored walcast's local WAL catches up from object storage on one
 *   connection while every GET takes longer than its wal_receiver_timeout;
 * - walcast killed -9 (a child process) while a GET is in flight, and while PUTs are in flight: after a restart the
 *   stream is served byte-identical, the backup LSN persisted at the kill covers only objects that are in the bucket,
 *   and the uploader resumes until every segment is there byte-identical.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createOperationsMetrics } from '../src/api/metrics.js';
import { SqlState, isWalcastError } from '../src/errors.js';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { parseRemoteStorageUrl, type RemoteStorageConfig } from '../src/remote/remote-config.js';
import { segmentKey } from '../src/remote/remote-layout.js';
import { S3ObjectStore } from '../src/remote/s3-object-store.js';
import { REMOTE_GET_ATTEMPTS_MAX, SegmentCache } from '../src/remote/segment-cache.js';
import { SegmentUploader } from '../src/remote/segment-uploader.js';
import { readControlFile } from '../src/storage/control-file.js';
import { PARTIAL_SUFFIX, segmentFileName, segmentStartLsn } from '../src/storage/segment-name.js';
import { timelineDirPath } from '../src/storage/timeline-dir.js';
import { singleTimelineHistory } from '../src/storage/timeline-history.js';
import { firstDifference, freePort, makeStandby, makeTempDir, runReceiveWal, startPrimary, type PgCluster, type StandbyBase } from './support/postgres.js';
import { startS3FaultProxy, type S3FaultProxy } from './support/s3-fault-proxy.js';
import { spawnServe, type ServeProcess } from './support/serve-process.js';
import { TEST_BUCKET, startTestS3, testStore, type TestS3 } from './support/s3.js';
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
  return testStore(proxy.endpoint, prefix);
}

function directStore(prefix: string): S3ObjectStore {
  return testStore(s3.endpoint, prefix);
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
      identity: { ...keys, systemId: 7n, pgVersion: 150000, segmentBytes: SEGMENT_BYTES, timelineStartLsn: segmentStartLsn(2n, SEGMENT_BYTES) },
      history: () => singleTimelineHistory(1),
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
    const cache = new SegmentCache({ store, keys, dir: await mkdtemp(join(root, 'cache-')), segmentBytes: SEGMENT_BYTES, history: () => singleTimelineHistory(1), log: silentLogger() });
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
  test('a GET cut short mid-body (part of it already written to the download file) is retried; the segment is byte-identical, no partial file remains', async () => {
    const direct = directStore('get');
    const bytes = randomBytes(SEGMENT_BYTES);
    const name = segmentFileName(1, 10n, SEGMENT_BYTES);
    await direct.putBytes(direct.key(segmentKey(keys, 1, 10n, SEGMENT_BYTES)), bytes);
    // Past the first write batch of a streamed GET (1 MiB segments here: cut at 600 KiB, twice).
    // The segment's GETs come first (its sidecar is fetched once the segment is whole), so both cuts hit them.
    const cut = proxy.inject({ method: 'GET', pathIncludes: name, cutBodyAfterBytes: 600 * 1024, times: 2 });
    const store = proxiedStore('get');
    const dir = await mkdtemp(join(root, 'cache-'));
    const cache = new SegmentCache({ store, keys, dir, segmentBytes: SEGMENT_BYTES, history: () => singleTimelineHistory(1), log: silentLogger() });
    try {
      const path = await cache.fetch(10n);
      assert.ok(path !== undefined);
      assert.equal(firstDifference(await readFile(path), bytes), -1, 'the fetched segment is byte-identical');
      assert.deepEqual((await readdir(dir)).filter((entry) => entry.endsWith('.download')), [], 'no download file is left');
    } finally {
      cut.remove();
      store.close();
      direct.close();
    }
    assert.equal(cut.hits, 2, 'both cuts happened');
    assert.ok(cache.stats.getRetries >= 2, JSON.stringify(cache.stats));
    assert.equal(cache.stats.fetchErrors, 0);
  });
  test("a sidecar whose GETs keep failing fails the segment's fetch the same way (WALCAST_ERR_REMOTE_STORAGE naming the object, counted), and leaves no download file", async () => {
    const direct = directStore('get');
    const name = segmentFileName(1, 12n, SEGMENT_BYTES);
    const key = direct.key(segmentKey(keys, 1, 12n, SEGMENT_BYTES));
    await direct.putBytes(key, randomBytes(SEGMENT_BYTES));
    await direct.putBytes(key + '.crc', Buffer.alloc((SEGMENT_BYTES / 8192) * 4));
    const failing = proxy.inject({ method: 'GET', pathIncludes: `${name}.crc`, status: 500, times: Number.POSITIVE_INFINITY });
    const store = proxiedStore('get');
    const dir = await mkdtemp(join(root, 'cache-'));
    const cache = new SegmentCache({ store, keys, dir, segmentBytes: SEGMENT_BYTES, history: () => singleTimelineHistory(1), log: silentLogger() });
    try {
      await assert.rejects(cache.fetch(12n), (error: unknown) => {
        assert.ok(isWalcastError(error), String(error));
        assert.equal(error.code, 'WALCAST_ERR_REMOTE_STORAGE');
        assert.ok(error.message.includes(`could not read WAL segment ${name} from object storage (object ${key})`), error.message);
        return true;
      });
      assert.ok(failing.hits >= REMOTE_GET_ATTEMPTS_MAX, `every attempt was made (${failing.hits} GETs)`);
      assert.equal(cache.stats.fetchErrors, 1);
      assert.equal(cache.stats.segmentsFetched, 0);
      assert.deepEqual((await readdir(dir)).filter((entry) => entry.endsWith('.download') || entry === name), [], 'neither the segment nor a download file is left');
    } finally {
      failing.remove();
      store.close();
      direct.close();
    }
  });
  test('a GET that keeps failing: the fetch rejects with WALCAST_ERR_REMOTE_STORAGE naming the object, after the retries; an immediate second fetch gets the same failure without new GETs', async () => {
    const direct = directStore('get');
    const name = segmentFileName(1, 11n, SEGMENT_BYTES);
    const key = direct.key(segmentKey(keys, 1, 11n, SEGMENT_BYTES));
    await direct.putBytes(key, randomBytes(SEGMENT_BYTES));
    const failing = proxy.inject({ method: 'GET', pathIncludes: name, status: 500, times: Number.POSITIVE_INFINITY });
    const store = proxiedStore('get');
    const cache = new SegmentCache({ store, keys, dir: await mkdtemp(join(root, 'cache-')), segmentBytes: SEGMENT_BYTES, history: () => singleTimelineHistory(1), log: silentLogger() });
    try {
      const expected = (error: unknown): boolean => {
        assert.ok(isWalcastError(error), String(error));
        assert.equal(error.code, 'WALCAST_ERR_REMOTE_STORAGE');
        assert.equal(error.sqlState, SqlState.internalError);
        assert.ok(error.message.includes(`could not read WAL segment ${name} from object storage (object ${key})`), error.message);
        return true;
      };
      await assert.rejects(cache.fetch(11n), expected);
      const hits = failing.hits;
      assert.ok(hits >= REMOTE_GET_ATTEMPTS_MAX, `every attempt was made (${hits} GETs)`);
      await assert.rejects(cache.fetch(11n), expected);
      assert.equal(failing.hits, hits, 'the failure just seen answered the second fetch');
      assert.equal(cache.stats.fetchErrors, 1);
      assert.equal(cache.stats.getRetries, REMOTE_GET_ATTEMPTS_MAX - 1);
    } finally {
      failing.remove();
      store.close();
      direct.close();
    }
  });
});

describe('streams of offloaded WAL through a slow or failing store (real primary, restored walcast)', { timeout: 900_000 }, () => {
  const SEGMENT_BYTES = MIB;
  /** Segments offloaded before the restore: the restored walcast holds only the last one locally. */
  const OFFLOADED_SEGMENTS = 10;
  /** walcast's --replica-timeout for the restored server: shorter than one slow GET. */
  const REPLICA_TIMEOUT_MS = 2000;
  const SLOW_GET_MS = 3000;
  let primary: PgCluster;
  let restoredDir: string;
  let tenantId: string;
  let timelineId: string;
  let firstLsn: Lsn;
  let backupLsn: Lsn;
  let earlyBase: StandbyBase | undefined;
  const proxied = (): RemoteStorageConfig => parseRemoteStorageUrl(`s3://${TEST_BUCKET}/live`, { endpoint: proxy.endpoint });

  before(async () => {
    primary = await startPrimary({ walSegmentMb: 1, extraConf: { wal_keep_size: '1GB' } });
    await primary.sql('CREATE TABLE faults_filler (id int, pad text) WITH (autovacuum_enabled = off)');
    const dataDir = await makeTempDir('walcast-faults-origin');
    await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1 port=${primary.port} user=repl`, password: undefined, log: silentLogger() });
    const origin: RunningWalcast = await startWalcast({ dataDir, remoteStorage: parseRemoteStorageUrl(`s3://${TEST_BUCKET}/live`, { endpoint: s3.endpoint }) });
    try {
      const [timeline] = origin.server.timelines.list();
      assert.ok(timeline !== undefined);
      ({ tenantId, timelineId } = timeline);
      firstLsn = timeline.timelineStartLsn;
      // Taken now, before the WAL below: the standby will need all of it, and will get it from object storage.
      earlyBase = await makeStandby(primary, { applicationName: 'early', extraConf: { wal_receiver_timeout: '2s', wal_receiver_status_interval: '0' } });
      const target = firstLsn + BigInt(OFFLOADED_SEGMENTS * SEGMENT_BYTES);
      while (parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()')) < target) {
        await primary.sql("INSERT INTO faults_filler SELECT g, repeat('x', 1000) FROM generate_series(1, 600) g");
        await primary.sql('SELECT pg_switch_wal()');
      }
      const uploader = origin.server.offload?.uploader(tenantId, timelineId);
      assert.ok(uploader !== undefined);
      await until(() => uploader.backupLsn >= target, 'the origin walcast offloaded the WAL');
      backupLsn = uploader.backupLsn;
    } finally {
      await origin.stop();
    }
    restoredDir = await makeTempDir('walcast-faults-restored');
    const restore = await runWalcastCli([
      'timeline', 'restore', '--data-dir', restoredDir, '--remote-storage', `s3://${TEST_BUCKET}/live`, '--remote-storage-endpoint', s3.endpoint,
      '--tenant-id', tenantId, '--timeline-id', timelineId,
    ]);
    assert.equal(restore.code, 0, restore.stderr);
  }, { timeout: 600_000 });

  after(async () => {
    await earlyBase?.standby?.stop({ mode: 'immediate' }).catch(() => undefined);
    await primary?.stop({ mode: 'immediate' });
  });

  /** A pg_receivewal directory that makes it start at `segno`: a zeroed full-size .partial (receivelog.c FindStreamingStart). */
  async function receiveDirFrom(segno: bigint): Promise<string> {
    const dir = await makeTempDir('faults-receivewal');
    await writeFile(join(dir, `${segmentFileName(1, segno, SEGMENT_BYTES)}.partial`), Buffer.alloc(SEGMENT_BYTES));
    return dir;
  }

  async function assertSameAsPrimary(dir: string, from: Lsn, to: Lsn): Promise<number> {
    let compared = 0;
    for (let segno = from / BigInt(SEGMENT_BYTES); segmentStartLsn(segno, SEGMENT_BYTES) < to; segno++) {
      const name = segmentFileName(1, segno, SEGMENT_BYTES);
      const difference = firstDifference(await readFile(join(dir, name)), await readFile(join(primary.walDir, name)));
      assert.equal(difference, -1, `${name} differs from the primary's at ${difference}`);
      compared++;
    }
    return compared;
  }

  test(`GETs slower (${SLOW_GET_MS} ms) than the ${REPLICA_TIMEOUT_MS} ms replica timeout: pg_receivewal -s 0 keeps its stream and receives old WAL byte-identical`, async (t) => {
    const walcast = await startWalcast({ dataDir: restoredDir, remoteStorage: proxied(), replicaTimeoutMs: REPLICA_TIMEOUT_MS });
    const slow = proxy.inject({ method: 'GET', pathIncludes: `/${timelineId}/00000001`, delayMs: SLOW_GET_MS, times: Number.POSITIVE_INFINITY });
    try {
      const [timeline] = walcast.server.timelines.list();
      assert.ok(timeline !== undefined && timeline.timelineStartLsn > firstLsn + 3n * BigInt(SEGMENT_BYTES), 'the WAL asked for is not on local disk');
      const endLsn = firstLsn + 3n * BigInt(SEGMENT_BYTES);
      const dir = await receiveDirFrom(firstLsn / BigInt(SEGMENT_BYTES));
      // -s 0: pg_receivewal answers only when asked, so only walcast's keepalives keep the stream within its timeout.
      const result = await runReceiveWal({ port: walcast.port, dir, endpos: formatLsn(endLsn), extraArgs: ['-s', '0'], timeoutMs: 300_000 });
      assert.equal(result.code, 0, result.stderr);
      assert.doesNotMatch(result.stderr, /timeout/i);
      const compared = await assertSameAsPrimary(dir, firstLsn, endLsn);
      assert.ok(slow.hits >= 3, `the slow GETs happened (${slow.hits})`);
      const reads = walcast.server.offload?.cache(tenantId, timelineId)?.stats;
      assert.ok(timeline.walBytesServed.remote >= Number(endLsn - firstLsn), `served from object storage: ${JSON.stringify(timeline.walBytesServed)}`);
      assert.equal(timeline.walBytesServed.local, 0, 'none of it came from local disk');
      const metrics = createOperationsMetrics({ backend: 'ts', strategy: 'test' });
      metrics.bindTimelines(walcast.server.timelines);
      const { body } = await metrics.render();
      const served = (source: string): number => Number(new RegExp(`^walcast_wal_bytes_served_total\\{[^}]*source="${source}"\\} (\\S+)$`, 'm').exec(body)?.[1] ?? Number.NaN);
      assert.equal(served('remote'), timeline.walBytesServed.remote);
      assert.equal(served('local'), 0);
      t.diagnostic(`${compared} segments byte-identical through ${slow.hits} GETs delayed ${SLOW_GET_MS} ms each; remote reads ${JSON.stringify(reads)}`);
    } finally {
      slow.remove();
      await walcast.stop();
    }
  });

  test('a segment whose GETs always fail ends that stream with an ErrorResponse naming the object; a concurrent stream of local WAL completes byte-identical', async (t) => {
    const walcast = await startWalcast({ dataDir: restoredDir, remoteStorage: proxied(), replicaTimeoutMs: REPLICA_TIMEOUT_MS });
    const broken = segmentFileName(1, firstLsn / BigInt(SEGMENT_BYTES), SEGMENT_BYTES);
    const failing = proxy.inject({ method: 'GET', pathIncludes: `/${timelineId}/${broken}`, status: 500, times: Number.POSITIVE_INFINITY });
    try {
      const [timeline] = walcast.server.timelines.list();
      assert.ok(timeline !== undefined);
      const localStart = timeline.timelineStartLsn;
      assert.ok(localStart < backupLsn + BigInt(SEGMENT_BYTES) && localStart > firstLsn);
      const localEnd = localStart + BigInt(SEGMENT_BYTES);
      const [remote, local] = await Promise.all([
        runReceiveWal({ port: walcast.port, dir: await receiveDirFrom(firstLsn / BigInt(SEGMENT_BYTES)), endpos: formatLsn(firstLsn + BigInt(SEGMENT_BYTES)), extraArgs: ['-s', '0'], timeoutMs: 300_000 }),
        (async () => {
          const dir = await receiveDirFrom(localStart / BigInt(SEGMENT_BYTES));
          return { dir, result: await runReceiveWal({ port: walcast.port, dir, endpos: formatLsn(localEnd), extraArgs: ['-s', '0'], timeoutMs: 300_000 }) };
        })(),
      ]);
      assert.notEqual(remote.code, 0, 'the stream of the broken segment failed');
      assert.match(remote.stderr, new RegExp(`ERROR: +could not read WAL segment ${broken} from object storage \\(object [^)]*${broken}\\)`));
      assert.equal(local.result.code, 0, local.result.stderr);
      await assertSameAsPrimary(local.dir, localStart, localEnd);
      assert.ok(timeline.walBytesServed.local >= Number(localEnd - localStart), `served from local disk: ${JSON.stringify(timeline.walBytesServed)}`);
      assert.ok(failing.hits >= 5, `the failing GETs were retried (${failing.hits} requests)`);
      const reads = walcast.server.offload?.cache(tenantId, timelineId)?.stats;
      assert.ok(reads !== undefined && reads.fetchErrors >= 1 && reads.getRetries >= 1, JSON.stringify(reads));
      t.diagnostic(`remote stream: ${remote.stderr.trim().split('\n').filter((line) => /ERROR/.test(line)).join(' | ')}; ${failing.hits} failed GETs; ${JSON.stringify(reads)}`);
    } finally {
      failing.remove();
      await walcast.stop();
    }
  });

  test(`a standby from a base backup older than the local WAL catches up through walcast from object storage on one connection, with GETs slower than its 2 s wal_receiver_timeout`, async (t) => {
    assert.ok(earlyBase !== undefined);
    const walcast = await startWalcast({ dataDir: restoredDir, remoteStorage: proxied(), replicaTimeoutMs: REPLICA_TIMEOUT_MS });
    const slow = proxy.inject({ method: 'GET', pathIncludes: `/${timelineId}/00000001`, delayMs: SLOW_GET_MS, times: Number.POSITIVE_INFINITY });
    try {
      const [timeline] = walcast.server.timelines.list();
      assert.ok(timeline !== undefined);
      const primaryEnd = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
      const expectedRows = await primary.sql('SELECT count(*) FROM faults_filler');
      // A walreceiver pings at half its wal_receiver_timeout and walcast answers at once, so a standby keeps both
      // timeouts satisfied by itself (the pg_receivewal -s 0 test above is the one that needs walcast's keepalives);
      // this checks that it catches up from object storage on one connection, GETs slower than its timeout or not.
      const standby = await earlyBase.startWithUpstream(walcast.port);
      await waitFor(
        async () => {
          const replayed = await standby.sql('SELECT pg_last_wal_replay_lsn()').catch(() => '');
          return replayed !== '' && parseLsnOrThrow(replayed) >= primaryEnd ? true : undefined;
        },
        300_000,
        { what: 'the standby replayed up to the primary', pollMs: 500 },
      );
      assert.equal(await standby.sql('SELECT count(*) FROM faults_filler'), expectedRows);
      // One connection the whole way: no timeout on either side cut the stream while a GET was slow.
      const log = await readFile(standby.logFile, 'utf8');
      assert.equal([...log.matchAll(/started streaming WAL from primary/g)].length, 1, log.split('\n').filter((line) => !line.includes('connection')).join('\n'));
      assert.doesNotMatch(log, /terminating walreceiver due to timeout|replication terminated by primary server|could not receive data from WAL stream/);
      assert.ok(slow.hits >= 1 && timeline.walBytesServed.remote > 0, `served from object storage through slow GETs (${slow.hits}): ${JSON.stringify(timeline.walBytesServed)}`);
      t.diagnostic(`standby caught up to ${formatLsn(primaryEnd)} (${expectedRows} rows); ${slow.hits} GETs delayed ${SLOW_GET_MS} ms; served ${JSON.stringify(timeline.walBytesServed)}`);
      await standby.stop({ mode: 'fast' });
    } finally {
      slow.remove();
      await walcast.stop();
    }
  });

  /** `walcast serve` on the restored directory as a child process (so it can be killed -9), storage through the proxy. */
  async function spawnRestored(port: number): Promise<ServeProcess> {
    return spawnServe({
      args: ['--data-dir', restoredDir, '--listen', `127.0.0.1:${port}`, '--no-http', '--replica-timeout', String(REPLICA_TIMEOUT_MS),
        '--remote-storage', `s3://${TEST_BUCKET}/live`, '--remote-storage-endpoint', proxy.endpoint],
      ready: async (serve) => (serve.output().includes('"msg":"listening"') ? true : undefined),
    });
  }

  test('kill -9 while a remote read is in flight: after a restart the same stream is served byte-identical', async (t) => {
    const port = await freePort();
    const slow = proxy.inject({ method: 'GET', pathIncludes: `/${timelineId}/00000001`, delayMs: SLOW_GET_MS, times: Number.POSITIVE_INFINITY });
    let serve = await spawnRestored(port);
    const endLsn = firstLsn + 2n * BigInt(SEGMENT_BYTES);
    try {
      const hitsBefore = slow.hits;
      const first = runReceiveWal({ port, dir: await receiveDirFrom(firstLsn / BigInt(SEGMENT_BYTES)), endpos: formatLsn(endLsn), extraArgs: ['-s', '0'], timeoutMs: 120_000 });
      await until(() => slow.hits > hitsBefore, 'a GET of an offloaded segment is in flight');
      serve.kill9();
      assert.equal(await serve.exited, 'SIGKILL');
      const interrupted = await first;
      assert.notEqual(interrupted.code, 0, 'the stream of the killed server failed');
      slow.remove();
      serve = await spawnRestored(port);
      const dir = await receiveDirFrom(firstLsn / BigInt(SEGMENT_BYTES));
      const result = await runReceiveWal({ port, dir, endpos: formatLsn(endLsn), extraArgs: ['-s', '0'], timeoutMs: 120_000 });
      assert.equal(result.code, 0, `${result.stderr}\n${serve.output().slice(-4000)}`);
      const compared = await assertSameAsPrimary(dir, firstLsn, endLsn);
      t.diagnostic(`killed with a GET in flight; after the restart ${compared} segments byte-identical`);
    } finally {
      slow.remove();
      await serve.stop();
    }
  });

  test('kill -9 while uploads are in flight: the persisted backup LSN only covers objects in the bucket; after a restart the uploader resumes and every segment is byte-identical', async (t) => {
    const port = await freePort();
    const timelineDir = timelineDirPath(restoredDir, tenantId, timelineId);
    const slowPuts = proxy.inject({ method: 'PUT', pathIncludes: `/${timelineId}/00000001`, delayMs: SLOW_GET_MS, times: Number.POSITIVE_INFINITY });
    let serve = await spawnRestored(port);
    const store = directStore('live');
    try {
      const before = (await readControlFile(timelineDir)).backupLsn ?? 0n;
      const target = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()')) + 3n * BigInt(SEGMENT_BYTES);
      while (parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()')) < target) {
        await primary.sql("INSERT INTO faults_filler SELECT g, repeat('x', 1000) FROM generate_series(1, 600) g");
        await primary.sql('SELECT pg_switch_wal()');
      }
      await until(() => slowPuts.hits > 0, 'a segment PUT is in flight');
      serve.kill9();
      assert.equal(await serve.exited, 'SIGKILL');
      // Whatever the control file says is offloaded must be in the bucket: it is written only after the PUT answered.
      const persisted = (await readControlFile(timelineDir)).backupLsn ?? 0n;
      assert.ok(persisted >= before);
      const checkedBeforeRestart = await assertBucketSameAsPrimary(store, firstLsn, persisted);
      slowPuts.remove();
      serve = await spawnRestored(port);
      const flushed = target - (target % BigInt(SEGMENT_BYTES));
      await waitFor(async () => (((await readControlFile(timelineDir)).backupLsn ?? 0n) >= flushed ? true : undefined), WAIT_MS, { what: 'the uploader resumed after kill -9', pollMs: 200 });
      const compared = await assertBucketSameAsPrimary(store, firstLsn, flushed);
      t.diagnostic(`killed with ${slowPuts.hits} delayed PUTs; backup LSN ${formatLsn(persisted)} at the kill (${checkedBeforeRestart} segments in the bucket), ${formatLsn(flushed)} after the restart: ${compared} segments byte-identical`);
    } finally {
      slowPuts.remove();
      store.close();
      await serve.stop();
    }
  });

  /** Every segment object in [from, to) equals the primary's file; returns how many were compared. */
  async function assertBucketSameAsPrimary(store: S3ObjectStore, from: Lsn, to: Lsn): Promise<number> {
    let compared = 0;
    for (let segno = from / BigInt(SEGMENT_BYTES); segmentStartLsn(segno, SEGMENT_BYTES) < to; segno++) {
      const name = segmentFileName(1, segno, SEGMENT_BYTES);
      const stored = await store.getRange(store.key(segmentKey({ tenantId, timelineId }, 1, segno, SEGMENT_BYTES)), 0, SEGMENT_BYTES);
      const difference = firstDifference(stored, await readFile(join(primary.walDir, name)));
      assert.equal(difference, -1, `${name} in the bucket differs from the primary's at ${difference}`);
      compared++;
    }
    return compared;
  }
});
