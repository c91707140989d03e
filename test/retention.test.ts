/**
 * WAL retention end to end against real PostgreSQL 15: walcast follows a primary with 16 MiB segments and a small
 * --wal-keep-size while pgbench writes far more WAL than that. Disk use is sampled during the run and must stay
 * under the bound; pg_receivewal streaming live from walcast (no slot) must still receive every byte, identical
 * to the primary's. A long variant (1.5 GB of WAL) runs when WALCAST_RETENTION_LONG=1.
 */
import assert from 'node:assert/strict';
import { lstat, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { readControlFile } from '../src/storage/control-file.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { firstDifference, makeTempDir, runReceiveWal, startPrimary, type PgCluster } from './support/postgres.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const SEGMENT_BYTES = 16 * 1024 * 1024;
const MIB = 1024 * 1024;
/** The keep window under test: 3 segments, far below what the run produces. */
const WAL_KEEP_BYTES = 3 * SEGMENT_BYTES;
/**
 * What may be on disk besides the keep window: the segment being written, plus the WAL that arrives while a
 * removal waits (the control file's flush LSN is persisted once a second and a pass runs once a second, so up to
 * about two seconds of ingest, more when fsyncs are slow on a loaded machine), plus the segment a live sender has open.
 * Six segments cover that on this shared machine (the largest sample seen was 3.2 segments over the window).
 */
const DISK_SLACK_BYTES = 6 * SEGMENT_BYTES;
const DISK_BOUND_BYTES = WAL_KEEP_BYTES + DISK_SLACK_BYTES;
const LONG_RUN = process.env.WALCAST_RETENTION_LONG === '1';
/** WAL the run produces: well over the keep window (always-on), or 1.5 GB (opt-in long run). */
const RUN_WAL_BYTES = LONG_RUN ? 1536 * MIB : 192 * MIB;
const SAMPLE_INTERVAL_MS = 250;
const TEST_TIMEOUT_MS = LONG_RUN ? 3_600_000 : 900_000;
const RECEIVE_TIMEOUT_MS = LONG_RUN ? 3_000_000 : 600_000;

interface DiskSample {
  readonly atMs: number;
  readonly commitLsn: Lsn;
  readonly startLsn: Lsn;
  readonly files: number;
  readonly diskBytes: number;
  /** What held the start at this moment: retention's horizon limit, or the lowest segment a sender has open. */
  readonly heldBy: string;
}

/**
 * pgbench's own TPC-B writes about 1 MB of WAL a second on this shared 2-core machine, too slow for hundreds of MB;
 * this script makes each transaction insert 4,000 rows of 1,000 bytes (about 4.5 MB of WAL, uncompressed: rows
 * under 2 kB are never TOAST-compressed).
 */
const BULK_SCRIPT = "INSERT INTO retention_filler SELECT g, repeat('x', 1000) FROM generate_series(1, 4000) g;\n";
/** pgbench transactions a second: with 4 of 5 bulk (4.5 MB each), about 12 MB of WAL a second. */
const PGBENCH_RATE_TPS = 3;
/** Bounds the WAL producing loop: far more than the run needs at the slowest rate seen here. */
const PRODUCE_TIMEOUT_MS = LONG_RUN ? 2_400_000 : 420_000;

let primary: PgCluster;
let walcast: RunningWalcast;
let timeline: Timeline;
let bulkScript: string;

before(async () => {
  // The primary keeps its own WAL (wal_keep_size) so the test can compare every byte walcast served against it.
  primary = await startPrimary({ extraConf: { wal_keep_size: LONG_RUN ? '3GB' : '1GB', max_wal_size: '256MB' } });
  await primary.pgbench(['-i', '-s', '2', '-q']);
  await primary.sql('CREATE TABLE retention_filler (id int, pad text) WITH (autovacuum_enabled = off)');
  bulkScript = join(await makeTempDir('retention-pgbench'), 'bulk.sql');
  await writeFile(bulkScript, BULK_SCRIPT);
  const dataDir = await makeTempDir('walcast-retention');
  await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1 port=${primary.port} user=repl`, password: undefined, log: silentLogger() });
  walcast = await startWalcast({ dataDir, retention: { walKeepBytes: WAL_KEEP_BYTES, maxSlotWalKeepBytes: undefined } });
  const [only] = walcast.server.timelines.list();
  assert.ok(only !== undefined);
  timeline = only;
}, { timeout: 300_000 });

after(async () => {
  await walcast?.stop().catch(() => undefined);
  await primary?.stop({ mode: 'immediate' });
});

describe('WAL retention following a real primary', { timeout: TEST_TIMEOUT_MS }, () => {
  test(`disk use stays under --wal-keep-size + ${DISK_SLACK_BYTES / MIB} MiB while pgbench writes ${RUN_WAL_BYTES / MIB} MiB; live pg_receivewal gets every byte`, async (t) => {
    const firstLsn = timeline.commitLsn.get();
    const endLsn = firstLsn + BigInt(RUN_WAL_BYTES);
    const received = await makeTempDir('retention-receivewal');
    const sampler = sampleDisk(timeline);
    const receiving = runReceiveWal({ port: walcast.port, dir: received, endpos: formatLsn(endLsn), timeoutMs: RECEIVE_TIMEOUT_MS });
    await produceWalUntil(primary, endLsn + BigInt(SEGMENT_BYTES));
    const result = await receiving;
    const samples = await sampler.stop();
    assert.equal(result.code, 0, `pg_receivewal failed: ${result.stderr}`);
    t.diagnostic(diskTable(samples, firstLsn));
    const worst = samples.reduce((max, sample) => Math.max(max, sample.diskBytes), 0);
    t.diagnostic(`${samples.length} samples; largest ${mib(worst)} MiB on disk; bound ${mib(DISK_BOUND_BYTES)} MiB`);
    assert.ok(worst <= DISK_BOUND_BYTES, `disk use reached ${mib(worst)} MiB, over the bound of ${mib(DISK_BOUND_BYTES)} MiB`);
    assert.ok(timeline.timelineStartLsn > firstLsn + BigInt(WAL_KEEP_BYTES), 'retention moved the timeline start');
    const control = await readControlFile(timeline.dir);
    assert.equal(control.timelineStartLsn <= timeline.timelineStartLsn, true);
    const receivedFrom = await firstSegmentStart(received);
    const compared = await assertWalEqual(received, primary.walDir, receivedFrom, endLsn);
    t.diagnostic(`pg_receivewal: ${mib(compared)} MiB from ${formatLsn(receivedFrom)} to ${formatLsn(endLsn)} equal to the primary's`);
    const stored = await assertWalEqual(timeline.dir, primary.walDir, timeline.timelineStartLsn, timeline.flushLsn.get());
    t.diagnostic(`walcast still holds ${mib(stored)} MiB from ${formatLsn(timeline.timelineStartLsn)}, equal to the primary's`);
  });
});

/**
 * Runs pgbench rounds (TPC-B and the bulk script, weighted 1:4) until the primary's WAL passes `targetLsn`. The rate
 * is limited to about 12 MB/s, a busy primary, below what a live pg_receivewal through walcast keeps up with here;
 * unthrottled bursts of 40 MB/s put it segments behind, and a connected sender holds the segment it has open.
 */
async function produceWalUntil(cluster: PgCluster, targetLsn: Lsn): Promise<void> {
  const deadline = Date.now() + PRODUCE_TIMEOUT_MS;
  for (;;) {
    const flushed = parseLsnOrThrow(await cluster.sql('SELECT pg_current_wal_flush_lsn()'));
    if (flushed >= targetLsn) return;
    assert.ok(Date.now() < deadline, `the primary reached only ${formatLsn(flushed)} of ${formatLsn(targetLsn)} in ${PRODUCE_TIMEOUT_MS} ms`);
    await cluster.pgbench(['-c', '2', '-T', '3', '-R', String(PGBENCH_RATE_TPS), '-n', '-b', 'tpcb-like@1', '-f', `${bulkScript}@4`]);
  }
}

/** Samples the bytes of walcast's segment files (allocated blocks) every SAMPLE_INTERVAL_MS, independently of walcast. */
function heldBy(of: Timeline): string {
  const status = walcast.server.retention?.status(of.tenantId, of.timelineId);
  const pinned = of.lowestPinnedSegment();
  return `${status?.limitedBy ?? '-'} ${status?.horizonLsn === undefined ? '' : formatLsn(status.horizonLsn)}; pinned ${pinned === undefined ? '-' : formatLsn(pinned * BigInt(SEGMENT_BYTES))}`;
}

function sampleDisk(of: Timeline): { stop(): Promise<DiskSample[]> } {
  const samples: DiskSample[] = [];
  const startedAt = Date.now();
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      samples.push({ atMs: Date.now() - startedAt, commitLsn: of.commitLsn.get(), startLsn: of.timelineStartLsn, heldBy: heldBy(of), ...(await measureSegments(of.dir)) });
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

async function measureSegments(dir: string): Promise<{ files: number; diskBytes: number }> {
  let files = 0;
  let diskBytes = 0;
  for (const name of await readdir(dir)) {
    if (!/^[0-9A-F]{24}(\.partial)?$/.test(name)) continue;
    try {
      diskBytes += (await lstat(join(dir, name))).blocks * 512;
      files++;
    } catch {
      // Removed between the listing and the stat: it no longer counts.
    }
  }
  return { files, diskBytes };
}

/** One row per tenth of the run: WAL produced so far, files and MiB on disk (the largest sample in that stretch). */
function diskTable(samples: readonly DiskSample[], firstLsn: Lsn): string {
  const rows = ['| WAL produced (MiB) | segment files | disk (MiB, max in stretch) | timeline start | held by |', '|---:|---:|---:|---|---|'];
  const stretch = Math.max(1, Math.ceil(samples.length / 10));
  for (let index = 0; index < samples.length; index += stretch) {
    const part = samples.slice(index, index + stretch);
    const last = part.at(-1);
    if (last === undefined) continue;
    const largest = part.reduce((max, sample) => (sample.diskBytes > max.diskBytes ? sample : max), last);
    rows.push(`| ${mib(Number(last.commitLsn - firstLsn))} | ${largest.files} | ${mib(largest.diskBytes)} | ${formatLsn(last.startLsn)} | ${last.heldBy} |`);
  }
  return '\n' + rows.join('\n');
}

async function firstSegmentStart(dir: string): Promise<Lsn> {
  const names = (await readdir(dir)).filter((name) => /^[0-9A-F]{24}(\.partial)?$/.test(name)).sort();
  const first = names[0];
  assert.ok(first !== undefined, 'pg_receivewal wrote a segment');
  const segno = BigInt('0x' + first.slice(8, 16)) * 0x100n + BigInt('0x' + first.slice(16, 24));
  return segno * BigInt(SEGMENT_BYTES);
}

/** Every byte of [fromLsn, toLsn) in `dir` (NAME or NAME.partial) equals the primary's pg_wal; returns the bytes compared. */
async function assertWalEqual(dir: string, primaryWalDir: string, fromLsn: Lsn, toLsn: Lsn): Promise<number> {
  const names = new Set(await readdir(dir));
  let compared = 0;
  for (let segno = fromLsn / BigInt(SEGMENT_BYTES); segno * BigInt(SEGMENT_BYTES) < toLsn; segno++) {
    const plain = segmentFileName(1, segno, SEGMENT_BYTES);
    const name = names.has(plain) ? plain : `${plain}.partial`;
    assert.ok(names.has(name), `segment ${plain} is missing from ${dir}`);
    const segmentStart = segno * BigInt(SEGMENT_BYTES);
    const from = fromLsn > segmentStart ? Number(fromLsn - segmentStart) : 0;
    const to = toLsn - segmentStart >= BigInt(SEGMENT_BYTES) ? SEGMENT_BYTES : Number(toLsn - segmentStart);
    const ours = (await readFile(join(dir, name))).subarray(from, to);
    const theirs = (await readFile(join(primaryWalDir, plain))).subarray(from, to);
    assert.equal(ours.length, to - from, `${name} is shorter than its WAL`);
    const difference = firstDifference(ours, theirs);
    assert.equal(difference, -1, `${name} differs from the primary at offset ${from + difference}`);
    compared += to - from;
  }
  return compared;
}

function mib(bytes: number): string {
  return (bytes / MIB).toFixed(1);
}
