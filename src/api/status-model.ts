/**
 * The documents the HTTP API serves, built from live server state: server status, the timeline list, and one
 * timeline's status in the shape of Neon's safekeeper TimelineStatus (safekeeper/src/http/routes.rs,
 * send_wal.rs WalSenderState) plus what Neon lacks (per replica sent LSN, lag, bytes sent, start time).
 *
 * Pure: it reads registries and returns plain objects (LSNs as "X/Y" strings, 64-bit ids as bigint, which
 * json.ts writes as exact numbers). The HTTP layer decides routes and status codes; this decides content.
 */
import type { UpstreamStatus } from '../ingest/follower.js';
import type { KernelTlsStatus } from '../io/backend.js';
import assert from 'node:assert/strict';
import { formatLsn, type Lsn } from '../lsn.js';
import type { HotStandbyFeedback, PageserverFeedback, StandbyReply } from '../replication/feedback.js';
import { slotWalStatus } from '../slots/slot-table.js';
import type { OffloadStatus } from '../remote/segment-uploader.js';
import type { RetentionStatus } from '../retention/retention-task.js';
import type { ReplicaSnapshot } from '../timeline/replica-registry.js';
import type { Timeline } from '../timeline/timeline.js';
import type { TimelineRegistry, UnavailableTimeline } from '../timeline/timeline-registry.js';
import { PG_SERVER_VERSION, WALCAST_VERSION } from '../version.js';

/** Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC): replytime is µs since the latter. */
const PG_EPOCH_OFFSET_MICROS = 946_684_800_000_000n;
const MICROS_PER_SECOND = 1_000_000n;
const NANOS_PER_MICRO = 1000n;
const MS_PER_SECOND = 1000;

/** Per peer class: the congestion control connections get (src/net/tcp-congestion.ts) and how many got it or failed. */
export interface TcpCongestionPeerView {
  readonly algorithm: string;
  readonly sockets_set: number;
  readonly sockets_failed: number;
}
export interface TcpCongestionView {
  readonly loopback: TcpCongestionPeerView;
  readonly remote: TcpCongestionPeerView;
}

/** What the API reads from a running server; WalcastServer plus what only `serve` knows (the I/O choice). */
export interface ServerView {
  readonly timelines: TimelineRegistry;
  /** kernelTls: the backend's kernel TLS probe (`walcast serve` always gives it; status leaves it out otherwise). */
  readonly io: { readonly backend: string; readonly strategy: string; readonly reason: string; readonly kernelTls?: KernelTlsStatus; readonly tcpCongestion?: TcpCongestionView };
  readonly startedAt: Date;
  /** "host:port" per protocol, e.g. { postgres: "127.0.0.1:5454", http: "127.0.0.1:7676" }. */
  listenAddresses(): Record<string, string>;
  connectionCount(): number;
  /** Live ingest of a timeline, when it follows an upstream. */
  upstreamStatus?(tenantId: string, timelineId: string): UpstreamStatus | undefined;
  /** WAL retention and disk usage of a timeline. */
  retentionStatus?(tenantId: string, timelineId: string): RetentionStatus | undefined;
  /** Offload to object storage of a timeline, when --remote-storage is given. */
  offloadStatus?(tenantId: string, timelineId: string): OffloadStatus | undefined;
  /** Removes a timeline while serving (HTTP DELETE); resolves once its directory is gone. */
  removeTimeline?(tenantId: string, timelineId: string): Promise<{ readonly connectionsEnded: number }>;
}

export function serverStatus(view: ServerView, now: Date): Record<string, unknown> {
  return {
    version: WALCAST_VERSION,
    pg_server_version: PG_SERVER_VERSION,
    started_at: view.startedAt.toISOString(),
    uptime_seconds: Math.max(0, (now.getTime() - view.startedAt.getTime()) / MS_PER_SECOND),
    io: {
      backend: view.io.backend,
      strategy: view.io.strategy,
      reason: view.io.reason,
      ...(view.io.kernelTls === undefined ? {} : { kernel_tls: { state: view.io.kernelTls.state, code: view.io.kernelTls.code, detail: view.io.kernelTls.detail } }),
      ...(view.io.tcpCongestion === undefined ? {} : { tcp_congestion: view.io.tcpCongestion }),
    },
    listen: view.listenAddresses(),
    connections: view.connectionCount(),
    timelines: view.timelines.list().length,
  };
}

/** One line per timeline, enough for a list and for `walcast status` to pick what to fetch. */
export function timelineSummary(timeline: Timeline): Record<string, unknown> {
  return {
    tenant_id: timeline.tenantId,
    timeline_id: timeline.timelineId,
    pg_timeline_id: timeline.pgTimelineId,
    timeline_start_lsn: formatLsn(timeline.timelineStartLsn),
    commit_lsn: formatLsn(timeline.commitLsn.get()),
    flush_lsn: formatLsn(timeline.persistedFlushLsn),
    replicas: timeline.replicas.count(),
    has_writer: timeline.hasWriter(),
    storage_state: storageState(timeline),
  };
}

/** A timeline whose control file could not be used: listed so that an operator sees it, with why. */
export function unavailableTimelineSummary(entry: UnavailableTimeline): Record<string, unknown> {
  return { tenant_id: entry.tenantId, timeline_id: entry.timelineId, storage_state: 'unavailable', error: entry.error.message, removal_failed: entry.removalFailed === true };
}

/** `ok`, `warnings` (nothing that can make a byte unservable) or `damaged` (a hole: see storage.problems). */
function storageState(timeline: Timeline): 'ok' | 'warnings' | 'damaged' {
  if (timeline.storageProblems.some((problem) => problem.severity === 'error')) return 'damaged';
  return timeline.storageProblems.length > 0 ? 'warnings' : 'ok';
}

function storageDocument(timeline: Timeline): Record<string, unknown> {
  return {
    state: storageState(timeline),
    problems: timeline.storageProblems.map((problem) => ({
      kind: problem.kind,
      severity: problem.severity,
      file: problem.file,
      lsn: problem.lsn === undefined ? null : formatLsn(problem.lsn),
      message: problem.message,
    })),
  };
}

/**
 * Neon's TimelineStatus fields that apply to walcast, then walcast's own. `walsenders` stands in for the walsender
 * list when given (api/timeline-document.ts writes that list in event-loop slices and puts it in its place).
 */
export function timelineStatus(timeline: Timeline, now: Date, upstream?: UpstreamStatus, retention?: RetentionStatus, offload?: OffloadStatus, walsenders?: unknown): Record<string, unknown> {
  const commitLsn = timeline.commitLsn.get();
  const aggregates = timeline.replicas.aggregates();
  return {
    tenant_id: timeline.tenantId,
    timeline_id: timeline.timelineId,
    pg_info: { pg_version: timeline.pgVersion, system_id: timeline.systemId, wal_seg_size: timeline.segmentBytes },
    // Only what survives a restart: the control file's flush LSN (the in-memory one may be ahead by a second).
    flush_lsn: formatLsn(timeline.persistedFlushLsn),
    timeline_start_lsn: formatLsn(timeline.timelineStartLsn),
    local_start_lsn: formatLsn(timeline.timelineStartLsn),
    commit_lsn: formatLsn(commitLsn),
    remote_consistent_lsn: formatLsn(aggregates.remoteConsistentLsn ?? 0n),
    walsenders: walsenders ?? timeline.replicas.snapshot().map((replica) => walsenderStatus(timeline, replica, commitLsn, now)),
    walreceivers: [],
    // walcast's additions.
    upstream: upstream === undefined ? null : upstreamDocument(upstream),
    wal_disk_bytes: retention?.diskBytes ?? null,
    retention: retention === undefined ? null : retentionDocument(retention),
    // Neon's name for "everything before this is in object storage".
    backup_lsn: offload === undefined ? null : formatLsn(offload.backupLsn),
    offload: offload === undefined ? null : offloadDocument(offload),
    wal_bytes_served: { local: timeline.walBytesServed.local, remote: timeline.walBytesServed.remote },
    pg_timeline_id: timeline.pgTimelineId,
    has_writer: timeline.hasWriter(),
    slots: slotsStatus(timeline, retention),
    storage: storageDocument(timeline),
    aggregates: {
      hot_standby_xmin: aggregates.hotStandbyXmin ?? null,
      hot_standby_catalog_xmin: aggregates.hotStandbyCatalogXmin ?? null,
      standby_write_lsn: optionalLsn(aggregates.standbyWriteLsn),
      standby_flush_lsn: optionalLsn(aggregates.standbyFlushLsn),
      standby_apply_lsn: optionalLsn(aggregates.standbyApplyLsn),
      pageserver_laggard_lsn: optionalLsn(aggregates.pageserverLaggardLsn),
    },
  };
}

/**
 * The timeline's replication slots, as pg_replication_slots shows them (slotfuncs.c pg_get_replication_slots):
 * name, whether a connection has it (and which: walcast's PID is the connection id), restart LSN, WAL retained
 * (flush LSN minus restart LSN) and wal_status.
 */
export function slotsStatus(timeline: Timeline, retention?: RetentionStatus): Record<string, unknown>[] {
  const flushLsn = timeline.flushLsn.get();
  // wal_status 'extended' / 'unreserved' (slotfuncs.c) only mean something where retention removes WAL.
  const limits = retention?.removes === true ? { walKeepBytes: BigInt(retention.walKeepBytes), maxSlotWalKeepBytes: retention.maxSlotWalKeepBytes === undefined ? undefined : BigInt(retention.maxSlotWalKeepBytes) } : {};
  return timeline.slots.list().map((slot) => {
    const holds = slot.restartLsn !== undefined && !slot.invalidated;
    return {
      slot_name: slot.name,
      slot_type: 'physical',
      temporary: slot.temporary,
      active: slot.activeConnId !== undefined,
      active_pid: slot.activeConnId ?? null,
      restart_lsn: holds ? formatLsn(slot.restartLsn as Lsn) : null,
      retained_bytes: holds ? slotRetainedBytes(flushLsn, slot.restartLsn as Lsn) : null,
      wal_status: slotWalStatus(slot, flushLsn, limits) ?? null,
      invalidation_reason: slot.invalidationReason ?? null,
      created_at: slot.createdAt,
    };
  });
}

/** Flush LSN minus restart LSN; a restart LSN at or past the flush LSN retains nothing. */
export function slotRetainedBytes(flushLsn: Lsn, restartLsn: Lsn): number {
  return bytesBehind(flushLsn, restartLsn);
}

function offloadDocument(status: OffloadStatus): Record<string, unknown> {
  return {
    remote_storage: status.store,
    backup_lsn: formatLsn(status.backupLsn),
    segments_uploaded: status.segmentsUploaded,
    bytes_uploaded: status.bytesUploaded,
    upload_errors: status.uploadErrors,
    queue_depth: status.queueDepth,
    remote_reads:
      status.remoteReads === undefined
        ? null
        : {
            segments_fetched: status.remoteReads.segmentsFetched,
            bytes_fetched: status.remoteReads.bytesFetched,
            fetch_seconds_total: status.remoteReads.fetchMsTotal / MS_PER_SECOND,
            cache_hits: status.remoteReads.cacheHits,
            fetch_errors: status.remoteReads.fetchErrors,
            get_retries: status.remoteReads.getRetries,
            read_ahead_fetched: status.remoteReads.readAheadFetched,
            read_ahead_used: status.remoteReads.readAheadUsed,
            read_ahead_evicted_unused: status.remoteReads.readAheadEvictedUnused,
          },
  };
}

function retentionDocument(status: RetentionStatus): Record<string, unknown> {
  return {
    removes_wal: status.removes,
    wal_keep_size_bytes: status.walKeepBytes,
    max_slot_wal_keep_size_bytes: status.maxSlotWalKeepBytes ?? -1,
    horizon_lsn: optionalLsn(status.horizonLsn),
    removed_before_lsn: optionalLsn(status.removedBeforeLsn),
    limited_by: status.limitedBy ?? null,
    limiting_slot: status.limitingSlot ?? null,
    wal_disk_bytes: status.diskBytes,
    wal_segment_files: status.segmentFiles,
    segments_removed: status.segmentsRemoved,
    slots_invalidated: status.slotsInvalidated,
    failed_passes: status.failures,
  };
}

function upstreamDocument(status: UpstreamStatus): Record<string, unknown> {
  return {
    upstream: status.upstream,
    state: status.state,
    failure: status.failure ?? null,
    paused_reason: status.pausedReason ?? null,
    bytes_received: status.bytesReceived,
    messages_received: status.messagesReceived,
    status_updates_sent: status.statusSent,
    hot_standby_feedback_sent: status.hotStandbySent,
    connects: status.connects,
  };
}

/** Neon's WalSenderState (ttid, addr, conn_id, appname, feedback) plus walcast's per replica progress. */
export function walsenderStatus(timeline: Timeline, replica: ReplicaSnapshot, commitLsn: Lsn, now: Date): Record<string, unknown> {
  const lag = replicaLag(replica, commitLsn);
  return {
    ttid: { tenant_id: timeline.tenantId, timeline_id: timeline.timelineId },
    addr: replica.remoteAddress,
    conn_id: replica.connId,
    appname: replica.appName === '' ? null : replica.appName,
    feedback: feedbackDocument(replica),
    replica_id: replica.replicaId,
    started_at: replica.startedAt.toISOString(),
    start_lsn: formatLsn(replica.startLsn),
    sent_lsn: formatLsn(replica.sentLsn),
    bytes_sent: replica.bytesSent,
    disk_wait_seconds: replica.diskWaitMs / MS_PER_SECOND,
    disk_wait_current_seconds: replica.diskWaitSince === undefined ? null : Math.max(0, (now.getTime() - replica.diskWaitSince.getTime()) / MS_PER_SECOND),
    lag_bytes: lag.confirmedBytes ?? null,
    apply_lag_bytes: lag.applyBytes ?? null,
    send_lag_bytes: lag.sentBytes,
    last_feedback_at: replica.lastFeedbackAt?.toISOString() ?? null,
    last_feedback_age_seconds: replica.lastFeedbackAt === undefined ? null : Math.max(0, (now.getTime() - replica.lastFeedbackAt.getTime()) / MS_PER_SECOND),
    feedback_counts: {
      standby_reply: replica.feedbackCounts.standbyReply,
      hot_standby: replica.feedbackCounts.hotStandby,
      pageserver: replica.feedbackCounts.pageserver,
    },
  };
}

export interface ReplicaLag {
  /** Commit LSN minus what the replica confirmed (pageserver last_received, else standby flush); undefined: no report. */
  readonly confirmedBytes: number | undefined;
  /** Commit LSN minus the standby's apply LSN; undefined when it reports none (pg_receivewal sends 0/0). */
  readonly applyBytes: number | undefined;
  /** Commit LSN minus what walcast has sent: the part of the lag that is walcast's, not the replica's. */
  readonly sentBytes: number;
}

export function replicaLag(replica: ReplicaSnapshot, commitLsn: Lsn): ReplicaLag {
  const confirmedLsn = replica.pageserver?.lastReceivedLsn ?? replica.standbyReply?.flushLsn;
  const applyLsn = replica.standbyReply?.applyLsn;
  return {
    confirmedBytes: confirmedLsn === undefined ? undefined : bytesBehind(commitLsn, confirmedLsn),
    applyBytes: applyLsn === undefined || applyLsn === 0n ? undefined : bytesBehind(commitLsn, applyLsn),
    sentBytes: bytesBehind(commitLsn, replica.sentLsn),
  };
}

/** A replica can report a position past our commit LSN (its own WAL, or a test client): that is no lag. */
export function bytesBehind(commitLsn: Lsn, position: Lsn): number {
  const behind = commitLsn > position ? commitLsn - position : 0n;
  assert.ok(behind <= BigInt(Number.MAX_SAFE_INTEGER));
  return Number(behind);
}

/**
 * Neon's ReplicationFeedback enum as serde writes it: {"Pageserver":{…}} or {"Standby":{"reply":…,"hs_feedback":…}}.
 * Neon starts every walsender as an empty Pageserver; walcast says null until the replica reported anything, so a
 * standby that has not spoken yet is not shown as a pageserver.
 */
export function feedbackDocument(replica: ReplicaSnapshot): Record<string, unknown> | null {
  if (replica.pageserver !== undefined) return { Pageserver: pageserverDocument(replica.pageserver) };
  if (replica.standbyReply === undefined && replica.hotStandby === undefined) return null;
  return { Standby: { reply: standbyReplyDocument(replica.standbyReply), hs_feedback: hotStandbyDocument(replica.hotStandby) } };
}

function pageserverDocument(feedback: PageserverFeedback): Record<string, unknown> {
  return {
    current_timeline_size: feedback.currentTimelineSize,
    last_received_lsn: formatLsn(feedback.lastReceivedLsn),
    disk_consistent_lsn: formatLsn(feedback.diskConsistentLsn),
    remote_consistent_lsn: formatLsn(feedback.remoteConsistentLsn),
    replytime: systemTimeDocument(feedback.replyTimeMicros),
    shard_number: feedback.shardNumber,
    corruption_detected: feedback.corruptionDetected,
  };
}

/** Neon's empty StandbyReply / HotStandbyFeedback stand in for the half a standby has not sent yet. */
function standbyReplyDocument(reply: StandbyReply | undefined): Record<string, unknown> {
  return {
    write_lsn: formatLsn(reply?.writeLsn ?? 0n),
    flush_lsn: formatLsn(reply?.flushLsn ?? 0n),
    apply_lsn: formatLsn(reply?.applyLsn ?? 0n),
    reply_ts: reply?.replyTimeMicros ?? 0n,
    reply_requested: reply?.replyRequested ?? false,
  };
}

function hotStandbyDocument(feedback: HotStandbyFeedback | undefined): Record<string, unknown> {
  return { ts: feedback?.timeMicros ?? 0n, xmin: feedback?.xmin ?? 0n, catalog_xmin: feedback?.catalogXmin ?? 0n };
}

/** serde's SystemTime: seconds and nanoseconds since the Unix epoch (Neon's PageserverFeedback.replytime). */
function systemTimeDocument(pgMicros: bigint): Record<string, bigint> {
  const unixMicros = pgMicros + PG_EPOCH_OFFSET_MICROS;
  const clamped = unixMicros < 0n ? 0n : unixMicros;
  return { secs_since_epoch: clamped / MICROS_PER_SECOND, nanos_since_epoch: (clamped % MICROS_PER_SECOND) * NANOS_PER_MICRO };
}

function optionalLsn(lsn: Lsn | undefined): string | null {
  return lsn === undefined ? null : formatLsn(lsn);
}
