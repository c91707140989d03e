/**
 * The servers under test, behind one face: walcast (one child process per I/O backend and strategy), the
 * PostgreSQL 15 walsender of the primary that produced the WAL, a cascading standby of that primary (the relay
 * PostgreSQL users deploy instead of walcast, for live latency), and the C sendfile ceiling. Each knows which
 * processes are "the server" for CPU and memory accounting, taken from the kernel (/proc), and which files it
 * reads (for the cold-cache scenario).
 */
import assert from 'node:assert/strict';
import { openSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { SERVE_NODE_FLAGS } from '../../src/cli/node-flags.js';
import { formatLsn } from '../../src/lsn.js';
import { freePort, type PgCluster, type PgStandby } from '../../test/support/postgres.js';
import { spawnTracked, type Tracked } from './processes.js';
import { findWalsenders, isExiting, isWalsenderTitle, listChildren, readChild, readChildPids, readCpu, readPssBytes, readRssBytes, readTaskCpuSeconds, readThreadCpuSeconds, readThreadUserSeconds } from './proc-stats.js';
import { REPO_ROOT } from './tools.js';
import type { PreparedWal } from './wal-source.js';

/** walcast under tsx starts in ~1-2 s; a cold machine or a busy CI runner may need much longer. */
const SERVER_START_TIMEOUT_MS = 60_000;
const READY_POLL_INTERVAL_MS = 100;
/** After pg_receivewal exits, its walsender exits and is reaped by the postmaster within milliseconds. */
const WALSENDER_EXIT_TIMEOUT_MS = 10_000;

export type ServerFamily = 'walcast' | 'postgres' | 'ceiling';

export interface RunCost {
  /** CPU seconds (user + system) the server's processes spent during the run. */
  readonly cpuSeconds: number;
  /** Of which the main thread's (walcast: the event loop, i.e. its JavaScript and the calls it makes), when known. */
  readonly mainThreadCpuSeconds?: number;
  /** Of that, user mode only (10 ms ticks): JavaScript and the runtime, without the system calls' kernel time. */
  readonly mainThreadUserSeconds?: number;
  /** Memory the server holds per connected replica, bytes; undefined when unmeasurable. */
  readonly memoryBytesPerReplica: number | undefined;
}

export interface RunMeter {
  /**
   * Restarts the CPU clock (memory keeps its baseline): called once every replica has connected, so CPU per GB
   * counts streaming, not connection set-up.
   */
  restartCpu(): void;
  /**
   * Reads the server's accounting. Call while the consumer still holds its connections; pass
   * `afterDisconnect` when the client already left (pg_receivewal), so exited walsenders are waited for.
   */
  finish(replicas: number, options?: { afterDisconnect?: boolean }): Promise<RunCost>;
}

export interface ServerTarget {
  /** Stable identifier used in results: walcast-ts, walcast-native-sendfile, postgres, postgres-cascade, ceiling. */
  readonly name: string;
  readonly family: ServerFamily;
  readonly port: number;
  /** The server's main process (walcast's node process, the postmaster, the ceiling), printed for profiling. */
  readonly pid: number;
  /** A relay between the primary and the replicas (walcast following it, a cascading standby): live latency
   * then also measures one replica streaming straight from the primary, to tell the relay's own share. */
  readonly relay: boolean;
  /** pg_receivewal needs SHOW/IDENTIFY_SYSTEM; the ceiling only speaks START_REPLICATION. */
  readonly speaksFullProtocol: boolean;
  /** The WAL files this server reads for the benchmark range. */
  readonly walFiles: readonly string[];
  /** The HTTP metrics URL when the server exposes one (walcast --http). */
  readonly metricsUrl: string | undefined;
  beginRun(): RunMeter;
  stop(): Promise<void>;
}

/** The thread group's CPU in 10 ms ticks may differ from the per-thread sum by this much from rounding alone. */
const TICK_ROUNDING_SECONDS = 0.02;

/**
 * CPU seconds a process spent between two samples. Per-thread schedstat times are nanosecond-precise but miss
 * threads that exited in between (io_uring workers come and go); /proc/PID/stat covers the whole thread group,
 * exited threads included, but in 10 ms ticks. The precise sum is used when the two agree within rounding.
 */
interface ProcessCpuSample {
  readonly ticksSeconds: number;
  readonly threads: Map<number, number>;
}

function sampleProcessCpu(pid: number): ProcessCpuSample | undefined {
  const ticks = readCpu(pid);
  return ticks === undefined ? undefined : { ticksSeconds: ticks.ownSeconds, threads: readThreadCpuSeconds(pid) };
}

function cpuBetween(before: ProcessCpuSample, after: ProcessCpuSample): number {
  let precise = 0;
  for (const [thread, seconds] of after.threads) precise += seconds - (before.threads.get(thread) ?? 0);
  const ticks = after.ticksSeconds - before.ticksSeconds;
  return Math.abs(ticks - precise) <= TICK_ROUNDING_SECONDS ? precise : ticks;
}

/** Meter for servers that are one process (walcast, the ceiling): CPU delta and RSS growth per replica. */
export function singleProcessMeter(pid: number): RunMeter {
  let cpuBefore = sampleProcessCpu(pid);
  let userBefore = readThreadUserSeconds(pid, pid);
  const rssBefore = readRssBytes(pid);
  assert.ok(cpuBefore !== undefined && rssBefore !== undefined, `server process ${pid} is not running`);
  return {
    restartCpu: () => {
      cpuBefore = sampleProcessCpu(pid) ?? cpuBefore;
      userBefore = readThreadUserSeconds(pid, pid);
    },
    finish: async (replicas) => {
      const cpuAfter = sampleProcessCpu(pid);
      const rssAfter = readRssBytes(pid);
      assert.ok(cpuAfter !== undefined && rssAfter !== undefined, `server process ${pid} died during the run`);
      assert.ok(cpuBefore !== undefined, 'sampled at start');
      const cpuSeconds = cpuBetween(cpuBefore, cpuAfter);
      // One long-lived process whose exited threads stay in its thread-group ticks: a run that served WAL cannot
      // read 0 unless the accounting broke, and a 0 in the results would skew medians and ratios unnoticed.
      if (!(cpuSeconds > 0)) throw new Error(`server process ${pid}'s CPU was not measured (${cpuSeconds} s)`);
      const mainBefore = cpuBefore.threads.get(pid);
      const mainAfter = cpuAfter.threads.get(pid);
      const userAfter = readThreadUserSeconds(pid, pid);
      return {
        cpuSeconds,
        ...(mainBefore === undefined || mainAfter === undefined ? {} : { mainThreadCpuSeconds: mainAfter - mainBefore }),
        ...(userBefore === undefined || userAfter === undefined ? {} : { mainThreadUserSeconds: userAfter - userBefore }),
        memoryBytesPerReplica: Math.max(0, rssAfter - rssBefore) / replicas,
      };
    },
  };
}

async function waitForPort(port: number, server: Tracked, what: string): Promise<void> {
  const deadline = Date.now() + SERVER_START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (server.child.exitCode !== null) throw new Error(`${what} exited with ${server.child.exitCode}: ${server.stderr().trim()}`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect({ host: '127.0.0.1', port }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    await sleep(READY_POLL_INTERVAL_MS);
  }
  await server.stop();
  throw new Error(`${what} did not listen on ${port} within ${SERVER_START_TIMEOUT_MS} ms: ${server.stderr().trim()}`);
}

export interface WalcastServerOptions {
  readonly dataDir: string;
  /** The segment files it serves (for eviction); empty for a following timeline that grows. */
  readonly walFiles: readonly string[];
  readonly io: 'ts' | 'native';
  readonly strategy?: 'sendfile' | 'writev' | 'uring';
  /**
   * PEM certificate and key: the server also accepts TLS (--tls-mode prefer), so one process serves plain and
   * TLS clients and the two can be compared on the same server.
   */
  readonly tls?: { readonly certFile: string; readonly keyFile: string };
  /** The data dir's timeline follows the primary live (a relay), rather than serving an imported range. */
  readonly following?: boolean;
  /** More `walcast serve` flags (the remote catch-up benchmark adds --remote-storage and its endpoint). */
  readonly extraArgs?: readonly string[];
  /** Overrides the result name (walcast-ts, walcast-native-…), to tell two servers of one backend apart. */
  readonly name?: string;
  /**
   * Another checkout to run walcast from (its src/cli/main.ts, its build/ addon): bench/single-stream.ts compares
   * a baseline tree with this one in the same run. Default: this repository.
   */
  readonly repoRoot?: string;
  /** Node flags for this server alone, after the SERVER_NODE_ARGS_ENV ones (bench/hold-servers.ts --node-args). */
  readonly nodeArgs?: readonly string[];
}

/**
 * Extra node flags for every walcast server the harness starts (profiling: `--cpu-prof --cpu-prof-dir DIR`,
 * `--perf-basic-prof`), split on whitespace.
 */
export const SERVER_NODE_ARGS_ENV = 'WALCAST_BENCH_SERVER_NODE_ARGS';

/**
 * Where a walcast server's stdout goes: PREFIX-NAME.txt when this names a PREFIX (V8's --trace-opt / --trace-deopt
 * print there, per server), else nowhere.
 */
export const SERVER_STDOUT_ENV = 'WALCAST_BENCH_SERVER_STDOUT';

/** The log level of every walcast server the harness starts (default warn; info shows e.g. the TS read gate's closures). */
export const SERVER_LOG_LEVEL_ENV = 'WALCAST_BENCH_SERVER_LOG_LEVEL';

function serverStdout(name: string): 'ignore' | number {
  const prefix = process.env[SERVER_STDOUT_ENV];
  // A baseline server's name holds its backend (walcast-base-native/sendfile): its slash is not a directory.
  return prefix === undefined || prefix === '' ? 'ignore' : openSync(`${prefix}-${name.replaceAll('/', '-')}.txt`, 'w');
}

function serverNodeArgs(): string[] {
  return (process.env[SERVER_NODE_ARGS_ENV] ?? '').split(/\s+/).filter((arg) => arg !== '');
}

/** Starts `walcast serve` as its own child process, so /proc/PID/stat is the server's CPU and nobody else's. */
export async function startWalcastServer(options: WalcastServerOptions): Promise<ServerTarget> {
  const port = await freePort();
  const httpPort = await freePort();
  const name = options.name ?? (options.io === 'ts' ? 'walcast-ts' : `walcast-native-${options.strategy ?? 'default'}`);
  const args = [
    // As `npm start` and the walcast command run it (src/cli/node-flags.ts).
    ...SERVE_NODE_FLAGS,
    ...serverNodeArgs(),
    ...(options.nodeArgs ?? []),
    '--import', 'tsx', join(options.repoRoot ?? REPO_ROOT, 'src/cli/main.ts'), 'serve',
    '--data-dir', options.dataDir,
    '--listen', `127.0.0.1:${port}`,
    '--io', options.io,
    ...(options.strategy === undefined ? [] : ['--native-strategy', options.strategy]),
    '--max-connections', '4096',
    '--http', `127.0.0.1:${httpPort}`,
    '--log-level', process.env[SERVER_LOG_LEVEL_ENV] ?? 'warn',
    ...(options.tls === undefined ? [] : ['--tls-cert', options.tls.certFile, '--tls-key', options.tls.keyFile, '--tls-mode', 'prefer']),
    ...(options.extraArgs ?? []),
  ];
  const server = spawnTracked(process.execPath, args, { cwd: options.repoRoot ?? REPO_ROOT, stdio: ['ignore', serverStdout(name), 'pipe'] });
  await waitForPort(port, server, name);
  return {
    name,
    family: 'walcast',
    port,
    pid: server.pid,
    relay: options.following === true,
    speaksFullProtocol: true,
    walFiles: options.walFiles,
    metricsUrl: `http://127.0.0.1:${httpPort}/metrics`,
    beginRun: () => singleProcessMeter(server.pid),
    stop: () => server.stop(),
  };
}

/** NAME=ARGS of a probe's --node-args or --serve-args: the server's name and its flags, split on whitespace. */
export function namedArgs(entry: string, flag: string): { name: string; args: string[] } {
  const separator = entry.indexOf('=');
  if (separator <= 0) throw new Error(`${flag} takes NAME=ARGS, got ${entry}`);
  return { name: entry.slice(0, separator), args: entry.slice(separator + 1).split(/\s+/).filter((arg) => arg !== '') };
}

/** --also-io's value: the backend the --also checkouts serve on. */
export function alsoIoChoice(value: string): 'ts' | 'native' {
  if (value !== 'ts' && value !== 'native') throw new Error(`--also-io takes ts or native, got ${value}`);
  return value;
}

/** walcast from another checkout (--also NAME=DIR) on the held range: the TS backend, or native sendfile. */
export async function startCheckoutServer(wal: PreparedWal, entry: string, io: 'ts' | 'native'): Promise<ServerTarget> {
  const [name, dir] = entry.split('=');
  if (name === undefined || dir === undefined || name === '') throw new Error(`--also takes NAME=DIR, got ${entry}`);
  return startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io, ...(io === 'native' ? { strategy: 'sendfile' as const } : {}), repoRoot: dir, name });
}

/** The C sendfile loop (bench/native/ceiling-server.c) serving walcast's segment files. */
export async function startCeilingServer(binary: string, wal: PreparedWal): Promise<ServerTarget> {
  const server = spawnTracked(binary, [
    '--wal-dir', wal.timelineDir,
    '--end-lsn', formatLsn(wal.endLsn),
    '--timeline', String(wal.pgTimelineId),
    '--segment-bytes', String(wal.segmentBytes),
  ]);
  const lines = createInterface({ input: server.child.stdout! });
  const port = await new Promise<number>((resolve, reject) => {
    lines.once('line', (line) => resolve((JSON.parse(line) as { port: number }).port));
    void server.exited.then((code) => reject(new Error(`ceiling-server exited with ${code}: ${server.stderr()}`)));
  });
  return {
    name: 'ceiling',
    family: 'ceiling',
    port,
    pid: server.pid,
    relay: false,
    speaksFullProtocol: false,
    walFiles: wal.walcastFiles,
    metricsUrl: undefined,
    beginRun: () => singleProcessMeter(server.pid),
    stop: () => server.stop(),
  };
}

/**
 * PostgreSQL's walsenders: one backend process per replica. CPU = the run's walsenders, followed by pid: live
 * ones' schedstat time, exited ones' sampled time or the growth of the postmaster's reaped-children time
 * (postgresMeter). Memory = walsenders' proportional set size (PSS), so shared buffers are not counted once per
 * walsender.
 */
export function postgresTarget(primary: PgCluster, wal: PreparedWal): ServerTarget {
  return {
    name: 'postgres',
    family: 'postgres',
    port: primary.port,
    pid: primary.pid,
    relay: false,
    speaksFullProtocol: true,
    walFiles: wal.postgresFiles,
    metricsUrl: undefined,
    beginRun: () => postgresMeter(primary.pid),
    stop: async () => undefined,
  };
}

/**
 * A cascading standby (streaming from the primary) serving its own replicas: the relay PostgreSQL offers. Its
 * walsenders are measured like the primary's. `stop` stops it and removes its data dir.
 */
export function cascadeTarget(standby: PgStandby, stop: () => Promise<void>): ServerTarget {
  return {
    name: 'postgres-cascade',
    family: 'postgres',
    port: standby.port,
    pid: standby.pid,
    relay: true,
    speaksFullProtocol: true,
    walFiles: [],
    metricsUrl: undefined,
    beginRun: () => postgresMeter(standby.pid),
    stop,
  };
}

/** How often a PostgreSQL meter samples the CPU of the run's walsenders it follows while the run goes on. */
const WALSENDER_SAMPLE_INTERVAL_MS = 20;
/**
 * How often a PostgreSQL meter looks for a new walsender while it follows none that is alive. A client that streams
 * a few MiB and leaves (bench --smoke's pg_receivewal) has a walsender that lives ~20-40 ms of wall time: at the
 * follow interval a loaded harness often saw it never, and its few ms of CPU then only showed in the postmaster's
 * reaped time, whose 10 ms ticks often did not move, so the run read 0. One poll is a read of the postmaster's
 * children file (~10 us of CPU), so polling this often while waiting costs the harness about 1% of a core.
 */
const DISCOVERY_POLL_INTERVAL_MS = 1;
/**
 * At most this many walsenders are sampled on every tick: a fan-out run holds hundreds of connections to its end,
 * where the end-of-run read is exact, and reading each of them 50 times a second would load the harness.
 */
const MAX_SAMPLED_WALSENDERS = 16;
/**
 * While waiting for a client's walsenders to exit, how often they are read: their exit takes milliseconds, and a
 * read during it is their whole CPU (a read before it misses what is left, a few ms for a short run).
 */
const EXIT_POLL_INTERVAL_MS = 1;

interface TrackedWalsender {
  /** Its schedstat CPU at the meter's baseline; 0 for one forked after it. */
  baseline: number;
  /** The latest schedstat read: what it spent up to then, a lower bound once it has exited. */
  last: number;
  /**
   * `last` was read after it had started to exit (zombie, or no memory map left): only the end of the kernel's exit
   * path is missing from it, so it is its whole CPU to well under a millisecond.
   */
  complete: boolean;
}

/** The sampler of the meter running on each postmaster: a new meter stops one a failed run left behind. */
const activeSamplers = new Map<number, () => void>();

/**
 * PostgreSQL's walsenders are processes that come and go with their clients, so a run's CPU is read two ways.
 * Every walsender of the run is tracked by pid from when it is first seen (a sampler polls the postmaster's
 * children every DISCOVERY_POLL_INTERVAL_MS while it follows no live walsender of the run, every
 * WALSENDER_SAMPLE_INTERVAL_MS while it does) and its schedstat CPU is sampled while it lives: nanosecond-
 * precise, exact while it lives, a lower bound once it has exited. One that exited is also in the growth of the
 * postmaster's reaped-children time (cutime + cstime): complete, but in 10 ms ticks, only once the postmaster
 * has reaped it, and mixed with any other child reaped meanwhile. An exited walsender read during its exit is
 * charged that read (all but the last microseconds of its exit); otherwise exited walsenders are charged the
 * larger of their sampled time and the reaped-time growth.
 *
 * The hole this closes (2026-12-06 afternoon A/B, "postgres 0.172 [0.000–0.181]"): after pg_receivewal exits, its
 * walsender spends a moment exiting with no memory map: its cmdline reads empty (no "walsender" title) while it is
 * not a zombie yet and not reaped. Title-based discovery missed it, nor was its time in cutime yet, and the run
 * read 0. Now the run's walsenders are followed by pid until they are gone from /proc, any exiting child is waited
 * for, and a run that still reads 0 throws instead of reporting it.
 *
 * The limit: a walsender that is born and reaped while the sampler does not run at all (its whole life is 20-40 ms
 * for a few MiB) is only in the reaped time, in 10 ms ticks, and a run of under a tick of CPU can then read 0 and
 * throw. No cgroup-free interface has it finer: /proc/PID/stat truncates cutime/cstime to ticks, and exact exit
 * accounting needs a cgroup, taskstats over netlink or perf counters inherited from the postmaster, all needing
 * privileges or tools the benchmark does not assume. The sampler runs on the harness's event loop, which is idle
 * while pg_receivewal runs, so it takes a harness starved of CPU for the walsender's whole life to miss it; a
 * benchmark range (256 MiB and up) keeps its walsender alive for hundreds of sampler ticks.
 */
export function postgresMeter(postmasterPid: number): RunMeter {
  activeSamplers.get(postmasterPid)?.();
  // Walsenders that existed before the run (the cold scenario's probe) are not the run's: neither CPU nor memory.
  const preexisting = new Set(findWalsenders(postmasterPid));
  const tracked = new Map<number, TrackedWalsender>();
  // Children already exiting at the baseline (an earlier run's walsender): their CPU is the earlier run's, but it
  // lands in the reaped time when the postmaster reaps them. Their schedstat, read while they exit, is subtracted.
  let leftovers = new Map<number, number>();
  let reapedBefore = 0;

  const track = (pid: number): void => {
    if (tracked.has(pid) || preexisting.has(pid) || leftovers.has(pid)) return;
    const child = readChild(pid, postmasterPid);
    // A new backend carries the postmaster's command line until it sets its title: looked at again next tick.
    if (child === undefined || isExiting(child) || !isWalsenderTitle(child.title)) return;
    tracked.set(pid, { baseline: 0, last: readTaskCpuSeconds(pid) ?? 0, complete: false });
  };
  /** Reads each tracked walsender's state and CPU; true while any is still there (alive or not reaped yet). */
  const sampleTracked = (): boolean => {
    let present = false;
    for (const [pid, walsender] of tracked) {
      // The state before the CPU: CPU read after an "exiting" state holds everything but the last of the exit.
      const child = readChild(pid, postmasterPid);
      if (child === undefined) continue;
      present = true;
      const seconds = readTaskCpuSeconds(pid);
      if (seconds === undefined) continue;
      walsender.last = seconds;
      if (isExiting(child)) walsender.complete = true;
    }
    return present;
  };
  /**
   * `thorough`: a full /proc scan and each walsender's state (at the end of a run); else a cheap tick, which returns
   * whether the sampler may slow down to WALSENDER_SAMPLE_INTERVAL_MS: a walsender of the run is alive (followed by
   * pid from now on), or the kernel has no children file and each tick has to scan /proc.
   */
  const sample = (thorough: boolean): boolean => {
    const pids = thorough ? undefined : readChildPids(postmasterPid);
    const children = pids ?? listChildren(postmasterPid).map((child) => child.pid);
    for (const pid of children) track(pid);
    if (thorough) {
      sampleTracked();
      return true;
    }
    const following = pids === undefined || children.some((pid) => tracked.has(pid));
    if (tracked.size > MAX_SAMPLED_WALSENDERS) return following;
    for (const [pid, walsender] of tracked) walsender.last = readTaskCpuSeconds(pid) ?? walsender.last;
    return following;
  };
  const takeBaseline = (): void => {
    // The reaped time first: a child seen exiting after this read is not in it yet (unless it is being reaped
    // at this very moment, state X, which is left out below).
    reapedBefore = readCpu(postmasterPid)?.reapedChildrenSeconds ?? Number.NaN;
    assert.ok(!Number.isNaN(reapedBefore), `the postmaster ${postmasterPid} is running`);
    leftovers = new Map();
    for (const child of listChildren(postmasterPid)) {
      if (isExiting(child)) {
        tracked.delete(child.pid);
        if (child.state !== 'X') leftovers.set(child.pid, readTaskCpuSeconds(child.pid) ?? 0);
      }
    }
    for (const [pid, walsender] of tracked) {
      const now = readTaskCpuSeconds(pid);
      // Reaped before the reaped time was read: all of its CPU was before the baseline.
      if (now === undefined || readChild(pid, postmasterPid) === undefined) tracked.delete(pid);
      else walsender.baseline = walsender.last = now;
    }
    sample(true);
    for (const walsender of tracked.values()) walsender.baseline = walsender.last;
  };
  /**
   * Waits until the run's walsenders are gone: no walsender but the preexisting ones, and no child exiting (a
   * zombie, or one still in its exit, which has no title any more), since only once reaped is a child's CPU in the
   * postmaster's reaped time. While tracked ones are there they are read every EXIT_POLL_INTERVAL_MS (a few small
   * files each), so a read during their exit makes them complete; /proc is scanned once they are gone.
   */
  const waitForRunExits = async (): Promise<void> => {
    const deadline = Date.now() + WALSENDER_EXIT_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (sampleTracked()) {
        await sleep(EXIT_POLL_INTERVAL_MS);
        continue;
      }
      const pending = listChildren(postmasterPid).filter((child) => isExiting(child) || (isWalsenderTitle(child.title) && !preexisting.has(child.pid)));
      if (pending.length === 0) return;
      for (const child of pending) track(child.pid);
      await sleep(READY_POLL_INTERVAL_MS / 10);
    }
  };
  takeBaseline();
  // A timer chain rather than an interval: the pace changes with what the last tick found.
  const schedule = (following: boolean): NodeJS.Timeout => setTimeout(() => (timer = schedule(sample(false))), following ? WALSENDER_SAMPLE_INTERVAL_MS : DISCOVERY_POLL_INTERVAL_MS).unref();
  let timer = schedule(false);
  const stopSampler = (): void => {
    clearTimeout(timer);
    if (activeSamplers.get(postmasterPid) === stopSampler) activeSamplers.delete(postmasterPid);
  };
  activeSamplers.set(postmasterPid, stopSampler);

  return {
    restartCpu: takeBaseline,
    finish: async (replicas, options = {}) => {
      stopSampler();
      sample(true);
      if (options.afterDisconnect === true) await waitForRunExits();
      const reapedAfter = readCpu(postmasterPid)?.reapedChildrenSeconds;
      assert.ok(reapedAfter !== undefined, `the postmaster ${postmasterPid} died during the run`);
      let liveSeconds = 0;
      let pssBytes = 0;
      let complete = 0;
      let incomplete = 0;
      let incompleteCount = 0;
      let exitedBaselines = 0;
      for (const [pid, walsender] of tracked) {
        // After the reaped time was read: one still listed here is not in it.
        const child = readChild(pid, postmasterPid);
        if (child !== undefined) {
          liveSeconds += (readTaskCpuSeconds(pid) ?? walsender.last) - walsender.baseline;
          if (!isExiting(child)) pssBytes += readPssBytes(pid) ?? 0;
          continue;
        }
        exitedBaselines += walsender.baseline;
        if (walsender.complete) {
          complete += walsender.last - walsender.baseline;
        } else {
          incomplete += walsender.last - walsender.baseline;
          incompleteCount += 1;
        }
      }
      let leftoverSeconds = 0;
      for (const [pid, seconds] of leftovers) if (readChild(pid, postmasterPid) === undefined) leftoverSeconds += seconds;
      // What the postmaster reaped during the run beyond what is accounted for precisely: the exited walsenders not
      // sampled to their end, one born and gone between two samples, and any other child that ended meanwhile
      // (an autovacuum worker), in 10 ms ticks. Only taken when some exited walsender is not otherwise accounted.
      const reapedSeconds = reapedAfter - reapedBefore - leftoverSeconds - exitedBaselines - complete;
      const needReaped = incompleteCount > 0 || tracked.size === 0;
      const cpuSeconds = liveSeconds + complete + (needReaped ? Math.max(incomplete, reapedSeconds, 0) : 0);
      if (!(cpuSeconds > 0)) {
        throw new Error(`PostgreSQL's walsender CPU was not measured (${tracked.size} walsenders seen, live ${liveSeconds.toFixed(4)} s, exited ${(complete + incomplete).toFixed(4)} s sampled, reaped ${reapedSeconds.toFixed(4)} s)`);
      }
      const memoryBytesPerReplica = options.afterDisconnect === true ? undefined : pssBytes / replicas;
      return { cpuSeconds, memoryBytesPerReplica };
    },
  };
}
