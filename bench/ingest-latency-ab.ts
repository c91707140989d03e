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
 * (bucket upper bounds). All targets follow the primary during every run, so each commit is fsynced by every relay at
 * once: absolute figures include that contention, alike for all. `--strace DIR` attaches `strace -f -T` to each
 * walcast process and to each standby's walreceiver for the whole run (fdatasync counts and durations per file
 * descriptor survive load far better than wall-clock latency).
 *
 * Usage: node --import tsx bench/ingest-latency-ab.ts [--base DIR] [--replicas 1,100] [--rounds 3] [--duration-ms 3000]
 *   [--rate 100] [--strace DIR]
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { INGEST_TO_PUBLISH_HISTOGRAM, bucketDelta, histogramPercentileMs, scrapeHistogram, type Buckets } from './lib/metrics-histogram.js';
import { planFor, type BenchPlan } from './lib/plan.js';
import { runBenchmark } from './lib/processes.js';
import { startWalcastServer, type ServerTarget } from './lib/servers.js';
import { buildTools } from './lib/tools.js';
import { createFollowingDataDir, prepareWal } from './lib/wal-source.js';
import { measureLatencyRun, startCascade } from './scenarios/live-latency.js';
import type { BenchContext } from './scenarios/streaming.js';

const INGEST_FLUSH_HISTOGRAM = 'walcast_ingest_flush_seconds';
/** Walsenders the primary needs beyond the replicas of one run: the relays themselves and the direct reference. */
const PRIMARY_SPARE_SENDERS_FACTOR = 3;
const STRACE_ATTACH_MS = 1_000;

const { values } = parseArgs({
  options: {
    base: { type: 'string' },
    replicas: { type: 'string', default: '1,100' },
    rounds: { type: 'string', default: '3' },
    'duration-ms': { type: 'string', default: '3000' },
    rate: { type: 'string', default: '100' },
    strace: { type: 'string' },
  },
  strict: true,
});
const startedAt = performance.now();
const progress = (message: string): void => void process.stderr.write(`[${((performance.now() - startedAt) / 1000).toFixed(1).padStart(6)}s] ${message}\n`);

interface Target {
  readonly label: string;
  readonly target: ServerTarget;
}

async function main(): Promise<void> {
  const replicaCounts = values.replicas.split(',').map(Number);
  const plan: BenchPlan = {
    ...planFor('quick'),
    pgbenchScale: 1,
    latency: { replicaCounts, commitsPerSecond: Number(values.rate), durationMs: Number(values['duration-ms']), repetitions: Number(values.rounds), warmUp: true },
    note: 'ingest-hop A/B',
  };
  const wal = await prepareWal({ pgbenchScale: 1, maxReplicas: Math.max(...replicaCounts) * PRIMARY_SPARE_SENDERS_FACTOR });
  const context: BenchContext = { tools: buildTools(), wal, plan, progress };
  const targets: Target[] = [];
  const tracers: { kill(): void }[] = [];
  try {
    const walcast = async (name: string, repoRoot?: string): Promise<ServerTarget> =>
      startWalcastServer({ dataDir: await createFollowingDataDir(wal.primary), walFiles: [], following: true, io: 'native', strategy: 'sendfile', name, ...(repoRoot === undefined ? {} : { repoRoot }) });
    if (values.base !== undefined) targets.push({ label: 'walcast-base', target: await walcast('walcast-base', values.base) });
    targets.push({ label: 'walcast', target: await walcast('walcast') });
    targets.push({ label: 'cascade-fsync-on', target: await startCascade(context, { fsync: true }) });
    targets.push({ label: 'cascade-fsync-off', target: await startCascade(context, { fsync: false }) });
    for (const { target } of targets) await measureLatencyRun(context, target, 1, 0);
    if (values.strace !== undefined) {
      for (const { label, target } of targets) {
        const pid = target.family === 'postgres' ? walreceiverOf(target.pid) : target.pid;
        progress(`strace ${label} pid ${pid}`);
        tracers.push(spawn('strace', ['-f', '-T', '-tt', '-e', 'trace=fdatasync,fsync,pwrite64', '-o', join(values.strace, `strace-${label}.txt`), '-p', String(pid)], { stdio: 'ignore' }));
      }
      await new Promise((resolve) => setTimeout(resolve, STRACE_ATTACH_MS));
    }
    const rows: string[] = [];
    for (let round = 0; round < plan.latency.repetitions; round++) {
      for (const replicas of replicaCounts) {
        for (const { label, target } of targets) {
          const meanBefore = await scrapeMean(target.metricsUrl, INGEST_TO_PUBLISH_HISTOGRAM);
          const hopBefore = await scrapeHistogram(target.metricsUrl, INGEST_TO_PUBLISH_HISTOGRAM);
          const flushBefore = await scrapeHistogram(target.metricsUrl, INGEST_FLUSH_HISTOGRAM);
          const run = await measureLatencyRun(context, target, replicas, round);
          const hop = quantiles(hopBefore, await scrapeHistogram(target.metricsUrl, INGEST_TO_PUBLISH_HISTOGRAM));
          const flush = quantiles(flushBefore, await scrapeHistogram(target.metricsUrl, INGEST_FLUSH_HISTOGRAM));
          const meanAfter = await scrapeMean(target.metricsUrl, INGEST_TO_PUBLISH_HISTOGRAM);
          const hopMean = meanBefore === undefined || meanAfter === undefined || meanAfter.count === meanBefore.count ? '—' : (((meanAfter.sum - meanBefore.sum) / (meanAfter.count - meanBefore.count)) * 1000).toFixed(3);
          const row = `| ${label} | ${replicas} | ${round + 1} | ${run.ok ? 'ok' : (run.error ?? 'failed')} | ${ms(run.latencyP50Ms)} | ${ms(run.latencyP99Ms)} | ${ms(run.latencyAddedP50Ms)} | ${ms(run.latencyAddedP99Ms)} | ${ms(run.internalPublishP99Ms)} | ${hop} | ${hopMean} | ${flush} |`;
          rows.push(row);
          progress(row);
        }
      }
    }
    process.stdout.write(
      [
        '| target | replicas | round | ok | commit→received p50 ms | p99 ms | added vs direct p50 ms | p99 ms | publish → socket p99 ms | ingest hop p50 / p99 ms | ingest hop mean ms | flush p50 / p99 ms |',
        '|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|',
        ...rows,
        '',
      ].join('\n'),
    );
  } finally {
    for (const tracer of tracers) tracer.kill();
    for (const { target } of targets) await target.stop();
    await wal.primary.stop();
  }
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

function ms(value: number | undefined): string {
  return value === undefined ? '—' : value.toFixed(2);
}

await runBenchmark('ingest-latency-ab', main, progress);
