/**
 * What TLS costs (issue 12): walcast ts, walcast native and PostgreSQL 15 with ssl=on, each plain and TLS, stream
 * the same WAL to the same client, pg_receivewal --no-sync into /dev/shm (sslmode=disable for plain,
 * sslmode=require for TLS), at 1 replica and at N replicas (N pg_receivewal processes at once). Everything is
 * interleaved inside each repetition round (replica count → server → plain/TLS), so the paired ratios compare runs
 * measured back to back. Reported: MB/s and server CPU s/GB, median with min–max over the rounds, and the paired
 * ratios TLS/plain (per server) and walcast/PostgreSQL (per transport).
 *
 * Run:    node --import tsx bench/tls-cost.ts --mib 1024 --replicas 100 --reps 3 [--replica-mib M] [--out DIR]
 *         (--mib: WAL generated, via pgbench scale; N replicas each stream --replica-mib, default an equal share
 *         of the range, so the N-replica runs move about as many bytes as the 1-replica run)
 *         [--baseline DIR] [--no-postgres]
 *         (--baseline: also run walcast ts and native from another tree, e.g. an older commit built with its
 *         node_modules and native addon, as "walcast-ts-base"/"walcast-native-default-base", interleaved with this
 *         tree's in every round; a table adds the paired ratios this tree / baseline. --no-postgres leaves
 *         PostgreSQL out of the rounds, for an A/B of walcast alone)
 * Smoke:  node --import tsx bench/tls-cost.ts --smoke   (a few MB, 2 replicas, one round, every byte compared;
 *         checks the harness, the numbers mean nothing)
 *
 * Servers and accounting are the main benchmark's (bench/lib): walcast runs as its own `walcast serve` child
 * process per backend, configured with a certificate and --tls-mode prefer so the same process serves the plain
 * and the TLS runs; its CPU is the kernel's accounting of that process. PostgreSQL's CPU is its walsenders' (live
 * plus reaped). On the native backend a TLS stream goes through the encrypting TS send path (the native backend
 * writes to the socket's fd, which would bypass TLS; docs/security.md), so "native TLS" measures that fallback.
 * Wall time of an N-replica run goes from starting the first pg_receivewal to the exit of the last: it includes
 * process start-up and, for TLS, N handshakes (server CPU includes the servers' share of those). The MB/s figure
 * is payload bytes of all replicas over that time; a larger --replica-mib makes start-up a smaller part of it.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { formatLsn } from '../src/lsn.js';
import { PG_BIN_DIR, runReceiveWal } from '../test/support/postgres.js';
import { makeTestCertificates } from '../test/support/tls-certs.js';
import { describeMachine } from './lib/machine.js';
import { runBenchmark } from './lib/processes.js';
import { BYTES_PER_GB, BYTES_PER_MB } from './lib/results.js';
import { postgresTarget, startWalcastServer, type ServerTarget } from './lib/servers.js';
import { pairwiseRatio, summarize, type Summary } from './lib/stats.js';
import { REPO_ROOT } from './lib/tools.js';
import { prepareWal, type PreparedWal } from './lib/wal-source.js';
import { matchingBytes, rangeBytes, segmentName, warmPageCache } from './scenarios/streaming.js';

const MIB = 1024 * 1024;
/** pgbench -i produces ~12.4 MiB of WAL per scale unit (bench/lib/plan.ts). */
const WAL_MIB_PER_PGBENCH_SCALE = 12.4;
/** pg_receivewal writes into tmpfs so the client's disk is not what is measured. */
const RECEIVE_DIR_PARENT = '/dev/shm';
/** Upper bound for one run (all replicas); a run past it is recorded as failed instead of hanging the harness. */
const RUN_TIMEOUT_MS = 900_000;
/** Each of N replicas streams at least this much, so a run is not only connection set-up. */
const REPLICA_BYTES_MIN = MIB;
const EXIT_USAGE = 2;
/**
 * Before the first round every server streams this much once per transport, unmeasured: the first streams of a
 * fresh walcast process run cold code (V8 has not optimized the send path yet, tsx-loaded modules initialize).
 */
const WARM_UP_BYTES = 64 * MIB;

type Transport = 'plain' | 'tls';
const TRANSPORTS: readonly Transport[] = ['plain', 'tls'];

interface Options {
  readonly smoke: boolean;
  readonly mib: number;
  readonly replicas: number;
  readonly reps: number;
  /** MiB each of the N replicas streams; undefined: an equal share of the range (at least REPLICA_BYTES_MIN). */
  readonly replicaMib: number | undefined;
  readonly outDir: string | undefined;
  /** Another walcast tree to run beside this one (A/B), or undefined. */
  readonly baseline: string | undefined;
  readonly postgres: boolean;
}

interface TlsRun {
  readonly server: string;
  readonly transport: Transport;
  readonly replicas: number;
  readonly repetition: number;
  readonly ok: boolean;
  readonly error?: string;
  readonly bytesPerReplica: number;
  readonly bytesTotal: number;
  readonly wallSeconds?: number;
  readonly throughputMBps?: number;
  readonly serverCpuSeconds?: number;
  readonly serverCpuSecondsPerGB?: number;
  /** Smoke runs compare every received byte with the stored WAL; this is how many matched, over all replicas. */
  readonly bytesVerified?: number;
}

function usage(message: string): never {
  process.stderr.write(`${message}\nusage: node --import tsx bench/tls-cost.ts [--mib N] [--replicas N] [--reps N] [--replica-mib N] [--out DIR] [--baseline DIR] [--no-postgres] | --smoke [...]\n`);
  process.exit(EXIT_USAGE);
}

function parseOptions(argv: readonly string[]): Options {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: {
        smoke: { type: 'boolean', default: false },
        mib: { type: 'string' },
        replicas: { type: 'string' },
        reps: { type: 'string' },
        'replica-mib': { type: 'string' },
        out: { type: 'string' },
        baseline: { type: 'string' },
        'no-postgres': { type: 'boolean', default: false },
      },
      strict: true,
    }));
  } catch (error) {
    usage((error as Error).message);
  }
  const positive = (text: string | undefined, name: string, fallback: number): number => {
    const value = Number(text ?? fallback);
    if (!Number.isSafeInteger(value) || value < 1) usage(`--${name} must be a positive integer, got "${text}"`);
    return value;
  };
  // A smoke run is a few MB, 2 replicas, one round unless told otherwise; a measurement defaults to 1 GiB, 100, 3.
  const smoke = values.smoke;
  const defaults = smoke ? { mib: 1, replicas: 2, reps: 1 } : { mib: 1024, replicas: 100, reps: 3 };
  return {
    smoke,
    mib: positive(values.mib, 'mib', defaults.mib),
    replicas: positive(values.replicas, 'replicas', defaults.replicas),
    reps: positive(values.reps, 'reps', defaults.reps),
    replicaMib: values['replica-mib'] === undefined ? undefined : positive(values['replica-mib'], 'replica-mib', 1),
    outDir: values.out,
    baseline: values.baseline,
    postgres: !values['no-postgres'],
  };
}

const startedAt = performance.now();
function progress(message: string): void {
  process.stderr.write(`[${((performance.now() - startedAt) / 1000).toFixed(1).padStart(6)}s] ${message}\n`);
}

/**
 * Bytes each replica streams: the whole range for one; for N, --replica-mib or an equal share of the range (at
 * least REPLICA_BYTES_MIN), never more than the range.
 */
function bytesPerReplica(wal: PreparedWal, replicas: number, replicaMib: number | undefined): number {
  const range = rangeBytes(wal);
  if (replicas === 1) return range;
  return Math.min(range, replicaMib === undefined ? Math.max(REPLICA_BYTES_MIN, Math.ceil(range / replicas)) : replicaMib * MIB);
}

/**
 * One run: `replicas` pg_receivewal processes at once against `target`, each streaming `perReplica` bytes from
 * the range start.
 */
async function measure(target: ServerTarget, wal: PreparedWal, transport: Transport, replicas: number, perReplica: number, repetition: number, verify: boolean): Promise<TlsRun> {
  const base = { server: target.name, transport, replicas, repetition, bytesPerReplica: perReplica, bytesTotal: perReplica * replicas };
  const firstSegment = wal.walcastFiles[0];
  if (firstSegment === undefined) return { ...base, ok: false, error: 'the range has no segments' };
  const dirs = Array.from({ length: replicas }, () => mkdtempSync(join(RECEIVE_DIR_PARENT, 'walcast-tls-cost-')));
  try {
    // An empty .partial of the first segment makes pg_receivewal start there (reference §4).
    for (const dir of dirs) writeFileSync(join(dir, `${segmentName(firstSegment)}.partial`), '');
    const sslmode = transport === 'tls' ? 'sslmode=require' : 'sslmode=disable';
    const endpos = formatLsn(wal.startLsn + BigInt(perReplica) - 1n);
    const meter = target.beginRun();
    const started = performance.now();
    const results = await Promise.all(dirs.map((dir) => runReceiveWal({ port: target.port, dir, endpos, timeoutMs: RUN_TIMEOUT_MS, extraArgs: ['-d', `${sslmode} application_name=tls-cost`] })));
    const wallSeconds = (performance.now() - started) / 1000;
    const cost = await meter.finish(replicas, { afterDisconnect: true });
    const failed = results.find((result) => result.code !== 0);
    if (failed !== undefined) return { ...base, ok: false, error: `pg_receivewal exited ${failed.code}${failed.timedOut ? ' (timed out)' : ''}: ${failed.stderr.trim().split('\n').slice(-3).join(' | ')}` };
    const bytesVerified = verify ? dirs.reduce((sum, dir) => sum + matchingBytes(dir, wal, perReplica), 0) : undefined;
    const ok = bytesVerified === undefined || bytesVerified === base.bytesTotal;
    return {
      ...base,
      ok,
      ...(ok ? {} : { error: `received files match the stored WAL for ${bytesVerified} of ${base.bytesTotal} bytes` }),
      wallSeconds,
      throughputMBps: base.bytesTotal / BYTES_PER_MB / wallSeconds,
      serverCpuSeconds: cost.cpuSeconds,
      serverCpuSecondsPerGB: cost.cpuSeconds / (base.bytesTotal / BYTES_PER_GB),
      ...(bytesVerified === undefined ? {} : { bytesVerified }),
    };
  } catch (error) {
    return { ...base, ok: false, error: (error instanceof Error ? error.message : String(error)).slice(0, 500) };
  } finally {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  }
}

type Metric = 'throughputMBps' | 'serverCpuSecondsPerGB';

function values(runs: readonly TlsRun[], server: string, transport: Transport, replicas: number, metric: Metric): (number | undefined)[] {
  const byRound: (number | undefined)[] = [];
  for (const run of runs) if (run.server === server && run.transport === transport && run.replicas === replicas) byRound[run.repetition] = run.ok ? run[metric] : undefined;
  return byRound;
}

function cell(summary: Summary | undefined, digits: number): string {
  if (summary === undefined) return '–';
  return `${summary.median.toFixed(digits)} (${summary.min.toFixed(digits)}–${summary.max.toFixed(digits)})`;
}

const SERVER_LABELS: Record<string, string> = { 'walcast-ts': 'walcast ts', 'walcast-native-default': 'walcast native', postgres: 'PostgreSQL 15' };

function renderTables(runs: readonly TlsRun[], servers: readonly string[], replicaCounts: readonly number[]): string {
  const lines: string[] = [];
  const defined = (list: readonly (number | undefined)[]): number[] => list.filter((value): value is number => value !== undefined);
  for (const replicas of replicaCounts) {
    lines.push('', `### ${replicas} replica${replicas === 1 ? '' : 's'}`, '', '| server | transport | MB/s | server CPU s/GB | TLS/plain MB/s | TLS/plain CPU s/GB | vs PostgreSQL MB/s | vs PostgreSQL CPU s/GB |', '|---|---|---:|---:|---:|---:|---:|---:|');
    for (const server of servers) {
      for (const transport of TRANSPORTS) {
        const mbps = values(runs, server, transport, replicas, 'throughputMBps');
        const cpu = values(runs, server, transport, replicas, 'serverCpuSecondsPerGB');
        const vsPlain = transport === 'tls'
          ? [pairwiseRatio(mbps, values(runs, server, 'plain', replicas, 'throughputMBps')), pairwiseRatio(cpu, values(runs, server, 'plain', replicas, 'serverCpuSecondsPerGB'))]
          : [undefined, undefined];
        const vsPostgres = server === 'postgres'
          ? [undefined, undefined]
          : [pairwiseRatio(mbps, values(runs, 'postgres', transport, replicas, 'throughputMBps')), pairwiseRatio(cpu, values(runs, 'postgres', transport, replicas, 'serverCpuSecondsPerGB'))];
        lines.push(`| ${SERVER_LABELS[server] ?? server} | ${transport === 'tls' ? 'TLS' : 'plain'} | ${cell(summarize(defined(mbps)), 0)} | ${cell(summarize(defined(cpu)), 2)} | ${cell(vsPlain[0], 2)} | ${cell(vsPlain[1], 2)} | ${cell(vsPostgres[0], 2)} | ${cell(vsPostgres[1], 2)} |`);
      }
    }
  }
  return lines.join('\n');
}

/** This tree / the baseline's, per server, transport and replica count: CPU s/GB and MB/s, paired within a round. */
function renderBaselineTable(runs: readonly TlsRun[], servers: readonly string[], replicaCounts: readonly number[], baseline: string): string {
  const lines = ['', `### this tree / baseline (${baseline})`, '', '| server | replicas | transport | CPU s/GB this | CPU s/GB base | CPU s/GB ratio | MB/s ratio |', '|---|---:|---|---:|---:|---:|---:|'];
  const defined = (list: readonly (number | undefined)[]): number[] => list.filter((value): value is number => value !== undefined);
  for (const server of servers) {
    const base = `${server}-base`;
    if (!servers.includes(base)) continue;
    for (const replicas of replicaCounts) {
      for (const transport of TRANSPORTS) {
        const cpu = values(runs, server, transport, replicas, 'serverCpuSecondsPerGB');
        const cpuBase = values(runs, base, transport, replicas, 'serverCpuSecondsPerGB');
        const mbps = pairwiseRatio(values(runs, server, transport, replicas, 'throughputMBps'), values(runs, base, transport, replicas, 'throughputMBps'));
        lines.push(`| ${SERVER_LABELS[server] ?? server} | ${replicas} | ${transport === 'tls' ? 'TLS' : 'plain'} | ${cell(summarize(defined(cpu)), 3)} | ${cell(summarize(defined(cpuBase)), 3)} | ${cell(pairwiseRatio(cpu, cpuBase), 2)} | ${cell(mbps, 2)} |`);
      }
    }
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const replicaCounts = options.replicas === 1 ? [1] : [1, options.replicas];
  const certs = await makeTestCertificates();
  const pgbenchScale = Math.max(1, Math.round(options.mib / WAL_MIB_PER_PGBENCH_SCALE));
  const wal = await prepareWal({ pgbenchScale, maxReplicas: options.replicas, extraConf: { ssl: 'on', ssl_cert_file: certs.serverCert, ssl_key_file: certs.serverKey } });
  progress(`WAL ready: ${formatLsn(wal.startLsn)}–${formatLsn(wal.endLsn)} (${(rangeBytes(wal) / MIB).toFixed(0)} MiB, pgbench scale ${pgbenchScale})`);
  const machine = describeMachine(PG_BIN_DIR, REPO_ROOT);
  const tls = { certFile: certs.serverCert, keyFile: certs.serverKey };
  const targets: ServerTarget[] = [
    await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'ts', tls }),
    await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'native', tls }),
  ];
  if (options.baseline !== undefined) {
    const repoRoot = options.baseline;
    targets.push(await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'ts', tls, repoRoot, name: 'walcast-ts-base' }));
    targets.push(await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'native', tls, repoRoot, name: 'walcast-native-default-base' }));
  }
  if (options.postgres) targets.push(postgresTarget(wal.primary, wal));
  progress(`servers ready: ${targets.map((target) => target.name).join(', ')}`);
  warmPageCache([...wal.walcastFiles, ...wal.postgresFiles]);
  const runs: TlsRun[] = [];
  try {
    for (const target of targets) {
      for (const transport of TRANSPORTS) {
        const warm = await measure(target, wal, transport, 1, Math.min(WARM_UP_BYTES, rangeBytes(wal)), -1, false);
        if (!warm.ok) progress(`warm-up ${target.name} ${transport}: FAILED ${warm.error}`);
      }
    }
    progress('warm-up done');
    for (let repetition = 0; repetition < options.reps; repetition++) {
      for (const replicas of replicaCounts) {
        for (const target of targets) {
          for (const transport of TRANSPORTS) {
            const run = await measure(target, wal, transport, replicas, bytesPerReplica(wal, replicas, options.replicaMib), repetition, options.smoke);
            runs.push(run);
            const head = `round ${repetition + 1} ×${replicas} ${target.name} ${transport}`;
            progress(run.ok ? `${head}: ${run.throughputMBps?.toFixed(0)} MB/s, ${run.serverCpuSecondsPerGB?.toFixed(3)} server CPU s/GB` : `${head}: FAILED ${run.error}`);
          }
        }
      }
    }
  } finally {
    await Promise.all(targets.map((target) => target.stop()));
    await wal.primary.stop();
  }
  const heading = [
    `## TLS cost${options.smoke ? ' (smoke run: checks the harness, the numbers mean nothing)' : ''}`,
    '',
    `${machine.date} · ${machine.cpuModel}, ${machine.cores} cores · load ${machine.loadAverage.map((value) => value.toFixed(1)).join(' ')} · Node ${machine.node} · ${machine.postgres} · walcast ${machine.walcastCommit}`,
    `WAL ${(rangeBytes(wal) / MIB).toFixed(0)} MiB; 1 replica streams all of it, ${options.replicas} replicas ${(bytesPerReplica(wal, options.replicas, options.replicaMib) / MIB).toFixed(1)} MiB each; ${options.reps} round(s); client pg_receivewal --no-sync into /dev/shm, sslmode=disable / require.`,
    'Cells: median (min–max) over rounds; ratios are paired within a round. walcast native TLS streams use the encrypting TS path.',
  ].join('\n');
  const names = targets.map((target) => target.name);
  const markdown = `${heading}\n${renderTables(runs, names, replicaCounts)}\n${options.baseline === undefined ? '' : `${renderBaselineTable(runs, names, replicaCounts, options.baseline)}\n`}`;
  process.stdout.write(markdown);
  if (options.outDir !== undefined) {
    mkdirSync(options.outDir, { recursive: true });
    const stamp = machine.date.replaceAll(':', '-').replace(/\.\d+Z$/, 'Z');
    writeFileSync(join(options.outDir, `${stamp}-tls-cost.json`), `${JSON.stringify({ options, machine, wal: { bytes: rangeBytes(wal), startLsn: formatLsn(wal.startLsn), endLsn: formatLsn(wal.endLsn) }, runs }, null, 2)}\n`);
    writeFileSync(join(options.outDir, 'tls-cost.md'), markdown);
  }
  const failed = runs.filter((run) => !run.ok).length;
  progress(`done: ${runs.length} runs, ${failed} failed`);
  if (failed > 0) process.exitCode = 1;
}

await runBenchmark('tls-cost', main, progress);
