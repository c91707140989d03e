/**
 * What a replica reports about itself: standby status updates, hot-standby feedback and Neon pageserver feedback,
 * as the replica registry keeps them. The wire codecs that produce these live in replication/feedback.ts.
 */
import type { Lsn } from '../lsn.js';

export interface StandbyReply {
  readonly kind: 'standby_reply';
  readonly writeLsn: Lsn;
  readonly flushLsn: Lsn;
  readonly applyLsn: Lsn;
  /** TimestampTz: microseconds since 2000-01-01 UTC. */
  readonly replyTimeMicros: bigint;
  readonly replyRequested: boolean;
}

export interface HotStandbyFeedback {
  readonly kind: 'hot_standby';
  readonly timeMicros: bigint;
  /** FullTransactionId: epoch << 32 | xid (0 = none). */
  readonly xmin: bigint;
  readonly catalogXmin: bigint;
}

export interface PageserverFeedback {
  readonly kind: 'pageserver';
  readonly currentTimelineSize: bigint;
  readonly lastReceivedLsn: Lsn;
  readonly diskConsistentLsn: Lsn;
  readonly remoteConsistentLsn: Lsn;
  readonly replyTimeMicros: bigint;
  readonly shardNumber: number;
  readonly corruptionDetected: boolean;
}

export type Feedback = StandbyReply | HotStandbyFeedback | PageserverFeedback;
