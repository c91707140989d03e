/**
 * A standby built from an early base backup catches up through a live walcast from object storage.
 *
 * A real PostgreSQL 15 primary P (1 MiB segments, so a few dozen MiB of WAL are many segments), walcast W following
 * it in-process with --remote-storage (s3rver on loopback) and a 4 MiB --wal-keep-size. A pg_basebackup of P is
 * taken right after W starts and left unstarted; then pgbench initialises and runs, so the WAL the standby needs
 * after its backup is offloaded and removed from W's local disk (W's local start passes the backup's end). The
 * standby S is then started with primary_conninfo pointing at W: it must replay up to P's current LSN, hold the
 * same rows as P, have streamed from an LSN before W's local start (so from the bucket), and W's remote-read
 * counters (cache stats and /metrics) must show bytes fetched from object storage.
 *
 * test/remote-faults.test.ts has the same catch-up from a walcast *restored* from the bucket behind slow GETs; this
 * one is the live path: the walcast that followed P, offloaded and removed the WAL is the one serving it back.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import { createOperationsMetrics } from '../src/api/metrics.js';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { parseRemoteStorageUrl } from '../src/remote/remote-config.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { makeStandby, makeTempDir, startPrimary, type PgCluster, type StandbyBase } from './support/postgres.js';
import { TEST_BUCKET, startTestS3, type TestS3 } from './support/s3.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const MIB = 1024 * 1024;
const SEGMENT_BYTES = MIB;
/** W's --wal-keep-size: a few segments, so retention removes offloaded WAL soon after it is written. */
const WAL_KEEP_BYTES = 4 * SEGMENT_BYTES;
/** WAL written after the base backup: several times the keep window, so the standby's start is long gone locally. */
const WAL_AFTER_BACKUP_BYTES = 24 * MIB;
const WAIT_MS = 180_000;
/** What pgbench changed, as one row: equal on P and S only if S replayed all of it. */
const ROWS_QUERY = 'SELECT (SELECT count(*) FROM pgbench_history), (SELECT sum(delta) FROM pgbench_history), (SELECT sum(abalance) FROM pgbench_accounts)';

let s3: TestS3;
let primary: PgCluster;
let walcast: RunningWalcast;
let timeline: Timeline;
let earlyBase: StandbyBase;

before(async () => {
  s3 = await startTestS3();
  primary = await startPrimary({ walSegmentMb: 1 });
  const dataDir = await makeTempDir('walcast-remote-standby');
  await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1 port=${primary.port} user=repl`, password: undefined, log: silentLogger() });
  walcast = await startWalcast({
    dataDir,
    retention: { walKeepBytes: WAL_KEEP_BYTES, maxSlotWalKeepBytes: undefined },
    remoteStorage: parseRemoteStorageUrl(`s3://${TEST_BUCKET}/standby`, { endpoint: s3.endpoint }),
  });
  const [only] = walcast.server.timelines.list();
  assert.ok(only !== undefined);
  timeline = only;
}, { timeout: 300_000 });

after(async () => {
  await earlyBase?.standby?.stop({ mode: 'immediate' }).catch(() => undefined);
  await walcast?.stop().catch(() => undefined);
  await primary?.stop({ mode: 'immediate' });
  await s3?.dispose();
});

test('a standby from an early base backup catches up through walcast, reading the WAL retention removed back from object storage', { timeout: 600_000 }, async (t) => {
  // The base backup comes first; everything after it is WAL the standby will need from walcast.
  earlyBase = await makeStandby(primary, { applicationName: 'early' });
  const afterBackup = await currentLsn();
  assert.ok(afterBackup >= timeline.timelineStartLsn, 'walcast holds the timeline from before the backup');

  await primary.pgbench(['-i', '-s', '1', '-q']);
  while ((await currentLsn()) < afterBackup + BigInt(WAL_AFTER_BACKUP_BYTES)) await primary.pgbench(['-c', '2', '-T', '3', '-n']);
  const primaryEnd = await currentLsn();
  const expected = await primary.sql(ROWS_QUERY);

  // Retention removed the segment holding the backup's end: it is only in the bucket now.
  await until(() => timeline.timelineStartLsn > afterBackup, `walcast's local start passed the backup's end ${formatLsn(afterBackup)}`);
  const localStart = timeline.timelineStartLsn;
  const uploader = walcast.server.offload?.uploader(timeline.tenantId, timeline.timelineId);
  assert.ok(uploader !== undefined && uploader.backupLsn >= localStart, 'nothing before the local start is missing from the bucket');

  const standby = await earlyBase.startWithUpstream(walcast.port);
  await waitFor(
    async () => {
      const replayed = await standby.sql('SELECT pg_last_wal_replay_lsn()').catch(() => '');
      return replayed !== '' && parseLsnOrThrow(replayed) >= primaryEnd ? replayed : undefined;
    },
    WAIT_MS,
    { what: `the standby replayed up to the primary's ${formatLsn(primaryEnd)}`, pollMs: 500 },
  );
  assert.equal(await standby.sql(ROWS_QUERY), expected);

  // The walreceiver's first stream started before walcast's local start: that WAL can only have come from the bucket.
  const log = await readFile(standby.logFile, 'utf8');
  const streamedFrom = /started streaming WAL from primary at ([0-9A-F]+\/[0-9A-F]+)/.exec(log)?.[1];
  assert.ok(streamedFrom !== undefined, `the standby streamed from walcast:\n${standby.logTail()}`);
  assert.ok(parseLsnOrThrow(streamedFrom) < localStart, `the standby asked for ${streamedFrom}, before walcast's local start ${formatLsn(localStart)}`);

  const reads = walcast.server.offload?.cache(timeline.tenantId, timeline.timelineId)?.stats;
  const remoteSegments = Number((localStart - (parseLsnOrThrow(streamedFrom) - (parseLsnOrThrow(streamedFrom) % BigInt(SEGMENT_BYTES)))) / BigInt(SEGMENT_BYTES));
  assert.ok(reads !== undefined && reads.segmentsFetched >= remoteSegments && reads.bytesFetched >= remoteSegments * SEGMENT_BYTES, `remote reads ${JSON.stringify(reads)}, expected >= ${remoteSegments} segments`);
  const metrics = createOperationsMetrics({ backend: 'ts', strategy: 'test' });
  metrics.bindTimelines(walcast.server.timelines, undefined, (of) => walcast.server.offload?.status(of.tenantId, of.timelineId));
  const { body } = await metrics.render();
  const sample = (name: string): number => Number(new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, 'm').exec(body)?.[1] ?? Number.NaN);
  assert.ok(sample('walcast_remote_bytes_fetched_total') >= remoteSegments * SEGMENT_BYTES, 'the remote bytes read show in /metrics');
  assert.ok(sample('walcast_remote_segments_fetched_total') >= remoteSegments);
  t.diagnostic(
    `backup ended by ${formatLsn(afterBackup)}; walcast's local start ${formatLsn(localStart)}; the standby streamed from ${streamedFrom} and replayed to ${formatLsn(primaryEnd)} ` +
      `(${formatLsn(primaryEnd - afterBackup)} of WAL); remote reads ${JSON.stringify(reads)}; rows ${expected.replaceAll('\n', ' / ')}`,
  );
  await standby.stop({ mode: 'fast' });
});

async function currentLsn(): Promise<Lsn> {
  return parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
}

async function until(condition: () => boolean, what: string): Promise<void> {
  await waitFor(async () => (condition() ? true : undefined), WAIT_MS, { what, pollMs: 100 });
}
