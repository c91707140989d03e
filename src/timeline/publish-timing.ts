/**
 * walcast's own share of commit latency, measured inside walcast: from the moment a commit LSN is published (the
 * commit watch moves, waking the senders that wait on it) to the moment each live replica's chunk holding it was
 * written to that replica's socket. Two histograms come out of it (src/api/metrics.ts exports them):
 *
 * - publish → socket, one observation per live stream and publish, labelled by what the stream was doing when
 *   the publish landed: `waiting` (parked on the watch, woken by this publish) or `busy` (a live stream still
 *   sending an earlier publish; it picks this one up on its next turn, and its latency counts from the publish,
 *   not from when it got round to it).
 * - publish fan-out, one observation per publish that reached at least one live stream: until the last of them
 *   wrote it.
 *
 * "Live" is what makes the numbers mean commit latency: a stream becomes live the first time it waits on the
 * watch (it has sent everything published), and stops being live when it ends or falls so far behind that it owes
 * more than OWED_PUBLISHES_PER_STREAM_MAX publishes (it is catching up, like a new replica, and its waits would
 * measure its backlog, not walcast). Catching-up streams are never counted. Dropped streams are counted.
 *
 * The sender loop drives one StreamPublishClock per stream (replication/send-wal.ts): `waiting` before it waits,
 * `chunkAccepted` after a chunk is handed to the I/O backend, and `written` once the backend reports that chunk
 * written (StreamWriter.afterWritten). Costs: one clock read and one small record per live stream per publish, one
 * observer per chunk that completes a publish, no timers; nothing per chunk of a stream that owes nothing.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import type { Lsn } from '../lsn.js';

/**
 * Publishes one live stream may owe before it is no longer counted as live. At thousands of publishes a second a
 * stream that writes within a few milliseconds owes a handful; 256 owed means it is hundreds of milliseconds
 * behind, i.e. catching up. Bounds the memory per stream.
 */
export const OWED_PUBLISHES_PER_STREAM_MAX = 256;

/**
 * Histogram bucket upper bounds, in seconds: 0.1 ms steps up to 1 ms (the goal at 100 replicas), 0.25-0.5 ms steps up
 * to 5 ms (the goal at 1,000), so the harness's percentiles (bucket upper bounds) tell 1.1 ms from 2.5 ms; then
 * coarser up to seconds for a stalled event loop.
 */
export const PUBLISH_LATENCY_BUCKETS_SECONDS: readonly number[] = [
  0.00005, 0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.0006, 0.0007, 0.0008, 0.0009, 0.001, 0.00125, 0.0015, 0.00175, 0.002,
  0.0025, 0.003, 0.0035, 0.004, 0.0045, 0.005, 0.006, 0.007, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25,
  0.5, 1, 2.5,
];

/** A latency histogram with fixed buckets (counts per bucket here; the /metrics rendering makes them cumulative). */
export class LatencyHistogram {
  /** counts[i] = observations ≤ bounds[i] and > bounds[i-1]; the last slot counts those above every bound (+Inf). */
  readonly counts: number[] = new Array<number>(PUBLISH_LATENCY_BUCKETS_SECONDS.length + 1).fill(0);
  count = 0;
  sumSeconds = 0;

  observe(seconds: number): void {
    this.observeMany(seconds, 1);
  }

  /** `times` observations of the same value (a batch stamps every stream it wrote with one clock read). */
  observeMany(seconds: number, times: number): void {
    // Binary search for the first bound ≥ seconds (bounds.length when above all: the +Inf slot).
    const bounds = PUBLISH_LATENCY_BUCKETS_SECONDS;
    let low = 0;
    let high = bounds.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (seconds > (bounds[middle] ?? Infinity)) low = middle + 1;
      else high = middle;
    }
    this.counts[low] = (this.counts[low] ?? 0) + times;
    this.count += times;
    this.sumSeconds += seconds * times;
  }
}

export type StreamStateAtPublish = 'waiting' | 'busy';

/** One publish that reached live streams, until the last of them wrote it or stopped being counted. */
interface Publish {
  readonly lsn: Lsn;
  readonly atMs: number;
  /** Live streams that owe this publish a write. */
  pending: number;
  /**
   * When the latest of its streams wrote it; NOT_WRITTEN until one did. A number from the start: a field that began
   * as undefined holds each later double in a new heap box, one per stream and publish.
   */
  lastWrittenAtMs: number;
}

/** Publish.lastWrittenAtMs before any stream wrote it. */
const NOT_WRITTEN = -1;

/** Capacity an OwedPublishes starts with: a caught-up stream owes one or two publishes at a time. */
const OWED_RING_INITIAL = 4;

/**
 * The publishes one stream owes, oldest first, with the stream's state at each: a ring that grows (to
 * OWED_PUBLISHES_PER_STREAM_MAX at most) and is then reused, so owing and settling a publish allocates nothing. A
 * record object per stream and publish, in an array emptied after each write (which frees its backing store, so the
 * next publish allocates one again), was about a tenth of the server's allocations per publish at 1,000 replicas
 * (allocation sampling, issue 13): garbage that brings the young-generation collections, each a pause for the next
 * commit's fan-out.
 */
class OwedPublishes {
  private publishes: (Publish | undefined)[] = new Array<Publish | undefined>(OWED_RING_INITIAL).fill(undefined);
  private states: StreamStateAtPublish[] = new Array<StreamStateAtPublish>(OWED_RING_INITIAL).fill('busy');
  private head = 0;
  length = 0;

  /** The index-th oldest owed publish (index < length). */
  publishAt(index: number): Publish {
    const publish = this.publishes[(this.head + index) % this.publishes.length];
    assert.ok(publish !== undefined && index < this.length, 'an owed publish');
    return publish;
  }

  stateAt(index: number): StreamStateAtPublish {
    return this.states[(this.head + index) % this.states.length] ?? 'busy';
  }

  push(publish: Publish, state: StreamStateAtPublish): void {
    if (this.length === this.publishes.length) this.grow();
    const slot = (this.head + this.length) % this.publishes.length;
    this.publishes[slot] = publish;
    this.states[slot] = state;
    this.length++;
  }

  /** Forgets the `count` oldest (their publishes are no longer held). */
  dropOldest(count: number): void {
    assert.ok(count <= this.length);
    for (let index = 0; index < count; index++) {
      this.publishes[this.head] = undefined;
      this.head = (this.head + 1) % this.publishes.length;
    }
    this.length -= count;
    if (this.length === 0) this.head = 0;
  }

  private grow(): void {
    const capacity = this.publishes.length * 2;
    const publishes = new Array<Publish | undefined>(capacity).fill(undefined);
    const states = new Array<StreamStateAtPublish>(capacity).fill('busy');
    for (let index = 0; index < this.length; index++) {
      publishes[index] = this.publishAt(index);
      states[index] = this.stateAt(index);
    }
    this.publishes = publishes;
    this.states = states;
    this.head = 0;
  }
}

/** The sender loop's side of the timing (one per stream); replication/send-wal.ts PublishClock. */
export interface StreamPublishClock {
  /** The stream has sent everything up to `sentLsn` and now waits on the watch: it is live. */
  waiting(sentLsn: Lsn): void;
  /**
   * A chunk ending at `throughLsn` was handed to the backend. True when its written report would complete a publish
   * no earlier report covers: the caller then asks the backend to call `written(throughLsn)` once it is written.
   */
  chunkAccepted(throughLsn: Lsn): boolean;
  /**
   * Everything up to `throughLsn` reached the socket, at `atMs` (performance.now()) when the caller read the clock
   * as the write returned (a batch writes many streams in one call: one clock read for all), else now.
   */
  written(throughLsn: Lsn, atMs?: number): void;
  /** The stream ended: it owes nothing any more. Idempotent. */
  close(): void;
}

/** Per watch (the commit watch of one timeline): the sink LsnWatch reports each move to, and the histograms. */
export class PublishTiming {
  readonly publishToSocket: Record<StreamStateAtPublish, LatencyHistogram> = { waiting: new LatencyHistogram(), busy: new LatencyHistogram() };
  readonly fanout = new LatencyHistogram();
  /** Streams that stopped being counted because they owed too many publishes (fell behind). */
  streamsDropped = 0;
  private readonly live = new Set<StreamClock>();

  /** Called by the watch when its LSN moves forward to `lsn`, before the waiters it wakes run. */
  published(lsn: Lsn): void {
    if (this.live.size === 0) return;
    const publish: Publish = { lsn, atMs: performance.now(), pending: 0, lastWrittenAtMs: NOT_WRITTEN };
    for (const stream of this.live) {
      if (stream.owe(publish)) publish.pending++;
    }
  }

  /** A clock for one sender stream; close it when the stream ends. */
  openStream(): StreamPublishClock {
    return new StreamClock(this);
  }

  /** Streams counted as live now (for tests and the status of a running benchmark). */
  liveStreams(): number {
    return this.live.size;
  }

  /** @internal StreamClock's bookkeeping. */
  setLive(stream: StreamClock, live: boolean): void {
    if (live) this.live.add(stream);
    else this.live.delete(stream);
  }

  /** @internal A stream wrote `publish` (owed since it was in `state`) at `nowMs`. */
  completed(publish: Publish, state: StreamStateAtPublish, nowMs: number): void {
    this.publishToSocket[state].observe((nowMs - publish.atMs) / 1000);
    publish.lastWrittenAtMs = nowMs;
    this.settle(publish);
  }

  /** @internal A stream stopped owing `publish` without writing it (ended, or dropped as behind). */
  abandoned(publish: Publish): void {
    this.settle(publish);
  }

  /** @internal */
  dropped(): void {
    this.streamsDropped++;
  }

  private settle(publish: Publish): void {
    assert.ok(publish.pending > 0, 'a publish is settled once per stream that owed it');
    publish.pending--;
    if (publish.pending === 0 && publish.lastWrittenAtMs !== NOT_WRITTEN) this.fanout.observe((publish.lastWrittenAtMs - publish.atMs) / 1000);
  }
}

class StreamClock implements StreamPublishClock {
  /** Publishes this stream owes a write, oldest (lowest LSN) first. */
  private readonly owed = new OwedPublishes();
  /** Everything up to here was accepted by the backend and its written report was asked for (or it was sent before it went live). */
  private reportedThrough: Lsn | undefined;
  /** What the stream has sent when it last waited; a publish at or below it is not owed. */
  private sentLsn: Lsn = 0n;
  private isWaiting = false;
  private isLive = false;
  private closed = false;

  constructor(private readonly timing: PublishTiming) {}

  waiting(sentLsn: Lsn): void {
    if (this.closed) return;
    this.sentLsn = sentLsn;
    this.isWaiting = true;
    if (!this.isLive) {
      this.isLive = true;
      this.timing.setLive(this, true);
    }
  }

  /** @internal Called by PublishTiming.published for each live stream; true when this stream now owes it. */
  owe(publish: Publish): boolean {
    if (publish.lsn <= this.sentLsn) return false;
    if (this.owed.length >= OWED_PUBLISHES_PER_STREAM_MAX) {
      this.timing.dropped();
      this.stopCounting();
      return false;
    }
    this.owed.push(publish, this.isWaiting ? 'waiting' : 'busy');
    // Whatever woke it, the stream is busy from this publish on until it waits again.
    this.isWaiting = false;
    return true;
  }

  chunkAccepted(throughLsn: Lsn): boolean {
    if (this.closed || !this.isLive) return false;
    this.sentLsn = throughLsn > this.sentLsn ? throughLsn : this.sentLsn;
    // The first owed publish no earlier report covers (a loop, not find: this runs per stream and batch).
    const reported = this.reportedThrough;
    let first: Publish | undefined;
    for (let index = 0; index < this.owed.length; index++) {
      const publish = this.owed.publishAt(index);
      if (reported === undefined || publish.lsn > reported) {
        first = publish;
        break;
      }
    }
    if (first === undefined || first.lsn > throughLsn) return false;
    this.reportedThrough = throughLsn;
    return true;
  }

  written(throughLsn: Lsn, atMs?: number): void {
    if (this.closed) return;
    const nowMs = atMs ?? performance.now();
    let done = 0;
    while (done < this.owed.length && this.owed.publishAt(done).lsn <= throughLsn) {
      this.timing.completed(this.owed.publishAt(done), this.owed.stateAt(done), nowMs);
      done++;
    }
    this.owed.dropOldest(done);
  }

  close(): void {
    if (this.closed) return;
    this.stopCounting();
    this.closed = true;
  }

  /** Leaves the live set and gives up what it owes; waiting again makes it live again. */
  private stopCounting(): void {
    for (let index = 0; index < this.owed.length; index++) this.timing.abandoned(this.owed.publishAt(index));
    this.owed.dropOldest(this.owed.length);
    this.reportedThrough = undefined;
    this.isWaiting = false;
    if (this.isLive) {
      this.isLive = false;
      this.timing.setLive(this, false);
    }
  }
}
