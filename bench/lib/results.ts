/**
 * The result model: one RunRecord per measured run, then figures (min/median/max per scenario, consumer,
 * replica count, machine condition and server) and ratios computed pair by pair between servers measured in the
 * same repetition round under the same condition: walcast/PostgreSQL, native/ts, walcast/ceiling, and for live
 * latency walcast/cascading standby.
 */
import type { Condition } from './cpu-load.js';
import { pairwiseRatio, summarize, type Summary } from './stats.js';

/**
 * 'first-catch-up': each server's first warm catch-up of each consumer kind after it started (the warm-up pass, JIT
 * cold), recorded apart from the 'catch-up' rounds that follow it.
 */
export type ScenarioName = 'first-catch-up' | 'catch-up' | 'fan-out' | 'cold-catch-up' | 'live-latency';
export type ConsumerName = 'wal-consumer' | 'pg_receivewal' | 'standby';

/** Decimal units, as disk and network vendors (and PostgreSQL's own docs) count throughput. */
export const BYTES_PER_MB = 1e6;
export const BYTES_PER_GB = 1e9;

export interface RunRecord {
  readonly scenario: ScenarioName;
  readonly server: string;
  readonly consumer: ConsumerName;
  readonly replicas: number;
  readonly repetition: number;
  /** Idle machine, or with the --load spinners running; absent in records that predate conditions = idle. */
  readonly condition?: Condition;
  /** The machine's 1-minute load average when the run ended: other work on it shows here. */
  readonly loadAverage1m?: number;
  readonly ok: boolean;
  readonly error?: string;
  /** WAL payload bytes every replica together had to receive, and what they received (must be equal). */
  readonly bytesExpected: number;
  readonly bytesReceived: number;
  readonly wallSeconds?: number;
  readonly setupSeconds?: number;
  readonly connectSeconds?: number;
  readonly throughputMBps?: number;
  readonly serverCpuSeconds?: number;
  /** Of serverCpuSeconds, the server's main thread (walcast's event loop); live-latency runs of walcast only. */
  readonly serverMainThreadCpuSeconds?: number;
  /** Of that, user mode (JavaScript and the runtime, not the system calls). */
  readonly serverMainThreadUserSeconds?: number;
  readonly serverCpuSecondsPerGB?: number;
  readonly consumerCpuSeconds?: number;
  readonly memoryBytesPerReplica?: number;
  readonly eventLoopMaxMs?: number;
  /** Cold runs: walcast's event-loop histogram p99 over the run (10 ms sampling timer included, see responsiveness.ts). */
  readonly eventLoopP99Ms?: number;
  /** Cold runs: the same max and p99 past the 10 ms sampling timer: the delay work queued on the loop could feel. */
  readonly eventLoopDelayMaxMs?: number;
  readonly eventLoopDelayP99Ms?: number;
  readonly probeMaxMs?: number;
  readonly residentFractionBefore?: number;
  /** Cold runs: the block device's average read size and reads in flight over the run (bench/lib/disk-stats.ts). */
  readonly diskKibPerRead?: number;
  readonly diskReadsInFlight?: number;
  readonly latencyP50Ms?: number;
  readonly latencyP99Ms?: number;
  readonly latencyMaxMs?: number;
  readonly latencySamples?: number;
  /** Arrival at this server's replicas minus arrival at a replica of the primary itself, same commit. */
  readonly latencyAddedP50Ms?: number;
  readonly latencyAddedP99Ms?: number;
  /** walcast's own histogram (bench/lib/metrics-histogram.ts) over the run: publish → socket, bucket upper bounds. */
  readonly internalPublishP50Ms?: number;
  readonly internalPublishP99Ms?: number;
  /** walcast's fan-out histogram over the run: publish → the last waiting replica's socket, bucket upper bounds. */
  readonly internalFanoutP50Ms?: number;
  readonly internalFanoutP99Ms?: number;
  /** The same histogram's mean over the run (its sum over its count: exact, where the quantiles are bucket bounds). */
  readonly internalFanoutMeanMs?: number;
  /**
   * Publishes of the run whose fan-out took over 1 ms (the goal at 100 replicas), from the same histogram's 1 ms
   * bucket. A run times ~300 publishes, so its p99 is its 3rd-slowest publish: this count says how many crossed.
   */
  readonly internalFanoutOver1msPublishes?: number;
  /** walcast's ingest-hop histogram over the run: upstream message received → published, bucket upper bounds. */
  readonly internalIngestP50Ms?: number;
  readonly internalIngestP99Ms?: number;
  /** Publishes walcast timed during the run's commits (a publish may carry several commits). */
  readonly internalPublishes?: number;
}

export const FIGURE_METRICS = [
  'throughputMBps',
  'serverCpuSecondsPerGB',
  'serverCpuSeconds',
  'consumerCpuSeconds',
  'memoryBytesPerReplica',
  'wallSeconds',
  'setupSeconds',
  'connectSeconds',
  'eventLoopMaxMs',
  'eventLoopP99Ms',
  'eventLoopDelayMaxMs',
  'eventLoopDelayP99Ms',
  'probeMaxMs',
  'residentFractionBefore',
  'diskKibPerRead',
  'diskReadsInFlight',
  'latencyP50Ms',
  'latencyP99Ms',
  'latencyMaxMs',
  'latencyAddedP50Ms',
  'latencyAddedP99Ms',
  'internalPublishP50Ms',
  'internalPublishP99Ms',
  'internalFanoutP50Ms',
  'internalFanoutP99Ms',
  'internalFanoutMeanMs',
  'internalFanoutOver1msPublishes',
  'internalIngestP50Ms',
  'internalIngestP99Ms',
  'loadAverage1m',
] as const;
export type FigureMetric = (typeof FIGURE_METRICS)[number];

export interface Figure {
  readonly scenario: ScenarioName;
  readonly consumer: ConsumerName;
  readonly replicas: number;
  readonly condition: Condition;
  readonly server: string;
  readonly runs: number;
  readonly failedRuns: number;
  readonly metrics: Partial<Record<FigureMetric, Summary>>;
}

export interface Ratio {
  readonly scenario: ScenarioName;
  readonly consumer: ConsumerName;
  readonly replicas: number;
  readonly condition: Condition;
  readonly kind: 'walcast/postgres' | 'native/ts' | 'walcast/ceiling' | 'walcast/cascade';
  readonly numerator: string;
  readonly denominator: string;
  readonly metric: (typeof RATIO_METRICS)[number];
  readonly summary: Summary;
}

/** The reference a relay is compared with for live latency: PostgreSQL's cascading standby. */
export const CASCADE_SERVER = 'postgres-cascade';

function conditionOf(record: Pick<RunRecord, 'condition'>): Condition {
  return record.condition ?? 'idle';
}

function groupKey(record: Pick<RunRecord, 'scenario' | 'consumer' | 'replicas' | 'condition'>): string {
  return `${record.scenario}|${record.consumer}|${record.replicas}|${conditionOf(record)}`;
}

export function computeFigures(records: readonly RunRecord[]): Figure[] {
  const groups = new Map<string, RunRecord[]>();
  for (const record of records) {
    const key = `${groupKey(record)}|${record.server}`;
    groups.set(key, [...(groups.get(key) ?? []), record]);
  }
  return [...groups.values()].map((group) => {
    const first = group[0]!;
    const good = group.filter((record) => record.ok);
    const metrics: Partial<Record<FigureMetric, Summary>> = {};
    for (const metric of FIGURE_METRICS) {
      const summary = summarize(good.flatMap((record) => (record[metric] === undefined ? [] : [record[metric]])));
      if (summary !== undefined) metrics[metric] = summary;
    }
    return { scenario: first.scenario, consumer: first.consumer, replicas: first.replicas, condition: conditionOf(first), server: first.server, runs: good.length, failedRuns: group.length - good.length, metrics };
  });
}

const RATIO_METRICS = ['throughputMBps', 'serverCpuSecondsPerGB', 'memoryBytesPerReplica', 'latencyP99Ms'] as const;

/** Every ratio the issue asks for, pairing runs by repetition index inside one scenario/consumer/replica group. */
export function computeRatios(records: readonly RunRecord[]): Ratio[] {
  const ratios: Ratio[] = [];
  const groups = new Map<string, RunRecord[]>();
  for (const record of records) groups.set(groupKey(record), [...(groups.get(groupKey(record)) ?? []), record]);
  for (const group of groups.values()) {
    const servers = [...new Set(group.map((record) => record.server))];
    const walcasts = servers.filter((server) => server.startsWith('walcast-'));
    const natives = walcasts.filter((server) => server.startsWith('walcast-native-'));
    const pairs: [Ratio['kind'], string, string][] = [
      ...walcasts.filter(() => servers.includes('postgres')).map((server): [Ratio['kind'], string, string] => ['walcast/postgres', server, 'postgres']),
      ...natives.filter(() => servers.includes('walcast-ts')).map((server): [Ratio['kind'], string, string] => ['native/ts', server, 'walcast-ts']),
      ...walcasts.filter(() => servers.includes('ceiling')).map((server): [Ratio['kind'], string, string] => ['walcast/ceiling', server, 'ceiling']),
      ...walcasts.filter(() => servers.includes(CASCADE_SERVER)).map((server): [Ratio['kind'], string, string] => ['walcast/cascade', server, CASCADE_SERVER]),
    ];
    for (const [kind, numerator, denominator] of pairs) {
      for (const metric of RATIO_METRICS) {
        const summary = pairwiseRatio(byRepetition(group, numerator, metric), byRepetition(group, denominator, metric));
        const first = group[0]!;
        if (summary !== undefined) ratios.push({ scenario: first.scenario, consumer: first.consumer, replicas: first.replicas, condition: conditionOf(first), kind, numerator, denominator, metric, summary });
      }
    }
  }
  return ratios;
}

function byRepetition(group: readonly RunRecord[], server: string, metric: (typeof RATIO_METRICS)[number]): (number | undefined)[] {
  const values: (number | undefined)[] = [];
  for (const record of group) {
    if (record.server !== server) continue;
    values[record.repetition] = record.ok ? record[metric] : undefined;
  }
  return values;
}
