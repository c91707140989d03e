/**
 * WAL retention end to end against real PostgreSQL 15: walcast follows a primary with 16 MiB segments and a small
 * --wal-keep-size while pgbench writes far more WAL than that. Disk use is sampled during the run and must stay
 * under the bound; pg_receivewal streaming live from walcast (no slot) must still receive every byte, identical
 * to the primary's. A long variant (1.5 GB of WAL) runs when WALCAST_RETENTION_LONG=1.
 */
import assert from 'node:assert/strict';
import { appendFile, lstat, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { readControlFile } from '../src/storage/control-file.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { connectReplication } from '../src/wire/client.js';
import { firstDifference, freePort, makeStandby, makeTempDir, runReceiveWal, startPrimary, type PgCluster } from './support/postgres.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';
import { retentionPassLagBytes } from './support/retention-lag.js';
import { waitFor } from './support/wait-for.js';
import { spawnServe, type ServeProcess } from './support/serve-process.js';

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
  /** What held the start at this moment: retention's horizon limit, the lowest segment a sender has open, and the lowest replica's sent LSN. */
  readonly heldBy: string;
  /** The start of the lowest segment a sender had open, if any. */
  readonly pinnedLsn: Lsn | undefined;
  /** Retention's `removedBeforeLsn`: every file before it was gone when the last completed pass ended. */
  readonly removedBeforeLsn: Lsn | undefined;
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
const cleanups: (() => Promise<void>)[] = [];
/** A standby replays a few MB of WAL in seconds; the bound is generous for the shared machine. */
const CATCH_UP_TIMEOUT_MS = 300_000;

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
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
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
    // pg_receivewal streams live from here on: it has connected and been sent everything there is.
    await waitFor(async () => (timeline.replicas.snapshot().some((replica) => replica.sentLsn >= firstLsn) ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'pg_receivewal streaming' });
    await produceWalUntil(primary, endLsn + BigInt(SEGMENT_BYTES));
    const result = await receiving;
    const samples = await sampler.stop();
    assert.equal(result.code, 0, `pg_receivewal failed: ${result.stderr}`);
    t.diagnostic(diskTable(samples, firstLsn));
    const worst = samples.reduce((max, sample) => Math.max(max, sample.diskBytes), 0);
    const pinned = samples.filter((sample) => pinLagBytes(sample) > 0);
    t.diagnostic(`${samples.length} samples; largest ${mib(worst)} MiB on disk; bound ${mib(DISK_BOUND_BYTES)} MiB; ${pinned.length} samples with pg_receivewal more than --wal-keep-size behind (its open segment held)`);
    for (const sample of samples) {
      assert.ok(sample.diskBytes <= allowedBytes(sample), `at ${sample.atMs} ms ${mib(sample.diskBytes)} MiB on disk, over ${mib(allowedBytes(sample))} MiB (${sample.heldBy}; retention pass lag ${mib(passLagBytes(sample))} MiB)`);
    }
    const removalPoints = new Set(samples.map((sample) => sample.removedBeforeLsn).filter((lsn) => lsn !== undefined));
    const worstPassLag = samples.reduce((max, sample) => Math.max(max, passLagBytes(sample)), 0);
    t.diagnostic(`retention's removal point took ${removalPoints.size} values while the WAL was written; its worst lag behind the keep window ${mib(worstPassLag)} MiB`);
    // A lagging live sender holds the start (above), so how often it moves depends on the machine; that it moved at
    // all while the WAL was written, and that two passes after the run bring the disk under the plain bound, do not.
    assert.ok(removalPoints.size >= 2, 'retention removed while the WAL was written, not only at the end');
    await retentionPassAfterCatchUp();
    const afterPasses = await measureSegments(timeline.dir);
    assert.ok(afterPasses.diskBytes <= DISK_BOUND_BYTES, `after the run and two passes ${mib(afterPasses.diskBytes)} MiB on disk, over ${mib(DISK_BOUND_BYTES)} MiB`);
    assert.ok(timeline.timelineStartLsn > firstLsn + BigInt(WAL_KEEP_BYTES), 'retention moved the timeline start');
    const control = await readControlFile(timeline.dir);
    assert.equal(control.timelineStartLsn <= timeline.timelineStartLsn, true);
    const receivedFrom = await firstSegmentStart(received);
    const compared = await assertWalEqual(received, primary.walDir, receivedFrom, endLsn);
    t.diagnostic(`pg_receivewal: ${mib(compared)} MiB from ${formatLsn(receivedFrom)} to ${formatLsn(endLsn)} equal to the primary's`);
    const stored = await assertWalEqual(timeline.dir, primary.walDir, timeline.timelineStartLsn, timeline.flushLsn.get());
    t.diagnostic(`walcast still holds ${mib(stored)} MiB from ${formatLsn(timeline.timelineStartLsn)}, equal to the primary's`);
  });

  test('a standby with primary_slot_name, stopped while more than --wal-keep-size is written: its slot keeps the WAL, it catches up with no gap; dropping the slot lets the WAL go', async (t) => {
    await replicationQuery(walcast.port, 'CREATE_REPLICATION_SLOT keep_standby PHYSICAL RESERVE_WAL');
    const base = await makeStandby(primary, { applicationName: 'keep_standby', start: false });
    cleanups.push(async () => base.standby?.stop({ mode: 'immediate' }));
    await appendFile(join(base.dataDir, 'postgresql.conf'), "\nprimary_slot_name = 'keep_standby'\n");
    let standby = await base.startWithUpstream(walcast.port);
    await primary.sql('CREATE TABLE keep_rows (id int)');
    await primary.sql('INSERT INTO keep_rows SELECT generate_series(1, 100)');
    const inserted = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
    await waitFor(async () => ((await standby.sql('SELECT count(*) FROM keep_rows')) === '100' ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'standby replayed' });
    await waitFor(async () => ((timeline.slots.get('keep_standby')?.restartLsn ?? 0n) >= inserted ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'the slot follows the standby' });
    await standby.stop();
    await waitFor(async () => (timeline.slots.get('keep_standby')?.activeConnId === undefined ? true : undefined), 30_000, { what: 'slot released' });
    const held = timeline.slots.get('keep_standby')?.restartLsn ?? 0n;
    await produceWalUntil(primary, held + BigInt(3 * WAL_KEEP_BYTES + 2 * SEGMENT_BYTES));
    await retentionPassAfterCatchUp();
    assert.ok(timeline.timelineStartLsn <= held, `the slot's restart LSN ${formatLsn(held)} is still held (start ${formatLsn(timeline.timelineStartLsn)})`);
    const status = walcast.server.retention?.status(timeline.tenantId, timeline.timelineId);
    assert.equal(status?.limitedBy, 'slot');
    assert.equal(status?.limitingSlot, 'keep_standby');
    const kept = await assertWalEqual(timeline.dir, primary.walDir, held, timeline.flushLsn.get());
    t.diagnostic(`slot at ${formatLsn(held)} kept ${mib(kept)} MiB (over 3 × --wal-keep-size), equal to the primary's`);
    await primary.sql('INSERT INTO keep_rows SELECT generate_series(101, 200)');
    const target = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
    standby = await base.startWithUpstream(walcast.port);
    await waitFor(async () => (parseLsnOrThrow(await standby.sql('SELECT pg_last_wal_replay_lsn()')) >= target ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'the restarted standby caught up' });
    assert.equal(await standby.sql('SELECT count(*) FROM keep_rows'), '200');
    await standby.stop();
    await replicationQuery(walcast.port, 'DROP_REPLICATION_SLOT keep_standby');
    await retentionPassAfterCatchUp();
    assert.ok(timeline.timelineStartLsn > held, 'without the slot its WAL went');
    assert.equal(walcast.server.retention?.status(timeline.tenantId, timeline.timelineId)?.limitedBy, 'wal_keep_size');
    const { diskBytes } = await measureSegments(timeline.dir);
    assert.ok(diskBytes <= DISK_BOUND_BYTES, `after the drop ${mib(diskBytes)} MiB on disk`);
  });

  test("--max-slot-wal-keep-size: a stopped standby's slot is invalidated past the cap, disk stops growing, and the standby gets 58P01 as from PostgreSQL", async (t) => {
    const capBytes = 6 * SEGMENT_BYTES;
    const dataDir = await makeTempDir('walcast-retention-cap');
    await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1 port=${primary.port} user=repl application_name=walcast_cap`, password: undefined, log: silentLogger() });
    const capped = await startWalcast({ dataDir, retention: { walKeepBytes: WAL_KEEP_BYTES, maxSlotWalKeepBytes: capBytes } });
    cleanups.push(() => capped.stop());
    const [cappedTimeline] = capped.server.timelines.list();
    assert.ok(cappedTimeline !== undefined);
    await replicationQuery(capped.port, 'CREATE_REPLICATION_SLOT capped_standby PHYSICAL RESERVE_WAL');
    const base = await makeStandby(primary, { applicationName: 'capped_standby', start: false });
    cleanups.push(async () => base.standby?.stop({ mode: 'immediate' }));
    await appendFile(join(base.dataDir, 'postgresql.conf'), "\nprimary_slot_name = 'capped_standby'\n");
    const standby = await base.startWithUpstream(capped.port);
    await primary.sql('CREATE TABLE cap_rows (id int)');
    await waitFor(async () => ((await standby.sql("SELECT count(*) FROM pg_class WHERE relname = 'cap_rows'")) === '1' ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'standby replayed' });
    await standby.stop();
    const held = cappedTimeline.slots.get('capped_standby')?.restartLsn ?? 0n;
    const sampler = sampleDisk(cappedTimeline, capped);
    await produceWalUntil(primary, held + BigInt(capBytes + 8 * SEGMENT_BYTES));
    await waitFor(async () => (cappedTimeline.slots.get('capped_standby')?.invalidated === true ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'slot invalidated' });
    await retentionPassAfterCatchUp(capped, cappedTimeline);
    const samples = await sampler.stop();
    t.diagnostic(diskTable(samples, held));
    const worst = samples.reduce((max, sample) => Math.max(max, sample.diskBytes), 0);
    assert.ok(worst <= capBytes + DISK_SLACK_BYTES, `disk reached ${mib(worst)} MiB past the cap of ${mib(capBytes)} MiB`);
    assert.ok(cappedTimeline.timelineStartLsn > held, 'the invalidated slot no longer holds its WAL');
    assert.equal(capped.server.retention?.status(cappedTimeline.tenantId, cappedTimeline.timelineId)?.slotsInvalidated, 1);
    const restarted = await base.startWithUpstream(capped.port);
    // PostgreSQL's walreceiver logs the walsender's error: "could not receive data from WAL stream: ERROR:
    // requested WAL segment 00000001000000000000000X has already been removed" (walsender.c WALRead/CheckXLogRemoved).
    const line = await waitFor(async () => {
      const text = await readFile(restarted.logFile, 'utf8');
      return /ERROR:\s+requested WAL segment [0-9A-F]{24} has already been removed/.exec(text)?.[0];
    }, CATCH_UP_TIMEOUT_MS, { what: 'the standby logs 58P01' });
    t.diagnostic(`standby log: ${line}`);
    await restarted.stop({ mode: 'immediate' });
  });

  test('walcast killed with SIGKILL during removal: after restart nothing below a slot is missing and every stored byte equals the primary', async (t) => {
    const dataDir = await makeTempDir('walcast-retention-kill');
    const created = await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1 port=${primary.port} user=repl application_name=walcast_kill`, password: undefined, log: silentLogger() });
    const port = await freePort();
    let serve = await spawnRetentionServe(dataDir, port);
    cleanups.push(() => serve.stop());
    const outputs: string[] = [];
    const timelineDir = join(dataDir, created.tenantId, created.timelineId);
    // Removal runs every second while pgbench writes; each kill lands in some phase of a pass.
    for (const [round, delayMs] of [300, 700, 1900].entries()) {
      const producing = produceWalUntil(primary, parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()')) + BigInt(4 * WAL_KEEP_BYTES));
      if (round < 2) {
        // Kill right after a pass moved the start: its unlinks run in the next moments.
        const before = (await readControlFile(timelineDir)).timelineStartLsn;
        await waitFor(async () => ((await readControlFile(timelineDir)).timelineStartLsn > before ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'a removal pass', pollMs: 20 });
      }
      await sleep(delayMs);
      serve.kill9();
      await serve.exited;
      t.diagnostic(`round ${round}: killed; control start ${formatLsn((await readControlFile(timelineDir)).timelineStartLsn)}, ${(await measureSegments(timelineDir)).files} segment files`);
      await producing;
      outputs.push(serve.output());
      serve = await spawnRetentionServe(dataDir, port);
      // Two kills with only --wal-keep-size holding WAL, then one with a slot holding it too.
      if (round === 1) await replicationQuery(port, 'CREATE_REPLICATION_SLOT kill_keeper PHYSICAL RESERVE_WAL');
    }
    const target = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
    await waitFor(async () => ((await readControlFile(timelineDir)).flushLsn >= target ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'walcast caught up' });
    await serve.stop();
    outputs.push(serve.output());
    assert.match(outputs.join(''), /removed old WAL segments/, 'removal ran between the kills');
    const control = await readControlFile(timelineDir);
    const slots = await readFile(join(timelineDir, 'walcast.slots'), 'utf8');
    const restart = /"restartLsn":"([0-9A-F]+\/[0-9A-F]+)"/.exec(slots)?.[1];
    assert.ok(restart !== undefined, `the slot survived: ${slots}`);
    assert.ok(control.timelineStartLsn <= parseLsnOrThrow(restart), `start ${formatLsn(control.timelineStartLsn)} is not past the slot's restart LSN ${restart}`);
    const stored = await assertWalEqual(timelineDir, primary.walDir, control.timelineStartLsn, control.flushLsn);
    t.diagnostic(`after 3 kills: ${mib(stored)} MiB from ${formatLsn(control.timelineStartLsn)} (slot at ${restart}) to ${formatLsn(control.flushLsn)} equal to the primary's`);
  });
});

/** Waits until walcast has stored everything the primary flushed, then runs a retention pass on it. */
async function retentionPassAfterCatchUp(server: RunningWalcast = walcast, of: Timeline = timeline): Promise<void> {
  const target = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
  await of.commitLsn.waitBeyond(target - 1n, CATCH_UP_TIMEOUT_MS);
  const task = server.server.retention?.task(of.tenantId, of.timelineId);
  assert.ok(task !== undefined, 'retention runs for the followed timeline');
  await task.runPass();
  await task.runPass();
}

async function replicationQuery(port: number, command: string): Promise<void> {
  const client = await connectReplication({ host: '127.0.0.1', port, user: 'repl', timeoutMs: 10_000 });
  try {
    await client.query(command);
  } finally {
    await client.end();
  }
}

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
function pinnedLsnOf(of: Timeline): Lsn | undefined {
  const segno = of.lowestPinnedSegment();
  return segno === undefined ? undefined : segno * BigInt(SEGMENT_BYTES);
}

/**
 * What a sample may hold: the keep window plus slack, and past that the larger of two lags, each read before the
 * files are listed:
 * - a live sender more than the keep window behind: everything from the segment it has open (a running sender's
 *   file never vanishes, by design);
 * - retention's pass lag: the keep window's start now, less the LSN before which the last completed pass had
 *   removed every file. A pass runs every second but fsyncs the control file and the directory, which on a loaded
 *   machine can take seconds; WAL arriving meanwhile stays until the next pass ends. What the sample checks then is
 *   the exact claim (nothing below what the pass removed is left); that passes keep completing is checked apart,
 *   without timing (the removal point moves during the run), and the end state against the plain bound.
 */
function allowedBytes(sample: DiskSample): number {
  return DISK_BOUND_BYTES + Math.max(pinLagBytes(sample), passLagBytes(sample));
}

function keepFromOf(sample: DiskSample): Lsn {
  return sample.commitLsn - BigInt(WAL_KEEP_BYTES);
}

function pinLagBytes(sample: DiskSample): number {
  const keepFrom = keepFromOf(sample);
  return sample.pinnedLsn !== undefined && sample.pinnedLsn < keepFrom ? Number(keepFrom - sample.pinnedLsn) : 0;
}

function passLagBytes(sample: DiskSample): number {
  return retentionPassLagBytes(sample.commitLsn, sample.removedBeforeLsn, WAL_KEEP_BYTES, SEGMENT_BYTES);
}

function heldBy(of: Timeline, server: RunningWalcast): string {
  const status = server.server.retention?.status(of.tenantId, of.timelineId);
  const pinned = of.lowestPinnedSegment();
  // Where the live senders are: a pin far behind the lowest of them is held by a reader that no longer reads there.
  const sent = of.replicas.snapshot().reduce<Lsn | undefined>((lowest, replica) => (lowest === undefined || replica.sentLsn < lowest ? replica.sentLsn : lowest), undefined);
  return `${status?.limitedBy ?? '-'} ${status?.horizonLsn === undefined ? '' : formatLsn(status.horizonLsn)}; pinned ${pinned === undefined ? '-' : formatLsn(pinned * BigInt(SEGMENT_BYTES))}; sent ${sent === undefined ? '-' : formatLsn(sent)}`;
}

function sampleDisk(of: Timeline, server: RunningWalcast = walcast): { stop(): Promise<DiskSample[]> } {
  const samples: DiskSample[] = [];
  const startedAt = Date.now();
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const removedBeforeLsn = server.server.retention?.status(of.tenantId, of.timelineId)?.removedBeforeLsn;
      samples.push({ atMs: Date.now() - startedAt, commitLsn: of.commitLsn.get(), startLsn: of.timelineStartLsn, heldBy: heldBy(of, server), pinnedLsn: pinnedLsnOf(of), removedBeforeLsn, ...(await measureSegments(of.dir)) });
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

/** `walcast serve` as a child process with the test's retention flags; resolves once it answers IDENTIFY_SYSTEM. */
function spawnRetentionServe(dataDir: string, port: number): Promise<ServeProcess> {
  return spawnServe({
    args: ['--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--no-http', '--log-level', 'info', '--wal-keep-size', `${WAL_KEEP_BYTES / MIB}MB`],
    env: { WALCAST_IO: 'ts' },
    ready: async () => {
      await replicationQuery(port, 'IDENTIFY_SYSTEM');
      return true;
    },
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
