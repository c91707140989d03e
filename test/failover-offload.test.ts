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
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { alignDown, formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { parseRemoteStorageUrl, type RemoteStorageConfig } from '../src/remote/remote-config.js';
import { historyKey, segmentKey, timelinePrefix } from '../src/remote/remote-layout.js';
import { S3ObjectStore } from '../src/remote/s3-object-store.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import {
  FAILOVER_CATCH_UP_TIMEOUT_MS as CATCH_UP_TIMEOUT_MS,
  FAILOVER_DISK_BOUND_BYTES as DISK_BOUND_BYTES,
  FAILOVER_WAL_KEEP_BYTES as WAL_KEEP_BYTES,
  assertPassesCompleted,
  assertSamplesBounded,
  failOver,
  mib,
  produceWalUntil,
  sampleDisk,
  segmentDiskBytes,
  startFailoverCluster,
  waitBothStreaming,
  type FailoverCluster,
} from './support/failover-cluster.js';
import { makeTempDir, runReceiveWal } from './support/postgres.js';
import { TEST_BUCKET, startTestS3, type TestS3 } from './support/s3.js';
import { FAILOVER_SEGMENT_BYTES, assertRangeMatches, assertTimeline2Matches, soleTimeline } from './support/timeline-wal.js';
import { runWalcastCli, startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const SEGMENT_BYTES = FAILOVER_SEGMENT_BYTES;
/** WAL written on timeline 1 before the failover, and on timeline 2 after it. */
const TLI1_WAL_BYTES = 4 * SEGMENT_BYTES;
const TLI2_WAL_BYTES = 8 * SEGMENT_BYTES;
const TEST_TIMEOUT_MS = 900_000;
const PREFIX = 'failover';

let s3: TestS3;
let store: S3ObjectStore;
let remote: RemoteStorageConfig;
let cluster: FailoverCluster;
/** The restore test replaces the cluster's walcast with the restored one; the cleanup stops whichever runs. */
let walcast: RunningWalcast;
const cleanups: (() => Promise<void>)[] = [];

before(async () => {
  s3 = await startTestS3();
  cleanups.push(() => s3.dispose());
  remote = parseRemoteStorageUrl(`s3://${TEST_BUCKET}/${PREFIX}`, { endpoint: s3.endpoint });
  store = new S3ObjectStore(remote);
  cleanups.push(async () => store.close());
  cluster = await startFailoverCluster({ name: 'failover-offload', remoteStorage: remote, cleanups });
  walcast = cluster.walcast;
  cleanups.push(() => walcast.stop());
}, { timeout: 300_000 });

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
});

describe('offload across a failover', { timeout: TEST_TIMEOUT_MS }, () => {
  test('after the switch to timeline 2 the backup LSN keeps advancing, disk stays bounded, the bucket is a WAL archive of both timelines', async (t) => {
    const { primary, promoted, timeline } = cluster;
    await waitBothStreaming(cluster);
    const firstLsn = timeline.timelineStartLsn;

    await produceWalUntil(cluster, primary, firstLsn + BigInt(TLI1_WAL_BYTES));
    const { switchLsn, historyText } = await failOver(cluster);
    const switchSegmentStart = alignDown(switchLsn, SEGMENT_BYTES);
    const backupAtSwitch = backupLsn();
    t.diagnostic(`switch at ${formatLsn(switchLsn)}; backup LSN then ${formatLsn(backupAtSwitch)}; W's start ${formatLsn(timeline.timelineStartLsn)}`);

    // Uploads to the loopback server normally keep up; the allowance for an upload lag (retention may not pass the
    // backup LSN) keeps the samples honest without making them timing-dependent. A stalled backup LSN is caught by
    // the wait for it to reach the flush segment below, and the end state is checked against the plain bound.
    const sampler = sampleDisk(cluster, () => {
      const keepFrom = timeline.commitLsn.get() - BigInt(WAL_KEEP_BYTES);
      const backup = backupLsn();
      return { bytes: backup < keepFrom ? Number(keepFrom - backup) : 0, note: `backup LSN ${formatLsn(backup)}` };
    });
    await produceWalUntil(cluster, promoted, switchLsn + BigInt(TLI2_WAL_BYTES));
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
    const largest = assertSamplesBounded(samples);
    const passes = assertPassesCompleted(samples, 3);
    t.diagnostic(`${samples.length} disk samples on timeline 2, largest ${mib(largest.diskBytes)} MiB (${largest.describe}); the removal point moved ${passes.moves} times, its worst lag ${mib(passes.worstLagBytes)} MiB`);
    const diskBytes = await segmentDiskBytes(timeline.dir);
    t.diagnostic(`after ${mib(Number(promotedFlush - switchLsn))} MiB on timeline 2: backup ${formatLsn(backup)}, start ${formatLsn(startLsn)}, ${mib(diskBytes)} MiB of segment files on disk`);
    assert.ok(diskBytes <= DISK_BOUND_BYTES, `${mib(diskBytes)} MiB on disk, over ${mib(DISK_BOUND_BYTES)} MiB`);

    // The bucket prefix, copied out as `aws s3 cp --recursive` would, is a WAL archive equal to S's pg_wal.
    const archive = await makeTempDir('failover-offload-archive');
    const objects = await store.list(store.key(timelinePrefix(timeline)));
    for (const object of objects) {
      const name = object.key.slice(object.key.lastIndexOf('/') + 1);
      // One GET of the whole object: the listed size of the metadata object may be stale (the uploader rewrites it).
      await writeFile(join(archive, name), await store.getObject(object.key, SEGMENT_BYTES));
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
    const { promoted, timeline } = cluster;
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

function backupLsn(): Lsn {
  const { timeline } = cluster;
  return walcast.server.offload?.uploader(timeline.tenantId, timeline.timelineId)?.backupLsn ?? 0n;
}
