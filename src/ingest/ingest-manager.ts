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
import { UpstreamFollower, type UpstreamConnect } from './follower.js';

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
  stop(): Promise<void>;
}

export async function startIngest(options: IngestOptions): Promise<IngestHandle> {
  const followers: UpstreamFollower[] = [];
  let stopped = false;
  const follow = async (timeline: Timeline): Promise<void> => {
    if (stopped) return;
    const follower = await makeFollower(options, timeline);
    if (follower === undefined) return;
    // The follower logs its own failure; the promise never needs a handler beyond that.
    follower.start().catch((error: unknown) => options.log.error({ err: error }, 'ingest crashed'));
    followers.push(follower);
  };
  for (const timeline of options.timelines.list()) await follow(timeline);
  return {
    followers,
    follow,
    stop: async () => {
      stopped = true;
      await Promise.all(followers.map((follower) => follower.stop()));
    },
  };
}

async function makeFollower(options: IngestOptions, timeline: Timeline): Promise<UpstreamFollower | undefined> {
  const control = await timeline.controlFile.read();
  if (control.upstream === undefined) return undefined;
  const conninfo = parseConnInfo(control.upstream, userInfo().username);
  if (conninfo instanceof WalcastError) throw conninfo;
  return new UpstreamFollower({
    timeline,
    control,
    conninfo,
    password: options.upstreamPassword,
    log: options.log,
    ...(options.connect === undefined ? {} : { connect: options.connect }),
  });
}
