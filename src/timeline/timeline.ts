/**
 * One timeline's live state: its identity and WAL layout (from the control file), its commit and flush LSN watches,
 * its replicas, its replication slots, whether a writer (live ingest) is attached, and the page verifier every
 * sender of it shares (storage/page-verifier.ts: verified-page bitmaps and the quarantine of corrupted pages). It
 * knows nothing of sockets or file formats; storage
 * persists what ingest makes durable, and this object publishes it to the senders.
 */
import assert from 'node:assert/strict';
import type { Lsn } from '../lsn.js';
import { SlotTable } from '../slots/slot-table.js';
import type { TimelineProblem } from '../storage/timeline-check.js';
import { PageVerifier, type TailPageSource } from '../storage/page-verifier.js';
import { LsnWatch } from './lsn-watch.js';
import { ReplicaRegistry } from './replica-registry.js';

export interface TimelineIdentity {
  readonly tenantId: string;
  readonly timelineId: string;
  /** The directory holding this timeline's segments and control file. */
  readonly dir: string;
  readonly systemId: bigint;
  readonly pgVersion: number;
  readonly segmentBytes: number;
  /** The PostgreSQL timeline (TLI) the WAL belongs to, as IDENTIFY_SYSTEM reports it. */
  readonly pgTimelineId: number;
  /** The first byte of WAL this timeline holds. */
  readonly timelineStartLsn: Lsn;
}

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
  readonly pgTimelineId: number;
  readonly timelineStartLsn: Lsn;
  /** Everything durably stored; recovery (term) streams may send up to here. */
  readonly flushLsn: LsnWatch;
  /** Everything committed; ordinary replicas are sent up to here. Never ahead of the flush LSN. */
  readonly commitLsn: LsnWatch;
  readonly replicas = new ReplicaRegistry();
  /** Replication slots on this timeline; open-timelines.ts passes one loaded from the timeline's slot file. */
  readonly slots: SlotTable;
  /** What the start-up check found wrong with the timeline's files (holes are errors); empty when all is well. */
  storageProblems: readonly TimelineProblem[] = [];
  /** Live ingest's state as its follower last reported it (src/ingest), and why when paused; undefined without ingest. */
  ingestState: { readonly state: string; readonly reason: string | undefined } | undefined;
  /** How often ingest entered each state, for the state-change metric. */
  readonly ingestStateChanges = new Map<string, number>();
  private persistedFlushLsnValue: Lsn;
  /** Checks stored pages before they are sent; one per timeline so a page is checked once, not once per replica. */
  readonly pages: PageVerifier;
  private writersAttached = 0;
  private tail: TailPageSource | undefined;

  constructor(identity: TimelineIdentity, positions: TimelinePositions, slots: SlotTable = new SlotTable()) {
    assert.ok(positions.commitLsn <= positions.flushLsn, 'commit LSN is never ahead of flush LSN');
    assert.ok(positions.flushLsn >= identity.timelineStartLsn, 'flush LSN is not before the timeline start');
    this.tenantId = identity.tenantId;
    this.timelineId = identity.timelineId;
    this.dir = identity.dir;
    this.systemId = identity.systemId;
    this.pgVersion = identity.pgVersion;
    this.segmentBytes = identity.segmentBytes;
    this.pgTimelineId = identity.pgTimelineId;
    this.timelineStartLsn = identity.timelineStartLsn;
    this.flushLsn = new LsnWatch(positions.flushLsn);
    this.commitLsn = new LsnWatch(positions.commitLsn);
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
