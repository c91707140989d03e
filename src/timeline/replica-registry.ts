/**
 * The replicas streaming one timeline: who they are, what they were sent, and their latest feedback of each kind
 * ('r' standby status, 'h' hot-standby feedback, 'z' pageserver feedback), plus the timeline-wide aggregates built
 * from them (the seed's WalSenders / ReplicaState).
 *
 * A replica is registered when START_REPLICATION begins and unregistered by its handle however the stream ends.
 * Aggregates reflect every feedback of any kind and every unregister, recomputed on the next read after one (Neon
 * recomputed only on 'h', so a standby's flush position in the aggregate lagged behind its real one).
 */
import assert from 'node:assert/strict';
import { CONNECTIONS_MAX } from '../config/limits.js';
import { maxLsn, minLsn, type Lsn } from '../lsn.js';
import type { Feedback, HotStandbyFeedback, PageserverFeedback, StandbyReply } from './replica-feedback.js';

/**
 * Replicas per timeline: each streams on its own connection, so the connection ceiling bounds them; more would be
 * a leak of handles. Derived, so that no accepted `--max-connections` can reach the assertion in register().
 */
export const REPLICAS_PER_TIMELINE_MAX = CONNECTIONS_MAX;

export interface ReplicaInfo {
  readonly appName: string;
  readonly remoteAddress: string;
  readonly startLsn: Lsn;
  readonly startedAt: Date;
  readonly connId: number;
}

export interface FeedbackCounts {
  standbyReply: number;
  hotStandby: number;
  pageserver: number;
}

export interface ReplicaSnapshot extends ReplicaInfo {
  readonly replicaId: number;
  readonly sentLsn: Lsn;
  readonly bytesSent: number;
  /**
   * Milliseconds the sender spent waiting for its prefetch reads (cold WAL read from disk, at idle I/O priority with
   * the native backend: a busy disk holds them back), finished waits; and when the wait in progress started.
   */
  readonly diskWaitMs: number;
  readonly diskWaitSince: Date | undefined;
  readonly standbyReply: StandbyReply | undefined;
  readonly hotStandby: HotStandbyFeedback | undefined;
  readonly pageserver: PageserverFeedback | undefined;
  /** When the latest feedback of any kind arrived (undefined: none yet). */
  readonly lastFeedbackAt: Date | undefined;
  readonly feedbackCounts: Readonly<FeedbackCounts>;
}

/** Timeline-wide aggregates over the connected replicas (undefined where no replica reported that kind). */
export interface ReplicaAggregates {
  /** Minimum non-zero xmin / catalog_xmin over hot-standby feedback: what must not be vacuumed upstream. */
  readonly hotStandbyXmin: bigint | undefined;
  readonly hotStandbyCatalogXmin: bigint | undefined;
  /** Minimum write/flush/apply over standby status updates. */
  readonly standbyWriteLsn: Lsn | undefined;
  readonly standbyFlushLsn: Lsn | undefined;
  readonly standbyApplyLsn: Lsn | undefined;
  /** Minimum last-received LSN over pageservers (Neon's laggard_lsn). */
  readonly pageserverLaggardLsn: Lsn | undefined;
  /** Maximum remote-consistent LSN ever reported by a pageserver on this timeline (never goes back). */
  readonly remoteConsistentLsn: Lsn | undefined;
}

const EMPTY_AGGREGATES: ReplicaAggregates = {
  hotStandbyXmin: undefined,
  hotStandbyCatalogXmin: undefined,
  standbyWriteLsn: undefined,
  standbyFlushLsn: undefined,
  standbyApplyLsn: undefined,
  pageserverLaggardLsn: undefined,
  remoteConsistentLsn: undefined,
};

interface ReplicaState {
  readonly info: ReplicaInfo;
  readonly replicaId: number;
  sentLsn: Lsn;
  bytesSent: number;
  diskWaitMs: number;
  diskWaitSince: Date | undefined;
  standbyReply: StandbyReply | undefined;
  hotStandby: HotStandbyFeedback | undefined;
  pageserver: PageserverFeedback | undefined;
  lastFeedbackAt: Date | undefined;
  readonly feedbackCounts: FeedbackCounts;
}

/** The per-stream handle: the reply reader feeds it, the sender reports progress to it. */
export class ReplicaHandle {
  private registered = true;

  constructor(
    private readonly registry: ReplicaRegistry,
    private readonly state: ReplicaState,
  ) {}

  get replicaId(): number {
    return this.state.replicaId;
  }

  /** FeedbackSink for the reply reader. */
  update(feedback: Feedback): void {
    if (!this.registered) return;
    const state = this.state;
    state.lastFeedbackAt = new Date();
    switch (feedback.kind) {
      case 'standby_reply':
        state.standbyReply = feedback;
        state.feedbackCounts.standbyReply++;
        break;
      case 'hot_standby':
        state.hotStandby = feedback;
        state.feedbackCounts.hotStandby++;
        break;
      case 'pageserver':
        state.pageserver = feedback;
        state.feedbackCounts.pageserver++;
        break;
    }
    this.registry.onFeedback(feedback);
  }

  setSentLsn(lsn: Lsn): void {
    assert.ok(lsn >= this.state.sentLsn, 'the sent position only moves forward');
    this.state.sentLsn = lsn;
  }

  addBytesSent(bytes: number): void {
    assert.ok(bytes >= 0);
    this.state.bytesSent += bytes;
    this.registry.bytesSentTotal += bytes;
  }

  /** The sender waits for a prefetch read (true) or that wait ended (false): see ReplicaSnapshot.diskWaitMs. */
  diskWait(waiting: boolean, now = new Date()): void {
    const state = this.state;
    if (waiting) {
      state.diskWaitSince ??= now;
    } else if (state.diskWaitSince !== undefined) {
      state.diskWaitMs += Math.max(0, now.getTime() - state.diskWaitSince.getTime());
      state.diskWaitSince = undefined;
    }
  }

  /** This replica's own remote-consistent LSN, from pageserver feedback only (standbys never report one). */
  remoteConsistentLsn(): Lsn | undefined {
    return this.state.pageserver?.remoteConsistentLsn;
  }

  unregister(): void {
    if (!this.registered) return;
    this.registered = false;
    this.registry.remove(this.state.replicaId);
  }
}

export class ReplicaRegistry {
  private readonly replicas = new Map<number, ReplicaState>();
  private nextReplicaId = 1;
  /**
   * Recomputed when read after a change (undefined: stale), not on every feedback: a publish makes every replica
   * reply, and a fold over all replicas per reply was O(replicas²) per publish at 1,000 replicas (issue 13).
   */
  private aggregatesCache: ReplicaAggregates | undefined = EMPTY_AGGREGATES;
  /** Kept across disconnects: a remote-consistent LSN once reported stays true (Neon persists it). */
  private remoteConsistentLsnMax: Lsn | undefined;
  /** Feedback messages received on this timeline, by kind, since the server started. */
  readonly feedbackTotals: FeedbackCounts = { standbyReply: 0, hotStandby: 0, pageserver: 0 };
  bytesSentTotal = 0;

  register(info: ReplicaInfo): ReplicaHandle {
    assert.ok(this.replicas.size < REPLICAS_PER_TIMELINE_MAX, 'too many replicas on one timeline');
    const replicaId = this.nextReplicaId++;
    const state: ReplicaState = {
      info,
      replicaId,
      sentLsn: info.startLsn,
      bytesSent: 0,
      diskWaitMs: 0,
      diskWaitSince: undefined,
      standbyReply: undefined,
      hotStandby: undefined,
      pageserver: undefined,
      lastFeedbackAt: undefined,
      feedbackCounts: { standbyReply: 0, hotStandby: 0, pageserver: 0 },
    };
    this.replicas.set(replicaId, state);
    return new ReplicaHandle(this, state);
  }

  count(): number {
    return this.replicas.size;
  }

  snapshot(): ReplicaSnapshot[] {
    return [...this.snapshots()];
  }

  /**
   * The replicas one at a time, each copied when reached: a reader that yields to the event loop between replicas
   * (the /metrics render, api/metrics-render.ts) sees replicas that left meanwhile skipped and new ones appended,
   * as a Map iterator does, and never holds the loop for a copy of all of them.
   */
  *snapshots(): Generator<ReplicaSnapshot> {
    for (const state of this.replicas.values()) {
      const { info, feedbackCounts } = state;
      // Fields spelled out rather than spread: object spread was most of a 1,000-replica /metrics scrape's CPU.
      yield {
        appName: info.appName,
        remoteAddress: info.remoteAddress,
        startLsn: info.startLsn,
        startedAt: info.startedAt,
        connId: info.connId,
        replicaId: state.replicaId,
        sentLsn: state.sentLsn,
        bytesSent: state.bytesSent,
        diskWaitMs: state.diskWaitMs,
        diskWaitSince: state.diskWaitSince,
        standbyReply: state.standbyReply,
        hotStandby: state.hotStandby,
        pageserver: state.pageserver,
        lastFeedbackAt: state.lastFeedbackAt,
        feedbackCounts: { standbyReply: feedbackCounts.standbyReply, hotStandby: feedbackCounts.hotStandby, pageserver: feedbackCounts.pageserver },
      };
    }
  }

  aggregates(): ReplicaAggregates {
    this.aggregatesCache ??= this.recompute();
    return this.aggregatesCache;
  }

  /** @internal called by ReplicaHandle. */
  onFeedback(feedback: Feedback): void {
    switch (feedback.kind) {
      case 'standby_reply':
        this.feedbackTotals.standbyReply++;
        break;
      case 'hot_standby':
        this.feedbackTotals.hotStandby++;
        break;
      case 'pageserver':
        this.feedbackTotals.pageserver++;
        this.remoteConsistentLsnMax = maxOptional(this.remoteConsistentLsnMax, feedback.remoteConsistentLsn);
        break;
    }
    this.aggregatesCache = undefined;
  }

  /** @internal called by ReplicaHandle. */
  remove(replicaId: number): void {
    const removed = this.replicas.delete(replicaId);
    assert.ok(removed, 'a replica is unregistered once');
    this.aggregatesCache = undefined;
  }

  private recompute(): ReplicaAggregates {
    let aggregates: { -readonly [K in keyof ReplicaAggregates]: ReplicaAggregates[K] } = { ...EMPTY_AGGREGATES };
    for (const state of this.replicas.values()) aggregates = foldReplica(aggregates, state);
    aggregates.remoteConsistentLsn = this.remoteConsistentLsnMax;
    return aggregates;
  }
}

function foldReplica(into: { -readonly [K in keyof ReplicaAggregates]: ReplicaAggregates[K] }, state: ReplicaState): typeof into {
  const hot = state.hotStandby;
  // A zero xmin means "no feedback" (hot_standby_feedback off): it must not pin the minimum at 0.
  if (hot !== undefined && hot.xmin !== 0n) into.hotStandbyXmin = minOptional(into.hotStandbyXmin, hot.xmin);
  if (hot !== undefined && hot.catalogXmin !== 0n) into.hotStandbyCatalogXmin = minOptional(into.hotStandbyCatalogXmin, hot.catalogXmin);
  const reply = state.standbyReply;
  if (reply !== undefined) {
    into.standbyWriteLsn = minOptional(into.standbyWriteLsn, reply.writeLsn);
    into.standbyFlushLsn = minOptional(into.standbyFlushLsn, reply.flushLsn);
    into.standbyApplyLsn = minOptional(into.standbyApplyLsn, reply.applyLsn);
  }
  if (state.pageserver !== undefined) into.pageserverLaggardLsn = minOptional(into.pageserverLaggardLsn, state.pageserver.lastReceivedLsn);
  return into;
}

function minOptional(current: bigint | undefined, value: bigint): bigint {
  return current === undefined ? value : minLsn(current, value);
}

function maxOptional(current: bigint | undefined, value: bigint): bigint {
  return current === undefined ? value : maxLsn(current, value);
}
