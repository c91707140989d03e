/**
 * The benchmark command: `npm run bench` (--quick), `npm run bench:full` (--full) and the CI smoke run
 * (--smoke). Starts everything itself — a PostgreSQL 15 primary that produces the WAL, walcast once per I/O
 * backend and native strategy, the C sendfile ceiling — runs the scenarios with servers interleaved inside each
 * repetition round (so ratios pair runs measured back to back), prints progress, stops every process it
 * started, and writes bench/results/<timestamp>.json, latest.md and latest.svg (or into --out DIR).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { formatLsn } from '../src/lsn.js';
import { PG_BIN_DIR } from '../test/support/postgres.js';
import { describeMachine } from './lib/machine.js';
import { maxReplicas, planFor, type BenchMode, type BenchPlan } from './lib/plan.js';
import { stopAllChildren } from './lib/processes.js';
import { renderMarkdown, type BenchReport } from './lib/report-markdown.js';
import { renderSvg } from './lib/report-svg.js';
import { computeFigures, computeRatios, type RunRecord } from './lib/results.js';
import { postgresTarget, startCeilingServer, startWalcastServer, type ServerTarget } from './lib/servers.js';
import { buildTools, REPO_ROOT, RESULTS_DIR, SCRATCH_DIR } from './lib/tools.js';
import { createFollowingDataDir, prepareWal, type PreparedWal } from './lib/wal-source.js';
import { measureLatencyRun } from './scenarios/live-latency.js';
import { runMicroBenchmarks } from './scenarios/micro.js';
import { measureConsumerRun, measureReceiveWalRun, warmPageCache, type BenchContext } from './scenarios/streaming.js';

const NATIVE_STRATEGIES = ['sendfile', 'writev', 'uring'] as const;
const EXIT_USAGE = 2;
const EXIT_INTERRUPTED = 130;

interface Arguments {
  readonly mode: BenchMode;
  readonly outDir: string;
}

function parseArguments(argv: readonly string[]): Arguments {
  const modes: string[] = argv.filter((argument) => argument === '--smoke' || argument === '--quick' || argument === '--full');
  const outIndex = argv.indexOf('--out');
  const unknown = argv.filter((argument, index) => !modes.includes(argument) && argument !== '--out' && index !== outIndex + 1);
  if (modes.length > 1 || unknown.length > 0 || (outIndex >= 0 && argv[outIndex + 1] === undefined)) {
    process.stderr.write('usage: node --import tsx bench/run.ts [--smoke|--quick|--full] [--out DIR]\n');
    process.exit(EXIT_USAGE);
  }
  const mode = (modes[0]?.slice(2) ?? 'quick') as BenchMode;
  const defaultOut = mode === 'smoke' ? join(SCRATCH_DIR, 'smoke') : RESULTS_DIR;
  return { mode, outDir: outIndex >= 0 ? argv[outIndex + 1]! : defaultOut };
}

const startedAt = performance.now();
function progress(message: string): void {
  const seconds = ((performance.now() - startedAt) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[${seconds}s] ${message}\n`);
}

function describeRun(record: RunRecord): string {
  const head = `${record.scenario} ${record.server} ${record.consumer} ×${record.replicas} #${record.repetition + 1}`;
  if (!record.ok) return `${head}: FAILED ${record.error ?? ''}`;
  if (record.scenario === 'live-latency') return `${head}: p50 ${record.latencyP50Ms?.toFixed(2)} ms, p99 ${record.latencyP99Ms?.toFixed(2)} ms, max ${record.latencyMaxMs?.toFixed(2)} ms`;
  return `${head}: ${record.throughputMBps?.toFixed(0)} MB/s, ${record.serverCpuSecondsPerGB?.toFixed(3)} server CPU s/GB`;
}

interface ServerSet {
  readonly targets: ServerTarget[];
  readonly statuses: BenchReport['servers'][number][];
  /** Starts a fresh process of the named server (the cold scenario needs one with nothing mapped or cached). */
  readonly restart: ReadonlyMap<string, () => Promise<ServerTarget>>;
}

async function startServers(wal: PreparedWal, ceilingBinary: string): Promise<ServerSet> {
  const targets: ServerTarget[] = [];
  const statuses: BenchReport['servers'][number][] = [];
  const attempts: [string, () => Promise<ServerTarget>][] = [
    ['walcast-ts', () => startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'ts' })],
    ...NATIVE_STRATEGIES.map((strategy): [string, () => Promise<ServerTarget>] => [
      `walcast-native-${strategy}`,
      () => startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'native', strategy }),
    ]),
    ['postgres', async () => postgresTarget(wal.primary, wal)],
    ['ceiling', () => startCeilingServer(ceilingBinary, wal)],
  ];
  for (const [name, start] of attempts) {
    try {
      targets.push(await start());
      statuses.push({ name, status: 'ok' });
      progress(`server ${name} ready`);
    } catch (error) {
      const reason = (error instanceof Error ? error.message : String(error)).split('\n').slice(0, 2).join(' ').slice(0, 300);
      statuses.push({ name, status: 'unavailable', reason });
      progress(`server ${name} unavailable: ${reason}`);
    }
  }
  return { targets, statuses, restart: new Map(attempts) };
}

async function runStreamingScenarios(context: BenchContext, servers: ServerSet, record: (run: RunRecord) => void): Promise<void> {
  const targets = servers.targets;
  const plan = context.plan;
  warmPageCache([...context.wal.walcastFiles, ...context.wal.postgresFiles]);
  for (let repetition = 0; repetition < plan.repetitions; repetition++) {
    for (const target of targets) record(await measureConsumerRun(context, target, { scenario: 'catch-up', replicas: 1, bytesPerReplica: 0, repetition, cold: false }));
  }
  if (plan.receiveWal) {
    for (let repetition = 0; repetition < plan.repetitions; repetition++) {
      for (const target of targets.filter((candidate) => candidate.speaksFullProtocol)) record(await measureReceiveWalRun(context, target, repetition, plan.mode === 'smoke'));
    }
  }
  for (const step of plan.fanOut) {
    for (let repetition = 0; repetition < (step.repetitions ?? plan.repetitions); repetition++) {
      for (const target of targets) record(await measureConsumerRun(context, target, { scenario: 'fan-out', replicas: step.replicas, bytesPerReplica: step.bytesPerReplica, repetition, cold: false }));
    }
  }
  await runColdScenario(context, servers, record);
}

/**
 * Cold catch-up with only the server under test running, freshly started: walcast's mmap-based strategies keep
 * recently used segments mapped, and posix_fadvise(DONTNEED) cannot drop pages another process has mapped, so a
 * warm server next door would leave part of the "cold" files in page cache.
 */
async function runColdScenario(context: BenchContext, servers: ServerSet, record: (run: RunRecord) => void): Promise<void> {
  const restartable = servers.targets.filter((target) => target.family !== 'postgres');
  await Promise.all(restartable.map((target) => target.stop()));
  for (let repetition = 0; repetition < context.plan.coldRepetitions; repetition++) {
    for (const original of servers.targets) {
      const restart = servers.restart.get(original.name);
      const target = original.family === 'postgres' || restart === undefined ? original : await restart();
      try {
        record(await measureConsumerRun(context, target, { scenario: 'cold-catch-up', replicas: 1, bytesPerReplica: 0, repetition, cold: true }));
      } finally {
        if (target !== original) await target.stop();
      }
    }
  }
}

/**
 * Live latency, one server at a time (a following walcast ingests every commit, so running several at once would
 * charge each with the others' work): PostgreSQL's walsender first, then each walcast backend on its own fresh
 * timeline that follows the primary.
 */
async function runLatencyScenario(context: BenchContext, statuses: readonly BenchReport['servers'][number][], record: (run: RunRecord) => void): Promise<string[]> {
  const notes: string[] = [];
  await measureLatencyRounds(context, postgresTarget(context.wal.primary, context.wal), record);
  const walcasts = statuses.filter((status) => status.status === 'ok' && status.name.startsWith('walcast-')).map((status) => status.name);
  for (const name of walcasts) {
    const strategy = NATIVE_STRATEGIES.find((candidate) => name === `walcast-native-${candidate}`);
    let target: ServerTarget;
    try {
      const dataDir = await createFollowingDataDir(context.wal.primary);
      target = await startWalcastServer({ dataDir, walFiles: [], ...(strategy === undefined ? { io: 'ts' as const } : { io: 'native' as const, strategy }) });
      progress(`server ${name} following the primary live`);
    } catch (error) {
      notes.push(`live latency: ${name} not measured: ${(error instanceof Error ? error.message : String(error)).slice(0, 200)}`);
      continue;
    }
    try {
      await measureLatencyRounds(context, target, record);
    } finally {
      await target.stop();
    }
  }
  notes.push('live latency: from just before the driver sends an autocommit INSERT to the primary (an upper bound: it includes the INSERT) until a replica has received the bytes up to the flush LSN read right after the commit. walcast figures include its ingest hop (primary walsender → walcast durable write with fdatasync → walcast send); the primary runs with fsync=off. "added vs direct replica" = arrival at walcast\'s replicas minus arrival of the same commit at one replica streaming straight from the primary meanwhile: walcast\'s own share (ingest, fdatasync, send). The ceiling serves stored files only and takes no part.');
  return notes;
}

async function measureLatencyRounds(context: BenchContext, target: ServerTarget, record: (run: RunRecord) => void): Promise<void> {
  for (const replicas of context.plan.latency.replicaCounts) {
    for (let repetition = 0; repetition < context.plan.latency.repetitions; repetition++) record(await measureLatencyRun(context, target, replicas, repetition));
  }
}

function standingNotes(plan: BenchPlan): string[] {
  return [
    plan.note,
    'catch-up and cold catch-up stream the whole range; fan-out replicas each stream the first bytes of the same range from the same start (see the plan in bench/lib/plan.ts), so aggregate MB/s is comparable, total bytes are not.',
    'server CPU is the kernel accounting of the server processes: walcast = its one process (all threads); PostgreSQL = its walsender backends (live ones plus the postmaster\'s reaped-children time); ceiling = the C loop. On loopback the sender is charged part of the receive-side softirq work.',
    'server memory per replica: walcast and ceiling = RSS growth of the process with all replicas connected / replicas; PostgreSQL = mean PSS of its walsender processes (shared buffers divided among processes).',
    'cold catch-up: the served files are dropped from page cache with fdatasync + posix_fadvise(DONTNEED) (bench/native/page-cache.c) with only the server under test running, freshly started, and the cached fraction afterwards is recorded; on a VM the host may still cache the disk. Event-loop max = walcast\'s nodejs_eventloop_lag_max_seconds over the run (10 ms resolution: ~10-11 ms means no measurable stall); probe RTT max = worst IDENTIFY_SYSTEM round trip on a second connection every 10 ms.',
    'pg_receivewal rows: --no-sync into /dev/shm; wall time includes its start-up; its CPU is from the harness\'s reaped-children accounting.',
    'walcast runs from source through tsx (node --import tsx src/cli/main.ts serve, one process per backend, --log-level warn, HTTP API on loopback for /metrics); transpilation happens at start-up, before any measurement.',
  ];
}

async function main(): Promise<void> {
  const args = parseArguments(process.argv.slice(2));
  const plan = planFor(args.mode);
  progress(`walcast benchmark, ${args.mode} mode: ${plan.note}`);
  const tools = buildTools();
  progress('C helpers built (consumer, ceiling, page-cache)');
  const wal = await prepareWal({ pgbenchScale: plan.pgbenchScale, maxReplicas: maxReplicas(plan) });
  progress(`WAL ready: ${formatLsn(wal.startLsn)}–${formatLsn(wal.endLsn)} (${(Number(wal.endLsn - wal.startLsn) / 1024 ** 2).toFixed(0)} MiB) generated in ${wal.generateSeconds.toFixed(1)} s, imported in ${wal.importSeconds.toFixed(1)} s`);
  const machine = describeMachine(PG_BIN_DIR, REPO_ROOT);
  const servers = await startServers(wal, tools.ceiling);
  const { targets, statuses } = servers;
  const runs: RunRecord[] = [];
  const record = (run: RunRecord): void => {
    runs.push(run);
    progress(describeRun(run));
  };
  const context: BenchContext = { tools, wal, plan, progress };
  const notes = standingNotes(plan);
  try {
    await runStreamingScenarios(context, servers, record);
  } finally {
    await Promise.all(targets.map((target) => target.stop()));
  }
  notes.push(...(await runLatencyScenario(context, statuses, record)));
  progress('micro-benchmarks');
  const nativeBackends = NATIVE_STRATEGIES.filter((strategy) => statuses.some((status) => status.name === `walcast-native-${strategy}` && status.status === 'ok')).map((strategy) => ({ io: 'native' as const, strategy }));
  const micro = await runMicroBenchmarks(tools, wal, [{ io: 'ts' }, ...nativeBackends], plan.microTimeMs);
  await wal.primary.stop();
  const report: BenchReport = {
    mode: args.mode,
    note: plan.note,
    machine,
    wal: { bytes: Number(wal.endLsn - wal.startLsn), startLsn: formatLsn(wal.startLsn), endLsn: formatLsn(wal.endLsn), pgbenchScale: plan.pgbenchScale, generateSeconds: wal.generateSeconds, importSeconds: wal.importSeconds },
    servers: statuses,
    figures: computeFigures(runs),
    ratios: computeRatios(runs),
    micro,
    notes,
    elapsedSeconds: (performance.now() - startedAt) / 1000,
  };
  writeOutputs(args.outDir, report, runs, plan);
  const failed = runs.filter((run) => !run.ok).length;
  progress(`done: ${runs.length} runs, ${failed} failed; results in ${args.outDir}`);
}

function writeOutputs(outDir: string, report: BenchReport, runs: readonly RunRecord[], plan: BenchPlan): void {
  mkdirSync(outDir, { recursive: true });
  const stamp = report.machine.date.replaceAll(':', '-').replace(/\.\d+Z$/, 'Z');
  const json = JSON.stringify({ ...report, plan, runs }, null, 2);
  writeFileSync(join(outDir, `${stamp}-${report.mode}.json`), `${json}\n`);
  writeFileSync(join(outDir, 'latest.md'), renderMarkdown(report));
  writeFileSync(join(outDir, 'latest.svg'), renderSvg(report.figures, `${report.mode} run ${report.machine.date} · ${report.machine.cpuModel}, ${report.machine.cores} cores · Node ${report.machine.node} · ${report.machine.postgres}`));
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    progress(`${signal}: stopping every process the benchmark started`);
    void stopAllChildren().finally(() => process.exit(EXIT_INTERRUPTED));
  });
}

try {
  await main();
} catch (error) {
  progress(`benchmark failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  process.exitCode = 1;
} finally {
  await stopAllChildren();
}
