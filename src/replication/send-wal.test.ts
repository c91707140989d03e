/**
 * The sender loop against in-memory fakes of storage and the I/O backend (style anchor 3): what it sends, in which
 * order, when it keeps alive, and how each kind of stream ends.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CHUNK_RUN_CHUNKS_MAX, type StreamWriter, type WalChunk } from '../io/backend.js';
import type { Lsn } from '../lsn.js';
import { LsnWatch } from '../timeline/lsn-watch.js';
import { PublishTiming } from '../timeline/publish-timing.js';
import { PREFETCH_PIECE_BYTES, PREFETCH_WINDOW_BYTES, Prefetcher, SEND_BUDGET_PER_TURN_BYTES, sendWal, type PublishClock, type SendWalOptions, type WalSource } from './send-wal.js';
import { MAX_SEND_BYTES } from './stream-messages.js';

const SEGMENT_BYTES = 1024 * 1024;

interface Sent {
  readonly kind: 'chunk' | 'message';
  readonly dataStart?: Lsn;
  readonly walEnd?: Lsn;
  readonly bytes: number;
  readonly type?: string;
  readonly replyRequested?: boolean;
}

class RecordingWriter implements StreamWriter {
  readonly sent: Sent[] = [];
  readonly path = 'recording';
  bytesSent = 0;
  private readonly waiters: { matches: (entry: Sent) => boolean; resolve: (entry: Sent) => void }[] = [];
  /** Called after each recorded entry, in order: tests use it to play the replica (a reply arrives). */
  onRecord: (entry: Sent) => void = () => undefined;
  /** afterWritten observers not yet answered: the test decides when the pretend socket wrote (writeAll). */
  readonly writeObservers: (() => void)[] = [];
  /** While set, sendChunk waits for it: a sender stuck in a send is busy, not waiting on the watch. */
  gate: Promise<void> | undefined;

  async sendChunk(header: Buffer, chunk: WalChunk): Promise<void> {
    if (this.gate !== undefined) await this.gate;
    assert.equal(header.readUInt32BE(1), 4 + 25 + chunk.byteCount, 'CopyData length covers header and payload');
    this.record({ kind: 'chunk', dataStart: header.readBigUInt64BE(6), walEnd: header.readBigUInt64BE(14), bytes: chunk.byteCount });
    this.bytesSent += 30 + chunk.byteCount;
  }
  async sendMessage(bytes: Buffer): Promise<void> {
    // A keepalive: 'd', length, 'k', walEnd at 6, clock at 14, replyRequested at 22.
    this.record({ kind: 'message', type: String.fromCharCode(bytes[5] ?? 0), walEnd: bytes.readBigUInt64BE(6), bytes: bytes.length, replyRequested: bytes[22] === 1 });
  }
  /** Replaceable: a test of the prefetcher records and holds requests. */
  prefetch: (chunk: WalChunk) => Promise<void> = async () => undefined;
  async release(): Promise<void> {}
  afterWritten(observer: () => void): boolean {
    this.writeObservers.push(observer);
    return true;
  }

  /** The pretend socket wrote everything accepted so far. */
  writeAll(): void {
    for (const observer of this.writeObservers.splice(0)) observer();
  }

  /** Resolves with the first entry (already sent or sent later) that matches: an event, not a poll. */
  waitForSent(matches: (entry: Sent) => boolean): Promise<Sent> {
    const found = this.sent.find(matches);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve) => this.waiters.push({ matches, resolve }));
  }

  private record(entry: Sent): void {
    this.sent.push(entry);
    this.onRecord(entry);
    for (const waiter of this.waiters.filter((candidate) => candidate.matches(entry))) {
      this.waiters.splice(this.waiters.indexOf(waiter), 1);
      waiter.resolve(entry);
    }
  }
}

/** An LSN watch that tells the test when the sender starts waiting on it: an event instead of a sleep. */
class ObservedLsnWatch extends LsnWatch {
  private resolveFirstWait: () => void = () => undefined;
  readonly firstWait = new Promise<void>((resolve) => (this.resolveFirstWait = resolve));

  override waitBeyond(position: Lsn, timeoutMs: number, signal?: AbortSignal): Promise<Lsn | undefined> {
    const waiting = super.waitBeyond(position, timeoutMs, signal);
    this.resolveFirstWait();
    return waiting;
  }
}

/** Storage fake: every segment is one pretend file; locate cuts at the segment end like the real reader. */
const fakeSource: WalSource = {
  async locate(lsn: Lsn, endLsn: Lsn): Promise<WalChunk> {
    const segmentEnd = (lsn / BigInt(SEGMENT_BYTES) + 1n) * BigInt(SEGMENT_BYTES);
    const until = endLsn < segmentEnd ? endLsn : segmentEnd;
    return { file: { fd: -1, path: 'fake' }, fileOffset: Number(lsn % BigInt(SEGMENT_BYTES)), byteCount: Number(until - lsn) };
  },
};

function options(overrides: Partial<SendWalOptions> & { endWatch: LsnWatch; writer: StreamWriter; signal: AbortSignal }): SendWalOptions {
  return {
    replicaName: 'test-replica',
    startLsn: 0x100010n,
    segmentBytes: SEGMENT_BYTES,
    source: fakeSource,
    prefetchSource: fakeSource,
    stopAtEnd: false,
    shouldStop: () => false,
    onSent: () => undefined,
    // A replica that always has just replied: no reply is ever due unless a test says otherwise.
    replicaTimeoutMs: 60_000,
    lastReplyAtMs: () => Date.now(),
    keepaliveIntervalMs: 30,
    ...overrides,
  };
}

test('streams contiguous chunks from exactly the start LSN up to the end, then keeps alive asking for replies', async () => {
  const endWatch = new LsnWatch(0x100010n + 3n * BigInt(SEGMENT_BYTES) + 77n);
  const writer = new RecordingWriter();
  const controller = new AbortController();
  let lastSent = 0n;
  const running = sendWal(options({ endWatch, writer, signal: controller.signal, onSent: (lsn) => (lastSent = lsn) }));
  await writer.waitForSent((entry) => entry.kind === 'message');
  controller.abort();
  const end = await running;
  assert.equal(end.kind, 'aborted');
  assert.equal(end.sentLsn, endWatch.get());
  assert.equal(lastSent, endWatch.get());
  const chunks = writer.sent.filter((entry) => entry.kind === 'chunk');
  let expected = 0x100010n;
  for (const chunk of chunks) {
    assert.equal(chunk.dataStart, expected, 'no gap, no overlap');
    assert.ok(chunk.bytes > 0 && chunk.bytes <= MAX_SEND_BYTES);
    assert.equal(chunk.walEnd, endWatch.get(), 'walEnd is the current end, never 0/0');
    expected += BigInt(chunk.bytes);
  }
  assert.equal(expected, endWatch.get());
  const keepalive = writer.sent.find((entry) => entry.kind === 'message');
  assert.equal(keepalive?.type, 'k');
  assert.equal(keepalive?.replyRequested, true);
});

test('new WAL is sent as soon as the watch advances', { timeout: 30_000 }, async () => {
  const endWatch = new ObservedLsnWatch(0x100010n);
  const writer = new RecordingWriter();
  const controller = new AbortController();
  // A one-minute interval: only the watch advancing can wake the sender before the test's timeout.
  const running = sendWal(options({ endWatch, writer, signal: controller.signal, keepaliveIntervalMs: 60_000 }));
  // Nothing is sent before the sender starts waiting on the watch.
  await endWatch.firstWait;
  assert.equal(writer.sent.length, 0);
  endWatch.advance(0x100020n);
  const first = await writer.waitForSent(() => true);
  assert.deepEqual(first, { kind: 'chunk', dataStart: 0x100010n, walEnd: 0x100020n, bytes: 16 });
  controller.abort();
  assert.equal((await running).kind, 'aborted');
});

test('ends with caught_up when the stop rule says so after an idle interval', async () => {
  const endWatch = new LsnWatch(0x100100n);
  const writer = new RecordingWriter();
  const end = await sendWal(options({ endWatch, writer, signal: new AbortController().signal, shouldStop: (sent) => sent === 0x100100n }));
  assert.equal(end.kind, 'caught_up');
  assert.ok(end.kind === 'caught_up' && /^ending streaming to test-replica at 0\/100100, receiver is caughtup and there is no computes$/.test(end.message));
});

test('a recovery stream ends at the flush LSN it started with, even if more arrives', async () => {
  const endWatch = new LsnWatch(0x100100n);
  const writer = new RecordingWriter();
  const running = sendWal(options({ endWatch, writer, signal: new AbortController().signal, stopAtEnd: true }));
  endWatch.advance(0x200000n);
  const end = await running;
  assert.equal(end.kind, 'recovery_finished');
  assert.equal(end.sentLsn, 0x100100n);
});

test('a busy stream asks a silent replica for a reply once, and again only after the replica answered', async () => {
  const startLsn = 0x100010n;
  const endWatch = new LsnWatch(startLsn + 3n * BigInt(SEGMENT_BYTES));
  const writer = new RecordingWriter();
  // The replica last spoke long before half of the timeout; it answers once, after the fifth chunk.
  let lastReplyAtMs = Date.now() - 10_000;
  let chunksSeen = 0;
  writer.onRecord = (entry) => {
    if (entry.kind === 'chunk' && ++chunksSeen === 5) lastReplyAtMs += 1;
  };
  const end = await sendWal(options({ endWatch, writer, signal: new AbortController().signal, stopAtEnd: true, replicaTimeoutMs: 1000, lastReplyAtMs: () => lastReplyAtMs }));
  assert.equal(end.kind, 'recovery_finished');
  const keepalives = writer.sent.flatMap((entry, index) => (entry.kind === 'message' ? [{ entry, index }] : []));
  assert.equal(keepalives.length, 2, 'one request before the first chunk, one after the reply; none while waiting for it');
  for (const { entry } of keepalives) {
    assert.equal(entry.type, 'k');
    assert.equal(entry.replyRequested, true);
  }
  assert.equal(keepalives[0]?.index, 0);
  assert.equal(keepalives[0]?.entry.walEnd, startLsn, 'walEnd of a keepalive is the sent position');
  assert.equal(keepalives[1]?.index, 6, 'asked again right after the reply that followed the fifth chunk');
  assert.equal(keepalives[1]?.entry.walEnd, writer.sent[7]?.dataStart, 'the keepalive sits between whole chunks, at the sent position');
});

test('a busy stream does not ask a replica that replied within half the timeout', async () => {
  const endWatch = new LsnWatch(0x100010n + 3n * BigInt(SEGMENT_BYTES));
  const writer = new RecordingWriter();
  const end = await sendWal(options({ endWatch, writer, signal: new AbortController().signal, stopAtEnd: true, replicaTimeoutMs: 60_000, lastReplyAtMs: () => Date.now() }));
  assert.equal(end.kind, 'recovery_finished');
  assert.ok(writer.sent.length > 20, 'many chunks were sent');
  assert.deepEqual(writer.sent.filter((entry) => entry.kind === 'message'), []);
});

test('an idle stream asks for a reply within half the replica timeout even when the keepalive interval is longer', { timeout: 30_000 }, async () => {
  const endWatch = new LsnWatch(0x100010n);
  const writer = new RecordingWriter();
  const controller = new AbortController();
  // With a one-hour interval, only the half-timeout bound can make this keepalive go out.
  const running = sendWal(options({ endWatch, writer, signal: controller.signal, keepaliveIntervalMs: 3_600_000, replicaTimeoutMs: 200 }));
  const keepalive = await writer.waitForSent((entry) => entry.kind === 'message');
  controller.abort();
  assert.equal((await running).kind, 'aborted');
  assert.equal(keepalive.type, 'k');
  assert.equal(keepalive.replyRequested, true);
});

test('a live stream whose timeline ends sends up to the switch point, never past it, and ends with timeline_end', { timeout: 30_000 }, async () => {
  const endWatch = new ObservedLsnWatch(0x100100n);
  const writer = new RecordingWriter();
  const controller = new AbortController();
  let timelineEnd: Lsn | undefined;
  const running = sendWal(options({ endWatch, writer, signal: controller.signal, keepaliveIntervalMs: 60_000, timelineEnd: () => timelineEnd }));
  await endWatch.firstWait;
  // The switch is recorded before WAL of the new timeline is published (Timeline.switchPgTimeline), as ingest does.
  timelineEnd = 0x100180n;
  endWatch.advance(0x100400n);
  const end = await running;
  assert.deepEqual(end, { kind: 'timeline_end', sentLsn: 0x100180n });
  const chunks = writer.sent.filter((entry) => entry.kind === 'chunk');
  const last = chunks.at(-1);
  assert.equal((last?.dataStart ?? 0n) + BigInt(last?.bytes ?? 0), 0x100180n, 'the last chunk ends at the switch point');
  assert.ok(chunks.every((chunk) => (chunk.dataStart ?? 0n) + BigInt(chunk.bytes) <= 0x100180n), 'no byte past the switch point');
});

test('a stream of a historic timeline started before its end stops exactly there', async () => {
  const endWatch = new LsnWatch(0x100010n + 2n * BigInt(SEGMENT_BYTES));
  const writer = new RecordingWriter();
  const switchLsn = 0x100010n + BigInt(SEGMENT_BYTES) + 5n;
  const end = await sendWal(options({ endWatch, writer, signal: new AbortController().signal, timelineEnd: () => switchLsn }));
  assert.deepEqual(end, { kind: 'timeline_end', sentLsn: switchLsn });
  const total = writer.sent.filter((entry) => entry.kind === 'chunk').reduce((sum, chunk) => sum + chunk.bytes, 0);
  assert.equal(BigInt(total), switchLsn - 0x100010n);
});

test('the prefetcher requests the window ahead in pieces and waits only for the piece being sent from', async () => {
  const requested: { offset: number; bytes: number; release: () => void }[] = [];
  const writer = new RecordingWriter();
  writer.prefetch = (chunk: WalChunk) =>
    new Promise<void>((resolve) => requested.push({ offset: chunk.fileOffset, bytes: chunk.byteCount, release: resolve }));
  const prefetcher = new Prefetcher({ prefetchSource: fakeSource, writer });
  const piece = BigInt(PREFETCH_PIECE_BYTES);
  const start = 4n * BigInt(SEGMENT_BYTES) + 100n;
  const end = start + 64n * piece;

  // Bounded: the requests reach the writer after the (asynchronous) locate, within a few turns.
  const untilRequested = async (count: number): Promise<void> => {
    for (let turn = 0; turn < 1000 && requested.length < count; turn += 1) await new Promise((resolve) => setImmediate(resolve));
    assert.equal(requested.length, count);
  };
  let currentCached = false;
  const waiting = prefetcher.ensureCached(start, end).then(() => (currentCached = true));
  // Locate is asynchronous: let the requests reach the writer.
  await untilRequested(PREFETCH_WINDOW_BYTES / PREFETCH_PIECE_BYTES + 1);
  assert.equal(prefetcher.pendingCount, PREFETCH_WINDOW_BYTES / PREFETCH_PIECE_BYTES + 1, 'current piece plus a window ahead');
  assert.deepEqual(requested[0] && { offset: requested[0].offset, bytes: requested[0].bytes }, { offset: 100, bytes: PREFETCH_PIECE_BYTES - 100 }, 'the current piece from exactly the send position');
  for (const later of requested.slice(1)) assert.equal(later.bytes, PREFETCH_PIECE_BYTES, 'later pieces are whole');
  // Later pieces still in flight do not hold the sender back once its own piece is cached.
  requested[0]?.release();
  await waiting;
  assert.equal(currentCached, true);

  // Moving into the next piece drops the old one and asks for exactly one more piece at the far end.
  const before = requested.length;
  const next = prefetcher.ensureCached(start + piece, end);
  await untilRequested(before + 1);
  requested[1]?.release();
  await next;
  assert.equal(requested.length, before + 1);
  assert.ok(prefetcher.pendingCount <= PREFETCH_WINDOW_BYTES / PREFETCH_PIECE_BYTES + 1);
  for (const request of requested) request.release();
});

test('a chunk that crosses into the next piece waits for both pieces (their reads run at idle I/O priority)', async () => {
  const requested: { offset: number; bytes: number; release: () => void }[] = [];
  const writer = new RecordingWriter();
  writer.prefetch = (chunk: WalChunk) =>
    new Promise<void>((resolve) => requested.push({ offset: chunk.fileOffset, bytes: chunk.byteCount, release: resolve }));
  const prefetcher = new Prefetcher({ prefetchSource: fakeSource, writer });
  const piece = BigInt(PREFETCH_PIECE_BYTES);
  const start = 4n * BigInt(SEGMENT_BYTES) + piece - 8192n;
  const end = start + 16n * piece;
  const untilRequested = async (count: number): Promise<void> => {
    for (let turn = 0; turn < 1000 && requested.length < count; turn += 1) await new Promise((resolve) => setImmediate(resolve));
    assert.ok(requested.length >= count);
  };
  let cached = false;
  const waiting = prefetcher.ensureCached(start, end, start + 65536n).then(() => (cached = true));
  await untilRequested(2);
  requested[0]?.release();
  for (let turn = 0; turn < 20; turn += 1) await new Promise((resolve) => setImmediate(resolve));
  assert.equal(cached, false, 'the second piece is still being read');
  requested[1]?.release();
  await waiting;
  assert.equal(prefetcher.ensureCachedNow(start, end, start + 65536n), undefined, 'both pieces cached: nothing to wait for');
  // A chunk inside one piece waits for that piece only.
  assert.equal(prefetcher.ensureCachedNow(start + 8192n, end, start + 8192n + 65536n), undefined);
  for (const request of requested) request.release();
});

test('the prefetcher verifies each piece once it is cached, and the sender waits for its own piece to verify; a failed check ahead is ignored', async () => {
  const cached = new Set<WalChunk>();
  const writer = new RecordingWriter();
  writer.prefetch = async (chunk: WalChunk) => {
    cached.add(chunk);
  };
  const checks: { offset: number; lsn: Lsn; bytes: number; settle: (error?: Error) => void }[] = [];
  const verify = (chunk: WalChunk, chunkLsn: Lsn): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      assert.ok(cached.has(chunk), 'a piece is checked once it is cached');
      checks.push({ offset: chunk.fileOffset, lsn: chunkLsn, bytes: chunk.byteCount, settle: (error) => (error === undefined ? resolve() : reject(error)) });
    });
  const prefetcher = new Prefetcher({ prefetchSource: fakeSource, writer, verifyAhead: verify });
  const piece = BigInt(PREFETCH_PIECE_BYTES);
  const start = 4n * BigInt(SEGMENT_BYTES) + 100n;
  const end = start + 64n * piece;
  const pieces = PREFETCH_WINDOW_BYTES / PREFETCH_PIECE_BYTES + 1;
  let currentCached = false;
  const waiting = prefetcher.ensureCached(start, end).then(() => (currentCached = true));
  for (let turn = 0; turn < 1000 && checks.length < pieces; turn += 1) await new Promise((resolve) => setImmediate(resolve));
  assert.equal(checks.length, pieces, 'every piece of the window is checked once it is cached');
  const pieceLsn = (index: number): Lsn => (index === 0 ? start : start - 100n + BigInt(index) * piece);
  assert.deepEqual(
    checks.map((check) => [check.lsn, check.offset, check.bytes]).sort((a, b) => Number(BigInt(a[0]!) - BigInt(b[0]!))),
    Array.from({ length: pieces }, (_, index) => [pieceLsn(index), Number(pieceLsn(index) % BigInt(SEGMENT_BYTES)), index === 0 ? PREFETCH_PIECE_BYTES - 100 : PREFETCH_PIECE_BYTES]),
    'each check covers its piece, at its LSN',
  );
  // Cached is not enough: the sender's own piece must have verified (its pages' bits are set when the sender gets there).
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(currentCached, false, 'the sender waits for its piece to verify');
  const checkAt = (lsn: Lsn) => checks.find((check) => check.lsn === lsn);
  checkAt(pieceLsn(1))?.settle(new Error('a corrupted page ahead'));
  checkAt(start)?.settle();
  await waiting;
  assert.equal(currentCached, true);
  // The failed check ahead does not hold back or fail the wait for that piece: the sender's own check decides.
  await prefetcher.ensureCached(start - 100n + piece, end);
  for (const check of checks) if (check.lsn >= pieceLsn(2)) check.settle();

  // A piece the end watch cuts short (a live stream's, with the writer's partial page) is left to the sender's check.
  const live = new Prefetcher({ prefetchSource: fakeSource, writer, verifyAhead: verify });
  const checked = checks.length;
  await live.ensureCached(end, end + piece / 2n);
  for (let turn = 0; turn < 10; turn += 1) await new Promise((resolve) => setImmediate(resolve));
  assert.equal(checks.length, checked, 'no check ahead of a piece cut by the end watch');
});

test('the prefetcher does not check a piece whose file its reader closed while the piece was being cached', async () => {
  const closedDuringPrefetch = new Set<string>();
  const writer = new RecordingWriter();
  // Every other piece's file is retired (closed: true) before its prefetch settles, as a reader moving two segments on does.
  const source: WalSource = {
    locate: async (lsn, endLsn) => {
      const chunk = await fakeSource.locate(lsn, endLsn);
      return { ...chunk, file: { fd: -1, path: `at ${lsn}`, closed: false } };
    },
  };
  let piecesSeen = 0;
  writer.prefetch = async (chunk: WalChunk) => {
    if (piecesSeen++ % 2 === 1) {
      (chunk.file as { closed: boolean }).closed = true;
      closedDuringPrefetch.add(chunk.file.path);
    }
  };
  const checked: WalChunk[] = [];
  const prefetcher = new Prefetcher({ prefetchSource: source, writer, verifyAhead: async (chunk) => void checked.push(chunk) });
  const start = 4n * BigInt(SEGMENT_BYTES);
  await prefetcher.ensureCached(start, start + 64n * BigInt(PREFETCH_PIECE_BYTES));
  const pieces = PREFETCH_WINDOW_BYTES / PREFETCH_PIECE_BYTES;
  for (let turn = 0; turn < 1000 && checked.length + closedDuringPrefetch.size < pieces; turn += 1) await new Promise((resolve) => setImmediate(resolve));
  assert.ok(closedDuringPrefetch.size > 0 && checked.length > 0);
  assert.equal(checked.length + closedDuringPrefetch.size, pieces, 'every piece was either checked or skipped');
  for (const chunk of checked) assert.equal(chunk.file.closed, false, 'no check of a closed file');
});

test('the prefetcher hands the pieces to the writer in order even when their locates finish out of order', async () => {
  const located: { lsn: Lsn; release: () => void }[] = [];
  const source: WalSource = {
    locate: (lsn, endLsn) =>
      new Promise<WalChunk>((resolve) => {
        located.push({ lsn, release: () => void fakeSource.locate(lsn, endLsn).then((chunk) => resolve({ ...chunk, file: { fd: -1, path: `at ${lsn}` } })) });
      }),
  };
  const handed: string[] = [];
  const writer = new RecordingWriter();
  writer.prefetch = async (chunk: WalChunk) => {
    handed.push(chunk.file.path);
  };
  const prefetcher = new Prefetcher({ prefetchSource: source, writer });
  const start = 4n * BigInt(SEGMENT_BYTES);
  const pieces = PREFETCH_WINDOW_BYTES / PREFETCH_PIECE_BYTES;
  const waiting = prefetcher.ensureCached(start, start + 64n * BigInt(PREFETCH_PIECE_BYTES));
  assert.equal(located.length, pieces, 'every piece of the window is being located');
  // The last piece's locate finishes first, the first piece's last (as when they all waited for the same open).
  for (const entry of [...located].reverse()) {
    entry.release();
    for (let turn = 0; turn < 5; turn += 1) await new Promise((resolve) => setImmediate(resolve));
  }
  await waiting;
  for (let turn = 0; turn < 100 && handed.length < pieces; turn += 1) await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(
    located.map((entry) => entry.lsn),
    [...located.map((entry) => entry.lsn)].sort((a, b) => Number(a - b)),
    'pieces are requested in order',
  );
  assert.deepEqual(handed, located.map((entry) => `at ${entry.lsn}`), 'and handed to the writer in the same order');
});

/** A publish clock that tells the test each time its sender starts waiting on the watch. */
function observedClock(timing: PublishTiming): { clock: PublishClock & { close(): void }; nextWait: () => Promise<void> } {
  const inner = timing.openStream();
  let waiters: (() => void)[] = [];
  const clock = {
    waiting: (sentLsn: Lsn) => {
      inner.waiting(sentLsn);
      for (const resolve of waiters.splice(0)) resolve();
    },
    chunkAccepted: (lsn: Lsn) => inner.chunkAccepted(lsn),
    written: (lsn: Lsn) => inner.written(lsn),
    close: () => inner.close(),
  };
  return { clock, nextWait: () => new Promise<void>((resolve) => waiters.push(resolve)) };
}

test('publish timing: a waiting stream counts a publish once its chunk is written, not when it is accepted', async () => {
  const timing = new PublishTiming();
  const start = 0x100010n;
  const endWatch = new LsnWatch(start, timing);
  const writers = [new RecordingWriter(), new RecordingWriter()];
  const controller = new AbortController();
  const clocks = writers.map(() => observedClock(timing));
  const waits = clocks.map(({ nextWait }) => nextWait());
  const running = writers.map((writer, index) => sendWal(options({ endWatch, writer, signal: controller.signal, startLsn: start, publishClock: clocks[index]?.clock })));
  await Promise.all(waits);
  assert.equal(timing.liveStreams(), 2);
  const sentChunks = writers.map((writer) => writer.waitForSent((entry) => entry.kind === 'chunk'));
  const waitsAgain = clocks.map(({ nextWait }) => nextWait());
  endWatch.advance(start + 1000n);
  await Promise.all(sentChunks);
  await Promise.all(waitsAgain);
  // Accepted by the backend, not yet written: nothing observed.
  assert.equal(timing.publishToSocket.waiting.count, 0);
  assert.equal(timing.fanout.count, 0);
  writers[0]?.writeAll();
  assert.equal(timing.publishToSocket.waiting.count, 1);
  assert.equal(timing.fanout.count, 0, 'the fan-out ends with the last stream');
  writers[1]?.writeAll();
  assert.equal(timing.publishToSocket.waiting.count, 2);
  assert.equal(timing.publishToSocket.busy.count, 0);
  assert.equal(timing.fanout.count, 1);
  assert.ok(timing.fanout.sumSeconds >= 0 && timing.fanout.sumSeconds < 60);
  controller.abort();
  await Promise.all(running);
  for (const { clock } of clocks) clock.close();
  assert.equal(timing.liveStreams(), 0);
});

test('publish timing: a publish landing while a live stream is still sending counts as busy; a catching-up stream is not timed', async () => {
  const timing = new PublishTiming();
  const start = 0x100010n;
  const endWatch = new LsnWatch(start, timing);
  const writer = new RecordingWriter();
  const controller = new AbortController();
  const { clock, nextWait } = observedClock(timing);
  const firstWait = nextWait();
  const running = sendWal(options({ endWatch, writer, signal: controller.signal, startLsn: start, publishClock: clock }));
  await firstWait;
  // Stuck in its first send of P1, the stream is busy when P2 lands.
  let openGate: () => void = () => undefined;
  writer.gate = new Promise((resolve) => (openGate = resolve));
  endWatch.advance(start + 100n);
  const p1 = writer.waitForSent((entry) => entry.kind === 'chunk');
  await new Promise((resolve) => setImmediate(resolve));
  endWatch.advance(start + 200n);
  writer.gate = undefined;
  const waitedAgain = nextWait();
  openGate();
  await p1;
  await writer.waitForSent((entry) => entry.kind === 'chunk' && entry.dataStart === start + 100n);
  await waitedAgain;
  writer.writeAll();
  assert.equal(timing.publishToSocket.waiting.count, 1, 'P1 woke the waiting stream');
  assert.equal(timing.publishToSocket.busy.count, 1, 'P2 landed while it was sending P1');
  assert.equal(timing.fanout.count, 2);

  // A second stream far behind, never waiting: publishes do not wait for it.
  const lagging = new RecordingWriter();
  let openLaggingGate: () => void = () => undefined;
  lagging.gate = new Promise((resolve) => (openLaggingGate = resolve));
  const laggingClock = timing.openStream();
  const laggingRun = sendWal(options({ endWatch, writer: lagging, signal: controller.signal, startLsn: start, publishClock: laggingClock }));
  const waitedAfterP3 = nextWait();
  endWatch.advance(start + 300n);
  await writer.waitForSent((entry) => entry.kind === 'chunk' && entry.dataStart === start + 200n);
  await waitedAfterP3;
  writer.writeAll();
  assert.equal(timing.fanout.count, 3, 'the catching-up stream does not hold the fan-out open');
  assert.equal(timing.liveStreams(), 1);
  controller.abort();
  openLaggingGate();
  await Promise.all([running, laggingRun]);
  laggingClock.close();
  clock.close();
});

test('a slow storage step (a fetch from object storage) keeps the stream alive: reply-requesting keepalives at the sent position until it returns', async () => {
  const startLsn = 0x100010n;
  const endWatch = new LsnWatch(startLsn + 1000n);
  const writer = new RecordingWriter();
  const controller = new AbortController();
  let release: () => void = () => undefined;
  const released = new Promise<void>((resolve) => (release = resolve));
  const slowSource: WalSource = {
    async locate(lsn, endLsn) {
      await released;
      return fakeSource.locate(lsn, endLsn);
    },
  };
  const running = sendWal(options({ endWatch, writer, signal: controller.signal, source: slowSource, prefetchSource: fakeSource, keepaliveIntervalMs: 20 }));
  // Three keepalives while the first chunk's storage step has not returned.
  for (let count = 1; count <= 3; count++) await writer.waitForSent(() => writer.sent.filter((entry) => entry.kind === 'message').length >= count);
  assert.equal(writer.sent.filter((entry) => entry.kind === 'chunk').length, 0, 'nothing was sent before storage answered');
  for (const entry of writer.sent) {
    assert.equal(entry.type, 'k');
    assert.equal(entry.replyRequested, true);
    assert.equal(entry.walEnd, startLsn, 'a keepalive during the wait reports the sent position');
  }
  release();
  await writer.waitForSent((entry) => entry.kind === 'chunk');
  controller.abort();
  const end = await running;
  assert.equal(end.kind, 'aborted');
  assert.equal(end.sentLsn, endWatch.get());
});

test('a prefetch starved behind best-effort I/O (an idle-priority read) keeps the stream alive: keepalives until the piece is read, no chunk before', async () => {
  const startLsn = 0x100010n;
  const endWatch = new LsnWatch(startLsn + 1000n);
  const writer = new RecordingWriter();
  const controller = new AbortController();
  let release: () => void = () => undefined;
  const released = new Promise<void>((resolve) => (release = resolve));
  // The native backend's readahead thread may wait up to mq-deadline's prio_aging_expire (10 s) per request.
  writer.prefetch = () => released;
  const diskWaits: boolean[] = [];
  const running = sendWal({ ...options({ endWatch, writer, signal: controller.signal, source: fakeSource, prefetchSource: fakeSource, keepaliveIntervalMs: 20 }), onDiskWait: (waiting) => diskWaits.push(waiting) });
  for (let count = 1; count <= 3; count++) await writer.waitForSent(() => writer.sent.filter((entry) => entry.kind === 'message').length >= count);
  assert.equal(writer.sent.filter((entry) => entry.kind === 'chunk').length, 0, 'nothing is sent from a piece still being read');
  for (const entry of writer.sent) assert.deepEqual([entry.type, entry.replyRequested, entry.walEnd], ['k', true, startLsn]);
  assert.deepEqual(diskWaits, [true], 'the registry is told the sender waits for the disk (status and /metrics show it)');
  release();
  await writer.waitForSent((entry) => entry.kind === 'chunk');
  assert.deepEqual(diskWaits.slice(0, 2), [true, false], 'and when the wait ended');
  controller.abort();
  assert.equal((await running).kind, 'aborted');
});

test('a stream aborted while storage is slow ends at once, without waiting for the storage step', async () => {
  const endWatch = new LsnWatch(0x100010n + 1000n);
  const writer = new RecordingWriter();
  const controller = new AbortController();
  const neverSource: WalSource = { locate: () => new Promise<WalChunk>(() => undefined) };
  const running = sendWal(options({ endWatch, writer, signal: controller.signal, source: neverSource, prefetchSource: fakeSource, keepaliveIntervalMs: 20 }));
  await writer.waitForSent((entry) => entry.kind === 'message');
  controller.abort();
  const end = await running;
  assert.equal(end.kind, 'aborted');
  assert.equal(end.sentLsn, 0x100010n);
});

/** A writer with sendChunkRun (as the native backend): records each chunk of a run as sendChunk would, and the runs. */
class RunRecordingWriter extends RecordingWriter {
  /** Per run: [first dataStart, chunk count, payload bytes]. */
  readonly runs: { start: Lsn; chunks: number; bytes: number }[] = [];

  async sendChunkRun(headers: Buffer, headerBytes: number, chunks: readonly WalChunk[]): Promise<void> {
    assert.equal(headerBytes, 30);
    assert.ok(chunks.length >= 1 && chunks.length <= CHUNK_RUN_CHUNKS_MAX && headers.length >= chunks.length * headerBytes);
    this.runs.push({ start: headers.readBigUInt64BE(6), chunks: chunks.length, bytes: chunks.reduce((sum, chunk) => sum + chunk.byteCount, 0) });
    for (const [index, chunk] of chunks.entries()) await this.sendChunk(Buffer.from(headers.subarray(index * headerBytes, (index + 1) * headerBytes)), chunk);
  }
}

/** fakeSource with a synchronous locate, as the real reader's for an open segment: the sender may build runs. */
const fakeSourceNow: WalSource = {
  locate: fakeSource.locate,
  locateNow(lsn: Lsn, endLsn: Lsn): WalChunk | undefined {
    const segmentEnd = (lsn / BigInt(SEGMENT_BYTES) + 1n) * BigInt(SEGMENT_BYTES);
    const until = endLsn < segmentEnd ? endLsn : segmentEnd;
    return { file: { fd: -1, path: 'fake' }, fileOffset: Number(lsn % BigInt(SEGMENT_BYTES)), byteCount: Number(until - lsn) };
  },
};

test('runs: the same chunks and headers as one by one, each run within the turn budget and one segment, never past the end', async () => {
  // Starts mid-page, ends mid-page three segments later: short first and last chunks, segment ends in between.
  const startLsn = 0x100010n;
  const endLsn = startLsn + 3n * BigInt(SEGMENT_BYTES) + 77n;
  const sendOnce = async (writer: RecordingWriter): Promise<Sent[]> => {
    const end = await sendWal(options({ startLsn, endWatch: new LsnWatch(endLsn), writer, signal: new AbortController().signal, stopAtEnd: true, source: fakeSourceNow, prefetchSource: fakeSourceNow }));
    assert.equal(end.kind, 'recovery_finished');
    assert.equal(end.sentLsn, endLsn);
    return writer.sent;
  };
  const alone = await sendOnce(new RecordingWriter());
  const runWriter = new RunRecordingWriter();
  const inRuns = await sendOnce(runWriter);
  assert.deepEqual(inRuns, alone, 'the same chunks (start, length, walEnd) in the same order');
  assert.ok(runWriter.runs.some((run) => run.chunks > 1), 'chunks went in runs');
  let position = startLsn;
  for (const run of runWriter.runs) {
    assert.equal(run.start, position, 'runs are contiguous');
    assert.ok(run.bytes <= SEND_BUDGET_PER_TURN_BYTES, 'a run stays within the turn budget');
    const runEnd = position + BigInt(run.bytes);
    assert.ok(runEnd <= endLsn, 'never past the end');
    assert.ok((runEnd - 1n) / BigInt(SEGMENT_BYTES) === position / BigInt(SEGMENT_BYTES), 'a run never crosses a segment boundary');
    position = runEnd;
  }
  assert.equal(position, endLsn);
});

test('runs: a chunk that needs an asynchronous verification ends the run and is verified before it is sent', async () => {
  const startLsn = 0x100000n;
  const endLsn = startLsn + BigInt(SEGMENT_BYTES);
  // Pages from this LSN on are not verified yet: verifyNow declines, verify (asynchronous) does the work.
  const slowFrom = startLsn + 3n * BigInt(MAX_SEND_BYTES);
  const verified: Lsn[] = [];
  const writer = new RunRecordingWriter();
  writer.onRecord = (entry) => {
    if (entry.kind === 'chunk' && entry.dataStart! >= slowFrom) assert.ok(verified.includes(entry.dataStart!), 'verified before it was sent');
  };
  const end = await sendWal(
    options({
      startLsn,
      endWatch: new LsnWatch(endLsn),
      writer,
      signal: new AbortController().signal,
      stopAtEnd: true,
      source: fakeSourceNow,
      prefetchSource: fakeSourceNow,
      verifyNow: (_chunk, lsn) => lsn < slowFrom,
      verify: async (_chunk, lsn) => {
        await new Promise((resolve) => setImmediate(resolve));
        verified.push(lsn);
      },
    }),
  );
  assert.equal(end.sentLsn, endLsn);
  assert.deepEqual(writer.runs.slice(0, 2).map((run) => run.chunks), [3, 1], 'the first run stops before the chunk to verify; that one goes alone');
  assert.equal(verified[0], slowFrom);
});

test('runs: a busy stream still asks a silent replica for a reply, between whole chunks', async () => {
  const startLsn = 0x100010n;
  const endWatch = new LsnWatch(startLsn + 3n * BigInt(SEGMENT_BYTES));
  const writer = new RunRecordingWriter();
  let lastReplyAtMs = Date.now() - 10_000;
  let chunksSeen = 0;
  writer.onRecord = (entry) => {
    if (entry.kind === 'chunk' && ++chunksSeen === 5) lastReplyAtMs += 1;
  };
  const end = await sendWal(options({ endWatch, writer, signal: new AbortController().signal, stopAtEnd: true, replicaTimeoutMs: 1000, lastReplyAtMs: () => lastReplyAtMs, source: fakeSourceNow, prefetchSource: fakeSourceNow }));
  assert.equal(end.kind, 'recovery_finished');
  const keepalives = writer.sent.flatMap((entry, index) => (entry.kind === 'message' ? [{ entry, index }] : []));
  assert.equal(keepalives.length, 2, 'one request before the first chunk, one after the reply');
  assert.equal(keepalives[0]?.index, 0);
  const second = keepalives[1]!;
  // The reply came during the run holding the fifth chunk: the request follows that run, at the sent position.
  assert.ok(second.index > 5, 'asked again after the reply');
  assert.equal(second.entry.walEnd, writer.sent[second.index + 1]?.dataStart, 'the keepalive sits between whole chunks, at the sent position');
});

test('a writer\'s own prefetch shape: one prefetch request and one check ahead per piece, the window ahead (native: 4 MiB pieces, two ahead)', async () => {
  // Each piece is a round trip through the addon (a readahead thread's read, its event, a promise) and a pool hop for
  // its check ahead; next to a busy CPU a cold catch-up is CPU-bound, and those per-piece costs were about a quarter of
  // its CPU at 1 MiB pieces (docs/benchmarks.md, "Cold catch-up next to a busy CPU").
  const segmentBytes = 16n * 1024n * 1024n;
  const source: WalSource = {
    async locate(lsn: Lsn, endLsn: Lsn): Promise<WalChunk> {
      const segmentEnd = (lsn / segmentBytes + 1n) * segmentBytes;
      const until = endLsn < segmentEnd ? endLsn : segmentEnd;
      return { file: { fd: -1, path: `segment ${lsn / segmentBytes}` }, fileOffset: Number(lsn % segmentBytes), byteCount: Number(until - lsn) };
    },
  };
  const requested: number[] = [];
  // io/native-backend.ts NATIVE_PREFETCH_SHAPE (replication never imports the native backend).
  const piece = 4 * 1024 * 1024;
  const writer = Object.assign(new RecordingWriter(), { prefetchShape: { pieceBytes: piece, windowBytes: 2 * piece } });
  writer.prefetch = async (chunk: WalChunk) => void requested.push(chunk.byteCount);
  let checks = 0;
  const prefetcher = new Prefetcher({ prefetchSource: source, writer, verifyAhead: async () => void checks++ });
  const start = 4n * segmentBytes;
  const end = start + 4n * segmentBytes;
  // The window reaches 8 MiB past the send position: from a piece start that is two pieces, and once the sender is
  // inside the first, the third.
  const settle = async (count: number): Promise<void> => {
    for (let turn = 0; turn < 1000 && requested.length < count; turn += 1) await new Promise((resolve) => setImmediate(resolve));
  };
  await prefetcher.ensureCached(start, end, start + BigInt(MAX_SEND_BYTES));
  await settle(2);
  assert.deepEqual(requested, [piece, piece], 'from a piece start: that piece and the next');
  await prefetcher.ensureCached(start + BigInt(MAX_SEND_BYTES), end, start + 2n * BigInt(MAX_SEND_BYTES));
  await settle(3);
  assert.deepEqual(requested, [piece, piece, piece], 'inside it: two whole pieces ahead');
  for (let sent = start; sent < end; sent += BigInt(MAX_SEND_BYTES)) await prefetcher.ensureCached(sent, end, sent + BigInt(MAX_SEND_BYTES));
  const pieces = Number(end - start) / piece;
  assert.deepEqual(requested, Array.from({ length: pieces }, () => piece), 'one whole request per piece');
  // The last pieces' checks may still run when the sender has reached them; bounded.
  for (let turn = 0; turn < 1000 && checks < pieces; turn += 1) await new Promise((resolve) => setImmediate(resolve));
  assert.equal(checks, pieces, 'one check ahead per piece');
  const odd = { pieceBytes: 3 * 1024 * 1024, windowBytes: 8 * 1024 * 1024 };
  assert.throws(() => new Prefetcher({ prefetchSource: source, writer: Object.assign(new RecordingWriter(), { prefetchShape: odd }) }), /a divisor of the window/);
});

test('the loop reads the abort state from its own flag, not from the AbortSignal once per chunk, and still stops at an abort', async () => {
  // Reading signal.aborted per chunk deoptimized the loop at new streams (a new signal met the optimized code with
  // another hidden class): the loop keeps the state in a field of its own, set by an abort listener.
  const chunkCount = 40;
  const endWatch = new LsnWatch(0x100010n + BigInt(chunkCount * MAX_SEND_BYTES));
  const writer = new RecordingWriter();
  const controller = new AbortController();
  let reads = 0;
  const signal = controller.signal;
  const prototypeGetter = Object.getOwnPropertyDescriptor(AbortSignal.prototype, 'aborted')!.get!;
  Object.defineProperty(signal, 'aborted', {
    get(): boolean {
      reads++;
      return prototypeGetter.call(signal) as boolean;
    },
  });
  const running = sendWal(options({ endWatch, writer, signal }));
  await writer.waitForSent((entry) => entry.kind === 'message');
  assert.ok(writer.sent.filter((entry) => entry.kind === 'chunk').length >= chunkCount, 'the whole range went out');
  assert.ok(reads <= 4, `signal.aborted read ${reads} times for ${chunkCount} chunks`);
  controller.abort();
  const end = await running;
  assert.equal(end.kind, 'aborted');
  assert.equal(end.sentLsn, endWatch.get());
});
