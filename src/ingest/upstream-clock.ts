/**
 * The upstream's send timestamps on walcast's own clock: each XLogData carries the time its walsender sent it (a
 * PostgreSQL TimestampTz, wall-clock µs since 2000-01-01), and the ingest timing (timeline/ingest-timing.ts) compares
 * it with when the follower received the message (performance.now(), monotonic ms) to see how long the message sat
 * in the network, the socket buffer and behind walcast's event loop.
 *
 * Date.now() has only millisecond resolution, too coarse for a hop of tens of µs, so the conversion uses the offset
 * between the wall clock and the monotonic clock that Node takes in µs at start (performance.timeOrigin). The two
 * only part when the wall clock is stepped (settimeofday, an NTP step; slewing moves both alike): `recheck`, run
 * about once a second, follows such a step to within Date.now()'s millisecond.
 */
import { performance } from 'node:perf_hooks';
import { PG_EPOCH_OFFSET_MICROS } from '../replication/stream-messages.js';

/** A wall-clock step larger than this (ms) moves the offset; below it Date.now()'s truncation is all there is. */
const WALL_CLOCK_STEP_MS = 1;

export class UpstreamClock {
  /** Wall-clock ms at performance.now() = 0. */
  private wallAtMonotonicZeroMs = performance.timeOrigin;

  /** Follows a step of the wall clock since the last check. */
  recheck(): void {
    const drift = Date.now() - (this.wallAtMonotonicZeroMs + performance.now());
    if (Math.abs(drift) > WALL_CLOCK_STEP_MS) this.wallAtMonotonicZeroMs += drift;
  }

  /** An upstream send timestamp as performance.now() ms; undefined for 0 (a sender that does not stamp). */
  toMonotonicMs(pgMicros: bigint): number | undefined {
    if (pgMicros <= 0n) return undefined;
    return Number(pgMicros + PG_EPOCH_OFFSET_MICROS) / 1000 - this.wallAtMonotonicZeroMs;
  }
}
