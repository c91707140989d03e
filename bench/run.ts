/**
 * The benchmark command: `npm run bench` (--quick), `npm run bench:full` (--full) and the CI smoke run
 * (--smoke). Starts everything itself — a PostgreSQL 15 primary that produces the WAL, walcast once per I/O
 * backend and native strategy, the C sendfile ceiling, PostgreSQL standbys as consumers and as the cascading
 * relay reference, the --load spinners — runs the scenarios (all, or those --scenarios names) with servers
 * interleaved inside each repetition round and idle and loaded rounds interleaved (so ratios pair runs measured
 * back to back under the same condition), prints progress (with server PIDs, for profilers to attach), stops
 * every process it started, and writes bench/results/<timestamp>.json, latest.md and latest.svg (or --out DIR).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { formatLsn } from '../src/lsn.js';
import { PG_BIN_DIR } from '../test/support/postgres.js';
import { describeMachine } from './lib/machine.js';
import { CpuLoad } from './lib/cpu-load.js';
import { capRepetitions, maxReplicas, parseScenarios, planFor, type BenchMode, type BenchPlan, type ScenarioKey } from './lib/plan.js';
import { runBenchmark } from './lib/processes.js';
import { renderMarkdown, type BenchReport } from './lib/report-markdown.js';
import { renderSvg } from './lib/report-svg.js';
import { computeFigures, computeRatios, type RunRecord } from './lib/results.js';
import { postgresTarget, SERVER_NODE_ARGS_ENV, startCeilingServer, startWalcastServer, type ServerTarget } from './lib/servers.js';
import { buildTools, REPO_ROOT, RESULTS_DIR, SCRATCH_DIR } from './lib/tools.js';
import { createFollowingDataDir, prepareWal, type PreparedWal } from './lib/wal-source.js';
import { measureLatencyRun, startCascade } from './scenarios/live-latency.js';
import { runMicroBenchmarks } from './scenarios/micro.js';
import { measureConsumerRun, measureReceiveWalRun, measureStandbyRun, warmPageCache, type BenchContext } from './scenarios/streaming.js';

const NATIVE_STRATEGIES = ['sendfile', 'writev', 'uring'] as const;
const EXIT_USAGE = 2;

interface Arguments {
  readonly mode: BenchMode;
  readonly outDir: string;
  /** Busy-spinning processes in loaded rounds; undefined = the mode's default. */
  readonly load: number | undefined;
  readonly scenarios: ReadonlySet<ScenarioKey>;
  /** Caps every repetition count of the mode (a 1 GiB run in a time box); undefined = the mode's counts. */
  readonly reps: number | undefined;
  /** Only these servers (by name); undefined = all. */
  readonly servers: ReadonlySet<string> | undefined;
  /** Cold scenario: one unrecorded cold run on each freshly started server before the measured one. */
  readonly coldWarmServer: boolean;
  /**
   * Unrecorded warm catch-ups per server before the warm scenarios (default 1). A fresh walcast server's CPU per GB
   * falls over its first ~5 catch-ups as V8 compiles the send path (docs/benchmarks.md, "One replica: consumer cost
   * and JIT warm-up"); more warm-ups measure the long-running server instead of its warm-up.
   */
  readonly warmUps: number;
  /** Extra walcast-native-sendfile servers run from other source trees (A/B of builds in one run): name → root. */
  readonly variants: ReadonlyMap<string, string>;
}

const USAGE = 'usage: node --import tsx bench/run.ts [--smoke|--quick|--full] [--out DIR] [--load N] [--scenarios LIST] [--reps N] [--servers NAMES] [--variant NAME=DIR]... [--cold-warm-server] [--warm-ups N]\n' +
  '  LIST: comma-separated, from catch-up, catch-up:wal-consumer, catch-up:pg_receivewal, catch-up:standby, fan-out, cold-catch-up, live-latency, micro\n' +
  '  NAMES: comma-separated server names (walcast-ts, walcast-native-sendfile, ..., postgres, ceiling, and variants);\n' +
  '    live-latency honours them too (postgres = the primary and its cascading standby, postgres-cascade = the standby alone)\n' +
  '  --variant NAME=DIR: also runs walcast-native-sendfile from the source tree DIR (with its node_modules and build/) as server NAME\n' +
  '  --cold-warm-server: cold catch-up warms each fresh server on the first half of the range, measures the second\n' +
  '  --warm-ups N: warm-up passes per server before the warm scenarios, each a catch-up of every measured consumer kind; the first is recorded as first-catch-up (default 1)\n' +
  `  ${SERVER_NODE_ARGS_ENV}="--cpu-prof --cpu-prof-dir DIR" passes node flags to every walcast server\n`;

function usage(message?: string): never {
  process.stderr.write(`${message === undefined ? '' : `${message}\n`}${USAGE}`);
  process.exit(EXIT_USAGE);
}

function parseArguments(argv: readonly string[]): Arguments {
  const modes: string[] = [];
  const values = new Map<string, string>();
  const variants = new Map<string, string>();
  for (let index = 0; index < argv.length; index++) {
    const argument = argv[index]!;
    if (argument === '--smoke' || argument === '--quick' || argument === '--full') modes.push(argument);
    else if (argument === '--cold-warm-server') values.set(argument, 'yes');
    else if (argument === '--variant') {
      const match = /^([\w.-]+)=(.+)$/.exec(argv[++index] ?? '');
      if (match === null) usage('--variant takes NAME=DIR');
      variants.set(match[1]!, match[2]!);
    } else if (argument === '--servers') {
      const value = argv[++index];
      if (value === undefined) usage(`${argument} needs a value`);
      values.set(argument, value);
    }
    else if (argument === '--out' || argument === '--load' || argument === '--scenarios' || argument === '--reps' || argument === '--warm-ups') {
      const value = argv[++index];
      if (value === undefined) usage(`${argument} needs a value`);
      values.set(argument, value);
    } else usage(`unknown argument ${argument}`);
  }
  if (modes.length > 1) usage('one mode at most');
  const mode = (modes[0]?.slice(2) ?? 'quick') as BenchMode;
  const defaultOut = mode === 'smoke' ? join(SCRATCH_DIR, 'smoke') : RESULTS_DIR;
  const loadText = values.get('--load');
  const load = loadText === undefined ? undefined : Number(loadText);
  if (load !== undefined && !/^\d+$/.test(loadText ?? '')) usage('--load takes a whole number of processes');
  const repsText = values.get('--reps');
  if (repsText !== undefined && !/^[1-9]\d*$/.test(repsText)) usage('--reps takes a positive whole number');
  const reps = repsText === undefined ? undefined : Number(repsText);
  const warmUpsText = values.get('--warm-ups') ?? '1';
  if (!/^[1-9]\d*$/.test(warmUpsText)) usage('--warm-ups takes a positive whole number');
  const warmUps = Number(warmUpsText);
  let scenarios: ReadonlySet<ScenarioKey>;
  try {
    scenarios = parseScenarios(values.get('--scenarios'));
  } catch (error) {
    usage((error as Error).message);
  }
  const serverList = values.get('--servers');
  const servers = serverList === undefined ? undefined : new Set([...serverList.split(','), ...variants.keys()]);
  return { mode, outDir: values.get('--out') ?? defaultOut, load, scenarios, reps, servers, variants, coldWarmServer: values.has('--cold-warm-server'), warmUps };
}

const startedAt = performance.now();
function progress(message: string): void {
  const seconds = ((performance.now() - startedAt) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[${seconds}s] ${message}\n`);
}

function describeRun(record: RunRecord): string {
  const head = `${record.scenario} ${record.server} ${record.consumer} ×${record.replicas} #${record.repetition + 1} ${record.condition ?? 'idle'}`;
  if (!record.ok) return `${head}: FAILED ${record.error ?? ''}`;
  if (record.scenario === 'live-latency') return `${head}: p50 ${record.latencyP50Ms?.toFixed(2)} ms, p99 ${record.latencyP99Ms?.toFixed(2)} ms, max ${record.latencyMaxMs?.toFixed(2)} ms`;
  const disk = record.diskKibPerRead === undefined ? '' : `, disk ${record.diskKibPerRead.toFixed(0)} KiB/read, ${record.diskReadsInFlight?.toFixed(1)} in flight`;
  const loop = record.eventLoopMaxMs === undefined ? '' : `, loop delay p99 ${record.eventLoopDelayP99Ms?.toFixed(1) ?? '?'} ms, max ${record.eventLoopDelayMaxMs?.toFixed(1) ?? '?'} ms (past the 10 ms timer)`;
  return `${head}: ${record.throughputMBps?.toFixed(0)} MB/s, ${record.serverCpuSecondsPerGB?.toFixed(3)} server CPU s/GB${disk}${loop}`;
}

/** What every scenario runner needs: the measurement context, the selection, the load switch and the recorder. */
interface Harness {
  readonly context: BenchContext;
  readonly scenarios: ReadonlySet<ScenarioKey>;
  readonly load: CpuLoad;
  record(run: RunRecord): void;
}

/**
 * Runs `body` once per repetition and, inside each repetition, once per condition (idle, then loaded when
 * --load > 0): idle and loaded rounds interleave, so slow drift of the machine hits both alike.
 */
async function rounds(harness: Harness, repetitions: number, body: (repetition: number) => Promise<void>): Promise<void> {
  try {
    for (let repetition = 0; repetition < repetitions; repetition++) {
      for (const condition of harness.load.conditions) {
        await harness.load.set(condition);
        await body(repetition);
      }
    }
  } finally {
    await harness.load.set('idle');
  }
}

/**
 * The servers in one round's order: rotated by one each round, so that no server always runs right after the same
 * other one. In a fixed order (until 2026-12-07) walcast native always followed walcast ts and PostgreSQL always
 * followed walcast uring, so whatever a server leaves behind (its GC, its threads winding down) and whatever the host
 * does at that point of a round landed on the same neighbour every time.
 */
function inRoundOrder<T>(servers: readonly T[], round: number): T[] {
  if (servers.length === 0) return [];
  const shift = round % servers.length;
  return [...servers.slice(shift), ...servers.slice(0, shift)];
}

interface ServerSet {
  readonly targets: ServerTarget[];
  readonly statuses: BenchReport['servers'][number][];
  /** Starts a fresh process of the named server (the cold scenario needs one with nothing mapped or cached). */
  readonly restart: ReadonlyMap<string, () => Promise<ServerTarget>>;
}

function describeServer(target: ServerTarget): string {
  return `server ${target.name} ready on port ${target.port}, pid ${target.pid}`;
}

async function startServers(wal: PreparedWal, ceilingBinary: string, args: Arguments): Promise<ServerSet> {
  const targets: ServerTarget[] = [];
  const statuses: BenchReport['servers'][number][] = [];
  const all: [string, () => Promise<ServerTarget>][] = [
    ['walcast-ts', () => startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'ts' })],
    ...NATIVE_STRATEGIES.map((strategy): [string, () => Promise<ServerTarget>] => [
      `walcast-native-${strategy}`,
      () => startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'native', strategy }),
    ]),
    ...[...args.variants].map(([name, repoRoot]): [string, () => Promise<ServerTarget>] => [
      name,
      () => startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'native', strategy: 'sendfile', name, repoRoot }),
    ]),
    ['postgres', async () => postgresTarget(wal.primary, wal)],
    ['ceiling', () => startCeilingServer(ceilingBinary, wal)],
  ];
  const attempts = all.filter(([name]) => args.servers === undefined || args.servers.has(name));
  for (const [name, start] of attempts) {
    try {
      const target = await start();
      targets.push(target);
      statuses.push({ name, status: 'ok' });
      progress(describeServer(target));
    } catch (error) {
      const reason = (error instanceof Error ? error.message : String(error)).split('\n').slice(0, 2).join(' ').slice(0, 300);
      statuses.push({ name, status: 'unavailable', reason });
      progress(`server ${name} unavailable: ${reason}`);
    }
  }
  return { targets, statuses, restart: new Map(attempts) };
}

const WARM_SCENARIOS: readonly ScenarioKey[] = ['catch-up:wal-consumer', 'catch-up:pg_receivewal', 'catch-up:standby', 'fan-out'];

async function runStreamingScenarios(harness: Harness, servers: ServerSet, args: Arguments): Promise<void> {
  const { context, scenarios, record } = harness;
  const targets = servers.targets;
  const plan = context.plan;
  if (WARM_SCENARIOS.some((key) => scenarios.has(key))) {
    warmPageCache([...context.wal.walcastFiles, ...context.wal.postgresFiles]);
    // Warm-up passes per server first (--warm-ups, default one): JIT, page tables and connection caches. Each pass
    // runs every consumer kind the rounds will measure, so that no kind's code path (a standby's feedback, pg_receivewal's
    // replies) meets the measured rounds cold. The first pass is recorded, as 'first-catch-up': what a client sees of a
    // server that just started (walcast: V8 still compiling its send path; a long-running server pays that once).
    for (let warmUpIndex = 0; warmUpIndex < args.warmUps; warmUpIndex++) {
      for (const target of targets) {
        const kinds: [string, () => Promise<RunRecord>][] = [['wal-consumer', () => measureConsumerRun(context, target, { scenario: 'catch-up', replicas: 1, bytesPerReplica: 0, repetition: 0, cold: false })]];
        if (target.speaksFullProtocol && scenarios.has('catch-up:pg_receivewal') && plan.receiveWal) kinds.push(['pg_receivewal', () => measureReceiveWalRun(context, target, 0, false)]);
        if (target.speaksFullProtocol && scenarios.has('catch-up:standby') && plan.standbyRepetitions > 0) kinds.push(['standby', () => measureStandbyRun(context, target, 0)]);
        for (const [kind, run] of kinds) {
          const warmUp = await run();
          if (warmUpIndex === 0) record({ ...warmUp, scenario: 'first-catch-up' });
          progress(`warm-up ${target.name} ${kind}${args.warmUps > 1 ? ` ${warmUpIndex + 1}/${args.warmUps}` : ''}: ${warmUp.ok ? `ok, ${warmUp.serverCpuSecondsPerGB?.toFixed(3)} CPU s/GB` : `FAILED ${warmUp.error ?? ''}`}`);
        }
      }
    }
  }
  const fullProtocol = targets.filter((candidate) => candidate.speaksFullProtocol);
  let round = 0;
  await rounds(harness, plan.repetitions, async (repetition) => {
    round++;
    if (scenarios.has('catch-up:wal-consumer')) {
      for (const target of inRoundOrder(targets, round)) record(await measureConsumerRun(context, target, { scenario: 'catch-up', replicas: 1, bytesPerReplica: 0, repetition, cold: false }));
    }
    if (scenarios.has('catch-up:pg_receivewal') && plan.receiveWal) {
      for (const target of inRoundOrder(fullProtocol, round)) record(await measureReceiveWalRun(context, target, repetition, plan.mode === 'smoke'));
    }
    if (scenarios.has('catch-up:standby') && repetition < plan.standbyRepetitions) {
      for (const target of inRoundOrder(fullProtocol, round)) record(await measureStandbyRun(context, target, repetition));
    }
  });
  if (scenarios.has('fan-out')) {
    for (const step of plan.fanOut) {
      await rounds(harness, step.repetitions ?? plan.repetitions, async (repetition) => {
        round++;
        for (const target of inRoundOrder(targets, round)) record(await measureConsumerRun(context, target, { scenario: 'fan-out', replicas: step.replicas, bytesPerReplica: step.bytesPerReplica, repetition, cold: false }));
      });
    }
  }
  if (scenarios.has('cold-catch-up')) await runColdScenario(harness, servers, args);
}

/**
 * Cold catch-up with only the server under test running, freshly started: walcast's mmap-based strategies keep
 * recently used segments mapped, and posix_fadvise(DONTNEED) cannot drop pages another process has mapped, so a
 * warm server next door would leave part of the "cold" files in page cache.
 */
async function runColdScenario(harness: Harness, servers: ServerSet, args: Arguments): Promise<void> {
  const { context, record } = harness;
  const restartable = servers.targets.filter((target) => target.family !== 'postgres');
  await Promise.all(restartable.map((target) => target.stop()));
  await rounds(harness, context.plan.coldRepetitions, async (repetition) => {
    for (const original of servers.targets) {
      const restart = servers.restart.get(original.name);
      const target = original.family === 'postgres' || restart === undefined ? original : await restart();
      if (target !== original) progress(describeServer(target));
      try {
        // --cold-warm-server: one unrecorded cold run of the range's first half on the fresh process first (JIT warm-up,
        // as in a server that has run for a while), then the files are evicted again and the second half is measured:
        // pages the server has not verified yet, so the measured run does the same work as a fresh server's, minus the
        // warm-up (a second run over the same range would find its pages verified and checksum nothing). "cached at
        // start" shows whether the first run left anything resident (pages a server keeps mapped cannot be evicted).
        if (args.coldWarmServer) {
          await measureConsumerRun(context, target, { scenario: 'cold-catch-up', replicas: 1, bytesPerReplica: 0, repetition, cold: true, part: 'first-half' });
        }
        const part = args.coldWarmServer ? 'second-half' : 'all';
        record(await measureConsumerRun(context, target, { scenario: 'cold-catch-up', replicas: 1, bytesPerReplica: 0, repetition, cold: true, part }));
      } finally {
        if (target !== original) await target.stop();
      }
    }
  });
}

/**
 * Live latency, one server at a time (a following walcast ingests every commit, so running several at once would
 * charge each with the others' work): PostgreSQL's walsender first, then the cascading standby (the relay
 * PostgreSQL offers), then each walcast backend on its own fresh timeline that follows the primary.
 */
async function runLatencyScenario(harness: Harness, statuses: readonly BenchReport['servers'][number][], selected: ReadonlySet<string> | undefined): Promise<string[]> {
  const { context } = harness;
  const notes: string[] = [];
  // --servers applies here too: `--scenarios live-latency --servers walcast-native-sendfile` measures that walcast
  // alone (its direct reference replica of the primary runs regardless); `postgres` selects the primary's walsender
  // and the cascading standby, `postgres-cascade` the standby alone.
  const wanted = (name: string): boolean => selected === undefined || selected.has(name);
  if (wanted('postgres')) await measureLatencyRounds(harness, postgresTarget(context.wal.primary, context.wal));
  if (wanted('postgres') || wanted('postgres-cascade')) {
    try {
      const cascade = await startCascade(context);
      progress(`${describeServer(cascade)} (cascading standby of the primary, caught up)`);
      try {
        await measureLatencyRounds(harness, cascade);
      } finally {
        await cascade.stop();
      }
    } catch (error) {
      notes.push(`live latency: postgres-cascade not measured: ${(error instanceof Error ? error.message : String(error)).slice(0, 200)}`);
    }
  }
  const walcasts = statuses.filter((status) => status.status === 'ok' && status.name.startsWith('walcast-') && wanted(status.name)).map((status) => status.name);
  for (const name of walcasts) {
    const strategy = NATIVE_STRATEGIES.find((candidate) => name === `walcast-native-${candidate}`);
    let target: ServerTarget;
    try {
      const dataDir = await createFollowingDataDir(context.wal.primary);
      target = await startWalcastServer({ dataDir, walFiles: [], following: true, ...(strategy === undefined ? { io: 'ts' as const } : { io: 'native' as const, strategy }) });
      progress(`${describeServer(target)} (following the primary live)`);
    } catch (error) {
      notes.push(`live latency: ${name} not measured: ${(error instanceof Error ? error.message : String(error)).slice(0, 200)}`);
      continue;
    }
    try {
      await measureLatencyRounds(harness, target);
    } finally {
      await target.stop();
    }
  }
  notes.push('live latency: from just before the driver sends an autocommit INSERT to the primary (an upper bound: it includes the INSERT) until a replica has received the bytes up to the flush LSN read right after the commit. walcast figures include its ingest hop (primary walsender → walcast durable write with fdatasync → walcast send); the primary runs with fsync=off, the cascading standby with fsync=on (its walreceiver fsyncs before its walsender sends, as walcast does; both data dirs on the same disk). postgres = replicas streaming straight from the primary; postgres-cascade = replicas streaming from a cascading standby of the primary (primary → standby → replicas), the relay PostgreSQL offers. "added vs direct replica" = arrival at a relay\'s replicas minus arrival of the same commit at one replica streaming straight from the primary meanwhile: the relay\'s own share (for walcast: ingest, fdatasync, send). The ceiling serves stored files only and takes no part.');
  return notes;
}

async function measureLatencyRounds(harness: Harness, target: ServerTarget): Promise<void> {
  const { context, record } = harness;
  if (context.plan.latency.warmUp) {
    const warmUp = await measureLatencyRun(context, target, 1, 0);
    progress(`warm-up ${target.name} live latency: ${warmUp.ok ? 'ok' : `FAILED ${warmUp.error ?? ''}`}`);
  }
  for (const replicas of context.plan.latency.replicaCounts) {
    await rounds(harness, context.plan.latency.repetitions, async (repetition) => record(await measureLatencyRun(context, target, replicas, repetition)));
  }
}

function standingNotes(plan: BenchPlan, load: CpuLoad, warmUps: number): string[] {
  return [
    plan.note,
    load.processes === 0
      ? 'conditions: idle rounds only (--load 0): nothing but the benchmark itself was started on the machine; other work on it shows in the load average.'
      : `conditions: every repetition runs an idle round, then a loaded round with ${load.processes} busy-spinning Node process(es) (--load ${load.processes}, bench/lib/cpu-load.ts; told to sit idle in idle rounds), so each ratio pairs runs under the same condition.`,
    `every server gets ${warmUps} warm-up pass(es) before its measured rounds (--warm-ups), each a warm catch-up of every consumer kind the rounds measure; the first pass is the "first catch-up after start" table. Outside smoke runs, one unrecorded live-latency run per server, too.`,
    'warm runs (catch-up, fan-out) read the served files again right before they start and record the share that was still resident: the host\'s DAMON proactive reclaim pages out cache idle for ~6 s (bench/scenarios/streaming.ts rewarmPageCache).',
    'catch-up and cold catch-up stream the whole range; fan-out replicas each stream the first bytes of the same range from the same start (see the plan in bench/lib/plan.ts), so aggregate MB/s is comparable, total bytes are not.',
    'standby rows: a PostgreSQL 15 standby, a copy of a pg_basebackup taken before pgbench produced the range, streams from the server under test and replays [its start, range end); wall time from starting the standby until pg_last_wal_replay_lsn() reaches the range end (polled every 10 ms), start-up included; "consumer CPU" is the standby cluster\'s (startup process, walreceiver, the rest). The standby replays with fsync=off (copied from the primary).',
    'server CPU is the kernel accounting of the server processes: walcast = its one process (all threads); PostgreSQL = its walsender backends (live ones plus the postmaster\'s reaped-children time); ceiling = the C loop. On loopback the sender is charged part of the receive-side softirq work.',
    'server memory per replica: walcast and ceiling = RSS growth of the process with all replicas connected / replicas; PostgreSQL = mean PSS of its walsender processes (shared buffers divided among processes).',
    'cold catch-up: the served files are dropped from page cache with fdatasync + posix_fadvise(DONTNEED) (bench/native/page-cache.c) with only the server under test running, freshly started, and the cached fraction afterwards is recorded; on a VM the host may still cache the disk. Event-loop delay p99 and max = walcast\'s nodejs_eventloop_lag_p99_seconds and _max_seconds over the run minus the 10 ms sampling timer they include (prom-client records the whole interval between firings: an idle Node reads p99 10.8 ms, i.e. 0.8 here); probe RTT max = worst IDENTIFY_SYSTEM round trip on a second connection every 10 ms.',
    'pg_receivewal rows: --no-sync into /dev/shm; wall time includes its start-up; its CPU is from the harness\'s reaped-children accounting.',
    'walcast runs from source through tsx (node --import tsx src/cli/main.ts serve, one process per backend, --log-level warn, HTTP API on loopback for /metrics); transpilation happens at start-up, before any measurement.',
  ];
}

async function main(): Promise<void> {
  const args = parseArguments(process.argv.slice(2));
  const plan = capRepetitions(planFor(args.mode), args.reps);
  const load = await CpuLoad.start(args.load ?? plan.load);
  progress(`walcast benchmark, ${args.mode} mode: ${plan.note}; scenarios: ${[...args.scenarios].join(', ')}; load ${load.processes}${load.processes > 0 ? ` (spinner pids ${load.pids.join(', ')})` : ''}`);
  const nodeArgs = process.env[SERVER_NODE_ARGS_ENV];
  if (nodeArgs !== undefined && nodeArgs.trim() !== '') progress(`walcast servers run with node flags: ${nodeArgs}`);
  const tools = buildTools();
  progress('C helpers built (consumer, ceiling, page-cache)');
  const wal = await prepareWal({ pgbenchScale: plan.pgbenchScale, maxReplicas: maxReplicas(plan) });
  progress(`WAL ready: ${formatLsn(wal.startLsn)}–${formatLsn(wal.endLsn)} (${(Number(wal.endLsn - wal.startLsn) / 1024 ** 2).toFixed(0)} MiB) generated in ${wal.generateSeconds.toFixed(1)} s, imported in ${wal.importSeconds.toFixed(1)} s; primary postmaster pid ${wal.primary.pid}, port ${wal.primary.port}`);
  const machine = describeMachine(PG_BIN_DIR, REPO_ROOT);
  const runs: RunRecord[] = [];
  const context: BenchContext = { tools, wal, plan, progress };
  const harness: Harness = {
    context,
    scenarios: args.scenarios,
    load,
    record: (run) => {
      const stamped: RunRecord = { ...run, condition: load.condition, loadAverage1m: Number(loadavg()[0]!.toFixed(2)) };
      runs.push(stamped);
      progress(describeRun(stamped));
    },
  };
  const notes = standingNotes(plan, load, args.warmUps);
  const streamingKeys: readonly ScenarioKey[] = [...WARM_SCENARIOS, 'cold-catch-up'];
  const needServers = streamingKeys.some((key) => args.scenarios.has(key));
  const servers: ServerSet = needServers ? await startServers(wal, tools.ceiling, args) : { targets: [], statuses: [], restart: new Map() };
  try {
    await runStreamingScenarios(harness, servers, args);
  } finally {
    await Promise.all(servers.targets.map((target) => target.stop()));
  }
  // Without stored-range servers (--scenarios live-latency,micro) every walcast backend is tried; one that cannot load is reported.
  const statuses: readonly BenchReport['servers'][number][] = needServers
    ? servers.statuses
    : [{ name: 'walcast-ts', status: 'ok' }, ...NATIVE_STRATEGIES.map((strategy) => ({ name: `walcast-native-${strategy}`, status: 'ok' as const }))];
  if (args.scenarios.has('live-latency')) notes.push(...(await runLatencyScenario(harness, statuses, args.servers)));
  await load.stop();
  let micro: BenchReport['micro'] = [];
  if (args.scenarios.has('micro')) {
    progress('micro-benchmarks');
    const nativeBackends = NATIVE_STRATEGIES.filter((strategy) => statuses.some((status) => status.name === `walcast-native-${strategy}` && status.status === 'ok')).map((strategy) => ({ io: 'native' as const, strategy }));
    micro = await runMicroBenchmarks(tools, wal, [{ io: 'ts' }, ...nativeBackends], plan.microTimeMs);
  }
  await wal.primary.stop();
  const report: BenchReport = {
    mode: args.mode,
    note: plan.note,
    machine,
    load: load.processes,
    scenarios: [...args.scenarios],
    wal: { bytes: Number(wal.endLsn - wal.startLsn), startLsn: formatLsn(wal.startLsn), endLsn: formatLsn(wal.endLsn), pgbenchScale: plan.pgbenchScale, generateSeconds: wal.generateSeconds, importSeconds: wal.importSeconds },
    servers: servers.statuses,
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

await runBenchmark('benchmark', main, progress);
