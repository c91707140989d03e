/**
 * The AddressSanitizer test of the native engine's buffer lifetimes (issue 15): for every strategy, 1,000 streams
 * to real loopback receivers (some paused, so their sends stay in flight) get sends (chunks, alone and in
 * sendChunkRun runs, and messages large enough to live on the heap) and cold prefetch reads; then every stream is
 * closed with its sends and the reads still in flight. In the first half the event loop then reaps the cancelled sends (closing streams are freed by
 * their completions); in the second half the engine is closed at once, so close() itself must wait for them.
 *
 * It only means something under ASan: `npm run test:asan` (scripts/test-native-asan.mjs) builds the addon with
 * -fsanitize=address into build-asan/ and runs this file with libasan preloaded. The sanitizer build records each
 * buffer lent to an io_uring request and checks it when the completion is reaped or the engine closes
 * (native/kernel-loans.h), so memory freed while the kernel could still use it aborts the run with an ASan report.
 * Not named *.test.ts: the ordinary suite (scripts/run-tests.mjs) does not pick it up.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { NATIVE_STRATEGIES } from '../src/io/native-backend.js';
import { NATIVE_STRATEGY_CODES, NativeEventKind, NativeSendStatus, loadNativeAddon, type NativeAddon, type NativeEngine } from '../src/io/native-binding.js';
import { waitFor } from './support/wait-for.js';

/** Streams per strategy, in two halves (reaped by the loop; closed with the engine). */
const STREAMS = 1000;
const HALVES = 2;
/** Every PAUSED_EVERY-th receiver never reads: 25 per half, each holding about 4 MiB of loopback buffers. */
const PAUSED_EVERY = 20;
/** Receivers connected at once while a half is set up (the listen backlog is 511). */
const CONNECT_BATCH = 100;
const FILE_COUNT = 4;
const FILE_BYTES = 8 * 1024 * 1024;
const CHUNK_BYTES = 128 * 1024;
const HEADER_BYTES = 30;
/** Larger than the engine's inline header room (64 bytes): the message lives in a heap vector the kernel reads. */
const HEAP_MESSAGE_BYTES = 4096;
/** Prefetch requests per half (1 MiB each, cold): 12 per file, so most queue behind their file's active request. */
const PREFETCHES = 48;
const PREFETCH_BYTES = 1024 * 1024;
/** A paused receiver's sender counts as stuck once no space event came for this long (loopback takes ~4 MiB). */
const STUCK_MS = 300;
/** Units a paused receiver's sender tries before giving up: 400 x 128 KiB is far beyond any loopback buffer. */
const FILL_UNITS_MAX = 400;
/** Bound for every wait here: connects, reaping the closed streams, descriptors settling. */
const STEP_TIMEOUT_MS = 60_000;

let dir = '';
/** Sent from. */
const files: number[] = [];
/** Only prefetched, never sent: sendfile's socket buffers pin the pages of sent files, which then stay cached. */
const coldFiles: number[] = [];

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'walcast-asan-'));
  for (let index = 0; index < 2 * FILE_COUNT; index++) {
    const path = join(dir, `segment-${index}`);
    writeFileSync(path, randomBytes(FILE_BYTES), { flush: true }); // dirty pages cannot be dropped from the cache
    (index < FILE_COUNT ? files : coldFiles).push(openSync(path, 'r'));
  }
});

after(() => {
  for (const fd of [...files, ...coldFiles]) closeSync(fd);
  rmSync(dir, { recursive: true, force: true });
});

function loadAsanAddon(): NativeAddon {
  const expected = process.env.WALCAST_NATIVE_PATH;
  assert.ok(expected, 'run through `npm run test:asan`: WALCAST_NATIVE_PATH must name the ASan build');
  assert.match(readFileSync('/proc/self/maps', 'utf8'), /libasan/, 'libasan must be preloaded (LD_PRELOAD)');
  const loaded = loadNativeAddon();
  assert.ok(loaded.ok, loaded.ok ? '' : loaded.reason);
  assert.equal(loaded.path, resolve(expected));
  return loaded.addon;
}

/** Routes engine events to per-stream space waiters and per-token prefetch counters. */
class Events {
  readonly spaceWaiters = new Map<number, () => void>();
  prefetched = 0;
  failures = 0;

  readonly handler = (kind: NativeEventKind, id: number): void => {
    if (kind === NativeEventKind.prefetched) this.prefetched++;
    if (kind === NativeEventKind.failed) this.failures++;
    if (kind === NativeEventKind.space) {
      const wake = this.spaceWaiters.get(id);
      this.spaceWaiters.delete(id);
      wake?.();
    }
  };

  /** True when a space event for `id` came within STUCK_MS. */
  space(id: number): Promise<boolean> {
    return new Promise((done) => {
      const timer = setTimeout(() => {
        this.spaceWaiters.delete(id);
        done(false);
      }, STUCK_MS);
      this.spaceWaiters.set(id, () => {
        clearTimeout(timer);
        done(true);
      });
    });
  }
}

interface Pair {
  client: Socket;
  server: Socket;
  paused: boolean;
}

/** Connects `count` receivers; `accepted` is the server's live list of accepted sockets (the senders). */
async function connectPairs(server: Server, count: number, accepted: Socket[]): Promise<Pair[]> {
  const address = server.address();
  assert.ok(address !== null && typeof address === 'object');
  const clients: Socket[] = [];
  for (let start = 0; start < count; start += CONNECT_BATCH) {
    const batch = Math.min(CONNECT_BATCH, count - start);
    clients.push(
      ...(await Promise.all(
        Array.from({ length: batch }, async () => {
          const client = createConnection({ host: '127.0.0.1', port: address.port });
          client.on('error', () => undefined);
          await new Promise<void>((connected) => client.once('connect', () => connected()));
          return client;
        }),
      )),
    );
  }
  await waitFor(async () => (accepted.length >= count ? true : undefined), STEP_TIMEOUT_MS, { what: 'accepts', pollMs: 5 });
  // Accepts need not come in connect order: pair each client with the server socket whose peer port is its own.
  const byPeerPort = new Map(accepted.map((socket) => [socket.remotePort, socket]));
  return clients.map((client, index) => {
    const paused = index % PAUSED_EVERY === 0;
    if (paused) client.pause();
    else client.on('data', () => undefined);
    const serverSide = byPeerPort.get(client.localPort);
    assert.ok(serverSide !== undefined, 'every client was accepted');
    return { client, server: serverSide, paused };
  });
}

function socketFd(socket: Socket): number {
  const fd = (socket as unknown as { _handle: { fd: number } })._handle.fd;
  assert.ok(Number.isInteger(fd) && fd >= 0);
  return fd;
}

const header = Buffer.alloc(HEADER_BYTES, 0x77);
const heapMessage = Buffer.alloc(HEAP_MESSAGE_BYTES, 0x6b);
const inlineMessage = Buffer.from('k-inline');

function sendChunk(engine: NativeEngine, id: number, unit: number): NativeSendStatus {
  const file = files[unit % FILE_COUNT]!;
  return engine.sendChunk(id, header, file, (unit * CHUNK_BYTES) % FILE_BYTES, CHUNK_BYTES);
}

/** sendChunkRun's buffers: one header per chunk, (fd, offset, bytes) per chunk, the addon's answer. */
const RUN_CHUNKS = 3;
const runHeaders = Buffer.alloc(RUN_CHUNKS * HEADER_BYTES, 0x72);
const runRanges = new Float64Array(RUN_CHUNKS * 3);
const runResult = new Int32Array(2);

/** A catch-up run of RUN_CHUNKS chunks from `unit` on (the addon stops early at the in-flight bound). */
function sendRun(engine: NativeEngine, id: number, unit: number): NativeSendStatus {
  for (let index = 0; index < RUN_CHUNKS; index++) {
    runRanges[index * 3] = files[(unit + index) % FILE_COUNT]!;
    runRanges[index * 3 + 1] = ((unit + index) * CHUNK_BYTES) % FILE_BYTES;
    runRanges[index * 3 + 2] = CHUNK_BYTES;
  }
  engine.sendChunkRun(id, runHeaders, HEADER_BYTES, runRanges, 0, RUN_CHUNKS, runResult);
  return runResult[1] as NativeSendStatus;
}

/** A paused receiver: chunks (alone, or in runs on odd streams) and heap messages until the stream waits for room that never comes. */
async function fillUntilStuck(engine: NativeEngine, events: Events, id: number): Promise<void> {
  for (let unit = 0; unit < FILL_UNITS_MAX; unit++) {
    const status = unit % 3 === 2 ? engine.sendMessage(id, heapMessage) : id % 2 === 1 ? sendRun(engine, id, unit) : sendChunk(engine, id, unit);
    if (status === NativeSendStatus.queueFull && !(await events.space(id))) return;
  }
  assert.fail(`a receiver that does not read took ${FILL_UNITS_MAX} units without blocking the sender`);
}

/** A reading receiver: a heap message first (it is the send in flight on uring), then chunks and a small message. */
function sendSome(engine: NativeEngine, id: number): void {
  engine.sendMessage(id, heapMessage);
  if (id % 2 === 1) {
    sendRun(engine, id, id);
  } else {
    sendChunk(engine, id, id);
    sendChunk(engine, id, id + 1);
  }
  engine.sendMessage(id, inlineMessage);
}

/** Cold 1 MiB reads across the files: dropped from the page cache first, so they go to io-wq and the disk. */
function startPrefetches(addon: NativeAddon, engine: NativeEngine, firstToken: number): number {
  for (const fd of coldFiles) addon.dropCache(fd, 0, FILE_BYTES);
  let issued = 0;
  for (let index = 0; index < PREFETCHES; index++) {
    const fd = coldFiles[index % FILE_COUNT]!;
    const offset = (Math.floor(index / FILE_COUNT) * PREFETCH_BYTES) % FILE_BYTES;
    if (!engine.prefetch(fd, offset, PREFETCH_BYTES, firstToken + index)) issued++;
  }
  return issued;
}

function openFdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

for (const strategy of NATIVE_STRATEGIES) {
  test(`native ${strategy}: ${STREAMS} streams closed with sends and prefetch reads in flight, then the engine`, { timeout: 10 * STEP_TIMEOUT_MS }, async () => {
    const addon = loadAsanAddon();
    const accepted: Socket[] = [];
    const server = createServer((socket) => {
      socket.on('error', () => undefined);
      accepted.push(socket);
    });
    await new Promise<void>((listening) => server.listen(0, '127.0.0.1', listening));
    const fdsBefore = openFdCount();
    const events = new Events();
    const engine = new addon.Engine(NATIVE_STRATEGY_CODES[strategy], events.handler);
    const allPairs: Pair[] = [];
    let readsIssued = 0;
    try {
      for (let half = 0; half < HALVES; half++) {
        accepted.length = 0;
        const pairs = await connectPairs(server, STREAMS / HALVES, accepted);
        allPairs.push(...pairs);
        const ids = pairs.map((pair) => engine.openStream(socketFd(pair.server)));
        await Promise.all(ids.filter((_, index) => pairs[index]!.paused).map((id) => fillUntilStuck(engine, events, id)));
        // In the same tick as the closes below: these sends' completions are not reaped yet when their streams close.
        for (const [index, id] of ids.entries()) if (!pairs[index]!.paused) sendSome(engine, id);
        readsIssued += startPrefetches(addon, engine, 1 + half * PREFETCHES);
        // The case under test must really happen: requests the kernel still works on when their owners close.
        const inFlight = engine.stats();
        assert.ok(inFlight.readsInFlight > 0, 'prefetch reads in flight at the closes');
        if (strategy === 'uring') assert.ok(inFlight.sendsInFlight > ids.length / 2, `sends in flight at the closes: ${inFlight.sendsInFlight}`);
        for (const id of ids) engine.closeStream(id);
        if (half === 0) {
          // The loop reaps the cancelled sends; each closing stream is freed by its last completion.
          await waitFor(async () => (engine.stats().streams === 0 ? true : undefined), STEP_TIMEOUT_MS, { what: 'closed streams reaped', pollMs: 10 });
          await waitFor(async () => (events.prefetched === readsIssued ? true : undefined), STEP_TIMEOUT_MS, { what: 'prefetch reads reaped', pollMs: 10 });
        }
      }
      // Second half: sends (uring) and reads still in flight; close() must wait for every one before freeing.
      const closing = engine.stats();
      assert.ok(closing.readsInFlight > 0 && (strategy !== 'uring' || closing.sendsInFlight > 0), `in flight at close(): ${JSON.stringify(closing)}`);
      engine.close();
      const closed = engine.stats();
      assert.deepEqual([closed.streams, closed.sendsInFlight, closed.readsInFlight], [0, 0, 0], 'close() reaped and freed everything');
      assert.equal(events.failures, 0, 'closing a stream is not a failure');
    } finally {
      engine.close();
      for (const { client, server: serverSide } of allPairs) {
        client.destroy();
        serverSide.destroy();
      }
      server.close();
    }
    assert.ok(readsIssued > 0, 'some prefetch reads went to io_uring (the files were cold)');
    await waitFor(async () => (openFdCount() <= fdsBefore ? true : undefined), STEP_TIMEOUT_MS, { what: 'descriptors back to the start', pollMs: 20 });
  });
}
