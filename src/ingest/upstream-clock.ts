/**
 * The upstream's send timestamps on walcast's own clock: each XLogData carries the time its walsender sent it (a
 * PostgreSQL TimestampTz, wall-clock µs since 2000-01-01), and the ingest timing (timeline/ingest-timing.ts) compares
 * it with when the follower received the message (performance.now(), monotonic ms) to see how long the message sat
 * in the network, the socket buffer and behind walcast's event loop.
 *
 * Date.now() has only millisecond resolution, too coarse for a hop of tens of µs, so the conversion uses the offset
 * between the wall clock and the monotonic clock that Node takes in µs at start (performance.timeOrigin). The two
 * only part when the wall clock is stepped (settimeofday, an NTP step; slewing moves both alike): `recheck`, run
 * about once a second, follows such a step. A sample of the offset from Date.now() is at most the true offset and
 * less than a millisecond below it (Date.now() truncates), so after a step the estimate is that sample and every
 * later sample above it raises it: the estimate climbs back to within tens of µs of the truth over a few seconds of
 * rechecks (samples land at random phases of the millisecond). Taking one sample as the new offset for good left
 * it up to 1 ms low, and every hop shorter than that read as 0 (seen in a quiet A/B: after the first round, p50,
 * p99 and mean all 0).
 */
import { performance } from 'node:perf_hooks';
import { PG_EPOCH_OFFSET_MICROS } from '../replication/stream-messages.js';

/** A sample this far (ms) below the estimate is a step back of the wall clock, not Date.now()'s truncation. */
const WALL_CLOCK_STEP_MS = 1;

export class UpstreamClock {
  /** Wall-clock ms at monotonic 0: the estimate of the offset between the two clocks. */
  private wallAtMonotonicZeroMs: number;

  /** The clocks are parameters for tests; walcast uses Date.now, performance.now and performance.timeOrigin. */
  constructor(
    private readonly wallNowMs: () => number = Date.now,
    private readonly monotonicNowMs: () => number = () => performance.now(),
    monotonicOriginWallMs: number = performance.timeOrigin,
  ) {
    this.wallAtMonotonicZeroMs = monotonicOriginWallMs;
  }

  /** Follows a step of the wall clock since the last check, and refines the estimate after one. */
  recheck(): void {
    const sample = this.wallNowMs() - this.monotonicNowMs();
    // Above the estimate: the truth is at least the sample (a step forward, or a refinement after a step back).
    // More than the truncation below it: a step back.
    if (sample > this.wallAtMonotonicZeroMs || sample < this.wallAtMonotonicZeroMs - WALL_CLOCK_STEP_MS) this.wallAtMonotonicZeroMs = sample;
  }

  /** An upstream send timestamp as monotonic ms (performance.now()'s scale); undefined for 0 (a sender that does not stamp). */
  toMonotonicMs(pgMicros: bigint): number | undefined {
    if (pgMicros <= 0n) return undefined;
    return Number(pgMicros + PG_EPOCH_OFFSET_MICROS) / 1000 - this.wallAtMonotonicZeroMs;
  }
}
