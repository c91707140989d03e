/**
 * Keeps the benchmark harness from rotting: runs `bench/run.ts --smoke` (a few MB of WAL, one repetition, 2
 * replicas, no background load, walcast ts + native strategies when built, PostgreSQL's walsender, a replaying
 * standby, the cascading-standby latency reference, the C ceiling) into a temp dir and checks that it produced
 * well-formed JSON, markdown and SVG, and that every consumer received exactly the bytes it asked for. The load
 * spinners and the --scenarios parser are checked on their own. Also `bench/tls-cost.ts --smoke` (walcast ts,
 * native and PostgreSQL, each plain and TLS, 1 and 2 pg_receivewal replicas), checking every run streamed
 * byte-identical WAL, `bench/single-stream.ts --smoke` (this tree beside a baseline checkout and PostgreSQL, one
 * replica), `bench/remote-catchup.ts --smoke` (the same range served from local disk and from s3rver:
 * byte-identical, and the remote case really read from the bucket), and `bench/metrics-render.ts` at 1 and 3
 * replicas. Benchmarks are not tests: nothing here looks at speed.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { CpuLoad } from '../bench/lib/cpu-load.js';
import { bucketDelta, histogramPercentileMs, parseHistogramBuckets, parseHistogramSum } from '../bench/lib/metrics-histogram.js';
import { readCpu } from '../bench/lib/proc-stats.js';
import { formatSched, readThreads, threadDelta } from '../bench/lib/sched-stats.js';
import { capRepetitions, parseScenarios, planFor } from '../bench/lib/plan.js';
import { ratioText } from '../bench/lib/report-markdown.js';
import { renderSvg } from '../bench/lib/report-svg.js';
import { computeRatios, type RunRecord } from '../bench/lib/results.js';
import { pairwiseRatio, percentile, summarize } from '../bench/lib/stats.js';
import { addedLatenciesMs, commitLatenciesMs } from '../bench/scenarios/live-latency.js';
import { makeTempDir } from './support/postgres.js';
import { REPO_ROOT } from './support/walcast.js';

/** The smoke run takes ~50 s on 2 idle cores; a loaded CI runner gets room, a hang still ends. */
const SMOKE_TIMEOUT_MS = 300_000;
/** What the benchmark's own processes carry on their command lines: its data dirs and its C helpers. */
const BENCH_PROCESS_MARKERS = ['walcast-bench-data-', 'walcast-bench-live-', 'walcast-bench-offload-', 'walcast-bench-restored-', '/bench/lib/s3-server-main.ts', '/bench/results/tmp/bin/'];
/** A process stopped at the very end (SIGTERM'd server) may take a moment to disappear from /proc. */
const LEFTOVER_GRACE_MS = 5_000;
const NATIVE_BUILT = ['Release', 'Debug'].some((kind) => existsSync(join(REPO_ROOT, 'build', kind, 'walcast_native.node')));

interface SmokeRun {
  readonly scenario: string;
  readonly server: string;
  readonly consumer: string;
  readonly replicas: number;
  readonly condition: string;
  readonly ok: boolean;
  readonly error?: string;
  readonly bytesExpected: number;
  readonly bytesReceived: number;
  readonly latencySamples?: number;
  readonly residentFractionBefore?: number;
  readonly eventLoopMaxMs?: number;
  readonly eventLoopP99Ms?: number;
}

interface SmokeSummary {
  readonly min: number;
  readonly median: number;
  readonly max: number;
  readonly runs: number;
}

interface SmokeResult {
  readonly mode: string;
  readonly machine: Record<string, unknown>;
  readonly servers: { name: string; status: string; reason?: string }[];
  readonly runs: SmokeRun[];
  readonly figures: { server: string; scenario: string; metrics: Record<string, SmokeSummary> }[];
  readonly ratios: { kind: string; summary: SmokeSummary }[];
  readonly micro: { name: string; backend: string; error?: string }[];
}

function runSmoke(outDir: string, script = 'bench/run.ts', extraArgs: readonly string[] = []): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(REPO_ROOT, script), '--smoke', ...extraArgs, '--out', outDir], { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGTERM');
      reject(new Error(`bench --smoke did not finish in ${SMOKE_TIMEOUT_MS} ms:\n${stderr}`));
    }, SMOKE_TIMEOUT_MS);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

function assertSummary(summary: SmokeSummary | undefined, what: string): void {
  assert.ok(summary !== undefined, `${what} has a summary`);
  for (const key of ['min', 'median', 'max'] as const) assert.ok(Number.isFinite(summary[key]), `${what}.${key} is a number`);
  assert.ok(summary.min <= summary.median && summary.median <= summary.max, `${what}: min <= median <= max`);
}

/** Every tag opened is closed, in order: enough to catch a truncated or garbled hand-written SVG. */
function assertBalancedXml(text: string): void {
  const stack: string[] = [];
  for (const match of text.matchAll(/<(\/?)([a-zA-Z]+)[^>]*?(\/?)>/g)) {
    const [, closing, name, selfClosing] = match;
    if (selfClosing === '/') continue;
    if (closing === '/') assert.equal(stack.pop(), name, `</${name}> closes the open tag`);
    else stack.push(name!);
  }
  assert.deepEqual(stack, [], 'every SVG tag is closed');
}

/**
 * Processes of this checkout (their command line names REPO_ROOT: walcast serve and the C helpers do) that name a
 * benchmark data dir or helper; exiting ones get a few seconds to go. Other checkouts' benchmarks on the same
 * machine are not this run's leftovers.
 */
async function leftoverProcesses(): Promise<string[]> {
  const deadline = Date.now() + LEFTOVER_GRACE_MS;
  for (;;) {
    const found = readdirSync('/proc').filter((entry) => /^\d+$/.test(entry)).flatMap((pid) => {
      try {
        const commandLine = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
        return commandLine.includes(`${REPO_ROOT}/`) && BENCH_PROCESS_MARKERS.some((marker) => commandLine.includes(marker)) ? [`${pid}: ${commandLine}`] : [];
      } catch {
        return [];
      }
    });
    if (found.length === 0 || Date.now() > deadline) return found;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

test('bench --smoke produces well-formed results and every consumer gets exactly its bytes', { timeout: SMOKE_TIMEOUT_MS + 30_000 }, async () => {
  const outDir = await makeTempDir('walcast-bench-smoke');
  const { code, stderr } = await runSmoke(outDir, 'bench/run.ts', ['--load', '0']);
  assert.equal(code, 0, `bench --smoke failed:\n${stderr}`);

  const jsonFiles = readdirSync(outDir).filter((name) => name.endsWith('.json'));
  assert.equal(jsonFiles.length, 1, `one result file: ${jsonFiles.join(', ')}`);
  const result = JSON.parse(readFileSync(join(outDir, jsonFiles[0]!), 'utf8')) as SmokeResult;
  assert.equal(result.mode, 'smoke');
  for (const key of ['cpuModel', 'cores', 'kernel', 'node', 'postgres']) assert.ok(result.machine[key] !== undefined && result.machine[key] !== 'unknown', `machine.${key}`);

  const okServers = result.servers.filter((server) => server.status === 'ok').map((server) => server.name);
  for (const name of ['walcast-ts', 'postgres', 'ceiling']) assert.ok(okServers.includes(name), `${name} ran: ${JSON.stringify(result.servers)}`);
  if (NATIVE_BUILT) assert.ok(okServers.some((name) => name.startsWith('walcast-native-')), `the built native backend ran: ${JSON.stringify(result.servers)}`);

  const streaming = result.runs.filter((run) => run.scenario !== 'live-latency');
  for (const scenario of ['first-catch-up', 'catch-up', 'fan-out', 'cold-catch-up']) assert.ok(streaming.some((run) => run.scenario === scenario), `${scenario} ran`);
  // The warm-up pass is recorded: every server's first catch-up with each consumer kind it speaks.
  for (const server of okServers) {
    const kinds = server === 'ceiling' ? ['wal-consumer'] : ['wal-consumer', 'pg_receivewal', 'standby'];
    for (const consumer of kinds) assert.equal(streaming.filter((run) => run.scenario === 'first-catch-up' && run.server === server && run.consumer === consumer).length, 1, `${server}'s first ${consumer} catch-up recorded once`);
  }
  // Warm runs read their files again first and record how much was still resident (a share of the served files).
  for (const run of streaming.filter((entry) => entry.scenario === 'catch-up' || entry.scenario === 'first-catch-up')) {
    assert.ok(run.residentFractionBefore !== undefined && run.residentFractionBefore >= 0 && run.residentFractionBefore <= 1, `${run.scenario} ${run.server} ${run.consumer}: resident share before the re-warm ${run.residentFractionBefore}`);
  }
  assert.ok(streaming.some((run) => run.consumer === 'pg_receivewal'), 'pg_receivewal ran');
  // A standby run is ok only once pg_last_wal_replay_lsn() reached the range end: every server fed a real replay.
  for (const server of okServers.filter((name) => name !== 'ceiling')) assert.ok(streaming.some((run) => run.consumer === 'standby' && run.server === server), `a standby replayed from ${server}`);
  for (const run of result.runs) assert.equal(run.condition, 'idle', 'no background load in the smoke run');
  assert.ok(streaming.some((run) => run.scenario === 'fan-out' && run.replicas === 2), 'fan-out with 2 replicas ran');
  for (const run of streaming) {
    const label = `${run.scenario} ${run.server} ${run.consumer} ×${run.replicas}`;
    assert.ok(run.ok, `${label} failed: ${run.error}`);
    assert.ok(run.bytesExpected > 0, `${label} expected bytes`);
    assert.equal(run.bytesReceived, run.bytesExpected, `${label} received exactly the expected bytes`);
  }
  for (const server of okServers) assert.ok(streaming.some((run) => run.server === server && run.ok), `${server} streamed`);
  // Cold runs report walcast's own event-loop delay (issue 13's cold goal is a p99): both figures, p99 within max.
  const walcastCold = streaming.filter((entry) => entry.scenario === 'cold-catch-up' && entry.server.startsWith('walcast-'));
  assert.ok(walcastCold.length > 0, 'walcast ran cold');
  for (const run of walcastCold) {
    assert.ok(run.eventLoopP99Ms !== undefined && run.eventLoopMaxMs !== undefined && run.eventLoopP99Ms <= run.eventLoopMaxMs, `${run.server} cold: event-loop p99 ${run.eventLoopP99Ms} ms, max ${run.eventLoopMaxMs} ms`);
  }
  const postgresLatency = result.runs.find((run) => run.scenario === 'live-latency' && run.server === 'postgres');
  assert.ok(postgresLatency !== undefined, 'live latency ran against PostgreSQL');
  const cascadeLatency = result.runs.find((run) => run.scenario === 'live-latency' && run.server === 'postgres-cascade');
  assert.ok(cascadeLatency?.ok === true, `live latency through a cascading standby: ${cascadeLatency?.error ?? 'missing'}`);
  assert.equal(cascadeLatency.latencySamples, 2 * 20, 'every commit reached both replicas of the cascading standby');

  for (const figure of result.figures.filter((entry) => entry.scenario !== 'live-latency')) assertSummary(figure.metrics.throughputMBps, `${figure.scenario} ${figure.server} throughput`);
  assert.ok(result.ratios.some((ratio) => ratio.kind === 'walcast/postgres'), 'walcast/PostgreSQL ratios');
  assert.ok(result.ratios.some((ratio) => ratio.kind === 'walcast/ceiling'), 'walcast/ceiling ratios');
  for (const ratio of result.ratios) assertSummary(ratio.summary, `ratio ${ratio.kind}`);
  assert.ok(result.micro.some((entry) => entry.backend === 'ts' && entry.error === undefined), 'the ts micro-benchmark ran');

  const markdown = readFileSync(join(outDir, 'latest.md'), 'utf8');
  for (const heading of ['# walcast benchmark (smoke)', '## First catch-up after start', '## Catch-up', '## Fan-out', '## Cold catch-up', '## Live latency', '## Micro-benchmarks']) assert.ok(markdown.includes(heading), `markdown has "${heading}"`);
  assert.equal(markdown.split('\n').filter((line) => line.startsWith('Conditions: idle')).length, 5, 'a conditions line above each scenario table');
  const tableRows = markdown.split('\n').filter((line) => line.startsWith('|'));
  assert.ok(tableRows.length > 10, 'markdown has tables');
  for (const row of tableRows) assert.ok(row.endsWith('|'), `table row is closed: ${row}`);

  const svg = readFileSync(join(outDir, 'latest.svg'), 'utf8');
  assert.ok(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"'), 'an SVG document');
  assert.ok(svg.trimEnd().endsWith('</svg>'), 'the SVG is complete');
  assert.ok((svg.match(/<rect /g) ?? []).length > okServers.length, 'the chart has bars');
  assertBalancedXml(svg);

  const leftovers = await leftoverProcesses();
  assert.deepEqual(leftovers, [], 'no process started by the benchmark is left running');
});

interface TlsCostRun {
  readonly server: string;
  readonly transport: string;
  readonly replicas: number;
  readonly ok: boolean;
  readonly error?: string;
  readonly bytesTotal: number;
  readonly bytesVerified?: number;
  readonly throughputMBps?: number;
  readonly serverCpuSecondsPerGB?: number;
}

test('bench/tls-cost.ts --smoke: every server, plain and TLS, 1 and 2 replicas, streams byte-identical WAL', { timeout: SMOKE_TIMEOUT_MS + 30_000 }, async () => {
  const outDir = await makeTempDir('walcast-bench-tls-smoke');
  const { code, stderr } = await runSmoke(outDir, 'bench/tls-cost.ts');
  assert.equal(code, 0, `tls-cost --smoke failed:\n${stderr}`);
  const jsonFiles = readdirSync(outDir).filter((name) => name.endsWith('-tls-cost.json'));
  assert.equal(jsonFiles.length, 1, `one result file: ${readdirSync(outDir).join(', ')}`);
  const result = JSON.parse(readFileSync(join(outDir, jsonFiles[0]!), 'utf8')) as { runs: TlsCostRun[] };
  const expected = ['walcast-ts', 'walcast-native-default', 'postgres'].flatMap((server) => ['plain', 'tls'].flatMap((transport) => [1, 2].map((replicas) => `${server} ${transport} ×${replicas}`)));
  assert.deepEqual(result.runs.map((run) => `${run.server} ${run.transport} ×${run.replicas}`).sort(), expected.sort(), 'one run per server, transport and replica count');
  for (const run of result.runs) {
    const label = `${run.server} ${run.transport} ×${run.replicas}`;
    assert.ok(run.ok, `${label} failed: ${run.error}`);
    assert.ok(run.bytesTotal > 0, `${label} streamed bytes`);
    assert.equal(run.bytesVerified, run.bytesTotal, `${label}: every received byte equals the stored WAL`);
    assert.ok(Number.isFinite(run.throughputMBps) && Number.isFinite(run.serverCpuSecondsPerGB), `${label} has MB/s and CPU s/GB`);
  }
  const markdown = readFileSync(join(outDir, 'tls-cost.md'), 'utf8');
  for (const heading of ['### 1 replica', '### 2 replicas']) assert.ok(markdown.includes(heading), `markdown has "${heading}"`);
  for (const row of ['| walcast ts | TLS |', '| walcast native | TLS |', '| PostgreSQL 15 | TLS |', '| PostgreSQL 15 | plain |']) assert.ok(markdown.includes(row), `markdown has "${row}"`);
  assert.deepEqual(await leftoverProcesses(), [], 'no process started by the benchmark is left running');
});

test('bench/single-stream.ts --smoke: this tree beside a baseline checkout and PostgreSQL, byte-identical WAL to every consumer', { timeout: SMOKE_TIMEOUT_MS + 30_000 }, async () => {
  const outDir = await makeTempDir('walcast-bench-single-smoke');
  // The repository itself as the baseline: exercises starting walcast from another checkout (repoRoot).
  const { code, stderr } = await runSmoke(outDir, 'bench/single-stream.ts', ['--baseline', REPO_ROOT]);
  assert.equal(code, 0, `single-stream --smoke failed:\n${stderr}`);
  const result = JSON.parse(readFileSync(join(outDir, 'single-stream.json'), 'utf8')) as { servers: string[]; runs: { server: string; consumer: string; ok: boolean; error?: string; bytesExpected: number; bytesReceived: number; serverCpuSecondsPerGB?: number }[] };
  assert.deepEqual(result.servers, ['base', 'new', 'postgres']);
  const expected = ['pg_receivewal', 'wal-consumer'].flatMap((consumer) => result.servers.map((server) => `${consumer} ${server}`));
  assert.deepEqual(result.runs.map((run) => `${run.consumer} ${run.server}`).sort(), expected.sort(), 'one run per consumer and server');
  for (const run of result.runs) {
    assert.ok(run.ok, `${run.consumer} ${run.server} failed: ${run.error}`);
    assert.ok(run.bytesExpected > 0 && run.bytesReceived === run.bytesExpected, `${run.consumer} ${run.server}: every byte (pg_receivewal: compared with the source)`);
    assert.ok(Number.isFinite(run.serverCpuSecondsPerGB), `${run.consumer} ${run.server} has CPU s/GB`);
  }
  const markdown = readFileSync(join(outDir, 'single-stream.md'), 'utf8');
  for (const row of ['| pg_receivewal | idle | new |', '| wal-consumer | idle | base |', '| wal-consumer | idle | postgres |']) assert.ok(markdown.includes(row), `markdown has "${row}"`);
  assert.deepEqual(await leftoverProcesses(), [], 'no process started by the benchmark is left running');
});

interface RemoteCatchUpRun {
  readonly case: string;
  readonly repetition: number;
  readonly ok: boolean;
  readonly error?: string;
  readonly bytesExpected: number;
  readonly bytesReceived?: number;
  readonly throughputMBps?: number;
  readonly serverCpuSecondsPerGB?: number;
  readonly eventLoopMaxMs?: number;
  readonly bytesServedLocal?: number;
  readonly bytesServedRemote?: number;
}

test('bench/remote-catchup.ts --smoke: the range streams byte-identical from local disk and from object storage, the remote case from the bucket', { timeout: SMOKE_TIMEOUT_MS + 30_000 }, async () => {
  const outDir = await makeTempDir('walcast-bench-remote-smoke');
  const { code, stderr } = await runSmoke(outDir, 'bench/remote-catchup.ts');
  assert.equal(code, 0, `remote-catchup --smoke failed:\n${stderr}`);
  const jsonFiles = readdirSync(outDir).filter((name) => name.endsWith('-remote-catchup.json'));
  assert.equal(jsonFiles.length, 1, `one result file: ${readdirSync(outDir).join(', ')}`);
  const result = JSON.parse(readFileSync(join(outDir, jsonFiles[0]!), 'utf8')) as {
    wal: { bytes: number; segmentBytes: number };
    runs: RemoteCatchUpRun[];
    verifications: { case: string; ok: boolean; error?: string; bytesExpected: number; bytesVerified: number; bytesServedRemote?: number }[];
  };
  assert.deepEqual(result.runs.map((run) => `${run.case} ${run.repetition}`).sort(), ['local 0', 'remote 0'], 'one measured run per case');
  // The restored data dir holds only the last segment: everything before it must have come from the bucket.
  const remoteExpected = result.wal.bytes - result.wal.segmentBytes;
  assert.ok(remoteExpected > 0, 'the smoke range spans several segments');
  for (const run of result.runs) {
    assert.ok(run.ok, `${run.case} failed: ${run.error}`);
    assert.equal(run.bytesReceived, result.wal.bytes, `${run.case}: the consumer received the whole range`);
    assert.ok(Number.isFinite(run.throughputMBps) && Number.isFinite(run.serverCpuSecondsPerGB) && Number.isFinite(run.eventLoopMaxMs), `${run.case} has MB/s, CPU s/GB and event-loop max`);
    assert.equal(run.bytesServedRemote, run.case === 'remote' ? remoteExpected : 0, `${run.case}: WAL bytes served from object storage`);
    assert.equal((run.bytesServedLocal ?? 0) + (run.bytesServedRemote ?? 0), result.wal.bytes, `${run.case}: served bytes by source add up to the range`);
  }
  assert.deepEqual(result.verifications.map((check) => check.case).sort(), ['local', 'remote']);
  for (const check of result.verifications) {
    assert.ok(check.ok, `verify ${check.case}: ${check.error}`);
    assert.equal(check.bytesVerified, result.wal.bytes, `${check.case}: every byte pg_receivewal wrote equals the imported WAL`);
  }
  const markdown = readFileSync(join(outDir, 'remote-catchup.md'), 'utf8');
  for (const row of ['| local disk |', '| object storage (s3rver, loopback) |']) assert.ok(markdown.includes(row), `markdown has "${row}"`);
  assert.deepEqual(await leftoverProcesses(), [], 'no process started by the benchmark is left running');
});

test('bench statistics: min/median/max, nearest-rank percentiles, ratios paired by repetition', () => {
  assert.deepEqual(summarize([3, 1, 2]), { min: 1, median: 2, max: 3, runs: 3 });
  assert.deepEqual(summarize([4, 1, 2, 3]), { min: 1, median: 2.5, max: 4, runs: 4 });
  assert.equal(summarize([Number.NaN]), undefined);
  assert.equal(percentile([5, 1, 4, 2, 3], 50), 3);
  assert.equal(percentile([5, 1, 4, 2, 3], 100), 5);
  assert.equal(percentile([5, 1, 4, 2, 3], 1), 1);
  // Run 1 of each side is missing: only rounds 0 and 2 pair up.
  assert.deepEqual(pairwiseRatio([2, undefined, 9], [1, 5, 3]), { min: 2, median: 2.5, max: 3, runs: 2 });
  const run = (server: string, repetition: number, throughputMBps: number): RunRecord => ({
    scenario: 'catch-up', server, consumer: 'wal-consumer', replicas: 1, repetition, ok: true, bytesExpected: 1, bytesReceived: 1, throughputMBps,
  });
  const ratios = computeRatios([run('walcast-ts', 0, 100), run('postgres', 0, 50), run('walcast-native-sendfile', 0, 300), run('ceiling', 0, 600)]);
  const find = (kind: string, numerator: string): number | undefined =>
    ratios.find((ratio) => ratio.kind === kind && ratio.numerator === numerator && ratio.metric === 'throughputMBps')?.summary.median;
  assert.equal(find('walcast/postgres', 'walcast-ts'), 2);
  assert.equal(find('native/ts', 'walcast-native-sendfile'), 3);
  assert.equal(find('walcast/ceiling', 'walcast-native-sendfile'), 0.5);
  assert.equal(find('native/ts', 'walcast-ts'), undefined);
});

test('bench live latency: each commit meets the first arrival at or past its flush LSN, per replica', () => {
  const record = (connection: number, endLsn: bigint, timeNs: bigint): Buffer => {
    const buffer = Buffer.alloc(24);
    buffer.writeBigUInt64LE(BigInt(connection), 0);
    buffer.writeBigUInt64LE(endLsn, 8);
    buffer.writeBigUInt64LE(timeNs, 16);
    return buffer;
  };
  const log = Buffer.concat([record(0, 100n, 1_500_000n), record(1, 50n, 1_200_000n), record(1, 120n, 3_000_000n), record(0, 200n, 5_000_000n)]);
  const commits = [{ sentNs: 1_000_000n, flushLsn: 100n }, { sentNs: 4_000_000n, flushLsn: 200n }];
  // Replica 0: 0.5 ms and 1 ms; replica 1: 2 ms for the first commit, and never received the second.
  assert.deepEqual(commitLatenciesMs(log, commits, 2), [0.5, 1, 2]);
  // The direct replica of the primary got the commits at 1.2 ms and 4.5 ms: what the server added on top.
  const reference = Buffer.concat([record(0, 100n, 1_200_000n), record(0, 200n, 4_500_000n)]);
  assert.deepEqual(addedLatenciesMs(log, reference, commits, 2), [0.3, 0.5, 1.8]);
});

test('bench --scenarios: names select scenarios, catch-up means all three consumers, unknown names are refused', () => {
  assert.equal(parseScenarios(undefined).size, 7);
  assert.deepEqual([...parseScenarios('catch-up')], ['catch-up:wal-consumer', 'catch-up:pg_receivewal', 'catch-up:standby']);
  assert.deepEqual([...parseScenarios('catch-up:standby, live-latency')], ['catch-up:standby', 'live-latency']);
  assert.throws(() => parseScenarios('catchup'), /unknown scenario "catchup"/);
  assert.throws(() => parseScenarios(','), /selects nothing/);
});

test('bench --reps caps every repetition count of a mode and leaves the rest of the plan alone', () => {
  const full = planFor('full');
  const capped = capRepetitions(full, 2);
  assert.equal(capped.repetitions, 2);
  assert.equal(capped.coldRepetitions, 2);
  assert.equal(capped.standbyRepetitions, 2);
  assert.equal(capped.latency.repetitions, 2);
  assert.deepEqual(capped.fanOut.map((step) => step.replicas), full.fanOut.map((step) => step.replicas));
  assert.ok(capped.fanOut.every((step) => (step.repetitions ?? capped.repetitions) <= 2));
  assert.equal(capped.pgbenchScale, full.pgbenchScale);
  assert.equal(capRepetitions(full, undefined), full);
});

test('bench ratios: median× [min–max] over rounds, paired within one condition only', () => {
  assert.equal(ratioText({ min: 0.8, median: 1.25, max: 2, runs: 3 }), '1.25× [0.80–2.00]');
  assert.equal(ratioText({ min: 1.5, median: 1.5, max: 1.5, runs: 1 }), '1.50×');
  const run = (server: string, condition: 'idle' | 'loaded', throughputMBps: number): RunRecord => ({
    scenario: 'catch-up', server, consumer: 'standby', replicas: 1, repetition: 0, condition, ok: true, bytesExpected: 1, bytesReceived: 1, throughputMBps,
  });
  const ratios = computeRatios([run('walcast-ts', 'idle', 100), run('postgres', 'idle', 50), run('walcast-ts', 'loaded', 30), run('postgres', 'loaded', 60)])
    .filter((ratio) => ratio.metric === 'throughputMBps');
  assert.deepEqual(ratios.map((ratio) => [ratio.condition, ratio.summary.median]), [['idle', 2], ['loaded', 0.5]]);
});

test('bench --load: spinners spin only in loaded rounds and are gone after stop', async () => {
  const cpu = (pid: number): number => readCpu(pid)?.ownSeconds ?? Number.NaN;
  const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
  const load = await CpuLoad.start(1);
  const [pid] = load.pids;
  assert.ok(pid !== undefined);
  try {
    assert.deepEqual(load.conditions, ['idle', 'loaded']);
    let before = cpu(pid);
    await pause(300);
    assert.ok(cpu(pid) - before < 0.05, 'idle while the round is idle');
    await load.set('loaded');
    before = cpu(pid);
    await pause(1_000);
    // On a busy 2-core machine it gets less than a full core, but far more than nothing.
    assert.ok(cpu(pid) - before >= 0.05, `spins while loaded (${(cpu(pid) - before).toFixed(2)} s)`);
    await load.set('idle');
    before = cpu(pid);
    await pause(300);
    assert.ok(cpu(pid) - before < 0.05, 'idle again');
  } finally {
    await load.stop();
  }
  assert.ok(!existsSync(`/proc/${pid}`), 'the spinner exited');
  assert.deepEqual((await CpuLoad.start(0)).conditions, ['idle']);
  await assert.rejects(CpuLoad.start(-1), /--load/);
});

test('bench sched stats: a spinning process shows its CPU between two snapshots, its main thread as "main"', async () => {
  const load = await CpuLoad.start(1);
  const [pid] = load.pids;
  assert.ok(pid !== undefined);
  try {
    const before = readThreads(pid);
    assert.ok(before.has(pid), 'the main thread is listed by its tid (= pid)');
    await load.set('loaded');
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    await load.set('idle');
    const delta = threadDelta(pid, before, readThreads(pid));
    const main = delta.get('main');
    assert.ok(main !== undefined, `threads: ${[...delta.keys()].join(', ')}`);
    // It spun for a second on a loaded 2-core machine: far more than nothing, never more than the wall time.
    assert.ok(main.cpuSeconds >= 0.05 && main.cpuSeconds < 5, `main thread CPU ${main.cpuSeconds}`);
    for (const task of delta.values()) assert.ok(task.cpuSeconds >= 0 && task.waitSeconds >= 0 && task.voluntary >= 0 && task.involuntary >= 0, formatSched(task.name, task));
    assert.match(formatSched('spinner main', main), /^spinner main cpu \d+\.\d\d s wait \d+\.\d\d s slices \d+ vcs \d+ ivcs \d+$/);
  } finally {
    await load.stop();
  }
  assert.equal(readThreads(pid).size, 0, 'an exited process has no threads');
});

test('bench --load: a spinner ends when the harness dies by SIGKILL (no exit handler runs)', async () => {
  const script = `import { CpuLoad } from ${JSON.stringify(join(REPO_ROOT, 'bench/lib/cpu-load.ts'))}; const load = await CpuLoad.start(1); await load.set('loaded'); console.log(load.pids[0]); setInterval(() => {}, 1000);`;
  const harness = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  const spinnerPid = await new Promise<number>((resolve, reject) => {
    harness.stdout.once('data', (chunk: Buffer) => resolve(Number(chunk.toString().trim())));
    harness.once('exit', (code) => reject(new Error(`harness exited ${code} before starting the spinner`)));
  });
  assert.ok(spinnerPid > 0 && existsSync(`/proc/${spinnerPid}`), 'the spinner runs');
  harness.kill('SIGKILL');
  const deadline = Date.now() + LEFTOVER_GRACE_MS;
  while (existsSync(`/proc/${spinnerPid}`) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  const left = existsSync(`/proc/${spinnerPid}`);
  if (left) process.kill(spinnerPid, 'SIGKILL');
  assert.equal(left, false, 'the orphaned spinner exited');
});

test('bench /metrics histogram: buckets summed over labels, differenced between scrapes, percentile = bucket bound', () => {
  const scrape = (fast: number, slow: number, tail: number): string => [
    '# TYPE walcast_publish_to_socket_seconds histogram',
    `walcast_publish_to_socket_seconds_bucket{timeline="a",le="0.001"} ${fast}`,
    `walcast_publish_to_socket_seconds_bucket{timeline="a",le="0.005"} ${fast + slow}`,
    `walcast_publish_to_socket_seconds_bucket{timeline="a",le="+Inf"} ${fast + slow + tail}`,
    'walcast_publish_to_socket_seconds_bucket{timeline="b",le="0.001"} 1',
    'walcast_publish_to_socket_seconds_bucket{timeline="b",le="0.005"} 1',
    'walcast_publish_to_socket_seconds_bucket{timeline="b",le="+Inf"} 1',
    'walcast_publish_to_socket_seconds_sum 0.5',
    'walcast_publish_to_socket_seconds_sum{timeline="b"} 0.25',
    'walcast_publish_to_socket_seconds_sum_other 7',
    'walcast_publish_to_socket_seconds_bucket_other{le="1"} 99',
  ].join('\n');
  assert.equal(parseHistogramBuckets(scrape(1, 1, 1), 'walcast_missing_seconds'), undefined);
  const before = parseHistogramBuckets(scrape(10, 0, 0), 'walcast_publish_to_socket_seconds');
  assert.deepEqual(before, new Map([[0.001, 11], [0.005, 11], [Number.POSITIVE_INFINITY, 11]]));
  // Between the scrapes: 98 fast, 1 slow, 1 past every bound.
  const after = parseHistogramBuckets(scrape(108, 1, 1), 'walcast_publish_to_socket_seconds');
  assert.ok(after !== undefined);
  const delta = bucketDelta(before, after);
  assert.equal(histogramPercentileMs(delta, 50), 1);
  assert.equal(histogramPercentileMs(delta, 99), 5);
  assert.equal(histogramPercentileMs(delta, 100), Number.POSITIVE_INFINITY);
  assert.equal(histogramPercentileMs(bucketDelta(after, after), 99), undefined, 'nothing observed');
  // The sum (for the mean): over every label set, not a longer name that starts the same.
  assert.equal(parseHistogramSum(scrape(1, 1, 1), 'walcast_publish_to_socket_seconds'), 0.75);
  assert.equal(parseHistogramSum(scrape(1, 1, 1), 'walcast_missing_seconds'), undefined);
});

test('bench chart: an SVG with no figures is still complete and balanced', () => {
  const svg = renderSvg([], 'empty <run> & nothing');
  assert.ok(svg.trimEnd().endsWith('</svg>'));
  assert.ok(svg.includes('empty &lt;run&gt; &amp; nothing'), 'captions are escaped');
  assertBalancedXml(svg);
});

test('bench/metrics-render.ts renders /metrics and the timeline document at 1 and 3 replicas, six series more per replica', { timeout: SMOKE_TIMEOUT_MS }, async () => {
  const child = spawn(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'bench/metrics-render.ts'), '--replicas', '1,3', '--repeats', '2'], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise((resolve) => child.once('exit', resolve));
  assert.equal(code, 0, stderr);
  const bytes = [...stdout.matchAll(/^replicas (\d+): \/metrics (\d+) bytes; CPU ms\/scrape median [\d.]+ .*longest loop hold ms median [\d.]+/gm)].map((match) => [Number(match[1]), Number(match[2])]);
  assert.equal(bytes.length, 2, stdout);
  assert.equal(stdout.match(/^replicas \d+: timeline status JSON; CPU ms median [\d.]+/gm)?.length, 2, stdout);
  // Two replicas more: six walcast_replica_* rows each, every row over 100 bytes of labels.
  assert.ok((bytes[1]?.[1] ?? 0) - (bytes[0]?.[1] ?? 0) > 2 * 6 * 100, stdout);
});
