/**
 * A timeline created with `walcast timeline create` while `walcast serve` runs is picked up with no restart: the
 * server's data-directory scan opens it, starts its ingest, and replicas can name it and stream it. With
 * --remote-storage, its offload starts too: its completed segments reach the bucket byte-identical.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseLsnOrThrow } from '../src/lsn.js';
import { parseRemoteStorageUrl } from '../src/remote/remote-config.js';
import { segmentKey } from '../src/remote/remote-layout.js';
import { S3ObjectStore } from '../src/remote/s3-object-store.js';
import { segmentFileName, segmentStartLsn } from '../src/storage/segment-name.js';
import { connectReplication } from '../src/wire/client.js';
import { firstDifference, makeTempDir, startPrimary, type PgCluster } from './support/postgres.js';
import { TEST_BUCKET, startTestS3 } from './support/s3.js';
import { runWalcastCli, startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const TEST_TIMEOUT_MS = 300_000;
const CATCH_UP_TIMEOUT_MS = 120_000;

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
});

test('a timeline created while serve runs is opened, followed and streamable without a restart', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const primary: PgCluster = await startPrimary();
  cleanups.push(() => primary.stop({ mode: 'immediate' }));
  const dataDir = await makeTempDir('walcast-hot-add');
  const walcast: RunningWalcast = await startWalcast({ dataDir });
  cleanups.push(() => walcast.stop());
  assert.equal(walcast.server.timelines.list().length, 0);

  const created = await runWalcastCli(['timeline', 'create', '--data-dir', dataDir, '--upstream', `host=127.0.0.1 port=${primary.port} user=repl`, '--json']);
  assert.equal(created.code, 0, created.stderr);
  const createdAt = Date.now();
  const { tenant_id: tenantId, timeline_id: timelineId } = JSON.parse(created.stdout) as { tenant_id: string; timeline_id: string };
  const timeline = await waitFor(async () => walcast.server.timelines.get(tenantId, timelineId), CATCH_UP_TIMEOUT_MS, { pollMs: 10, what: 'the new timeline to be opened' });
  t.diagnostic(`the new timeline was opened ${Date.now() - createdAt} ms after timeline create exited (scan every 500 ms)`);

  await primary.sql('CREATE TABLE hot_rows AS SELECT g AS id FROM generate_series(1, 100) g');
  const written = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
  assert.notEqual(await timeline.commitLsn.waitBeyond(written - 1n, CATCH_UP_TIMEOUT_MS), undefined, 'its ingest started and follows the primary');
  const client = await connectReplication({ host: '127.0.0.1', port: walcast.port, user: 'repl', timeoutMs: 10_000, options: `-c tenant_id=${tenantId} -c timeline_id=${timelineId}` });
  try {
    const identity = await client.query('IDENTIFY_SYSTEM');
    assert.equal(identity.rows[0]?.[0], await primary.sql('SELECT system_identifier FROM pg_control_system()'));
    const stream = await client.startReplication(`START_REPLICATION ${identity.rows[0]?.[2] ?? ''} TIMELINE 1`);
    await stream.sendCopyDone();
  } finally {
    await client.end();
  }
});

test('with --remote-storage, a timeline created while serve runs is offloaded: its completed segments reach the bucket byte-identical', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const SEGMENT_BYTES = 1024 * 1024;
  const SEGMENTS = 4;
  const s3 = await startTestS3();
  cleanups.push(() => s3.dispose());
  const remote = parseRemoteStorageUrl(`s3://${TEST_BUCKET}/hot`, { endpoint: s3.endpoint });
  const primary: PgCluster = await startPrimary({ walSegmentMb: 1, extraConf: { wal_keep_size: '1GB' } });
  cleanups.push(() => primary.stop({ mode: 'immediate' }));
  const dataDir = await makeTempDir('walcast-hot-add-offload');
  const walcast: RunningWalcast = await startWalcast({ dataDir, remoteStorage: remote });
  cleanups.push(() => walcast.stop());

  const created = await runWalcastCli(['timeline', 'create', '--data-dir', dataDir, '--upstream', `host=127.0.0.1 port=${primary.port} user=repl`, '--json']);
  assert.equal(created.code, 0, created.stderr);
  const { tenant_id: tenantId, timeline_id: timelineId } = JSON.parse(created.stdout) as { tenant_id: string; timeline_id: string };
  const timeline = await waitFor(async () => walcast.server.timelines.get(tenantId, timelineId), CATCH_UP_TIMEOUT_MS, { pollMs: 10, what: 'the new timeline to be opened' });
  const uploader = await waitFor(async () => walcast.server.offload?.uploader(tenantId, timelineId), CATCH_UP_TIMEOUT_MS, { pollMs: 10, what: 'offload of the new timeline' });
  const firstSegno = timeline.timelineStartLsn / BigInt(SEGMENT_BYTES);
  const target = segmentStartLsn(firstSegno + BigInt(SEGMENTS), SEGMENT_BYTES);
  await primary.sql('CREATE TABLE hot_offload (id int, pad text)');
  while (parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()')) < target) {
    await primary.sql("INSERT INTO hot_offload SELECT g, repeat('x', 1000) FROM generate_series(1, 300) g");
    await primary.sql('SELECT pg_switch_wal()');
  }
  await waitFor(async () => (uploader.backupLsn >= target ? true : undefined), CATCH_UP_TIMEOUT_MS, { pollMs: 50, what: 'the backup LSN of the new timeline' });
  const store = new S3ObjectStore(remote);
  try {
    for (let segno = firstSegno; segno < firstSegno + BigInt(SEGMENTS); segno++) {
      const stored = await store.getRange(store.key(segmentKey(timeline, 1, segno, SEGMENT_BYTES)), 0, SEGMENT_BYTES);
      const name = segmentFileName(1, segno, SEGMENT_BYTES);
      assert.equal(firstDifference(stored, await readFile(join(primary.walDir, name))), -1, `${name} in the bucket equals the primary's`);
    }
  } finally {
    store.close();
  }
  assert.ok(timeline.remoteSegments !== undefined, 'reads before its local start go to the bucket');
  t.diagnostic(`${SEGMENTS} segments of the hot-added timeline offloaded; backup LSN ${uploader.backupLsn.toString(16)}`);
});
