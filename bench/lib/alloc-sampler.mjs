/**
 * Diagnostic preload for a walcast server under bench/fanout-latency.ts (never loaded by walcast itself): what
 * allocates and how often the young generation is collected, during each run's commits only.
 *
 *   WALCAST_BENCH_SERVER_NODE_ARGS="--import $PWD/bench/lib/alloc-sampler.mjs" [ALLOC_SAMPLER_HEAP=1]
 *
 * (an absolute path: a --baseline server runs in the baseline tree, which may not have this file).
 * The harness scrapes /metrics once right before a run's commits and once after they drained (live-latency.ts), so
 * the time between the two scrapes of a pair is a window of steady state: no replica connects or catches up in it.
 * Every GC (perf_hooks 'gc' entries: kind and duration) is logged with the window it fell in, and
 * ALLOC_SAMPLER_DIR/gc-PID.json (default /tmp) is written at exit: per window its length, scavenges and their pauses.
 *
 * With ALLOC_SAMPLER_HEAP=1, V8's sampling heap profiler also runs (an in-process node:inspector session, with
 * includeObjectsCollectedByMinorGC/MajorGC: node's --heap-prof keeps only what is still alive at exit, i.e. none of
 * the per-publish garbage that brings the scavenges). It is restarted at every /metrics request, so each window's
 * samples land in alloc-PID-wN.heapprofile (from the request of the scrape before the commits, whose rendering is in
 * it, to the request of the one after), and what came between windows (connects, catch-ups) in alloc-PID-oN.heapprofile.
 * ALLOC_SAMPLER_INTERVAL_BYTES sets the mean bytes between samples (default 4096). Heap sampling costs CPU and
 * allocates its profiles at the window edges: take GC counts from runs without it. Read the profiles with
 * bench/lib/alloc-report.ts.
 */
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import { Session } from 'node:inspector';
import { PerformanceObserver, constants } from 'node:perf_hooks';

const dir = process.env.ALLOC_SAMPLER_DIR ?? '/tmp';
const heap = process.env.ALLOC_SAMPLER_HEAP === '1';
const samplingInterval = Number(process.env.ALLOC_SAMPLER_INTERVAL_BYTES ?? 4096);

const KINDS = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
  [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb',
};

/** Closed windows: { startMs, endMs } (performance.now()); `open` is the start of the one under way. */
const windows = [];
let open;
let scrapes = 0;
const gcs = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) gcs.push({ atMs: entry.startTime, ms: entry.duration, kind: KINDS[entry.detail?.kind] ?? String(entry.detail?.kind) });
}).observe({ entryTypes: ['gc'] });

let session;
if (heap) {
  session = new Session();
  session.connect();
  startSampling();
}

function startSampling() {
  // An in-process session answers synchronously.
  session.post('HeapProfiler.startSampling', { samplingInterval, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true }, (error) => {
    if (error) process.stderr.write(`alloc-sampler: startSampling failed: ${error.message}\n`);
  });
}

function saveSampling(name) {
  session.post('HeapProfiler.stopSampling', (error, result) => {
    if (error) process.stderr.write(`alloc-sampler: stopSampling failed: ${error.message}\n`);
    else writeFileSync(`${dir}/alloc-${process.pid}-${name}.heapprofile`, JSON.stringify(result.profile));
  });
}

const emit = http.Server.prototype.emit;
http.Server.prototype.emit = function (event, request, response) {
  if (event === 'request' && request.url === '/metrics') {
    const index = scrapes++;
    if (index % 2 === 0) {
      // Before the commits: the window opens once this scrape's answer went out.
      if (heap) {
        saveSampling(`o${index / 2}`);
        startSampling();
      }
      response.once('finish', () => (open = performance.now()));
    } else {
      if (open !== undefined) windows.push({ startMs: open, endMs: performance.now() });
      open = undefined;
      if (heap) {
        saveSampling(`w${(index - 1) / 2}`);
        startSampling();
      }
    }
  }
  return emit.apply(this, arguments);
};

process.on('exit', () => {
  const summary = windows.map((window, index) => {
    const inside = gcs.filter((gc) => gc.atMs >= window.startMs && gc.atMs < window.endMs);
    const minor = inside.filter((gc) => gc.kind === 'minor');
    return {
      window: index,
      seconds: (window.endMs - window.startMs) / 1000,
      scavenges: minor.length,
      scavengeMs: minor.map((gc) => Number(gc.ms.toFixed(2))),
      otherGcs: inside.filter((gc) => gc.kind !== 'minor').map((gc) => `${gc.kind} ${gc.ms.toFixed(2)}`),
    };
  });
  const minor = gcs.filter((gc) => gc.kind === 'minor');
  writeFileSync(`${dir}/gc-${process.pid}.json`, JSON.stringify({
    argv: process.argv.slice(1, 3),
    lifetimeSeconds: performance.now() / 1000,
    scavenges: minor.length,
    scavengeMeanMs: minor.reduce((sum, gc) => sum + gc.ms, 0) / Math.max(1, minor.length),
    windows: summary,
  }, null, 1));
  if (heap) saveSampling('last');
});
