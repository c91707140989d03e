/**
 * Offload end to end: walcast follows a real PostgreSQL 15 primary with --remote-storage pointing at a real S3 API
 * server (s3rver on loopback) and a small --wal-keep-size while pgbench writes about 100 MB of WAL.
 * - every completed segment below the backup LSN is in the bucket, byte-identical to the primary's, and the bucket's
 *   metadata object describes the timeline;
 * - retention removed WAL locally, but never a segment not yet in the bucket;
 * - the S3 server stopped while WAL keeps coming: walcast keeps ingesting, the backup LSN stops, retention removes
 *   nothing at or past it (local disk grows instead), and once the server is back the uploader catches up.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createOperationsMetrics } from '../src/api/metrics.js';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { REMOTE_METADATA_BYTES_MAX, decodeRemoteMetadata, metadataKey, segmentKey } from '../src/remote/remote-layout.js';
import { parseRemoteStorageUrl, type RemoteStorageConfig } from '../src/remote/remote-config.js';
import { S3ObjectStore } from '../src/remote/s3-object-store.js';
import { readControlFile } from '../src/storage/control-file.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { firstDifference, makeTempDir, runReceiveWal, startPrimary, type PgCluster } from './support/postgres.js';
import { TEST_BUCKET, startTestS3, type TestS3 } from './support/s3.js';
import { runWalcastCli, startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const SEGMENT_BYTES = 16 * 1024 * 1024;
const MIB = 1024 * 1024;
const WAL_KEEP_BYTES = 2 * SEGMENT_BYTES;
/** WAL the first phase produces: several times the keep window, so retention must remove offloaded WAL. */
const RUN_WAL_BYTES = 112 * MIB;
/** WAL written while the S3 server is down: more than the keep window, so retention would remove it if it could. */
const OUTAGE_WAL_BYTES = 4 * SEGMENT_BYTES;
/** Bulk inserts, as in test/retention.test.ts: about 4.5 MB of WAL per transaction. */
const BULK_SCRIPT = "INSERT INTO offload_filler SELECT g, repeat('x', 1000) FROM generate_series(1, 4000) g;\n";
const PRODUCE_TIMEOUT_MS = 420_000;
const OFFLOAD_TIMEOUT_MS = 300_000;

let primary: PgCluster;
let s3: TestS3;
let walcast: RunningWalcast;
let timeline: Timeline;
let store: S3ObjectStore;
let bulkScript: string;
let remote: RemoteStorageConfig;
let timelineFirstLsn: Lsn = 0n;

before(async () => {
  s3 = await startTestS3();
  remote = parseRemoteStorageUrl(`s3://${TEST_BUCKET}/offload`, { endpoint: s3.endpoint });
  store = new S3ObjectStore(remote);
  primary = await startPrimary({ extraConf: { wal_keep_size: '1GB', max_wal_size: '256MB' } });
  await primary.sql('CREATE TABLE offload_filler (id int, pad text) WITH (autovacuum_enabled = off)');
  bulkScript = join(await makeTempDir('offload-pgbench'), 'bulk.sql');
  await writeFile(bulkScript, BULK_SCRIPT);
  const dataDir = await makeTempDir('walcast-offload');
  await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1 port=${primary.port} user=repl`, password: undefined, log: silentLogger() });
  walcast = await startWalcast({ dataDir, retention: { walKeepBytes: WAL_KEEP_BYTES, maxSlotWalKeepBytes: undefined }, remoteStorage: remote });
  const [only] = walcast.server.timelines.list();
  assert.ok(only !== undefined);
  timeline = only;
}, { timeout: 300_000 });

after(async () => {
  await walcast?.stop().catch(() => undefined);
  await primary?.stop({ mode: 'immediate' });
  store?.close();
  await s3?.dispose();
});

describe('offload to object storage following a real primary', { timeout: 1_200_000 }, () => {
  test(`pgbench writes ${RUN_WAL_BYTES / MIB} MiB: every completed segment is in the bucket byte-identical; retention removed only offloaded WAL`, async (t) => {
    const firstLsn = timeline.timelineStartLsn;
    timelineFirstLsn = firstLsn;
    await produceWalUntil(firstLsn + BigInt(RUN_WAL_BYTES));
    const flushed = alignDown(timeline.flushLsn.get());
    await until(() => backupLsn() >= flushed, 'the uploader reached the flush LSN');
    await until(() => timeline.timelineStartLsn > firstLsn + BigInt(WAL_KEEP_BYTES), 'retention removed offloaded WAL');
    const compared = await assertBucketEqual(firstLsn, backupLsn());
    t.diagnostic(`${compared} segments from ${formatLsn(firstLsn)} to ${formatLsn(backupLsn())} in the bucket, equal to the primary's; local start ${formatLsn(timeline.timelineStartLsn)}`);
    const control = await readControlFile(timeline.dir);
    assert.ok(control.backupLsn !== undefined && control.backupLsn <= backupLsn() && control.backupLsn >= flushed, 'the control file holds the confirmed backup LSN');
    // The uploader rewrites the metadata object after it confirms each backup LSN (and goes on while walcast ingests
    // WAL the primary already flushed), so wait for it and read it in one GET: a HEAD's size for a later ranged GET
    // once met the object mid-rewrite (0 bytes on s3rver then) and asked for a 0-byte range.
    const metadataObject = store.key(metadataKey(timeline));
    const metadata = await waitFor(async () => {
      const current = decodeRemoteMetadata(await store.getObject(metadataObject, REMOTE_METADATA_BYTES_MAX), metadataObject);
      return current.backupLsn >= flushed ? current : undefined;
    }, OFFLOAD_TIMEOUT_MS, { what: 'the metadata object records the backup LSN', pollMs: 100 });
    assert.equal(metadata.systemId, timeline.systemId);
    assert.equal(metadata.segmentBytes, SEGMENT_BYTES);
    assert.equal(metadata.timelineStartLsn, firstLsn);
    assert.ok(metadata.backupLsn >= flushed);
    const stats = walcast.server.offload?.uploader(timeline.tenantId, timeline.timelineId)?.stats;
    assert.ok(stats !== undefined && stats.segmentsUploaded >= compared && stats.uploadErrors === 0, JSON.stringify(stats));
  });

  test('the S3 server stopped during uploads: ingest goes on, nothing un-uploaded is removed; back, the uploader catches up', async (t) => {
    const stats = walcast.server.offload?.uploader(timeline.tenantId, timeline.timelineId)?.stats;
    assert.ok(stats !== undefined);
    const errorsBefore = stats.uploadErrors;
    await s3.stop();
    let heldAt: Lsn;
    try {
      heldAt = backupLsn();
      await produceWalUntil(timeline.flushLsn.get() + BigInt(OUTAGE_WAL_BYTES));
      await until(() => stats.uploadErrors > errorsBefore, 'uploads fail while the server is down');
      await until(() => alignDown(timeline.flushLsn.get()) > heldAt + BigInt(OUTAGE_WAL_BYTES - SEGMENT_BYTES), 'walcast ingested while the store was down');
      assert.equal(backupLsn(), heldAt, 'the backup LSN does not move while nothing is confirmed');
      assert.ok(timeline.timelineStartLsn <= heldAt, `retention kept everything not offloaded (start ${formatLsn(timeline.timelineStartLsn)}, backup ${formatLsn(heldAt)})`);
      // The retention status is that of the last pass, which runs once a second on the durable flush LSN.
      await until(() => walcast.server.retention?.status(timeline.tenantId, timeline.timelineId)?.limitedBy === 'backup', 'retention reports the backup LSN as its limit');
      assert.ok(timeline.timelineStartLsn <= heldAt, 'still nothing un-uploaded removed');
      t.diagnostic(`while down: ${stats.uploadErrors - errorsBefore} failed uploads, backup LSN held at ${formatLsn(heldAt)}, local start ${formatLsn(timeline.timelineStartLsn)}, flush ${formatLsn(timeline.flushLsn.get())}`);
    } finally {
      await s3.start();
    }
    const flushed = alignDown(timeline.flushLsn.get());
    await until(() => backupLsn() >= flushed, 'the uploader caught up after the store returned');
    const compared = await assertBucketEqual(heldAt, flushed);
    t.diagnostic(`after the outage ${compared} more segments uploaded, equal to the primary's`);
  });
});

describe('reading offloaded WAL back', { timeout: 1_200_000 }, () => {
  test('an object deleted from the bucket: a replica asking for that range gets 58P01 naming the segment, without touching other ranges', async () => {
    const firstSegno = firstLsn() / BigInt(SEGMENT_BYTES);
    assert.ok(timeline.timelineStartLsn > firstLsn(), 'the first segment is no longer on local disk');
    const key = store.key(segmentKey(timeline, 1, firstSegno, SEGMENT_BYTES));
    await store.delete(key);
    try {
      const dir = await receiveDirFrom(firstSegno);
      const result = await runReceiveWal({ port: walcast.port, dir, endpos: formatLsn(firstLsn() + BigInt(SEGMENT_BYTES)), timeoutMs: 120_000 });
      assert.notEqual(result.code, 0);
      assert.match(result.stderr, new RegExp(`requested WAL segment ${segmentFileName(1, firstSegno, SEGMENT_BYTES)} has already been removed`));
    } finally {
      const original = join(primary.walDir, segmentFileName(1, firstSegno, SEGMENT_BYTES));
      await store.putFile(key, original, SEGMENT_BYTES);
    }
  });

  test("pg_receivewal from the timeline's first LSN receives everything byte-identical, most of it from object storage", async (t) => {
    const endLsn = alignDown(timeline.flushLsn.get());
    const localStart = timeline.timelineStartLsn;
    const dir = await receiveDirFrom(firstLsn() / BigInt(SEGMENT_BYTES));
    const result = await runReceiveWal({ port: walcast.port, dir, endpos: formatLsn(endLsn), timeoutMs: 600_000 });
    assert.equal(result.code, 0, result.stderr);
    let compared = 0;
    for (let segno = firstLsn() / BigInt(SEGMENT_BYTES); segno * BigInt(SEGMENT_BYTES) < endLsn; segno++) {
      const name = segmentFileName(1, segno, SEGMENT_BYTES);
      const ours = await readFile(join(dir, name));
      const theirs = await readFile(join(primary.walDir, name));
      assert.equal(firstDifference(ours, theirs), -1, `${name} differs from the primary's`);
      compared++;
    }
    const reads = walcast.server.offload?.cache(timeline.tenantId, timeline.timelineId)?.stats;
    assert.ok(reads !== undefined && reads.segmentsFetched >= Number((localStart - firstLsn()) / BigInt(SEGMENT_BYTES)) - 1, JSON.stringify(reads));
    t.diagnostic(`${compared} segments from ${formatLsn(firstLsn())} equal to the primary's; local start was ${formatLsn(localStart)}; remote reads ${JSON.stringify(reads)}`);
    const metrics = createOperationsMetrics({ backend: 'ts', strategy: 'test' });
    metrics.bindTimelines(walcast.server.timelines, undefined, (of) => walcast.server.offload?.status(of.tenantId, of.timelineId));
    const { body } = await metrics.render();
    const sample = (name: string): number => Number(new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, 'm').exec(body)?.[1] ?? Number.NaN);
    assert.equal(sample('walcast_timeline_backup_lsn'), Number(backupLsn()));
    assert.ok(sample('walcast_remote_segments_fetched_total') >= (reads?.segmentsFetched ?? 1));
    // Read-ahead is a part of the fetches; what was used or evicted unread, a part of the read-ahead.
    assert.ok(reads.readAheadFetched <= reads.segmentsFetched && reads.readAheadUsed + reads.readAheadEvictedUnused <= reads.readAheadFetched, JSON.stringify(reads));
    assert.ok(sample('walcast_remote_read_ahead_segments_fetched_total') >= reads.readAheadFetched);
    assert.ok(sample('walcast_remote_read_ahead_segments_used_total') >= reads.readAheadUsed);
    assert.ok(sample('walcast_remote_read_ahead_segments_evicted_unused_total') >= reads.readAheadEvictedUnused);
    assert.ok(sample('walcast_offload_segments_uploaded_total') > 0);
    assert.equal(sample('walcast_offload_queue_segments') >= 0, true);
  });
});

describe('restore from the bucket', { timeout: 1_200_000 }, () => {
  test('wipe the data directory, `walcast timeline restore`, serve: pg_receivewal gets byte-identical WAL from the first LSN', async (t) => {
    const backup = backupLsn();
    await walcast.stop();
    const dataDir = await makeTempDir('walcast-restored');
    const restore = await runWalcastCli([
      'timeline', 'restore', '--data-dir', dataDir, '--remote-storage', `s3://${TEST_BUCKET}/offload`, '--remote-storage-endpoint', s3.endpoint,
      '--tenant-id', timeline.tenantId, '--timeline-id', timeline.timelineId, '--json',
    ]);
    assert.equal(restore.code, 0, restore.stderr);
    const restored = JSON.parse(restore.stdout) as Record<string, string>;
    assert.equal(restored.backup_lsn, formatLsn(backup));
    assert.equal(restored.timeline_start_lsn, formatLsn(firstLsn()));
    t.diagnostic(`restored: ${restore.stdout.trim()}`);
    const again = await runWalcastCli(['timeline', 'restore', '--data-dir', dataDir, '--remote-storage', `s3://${TEST_BUCKET}/offload`, '--remote-storage-endpoint', s3.endpoint, '--tenant-id', timeline.tenantId, '--timeline-id', timeline.timelineId]);
    assert.notEqual(again.code, 0, 'a second restore over an existing timeline is refused');
    walcast = await startWalcast({ dataDir, remoteStorage: remote });
    const dir = await receiveDirFrom(firstLsn() / BigInt(SEGMENT_BYTES));
    const result = await runReceiveWal({ port: walcast.port, dir, endpos: formatLsn(backup), timeoutMs: 600_000 });
    assert.equal(result.code, 0, result.stderr);
    let compared = 0;
    for (let segno = firstLsn() / BigInt(SEGMENT_BYTES); segno * BigInt(SEGMENT_BYTES) < backup; segno++) {
      const name = segmentFileName(1, segno, SEGMENT_BYTES);
      assert.equal(firstDifference(await readFile(join(dir, name)), await readFile(join(primary.walDir, name))), -1, `${name} differs from the primary's`);
      compared++;
    }
    t.diagnostic(`${compared} segments served by the restored walcast, equal to the primary's`);
  });
});

/** A pg_receivewal directory that makes it start at `segno`: a zeroed full-size .partial of that segment (receivelog.c FindStreamingStart). */
async function receiveDirFrom(segno: bigint): Promise<string> {
  const dir = await makeTempDir('offload-receivewal');
  await writeFile(join(dir, `${segmentFileName(1, segno, SEGMENT_BYTES)}.partial`), Buffer.alloc(SEGMENT_BYTES));
  return dir;
}

function firstLsn(): Lsn {
  return timelineFirstLsn;
}

function backupLsn(): Lsn {
  return walcast.server.offload?.uploader(timeline.tenantId, timeline.timelineId)?.backupLsn ?? 0n;
}

function alignDown(lsn: Lsn): Lsn {
  return lsn - (lsn % BigInt(SEGMENT_BYTES));
}

async function until(condition: () => boolean, what: string): Promise<void> {
  await waitFor(async () => (condition() ? true : undefined), OFFLOAD_TIMEOUT_MS, { what, pollMs: 100 });
}

async function produceWalUntil(targetLsn: Lsn): Promise<void> {
  const deadline = Date.now() + PRODUCE_TIMEOUT_MS;
  for (;;) {
    const flushed = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
    if (flushed >= targetLsn) return;
    assert.ok(Date.now() < deadline, `the primary reached only ${formatLsn(flushed)} of ${formatLsn(targetLsn)}`);
    await primary.pgbench(['-c', '2', '-T', '3', '-R', '3', '-n', '-f', bulkScript]);
  }
}

/** Every segment in [from, to) in the bucket equals the primary's file; returns how many were compared. */
async function assertBucketEqual(from: Lsn, to: Lsn): Promise<number> {
  let compared = 0;
  for (let segno = from / BigInt(SEGMENT_BYTES); segno * BigInt(SEGMENT_BYTES) < to; segno++) {
    const key = store.key(segmentKey(timeline, 1, segno, SEGMENT_BYTES));
    const ours = await store.getRange(key, 0, SEGMENT_BYTES);
    const theirs = await readFile(join(primary.walDir, segmentFileName(1, segno, SEGMENT_BYTES)));
    const difference = firstDifference(ours, theirs);
    assert.equal(difference, -1, `${key} differs from the primary at offset ${difference}`);
    compared++;
  }
  return compared;
}
