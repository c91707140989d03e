/**
 * The servers under test, behind one face: walcast (one child process per I/O backend and strategy), the
 * PostgreSQL 15 walsender of the primary that produced the WAL, a cascading standby of that primary (the relay
 * PostgreSQL users deploy instead of walcast, for live latency), and the C sendfile ceiling. Each knows which
 * processes are "the server" for CPU and memory accounting, taken from the kernel (/proc), and which files it
 * reads (for the cold-cache scenario).
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { formatLsn } from '../../src/lsn.js';
import { freePort, type PgCluster, type PgStandby } from '../../test/support/postgres.js';
import { spawnTracked, type Tracked } from './processes.js';
import { findWalsenders, listChildren, readCpu, readPssBytes, readRssBytes, readTaskCpuSeconds, readThreadCpuSeconds } from './proc-stats.js';
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
function singleProcessMeter(pid: number): RunMeter {
  let cpuBefore = sampleProcessCpu(pid);
  const rssBefore = readRssBytes(pid);
  assert.ok(cpuBefore !== undefined && rssBefore !== undefined, `server process ${pid} is not running`);
  return {
    restartCpu: () => {
      cpuBefore = sampleProcessCpu(pid) ?? cpuBefore;
    },
    finish: async (replicas) => {
      const cpuAfter = sampleProcessCpu(pid);
      const rssAfter = readRssBytes(pid);
      assert.ok(cpuAfter !== undefined && rssAfter !== undefined, `server process ${pid} died during the run`);
      assert.ok(cpuBefore !== undefined, 'sampled at start');
      return { cpuSeconds: cpuBetween(cpuBefore, cpuAfter), memoryBytesPerReplica: Math.max(0, rssAfter - rssBefore) / replicas };
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
}

/**
 * Extra node flags for every walcast server the harness starts (profiling: `--cpu-prof --cpu-prof-dir DIR`,
 * `--perf-basic-prof`), split on whitespace.
 */
export const SERVER_NODE_ARGS_ENV = 'WALCAST_BENCH_SERVER_NODE_ARGS';

function serverNodeArgs(): string[] {
  return (process.env[SERVER_NODE_ARGS_ENV] ?? '').split(/\s+/).filter((arg) => arg !== '');
}

/** Starts `walcast serve` as its own child process, so /proc/PID/stat is the server's CPU and nobody else's. */
export async function startWalcastServer(options: WalcastServerOptions): Promise<ServerTarget> {
  const port = await freePort();
  const httpPort = await freePort();
  const name = options.name ?? (options.io === 'ts' ? 'walcast-ts' : `walcast-native-${options.strategy ?? 'default'}`);
  const args = [
    ...serverNodeArgs(),
    '--import', 'tsx', join(options.repoRoot ?? REPO_ROOT, 'src/cli/main.ts'), 'serve',
    '--data-dir', options.dataDir,
    '--listen', `127.0.0.1:${port}`,
    '--io', options.io,
    ...(options.strategy === undefined ? [] : ['--native-strategy', options.strategy]),
    '--max-connections', '4096',
    '--http', `127.0.0.1:${httpPort}`,
    '--log-level', 'warn',
    ...(options.tls === undefined ? [] : ['--tls-cert', options.tls.certFile, '--tls-key', options.tls.keyFile, '--tls-mode', 'prefer']),
    ...(options.extraArgs ?? []),
  ];
  const server = spawnTracked(process.execPath, args, { cwd: options.repoRoot ?? REPO_ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
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
 * PostgreSQL's walsenders: one backend process per replica. CPU = live walsenders' utime+stime at the end plus
 * the growth of the postmaster's reaped-children time (walsenders that already exited). Memory = walsenders'
 * proportional set size (PSS), so shared buffers are not counted once per walsender.
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

function postgresMeter(postmasterPid: number): RunMeter {
  // Walsenders that existed before the run (the cold scenario's probe) are not the run's: neither CPU nor memory.
  const preexisting = new Set(findWalsenders(postmasterPid));
  // Walsenders are single-threaded processes: their own time is read in nanoseconds (schedstat).
  const cpuBaseline = (): Map<number, number> => new Map(findWalsenders(postmasterPid).map((pid) => [pid, readTaskCpuSeconds(pid) ?? 0]));
  let baseline = cpuBaseline();
  let reapedBefore = readCpu(postmasterPid)?.reapedChildrenSeconds;
  assert.ok(reapedBefore !== undefined, 'the postmaster is running');
  return {
    restartCpu: () => {
      baseline = cpuBaseline();
      reapedBefore = readCpu(postmasterPid)?.reapedChildrenSeconds ?? reapedBefore;
    },
    finish: async (replicas, options = {}) => {
      if (options.afterDisconnect === true) await waitForWalsendersToExit(postmasterPid, preexisting);
      let liveSeconds = 0;
      let pssBytes = 0;
      for (const pid of findWalsenders(postmasterPid)) {
        if (preexisting.has(pid)) continue;
        liveSeconds += (readTaskCpuSeconds(pid) ?? 0) - (baseline.get(pid) ?? 0);
        pssBytes += readPssBytes(pid) ?? 0;
      }
      const reapedAfter = readCpu(postmasterPid)?.reapedChildrenSeconds ?? 0;
      const memoryBytesPerReplica = options.afterDisconnect === true ? undefined : pssBytes / replicas;
      return { cpuSeconds: liveSeconds + (reapedAfter - (reapedBefore ?? reapedAfter)), memoryBytesPerReplica };
    },
  };
}

async function waitForWalsendersToExit(postmasterPid: number, preexisting: ReadonlySet<number>): Promise<void> {
  const deadline = Date.now() + WALSENDER_EXIT_TIMEOUT_MS;
  while (Date.now() < deadline) {
    // A zombie (state Z) has not been reaped yet, so its CPU is not in the postmaster's cutime/cstime yet.
    const pending = listChildren(postmasterPid).filter((child) => child.state === 'Z' || (child.title.startsWith('postgres: walsender') && !preexisting.has(child.pid)));
    if (pending.length === 0) return;
    await sleep(READY_POLL_INTERVAL_MS / 10);
  }
}
