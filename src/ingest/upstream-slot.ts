/**
 * Dropping the physical slot walcast created upstream for a timeline (`walcast_<timeline id prefix>`, made by
 * create-timeline.ts), when the timeline is removed: a slot nobody follows holds the upstream's WAL forever.
 *
 * The drop uses `DROP_REPLICATION_SLOT name WAIT` (PostgreSQL 15), which waits for the walsender of the follower
 * that just disconnected to release the slot instead of failing with 55006. A slot the upstream does not have
 * (42704: never created, dropped by hand, or the upstream is a newly promoted standby, which does not inherit
 * slots) is fine. Any other failure is returned, not thrown: the removal goes on, and the caller logs the command an
 * operator must run on the upstream.
 */
import { ServerError, connectReplication } from '../wire/client.js';
import { SqlState } from '../errors.js';
import type { Logger } from '../log.js';
import type { UpstreamConnInfo } from './conninfo.js';
import { upstreamConnectTimeoutMs, upstreamSlotName, type UpstreamConnect } from './follower.js';
import { connectFirstMatching } from './upstream-connect.js';

export type UpstreamSlotDrop = { readonly outcome: 'dropped' | 'absent'; readonly slotName: string } | { readonly outcome: 'failed'; readonly slotName: string; readonly error: string };

export async function dropUpstreamSlot(options: {
  readonly conninfo: UpstreamConnInfo;
  readonly password: string | undefined;
  readonly timelineId: string;
  readonly log: Logger;
  readonly connect?: UpstreamConnect;
}): Promise<UpstreamSlotDrop> {
  const slotName = upstreamSlotName(options.timelineId);
  const { conninfo } = options;
  try {
    const { client } = await connectFirstMatching({
      conninfo,
      password: options.password,
      timeoutMs: upstreamConnectTimeoutMs(conninfo),
      connect: options.connect ?? connectReplication,
    });
    try {
      await client.query(`DROP_REPLICATION_SLOT "${slotName}" WAIT`);
      options.log.info({ slot: slotName }, 'dropped the upstream replication slot walcast created for the timeline');
      return { outcome: 'dropped', slotName };
    } finally {
      await client.end().catch(() => undefined);
    }
  } catch (error) {
    if (error instanceof ServerError && error.sqlState === SqlState.undefinedObject) return { outcome: 'absent', slotName };
    const message = error instanceof Error ? error.message : String(error);
    options.log.error({ slot: slotName, err: message }, `could not drop the upstream replication slot: it holds WAL on the upstream until dropped there (DROP_REPLICATION_SLOT "${slotName}" on a replication connection, or SELECT pg_drop_replication_slot('${slotName}'))`);
    return { outcome: 'failed', slotName, error: message };
  }
}
