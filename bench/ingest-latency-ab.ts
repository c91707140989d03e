/**
 * The ingest hop, A/B in one run (issue 13): commit → replica-received latency through relays that all follow the
 * same PostgreSQL 15 primary, measured in interleaved rounds (every target once per round and replica count, so a
 * loaded machine hits them alike):
 *
 * - walcast from this tree, and optionally walcast from another checkout (`--base DIR`: e.g. `git archive` of the
 *   commit before a change, with node_modules and build/ linked or copied in);
 * - a cascading standby with fsync=on (its walreceiver fsyncs before its walsender sends, as walcast fdatasyncs
 *   before it publishes) and one with fsync=off (what the live-latency reference was before 2026-12-06 evening).
 *
 * Per run: the harness's p50/p99 (bench/scenarios/live-latency.ts), the share over a direct replica of the primary,
 * and walcast's own histograms over the run: publish → socket p99, ingest hop (received → published) and flush p50/p99
 * (bucket upper bounds), and the server's CPU per 1,000 publishes over the run (whole process / main thread /
 * the main thread's user mode: the per-commit cost that survives a loaded machine). All targets follow the primary during every run, so each commit is fsynced by every relay at
 * once: absolute figures include that contention, alike for all. `--strace DIR` attaches `strace -f -T` to each
 * walcast process and to each standby's walreceiver for the whole run (fdatasync counts and durations per file
 * descriptor survive load far better than wall-clock latency); a table after the rounds summarizes each trace
 * (bench/lib/sync-trace.ts): commit fdatasync durations, other files' syncs, commit syncs that overlapped one; and,
 * when `--strace-calls` has the socket calls, walcast's commit path step by step (receive → write → fdatasync →
 * event loop → status → replica send).
 *
 * `--cold 0,1,3` (production mix, issue 13): each walcast run is repeated with that many other replicas catching up
 * cold at the same time (bench/lib/cold-load.ts: old WAL written by `pgbench -i -s COLD_SCALE` on the primary before
 * the rounds, ingested by every walcast, each stream reading its own slice, evicted from page cache before each
 * pass); the table adds the cold streams' MB/s and walcast's event-loop delay p99/max over the run.
 * `--perf DIR` records syscall tracepoints of each walcast for the whole run (`perf record`, which stops nothing:
 * usable with 100 and 1,000 replicas, where strace's ptrace stops would change what is measured) and prints each
 * commit's thread hops (bench/lib/perf-hops.ts): pwrite → fdatasync on the pool, the fdatasync, its completion
 * waiting for the event loop, then the status write and the first replica send. Needs perf and the rights to trace.
 * `--walcast-only` leaves out the cascading standbys. `--reply-each`: every replica sends a status update after every
 * XLogData, as a PostgreSQL standby's walreceiver does (wal-consumer --reply-each; off: every 10 s, as pg_receivewal),
 * so walcast's one event loop reads one reply per replica per commit, the cascade's walsenders one each.
 *
 * Usage: node --import tsx bench/ingest-latency-ab.ts [--base DIR] [--replicas 1,100] [--rounds 3] [--duration-ms 3000]
 *   [--rate 100] [--strace DIR] [--strace-calls fdatasync,fsync,pwrite64] [--cold 0,1,3] [--cold-scale 10] [--walcast-only] [--perf DIR]
 *   [--event-loop-poll-ms 500]  (0: no /metrics reads during a run; see watchEventLoop) [--base-last] [--reply-each]
 * `--strace-calls` widens what is traced, e.g. `read,recvfrom,pwrite64,fdatasync,fsync,sendto,sendfile,writev,rename`
 * for the whole walcast chain (upstream socket read → segment write → fdatasync → replica socket send).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { INGEST_TO_PUBLISH_HISTOGRAM, bucketDelta, histogramPercentileMs, scrapeHistogram, type Buckets } from './lib/metrics-histogram.js';
import { planFor, type BenchPlan } from './lib/plan.js';
import { runBenchmark } from './lib/processes.js';
import { startWalcastServer, type ServerTarget } from './lib/servers.js';
import { buildTools } from './lib/tools.js';
import { createFollowingDataDir, prepareWal, segmentFilesIn, type PreparedWal } from './lib/wal-source.js';
import { startColdLoad, timelineDirOf } from './lib/cold-load.js';
import { commitChain, summarizeSyncTrace } from './lib/sync-trace.js';
import { PERF_EVENTS, commitHops } from './lib/perf-hops.js';
import { parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { measureLatencyRun, startCascade, waitForServerPosition } from './scenarios/live-latency.js';
import type { BenchContext } from './scenarios/streaming.js';

const INGEST_FLUSH_HISTOGRAM = 'walcast_ingest_flush_seconds';
/** Upstream send timestamp → received by the follower: the wait before the ingest hop (network, socket, event loop). */
const INGEST_UPSTREAM_HISTOGRAM = 'walcast_ingest_upstream_to_received_seconds';
/** The upstream wait column counts publishes whose message waited longer than this (ms; a histogram bound). */
const UPSTREAM_WAIT_SLOW_MS = 0.5;
/** Walsenders the primary needs beyond the replicas of one run: the relays themselves and the direct reference. */
const PRIMARY_SPARE_SENDERS_FACTOR = 3;
const STRACE_ATTACH_MS = 1_000;
/** `perf script` of a whole run: ~100 bytes per event, several events per commit and replica send. */
const PERF_SCRIPT_BYTES_MAX = 1024 * 1024 * 1024;

const { values } = parseArgs({
  options: {
    base: { type: 'string' },
    replicas: { type: 'string', default: '1,100' },
    rounds: { type: 'string', default: '3' },
    'duration-ms': { type: 'string', default: '3000' },
    rate: { type: 'string', default: '100' },
    strace: { type: 'string' },
    'strace-calls': { type: 'string', default: 'fdatasync,fsync,pwrite64' },
    cold: { type: 'string', default: '0' },
    'cold-scale': { type: 'string', default: '10' },
    'walcast-only': { type: 'boolean', default: false },
    'event-loop-poll-ms': { type: 'string', default: '500' },
    'base-last': { type: 'boolean', default: false },
    'reply-each': { type: 'boolean', default: false },
    perf: { type: 'string' },
  },
  strict: true,
});
const startedAt = performance.now();
const progress = (message: string): void => void process.stderr.write(`[${((performance.now() - startedAt) / 1000).toFixed(1).padStart(6)}s] ${message}\n`);

interface Target {
  readonly label: string;
  readonly target: ServerTarget;
  /** A walcast's data dir (its old WAL is what the cold streams read). */
  readonly dataDir?: string;
}

async function main(): Promise<void> {
  const replicaCounts = values.replicas.split(',').map(Number);
  const plan: BenchPlan = {
    ...planFor('quick'),
    pgbenchScale: 1,
    latency: { replicaCounts, commitsPerSecond: Number(values.rate), durationMs: Number(values['duration-ms']), repetitions: Number(values.rounds), warmUp: true, replyEach: values['reply-each'] },
    note: 'ingest-hop A/B',
  };
  const wal = await prepareWal({ pgbenchScale: 1, maxReplicas: Math.max(...replicaCounts) * PRIMARY_SPARE_SENDERS_FACTOR });
  const context: BenchContext = { tools: buildTools(), wal, plan, progress };
  const targets: Target[] = [];
  const tracers: { kill(): void }[] = [];
  const perfRecorders: { label: string; pid: number; child: ChildProcess }[] = [];
  try {
    const walcast = async (label: string, repoRoot?: string): Promise<Target> => {
      const dataDir = await createFollowingDataDir(wal.primary);
      const target = await startWalcastServer({ dataDir, walFiles: [], following: true, io: 'native', strategy: 'sendfile', name: label, ...(repoRoot === undefined ? {} : { repoRoot }) });
      return { label, target, dataDir };
    };
    // Start order is connect order to the primary, whose walsenders then wake in that order on every commit: the two
    // walcasts fdatasync the same commit at the same moment on one disk, and the later may wait behind the earlier.
    // --base-last swaps it (and so the order of the two in each round) to tell that apart from the change under test.
    if (values.base !== undefined && !values['base-last']) targets.push(await walcast('walcast-base', values.base));
    targets.push(await walcast('walcast'));
    if (values.base !== undefined && values['base-last']) targets.push(await walcast('walcast-base', values.base));
    if (!values['walcast-only']) {
      targets.push({ label: 'cascade-fsync-on', target: await startCascade(context, { fsync: true }) });
      targets.push({ label: 'cascade-fsync-off', target: await startCascade(context, { fsync: false }) });
    }
    for (const { target } of targets) await measureLatencyRun(context, target, 1, 0);
    const coldCounts = values.cold.split(',').map(Number);
    const old = coldCounts.some((count) => count > 0) ? await writeOldWal(wal.primary, targets) : undefined;
    if (values.perf !== undefined) {
      for (const { label, target } of targets) {
        if (target.family === 'postgres' || target.pid === undefined) continue;
        progress(`perf ${label} pid ${target.pid}`);
        const child = spawn('perf', ['record', '-q', '-o', join(values.perf, `perf-${label}.data`), '-e', PERF_EVENTS, '-p', String(target.pid)], { stdio: 'ignore' });
        perfRecorders.push({ label, pid: target.pid, child });
      }
      await sleep(STRACE_ATTACH_MS);
    }
    if (values.strace !== undefined) {
      for (const { label, target } of targets) {
        const pid = target.family === 'postgres' ? walreceiverOf(target.pid) : target.pid;
        progress(`strace ${label} pid ${pid}`);
        tracers.push(spawn('strace', ['-f', '-T', '-tt', '-e', `trace=${values['strace-calls']}`, '-o', join(values.strace, `strace-${label}.txt`), '-p', String(pid)], { stdio: 'ignore' }));
      }
      await new Promise((resolve) => setTimeout(resolve, STRACE_ATTACH_MS));
    }
    const rows: string[] = [];
    for (let round = 0; round < plan.latency.repetitions; round++) {
      for (const replicas of replicaCounts) {
        for (const cold of coldCounts) {
        for (const { label, target, dataDir } of targets) {
          if (cold > 0 && dataDir === undefined) continue;
          const coldLoad = cold > 0 && old !== undefined && dataDir !== undefined
            ? startColdLoad({ tools: context.tools, port: target.port, streams: cold, fromLsn: old.from, toLsn: old.to, files: segmentFilesIn(timelineDirOf(dataDir), old.from, old.to, wal.segmentBytes), pgTimelineId: wal.pgTimelineId })
            : undefined;
          const loopWatch = watchEventLoop(Number(values['event-loop-poll-ms']) > 0 ? target.metricsUrl : undefined, Number(values['event-loop-poll-ms']));
          const meanBefore = await scrapeMean(target.metricsUrl, INGEST_TO_PUBLISH_HISTOGRAM);
          const hopBefore = await scrapeHistogram(target.metricsUrl, INGEST_TO_PUBLISH_HISTOGRAM);
          const flushBefore = await scrapeHistogram(target.metricsUrl, INGEST_FLUSH_HISTOGRAM);
          const upstreamBefore = await scrapeHistogram(target.metricsUrl, INGEST_UPSTREAM_HISTOGRAM);
          const upstreamMeanBefore = await scrapeMean(target.metricsUrl, INGEST_UPSTREAM_HISTOGRAM);
          const run = await measureLatencyRun(context, target, replicas, round);
          const hop = quantiles(hopBefore, await scrapeHistogram(target.metricsUrl, INGEST_TO_PUBLISH_HISTOGRAM));
          const flush = quantiles(flushBefore, await scrapeHistogram(target.metricsUrl, INGEST_FLUSH_HISTOGRAM));
          const meanAfter = await scrapeMean(target.metricsUrl, INGEST_TO_PUBLISH_HISTOGRAM);
          const upstream = upstreamWait(upstreamBefore, await scrapeHistogram(target.metricsUrl, INGEST_UPSTREAM_HISTOGRAM), upstreamMeanBefore, await scrapeMean(target.metricsUrl, INGEST_UPSTREAM_HISTOGRAM));
          const loop = await loopWatch.stop();
          const coldSummary = await coldLoad?.stop();
          const coldCell = coldSummary === undefined ? '—' : `${coldSummary.mbPerSecondPerStream?.toFixed(0) ?? '—'} (${coldSummary.passes} passes, ${coldSummary.failures} failed, cached ≤ ${(coldSummary.residentFractionMax * 100).toFixed(0)}%)`;
          const hopMean = meanBefore === undefined || meanAfter === undefined || meanAfter.count === meanBefore.count ? '—' : (((meanAfter.sum - meanBefore.sum) / (meanAfter.count - meanBefore.count)) * 1000).toFixed(3);
          const publishes = meanBefore === undefined || meanAfter === undefined ? 0 : meanAfter.count - meanBefore.count;
          const perThousand = (seconds: number | undefined): string => (seconds === undefined || publishes === 0 ? '—' : ((seconds * 1e6) / publishes).toFixed(0));
          const cpuPerThousand = `${perThousand(run.serverCpuSeconds)} / ${perThousand(run.serverMainThreadCpuSeconds)} / ${perThousand(run.serverMainThreadUserSeconds)}`;
          const row = `| ${label} | ${replicas} | ${cold} | ${round + 1} | ${run.ok ? 'ok' : (run.error ?? 'failed')} | ${ms(run.latencyP50Ms)} | ${ms(run.latencyP99Ms)} | ${ms(run.latencyAddedP50Ms)} | ${ms(run.latencyAddedP99Ms)} | ${ms(run.internalPublishP99Ms)} | ${upstream} | ${hop} | ${hopMean} | ${flush} | ${loop} | ${cpuPerThousand} | ${coldCell} |`;
          rows.push(row);
          progress(row);
        }
        }
      }
    }
    process.stdout.write(
      [
        `| target | replicas | cold streams | round | ok | commit→received p50 ms | p99 ms | added vs direct p50 ms | p99 ms | publish → socket p99 ms | upstream → received p50 / p99 ms, mean ms, > ${UPSTREAM_WAIT_SLOW_MS} ms | ingest hop p50 / p99 ms | ingest hop mean ms | flush p50 / p99 ms | event-loop delay p99 / max ms | server CPU ms / 1,000 publishes: process / main thread / its user mode | cold MB/s per stream |`,
        '|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|',
        ...rows,
        '',
      ].join('\n'),
    );
    if (values.perf !== undefined) await reportPerfHops(values.perf, perfRecorders.splice(0));
    if (values.strace !== undefined) {
      for (const tracer of tracers) tracer.kill();
      tracers.length = 0;
      await sleep(STRACE_ATTACH_MS); // strace writes its last lines on detach
      process.stdout.write(
        [
          '',
          '| traced | commit fdatasyncs | p50 ms | p90 ms | p99 ms | max ms | other files\' syncs | commit syncs during one | their p50 ms |',
          '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
          ...targets.map(({ label }) => {
            const trace = summarizeSyncTrace(join(values.strace ?? '', `strace-${label}.txt`));
            if (trace === undefined) return `| ${label} | — | | | | | | | |`;
            const share = `${trace.overlapped} (${((trace.overlapped / trace.commitSyncs) * 100).toFixed(2)} %)`;
            return `| ${label} | ${trace.commitSyncs} | ${ms(trace.p50Ms)} | ${ms(trace.p90Ms)} | ${ms(trace.p99Ms)} | ${ms(trace.maxMs)} | ${trace.otherSyncs} | ${share} | ${ms(trace.overlappedP50Ms)} |`;
          }),
          '',
        ].join('\n'),
      );
      for (const { label, target } of targets) {
        const chain = target.family === 'postgres' ? undefined : commitChain(join(values.strace, `strace-${label}.txt`));
        if (chain === undefined) continue;
        process.stdout.write(
          [
            '',
            `${label}: ${chain.commits} commits through its system calls (bench/lib/sync-trace.ts commitChain), ms`,
            '',
            '| step | p50 | p90 | p99 |',
            '|---|---:|---:|---:|',
            ...[...chain.steps].map(([step, [p50, p90, p99]]) => `| ${step} | ${p50.toFixed(3)} | ${p90.toFixed(3)} | ${p99.toFixed(3)} |`),
            '',
          ].join('\n'),
        );
      }
    }
  } finally {
    for (const tracer of tracers) tracer.kill();
    for (const { child } of perfRecorders) child.kill('SIGINT');
    for (const { target } of targets) await target.stop();
    await wal.primary.stop();
  }
}

/**
 * Old WAL for the cold streams: `pgbench -i` on the primary and a segment switch, then every walcast has ingested it
 * (its segments are complete files the cold passes evict and read).
 */
async function writeOldWal(primary: PreparedWal['primary'], targets: readonly Target[]): Promise<{ from: Lsn; to: Lsn }> {
  const from = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_insert_lsn()'));
  await primary.pgbench(['-i', '-s', values['cold-scale'], '-q']);
  await primary.sql('SELECT pg_switch_wal()');
  const to = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_insert_lsn()'));
  for (const { target, dataDir } of targets) if (dataDir !== undefined) await waitForServerPosition(target.port, to);
  progress(`old WAL for the cold streams: ${((Number(to - from)) / 2 ** 20).toFixed(0)} MiB`);
  return { from, to };
}

/**
 * walcast's event-loop delay over a run: prom-client resets its delay histogram on every /metrics collect (and the
 * run scrapes /metrics itself), so it is read every `pollMs` (--event-loop-poll-ms) and the worst window's p99 and
 * the max over all windows are kept. prom-client samples at 10 ms resolution: ~10 ms means no measurable delay.
 * Each read costs walcast a whole /metrics render on its event loop (~47 KB; ~2 ms of CPU per read, 100 reads back
 * to back on the loaded 2-vCPU VM, 2026-12-06 night): at 100 commits/s and two reads a second that holds up ~0.4 %
 * of the commits by up to that long, inside the band that sets a p99, and the standbys are not read at all. `--event-loop-poll-ms 0` turns the reads off (column "—") for
 * p99 comparisons.
 */
function watchEventLoop(metricsUrl: string | undefined, pollMs: number): { stop(): Promise<string> } {
  if (metricsUrl === undefined) return { stop: () => Promise.resolve('—') };
  let worstP99 = 0;
  let max = 0;
  let stopping = false;
  const read = async (): Promise<void> => {
    if (metricsUrl === undefined) return;
    const text = await (await fetch(metricsUrl)).text().catch(() => '');
    const value = (name: string): number => {
      const line = text.split('\n').find((entry) => entry.startsWith(`${name} `));
      return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1)) * 1000;
    };
    worstP99 = Math.max(worstP99, value('nodejs_eventloop_lag_p99_seconds'));
    max = Math.max(max, value('nodejs_eventloop_lag_max_seconds'));
  };
  const loop = (async () => {
    await read(); // resets the histogram: the run starts counting here
    worstP99 = 0;
    max = 0;
    while (!stopping) {
      await sleep(pollMs);
      await read();
    }
  })();
  return {
    async stop() {
      stopping = true;
      await loop;
      return metricsUrl === undefined ? '—' : `${worstP99.toFixed(1)} / ${max.toFixed(1)}`;
    },
  };
}

/** The standby's walreceiver: the postmaster's child whose command line says so. */
function walreceiverOf(postmasterPid: number): number {
  const children = execFileSync('pgrep', ['-P', String(postmasterPid)]).toString().trim().split('\n');
  const pid = children.find((child) => readFileSync(`/proc/${child}/cmdline`).toString().includes('walreceiver'));
  if (pid === undefined) throw new Error(`no walreceiver under postmaster ${postmasterPid}`);
  return Number(pid);
}

/** The histogram's _sum and _count summed over its label sets (for a mean finer than the buckets). */
async function scrapeMean(metricsUrl: string | undefined, name: string): Promise<{ sum: number; count: number } | undefined> {
  if (metricsUrl === undefined) return undefined;
  const text = await (await fetch(metricsUrl)).text().catch(() => '');
  let sum = 0;
  let count = 0;
  for (const line of text.split('\n')) {
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (line.startsWith(`${name}_sum`)) sum += value;
    else if (line.startsWith(`${name}_count`)) count += value;
  }
  return count === 0 ? undefined : { sum, count };
}

function quantiles(before: Buckets | undefined, after: Buckets | undefined): string {
  if (after === undefined) return '—';
  const delta = bucketDelta(before, after);
  return `${String(histogramPercentileMs(delta, 50) ?? '—')} / ${String(histogramPercentileMs(delta, 99) ?? '—')}`;
}

/** Stops each perf recorder (SIGINT: it writes its file), converts it with `perf script` and prints the hops per target. */
async function reportPerfHops(dir: string, recorders: readonly { label: string; pid: number; child: ChildProcess }[]): Promise<void> {
  const lines = ['', 'Commit path by thread hops (perf syscall tracepoints, bench/lib/perf-hops.ts), ms', '', '| target | step | commits | p50 | p90 | p99 |', '|---|---|---:|---:|---:|---:|'];
  for (const { label, pid, child } of recorders) {
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGINT');
    await exited;
    const script = join(dir, `perf-${label}.txt`);
    try {
      writeFileSync(script, execFileSync('perf', ['script', '-i', join(dir, `perf-${label}.data`)], { maxBuffer: PERF_SCRIPT_BYTES_MAX, stdio: ['ignore', 'pipe', 'ignore'] }));
    } catch (error) {
      lines.push(`| ${label} | perf script failed: ${error instanceof Error ? error.message : String(error)} | | | | |`);
      continue;
    }
    const hops = commitHops(script, pid);
    if (hops === undefined) {
      lines.push(`| ${label} | no commit fdatasync traced | | | | |`);
      continue;
    }
    for (const [step, { p50, p90, p99, count }] of hops.steps) lines.push(`| ${label} | ${step} | ${count} | ${p50.toFixed(3)} | ${p90.toFixed(3)} | ${p99.toFixed(3)} |`);
  }
  process.stdout.write([...lines, ''].join('\n'));
}

/** The upstream wait over a run: bucket p50 / p99, the exact mean, and the share of publishes above UPSTREAM_WAIT_SLOW_MS. */
function upstreamWait(before: Buckets | undefined, after: Buckets | undefined, meanBefore: { sum: number; count: number } | undefined, meanAfter: { sum: number; count: number } | undefined): string {
  if (after === undefined || meanAfter === undefined) return '—';
  const delta = bucketDelta(before, after);
  const total = delta.get(Number.POSITIVE_INFINITY) ?? 0;
  const within = delta.get(UPSTREAM_WAIT_SLOW_MS / 1000) ?? 0;
  const count = meanAfter.count - (meanBefore?.count ?? 0);
  const mean = count === 0 ? '—' : (((meanAfter.sum - (meanBefore?.sum ?? 0)) / count) * 1000).toFixed(3);
  const slow = total === 0 ? '—' : `${(((total - within) / total) * 100).toFixed(1)} %`;
  return `${quantiles(before, after)}, ${mean}, ${slow}`;
}

function ms(value: number | undefined): string {
  return value === undefined ? '—' : value.toFixed(2);
}

await runBenchmark('ingest-latency-ab', main, progress);
