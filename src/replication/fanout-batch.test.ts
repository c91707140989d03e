/**
 * The commit fan-out batch with the real sender loop and LSN watch, against in-memory fakes of storage and of the
 * backend's ChunkBatch (style anchor 3): what each stream is sent, in how many calls, how often storage is asked,
 * and how a stream leaves the batch (queue at its bound, failed send, reply due).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { BatchOutcome, type ChunkBatch, type StreamWriter, type WalChunk } from '../io/backend.js';
import type { Lsn } from '../lsn.js';
import { WalCorruptionError } from '../storage/page-verifier.js';
import { segmentFileName } from '../storage/segment-name.js';
import { SegmentPins } from '../storage/segment-pins.js';
import { WalReader, type SegmentPinner } from '../storage/wal-reader.js';
import { LsnWatch } from '../timeline/lsn-watch.js';
import { FanoutBatcher, type ClosableWalSource } from './fanout-batch.js';
import { sendWal, type SendWalEnd, type WalSource } from './send-wal.js';
import { MAX_SEND_BYTES } from './stream-messages.js';

const SEGMENT_BYTES = 1024 * 1024;
const START = 0x100010n;

interface Piece {
  readonly dataStart: Lsn;
  readonly bytes: number;
  readonly how: 'batch' | 'alone';
}

/** A stream's writer: records chunks (batched or its own), keepalives, and says whether the batch may take it. */
class FakeWriter implements StreamWriter {
  readonly pieces: Piece[] = [];
  readonly keepalives: { replyRequested: boolean }[] = [];
  readonly path = 'fake';
  bytesSent = 0;
  batchable = true;
  /** The outcome the fake batch reports for this writer next (then written again). */
  nextOutcome: BatchOutcome = BatchOutcome.written;

  async sendChunk(header: Buffer, chunk: WalChunk): Promise<void> {
    this.record(header, chunk, 'alone');
  }
  async sendMessage(bytes: Buffer): Promise<void> {
    this.keepalives.push({ replyRequested: bytes[22] === 1 });
  }
  /** prefetch calls (the stream's own loop prefetches its windows; the batch, without prefetchNow, per group). */
  prefetches = 0;
  async prefetch(): Promise<void> {
    this.prefetches++;
  }
  /** Absent unless a test sets it (the native writer's prefetchNow: undefined when the range is cached now). */
  prefetchNow?: (chunk: WalChunk) => Promise<void> | undefined;
  async release(): Promise<void> {}
  afterWritten(observer: () => void): boolean {
    observer();
    return true;
  }

  record(header: Buffer, chunk: WalChunk, how: Piece['how']): void {
    assert.equal(header.readUInt32BE(1), 4 + 25 + chunk.byteCount, 'CopyData length covers header and payload');
    this.pieces.push({ dataStart: header.readBigUInt64BE(6), bytes: chunk.byteCount, how });
    this.bytesSent += 30 + chunk.byteCount;
  }

  /** Everything received is contiguous from START; returns where it ends. */
  contiguousEnd(): Lsn {
    let position = START;
    for (const piece of this.pieces) {
      assert.equal(piece.dataStart, position, 'contiguous');
      assert.ok(piece.bytes > 0 && piece.bytes <= MAX_SEND_BYTES, 'at most MAX_SEND_BYTES per chunk');
      position += BigInt(piece.bytes);
    }
    return position;
  }
}

class FakeBatch implements ChunkBatch {
  calls: number[] = [];
  /** Set by a test: a backend that sends from memory (ts) and reads the chunk first (ChunkBatch.stage). */
  stage?: (chunk: WalChunk) => Promise<void> | undefined;
  accepts(writer: StreamWriter): boolean {
    return writer instanceof FakeWriter && writer.batchable;
  }
  /** The writers array of each call (the batcher's, reused): what it holds once the group is done. */
  readonly writerArrays: (readonly (StreamWriter | undefined)[])[] = [];
  send(writers: readonly (StreamWriter | undefined)[], count: number, header: Buffer, chunk: WalChunk, outcomes: Int32Array): (Error | undefined)[] | undefined {
    this.calls.push(count);
    this.writerArrays.push(writers);
    let errors: (Error | undefined)[] | undefined;
    for (let index = 0; index < count; index++) {
      const writer = writers[index] as FakeWriter;
      const outcome = writer.nextOutcome;
      writer.nextOutcome = BatchOutcome.written;
      outcomes[index] = outcome;
      if (outcome === BatchOutcome.failed) {
        (errors ??= [])[index] = new Error(`stream ${index} failed`);
        writer.batchable = false;
        continue;
      }
      writer.record(header, chunk, 'batch');
      if (outcome === BatchOutcome.full) writer.batchable = false;
    }
    return errors;
  }
}

/** Storage fake; counts locates (the batch asks once per position and round, not per stream). */
class FakeSource implements ClosableWalSource {
  locates = 0;
  async locate(lsn: Lsn, endLsn: Lsn): Promise<WalChunk> {
    this.locates++;
    return chunkOf(lsn, endLsn);
  }
  async close(): Promise<void> {}
}

function chunkOf(lsn: Lsn, endLsn: Lsn): WalChunk {
  const segmentEnd = (lsn / BigInt(SEGMENT_BYTES) + 1n) * BigInt(SEGMENT_BYTES);
  const until = endLsn < segmentEnd ? endLsn : segmentEnd;
  return { file: { fd: -1, path: 'fake' }, fileOffset: Number(lsn % BigInt(SEGMENT_BYTES)), byteCount: Number(until - lsn) };
}

/** As WalReader: locateNow answers without awaits while the open segment holds the range (here: always). */
class FakeSourceWithNow extends FakeSource {
  nowLocates = 0;
  locateNow(lsn: Lsn, endLsn: Lsn): WalChunk | undefined {
    this.nowLocates++;
    return chunkOf(lsn, endLsn);
  }
}

const perStreamSource: WalSource = new FakeSource();

interface Harness {
  readonly watch: LsnWatch;
  readonly batch: FakeBatch;
  readonly source: FakeSource;
  readonly batcher: FanoutBatcher;
  readonly writers: FakeWriter[];
  readonly ends: Promise<SendWalEnd>[];
  readonly controller: AbortController;
  verifies: number;
  /** verifyNow calls, and what it answers (undefined: the streams have no verifyNow, only verify). */
  syncVerifies: number;
  verifyNowAnswer: ((chunkLsn: Lsn) => boolean) | undefined;
  /** Each verification in order: which path, at which LSN. */
  readonly verifyLog: { readonly how: 'now' | 'async'; readonly lsn: Lsn }[];
  lastReply: number;
  /** When set, what verify rejects with (every call). */
  asyncFailure: (() => Error) | undefined;
}

interface Extra {
  timelineEnd?: () => Lsn | undefined;
  /** The timeline history the batcher is given (Timeline.history): replaced at a switch. */
  history?: () => unknown;
  startLsns?: readonly Lsn[];
  keepaliveIntervalMs?: number;
  replicaTimeoutMs?: number;
  source?: FakeSource;
}

function start(streams: number, verifyNowAnswer?: (chunkLsn: Lsn) => boolean, extra: Extra = {}): Harness {
  const watch = new LsnWatch(START);
  const batch = new FakeBatch();
  const source = extra.source ?? new FakeSource();
  const batcher = new FanoutBatcher(watch, SEGMENT_BYTES, batch, () => source, extra.history);
  const controller = new AbortController();
  const harness: Harness = {
    watch,
    batch,
    source,
    batcher,
    writers: [],
    ends: [],
    controller,
    verifies: 0,
    syncVerifies: 0,
    verifyNowAnswer,
    verifyLog: [],
    lastReply: Date.now(),
    asyncFailure: undefined,
  };
  for (let index = 0; index < streams; index++) {
    const writer = new FakeWriter();
    harness.writers.push(writer);
    harness.ends.push(
      sendWal({
        replicaName: `r${index}`,
        startLsn: extra.startLsns?.[index] ?? START,
        segmentBytes: SEGMENT_BYTES,
        endWatch: watch,
        source: perStreamSource,
        prefetchSource: perStreamSource,
        writer,
        verify: async (_chunk, chunkLsn) => {
          harness.verifies++;
          harness.verifyLog.push({ how: 'async', lsn: chunkLsn });
          if (harness.asyncFailure !== undefined) throw harness.asyncFailure();
        },
        ...(verifyNowAnswer === undefined
          ? {}
          : {
              verifyNow: (_chunk: WalChunk, chunkLsn: Lsn) => {
                harness.syncVerifies++;
                harness.verifyLog.push({ how: 'now', lsn: chunkLsn });
                return verifyNowAnswer(chunkLsn);
              },
            }),
        signal: controller.signal,
        stopAtEnd: false,
        shouldStop: () => false,
        onSent: () => undefined,
        replicaTimeoutMs: extra.replicaTimeoutMs ?? 60_000,
        lastReplyAtMs: () => harness.lastReply,
        keepaliveIntervalMs: extra.keepaliveIntervalMs ?? 60_000,
        fanout: batcher,
        ...(extra.timelineEnd === undefined ? {} : { timelineEnd: extra.timelineEnd }),
      }),
    );
  }
  return harness;
}

async function until(condition: () => boolean, what: string): Promise<void> {
  for (let attempt = 0; attempt < 2000; attempt++) {
    if (condition()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.fail(`never: ${what}`);
}

async function stop(harness: Harness): Promise<SendWalEnd[]> {
  harness.controller.abort();
  return Promise.all(harness.ends.map((end) => end.catch((error: unknown) => ({ kind: 'failed', error }) as unknown as SendWalEnd)));
}

test('caught-up streams are sent each publish in one call per round, storage asked once per round, exactly up to the watch', async () => {
  const harness = start(5);
  await until(() => harness.batcher.parkedCount === 5, 'all five parked');
  const end = START + 300n * 1024n + 5n;
  harness.watch.advance(end);
  await until(() => harness.writers.every((writer) => writer.contiguousEnd() === end), 'every stream reached the watch');
  // 300 KiB: three chunks (MAX_SEND_BYTES each at most), each one call for all five streams.
  assert.deepEqual(harness.batch.calls, [5, 5, 5]);
  assert.equal(harness.source.locates, 3, 'one locate per round, not per stream');
  assert.equal(harness.verifies, 3, 'one verification per round, not per stream');
  for (const writer of harness.writers) assert.ok(writer.pieces.every((piece) => piece.how === 'batch'));
  await until(() => harness.batcher.parkedCount === 5, 'parked again, waiting for the next publish');
  harness.watch.advance(end + 100n);
  await until(() => harness.writers.every((writer) => writer.contiguousEnd() === end + 100n), 'the next publish');
  assert.deepEqual(harness.batch.calls, [5, 5, 5, 5]);
  const ends = await stop(harness);
  assert.ok(ends.every((result) => result.kind === 'aborted' && result.sentLsn === end + 100n), 'each loop knows what the batch sent');
  assert.equal(harness.batcher.parkedCount, 0);
});

test('one reused writers array for every publish, emptied after each group: the batch holds no stream it is not sending', async () => {
  const harness = start(4, () => true, { source: new FakeSourceWithNow() });
  for (const writer of harness.writers) writer.prefetchNow = () => undefined;
  await until(() => harness.batcher.parkedCount === 4, 'all four parked');
  let end = START;
  for (let publish = 0; publish < 3; publish++) {
    end += 300n;
    harness.watch.advance(end);
    await until(() => harness.writers.every((writer) => writer.contiguousEnd() === end) && harness.batcher.parkedCount === 4, 'the publish reached all four');
  }
  assert.deepEqual(harness.batch.calls, [4, 4, 4]);
  const [first, ...others] = harness.batch.writerArrays;
  assert.ok(first !== undefined && others.every((array) => array === first), 'the same array in every call, not one per publish');
  assert.ok(first.every((writer) => writer === undefined), 'no writer left in it after the group');
  await stop(harness);
});

test('the batcher listens on the watch while streams are parked, with no waiter or timer per publish, and stops when none is', async () => {
  // Storage and verification that answer at once (WalReader.locateNow, PageVerifier.verifyNow, a cached range).
  const harness = start(3, () => true, { source: new FakeSourceWithNow() });
  for (const writer of harness.writers) writer.prefetchNow = () => undefined;
  await until(() => harness.batcher.parkedCount === 3, 'all three parked');
  assert.equal(harness.watch.listenerCount(), 1, 'one listener for every parked stream');
  assert.equal(harness.watch.waiterCount(), 0, 'parked streams do not wait on the watch one by one, nor does the batch');
  let end = START;
  for (let publish = 0; publish < 5; publish++) {
    end += 200n;
    harness.watch.advance(end);
    // Each publish's round starts in a microtask of the publisher's call, before anything the event loop does next.
    await Promise.resolve();
    assert.deepEqual(harness.batch.calls.length, publish + 1, 'the round ran before the event loop turned');
    await until(() => harness.writers.every((writer) => writer.contiguousEnd() === end) && harness.batcher.parkedCount === 3, 'the publish reached all three');
    // The run ends after its last round (a publish during a run is its next round, after a turn of the event loop).
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(harness.watch.waiterCount(), 0);
  }
  assert.deepEqual(harness.batch.calls, [3, 3, 3, 3, 3]);
  await stop(harness);
  assert.equal(harness.batcher.parkedCount, 0);
  assert.equal(harness.watch.listenerCount(), 0, 'no listener once no stream is parked');
});

test('a stream whose queue reaches its bound leaves the batch and sends on its own; one whose send failed ends with that error', async () => {
  const harness = start(3);
  await until(() => harness.batcher.parkedCount === 3, 'all parked');
  const [full, failing, steady] = harness.writers;
  assert.ok(full !== undefined && failing !== undefined && steady !== undefined);
  full.nextOutcome = BatchOutcome.full;
  failing.nextOutcome = BatchOutcome.failed;
  const end = START + 200n * 1024n;
  harness.watch.advance(end);
  await assert.rejects(harness.ends[1]!, /stream 1 failed/, 'the failed send ends its stream with its error');
  await until(() => full.contiguousEnd() === end && steady.contiguousEnd() === end, 'the others reached the watch');
  assert.deepEqual(full.pieces.map((piece) => piece.how), ['batch', 'alone'], 'after the bound, its own sendChunk');
  assert.ok(steady.pieces.every((piece) => piece.how === 'batch'));
  assert.equal(failing.pieces.length, 0, 'nothing was recorded for the failed send');
  assert.ok(harness.batcher.resumed >= 2);
  await stop(harness);
});

test('a stream that owes the replica a reply request leaves the batch: the keepalive goes out before its next chunk', async () => {
  const harness = start(2);
  await until(() => harness.batcher.parkedCount === 2, 'both parked');
  // The replica has been silent for longer than half the timeout: the next chunk must be preceded by a request.
  harness.lastReply = Date.now() - 40_000;
  const end = START + 1000n;
  harness.watch.advance(end);
  await until(() => harness.writers.every((writer) => writer.contiguousEnd() === end), 'both reached the watch');
  for (const writer of harness.writers) {
    assert.deepEqual(writer.keepalives, [{ replyRequested: true }]);
    assert.deepEqual(writer.pieces.map((piece) => piece.how), ['alone']);
  }
  assert.deepEqual(harness.batch.calls, [], 'nothing was batched for streams that owed a request');
  await stop(harness);
});

test('the batch verifies with verifyNow when it answers, and with verify (once, after it) when it does not', async () => {
  // The second chunk misses the synchronous check (e.g. its pages need the sidecar read, or a check is under way).
  let nowCalls = 0;
  const harness = start(4, () => ++nowCalls !== 2);
  await until(() => harness.batcher.parkedCount === 4, 'all parked');
  const end = START + 3n * BigInt(MAX_SEND_BYTES);
  harness.watch.advance(end);
  await until(() => harness.writers.every((writer) => writer.contiguousEnd() === end), 'every stream reached the watch');
  const rounds = harness.batch.calls.length;
  assert.ok(rounds >= 3 && harness.batch.calls.every((count) => count === 4), 'every chunk went in a batch to all four');
  const log = harness.verifyLog;
  const second = log[1];
  assert.ok(second !== undefined && second.how === 'now');
  assert.deepEqual(
    log.map((entry) => entry.how),
    ['now', 'now', 'async', ...Array<'now'>(rounds - 2).fill('now')],
    'once per round, synchronously; the async path only on the miss, right after it',
  );
  assert.equal(log[2]?.lsn, second.lsn, 'the async check is of the chunk the synchronous one missed');
  for (const writer of harness.writers) assert.ok(writer.pieces.every((piece) => piece.how === 'batch'));
  await stop(harness);
});

test('a chunk that fails verification is batched to nobody: each loop sends the verified prefix alone, then ends with the error', async () => {
  // verifyNow never answers for a damaged page; verify rejects with the verified prefix (500 bytes), every time.
  const harness = start(2, () => false);
  harness.asyncFailure = () => new WalCorruptionError('page damaged', 500, 'fake', Number(START % BigInt(SEGMENT_BYTES)) + 500);
  await until(() => harness.batcher.parkedCount === 2, 'both parked');
  harness.watch.advance(START + 1000n);
  for (const end of harness.ends) await assert.rejects(end, (error: unknown) => error instanceof WalCorruptionError && error.goodBytes === 500);
  assert.deepEqual(harness.batch.calls, [], 'nothing unverified was batched');
  for (const writer of harness.writers) {
    assert.deepEqual(writer.pieces, [{ dataStart: START, bytes: 500, how: 'alone' }], 'the verified prefix, from its own loop');
  }
  // The batch's attempt (now, then async), then each loop's.
  assert.deepEqual(harness.verifyLog.map((entry) => entry.how), ['now', 'async', 'now', 'async', 'now', 'async']);
  assert.ok(harness.batcher.resumed >= 2);
  await stop(harness);
});

test('a PostgreSQL timeline switch while streams are parked: nothing past the switch point is batched, each stream ends there', async () => {
  let switchLsn: Lsn | undefined;
  const harness = start(3, undefined, { timelineEnd: () => switchLsn });
  await until(() => harness.batcher.parkedCount === 3, 'all parked');
  const first = START + 700n;
  harness.watch.advance(first);
  await until(() => harness.writers.every((writer) => writer.contiguousEnd() === first), 'the first publish');
  await until(() => harness.batcher.parkedCount === 3, 'parked again');
  // As Timeline.switchPgTimeline: the switch is recorded before any WAL past it is published.
  switchLsn = START + 1000n;
  harness.watch.advance(START + 5000n);
  const ends = await Promise.all(harness.ends);
  for (const [index, writer] of harness.writers.entries()) {
    assert.equal(writer.contiguousEnd(), switchLsn, `stream ${index} ends exactly at the switch point`);
    assert.deepEqual(ends[index], { kind: 'timeline_end', sentLsn: switchLsn });
  }
  assert.equal(harness.batcher.parkedCount, 0);
});

test('streams parked at different positions (mid-page, mid-segment) are each sent from their own position, never past the watch', async () => {
  const starts = [START, START + 3n, START + 8192n - 1n, 2n * BigInt(SEGMENT_BYTES) - 5n];
  const harness = start(starts.length, undefined, { startLsns: starts });
  // The first parks at the watch (START), the others ahead of it; the publish goes past all of them, across a segment.
  const end = 2n * BigInt(SEGMENT_BYTES) + 4000n;
  harness.watch.advance(end);
  await until(() => harness.writers.every((writer) => writer.pieces.length > 0 && lastEnd(writer) === end), 'every stream reached the watch').catch((error: unknown) => {
    console.log(harness.writers.map((writer) => writer.pieces.map((piece) => `${piece.dataStart.toString(16)}+${piece.bytes} ${piece.how}`).join(', ')).join('\n'), harness.batcher.parkedCount);
    throw error;
  });
  assert.ok(harness.batch.calls.length > 0, 'some of it was batched');
  for (const [index, writer] of harness.writers.entries()) {
    let position = starts[index]!;
    for (const piece of writer.pieces) {
      assert.equal(piece.dataStart, position, `stream ${index} contiguous from its start`);
      const segmentEnd = (position / BigInt(SEGMENT_BYTES) + 1n) * BigInt(SEGMENT_BYTES);
      assert.ok(position + BigInt(piece.bytes) <= segmentEnd, 'a chunk never crosses a segment boundary');
      position += BigInt(piece.bytes);
    }
    assert.equal(position, end);
  }
  await stop(harness);
});

test('a stream aborted while the batch awaits storage is sent nothing more; the others are', async () => {
  const harness = start(3);
  await until(() => harness.batcher.parkedCount === 3, 'all parked');
  const aborted = new AbortController();
  // The third stream is replaced by one with its own signal, parked directly, aborted during the locate.
  const source = harness.source;
  const originalLocate = source.locate.bind(source);
  let abortNow = true;
  source.locate = async (lsn, endLsn) => {
    const chunk = await originalLocate(lsn, endLsn);
    if (abortNow) {
      abortNow = false;
      aborted.abort();
    }
    return chunk;
  };
  const lone = new FakeWriter();
  const park = harness.batcher.park(
    { writer: lone, signal: aborted.signal, replyDue: () => false, onSent: () => undefined, idleWaitMs: 60_000 },
    START,
  );
  await until(() => harness.batcher.parkedCount === 4, 'four parked');
  const end = START + 100n;
  harness.watch.advance(end);
  assert.deepEqual(await park, { sentLsn: START, kind: 'aborted' });
  await until(() => harness.writers.every((writer) => writer.contiguousEnd() === end), 'the others reached the watch');
  assert.equal(lone.pieces.length, 0, 'nothing was sent to the aborted stream');
  await stop(harness);
});

function lastEnd(writer: FakeWriter): Lsn {
  const last = writer.pieces.at(-1)!;
  return last.dataStart + BigInt(last.bytes);
}

test('parked streams with nothing to send get a reply-requesting keepalive every interval, and park again after each', async () => {
  const harness = start(2, undefined, { keepaliveIntervalMs: 40 });
  await until(() => harness.batcher.parkedCount === 2, 'both parked');
  // A standby's wal_receiver_timeout fires when nothing arrives: an idle parked stream must still hear from us.
  // (No deadline on the machine's speed: the keepalives must come, however slowly; without them this never ends.)
  while (!harness.writers.every((writer) => writer.keepalives.length >= 3)) await new Promise((resolve) => setTimeout(resolve, 20));
  for (const writer of harness.writers) assert.ok(writer.keepalives.every((keepalive) => keepalive.replyRequested));
  await until(() => harness.batcher.parkedCount === 2, 'parked again after the keepalives');
  // And a publish after idle periods is still batched, not sent alone.
  const end = START + 64n;
  harness.watch.advance(end);
  await until(() => harness.writers.every((writer) => writer.contiguousEnd() === end), 'the publish');
  for (const writer of harness.writers) assert.deepEqual(writer.pieces.map((piece) => piece.how), ['batch']);
  await stop(harness);
});

test('with the timeline history given, timelineEnd is asked once per stream until the history changes; a switch still ends each stream at its point', async () => {
  let history: readonly string[] = ['tli 1'];
  let switchLsn: Lsn | undefined;
  let asked = 0;
  const harness = start(3, undefined, {
    history: () => history,
    timelineEnd: () => {
      asked++;
      return switchLsn;
    },
  });
  await until(() => harness.batcher.parkedCount === 3, 'all parked');
  const askedBefore = asked;
  for (let publish = 1; publish <= 3; publish++) {
    const end = START + BigInt(publish) * 100n;
    harness.watch.advance(end);
    await until(() => harness.writers.every((writer) => writer.contiguousEnd() === end) && harness.batcher.parkedCount === 3, `publish ${publish}`);
  }
  assert.equal(asked - askedBefore, 3, 'once per stream in the first round, not again while the history is the same');
  assert.deepEqual(harness.batch.calls, [3, 3, 3]);
  // As Timeline.switchPgTimeline: a new history (a new value), recorded before any WAL past the switch is published.
  switchLsn = START + 1000n;
  history = ['tli 1', 'tli 2'];
  harness.watch.advance(START + 5000n);
  const ends = await Promise.all(harness.ends);
  for (const [index, writer] of harness.writers.entries()) {
    assert.equal(writer.contiguousEnd(), switchLsn, `stream ${index} ends exactly at the switch point`);
    assert.deepEqual(ends[index], { kind: 'timeline_end', sentLsn: switchLsn });
  }
});

test('the batch skips replyDue until the reply could be due, and still leaves for the request once it is: publishes keep coming, the replica is silent', async () => {
  // Half the replica timeout: a reply is due 200 ms after the replica's last message; the idle keepalive (also
  // 200 ms, counted from the last send) does not fire while publishes come every 20 ms, so only the due check asks.
  const harness = start(2, undefined, { replicaTimeoutMs: 400 });
  await until(() => harness.batcher.parkedCount === 2, 'both parked');
  harness.lastReply = Date.now();
  const silentSince = harness.lastReply;
  let end = START;
  // Bounded: a batch that never asked again would run out of publishes here and fail below.
  for (let publish = 0; publish < 200 && !harness.writers.every((writer) => writer.keepalives.length > 0); publish++) {
    end += 100n;
    harness.watch.advance(end);
    await until(() => harness.writers.every((writer) => writer.contiguousEnd() === end), `publish ${publish}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const askedAt = Date.now();
  for (const writer of harness.writers) {
    assert.deepEqual(writer.keepalives, [{ replyRequested: true }], 'one request, once the replica had been silent long enough');
    assert.equal(writer.pieces[0]?.how, 'batch', 'before that, the publishes were batched');
  }
  assert.ok(askedAt - silentSince >= 200, 'not before it was due');
  await stop(harness);
});

test('a source that locates without awaiting (WalReader.locateNow) is not asked the asynchronous way', async () => {
  const source = new FakeSourceWithNow();
  const harness = start(3, undefined, { source });
  await until(() => harness.batcher.parkedCount === 3, 'all parked');
  const end = START + 2n * BigInt(MAX_SEND_BYTES) + 10n;
  harness.watch.advance(end);
  await until(() => harness.writers.every((writer) => writer.contiguousEnd() === end), 'every stream reached the watch');
  assert.deepEqual(harness.batch.calls, [3, 3, 3]);
  assert.equal(source.nowLocates, 3, 'one per round');
  assert.equal(source.locates, 0);
  await stop(harness);
});

test('the batch asks prefetchNow where the writer has it: a cached range goes to the send without a prefetch promise, a read under way is waited for', async () => {
  const harness = start(3);
  await until(() => harness.batcher.parkedCount === 3, 'all three parked');
  let nowCalls = 0;
  let reading: (() => void) | undefined;
  for (const writer of harness.writers) {
    writer.prefetchNow = () => {
      nowCalls++;
      // The first answer is a read in progress; later ones find the range cached.
      if (nowCalls > 1) return undefined;
      return new Promise<void>((resolve) => (reading = resolve));
    };
  }
  const prefetchesBefore = harness.writers.map((writer) => writer.prefetches);
  try {
    const first = START + 100n;
    harness.watch.advance(first);
    await until(() => reading !== undefined, 'the batch asked prefetchNow');
    for (let turn = 0; turn < 20; turn++) await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(harness.batch.calls, [], 'nothing is sent while the read is under way');
    reading?.();
    await until(() => harness.writers.every((writer) => writer.contiguousEnd() === first), 'sent once the read finished');
    const second = first + 200n;
    harness.watch.advance(second);
    await until(() => harness.writers.every((writer) => writer.contiguousEnd() === second), 'the next publish sent');
    assert.deepEqual(harness.batch.calls, [3, 3]);
    assert.equal(nowCalls, 2, 'once per batch');
    assert.deepEqual(harness.writers.map((writer) => writer.prefetches), prefetchesBefore, 'no prefetch promise where prefetchNow answered');
  } finally {
    await stop(harness);
  }
});

test('a backend that stages (ts) is asked once per group and round, after verification, and nothing is sent before its read finished', async () => {
  const harness = start(3, () => true, { startLsns: [START, START, START + 40n] });
  await until(() => harness.batcher.parkedCount === 3, 'all three parked');
  const staged: { readonly fileOffset: number; readonly byteCount: number; readonly verifiesBefore: number }[] = [];
  let reading: (() => void) | undefined;
  harness.batch.stage = (chunk) => {
    staged.push({ fileOffset: chunk.fileOffset, byteCount: chunk.byteCount, verifiesBefore: harness.syncVerifies });
    // The first group's read is under way until the test ends it; later ones answer at once (staged already).
    if (staged.length > 1) return undefined;
    return new Promise<void>((resolve) => (reading = resolve));
  };
  try {
    const first = START + 100n;
    harness.watch.advance(first);
    await until(() => reading !== undefined, 'the batch staged the first group');
    for (let turn = 0; turn < 20; turn++) await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(harness.batch.calls, [], 'nothing is sent while the read is under way');
    assert.equal(staged.length, 1, 'the second group waits for the first');
    reading?.();
    await until(() => harness.writers.every((writer) => writer.pieces.length > 0 && lastEnd(writer) === first), 'sent once the read finished');
    // Two positions: two groups, each staged once (not once per stream), each after its chunk was verified.
    assert.deepEqual(harness.batch.calls, [2, 1]);
    assert.equal(staged.length, 2);
    assert.deepEqual(staged.map(({ byteCount }) => byteCount), [100, 60]);
    assert.ok(staged.every(({ verifiesBefore }, index) => verifiesBefore >= index + 1), 'staged after verifying');
    const second = first + 200n;
    harness.watch.advance(second);
    await until(() => harness.writers.every((writer) => lastEnd(writer) === second), 'the next publish sent');
    assert.deepEqual(harness.batch.calls, [2, 1, 3]);
    assert.equal(staged.length, 3, 'once per group and round');
  } finally {
    await stop(harness);
  }
});

/** Pins as Timeline.pinSegment does, without its start check (retention never removes a pinned segment). */
class CountingPinner implements SegmentPinner {
  private readonly counts = new SegmentPins();
  readonly pins = this.counts.pinned;
  pinSegment(segno: bigint): () => void {
    return this.counts.pin(segno);
  }
}

/** Waits (timers, not turns: releasing closes files on the thread pool) until `condition` holds, at most 10 s. */
async function eventually(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition()) {
    assert.ok(Date.now() < deadline, `never: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

test("a stream parked in the batch does not keep its own readers' segments pinned while the batch sends it on; a resume reopens them", async () => {
  // Real readers over real segment files, pinning as the timeline does: the stream's send and prefetch readers, and
  // the batcher's own. The stream starts behind, so its loop reads segment 1 itself before it catches up and parks.
  const dir = await mkdtemp(join(tmpdir(), 'walcast-fanout-pins-'));
  const layout = { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1, timelineStartLsn: 0n };
  for (let segno = 0n; segno < 6n; segno++) await writeFile(join(dir, segmentFileName(1, segno, SEGMENT_BYTES)), Buffer.alloc(SEGMENT_BYTES));
  const pinner = new CountingPinner();
  const streamSource = new WalReader(dir, layout, pinner);
  const prefetchSource = new WalReader(dir, layout, pinner);
  const batchSource = new WalReader(dir, layout, pinner);
  const watch = new LsnWatch(START + 300n * 1024n);
  const batch = new FakeBatch();
  const batcher = new FanoutBatcher(watch, SEGMENT_BYTES, batch, () => batchSource);
  const writer = new FakeWriter();
  const controller = new AbortController();
  const ended = sendWal({
    replicaName: 'r0',
    startLsn: START,
    segmentBytes: SEGMENT_BYTES,
    endWatch: watch,
    source: streamSource,
    prefetchSource,
    writer,
    signal: controller.signal,
    stopAtEnd: false,
    shouldStop: () => false,
    onSent: () => undefined,
    replicaTimeoutMs: 60_000,
    lastReplyAtMs: () => Date.now(),
    keepaliveIntervalMs: 60_000,
    fanout: batcher,
  });
  try {
    await eventually(() => batcher.parkedCount === 1 && writer.contiguousEnd() === watch.get(), 'caught up by its own loop and parked');
    assert.ok(writer.pieces.every((piece) => piece.how === 'alone'), 'the catch-up came from the stream\'s own readers');
    // The batch sends it through segments 2, 3 and 4 while it stays parked.
    for (let segno = 2n; segno <= 4n; segno++) {
      watch.advance(segno * BigInt(SEGMENT_BYTES) + 100n);
      await eventually(() => writer.contiguousEnd() === watch.get(), `the batch sent into segment ${segno}`);
    }
    assert.equal(batcher.parkedCount, 1, 'still parked');
    assert.ok(writer.pieces.some((piece) => piece.how === 'batch'));
    // Only the batcher's reader holds segments now (the one it sends from and the one before); segment 1 can go.
    await eventually(() => !pinner.pins.has(1n), 'segment 1 unpinned');
    assert.deepEqual([...pinner.pins.keys()].sort(), [3n, 4n]);
    // Out of the batch (its queue at the bound): the loop reads from its readers again, which reopen segment 4.
    writer.batchable = false;
    watch.advance(5n * BigInt(SEGMENT_BYTES) - 100n);
    await eventually(() => writer.contiguousEnd() === watch.get(), 'sent by its own loop after the resume');
    assert.equal(writer.pieces.at(-1)?.how, 'alone');
    assert.ok(pinner.pins.has(4n), 'the loop\'s reader pinned the segment it reopened');
  } finally {
    controller.abort();
    await ended.catch(() => undefined);
    await Promise.all([streamSource.close(), prefetchSource.close(), batchSource.close()]);
    await rm(dir, { recursive: true, force: true });
  }
  assert.equal(pinner.pins.size, 0, 'every pin was released once the readers closed');
});
