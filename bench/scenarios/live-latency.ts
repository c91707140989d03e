/**
 * Live latency: N replicas connected and caught up; the primary commits at a steady rate; for every commit and
 * every replica, the time from the commit to that replica receiving the bytes up to the commit's flush LSN.
 *
 * The commit's start is taken just before the driver sends its autocommit INSERT (CLOCK_MONOTONIC, the clock
 * the consumer stamps arrivals with), so each figure is an upper bound that includes the INSERT's own execution.
 * The commit's LSN is pg_current_wal_flush_lsn() read right after the commit returned (synchronous_commit=on:
 * the commit record is flushed by then). PostgreSQL's walsender serves its own WAL; walcast follows the primary
 * (a timeline created with `walcast timeline create --upstream`), so its figures include the ingest hop: the
 * primary's walsender, walcast's durable write, then walcast's send. The relay PostgreSQL users would deploy
 * instead, a cascading standby (primary → standby → replicas), is measured the same way as a reference.
 */
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../../src/lsn.js';
import { copyStandby } from '../../test/support/postgres.js';
import { startConsumer, type ConsumerResult, type RunningConsumer } from '../lib/consumer.js';
import { INGEST_TO_PUBLISH_HISTOGRAM, PUBLISH_FANOUT_HISTOGRAM, PUBLISH_TO_SOCKET_HISTOGRAM, bucketDelta, histogramPercentileMs, parseHistogramBuckets, parseHistogramSum, scrapeMetricsText, type Buckets } from '../lib/metrics-histogram.js';
import { SqlClient } from '../lib/sql-client.js';
import { percentile } from '../lib/stats.js';
import { BYTES_PER_GB, type RunRecord } from '../lib/results.js';
import { cascadeTarget, type RunCost, type ServerTarget } from '../lib/servers.js';
import { SCRATCH_DIR } from '../lib/tools.js';
import { settleWriteback } from '../lib/writeback.js';
import { waitForReplay, type BenchContext } from './streaming.js';

/** Replicas first stream whatever is in flight; this pause lets them settle before the first commit. */
const SETTLE_MS = 500;
/** After the last commit, time for every replica to receive it before the consumer stops. */
const DRAIN_MS = 1_000;
/** A following walcast must have ingested up to the start position before replicas can start there. */
const CATCH_UP_TIMEOUT_MS = 30_000;
const CATCH_UP_POLL_MS = 50;
/** u64 connection, u64 end LSN, u64 CLOCK_MONOTONIC ns: the consumer's --latency-log record (little-endian). */
const LATENCY_RECORD_BYTES = 24;
const NANOS_PER_MS = 1e6;
/** The fan-out goal at 100 replicas (issue 13), one of walcast's bucket bounds: publishes over it are counted. */
const FANOUT_GOAL_SECONDS = 0.001;

interface Commit {
  readonly sentNs: bigint;
  readonly flushLsn: Lsn;
}

export async function measureLatencyRun(context: BenchContext, target: ServerTarget, replicas: number, repetition: number): Promise<RunRecord> {
  const base = { scenario: 'live-latency' as const, server: target.name, consumer: 'wal-consumer' as const, replicas, repetition };
  const log = join(SCRATCH_DIR, `latency-${process.pid}-${replicas}-${repetition}.bin`);
  let driver: SqlClient | undefined;
  let consumer: RunningConsumer | undefined;
  let reference: RunningConsumer | undefined;
  const referenceLog = `${log}.reference`;
  try {
    driver = await SqlClient.connect(context.wal.primary.port, { user: 'postgres', database: 'postgres' });
    await driver.query('CREATE TABLE IF NOT EXISTS bench_latency (id bigint)');
    const startLsn = parseLsnOrThrow((await driver.query('SELECT pg_current_wal_flush_lsn()'))[0] ?? '');
    if (target.relay) await waitForServerPosition(target.port, startLsn);
    settleWriteback();
    const meter = target.beginRun();
    consumer = startConsumer({
      binary: context.tools.consumer,
      port: target.port,
      connections: replicas,
      startLsn,
      bytesPerConnection: 0,
      appName: 'bench-latency',
      timeoutMs: context.plan.runTimeoutMs,
      latencyLog: log,
      ...(context.plan.latency.replyEach === true ? { replyEach: true } : {}),
    });
    // For a relay, one replica streams straight from the primary too, so the relay's own share can be told apart.
    if (target.relay) reference = await startReference(context, startLsn, referenceLog);
    await consumer.ready;
    meter.restartCpu();
    consumer.start();
    const streaming = await consumer.streaming;
    if (streaming.failed !== 0) throw new Error(`${streaming.failed} of ${replicas} replicas failed to start`);
    await sleep(SETTLE_MS);
    // One scrape each side (see scrapeMetricsText): the histograms are parsed from the same text.
    const before = await scrapeMetricsText(target.metricsUrl);
    const commits = await commitSteadily(driver, context.plan.latency.commitsPerSecond, context.plan.latency.durationMs);
    await sleep(DRAIN_MS);
    const after = await scrapeMetricsText(target.metricsUrl);
    const histogram = (text: string | undefined, name: string): Buckets | undefined => (text === undefined ? undefined : parseHistogramBuckets(text, name));
    const histogramBefore = histogram(before, PUBLISH_TO_SOCKET_HISTOGRAM);
    const histogramAfter = histogram(after, PUBLISH_TO_SOCKET_HISTOGRAM);
    const fanoutBefore = histogram(before, PUBLISH_FANOUT_HISTOGRAM);
    const fanoutAfter = histogram(after, PUBLISH_FANOUT_HISTOGRAM);
    const fanoutSumBefore = before === undefined ? undefined : parseHistogramSum(before, PUBLISH_FANOUT_HISTOGRAM);
    const fanoutSumAfter = after === undefined ? undefined : parseHistogramSum(after, PUBLISH_FANOUT_HISTOGRAM);
    const ingestBefore = histogram(before, INGEST_TO_PUBLISH_HISTOGRAM);
    const ingestAfter = histogram(after, INGEST_TO_PUBLISH_HISTOGRAM);
    const internal = {
      ...(histogramAfter === undefined ? {} : internalFigures(bucketDelta(histogramBefore, histogramAfter))),
      ...(fanoutAfter === undefined ? {} : fanoutFigures(bucketDelta(fanoutBefore, fanoutAfter), fanoutSumAfter === undefined ? undefined : fanoutSumAfter - (fanoutSumBefore ?? 0))),
      ...(ingestAfter === undefined ? {} : ingestFigures(bucketDelta(ingestBefore, ingestAfter))),
    };
    consumer.stopStreaming();
    reference?.stopStreaming();
    const result = await consumer.done;
    const cost = await meter.finish(replicas);
    await consumer.release();
    await reference?.release();
    const added = reference === undefined ? undefined : addedLatenciesMs(readFileSync(log), readFileSync(referenceLog), commits, replicas);
    return { ...base, ...latencyFigures(result, cost, commitLatenciesMs(readFileSync(log), commits, replicas), commits.length * replicas, added), ...internal };
  } catch (error) {
    return { ...base, ok: false, error: (error instanceof Error ? error.message : String(error)).slice(0, 500), bytesExpected: 0, bytesReceived: 0 };
  } finally {
    driver?.end();
    await consumer?.release();
    await reference?.release();
    rmSync(log, { force: true });
    rmSync(referenceLog, { force: true });
  }
}

/**
 * The cascading standby: a copy of the base backup taken before the range, streaming from the primary, caught
 * up (replayed to the primary's current position, so replay of the whole range does not run during the
 * measurements) before it serves the replicas. `stop` removes its data dir.
 */
export async function startCascade(context: BenchContext, options: { readonly fsync?: boolean } = {}): Promise<ServerTarget> {
  // The primary fixture runs fsync=off and the base backup copies its postgresql.conf: without fsync=on here the
  // standby's walreceiver would skip the fsync before its walsender sends (issue_xlog_fsync returns at once), and the
  // reference would not do the durable write walcast does. Same disk as walcast's data dir (both under the temp dir).
  const base = await copyStandby(context.wal.standbyTemplate, { applicationName: 'bench-cascade', extraConf: { fsync: options.fsync === false ? 'off' : 'on' } });
  const remove = (): void => rmSync(dirname(base.dataDir), { recursive: true, force: true });
  try {
    const standby = await base.startWithUpstream(context.wal.primary.port);
    const primaryPosition = parseLsnOrThrow(await context.wal.primary.sql('SELECT pg_current_wal_flush_lsn()'));
    await waitForReplay(standby, primaryPosition, context.plan.runTimeoutMs);
    return cascadeTarget(standby, async () => {
      await standby.stop({ mode: 'immediate' });
      remove();
    });
  } catch (error) {
    await base.standby?.stop({ mode: 'immediate' });
    remove();
    throw error;
  }
}

/** Percentiles of walcast's publish → socket histogram over the run; only finite bounds are figures. */
function internalFigures(delta: ReturnType<typeof bucketDelta>): Pick<RunRecord, 'internalPublishP50Ms' | 'internalPublishP99Ms'> {
  const p50 = histogramPercentileMs(delta, 50);
  const p99 = histogramPercentileMs(delta, 99);
  return {
    ...(p50 === undefined || !Number.isFinite(p50) ? {} : { internalPublishP50Ms: p50 }),
    ...(p99 === undefined || !Number.isFinite(p99) ? {} : { internalPublishP99Ms: p99 }),
  };
}

/** The same for walcast's fan-out histogram (publish → the last waiting replica's socket), and how many publishes it timed. */
function fanoutFigures(delta: Buckets, sumSeconds: number | undefined): Pick<RunRecord, 'internalFanoutP50Ms' | 'internalFanoutP99Ms' | 'internalFanoutMeanMs' | 'internalFanoutOver1msPublishes' | 'internalPublishes'> {
  const p50 = histogramPercentileMs(delta, 50);
  const p99 = histogramPercentileMs(delta, 99);
  const publishes = delta.get(Number.POSITIVE_INFINITY) ?? 0;
  const withinGoal = delta.get(FANOUT_GOAL_SECONDS);
  return {
    internalPublishes: publishes,
    ...(withinGoal === undefined ? {} : { internalFanoutOver1msPublishes: publishes - withinGoal }),
    ...(sumSeconds === undefined || publishes === 0 ? {} : { internalFanoutMeanMs: (sumSeconds * 1000) / publishes }),
    ...(p50 === undefined || !Number.isFinite(p50) ? {} : { internalFanoutP50Ms: p50 }),
    ...(p99 === undefined || !Number.isFinite(p99) ? {} : { internalFanoutP99Ms: p99 }),
  };
}

/** The same for walcast's ingest hop (upstream message received → published), the part before publish → socket. */
function ingestFigures(delta: Buckets): Pick<RunRecord, 'internalIngestP50Ms' | 'internalIngestP99Ms'> {
  const p50 = histogramPercentileMs(delta, 50);
  const p99 = histogramPercentileMs(delta, 99);
  return {
    ...(p50 === undefined || !Number.isFinite(p50) ? {} : { internalIngestP50Ms: p50 }),
    ...(p99 === undefined || !Number.isFinite(p99) ? {} : { internalIngestP99Ms: p99 }),
  };
}

type LatencyFigures = Omit<RunRecord, 'scenario' | 'server' | 'consumer' | 'replicas' | 'repetition'>;

/** One replica of the primary itself, streaming from `startLsn` and logging arrivals, as the latency reference. */
async function startReference(context: BenchContext, startLsn: Lsn, log: string): Promise<RunningConsumer> {
  const reference = startConsumer({
    binary: context.tools.consumer,
    port: context.wal.primary.port,
    connections: 1,
    startLsn,
    bytesPerConnection: 0,
    appName: 'bench-latency-reference',
    timeoutMs: context.plan.runTimeoutMs,
    latencyLog: log,
  });
  await reference.ready;
  reference.start();
  const streaming = await reference.streaming;
  if (streaming.failed !== 0) throw new Error('the direct reference replica of the primary failed to start');
  return reference;
}

function latencyFigures(result: ConsumerResult, cost: RunCost, latencies: readonly number[], arrivalsExpected: number, added: readonly number[] | undefined): LatencyFigures {
  const missing = arrivalsExpected - latencies.length;
  const ok = result.failed === 0 && missing === 0 && latencies.length > 0;
  // Live streams have no fixed size: what arrived is what was expected.
  const bytesReceived = result.bytesTotal;
  return {
    ok,
    ...(ok ? {} : { error: result.error || `${missing} commit arrivals missing` }),
    bytesExpected: bytesReceived,
    bytesReceived,
    serverCpuSeconds: cost.cpuSeconds,
    ...(cost.mainThreadCpuSeconds === undefined ? {} : { serverMainThreadCpuSeconds: cost.mainThreadCpuSeconds }),
    ...(cost.mainThreadUserSeconds === undefined ? {} : { serverMainThreadUserSeconds: cost.mainThreadUserSeconds }),
    ...(bytesReceived > 0 ? { serverCpuSecondsPerGB: cost.cpuSeconds / (bytesReceived / BYTES_PER_GB) } : {}),
    consumerCpuSeconds: result.cpuUserSeconds + result.cpuSystemSeconds,
    ...(latencies.length === 0
      ? {}
      : { latencyP50Ms: percentile(latencies, 50), latencyP99Ms: percentile(latencies, 99), latencyMaxMs: percentile(latencies, 100), latencySamples: latencies.length }),
    ...(added === undefined || added.length === 0 ? {} : { latencyAddedP50Ms: percentile(added, 50), latencyAddedP99Ms: percentile(added, 99) }),
  };
}

/** Polls the server's IDENTIFY_SYSTEM xlogpos until it reaches `lsn` (a following walcast catching up). */
export async function waitForServerPosition(port: number, lsn: Lsn): Promise<void> {
  const client = await SqlClient.connect(port, { user: 'repl', database: 'replication', replication: 'true', application_name: 'bench-position' });
  try {
    const deadline = Date.now() + CATCH_UP_TIMEOUT_MS;
    for (;;) {
      const position = parseLsnOrThrow((await client.queryRows('IDENTIFY_SYSTEM'))[0]?.[2] ?? '0/0');
      if (position >= lsn) return;
      if (Date.now() > deadline) throw new Error(`server stayed at ${formatLsn(position)}, below ${formatLsn(lsn)}, for ${CATCH_UP_TIMEOUT_MS} ms`);
      await sleep(CATCH_UP_POLL_MS);
    }
  } finally {
    client.end();
  }
}

/** Autocommit INSERTs on a fixed schedule (not back to back), each followed by reading its flush LSN. */
async function commitSteadily(driver: SqlClient, commitsPerSecond: number, durationMs: number): Promise<Commit[]> {
  assert.ok(commitsPerSecond > 0, 'a positive commit rate');
  const periodMs = 1000 / commitsPerSecond;
  const count = Math.max(1, Math.floor((durationMs / 1000) * commitsPerSecond));
  const commits: Commit[] = [];
  const origin = performance.now();
  for (let index = 0; index < count; index++) {
    const due = origin + index * periodMs;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    const sentNs = process.hrtime.bigint();
    await driver.query(`INSERT INTO bench_latency VALUES (${index})`);
    const flushLsn = parseLsnOrThrow((await driver.query('SELECT pg_current_wal_flush_lsn()'))[0] ?? '');
    commits.push({ sentNs, flushLsn });
  }
  return commits;
}

/**
 * For each replica and commit: the time (CLOCK_MONOTONIC ns) of the first arrival whose end LSN reaches the
 * commit's flush LSN, or undefined when it never arrived. Arrivals per replica are in time order, commits in
 * LSN order, so one pass per replica suffices.
 */
export function commitArrivals(log: Buffer, commits: readonly Commit[], replicas: number): (bigint | undefined)[][] {
  assert.equal(log.length % LATENCY_RECORD_BYTES, 0, 'whole latency records');
  const arrivals: { endLsn: bigint; timeNs: bigint }[][] = Array.from({ length: replicas }, () => []);
  for (let offset = 0; offset < log.length; offset += LATENCY_RECORD_BYTES) {
    const connection = Number(log.readBigUInt64LE(offset));
    arrivals[connection]?.push({ endLsn: log.readBigUInt64LE(offset + 8), timeNs: log.readBigUInt64LE(offset + 16) });
  }
  return arrivals.map((replicaArrivals) => {
    let next = 0;
    return commits.map((commit) => {
      while (next < replicaArrivals.length && replicaArrivals[next]!.endLsn < commit.flushLsn) next++;
      return replicaArrivals[next]?.timeNs;
    });
  });
}

/** Commit sent → arrival, in ms, for every (replica, commit) that arrived. */
export function commitLatenciesMs(log: Buffer, commits: readonly Commit[], replicas: number): number[] {
  return commitArrivals(log, commits, replicas).flatMap((perCommit) =>
    perCommit.flatMap((arrival, index) => (arrival === undefined ? [] : [Number(arrival - commits[index]!.sentNs) / NANOS_PER_MS])),
  );
}

/**
 * What a server adds over a replica connected straight to the primary: arrival at each replica minus arrival of
 * the same commit at the reference replica (one direct PostgreSQL connection streaming meanwhile).
 */
export function addedLatenciesMs(log: Buffer, referenceLog: Buffer, commits: readonly Commit[], replicas: number): number[] {
  const reference = commitArrivals(referenceLog, commits, 1)[0] ?? [];
  return commitArrivals(log, commits, replicas).flatMap((perCommit) =>
    perCommit.flatMap((arrival, index) => {
      const direct = reference[index];
      return arrival === undefined || direct === undefined ? [] : [Number(arrival - direct) / NANOS_PER_MS];
    }),
  );
}
