/**
 * Retention across a failover, against real PostgreSQL 15: primary P, its physical standby S, walcast W following
 * `host=P,S` with a small --wal-keep-size, and pg_receivewal streaming live from W (no slot). pgbench writes on P,
 * P stops, S is promoted and W follows it onto timeline 2; pgbench then writes far more than the keep window on S.
 * W's disk must stay bounded through the switch, the segments (and page-checksum sidecars) named with the old
 * TLI must go once they fall behind the horizon, the history file must stay, and pg_receivewal must still end up
 * with every byte of both timelines identical to S's pg_wal, as must what W still holds.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { alignDown, formatLsn, parseLsnOrThrow } from '../src/lsn.js';
import {
  FAILOVER_CATCH_UP_TIMEOUT_MS as CATCH_UP_TIMEOUT_MS,
  FAILOVER_DISK_BOUND_BYTES as DISK_BOUND_BYTES,
  FAILOVER_PRODUCE_TIMEOUT_MS as PRODUCE_TIMEOUT_MS,
  FAILOVER_WAL_KEEP_BYTES as WAL_KEEP_BYTES,
  assertPassesCompleted,
  assertSamplesBounded,
  describeFiles,
  failOver,
  mib,
  produceWalUntil,
  sampleDisk,
  segmentDiskBytes,
  segmentFilesByTli,
  startFailoverCluster,
  waitBothStreaming,
  type FailoverCluster,
} from './support/failover-cluster.js';
import { makeTempDir, runReceiveWal } from './support/postgres.js';
import { FAILOVER_SEGMENT_BYTES, assertRangeMatches, assertTimeline1Matches, assertTimeline2Matches } from './support/timeline-wal.js';
import { waitFor } from './support/wait-for.js';

const SEGMENT_BYTES = FAILOVER_SEGMENT_BYTES;
/** WAL written on timeline 1 before the failover, and on timeline 2 after it. */
const TLI1_WAL_BYTES = 5 * SEGMENT_BYTES;
const TLI2_WAL_BYTES = 10 * SEGMENT_BYTES;
const TEST_TIMEOUT_MS = 900_000;

let cluster: FailoverCluster;
const cleanups: (() => Promise<void>)[] = [];

before(async () => {
  cluster = await startFailoverCluster({ name: 'failover-retention', cleanups });
}, { timeout: 300_000 });

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
});

describe('retention across a failover', { timeout: TEST_TIMEOUT_MS }, () => {
  test('after the switch to timeline 2, old-TLI segments go behind the horizon, disk stays bounded, pg_receivewal still gets every byte', async (t) => {
    const { primary, promoted, walcast, timeline } = cluster;
    await waitBothStreaming(cluster);
    const firstLsn = timeline.commitLsn.get();
    // pg_receivewal starts on timeline 1 and ends a few segments into timeline 2, past the horizon's first moves.
    const receiveEnd = alignDown(firstLsn, SEGMENT_BYTES) + BigInt(TLI1_WAL_BYTES + TLI2_WAL_BYTES - 2 * SEGMENT_BYTES);
    const receiveDir = await makeTempDir('failover-retention-receivewal');
    const receiving = runReceiveWal({ port: walcast.port, dir: receiveDir, endpos: formatLsn(receiveEnd), timeoutMs: CATCH_UP_TIMEOUT_MS + PRODUCE_TIMEOUT_MS });
    await waitFor(async () => (timeline.replicas.snapshot().some((replica) => replica.sentLsn >= firstLsn) ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'pg_receivewal streaming' });
    // A live sender's open segment is never removed: the bound grows by how far it lags behind the keep window.
    const sampler = sampleDisk(cluster, () => {
      const keepFrom = timeline.commitLsn.get() - BigInt(WAL_KEEP_BYTES);
      const pinned = timeline.lowestPinnedSegment();
      const pinnedLsn = pinned === undefined ? undefined : pinned * BigInt(SEGMENT_BYTES);
      const pinLag = pinnedLsn !== undefined && pinnedLsn < keepFrom ? Number(keepFrom - pinnedLsn) : 0;
      return { bytes: pinLag, note: `sender lag ${mib(pinLag)} MiB` };
    });

    await produceWalUntil(cluster, primary, firstLsn + BigInt(TLI1_WAL_BYTES));
    const tli1Removed = walcast.server.retention?.status(timeline.tenantId, timeline.timelineId)?.segmentsRemoved ?? 0;
    const { switchLsn, historyText } = await failOver(cluster);
    const switchSegno = switchLsn / BigInt(SEGMENT_BYTES);
    const atSwitch = await segmentFilesByTli(timeline.dir);
    t.diagnostic(`switch at ${formatLsn(switchLsn)}; W's start ${formatLsn(timeline.timelineStartLsn)}; files then: ${describeFiles(atSwitch)}; ${tli1Removed} TLI 1 segments removed before the switch`);
    assert.ok((atSwitch.get(1)?.length ?? 0) > 1, 'W held several timeline-1 segments at the switch');

    await produceWalUntil(cluster, promoted, switchLsn + BigInt(TLI2_WAL_BYTES));
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

    const worst = assertSamplesBounded(samples);
    const passes = assertPassesCompleted(samples, 3);
    t.diagnostic(`${samples.length} disk samples; largest ${mib(worst.diskBytes)} MiB (${worst.describe}) against a bound of ${mib(DISK_BOUND_BYTES)} MiB plus the larger of the live sender's and retention's lag; the removal point moved ${passes.moves} times, its worst lag ${mib(passes.worstLagBytes)} MiB`);
    const diskAfterPasses = await segmentDiskBytes(timeline.dir);
    assert.ok(diskAfterPasses <= DISK_BOUND_BYTES, `after the last passes ${mib(diskAfterPasses)} MiB on disk, over ${mib(DISK_BOUND_BYTES)} MiB`);
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

