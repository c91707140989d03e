/**
 * walcast's own view of its share of live latency: Prometheus histograms in /metrics (src/timeline/publish-timing.ts)
 * of the time from a commit LSN being published (durably ingested) to the bytes being written to a waiting
 * replica's socket (per replica and publish), and to the last waiting replica's socket (per publish: the fan-out).
 * The harness scrapes them before and after a live-latency run's commits and reports percentiles of the difference,
 * beside its own outside measurement ("added vs direct replica"). A server without them reports nothing, so the
 * harness works with walcast versions before and after they exist.
 */

/** The histograms' names in /metrics (without _bucket); one constant each to change if walcast names them otherwise. */
export const PUBLISH_TO_SOCKET_HISTOGRAM = 'walcast_publish_to_socket_seconds';
export const PUBLISH_FANOUT_HISTOGRAM = 'walcast_publish_fanout_seconds';
/** The hop before them: upstream message received → durable position published (src/timeline/ingest-timing.ts). */
export const INGEST_TO_PUBLISH_HISTOGRAM = 'walcast_ingest_to_publish_seconds';
const METRICS_TIMEOUT_MS = 5_000;
const MS_PER_SECOND = 1000;

/** Cumulative counts per upper bound (seconds; Infinity for +Inf), summed over every label set. */
export type Buckets = ReadonlyMap<number, number>;

/** Parses `NAME_bucket{...,le="X",...} COUNT` lines of a Prometheus text exposition. */
export function parseHistogramBuckets(text: string, name: string): Buckets | undefined {
  const buckets = new Map<number, number>();
  const prefix = `${name}_bucket`;
  for (const line of text.split('\n')) {
    if (!line.startsWith(prefix) || (line[prefix.length] !== '{' && line[prefix.length] !== ' ')) continue;
    const le = /le="([^"]+)"/.exec(line)?.[1];
    const count = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (le === undefined || !Number.isFinite(count)) continue;
    const bound = le === '+Inf' ? Number.POSITIVE_INFINITY : Number(le);
    if (Number.isNaN(bound)) continue;
    buckets.set(bound, (buckets.get(bound) ?? 0) + count);
  }
  return buckets.size === 0 ? undefined : buckets;
}

/** The sum of `NAME_sum{...} X` lines (seconds, over every label set); undefined when there is none. */
export function parseHistogramSum(text: string, name: string): number | undefined {
  const prefix = `${name}_sum`;
  let sum: number | undefined;
  for (const line of text.split('\n')) {
    if (!line.startsWith(prefix) || (line[prefix.length] !== '{' && line[prefix.length] !== ' ')) continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(value)) sum = (sum ?? 0) + value;
  }
  return sum;
}

/** What was observed between two scrapes (cumulative counts only grow; a restart in between is not handled). */
export function bucketDelta(before: Buckets | undefined, after: Buckets): Buckets {
  return new Map([...after].map(([bound, count]) => [bound, count - (before?.get(bound) ?? 0)]));
}

/**
 * The upper bound (ms) of the first bucket that holds the p-th percentile observation: "at most this", as
 * precise as the buckets. undefined when nothing was observed; Infinity when it lies past the last finite bound.
 */
export function histogramPercentileMs(buckets: Buckets, p: number): number | undefined {
  const bounds = [...buckets.keys()].sort((a, b) => a - b);
  const total = buckets.get(Number.POSITIVE_INFINITY) ?? Math.max(0, ...buckets.values());
  if (total <= 0) return undefined;
  const rank = Math.max(1, Math.ceil((p / 100) * total));
  for (const bound of bounds) if ((buckets.get(bound) ?? 0) >= rank) return bound * MS_PER_SECOND;
  return Number.POSITIVE_INFINITY;
}

/**
 * One /metrics text, to parse several histograms from (parseHistogramBuckets, parseHistogramSum): at 1,000 replicas a
 * scrape is a megabyte of per-replica series and tens of milliseconds of the server's event loop, so a run takes one
 * before its commits and one after, not one per histogram. undefined as for scrapeHistogram.
 */
export async function scrapeMetricsText(metricsUrl: string | undefined): Promise<string | undefined> {
  if (metricsUrl === undefined) return undefined;
  try {
    const response = await fetch(metricsUrl, { signal: AbortSignal.timeout(METRICS_TIMEOUT_MS) });
    return await response.text();
  } catch {
    return undefined;
  }
}

/** Scrapes the histogram; undefined when the server has no metrics URL, no such histogram, or did not answer. */
export async function scrapeHistogram(metricsUrl: string | undefined, name = PUBLISH_TO_SOCKET_HISTOGRAM): Promise<Buckets | undefined> {
  if (metricsUrl === undefined) return undefined;
  try {
    const response = await fetch(metricsUrl, { signal: AbortSignal.timeout(METRICS_TIMEOUT_MS) });
    return parseHistogramBuckets(await response.text(), name);
  } catch {
    return undefined;
  }
}
