/**
 * One-replica probe (issue 13): catch-ups of one consumer (a replaying standby, or pg_receivewal --no-sync into
 * /dev/shm) from walcast (this tree and --also checkouts, native sendfile) and from PostgreSQL's walsender, round-robin,
 * each server warmed with one unmeasured run first. Per run it prints the server's and the consumer's CPU s/GB (and MB/s,
 * which a loaded machine makes meaningless). Optionally each measured run is watched: `--strace DIR` attaches
 * `strace -c -f` to the server (PostgreSQL: the postmaster, -f follows the walsender it forks; WALCAST_PROBE_STRACE_ARGS
 * replaces `-c`, e.g. "-tt -e trace=sendfile,sendto,epoll_pwait" for a sequence), `--perf DIR` attaches `perf record -g`.
 * With WALCAST_BENCH_SERVER_STDOUT=PREFIX the walcast servers' stdout goes to PREFIX-NAME.txt (for V8's --trace-opt
 * --trace-deopt in WALCAST_BENCH_SERVER_NODE_ARGS) and the line each run starts at is printed, so compiles and
 * deoptimizations can be counted per catch-up (docs/benchmarks.md, "One replica: consumer cost and JIT warm-up").
 *
 *   node --import tsx bench/one-replica-probe.ts --mib 512 --rounds 4 [--consumer standby|pg_receivewal|wal-consumer]
 *     [--strace DIR | --perf DIR] [--also NAME=DIR]... [--also-io ts|native] [--node-args NAME=ARGS]... [--load N] [--sched]
 *     [--strace-walreceiver DIR] [--writev] [--ts] [--warm-ups N]
 *
 * --node-args NAME=ARGS adds this tree's walcast (native sendfile) run with those node flags as NAME (as
 * bench/hold-servers.ts), e.g. `--node-args stgc=--single-threaded-gc`: an A/B of a V8 or Node setting on fresh servers
 * with a real consumer.
 * --warm-ups N runs N unmeasured catch-ups per server first (default 1).
 *
 * --writev adds this tree's walcast on the native writev strategy (copying send, as the walsender) as `new-writev`;
 * --ts adds this tree's walcast on the TypeScript backend as `new-ts`; --also-io ts serves the --also checkouts on it too
 * (default: native sendfile).
 *
 * --load N keeps N busy-spinning processes running for the whole probe (bench/lib/cpu-load.ts, as bench/run.ts's loaded
 * rounds); --sched prints per thread, for each measured run (pg_receivewal: walcast's threads only), CPU, run-queue wait, timeslices and voluntary /
 * involuntary switches of the server (walcast's threads by name; PostgreSQL's walsender), the standby's processes
 * (startup, walreceiver ...; read after replay, before they stop) and the spinners (bench/lib/sched-stats.ts).
 * --strace-walreceiver DIR attaches `strace -c` to the standby's walreceiver (found by polling the standby's children
 * every 5 ms, so its first milliseconds may be missed) until replay ends: how it receives (recvfrom calls, EAGAINs,
 * polls, writes, fsyncs).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { formatLsn } from '../src/lsn.js';
import { planFor } from './lib/plan.js';
import { alsoIoChoice, namedArgs, postgresTarget, startCheckoutServer, startWalcastServer, type ServerTarget } from './lib/servers.js';
import { CpuLoad } from './lib/cpu-load.js';
import { listChildren } from './lib/proc-stats.js';
import { scrapeMetricsText } from './lib/metrics-histogram.js';
import { formatSched, readThreads, threadDelta, type TaskSched } from './lib/sched-stats.js';
import { buildTools } from './lib/tools.js';
import { prepareWal } from './lib/wal-source.js';
import { measureConsumerRun, measureReceiveWalRun, measureStandbyRun, warmPageCache, type BenchContext } from './scenarios/streaming.js';
import type { RunRecord } from './lib/results.js';

const { values } = parseArgs({ options: { mib: { type: 'string', default: '512' }, rounds: { type: 'string', default: '2' }, strace: { type: 'string' }, perf: { type: 'string' }, consumer: { type: 'string', default: 'standby' }, also: { type: 'string', multiple: true, default: [] }, load: { type: 'string', default: '0' }, sched: { type: 'boolean', default: false }, 'strace-walreceiver': { type: 'string' }, writev: { type: 'boolean', default: false }, ts: { type: 'boolean', default: false }, 'node-args': { type: 'string', multiple: true, default: [] }, 'also-io': { type: 'string', default: 'native' }, 'warm-ups': { type: 'string', default: '1' } } });
if (values.consumer !== 'standby' && values.consumer !== 'pg_receivewal' && values.consumer !== 'wal-consumer') throw new Error(`--consumer takes standby, pg_receivewal or wal-consumer, got ${values.consumer}`);
const wal = await prepareWal({ pgbenchScale: Math.max(1, Math.round(Number(values.mib) / 12.4)), maxReplicas: 4 });
const progress = (message: string): void => void process.stderr.write(`${message}\n`);
const context: BenchContext = { tools: buildTools(), wal, plan: planFor('full'), progress };
const targets: ServerTarget[] = [];
/** A pg_receivewal run, or one of the discarding C wal-consumer (the server-bound case: no consumer CPU to wait on). */
function otherConsumerRun(target: ServerTarget, round: number): Promise<RunRecord> {
  if (values.consumer === 'pg_receivewal') return measureReceiveWalRun(context, target, round, false);
  return measureConsumerRun(context, target, { scenario: 'catch-up', replicas: 1, bytesPerReplica: 0, repetition: round, cold: false });
}
const load = await CpuLoad.start(Number(values.load));
if (load.processes > 0) await load.set('loaded');
/** --sched: per-thread CPU, run-queue wait and switches of the server, the standby's processes and the spinners over one run. */
function schedSnapshot(target: ServerTarget): Map<number, Map<number, TaskSched>> {
  const pids = [...load.pids, ...(target.family === 'walcast' ? [target.pid] : [])];
  return new Map(pids.map((pid) => [pid, readThreads(pid)]));
}
function schedReport(target: ServerTarget, before: Map<number, Map<number, TaskSched>>, standbyPid: number | undefined): void {
  const lines: string[] = [];
  for (const [pid, threads] of before) for (const [name, task] of threadDelta(pid, threads, readThreads(pid))) lines.push(formatSched(`  ${pid === target.pid ? 'server' : 'spinner'} ${name}`, task));
  // PostgreSQL's walsender is a fresh child of the postmaster: its totals are the run's.
  if (target.family !== 'walcast') for (const child of listChildren(target.pid).filter((entry) => entry.title.includes('walsender'))) for (const task of readThreads(child.pid).values()) lines.push(formatSched(`  server walsender [${child.pid}]`, task));
  if (standbyPid !== undefined) for (const child of listChildren(standbyPid)) for (const task of readThreads(child.pid).values()) lines.push(formatSched(`  standby ${child.title.replace(/^postgres: /, '').slice(0, 40)} [${child.pid}]`, task));
  progress(lines.join('\n'));
}
/** The TS backend's read counters (src/io/sync-read-gate.ts) from a walcast server's /metrics; undefined for others. */
async function tsReadCounts(target: ServerTarget): Promise<{ eventLoop: number; pool: number; slow: number } | undefined> {
  const text = await scrapeMetricsText(target.metricsUrl);
  const value = (pattern: RegExp): number | undefined => {
    const match = text?.match(pattern);
    return match?.[1] === undefined ? undefined : Number(match[1]);
  };
  const eventLoop = value(/^walcast_ts_chunk_reads_total\{thread="event_loop"\} (\d+)$/m);
  const pool = value(/^walcast_ts_chunk_reads_total\{thread="pool"\} (\d+)$/m);
  const slow = value(/^walcast_ts_sync_read_slow_total (\d+)$/m);
  return eventLoop === undefined || pool === undefined || slow === undefined ? undefined : { eventLoop, pool, slow };
}
/** --strace-walreceiver DIR: `strace -c` (WALCAST_PROBE_STRACE_ARGS replaces it) on the standby's walreceiver, from the moment it appears to replay's end. */
let walreceiverTracer: ChildProcess | undefined;
async function straceWalreceiver(standbyPid: number, file: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const receiver = listChildren(standbyPid).find((child) => child.title.includes('walreceiver'));
    if (receiver !== undefined) {
      walreceiverTracer = spawn('strace', [...(process.env.WALCAST_PROBE_STRACE_ARGS ?? '-c').split(' '), '-o', file, '-p', String(receiver.pid)], { stdio: 'ignore' });
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
function stopWalreceiverTrace(): void {
  walreceiverTracer?.kill('SIGINT');
  walreceiverTracer = undefined;
}
try {
  const alsoIo = alsoIoChoice(values['also-io']);
  for (const entry of values.also) targets.push(await startCheckoutServer(wal, entry, alsoIo));
  targets.push(await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'native', strategy: 'sendfile', name: 'new' }));
  for (const entry of values['node-args']) {
    const { name, args } = namedArgs(entry, '--node-args');
    targets.push(await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'native', strategy: 'sendfile', name, nodeArgs: args }));
  }
  if (values.writev) targets.push(await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'native', strategy: 'writev', name: 'new-writev' }));
  if (values.ts) targets.push(await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'ts', name: 'new-ts' }));
  targets.push(postgresTarget(wal.primary, wal));
  warmPageCache([...wal.walcastFiles, ...wal.postgresFiles]);
  progress(`range ${formatLsn(wal.standbyStartLsn)}-${formatLsn(wal.endLsn)}`);
  const gb = Number(wal.endLsn - wal.standbyStartLsn) / 2 ** 30;
  const warmUps = Number(values['warm-ups']);
  if (!Number.isInteger(warmUps) || warmUps < 0 || warmUps > 20) throw new Error(`--warm-ups takes 0..20, got ${values['warm-ups']}`);
  for (let warmUp = 0; warmUp < warmUps; warmUp++) for (const target of targets) {
    const warm = values.consumer === 'standby' ? await measureStandbyRun(context, target, 0) : await otherConsumerRun(target, 0);
    // The consumer's CPU too: a fresh walcast server checksums every page during its first catch-up (later ones find
    // the pages verified), so warm-up against measured runs shows what the checks ahead cost the consumer.
    progress(`warm-up ${target.name}: ${warm.ok ? `server ${warm.serverCpuSecondsPerGB?.toFixed(3)} s/GB, consumer ${((warm.consumerCpuSeconds ?? 0) / gb).toFixed(3)} s/GB` : warm.error}`);
  }
  for (let round = 1; round <= Number(values.rounds); round++) {
    for (let turn = 0; turn < targets.length; turn++) {
      const target = targets[(turn + round) % targets.length];
      if (target === undefined) continue;
      let tracer: ChildProcess | undefined;
      if (values.strace !== undefined) {
        tracer = spawn('strace', [...(process.env.WALCAST_PROBE_STRACE_ARGS ?? '-c').split(' '), '-f', '-o', `${values.strace}/strace-${target.name}-${round}.txt`, '-p', String(target.pid)], { stdio: 'ignore' });
        await new Promise((resolve) => setTimeout(resolve, 500));
      } else if (values.perf !== undefined) {
        tracer = spawn('perf', ['record', '-g', '-o', `${values.perf}/perf-${target.name}-${round}.data`, '-p', String(target.pid)], { stdio: 'ignore' });
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
      const traceFile = `${process.env.WALCAST_BENCH_SERVER_STDOUT ?? ''}-${target.name}.txt`;
      // With the servers' stdout captured (e.g. --trace-opt): where each run starts in it.
      if (process.env.WALCAST_BENCH_SERVER_STDOUT !== undefined && existsSync(traceFile)) progress(`#${round} ${target.name} starts at line ${readFileSync(traceFile, 'utf8').split('\n').length} of ${traceFile}`);
      const before = values.sched ? schedSnapshot(target) : undefined;
      const readsBefore = await tsReadCounts(target);
      const record = values.consumer === 'standby' ? await measureStandbyRun(context, target, round, {
            started: (standbyPid) => { if (values['strace-walreceiver'] !== undefined) void straceWalreceiver(standbyPid, `${values['strace-walreceiver']}/walreceiver-${target.name}-${round}.txt`); },
            replayed: (standbyPid) => { if (before !== undefined) schedReport(target, before, standbyPid); stopWalreceiverTrace(); },
          }) : await otherConsumerRun(target, round);
      // pg_receivewal: the run's totals once it has ended (PostgreSQL's walsender is reaped by then: its row is missing).
      if (before !== undefined && values.consumer !== 'standby') schedReport(target, before, undefined);
      if (tracer !== undefined) {
        tracer.kill('SIGINT');
        await new Promise((resolve) => tracer.once('exit', resolve));
      }
      const readsAfter = await tsReadCounts(target);
      if (readsBefore !== undefined && readsAfter !== undefined) progress(`  ts reads: event loop ${readsAfter.eventLoop - readsBefore.eventLoop}, pool ${readsAfter.pool - readsBefore.pool}, gate closures ${readsAfter.slow - readsBefore.slow}`);
      progress(`#${round} ${target.name}: ${record.ok ? `server ${record.serverCpuSecondsPerGB?.toFixed(3)} s/GB, consumer ${((record.consumerCpuSeconds ?? 0) / gb).toFixed(3)} s/GB, ${record.throughputMBps?.toFixed(0)} MB/s` : record.error}`);
    }
  }
} finally {
  await Promise.all(targets.map((target) => target.stop()));
  await wal.primary.stop();
  await load.stop();
}
