/**
 * The ingest hop's share of commit latency, measured inside walcast: from an upstream XLogData message being
 * received by the follower (src/ingest/follower.ts) to the publish of the durable position that covers it, i.e.
 * the write into the segment, the group-commit fdatasync (segment, and sidecar when pages completed), and the
 * publish itself. With the publish → socket histograms (publish-timing.ts) it splits a relayed commit's latency
 * into walcast's two hops; src/api/metrics.ts exports both.
 *
 * Three histograms, one observation per publish by live ingest:
 * - received → published: from the OLDEST message the publish covers (the one that waited longest; at a low commit
 *   rate each publish covers one commit, so this is per commit);
 * - flush: the group commit alone (flush started → durable), the disk's part of the above;
 * - upstream sent → received, for the same oldest message: from the send timestamp the upstream's walsender stamps
 *   into each XLogData just before it sends it (walsender.c XLogSendPhysical) to the follower receiving it, i.e. the
 *   network, the socket buffer and the wait for walcast's event loop (which also serves every replica) — the part
 *   of the ingest share the other two cannot see. It compares two clocks: exact on one host, otherwise as good as
 *   their synchronisation (a negative difference counts as 0).
 *
 * Buckets are finer than publish → socket's below 5 ms: an fdatasync is tens of µs to a few ms, and the point is
 * to tell those apart (e.g. against a cascading standby, whose walreceiver also fsyncs before its walsender sends).
 */

/** Upper bounds in seconds: 50 µs steps of the fast path, dense to 5 ms, then coarse up to a stalled disk. */
export const INGEST_LATENCY_BUCKETS_SECONDS: readonly number[] = [
  0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
  1, 2.5,
];

/** A latency histogram with its own fixed bounds (counts per bucket, not cumulative; the last slot is +Inf). */
export class BucketedLatencyHistogram {
  readonly counts: number[];
  count = 0;
  sumSeconds = 0;

  constructor(readonly bounds: readonly number[]) {
    this.counts = new Array<number>(bounds.length + 1).fill(0);
  }

  observe(seconds: number): void {
    let index = 0;
    while (index < this.bounds.length && seconds > (this.bounds[index] ?? Infinity)) index++;
    this.counts[index] = (this.counts[index] ?? 0) + 1;
    this.count++;
    this.sumSeconds += seconds;
  }
}

/** Per timeline: what its follower measured of the ingest hop. */
export class IngestTiming {
  readonly receivedToPublished = new BucketedLatencyHistogram(INGEST_LATENCY_BUCKETS_SECONDS);
  readonly flush = new BucketedLatencyHistogram(INGEST_LATENCY_BUCKETS_SECONDS);
  readonly upstreamToReceived = new BucketedLatencyHistogram(INGEST_LATENCY_BUCKETS_SECONDS);

  /**
   * One publish: its oldest covered message was sent by the upstream at `sentAtMs` (undefined: not known) and arrived
   * at `receivedAtMs`, its flush ran from `flushStartedAtMs`, until `publishedAtMs` (all performance.now() ms).
   */
  published(sentAtMs: number | undefined, receivedAtMs: number, flushStartedAtMs: number, flushDoneAtMs: number, publishedAtMs: number): void {
    this.receivedToPublished.observe(Math.max(0, publishedAtMs - receivedAtMs) / 1000);
    this.flush.observe(Math.max(0, flushDoneAtMs - flushStartedAtMs) / 1000);
    if (sentAtMs !== undefined) this.upstreamToReceived.observe(Math.max(0, receivedAtMs - sentAtMs) / 1000);
  }
}
