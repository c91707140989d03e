/**
 * Commit fan-out latency (issue 13): N replicas (default 1, 100 and 1,000) wait on a live walcast timeline that
 * follows a PostgreSQL 15 primary; the primary commits at a steady rate; for each I/O backend the benchmark reports
 *
 * - walcast's own share, measured inside walcast: the delta over the commits of `walcast_publish_to_socket_seconds`
 *   (per replica and publish: commit LSN published → chunk written to that replica's socket) and
 *   `walcast_publish_fanout_seconds` (per publish: until the last waiting replica wrote it), read from /metrics
 *   right before the first commit and after the last one drained, as p50/p99 bucket upper bounds; the goal
 *   is fan-out p99 ≤ 1 ms at 100 replicas and ≤ 5 ms at 1,000;
 * - what the replicas see, measured by the harness (bench/scenarios/live-latency.ts, the C consumer's arrival log):
 *   commit sent → bytes received p50/p99, and the part walcast adds over a replica streaming straight from the
 *   primary meanwhile.
 *
 * Usage: node --import tsx bench/fanout-latency.ts [--replicas 1,100,1000] [--rate 100] [--duration-ms 3000]
 *   [--rounds 1] [--backends ts,native/uring] [--baseline DIR] [--replies interval|each] [--interleave] [--out FILE.json]
 * --replies each: every replica sends a standby status update after every XLogData, as a PostgreSQL walreceiver
 * does after each write and flush (default interval: at start, when asked, and every 10 s, as pg_receivewal).
 * Starts and stops everything itself (primary, one following walcast per backend, consumers). Timing runs want an
 * otherwise idle machine; tiny sizes (--replicas 2 --duration-ms 500) only check that it works.
 *
 * A/B: --baseline DIR is a copy of the repository at the commit to compare with (`git archive BASE | tar -x -C DIR`,
 * node_modules and build/ linked or copied in). Its walcast follows the same primary beside this tree's, and every
 * round runs both, alternating which goes first, so load from elsewhere falls on both alike. The figures to compare
 * on a loaded machine are the histogram quantiles and the server CPU per publish, not one run's wall clock.
 *
 * --interleave: every backend's walcast (and base, with --baseline) runs from the start, and each round runs all of
 * them in turn (the order rotating per round), instead of one backend's rounds after another's. Comparing backends
 * (e.g. native/sendfile against native/uring) wants this: without it every run of the first backend comes minutes
 * before any of the second, and a drift in the machine's load or the primary's state reads as a backend difference.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { planFor, type BenchPlan } from './lib/plan.js';
import { runBenchmark } from './lib/processes.js';
import type { RunRecord } from './lib/results.js';
import { startWalcastServer, type ServerTarget } from './lib/servers.js';
import { buildTools } from './lib/tools.js';
import { createFollowingDataDir, prepareWal } from './lib/wal-source.js';
import { measureLatencyRun } from './scenarios/live-latency.js';
import type { BenchContext } from './scenarios/streaming.js';

const EXIT_USAGE = 2;
const BACKENDS = ['ts', 'native/sendfile', 'native/writev', 'native/uring'] as const;
type BackendName = (typeof BACKENDS)[number];
const MS_PER_SECOND = 1000;

interface Options {
  readonly replicaCounts: readonly number[];
  readonly commitsPerSecond: number;
  readonly durationMs: number;
  readonly rounds: number;
  readonly backends: readonly BackendName[];
  readonly baseline: string | undefined;
  /** --replies each: every replica sends a status update after every XLogData (see wal-consumer --reply-each). */
  readonly replyEach: boolean;
  /** --interleave: all backends' servers at once, every round runs each of them (see the module comment). */
  readonly interleave: boolean;
  readonly out: string | undefined;
}

function parseOptions(argv: readonly string[]): Options {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      replicas: { type: 'string', default: '1,100,1000' },
      rate: { type: 'string', default: '100' },
      'duration-ms': { type: 'string', default: '3000' },
      rounds: { type: 'string', default: '1' },
      backends: { type: 'string', default: 'ts,native/uring' },
      baseline: { type: 'string' },
      replies: { type: 'string', default: 'interval' },
      interleave: { type: 'boolean', default: false },
      out: { type: 'string' },
    },
    strict: true,
  });
  const positive = (text: string, what: string): number => {
    const value = Number(text);
    if (!Number.isInteger(value) || value < 1) usage(`${what} must be a positive integer, got "${text}"`);
    return value;
  };
  const backends = values.backends.split(',').map((name) => name.trim());
  const unknown = backends.filter((name) => !(BACKENDS as readonly string[]).includes(name));
  if (unknown.length > 0) usage(`unknown backend(s) ${unknown.join(', ')}; known: ${BACKENDS.join(', ')}`);
  if (values.replies !== 'interval' && values.replies !== 'each') usage(`--replies must be interval or each, got "${values.replies}"`);
  return {
    replicaCounts: values.replicas.split(',').map((count) => positive(count.trim(), '--replicas')),
    commitsPerSecond: positive(values.rate, '--rate'),
    durationMs: positive(values['duration-ms'], '--duration-ms'),
    rounds: positive(values.rounds, '--rounds'),
    backends: backends as BackendName[],
    baseline: values.baseline,
    replyEach: values.replies === 'each',
    interleave: values.interleave,
    out: values.out,
  };
}

function usage(problem: string): never {
  process.stderr.write(`${problem}\nusage: node --import tsx bench/fanout-latency.ts [--replicas 1,100,1000] [--rate N] [--duration-ms MS] [--rounds N] [--backends ts,native/uring] [--baseline DIR] [--replies interval|each] [--interleave] [--out FILE]\n`);
  process.exit(EXIT_USAGE);
}

const startedAt = performance.now();
function progress(message: string): void {
  process.stderr.write(`[${((performance.now() - startedAt) / MS_PER_SECOND).toFixed(1).padStart(6)}s] ${message}\n`);
}

/** One run's figures: walcast's own (/metrics over the commits) and the harness's (commit → received), in ms. */
export interface FanoutRun {
  /** Which tree's walcast: `new` (this one) or `base` (--baseline). */
  readonly variant: Variant;
  readonly backend: BackendName;
  readonly replicas: number;
  readonly round: number;
  readonly ok: boolean;
  readonly error?: string;
  readonly publishes: number;
  readonly fanoutP50Ms?: number;
  readonly fanoutP99Ms?: number;
  /** The fan-out histogram's mean (sum / count: exact, where p50/p99 are bucket upper bounds). */
  readonly fanoutMeanMs?: number;
  /** Publishes whose fan-out took over 1 ms: with ~300 publishes a run's p99 is its 3rd-slowest, so this says how many crossed. */
  readonly fanoutOver1msPublishes?: number;
  readonly publishToSocketP50Ms?: number;
  readonly publishToSocketP99Ms?: number;
  readonly ingestHopP50Ms?: number;
  readonly ingestHopP99Ms?: number;
  readonly receivedP50Ms?: number;
  readonly receivedP99Ms?: number;
  readonly addedP50Ms?: number;
  readonly addedP99Ms?: number;
  /** The server's CPU seconds (user + system) from the replicas' start to the end of the run: A/B figure on a loaded machine. */
  readonly serverCpuSeconds?: number;
  /** serverCpuSeconds per publish, in ms (the run's idle keepalives and scrapes included, alike for both variants). */
  readonly serverCpuMsPerPublish?: number;
}

type Variant = 'new' | 'base';

/** One running walcast of the benchmark: which tree, which backend. */
interface Target {
  readonly variant: Variant;
  readonly backend: BackendName;
  readonly target: ServerTarget;
}

/**
 * One live-latency run (bench/scenarios/live-latency.ts), which scrapes walcast's /metrics right before the first
 * commit and after the last one has drained, so the histograms cover the commits and nothing else.
 */
async function measure(context: BenchContext, target: ServerTarget, variant: Variant, backend: BackendName, replicas: number, round: number): Promise<FanoutRun> {
  const run: RunRecord = await measureLatencyRun(context, target, replicas, round);
  const publishes = run.internalPublishes ?? 0;
  return {
    variant,
    backend,
    replicas,
    round,
    ok: run.ok && publishes > 0,
    ...(run.ok ? (publishes > 0 ? {} : { error: 'no publish was timed' }) : { error: run.error ?? 'failed' }),
    publishes,
    ...defined({
      fanoutP50Ms: run.internalFanoutP50Ms,
      fanoutP99Ms: run.internalFanoutP99Ms,
      fanoutMeanMs: run.internalFanoutMeanMs,
      fanoutOver1msPublishes: run.internalFanoutOver1msPublishes,
      publishToSocketP50Ms: run.internalPublishP50Ms,
      publishToSocketP99Ms: run.internalPublishP99Ms,
      ingestHopP50Ms: run.internalIngestP50Ms,
      ingestHopP99Ms: run.internalIngestP99Ms,
      receivedP50Ms: run.latencyP50Ms,
      receivedP99Ms: run.latencyP99Ms,
      addedP50Ms: run.latencyAddedP50Ms,
      addedP99Ms: run.latencyAddedP99Ms,
      serverCpuSeconds: run.serverCpuSeconds,
      serverCpuMsPerPublish: run.serverCpuSeconds === undefined || publishes === 0 ? undefined : (run.serverCpuSeconds * MS_PER_SECOND) / publishes,
    }),
  };
}

function defined<T extends Record<string, number | undefined>>(figures: T): Partial<Record<keyof T, number>> {
  return Object.fromEntries(Object.entries(figures).filter(([, value]) => value !== undefined)) as Partial<Record<keyof T, number>>;
}

function describe(run: FanoutRun): string {
  const figure = (value: number | undefined): string => (value === undefined ? '—' : value.toFixed(2));
  const head = `${run.variant} ${run.backend} × ${run.replicas} replicas (round ${run.round + 1})`;
  if (!run.ok) return `${head}: FAILED ${run.error ?? ''}`;
  return `${head}: ${run.publishes} publishes, fan-out p50 ${figure(run.fanoutP50Ms)} p99 ${figure(run.fanoutP99Ms)} mean ${run.fanoutMeanMs === undefined ? '—' : run.fanoutMeanMs.toFixed(3)} ms, ${run.fanoutOver1msPublishes ?? '—'} over 1 ms; per replica p50 ${figure(run.publishToSocketP50Ms)} p99 ${figure(run.publishToSocketP99Ms)} ms; ingest hop p50 ${figure(run.ingestHopP50Ms)} p99 ${figure(run.ingestHopP99Ms)} ms; commit→received p99 ${figure(run.receivedP99Ms)} ms (added vs direct p99 ${figure(run.addedP99Ms)} ms); server CPU ${figure(run.serverCpuMsPerPublish)} ms per publish`;
}

function table(runs: readonly FanoutRun[]): string {
  const figure = (value: number | undefined): string => (value === undefined ? '—' : value.toFixed(2));
  const lines = [
    '| variant | backend | replicas | round | publishes | ingest hop p50 ms | ingest hop p99 ms | fan-out p50 ms | fan-out p99 ms | fan-out mean ms | publishes over 1 ms | per replica p99 ms | commit→received p50 ms | p99 ms | added vs direct p99 ms | server CPU ms / publish |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const run of runs) {
    lines.push(
      run.ok
        ? `| ${run.variant} | ${run.backend} | ${run.replicas} | ${run.round + 1} | ${run.publishes} | ${figure(run.ingestHopP50Ms)} | ${figure(run.ingestHopP99Ms)} | ${figure(run.fanoutP50Ms)} | ${figure(run.fanoutP99Ms)} | ${run.fanoutMeanMs === undefined ? '—' : run.fanoutMeanMs.toFixed(3)} | ${run.fanoutOver1msPublishes ?? '—'} | ${figure(run.publishToSocketP99Ms)} | ${figure(run.receivedP50Ms)} | ${figure(run.receivedP99Ms)} | ${figure(run.addedP99Ms)} | ${figure(run.serverCpuMsPerPublish)} |`
        : `| ${run.variant} | ${run.backend} | ${run.replicas} | ${run.round + 1} | failed: ${run.error ?? ''} | | | | | | | | | | | |`,
    );
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const largest = Math.max(...options.replicaCounts);
  const base = planFor('quick');
  const plan: BenchPlan = {
    ...base,
    pgbenchScale: 1,
    latency: { replicaCounts: options.replicaCounts, commitsPerSecond: options.commitsPerSecond, durationMs: options.durationMs, repetitions: options.rounds, warmUp: true, replyEach: options.replyEach },
    note: `fan-out latency: ${options.replicaCounts.join(', ')} replicas, ${options.commitsPerSecond} commits/s for ${options.durationMs} ms, ${options.rounds} round(s)${options.replyEach ? ', replies after every message' : ''}`,
  };
  progress(plan.note);
  const tools = buildTools();
  // The primary's WAL is not streamed from storage here; pgbench scale 1 only gives it a database to commit into.
  const wal = await prepareWal({ pgbenchScale: plan.pgbenchScale, maxReplicas: largest });
  const context: BenchContext = { tools, wal, plan, progress };
  const runs: FanoutRun[] = [];
  try {
    const variants: [Variant, string | undefined][] = options.baseline === undefined ? [['new', undefined]] : [['new', undefined], ['base', options.baseline]];
    // Without --interleave one backend's servers at a time, all its rounds, then the next backend's.
    const phases: (readonly BackendName[])[] = options.interleave ? [options.backends] : options.backends.map((backend) => [backend]);
    for (const backends of phases) {
      const targets: Target[] = [];
      try {
        for (const backend of backends) {
          const [io, strategy] = backend.split('/') as ['ts' | 'native', ('sendfile' | 'writev' | 'uring') | undefined];
          for (const [variant, repoRoot] of variants) {
            const dataDir = await createFollowingDataDir(wal.primary);
            const target = await startWalcastServer({ dataDir, walFiles: [], following: true, io, ...(strategy === undefined ? {} : { strategy }), ...(repoRoot === undefined ? {} : { repoRoot, name: `walcast-base-${backend}` }) });
            targets.push({ variant, backend, target });
            progress(`walcast ${variant} ${backend} following the primary`);
            // One unrecorded run first (JIT, connection caches), as bench/run.ts does.
            const warmUp = await measureLatencyRun(context, target, 1, 0);
            progress(`warm-up ${variant} ${backend}: ${warmUp.ok ? 'ok' : `FAILED ${warmUp.error ?? ''}`}`);
          }
        }
        for (const replicas of options.replicaCounts) {
          for (let round = 0; round < options.rounds; round++) {
            // Rotate which server goes first (for two, alternate), so a drift in the machine's load favours none.
            const first = round % targets.length;
            const order = targets.length === 2 && round % 2 === 1 ? [...targets].reverse() : [...targets.slice(first), ...targets.slice(0, first)];
            for (const { variant, backend, target } of order) {
              const run = await measure(context, target, variant, backend, replicas, round);
              runs.push(run);
              progress(describe(run));
            }
          }
        }
      } finally {
        for (const { target } of targets) await target.stop();
      }
    }
  } finally {
    await wal.primary.stop();
  }
  const report = table(runs);
  process.stdout.write(`${report}\n\ningest hop = upstream message received → durable position published (walcast's /metrics); fan-out = commit LSN published → last waiting replica's chunk written to its socket (walcast's /metrics); per replica = the same for each replica; commit→received = driver sends the INSERT → replica received its flush LSN (harness); added vs direct = minus the arrival at a replica streaming straight from the primary.\n`);
  if (options.out !== undefined) writeFileSync(options.out, `${JSON.stringify({ plan: plan.latency, runs }, null, 2)}\n`);
  if (runs.some((run) => !run.ok)) process.exitCode = 1;
}

await runBenchmark('benchmark', main, progress);
