/**
 * How responsive a server stays while it streams: the worst and the 99th-percentile event-loop delay walcast itself
 * reports (nodejs_eventloop_lag_max_seconds and _p99_seconds from its /metrics; prom-client resets the histogram on
 * every scrape, so a scrape before and one after bound the run), and, for every server, an outside probe: a second replication
 * connection that sends IDENTIFY_SYSTEM every few milliseconds and records the worst round trip.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { SqlClient } from './sql-client.js';

/** Pause between probe round trips: frequent enough to catch stalls of tens of ms, cheap for the server. */
const PROBE_INTERVAL_MS = 10;
const METRICS_TIMEOUT_MS = 5_000;
const EVENT_LOOP_MAX_METRIC = 'nodejs_eventloop_lag_max_seconds';
const EVENT_LOOP_P99_METRIC = 'nodejs_eventloop_lag_p99_seconds';

/**
 * The event-loop delay histogram since the last scrape, in milliseconds. prom-client samples with a 10 ms timer and
 * records each whole interval, so ~10-11 ms means no measurable stall: the delay a replica could feel is the value
 * minus ~10 ms.
 */
export interface EventLoopLag {
  readonly maxMs: number | undefined;
  readonly p99Ms: number | undefined;
}

/** Both figures, each undefined when the server has no metrics endpoint (yet) or does not report it. */
export async function scrapeEventLoopLag(metricsUrl: string | undefined): Promise<EventLoopLag> {
  if (metricsUrl === undefined) return { maxMs: undefined, p99Ms: undefined };
  try {
    const response = await fetch(metricsUrl, { signal: AbortSignal.timeout(METRICS_TIMEOUT_MS) });
    if (!response.ok) return { maxMs: undefined, p99Ms: undefined };
    const lines = (await response.text()).split('\n');
    const milliseconds = (metric: string): number | undefined => {
      const line = lines.find((entry) => entry.startsWith(`${metric} `));
      if (line === undefined) return undefined;
      const seconds = Number(line.trim().split(/\s+/).pop());
      return Number.isFinite(seconds) ? seconds * 1000 : undefined;
    };
    return { maxMs: milliseconds(EVENT_LOOP_MAX_METRIC), p99Ms: milliseconds(EVENT_LOOP_P99_METRIC) };
  } catch {
    return { maxMs: undefined, p99Ms: undefined };
  }
}

/** The worst delay alone, in milliseconds (see scrapeEventLoopLag). */
export async function scrapeEventLoopMaxMs(metricsUrl: string | undefined): Promise<number | undefined> {
  return (await scrapeEventLoopLag(metricsUrl)).maxMs;
}

export interface Probe {
  /** Stops probing; resolves with the worst and median round trip in milliseconds (undefined if none). */
  stop(): Promise<{ maxMs: number | undefined; samples: number }>;
}

export async function startProbe(port: number): Promise<Probe> {
  const client = await SqlClient.connect(port, { user: 'repl', database: 'replication', replication: 'true', application_name: 'bench-probe' });
  let running = true;
  let maxMs: number | undefined;
  let samples = 0;
  const loop = (async () => {
    while (running) {
      const started = performance.now();
      try {
        await client.query('IDENTIFY_SYSTEM');
      } catch {
        return;
      }
      const elapsed = performance.now() - started;
      maxMs = maxMs === undefined ? elapsed : Math.max(maxMs, elapsed);
      samples++;
      await sleep(PROBE_INTERVAL_MS);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      client.end();
      return { maxMs, samples };
    },
  };
}
