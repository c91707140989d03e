/**
 * All timelines the server serves, by tenant and timeline id. Plain PostgreSQL clients cannot name a timeline, so
 * when exactly one exists it is everyone's default. A timeline being removed (timeline-removal.ts) is no longer
 * served but still known here, with the error that refuses connections to it, until its directory is gone.
 */
import assert from 'node:assert/strict';
import type { WalcastError } from '../errors.js';
import type { Timeline } from './timeline.js';

export interface TimelineKeyPair {
  readonly tenantId: string;
  readonly timelineId: string;
}

/** A timeline directory that could not be opened (a missing or corrupt control file): reported, never served. */
export interface UnavailableTimeline {
  readonly tenantId: string;
  readonly timelineId: string;
  readonly dir: string;
  /** Why, for logs, the status API and the ErrorResponse a replica that selects it gets. */
  readonly error: Error;
  /** Set when a removal of this timeline failed: the status API shows it, and a new removal request retries. */
  readonly removalFailed?: boolean;
}

export class TimelineRegistry {
  private readonly timelines = new Map<string, Timeline>();
  private readonly unavailable = new Map<string, UnavailableTimeline>();
  /** Timelines being removed: key → the error connections to them get. */
  private readonly removing = new Map<string, WalcastError>();
  /** Removals finished and failed since start (the /metrics counters). */
  readonly removals = { completed: 0, failed: 0 };

  add(timeline: Timeline): void {
    const key = registryKey(timeline.tenantId, timeline.timelineId);
    assert.ok(!this.timelines.has(key), `timeline ${key} registered twice`);
    this.timelines.set(key, timeline);
  }

  get(tenantId: string, timelineId: string): Timeline | undefined {
    return this.timelines.get(registryKey(tenantId, timelineId));
  }

  list(): Timeline[] {
    return [...this.timelines.values()];
  }

  addUnavailable(entry: UnavailableTimeline): void {
    const key = registryKey(entry.tenantId, entry.timelineId);
    assert.ok(!this.timelines.has(key) && !this.unavailable.has(key), `timeline ${key} registered twice`);
    this.unavailable.set(key, entry);
  }

  getUnavailable(tenantId: string, timelineId: string): UnavailableTimeline | undefined {
    return this.unavailable.get(registryKey(tenantId, timelineId));
  }

  listUnavailable(): UnavailableTimeline[] {
    return [...this.unavailable.values()];
  }

  /**
   * Takes a timeline (served or unavailable) out of service for removal: from now on `get` and `getUnavailable` do
   * not find it, and `removalError` gives the error that refuses connections to it. Returns what was registered.
   */
  beginRemoval(tenantId: string, timelineId: string, error: WalcastError): { timeline: Timeline | undefined; unavailable: UnavailableTimeline | undefined } {
    const key = registryKey(tenantId, timelineId);
    assert.ok(!this.removing.has(key), `timeline ${key} is being removed already`);
    const timeline = this.timelines.get(key);
    const unavailable = this.unavailable.get(key);
    this.timelines.delete(key);
    this.unavailable.delete(key);
    this.removing.set(key, error);
    return { timeline, unavailable };
  }

  /** Ends a removal: gone for good, or failed (then listed as unavailable with why, until a retry). */
  endRemoval(tenantId: string, timelineId: string, failure?: UnavailableTimeline): void {
    const key = registryKey(tenantId, timelineId);
    assert.ok(this.removing.delete(key), `timeline ${key} was being removed`);
    if (failure === undefined) {
      this.removals.completed++;
      return;
    }
    this.removals.failed++;
    this.unavailable.set(key, { ...failure, removalFailed: true });
  }

  /** The error for a connection that names a timeline being removed, else undefined. */
  removalError(tenantId: string, timelineId: string): WalcastError | undefined {
    return this.removing.get(registryKey(tenantId, timelineId));
  }

  removingCount(): number {
    return this.removing.size;
  }

  /**
   * The only timeline's key, or undefined when there are none or several. An unavailable timeline counts: a client
   * of a data directory whose one timeline is damaged should hear why, not that it must pick a timeline.
   */
  soleTimelineKey(): TimelineKeyPair | undefined {
    // One being removed counts too: a client of it hears that it was removed, not that it must pick a timeline.
    if (this.timelines.size + this.unavailable.size + this.removing.size !== 1) return undefined;
    const [only] = [...this.timelines.values(), ...this.unavailable.values()];
    if (only === undefined) {
      const [removingKey] = [...this.removing.keys()];
      assert.ok(removingKey !== undefined);
      const [tenantId = '', timelineId = ''] = removingKey.split('/');
      return { tenantId, timelineId };
    }
    return { tenantId: only.tenantId, timelineId: only.timelineId };
  }
}

function registryKey(tenantId: string, timelineId: string): string {
  return `${tenantId}/${timelineId}`;
}
