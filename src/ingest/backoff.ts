/**
 * Reconnect delays for ingest: exponential from RECONNECT_DELAY_MIN_MS, capped at RECONNECT_DELAY_MAX_MS, with
 * jitter so that a fleet of relays that lost the same upstream does not reconnect in lockstep. Pure arithmetic;
 * the follower owns the sleeping.
 */
import assert from 'node:assert/strict';

/** The first retry: fast enough that a restarted upstream is rejoined at once. */
export const RECONNECT_DELAY_MIN_MS = 100;
/** The cap: an upstream that is down for long is retried every 10 s, like a walreceiver's 5 s plus margin. */
export const RECONNECT_DELAY_MAX_MS = 10_000;
/** Each delay is randomly shortened by up to this fraction. */
const JITTER_FRACTION = 0.2;

assert.ok(RECONNECT_DELAY_MIN_MS > 0 && RECONNECT_DELAY_MIN_MS < RECONNECT_DELAY_MAX_MS);

export class Backoff {
  private attempt = 0;

  constructor(
    private readonly minMs = RECONNECT_DELAY_MIN_MS,
    private readonly maxMs = RECONNECT_DELAY_MAX_MS,
    private readonly random: () => number = Math.random,
  ) {
    assert.ok(minMs > 0 && minMs <= maxMs, 'backoff bounds are ordered');
  }

  /** The delay before the next attempt; each call doubles the next one up to the cap. */
  nextDelayMs(): number {
    const exponent = Math.min(this.attempt, 30);
    this.attempt++;
    const base = Math.min(this.maxMs, this.minMs * 2 ** exponent);
    const delay = Math.round(base * (1 - JITTER_FRACTION * this.random()));
    assert.ok(delay >= 0 && delay <= this.maxMs);
    return delay;
  }

  /** After a success (a stream that delivered WAL), the next failure starts from the minimum again. */
  reset(): void {
    this.attempt = 0;
  }
}
