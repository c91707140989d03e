/**
 * Retention across a failover, against real PostgreSQL 15: primary P, its physical standby S, walcast W following
 * `host=P,S` with a small --wal-keep-size, and pg_receivewal streaming live from W (no slot). pgbench writes on P,
 * P stops, S is promoted and W follows it onto timeline 2; pgbench then writes far more than the keep window on S.
 * W's disk must stay bounded through the switch, the segments (and page-checksum sidecars) named with the old
 * TLI must go once they fall behind the horizon, the history file must stay, and pg_receivewal must still end up
 * with every byte of both timelines identical to S's pg_wal, as must what W still holds.
 */
import assert from 'node:assert/strict';
import { lstat, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { alignDown, formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { parseTimelineHistory, switchPointOf } from '../src/storage/timeline-history.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { makeStandby, makeTempDir, runReceiveWal, startPrimary, type PgCluster, type PgStandby } from './support/postgres.js';
import { FAILOVER_SEGMENT_BYTES, assertRangeMatches, assertTimeline1Matches, assertTimeline2Matches, soleTimeline } from './support/timeline-wal.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const SEGMENT_BYTES = FAILOVER_SEGMENT_BYTES;
const MIB = 1024 * 1024;
/** The keep window under test: 3 segments, far below what the run writes on either timeline. */
const WAL_KEEP_BYTES = 3 * SEGMENT_BYTES;
/**
 * Besides the keep window: the segment being written, WAL that arrives while a pass waits (up to about two seconds
 * of ingest, more on a loaded machine), the segment a live sender has open, and across the switch the old TLI's
 * `.partial` of the switch segment next to the new TLI's copy. Six segments, as test/retention.test.ts allows.
 */
const DISK_SLACK_BYTES = 6 * SEGMENT_BYTES;
const DISK_BOUND_BYTES = WAL_KEEP_BYTES + DISK_SLACK_BYTES;
/** WAL written on timeline 1 before the failover, and on timeline 2 after it. */
const TLI1_WAL_BYTES = 5 * SEGMENT_BYTES;
const TLI2_WAL_BYTES = 10 * SEGMENT_BYTES;
const TEST_TIMEOUT_MS = 900_000;
const CATCH_UP_TIMEOUT_MS = 300_000;
const PRODUCE_TIMEOUT_MS = 420_000;
const SAMPLE_INTERVAL_MS = 250;
/** About 4.5 MB of WAL a transaction (rows under 2 kB are never TOAST-compressed), as in test/retention.test.ts. */
const BULK_SCRIPT = "INSERT INTO failover_filler SELECT g, repeat('x', 1000) FROM generate_series(1, 4000) g;\n";
/** About 12 MB of WAL a second: a busy primary that a live pg_receivewal through walcast keeps up with here. */
const PGBENCH_RATE_TPS = 3;
const SEGMENT_FILE = /^([0-9A-F]{8})[0-9A-F]{16}(\.partial|\.crc)?$/;

let primary: PgCluster;
let promoted: PgStandby;
let walcast: RunningWalcast;
let timeline: Timeline;
let bulkScript: string;
const cleanups: (() => Promise<void>)[] = [];

before(async () => {
  primary = await startPrimary({ extraConf: { wal_keep_size: '1GB', max_wal_size: '256MB' } });
  cleanups.push(() => primary.stop({ mode: 'immediate' }));
  await primary.pgbench(['-i', '-s', '1', '-q']);
  await primary.sql('CREATE TABLE failover_filler (id int, pad text) WITH (autovacuum_enabled = off)');
  bulkScript = join(await makeTempDir('failover-retention-pgbench'), 'bulk.sql');
  await writeFile(bulkScript, BULK_SCRIPT);
  // S keeps its WAL of both timelines (wal_keep_size holds on a standby's restartpoints too): the byte reference.
  const standbyBase = await makeStandby(primary, { applicationName: 'failover_retention_s', start: true, extraConf: { wal_keep_size: '1GB' } });
  assert.ok(standbyBase.standby !== undefined);
  promoted = standbyBase.standby;
  cleanups.push(() => promoted.stop({ mode: 'immediate' }));
  const dataDir = await makeTempDir('walcast-failover-retention');
  await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1,127.0.0.1 port=${primary.port},${promoted.port} user=repl`, password: undefined, log: silentLogger() });
  walcast = await startWalcast({ dataDir, retention: { walKeepBytes: WAL_KEEP_BYTES, maxSlotWalKeepBytes: undefined } });
  cleanups.push(() => walcast.stop());
  timeline = soleTimeline(walcast);
}, { timeout: 300_000 });

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
});

describe('retention across a failover', { timeout: TEST_TIMEOUT_MS }, () => {
  test('after the switch to timeline 2, old-TLI segments go behind the horizon, disk stays bounded, pg_receivewal still gets every byte', async (t) => {
    await waitFor(async () => ((await primary.sql("SELECT count(*) FROM pg_stat_replication WHERE application_name IN ('walcast', 'failover_retention_s') AND state = 'streaming'")) === '2' ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'W and S streaming from P' });
    const firstLsn = timeline.commitLsn.get();
    // pg_receivewal starts on timeline 1 and ends a few segments into timeline 2, past the horizon's first moves.
    const receiveEnd = alignDown(firstLsn, SEGMENT_BYTES) + BigInt(TLI1_WAL_BYTES + TLI2_WAL_BYTES - 2 * SEGMENT_BYTES);
    const receiveDir = await makeTempDir('failover-retention-receivewal');
    const receiving = runReceiveWal({ port: walcast.port, dir: receiveDir, endpos: formatLsn(receiveEnd), timeoutMs: CATCH_UP_TIMEOUT_MS + PRODUCE_TIMEOUT_MS });
    await waitFor(async () => (timeline.replicas.snapshot().some((replica) => replica.sentLsn >= firstLsn) ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'pg_receivewal streaming' });
    const sampler = sampleDisk(timeline);

    await produceWalUntil(primary, firstLsn + BigInt(TLI1_WAL_BYTES));
    const tli1Removed = walcast.server.retention?.status(timeline.tenantId, timeline.timelineId)?.segmentsRemoved ?? 0;
    // A fast shutdown sends everything to both streaming standbys before it ends; S then holds what W holds.
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
    const switchSegno = switchLsn / BigInt(SEGMENT_BYTES);
    const atSwitch = await segmentFilesByTli(timeline.dir);
    t.diagnostic(`switch at ${formatLsn(switchLsn)}; W's start ${formatLsn(timeline.timelineStartLsn)}; files then: ${describeFiles(atSwitch)}; ${tli1Removed} TLI 1 segments removed before the switch`);
    assert.ok((atSwitch.get(1)?.length ?? 0) > 1, 'W held several timeline-1 segments at the switch');

    await produceWalUntil(promoted, switchLsn + BigInt(TLI2_WAL_BYTES));
    const result = await receiving;
    assert.equal(result.code, 0, `pg_receivewal: ${result.stderr}`);
    assert.match(result.stderr, /switched to timeline 2/);
    const promotedFlush = parseLsnOrThrow(await promoted.sql('SELECT pg_current_wal_flush_lsn()'));
    await timeline.commitLsn.waitBeyond(promotedFlush - 1n, CATCH_UP_TIMEOUT_MS);
    const task = walcast.server.retention?.task(timeline.tenantId, timeline.timelineId);
    assert.ok(task !== undefined, 'retention runs for the followed timeline');
    await task.runPass();
    await task.runPass();
    const samples = await sampler.stop();

    const worst = samples.reduce((max, sample) => (sample.diskBytes > max.diskBytes ? sample : max), samples[0] ?? { atMs: 0, diskBytes: 0, files: '', allowedBytes: 0 });
    t.diagnostic(`${samples.length} disk samples; largest ${mib(worst.diskBytes)} MiB (${worst.files}) against a bound of ${mib(DISK_BOUND_BYTES)} MiB plus any lag of the live sender`);
    for (const sample of samples) {
      assert.ok(sample.diskBytes <= sample.allowedBytes, `at ${sample.atMs} ms ${mib(sample.diskBytes)} MiB on disk (${sample.files}), over ${mib(sample.allowedBytes)} MiB`);
    }
    const startLsn = timeline.timelineStartLsn;
    assert.ok(startLsn > (switchSegno + 1n) * BigInt(SEGMENT_BYTES), `the start ${formatLsn(startLsn)} moved past the switch segment`);
    const remaining = await segmentFilesByTli(timeline.dir);
    t.diagnostic(`after ${mib(Number(promotedFlush - switchLsn))} MiB on timeline 2: start ${formatLsn(startLsn)}; files: ${describeFiles(remaining)}`);
    assert.deepEqual(remaining.get(1) ?? [], [], 'no file named with timeline 1 is left once the start passed the switch segment');
    for (const name of remaining.get(2) ?? []) {
      const segno = BigInt('0x' + name.slice(8, 16)) * 0x100n + BigInt('0x' + name.slice(16, 24));
      assert.ok(segno >= startLsn / BigInt(SEGMENT_BYTES), `${name} lies before the start ${formatLsn(startLsn)}`);
    }
    assert.equal(await readFile(join(timeline.dir, '00000002.history'), 'utf8'), historyText, 'the history file stays for TIMELINE_HISTORY 2');
    const status = walcast.server.retention?.status(timeline.tenantId, timeline.timelineId);
    assert.ok((status?.segmentsRemoved ?? 0) > tli1Removed, 'segments were removed after the switch');

    // Every byte pg_receivewal got, on both timelines, equals S's pg_wal; so does what W still holds.
    const receivedFrom = alignDown(firstLsn, SEGMENT_BYTES);
    const receivedTli1 = await assertTimeline1Matches(receiveDir, join(promoted.dataDir, 'pg_wal'), receivedFrom, switchLsn);
    const receivedTli2 = await assertTimeline2Matches(receiveDir, join(promoted.dataDir, 'pg_wal'), switchLsn, receiveEnd);
    assert.equal(await readFile(join(receiveDir, '00000002.history'), 'utf8'), historyText);
    t.diagnostic(`pg_receivewal: ${mib(receivedTli1)} MiB of timeline 1 and ${mib(receivedTli2)} MiB of timeline 2 equal S's pg_wal`);
    const stored = await assertRangeMatches(timeline.dir, join(promoted.dataDir, 'pg_wal'), 2, startLsn, promotedFlush);
    t.diagnostic(`W holds ${mib(stored)} MiB from ${formatLsn(startLsn)}, equal to S's`);
  });
});

/**
 * Runs pgbench rounds (TPC-B and the bulk script, 1:4) on `cluster` until its WAL passes `targetLsn`, at about
 * 12 MB/s (test/retention.test.ts explains the rate).
 */
async function produceWalUntil(cluster: PgCluster | PgStandby, targetLsn: Lsn): Promise<void> {
  const deadline = Date.now() + PRODUCE_TIMEOUT_MS;
  for (;;) {
    const flushed = parseLsnOrThrow(await cluster.sql('SELECT pg_current_wal_flush_lsn()'));
    if (flushed >= targetLsn) return;
    assert.ok(Date.now() < deadline, `reached only ${formatLsn(flushed)} of ${formatLsn(targetLsn)} in ${PRODUCE_TIMEOUT_MS} ms`);
    await cluster.pgbench(['-c', '2', '-T', '3', '-R', String(PGBENCH_RATE_TPS), '-n', '-b', 'tpcb-like@1', '-f', `${bulkScript}@4`]);
  }
}

interface DiskSample {
  readonly atMs: number;
  readonly diskBytes: number;
  /** Files per TLI at that moment, for the failure message. */
  readonly files: string;
  /** The bound, raised by how far a live sender's open segment lags behind the keep window (it is never removed). */
  readonly allowedBytes: number;
}

/** Samples the allocated bytes of W's segment files of every TLI (sidecars included), independently of walcast. */
function sampleDisk(of: Timeline): { stop(): Promise<DiskSample[]> } {
  const samples: DiskSample[] = [];
  const startedAt = Date.now();
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const keepFrom = of.commitLsn.get() - BigInt(WAL_KEEP_BYTES);
      const pinned = of.lowestPinnedSegment();
      const pinnedLsn = pinned === undefined ? undefined : pinned * BigInt(SEGMENT_BYTES);
      const pinLag = pinnedLsn !== undefined && pinnedLsn < keepFrom ? Number(keepFrom - pinnedLsn) : 0;
      const byTli = await segmentFilesByTli(of.dir);
      let diskBytes = 0;
      for (const names of byTli.values()) {
        for (const name of names) diskBytes += await lstat(join(of.dir, name)).then((stat) => stat.blocks * 512, () => 0);
      }
      samples.push({ atMs: Date.now() - startedAt, diskBytes, files: describeFiles(byTli), allowedBytes: DISK_BOUND_BYTES + pinLag });
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

/** W's segment files (NAME, NAME.partial, NAME.crc) by the TLI in their name. */
async function segmentFilesByTli(dir: string): Promise<Map<number, string[]>> {
  const byTli = new Map<number, string[]>();
  for (const name of (await readdir(dir)).sort()) {
    const match = SEGMENT_FILE.exec(name);
    if (match === null) continue;
    const tli = Number.parseInt(match[1] ?? '', 16);
    byTli.set(tli, [...(byTli.get(tli) ?? []), name]);
  }
  return byTli;
}

function describeFiles(byTli: Map<number, string[]>): string {
  return [...byTli.entries()].map(([tli, names]) => `TLI ${tli}: ${names.filter((name) => !name.endsWith('.crc')).length} segments`).join(', ') || 'none';
}

function mib(bytes: number): string {
  return (bytes / MIB).toFixed(1);
}
