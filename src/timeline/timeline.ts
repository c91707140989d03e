/**
 * One timeline's live state: its identity and WAL layout (from the control file), its commit and flush LSN watches,
 * its replicas, its replication slots, whether a writer (live ingest) is attached, and the page verifier every
 * sender of it shares (storage/page-verifier.ts: verified-page bitmaps and the quarantine of corrupted pages). It
 * knows nothing of sockets or file formats; storage
 * persists what ingest makes durable, and this object publishes it to the senders.
 */
import assert from 'node:assert/strict';
import { formatLsn, type Lsn } from '../lsn.js';
import { SlotTable } from '../slots/slot-table.js';
import type { TimelineProblem } from '../storage/timeline-check.js';
import { PageVerifier, type TailPageSource } from '../storage/page-verifier.js';
import { ControlFileWriter } from '../storage/control-writer.js';
import type { RemoteSegmentSource } from '../storage/wal-reader.js';
import { segmentOf } from '../storage/segment-name.js';
import { SegmentPins } from '../storage/segment-pins.js';
import { historyEntryOf, pgTimelineAt, singleTimelineHistory, switchPointOf, type TimelineHistory } from '../storage/timeline-history.js';
import { LsnWatch } from './lsn-watch.js';
import { IngestTiming } from './ingest-timing.js';
import { PublishTiming } from './publish-timing.js';
import { ReplicaRegistry } from './replica-registry.js';

export interface TimelineIdentity {
  readonly tenantId: string;
  readonly timelineId: string;
  /** The directory holding this timeline's segments and control file. */
  readonly dir: string;
  readonly systemId: bigint;
  readonly pgVersion: number;
  readonly segmentBytes: number;
  /** The PostgreSQL timeline (TLI) the newest WAL belongs to, as IDENTIFY_SYSTEM reports it. */
  readonly pgTimelineId: number;
  /** The first byte of WAL this timeline holds (retention moves it forward while the server runs). */
  readonly timelineStartLsn: Lsn;
  /** The PostgreSQL timelines the WAL went through, oldest first (from the current TLI's history file). */
  readonly history?: TimelineHistory;
}

/** Releases a segment pin; idempotent. */
export type UnpinSegment = () => void;

export interface TimelinePositions {
  readonly flushLsn: Lsn;
  readonly commitLsn: Lsn;
}

export class Timeline implements TimelineIdentity {
  readonly tenantId: string;
  readonly timelineId: string;
  readonly dir: string;
  readonly systemId: bigint;
  readonly pgVersion: number;
  readonly segmentBytes: number;
  private historyValue: TimelineHistory;
  /** Everything durably stored; recovery (term) streams may send up to here. */
  readonly flushLsn: LsnWatch;
  /** Everything committed; ordinary replicas are sent up to here. Never ahead of the flush LSN. */
  readonly commitLsn: LsnWatch;
  /** How long each commit LSN move takes to reach the sockets of the live replicas (the metrics' histograms). */
  readonly publishTiming = new PublishTiming();
  /** How long live ingest takes from an upstream message to the publish that covers it (the metrics' histograms). */
  readonly ingestTiming = new IngestTiming();
  readonly replicas = new ReplicaRegistry();
  /** Offload: where segments before the local start are read from (object storage via a cache); set by the server. */
  remoteSegments: RemoteSegmentSource | undefined;
  /** The one writer of walcast.control while the server runs (ingest positions, retention's start). */
  readonly controlFile: ControlFileWriter;
  /** Replication slots on this timeline; open-timelines.ts passes one loaded from the timeline's slot file. */
  readonly slots: SlotTable;
  /** What the start-up check found wrong with the timeline's files (holes are errors); empty when all is well. */
  storageProblems: readonly TimelineProblem[] = [];
  /** Live ingest's state as its follower last reported it (src/ingest), and why when paused; undefined without ingest. */
  ingestState: { readonly state: string; readonly reason: string | undefined } | undefined;
  /**
   * WAL bytes sent to replicas, by where the segment was read: local disk, or object storage (through the fetched
   * segment cache). Message headers are not counted. Status API `wal_bytes_served`, /metrics
   * walcast_wal_bytes_served_total{source}.
   */
  readonly walBytesServed: { local: number; remote: number } = { local: 0, remote: 0 };
  /** How often ingest entered each state, for the state-change metric. */
  readonly ingestStateChanges = new Map<string, number>();
  private persistedFlushLsnValue: Lsn;
  /** Checks stored pages before they are sent; one per timeline so a page is checked once, not once per replica. */
  readonly pages: PageVerifier;
  private writersAttached = 0;
  private tail: TailPageSource | undefined;
  private startLsn: Lsn;
  /** Open-segment pins of the WAL readers. */
  private readonly pins = new SegmentPins();

  constructor(identity: TimelineIdentity, positions: TimelinePositions, slots: SlotTable = new SlotTable()) {
    assert.ok(positions.commitLsn <= positions.flushLsn, 'commit LSN is never ahead of flush LSN');
    assert.ok(positions.flushLsn >= identity.timelineStartLsn, 'flush LSN is not before the timeline start');
    this.tenantId = identity.tenantId;
    this.timelineId = identity.timelineId;
    this.dir = identity.dir;
    this.systemId = identity.systemId;
    this.pgVersion = identity.pgVersion;
    this.segmentBytes = identity.segmentBytes;
    this.historyValue = identity.history ?? singleTimelineHistory(identity.pgTimelineId);
    assert.equal(this.pgTimelineId, identity.pgTimelineId, 'the history ends with the current PostgreSQL timeline');
    this.startLsn = identity.timelineStartLsn;
    this.controlFile = new ControlFileWriter(identity.dir);
    this.flushLsn = new LsnWatch(positions.flushLsn);
    this.commitLsn = new LsnWatch(positions.commitLsn, this.publishTiming);
    this.slots = slots;
    this.persistedFlushLsnValue = positions.flushLsn;
    this.pages = new PageVerifier(identity.dir, identity);
  }

  /**
   * The flush LSN recorded in the control file: the position that survives a restart. The flush watch may be ahead
   * of it (fdatasynced, not yet recorded); the operations API reports this one as the durable position.
   */
  get persistedFlushLsn(): Lsn {
    return this.persistedFlushLsnValue;
  }

  /** Ingest reports each state change here, so that metrics (which see only timelines) can show it. */
  reportIngestState(state: string, reason: string | undefined): void {
    this.ingestState = { state, reason };
    this.ingestStateChanges.set(state, (this.ingestStateChanges.get(state) ?? 0) + 1);
  }

  /** Called once a control file with this flush LSN is durably in place. */
  recordPersistedFlush(flushLsn: Lsn): void {
    assert.ok(flushLsn >= this.persistedFlushLsnValue, 'the persisted flush LSN moves only forward');
    assert.ok(flushLsn <= this.flushLsn.get(), 'only published WAL is persisted');
    this.persistedFlushLsnValue = flushLsn;
  }

  /**
   * The WAL writer of this timeline, whose page being filled has no stored checksum yet: senders check that page
   * against the writer's copy. Set when ingest opens a writer; kept after it closes (its copy stays right).
   */
  setTailPages(tail: TailPageSource): void {
    this.tail = tail;
  }

  tailPages(): TailPageSource | undefined {
    return this.tail;
  }

  /** The first byte of WAL held now: a segment start, moved forward by retention (advanceStart). */
  get timelineStartLsn(): Lsn {
    return this.startLsn;
  }

  /**
   * Pins segment `segno` for a reader that is about to open it or has it open; undefined when the segment is before
   * the timeline start (removed, or about to be). Retention never advances the start past a pinned segment, and the
   * check and the pin happen in one synchronous step, so a reader can never open a file that is being unlinked.
   */
  pinSegment(segno: bigint): UnpinSegment | undefined {
    if (segno < segmentOf(this.startLsn, this.segmentBytes)) return undefined;
    return this.pins.pin(segno);
  }

  /** The lowest pinned segment number, if any reader holds one. */
  lowestPinnedSegment(): bigint | undefined {
    return this.pins.lowest();
  }

  /**
   * Moves the timeline start forward to `lsn` (a segment start, not past the flush LSN): from now on nothing before
   * it is served or pinned. Retention calls this before it persists the start and unlinks the segments before it.
   */
  advanceStart(lsn: Lsn): void {
    assert.ok(lsn % BigInt(this.segmentBytes) === 0n, 'the timeline start is a segment start');
    assert.ok(lsn >= this.startLsn, `the timeline start moves only forward (${formatLsn(this.startLsn)} → ${formatLsn(lsn)})`);
    assert.ok(lsn <= this.flushLsn.get(), 'the timeline start is not past the flush LSN');
    const lowestPinned = this.lowestPinnedSegment();
    assert.ok(lowestPinned === undefined || lowestPinned >= segmentOf(lsn, this.segmentBytes), 'the start never passes a pinned segment');
    this.startLsn = lsn;
  }

  /** The current (newest) PostgreSQL timeline: ingest moves it forward at a promotion upstream. */
  get pgTimelineId(): number {
    const newest = this.historyValue[this.historyValue.length - 1];
    assert.ok(newest !== undefined, 'a history is never empty');
    return newest.pgTimelineId;
  }

  /**
   * The PostgreSQL timelines the stored WAL went through, oldest first; the last one is open-ended. A new value at
   * every switch, never mutated: the commit fan-out batch (replication/fanout-batch.ts) compares it by identity to
   * know when its streams' timeline ends must be asked again.
   */
  get history(): TimelineHistory {
    return this.historyValue;
  }

  /**
   * Where PostgreSQL timeline `pgTimelineId` ends in this history (its switch point) and which TLI follows,
   * undefined while it is the current one. The TLI must be in the history (`hasPgTimeline`).
   */
  pgTimelineEnd(pgTimelineId: number): { readonly switchLsn: Lsn; readonly nextPgTimelineId: number } | undefined {
    return switchPointOf(pgTimelineId, this.historyValue);
  }

  hasPgTimeline(pgTimelineId: number): boolean {
    return historyEntryOf(pgTimelineId, this.historyValue) !== undefined;
  }

  /**
   * Moves to a new PostgreSQL timeline (ingest followed a promotion). Must run before any byte past the switch
   * point is published: senders read the commit LSN first and this history second, so a sender that sees WAL past
   * the switch point also sees the switch and ends its old-timeline stream there.
   */
  switchPgTimeline(history: TimelineHistory): void {
    const previous = this.pgTimelineId;
    const next = history[history.length - 1];
    assert.ok(next !== undefined && next.pgTimelineId > previous, 'a timeline switch moves to a newer TLI');
    const end = switchPointOf(previous, history);
    assert.ok(end !== undefined, `the new history ends timeline ${previous}`);
    assert.ok(end.switchLsn >= this.flushLsn.get(), `nothing past the switch point ${formatLsn(end.switchLsn)} was published`);
    assert.equal(pgTimelineAt(end.switchLsn, history), end.nextPgTimelineId);
    this.historyValue = history;
  }

  /** Publishes newly durable WAL: flush first, so that commit never passes it. */
  publish(positions: TimelinePositions): void {
    assert.ok(positions.commitLsn <= positions.flushLsn, 'commit LSN is never ahead of flush LSN');
    this.flushLsn.advance(positions.flushLsn);
    this.commitLsn.advance(positions.commitLsn);
  }

  /** Marks a live writer (ingest) attached; returns the detach function. Senders do not end while one is. */
  attachWriter(): () => void {
    this.writersAttached++;
    let detached = false;
    return () => {
      if (detached) return;
      detached = true;
      this.writersAttached--;
      assert.ok(this.writersAttached >= 0);
    };
  }

  hasWriter(): boolean {
    return this.writersAttached > 0;
  }

  /**
   * The seed's should_walsender_stop: a stream may end once its replica reported (pageserver feedback) a
   * remote-consistent LSN at or past the commit LSN and nothing writes the timeline any more. Replicas that never
   * report one (standbys, pg_receivewal) are never ended this way.
   */
  shouldSenderStop(replicaRemoteConsistentLsn: Lsn | undefined): boolean {
    if (this.hasWriter()) return false;
    if (replicaRemoteConsistentLsn === undefined) return false;
    return replicaRemoteConsistentLsn >= this.commitLsn.get();
  }
}
