/**
 * A watched LSN (a timeline's commit or flush position): it only moves forward, and whoever waits for it to pass a
 * position is woken the moment it does — no polling — or when its timeout runs out (the seed's wait_for_lsn with
 * POLL_STATE_TIMEOUT). One watch serves every sender of a timeline, so waiting costs one entry per waiter.
 */
import assert from 'node:assert/strict';
import { CONNECTIONS_MAX } from '../config/limits.js';
import { assertLsn, type Lsn } from '../lsn.js';

/** Waiters per watch that are not senders (ingest, tests); a handful at most. */
const LSN_WATCH_OTHER_WAITERS_MAX = 64;
/**
 * Waiters per watch: one per sender, and a sender needs a connection, so the connection ceiling bounds them (plus a
 * few others); more would be a leak. Derived, so that no accepted `--max-connections` can reach the assertion.
 */
export const LSN_WATCH_WAITERS_MAX = CONNECTIONS_MAX + LSN_WATCH_OTHER_WAITERS_MAX;

/**
 * Listeners per watch (`listen`): the commit fan-out batcher of the watch (replication/fanout-batch.ts) and a few
 * others at most; more would be a leak.
 */
export const LSN_WATCH_LISTENERS_MAX = 8;

/** Told of every move of the watch before the waiters it wakes run (timeline/publish-timing.ts). */
export interface LsnWatchSink {
  published(lsn: Lsn): void;
}

interface Waiter {
  readonly position: Lsn;
  readonly resolve: (lsn: Lsn | undefined) => void;
}

export class LsnWatch {
  private value: Lsn;
  private readonly waiters = new Set<Waiter>();
  /** The smallest position any waiter waits beyond; lets `advance` skip the scan when nobody can wake. */
  private lowestWaitPosition: Lsn | undefined;
  /** Waiters by the signal that ends them (abortableWaiters). */
  private readonly bySignal = new WeakMap<AbortSignal, Set<Waiter>>();
  /** Called synchronously on every move (`listen`); an array, iterated per publish without an iterator object. */
  private listeners: ((lsn: Lsn) => void)[] = [];

  constructor(
    initial: Lsn,
    private readonly sink?: LsnWatchSink,
  ) {
    assertLsn(initial);
    this.value = initial;
  }

  get(): Lsn {
    return this.value;
  }

  waiterCount(): number {
    return this.waiters.size;
  }

  /**
   * The waiters `signal` ends, with one abort listener per signal for the signal's life instead of one added and
   * removed per wait: that pair cost every stream two EventTarget calls per publish, about 3% of the event loop at
   * 1,000 waiting replicas (profiled, issue 13). The listener holds only the set, and the set dies with the signal.
   */
  private abortableWaiters(signal: AbortSignal): Set<Waiter> {
    const known = this.bySignal.get(signal);
    if (known !== undefined) return known;
    const waiters = new Set<Waiter>();
    this.bySignal.set(signal, waiters);
    signal.addEventListener('abort', () => {
      for (const waiter of [...waiters]) waiter.resolve(undefined);
    }, { once: true });
    return waiters;
  }

  /** Moves the LSN forward (never back: a watched position that regressed would resend or skip WAL). */
  advance(lsn: Lsn): void {
    assertLsn(lsn);
    assert.ok(lsn >= this.value, 'LsnWatch moves only forward');
    if (lsn === this.value) return;
    this.value = lsn;
    this.sink?.published(lsn);
    const listeners = this.listeners;
    for (let index = 0; index < listeners.length; index++) listeners[index]!(lsn);
    if (this.lowestWaitPosition === undefined || lsn <= this.lowestWaitPosition) return;
    let lowest: Lsn | undefined;
    for (const waiter of this.waiters) {
      if (lsn > waiter.position) {
        this.waiters.delete(waiter);
        waiter.resolve(lsn);
      } else if (lowest === undefined || waiter.position < lowest) {
        lowest = waiter.position;
      }
    }
    this.lowestWaitPosition = lowest;
  }

  /**
   * Calls `listener` with the new LSN, synchronously inside `advance`, on every move until the returned function is
   * called. For a waiter that waits again after every move (the fan-out batcher): a `waitBeyond` per move cost a
   * promise, a closure and a timer set and cleared per publish (~0.02 ms of CPU per commit, profiled, issue 13). It
   * runs inside the publisher's call, so a listener that does more than note the move defers it (queueMicrotask).
   */
  listen(listener: (lsn: Lsn) => void): () => void {
    assert.ok(this.listeners.length < LSN_WATCH_LISTENERS_MAX, 'too many LSN watch listeners');
    // Copy on change: a listener that unsubscribes during advance does not disturb the iteration under way.
    this.listeners = [...this.listeners, listener];
    let listening = true;
    return () => {
      if (!listening) return;
      listening = false;
      this.listeners = this.listeners.filter((entry) => entry !== listener);
    };
  }

  listenerCount(): number {
    return this.listeners.length;
  }

  /**
   * Resolves with the new LSN as soon as it is beyond `position`, or with undefined after `timeoutMs` or when
   * `signal` aborts. Resolves at once when the LSN is already beyond.
   */
  waitBeyond(position: Lsn, timeoutMs: number, signal?: AbortSignal): Promise<Lsn | undefined> {
    assert.ok(timeoutMs >= 0);
    if (this.value > position) return Promise.resolve(this.value);
    if (signal?.aborted === true) return Promise.resolve(undefined);
    assert.ok(this.waiters.size < LSN_WATCH_WAITERS_MAX, 'too many LSN waiters');
    return new Promise((resolve) => {
      const abortable = signal === undefined ? undefined : this.abortableWaiters(signal);
      const finish = (lsn: Lsn | undefined): void => {
        clearTimeout(timer);
        abortable?.delete(waiter);
        this.waiters.delete(waiter);
        resolve(lsn);
      };
      const waiter: Waiter = { position, resolve: finish };
      const timer = setTimeout(() => finish(undefined), timeoutMs);
      abortable?.add(waiter);
      this.waiters.add(waiter);
      if (this.lowestWaitPosition === undefined || position < this.lowestWaitPosition) this.lowestWaitPosition = position;
    });
  }
}
