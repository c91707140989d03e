/**
 * Backend-level tests of the native I/O backend (src/io/native-backend.ts + the addon), for every strategy, on
 * loopback sockets with synthetic segment files: ranges across segment boundaries, a receiver that stops reading
 * until its socket buffer is full, 1,000 disconnects with a send in flight (no crash, no leaked descriptors),
 * 200 receivers at once, and the shape of native errors. The ts backend runs the same byte-identity case, so
 * both backends are held to the same bytes on the wire. Skipped when the addon is not built.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { appendFileSync, closeSync, fdatasyncSync, mkdtempSync, openSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { constants as osConstants } from 'node:os';
import { isWalcastError } from '../src/errors.js';
import { BatchOutcome, CHUNK_RUN_CHUNKS_MAX, type IoBackend, type StreamWriter, type WalChunk, type WalFileHandle } from '../src/io/backend.js';
import { NATIVE_PREFETCH_BYTES_MAX, NATIVE_STRATEGIES, createNativeBackend, probeNative, type NativeStrategy } from '../src/io/native-backend.js';
import { NativeIoError, loadNativeAddon, type NativeEngine } from '../src/io/native-binding.js';
import { createTsBackend } from '../src/io/ts-backend.js';
import { waitFor } from './support/wait-for.js';

/** Small segments keep the files tiny while every range still crosses boundaries. */
const SEGMENT_BYTES = 1024 * 1024;
const SEGMENT_COUNT = 3;
const CHUNK_BYTES_MAX = 128 * 1024;
const HEADER_BYTES = 30;
/** Upper bound for any single wait in these tests; nothing here should come close. */
const STEP_TIMEOUT_MS = 20_000;
/**
 * How long a receiver may get no byte at all before collect() calls it a stall. One round-robin round of the
 * 200-receiver case (every stream's 512 KiB turn, 100 MiB) took about 6 s at load 20 on 2 cores; 20 s is well past it.
 */
const STALL_TIMEOUT_MS = 20_000;
const DISCONNECT_ROUNDS = 1000;
/** Disconnect rounds run this many at a time: fast, and well under the default fd limit. */
const DISCONNECT_PARALLEL = 20;
const FAN_OUT_RECEIVERS = 200;
/** Streams in one chunkBatch call: more than one io_uring_enter of the addon's batch ring takes (kBatchRingEntries, 256). */
const BATCH_RECEIVERS = 300;
/** The random-interleaving case: streams at once, and units per stream (about 4 MiB each). */
const RANDOM_STREAMS = 20;
const RANDOM_UNITS_PER_STREAM = 80;
/** A disconnect round sends the 3 MiB range at most this often (48 MiB) before the reset must have landed. */
const DISCONNECT_REPEATS_MAX = 16;

const probe = probeNative();
const skip = probe.ok ? false : `native addon unavailable: ${probe.ok ? '' : probe.reason}`;

let dir = '';
let segments: { handle: WalFileHandle; bytes: Buffer }[] = [];

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'walcast-native-io-'));
  segments = [];
  for (let index = 0; index < SEGMENT_COUNT; index++) {
    const path = join(dir, `segment-${index}`);
    const bytes = randomBytes(SEGMENT_BYTES);
    writeFileSync(path, bytes);
    segments.push({ handle: { fd: openSync(path, 'r'), path }, bytes });
  }
});

after(() => {
  for (const segment of segments) closeSync(segment.handle.fd);
  rmSync(dir, { recursive: true, force: true });
});

/** A unit the sender hands the backend, and the bytes it must produce on the wire. */
type Unit = { kind: 'chunk'; header: Buffer; chunk: WalChunk } | { kind: 'message'; bytes: Buffer };

/** Cuts [start, end) of the concatenated segments into chunks that never cross a segment, as the sender does. */
function planRange(start: number, end: number, messageEvery = 5): Unit[] {
  const units: Unit[] = [];
  let position = start;
  while (position < end) {
    const segment = Math.floor(position / SEGMENT_BYTES);
    const offset = position % SEGMENT_BYTES;
    const bytes = Math.min(CHUNK_BYTES_MAX, SEGMENT_BYTES - offset, end - position);
    const header = Buffer.alloc(HEADER_BYTES, units.length % 251);
    header.writeUInt32BE(position >>> 0, 1);
    units.push({ kind: 'chunk', header, chunk: { file: segments[segment]!.handle, fileOffset: offset, byteCount: bytes } });
    if (units.length % messageEvery === 0) units.push({ kind: 'message', bytes: Buffer.from(`k${units.length}`) });
    position += bytes;
  }
  return units;
}

/** The bytes the units must put on the wire, built from the segment contents, not by any backend. */
function expectedBytes(units: readonly Unit[]): Buffer {
  const parts: Buffer[] = [];
  for (const unit of units) {
    if (unit.kind === 'message') {
      parts.push(unit.bytes);
      continue;
    }
    const segment = segments.find((candidate) => candidate.handle === unit.chunk.file)!;
    parts.push(unit.header, segment.bytes.subarray(unit.chunk.fileOffset, unit.chunk.fileOffset + unit.chunk.byteCount));
  }
  return Buffer.concat(parts);
}

/** A small deterministic PRNG (mulberry32), so a failing random case can be replayed. */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let mixed = Math.imul(state ^ (state >>> 15), 1 | state);
    mixed = (mixed + Math.imul(mixed ^ (mixed >>> 7), 61 | mixed)) ^ mixed;
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 4294967296;
  };
}

/** Chunks of 1 byte .. 128 KiB at any offset of any segment, and messages of 1 .. 3,000 bytes (inline and heap). */
function randomUnits(random: () => number, count: number): Unit[] {
  const units: Unit[] = [];
  for (let index = 0; index < count; index++) {
    if (random() < 0.2) {
      units.push({ kind: 'message', bytes: randomBytes(1 + Math.floor(random() * 3000)) });
      continue;
    }
    const segment = segments[Math.floor(random() * SEGMENT_COUNT)]!;
    const byteCount = 1 + Math.floor(random() * CHUNK_BYTES_MAX);
    const fileOffset = Math.floor(random() * (SEGMENT_BYTES - byteCount));
    units.push({ kind: 'chunk', header: randomBytes(HEADER_BYTES), chunk: { file: segment.handle, fileOffset, byteCount } });
  }
  return units;
}

/** The sender loop's pattern: each unit awaited before the next; the header buffer is reused after each send. */
async function sendAll(writer: StreamWriter, units: readonly Unit[]): Promise<void> {
  const header = Buffer.alloc(HEADER_BYTES);
  for (const unit of units) {
    if (unit.kind === 'message') {
      await writer.sendMessage(unit.bytes);
      continue;
    }
    unit.header.copy(header);
    await writer.sendChunk(header, unit.chunk);
    header.fill(0xee); // a backend that kept a reference instead of a copy would send these bytes
  }
}

/**
 * sendAll with sendChunkRun: consecutive chunks go in runs of 1..CHUNK_RUN_CHUNKS_MAX (lengths from `random`), a
 * message ends a run. The headers buffer is overwritten after each run: a backend that kept a reference instead of
 * sending or copying would put those bytes on the wire.
 */
async function sendAllInRuns(writer: StreamWriter, units: readonly Unit[], random: () => number): Promise<{ runs: number }> {
  assert.ok(writer.sendChunkRun !== undefined, 'the native writer offers sendChunkRun');
  const headers = Buffer.alloc(CHUNK_RUN_CHUNKS_MAX * HEADER_BYTES);
  let runs = 0;
  let index = 0;
  while (index < units.length) {
    const unit = units[index]!;
    if (unit.kind === 'message') {
      await writer.sendMessage(unit.bytes);
      index++;
      continue;
    }
    const wanted = 1 + Math.floor(random() * CHUNK_RUN_CHUNKS_MAX);
    const chunks: WalChunk[] = [];
    while (chunks.length < wanted && index < units.length) {
      const next = units[index]!;
      if (next.kind !== 'chunk') break;
      next.header.copy(headers, chunks.length * HEADER_BYTES);
      chunks.push(next.chunk);
      index++;
    }
    await writer.sendChunkRun(headers, HEADER_BYTES, chunks);
    headers.fill(0xee);
    runs++;
  }
  return { runs };
}

interface Loopback {
  server: Server;
  port: number;
  accepted: Socket[];
  waiters: ((socket: Socket) => void)[];
}

async function listen(options: { pauseOnConnect?: boolean } = {}): Promise<Loopback> {
  const loopback: Loopback = { server: createServer({ pauseOnConnect: options.pauseOnConnect ?? false }), port: 0, accepted: [], waiters: [] };
  loopback.server.on('connection', (socket) => {
    socket.on('error', () => undefined);
    const waiter = loopback.waiters.shift();
    if (waiter === undefined) loopback.accepted.push(socket);
    else waiter(socket);
  });
  await new Promise<void>((resolve) => loopback.server.listen(0, '127.0.0.1', resolve));
  const address = loopback.server.address();
  assert.ok(address !== null && typeof address === 'object');
  loopback.port = address.port;
  return loopback;
}

/** Every socket a test opened: destroyed after each test, so a failed assertion cannot leave a server hanging. */
const openSockets: Socket[] = [];

afterEach(() => {
  for (const socket of openSockets.splice(0)) socket.destroy();
});

/** Connects a client and returns both ends. */
async function connectPair(loopback: Loopback): Promise<{ client: Socket; server: Socket }> {
  const serverSide = new Promise<Socket>((resolve) => {
    const ready = loopback.accepted.shift();
    if (ready !== undefined) resolve(ready);
    else loopback.waiters.push(resolve);
  });
  const client = createConnection({ host: '127.0.0.1', port: loopback.port });
  client.on('error', () => undefined);
  openSockets.push(client);
  await new Promise<void>((resolve) => client.once('connect', () => resolve()));
  const server = await serverSide;
  openSockets.push(server);
  return { client, server };
}

/**
 * Collects everything the client receives until it has `byteCount` bytes. It fails only when no byte arrives for
 * `stallMs`: a lost wake-up leaves a receiver silent for good, while a slow machine only makes it wait. A deadline on
 * the whole transfer would be a speed assertion: the engine serves ready streams round-robin, so with 200 receivers
 * every one of them finishes near the end of the whole 300 MiB, and on a loaded machine (load 15-25 on 2 cores) that
 * took longer than 20 s while every stream was still moving (all stopped at the same unit, in lockstep).
 */
function collect(client: Socket, byteCount: number, stallMs = STALL_TIMEOUT_MS): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let received = 0;
    const stalled = (): void => reject(new Error(`received ${received} of ${byteCount} bytes, then nothing for ${stallMs} ms`));
    let timer = setTimeout(stalled, stallMs);
    client.on('data', (data: Buffer) => {
      parts.push(data);
      received += data.length;
      clearTimeout(timer);
      if (received >= byteCount) {
        resolve(Buffer.concat(parts));
        return;
      }
      timer = setTimeout(stalled, stallMs);
    });
  });
}

function openFdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

async function streamOnce(backend: IoBackend, loopback: Loopback, units: readonly Unit[]): Promise<void> {
  const expected = expectedBytes(units);
  // After release the socket is Node's again: a control message then goes out with socket.write, in order.
  const tail = Buffer.from('Z-after-release');
  const { client, server } = await connectPair(loopback);
  const received = collect(client, expected.length + tail.length);
  const writer = await backend.openStream(server);
  await sendAll(writer, units);
  await writer.release();
  assert.equal(writer.bytesSent, expected.length, 'bytesSent counts headers and payload');
  server.write(tail);
  const all = await received;
  assert.equal(all.length, expected.length + tail.length);
  assert.ok(all.subarray(0, expected.length).equals(expected), 'streamed bytes are identical');
  assert.ok(all.subarray(expected.length).equals(tail), 'the socket works for Node after release');
  client.destroy();
  server.destroy();
}

/** The helper-check: a receiver fed slowly but steadily for longer than the stall bound, in pieces this far apart. */
const TRICKLE_STALL_MS = 2_000;
const TRICKLE_PIECES = 30;
const TRICKLE_GAP_MS = 100;

describe('collect(): a stall is no bytes for a while, not a slow transfer', () => {
  test('a transfer slower than the stall bound but never silent that long completes; a silent one fails', async () => {
    const loopback = await listen();
    try {
      const { client, server } = await connectPair(loopback);
      const piece = randomBytes(1000);
      const received = collect(client, TRICKLE_PIECES * piece.length, TRICKLE_STALL_MS);
      for (let index = 0; index < TRICKLE_PIECES; index++) {
        server.write(piece);
        await new Promise((resolve) => setTimeout(resolve, TRICKLE_GAP_MS));
      }
      // 30 x 100 ms is longer than the 2 s bound: a deadline on the whole transfer (the old collect) fails here.
      assert.ok((await received).equals(Buffer.concat(Array.from({ length: TRICKLE_PIECES }, () => piece))));
      const silent = collect(client, 1, TRICKLE_STALL_MS);
      await assert.rejects(silent, /received 0 of 1 bytes, then nothing for 2000 ms/);
    } finally {
      loopback.server.close();
    }
  });
});

describe('ts backend: the reference bytes', () => {
  test('offers a ChunkBatch that reads each group\'s chunk before it sends (stage)', () => {
    const batch = createTsBackend().chunkBatch;
    assert.ok(batch !== undefined, 'the ts backend batches commit fan-out too');
    assert.equal(typeof batch.stage, 'function', 'the ts batch reads the chunk once per group before the sends');
  });


  test('a range crossing segment boundaries', async () => {
    const loopback = await listen();
    const backend = createTsBackend();
    try {
      await streamOnce(backend, loopback, planRange(SEGMENT_BYTES - 300_000, 2 * SEGMENT_BYTES + 200_001));
    } finally {
      await backend.close();
      loopback.server.close();
    }
  });
});

for (const strategy of NATIVE_STRATEGIES) {
  describe(`native ${strategy}`, { skip }, () => {
    let backend: IoBackend;
    let loopback: Loopback;

    before(async () => {
      backend = await createNativeBackend(strategy);
      loopback = await listen();
    });
    after(async () => {
      await backend.close();
      loopback.server.close();
    });

    test('a range crossing segment boundaries, interleaved with messages', async () => {
      await streamOnce(backend, loopback, planRange(SEGMENT_BYTES - 300_000, 2 * SEGMENT_BYTES + 200_001));
      await streamOnce(backend, loopback, planRange(0, SEGMENT_COUNT * SEGMENT_BYTES, 2));
    });

    test('a receiver that stops reading until its socket buffer fills, then resumes', async () => {
      // 48 MiB: far more than loopback socket buffers hold, so with nobody reading it cannot all be accepted.
      const once = [...planRange(0, SEGMENT_COUNT * SEGMENT_BYTES), ...planRange(0, SEGMENT_COUNT * SEGMENT_BYTES)];
      const units = Array.from({ length: 8 }, () => once).flat();
      const expected = expectedBytes(units);
      const { client, server } = await connectPair(loopback);
      client.pause();
      const writer = await backend.openStream(server);
      let settled = false;
      const sending = sendAll(writer, units).finally(() => (settled = true));
      // sendAll yields to the event loop only when a unit waits natively for room; without the in-flight bound it
      // would accept every unit in microtasks and have settled by the first macrotask turn.
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(settled, false, 'sending 48 MiB to a receiver that does not read must wait');
      assert.ok(writer.bytesSent < expected.length, 'not everything reached the kernel');
      const received = collect(client, expected.length);
      client.resume();
      await sending;
      await writer.release();
      assert.ok((await received).equals(expected));
      client.destroy();
      server.destroy();
    });

    test('a message sent while a chunk waits for room lands right after the chunks already accepted', async () => {
      // 48 MiB: far more than loopback socket buffers hold, so the sender must wait with a paused receiver.
      const once = planRange(0, SEGMENT_COUNT * SEGMENT_BYTES, 1_000_000);
      const units = Array.from({ length: 16 }, () => once).flat();
      const { client, server } = await connectPair(loopback);
      client.pause();
      const writer = await backend.openStream(server);
      let accepted = 0;
      const sending = (async () => {
        for (const unit of units) {
          assert.equal(unit.kind, 'chunk');
          if (unit.kind === 'chunk') await writer.sendChunk(unit.header, unit.chunk);
          accepted++;
        }
      })();
      // The first macrotask turn comes only once a sendChunk waits for room (the paused receiver is full).
      await new Promise((resolve) => setImmediate(resolve));
      const keepalive = Buffer.from('keepalive-reply');
      const before = accepted + 1; // the chunk being awaited is already queued natively
      await writer.sendMessage(keepalive);
      assert.ok(before < units.length, 'the message went in while chunks were still pending');
      const expected = Buffer.concat([expectedBytes(units.slice(0, before)), keepalive, expectedBytes(units.slice(before))]);
      const received = collect(client, expected.length);
      client.resume();
      await sending;
      await writer.release();
      assert.ok((await received).equals(expected));
      client.destroy();
      server.destroy();
    });

    /**
     * RANDOM_STREAMS receivers that pause and resume at random while `send` streams each its own random units, then
     * read to the end: every stream's bytes exact. `random` (seeded with `seed`) drives the units, the flapping and
     * whatever else `send` draws from it.
     */
    async function flappingReceiversGetExactBytes(seed: number, send: (writer: StreamWriter, units: readonly Unit[], random: () => number) => Promise<unknown>): Promise<void> {
      const random = seededRandom(seed);
      const streams = await Promise.all(
        Array.from({ length: RANDOM_STREAMS }, async () => {
          const units = randomUnits(random, RANDOM_UNITS_PER_STREAM);
          const { client, server } = await connectPair(loopback);
          return { client, server, units, expected: expectedBytes(units) };
        }),
      );
      const flapping = setInterval(() => {
        for (const { client } of streams) if (random() < 0.5) client.pause();
        else client.resume();
      }, 5);
      try {
        // Receivers keep flapping until every sender has finished; only then do all of them read to the end.
        const receiving = await Promise.all(
          streams.map(async ({ client, server, units, expected }) => {
            const received = collect(client, expected.length);
            const writer = await backend.openStream(server);
            await send(writer, units, random);
            await writer.release();
            return received;
          }),
        );
        clearInterval(flapping);
        for (const { client } of streams) client.resume();
        for (const [index, received] of receiving.entries()) assert.ok((await received).equals(streams[index]!.expected), `stream ${index}`);
      } finally {
        clearInterval(flapping);
      }
    }

    test('random unit sizes and offsets, messages of every size, receivers that pause and resume: exact bytes', async () => {
      await flappingReceiversGetExactBytes(strategy.length * 7919, (writer, units) => sendAll(writer, units));
    });

    test('1,000 receivers that disconnect with a send in flight: no crash, descriptors back to the start', async () => {
      const before = openFdCount();
      const units = planRange(0, SEGMENT_COUNT * SEGMENT_BYTES);
      let rejected = 0;
      let inFlightAtReset = 0;
      const round = async (): Promise<void> => {
        const { client, server } = await connectPair(loopback);
        client.pause();
        const writer = await backend.openStream(server);
        // Loopback buffers hold megabytes: keep sending (bounded) until the paused receiver's buffers are full
        // and a unit waits natively, which is when the reset below lands.
        const sendUntilFailure = async (): Promise<void> => {
          for (let repeat = 0; repeat < DISCONNECT_REPEATS_MAX; repeat++) await sendAll(writer, units);
        };
        const sending = sendUntilFailure().catch((error: unknown) => {
          assert.ok(isWalcastError(error, 'WALCAST_ERR_STREAM_IO'), `unexpected ${String(error)}`);
          rejected++;
        });
        let settled = false;
        void sending.finally(() => (settled = true));
        // sendAll only yields to the event loop when a unit waits natively for room: that is the moment to reset.
        await new Promise((resolve) => setImmediate(resolve));
        if (!settled) inFlightAtReset++;
        client.resetAndDestroy();
        await sending;
        await writer.release();
        server.destroy();
      };
      for (let started = 0; started < DISCONNECT_ROUNDS; started += DISCONNECT_PARALLEL) {
        await Promise.all(Array.from({ length: DISCONNECT_PARALLEL }, round));
      }
      assert.equal(rejected, DISCONNECT_ROUNDS, 'every sender saw its receiver disconnect');
      assert.equal(inFlightAtReset, DISCONNECT_ROUNDS, 'every reset hit a stream with a send in flight');
      // Closing sockets finish on later loop turns; wait (bounded) until the count settles.
      await waitFor(async () => (openFdCount() <= before ? true : undefined), STEP_TIMEOUT_MS, { what: 'open descriptors back to the starting count', pollMs: 20 }).catch(() => undefined);
      assert.equal(openFdCount(), before, 'open descriptors back to the starting count');
    });

    test(`${FAN_OUT_RECEIVERS} receivers at once, all byte-identical`, async () => {
      const units = planRange(SEGMENT_BYTES / 2, SEGMENT_BYTES * 2 + 4096);
      const expected = expectedBytes(units);
      const pairs = await Promise.all(Array.from({ length: FAN_OUT_RECEIVERS }, () => connectPair(loopback)));
      const results = await Promise.all(
        pairs.map(async ({ client, server }) => {
          const received = collect(client, expected.length);
          const writer = await backend.openStream(server);
          await sendAll(writer, units);
          await writer.release();
          return received;
        }),
      );
      for (const received of results) assert.ok(received.equals(expected));
      for (const { client, server } of pairs) {
        client.destroy();
        server.destroy();
      }
    });

    test('sendChunkRun: runs across segment boundaries and between messages, ending exactly at the range end: exact bytes', async () => {
      const random = seededRandom(strategy.length * 31);
      for (const units of [planRange(SEGMENT_BYTES - 300_000, 2 * SEGMENT_BYTES + 200_001, 7), planRange(0, SEGMENT_COUNT * SEGMENT_BYTES, 1_000_000), randomUnits(random, 200)]) {
        const expected = expectedBytes(units);
        const { client, server } = await connectPair(loopback);
        const received = collect(client, expected.length);
        const writer = await backend.openStream(server);
        const { runs } = await sendAllInRuns(writer, units, random);
        await writer.release();
        assert.ok(runs < units.length, 'chunks went in runs');
        assert.equal(writer.bytesSent, expected.length, 'bytesSent counts every header and payload of every run');
        assert.ok((await received).equals(expected), 'streamed bytes are identical');
        client.destroy();
        server.destroy();
      }
    });

    test('sendChunkRun: a receiver that stops reading mid-run (EAGAIN, partial sends), then resumes: the rest of the run waits, exact bytes', async () => {
      // 48 MiB in runs: far more than a paused loopback receiver takes, so runs stop at the in-flight bound mid-run.
      const once = planRange(0, SEGMENT_COUNT * SEGMENT_BYTES, 1_000_000);
      const units = Array.from({ length: 16 }, () => once).flat();
      const expected = expectedBytes(units);
      const { client, server } = await connectPair(loopback);
      client.pause();
      const writer = await backend.openStream(server);
      let settled = false;
      const sending = sendAllInRuns(writer, units, seededRandom(7)).finally(() => (settled = true));
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(settled, false, 'a run to a receiver that does not read waits');
      assert.ok(writer.bytesSent < expected.length, 'not everything reached the kernel');
      const received = collect(client, expected.length);
      client.resume();
      await sending;
      await writer.release();
      assert.ok((await received).equals(expected));
      client.destroy();
      server.destroy();
    });

    test('sendChunkRun: receivers that pause and resume at random, 20 at once: exact bytes per stream', async () => {
      await flappingReceiversGetExactBytes(strategy.length * 104729, sendAllInRuns);
    });

    test('sendChunkRun: a receiver that vanishes while a run waits fails the run with a stream error, and the next call too', async () => {
      const units = planRange(0, SEGMENT_COUNT * SEGMENT_BYTES, 1_000_000);
      const { client, server } = await connectPair(loopback);
      client.pause();
      const writer = await backend.openStream(server);
      const sending = (async () => {
        for (let repeat = 0; repeat < DISCONNECT_REPEATS_MAX; repeat++) await sendAllInRuns(writer, units, seededRandom(repeat));
      })();
      let settled = false;
      void sending.catch(() => undefined).finally(() => (settled = true));
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(settled, false, 'the run waits for room');
      client.resetAndDestroy();
      await assert.rejects(sending, (error: unknown) => isWalcastError(error, 'WALCAST_ERR_STREAM_IO'));
      const chunk = units.find((unit) => unit.kind === 'chunk');
      assert.ok(chunk?.kind === 'chunk');
      await assert.rejects(writer.sendChunkRun!(Buffer.alloc(HEADER_BYTES), HEADER_BYTES, [chunk.chunk]), (error: unknown) => isWalcastError(error, 'WALCAST_ERR_STREAM_IO'));
      await writer.release();
      server.destroy();
    });

    test('chunkBatch: receivers get every batched chunk byte-identical; one that fills mid-batch goes on alone, one that vanishes fails alone', async () => {
      const batch = backend.chunkBatch;
      assert.ok(batch !== undefined, 'the native backend offers ChunkBatch');
      const random = seededRandom(13);
      // Small chunks take the copy path (one send per stream), large ones the per-stream path; any offset.
      const units: Unit[] = [];
      // About 14 MiB: more than a paused loopback receiver's buffers take.
      for (let index = 0; index < 600; index++) {
        const segment = segments[Math.floor(random() * SEGMENT_COUNT)]!;
        const byteCount = random() < 0.7 ? 1 + Math.floor(random() * 8192) : 8193 + Math.floor(random() * (CHUNK_BYTES_MAX - 8193));
        const fileOffset = Math.floor(random() * (SEGMENT_BYTES - byteCount));
        units.push({ kind: 'chunk', header: Buffer.alloc(HEADER_BYTES, index % 251), chunk: { file: segment.handle, fileOffset, byteCount } });
      }
      const expected = expectedBytes(units);
      const pairs = await Promise.all(Array.from({ length: 8 }, () => connectPair(loopback)));
      const received = pairs.map(({ client }, index) => (index === 1 ? undefined : collect(client, expected.length)));
      const writers = await Promise.all(pairs.map(({ server }) => backend.openStream(server)));
      const stalled = pairs[0]!.client;
      stalled.pause();
      // Each writer: batched while the batch accepts it and it has nothing pending alone; else its own sendChunk,
      // chained, so its units stay in order and within the in-flight bound (what fanout-batch.ts does).
      const alone = new Map<StreamWriter, Promise<void>>();
      const failures = new Map<StreamWriter, unknown>();
      const outcomes = new Int32Array(writers.length);
      let leftBatch = 0;
      const header = Buffer.alloc(HEADER_BYTES);
      for (const [index, unit] of units.entries()) {
        assert.equal(unit.kind, 'chunk');
        if (unit.kind !== 'chunk') continue;
        if (index === 100) pairs[1]!.client.resetAndDestroy();
        const group = writers.filter((writer) => !failures.has(writer) && !alone.has(writer) && batch.accepts(writer));
        for (const writer of writers) {
          if (failures.has(writer) || group.includes(writer)) continue;
          const previous = alone.get(writer) ?? Promise.resolve();
          if (!alone.has(writer)) leftBatch++;
          const next = previous.then(() => writer.sendChunk(unit.header, unit.chunk));
          alone.set(writer, next);
          void next.then(
            () => alone.get(writer) === next && alone.delete(writer),
            (error: unknown) => {
              failures.set(writer, error);
              alone.delete(writer);
            },
          );
        }
        if (group.length === 0) continue;
        unit.header.copy(header);
        const errors = batch.send(group, group.length, header, unit.chunk, outcomes);
        header.fill(0xee); // the backend copies the header within the call
        for (const [position, writer] of group.entries()) {
          if (outcomes[position] === -1) failures.set(writer, errors?.[position]);
        }
        if (index % 20 === 0) await new Promise((resolve) => setImmediate(resolve));
      }
      assert.ok(leftBatch > 0, 'the paused receiver left the batch');
      stalled.resume();
      await Promise.all([...alone.values()].map((pending) => pending.catch(() => undefined)));
      for (const [index, writer] of writers.entries()) {
        if (index === 1) {
          const error = failures.get(writer);
          assert.ok(isWalcastError(error) && error.code === 'WALCAST_ERR_STREAM_IO', `the vanished receiver failed alone: ${String(error)}`);
          continue;
        }
        assert.equal(failures.has(writer), false, `receiver ${index} did not fail: ${String(failures.get(writer))}`);
        await writer.release();
        assert.equal(writer.bytesSent, expected.length, `receiver ${index}: bytesSent counts headers and payload`);
        assert.ok((await received[index]!).equals(expected), `receiver ${index} got identical bytes`);
      }
      for (const { client, server } of pairs) {
        client.destroy();
        server.destroy();
      }
    });

    test(`chunkBatch to ${BATCH_RECEIVERS} receivers in one call (more sends than one ring submission takes): all byte-identical, the small chunks written within the call`, async () => {
      const batch = backend.chunkBatch;
      assert.ok(batch !== undefined, 'the native backend offers ChunkBatch');
      const random = seededRandom(29);
      // A commit's chunk is small (the copied path, ≤ 8 KiB); every tenth is larger (per stream, any strategy).
      const units: Unit[] = [];
      for (let index = 0; index < 60; index++) {
        const segment = segments[Math.floor(random() * SEGMENT_COUNT)]!;
        const byteCount = index % 10 === 9 ? 8193 + Math.floor(random() * 40_000) : 1 + Math.floor(random() * 8192);
        const fileOffset = Math.floor(random() * (SEGMENT_BYTES - byteCount));
        units.push({ kind: 'chunk', header: Buffer.alloc(HEADER_BYTES, (index * 7) % 251), chunk: { file: segment.handle, fileOffset, byteCount } });
      }
      const expected = expectedBytes(units);
      const pairs = await Promise.all(Array.from({ length: BATCH_RECEIVERS }, () => connectPair(loopback)));
      try {
        const received = pairs.map(({ client }) => collect(client, expected.length));
        const writers = await Promise.all(pairs.map(({ server }) => backend.openStream(server)));
        const outcomes = new Int32Array(writers.length);
        let written = 0;
        for (const unit of units) {
          assert.equal(unit.kind, 'chunk');
          if (unit.kind !== 'chunk') continue;
          // A stream at its in-flight bound sits a chunk out until it drained, as fanout-batch.ts would let it go alone.
          for (const writer of writers) if (!batch.accepts(writer)) await new Promise<void>((resolve) => writer.afterWritten(resolve));
          const errors = batch.send(writers, writers.length, unit.header, unit.chunk, outcomes);
          assert.equal(errors?.some((error) => error !== undefined) ?? false, false, 'no stream failed');
          for (let index = 0; index < writers.length; index++) {
            assert.notEqual(outcomes[index], BatchOutcome.failed);
            if (unit.chunk.byteCount <= 8192 && outcomes[index] === BatchOutcome.written) written++;
          }
          await new Promise((resolve) => setImmediate(resolve));
        }
        assert.ok(written > 0, 'small chunks reached the kernel within the call');
        for (const [index, writer] of writers.entries()) {
          await writer.release();
          assert.equal(writer.bytesSent, expected.length, `receiver ${index}: bytesSent counts headers and payload`);
          assert.ok((await received[index]!).equals(expected), `receiver ${index} got identical bytes`);
        }
      } finally {
        for (const { client, server } of pairs) {
          client.destroy();
          server.destroy();
        }
      }
    });

    test('a write to a vanished peer fails with a NativeIoError carrying errno, code and syscall', async () => {
      // The accepted side never starts reading (pauseOnConnect), so Node cannot see the reset and close the
      // stream first: the native write is what must fail, and its error is what this test checks.
      const quiet = await listen({ pauseOnConnect: true });
      try {
        const { client, server } = await connectPair(quiet);
        const writer = await backend.openStream(server);
        // On loopback the reset reaches the server's socket when the client's descriptor closes, before 'close'.
        const clientClosed = new Promise((resolve) => client.once('close', resolve));
        client.resetAndDestroy();
        await clientClosed;
        const error = await sendAll(writer, planRange(0, SEGMENT_BYTES)).then(
          () => undefined,
          (caught: unknown) => caught,
        );
        assert.ok(isWalcastError(error, 'WALCAST_ERR_STREAM_IO'), `expected a stream error, got ${String(error)}`);
        assert.ok(error.cause instanceof NativeIoError, `expected a NativeIoError as the cause, got ${String(error.cause)}`);
        assert.ok([osConstants.errno.EPIPE, osConstants.errno.ECONNRESET].includes(error.cause.errno), `errno ${error.cause.errno}`);
        assert.match(error.cause.code, /^(EPIPE|ECONNRESET)$/);
        assert.match(error.cause.syscall, /^(send|sendfile|sendmsg|io_uring_sendmsg)$/);
        await writer.release();
        await writer.release(); // idempotent
        server.destroy();
      } finally {
        quiet.server.close();
      }
    });

    test('arguments are checked in TypeScript before they reach C++', async () => {
      const { client, server } = await connectPair(loopback);
      const writer = await backend.openStream(server);
      const file = segments[0]!.handle;
      await assert.rejects(writer.sendChunk(Buffer.alloc(65), { file, fileOffset: 0, byteCount: 1 }), RangeError);
      await assert.rejects(writer.sendChunk(Buffer.alloc(30), { file, fileOffset: -1, byteCount: 1 }), RangeError);
      await assert.rejects(writer.sendChunk(Buffer.alloc(30), { file, fileOffset: 0, byteCount: CHUNK_BYTES_MAX + 1 }), RangeError);
      await assert.rejects(writer.sendMessage(Buffer.alloc(0)), RangeError);
      await writer.release();
      await assert.rejects(writer.sendMessage(Buffer.from('x')), (error: unknown) => isWalcastError(error, 'WALCAST_ERR_STREAM_IO'));
      client.destroy();
      server.destroy();
    });

    test('a segment that grows while it is streamed (the live segment) is sent past its first size', async () => {
      const path = join(dir, `growing-${strategy}`);
      const first = randomBytes(CHUNK_BYTES_MAX * 2);
      const second = randomBytes(CHUNK_BYTES_MAX * 2);
      writeFileSync(path, first);
      const file = { fd: openSync(path, 'r'), path };
      const { client, server } = await connectPair(loopback);
      try {
        const header = Buffer.alloc(HEADER_BYTES, 7);
        const received = collect(client, 2 * (HEADER_BYTES + CHUNK_BYTES_MAX));
        const writer = await backend.openStream(server);
        await writer.sendChunk(header, { file, fileOffset: CHUNK_BYTES_MAX, byteCount: CHUNK_BYTES_MAX });
        appendFileSync(path, second);
        await writer.sendChunk(header, { file, fileOffset: 3 * CHUNK_BYTES_MAX, byteCount: CHUNK_BYTES_MAX });
        await writer.release();
        const expected = Buffer.concat([header, first.subarray(CHUNK_BYTES_MAX), header, second.subarray(CHUNK_BYTES_MAX)]);
        assert.ok((await received).equals(expected));
      } finally {
        closeSync(file.fd);
        client.destroy();
        server.destroy();
      }
    });

    test('a chunk beyond the end of its file fails the stream, without a crash', async () => {
      const { client, server } = await connectPair(loopback);
      const writer = await backend.openStream(server);
      const file = segments[0]!.handle;
      const error = await writer.sendChunk(Buffer.alloc(HEADER_BYTES), { file, fileOffset: SEGMENT_BYTES - 100, byteCount: 200 }).then(
        () => writer.release().then(() => undefined),
        (caught: unknown) => caught,
      );
      // sendfile sends the 100 bytes that exist and then fails; mmap strategies refuse up front.
      assert.ok(isWalcastError(error, 'WALCAST_ERR_STREAM_IO'), `expected a stream error, got ${String(error)}`);
      assert.ok(error.cause instanceof NativeIoError);
      assert.equal(error.cause.code, 'ENXIO');
      await writer.release();
      client.destroy();
      server.destroy();
    });

    test('prefetch of a cold range resolves, and the range then sends correctly', async () => {
      const loaded = loadNativeAddon();
      assert.ok(loaded.ok);
      const segment = segments[2]!;
      loaded.addon.dropCache(segment.handle.fd, 0, SEGMENT_BYTES);
      const { client, server } = await connectPair(loopback);
      const writer = await backend.openStream(server);
      const units = planRange(2 * SEGMENT_BYTES, 3 * SEGMENT_BYTES);
      // As the sender's Prefetcher does: whole windows, larger than a send chunk.
      await writer.prefetch({ file: segment.handle, fileOffset: 0, byteCount: SEGMENT_BYTES });
      const expected = expectedBytes(units);
      const received = collect(client, expected.length);
      await sendAll(writer, units);
      await writer.release();
      assert.ok((await received).equals(expected));
      client.destroy();
      server.destroy();
    });

    // The engine works on one request per file at a time and waits for the kernel's readahead page by page, falling
    // back to reading a range in full: with readahead on or off, every requested byte is up to date once the
    // requests resolve, and a range nobody asked for is not read whole.
    for (const readahead of ['on', 'off'] as const) {
      test(`prefetch of a cold file's window in 1 MiB pieces, all asked at once, readahead ${readahead}: every piece up to date`, async () => {
        const loaded = loadNativeAddon();
        assert.ok(loaded.ok);
        const directory = mkdtempSync(join(tmpdir(), 'walcast-prefetch-'));
        const path = join(directory, 'window');
        const pieceBytes = 1024 * 1024;
        const pieces = 6;
        writeFileSync(path, randomBytes((pieces + 2) * pieceBytes));
        const fd = openSync(path, 'r');
        try {
          // Written pages are dirty, and DONTNEED skips dirty pages: write them back first.
          fdatasyncSync(fd);
          loaded.addon.dropCache(fd, 0, 0);
          assert.equal(loaded.addon.residentBytes(fd, 0, (pieces + 2) * pieceBytes), 0, 'the file starts cold');
          if (readahead === 'off') loaded.addon.adviseRandom(fd);
          const { client, server } = await connectPair(loopback);
          const writer = await backend.openStream(server);
          const file = { fd, path };
          // As the sender's Prefetcher does: the current piece from the send position, the window ahead whole.
          const from = 12_345;
          await Promise.all(Array.from({ length: pieces }, (_, index) => (index === 0 ? writer.prefetch({ file, fileOffset: from, byteCount: pieceBytes - from }) : writer.prefetch({ file, fileOffset: index * pieceBytes, byteCount: pieceBytes }))));
          const page = 4096;
          const firstPage = Math.floor(from / page) * page;
          assert.equal(loaded.addon.residentBytes(fd, firstPage, pieces * pieceBytes - firstPage), pieces * pieceBytes - firstPage);
          if (readahead === 'off') assert.equal(loaded.addon.residentBytes(fd, (pieces + 1) * pieceBytes, pieceBytes), 0, 'without readahead nothing past the window is read');
          await writer.release();
          client.destroy();
          server.destroy();
        } finally {
          closeSync(fd);
          rmSync(directory, { recursive: true, force: true });
        }
      });
    }
  });
}

/**
 * The storm hang: storage closed a segment, accept() gave its number to a new client, and a late prefetch of the old
 * chunk made the engine READ the client's socket, swallowing its startup packet (the client then hung until the
 * authentication timeout). The engine must refuse any descriptor that is not a regular file, before any read.
 */
describe('prefetch of a descriptor that is a socket now', { skip }, () => {
  for (const [strategy, code] of [['sendfile', 0], ['writev', 1], ['uring', 2]] as const) {
    test(`native ${strategy}: the engine refuses it with ESPIPE and the socket's bytes all reach Node`, async () => {
      const loaded = loadNativeAddon();
      assert.ok(loaded.ok);
      // Paused: Node does not read the accepted socket, so the bytes wait in the kernel as a startup packet does.
      const loopback = await listen({ pauseOnConnect: true });
      const { client, server } = await connectPair(loopback);
      const engine: NativeEngine = new loaded.addon.Engine(code, () => undefined);
      try {
        const packet = randomBytes(4096);
        client.write(packet);
        await new Promise((resolve) => setTimeout(resolve, 50));
        const serverFd = (server as unknown as { _handle: { fd: number } })._handle.fd;
        assert.throws(() => engine.prefetch(serverFd, 0, 4096, 1), (error: unknown) => error instanceof NativeIoError && error.code === 'ESPIPE');
        // A READ submitted anyway would complete within this wait and take the bytes.
        await new Promise((resolve) => setTimeout(resolve, 100));
        const received = collect(server, packet.length, 2_000);
        server.resume();
        assert.ok((await received).equals(packet), 'every byte the client sent reached the server');
      } finally {
        engine.close();
        client.destroy();
        server.destroy();
        loopback.server.close();
      }
    });
  }

  test('the backend skips a chunk whose file storage has closed, and survives a stale number that is a socket', async () => {
    const loopback = await listen({ pauseOnConnect: true });
    const { client, server } = await connectPair(loopback);
    // The stream whose sender prefetches; the victim is another connection, as in the storm.
    const streamLoopback = await listen();
    const replica = await connectPair(streamLoopback);
    const backend = await createNativeBackend('uring');
    try {
      const writer = await backend.openStream(replica.server);
      const packet = randomBytes(4096);
      client.write(packet);
      await new Promise((resolve) => setTimeout(resolve, 50));
      const serverFd = (server as unknown as { _handle: { fd: number } })._handle.fd;
      await writer.prefetch({ file: { fd: serverFd, path: 'closed-segment', closed: true }, fileOffset: 0, byteCount: 4096 });
      await writer.prefetch({ file: { fd: serverFd, path: 'stale-segment' }, fileOffset: 0, byteCount: 4096 });
      await new Promise((resolve) => setTimeout(resolve, 100));
      const received = collect(server, packet.length, 2_000);
      server.resume();
      assert.ok((await received).equals(packet), 'every byte the client sent reached the server');
      await writer.release();
    } finally {
      await backend.close();
      client.destroy();
      server.destroy();
      loopback.server.close();
      streamLoopback.server.close();
    }
  });

  test('a native stream asks for prefetch pieces the addon takes in one request, two of them ahead', async () => {
    const loopback = await listen();
    const replica = await connectPair(loopback);
    const backend = await createNativeBackend('sendfile');
    try {
      const writer = await backend.openStream(replica.server);
      // One request per piece: a piece split by the backend would pay the per-piece hops (thread read, event, pool
      // check) per part again (docs/benchmarks.md, "Cold catch-up next to a busy CPU").
      assert.equal(writer.prefetchShape?.pieceBytes, NATIVE_PREFETCH_BYTES_MAX);
      assert.equal(writer.prefetchShape?.windowBytes, 2 * NATIVE_PREFETCH_BYTES_MAX);
      await writer.release();
    } finally {
      await backend.close();
      replica.client.destroy();
      replica.server.destroy();
      loopback.server.close();
    }
  });
});

describe('native errors', { skip }, () => {
  test('the addon builds errors with errno, code and syscall, with a fallback code', () => {
    const loaded = loadNativeAddon();
    assert.ok(loaded.ok);
    const known = loaded.addon.errorForTest(osConstants.errno.EPIPE);
    assert.ok(known instanceof NativeIoError);
    assert.equal(known.errno, osConstants.errno.EPIPE);
    assert.equal(known.code, 'EPIPE');
    assert.equal(known.syscall, 'errorForTest');
    assert.match(known.message, /errorForTest failed: EPIPE/);
    const unknown = loaded.addon.errorForTest(4095);
    assert.equal(unknown.code, 'UNKNOWN_ERRNO_4095');
  });

  test('C++ checks its arguments again with the same macro, as TypeError/RangeError', () => {
    const loaded = loadNativeAddon();
    assert.ok(loaded.ok);
    const engine = new loaded.addon.Engine(0, () => undefined);
    try {
      assert.throws(() => engine.openStream(-1), RangeError);
      assert.throws(() => engine.sendChunk(1, 'header' as unknown as Buffer, 0, 0, 1), TypeError);
      assert.throws(() => engine.sendChunk(1, Buffer.alloc(30), 0, 0, 1 << 20), RangeError);
      assert.throws(() => engine.openStream(1.5), RangeError);
      const ids = new Float64Array([1, 2]);
      const statuses = new Int32Array(2);
      assert.throws(() => engine.sendChunkBatch([1, 2] as unknown as Float64Array, 2, Buffer.alloc(30), 0, 0, 1, statuses), TypeError);
      assert.throws(() => engine.sendChunkBatch(ids, 2, Buffer.alloc(30), 0, 0, 1, new Uint32Array(2) as unknown as Int32Array), TypeError);
      assert.throws(() => engine.sendChunkBatch(ids, 0, Buffer.alloc(30), 0, 0, 1, statuses), RangeError);
      assert.throws(() => engine.sendChunkBatch(ids, 3, Buffer.alloc(30), 0, 0, 1, statuses), RangeError);
      assert.throws(() => engine.sendChunkBatch(new Float64Array([1.5, 2]), 2, Buffer.alloc(30), 0, 0, 1, statuses), RangeError);
      assert.throws(() => engine.sendChunkBatch(ids, 2, Buffer.alloc(30), 0, 0, 1 << 20, statuses), RangeError);
      const ranges = new Float64Array([0, 0, 1, 0, 0, 1]);
      const result = new Int32Array(2);
      assert.throws(() => engine.sendChunkRun(1, Buffer.alloc(60), 30, [0, 0, 1] as unknown as Float64Array, 0, 1, result), TypeError);
      assert.throws(() => engine.sendChunkRun(1, Buffer.alloc(60), 30, ranges, 0, 1, new Int32Array(1)), TypeError);
      assert.throws(() => engine.sendChunkRun(1, Buffer.alloc(60), 30, ranges, 0, 0, result), RangeError);
      assert.throws(() => engine.sendChunkRun(1, Buffer.alloc(60), 30, ranges, 0, 3, result), RangeError, 'ranges hold two chunks');
      assert.throws(() => engine.sendChunkRun(1, Buffer.alloc(59), 30, ranges, 0, 2, result), RangeError, 'headers hold less than two');
      assert.throws(() => engine.sendChunkRun(1, Buffer.alloc(60), 30, new Float64Array([0, 0, 1 << 20]), 0, 1, result), RangeError);
      assert.throws(() => engine.sendChunkRun(1, Buffer.alloc(60), 30, new Float64Array([0, 0.5, 1]), 0, 1, result), RangeError);
      // A stream that is not open: the first chunk fails, none was taken.
      assert.throws(() => engine.sendChunkRun(1, Buffer.alloc(60), 30, ranges, 0, 2, result), (error: unknown) => error instanceof NativeIoError && error.code === 'EBADF');
      assert.equal(result[0], 0);
      // Streams that are not open fail one by one, each with its own error at its index.
      const errors = engine.sendChunkBatch(ids, 2, Buffer.alloc(30), 0, 0, 1, statuses);
      assert.deepEqual([...statuses], [-1, -1]);
      assert.ok(errors?.[0] instanceof NativeIoError && errors[0].code === 'EBADF' && errors[1] instanceof NativeIoError);
      // A method called on something that is not an Engine is refused, not unwrapped.
      const openStream = loaded.addon.Engine.prototype.openStream as (this: unknown, fd: number) => number;
      assert.throws(() => openStream.call({}, 1));
      // A descriptor that is not open fails in the syscall, as a NativeIoError.
      assert.throws(() => engine.openStream(999_999), (error: unknown) => error instanceof NativeIoError && error.code === 'EBADF' && error.syscall === 'dup');
    } finally {
      engine.close();
    }
  });

  test('closing the engine from inside its own event callback is safe', async () => {
    const loaded = loadNativeAddon();
    assert.ok(loaded.ok);
    const loopback = await listen();
    const { client, server } = await connectPair(loopback);
    client.pause();
    let events = 0;
    let closedInside: () => void = () => undefined;
    const closed = new Promise<void>((resolve) => (closedInside = resolve));
    const engine: NativeEngine = new loaded.addon.Engine(0, () => {
      events++;
      engine.close();
      closedInside();
    });
    try {
      const id = engine.openStream((server as unknown as { _handle: { fd: number } })._handle.fd);
      const file = segments[0]!.handle;
      // Fill the paused receiver's buffers until the engine queues, then let it drain: a space event follows.
      let status = 0;
      for (let offset = 0; status !== 2 && offset < 64 * SEGMENT_BYTES; offset += CHUNK_BYTES_MAX) {
        status = engine.sendChunk(id, Buffer.alloc(HEADER_BYTES), file.fd, offset % SEGMENT_BYTES, CHUNK_BYTES_MAX);
      }
      assert.equal(status, 2, 'the stream reached its in-flight bound');
      client.resume();
      await closed;
      assert.equal(events, 1, 'no events after close');
      assert.throws(() => engine.openStream(0), /closed/);
    } finally {
      engine.close();
      client.destroy();
      server.destroy();
      loopback.server.close();
    }
  });

  test('an unknown strategy is refused before the addon is asked', async () => {
    await assert.rejects(createNativeBackend('splice' as NativeStrategy), RangeError);
  });
});
