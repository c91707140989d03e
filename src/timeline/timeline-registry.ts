/**
 * All timelines the server serves, by tenant and timeline id. Plain PostgreSQL clients cannot name a timeline, so
 * when exactly one exists it is everyone's default.
 */
import assert from 'node:assert/strict';
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
}

export class TimelineRegistry {
  private readonly timelines = new Map<string, Timeline>();
  private readonly unavailable = new Map<string, UnavailableTimeline>();

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
   * The only timeline's key, or undefined when there are none or several. An unavailable timeline counts: a client
   * of a data directory whose one timeline is damaged should hear why, not that it must pick a timeline.
   */
  soleTimelineKey(): TimelineKeyPair | undefined {
    if (this.timelines.size + this.unavailable.size !== 1) return undefined;
    const [only] = [...this.timelines.values(), ...this.unavailable.values()];
    assert.ok(only !== undefined);
    return { tenantId: only.tenantId, timelineId: only.timelineId };
  }
}

function registryKey(tenantId: string, timelineId: string): string {
  return `${tenantId}/${timelineId}`;
}
