/**
 * The WAL sender loop: the seed's WalSender, in TypeScript.
 *
 * One call of `sendWal` streams one replica from its start LSN: wait until the end watch (commit LSN, or flush
 * LSN for recovery streams) passes what was sent, cut the next chunk, hand "header + segment range" to the I/O
 * backend, advance. In catch-up, where the writer takes runs (StreamWriter.sendChunkRun), the chunks that follow and
 * need no wait go with it in one call (ChunkRuns), so the loop runs once per ~512 KiB rather than per 128 KiB.
 * While idle it sends a keepalive that asks for a reply every `keepaliveIntervalMs`, or ends the stream when the
 * replica has caught up and nothing writes the timeline any more. While busy it asks for a reply once half of the
 * replica timeout passed without one, so that a replica which replies only when asked (pg_receivewal -s 0) is not
 * timed out during a long catch-up. While it waits for storage (a segment fetched from
 * object storage can take seconds: ranged GETs, retries), it keeps sending reply-requesting keepalives on the idle
 * schedule, so neither the replica's wal_receiver_timeout nor walcast's --replica-timeout ends the stream during a
 * slow GET (walsender.c keeps its keepalive schedule while WALRead waits, too). Encoding the protocol is done here; moving bytes
 * is the backend's job, so nothing below depends on which backend runs.
 *
 * It does not read the socket: the reply reader does, concurrently, and stops this loop through `signal`.
 */
import assert from 'node:assert/strict';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { CHUNK_RUN_CHUNKS_MAX, type StreamWriter, type WalChunk } from '../io/backend.js';
import { formatLsn, lsnDistance, type Lsn } from '../lsn.js';
import { WalCorruptionError } from '../storage/page-verifier.js';
import type { FanoutBatcher, FanoutParticipant } from './fanout-batch.js';
import {
  MAX_SEND_BYTES,
  XLOG_DATA_HEADER_BYTES,
  decideChunkEnd,
  encodeKeepalive,
  pgNowMicros,
  writeXLogDataHeader,
} from './stream-messages.js';

/** How long the sender waits for new WAL before a keepalive or a stop check (the seed's POLL_STATE_TIMEOUT). */
export const KEEPALIVE_INTERVAL_MS = 1000;

/**
 * Bytes a sender may push before it yields to the event loop. Sends can complete without ever leaving the
 * microtask queue (the native backend writes synchronously while the socket has room), so without this one fast
 * replica would starve every other replica and the reply readers. 512 KiB is four full chunks.
 */
export const SEND_BUDGET_PER_TURN_BYTES = 512 * 1024;

/**
 * How far ahead of the send position the sender asks the backend to bring WAL into page cache. A cold segment
 * must be read by a worker before the event-loop thread sends from it; 4 MiB keeps the disk busy while the
 * previous window is sent, and is small enough that 1,000 catching-up replicas pin at most 4 GiB of cache. The
 * default (TS backend); native streams ask for 8 MiB in 4 MiB pieces (StreamWriter.prefetchShape), up to 12 MiB
 * per stream with the piece being sent: 1,000 replicas each on a cold range of its own ask for up to 12 GiB (page
 * cache, evictable: a page evicted before its send is read once more by the send).
 */
export const PREFETCH_WINDOW_BYTES = 4 * 1024 * 1024;

assert.ok(PREFETCH_WINDOW_BYTES >= MAX_SEND_BYTES, 'a prefetch window holds at least one chunk');

/** Where WAL comes from: the storage reader, or a fake in unit tests. */
export interface WalSource {
  /**
   * The file range holding [lsn, endLsn), cut at the segment end, or shorter where the segment file ends early.
   * Throws WalcastError when `lsn` itself is not held.
   */
  locate(lsn: Lsn, endLsn: Lsn): Promise<WalChunk>;
  /**
   * The same range, synchronously, when it can be had without I/O (its segment open, the range inside the file's
   * known size); undefined otherwise, and then `locate` gives the answer (or the error).
   */
  locateNow?(lsn: Lsn, endLsn: Lsn): WalChunk | undefined;
  /**
   * Closes the open segments and releases their retention pins; the next locate opens again (WalReader). Called
   * only while nothing reads or sends from them: the stream is parked in the commit batch, which reads with a reader
   * of its own (ParkedReaders).
   */
  releaseSegments?(): Promise<void>;
}

/** The LSN the stream may send up to, and a way to wait until it moves past a position. */
export interface EndWatch {
  get(): Lsn;
  waitBeyond(position: Lsn, timeoutMs: number, signal?: AbortSignal): Promise<Lsn | undefined>;
}

/**
 * How long the stream takes from a commit-LSN publish to its socket (timeline/publish-timing.ts StreamPublishClock):
 * told when the stream waits, when a chunk was handed to the backend, and when that chunk was written.
 */
export interface PublishClock {
  waiting(sentLsn: Lsn): void;
  /** True when the caller should report `written(throughLsn)` once the chunk ending there is written. */
  chunkAccepted(throughLsn: Lsn): boolean;
  written(throughLsn: Lsn): void;
}

export interface SendWalOptions {
  /** The replica's application_name, for the stream-ending messages. */
  readonly replicaName: string;
  readonly startLsn: Lsn;
  readonly segmentBytes: number;
  readonly endWatch: EndWatch;
  readonly source: WalSource;
  /**
   * A second reader used only to find ranges to prefetch, so that prefetching ahead never moves the send
   * reader's open segment (whose descriptor a backend may still be sending from).
   */
  readonly prefetchSource: WalSource;
  readonly writer: StreamWriter;
  /**
   * Checks the stored pages a chunk touches before any of its bytes is sent (storage/page-verifier.ts); rejects
   * with WalCorruptionError, whose verified prefix is sent before the stream ends. Absent only in unit tests.
   */
  readonly verify?: (chunk: WalChunk, chunkLsn: Lsn) => Promise<void>;
  /** verify's synchronous attempt (PageVerifier.verifyNow): true when the chunk is verified; else verify runs. */
  readonly verifyNow?: (chunk: WalChunk, chunkLsn: Lsn) => boolean;
  /**
   * verify, for whole window pieces the prefetcher brought into page cache, off the event-loop thread where the
   * backend can (IoBackend.checksumPagesOffThread). Absent: nothing is verified ahead, the sender checks every chunk.
   */
  readonly verifyAhead?: (chunk: WalChunk, chunkLsn: Lsn) => Promise<void>;
  /** Aborted when the replica ends the stream (CopyDone, disconnect, bad feedback) or the server stops. */
  readonly signal: AbortSignal;
  /** Recovery/term streams: end once everything up to the end watch at that moment was sent. */
  readonly stopAtEnd: boolean;
  /** Asked after each idle interval; returns true when the stream should end (caught up, no writer). */
  readonly shouldStop: (sentLsn: Lsn) => boolean;
  /**
   * Told after every chunk (or run of chunks, with the bytes of all), so the replica registry shows the sent position:
   * `walBytes` of WAL up to `sentLsn` (so the caller needs no BigInt subtraction per chunk and stream), `wireBytes`
   * with the XLogData headers.
   */
  readonly onSent: (sentLsn: Lsn, walBytes: number, wireBytes: number) => void;
  /** The reply reader's timeout: silence this long from the replica ends the stream (wal_sender_timeout). */
  readonly replicaTimeoutMs: number;
  /** When the replica last sent anything (Date.now() milliseconds), as the reply reader saw it. */
  readonly lastReplyAtMs: () => number;
  readonly keepaliveIntervalMs?: number;
  /**
   * Told when the sender starts (true) and stops (false) waiting for a prefetch read: cold WAL from disk, read at idle
   * I/O priority by the native backend, which a busy disk can hold back for seconds (native/readahead-thread.h).
   */
  readonly onDiskWait?: (waiting: boolean) => void;
  /**
   * Where the requested PostgreSQL timeline ends (its switch point), read again before every chunk; undefined while
   * it is the newest. The stream never sends past it and ends there (walsender.c XLogSendPhysical, historic case).
   */
  readonly timelineEnd?: () => Lsn | undefined;
  /** Measures publish → socket latency for the commit watch (absent for recovery streams and in most unit tests). */
  readonly publishClock?: PublishClock;
  /**
   * The commit watch's batcher (replication/fanout-batch.ts): while caught up, a stream whose writer it accepts parks
   * there and is sent each publish's chunk in one batch with the others. Absent: the stream always waits alone.
   */
  readonly fanout?: FanoutBatcher;
}

/** Why a sender loop ended; the session turns this into the right protocol ending. */
export type SendWalEnd =
  | { readonly kind: 'aborted'; readonly sentLsn: Lsn }
  | { readonly kind: 'timeline_end'; readonly sentLsn: Lsn }
  | { readonly kind: 'caught_up'; readonly sentLsn: Lsn; readonly message: string }
  | { readonly kind: 'recovery_finished'; readonly sentLsn: Lsn; readonly message: string };

export async function sendWal(options: SendWalOptions): Promise<SendWalEnd> {
  const { endWatch, signal, segmentBytes } = options;
  assert.ok(options.replicaTimeoutMs > 0, 'the replica timeout is positive');
  const replyRequests = new ReplyRequests(options.replicaTimeoutMs, options.lastReplyAtMs);
  // Idle, a reply is asked for every interval; never less often than half the timeout, or an idle replica that
  // replies only when asked would be timed out between two keepalives.
  const idleWaitMs = Math.min(options.keepaliveIntervalMs ?? KEEPALIVE_INTERVAL_MS, replyRequests.askAfterSilenceMs);
  // One header buffer per stream: the backend copies or sends it before sendChunk resolves.
  const header = Buffer.allocUnsafe(XLOG_DATA_HEADER_BYTES);
  const prefetcher = new Prefetcher(options);
  let sentLsn = options.startLsn;
  let sentThisTurnBytes = 0;
  // Recovery streams end at the flush LSN as it is when they start, as the seed's stop_pos.
  const stopLsn = options.stopAtEnd ? endWatch.get() : undefined;
  // While storage is awaited: walEnd is the sent position, as in the busy case below.
  const storageWaits = new StorageWaits(idleWaitMs, signal, async () => {
    replyRequests.asked();
    await options.writer.sendMessage(encodeKeepalive(sentLsn, pgNowMicros(), true));
  });
  const participant = fanoutParticipant(options, replyRequests, idleWaitMs);
  const runs = options.writer.sendChunkRun === undefined ? undefined : new ChunkRuns(options, prefetcher);
  const parkedReaders = participant === undefined ? undefined : new ParkedReaders(options, prefetcher);
  try {
    return await streamLoop();
  } finally {
    storageWaits.close();
  }

  async function streamLoop(): Promise<SendWalEnd> {
    while (!storageWaits.aborted) {
      if (stopLsn !== undefined && sentLsn >= stopLsn) {
        return { kind: 'recovery_finished', sentLsn, message: `ending streaming to ${options.replicaName} at ${formatLsn(sentLsn)}, recovery finished` };
      }
      if (reachedTimelineEnd(options, sentLsn)) return { kind: 'timeline_end', sentLsn };
      let endLsn = endWatch.get();
      if (endLsn <= sentLsn) {
        options.publishClock?.waiting(sentLsn);
        let advanced: Lsn | undefined;
        if (participant !== undefined && options.fanout?.accepts(options.writer) === true) {
          // Parked in the commit batch: it may send this stream several chunks before it hands the stream back.
          parkedReaders?.parked();
          const parked = await options.fanout.park(participant, sentLsn);
          parkedReaders?.resumed();
          sentLsn = parked.sentLsn;
          if (parked.kind === 'resume') continue;
          advanced = undefined;
        } else {
          advanced = await endWatch.waitBeyond(sentLsn, idleWaitMs, signal);
        }
        if (storageWaits.aborted) break;
        if (advanced === undefined) {
          if (options.shouldStop(sentLsn)) {
            // A contract: Neon's pageserver matches "ending streaming" with SQLSTATE 00000 as a clean end.
            return { kind: 'caught_up', sentLsn, message: `ending streaming to ${options.replicaName} at ${formatLsn(sentLsn)}, receiver is caughtup and there is no computes` };
          }
          replyRequests.asked();
          await options.writer.sendMessage(encodeKeepalive(endWatch.get(), pgNowMicros(), true));
          sentThisTurnBytes = 0;
          continue;
        }
        endLsn = advanced;
      }
      if (replyRequests.due(Date.now())) {
        // walsender.c WalSndKeepalive: a keepalive's walEnd is the sent position. It follows the chunks already
        // handed to the backend on the same stream, so it can never land inside a frame.
        replyRequests.asked();
        await options.writer.sendMessage(encodeKeepalive(sentLsn, pgNowMicros(), true));
      }
      if (stopLsn !== undefined && endLsn > stopLsn) endLsn = stopLsn;
      // Read after the end watch: a switch is recorded before any WAL past it is published (Timeline.switchPgTimeline).
      const timelineEndLsn = options.timelineEnd?.();
      if (timelineEndLsn !== undefined && endLsn > timelineEndLsn) endLsn = timelineEndLsn;
      if (endLsn <= sentLsn) continue;
      const wantedEnd = decideChunkEnd(sentLsn, endLsn, segmentBytes);
      // Most chunks need no wait at all: their prefetch piece was cached chunks ago and their segment is open. Those
      // skip the storage wait (a Promise.race, a promise and a closure each) and its awaits: per chunk, the two were
      // the sender loop's largest cost of its own (profile in docs/benchmarks.md, "One replica").
      const caching = prefetcher.ensureCachedNow(sentLsn, endLsn, wantedEnd);
      if (caching !== undefined) {
        options.onDiskWait?.(true);
        const waited = await storageWaits.wait(caching);
        options.onDiskWait?.(false);
        if (waited === STREAM_ABORTED) break;
      }
      // Storage may return less than asked, only where a segment file ends early: the bytes it has are sent, and the
      // next locate (at the file's end) throws the error that names the segment and offset.
      const chunk = options.source.locateNow?.(sentLsn, wantedEnd) ?? (await storageWaits.wait(options.source.locate(sentLsn, wantedEnd)));
      // The storage wait returns STREAM_ABORTED for an abort during or before it; without a wait, the keepalive above
      // may have let one happen: nothing more is sent after the replica's CopyDone.
      if (chunk === STREAM_ABORTED || storageWaits.aborted) break;
      const chunkBytes = chunk.byteCount;
      assert.ok(chunkBytes > 0 && chunkBytes <= lsnDistance(wantedEnd, sentLsn), 'storage returned a chunk inside the range asked for');
      const chunkEnd = sentLsn + BigInt(chunkBytes);
      if (options.verifyNow?.(chunk, sentLsn) !== true) await verifyChunk(options, header, chunk, sentLsn);
      let sentTo: Lsn;
      let walBytes: number;
      let wireBytes: number;
      if (runs !== undefined) {
        // Catch-up: the chunks after this one that need no wait go with it in one backend call (ChunkRuns).
        sentTo = runs.collect(chunk, sentLsn, wantedEnd, endLsn, SEND_BUDGET_PER_TURN_BYTES - sentThisTurnBytes);
        await runs.send(sentLsn);
        walBytes = lsnDistance(sentTo, sentLsn);
        wireBytes = walBytes + runs.chunks.length * XLOG_DATA_HEADER_BYTES;
      } else {
        // walEnd is always the current end (never 0/0: Neon #3972, reconnect storms on some clients).
        writeXLogDataHeader(header, sentLsn, endWatch.get(), pgNowMicros(), chunkBytes);
        await options.writer.sendChunk(header, chunk);
        sentTo = chunkEnd;
        walBytes = chunkBytes;
        wireBytes = chunkBytes + XLOG_DATA_HEADER_BYTES;
      }
      sentThisTurnBytes += walBytes;
      sentLsn = sentTo;
      // Once per call, run or chunk: the backend reports a write when its queue is empty (afterWritten), so every
      // publish a run's chunks complete is written at that same moment, and one observer covers them all.
      reportWhenWritten(options, sentLsn);
      options.onSent(sentLsn, walBytes, wireBytes);
      if (sentThisTurnBytes >= SEND_BUDGET_PER_TURN_BYTES) {
        sentThisTurnBytes = 0;
        await yieldToEventLoop();
      }
    }
    return { kind: 'aborted', sentLsn };
  }
}

const STREAM_ABORTED = Symbol('stream aborted');

/**
 * Catch-up in runs (for writers with StreamWriter.sendChunkRun): after the loop has a chunk located and verified, the
 * chunks that follow it are added while each can be had without waiting (its prefetch piece cached, its range in the
 * send reader's open segment, its pages verified synchronously), up to the turn's budget. The run goes to the
 * backend in one call, so the loop, its BigInt arithmetic, its awaits and the addon crossing run once per run (~512
 * KiB) instead of once per 128 KiB chunk. Every chunk is cut as the loop would cut it (decideChunkEnd from the same end
 * LSN: never past the commit/flush end or the timeline's end the loop read), and carries its own XLogData header, so
 * the bytes on the wire are those of the same chunks sent one by one. Whatever cannot be had at once (a cold piece, a
 * segment to open, pages to verify off the event loop) ends the run; the loop takes it on its next round.
 */
class ChunkRuns {
  readonly chunks: WalChunk[] = [];
  private readonly headers = Buffer.allocUnsafe(CHUNK_RUN_CHUNKS_MAX * XLOG_DATA_HEADER_BYTES);
  /** One view per header slot, made once: writeXLogDataHeader writes a whole buffer. */
  private readonly headerViews: Buffer[] = [];

  constructor(
    private readonly options: SendWalOptions,
    private readonly prefetcher: Prefetcher,
  ) {
    for (let index = 0; index < CHUNK_RUN_CHUNKS_MAX; index++) {
      this.headerViews.push(this.headers.subarray(index * XLOG_DATA_HEADER_BYTES, (index + 1) * XLOG_DATA_HEADER_BYTES));
    }
  }

  /**
   * Starts a run with `first` (located at `firstLsn` for [firstLsn, firstWantedEnd), and verified) and adds what
   * follows while it is at hand, the run's payload staying within `budgetBytes` (the first chunk always goes).
   * Returns the run's end LSN.
   */
  collect(first: WalChunk, firstLsn: Lsn, firstWantedEnd: Lsn, endLsn: Lsn, budgetBytes: number): Lsn {
    const { options } = this;
    const segmentBytes = BigInt(options.segmentBytes);
    this.chunks.length = 0;
    let lsn = firstLsn + BigInt(first.byteCount);
    let runBytes = first.byteCount;
    this.chunks.push(first);
    // A file that ends early: its short chunk goes alone, and the loop's next locate names the missing bytes.
    if (lsn < firstWantedEnd) return lsn;
    while (this.chunks.length < CHUNK_RUN_CHUNKS_MAX && lsn < endLsn) {
      // The send reader moves to the next segment only at a locate the loop awaits: it may close this run's file.
      if (lsn % segmentBytes === 0n) break;
      const wantedEnd = decideChunkEnd(lsn, endLsn, options.segmentBytes);
      const wantedBytes = lsnDistance(wantedEnd, lsn);
      if (runBytes + wantedBytes > budgetBytes) break;
      if (this.prefetcher.ensureCachedNow(lsn, endLsn, wantedEnd) !== undefined) break;
      const chunk = options.source.locateNow?.(lsn, wantedEnd);
      if (chunk === undefined) break;
      assert.ok(chunk.byteCount > 0 && chunk.byteCount <= wantedBytes, 'storage returned a chunk inside the range asked for');
      if (options.verify !== undefined && options.verifyNow?.(chunk, lsn) !== true) break;
      this.chunks.push(chunk);
      lsn += BigInt(chunk.byteCount);
      runBytes += chunk.byteCount;
      if (chunk.byteCount < wantedBytes) break;
    }
    return lsn;
  }

  /** Sends the run collected last, starting at `firstLsn`: one header per chunk, the same walEnd and time in each. */
  async send(firstLsn: Lsn): Promise<void> {
    const { options } = this;
    // walEnd is always the current end (never 0/0: Neon #3972, reconnect storms on some clients).
    const walEnd = options.endWatch.get();
    const now = pgNowMicros();
    let lsn = firstLsn;
    for (let index = 0; index < this.chunks.length; index++) {
      const { byteCount } = this.chunks[index]!;
      writeXLogDataHeader(this.headerViews[index]!, lsn, walEnd, now, byteCount);
      lsn += BigInt(byteCount);
    }
    await options.writer.sendChunkRun!(this.headers, XLOG_DATA_HEADER_BYTES, this.chunks);
  }
}

/** What the commit batch needs from this stream while it is parked; undefined when it never parks (recovery streams). */
function fanoutParticipant(options: SendWalOptions, replyRequests: ReplyRequests, idleWaitMs: number): FanoutParticipant | undefined {
  if (options.fanout === undefined || options.stopAtEnd) return undefined;
  return {
    writer: options.writer,
    signal: options.signal,
    ...(options.verify === undefined ? {} : { verify: options.verify }),
    ...(options.verifyNow === undefined ? {} : { verifyNow: options.verifyNow }),
    replyDue: (nowMs) => replyRequests.due(nowMs),
    replyNotDueBeforeMs: () => replyRequests.notDueBeforeMs(),
    ...(options.timelineEnd === undefined ? {} : { timelineEnd: options.timelineEnd }),
    onSent: options.onSent,
    ...(options.publishClock === undefined ? {} : { publishClock: options.publishClock }),
    idleWaitMs,
  };
}

/**
 * Releases the loop's own readers' segments while the stream is parked in the commit batch. Parked, the stream is
 * sent by the batch from the batch's reader, and its own readers (the send reader and the prefetch reader) read
 * nothing: without this they kept the segment they last read open, and pinned (WalReader keeps the one before it
 * too), for as long as the batch kept sending for the stream. A live replica that left the batch once (a reply due,
 * its queue at the bound) then held that segment for the rest of its stream, and retention could remove nothing
 * after it: seen under heavy CPU load as a pg_receivewal stream pinning its first segment for a whole 192 MiB run
 * (test/retention.test.ts).
 *
 * A backend may still send from a descriptor after its send resolved (sendfile, io_uring), and a prefetch piece may
 * still be locating or checking ahead, so the release waits for both: the writer's afterWritten (every byte accepted
 * so far is written) and the prefetcher's settled(). It happens only if the stream is still in the same park then;
 * if it resumed (and may have sent from reopened segments) it waits for the next park. One observer at a time: a
 * park that starts while one is pending is picked up when it answers. The next locate after a resume opens the
 * segment again (one open and stat per park that resumes into a send).
 */
class ParkedReaders {
  private parks = 0;
  /** The number of the park in progress; undefined while the loop runs. */
  private parkedAs: number | undefined;
  private observing = false;

  constructor(
    private readonly options: Pick<SendWalOptions, 'source' | 'prefetchSource' | 'writer'>,
    private readonly prefetcher: Prefetcher,
  ) {}

  parked(): void {
    this.parkedAs = ++this.parks;
    this.observe();
  }

  resumed(): void {
    this.parkedAs = undefined;
  }

  private observe(): void {
    const park = this.parkedAs;
    if (this.observing || park === undefined) return;
    this.observing = true;
    // Refused past the backend's observer bound (or never answered by a failed stream): the segments stay pinned
    // until a later park, as before; a failed stream ends and closes its readers.
    const registered = this.options.writer.afterWritten(() => {
      void this.prefetcher.settled().then(() => {
        this.observing = false;
        if (this.parkedAs === park) this.release();
        else this.observe();
      });
    });
    if (!registered) this.observing = false;
  }

  private release(): void {
    // Synchronous up to the closes: a locate after this (a resume) opens again, never uses a closing handle.
    this.options.source.releaseSegments?.().catch(() => undefined);
    this.options.prefetchSource.releaseSegments?.().catch(() => undefined);
  }
}

/**
 * Awaits storage steps while keeping the stream alive. A fetch from object storage can take seconds (ranged GETs,
 * retries); while one is pending, a keepalive asking for a reply goes out at least every `intervalMs`, as when
 * idle. Local reads settle in microseconds, so a wait costs no timer of its own: one ticker per stream (started at
 * the first wait, every half interval) looks at the wait in progress, and one abort listener per stream ends a wait
 * at once when the stream is aborted (the storage step then finishes on its own; its failure is of no interest, the
 * caller closes the reader, and a racing open closes its own file).
 */
class StorageWaits {
  private readonly intervalMs: number;
  private readonly signal: AbortSignal;
  private readonly keepalive: () => Promise<void>;
  private ticker: NodeJS.Timeout | undefined;
  /** While a wait is in progress: when it started or last sent a keepalive, and how to end it on abort. */
  private current: { lastSentAtMs: number; escape: (aborted: typeof STREAM_ABORTED) => void } | undefined;
  /** A keepalive sent by the ticker that has not completed; a wait returns only after it. */
  private sending: Promise<void> | undefined;
  /**
   * signal.aborted, as a field of this class: the loop reads it several times per chunk. Read from the AbortSignal
   * itself, optimized sender code met a new stream's signal with another hidden class ("wrong map" at the loop's first
   * line, --trace-deopt) and TurboFan compiled the whole loop again, 30-75 ms of compiler-thread CPU each time, in
   * three of a fresh server's first five catch-ups (docs/benchmarks.md, "One replica: consumer cost and JIT warm-up").
   */
  aborted: boolean;
  private readonly onAbort = (): void => {
    this.aborted = true;
    this.current?.escape(STREAM_ABORTED);
  };

  constructor(intervalMs: number, signal: AbortSignal, keepalive: () => Promise<void>) {
    this.intervalMs = intervalMs;
    this.signal = signal;
    this.keepalive = keepalive;
    this.aborted = signal.aborted;
    signal.addEventListener('abort', this.onAbort, { once: true });
  }

  async wait<T>(work: Promise<T>): Promise<T | typeof STREAM_ABORTED> {
    assert.ok(this.current === undefined, 'one storage wait at a time per stream');
    if (this.aborted) {
      work.catch(() => undefined);
      return STREAM_ABORTED;
    }
    this.ticker ??= setInterval(() => this.tick(), Math.max(1, Math.floor(this.intervalMs / 2)));
    let escape: (aborted: typeof STREAM_ABORTED) => void = () => undefined;
    const escaped = new Promise<typeof STREAM_ABORTED>((resolve) => (escape = resolve));
    this.current = { lastSentAtMs: Date.now(), escape };
    try {
      const result = await Promise.race([work, escaped]);
      if (result === STREAM_ABORTED) work.catch(() => undefined);
      return result;
    } finally {
      this.current = undefined;
      // Keep the stream's frames in order: the loop's next send goes after the keepalive, never beside it.
      if (this.sending !== undefined) await this.sending;
    }
  }

  /** Every half interval: a keepalive when the wait in progress has gone half an interval without one. */
  private tick(): void {
    const current = this.current;
    if (current === undefined || this.sending !== undefined) return;
    const now = Date.now();
    if (now - current.lastSentAtMs < this.intervalMs / 2) return;
    current.lastSentAtMs = now;
    // A failed send fails the stream's next send too, which reports it; nothing to do with it here.
    this.sending = this.keepalive()
      .catch(() => undefined)
      .finally(() => {
        this.sending = undefined;
      });
  }

  close(): void {
    clearInterval(this.ticker);
    this.signal.removeEventListener('abort', this.onAbort);
  }
}

/** Asks the backend to tell the publish clock when the chunk ending at `chunkEnd` is written, if that completes a publish. */
function reportWhenWritten(options: SendWalOptions, chunkEnd: Lsn): void {
  const clock = options.publishClock;
  if (clock === undefined || !clock.chunkAccepted(chunkEnd)) return;
  // Refused only past the backend's observer bound (a bug): the publish then counts when a later chunk is written.
  options.writer.afterWritten(() => clock.written(chunkEnd));
}

function reachedTimelineEnd(options: SendWalOptions, sentLsn: Lsn): boolean {
  const timelineEndLsn = options.timelineEnd?.();
  if (timelineEndLsn === undefined) return false;
  assert.ok(sentLsn <= timelineEndLsn, 'nothing past the switch point was sent');
  return sentLsn === timelineEndLsn;
}

/**
 * When a busy sender asks for a reply: once half of the replica timeout passed since the replica's last message,
 * and then not again until the replica sends something (walsender.c WalSndKeepaliveIfNecessary and its
 * waiting_for_ping_response). Half leaves the replica the other half to answer before the reply reader gives up.
 */
class ReplyRequests {
  readonly askAfterSilenceMs: number;
  private readonly lastReplyAtMs: () => number;
  /** The last-reply time at which a reply was last asked for; a newer one means the replica answered. */
  private askedAtReplyMs: number | undefined;

  constructor(replicaTimeoutMs: number, lastReplyAtMs: () => number) {
    this.askAfterSilenceMs = Math.max(1, Math.floor(replicaTimeoutMs / 2));
    this.lastReplyAtMs = lastReplyAtMs;
  }

  due(nowMs: number): boolean {
    const lastReplyAtMs = this.lastReplyAtMs();
    if (this.askedAtReplyMs === lastReplyAtMs) return false;
    return nowMs - lastReplyAtMs >= this.askAfterSilenceMs;
  }

  asked(): void {
    this.askedAtReplyMs = this.lastReplyAtMs();
  }

  /**
   * due() is false before this time: the replica's last message only moves later (or a reply was asked for and none
   * came: due waits for one), so neither case makes it due sooner. The commit batch asks due() only past it.
   */
  notDueBeforeMs(): number {
    return this.lastReplyAtMs() + this.askAfterSilenceMs;
  }
}

/**
 * Verifies a chunk before it is sent. On corruption the pages before the bad one verified: they are sent (the
 * replica gets every good byte up to the damage, as from PostgreSQL), then the error ends the stream.
 */
async function verifyChunk(options: SendWalOptions, header: Buffer, chunk: WalChunk, chunkLsn: Lsn): Promise<void> {
  if (options.verify === undefined) return;
  try {
    await options.verify(chunk, chunkLsn);
  } catch (error) {
    if (error instanceof WalCorruptionError && error.goodBytes > 0) {
      assert.ok(error.goodBytes < chunk.byteCount, 'the bad page lies inside the chunk');
      writeXLogDataHeader(header, chunkLsn, options.endWatch.get(), pgNowMicros(), error.goodBytes);
      await options.writer.sendChunk(header, { file: chunk.file, fileOffset: chunk.fileOffset, byteCount: error.goodBytes });
      options.onSent(chunkLsn + BigInt(error.goodBytes), error.goodBytes, error.goodBytes + XLOG_DATA_HEADER_BYTES);
    }
    throw error;
  }
}

/**
 * The window is requested in pieces of this size, and the sender waits only for the piece it is about to send
 * from. Waiting for a whole 4 MiB window makes a cold catch-up alternate between "disk busy, socket idle" and
 * "socket busy, disk idle"; with pieces the disk has the next reads queued while the current piece is sent. The
 * default (the TS backend); a writer may ask for larger pieces and window (StreamWriter.prefetchShape: native streams
 * take 4 MiB pieces, one addon request each, since each piece costs a thread read, an event and a pool check).
 */
export const PREFETCH_PIECE_BYTES = 1024 * 1024;

assert.ok(PREFETCH_WINDOW_BYTES % PREFETCH_PIECE_BYTES === 0, 'the window is a whole number of pieces');
assert.ok(PREFETCH_PIECE_BYTES >= MAX_SEND_BYTES, 'a chunk never spans more than two pieces');

/**
 * Keeps the window ahead of the send position in page cache: pieces from the one holding the send position up to
 * PREFETCH_WINDOW_BYTES past it are requested, and only the current piece is awaited (the first one on a cold
 * start, or when the disk is slower than the socket). At most window/piece + 1 requests are pending per stream.
 *
 * Each whole piece is also verified once it is in page cache (`verifyAhead`: the native backend checksums on a pool
 * thread), so when the sender reaches it its pages are verified already and verifyNow only reads their bits. In a
 * cold catch-up the checksum and the page faults of reading the mapping were the event-loop thread's largest cost
 * when the sender did them chunk by chunk (docs/benchmarks.md, "Cold catch-up against PostgreSQL in one run"). A
 * piece cut short by the end watch (a live stream's, holding the writer's partial page) is left to the sender's
 * inline check: the sender would wait for the hop. A failed or refused check ahead is ignored: the sender's own
 * check of the chunk decides what is sent.
 */
export class Prefetcher {
  private readonly options: Pick<SendWalOptions, 'prefetchSource' | 'writer' | 'verifyAhead'>;
  /** The writer's piece and window (StreamWriter.prefetchShape), else PREFETCH_PIECE_BYTES and PREFETCH_WINDOW_BYTES. */
  private readonly pieceBytes: bigint;
  private readonly windowBytes: bigint;
  /** Prefetch requests for pieces at or after the send position, by piece start; `done` once it settled. */
  private readonly pending = new Map<Lsn, { readonly promise: Promise<void>; done: boolean }>();
  /**
   * Settles once the last requested piece was handed to the writer (or gave up). Locating is asynchronous and the
   * pieces of a new segment used to reach the backend out of order (the third before the first: each waited for the
   * same open); the native backend works on a file's requests in arrival order, and a first request in the middle of
   * a file starts the kernel's readahead there, small and synchronous, while the pieces before it wait. So each
   * piece is handed over only after the one before it.
   */
  private handedOff: Promise<void> = Promise.resolve();

  constructor(options: Pick<SendWalOptions, 'prefetchSource' | 'writer' | 'verifyAhead'>) {
    this.options = options;
    const { pieceBytes, windowBytes } = options.writer.prefetchShape ?? { pieceBytes: PREFETCH_PIECE_BYTES, windowBytes: PREFETCH_WINDOW_BYTES };
    assert.ok(Number.isSafeInteger(pieceBytes) && Number.isSafeInteger(windowBytes) && pieceBytes >= MAX_SEND_BYTES && windowBytes % pieceBytes === 0,
      `prefetch piece ${pieceBytes} of window ${windowBytes}: at least one chunk, a divisor of the window`);
    this.pieceBytes = BigInt(pieceBytes);
    this.windowBytes = BigInt(windowBytes);
  }

  /** Pending requests, for tests of the bound. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /**
   * Settles once every request made so far has settled (none rejects): from then on no piece is located, prefetched
   * or checked ahead until the next ensureCachedNow. ParkedReaders waits for it before releasing the readers.
   */
  settled(): Promise<void> {
    const running: Promise<void>[] = [];
    for (const piece of this.pending.values()) if (!piece.done) running.push(piece.promise);
    return running.length === 0 ? Promise.resolve() : Promise.all(running).then(() => undefined);
  }

  async ensureCached(sentLsn: Lsn, endLsn: Lsn, chunkEnd?: Lsn): Promise<void> {
    await this.ensureCachedNow(sentLsn, endLsn, chunkEnd);
  }

  /**
   * As ensureCached, but undefined (nothing to wait for) once the pieces holding [sentLsn, chunkEnd) are known to be
   * cached (only the one holding `sentLsn` without `chunkEnd`). A chunk that crosses into the next piece waits for
   * that one too: its reads run at idle I/O priority (native/readahead-thread.h), and a send or an inline check over
   * pages still being read would wait for them on the event loop, behind every best-effort I/O on the disk.
   */
  ensureCachedNow(sentLsn: Lsn, endLsn: Lsn, chunkEnd?: Lsn): Promise<void> | undefined {
    const pieceBytes = this.pieceBytes;
    const current = sentLsn - (sentLsn % pieceBytes);
    for (const start of this.pending.keys()) if (start < current) this.pending.delete(start);
    const windowLimit = sentLsn + this.windowBytes;
    for (let start = current; start < windowLimit && start < endLsn; start += pieceBytes) {
      this.request(start, start === current ? sentLsn : start, endLsn);
    }
    assert.ok(this.pending.size <= Number(this.windowBytes / pieceBytes) + 1, 'prefetch requests stay within the window');
    const last = chunkEnd === undefined || chunkEnd <= sentLsn ? current : (chunkEnd - 1n) - ((chunkEnd - 1n) % pieceBytes);
    let waitFor: Promise<void> | undefined;
    // At most two pieces: a chunk is never longer than a piece.
    for (let start = current; start <= last; start += pieceBytes) {
      const piece = this.pending.get(start);
      if (piece !== undefined && !piece.done) waitFor = waitFor === undefined ? piece.promise : Promise.all([waitFor, piece.promise]).then(() => undefined);
    }
    return waitFor;
  }

  private request(pieceStart: Lsn, from: Lsn, endLsn: Lsn): void {
    if (this.pending.has(pieceStart) || from >= endLsn) return;
    const pieceEnd = pieceStart + this.pieceBytes;
    const until = pieceEnd < endLsn ? pieceEnd : endLsn;
    const previous = this.handedOff;
    let handOff = (): void => undefined;
    this.handedOff = new Promise((resolve) => (handOff = resolve));
    const piece = { promise: this.prefetchRange(from, until, until === pieceEnd, previous, handOff), done: false };
    void piece.promise.then(() => (piece.done = true));
    this.pending.set(pieceStart, piece);
  }

  /**
   * Prefetch is advisory: a failure here surfaces, if it matters, when the range is located to be sent. The first
   * chunk goes to the writer after the previous piece's (`previous`), and `handOff` lets the next piece go.
   */
  private async prefetchRange(from: Lsn, until: Lsn, whole: boolean, previous: Promise<void>, handOff: () => void): Promise<void> {
    let position = from;
    try {
      while (position < until) {
        const chunk = await this.options.prefetchSource.locate(position, until);
        await previous;
        const caching = this.options.writer.prefetch(chunk);
        handOff();
        await caching;
        // Not once the reader closed the file (it keeps a segment open only one segment longer, and the window's
        // pieces span several segments when they are small): the check would read whatever the number names now.
        if (whole && chunk.file.closed !== true) await this.options.verifyAhead?.(chunk, position);
        position += BigInt(chunk.byteCount);
      }
    } catch {
      // Ignored on purpose, see above.
    } finally {
      handOff();
    }
  }
}
