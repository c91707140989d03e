/**
 * Renders one run's results as the markdown table bench/results/latest.md: the machine, then per scenario and
 * condition (idle, loaded) a conditions line and a row per server with median [min–max] of every figure and the
 * pairwise ratios, as median× [min–max] over rounds, against PostgreSQL, the TS backend, the C ceiling and (live
 * latency) the cascading standby. Pure: results in, text out.
 */
import type { MicroResult } from '../scenarios/micro.js';
import type { Condition } from './cpu-load.js';
import type { MachineDescription } from './machine.js';
import type { Figure, FigureMetric, Ratio } from './results.js';
import type { Summary } from './stats.js';

export interface BenchReport {
  readonly mode: string;
  readonly note: string;
  readonly machine: MachineDescription;
  /** Busy-spinning processes in the loaded rounds (0: idle rounds only). */
  readonly load: number;
  readonly scenarios: readonly string[];
  readonly wal: { readonly bytes: number; readonly startLsn: string; readonly endLsn: string; readonly pgbenchScale: number; readonly generateSeconds: number; readonly importSeconds: number };
  readonly servers: readonly { readonly name: string; readonly status: 'ok' | 'unavailable'; readonly reason?: string }[];
  readonly figures: readonly Figure[];
  readonly ratios: readonly Ratio[];
  readonly micro: readonly MicroResult[];
  readonly notes: readonly string[];
  readonly elapsedSeconds: number;
}

function format(value: number, digits: number): string {
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function cell(summary: Summary | undefined, digits: number, scale = 1): string {
  if (summary === undefined) return 'n/a';
  if (summary.runs === 1) return format(summary.median * scale, digits);
  return `${format(summary.median * scale, digits)} [${format(summary.min * scale, digits)}–${format(summary.max * scale, digits)}]`;
}

/** A ratio as `median× [min–max]`: the ratios were computed round by round, then summarized. */
export function ratioText(summary: Summary): string {
  if (summary.runs === 1) return `${format(summary.median, 2)}×`;
  return `${format(summary.median, 2)}× [${format(summary.min, 2)}–${format(summary.max, 2)}]`;
}

function ratioCell(ratios: readonly Ratio[], figure: Figure, kind: Ratio['kind'], metric: Ratio['metric']): string {
  const found = ratios.find((ratio) => ratio.kind === kind && ratio.metric === metric && ratio.numerator === figure.server && ratio.scenario === figure.scenario && ratio.consumer === figure.consumer && ratio.replicas === figure.replicas && ratio.condition === figure.condition);
  return found === undefined ? '' : ratioText(found.summary);
}

const SCENARIO_TITLES: Record<string, string> = {
  'first-catch-up': "First catch-up after start: each server's first warm catch-up of each consumer kind (the warm-up pass: walcast checks every page of the range against its CRC-32C on the first one, and V8 is still compiling its send path)",
  'catch-up': 'Catch-up: one replica streams the whole range from warm page cache (discarding C consumer, pg_receivewal, a replaying standby); the served files are read again before every run (DAMON reclaim, see bench/scenarios/streaming.ts rewarmPageCache)',
  'fan-out': 'Fan-out: N replicas stream the same WAL at once (aggregate)',
  'cold-catch-up': 'Cold catch-up: one replica, served files evicted from page cache first',
  'live-latency': 'Live latency: commit on the primary → bytes at every waiting replica',
};

function streamingTable(figures: readonly Figure[], ratios: readonly Ratio[], extra: readonly [string, FigureMetric, number, number][]): string[] {
  const headers = ['server', 'consumer', 'replicas', 'MB/s', 'server CPU s/GB', 'consumer CPU s', ...extra.map(([title]) => title), 'vs PostgreSQL (MB/s, CPU/GB)', 'native/ts (MB/s)', 'vs ceiling (MB/s)', 'runs'];
  const lines = [`| ${headers.join(' | ')} |`, `|${headers.map(() => '---').join('|')}|`];
  for (const figure of figures) {
    const vsPostgres = [ratioCell(ratios, figure, 'walcast/postgres', 'throughputMBps'), ratioCell(ratios, figure, 'walcast/postgres', 'serverCpuSecondsPerGB')].filter((text) => text !== '').join(', ');
    const row = [
      figure.server,
      figure.consumer,
      String(figure.replicas),
      cell(figure.metrics.throughputMBps, 0),
      cell(figure.metrics.serverCpuSecondsPerGB, 3),
      cell(figure.metrics.consumerCpuSeconds, 2),
      ...extra.map(([, metric, digits, scale]) => cell(figure.metrics[metric], digits, scale)),
      vsPostgres,
      ratioCell(ratios, figure, 'native/ts', 'throughputMBps'),
      ratioCell(ratios, figure, 'walcast/ceiling', 'throughputMBps'),
      figure.failedRuns > 0 ? `${figure.runs} (+${figure.failedRuns} failed)` : String(figure.runs),
    ];
    lines.push(`| ${row.join(' | ')} |`);
  }
  return lines;
}

function latencyTable(figures: readonly Figure[], ratios: readonly Ratio[]): string[] {
  const lines = ['| server | replicas | p50 ms | p99 ms | max ms | added vs direct replica p50 / p99 ms | walcast publish → socket p50 / p99 ms (/metrics) | walcast publish → last socket p50 / p99 ms (/metrics) | walcast ingest hop p50 / p99 ms (/metrics) | p99 vs cascading standby | server CPU s | runs |', '|---|---|---|---|---|---|---|---|---|---|---|---|'];
  for (const figure of figures) {
    const runs = figure.failedRuns > 0 ? `${figure.runs} (+${figure.failedRuns} failed)` : String(figure.runs);
    lines.push(`| ${figure.server} | ${figure.replicas} | ${cell(figure.metrics.latencyP50Ms, 2)} | ${cell(figure.metrics.latencyP99Ms, 2)} | ${cell(figure.metrics.latencyMaxMs, 2)} | ${addedCell(figure)} | ${pairCell(figure.metrics.internalPublishP50Ms, figure.metrics.internalPublishP99Ms)} | ${pairCell(figure.metrics.internalFanoutP50Ms, figure.metrics.internalFanoutP99Ms)} | ${pairCell(figure.metrics.internalIngestP50Ms, figure.metrics.internalIngestP99Ms)} | ${ratioCell(ratios, figure, 'walcast/cascade', 'latencyP99Ms')} | ${cell(figure.metrics.serverCpuSeconds, 2)} | ${runs} |`);
  }
  return lines;
}

/** The line above every table: under what load it was measured, on what machine, how busy it was. */
function conditionsLine(report: BenchReport, condition: Condition, figures: readonly Figure[]): string {
  const machine = report.machine;
  const load = condition === 'idle' ? 'idle (no background load started)' : `loaded (${report.load} busy-spinning process${report.load === 1 ? '' : 'es'}, --load ${report.load})`;
  const averages = figures.flatMap((figure) => (figure.metrics.loadAverage1m === undefined ? [] : [figure.metrics.loadAverage1m]));
  const during = averages.length === 0 ? '' : ` · 1-min load average ${format(Math.min(...averages.map((summary) => summary.min)), 1)}–${format(Math.max(...averages.map((summary) => summary.max)), 1)} during these runs`;
  return `Conditions: ${load} · machine: ${machine.cpuModel}, ${machine.cores} cores · load average ${machine.loadAverage.join(' / ')} at start${during}`;
}

function addedCell(figure: Figure): string {
  return pairCell(figure.metrics.latencyAddedP50Ms, figure.metrics.latencyAddedP99Ms);
}

function pairCell(p50: Summary | undefined, p99: Summary | undefined): string {
  return p50 === undefined || p99 === undefined ? '' : `${cell(p50, 2)} / ${cell(p99, 2)}`;
}

function microTable(micro: readonly MicroResult[]): string[] {
  const lines = ['| benchmark | backend | ops/s | mean µs | p99 µs | implied MB/s |', '|---|---|---|---|---|---|'];
  for (const result of micro) {
    if (result.error !== undefined) {
      lines.push(`| ${result.name} | ${result.backend} | n/a: ${result.error.replaceAll('|', '/').slice(0, 120)} | | | |`);
      continue;
    }
    const implied = result.impliedMBps === undefined ? '' : format(result.impliedMBps, 0);
    lines.push(`| ${result.name} | ${result.backend} | ${format(result.opsPerSecond ?? 0, 0)} | ${format(result.meanMicros ?? 0, 2)} | ${format(result.p99Micros ?? 0, 2)} | ${implied} |`);
  }
  return lines;
}

const SCENARIO_EXTRAS: Record<string, readonly [string, FigureMetric, number, number][]> = {
  'first-catch-up': [['resident before re-warm', 'residentFractionBefore', 3, 1]],
  'catch-up': [['resident before re-warm', 'residentFractionBefore', 3, 1]],
  'fan-out': [['server memory KiB/replica', 'memoryBytesPerReplica', 0, 1 / 1024], ['connect s', 'connectSeconds', 2, 1], ['start s', 'setupSeconds', 2, 1]],
  'cold-catch-up': [['cached at start', 'residentFractionBefore', 3, 1], ['event-loop delay p99 ms', 'eventLoopDelayP99Ms', 1, 1], ['event-loop delay max ms', 'eventLoopDelayMaxMs', 1, 1], ['probe RTT max ms', 'probeMaxMs', 1, 1], ['disk KiB/read', 'diskKibPerRead', 0, 1], ['disk reads in flight', 'diskReadsInFlight', 1, 1]],
};

export function renderMarkdown(report: BenchReport): string {
  const machine = report.machine;
  const lines = [
    `# walcast benchmark (${report.mode})`,
    '',
    `${machine.date} · ${machine.cpuModel}, ${machine.cores} cores, ${format(machine.memoryBytes / 1024 ** 3, 0)} GiB · Linux ${machine.kernel} · Node ${machine.node} · ${machine.postgres} · walcast ${machine.walcastCommit} · load average ${machine.loadAverage.join(' / ')} at start${machine.tcpCongestion === undefined ? '' : ` · system TCP congestion control ${machine.tcpCongestion}`}`,
    '',
    `WAL: ${format(report.wal.bytes / 1024 ** 2, 0)} MiB (${report.wal.startLsn} – ${report.wal.endLsn}, pgbench -i -s ${report.wal.pgbenchScale}). ${report.note}. Scenarios: ${report.scenarios.join(', ')}. Every cell: median [min–max] over the runs; ratios are computed run by run (same repetition round, same condition) and shown as median× [min–max]. MB = 10^6 bytes, GB = 10^9 bytes. CPU = the server's processes only (/proc utime+stime; PostgreSQL: its walsender backends).`,
    '',
  ];
  const unavailable = report.servers.filter((server) => server.status === 'unavailable');
  if (unavailable.length > 0) lines.push(...unavailable.map((server) => `- ${server.name}: not measured (${server.reason ?? 'unavailable'})`), '');
  for (const scenario of ['first-catch-up', 'catch-up', 'fan-out', 'cold-catch-up', 'live-latency']) {
    const figures = report.figures.filter((figure) => figure.scenario === scenario);
    lines.push(`## ${SCENARIO_TITLES[scenario]}`, '');
    if (figures.length === 0) {
      lines.push('not measured in this run', '');
      continue;
    }
    for (const condition of ['idle', 'loaded'] as const) {
      const measured = figures.filter((figure) => figure.condition === condition);
      if (measured.length === 0) continue;
      lines.push(conditionsLine(report, condition, measured), '');
      lines.push(...(scenario === 'live-latency' ? latencyTable(measured, report.ratios) : streamingTable(measured, report.ratios, SCENARIO_EXTRAS[scenario] ?? [])), '');
    }
  }
  lines.push('## Micro-benchmarks (tinybench, in the harness process)', '');
  lines.push(...(report.micro.length === 0 ? ['not measured in this run'] : microTable(report.micro)), '');
  if (report.notes.length > 0) lines.push('## Notes', '', ...report.notes.map((note) => `- ${note}`), '');
  lines.push(`Harness wall time: ${format(report.elapsedSeconds, 0)} s. Reproduce: see docs/benchmarks.md.`, '');
  return lines.join('\n');
}
