/**
 * Starts and stops live ingest for a server: one UpstreamFollower per timeline whose control file names an
 * upstream. The server calls `startIngest` once its timelines are open and `stop` before it closes; nothing else in
 * the server knows ingest exists.
 */
import { userInfo } from 'node:os';
import { WalcastError } from '../errors.js';
import type { Logger } from '../log.js';
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
  stop(): Promise<void>;
}

export async function startIngest(options: IngestOptions): Promise<IngestHandle> {
  const followers: UpstreamFollower[] = [];
  for (const timeline of options.timelines.list()) {
    const control = await timeline.controlFile.read();
    if (control.upstream === undefined) continue;
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
    // The follower logs its own failure; the promise never needs a handler beyond that.
    follower.start().catch((error: unknown) => options.log.error({ err: error }, 'ingest crashed'));
    followers.push(follower);
  }
  return {
    followers,
    stop: async () => {
      await Promise.all(followers.map((follower) => follower.stop()));
    },
  };
}
