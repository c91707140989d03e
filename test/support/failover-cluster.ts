/**
 * The cluster the failover-with-bounded-disk tests share (test/failover-retention.test.ts and
 * test/failover-offload.test.ts): primary P, its physical standby S (which keeps its WAL of both timelines as the
 * byte reference), and an in-process walcast W following `host=P,S` with a small keep window; pgbench rounds that
 * write a known amount of WAL at a steady rate; the failover itself (P stops, S is promoted, W follows onto
 * timeline 2); and a disk sampler that watches W's segment files independently of walcast.
 *
 * Kept in one place so the two tests cannot drift apart in how they fail over or what "bounded" means; each test
 * keeps its own assertions.
 */
import assert from 'node:assert/strict';
import { lstat, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createFollowingTimeline } from '../../src/ingest/create-timeline.js';
import { silentLogger } from '../../src/log.js';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../../src/lsn.js';
import type { RemoteStorageConfig } from '../../src/remote/remote-config.js';
import { parseTimelineHistory, switchPointOf } from '../../src/storage/timeline-history.js';
import type { Timeline } from '../../src/timeline/timeline.js';
import { retentionPassLagBytes } from './retention-lag.js';
import { makeStandby, makeTempDir, startPrimary, type PgCluster, type PgStandby } from './postgres.js';
import { FAILOVER_SEGMENT_BYTES, soleTimeline } from './timeline-wal.js';
import { startWalcast, type RunningWalcast } from './walcast.js';
import { waitFor } from './wait-for.js';

const SEGMENT_BYTES = FAILOVER_SEGMENT_BYTES;
/** The keep window under test: 3 segments, far below what the tests write on either timeline. */
export const FAILOVER_WAL_KEEP_BYTES = 3 * SEGMENT_BYTES;
/**
 * Besides the keep window (and the pass lag sampleDisk allows for): the segment being written and the next one
 * being created while the files are listed, the keep window's segment rounding, across the switch the old TLI's
 * `.partial` of the switch segment next to the new TLI's copy, and the page-checksum sidecars. Six segments, as
 * test/retention.test.ts allows.
 */
const DISK_SLACK_BYTES = 6 * SEGMENT_BYTES;
/** What W may hold on disk at any moment, before a test's own allowance (a lagging sender or uploader). */
export const FAILOVER_DISK_BOUND_BYTES = FAILOVER_WAL_KEEP_BYTES + DISK_SLACK_BYTES;
export const FAILOVER_CATCH_UP_TIMEOUT_MS = 300_000;
export const FAILOVER_PRODUCE_TIMEOUT_MS = 420_000;
/** About 4.5 MB of WAL a transaction (rows under 2 kB are never TOAST-compressed), as in test/retention.test.ts. */
const BULK_SCRIPT = "INSERT INTO failover_filler SELECT g, repeat('x', 1000) FROM generate_series(1, 4000) g;\n";
/** About 12 MB of WAL a second: a busy primary that a live pg_receivewal through walcast keeps up with here. */
const PGBENCH_RATE_TPS = 3;
const SAMPLE_INTERVAL_MS = 250;
/** W's segment files: NAME, NAME.partial, NAME.crc; group 1 is the TLI. */
const SEGMENT_FILE = /^([0-9A-F]{8})[0-9A-F]{16}(\.partial|\.crc)?$/;

export interface FailoverCluster {
  readonly primary: PgCluster;
  /** S: promoted by `failOver`. */
  readonly promoted: PgStandby;
  readonly walcast: RunningWalcast;
  readonly timeline: Timeline;
  /** S's application name in P's pg_stat_replication. */
  readonly standbyName: string;
  readonly bulkScript: string;
}

/**
 * Starts P, S and W. Each started component pushes its stop onto `cleanups` as soon as it runs, so a failure
 * half-way still stops what started. `name` keeps temp directories and S's application name apart per test.
 */
export async function startFailoverCluster(options: {
  readonly name: string;
  readonly remoteStorage?: RemoteStorageConfig;
  readonly cleanups: (() => Promise<void>)[];
}): Promise<FailoverCluster> {
  const { name, cleanups } = options;
  const primary = await startPrimary({ extraConf: { wal_keep_size: '1GB', max_wal_size: '256MB' } });
  cleanups.push(() => primary.stop({ mode: 'immediate' }));
  await primary.pgbench(['-i', '-s', '1', '-q']);
  await primary.sql('CREATE TABLE failover_filler (id int, pad text) WITH (autovacuum_enabled = off)');
  const bulkScript = join(await makeTempDir(`${name}-pgbench`), 'bulk.sql');
  await writeFile(bulkScript, BULK_SCRIPT);
  // S keeps its WAL of both timelines (wal_keep_size holds on a standby's restartpoints too): the byte reference.
  const standbyName = `${name.replaceAll('-', '_')}_s`;
  const standbyBase = await makeStandby(primary, { applicationName: standbyName, start: true, extraConf: { wal_keep_size: '1GB' } });
  assert.ok(standbyBase.standby !== undefined);
  const promoted = standbyBase.standby;
  cleanups.push(() => promoted.stop({ mode: 'immediate' }));
  const dataDir = await makeTempDir(`walcast-${name}`);
  await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1,127.0.0.1 port=${primary.port},${promoted.port} user=repl`, password: undefined, log: silentLogger() });
  const walcast = await startWalcast({
    dataDir,
    retention: { walKeepBytes: FAILOVER_WAL_KEEP_BYTES, maxSlotWalKeepBytes: undefined },
    ...(options.remoteStorage === undefined ? {} : { remoteStorage: options.remoteStorage }),
  });
  cleanups.push(() => walcast.stop());
  return { primary, promoted, walcast, timeline: soleTimeline(walcast), standbyName, bulkScript };
}

/** Waits until P streams to both W and S. */
export async function waitBothStreaming(cluster: FailoverCluster): Promise<void> {
  const names = `'walcast', '${cluster.standbyName}'`;
  await waitFor(
    async () => ((await cluster.primary.sql(`SELECT count(*) FROM pg_stat_replication WHERE application_name IN (${names}) AND state = 'streaming'`)) === '2' ? true : undefined),
    FAILOVER_CATCH_UP_TIMEOUT_MS,
    { what: 'W and S streaming from P' },
  );
}

/** pgbench rounds (TPC-B and the bulk script, 1:4, ~12 MB/s) on `server` until its WAL passes `targetLsn`. */
export async function produceWalUntil(cluster: FailoverCluster, server: PgCluster | PgStandby, targetLsn: Lsn): Promise<void> {
  const deadline = Date.now() + FAILOVER_PRODUCE_TIMEOUT_MS;
  for (;;) {
    const flushed = parseLsnOrThrow(await server.sql('SELECT pg_current_wal_flush_lsn()'));
    if (flushed >= targetLsn) return;
    assert.ok(Date.now() < deadline, `reached only ${formatLsn(flushed)} of ${formatLsn(targetLsn)} in ${FAILOVER_PRODUCE_TIMEOUT_MS} ms`);
    await server.pgbench(['-c', '2', '-T', '3', '-R', String(PGBENCH_RATE_TPS), '-n', '-b', 'tpcb-like@1', '-f', `${cluster.bulkScript}@4`]);
  }
}

/**
 * The failover: P stops with a fast shutdown (which sends everything to both streaming standbys, so S holds what W
 * holds), S is promoted once it received W's flush LSN, and W follows it onto timeline 2. Returns S's switch point
 * (checked equal to W's end of timeline 1) and the text of `00000002.history`.
 */
export async function failOver(cluster: FailoverCluster): Promise<{ readonly switchLsn: Lsn; readonly historyText: string }> {
  const { primary, promoted, timeline } = cluster;
  await primary.stop({ mode: 'fast' });
  const walcastEnd = timeline.flushLsn.get();
  await waitFor(async () => (parseLsnOrThrow(await promoted.sql('SELECT pg_last_wal_receive_lsn()')) >= walcastEnd ? true : undefined), FAILOVER_CATCH_UP_TIMEOUT_MS, { what: 'S received what W holds' });
  assert.equal(await promoted.sql('SELECT pg_promote()'), 't');
  await waitFor(async () => (timeline.pgTimelineId === 2 ? true : undefined), FAILOVER_CATCH_UP_TIMEOUT_MS, { what: 'W on timeline 2' });
  const historyText = await readFile(join(promoted.dataDir, 'pg_wal', '00000002.history'), 'utf8');
  const end = switchPointOf(1, parseTimelineHistory(historyText, 2));
  assert.ok(end !== undefined);
  assert.equal(end.switchLsn, walcastEnd, "W held timeline 1 exactly up to S's switch point");
  return { switchLsn: end.switchLsn, historyText };
}

export interface DiskSample {
  readonly atMs: number;
  readonly diskBytes: number;
  /** Files per TLI at that moment, and the notes on its allowances, for the failure message. */
  readonly describe: string;
  /** FAILOVER_DISK_BOUND_BYTES plus the larger allowance at that moment (retention's pass lag or the test's own). */
  readonly allowedBytes: number;
  /** How far the last completed pass's removal trailed the keep window: WAL that arrived while passes ran. */
  readonly passLagBytes: number;
  /** Retention's `removedBeforeLsn` at that moment (undefined before a pass completed). */
  readonly removedBeforeLsn: Lsn | undefined;
}

/**
 * Samples the allocated bytes of W's segment files of every TLI (sidecars included) every 250 ms, independently of
 * walcast. A sample may exceed the plain bound by the larger of two allowances, each read before the files are:
 *
 * - retention's pass lag: the keep window's start now, less the LSN before which the last completed pass had removed
 *   every file (`removedBeforeLsn`). Passes run once a second, but on a loaded machine one can take seconds (it
 *   fsyncs the control file and the directory), and WAL arriving meanwhile is on disk until the next pass ends. The
 *   sample then checks the exact claim: nothing is left below what the pass removed. That the lag does not grow
 *   without end is checked apart, without timing: passes complete during the run (`assertPassesCompleted`), and
 *   after the last writes two passes bring the disk under the plain bound (the tests' end checks).
 * - the test's own (`allowance`): e.g. a live sender's open segment, which is never removed, or an uploader behind
 *   the keep window, which retention may not pass. Both also hold the start, so they show in the pass lag too; the
 *   note says which.
 */
export function sampleDisk(cluster: FailoverCluster, allowance: () => { readonly bytes: number; readonly note: string }): { stop(): Promise<DiskSample[]> } {
  const { walcast, timeline } = cluster;
  const samples: DiskSample[] = [];
  const startedAt = Date.now();
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const extra = allowance();
      const removedBeforeLsn = walcast.server.retention?.status(timeline.tenantId, timeline.timelineId)?.removedBeforeLsn;
      const passLagBytes = retentionPassLagBytes(timeline.commitLsn.get(), removedBeforeLsn, FAILOVER_WAL_KEEP_BYTES, SEGMENT_BYTES);
      const byTli = await segmentFilesByTli(timeline.dir);
      const diskBytes = await allocatedBytes(timeline.dir, byTli);
      samples.push({
        atMs: Date.now() - startedAt,
        diskBytes,
        describe: `${describeFiles(byTli)}; ${extra.note}; retention pass lag ${mib(passLagBytes)} MiB`,
        allowedBytes: FAILOVER_DISK_BOUND_BYTES + Math.max(extra.bytes, passLagBytes),
        passLagBytes,
        removedBeforeLsn,
      });
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

/** Asserts every sample within its bound; returns the largest for the test's diagnostic. */
export function assertSamplesBounded(samples: readonly DiskSample[]): DiskSample {
  assert.ok(samples.length > 0, 'the disk was sampled');
  for (const sample of samples) {
    assert.ok(sample.diskBytes <= sample.allowedBytes, `at ${sample.atMs} ms ${mib(sample.diskBytes)} MiB on disk (${sample.describe}), over ${mib(sample.allowedBytes)} MiB`);
  }
  return samples.reduce((max, sample) => (sample.diskBytes > max.diskBytes ? sample : max));
}

/**
 * Retention kept removing while the WAL was written, not only in the passes a test runs at the end: the removal
 * point moved at least `times` times across the samples. Fails if passes stalled (or stopped removing) for the run.
 */
export function assertPassesCompleted(samples: readonly DiskSample[], times: number): { readonly moves: number; readonly worstLagBytes: number } {
  let moves = 0;
  let previous: Lsn | undefined;
  for (const sample of samples) {
    if (sample.removedBeforeLsn !== undefined && (previous === undefined || sample.removedBeforeLsn > previous)) {
      if (previous !== undefined) moves++;
      previous = sample.removedBeforeLsn;
    }
  }
  assert.ok(moves >= times, `retention's removal point moved ${moves} times while the WAL was written (at least ${times} expected)`);
  return { moves, worstLagBytes: samples.reduce((max, sample) => Math.max(max, sample.passLagBytes), 0) };
}

/** W's segment files (NAME, NAME.partial, NAME.crc) by the TLI in their name. */
export async function segmentFilesByTli(dir: string): Promise<Map<number, string[]>> {
  const byTli = new Map<number, string[]>();
  for (const name of (await readdir(dir)).sort()) {
    const match = SEGMENT_FILE.exec(name);
    if (match === null) continue;
    const tli = Number.parseInt(match[1] ?? '', 16);
    byTli.set(tli, [...(byTli.get(tli) ?? []), name]);
  }
  return byTli;
}

/** Allocated bytes of W's segment files of every TLI (sidecars included). */
export async function segmentDiskBytes(dir: string): Promise<number> {
  return allocatedBytes(dir, await segmentFilesByTli(dir));
}

/** Allocated bytes of the listed files (a file removed meanwhile counts 0). */
async function allocatedBytes(dir: string, byTli: Map<number, string[]>): Promise<number> {
  let total = 0;
  for (const names of byTli.values()) {
    for (const name of names) total += await lstat(join(dir, name)).then((stat) => stat.blocks * 512, () => 0);
  }
  return total;
}

export function describeFiles(byTli: Map<number, string[]>): string {
  return [...byTli.entries()].map(([tli, names]) => `TLI ${tli}: ${names.filter((name) => !name.endsWith('.crc')).length} segments`).join(', ') || 'none';
}

export function mib(bytes: number): string {
  return (bytes / (1024 * 1024)).toFixed(1);
}
