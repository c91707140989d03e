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

export class TimelineRegistry {
  private readonly timelines = new Map<string, Timeline>();

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

  /** The only timeline's key, or undefined when there are none or several. */
  soleTimelineKey(): TimelineKeyPair | undefined {
    if (this.timelines.size !== 1) return undefined;
    const [only] = this.timelines.values();
    assert.ok(only !== undefined);
    return { tenantId: only.tenantId, timelineId: only.timelineId };
  }
}

function registryKey(tenantId: string, timelineId: string): string {
  return `${tenantId}/${timelineId}`;
}
