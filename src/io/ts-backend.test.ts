/**
 * The TS backend on a real loopback socket and a real file: frames in flight per stream stay within
 * STREAM_CHUNKS_IN_FLIGHT_MAX when a chunk and a keepalive are sent concurrently (issue 15, item 6), and the
 * bytes reach the peer in call order. Catch-up runs (sendChunkRun): the bytes of each chunk sent one by one, in parts
 * within the send pool, with a slow or vanishing reader and a read that fails mid-run.
 */
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { TLSSocket, connect as connectTls, createServer as createTlsServer } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { pino } from 'pino';
import { BatchOutcome, type WalChunk } from './backend.js';
import { isWalcastError } from '../errors.js';
import { crc32c } from '../storage/crc32c.js';
import { ARENA_BYTES } from '../storage/crc32c-wasm.js';
import { BufferPool } from './buffer-pool.js';
import {
  BATCH_FRAME_BYTES_WRITTEN_OFF_MAX,
  CHECKSUM_BUFFER_BYTES,
  CHECKSUM_RANGE_BYTES_MAX,
  FRAME_BYTES_MAX,
  STREAM_CHUNKS_IN_FLIGHT_MAX,
  STREAM_SENDS_WAITING_MAX,
  checksumPagesByReading,
  createChecksumPool,
  createTsBackend,
} from './ts-backend.js';
import { VERIFIED_READS_KEPT_MAX, VerifiedReads } from './verified-reads.js';
import { makeTestCertificates } from '../../test/support/tls-certs.js';

const CHUNK_BYTES = 128 * 1024;
const HEADER_BYTES = 30;
/** Far more than loopback's socket buffers take, so writes after it stay queued until the peer reads. */
const FILLER_BYTES = 64 * 1024 * 1024;

const dir = mkdtempSync(join(tmpdir(), 'walcast-ts-backend-'));
const path = join(dir, 'segment');
const content = Buffer.alloc(2 * CHUNK_BYTES);
for (let index = 0; index < content.length; index++) content[index] = (index * 13 + 5) & 0xff;
writeFileSync(path, content);

/** A connected pair over 127.0.0.1; the accepted side is paused so nothing is read until the test says so. */
async function socketPair(): Promise<{ server: Server; local: Socket; peer: Socket }> {
  const server = createServer({ pauseOnConnect: true });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  assert.ok(address !== null && typeof address === 'object');
  const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
  const local = connect({ host: '127.0.0.1', port: address.port });
  await new Promise<void>((resolve) => local.once('connect', resolve));
  return { server, local, peer: await accepted };
}

/** Tears down socketPair()s: both ends destroyed, the listener closed. */
function closePairs(pairs: readonly { readonly server: Server; readonly local: Socket; readonly peer: Socket }[]): void {
  for (const { server, local, peer } of pairs) {
    local.destroy();
    peer.destroy();
    server.close();
  }
}

/** Counts socket writes made after `arm()` whose callbacks have not run, and the most seen at once. */
function countWritesInFlight(socket: Socket): { arm(): void; now(): number; max(): number } {
  const original = socket.write.bind(socket) as (bytes: Buffer, callback: (error?: Error | null) => void) => boolean;
  let armed = false;
  let now = 0;
  let max = 0;
  (socket as unknown as { write: typeof original }).write = (bytes, callback) => {
    if (!armed) return original(bytes, callback);
    now++;
    max = Math.max(max, now);
    return original(bytes, (error) => {
      now--;
      callback(error);
    });
  };
  return { arm: () => (armed = true), now: () => now, max: () => max };
}

function header(marker: number, payloadBytes: number): Buffer {
  const bytes = Buffer.alloc(HEADER_BYTES, marker);
  bytes.write('d', 0, 'latin1');
  bytes.writeUInt32BE(4 + 25 + payloadBytes, 1);
  return bytes;
}

test('a chunk and a keepalive sent concurrently stay within the in-flight bound and keep their order', async () => {
  const { server, local, peer } = await socketPair();
  const fd = openSync(path, 'r');
  const backend = createTsBackend();
  try {
    const spy = countWritesInFlight(local);
    // The peer reads nothing yet: this fills the kernel buffers and leaves the rest queued in Node.
    local.write(Buffer.alloc(FILLER_BYTES, 0x11));
    const writer = await backend.openStream(local);
    spy.arm();
    // Chunk i: the file's chunk i % 2, behind a header marked 0xa0 + i.
    const chunk = (index: number): WalChunk => ({ file: { fd, path }, fileOffset: (index % 2) * CHUNK_BYTES, byteCount: CHUNK_BYTES });
    const frameOf = (index: number): Buffer => Buffer.concat([header(0xa0 + index, CHUNK_BYTES), content.subarray((index % 2) * CHUNK_BYTES, (index % 2 + 1) * CHUNK_BYTES)]);
    for (let index = 0; index < STREAM_CHUNKS_IN_FLIGHT_MAX - 1; index++) await writer.sendChunk(header(0xa0 + index, CHUNK_BYTES), chunk(index));
    assert.equal(spy.now(), STREAM_CHUNKS_IN_FLIGHT_MAX - 1, 'the frames wait in the socket');
    // A chunk (whose read takes a trip to the thread pool) and a keepalive, both while the stream has room for one.
    const keepalive = Buffer.from('keepalive-bytes');
    const last = STREAM_CHUNKS_IN_FLIGHT_MAX - 1;
    const lastSend = writer.sendChunk(header(0xa0 + last, CHUNK_BYTES), chunk(last));
    const message = writer.sendMessage(keepalive);
    let messageSettled = false;
    void message.then(() => (messageSettled = true), () => (messageSettled = true));
    await lastSend;
    assert.equal(spy.now(), STREAM_CHUNKS_IN_FLIGHT_MAX, 'every frame waits in the socket');
    assert.equal(messageSettled, false, 'the keepalive waits for room instead of passing the bound');
    assert.ok(spy.max() <= STREAM_CHUNKS_IN_FLIGHT_MAX, `at most ${STREAM_CHUNKS_IN_FLIGHT_MAX} in flight, saw ${spy.max()}`);

    const frames = Array.from({ length: STREAM_CHUNKS_IN_FLIGHT_MAX }, (_, index) => frameOf(index));
    const expectedBytes = FILLER_BYTES + STREAM_CHUNKS_IN_FLIGHT_MAX * (HEADER_BYTES + CHUNK_BYTES) + keepalive.length;
    const received: Buffer[] = [];
    let receivedBytes = 0;
    const all = new Promise<void>((resolve) => {
      peer.on('data', (data: Buffer) => {
        received.push(data);
        receivedBytes += data.length;
        if (receivedBytes >= expectedBytes) resolve();
      });
    });
    peer.resume();
    await message;
    await writer.release();
    await all;
    assert.ok(spy.max() <= STREAM_CHUNKS_IN_FLIGHT_MAX, `at most ${STREAM_CHUNKS_IN_FLIGHT_MAX} in flight, saw ${spy.max()}`);
    const stream = Buffer.concat(received).subarray(FILLER_BYTES);
    assert.ok(stream.equals(Buffer.concat([...frames, keepalive])), 'frames and the keepalive arrive whole, in call order');
    assert.equal(writer.bytesSent, STREAM_CHUNKS_IN_FLIGHT_MAX * (HEADER_BYTES + CHUNK_BYTES) + keepalive.length);
  } finally {
    closeSync(fd);
    local.destroy();
    peer.destroy();
    server.close();
    await backend.close();
  }
});

test('a replica that asks for more sends than it reads fails its stream instead of queueing without bound', async () => {
  const { server, local, peer } = await socketPair();
  const backend = createTsBackend();
  try {
    local.write(Buffer.alloc(FILLER_BYTES, 0x11));
    const writer = await backend.openStream(local);
    // Called back to back: none has started when the last one is queued, so it finds the queue full.
    const sends = Array.from({ length: STREAM_SENDS_WAITING_MAX + 1 }, () => writer.sendMessage(Buffer.from('k')));
    const outcomes = await Promise.allSettled(sends);
    for (const outcome of outcomes) {
      assert.equal(outcome.status, 'rejected');
      assert.ok(outcome.status === 'rejected' && isWalcastError(outcome.reason, 'WALCAST_ERR_STREAM_IO'), 'every waiting send fails with the stream');
    }
    assert.match(String((outcomes.at(-1) as PromiseRejectedResult).reason), /sends waiting: the replica is not reading/);
    await assert.rejects(writer.sendMessage(Buffer.from('k')), (error) => isWalcastError(error, 'WALCAST_ERR_STREAM_IO'));
  } finally {
    local.destroy();
    peer.destroy();
    server.close();
    await backend.close();
  }
});

test('page checksums read through pooled buffers: correct CRCs, one buffer per call at most, returned even on failure', async () => {
  const PAGE = 8192;
  // Longer than one verification buffer, so a call reuses its one buffer for several reads.
  const bytes = 2 * CHECKSUM_RANGE_BYTES_MAX + 3 * PAGE;
  const data = Buffer.alloc(bytes);
  for (let index = 0; index < bytes; index++) data[index] = (index * 31 + 7) & 0xff;
  const file = join(dir, 'pages');
  writeFileSync(file, data);
  const fd = openSync(file, 'r');
  try {
    const expected = new Uint32Array(bytes / PAGE);
    for (let page = 0; page < expected.length; page++) expected[page] = crc32c(data, page * PAGE, (page + 1) * PAGE);
    // One buffer for three concurrent calls: they take turns, none allocates a buffer of its own.
    const pool = createChecksumPool(1);
    const only = pool.tryAcquire();
    assert.ok(only !== undefined);
    // The backend's verification buffers are in the CRC-32C loop's WebAssembly memory (checksummed in place).
    assert.ok(only.buffer.byteLength > ARENA_BYTES, 'a verification buffer is a view of the WebAssembly memory');
    pool.release(only);
    const outs = [0, 1, 2].map(() => new Uint32Array(bytes / PAGE));
    await Promise.all(outs.map((out) => checksumPagesByReading({ file: { fd, path: file }, fileOffset: 0, byteCount: bytes }, PAGE, out, pool)));
    for (const out of outs) assert.deepEqual(out, expected);
    // A pool of heap buffers (the fallback past the arena) gives the same checksums through the copy.
    const heapPool = new BufferPool(CHECKSUM_BUFFER_BYTES, 1);
    const fromHeap = new Uint32Array(bytes / PAGE);
    await checksumPagesByReading({ file: { fd, path: file }, fileOffset: 0, byteCount: bytes }, PAGE, fromHeap, heapPool);
    assert.deepEqual(fromHeap, expected);
    assert.equal(pool.inUse(), 0, 'every call returned its buffer');
    assert.equal(pool.tryAcquire(), only, 'the pool still holds its one buffer: no call allocated another');
    pool.release(only);
    // A range past the end of the file fails the call, and the buffer still goes back.
    await assert.rejects(checksumPagesByReading({ file: { fd, path: file }, fileOffset: bytes - PAGE, byteCount: 2 * PAGE }, PAGE, new Uint32Array(2), pool), (error: unknown) => isWalcastError(error));
    assert.equal(pool.inUse(), 0, 'a failed call returned its buffer');
  } finally {
    closeSync(fd);
  }
});

test('a verified read is sent as it was checksummed: exact bytes, also for a chunk starting inside the range, never for another handle', async () => {
  const { server, local, peer } = await socketPair();
  const fd = openSync(path, 'r');
  const backend = createTsBackend();
  try {
    const received: Buffer[] = [];
    peer.on('data', (data: Buffer) => received.push(data));
    peer.resume();
    const writer = await backend.openStream(local);
    const file = { fd, path };
    // Verified as the page verifier asks: whole pages around the chunk; the chunk starts 100 bytes into the range.
    const out = new Uint32Array(CHUNK_BYTES / 8192);
    await backend.checksumPages({ file, fileOffset: 0, byteCount: CHUNK_BYTES }, 8192, out);
    for (let page = 0; page < out.length; page++) assert.equal(out[page], crc32c(content, page * 8192, (page + 1) * 8192), `page ${page}`);
    const inner = { file, fileOffset: 100, byteCount: CHUNK_BYTES - 100 - 7 };
    await writer.sendChunk(header(0xb1, inner.byteCount), inner);
    // The same range verified through another handle object for the same fd is not taken for this chunk.
    await backend.checksumPages({ file: { fd, path }, fileOffset: CHUNK_BYTES, byteCount: CHUNK_BYTES }, 8192, out);
    const second = { file, fileOffset: CHUNK_BYTES, byteCount: CHUNK_BYTES };
    await writer.sendChunk(header(0xb2, CHUNK_BYTES), second);
    // Taken once: the first range again is read from the file, not from the buffer the header was written into.
    await writer.sendChunk(header(0xb3, inner.byteCount), inner);
    await writer.release();
    const expected = Buffer.concat([
      header(0xb1, inner.byteCount),
      content.subarray(100, 100 + inner.byteCount),
      header(0xb2, CHUNK_BYTES),
      content.subarray(CHUNK_BYTES),
      header(0xb3, inner.byteCount),
      content.subarray(100, 100 + inner.byteCount),
    ]);
    while (Buffer.concat(received).length < expected.length) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.ok(Buffer.concat(received).equals(expected), 'the peer got each header and exactly the chunk bytes');
  } finally {
    closeSync(fd);
    local.destroy();
    peer.destroy();
    server.close();
    await backend.close();
  }
});

test('kept verified reads are bounded: the oldest goes back to the pool, a taken one leaves it', async () => {
  const pool = createChecksumPool(VERIFIED_READS_KEPT_MAX + 2);
  const kept = new VerifiedReads(pool);
  const fd = openSync(path, 'r');
  try {
    const file = { fd, path };
    const out = new Uint32Array(1);
    for (let round = 0; round < VERIFIED_READS_KEPT_MAX + 3; round++) {
      // Ranges 4 KiB apart, so this many fit the 256 KiB file.
      await checksumPagesByReading({ file, fileOffset: round * 4096, byteCount: 8192 }, 8192, out, pool, kept);
      assert.ok(kept.size() <= VERIFIED_READS_KEPT_MAX, 'kept reads stay within their bound');
      assert.equal(pool.inUse(), kept.size(), 'every buffer not kept is back in the pool');
    }
    // The oldest were pushed out; the newest is there and is taken (containing range), exactly once.
    assert.equal(kept.take({ file, fileOffset: 0, byteCount: 8192 }), undefined);
    const newest = (VERIFIED_READS_KEPT_MAX + 2) * 4096;
    // Past the range before it (which ends 4 KiB into this one): only the newest holds these bytes.
    const frame = kept.take({ file, fileOffset: newest + 4106, byteCount: 100 });
    assert.ok(frame !== undefined && frame.frameOffset === 4106);
    assert.ok(frame.buffer.subarray(frame.frameOffset + HEADER_BYTES, frame.frameOffset + HEADER_BYTES + 100).equals(content.subarray(newest + 4106, newest + 4206)));
    assert.equal(kept.take({ file, fileOffset: newest + 4106, byteCount: 100 }), undefined, 'taken once');
    pool.release(frame.buffer);
    // A range read in more than one piece (the prefetcher's verify-ahead) is kept piece by piece, a buffer each.
    const pieceBytes = CHECKSUM_RANGE_BYTES_MAX;
    await checksumPagesByReading({ file, fileOffset: 0, byteCount: pieceBytes + 8192 }, 8192, new Uint32Array(17), pool, kept);
    assert.equal(pool.inUse(), kept.size());
    for (const [fileOffset, byteCount] of [
      [0, pieceBytes],
      [pieceBytes, 8192],
    ] as const) {
      const piece = kept.take({ file, fileOffset, byteCount });
      assert.ok(piece !== undefined && piece.frameOffset === 0, `the piece at ${fileOffset} is kept`);
      assert.ok(piece.buffer.subarray(HEADER_BYTES, HEADER_BYTES + byteCount).equals(content.subarray(fileOffset, fileOffset + byteCount)));
      pool.release(piece.buffer);
    }
    assert.equal(pool.inUse(), kept.size());
  } finally {
    closeSync(fd);
  }
});

test('a kept verified read is taken through another handle of the same file only while its own handle is open', async () => {
  const pool = createChecksumPool(VERIFIED_READS_KEPT_MAX + 2);
  const kept = new VerifiedReads(pool);
  const aheadFd = openSync(path, 'r');
  const sendFd = openSync(path, 'r');
  try {
    // The prefetcher's reader and the sender's reader open the same segment: two handles, one identity.
    const ahead = { fd: aheadFd, path, identity: '1:42', closed: false };
    const send = { fd: sendFd, path, identity: '1:42', closed: false };
    const out = new Uint32Array(2);
    await checksumPagesByReading({ file: ahead, fileOffset: 8192, byteCount: 16384 }, 8192, out, pool, kept);
    assert.equal(kept.take({ file: { fd: sendFd, path, identity: '1:43', closed: false }, fileOffset: 8192, byteCount: 8192 }), undefined, 'another inode');
    assert.equal(kept.take({ file: { fd: sendFd, path }, fileOffset: 8192, byteCount: 8192 }), undefined, 'no identity: the handle object only');
    // A kept handle without the closed mark may be closed unmarked by its creator: matched by its own object only.
    await checksumPagesByReading({ file: { fd: aheadFd, path, identity: '1:42' }, fileOffset: 0, byteCount: 8192 }, 8192, out, pool, kept);
    assert.equal(kept.take({ file: send, fileOffset: 0, byteCount: 8192 }), undefined, 'no closed mark on the kept handle');
    const frame = kept.take({ file: send, fileOffset: 16384, byteCount: 8192 });
    assert.ok(frame !== undefined && frame.frameOffset === 8192, 'the same identity, the kept handle open');
    assert.ok(frame.buffer.subarray(frame.frameOffset + HEADER_BYTES, frame.frameOffset + HEADER_BYTES + 8192).equals(content.subarray(16384, 24576)));
    pool.release(frame.buffer);
    // A read that fails (the range runs past the file's end) keeps nothing of it and returns every buffer.
    const before = kept.size();
    await assert.rejects(checksumPagesByReading({ file: ahead, fileOffset: CHUNK_BYTES, byteCount: 3 * CHUNK_BYTES }, 8192, new Uint32Array(48), pool, kept), /short read/);
    assert.equal(kept.size(), before);
    assert.equal(pool.inUse(), kept.size(), 'a failed read returns its buffers');
    // Once the kept read's handle is closed its inode may be reused: the identity no longer matches.
    await checksumPagesByReading({ file: ahead, fileOffset: 8192, byteCount: 16384 }, 8192, out, pool, kept);
    ahead.closed = true;
    assert.equal(kept.take({ file: send, fileOffset: 16384, byteCount: 8192 }), undefined, 'the kept handle is closed');
    assert.equal(pool.inUse(), kept.size(), 'every buffer not kept is back in the pool');
  } finally {
    closeSync(aheadFd);
    closeSync(sendFd);
  }
});

/** A file of RUN_FILE_CHUNKS chunks with bytes of their own, and a second file, for runs across stretches and files. */
const RUN_FILE_CHUNKS = 10;
const runContent = Buffer.alloc(RUN_FILE_CHUNKS * CHUNK_BYTES);
for (let index = 0; index < runContent.length; index++) runContent[index] = (index * 7 + (index >>> 17) * 3 + 1) & 0xff;
const runPath = join(dir, 'run-segment');
writeFileSync(runPath, runContent);
const otherContent = Buffer.alloc(CHUNK_BYTES, 0x5c);
const otherPath = join(dir, 'other-segment');
writeFileSync(otherPath, otherContent);

/** The headers of a run, one per chunk (each names its chunk's size and index), in one buffer as the sender lays them out. */
function runHeaders(chunks: readonly WalChunk[], marker: number): Buffer {
  return Buffer.concat(chunks.map((chunk, index) => header(marker + index, chunk.byteCount)));
}

/** What the peer must receive for `chunks` behind `headers`: each header, then exactly that chunk's bytes. */
function expectedRun(headers: Buffer, chunks: readonly WalChunk[], contentOf: (chunk: WalChunk) => Buffer): Buffer {
  return Buffer.concat(chunks.flatMap((chunk, index) => [headers.subarray(index * HEADER_BYTES, (index + 1) * HEADER_BYTES), contentOf(chunk)]));
}

/** Collects everything the peer reads from now on. */
function collect(peer: Socket): { bytes(): Buffer; until(length: number): Promise<Buffer> } {
  const received: Buffer[] = [];
  peer.on('data', (data: Buffer) => received.push(data));
  peer.resume();
  const bytes = (): Buffer => Buffer.concat(received);
  return {
    bytes,
    until: async (length) => {
      while (bytes().length < length) await new Promise((resolve) => setTimeout(resolve, 5));
      return bytes();
    },
  };
}

test('a run goes out as its chunks one by one would: exact bytes across stretches, files and the tail cache, in parts the send pool holds', async () => {
  const { server, local, peer } = await socketPair();
  const fd = openSync(runPath, 'r');
  const otherFd = openSync(otherPath, 'r');
  // Three send buffers: the seven-chunk run goes in parts of at most three frames, and nothing is allocated past them.
  const sendPool = new BufferPool(FRAME_BYTES_MAX, 3);
  const backend = createTsBackend({ sendPool });
  try {
    const file = { fd, path: runPath };
    const other = { fd: otherFd, path: otherPath };
    const chunks: WalChunk[] = [
      { file, fileOffset: 0, byteCount: CHUNK_BYTES },
      { file, fileOffset: CHUNK_BYTES, byteCount: CHUNK_BYTES },
      // A shorter chunk (the end of a file), then one of another file, then one after a gap: three more reads.
      { file, fileOffset: 2 * CHUNK_BYTES, byteCount: 100_000 },
      { file: other, fileOffset: 0, byteCount: CHUNK_BYTES },
      { file, fileOffset: 5 * CHUNK_BYTES + 12, byteCount: CHUNK_BYTES - 12 },
      { file, fileOffset: 6 * CHUNK_BYTES, byteCount: CHUNK_BYTES },
      // A commit-sized piece: through the tail cache.
      { file, fileOffset: 7 * CHUNK_BYTES, byteCount: 1000 },
    ];
    const contentOf = (chunk: WalChunk): Buffer => (chunk.file === other ? otherContent : runContent).subarray(chunk.fileOffset, chunk.fileOffset + chunk.byteCount);
    const peerBytes = collect(peer);
    const writer = await backend.openStream(local);
    assert.ok(writer.sendChunkRun !== undefined, 'the TS backend takes runs');
    const headers = runHeaders(chunks, 0x40);
    await writer.sendChunkRun(headers, HEADER_BYTES, chunks);
    // Then a run of the usual shape: full chunks that follow each other, one vectored read.
    const usual = [8, 9].map((index): WalChunk => ({ file, fileOffset: index * CHUNK_BYTES, byteCount: CHUNK_BYTES }));
    const usualHeaders = runHeaders(usual, 0x60);
    await writer.sendChunkRun(usualHeaders, HEADER_BYTES, usual);
    await writer.release();
    const expected = Buffer.concat([expectedRun(headers, chunks, contentOf), expectedRun(usualHeaders, usual, contentOf)]);
    const received = await peerBytes.until(expected.length);
    assert.ok(received.equals(expected), 'the peer got each header and exactly its chunk bytes, in order');
    assert.equal(writer.bytesSent, expected.length);
    assert.equal(sendPool.inUse(), 0, 'every send buffer went back');
    const all = [sendPool.tryAcquire(), sendPool.tryAcquire(), sendPool.tryAcquire()];
    assert.equal(sendPool.tryAcquire(), undefined, 'no buffer was allocated past the pool bound');
    for (const buffer of all) sendPool.release(buffer!);
  } finally {
    closeSync(fd);
    closeSync(otherFd);
    local.destroy();
    peer.destroy();
    server.close();
    await backend.close();
  }
});

test('runs to a replica that does not read: one run in flight, the stream holds its share of the pool, and every byte arrives once it reads', async () => {
  const { server, local, peer } = await socketPair();
  const fd = openSync(runPath, 'r');
  const sendPool = new BufferPool(FRAME_BYTES_MAX, 64);
  const backend = createTsBackend({ sendPool });
  try {
    const file = { fd, path: runPath };
    local.write(Buffer.alloc(FILLER_BYTES, 0x11));
    const writer = await backend.openStream(local);
    const runs = [0, 4, 6, 2].map((start) => Array.from({ length: STREAM_CHUNKS_IN_FLIGHT_MAX }, (_, index): WalChunk => ({ file, fileOffset: ((start + index) % RUN_FILE_CHUNKS) * CHUNK_BYTES, byteCount: CHUNK_BYTES })));
    const headers = runs.map((run, index) => runHeaders(run, 0x10 * (index + 1)));
    const settled: boolean[] = runs.map(() => false);
    const sends = runs.map((run, index) => {
      const sending = writer.sendChunkRun!(headers[index]!, HEADER_BYTES, run);
      void sending.then(() => (settled[index] = true), () => undefined);
      return sending;
    });
    await sends[0];
    // The first run fills the stream's room: the second waits, with the peer reading nothing, and acquires nothing.
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(settled, [true, false, false, false]);
    assert.equal(sendPool.inUse(), STREAM_CHUNKS_IN_FLIGHT_MAX, 'a stream that is not read pins its bound of send buffers, no more');
    const expected = Buffer.concat(runs.map((run, index) => expectedRun(headers[index]!, run, (chunk) => runContent.subarray(chunk.fileOffset, chunk.fileOffset + chunk.byteCount))));
    const peerBytes = collect(peer);
    await Promise.all(sends);
    await writer.release();
    const received = await peerBytes.until(FILLER_BYTES + expected.length);
    assert.ok(received.subarray(FILLER_BYTES).equals(expected), 'every run arrived whole, in call order, after the filler');
    assert.equal(sendPool.inUse(), 0, 'every send buffer went back');
  } finally {
    closeSync(fd);
    local.destroy();
    peer.destroy();
    server.close();
    await backend.close();
  }
});

test('a replica that vanishes mid-run fails the stream: later runs reject, and every send buffer goes back', async () => {
  const { server, local, peer } = await socketPair();
  local.on('error', () => undefined);
  const fd = openSync(runPath, 'r');
  const sendPool = new BufferPool(FRAME_BYTES_MAX, 64);
  const backend = createTsBackend({ sendPool });
  try {
    const file = { fd, path: runPath };
    local.write(Buffer.alloc(FILLER_BYTES, 0x11));
    const writer = await backend.openStream(local);
    const run = Array.from({ length: STREAM_CHUNKS_IN_FLIGHT_MAX }, (_, index): WalChunk => ({ file, fileOffset: index * CHUNK_BYTES, byteCount: CHUNK_BYTES }));
    const headers = runHeaders(run, 0x20);
    await writer.sendChunkRun!(headers, HEADER_BYTES, run);
    assert.ok(sendPool.inUse() >= STREAM_CHUNKS_IN_FLIGHT_MAX, 'the run waits in the socket');
    // Unread bytes in its receive queue: closing the peer resets the connection under the queued frames.
    const closed = new Promise((resolve) => local.once('close', resolve));
    peer.destroy();
    await closed;
    await assert.rejects(writer.sendChunkRun!(headers, HEADER_BYTES, run), (error) => isWalcastError(error, 'WALCAST_ERR_STREAM_IO'));
    await assert.rejects(writer.sendChunk(header(0x30, CHUNK_BYTES), run[0]!), (error) => isWalcastError(error, 'WALCAST_ERR_STREAM_IO'));
    await writer.release();
    while (sendPool.inUse() > 0) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal(sendPool.inUse(), 0, 'the queued frames went back when their writes failed');
  } finally {
    closeSync(fd);
    local.destroy();
    server.close();
    await backend.close();
  }
});

test('a read that fails mid-run rejects the run before any of its part is written, returns its buffers, and the stream goes on', async () => {
  const { server, local, peer } = await socketPair();
  const fd = openSync(runPath, 'r');
  const sendPool = new BufferPool(FRAME_BYTES_MAX, 8);
  const backend = createTsBackend({ sendPool });
  try {
    const file = { fd, path: runPath };
    const peerBytes = collect(peer);
    const writer = await backend.openStream(local);
    // The third chunk runs 1,000 bytes past the end of the file: one vectored read, cut short.
    const end = RUN_FILE_CHUNKS * CHUNK_BYTES;
    const bad: WalChunk[] = [
      { file, fileOffset: end - 3 * CHUNK_BYTES + 1000, byteCount: CHUNK_BYTES },
      { file, fileOffset: end - 2 * CHUNK_BYTES + 1000, byteCount: CHUNK_BYTES },
      { file, fileOffset: end - CHUNK_BYTES + 1000, byteCount: CHUNK_BYTES },
    ];
    await assert.rejects(writer.sendChunkRun!(runHeaders(bad, 0x70), HEADER_BYTES, bad), (error) => isWalcastError(error, 'WALCAST_ERR_STREAM_IO') && /short read/.test(String(error)));
    assert.equal(sendPool.inUse(), 0, 'the failed part returned its buffers');
    // The stream is not failed by its file: the next run goes out, and it is the first thing the peer sees. Six chunks:
    // more than the stream's room, so two parts (two reads, two writes).
    const good = Array.from({ length: STREAM_CHUNKS_IN_FLIGHT_MAX + 2 }, (_, index): WalChunk => ({ file, fileOffset: index * CHUNK_BYTES, byteCount: CHUNK_BYTES }));
    const headers = runHeaders(good, 0x78);
    await writer.sendChunkRun!(headers, HEADER_BYTES, good);
    await writer.release();
    const expected = expectedRun(headers, good, (chunk) => runContent.subarray(chunk.fileOffset, chunk.fileOffset + chunk.byteCount));
    const received = await peerBytes.until(expected.length);
    assert.ok(received.equals(expected), 'nothing of the failed run reached the peer');
    assert.equal(sendPool.inUse(), 0);
  } finally {
    closeSync(fd);
    local.destroy();
    peer.destroy();
    server.close();
    await backend.close();
  }
});

test('a read that fails before a verified chunk of the same part returns the verified buffer too', async () => {
  const { server, local, peer } = await socketPair();
  const fd = openSync(runPath, 'r');
  const otherFd = openSync(otherPath, 'r');
  const sendPool = new BufferPool(FRAME_BYTES_MAX, 8);
  const checksumPool = createChecksumPool(2);
  const backend = createTsBackend({ sendPool, checksumPool });
  try {
    const file = { fd, path: runPath };
    const other = { fd: otherFd, path: otherPath };
    const peerBytes = collect(peer);
    const writer = await backend.openStream(local);
    // The second chunk's pages are verified (by this or another stream) and its read is kept for the send.
    const verified: WalChunk = { file, fileOffset: CHUNK_BYTES, byteCount: CHUNK_BYTES };
    await backend.checksumPages(verified, 8192, new Uint32Array(CHUNK_BYTES / 8192));
    assert.equal(checksumPool.inUse(), 1, 'the verified read is kept');
    // The first chunk runs past the end of its file (truncated under the reader): its read fails after the kept read
    // of the second chunk was taken for this part.
    const bad: WalChunk[] = [{ file: other, fileOffset: 1000, byteCount: CHUNK_BYTES }, verified];
    await assert.rejects(writer.sendChunkRun!(runHeaders(bad, 0x90), HEADER_BYTES, bad), (error) => isWalcastError(error, 'WALCAST_ERR_STREAM_IO') && /short read/.test(String(error)));
    assert.equal(sendPool.inUse(), 0, 'the failed part returned its send buffers');
    assert.equal(checksumPool.inUse(), 0, 'the verified read taken for the failed part went back, not lost');
    // Both verification buffers can still be had: verification is not starved by the failed run.
    const both = [checksumPool.tryAcquire(), checksumPool.tryAcquire()];
    assert.ok(both.every((buffer) => buffer !== undefined), 'the verification pool keeps its two buffers');
    for (const buffer of both) checksumPool.release(buffer!);
    // And the stream goes on with exact bytes.
    const good: WalChunk[] = [verified];
    const headers = runHeaders(good, 0x98);
    await writer.sendChunkRun!(headers, HEADER_BYTES, good);
    await writer.release();
    const expected = expectedRun(headers, good, (chunk) => runContent.subarray(chunk.fileOffset, chunk.fileOffset + chunk.byteCount));
    assert.ok((await peerBytes.until(expected.length)).equals(expected), 'nothing of the failed run reached the peer');
  } finally {
    closeSync(fd);
    closeSync(otherFd);
    local.destroy();
    peer.destroy();
    server.close();
    await backend.close();
  }
});

test('streams share a send pool smaller than their runs: no run waits on buffers another part holds, also beside a stalled replica', { timeout: 60_000 }, async () => {
  // Five buffers: a stalled replica pins its bound of four, and three streams then share the one left. A part that
  // held buffers while waiting for more would wait forever here (each holding some, none able to finish).
  const sendPool = new BufferPool(FRAME_BYTES_MAX, STREAM_CHUNKS_IN_FLIGHT_MAX + 1);
  const backend = createTsBackend({ sendPool });
  const fd = openSync(runPath, 'r');
  const pairs = await Promise.all([0, 1, 2, 3].map(() => socketPair()));
  try {
    const file = { fd, path: runPath };
    const contentOf = (chunk: WalChunk): Buffer => runContent.subarray(chunk.fileOffset, chunk.fileOffset + chunk.byteCount);
    const runAt = (start: number): WalChunk[] => Array.from({ length: STREAM_CHUNKS_IN_FLIGHT_MAX }, (_, index): WalChunk => ({ file, fileOffset: ((start + index) % RUN_FILE_CHUNKS) * CHUNK_BYTES, byteCount: CHUNK_BYTES }));
    const [stalled, ...readers] = pairs;
    stalled!.local.write(Buffer.alloc(FILLER_BYTES, 0x11));
    const stalledWriter = await backend.openStream(stalled!.local);
    const stalledRun = runAt(0);
    const stalledHeaders = runHeaders(stalledRun, 0xa0);
    await stalledWriter.sendChunkRun!(stalledHeaders, HEADER_BYTES, stalledRun);
    assert.equal(sendPool.inUse(), STREAM_CHUNKS_IN_FLIGHT_MAX, 'the stalled replica pins its four buffers');
    // Three streams, three runs each, all at once, through the one buffer left.
    const streams = await Promise.all(readers.map(async ({ local, peer }, stream) => {
      const peerBytes = collect(peer);
      const writer = await backend.openStream(local);
      const runs = [0, 1, 2].map((round) => runAt(stream * 3 + round));
      const headers = runs.map((run, round) => runHeaders(run, 0x10 * (stream + 1) + round * 4));
      return { peerBytes, writer, expected: Buffer.concat(runs.map((run, round) => expectedRun(headers[round]!, run, contentOf))), sending: Promise.all(runs.map((run, round) => writer.sendChunkRun!(headers[round]!, HEADER_BYTES, run))) };
    }));
    for (const { peerBytes, writer, expected, sending } of streams) {
      await sending;
      await writer.release();
      assert.ok((await peerBytes.until(expected.length)).equals(expected), 'each stream got its runs whole, in order');
    }
    assert.equal(sendPool.inUse(), STREAM_CHUNKS_IN_FLIGHT_MAX, 'only the stalled replica holds buffers');
    // The stalled replica reads again: its run arrives whole after the filler.
    const stalledBytes = collect(stalled!.peer);
    await stalledWriter.release();
    const expected = expectedRun(stalledHeaders, stalledRun, contentOf);
    assert.ok((await stalledBytes.until(FILLER_BYTES + expected.length)).subarray(FILLER_BYTES).equals(expected));
    assert.equal(sendPool.inUse(), 0, 'every send buffer went back');
  } finally {
    closeSync(fd);
    closePairs(pairs);
    await backend.close();
  }
});

/** A TLS connection over 127.0.0.1: the server side (walcast's end, a TLSSocket) and the client, paused. */
async function tlsPair(): Promise<{ close(): void; local: TLSSocket; peer: TLSSocket }> {
  const certs = await makeTestCertificates();
  const server = createTlsServer({ key: readFileSync(certs.serverKey), cert: readFileSync(certs.serverCert) });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  assert.ok(address !== null && typeof address === 'object');
  const accepted = new Promise<TLSSocket>((resolve) => server.once('secureConnection', resolve));
  const peer = connectTls({ host: '127.0.0.1', port: address.port, rejectUnauthorized: false });
  await new Promise<void>((resolve) => peer.once('secureConnect', resolve));
  peer.pause();
  const local = await accepted;
  return { local, peer, close: () => { local.destroy(); peer.destroy(); server.close(); } };
}

test('runs on a TLS socket: one frame per TLS write (no writev, which Node copies into one buffer first), exact bytes behind a replica that does not read, the bound held', { timeout: 120_000 }, async () => {
  const { local, peer, close } = await tlsPair();
  const fd = openSync(runPath, 'r');
  const sendPool = new BufferPool(FRAME_BYTES_MAX, 64);
  const backend = createTsBackend({ sendPool });
  try {
    const file = { fd, path: runPath };
    // Node's TLSSocket hands a writev's buffers to TLSWrap, which copies them into one buffer before encrypting.
    let writevCalls = 0;
    const tlsWritable = local as unknown as { _writev: (...args: unknown[]) => unknown };
    const writev = tlsWritable._writev.bind(local);
    tlsWritable._writev = (...args: unknown[]) => {
      writevCalls++;
      return writev(...args);
    };
    // A filler the peer does not read yet: the runs queue behind it, in the socket and in the writer.
    local.write(Buffer.alloc(8 * 1024 * 1024, 0x11));
    const writer = await backend.openStream(local);
    assert.equal(writer.path, 'fs-net+tls');
    const runs = [0, 4, 6].map((start) => Array.from({ length: STREAM_CHUNKS_IN_FLIGHT_MAX }, (_, index): WalChunk => ({ file, fileOffset: ((start + index) % RUN_FILE_CHUNKS) * CHUNK_BYTES, byteCount: CHUNK_BYTES })));
    const headers = runs.map((run, index) => runHeaders(run, 0x10 * (index + 1)));
    const sends = runs.map((run, index) => writer.sendChunkRun!(headers[index]!, HEADER_BYTES, run));
    // A keepalive between runs keeps its place.
    const keepalive = Buffer.from('k-keepalive');
    const keepaliveSent = writer.sendMessage(keepalive);
    await sends[0];
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.ok(sendPool.inUse() <= STREAM_CHUNKS_IN_FLIGHT_MAX, 'a TLS stream that is not read pins at most its bound of send buffers');
    const expected = Buffer.concat([
      expectedRun(headers[0]!, runs[0]!, (chunk) => runContent.subarray(chunk.fileOffset, chunk.fileOffset + chunk.byteCount)),
      expectedRun(headers[1]!, runs[1]!, (chunk) => runContent.subarray(chunk.fileOffset, chunk.fileOffset + chunk.byteCount)),
      expectedRun(headers[2]!, runs[2]!, (chunk) => runContent.subarray(chunk.fileOffset, chunk.fileOffset + chunk.byteCount)),
      keepalive,
    ]);
    const peerBytes = collect(peer);
    await Promise.all([...sends, keepaliveSent]);
    await writer.release();
    const received = await peerBytes.until(8 * 1024 * 1024 + expected.length);
    assert.ok(received.subarray(8 * 1024 * 1024).equals(expected), 'every run and the keepalive arrived whole, in call order');
    assert.equal(writer.bytesSent, expected.length);
    assert.equal(sendPool.inUse(), 0, 'every send buffer went back');
    assert.equal(writevCalls, 0, 'the TLS socket was given one frame per write');
  } finally {
    closeSync(fd);
    close();
    await backend.close();
  }
});

test('a TLS replica that vanishes mid-run fails the stream, and every queued frame goes back to the pool', { timeout: 120_000 }, async () => {
  const { local, peer, close } = await tlsPair();
  local.on('error', () => undefined);
  const fd = openSync(runPath, 'r');
  const sendPool = new BufferPool(FRAME_BYTES_MAX, 64);
  const backend = createTsBackend({ sendPool });
  try {
    const file = { fd, path: runPath };
    local.write(Buffer.alloc(8 * 1024 * 1024, 0x11));
    const writer = await backend.openStream(local);
    const run = Array.from({ length: STREAM_CHUNKS_IN_FLIGHT_MAX }, (_, index): WalChunk => ({ file, fileOffset: index * CHUNK_BYTES, byteCount: CHUNK_BYTES }));
    const headers = runHeaders(run, 0x20);
    await writer.sendChunkRun!(headers, HEADER_BYTES, run);
    const second = writer.sendChunkRun!(headers, HEADER_BYTES, run);
    second.catch(() => undefined);
    const closed = new Promise((resolve) => local.once('close', resolve));
    peer.destroy();
    await closed;
    await assert.rejects(second, (error) => isWalcastError(error, 'WALCAST_ERR_STREAM_IO'));
    await assert.rejects(writer.sendChunkRun!(headers, HEADER_BYTES, run), (error) => isWalcastError(error, 'WALCAST_ERR_STREAM_IO'));
    await writer.release();
    while (sendPool.inUse() > 0) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal(sendPool.inUse(), 0, 'the queued frames went back');
  } finally {
    closeSync(fd);
    close();
    await backend.close();
  }
});

/** Settles with `promise`, or rejects after `ms` (a bounded wait: a send starved by the pool fails the test). */
async function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms)));
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

test('replicas that stop reading do not starve a healthy one: their send buffers are written off within the budget, and past it sends wait', { timeout: 120_000 }, async () => {
  // Eight pooled buffers, four more that may be written off: two stalled replicas pin the pool.
  const budget = STREAM_CHUNKS_IN_FLIGHT_MAX;
  const sendPool = new BufferPool(FRAME_BYTES_MAX, 2 * STREAM_CHUNKS_IN_FLIGHT_MAX, budget);
  const logLines: string[] = [];
  const log = pino({ level: 'warn' }, { write: (line: string) => void logLines.push(line) });
  const sendStallMs = 200;
  const backend = createTsBackend({ sendPool, log, sendStallMs });
  const fd = openSync(runPath, 'r');
  const pairs = await Promise.all([0, 1, 2, 3].map(() => socketPair()));
  try {
    const file = { fd, path: runPath };
    const contentOf = (chunk: WalChunk): Buffer => runContent.subarray(chunk.fileOffset, chunk.fileOffset + chunk.byteCount);
    const runAt = (start: number): WalChunk[] => Array.from({ length: STREAM_CHUNKS_IN_FLIGHT_MAX }, (_, index): WalChunk => ({ file, fileOffset: ((start + index) % RUN_FILE_CHUNKS) * CHUNK_BYTES, byteCount: CHUNK_BYTES }));
    const [a, b, c, healthy] = pairs;
    const stall = async (pair: typeof a, start: number, marker: number): Promise<{ writer: Awaited<ReturnType<typeof backend.openStream>>; expected: Buffer }> => {
      pair!.local.write(Buffer.alloc(FILLER_BYTES, 0x11));
      const writer = await backend.openStream(pair!.local);
      const run = runAt(start);
      const headers = runHeaders(run, marker);
      await writer.sendChunkRun!(headers, HEADER_BYTES, run);
      return { writer, expected: expectedRun(headers, run, contentOf) };
    };
    const stalledA = await stall(a, 0, 0xa0);
    const stalledB = await stall(b, 4, 0xb0);
    assert.equal(sendPool.inUse(), sendPool.buffersMax, 'two replicas that do not read pin the whole pool');
    assert.equal(sendPool.tryAcquire(), undefined);

    // A healthy replica still gets its run, byte for byte, once a stalled stream's frames are written off.
    const healthyBytes = collect(healthy!.peer);
    const healthyWriter = await backend.openStream(healthy!.local);
    const firstRun = runAt(2);
    const firstHeaders = runHeaders(firstRun, 0x10);
    await within(30_000, healthyWriter.sendChunkRun!(firstHeaders, HEADER_BYTES, firstRun), 'the healthy run beside stalled replicas');
    let healthyExpected = expectedRun(firstHeaders, firstRun, contentOf);
    assert.ok((await within(30_000, healthyBytes.until(healthyExpected.length), 'the healthy peer reading')).equals(healthyExpected), 'the healthy replica got its run whole');
    assert.equal(sendPool.writtenOff(), budget, 'one stalled stream written off: the whole budget');
    assert.equal(sendPool.writtenOffTotal(), budget);
    assert.deepEqual(backend.sendBufferStats!(), {
      inUse: sendPool.inUse(),
      buffersMax: 8,
      writtenOff: budget,
      writtenOffMax: budget,
      writtenOffTotal: budget,
      batchFrameBytesWrittenOff: 0,
      batchFrameBytesWrittenOffMax: BATCH_FRAME_BYTES_WRITTEN_OFF_MAX,
      batchFrameBytesWrittenOffTotal: 0,
    });

    // A third replica stops reading with the replacement buffers: the pool is pinned again and the budget is spent.
    const stalledC = await stall(c, 6, 0xc0);
    assert.equal(sendPool.inUse(), sendPool.buffersMax);
    const secondRun = runAt(8);
    const secondHeaders = runHeaders(secondRun, 0x20);
    let secondDone = false;
    const second = healthyWriter.sendChunkRun!(secondHeaders, HEADER_BYTES, secondRun).then(() => (secondDone = true));
    await new Promise((resolve) => setTimeout(resolve, 5 * sendStallMs));
    assert.equal(secondDone, false, 'past the written-off budget a send waits: nothing more is allocated');
    assert.equal(sendPool.writtenOff(), budget, 'no more written off than the budget');
    assert.equal(sendPool.tryAcquire(), undefined, 'nor allocated past the pool');

    // Replica A reads again: its written-off frames come back (dropped: the pool is full), the budget frees, the
    // next stalled stream is written off and the waiting run goes out.
    const aBytes = collect(a!.peer);
    assert.ok((await within(60_000, aBytes.until(FILLER_BYTES + stalledA.expected.length), 'replica A reading')).subarray(FILLER_BYTES).equals(stalledA.expected), 'a written-off frame still reaches its replica whole');
    await within(30_000, second, 'the healthy run once the budget freed');
    healthyExpected = Buffer.concat([healthyExpected, expectedRun(secondHeaders, secondRun, contentOf)]);
    assert.ok((await within(30_000, healthyBytes.until(healthyExpected.length), 'the healthy peer reading')).equals(healthyExpected), 'the healthy replica got both runs whole, in order');
    assert.ok(sendPool.writtenOff() <= budget);
    assert.equal(sendPool.writtenOffTotal(), 2 * budget);
    const warnings = logLines.map((line) => JSON.parse(line) as { level: number; msg: string; addr: string });
    assert.ok(warnings.length >= 2 && warnings.every(({ level, msg }) => level === 40 && /written off/.test(msg)), 'each written-off stream is logged at warn');
    assert.equal(new Set(warnings.map(({ addr }) => addr)).size, warnings.length, 'once per stream');
    await healthyWriter.release();
    await stalledA.writer.release();
    for (const { writer } of [stalledB, stalledC]) void writer.release();
  } finally {
    closeSync(fd);
    closePairs(pairs);
    await backend.close();
  }
  // Destroyed sockets fail their queued writes: every buffer comes back, written off or not.
  while (sendPool.inUse() > 0 || sendPool.writtenOff() > 0) await new Promise((resolve) => setTimeout(resolve, 5));
});

test('the fan-out batch writes one staged chunk to every accepted stream: exact bytes in order, a stream with its own send queued is not accepted, a full socket reports queued then full', async () => {
  const pairs = [await socketPair(), await socketPair(), await socketPair()];
  const fd = openSync(path, 'r');
  const backend = createTsBackend();
  const batch = backend.chunkBatch;
  assert.ok(batch?.stage !== undefined, 'the ts backend batches');
  try {
    const writers = await Promise.all(pairs.map(({ local }) => backend.openStream(local)));
    const received = pairs.map(({ peer }) => collect(peer));
    // A stream whose own send is queued or running is not batched: a batch write would overtake it.
    const keepalive = Buffer.from('keepalive-first');
    const own = writers[2]!.sendMessage(keepalive);
    assert.equal(batch.accepts(writers[2]!), false, 'a stream with its own send under way is not accepted');
    await own;
    await new Promise((resolve) => setImmediate(resolve));
    for (const writer of writers) assert.equal(batch.accepts(writer), true);

    // A commit-sized tail, then a whole chunk: each staged once, each written to all three.
    const tail: WalChunk = { file: { fd, path }, fileOffset: 1000, byteCount: 3000 };
    const whole: WalChunk = { file: { fd, path }, fileOffset: CHUNK_BYTES, byteCount: CHUNK_BYTES };
    const outcomes = new Int32Array(3);
    let expected = Buffer.alloc(0);
    for (const [index, chunk] of [tail, whole].entries()) {
      const staging = batch.stage(chunk);
      if (staging !== undefined) await staging;
      const chunkHeader = header(0xc0 + index, chunk.byteCount);
      assert.equal(batch.send(writers, 3, chunkHeader, chunk, outcomes), undefined, 'no stream failed');
      for (const outcome of outcomes) assert.ok(outcome === BatchOutcome.written || outcome === BatchOutcome.queued, `outcome ${outcome}`);
      // The caller reuses its header at once: the bytes sent must not change with it.
      chunkHeader.fill(0xee);
      expected = Buffer.concat([expected, header(0xc0 + index, chunk.byteCount), content.subarray(chunk.fileOffset, chunk.fileOffset + chunk.byteCount)]);
    }
    const sent = expected.length;
    for (const [index, peer] of received.entries()) {
      const before = index === 2 ? keepalive : Buffer.alloc(0);
      const bytes = await peer.until(before.length + sent);
      assert.ok(bytes.equals(Buffer.concat([before, expected])), `stream ${index} received the exact bytes in order`);
    }
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(writers[0]!.bytesSent, sent);

    // A replica that stops reading: its frames queue in the socket up to the stream's bound, then it is full.
    const stalled = await socketPair();
    const stalledWriter = await backend.openStream(stalled.local);
    stalled.local.write(Buffer.alloc(FILLER_BYTES, 0x11));
    const seen: number[] = [];
    for (let index = 0; index < STREAM_CHUNKS_IN_FLIGHT_MAX; index++) {
      assert.equal(batch.accepts(stalledWriter), true, `frame ${index} is within the bound`);
      const staging = batch.stage(whole);
      if (staging !== undefined) await staging;
      batch.send([stalledWriter], 1, header(0xd0 + index, CHUNK_BYTES), whole, outcomes);
      seen.push(outcomes[0]!);
    }
    assert.deepEqual(seen, [...Array<number>(STREAM_CHUNKS_IN_FLIGHT_MAX - 1).fill(BatchOutcome.queued), BatchOutcome.full]);
    assert.equal(batch.accepts(stalledWriter), false, 'a full stream is not accepted');
    let observed = false;
    assert.ok(stalledWriter.afterWritten(() => (observed = true)));
    const stalledBytes = collect(stalled.peer);
    const all = await stalledBytes.until(FILLER_BYTES + STREAM_CHUNKS_IN_FLIGHT_MAX * (HEADER_BYTES + CHUNK_BYTES));
    const frames = Array.from({ length: STREAM_CHUNKS_IN_FLIGHT_MAX }, (_, index) => Buffer.concat([header(0xd0 + index, CHUNK_BYTES), content.subarray(CHUNK_BYTES)]));
    assert.ok(all.subarray(FILLER_BYTES).equals(Buffer.concat(frames)), 'the queued frames arrive whole, in order');
    while (!observed) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal(batch.accepts(stalledWriter), true, 'drained: accepted again');
    await stalledWriter.release();
    assert.equal(batch.accepts(stalledWriter), false, 'released: never again');
    stalled.local.destroy();
    stalled.peer.destroy();
    stalled.server.close();
  } finally {
    closeSync(fd);
    closePairs(pairs);
    await backend.close();
  }
});

test('replicas that stop reading do not switch the fan-out batch off: their batch frames are written off its in-flight bound within a budget, and past it the batch refuses', { timeout: 120_000 }, async () => {
  // Bound: two whole-chunk frames in flight; budget: two more written off. Two replicas stop reading and hold both.
  const frameBytes = HEADER_BYTES + CHUNK_BYTES;
  const sendStallMs = 200;
  const backend = createTsBackend({ sendStallMs, batchFrameBytesInFlightMax: 2 * frameBytes, batchFrameBytesWrittenOffMax: 2 * frameBytes });
  const batch = backend.chunkBatch;
  assert.ok(batch?.stage !== undefined, 'the ts backend batches');
  const fd = openSync(path, 'r');
  const pairs = await Promise.all([0, 1, 2].map(() => socketPair()));
  try {
    const [a, b, healthy] = pairs;
    const whole: WalChunk = { file: { fd, path }, fileOffset: CHUNK_BYTES, byteCount: CHUNK_BYTES };
    const frame = (marker: number): Buffer => Buffer.concat([header(marker, CHUNK_BYTES), content.subarray(CHUNK_BYTES)]);
    const outcomes = new Int32Array(2);
    const sendTo = async (writers: Awaited<ReturnType<typeof backend.openStream>>[], marker: number): Promise<void> => {
      for (const writer of writers) assert.equal(batch.accepts(writer), true, `frame ${marker.toString(16)} accepted`);
      const staging = batch.stage!(whole);
      if (staging !== undefined) await staging;
      assert.equal(batch.send(writers, writers.length, header(marker, CHUNK_BYTES), whole, outcomes), undefined, 'no stream failed');
    };
    const stats = (): { now: number; total: number } => {
      const now = backend.sendBufferStats!();
      return { now: now.batchFrameBytesWrittenOff!, total: now.batchFrameBytesWrittenOffTotal! };
    };
    for (const pair of [a, b]) pair!.local.write(Buffer.alloc(FILLER_BYTES, 0x11));
    const [writerA, writerB, healthyWriter] = await Promise.all(pairs.map(({ local }) => backend.openStream(local)));
    await sendTo([writerA!, writerB!], 0xa1);
    await sendTo([writerA!, writerB!], 0xa2);
    assert.equal(batch.accepts(healthyWriter!), false, 'the bound is reached: a healthy stream sends on its own');

    // Once the two are stalled, their frames no longer count in flight: the healthy stream is batched again.
    await new Promise((resolve) => setTimeout(resolve, 3 * sendStallMs));
    assert.equal(batch.accepts(healthyWriter!), true, 'stalled replicas do not keep the batch off');
    assert.deepEqual(stats(), { now: 2 * frameBytes, total: 2 * frameBytes });
    const healthyBytes = collect(healthy!.peer);
    await sendTo([healthyWriter!], 0xb1);
    assert.ok((await within(30_000, healthyBytes.until(frameBytes), 'the healthy peer reading')).equals(frame(0xb1)), 'the healthy replica got its frame whole');

    // A stalls again with the budget spent: its frames fill the bound and stay counted, so the batch refuses.
    while (!batch.accepts(healthyWriter!)) await new Promise((resolve) => setTimeout(resolve, 5));
    await sendTo([writerA!], 0xa3);
    await sendTo([writerA!], 0xa4);
    assert.equal(batch.accepts(writerA!), false, 'a stream at its own in-flight bound is not batched');
    await new Promise((resolve) => setTimeout(resolve, 3 * sendStallMs));
    assert.equal(batch.accepts(healthyWriter!), false, 'past the written-off budget the batch refuses: memory stays bounded');
    assert.deepEqual(stats(), { now: 2 * frameBytes, total: 2 * frameBytes }, 'nothing written off past the budget');

    // Both read again: every frame arrives whole, in order, and the counts go back to nothing.
    const aBytes = collect(a!.peer);
    const bBytes = collect(b!.peer);
    const aExpected = Buffer.concat([frame(0xa1), frame(0xa2), frame(0xa3), frame(0xa4)]);
    const bExpected = Buffer.concat([frame(0xa1), frame(0xa2)]);
    assert.ok((await within(60_000, aBytes.until(FILLER_BYTES + aExpected.length), 'replica A reading')).subarray(FILLER_BYTES).equals(aExpected), 'written-off frames still reach their replica whole');
    assert.ok((await within(60_000, bBytes.until(FILLER_BYTES + bExpected.length), 'replica B reading')).subarray(FILLER_BYTES).equals(bExpected));
    while (stats().now > 0 || !batch.accepts(healthyWriter!)) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal(stats().total, 2 * frameBytes);
    for (const writer of [writerA!, writerB!, healthyWriter!]) await writer.release();
  } finally {
    closeSync(fd);
    closePairs(pairs);
    await backend.close();
  }
});

test('the ts stream writer has prefetchNow: nothing to wait for (its prefetch is a no-op)', async () => {
  const pair = await socketPair();
  const backend = createTsBackend();
  const fd = openSync(path, 'r');
  try {
    const writer = await backend.openStream(pair.local);
    assert.equal(writer.prefetchNow?.({ file: { fd, path }, fileOffset: 0, byteCount: CHUNK_BYTES }), undefined);
    assert.ok(writer.prefetchNow !== undefined);
    await writer.release();
  } finally {
    closeSync(fd);
    pair.local.destroy();
    pair.peer.destroy();
    pair.server.close();
    await backend.close();
  }
});
