/**
 * Catch-up from object storage vs from local disk (issue 10's benchmark): one replica streams the same WAL range
 * from walcast twice per round, (a) read from walcast's local disk and (b) read back from an S3-compatible server on
 * loopback (s3rver, the tests' fixture, as its own process). Reported per case: MB/s, walcast's CPU s/GB (its
 * process only), s3rver's CPU s/GB apart (it is "the remote" here and shares the machine), walcast's worst
 * event-loop delay during the run (nodejs_eventloop_lag_max_seconds from its /metrics, scraped right before and
 * after), and the WAL bytes it served by source (walcast_wal_bytes_served_total{source}); median (min–max) over the
 * rounds, plus the remote/local ratios paired within each round.
 *
 * Run:    node --import tsx bench/remote-catchup.ts --mib 1024 --reps 3 [--io ts|native] [--segment-mib 16] [--out DIR]
 * Smoke:  node --import tsx bench/remote-catchup.ts --smoke   (a few MB in 1 MiB segments, one round; checks the
 *         harness and the bytes, the numbers mean nothing)
 *
 * Set-up. `prepareWal` (bench/lib) produces the range with pgbench and imports it into a walcast data dir: that dir
 * serves case (a). A copy of it is served once with --remote-storage until its backup LSN covers the whole range
 * (every segment is in the bucket), then removed; `walcast timeline restore` brings a fresh data dir up from the
 * bucket alone, holding only the last segment locally: case (b) reads every other segment from the bucket through
 * the segment cache (16 MiB ranged GETs into DATA/.remote-cache). The copy is needed because retention of the
 * offloading server may remove local segments that are in the bucket, and case (a) must keep them.
 *
 * Rounds. Each run starts its own `walcast serve` process and stops it afterwards, for both cases alike: the
 * segment cache is emptied when a process starts (and the harness removes the directory too), so every remote
 * round really downloads every segment from s3rver; a longer-lived process would serve later rounds from its
 * cache (up to 256 MiB of it). The cost is a cold V8 in every run, equal for both cases. Before the first round
 * each case streams up to WARM_UP_BYTES once, unmeasured (page cache for the local files and s3rver's object
 * files, s3rver's own JIT). The case order alternates per round. The consumer is the discarding C consumer
 * (bench/native/wal-consumer.c), which counts bytes but cannot compare them: after the rounds, each case serves the
 * whole range once more (fresh process, empty cache) to pg_receivewal into /dev/shm, and every byte it wrote is
 * compared with the imported segments ("verified").
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { formatLsn, parseLsnOrThrow } from '../src/lsn.js';
import { REMOTE_CACHE_DIR_NAME } from '../src/server.js';
import { PG_BIN_DIR, makeTempDir, runReceiveWal } from '../test/support/postgres.js';
import { startConsumer, type RunningConsumer } from './lib/consumer.js';
import { describeMachine } from './lib/machine.js';
import { readCpu } from './lib/proc-stats.js';
import { runBenchmark, spawnTracked } from './lib/processes.js';
import { scrapeEventLoopMaxMs } from './lib/responsiveness.js';
import { BYTES_PER_GB, BYTES_PER_MB } from './lib/results.js';
import { startBenchS3, type BenchS3 } from './lib/s3-server.js';
import { startWalcastServer, type ServerTarget } from './lib/servers.js';
import { pairwiseRatio, summarize, type Summary } from './lib/stats.js';
import { REPO_ROOT, buildTools, type Tools } from './lib/tools.js';
import { prepareWal, segmentFilesIn, type PreparedWal } from './lib/wal-source.js';
import { matchingBytes, rangeBytes, segmentName, warmPageCache } from './scenarios/streaming.js';

const MIB = 1024 * 1024;
/** pgbench -i produces ~12.4 MiB of WAL per scale unit (bench/lib/plan.ts). */
const WAL_MIB_PER_PGBENCH_SCALE = 12.4;
/** Upper bound for one run; a run past it is recorded as failed instead of hanging the harness. */
const RUN_TIMEOUT_MS = 900_000;
/** Offloading the range: s3rver on a loaded 2-vCPU machine takes in the order of 10 MB/s at worst. */
const OFFLOAD_TIMEOUT_MS_PER_MIB = 1_000;
const OFFLOAD_TIMEOUT_MS_MIN = 120_000;
const OFFLOAD_POLL_MS = 250;
/** Unmeasured stream per case before the first round (see the header). */
const WARM_UP_BYTES = 64 * MIB;
/** pg_receivewal writes into tmpfs so the client's disk is not what is measured. */
const RECEIVE_DIR_PARENT = '/dev/shm';
/** The bucket prefix the timeline is offloaded under. */
const REMOTE_PREFIX = 'bench';
const EXIT_USAGE = 2;

type CaseName = 'local' | 'remote';
const CASES: readonly CaseName[] = ['local', 'remote'];

interface Options {
  readonly smoke: boolean;
  readonly mib: number;
  readonly reps: number;
  readonly io: 'ts' | 'native';
  readonly segmentMib: number;
  readonly outDir: string | undefined;
}

interface CatchUpRun {
  readonly case: CaseName;
  /** -1: the warm-up. */
  readonly repetition: number;
  readonly ok: boolean;
  readonly error?: string;
  /** walcast's process for this run, to find its profile (`perf report --pid`, the PID in a .cpuprofile's name). */
  readonly serverPid?: number;
  readonly bytesExpected: number;
  readonly bytesReceived?: number;
  readonly wallSeconds?: number;
  readonly throughputMBps?: number;
  readonly serverCpuSeconds?: number;
  readonly serverCpuSecondsPerGB?: number;
  /** s3rver's CPU during the run (ticks of 10 ms), per GB streamed. */
  readonly s3CpuSecondsPerGB?: number;
  readonly eventLoopMaxMs?: number;
  /** walcast_wal_bytes_served_total by source, from the run's own server process. */
  readonly bytesServedLocal?: number;
  readonly bytesServedRemote?: number;
}

interface Verification {
  readonly case: CaseName;
  readonly ok: boolean;
  readonly error?: string;
  readonly bytesExpected: number;
  /** Bytes pg_receivewal wrote identical to the imported segments, from the range start on. */
  readonly bytesVerified: number;
  readonly bytesServedRemote?: number;
  /** pg_receivewal's rate in this one stream (informational: one run, not interleaved rounds). */
  readonly throughputMBps?: number;
}

function usage(message: string): never {
  process.stderr.write(`${message}\nusage: node --import tsx bench/remote-catchup.ts [--mib N] [--reps N] [--io ts|native] [--segment-mib N] [--out DIR] | --smoke [...]\n`);
  process.exit(EXIT_USAGE);
}

function nativeBuilt(): boolean {
  return ['Release', 'Debug'].some((kind) => existsSync(join(REPO_ROOT, 'build', kind, 'walcast_native.node')));
}

function parseOptions(argv: readonly string[]): Options {
  const values = new Map<string, string>();
  let smoke = false;
  for (let index = 0; index < argv.length; index++) {
    const argument = argv[index]!;
    if (argument === '--smoke') smoke = true;
    else if (['--mib', '--reps', '--io', '--segment-mib', '--out'].includes(argument) && argv[index + 1] !== undefined) values.set(argument, argv[++index]!);
    else usage(`unknown or incomplete argument ${argument}`);
  }
  const positive = (name: string, fallback: number): number => {
    const value = Number(values.get(name) ?? fallback);
    if (!Number.isSafeInteger(value) || value < 1) usage(`${name} must be a positive integer`);
    return value;
  };
  const io = values.get('--io') ?? (nativeBuilt() ? 'native' : 'ts');
  if (io !== 'ts' && io !== 'native') usage('--io must be ts or native');
  const segmentMib = positive('--segment-mib', smoke ? 1 : 16);
  // initdb accepts powers of two from 1 to 1024 MB.
  if ((segmentMib & (segmentMib - 1)) !== 0 || segmentMib > 1024) usage('--segment-mib must be a power of two up to 1024');
  return { smoke, mib: positive('--mib', smoke ? 1 : 1024), reps: positive('--reps', smoke ? 1 : 3), io, segmentMib, outDir: values.get('--out') };
}

const startedAt = performance.now();
function progress(message: string): void {
  process.stderr.write(`[${((performance.now() - startedAt) / 1000).toFixed(1).padStart(6)}s] ${message}\n`);
}

function message(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).slice(0, 500);
}

/** The walcast CLI as a child process (import and restore are one-shot commands). */
async function runWalcastCli(args: readonly string[]): Promise<string> {
  const child = spawnTracked(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'src/cli/main.ts'), ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  child.child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  const code = await child.exited;
  if (code !== 0) throw new Error(`walcast ${args.slice(0, 2).join(' ')} failed (${code}): ${child.stderr().trim()}`);
  return stdout;
}

/** walcast's status API base (http://host:port) from its /metrics URL. */
function apiBase(target: ServerTarget): string {
  if (target.metricsUrl === undefined) throw new Error(`${target.name} has no HTTP endpoint`);
  return target.metricsUrl.replace(/\/metrics$/, '');
}

/**
 * Offloads the imported timeline: serves a copy of the data dir with --remote-storage until the timeline's backup
 * LSN reaches the range end (every segment confirmed in the bucket), then removes the copy.
 */
async function offloadRange(wal: PreparedWal, remoteArgs: readonly string[], tenantId: string, timelineId: string, mib: number): Promise<number> {
  const copyDir = await makeTempDir('walcast-bench-offload');
  const started = performance.now();
  execFileSync('cp', ['-a', `${wal.dataDir}/.`, copyDir]);
  const server = await startWalcastServer({ dataDir: copyDir, walFiles: [], io: 'ts', extraArgs: remoteArgs, name: 'walcast-offload' });
  try {
    const url = `${apiBase(server)}/v1/tenant/${tenantId}/timeline/${timelineId}`;
    const deadline = Date.now() + Math.max(OFFLOAD_TIMEOUT_MS_MIN, mib * OFFLOAD_TIMEOUT_MS_PER_MIB);
    let backupLsn = 'none';
    while (Date.now() < deadline) {
      const response = await fetch(url).catch(() => undefined);
      if (response?.ok === true) {
        const status = (await response.json()) as { backup_lsn?: string | null };
        backupLsn = status.backup_lsn ?? 'none';
        if (status.backup_lsn != null && parseLsnOrThrow(status.backup_lsn) >= wal.endLsn) return (performance.now() - started) / 1000;
      }
      await sleep(OFFLOAD_POLL_MS);
    }
    throw new Error(`the backup LSN reached ${backupLsn}, not the range end ${formatLsn(wal.endLsn)}, in time`);
  } finally {
    await server.stop();
    rmSync(copyDir, { recursive: true, force: true });
  }
}

/** Sums a counter's samples whose labels include `source="…"`. */
function servedBytes(metricsText: string, source: 'local' | 'remote'): number {
  let total = 0;
  for (const match of metricsText.matchAll(/^walcast_wal_bytes_served_total\{([^}]*)\} (\S+)$/gm)) {
    if (match[1]?.includes(`source="${source}"`) === true) total += Number(match[2]);
  }
  return total;
}

async function scrapeServed(target: ServerTarget): Promise<{ local: number; remote: number }> {
  const text = await (await fetch(target.metricsUrl ?? '')).text();
  return { local: servedBytes(text, 'local'), remote: servedBytes(text, 'remote') };
}

interface Bench {
  readonly options: Options;
  readonly tools: Tools;
  readonly wal: PreparedWal;
  readonly s3: BenchS3;
  readonly remoteArgs: readonly string[];
  readonly restoredDir: string;
  /** The range's bytes before the restored data dir's first local segment: what case (b) must read remotely. */
  readonly remoteExpected: number;
}

/** A fresh walcast process for a case; the remote one with an empty segment cache. */
async function startCase(bench: Bench, which: CaseName): Promise<ServerTarget> {
  const name = `walcast-${bench.options.io}-${which}`;
  if (which === 'local') return startWalcastServer({ dataDir: bench.wal.dataDir, walFiles: bench.wal.walcastFiles, io: bench.options.io, name });
  rmSync(join(bench.restoredDir, REMOTE_CACHE_DIR_NAME), { recursive: true, force: true });
  return startWalcastServer({ dataDir: bench.restoredDir, walFiles: [], io: bench.options.io, extraArgs: bench.remoteArgs, name });
}

/** Checks where the run's bytes came from: all local for (a); for (b) everything before the last segment remote. */
function sourceError(bench: Bench, which: CaseName, served: { local: number; remote: number }, bytes: number): string | undefined {
  const expectedRemote = which === 'local' ? 0 : Math.min(bench.remoteExpected, bytes);
  if (which === 'local' ? served.remote !== 0 : served.remote < expectedRemote) return `served ${served.remote} bytes from object storage, expected ${which === 'local' ? 0 : `at least ${expectedRemote}`}`;
  return undefined;
}

/** One run: a fresh server for the case, the C consumer streaming `bytes` from the range start. */
async function measure(bench: Bench, which: CaseName, repetition: number, bytes: number): Promise<CatchUpRun> {
  const base = { case: which, repetition, bytesExpected: bytes };
  let target: ServerTarget | undefined;
  let consumer: RunningConsumer | undefined;
  try {
    target = await startCase(bench, which);
    await scrapeEventLoopMaxMs(target.metricsUrl);
    const meter = target.beginRun();
    consumer = startConsumer({
      binary: bench.tools.consumer,
      port: target.port,
      connections: 1,
      startLsn: bench.wal.startLsn,
      bytesPerConnection: bytes,
      appName: `bench-remote-catchup-${which}`,
      timeoutMs: RUN_TIMEOUT_MS,
      pgTimelineId: bench.wal.pgTimelineId,
    });
    await consumer.ready;
    meter.restartCpu();
    const s3Before = readCpu(bench.s3.pid)?.ownSeconds ?? 0;
    consumer.start();
    const result = await consumer.done;
    const s3Seconds = (readCpu(bench.s3.pid)?.ownSeconds ?? 0) - s3Before;
    const cost = await meter.finish(1);
    const eventLoopMaxMs = await scrapeEventLoopMaxMs(target.metricsUrl);
    const served = await scrapeServed(target);
    const gigabytes = result.bytesTotal / BYTES_PER_GB;
    const error =
      result.failed !== 0 || result.timedOut || result.bytesTotal !== bytes
        ? result.error || `received ${result.bytesTotal} of ${bytes} bytes${result.timedOut ? ' (timed out)' : ''}`
        : sourceError(bench, which, served, bytes);
    return {
      ...base,
      ok: error === undefined,
      ...(error === undefined ? {} : { error }),
      serverPid: target.pid,
      bytesReceived: result.bytesTotal,
      wallSeconds: result.wallSeconds,
      throughputMBps: result.bytesTotal / BYTES_PER_MB / result.wallSeconds,
      serverCpuSeconds: cost.cpuSeconds,
      serverCpuSecondsPerGB: cost.cpuSeconds / gigabytes,
      s3CpuSecondsPerGB: s3Seconds / gigabytes,
      ...(eventLoopMaxMs === undefined ? {} : { eventLoopMaxMs }),
      bytesServedLocal: served.local,
      bytesServedRemote: served.remote,
    };
  } catch (error) {
    return { ...base, ok: false, error: message(error) };
  } finally {
    await consumer?.release();
    await target?.stop();
  }
}

/** pg_receivewal streams the whole range from a fresh server of the case; every byte is compared. */
async function verify(bench: Bench, which: CaseName): Promise<Verification> {
  const bytesExpected = rangeBytes(bench.wal);
  const dir = mkdtempSync(join(RECEIVE_DIR_PARENT, 'walcast-remote-catchup-'));
  let target: ServerTarget | undefined;
  try {
    const firstSegment = bench.wal.walcastFiles[0];
    if (firstSegment === undefined) throw new Error('the range has no segments');
    // An empty .partial of the first segment makes pg_receivewal start there (reference §4).
    writeFileSync(join(dir, `${segmentName(firstSegment)}.partial`), '');
    target = await startCase(bench, which);
    const started = performance.now();
    const result = await runReceiveWal({ port: target.port, dir, endpos: formatLsn(bench.wal.endLsn - 1n), timeoutMs: RUN_TIMEOUT_MS, extraArgs: ['-d', 'application_name=remote-catchup-verify'] });
    const wallSeconds = (performance.now() - started) / 1000;
    if (result.code !== 0) throw new Error(`pg_receivewal exited ${result.code}${result.timedOut ? ' (timed out)' : ''}: ${result.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    const served = await scrapeServed(target);
    const bytesVerified = matchingBytes(dir, bench.wal);
    const error = bytesVerified !== bytesExpected ? `pg_receivewal's files match the stored WAL for ${bytesVerified} of ${bytesExpected} bytes` : sourceError(bench, which, served, bytesExpected);
    const throughputMBps = bytesExpected / BYTES_PER_MB / wallSeconds;
    return { case: which, ok: error === undefined, ...(error === undefined ? {} : { error }), bytesExpected, bytesVerified, bytesServedRemote: served.remote, throughputMBps };
  } catch (error) {
    return { case: which, ok: false, error: message(error), bytesExpected, bytesVerified: 0 };
  } finally {
    await target?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

type Metric = 'throughputMBps' | 'serverCpuSecondsPerGB' | 's3CpuSecondsPerGB' | 'eventLoopMaxMs';

function byRound(runs: readonly CatchUpRun[], which: CaseName, metric: Metric): (number | undefined)[] {
  const values: (number | undefined)[] = [];
  for (const run of runs) if (run.case === which && run.repetition >= 0) values[run.repetition] = run.ok ? run[metric] : undefined;
  return values;
}

function cell(summary: Summary | undefined, digits: number): string {
  if (summary === undefined) return '–';
  return `${summary.median.toFixed(digits)} (${summary.min.toFixed(digits)}–${summary.max.toFixed(digits)})`;
}

function defined(values: readonly (number | undefined)[]): number[] {
  return values.filter((value): value is number => value !== undefined);
}

function renderTable(runs: readonly CatchUpRun[], verifications: readonly Verification[]): string {
  const lines = [
    '| served from | MB/s | walcast CPU s/GB | s3rver CPU s/GB | event-loop max ms | WAL read from object storage per run | bytes verified |',
    '|---|---:|---:|---:|---:|---:|---:|',
  ];
  for (const which of CASES) {
    const measured = runs.filter((run) => run.case === which && run.repetition >= 0 && run.ok);
    const remoteMiB = summarize(measured.map((run) => (run.bytesServedRemote ?? 0) / MIB));
    const check = verifications.find((entry) => entry.case === which);
    lines.push(
      `| ${which === 'local' ? 'local disk' : 'object storage (s3rver, loopback)'} | ${cell(summarize(defined(byRound(runs, which, 'throughputMBps'))), 0)} | ${cell(summarize(defined(byRound(runs, which, 'serverCpuSecondsPerGB'))), 2)} | ` +
        `${which === 'local' ? '–' : cell(summarize(defined(byRound(runs, which, 's3CpuSecondsPerGB'))), 2)} | ${cell(summarize(defined(byRound(runs, which, 'eventLoopMaxMs'))), 0)} | ` +
        `${remoteMiB === undefined ? '–' : `${remoteMiB.max.toFixed(0)} MiB`} | ${check === undefined ? '–' : `${check.ok ? 'all' : 'MISMATCH'} ${(check.bytesVerified / MIB).toFixed(0)} of ${(check.bytesExpected / MIB).toFixed(0)} MiB`} |`,
    );
  }
  const mbps = pairwiseRatio(byRound(runs, 'remote', 'throughputMBps'), byRound(runs, 'local', 'throughputMBps'));
  const cpu = pairwiseRatio(byRound(runs, 'remote', 'serverCpuSecondsPerGB'), byRound(runs, 'local', 'serverCpuSecondsPerGB'));
  lines.push('', `Object storage / local disk, paired per round: MB/s ${cell(mbps, 2)}×, walcast CPU s/GB ${cell(cpu, 2)}×.`);
  const receiveWal = CASES.map((which) => {
    const rate = verifications.find((entry) => entry.case === which)?.throughputMBps;
    return `${which} ${rate === undefined ? '–' : rate.toFixed(0)} MB/s`;
  });
  lines.push(`pg_receivewal (--no-sync into /dev/shm; the verification stream, one run per case on a fresh server process, wall time including pg_receivewal's own start-up): ${receiveWal.join(', ')}.`);
  return lines.join('\n');
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const tools = buildTools();
  const pgbenchScale = Math.max(1, Math.round(options.mib / WAL_MIB_PER_PGBENCH_SCALE));
  const wal = await prepareWal({ pgbenchScale, maxReplicas: 2, walSegmentMb: options.segmentMib });
  const range = rangeBytes(wal);
  progress(`WAL ready: ${formatLsn(wal.startLsn)}–${formatLsn(wal.endLsn)} (${(range / MIB).toFixed(0)} MiB in ${options.segmentMib} MiB segments, pgbench scale ${pgbenchScale})`);
  const machine = describeMachine(PG_BIN_DIR, REPO_ROOT);
  const s3 = await startBenchS3();
  const remoteArgs = ['--remote-storage', `s3://${s3.bucket}/${REMOTE_PREFIX}`, '--remote-storage-endpoint', s3.endpoint];
  const timelineId = basename(wal.timelineDir);
  const tenantId = basename(dirname(wal.timelineDir));
  const runs: CatchUpRun[] = [];
  const verifications: Verification[] = [];
  let restoredDir: string | undefined;
  try {
    const offloadSeconds = await offloadRange(wal, remoteArgs, tenantId, timelineId, options.mib);
    progress(`offloaded to ${s3.endpoint} (s3rver, objects in ${s3.directory}) in ${offloadSeconds.toFixed(1)} s`);
    restoredDir = await makeTempDir('walcast-bench-restored');
    await runWalcastCli(['timeline', 'restore', '--data-dir', restoredDir, ...remoteArgs, '--tenant-id', tenantId, '--timeline-id', timelineId]);
    const localFiles = segmentFilesIn(join(restoredDir, tenantId, timelineId), wal.startLsn, wal.endLsn, wal.segmentBytes);
    // The range ends on a segment boundary (prepareWal switches segments), so the local segments are its last ones.
    const remoteExpected = Math.max(0, range - localFiles.length * wal.segmentBytes);
    progress(`restored: ${localFiles.length} segment(s) local, ${(remoteExpected / MIB).toFixed(0)} MiB of the range only in the bucket`);
    const bench: Bench = { options, tools, wal, s3, remoteArgs, restoredDir, remoteExpected };
    warmPageCache(wal.walcastFiles);
    for (const which of CASES) {
      const warm = await measure(bench, which, -1, Math.min(WARM_UP_BYTES, range));
      progress(warm.ok ? `warm-up ${which}: ${warm.throughputMBps?.toFixed(0)} MB/s` : `warm-up ${which}: FAILED ${warm.error}`);
    }
    for (let repetition = 0; repetition < options.reps; repetition++) {
      const order = repetition % 2 === 0 ? CASES : [...CASES].reverse();
      for (const which of order) {
        const run = await measure(bench, which, repetition, range);
        runs.push(run);
        const head = `round ${repetition + 1} ${which}`;
        progress(
          run.ok
            ? `${head}: ${run.throughputMBps?.toFixed(0)} MB/s, walcast ${run.serverCpuSecondsPerGB?.toFixed(2)} CPU s/GB, s3rver ${run.s3CpuSecondsPerGB?.toFixed(2)} CPU s/GB, event loop max ${run.eventLoopMaxMs?.toFixed(0)} ms, ${((run.bytesServedRemote ?? 0) / MIB).toFixed(0)} MiB from object storage (walcast pid ${run.serverPid})`
            : `${head}: FAILED ${run.error}`,
        );
      }
    }
    for (const which of CASES) {
      const check = await verify(bench, which);
      verifications.push(check);
      progress(`verify ${which}: ${check.ok ? 'byte-identical' : `FAILED ${check.error}`} (${check.bytesVerified} of ${check.bytesExpected} bytes${check.throughputMBps === undefined ? '' : `, pg_receivewal ${check.throughputMBps.toFixed(0)} MB/s`})`);
    }
  } finally {
    await s3.stop();
    await wal.primary.stop();
    if (restoredDir !== undefined) rmSync(restoredDir, { recursive: true, force: true });
  }
  const heading = [
    `## Catch-up from object storage vs local disk${options.smoke ? ' (smoke run: checks the harness, the numbers mean nothing)' : ''}`,
    '',
    `${machine.date} · ${machine.cpuModel}, ${machine.cores} cores · load ${machine.loadAverage.map((value) => value.toFixed(1)).join(' ')} · Node ${machine.node} · ${machine.postgres} · walcast ${machine.walcastCommit}`,
    `WAL ${(range / MIB).toFixed(0)} MiB in ${options.segmentMib} MiB segments; walcast --io ${options.io}, a fresh process per run; one replica (the discarding C consumer) streams the whole range; ${options.reps} round(s); s3rver on loopback in its own process.`,
    'Cells: median (min–max) over rounds. Bytes verified: one more pg_receivewal stream per case, compared byte for byte with the imported WAL.',
  ].join('\n');
  const markdown = `${heading}\n\n${renderTable(runs, verifications)}\n`;
  process.stdout.write(markdown);
  if (options.outDir !== undefined) {
    mkdirSync(options.outDir, { recursive: true });
    const stamp = machine.date.replaceAll(':', '-').replace(/\.\d+Z$/, 'Z');
    writeFileSync(join(options.outDir, `${stamp}-remote-catchup.json`), `${JSON.stringify({ options, machine, wal: { bytes: range, startLsn: formatLsn(wal.startLsn), endLsn: formatLsn(wal.endLsn), segmentBytes: wal.segmentBytes }, runs, verifications }, null, 2)}\n`);
    writeFileSync(join(options.outDir, 'remote-catchup.md'), markdown);
  }
  const failed = runs.filter((run) => !run.ok).length + verifications.filter((check) => !check.ok).length;
  progress(`done: ${runs.length} runs and ${verifications.length} verifications, ${failed} failed`);
  if (failed > 0 || verifications.length < CASES.length) process.exitCode = 1;
}

await runBenchmark('remote-catchup', main, progress);
