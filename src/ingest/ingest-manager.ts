/**
 * Starts and stops live ingest for a server: one UpstreamFollower per timeline whose control file names an
 * upstream. The server calls `startIngest` once its timelines are open and `stop` before it closes; nothing else in
 * the server knows ingest exists.
 */
import { userInfo } from 'node:os';
import { WalcastError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Timeline } from '../timeline/timeline.js';
import type { TimelineRegistry } from '../timeline/timeline-registry.js';
import { parseConnInfo } from './conninfo.js';
import type { UpstreamConnInfo } from './conninfo.js';
import { UpstreamFollower, type UpstreamConnect } from './follower.js';
import { dropUpstreamSlot, type UpstreamSlotDrop } from './upstream-slot.js';

export interface IngestOptions {
  readonly timelines: TimelineRegistry;
  /** The upstream password (from --upstream-password-file or WALCAST_UPSTREAM_PASSWORD), shared by all upstreams. */
  readonly upstreamPassword: string | undefined;
  readonly log: Logger;
  readonly connect?: UpstreamConnect;
}

export interface IngestHandle {
  readonly followers: readonly UpstreamFollower[];
  /** Starts following a timeline opened while the server runs (no-op without an upstream in its control file). */
  follow(timeline: Timeline): Promise<void>;
  /**
   * Stops following a timeline that is being removed and drops the upstream slot walcast created for it;
   * undefined when the timeline had no follower.
   */
  unfollow(tenantId: string, timelineId: string): Promise<UpstreamSlotDrop | undefined>;
  stop(): Promise<void>;
}

export async function startIngest(options: IngestOptions): Promise<IngestHandle> {
  const followers: UpstreamFollower[] = [];
  /** Each follower's connection string, for dropping its upstream slot when its timeline is removed. */
  const conninfos = new Map<UpstreamFollower, UpstreamConnInfo>();
  let stopped = false;
  const follow = async (timeline: Timeline): Promise<void> => {
    if (stopped) return;
    const made = await makeFollower(options, timeline);
    if (made === undefined) return;
    const { follower, conninfo } = made;
    conninfos.set(follower, conninfo);
    // The follower logs its own failure; the promise never needs a handler beyond that.
    follower.start().catch((error: unknown) => options.log.error({ err: error }, 'ingest crashed'));
    followers.push(follower);
  };
  for (const timeline of options.timelines.list()) await follow(timeline);
  return {
    followers,
    follow,
    unfollow: async (tenantId, timelineId) => {
      const index = followers.findIndex((follower) => follower.status().tenantId === tenantId && follower.status().timelineId === timelineId);
      const follower = followers[index];
      if (follower === undefined) return undefined;
      followers.splice(index, 1);
      await follower.stop();
      const conninfo = conninfos.get(follower);
      conninfos.delete(follower);
      if (conninfo === undefined) return undefined;
      return dropUpstreamSlot({ conninfo, password: options.upstreamPassword, timelineId, log: options.log.child({ tenantId, timelineId }), ...(options.connect === undefined ? {} : { connect: options.connect }) });
    },
    stop: async () => {
      stopped = true;
      await Promise.all(followers.map((follower) => follower.stop()));
    },
  };
}

async function makeFollower(options: IngestOptions, timeline: Timeline): Promise<{ follower: UpstreamFollower; conninfo: UpstreamConnInfo } | undefined> {
  const control = await timeline.controlFile.read();
  if (control.upstream === undefined) return undefined;
  const conninfo = parseConnInfo(control.upstream, userInfo().username);
  if (conninfo instanceof WalcastError) throw conninfo;
  const follower = new UpstreamFollower({
    timeline,
    control,
    conninfo,
    password: options.upstreamPassword,
    log: options.log,
    ...(options.connect === undefined ? {} : { connect: options.connect }),
  });
  return { follower, conninfo };
}
