/**
 * The streaming scenarios that read stored WAL: catch-up (one replica, warm cache, with the discarding consumer,
 * with pg_receivewal and with a PostgreSQL 15 standby replaying the range), fan-out (N replicas at once) and cold catch-up (the served files evicted from the
 * page cache first, responsiveness probed meanwhile). Each function measures one run of one server and returns
 * its RunRecord; a failing run is recorded, never thrown, so one broken backend cannot hide the others.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../../src/lsn.js';
import { copyStandby, runReceiveWal, type PgStandby, type StandbyBase } from '../../test/support/postgres.js';
import { startConsumer, type ConsumerResult, type RunningConsumer } from '../lib/consumer.js';
import type { BenchPlan } from '../lib/plan.js';
import { listChildren, readCpu } from '../lib/proc-stats.js';
import { diskDelta, diskStatPath, sampleDisk, type DiskDelta, type DiskSample } from '../lib/disk-stats.js';
import { scrapeEventLoopLag, startProbe, type Probe } from '../lib/responsiveness.js';
import { BYTES_PER_GB, BYTES_PER_MB, type RunRecord, type ScenarioName } from '../lib/results.js';
import type { RunCost, ServerTarget } from '../lib/servers.js';
import { SqlClient } from '../lib/sql-client.js';
import type { Tools } from '../lib/tools.js';
import type { PreparedWal } from '../lib/wal-source.js';
import { settleWriteback } from '../lib/writeback.js';

/** pg_receivewal writes into tmpfs so the client's disk is not what we measure (the recipe). */
const RECEIVE_WAL_PARENT_DIR = '/dev/shm';
/**
 * How often the harness asks the standby for its replay position. One cheap query on an open connection: at
 * 10 ms it adds well under 1% of a core to the standby's side and bounds the timing error to 10 ms.
 */
const REPLAY_POLL_MS = 10;

export interface BenchContext {
  readonly tools: Tools;
  readonly wal: PreparedWal;
  readonly plan: BenchPlan;
  progress(message: string): void;
}

export interface ConsumerRunOptions {
  readonly scenario: ScenarioName;
  readonly replicas: number;
  /** 0 = the whole range. */
  readonly bytesPerReplica: number;
  readonly repetition: number;
  readonly cold: boolean;
  /**
   * Which part of the prepared range each replica streams (default 'all'). `--cold-warm-server` warms a fresh server
   * on the first half and measures the second: a server remembers pages it verified (storage/page-verifier.ts, up to
   * VERIFIED_SEGMENTS_MAX segments), so a measured run over the warm-up's range would checksum nothing.
   */
  readonly part?: RangePart;
}

export type RangePart = 'all' | 'first-half' | 'second-half';

export function rangeBytes(wal: PreparedWal): number {
  return Number(wal.endLsn - wal.startLsn);
}

/** [start, end) of a part of the prepared range; the halves split at a segment boundary. */
export function rangeOf(wal: Pick<PreparedWal, 'startLsn' | 'endLsn' | 'segmentBytes'>, part: RangePart = 'all'): { readonly startLsn: Lsn; readonly endLsn: Lsn } {
  if (part === 'all') return { startLsn: wal.startLsn, endLsn: wal.endLsn };
  const segment = BigInt(wal.segmentBytes);
  const middle = wal.startLsn + ((wal.endLsn - wal.startLsn) / 2n / segment) * segment;
  if (middle <= wal.startLsn || middle >= wal.endLsn) throw new Error(`the range ${formatLsn(wal.startLsn)}-${formatLsn(wal.endLsn)} is too short to split into halves at a segment boundary`);
  return part === 'first-half' ? { startLsn: wal.startLsn, endLsn: middle } : { startLsn: middle, endLsn: wal.endLsn };
}

function failedRecord(options: ConsumerRunOptions, target: ServerTarget, consumer: RunRecord['consumer'], bytesExpected: number, error: unknown): RunRecord {
  const message = error instanceof Error ? error.message : String(error);
  return { scenario: options.scenario, server: target.name, consumer, replicas: options.replicas, repetition: options.repetition, ok: false, error: message.slice(0, 500), bytesExpected, bytesReceived: 0 };
}

/** bench/native/page-cache.c `evict` or `resident` on the files: the share of their bytes in page cache afterwards (undefined: no bytes). */
function pageCacheResidentShare(tools: Tools, verb: 'evict' | 'resident', files: readonly string[]): number | undefined {
  const output = execFileSync(tools.pageCache, [verb, ...files], { encoding: 'utf8' });
  const report = JSON.parse(output) as { bytes: number; residentBytes: number };
  return report.bytes === 0 ? undefined : report.residentBytes / report.bytes;
}

/** Evicts the files the server reads and returns the fraction still cached afterwards (0 = fully cold). */
export function evictFromPageCache(tools: Tools, files: readonly string[]): number {
  return pageCacheResidentShare(tools, 'evict', files) ?? 0;
}

/** Reads the files once so the warm scenarios start from page cache. */
export function warmPageCache(files: readonly string[]): void {
  execFileSync('sh', ['-c', 'cat "$@" > /dev/null', 'sh', ...files]);
}

/**
 * Before every warm run, the served files are read again, so that "warm" means the same for every server in every
 * round. The benchmark machine's kernel runs DAMON proactive reclaim (kdamond, a physical-address "pageout" scheme for
 * pages idle for 12 aggregation intervals of 0.5 s, up to 128 MiB/s; /sys/kernel/mm/damon/admin): between two runs of
 * one server in an interleaved round, pages of its files idle for ~6 s were paged out, a few to a few hundred KiB per
 * segment and a different share for each server, so a "warm" catch-up was partly cold (walcast's prefetch then sends
 * those pieces through its readahead threads; PostgreSQL's walsender reads them inline). Returns the share of the files
 * still resident before the read, recorded with the run (`residentFractionBefore`): how warm the run would have been.
 */
export function rewarmPageCache(tools: Tools, files: readonly string[]): number | undefined {
  if (files.length === 0) return undefined;
  const share = pageCacheResidentShare(tools, 'resident', files);
  warmPageCache(files);
  return share;
}

/** One run of the discarding consumer with `replicas` connections against `target`. */
export async function measureConsumerRun(context: BenchContext, target: ServerTarget, options: ConsumerRunOptions): Promise<RunRecord> {
  const range = rangeOf(context.wal, options.part);
  const partBytes = Number(range.endLsn - range.startLsn);
  const perReplica = options.bytesPerReplica === 0 ? partBytes : Math.min(options.bytesPerReplica, partBytes);
  const bytesExpected = perReplica * options.replicas;
  let probe: Probe | undefined;
  let consumer: RunningConsumer | undefined;
  try {
    settleWriteback();
    const residentFractionBefore = options.cold ? evictFromPageCache(context.tools, target.walFiles) : rewarmPageCache(context.tools, target.walFiles);
    if (options.cold) {
      await scrapeEventLoopLag(target.metricsUrl);
      if (target.speaksFullProtocol) probe = await startProbe(target.port);
    }
    const meter = target.beginRun();
    const diskStat = options.cold && target.walFiles.length > 0 ? diskStatPath(target.walFiles[0]!) : undefined;
    let diskBefore: DiskSample | undefined;
    consumer = startConsumer({
      binary: context.tools.consumer,
      port: target.port,
      connections: options.replicas,
      startLsn: range.startLsn,
      bytesPerConnection: perReplica,
      appName: `bench-${options.scenario}`,
      timeoutMs: context.plan.runTimeoutMs,
      pgTimelineId: context.wal.pgTimelineId,
    });
    await consumer.ready;
    meter.restartCpu();
    diskBefore = sampleDisk(diskStat);
    consumer.start();
    const result = await consumer.done;
    const disk = diskDelta(diskBefore, sampleDisk(diskStat));
    const cost = await meter.finish(options.replicas);
    const probeMaxMs = (await probe?.stop())?.maxMs;
    probe = undefined;
    const loop = options.cold ? await scrapeEventLoopLag(target.metricsUrl) : undefined;
    return consumerRecord(options, target.name, bytesExpected, result, cost, { eventLoopMaxMs: loop?.maxMs, eventLoopP99Ms: loop?.p99Ms, eventLoopDelayMaxMs: loop?.delayMaxMs, eventLoopDelayP99Ms: loop?.delayP99Ms, probeMaxMs, residentFractionBefore, disk });
  } catch (error) {
    return failedRecord(options, target, 'wal-consumer', bytesExpected, error);
  } finally {
    await probe?.stop();
    await consumer?.release();
  }
}

interface Responsiveness {
  readonly eventLoopMaxMs: number | undefined;
  readonly eventLoopP99Ms: number | undefined;
  readonly eventLoopDelayMaxMs: number | undefined;
  readonly eventLoopDelayP99Ms: number | undefined;
  readonly probeMaxMs: number | undefined;
  readonly residentFractionBefore: number | undefined;
  readonly disk?: DiskDelta | undefined;
}

function consumerRecord(options: ConsumerRunOptions, server: string, bytesExpected: number, result: ConsumerResult, cost: RunCost, extra: Responsiveness): RunRecord {
  const ok = result.failed === 0 && !result.timedOut && result.bytesTotal === bytesExpected;
  return {
    scenario: options.scenario,
    server,
    consumer: 'wal-consumer',
    replicas: options.replicas,
    repetition: options.repetition,
    ok,
    ...(ok ? {} : { error: result.error || `received ${result.bytesTotal} of ${bytesExpected} bytes${result.timedOut ? ' (timed out)' : ''}` }),
    bytesExpected,
    bytesReceived: result.bytesTotal,
    wallSeconds: result.wallSeconds,
    setupSeconds: result.setupSeconds,
    connectSeconds: result.connectSeconds,
    throughputMBps: result.bytesTotal / BYTES_PER_MB / result.wallSeconds,
    serverCpuSeconds: cost.cpuSeconds,
    serverCpuSecondsPerGB: cost.cpuSeconds / (result.bytesTotal / BYTES_PER_GB),
    consumerCpuSeconds: result.cpuUserSeconds + result.cpuSystemSeconds,
    ...(cost.memoryBytesPerReplica === undefined ? {} : { memoryBytesPerReplica: cost.memoryBytesPerReplica }),
    ...(extra.eventLoopMaxMs === undefined ? {} : { eventLoopMaxMs: extra.eventLoopMaxMs }),
    ...(extra.eventLoopP99Ms === undefined ? {} : { eventLoopP99Ms: extra.eventLoopP99Ms }),
    ...(extra.eventLoopDelayMaxMs === undefined ? {} : { eventLoopDelayMaxMs: extra.eventLoopDelayMaxMs }),
    ...(extra.eventLoopDelayP99Ms === undefined ? {} : { eventLoopDelayP99Ms: extra.eventLoopDelayP99Ms }),
    ...(extra.probeMaxMs === undefined ? {} : { probeMaxMs: extra.probeMaxMs }),
    ...(extra.residentFractionBefore === undefined ? {} : { residentFractionBefore: extra.residentFractionBefore }),
    ...(extra.disk === undefined ? {} : { diskKibPerRead: extra.disk.kibPerRead, diskReadsInFlight: extra.disk.readsInFlight }),
  };
}

/**
 * One pg_receivewal --no-sync run into tmpfs over the whole range. Its CPU is read from the harness's reaped
 * children (the harness is its parent); the server's from the meter after the walsender has exited.
 */
export async function measureReceiveWalRun(context: BenchContext, target: ServerTarget, repetition: number, verifyBytes: boolean): Promise<RunRecord> {
  const options: ConsumerRunOptions = { scenario: 'catch-up', replicas: 1, bytesPerReplica: 0, repetition, cold: false };
  const bytesExpected = rangeBytes(context.wal);
  const dir = mkdtempSync(join(RECEIVE_WAL_PARENT_DIR, 'walcast-bench-receivewal-'));
  try {
    // An empty .partial of the first segment makes pg_receivewal start there (reference §4).
    const firstSegment = context.wal.walcastFiles[0];
    assert.ok(firstSegment !== undefined, 'the range has segments');
    writeFileSync(join(dir, `${segmentName(firstSegment)}.partial`), '');
    settleWriteback();
    const residentFractionBefore = rewarmPageCache(context.tools, target.walFiles);
    const harnessBefore = readCpu(process.pid)?.reapedChildrenSeconds ?? 0;
    const meter = target.beginRun();
    const started = performance.now();
    const result = await runReceiveWal({ port: target.port, dir, endpos: formatLsn(context.wal.endLsn - 1n), timeoutMs: context.plan.runTimeoutMs });
    const wallSeconds = (performance.now() - started) / 1000;
    const cost = await meter.finish(1, { afterDisconnect: true });
    const consumerCpuSeconds = (readCpu(process.pid)?.reapedChildrenSeconds ?? 0) - harnessBefore;
    if (result.code !== 0) throw new Error(`pg_receivewal exited ${result.code}: ${result.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    const bytesReceived = verifyBytes ? matchingBytes(dir, context.wal) : bytesExpected;
    const ok = bytesReceived === bytesExpected;
    return {
      scenario: 'catch-up',
      server: target.name,
      consumer: 'pg_receivewal',
      replicas: 1,
      repetition,
      ok,
      ...(ok ? {} : { error: `pg_receivewal files match the source for ${bytesReceived} of ${bytesExpected} bytes` }),
      bytesExpected,
      bytesReceived,
      wallSeconds,
      throughputMBps: bytesExpected / BYTES_PER_MB / wallSeconds,
      serverCpuSeconds: cost.cpuSeconds,
      serverCpuSecondsPerGB: cost.cpuSeconds / (bytesExpected / BYTES_PER_GB),
      consumerCpuSeconds,
      ...(residentFractionBefore === undefined ? {} : { residentFractionBefore }),
    };
  } catch (error) {
    return failedRecord(options, target, 'pg_receivewal', bytesExpected, error);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The segment file name of a path, without .partial. */
export function segmentName(path: string): string {
  return (path.split('/').pop() ?? '').replace('.partial', '');
}

/**
 * Bytes of [startLsn, startLsn + limit) that pg_receivewal wrote into `dir` identically to walcast's stored
 * segments (limit: the whole range unless given).
 */
export function matchingBytes(dir: string, wal: PreparedWal, limit = rangeBytes(wal)): number {
  const received = new Map(readdirSync(dir).map((name) => [name.replace('.partial', ''), join(dir, name)]));
  let matching = 0;
  for (const source of wal.walcastFiles) {
    const copy = received.get(segmentName(source));
    if (copy === undefined) break;
    const expected = readFileSync(source);
    const actual = readFileSync(copy);
    // Past the range end the two may differ: PostgreSQL keeps writing WAL, walcast zero-pads its last segment.
    const length = Math.min(expected.length, actual.length, wal.segmentBytes, limit - matching);
    if (!expected.subarray(0, length).equals(actual.subarray(0, length))) break;
    matching += length;
    if (matching >= limit) break;
  }
  return Math.min(matching, limit);
}

/**
 * One PostgreSQL 15 standby replaying the range from `target`: a fresh copy of the base backup taken before the
 * range was produced starts with primary_conninfo pointing at the server under test; the run ends when
 * pg_last_wal_replay_lsn() reaches the range end. Wall time runs from the standby's start (a few hundred ms of
 * start-up, the same for every server) to that moment; the server's CPU is metered meanwhile, the standby's
 * own CPU (startup process, walreceiver, the rest) is reported as the consumer's.
 */
/** Probes watching a standby run (bench/one-replica-probe.ts): called with the standby's postmaster pid. */
export interface StandbyRunHooks {
  /** Right after the standby started (its walreceiver may not be up yet). */
  readonly started?: (standbyPid: number) => void;
  /** Once it replayed the range, before it stops: its processes are still there to read. */
  readonly replayed?: (standbyPid: number) => void;
}

export async function measureStandbyRun(context: BenchContext, target: ServerTarget, repetition: number, hooks: StandbyRunHooks = {}): Promise<RunRecord> {
  const options: ConsumerRunOptions = { scenario: 'catch-up', replicas: 1, bytesPerReplica: 0, repetition, cold: false };
  const bytesExpected = Number(context.wal.endLsn - context.wal.standbyStartLsn);
  let base: StandbyBase | undefined;
  try {
    base = await copyStandby(context.wal.standbyTemplate, { applicationName: 'bench-standby' });
    settleWriteback();
    const residentFractionBefore = rewarmPageCache(context.tools, target.walFiles);
    const meter = target.beginRun();
    const started = performance.now();
    const standby = await base.startWithUpstream(target.port);
    hooks.started?.(standby.pid);
    await waitForReplay(standby, context.wal.endLsn, context.plan.runTimeoutMs);
    const wallSeconds = (performance.now() - started) / 1000;
    // A probe reads the standby's processes (startup, walreceiver) before they stop: per-process scheduler figures.
    hooks.replayed?.(standby.pid);
    const cost = await meter.finish(1);
    const consumerCpuSeconds = clusterCpuSeconds(standby.pid);
    return {
      scenario: 'catch-up',
      server: target.name,
      consumer: 'standby',
      replicas: 1,
      repetition,
      ok: true,
      bytesExpected,
      bytesReceived: bytesExpected,
      wallSeconds,
      throughputMBps: bytesExpected / BYTES_PER_MB / wallSeconds,
      serverCpuSeconds: cost.cpuSeconds,
      serverCpuSecondsPerGB: cost.cpuSeconds / (bytesExpected / BYTES_PER_GB),
      consumerCpuSeconds,
      ...(residentFractionBefore === undefined ? {} : { residentFractionBefore }),
    };
  } catch (error) {
    return failedRecord(options, target, 'standby', bytesExpected, error);
  } finally {
    await base?.standby?.stop({ mode: 'immediate' });
    // A replayed standby holds the whole pgbench database and range: gone after every run, or disks fill up.
    if (base !== undefined) rmSync(dirname(base.dataDir), { recursive: true, force: true });
  }
}

/** Polls pg_last_wal_replay_lsn() on one connection until it reaches `lsn`; connects once hot standby admits it. */
export async function waitForReplay(standby: PgStandby, lsn: Lsn, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let client: SqlClient | undefined;
  let position: Lsn = 0n;
  try {
    while (Date.now() < deadline) {
      try {
        client ??= await SqlClient.connect(standby.port, { user: 'postgres', database: 'postgres', application_name: 'bench-replay-probe' });
        const text = (await client.query('SELECT pg_last_wal_replay_lsn()'))[0];
        if (text !== null && text !== undefined) position = parseLsnOrThrow(text);
        if (position >= lsn) return;
      } catch {
        // Not accepting connections yet ("the database system is starting up"): try again.
        client?.end();
        client = undefined;
      }
      await sleep(REPLAY_POLL_MS);
    }
  } finally {
    client?.end();
  }
  throw new Error(`standby replayed up to ${formatLsn(position)}, not ${formatLsn(lsn)}, within ${timeoutMs} ms; log tail: ${standby.logTail().slice(-600)}`);
}

/** CPU seconds of a cluster started for this run: the postmaster, its live children and the ones it reaped. */
function clusterCpuSeconds(postmasterPid: number): number {
  const own = readCpu(postmasterPid);
  const children = listChildren(postmasterPid).reduce((sum, child) => sum + (readCpu(child.pid)?.ownSeconds ?? 0), 0);
  return (own?.ownSeconds ?? 0) + (own?.reapedChildrenSeconds ?? 0) + children;
}
