/**
 * Cost of one /metrics render (and of the /v1/timelines/… status document) on the server's event loop, by number of
 * replicas on a timeline. The render runs in the thread that publishes commits to replicas, so each scrape delays
 * every commit that arrives during it (issue 13); this reports, per scrape:
 *
 * - CPU ms (process.cpuUsage around the render; the whole process, so a loaded machine inflates it less than wall
 *   clock does, but it is not free of noise);
 * - the longest stretch the render held the event loop without a turn (a setImmediate ticker runs beside it; the
 *   longest gap between its ticks), which is what a commit arriving mid-scrape waits at most.
 *
 * The timeline and its replicas are the real TimelineRegistry / ReplicaRegistry the server builds, with N replicas
 * registered and each having sent a standby reply, as connected streaming standbys have; the render walks exactly
 * that state, sockets take no part in it. --root DIR imports another checkout's src/ (A/B against a baseline: same
 * script, same process shape), e.g. a `git archive main` copy.
 *
 * Usage: node --import tsx bench/metrics-render.ts [--replicas 1,100,1000] [--repeats 100] [--root DIR] [--skip-status]
 * Profile: node --cpu-prof --cpu-prof-dir=/tmp/prof --import tsx bench/metrics-render.ts --replicas 1000 --repeats 200
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    replicas: { type: 'string', default: '1,100,1000' },
    repeats: { type: 'string', default: '100' },
    root: { type: 'string', default: '.' },
    'skip-status': { type: 'boolean', default: false },
  },
});
const root = resolve(values.root);
const load = async <T>(path: string): Promise<T> => (await import(pathToFileURL(resolve(root, path)).href)) as T;

type TimelineModule = typeof import('../src/timeline/timeline.js');
type RegistryModule = typeof import('../src/timeline/timeline-registry.js');
type MetricsModule = typeof import('../src/api/metrics.js');
type StatusModule = typeof import('../src/api/status-model.js');
type JsonModule = typeof import('../src/api/json.js');
const { Timeline } = await load<TimelineModule>('src/timeline/timeline.ts');
const { TimelineRegistry } = await load<RegistryModule>('src/timeline/timeline-registry.ts');
const { createOperationsMetrics } = await load<MetricsModule>('src/api/metrics.ts');
const { timelineStatus } = await load<StatusModule>('src/api/status-model.ts');
const { stringifyJson } = await load<JsonModule>('src/api/json.ts');
type DocumentModule = typeof import('../src/api/timeline-document.js');
/** What the timeline route writes: the sliced document where the tree has it, else stringifyJson(timelineStatus). */
const timelineDocument: (timeline: InstanceType<typeof Timeline>) => Promise<string> = existsSync(resolve(root, 'src/api/timeline-document.ts'))
  ? await (async () => {
    const { renderTimelineDocument } = await load<DocumentModule>('src/api/timeline-document.ts');
    return (timeline: InstanceType<typeof Timeline>) => renderTimelineDocument(timeline, new Date(), {});
  })()
  : (timeline) => Promise.resolve(stringifyJson(timelineStatus(timeline, new Date())));

const COMMIT_LSN = 0x3000100n;
const US_PER_MS = 1000;

function median(sorted: readonly number[]): number {
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[middle] ?? 0) : ((sorted[middle - 1] ?? 0) + (sorted[middle] ?? 0)) / 2;
}

/** Runs `work` `repeats` times; per run, CPU ms and the longest event-loop hold (ms) seen by a setImmediate ticker. */
async function measure(repeats: number, work: () => Promise<unknown>): Promise<{ cpu: number[]; hold: number[] }> {
  const cpu: number[] = [];
  const hold: number[] = [];
  for (let run = 0; run < repeats; run++) {
    let last = performance.now();
    let longest = 0;
    let ticking = true;
    const tick = (): void => {
      const now = performance.now();
      longest = Math.max(longest, now - last);
      last = now;
      if (ticking) setImmediate(tick);
    };
    setImmediate(tick);
    const before = process.cpuUsage();
    await work();
    const used = process.cpuUsage(before);
    const now = performance.now();
    longest = Math.max(longest, now - last);
    ticking = false;
    await new Promise((done) => setImmediate(done));
    cpu.push((used.user + used.system) / US_PER_MS);
    hold.push(longest);
  }
  return { cpu, hold };
}

const summary = (samples: number[]): string => {
  const sorted = [...samples].sort((a, b) => a - b);
  return `median ${median(sorted).toFixed(3)} (min ${(sorted[0] ?? 0).toFixed(3)}, max ${(sorted.at(-1) ?? 0).toFixed(3)})`;
};

for (const count of values.replicas.split(',').map(Number)) {
  const timelines = new TimelineRegistry();
  const timeline = new Timeline(
    { tenantId: '0123456789abcdef0123456789abcdef', timelineId: 'fedcba9876543210fedcba9876543210', dir: '/nonexistent', systemId: 7_400_000_000_000_000_001n, pgVersion: 150018, segmentBytes: 16 * 1024 * 1024, pgTimelineId: 1, timelineStartLsn: 0x1000000n },
    { flushLsn: COMMIT_LSN, commitLsn: COMMIT_LSN },
  );
  timelines.add(timeline);
  for (let index = 0; index < count; index++) {
    const replica = timeline.replicas.register({ appName: `standby-${index % 10}`, remoteAddress: `127.0.0.1:${40000 + index}`, startLsn: 0x2000000n, startedAt: new Date(), connId: index + 1 });
    replica.setSentLsn(COMMIT_LSN);
    replica.addBytesSent(0x1000100);
    replica.update({ kind: 'standby_reply', writeLsn: COMMIT_LSN, flushLsn: COMMIT_LSN - 100n, applyLsn: COMMIT_LSN - 200n, replyTimeMicros: 0n, replyRequested: false });
  }
  const metrics = createOperationsMetrics({ backend: 'ts', strategy: 'fs-net' });
  metrics.bindTimelines(timelines);
  const repeats = Number(values.repeats);
  let bytes = 0;
  await measure(Math.min(repeats, 10), () => metrics.render()); // warm-up
  const render = await measure(repeats, async () => (bytes = (await metrics.render()).body.length));
  console.log(`replicas ${count}: /metrics ${bytes} bytes; CPU ms/scrape ${summary(render.cpu)}; longest loop hold ms ${summary(render.hold)}`);
  if (!values['skip-status']) {
    const status = await measure(repeats, async () => (await timelineDocument(timeline)).length);
    console.log(`replicas ${count}: timeline status JSON; CPU ms ${summary(status.cpu)}; longest loop hold ms ${summary(status.hold)}`);
  }
}
