/**
 * Prometheus metrics for one server, in a per-server prom-client Registry (never the global one, so several
 * servers can run in one process, as tests do). Timeline and replica gauges are computed when scraped, from the
 * timeline and replica registries (prom-client `collect`), so the streaming path pays nothing per message; only
 * events that leave no state behind (commands, stream endings, refused connections) are counted as they happen,
 * through the server's hooks.
 *
 * A scrape runs on the event loop that publishes commits, so it is rendered in slices (api/metrics-render.ts:
 * METRICS_RENDER_SLICE_MS between turns), and the per-replica families, most of a scrape's work with many replicas,
 * are written from one walk of the replicas per scrape rather than through prom-client Gauges.
 *
 * Names follow Neon's safekeeper (safekeeper/src/metrics.rs) with `safekeeper_` replaced by `walcast_` where a Neon
 * metric exists; docs/operations.md lists every metric and its Neon counterpart.
 */
import assert from 'node:assert/strict';
import { collectDefaultMetrics, Counter, Gauge, Registry, type Histogram } from 'prom-client';
import type { ServerHooks } from '../server.js';
import type { ChunkReadStats, KernelTlsStatus, SendBufferStats } from '../io/backend.js';
import { existingFanoutBatcher } from '../replication/fanout-batch.js';
import type { StreamOutcome } from '../replication/start-replication.js';
import type { OffloadStatus } from '../remote/segment-uploader.js';
import type { RetentionStatus } from '../retention/retention-task.js';
import type { ReplicaSnapshot } from '../timeline/replica-registry.js';
import type { Timeline } from '../timeline/timeline.js';
import { INGEST_LATENCY_BUCKETS_SECONDS } from '../timeline/ingest-timing.js';
import { PUBLISH_LATENCY_BUCKETS_SECONDS, type LatencyHistogram } from '../timeline/publish-timing.js';
import type { SlotSnapshot } from '../slots/slot-table.js';
import { slotRetainedBytes } from './status-model.js';
import type { TimelineRegistry } from '../timeline/timeline-registry.js';
import { replicaLag, type ReplicaLag } from './status-model.js';
import { formatLabelPairs, formatValue, RENDER_ROWS_PER_CHECK, RenderSlicer, renderSliced, type SlicedFamily } from './metrics-render.js';
import { describeResolved, type TcpCongestion } from '../net/tcp-congestion.js';

const TIMELINE_LABELS = ['tenant_id', 'timeline_id'] as const;
const REPLICA_LABELS = ['tenant_id', 'timeline_id', 'appname', 'conn_id'] as const;
/** Command kinds the replication command parser produces; anything else is counted as "other" (bounded labels). */
const COMMAND_KINDS = new Set([
  'identify_system', 'show', 'timeline_status', 'read_replication_slot', 'timeline_history', 'start_replication',
  'set', 'empty', 'create_replication_slot', 'drop_replication_slot', 'unsupported', 'sql', 'invalid',
]);
/** Stream endings that are the replica's or the server's ordinary business, not errors. */
const ORDINARY_ENDINGS = new Set(['caught_up', 'recovery_finished', 'client_copy_done', 'client_terminate', 'client_disconnected', 'server_shutdown', 'timeline_removed']);
/** Longest label value derived from an error code; codes are short, this only guards the label set. */
const CAUSE_LABEL_MAX_CHARS = 64;
const MS_PER_SECOND = 1000;

export interface OperationsMetrics {
  readonly registry: Registry;
  /** Pass to WalcastServer.start({ hooks }). */
  readonly hooks: Required<ServerHooks>;
  /** Connects the scrape-time gauges to the server's timelines (the server exists only after start()). */
  bindTimelines(timelines: TimelineRegistry, retention?: RetentionLookup, offload?: OffloadLookup): void;
  /**
   * The Prometheus text exposition, and its content type, rendered in event-loop slices of METRICS_RENDER_SLICE_MS
   * (api/metrics-render.ts); `slicer` lets a test count the turns given.
   */
  render(slicer?: RenderSlicer): Promise<{ contentType: string; body: string }>;
}

/**
 * `io.kernelTls`: the backend's kernel TLS probe, exported as walcast_io_kernel_tls_info (left out when not given).
 * `io.sendBufferStats`: the TS send pool's counts, exported as walcast_ts_send_buffers_* (left out when not given).
 * `io.chunkReadStats`: where the TS backend's catch-up reads ran, exported as walcast_ts_chunk_reads_total and
 * walcast_ts_sync_read_* (left out when not given).
 */
export function createOperationsMetrics(io: { readonly backend: string; readonly strategy: string; readonly kernelTls?: KernelTlsStatus; readonly prefetchIdleFallbacks?: () => number; readonly sendBufferStats?: () => SendBufferStats; readonly chunkReadStats?: () => ChunkReadStats; readonly tcpCongestion?: TcpCongestion }): OperationsMetrics {
  const registry = new Registry();
  let timelines: TimelineRegistry | undefined;
  let retention: RetentionLookup = () => undefined;
  let offload: OffloadLookup = () => undefined;
  const eachTimeline = (visit: (timeline: Timeline) => void): void => {
    for (const timeline of timelines?.list() ?? []) visit(timeline);
  };
  registerTimelineGauges(registry, eachTimeline);
  const sliced = new Map<object, SlicedReplicaFamily>();
  registerReplicaGauges(registry, eachTimeline, sliced);
  registerSlotGauges(registry, eachTimeline);
  registerTotals(registry, eachTimeline, io);
  if (io.kernelTls !== undefined) registerKernelTlsInfo(registry, io.kernelTls);
  const idleFallbacks = io.prefetchIdleFallbacks;
  if (idleFallbacks !== undefined) {
    new Counter({
      name: 'walcast_prefetch_idle_fallbacks_total',
      help: 'Cold WAL reads taken back from an idle-I/O-priority readahead thread after a starved wait (a disk busy with best-effort I/O) and read at normal priority.',
      registers: [registry],
      collect() {
        this.reset();
        this.inc(idleFallbacks());
      },
    });
  }
  if (io.sendBufferStats !== undefined) registerSendBufferMetrics(registry, io.sendBufferStats);
  if (io.chunkReadStats !== undefined) registerChunkReadMetrics(registry, io.chunkReadStats);
  if (io.tcpCongestion !== undefined) registerTcpCongestionMetrics(registry, io.tcpCongestion);
  registerRetentionMetrics(registry, eachTimeline, (timeline) => retention(timeline));
  registerOffloadMetrics(registry, eachTimeline, (timeline) => offload(timeline));
  registerRemovalMetrics(registry, () => timelines);
  registerPublishTiming(registry, eachTimeline);
  const events = registerEventCounters(registry);
  // Process metrics, including nodejs_eventloop_lag_seconds: a stalled event loop stalls every replica at once.
  collectDefaultMetrics({ register: registry });
  return {
    registry,
    hooks: events,
    bindTimelines(registryOfTimelines, retentionOfTimeline, offloadOfTimeline) {
      assert.ok(timelines === undefined, 'metrics are bound to one server');
      timelines = registryOfTimelines;
      if (retentionOfTimeline !== undefined) retention = retentionOfTimeline;
      if (offloadOfTimeline !== undefined) offload = offloadOfTimeline;
    },
    async render(slicer) {
      return { contentType: registry.contentType, body: await renderSliced(registry, sliced, slicer) };
    },
  };
}

type EachTimeline = (visit: (timeline: Timeline) => void) => void;
/** A timeline's offload status (src/remote), when --remote-storage is given. */
export type OffloadLookup = (timeline: Timeline) => OffloadStatus | undefined;
/** A timeline's retention status (src/retention), when retention runs for it. */
export type RetentionLookup = (timeline: Timeline) => RetentionStatus | undefined;

function timelineLabels(timeline: Timeline): Record<(typeof TIMELINE_LABELS)[number], string> {
  return { tenant_id: timeline.tenantId, timeline_id: timeline.timelineId };
}

/** A gauge recomputed from scratch at every scrape, so timelines and replicas that went away leave no series. */
function scrapeGauge<L extends string>(registry: Registry, name: string, help: string, labelNames: readonly L[], fill: (gauge: Gauge<L>) => void): void {
  new Gauge<L>({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      this.reset();
      fill(this);
    },
  });
}

function registerTimelineGauges(registry: Registry, eachTimeline: EachTimeline): void {
  const lsnGauge = (name: string, help: string, read: (timeline: Timeline) => bigint | undefined): void =>
    scrapeGauge(registry, name, help, TIMELINE_LABELS, (gauge) =>
      eachTimeline((timeline) => {
        const lsn = read(timeline);
        // LSNs are exported as doubles, like Neon's; they stay exact up to 8 PiB of WAL.
        if (lsn !== undefined) gauge.set(timelineLabels(timeline), Number(lsn));
      }),
    );
  lsnGauge('walcast_commit_lsn', 'Committed WAL end of the timeline (safekeeper_commit_lsn).', (timeline) => timeline.commitLsn.get());
  lsnGauge('walcast_flush_lsn', 'Durably stored WAL end of the timeline, as its control file records it (safekeeper_flush_lsn).', (timeline) => timeline.persistedFlushLsn);
  lsnGauge('walcast_timeline_start_lsn', 'First WAL byte the timeline holds.', (timeline) => timeline.timelineStartLsn);
  lsnGauge('walcast_remote_consistent_lsn', 'Highest remote_consistent_lsn a pageserver reported (safekeeper_remote_consistent_lsn).', (timeline) =>
    timeline.replicas.aggregates().remoteConsistentLsn,
  );
  lsnGauge('walcast_ps_last_received_lsn', 'Lowest last_received_lsn over connected pageservers (safekeeper_ps_last_received_lsn).', (timeline) =>
    timeline.replicas.aggregates().pageserverLaggardLsn,
  );
  scrapeGauge(registry, 'walcast_timeline_storage_problems', 'Problems the start-up check found in the timeline\'s files, by severity (error: a hole that ends streams).', [...TIMELINE_LABELS, 'severity'], (gauge) =>
    eachTimeline((timeline) => {
      for (const severity of ['error', 'warning'] as const) {
        gauge.set({ ...timelineLabels(timeline), severity }, timeline.storageProblems.filter((problem) => problem.severity === severity).length);
      }
    }),
  );
  scrapeGauge(registry, 'walcast_ingest_state', 'Live ingest state of the timeline: 1 for the current state (paused: storage full or failing).', [...TIMELINE_LABELS, 'state'], (gauge) =>
    eachTimeline((timeline) => {
      if (timeline.ingestState !== undefined) gauge.set({ ...timelineLabels(timeline), state: timeline.ingestState.state }, 1);
    }),
  );
  new Counter({
    name: 'walcast_ingest_state_changes_total',
    help: 'Times live ingest of the timeline entered each state.',
    labelNames: [...TIMELINE_LABELS, 'state'],
    registers: [registry],
    collect() {
      this.reset();
      eachTimeline((timeline) => {
        for (const [state, count] of timeline.ingestStateChanges) this.inc({ ...timelineLabels(timeline), state }, count);
      });
    },
  });
  scrapeGauge(registry, 'walcast_wal_readers', 'Replicas streaming the timeline now (safekeeper_wal_readers).', TIMELINE_LABELS, (gauge) =>
    eachTimeline((timeline) => gauge.set(timelineLabels(timeline), timeline.replicas.count())),
  );
}

/** Per slot (at most SLOTS_PER_TIMELINE_MAX per timeline, so the series count is bounded): what it holds and who has it. */
function registerSlotGauges(registry: Registry, eachTimeline: EachTimeline): void {
  const labelNames = [...TIMELINE_LABELS, 'slot_name'] as const;
  const perSlot = (name: string, help: string, value: (timeline: Timeline, slot: SlotSnapshot) => number | undefined): void =>
    scrapeGauge(registry, name, help, labelNames, (gauge) =>
      eachTimeline((timeline) => {
        for (const slot of timeline.slots.list()) {
          const sample = value(timeline, slot);
          if (sample !== undefined) gauge.set({ ...timelineLabels(timeline), slot_name: slot.name }, sample);
        }
      }),
    );
  perSlot('walcast_slot_restart_lsn', 'Restart LSN of a replication slot: the oldest WAL it holds (absent while it holds none).', (_timeline, slot) =>
    slot.restartLsn === undefined || slot.invalidated ? undefined : Number(slot.restartLsn),
  );
  perSlot('walcast_slot_retained_bytes', 'WAL a replication slot holds: flush LSN minus its restart LSN.', (timeline, slot) =>
    slot.restartLsn === undefined || slot.invalidated ? undefined : slotRetainedBytes(timeline.flushLsn.get(), slot.restartLsn),
  );
  perSlot('walcast_slot_active', '1 while a connection has the replication slot acquired (streaming, or its temporary slot), else 0.', (_timeline, slot) =>
    slot.activeConnId === undefined ? 0 : 1,
  );
  perSlot('walcast_slot_lost', '1 when the replication slot was invalidated (wal_status lost), else 0.', (_timeline, slot) => (slot.invalidated ? 1 : 0));
}

/** One replica as the per-replica families read it in one scrape: its label text and what the values derive from. */
interface ReplicaRow {
  readonly labels: string;
  readonly replica: ReplicaSnapshot;
  readonly lag: ReplicaLag;
  readonly now: number;
}
type ReplicaValue = (row: ReplicaRow) => number | undefined;

/**
 * The walcast_replica_* gauges: a series per connected replica (bounded: at most REPLICAS_PER_TIMELINE_MAX =
 * CONNECTIONS_MAX per timeline; a replica's series go with it at the next scrape). These are most of a scrape's work
 * with many replicas, so they bypass prom-client's Gauge (a labels object hashed, validated and stored per series,
 * then formatted again): one walk of the replicas per scrape, shared by the six families, with each replica's label
 * text built once and rows written in slices (api/metrics-render.ts). get() answers prom-client's own callers
 * (registry.metrics(), getMetricsAsJSON) with the same values, unsliced.
 */
function registerReplicaGauges(registry: Registry, eachTimeline: EachTimeline, sliced: Map<object, SlicedReplicaFamily>): void {
  /** Rows of one scrape, keyed by its slicer, so the six families walk the replicas once between them. */
  const scrapes = new WeakMap<RenderSlicer, Promise<ReplicaRow[]>>();
  const rowsFor = (slicer: RenderSlicer): Promise<ReplicaRow[]> => {
    let rows = scrapes.get(slicer);
    if (rows === undefined) {
      rows = replicaRows(eachTimeline, slicer);
      scrapes.set(slicer, rows);
    }
    return rows;
  };
  const perReplica = (name: string, help: string, value: ReplicaValue): void => {
    const family: SlicedReplicaFamily = {
      name,
      help,
      type: 'gauge',
      aggregator: 'sum',
      reset: (): void => undefined,
      async renderRows(slicer) {
        // Rows are joined a check's worth at a time: one join of a whole family's rows (ropes flattened at once)
        // was the longest step left in a 1,000-replica scrape.
        const chunks: string[] = [];
        let lines: string[] = [];
        for (const row of await rowsFor(slicer)) {
          const sample = value(row);
          if (sample !== undefined) lines.push(`${name}{${row.labels}} ${formatValue(sample)}`);
          if (lines.length === RENDER_ROWS_PER_CHECK) {
            chunks.push(lines.join('\n'));
            lines = [];
            await slicer.maybeYield();
          }
        }
        if (lines.length > 0) chunks.push(lines.join('\n'));
        return chunks;
      },
      async get() {
        const values: { labels: Record<string, string>; value: number }[] = [];
        eachTimeline((timeline) => {
          const commitLsn = timeline.commitLsn.get();
          const now = Date.now();
          for (const replica of timeline.replicas.snapshots()) {
            const sample = value({ labels: '', replica, lag: replicaLag(replica, commitLsn), now });
            if (sample !== undefined) values.push({ labels: { ...timelineLabels(timeline), appname: replica.appName, conn_id: String(replica.connId) }, value: sample });
          }
        });
        return { name, help, type: 'gauge' as const, aggregator: 'sum' as const, values };
      },
    };
    registry.registerMetric(family as unknown as Gauge);
    sliced.set(family, family);
  };
  perReplica('walcast_replica_lag_bytes', 'Commit LSN minus what the replica confirmed: pageserver last_received_lsn, else standby flush LSN.', (row) => row.lag.confirmedBytes);
  perReplica('walcast_replica_apply_lag_bytes', 'Commit LSN minus the standby apply LSN (standbys that report one).', (row) => row.lag.applyBytes);
  perReplica('walcast_replica_send_lag_bytes', 'Commit LSN minus what walcast has sent to the replica.', (row) => row.lag.sentBytes);
  perReplica('walcast_replica_sent_lsn', 'WAL position walcast has sent the replica up to.', (row) => Number(row.replica.sentLsn));
  perReplica('walcast_replica_bytes_sent', 'Bytes sent to the replica on this stream.', (row) => row.replica.bytesSent);
  perReplica('walcast_replica_disk_wait_seconds', 'Seconds the sender waited for cold WAL reads from disk on this stream, the wait in progress included (idle I/O priority: a busy disk holds them back).', ({ replica, now }) =>
    (replica.diskWaitMs + (replica.diskWaitSince === undefined ? 0 : Math.max(0, now - replica.diskWaitSince.getTime()))) / MS_PER_SECOND,
  );
  perReplica('walcast_replica_feedback_age_seconds', 'Seconds since the replica last sent feedback (safekeeper_feedback_last_time_seconds, as an age).', ({ replica, now }) =>
    replica.lastFeedbackAt === undefined ? undefined : Math.max(0, (now - replica.lastFeedbackAt.getTime()) / MS_PER_SECOND),
  );
}

type SlicedReplicaFamily = SlicedFamily & { readonly help: string; readonly type: string; readonly aggregator: 'sum'; reset(): void; get(): Promise<unknown> };

/**
 * Every replica of every timeline, with its labels as exposition text, yielding between slices. Timelines are
 * listed up front; a replica that leaves while the walk yields is skipped, one that arrives is included (Map order).
 */
async function replicaRows(eachTimeline: EachTimeline, slicer: RenderSlicer): Promise<ReplicaRow[]> {
  const timelines: Timeline[] = [];
  eachTimeline((timeline) => timelines.push(timeline));
  const rows: ReplicaRow[] = [];
  for (const timeline of timelines) {
    const prefix = formatLabelPairs([['tenant_id', timeline.tenantId], ['timeline_id', timeline.timelineId]]);
    const commitLsn = timeline.commitLsn.get();
    const now = Date.now();
    let sinceCheck = 0;
    for (const replica of timeline.replicas.snapshots()) {
      const labels = `${prefix},${formatLabelPairs([['appname', replica.appName], ['conn_id', String(replica.connId)]])}`;
      rows.push({ labels, replica, lag: replicaLag(replica, commitLsn), now });
      if (++sinceCheck === RENDER_ROWS_PER_CHECK) {
        sinceCheck = 0;
        await slicer.maybeYield();
      }
    }
  }
  return rows;
}

/** Totals over all timelines: counters that only ever grow, read from the registries at scrape time. */
/** Where the TS backend's catch-up reads ran (io/sync-read-gate.ts), read when scraped. */
function registerChunkReadMetrics(registry: Registry, stats: () => ChunkReadStats): void {
  new Counter({
    name: 'walcast_ts_chunk_reads_total',
    help: 'TS backend catch-up reads, by the thread they ran on: event_loop (page cache served them, no thread-pool round trip) or pool.',
    labelNames: ['thread'],
    registers: [registry],
    collect() {
      this.reset();
      const now = stats();
      this.inc({ thread: 'event_loop' }, now.syncReads);
      this.inc({ thread: 'pool' }, now.poolReads);
    },
  });
  new Counter({
    name: 'walcast_ts_sync_read_slow_total',
    help: 'TS backend catch-up reads on the event-loop thread that waited for the disk or took longer than SYNC_READ_SLOW_MS; each sent reads to the thread pool for a back-off.',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(stats().slowSyncReads);
    },
  });
  new Counter({
    name: 'walcast_ts_sync_read_preempted_total',
    help: 'TS backend catch-up reads on the event-loop thread slower than SYNC_READ_SLOW_MS during which no thread of the process slept (the thread lost its CPU): not a wait for storage, so the gate stays open.',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(stats().preemptedSyncReads);
    },
  });
  new Gauge({
    name: 'walcast_ts_sync_read_gate_open',
    help: 'Whether the TS backend may read catch-up runs on the event-loop thread now (1), or reads on the thread pool during a back-off (0).',
    registers: [registry],
    collect() {
      this.set(stats().open ? 1 : 0);
    },
  });
}

/** The TS send pool (io/buffer-pool.ts, io/send-stall.ts), read when scraped. */
function registerSendBufferMetrics(registry: Registry, stats: () => SendBufferStats): void {
  new Counter({
    name: 'walcast_ts_send_buffers_written_off_total',
    help: 'TS backend send buffers written off the send pool because their replica stopped reading (its socket completed no write for SEND_STALL_MS) and replaced, so other streams are not starved.',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(stats().writtenOffTotal);
    },
  });
  const gauge = (name: string, help: string, value: (now: SendBufferStats) => number): void => {
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(value(stats()));
      },
    });
  };
  gauge('walcast_ts_send_buffers_in_use', 'TS backend send buffers handed out now (written-off ones not counted).', (now) => now.inUse);
  gauge('walcast_ts_send_buffers_max', 'TS backend send pool size (POOL_BUFFERS_MAX).', (now) => now.buffersMax);
  gauge('walcast_ts_send_buffers_written_off', 'TS backend send buffers written off and still held by a socket that is not draining.', (now) => now.writtenOff);
  gauge('walcast_ts_send_buffers_written_off_max', 'TS backend send buffers that may be written off at once (WRITTEN_OFF_BUFFERS_MAX); at this value sends wait for the pool again.', (now) => now.writtenOffMax);
  // The ts fan-out batch's frames (not pool buffers): only where the backend batches.
  if (stats().batchFrameBytesWrittenOffMax === undefined) return;
  new Counter({
    name: 'walcast_ts_batch_frame_bytes_written_off_total',
    help: 'TS backend fan-out batch frame bytes written off the batch in-flight bound because a replica holding them stopped reading (its socket completed no write for SEND_STALL_MS), so the batch goes on for healthy streams.',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(stats().batchFrameBytesWrittenOffTotal ?? 0);
    },
  });
  gauge('walcast_ts_batch_frame_bytes_written_off', 'TS backend fan-out batch frame bytes written off and still held by a socket that is not draining.', (now) => now.batchFrameBytesWrittenOff ?? 0);
  gauge('walcast_ts_batch_frame_bytes_written_off_max', 'TS backend fan-out batch frame bytes that may be written off at once (BATCH_FRAME_BYTES_WRITTEN_OFF_MAX); at this value stalled streams keep the batch at its in-flight bound again.', (now) => now.batchFrameBytesWrittenOffMax ?? 0);
}

function registerTotals(registry: Registry, eachTimeline: EachTimeline, io: { readonly backend: string; readonly strategy: string }): void {
  new Counter({
    name: 'walcast_received_ps_feedbacks_total',
    help: "Pageserver ('z') feedback messages received (safekeeper_received_ps_feedbacks_total).",
    registers: [registry],
    collect() {
      this.reset();
      eachTimeline((timeline) => this.inc(timeline.replicas.feedbackTotals.pageserver));
    },
  });
  new Counter({
    name: 'walcast_received_feedbacks_total',
    help: "Feedback messages received, by kind: standby_reply ('r'), hot_standby ('h'), pageserver ('z').",
    labelNames: [...TIMELINE_LABELS, 'kind'],
    registers: [registry],
    collect() {
      this.reset();
      eachTimeline((timeline) => {
        const totals = timeline.replicas.feedbackTotals;
        this.inc({ ...timelineLabels(timeline), kind: 'standby_reply' }, totals.standbyReply);
        this.inc({ ...timelineLabels(timeline), kind: 'hot_standby' }, totals.hotStandby);
        this.inc({ ...timelineLabels(timeline), kind: 'pageserver' }, totals.pageserver);
      });
    },
  });
  new Counter({
    name: 'walcast_wal_bytes_served_total',
    help: 'WAL bytes sent to replicas, by where the segment was read: local disk, or object storage (remote, through the fetched-segment cache).',
    labelNames: [...TIMELINE_LABELS, 'source'],
    registers: [registry],
    collect() {
      this.reset();
      eachTimeline((timeline) => {
        this.inc({ ...timelineLabels(timeline), source: 'local' }, timeline.walBytesServed.local);
        this.inc({ ...timelineLabels(timeline), source: 'remote' }, timeline.walBytesServed.remote);
      });
    },
  });
  new Counter({
    name: 'walcast_wal_corruption_detected_total',
    help: 'Stored WAL pages found corrupted (failed their page checksum) before being sent; each counted once per detection.',
    labelNames: [...TIMELINE_LABELS],
    registers: [registry],
    collect() {
      this.reset();
      eachTimeline((timeline) => this.inc(timelineLabels(timeline), timeline.pages.corruptionsDetected));
    },
  });
  new Gauge({
    name: 'walcast_wal_pages_quarantined',
    help: 'Stored WAL pages refused to every replica now because they failed their checksum and have not verified since.',
    labelNames: [...TIMELINE_LABELS],
    registers: [registry],
    collect() {
      this.reset();
      eachTimeline((timeline) => this.set(timelineLabels(timeline), timeline.pages.quarantinedPages));
    },
  });
  new Counter({
    name: 'walcast_wal_bytes_sent_total',
    help: 'WAL stream bytes sent to replicas, by I/O backend and strategy.',
    labelNames: ['backend', 'strategy'],
    registers: [registry],
    collect() {
      this.reset();
      let bytes = 0;
      eachTimeline((timeline) => (bytes += timeline.replicas.bytesSentTotal));
      this.inc({ backend: io.backend, strategy: io.strategy }, bytes);
    },
  });
  new Gauge({
    name: 'walcast_active_senders',
    help: 'Replication streams running now, over all timelines.',
    registers: [registry],
    collect() {
      let count = 0;
      eachTimeline((timeline) => (count += timeline.replicas.count()));
      this.set(count);
    },
  });
}

/**
 * The kernel TLS probe as an info metric (value 1, the answer in labels): fixed for the life of the process, so
 * alerting or dashboards can tell hosts where kTLS would be possible from those where it would not.
 */
/** The algorithm each peer class gets (src/net/tcp-congestion.ts), and the sockets it was set on or failed for. */
function registerTcpCongestionMetrics(registry: Registry, tcpCongestion: TcpCongestion): void {
  const info = new Gauge({
    name: 'walcast_tcp_congestion_info',
    help: 'TCP congestion control accepted connections get, per peer class (loopback or remote): an algorithm, or "system (why)" when the kernel default is kept.',
    labelNames: ['peer', 'algorithm'] as const,
    registers: [registry],
  });
  const chosen = tcpCongestion.describe();
  for (const peer of ['loopback', 'remote'] as const) info.set({ peer, algorithm: describeResolved(chosen[peer]) }, 1);
  new Counter({
    name: 'walcast_tcp_congestion_sockets_total',
    help: 'Accepted connections whose TCP congestion control was set (outcome "set") or could not be (outcome "failed": the connection keeps the system default; the log names the error once per code).',
    labelNames: ['peer', 'outcome'] as const,
    registers: [registry],
    collect() {
      this.reset();
      const counts = tcpCongestion.counts();
      for (const [peer, count] of counts.set) this.inc({ peer, outcome: 'set' }, count);
      for (const [peer, count] of counts.failed) this.inc({ peer, outcome: 'failed' }, count);
    },
  });
}

function registerKernelTlsInfo(registry: Registry, kernelTls: KernelTlsStatus): void {
  const gauge = new Gauge({
    name: 'walcast_io_kernel_tls_info',
    help: 'Kernel TLS probe of the I/O backend (state: available, unavailable, error, not-probed; code: OK or errno name). walcast does not use kTLS; TLS streams take the encrypting TS path.',
    labelNames: ['state', 'code'],
    registers: [registry],
  });
  gauge.set({ state: kernelTls.state, code: kernelTls.code }, 1);
}

/**
 * Per-timeline gauges and counters read from a status object looked up at scrape time (retention, offload): a
 * timeline without one (nothing runs for it) is left out of the scrape.
 */
function statusMetrics<Status>(registry: Registry, eachTimeline: EachTimeline, lookup: (timeline: Timeline) => Status | undefined) {
  const perTimeline = (name: string, help: string, read: (status: Status) => number): void =>
    scrapeGauge(registry, name, help, TIMELINE_LABELS, (gauge) =>
      eachTimeline((timeline) => {
        const status = lookup(timeline);
        if (status !== undefined) gauge.set(timelineLabels(timeline), read(status));
      }),
    );
  const perTimelineCounter = (name: string, help: string, read: (status: Status) => number): void => {
    new Counter({
      name,
      help,
      labelNames: TIMELINE_LABELS,
      registers: [registry],
      collect() {
        this.reset();
        eachTimeline((timeline) => {
          const status = lookup(timeline);
          if (status !== undefined) this.inc(timelineLabels(timeline), read(status));
        });
      },
    });
  };
  return { perTimeline, perTimelineCounter };
}

/** Disk usage and removals per timeline, read from its retention task at scrape time. */
function registerRetentionMetrics(registry: Registry, eachTimeline: EachTimeline, retention: RetentionLookup): void {
  const { perTimeline, perTimelineCounter } = statusMetrics(registry, eachTimeline, retention);
  perTimeline('walcast_timeline_wal_disk_bytes', 'Bytes the timeline\'s WAL segment files occupy on disk (allocated blocks), at the last measurement.', (status) => status.diskBytes);
  perTimeline('walcast_timeline_wal_segment_files', 'WAL segment files of the timeline on disk.', (status) => status.segmentFiles);
  perTimelineCounter('walcast_wal_segments_removed_total', 'WAL segment files removed by retention.', (status) => status.segmentsRemoved);
  perTimelineCounter('walcast_slots_invalidated_total', 'Replication slots invalidated for falling behind --max-slot-wal-keep-size (wal_status lost).', (status) => status.slotsInvalidated);
  perTimelineCounter('walcast_retention_failures_total', 'WAL removal passes that failed (retried by the next pass).', (status) => status.failures);
}

/** Offload to object storage per timeline, read from its uploader at scrape time. */
function registerOffloadMetrics(registry: Registry, eachTimeline: EachTimeline, offload: OffloadLookup): void {
  const { perTimeline, perTimelineCounter } = statusMetrics(registry, eachTimeline, offload);
  perTimeline('walcast_timeline_backup_lsn', 'Everything before this LSN is confirmed in object storage (Neon backup_lsn).', (status) => Number(status.backupLsn));
  perTimeline('walcast_offload_queue_segments', 'Completed WAL segments not yet confirmed in object storage.', (status) => status.queueDepth);
  perTimelineCounter('walcast_offload_segments_uploaded_total', 'WAL segments uploaded to object storage.', (status) => status.segmentsUploaded);
  perTimelineCounter('walcast_offload_bytes_uploaded_total', 'Bytes of WAL uploaded to object storage.', (status) => status.bytesUploaded);
  perTimelineCounter('walcast_offload_upload_errors_total', 'Failed uploads to object storage (each retried with backoff).', (status) => status.uploadErrors);
  perTimelineCounter('walcast_remote_segments_fetched_total', 'WAL segments read back from object storage into the local cache.', (status) => status.remoteReads?.segmentsFetched ?? 0);
  perTimelineCounter('walcast_remote_bytes_fetched_total', 'Bytes of WAL read back from object storage.', (status) => status.remoteReads?.bytesFetched ?? 0);
  perTimelineCounter('walcast_remote_fetch_seconds_total', 'Time spent fetching segments from object storage (divide by fetched segments for the mean latency).', (status) => (status.remoteReads?.fetchMsTotal ?? 0) / 1000);
  perTimelineCounter('walcast_remote_cache_hits_total', 'Reads of offloaded segments served from the local cache without a fetch.', (status) => status.remoteReads?.cacheHits ?? 0);
  perTimelineCounter('walcast_remote_fetch_errors_total', 'Segment fetches from object storage that failed for good (after the retries); each ended the streams that needed the segment.', (status) => status.remoteReads?.fetchErrors ?? 0);
  perTimelineCounter('walcast_remote_read_ahead_segments_fetched_total', 'Of the segments fetched, those downloaded by read-ahead before a reader asked for them.', (status) => status.remoteReads?.readAheadFetched ?? 0);
  perTimelineCounter('walcast_remote_read_ahead_segments_used_total', 'Read-ahead segments a reader then asked for.', (status) => status.remoteReads?.readAheadUsed ?? 0);
  perTimelineCounter('walcast_remote_read_ahead_segments_evicted_unused_total', 'Read-ahead segments evicted from the cache before any reader asked for them (wasted downloads).', (status) => status.remoteReads?.readAheadEvictedUnused ?? 0);
  perTimelineCounter('walcast_remote_get_retries_total', 'GETs from object storage that failed and were retried.', (status) => status.remoteReads?.getRetries ?? 0);
}

/**
 * Timeline removals while serving (timeline/timeline-removal.ts): finished and failed ones since start, and those
 * under way. A removed timeline's own series vanish with it (every per-timeline gauge is rebuilt at each scrape); a
 * failed one stays listed as unavailable in the status API.
 */
function registerRemovalMetrics(registry: Registry, timelines: () => TimelineRegistry | undefined): void {
  new Counter({
    name: 'walcast_timeline_removals_total',
    help: 'Timeline removals since start, by outcome (removed, failed).',
    labelNames: ['outcome'],
    registers: [registry],
    collect() {
      this.reset();
      const removals = timelines()?.removals ?? { completed: 0, failed: 0 };
      this.inc({ outcome: 'removed' }, removals.completed);
      this.inc({ outcome: 'failed' }, removals.failed);
    },
  });
  new Gauge({
    name: 'walcast_timelines_removing',
    help: 'Timelines being removed now (out of service, connections ending, directory not yet deleted).',
    registers: [registry],
    collect() {
      this.set(timelines()?.removingCount() ?? 0);
    },
  });
}

/**
 * walcast's own share of commit latency (timeline/publish-timing.ts), per timeline: histograms the timeline keeps
 * itself and exports at scrape time, so the send path records into plain arrays and never touches prom-client.
 */
function registerPublishTiming(registry: Registry, eachTimeline: EachTimeline): void {
  scrapedHistogram(
    registry,
    'walcast_publish_to_socket_seconds',
    'Time from a commit LSN being published to a live replica\'s chunk holding it written to that replica\'s socket, per stream; state: waiting (woken by the publish) or busy (still sending an earlier one).',
    (visit) =>
      eachTimeline((timeline) => {
        for (const state of ['waiting', 'busy'] as const) visit({ ...timelineLabels(timeline), state }, timeline.publishTiming.publishToSocket[state]);
      }),
  );
  scrapedHistogram(
    registry,
    'walcast_publish_fanout_seconds',
    'Time from a commit LSN being published until the last live replica owing it has written it to its socket, per publish.',
    (visit) => eachTimeline((timeline) => visit(timelineLabels(timeline), timeline.publishTiming.fanout)),
  );
  // The ingest hop (timeline/ingest-timing.ts): upstream message received → durable position published.
  scrapedHistogram(
    registry,
    'walcast_ingest_to_publish_seconds',
    'Time from live ingest receiving an upstream XLogData message to publishing the durable (fdatasynced) position covering it, per publish, from the oldest message it covers: the ingest hop before publish → socket.',
    (visit) => eachTimeline((timeline) => visit(timelineLabels(timeline), timeline.ingestTiming.receivedToPublished)),
    INGEST_LATENCY_BUCKETS_SECONDS,
  );
  scrapedHistogram(
    registry,
    'walcast_ingest_flush_seconds',
    'Duration of live ingest\'s group-commit flush (fdatasync of the segment, and of its checksum sidecar when pages completed), per publish: the disk\'s part of walcast_ingest_to_publish_seconds.',
    (visit) => eachTimeline((timeline) => visit(timelineLabels(timeline), timeline.ingestTiming.flush)),
    INGEST_LATENCY_BUCKETS_SECONDS,
  );
  scrapedHistogram(
    registry,
    'walcast_ingest_upstream_to_received_seconds',
    'Time from the upstream sending an XLogData message (its send timestamp) to live ingest receiving it, per publish, for the oldest message the publish covers: network, socket buffer and the wait for walcast\'s event loop, the part of the ingest hop before walcast_ingest_to_publish_seconds. Compares the two hosts\' clocks.',
    (visit) => eachTimeline((timeline) => visit(timelineLabels(timeline), timeline.ingestTiming.upstreamToReceived)),
    INGEST_LATENCY_BUCKETS_SECONDS,
  );
  new Counter({
    name: 'walcast_publish_timing_streams_dropped_total',
    help: 'Live streams no longer timed because they fell more than a bounded number of publishes behind (catching up).',
    labelNames: TIMELINE_LABELS,
    registers: [registry],
    collect() {
      this.reset();
      eachTimeline((timeline) => this.inc(timelineLabels(timeline), timeline.publishTiming.streamsDropped));
    },
  });
  // The commit fan-out batch (replication/fanout-batch.ts): chunks / calls is the replicas served per addon call. A
  // timeline whose commit watch never had a batcher (no native stream parked yet) is left out, as statusMetrics does.
  const { perTimelineCounter: batchCounter } = statusMetrics(registry, eachTimeline, (timeline) => existingFanoutBatcher(timeline.commitLsn));
  batchCounter('walcast_fanout_batch_calls_total', 'Commit fan-out batches: one I/O backend call sending one chunk to every parked replica at one position.', (counts) => counts.batches);
  batchCounter('walcast_fanout_batch_chunks_total', 'Chunks sent by commit fan-out batches, one per replica and batch.', (counts) => counts.chunksBatched);
  batchCounter('walcast_fanout_batch_resumes_total', 'Replicas that left the commit fan-out batch to send on their own (reply due, queue at its bound, storage error, failed send).', (counts) => counts.resumed);
}

type HistogramLabels = Record<string, string>;
/** What a scraped histogram reads: per-bucket counts in the order of its bounds, then +Inf. */
type ScrapedCounts = Pick<LatencyHistogram, 'counts' | 'count' | 'sumSeconds'>;

/**
 * A Prometheus histogram whose buckets live elsewhere (a LatencyHistogram), rendered at scrape time. prom-client
 * has no histogram that takes counts, so this is a metric object of its own; the registry only calls get() and
 * reset() on it, the two members it has (hence the cast at registration).
 */
function scrapedHistogram(
  registry: Registry,
  name: string,
  help: string,
  each: (visit: (labels: HistogramLabels, histogram: ScrapedCounts) => void) => void,
  bounds: readonly number[] = PUBLISH_LATENCY_BUCKETS_SECONDS,
): void {
  const metric = {
    name,
    help,
    type: 'histogram' as const,
    aggregator: 'sum' as const,
    reset: (): void => undefined,
    get: async () => {
      const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
      each((labels, histogram) => {
        let cumulative = 0;
        bounds.forEach((bound, index) => {
          cumulative += histogram.counts[index] ?? 0;
          values.push({ metricName: `${name}_bucket`, labels: { ...labels, le: bound }, value: cumulative });
        });
        values.push({ metricName: `${name}_bucket`, labels: { ...labels, le: '+Inf' }, value: histogram.count });
        values.push({ metricName: `${name}_sum`, labels, value: histogram.sumSeconds });
        values.push({ metricName: `${name}_count`, labels, value: histogram.count });
      });
      return { name, help, type: metric.type, aggregator: metric.aggregator, values };
    },
  };
  registry.registerMetric(metric as unknown as Histogram);
}

/** Counters fed by server hooks. */
function registerEventCounters(registry: Registry): Required<ServerHooks> {
  const queries = new Counter({
    name: 'walcast_pg_queries_received_total',
    help: 'Replication protocol queries received, by command (safekeeper_pg_queries_received_total).',
    labelNames: ['command'],
    registers: [registry],
  });
  const streamsEnded = new Counter({
    name: 'walcast_streams_ended_total',
    help: 'Replication streams that ended, by how they ended.',
    labelNames: ['how'],
    registers: [registry],
  });
  const connectionErrors = new Counter({
    name: 'walcast_connection_errors_total',
    help: 'Connections refused or streams ended by an error, by cause.',
    labelNames: ['cause'],
    registers: [registry],
  });
  return {
    onCommand(kind: string) {
      queries.inc({ command: COMMAND_KINDS.has(kind) ? kind : 'other' });
    },
    onStreamEnd(outcome: StreamOutcome) {
      const how = streamEndingLabel(outcome.how);
      streamsEnded.inc({ how });
      if (!ORDINARY_ENDINGS.has(how)) connectionErrors.inc({ cause: how });
    },
    onConnectionRefused(cause: string) {
      connectionErrors.inc({ cause: boundedLabel(cause) });
    },
  };
}

/**
 * Turns StreamOutcome.how (free text from the replication layer) into a bounded label: known phrases become
 * snake_case, WALCAST_ERR_* codes lose their prefix, I/O errors (whose text carries addresses) collapse to one.
 */
export function streamEndingLabel(how: string): string {
  if (how.startsWith('I/O error')) return 'io_error';
  if (how.startsWith('WALCAST_ERR_')) return boundedLabel(how.slice('WALCAST_ERR_'.length));
  const known: Record<string, string> = {
    caught_up: 'caught_up',
    recovery_finished: 'recovery_finished',
    'client CopyDone': 'client_copy_done',
    'client CopyFail': 'client_copy_fail',
    'client terminate': 'client_terminate',
    'client disconnected': 'client_disconnected',
    'server shutdown': 'server_shutdown',
    'invalid timeline': 'invalid_timeline',
  };
  return known[how] ?? 'other';
}

function boundedLabel(text: string): string {
  const label = text.toLowerCase().replace(/[^a-z0-9_]+/g, '_').slice(0, CAUSE_LABEL_MAX_CHARS);
  return label === '' ? 'other' : label;
}
