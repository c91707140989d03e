/**
 * Commit fan-out in one batch (issue 13): when a commit LSN publish wakes many caught-up replicas, their next chunk
 * is the same bytes for all of them. Instead of every stream resuming its own promise chain (wake, prefetch check,
 * locate, verify, header, one addon crossing each), streams park here while they wait on the commit watch, and one
 * FanoutBatcher per watch does the work once per distinct send position: it listens on the watch as a single listener,
 * cuts the chunk (decideChunkEnd: within one segment, at most MAX_SEND_BYTES, never past the watch), locates and
 * verifies it once (the page verifier's result for the shared range serves every stream at that position), writes
 * one XLogData header (identical for them: same start, walEnd, send time and length) and hands all the streams to
 * the backend's ChunkBatch in one call. Which streams advance and to where is decided here, in TypeScript; the
 * backend only moves the bytes.
 *
 * A parked stream leaves the batch and goes on in its own sender loop (replication/send-wal.ts), with everything
 * the batch sent already counted, whenever the batch cannot decide for it alone:
 * - a reply is due (the loop sends the reply-requesting keepalive first), or its PostgreSQL timeline has an end;
 * - its writer is no longer batchable (the backend's queue hit its in-flight bound: its own sendChunk waits for
 *   room; it failed or was released);
 * - storage failed to locate or verify the chunk (the loop repeats the step and reports exactly as before, good
 *   prefix and all);
 * - it has been idle for its keepalive interval (the loop's idle branch), or its signal aborted.
 * A socket that takes only part of a chunk is not a reason to leave: the backend queued the rest in order with
 * exact byte accounting, and the next batch goes behind it (or, at the bound, the stream leaves as above).
 *
 * Retention pins: the batcher's reader pins the segment it sends from (WalReader), for every parked stream; a parked
 * stream's own readers release theirs once its sends are written (send-wal.ts ParkedReaders), so a stream the batch
 * carries on for minutes holds no old segment.
 *
 * Only streams whose writer the backend's ChunkBatch accepts park (plain sockets of the native or the ts backend); TLS
 * streams wait on the watch as before, so a mix of both works side by side. Recovery streams never park. The ts
 * backend's ChunkBatch reads the chunk once per group (ChunkBatch.stage, awaited here after verification) and writes
 * that one buffer to every socket of the group.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { BatchOutcome, type ChunkBatch, type StreamWriter, type WalChunk } from '../io/backend.js';
import type { Lsn } from '../lsn.js';
import { XLOG_DATA_HEADER_BYTES, decideChunkEnd, pgNowMicros, writeXLogDataHeader } from './stream-messages.js';

// The sender loop's interfaces (send-wal.ts EndWatch, PublishClock, WalSource), the parts used here: send-wal.ts
// imports this module, so it cannot import them back.
interface EndWatch {
  get(): Lsn;
  waitBeyond(position: Lsn, timeoutMs: number, signal?: AbortSignal): Promise<Lsn | undefined>;
  /** LsnWatch.listen: calls back synchronously on every move until the returned function is called. */
  listen(listener: (lsn: Lsn) => void): () => void;
}

interface PublishClock {
  waiting(sentLsn: Lsn): void;
  chunkAccepted(throughLsn: Lsn): boolean;
  written(throughLsn: Lsn, atMs?: number): void;
}

/** A reader the batcher owns (its segment pinned while streams are parked): the storage WalReader. */
export interface ClosableWalSource {
  locate(lsn: Lsn, endLsn: Lsn): Promise<WalChunk>;
  /** locate's answer without I/O or awaits when it has one (WalReader.locateNow): the usual case per publish. */
  locateNow?(lsn: Lsn, endLsn: Lsn): WalChunk | undefined;
  close(): Promise<void>;
}

/** What a stream gives the batcher while it is parked; see send-wal.ts SendWalOptions for each. */
export interface FanoutParticipant {
  readonly writer: StreamWriter;
  readonly signal: AbortSignal;
  readonly verify?: (chunk: WalChunk, chunkLsn: Lsn) => Promise<void>;
  /** verify's synchronous attempt (PageVerifier.verifyNow): true when the chunk is verified; else verify runs. */
  readonly verifyNow?: (chunk: WalChunk, chunkLsn: Lsn) => boolean;
  /** True when the loop must ask the replica for a reply before its next chunk (ReplyRequests.due). */
  readonly replyDue: (nowMs: number) => boolean;
  /**
   * A time (Date.now() ms) before which replyDue is certainly false (ReplyRequests.notDueBeforeMs); the batch does not
   * ask replyDue before it. Without it, replyDue is asked every round.
   */
  readonly replyNotDueBeforeMs?: () => number;
  readonly timelineEnd?: () => Lsn | undefined;
  readonly onSent: (sentLsn: Lsn, walBytes: number, wireBytes: number) => void;
  readonly publishClock?: PublishClock;
  readonly idleWaitMs: number;
}

/** How a park ended: the stream's loop goes on from `sentLsn` (the batch may have moved it). */
export interface ParkEnd {
  readonly sentLsn: Lsn;
  /** idle: its keepalive interval passed without a chunk; aborted: its signal; resume: go on in the loop. */
  readonly kind: 'idle' | 'aborted' | 'resume';
}

interface Parked {
  readonly participant: FanoutParticipant;
  sentLsn: Lsn;
  lastSendAtMs: number;
  /** replyDue is not asked before this (participant.replyNotDueBeforeMs); 0: ask at the next round. */
  replyCheckAtMs: number;
  /** The timeline history timelineEnd was last asked under (FanoutBatcher's `history`); NOT_ASKED before the first. */
  endAskedUnder: unknown;
  /** timelineEnd's answer under endAskedUnder. */
  timelineEndLsn: Lsn | undefined;
  timer: NodeJS.Timeout | undefined;
  /** The round (FanoutBatcher.roundNumber) this stream is sent in: it was behind and need not leave; 0: none yet. */
  round: number;
  readonly finish: (kind: ParkEnd['kind'], error?: Error) => void;
}

const batchers = new WeakMap<EndWatch, FanoutBatcher>();

/** Parked.endAskedUnder before timelineEnd was first asked: equal to no history. */
const NOT_ASKED = Symbol('timelineEnd not asked');

/**
 * The batcher of `watch` (one per commit watch, made on first use). `openSource` makes its reader; `batch` is the
 * backend's ChunkBatch (one backend per server, so every caller passes the same one); `history` is the timeline's
 * PostgreSQL timeline history (Timeline.history), see FanoutBatcher.
 */
export function fanoutBatcherFor(watch: EndWatch, segmentBytes: number, batch: ChunkBatch, openSource: () => ClosableWalSource, history?: () => unknown): FanoutBatcher {
  let batcher = batchers.get(watch);
  if (batcher === undefined) {
    batcher = new FanoutBatcher(watch, segmentBytes, batch, openSource, history);
    batchers.set(watch, batcher);
  }
  assert.ok(batcher.batch === batch, 'one backend per commit watch');
  return batcher;
}

/** The batcher of `watch` if one was made (tests, status). */
export function existingFanoutBatcher(watch: EndWatch): FanoutBatcher | undefined {
  return batchers.get(watch);
}

export class FanoutBatcher {
  /** Addon calls made (one per send position per round). */
  batches = 0;
  /** Chunks those calls sent, one per stream: chunksBatched / batches is the streams per call. */
  chunksBatched = 0;
  /** Parks that ended with the stream going on alone (reply due, queue at its bound, storage error, failure). */
  resumed = 0;
  private readonly parked = new Set<Parked>();
  private source: ClosableWalSource | undefined;
  /** Ends the batcher's listening on the watch (LsnWatch.listen); set while any stream is parked. */
  private unlisten: (() => void) | undefined;
  /** A run is queued (a microtask) and has not started yet. */
  private runQueued = false;
  private running = false;
  /**
   * Reused per round, so that a publish allocates nothing per parked stream (issue 13: per-stream garbage brings the
   * young-generation collections, each a pause of the next publish). `positions[0..positionCount)` are the send
   * positions of the round (usually one); `members`/`writers[0..count)` are one group's streams and writers, handed to
   * the backend with `outcomes`. Never truncated (`length = 0` gives up the backing store, so the next publish grew a
   * new one); their slots are cleared after each group instead, so that an ended stream is not kept alive.
   */
  private readonly positions: Lsn[] = [];
  private positionCount = 0;
  private readonly members: (Parked | undefined)[] = [];
  private readonly writers: (StreamWriter | undefined)[] = [];
  private outcomes = new Int32Array(64);
  /** Numbers the rounds; a stream takes part in the round whose number it holds (Parked.round). */
  private roundNumber = 0;
  private readonly header = Buffer.allocUnsafe(XLOG_DATA_HEADER_BYTES);

  /**
   * `history`, when given, returns the timeline's history, a value replaced (never mutated) at every PostgreSQL
   * timeline switch (Timeline.switchPgTimeline): a parked stream's timelineEnd is a function of it, so it is asked
   * again only when the history changed, not for every stream at every publish (it was a third of the per-stream
   * work before the send at 1,000 replicas, profiled: issue 13). Without it, timelineEnd is asked every round.
   */
  constructor(
    private readonly watch: EndWatch,
    private readonly segmentBytes: number,
    readonly batch: ChunkBatch,
    private readonly openSource: () => ClosableWalSource,
    private readonly history?: () => unknown,
  ) {}

  /** Streams parked now (tests). */
  get parkedCount(): number {
    return this.parked.size;
  }

  /** Whether a stream with this writer may park: the backend takes it in a batch. */
  accepts(writer: StreamWriter): boolean {
    return this.batch.accepts(writer);
  }

  /**
   * Parks a caught-up stream (sentLsn at the watch) until the batch can no longer send for it alone; resolves with
   * where it got to. Rejects with the stream's write error when a batched send failed on it.
   */
  park(participant: FanoutParticipant, sentLsn: Lsn): Promise<ParkEnd> {
    if (participant.signal.aborted) return Promise.resolve({ sentLsn, kind: 'aborted' });
    return new Promise<ParkEnd>((resolve, reject) => {
      const onAbort = (): void => entry.finish('aborted');
      const entry: Parked = {
        participant,
        sentLsn,
        lastSendAtMs: Date.now(),
        replyCheckAtMs: 0,
        endAskedUnder: NOT_ASKED,
        timelineEndLsn: undefined,
        timer: undefined,
        round: 0,
        finish: (kind, error) => {
          if (!this.parked.delete(entry)) return;
          if (kind === 'resume') this.resumed++;
          clearTimeout(entry.timer);
          participant.signal.removeEventListener('abort', onAbort);
          if (this.parked.size === 0) this.idle();
          if (error !== undefined) reject(error);
          else resolve({ sentLsn: entry.sentLsn, kind: participant.signal.aborted ? 'aborted' : kind });
        },
      };
      this.parked.add(entry);
      participant.signal.addEventListener('abort', onAbort, { once: true });
      this.armIdle(entry, participant.idleWaitMs);
      this.arm();
    });
  }

  /** One timer per park, not per publish: when it fires early (the batch sent since), it waits out the rest. */
  private armIdle(entry: Parked, delayMs: number): void {
    entry.timer = setTimeout(() => {
      const idleMs = Date.now() - entry.lastSendAtMs;
      if (idleMs >= entry.participant.idleWaitMs) entry.finish('idle');
      else this.armIdle(entry, entry.participant.idleWaitMs - idleMs);
    }, delayMs);
  }

  /**
   * Listens on the watch, as one listener for every parked stream, while any is parked, and queues a run when a
   * parked stream is behind it already. A listener rather than a waitBeyond per publish: that was a promise, a
   * closure and a timer set and cleared per publish (~0.02 ms of CPU per commit at 1 replica, profiled, issue 13).
   */
  private arm(): void {
    if (this.running || this.parked.size === 0) return;
    this.unlisten ??= this.watch.listen(this.onWatchMoved);
    if (this.anyBehind(this.watch.get())) this.queueRun();
  }

  /**
   * The watch moved (inside its publisher's call). The run goes in a microtask, as a woken waiter's continuation did:
   * after the publisher's callback (ingest's status report upstream goes first, ingest/follower.ts), before anything
   * the event loop does next. A run under way picks the move up itself (it rounds until no stream is behind).
   */
  private readonly onWatchMoved = (): void => {
    if (!this.running) this.queueRun();
  };

  private queueRun(): void {
    if (this.runQueued) return;
    this.runQueued = true;
    queueMicrotask(this.startQueuedRun);
  }

  private readonly startQueuedRun = (): void => {
    this.runQueued = false;
    if (!this.running && this.parked.size > 0) void this.run();
  };

  /** Rounds until every parked stream reached the watch; the event loop gets a turn between rounds. */
  private async run(): Promise<void> {
    assert.ok(!this.running, 'one batch run at a time');
    this.running = true;
    try {
      for (let round = 0; ; round++) {
        const endLsn = this.watch.get();
        if (!this.anyBehind(endLsn)) break;
        if (round > 0) await yieldToEventLoop();
        await this.round(endLsn);
      }
    } catch (error) {
      // A bug, not a stream's failure (those end only their stream): every parked stream goes on alone.
      for (const entry of [...this.parked]) entry.finish('resume', error instanceof Error ? error : new Error(String(error)));
    } finally {
      this.running = false;
      if (this.parked.size === 0) this.idle();
      this.arm();
    }
  }

  /** Whether a parked stream is behind `endLsn` (without copying the set: it runs per publish over every stream). */
  private anyBehind(endLsn: Lsn): boolean {
    for (const entry of this.parked) if (entry.sentLsn < endLsn) return true;
    return false;
  }

  /**
   * One chunk for every parked stream behind `endLsn`: grouped by send position, one batch per group. This loop runs
   * for every stream at every publish before anything is sent, so what it asks each stream is kept to a few field
   * reads: replyDue only once its earliest due time passed, timelineEnd only after a timeline switch. A group is not
   * an array made per round: its streams are those marked with this round's number at its position (sendGroup).
   */
  private async round(endLsn: Lsn): Promise<void> {
    const nowMs = Date.now();
    const history = this.history === undefined ? NOT_ASKED : this.history();
    const round = ++this.roundNumber;
    const positions = this.positions;
    this.positionCount = 0;
    for (const entry of this.parked) {
      if (entry.sentLsn >= endLsn) continue;
      if (this.mustLeave(entry, nowMs, history)) {
        entry.finish('resume');
        continue;
      }
      entry.round = round;
      if (!this.hasPosition(entry.sentLsn)) positions[this.positionCount++] = entry.sentLsn;
    }
    for (let index = 0; index < this.positionCount; index++) {
      const chunkLsn = positions[index];
      assert.ok(chunkLsn !== undefined);
      await this.sendGroup(chunkLsn, round, endLsn);
    }
  }

  /** Whether `lsn` is among the round's positions (a scan: there is one, or a few, per round). */
  private hasPosition(lsn: Lsn): boolean {
    for (let index = 0; index < this.positionCount; index++) if (this.positions[index] === lsn) return true;
    return false;
  }

  /** Whether `entry` must go on alone before its next chunk: a reply is due, its timeline ended, or the batch cannot take it. */
  private mustLeave(entry: Parked, nowMs: number, history: unknown): boolean {
    const { participant } = entry;
    if (nowMs >= entry.replyCheckAtMs) {
      if (participant.replyDue(nowMs)) return true;
      entry.replyCheckAtMs = participant.replyNotDueBeforeMs?.() ?? 0;
    }
    if (participant.timelineEnd !== undefined) {
      if (history === NOT_ASKED || entry.endAskedUnder !== history) {
        entry.timelineEndLsn = participant.timelineEnd();
        entry.endAskedUnder = history;
      }
      if (entry.timelineEndLsn !== undefined) return true;
    }
    return !this.batch.accepts(participant.writer);
  }

  /** The first stream of `round` at `chunkLsn`, or undefined when none is left (they all went on alone). */
  private firstOfGroup(chunkLsn: Lsn, round: number): Parked | undefined {
    for (const entry of this.parked) if (inGroup(entry, chunkLsn, round)) return entry;
    return undefined;
  }

  /** Sends the chunk at `chunkLsn` to every stream of `round` there (round() marked them). */
  private async sendGroup(chunkLsn: Lsn, round: number, endLsn: Lsn): Promise<void> {
    const first = this.firstOfGroup(chunkLsn, round);
    if (first === undefined) return;
    let chunk: WalChunk;
    try {
      this.source ??= this.openSource();
      const wantedEnd = decideChunkEnd(chunkLsn, endLsn, this.segmentBytes);
      // As the loop does: the open segment answers without awaits (a microtask hop and a promise per publish).
      chunk = this.source.locateNow?.(chunkLsn, wantedEnd) ?? (await this.source.locate(chunkLsn, wantedEnd));
      // Once for the group, as each stream's loop would: the event-loop thread only sends cached pages, and every
      // stream at this position is sent the same pages. The tail just written is cached: prefetchNow says so without
      // a promise, so nothing but a read in progress comes between the publish and the send (an awaited resolved
      // promise was ~20 µs of every publish's fan-out, issue 13).
      const { writer } = first.participant;
      const caching = writer.prefetchNow === undefined ? writer.prefetch(chunk) : writer.prefetchNow(chunk);
      if (caching !== undefined) await caching;
      // As the loop does: the synchronous check first (pages verified already, or checksummed now), the full one for
      // anything else (the live tail page, a check under way, every failure: its quarantine, log and error).
      const { verify, verifyNow } = first.participant;
      if (verify !== undefined && verifyNow?.(chunk, chunkLsn) !== true) await verify(chunk, chunkLsn);
      // A backend that sends from memory (ts) reads the chunk once here for the whole group, not once per stream.
      const staging = this.batch.stage?.(chunk);
      if (staging !== undefined) await staging;
    } catch {
      // Storage errors are each stream's to report (with the verified prefix sent first): its loop repeats the step.
      this.resumeGroup(chunkLsn, round);
      return;
    }
    // Across the awaits streams may have left (aborted, idle); a handle closed meanwhile is never sent from (its
    // number may be another file's): the streams go on alone rather than spin here.
    if (chunk.file.closed === true) {
      this.resumeGroup(chunkLsn, round);
      return;
    }
    const chunkEnd = chunkLsn + BigInt(chunk.byteCount);
    const { members, writers } = this;
    let count = 0;
    for (const entry of this.parked) {
      if (!inGroup(entry, chunkLsn, round)) continue;
      if (!this.batch.accepts(entry.participant.writer)) {
        entry.finish('resume');
        continue;
      }
      members[count] = entry;
      writers[count] = entry.participant.writer;
      count++;
    }
    if (count === 0) return;
    if (this.outcomes.length < count) this.outcomes = new Int32Array(Math.max(count, this.outcomes.length * 2));
    // walEnd is the watch now, as the stream loop writes it right before its send.
    writeXLogDataHeader(this.header, chunkLsn, this.watch.get(), pgNowMicros(), chunk.byteCount);
    const errors = this.batch.send(writers, count, this.header, chunk, this.outcomes);
    // The bytes of every stream the call wrote whole reached their sockets by now: one clock read stamps them all,
    // so the bookkeeping below (per stream) is not counted as the later streams' publish -> socket time.
    const writtenAtMs = performance.now();
    writers.fill(undefined, 0, count);
    this.batches++;
    this.chunksBatched += count;
    const nowMs = Date.now();
    const caughtUp = chunkEnd >= this.watch.get();
    const wireBytes = chunk.byteCount + XLOG_DATA_HEADER_BYTES;
    for (let index = 0; index < count; index++) {
      const entry = members[index];
      assert.ok(entry !== undefined);
      members[index] = undefined;
      const outcome = this.outcomes[index] as BatchOutcome;
      if (outcome === BatchOutcome.failed) {
        entry.finish('resume', errors?.[index] ?? new Error('batched send failed'));
        continue;
      }
      entry.sentLsn = chunkEnd;
      entry.lastSendAtMs = nowMs;
      const { participant } = entry;
      participant.onSent(chunkEnd, chunk.byteCount, wireBytes);
      const clock = participant.publishClock;
      if (clock !== undefined && clock.chunkAccepted(chunkEnd)) {
        // Written means handed to the kernel: the clock stops now, without asking the backend.
        if (outcome === BatchOutcome.written) clock.written(chunkEnd, writtenAtMs);
        else participant.writer.afterWritten(() => clock.written(chunkEnd));
      }
      // As the loop does when it comes back to an empty range: from here the stream waits on the watch again.
      if (caughtUp) clock?.waiting(chunkEnd);
      if (outcome === BatchOutcome.full) entry.finish('resume');
    }
  }

  /** Every stream of `round` at `chunkLsn` goes on alone (its loop repeats the step and reports any error). */
  private resumeGroup(chunkLsn: Lsn, round: number): void {
    for (const entry of this.parked) if (inGroup(entry, chunkLsn, round)) entry.finish('resume');
  }

  /** The last parked stream left: stop listening on the watch and unpin the reader's segment. */
  private idle(): void {
    this.unlisten?.();
    this.unlisten = undefined;
    if (!this.running) this.closeSource();
  }

  private closeSource(): void {
    const source = this.source;
    this.source = undefined;
    // Closing unpins its segment; a failure to close a read-only descriptor has nobody to tell but the log of a stream.
    source?.close().catch(() => undefined);
  }
}

/** Whether `entry` is in the group of `round` at `chunkLsn`: round() marked it, and it is still at that position. */
function inGroup(entry: Parked, chunkLsn: Lsn, round: number): boolean {
  return entry.round === round && entry.sentLsn === chunkLsn;
}
