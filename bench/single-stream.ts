/**
 * One replica, warm catch-up, A/B (issue 13): walcast from this tree against walcast from a baseline checkout (the
 * same commit before a change), with PostgreSQL 15's walsender serving the same WAL as the reference, all in one
 * run. Servers are interleaved inside every round (their order rotates round by round, so none always runs right
 * after the warm-up or right after PostgreSQL), idle and loaded rounds alternate, and each consumer (pg_receivewal
 * --no-sync into /dev/shm, the discarding C wal-consumer) runs against every server in every round. Reported per
 * consumer, condition and server: server CPU s/GB and MB/s as median [min–max], and ratios to PostgreSQL and to the
 * baseline computed round by round. CPU per GB is the figure to trust on a loaded machine; MB/s moves with it.
 *
 *   node --import tsx bench/single-stream.ts --baseline /tmp/walcast-base --mib 1024 --reps 5 --load 1
 *
 * `--io ts` runs every walcast server on the pure-TypeScript backend (default native, with --strategy).
 *
 * The baseline is a copy of the repository at the commit to compare with (`git archive BASE | tar -x -C DIR`,
 * then node_modules linked and its native addon built or copied into DIR/build). `--also NAME=DIR` adds more
 * checkouts (variants of an experiment), compared with the baseline too. Without --baseline only this tree and
 * PostgreSQL run. WALCAST_BENCH_SERVER_NODE_ARGS passes node flags to both walcast servers (profiling). `--smoke`
 * (test/bench-smoke.test.ts) streams a 16 MiB range once, idle, and compares pg_receivewal's files with the source.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { formatLsn } from '../src/lsn.js';
import { CpuLoad, type Condition } from './lib/cpu-load.js';
import { planFor } from './lib/plan.js';
import { runBenchmark } from './lib/processes.js';
import type { RunRecord } from './lib/results.js';
import { postgresTarget, startWalcastServer, type ServerTarget } from './lib/servers.js';
import { pairwiseRatio, summarize, type Summary } from './lib/stats.js';
import { buildTools } from './lib/tools.js';
import { prepareWal } from './lib/wal-source.js';
import { measureConsumerRun, measureReceiveWalRun, warmPageCache, type BenchContext } from './scenarios/streaming.js';

/** pgbench -i produces ~12.4 MiB of WAL per scale unit (bench/lib/plan.ts). */
const WAL_MIB_PER_PGBENCH_SCALE = 12.4;
const CONSUMERS = ['pg_receivewal', 'wal-consumer'] as const;
type Consumer = (typeof CONSUMERS)[number];
const STRATEGIES = ['sendfile', 'writev', 'uring'] as const;
/** --smoke: the smallest pgbench range (scale 1), enough for a few segments. */
const SMOKE_MIB = 16;
const EXIT_USAGE = 2;

interface Arguments {
  /** Other checkouts to run beside this tree, by result name; the first is the baseline ratios are taken against. */
  readonly others: readonly (readonly [string, string])[];
  readonly mib: number;
  readonly reps: number;
  readonly load: number;
  readonly consumers: readonly Consumer[];
  readonly strategy: (typeof STRATEGIES)[number];
  /** The I/O backend of every walcast server (--io ts: the pure-TypeScript backend's CPU per GB, issue 13). */
  readonly io: 'ts' | 'native';
  /** CI: a tiny range, one idle round, pg_receivewal's files compared byte for byte with the source. */
  readonly smoke: boolean;
  /** Where single-stream.json (every run) and single-stream.md (the table) go; stdout gets the table either way. */
  readonly out: string | undefined;
  /** Unrecorded catch-ups per server before the rounds (--warm-ups, default 1): V8 warms up over a fresh server's first few. */
  readonly warmUps: number;
}

const USAGE = 'usage: node --import tsx bench/single-stream.ts [--smoke] [--out DIR] [--baseline DIR] [--also NAME=DIR]... [--mib N] [--reps N] [--load N] [--consumers pg_receivewal,wal-consumer] [--strategy sendfile|writev|uring] [--io native|ts] [--warm-ups N]\n';

function usage(message: string): never {
  process.stderr.write(`${message}\n${USAGE}`);
  process.exit(EXIT_USAGE);
}

function parseArguments(argv: readonly string[]): Arguments {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: {
        baseline: { type: 'string' },
        also: { type: 'string', multiple: true, default: [] },
        smoke: { type: 'boolean', default: false },
        out: { type: 'string' },
        mib: { type: 'string' },
        reps: { type: 'string' },
        load: { type: 'string' },
        consumers: { type: 'string', default: CONSUMERS.join(',') },
        strategy: { type: 'string', default: 'sendfile' },
        io: { type: 'string', default: 'native' },
        'warm-ups': { type: 'string', default: '1' },
      },
      strict: true,
    }));
  } catch (error) {
    usage((error as Error).message);
  }
  const count = (text: string, what: string, least: number): number => {
    const value = Number(text);
    if (!Number.isInteger(value) || value < least) usage(`${what} must be an integer >= ${least}, got "${text}"`);
    return value;
  };
  const others: [string, string][] = values.baseline === undefined ? [] : [['base', values.baseline]];
  for (const entry of values.also) {
    const [name, dir] = entry.split('=');
    if (name === undefined || dir === undefined || name === '' || ['base', 'new', 'postgres'].includes(name)) usage(`--also takes NAME=DIR with a new name, got "${entry}"`);
    others.push([name, dir]);
  }
  const consumers = values.consumers.split(',');
  const unknown = consumers.filter((consumer) => !(CONSUMERS as readonly string[]).includes(consumer));
  if (unknown.length > 0) usage(`unknown consumer(s) ${unknown.join(', ')}`);
  if (!(STRATEGIES as readonly string[]).includes(values.strategy)) usage(`unknown strategy ${values.strategy}`);
  if (values.io !== 'native' && values.io !== 'ts') usage(`--io takes native or ts, got "${values.io}"`);
  return {
    others,
    mib: count(values.mib ?? (values.smoke ? String(SMOKE_MIB) : '1024'), '--mib', 1),
    reps: count(values.reps ?? (values.smoke ? '1' : '3'), '--reps', 1),
    load: count(values.load ?? (values.smoke ? '0' : '1'), '--load', 0),
    smoke: values.smoke,
    out: values.out,
    consumers: consumers as Consumer[],
    strategy: values.strategy as Arguments['strategy'],
    io: values.io,
    warmUps: count(values['warm-ups'], '--warm-ups', 1),
  };
}

/** The walcast servers' backend flags: the native strategy only with the native backend. */
function serverBackend(args: Arguments): { io: 'ts' } | { io: 'native'; strategy: Arguments['strategy'] } {
  return args.io === 'ts' ? { io: 'ts' } : { io: 'native', strategy: args.strategy };
}

const startedAt = performance.now();
function progress(message: string): void {
  process.stderr.write(`[${((performance.now() - startedAt) / 1000).toFixed(1).padStart(6)}s] ${message}\n`);
}

function format(summary: Summary | undefined, digits: number): string {
  if (summary === undefined) return '–';
  return `${summary.median.toFixed(digits)} [${summary.min.toFixed(digits)}–${summary.max.toFixed(digits)}]`;
}

async function main(): Promise<void> {
  const args = parseArguments(process.argv.slice(2));
  const load = await CpuLoad.start(args.load);
  const tools = buildTools();
  const pgbenchScale = Math.max(1, Math.round(args.mib / WAL_MIB_PER_PGBENCH_SCALE));
  const wal = await prepareWal({ pgbenchScale, maxReplicas: 2 });
  progress(`WAL ready: ${formatLsn(wal.startLsn)}–${formatLsn(wal.endLsn)} (${(Number(wal.endLsn - wal.startLsn) / 1024 ** 2).toFixed(0)} MiB); postmaster pid ${wal.primary.pid}`);
  const plan = planFor('full');
  const context: BenchContext = { tools, wal, plan, progress };
  const targets: ServerTarget[] = [];
  try {
    for (const [name, repoRoot] of args.others) {
      targets.push(await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, ...serverBackend(args), repoRoot, name }));
    }
    targets.push(await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, ...serverBackend(args), name: 'new' }));
    targets.push(postgresTarget(wal.primary, wal));
    for (const target of targets) progress(`server ${target.name} ready on port ${target.port}, pid ${target.pid}`);
    warmPageCache([...wal.walcastFiles, ...wal.postgresFiles]);
    for (let warmUpIndex = 0; warmUpIndex < args.warmUps; warmUpIndex++) {
      for (const target of targets) {
        const warmUp = await measureConsumerRun(context, target, { scenario: 'catch-up', replicas: 1, bytesPerReplica: 0, repetition: 0, cold: false });
        // The first warm-up is each server's first catch-up of the range (walcast verifies every page once here): its CPU
        // per GB is that first pass's, printed for comparison, not part of the table. Later ones show V8's warm-up fading.
        progress(`warm-up ${target.name}${args.warmUps > 1 ? ` ${warmUpIndex + 1}/${args.warmUps}` : ''}: ${warmUp.ok ? `ok, ${warmUp.serverCpuSecondsPerGB?.toFixed(3)} CPU s/GB (wal-consumer)` : `FAILED ${warmUp.error ?? ''}`}`);
      }
    }
    const runs: (RunRecord & { condition: Condition })[] = [];
    for (let repetition = 0; repetition < args.reps; repetition++) {
      for (const condition of load.conditions) {
        await load.set(condition);
        for (const consumer of args.consumers) {
          for (let turn = 0; turn < targets.length; turn++) {
            const target = targets[(turn + repetition) % targets.length]!;
            const record = consumer === 'pg_receivewal'
              ? await measureReceiveWalRun(context, target, repetition, args.smoke)
              : await measureConsumerRun(context, target, { scenario: 'catch-up', replicas: 1, bytesPerReplica: 0, repetition, cold: false });
            runs.push({ ...record, condition });
            progress(`#${repetition + 1} ${condition} ${consumer} ${target.name}: ${record.ok ? `${record.throughputMBps?.toFixed(0)} MB/s, ${record.serverCpuSecondsPerGB?.toFixed(3)} CPU s/GB (load ${loadavg()[0]!.toFixed(1)})` : `FAILED ${record.error ?? ''}`}`);
          }
        }
      }
    }
    await load.set('idle');
    const lines = ['| consumer | condition | server | MB/s | CPU s/GB | MB/s ÷ PG | CPU ÷ PG | MB/s ÷ base | CPU ÷ base |', '|---|---|---|---|---|---|---|---|---|'];
    for (const consumer of args.consumers) {
      for (const condition of load.conditions) {
        const of = (name: string, metric: 'throughputMBps' | 'serverCpuSecondsPerGB'): (number | undefined)[] => {
          const values: (number | undefined)[] = [];
          for (let repetition = 0; repetition < args.reps; repetition++) {
            const run = runs.find((candidate) => candidate.consumer === consumer && candidate.condition === condition && candidate.server === name && candidate.repetition === repetition);
            values.push(run?.ok === true ? run[metric] : undefined);
          }
          return values;
        };
        for (const target of targets) {
          const mbps = of(target.name, 'throughputMBps');
          const cpu = of(target.name, 'serverCpuSecondsPerGB');
          const defined = (values: (number | undefined)[]): number[] => values.filter((value): value is number => value !== undefined);
          const baseName = args.others[0]?.[0];
          const vsBase = baseName !== undefined && target.family === 'walcast' && target.name !== baseName;
          lines.push(`| ${consumer} | ${condition} | ${target.name} | ${format(summarize(defined(mbps)), 0)} | ${format(summarize(defined(cpu)), 3)} | ${target.name === 'postgres' ? '' : format(pairwiseRatio(mbps, of('postgres', 'throughputMBps')), 2)} | ${target.name === 'postgres' ? '' : format(pairwiseRatio(cpu, of('postgres', 'serverCpuSecondsPerGB')), 2)} | ${vsBase ? format(pairwiseRatio(mbps, of(baseName, 'throughputMBps')), 2) : ''} | ${vsBase ? format(pairwiseRatio(cpu, of(baseName, 'serverCpuSecondsPerGB')), 2) : ''} |`);
        }
      }
    }
    process.stdout.write(`${lines.join('\n')}\n`);
    if (args.out !== undefined) {
      mkdirSync(args.out, { recursive: true });
      writeFileSync(join(args.out, 'single-stream.json'), `${JSON.stringify({ servers: targets.map((target) => target.name), args, runs }, null, 2)}\n`);
      writeFileSync(join(args.out, 'single-stream.md'), `${lines.join('\n')}\n`);
    }
    const failed = runs.filter((run) => !run.ok).length;
    progress(`done: ${runs.length} runs, ${failed} failed`);
    if (failed > 0) process.exitCode = 1;
  } finally {
    await Promise.all(targets.map((target) => target.stop()));
    await load.stop();
    await wal.primary.stop();
  }
}

await runBenchmark('single-stream', main, progress);
