/**
 * Offload across a failover, against real PostgreSQL 15 and a real S3 API server (s3rver on loopback): primary P,
 * its physical standby S, walcast W following `host=P,S` with --remote-storage and a small --wal-keep-size.
 * pgbench writes on P, P stops, S is promoted and W follows it onto timeline 2; pgbench then writes far more than
 * the keep window on S. The production bug this guards: the uploader named segments with the TLI of the moment the
 * timeline was opened, so after the switch it looked for old-TLI files that never came, the backup LSN stalled,
 * and retention (bounded by it) stopped removing WAL: unbounded disk.
 * - the backup LSN passes the switch point and reaches W's flush segment, with no failed upload;
 * - retention removes past the switch segment and W's disk ends within the keep window plus slack;
 * - the bucket prefix is a WAL archive as S's pg_wal: TLI-1 segments before the switch segment, the history file,
 *   TLI-2 segments from the switch segment on, all byte-identical to S's;
 * - pg_receivewal from W's first LSN (most of it read back from the bucket) crosses to timeline 2 and gets every
 *   byte of both timelines identical to S's;
 * - `walcast timeline restore` into an empty data directory brings back the history file and TLI 2, and the
 *   restored walcast serves both timelines from the bucket byte-identical.
 */
import assert from 'node:assert/strict';
import { lstat, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { alignDown, formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { parseRemoteStorageUrl, type RemoteStorageConfig } from '../src/remote/remote-config.js';
import { historyKey, segmentKey, timelinePrefix } from '../src/remote/remote-layout.js';
import { S3ObjectStore } from '../src/remote/s3-object-store.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import { parseTimelineHistory, switchPointOf } from '../src/storage/timeline-history.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { makeStandby, makeTempDir, runReceiveWal, startPrimary, type PgCluster, type PgStandby } from './support/postgres.js';
import { TEST_BUCKET, startTestS3, type TestS3 } from './support/s3.js';
import { FAILOVER_SEGMENT_BYTES, assertRangeMatches, assertTimeline2Matches, soleTimeline } from './support/timeline-wal.js';
import { runWalcastCli, startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const SEGMENT_BYTES = FAILOVER_SEGMENT_BYTES;
const MIB = 1024 * 1024;
const WAL_KEEP_BYTES = 3 * SEGMENT_BYTES;
/** As test/failover-retention.test.ts: the segment being written, WAL arriving during a pass, the old TLI's `.partial`. */
const DISK_SLACK_BYTES = 6 * SEGMENT_BYTES;
const DISK_BOUND_BYTES = WAL_KEEP_BYTES + DISK_SLACK_BYTES;
const TLI1_WAL_BYTES = 4 * SEGMENT_BYTES;
const TLI2_WAL_BYTES = 8 * SEGMENT_BYTES;
const TEST_TIMEOUT_MS = 900_000;
const CATCH_UP_TIMEOUT_MS = 300_000;
const PRODUCE_TIMEOUT_MS = 420_000;
const BULK_SCRIPT = "INSERT INTO failover_filler SELECT g, repeat('x', 1000) FROM generate_series(1, 4000) g;\n";
const PGBENCH_RATE_TPS = 3;
const SEGMENT_FILE = /^[0-9A-F]{24}(\.partial|\.crc)?$/;
const PREFIX = 'failover';
const SAMPLE_INTERVAL_MS = 250;

let s3: TestS3;
let store: S3ObjectStore;
let primary: PgCluster;
let promoted: PgStandby;
let walcast: RunningWalcast;
let timeline: Timeline;
let bulkScript: string;
let remote: RemoteStorageConfig;
const cleanups: (() => Promise<void>)[] = [];

before(async () => {
  s3 = await startTestS3();
  cleanups.push(() => s3.dispose());
  remote = parseRemoteStorageUrl(`s3://${TEST_BUCKET}/${PREFIX}`, { endpoint: s3.endpoint });
  store = new S3ObjectStore(remote);
  cleanups.push(async () => store.close());
  primary = await startPrimary({ extraConf: { wal_keep_size: '1GB', max_wal_size: '256MB' } });
  cleanups.push(() => primary.stop({ mode: 'immediate' }));
  await primary.pgbench(['-i', '-s', '1', '-q']);
  await primary.sql('CREATE TABLE failover_filler (id int, pad text) WITH (autovacuum_enabled = off)');
  bulkScript = join(await makeTempDir('failover-offload-pgbench'), 'bulk.sql');
  await writeFile(bulkScript, BULK_SCRIPT);
  // S keeps its WAL of both timelines: the byte reference.
  const standbyBase = await makeStandby(primary, { applicationName: 'failover_offload_s', start: true, extraConf: { wal_keep_size: '1GB' } });
  assert.ok(standbyBase.standby !== undefined);
  promoted = standbyBase.standby;
  cleanups.push(() => promoted.stop({ mode: 'immediate' }));
  const dataDir = await makeTempDir('walcast-failover-offload');
  await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1,127.0.0.1 port=${primary.port},${promoted.port} user=repl`, password: undefined, log: silentLogger() });
  walcast = await startWalcast({ dataDir, retention: { walKeepBytes: WAL_KEEP_BYTES, maxSlotWalKeepBytes: undefined }, remoteStorage: remote });
  // walcast is replaced by the restore test: stop whichever runs.
  cleanups.push(() => walcast.stop());
  timeline = soleTimeline(walcast);
}, { timeout: 300_000 });

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
});

describe('offload across a failover', { timeout: TEST_TIMEOUT_MS }, () => {
  test('after the switch to timeline 2 the backup LSN keeps advancing, disk stays bounded, the bucket is a WAL archive of both timelines', async (t) => {
    await waitFor(async () => ((await primary.sql("SELECT count(*) FROM pg_stat_replication WHERE application_name IN ('walcast', 'failover_offload_s') AND state = 'streaming'")) === '2' ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'W and S streaming from P' });
    const firstLsn = timeline.timelineStartLsn;

    await produceWalUntil(primary, firstLsn + BigInt(TLI1_WAL_BYTES));
    await primary.stop({ mode: 'fast' });
    const walcastEnd = timeline.flushLsn.get();
    await waitFor(async () => (parseLsnOrThrow(await promoted.sql('SELECT pg_last_wal_receive_lsn()')) >= walcastEnd ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'S received what W holds' });
    assert.equal(await promoted.sql('SELECT pg_promote()'), 't');
    await waitFor(async () => (timeline.pgTimelineId === 2 ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'W on timeline 2' });
    const historyText = await readFile(join(promoted.dataDir, 'pg_wal', '00000002.history'), 'utf8');
    const end = switchPointOf(1, parseTimelineHistory(historyText, 2));
    assert.ok(end !== undefined);
    const switchLsn = end.switchLsn;
    assert.equal(switchLsn, walcastEnd, "W held timeline 1 exactly up to S's switch point");
    const switchSegmentStart = alignDown(switchLsn, SEGMENT_BYTES);
    const backupAtSwitch = backupLsn();
    t.diagnostic(`switch at ${formatLsn(switchLsn)}; backup LSN then ${formatLsn(backupAtSwitch)}; W's start ${formatLsn(timeline.timelineStartLsn)}`);

    const sampler = sampleDisk(timeline);
    await produceWalUntil(promoted, switchLsn + BigInt(TLI2_WAL_BYTES));
    const promotedFlush = parseLsnOrThrow(await promoted.sql('SELECT pg_current_wal_flush_lsn()'));
    await timeline.commitLsn.waitBeyond(promotedFlush - 1n, CATCH_UP_TIMEOUT_MS);
    const flushSegmentStart = alignDown(timeline.flushLsn.get(), SEGMENT_BYTES);
    await waitFor(async () => (backupLsn() >= flushSegmentStart ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: `backup LSN (${formatLsn(backupLsn())}) reaches W's flush segment ${formatLsn(flushSegmentStart)}` });
    const backup = backupLsn();
    assert.ok(backup > switchLsn, `the backup LSN ${formatLsn(backup)} passed the switch point`);
    const stats = walcast.server.offload?.status(timeline.tenantId, timeline.timelineId);
    assert.equal(stats?.uploadErrors, 0, `no failed upload: ${JSON.stringify(stats, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value))}`);

    const task = walcast.server.retention?.task(timeline.tenantId, timeline.timelineId);
    assert.ok(task !== undefined, 'retention runs for the followed timeline');
    await task.runPass();
    await task.runPass();
    const startLsn = timeline.timelineStartLsn;
    assert.ok(startLsn > switchSegmentStart + BigInt(SEGMENT_BYTES), `retention moved the start ${formatLsn(startLsn)} past the switch segment`);
    const samples = await sampler.stop();
    for (const sample of samples) {
      assert.ok(sample.diskBytes <= sample.allowedBytes, `at ${sample.atMs} ms ${mib(sample.diskBytes)} MiB on disk, over ${mib(sample.allowedBytes)} MiB (backup LSN ${sample.backup})`);
    }
    const largest = Math.max(...samples.map((sample) => sample.diskBytes));
    t.diagnostic(`${samples.length} disk samples on timeline 2, largest ${mib(largest)} MiB`);
    const diskBytes = await segmentDiskBytes(timeline.dir);
    t.diagnostic(`after ${mib(Number(promotedFlush - switchLsn))} MiB on timeline 2: backup ${formatLsn(backup)}, start ${formatLsn(startLsn)}, ${mib(diskBytes)} MiB of segment files on disk`);
    assert.ok(diskBytes <= DISK_BOUND_BYTES, `${mib(diskBytes)} MiB on disk, over ${mib(DISK_BOUND_BYTES)} MiB`);

    // The bucket prefix, copied out as `aws s3 cp --recursive` would, is a WAL archive equal to S's pg_wal.
    const archive = await makeTempDir('failover-offload-archive');
    const objects = await store.list(store.key(timelinePrefix(timeline)));
    for (const object of objects) {
      const name = object.key.slice(object.key.lastIndexOf('/') + 1);
      await writeFile(join(archive, name), await store.getRange(object.key, 0, object.sizeBytes));
    }
    const names = (await readdir(archive)).sort();
    assert.ok(names.includes('00000002.history'), `the history file is in the bucket: ${names.join(', ')}`);
    assert.equal(await readFile(join(archive, '00000002.history'), 'utf8'), historyText);
    const switchSegno = switchSegmentStart / BigInt(SEGMENT_BYTES);
    assert.ok(!names.includes(segmentFileName(1, switchSegno, SEGMENT_BYTES)), "the old TLI's switch segment (a .partial) is not an archive segment");
    assert.ok(await store.head(store.key(segmentKey(timeline, 2, switchSegno, SEGMENT_BYTES))), 'the switch segment is in the bucket under TLI 2');
    assert.ok(await store.head(store.key(historyKey(timeline, 2))));
    const tli1 = await assertRangeMatches(archive, join(promoted.dataDir, 'pg_wal'), 1, firstLsn, switchSegmentStart);
    const tli2 = await assertTimeline2Matches(archive, join(promoted.dataDir, 'pg_wal'), switchLsn, backup);
    t.diagnostic(`bucket: ${mib(tli1)} MiB of timeline 1 and ${mib(tli2)} MiB of timeline 2 equal S's pg_wal (${names.length} objects)`);

    // A replica from W's first LSN: the WAL before the local start comes back from the bucket, across the switch.
    const receiveDir = await makeTempDir('failover-offload-receivewal');
    await writeFile(join(receiveDir, `${segmentFileName(1, firstLsn / BigInt(SEGMENT_BYTES), SEGMENT_BYTES)}.partial`), Buffer.alloc(SEGMENT_BYTES));
    const result = await runReceiveWal({ port: walcast.port, dir: receiveDir, endpos: formatLsn(backup), timeoutMs: CATCH_UP_TIMEOUT_MS });
    assert.equal(result.code, 0, `pg_receivewal: ${result.stderr}`);
    assert.match(result.stderr, /switched to timeline 2/);
    const received1 = await assertRangeMatches(receiveDir, join(promoted.dataDir, 'pg_wal'), 1, firstLsn, switchLsn);
    const received2 = await assertTimeline2Matches(receiveDir, join(promoted.dataDir, 'pg_wal'), switchLsn, backup);
    const reads = walcast.server.offload?.cache(timeline.tenantId, timeline.timelineId)?.stats;
    assert.ok(reads !== undefined && reads.segmentsFetched > 0 && reads.fetchErrors === 0, JSON.stringify(reads));
    t.diagnostic(`pg_receivewal: ${mib(received1)} MiB of timeline 1 and ${mib(received2)} MiB of timeline 2 equal S's; ${reads.segmentsFetched} segments read back from the bucket`);
    restoreCheck = { firstLsn, switchLsn, backup, historyText };
  });

  test('`walcast timeline restore` of the switched timeline: history file back, serve reads both timelines from the bucket byte-identical', async (t) => {
    assert.ok(restoreCheck !== undefined, 'the failover test ran');
    const { firstLsn, switchLsn, historyText } = restoreCheck;
    await walcast.stop();
    const dataDir = await makeTempDir('walcast-failover-restored');
    const restore = await runWalcastCli([
      'timeline', 'restore', '--data-dir', dataDir, '--remote-storage', `s3://${TEST_BUCKET}/${PREFIX}`, '--remote-storage-endpoint', s3.endpoint,
      '--tenant-id', timeline.tenantId, '--timeline-id', timeline.timelineId, '--json',
    ]);
    assert.equal(restore.code, 0, restore.stderr);
    const restored = JSON.parse(restore.stdout) as Record<string, unknown>;
    t.diagnostic(`restored: ${restore.stdout.trim()}`);
    assert.equal(restored.pg_timeline_id, 2);
    assert.equal(restored.history_files, '00000002.history');
    const restoredDir = join(dataDir, timeline.tenantId, timeline.timelineId);
    assert.equal(await readFile(join(restoredDir, '00000002.history'), 'utf8'), historyText);
    // The restored walcast follows S again from the backup LSN, on timeline 2.
    walcast = await startWalcast({ dataDir, remoteStorage: remote });
    const served = soleTimeline(walcast);
    assert.equal(served.pgTimelineId, 2);
    const end = served.flushLsn.get();
    assert.ok(end >= restoreCheck.backup);
    const receiveDir = await makeTempDir('failover-offload-restored-receivewal');
    await writeFile(join(receiveDir, `${segmentFileName(1, firstLsn / BigInt(SEGMENT_BYTES), SEGMENT_BYTES)}.partial`), Buffer.alloc(SEGMENT_BYTES));
    const result = await runReceiveWal({ port: walcast.port, dir: receiveDir, endpos: formatLsn(restoreCheck.backup), timeoutMs: CATCH_UP_TIMEOUT_MS });
    assert.equal(result.code, 0, `pg_receivewal: ${result.stderr}`);
    assert.match(result.stderr, /switched to timeline 2/);
    const received1 = await assertRangeMatches(receiveDir, join(promoted.dataDir, 'pg_wal'), 1, firstLsn, switchLsn);
    const received2 = await assertTimeline2Matches(receiveDir, join(promoted.dataDir, 'pg_wal'), switchLsn, restoreCheck.backup);
    t.diagnostic(`restored walcast served ${mib(received1)} MiB of timeline 1 and ${mib(received2)} MiB of timeline 2, equal to S's`);
  });
});

/** What the failover test leaves for the restore test. */
let restoreCheck: { readonly firstLsn: Lsn; readonly switchLsn: Lsn; readonly backup: Lsn; readonly historyText: string } | undefined;

interface DiskSample {
  readonly atMs: number;
  readonly diskBytes: number;
  readonly backup: string;
  /** The bound, raised by how far the backup LSN (which retention may not pass) trails the keep window. */
  readonly allowedBytes: number;
}

/**
 * Samples W's segment files while WAL comes in. Uploads to the loopback server normally keep up; the allowance for
 * an upload lag keeps the sample honest without making it timing-dependent. A stalled backup LSN is caught by the
 * test's wait for it to reach the flush segment, and the end state is checked against the plain bound.
 */
function sampleDisk(of: Timeline): { stop(): Promise<DiskSample[]> } {
  const samples: DiskSample[] = [];
  const startedAt = Date.now();
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const keepFrom = of.commitLsn.get() - BigInt(WAL_KEEP_BYTES);
      const backup = backupLsn();
      const uploadLag = backup < keepFrom ? Number(keepFrom - backup) : 0;
      samples.push({ atMs: Date.now() - startedAt, diskBytes: await segmentDiskBytes(of.dir), backup: formatLsn(backup), allowedBytes: DISK_BOUND_BYTES + uploadLag });
      await new Promise((resolve) => setTimeout(resolve, SAMPLE_INTERVAL_MS));
    }
  })();
  return {
    stop: async () => {
      stopped = true;
      await loop;
      return samples;
    },
  };
}

function backupLsn(): Lsn {
  return walcast.server.offload?.uploader(timeline.tenantId, timeline.timelineId)?.backupLsn ?? 0n;
}

/** pgbench rounds (TPC-B and the bulk script, 1:4) on `cluster` until its WAL passes `targetLsn`, as test/failover-retention.test.ts. */
async function produceWalUntil(cluster: PgCluster | PgStandby, targetLsn: Lsn): Promise<void> {
  const deadline = Date.now() + PRODUCE_TIMEOUT_MS;
  for (;;) {
    const flushed = parseLsnOrThrow(await cluster.sql('SELECT pg_current_wal_flush_lsn()'));
    if (flushed >= targetLsn) return;
    assert.ok(Date.now() < deadline, `reached only ${formatLsn(flushed)} of ${formatLsn(targetLsn)} in ${PRODUCE_TIMEOUT_MS} ms`);
    await cluster.pgbench(['-c', '2', '-T', '3', '-R', String(PGBENCH_RATE_TPS), '-n', '-b', 'tpcb-like@1', '-f', `${bulkScript}@4`]);
  }
}

/** Allocated bytes of W's segment files of every TLI (sidecars included), measured independently of walcast. */
async function segmentDiskBytes(dir: string): Promise<number> {
  let total = 0;
  for (const name of await readdir(dir)) {
    if (SEGMENT_FILE.test(name)) total += await lstat(join(dir, name)).then((stat) => stat.blocks * 512, () => 0);
  }
  return total;
}

function mib(bytes: number): string {
  return (bytes / MIB).toFixed(1);
}
