/**
 * Following one upstream for one timeline: the replication-client state machine of live ingest (walreceiver.c's
 * job). It recovers the stored WAL's end, connects, checks IDENTIFY_SYSTEM, runs START_REPLICATION from exactly the
 * next byte it needs, writes every XLogData into the segments, and publishes a position only once it is durable
 * (group-committed fdatasync, storage/wal-writer.ts). It reports what is written and durable upstream ('r', so a
 * primary may use walcast as a synchronous standby) and forwards the hot-standby xmin of its own replicas ('h', as
 * a cascading standby does). Errors reconnect with capped backoff, through every host of a multi-host connection
 * string (upstream-connect.ts).
 *
 * A promotion upstream is followed as a cascading standby follows it (timeline-switch.ts): the new timeline's history
 * is fetched and kept, the rest of the old timeline streamed up to the switch point, then ingest continues on the new
 * timeline from there; if walcast holds WAL past the switch point (a diverged history), ingest stops for good.
 *
 * A full, failing or read-only disk (ENOSPC, EDQUOT, EIO, EROFS from a WAL write, an fdatasync or the control file)
 * pauses ingest instead of stopping it: the stream is dropped, the writer abandoned, everything after the last
 * published (fdatasynced) position discarded, and then, with backoff, the control file is rewritten as a probe; once
 * that works, ingest reconnects from exactly the published position, so no byte is lost or written twice.
 *
 * States (each change is logged once and counted on the timeline): recovering → connecting → streaming → waiting →
 * connecting ... | paused → connecting ... → stopped | failed. The timeline counts a writer as attached only while a
 * stream is live.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { SqlState, WalcastError, isWalcastError } from '../errors.js';
import type { Logger } from '../log.js';
import { formatLsn, lsnDistance, maxLsn, parseLsn, type Lsn } from '../lsn.js';
import { pgNowMicros } from '../replication/stream-messages.js';
import type { ControlState } from '../storage/control-file.js';
import { historyFileName } from '../storage/segment-name.js';
import { HISTORY_FILE_BYTES_MAX, parseTimelineHistory, type TimelineHistory } from '../storage/timeline-history.js';
import { WalWriter } from '../storage/wal-writer.js';
import { IncomingPageChecker } from './incoming-pages.js';
import type { Timeline } from '../timeline/timeline.js';
import { ServerError, connectReplication, type QueryResult, type ReplicationClientOptions, type ReplicationStream, type StreamEnd } from '../wire/client.js';
import { Backoff } from './backoff.js';
import type { UpstreamConnInfo } from './conninfo.js';
import { discardAfter, recoverTimelineEnd } from './recovery.js';
import { planTimelineSwitch, storeTimelineSwitch } from './timeline-switch.js';
import { UpstreamClock } from './upstream-clock.js';
import { connectFirstMatching } from './upstream-connect.js';
import { decodeUpstreamMessage, encodeHotStandbyFeedback, encodeStandbyStatus, type XLogDataMessage } from './upstream-messages.js';

/** Bounds connecting, startup and each command when the connection string has no connect_timeout. */
export const UPSTREAM_COMMAND_TIMEOUT_MS = 10_000;

/** How long one connection attempt may take: libpq's connect_timeout when the connection string sets it. */
export function upstreamConnectTimeoutMs(conninfo: { readonly connectTimeoutS?: number | undefined }): number {
  return conninfo.connectTimeoutS === undefined ? UPSTREAM_COMMAND_TIMEOUT_MS : conninfo.connectTimeoutS * 1000;
}
/** A status update at least this often, as walreceiver's wal_receiver_status_interval (10 s) but tighter for lag views. */
export const STATUS_INTERVAL_MS = 1_000;
/** Hot-standby feedback is re-checked and, when changed, sent at most this often (the issue: ~1 s). */
export const HOT_STANDBY_FEEDBACK_INTERVAL_MS = 1_000;
/**
 * The control file's flush LSN is persisted about this often (about twice this apart at most: a due write waits for a
 * quiet moment of the stream, `onControlPersistTick`); recovery makes up for the lag.
 */
export const CONTROL_PERSIST_INTERVAL_MS = 1_000;
/** An upstream silent this long is presumed dead (PostgreSQL wal_receiver_timeout default); half of it asks for a reply. */
export const UPSTREAM_SILENCE_TIMEOUT_MS = 60_000;
/** Written but not yet durable bytes before reading pauses for the running fdatasync: bounds the page-cache debt. */
export const UNFLUSHED_BYTES_MAX = 64 * 1024 * 1024;
/** How long the closing handshake (CopyDone → CommandComplete → ReadyForQuery) may take before we hang up. */
const STREAM_END_TIMEOUT_MS = 5_000;
/** A paused ingest first retries this soon: a disk freed by an operator is used again at once. */
export const STORAGE_RETRY_MIN_MS = 200;
/** ... and then at least this often while the disk stays full: each retry is one small control-file write. */
export const STORAGE_RETRY_MAX_MS = 5_000;
/** errno codes that mean "the disk cannot take writes now" rather than "walcast is broken": ingest pauses on them. */
const STORAGE_FAULT_CODES: ReadonlySet<string> = new Set(['ENOSPC', 'EDQUOT', 'EIO', 'EROFS']);
/** SQLSTATE of "replication slot ... does not exist" (slot.c ReplicationSlotAcquire). */

assert.ok(HOT_STANDBY_FEEDBACK_INTERVAL_MS <= UPSTREAM_SILENCE_TIMEOUT_MS / 2);

export type FollowerState = 'recovering' | 'connecting' | 'streaming' | 'waiting' | 'paused' | 'stopped' | 'failed';

/** The subset of the wire client the follower uses, so tests can substitute it. */
export type UpstreamConnect = (options: ReplicationClientOptions) => Promise<UpstreamClient>;
export interface UpstreamClient {
  query(sql: string): Promise<QueryResult>;
  startReplication(command: string): Promise<UpstreamStream>;
  end(): Promise<void>;
  readonly parameters: Map<string, string>;
}
export type UpstreamStream = Pick<ReplicationStream, 'read' | 'sendCopyData' | 'sendCopyDone'>;

export interface FollowerOptions {
  readonly timeline: Timeline;
  /** The timeline's control file as read at start; rewritten with new flush positions. */
  readonly control: ControlState;
  readonly conninfo: UpstreamConnInfo;
  readonly password: string | undefined;
  readonly log: Logger;
  readonly connect?: UpstreamConnect;
  /** How often the control file's position is written (CONTROL_PERSIST_INTERVAL_MS); tests shorten it. */
  readonly controlPersistIntervalMs?: number;
}

/** A follower as the operations API reports it (src/api reads this, never the follower itself). */
export interface UpstreamStatus extends FollowerStats {
  readonly tenantId: string;
  readonly timelineId: string;
  /** host:port of the upstream; never the connection string, which may name a password file. */
  readonly upstream: string;
  readonly state: FollowerState;
  readonly failure: string | undefined;
  /** Why ingest is paused (the storage error), while it is. */
  readonly pausedReason: string | undefined;
}

export interface FollowerStats {
  bytesReceived: number;
  messagesReceived: number;
  statusSent: number;
  hotStandbySent: number;
  connects: number;
}

/** The physical slot walcast creates upstream for a timeline (the issue fixes the name). */
export function upstreamSlotName(timelineId: string): string {
  return `walcast_${timelineId.slice(0, 16)}`;
}

export class UpstreamFollower {
  readonly stats: FollowerStats = { bytesReceived: 0, messagesReceived: 0, statusSent: 0, hotStandbySent: 0, connects: 0 };
  private stateValue: FollowerState = 'recovering';
  private lastLoggedProblem: string | undefined;
  private readonly options: FollowerOptions;
  private readonly log: Logger;
  private readonly timeline: Timeline;
  private readonly connect: UpstreamConnect;
  private writer: WalWriter | undefined;
  /** Page headers of received WAL are validated before it is written (incoming-pages.ts). */
  private readonly incomingPages: IncomingPageChecker;
  private client: UpstreamClient | undefined;
  private stream: UpstreamStream | undefined;
  private flushInFlight: Promise<void> | undefined;
  /** When the oldest message written since the last flush started arrived (performance.now()); for IngestTiming. */
  private oldestUnflushedAtMs: number | undefined;
  /** When the upstream sent that message (its XLogData send timestamp on our clock); undefined when it does not stamp. */
  private oldestUnflushedSentAtMs: number | undefined;
  private readonly upstreamClock = new UpstreamClock();
  private fatal: Error | undefined;
  /** A storage error (STORAGE_FAULT_CODES) that ends the current stream and pauses ingest until the disk works. */
  private storageFault: Error | undefined;
  private pausedReason: string | undefined;
  /** Across pauses, reset only once WAL was durably written again: a disk that fills at once is retried slower. */
  private readonly storageBackoff = new Backoff(STORAGE_RETRY_MIN_MS, STORAGE_RETRY_MAX_MS);
  private stopping = false;
  private wake: (() => void) | undefined;
  private useSlot = true;
  private lastMessageAt = 0;
  private sentHotStandby: { xmin: bigint; catalogXmin: bigint } | undefined;
  private readonly control: ControlState;
  private persisting: Promise<void> | undefined;
  /** A periodic control-file write is due and waits for a publish with no flush behind it (onControlPersistTick). */
  private controlPersistDue = false;
  /** ... and a whole interval passed without one: the next publish starts it, flush behind or not. */
  private controlPersistOverdue = false;
  private runPromise: Promise<void> | undefined;
  /** host:port of the host the last connect round reached (a multi-host string may name several). */
  private connectedHost: string | undefined;

  constructor(options: FollowerOptions) {
    this.options = options;
    this.timeline = options.timeline;
    this.incomingPages = new IncomingPageChecker({ segmentBytes: options.timeline.segmentBytes, systemId: options.timeline.systemId });
    this.control = options.control;
    this.connect = options.connect ?? connectReplication;
    this.log = options.log.child({ tenantId: this.timeline.tenantId, timelineId: this.timeline.timelineId, upstream: `${options.conninfo.host}:${options.conninfo.port}` });
  }

  get state(): FollowerState {
    return this.stateValue;
  }

  /** What the operations API shows of this follower. */
  status(): UpstreamStatus {
    return {
      tenantId: this.timeline.tenantId,
      timelineId: this.timeline.timelineId,
      upstream: this.connectedHost ?? `${this.options.conninfo.host}:${this.options.conninfo.port}`,
      state: this.stateValue,
      failure: this.fatal?.message,
      pausedReason: this.pausedReason,
      ...this.stats,
    };
  }

  /** The error that stopped ingest for good (timeline switch, write failure), if any. */
  get failure(): Error | undefined {
    return this.fatal;
  }

  /** Starts following in the background; the promise settles when ingest has stopped (never rejects). */
  start(): Promise<void> {
    assert.equal(this.runPromise, undefined, 'a follower starts once');
    this.runPromise = this.run();
    return this.runPromise;
  }

  /** Ends the stream, makes everything written durable, persists the control file. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.wake?.();
    void this.client?.end();
    await this.runPromise;
  }

  private async run(): Promise<void> {
    const timers = [setInterval(() => this.onControlPersistTick(), this.options.controlPersistIntervalMs ?? CONTROL_PERSIST_INTERVAL_MS)];
    try {
      await this.recover();
      await this.followUntilStopped();
    } catch (error) {
      this.fatal ??= error instanceof Error ? error : new Error(String(error));
    } finally {
      for (const timer of timers) clearInterval(timer);
      await this.shutDownWriter();
      if (this.fatal !== undefined) {
        this.setState('failed');
        this.log.error({ err: this.fatal, code: isWalcastError(this.fatal) ? this.fatal.code : undefined }, 'ingest stopped: ' + this.fatal.message);
      } else {
        this.setState('stopped');
      }
    }
  }

  private async recover(): Promise<void> {
    this.setState('recovering');
    const timeline = this.timeline;
    const result = await recoverTimelineEnd(
      {
        dir: timeline.dir,
        segmentBytes: timeline.segmentBytes,
        pgTimelineId: timeline.pgTimelineId,
        systemId: timeline.systemId,
        timelineStartLsn: timeline.timelineStartLsn,
        controlFlushLsn: this.control.flushLsn,
      },
      this.log,
    );
    // The timeline was opened from the same control file, so its watches hold the (possibly lagging) control flush
    // LSN; recovery can only move them forward, and publish() asserts it.
    if (result.resumeLsn > timeline.flushLsn.get()) timeline.publish({ flushLsn: result.resumeLsn, commitLsn: result.resumeLsn });
    this.writer = new WalWriter({ dir: timeline.dir, pgTimelineId: timeline.pgTimelineId, segmentBytes: timeline.segmentBytes, startLsn: result.resumeLsn });
    timeline.setTailPages(this.writer);
    await this.persistControl();
  }

  private async followUntilStopped(): Promise<void> {
    const backoff = new Backoff();
    while (!this.stopping && this.fatal === undefined) {
      const receivedBefore = this.stats.bytesReceived;
      try {
        await this.followOnce();
        if (!this.stopping && this.storageFault === undefined) this.noteProblem('the upstream ended the stream');
      } catch (error) {
        if (isStorageFault(error)) this.storageFault ??= error;
        else if (isFatal(error)) throw error;
        if (this.fatal !== undefined) break;
        if (this.storageFault === undefined) this.noteProblem(describe(error), error);
      }
      if (this.stopping || this.fatal !== undefined) break;
      if (this.storageFault !== undefined) {
        await this.pauseUntilStorageWorks(this.storageFault);
        continue;
      }
      // A stream that delivered WAL was a success: the next failure starts the backoff from the minimum again.
      if (this.stats.bytesReceived > receivedBefore) backoff.reset();
      const delayMs = backoff.nextDelayMs();
      this.setState('waiting', { retryInMs: delayMs });
      await this.sleep(delayMs);
    }
    if (this.fatal !== undefined) throw this.fatal;
  }

  private async followOnce(): Promise<void> {
    this.setState('connecting');
    const info = this.options.conninfo;
    const { client, host } = await connectFirstMatching({
      conninfo: info,
      password: this.options.password,
      timeoutMs: upstreamConnectTimeoutMs(info),
      connect: this.connect,
    });
    this.stats.connects++;
    this.client = client;
    this.connectedHost = `${host.host}:${host.port}`;
    try {
      if (this.stopping) return;
      const upstreamTli = await this.checkIdentity(client);
      await this.catchUpTimelines(client, upstreamTli);
      // As pg_receivewal: when the upstream ends a timeline, switch and stream the next one on the same connection.
      for (;;) {
        const stream = await this.startStream(client);
        const timelineEnd = await this.streamUntilEnd(stream);
        if (timelineEnd === undefined || this.stopping || this.fatal !== undefined) return;
        await this.followTimelineEnd(client, timelineEnd);
      }
    } finally {
      this.client = undefined;
      await client.end().catch(() => undefined);
    }
  }

  /** IDENTIFY_SYSTEM must show the same system as the stored WAL; resolves the upstream's PostgreSQL timeline. */
  private async checkIdentity(client: UpstreamClient): Promise<number> {
    const identity = parseIdentifySystem(await client.query('IDENTIFY_SYSTEM'));
    if (identity.systemId !== this.timeline.systemId) {
      throw new WalcastError('WALCAST_ERR_SYSTEM_ID_MISMATCH', `the upstream's system identifier ${identity.systemId} differs from this timeline's ${this.timeline.systemId}`);
    }
    if (identity.pgTimelineId < this.timeline.pgTimelineId) {
      // An old primary that came back after a failover: not ours to follow; the next host or a retry may be.
      throw new WalcastError('WALCAST_ERR_UPSTREAM_TIMELINE_SWITCH', `the upstream is on PostgreSQL timeline ${identity.pgTimelineId}, walcast already follows timeline ${this.timeline.pgTimelineId}`);
    }
    return identity.pgTimelineId;
  }

  /**
   * The upstream is on a newer timeline (a promotion while walcast was away): switch through each timeline the
   * upstream's history lists after ours, or return to stream the rest of ours first (the upstream ends that stream
   * at the switch point), or stop for good when walcast holds WAL past the fork.
   */
  private async catchUpTimelines(client: UpstreamClient, upstreamTli: number): Promise<void> {
    while (upstreamTli > this.timeline.pgTimelineId) {
      const upstream = await fetchTimelineHistory(client, upstreamTli);
      const plan = planTimelineSwitch(this.timeline.pgTimelineId, this.requireWriter().writtenLsn, upstream.history);
      if (plan.kind === 'diverged') throw plan.error;
      if (plan.kind === 'catch_up') {
        this.log.info({ switchLsn: formatLsn(plan.switchLsn), upstreamTli }, 'the upstream is on a newer timeline: streaming the rest of ours up to its switch point first');
        return;
      }
      const next = plan.nextPgTimelineId === upstreamTli ? upstream : await fetchTimelineHistory(client, plan.nextPgTimelineId);
      await this.switchTimeline(plan.switchLsn, plan.nextPgTimelineId, next.content);
    }
  }

  /** The upstream ended our timeline mid-stream (CopyDone + next_tli row): check the position, then switch. */
  private async followTimelineEnd(client: UpstreamClient, end: TimelineEnd): Promise<void> {
    const written = this.requireWriter().writtenLsn;
    const next = await fetchTimelineHistory(client, end.nextPgTimelineId);
    const plan = planTimelineSwitch(this.timeline.pgTimelineId, written, next.history);
    if (plan.kind === 'diverged') throw plan.error;
    if (plan.kind === 'catch_up' || plan.switchLsn !== end.switchLsn) {
      throw new WalcastError('WALCAST_ERR_UPSTREAM', `the upstream ended timeline ${this.timeline.pgTimelineId} at ${formatLsn(end.switchLsn)}, but walcast holds it to ${formatLsn(written)} and the history says ${formatLsn(plan.switchLsn)}`);
    }
    await this.switchTimeline(plan.switchLsn, plan.nextPgTimelineId, next.content);
  }

  /** Makes the old timeline durable, stores the switch, then moves the served timeline (never past what is durable). */
  private async switchTimeline(switchLsn: Lsn, nextPgTimelineId: number, historyContent: string): Promise<void> {
    const previous = this.requireWriter();
    if (this.flushInFlight !== undefined) await this.flushInFlight;
    await previous.close();
    this.timeline.publish({ flushLsn: previous.durableLsn, commitLsn: previous.durableLsn });
    while (this.persisting !== undefined) await this.persisting;
    // The control file goes through the timeline's one writer, whose patches keep the fields they do not change,
    // so the periodic position write cannot undo the switch. Without a writer it also skips while the switch runs.
    this.writer = undefined;
    let next: WalWriter;
    try {
      next = await storeTimelineSwitch({
        dir: this.timeline.dir,
        segmentBytes: this.timeline.segmentBytes,
        pgTimelineId: this.timeline.pgTimelineId,
        writtenLsn: previous.writtenLsn,
        switchLsn,
        nextPgTimelineId,
        historyContent,
        commitSwitch: () => this.commitSwitchToControl(nextPgTimelineId, switchLsn),
        log: this.log,
      });
    } catch (error) {
      // Nothing was committed: continue on the old timeline at the switch point; the next connect retries the switch.
      this.writer = new WalWriter({ dir: this.timeline.dir, pgTimelineId: this.timeline.pgTimelineId, segmentBytes: this.timeline.segmentBytes, startLsn: previous.durableLsn });
      this.timeline.setTailPages(this.writer);
      throw error;
    }
    this.writer = next;
    this.timeline.setTailPages(next);
    this.timeline.switchPgTimeline(parseTimelineHistory(historyContent, nextPgTimelineId));
    this.log.info({ switchLsn: formatLsn(switchLsn), pgTimelineId: nextPgTimelineId }, 'followed the upstream onto a new PostgreSQL timeline');
  }

  /** The control file's commit of a switch: the new TLI, positions at least at the switch point. */
  private async commitSwitchToControl(nextPgTimelineId: number, switchLsn: Lsn): Promise<void> {
    const state = await this.timeline.controlFile.update((current) => ({
      ...current,
      pgTimelineId: nextPgTimelineId,
      flushLsn: maxLsn(current.flushLsn, switchLsn),
      commitLsn: maxLsn(current.commitLsn, switchLsn),
      lastRecordLsn: undefined,
    }));
    this.timeline.recordPersistedFlush(state.flushLsn);
  }

  private async startStream(client: UpstreamClient): Promise<UpstreamStream> {
    const writer = this.requireWriter();
    const position = `${formatLsn(writer.writtenLsn)} TIMELINE ${this.timeline.pgTimelineId}`;
    if (this.useSlot) {
      try {
        return await client.startReplication(`START_REPLICATION SLOT "${upstreamSlotName(this.timeline.timelineId)}" PHYSICAL ${position}`);
      } catch (error) {
        if (!(error instanceof ServerError) || error.sqlState !== SqlState.undefinedObject) throw error;
        this.useSlot = false;
        this.log.warn({ err: error.message }, 'the upstream has no walcast slot for this timeline: streaming without one (WAL may be recycled while walcast is away)');
      }
    }
    return client.startReplication(`START_REPLICATION PHYSICAL ${position}`);
  }

  private async streamUntilEnd(stream: UpstreamStream): Promise<TimelineEnd | undefined> {
    const detach = this.timeline.attachWriter();
    this.stream = stream;
    this.lastMessageAt = Date.now();
    // A message of an earlier stream left unflushed here was flushed by a close or switch, not timed by kickFlush.
    this.oldestUnflushedAtMs = undefined;
    this.oldestUnflushedSentAtMs = undefined;
    this.sentHotStandby = undefined;
    this.setState('streaming', { from: formatLsn(this.requireWriter().writtenLsn) });
    this.lastLoggedProblem = undefined;
    const timers = [
      setInterval(() => this.onStatusTick(), STATUS_INTERVAL_MS),
      setInterval(() => this.sendHotStandbyIfChanged(), HOT_STANDBY_FEEDBACK_INTERVAL_MS),
    ];
    try {
      this.sendStatus(false);
      this.sendHotStandbyIfChanged();
      await this.consume(stream);
      return await this.finishStream(stream);
    } finally {
      for (const timer of timers) clearInterval(timer);
      this.stream = undefined;
      detach();
    }
  }

  private async consume(stream: UpstreamStream): Promise<void> {
    for (;;) {
      const payload = await stream.read();
      if (payload === undefined || this.fatal !== undefined || this.storageFault !== undefined) return;
      const receivedAtMs = performance.now();
      this.lastMessageAt = Date.now();
      this.stats.messagesReceived++;
      const message = decodeUpstreamMessage(payload);
      if (message instanceof WalcastError) throw message;
      if (message.kind === 'xlog_data') {
        this.onXLogData(message, receivedAtMs);
        // Checked here first: an async call per message was a promise and two microtask turns for nothing, always.
        if (this.tooFarAhead()) await this.waitIfTooFarAhead();
      } else if (message.replyRequested) {
        this.sendStatus(false);
      }
    }
  }

  private onXLogData(message: XLogDataMessage, receivedAtMs: number): void {
    const writer = this.requireWriter();
    const written = writer.writtenLsn;
    const end = message.dataStart + BigInt(message.data.length);
    if (message.dataStart > written) {
      throw new WalcastError('WALCAST_ERR_UPSTREAM', `the upstream sent WAL at ${formatLsn(message.dataStart)}, expected ${formatLsn(written)}: a gap`);
    }
    if (end <= written) return;
    // A resent prefix (the upstream restarted at a page boundary) is skipped; the rest must continue exactly.
    const data = message.dataStart < written ? message.data.subarray(lsnDistance(written, message.dataStart)) : message.data;
    this.incomingPages.check(written, data);
    writer.write(written, data);
    this.stats.bytesReceived += data.length;
    if (this.oldestUnflushedAtMs === undefined) {
      this.oldestUnflushedAtMs = receivedAtMs;
      this.oldestUnflushedSentAtMs = this.upstreamClock.toMonotonicMs(message.sendTimeMicros);
    }
    this.kickFlush();
  }

  /** Group commit: one fdatasync runs at a time and covers everything written before it started. */
  private kickFlush(): void {
    const writer = this.requireWriter();
    if (this.flushInFlight !== undefined || writer.writtenLsn === writer.durableLsn || this.storageFault !== undefined) return;
    // This flush covers every message written so far; later ones wait for the next.
    const receivedAtMs = this.oldestUnflushedAtMs ?? performance.now();
    const sentAtMs = this.oldestUnflushedAtMs === undefined ? undefined : this.oldestUnflushedSentAtMs;
    this.oldestUnflushedAtMs = undefined;
    this.oldestUnflushedSentAtMs = undefined;
    const flushStartedAtMs = performance.now();
    this.flushInFlight = writer.flush().then(
      (durableLsn) => {
        const flushDoneAtMs = performance.now();
        this.flushInFlight = undefined;
        this.storageBackoff.reset();
        // Commit = flush: a PostgreSQL primary sends only flushed WAL, a walcast upstream only committed WAL.
        this.timeline.publish({ flushLsn: durableLsn, commitLsn: durableLsn });
        this.timeline.ingestTiming.published(sentAtMs, receivedAtMs, flushStartedAtMs, flushDoneAtMs, performance.now());
        // The report goes before the woken senders' sends (their microtasks run after this callback). Sending it after
        // them (an immediate, PostgreSQL's walreceiver order) was measured at 100 replicas (perf syscall trace,
        // 2026-12-06 night): the first replica send came 0.03 ms sooner at p50 (p99 alike), and the report 0.39 ms
        // later, which a primary waiting for walcast as a synchronous standby would add to every commit.
        this.sendStatus(false);
        this.kickFlush();
        if (this.controlPersistDue && (this.flushInFlight === undefined || this.controlPersistOverdue)) this.persistDueControl();
      },
      (error: unknown) => {
        this.flushInFlight = undefined;
        if (isStorageFault(error)) this.noteStorageFault(error);
        else this.fail(error);
      },
    );
  }

  /**
   * The periodic control-file write is a sidecar fdatasync, a temp-file fsync, a rename and a directory fsync: journal
   * commits on ext4, and a commit's fdatasync that overlapped them took several times as long (strace of live ingest
   * at 100 commits/s: ~0.6-0.9 % of commits, which is the p99; a cascading standby's walreceiver has no such write).
   * So while a stream is live a due write waits for the next publish that no flush follows, the moment the next
   * commit is least likely to be on its way. A stream that leaves no such moment for a whole interval (saturated)
   * gets it at the next tick that finds no flush running, or else right after the next publish. Either way it never
   * starts while a commit's fdatasync runs, and the position it writes lags at most about two intervals.
   */
  private onControlPersistTick(): void {
    if (this.stream === undefined || (this.controlPersistDue && this.flushInFlight === undefined)) {
      this.persistDueControl();
      return;
    }
    if (this.controlPersistDue) this.controlPersistOverdue = true;
    this.controlPersistDue = true;
  }

  private persistDueControl(): void {
    this.controlPersistDue = false;
    this.controlPersistOverdue = false;
    void this.persistControl({ skipIfBusy: true });
  }

  private async waitIfTooFarAhead(): Promise<void> {
    while (this.tooFarAhead()) await this.flushInFlight;
  }

  /** More than UNFLUSHED_BYTES_MAX written and not durable while a flush runs: reading waits for it. */
  private tooFarAhead(): boolean {
    const writer = this.requireWriter();
    return this.flushInFlight !== undefined && lsnDistance(writer.writtenLsn, writer.durableLsn) > UNFLUSHED_BYTES_MAX;
  }

  /** The stream's input ended: close our side, then tell the end of a timeline (next_tli row) from a plain disconnect. */
  private async finishStream(stream: UpstreamStream): Promise<TimelineEnd | undefined> {
    const end = await withTimeout(stream.sendCopyDone(), STREAM_END_TIMEOUT_MS);
    if (end === undefined || this.stopping) return undefined;
    if (end.how === 'error') throw new WalcastError('WALCAST_ERR_UPSTREAM', `the upstream ended the stream: ${end.error.message} (SQLSTATE ${end.error.sqlState})`, { cause: end.error });
    if (end.how === 'completed' && end.serverCopyDone && end.rows.length > 0) return parseTimelineEnd(end.rows);
    return undefined;
  }

  private onStatusTick(): void {
    this.upstreamClock.recheck();
    const silentMs = Date.now() - this.lastMessageAt;
    if (silentMs > UPSTREAM_SILENCE_TIMEOUT_MS) {
      this.log.warn({ silentMs }, 'the upstream sent nothing for too long: reconnecting');
      void this.client?.end();
      return;
    }
    // walreceiver.c WalRcvComputeNextWakeup: past half the timeout, ask the upstream for a sign of life.
    this.sendStatus(silentMs > UPSTREAM_SILENCE_TIMEOUT_MS / 2);
  }

  /** 'r': write = received, flush = apply = durable (walcast "applies" WAL by making it servable). */
  private sendStatus(replyRequested: boolean): void {
    const stream = this.stream;
    const writer = this.writer;
    if (stream === undefined || writer === undefined) return;
    const durable = writer.durableLsn;
    const status = encodeStandbyStatus({ writeLsn: writer.writtenLsn, flushLsn: durable, applyLsn: durable, sendTimeMicros: pgNowMicros(), replyRequested });
    this.stats.statusSent++;
    stream.sendCopyData(status).catch(() => undefined); // a dead socket surfaces as the stream's end
  }

  /** 'h': the minimum xmin over walcast's own hot standbys, when it changed (0 = none, which releases the upstream's). */
  private sendHotStandbyIfChanged(): void {
    const stream = this.stream;
    if (stream === undefined) return;
    const aggregates = this.timeline.replicas.aggregates();
    const next = { xmin: aggregates.hotStandbyXmin ?? 0n, catalogXmin: aggregates.hotStandbyCatalogXmin ?? 0n };
    const sent = this.sentHotStandby;
    if (sent !== undefined && sent.xmin === next.xmin && sent.catalogXmin === next.catalogXmin) return;
    this.sentHotStandby = next;
    this.stats.hotStandbySent++;
    stream.sendCopyData(encodeHotStandbyFeedback(next.xmin, next.catalogXmin, pgNowMicros())).catch(() => undefined);
  }

  /** Ends the stream; the follow loop then pauses. */
  private noteStorageFault(error: Error): void {
    this.storageFault ??= error;
    void this.client?.end();
  }

  /**
   * Paused: drop the writer and wait, with backoff, until the disk takes writes again (see the module comment).
   * Resolves once a writer is open again at the published position, or when stopping.
   */
  private async pauseUntilStorageWorks(fault: Error): Promise<void> {
    this.pausedReason = describe(fault);
    this.setState('paused', { reason: this.pausedReason });
    while (this.flushInFlight !== undefined) await this.flushInFlight.catch(() => undefined);
    this.abandonWriter();
    while (!this.stopping && this.fatal === undefined) {
      await this.sleep(this.storageBackoff.nextDelayMs());
      if (this.stopping) break;
      try {
        await this.reopenAtPublished();
        break;
      } catch (error) {
        if (!isStorageFault(error)) throw error;
        this.abandonWriter();
        this.pausedReason = describe(error);
        this.log.debug({ reason: this.pausedReason }, 'storage still unavailable: ingest stays paused');
      }
    }
    this.storageFault = undefined;
    const writer = this.currentWriter();
    if (writer !== undefined) this.log.info({ from: formatLsn(writer.writtenLsn) }, 'storage writable again: ingest resumes');
    this.pausedReason = undefined;
  }

  private abandonWriter(): void {
    this.writer?.abandon();
    this.writer = undefined;
  }

  private currentWriter(): WalWriter | undefined {
    return this.writer;
  }

  /** Discards what follows the published position, opens a writer there and persists the control file (the probe). */
  private async reopenAtPublished(): Promise<void> {
    const timeline = this.timeline;
    const resumeLsn = timeline.flushLsn.get();
    await discardAfter({ dir: timeline.dir, segmentBytes: timeline.segmentBytes, pgTimelineId: timeline.pgTimelineId }, resumeLsn);
    this.writer = new WalWriter({ dir: timeline.dir, pgTimelineId: timeline.pgTimelineId, segmentBytes: timeline.segmentBytes, startLsn: resumeLsn });
    await this.persistControl({ skipIfBusy: false, force: true, rethrow: true });
  }

  private fail(error: unknown): void {
    this.fatal ??= error instanceof Error ? error : new Error(String(error));
    this.wake?.();
    void this.client?.end();
  }

  private async shutDownWriter(): Promise<void> {
    const writer = this.writer;
    if (writer === undefined) return;
    if (this.flushInFlight !== undefined) await this.flushInFlight.catch(() => undefined);
    if (this.fatal === undefined || !isWalcastError(this.fatal, 'WALCAST_ERR_WAL_WRITE')) {
      try {
        await writer.close();
        this.timeline.publish({ flushLsn: writer.durableLsn, commitLsn: writer.durableLsn });
      } catch (error) {
        this.fatal ??= error instanceof Error ? error : new Error(String(error));
        writer.abandon();
      }
    } else {
      writer.abandon();
    }
    await this.persistControl();
  }

  /**
   * Writes the durable position into the control file through the timeline's one control-file writer (retention
   * writes the timeline start through it too; each patch changes only its own fields). The periodic tick skips a
   * turn while a write is running; recovery and shutdown wait for it and then write the newest position.
   */
  private async persistControl(options: PersistOptions = { skipIfBusy: false }): Promise<void> {
    if (options.skipIfBusy && this.persisting !== undefined) return;
    while (this.persisting !== undefined) await this.persisting;
    if (this.writer === undefined) return;
    // The published flush LSN: durable (fdatasynced) by construction, and never ahead of what senders were told.
    const durable = this.timeline.flushLsn.get();
    let failure: unknown;
    // The open segment's sidecar is not fsynced on the commit path (wal-writer.ts); it is here, before the control
    // file vouches for `durable`: every page entry below it was appended before it was published, so once this
    // returns, the pages up to the control file's flush LSN have durable entries, as when each flush synced them.
    this.persisting = this.writer
      .syncOpenSidecar()
      .then(() => this.timeline.controlFile.update((state) => {
        if (options.force !== true && durable === state.flushLsn && durable === state.commitLsn) return undefined;
        // Retention may have raised the file's positions already (with a new start): never move them back.
        return { ...state, flushLsn: maxLsn(state.flushLsn, durable), commitLsn: maxLsn(state.commitLsn, durable), lastRecordLsn: undefined };
      }))
      .then((state) => {
        this.timeline.recordPersistedFlush(state.flushLsn);
      })
      .catch((error: unknown) => {
        failure = error;
        // A disk that cannot take a control file cannot take WAL either: pause rather than run ahead of it.
        if (isStorageFault(error)) this.noteStorageFault(error);
        else this.log.warn({ err: error }, 'could not persist the control file (recovery will catch up)');
      })
      .finally(() => {
        this.persisting = undefined;
      });
    await this.persisting;
    if (options.rethrow === true && failure !== undefined) throw failure;
  }

  private requireWriter(): WalWriter {
    assert.ok(this.writer !== undefined, 'recovery opened the writer');
    return this.writer;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }

  private setState(state: FollowerState, details: Record<string, unknown> = {}): void {
    if (state === this.stateValue && state !== 'waiting') return;
    const previous = this.stateValue;
    this.stateValue = state;
    this.timeline.reportIngestState(state, state === 'paused' ? this.pausedReason : undefined);
    if (state === 'waiting' || (state === 'connecting' && previous === 'waiting')) {
      this.log.debug({ state, ...details }, `ingest ${state}`);
      return;
    }
    if (state === 'paused') {
      this.log.warn({ state, ...details }, 'ingest paused: the disk cannot take writes; retrying with backoff');
      return;
    }
    this.log.info({ state, ...details }, `ingest ${state}`);
  }

  /** Logs a failure once until it changes or a stream goes live again, so a long outage is one line, not thousands. */
  private noteProblem(problem: string, error?: unknown): void {
    if (problem === this.lastLoggedProblem) return;
    this.lastLoggedProblem = problem;
    this.log.warn({ err: error instanceof Error ? error.message : undefined }, `upstream: ${problem}; reconnecting with backoff`);
  }
}

interface UpstreamIdentity {
  readonly systemId: bigint;
  readonly pgTimelineId: number;
  readonly xlogPos: Lsn;
}

/** IDENTIFY_SYSTEM's one row: systemid text, timeline int4, xlogpos text, dbname. */
export function parseIdentifySystem(result: QueryResult): UpstreamIdentity {
  const row = result.rows[0];
  const systemText = row?.[0];
  const timelineText = row?.[1];
  const xlogPos = parseLsn(row?.[2] ?? '');
  if (systemText == null || !/^\d{1,20}$/.test(systemText) || timelineText == null || !/^\d{1,10}$/.test(timelineText) || xlogPos === undefined) {
    throw new WalcastError('WALCAST_ERR_UPSTREAM', `the upstream's IDENTIFY_SYSTEM answer is malformed: ${JSON.stringify(result.rows)}`);
  }
  return { systemId: BigInt(systemText), pgTimelineId: Number(timelineText), xlogPos };
}

/** walsender.c StartReplication's row after a historic timeline: next_tli int8, next_tli_startpos text. */
interface TimelineEnd {
  readonly nextPgTimelineId: number;
  readonly switchLsn: Lsn;
}

function parseTimelineEnd(rows: readonly (readonly (string | null)[])[]): TimelineEnd {
  const [nextText, switchText] = rows[0] ?? [];
  const switchLsn = parseLsn(switchText ?? '');
  if (nextText == null || !/^\d{1,10}$/.test(nextText) || switchLsn === undefined) {
    throw new WalcastError('WALCAST_ERR_UPSTREAM', `the upstream's end-of-timeline row is malformed: ${JSON.stringify(rows)}`);
  }
  return { nextPgTimelineId: Number(nextText), switchLsn };
}

/** TIMELINE_HISTORY n: the file's exact text and its parsed history. */
async function fetchTimelineHistory(client: UpstreamClient, pgTimelineId: number): Promise<{ content: string; history: TimelineHistory }> {
  const result = await client.query(`TIMELINE_HISTORY ${pgTimelineId}`);
  const [fileName, content] = result.rows[0] ?? [];
  if (fileName !== historyFileName(pgTimelineId) || content == null || Buffer.byteLength(content) > HISTORY_FILE_BYTES_MAX) {
    throw new WalcastError('WALCAST_ERR_UPSTREAM', `the upstream's TIMELINE_HISTORY ${pgTimelineId} answer is malformed`);
  }
  return { content, history: parseTimelineHistory(content, pgTimelineId) };
}

interface PersistOptions {
  readonly skipIfBusy: boolean;
  /** Write even when nothing changed: the pause loop uses the write as its probe of the disk. */
  readonly force?: boolean;
  /** Throw the write's error (after noting it) instead of only logging it. */
  readonly rethrow?: boolean;
}

/** A WAL write/fsync or control-file failure whose errno says the disk is full, failing or read-only. */
export function isStorageFault(error: unknown): error is Error {
  const own = (error as NodeJS.ErrnoException | undefined)?.code;
  const cause = isWalcastError(error, 'WALCAST_ERR_WAL_WRITE') ? (error.cause as NodeJS.ErrnoException | undefined)?.code : undefined;
  return (own !== undefined && STORAGE_FAULT_CODES.has(own)) || (cause !== undefined && STORAGE_FAULT_CODES.has(cause));
}

function isFatal(error: unknown): boolean {
  return isWalcastError(error, 'WALCAST_ERR_UPSTREAM_DIVERGED') || isWalcastError(error, 'WALCAST_ERR_WAL_WRITE') || isWalcastError(error, 'WALCAST_ERR_SYSTEM_ID_MISMATCH');
}

function describe(error: unknown): string {
  if (error instanceof ServerError) return `${error.message} (SQLSTATE ${error.sqlState})`;
  return error instanceof Error ? error.message : String(error);
}

async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
