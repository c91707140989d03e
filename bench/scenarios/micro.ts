/**
 * tinybench micro-benchmarks of the hot path, in the harness process: per I/O backend, "read + frame + send"
 * of one 128 KiB chunk of a real WAL segment to a loopback socket drained by the C consumer in --raw mode;
 * and the pure codecs every replica exercises: framing a chunk (decideChunkEnd + writeXLogDataHeader) and
 * decoding feedback ('r', 'h', 'z'). Backends that cannot load (native not built) are reported, not fatal.
 */
import assert from 'node:assert/strict';
import { openSync, closeSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { Bench } from 'tinybench';
import type { IoBackend, WalChunk } from '../../src/io/backend.js';
import { createIoBackend } from '../../src/io/select-backend.js';
import { decodeFeedback } from '../../src/replication/feedback.js';
import { MAX_SEND_BYTES, XLOG_DATA_HEADER_BYTES, decideChunkEnd, pgNowMicros, writeXLogDataHeader } from '../../src/replication/stream-messages.js';
import { spawnTracked } from '../lib/processes.js';
import type { Tools } from '../lib/tools.js';
import type { PreparedWal } from '../lib/wal-source.js';

export interface MicroResult {
  readonly name: string;
  readonly backend: string;
  readonly opsPerSecond?: number;
  readonly meanMicros?: number;
  readonly p99Micros?: number;
  readonly samples?: number;
  /** For send benchmarks: payload MB/s implied by ops/s × chunk size. */
  readonly impliedMBps?: number;
  readonly error?: string;
}

type BackendChoice = { io: 'ts' } | { io: 'native'; strategy: 'sendfile' | 'writev' | 'uring' };

const MICROS_PER_MS = 1000;
const BYTES_PER_MB = 1e6;

export async function runMicroBenchmarks(tools: Tools, wal: PreparedWal, backends: readonly BackendChoice[], timeMs: number): Promise<MicroResult[]> {
  const results: MicroResult[] = [...(await codecBenchmarks(timeMs))];
  for (const choice of backends) results.push(await sendBenchmark(tools, wal, choice, timeMs));
  return results;
}

function fromTask(name: string, backend: string, task: { result?: unknown } | undefined, payloadBytes?: number): MicroResult {
  const result = task?.result as { latency?: { mean: number; p99?: number; samples: number[] }; throughput?: { mean: number }; error?: unknown } | undefined;
  if (result?.latency === undefined || result.throughput === undefined) return { name, backend, error: String(result?.error ?? 'no result') };
  // tinybench's throughput.mean is the mean of per-sample rates; the rate that matches the mean latency is this.
  const opsPerSecond = 1000 / result.latency.mean;
  return {
    name,
    backend,
    opsPerSecond,
    meanMicros: result.latency.mean * MICROS_PER_MS,
    ...(result.latency.p99 === undefined ? {} : { p99Micros: result.latency.p99 * MICROS_PER_MS }),
    samples: result.latency.samples.length,
    ...(payloadBytes === undefined ? {} : { impliedMBps: (opsPerSecond * payloadBytes) / BYTES_PER_MB }),
  };
}

async function codecBenchmarks(timeMs: number): Promise<MicroResult[]> {
  const header = Buffer.alloc(XLOG_DATA_HEADER_BYTES);
  const segmentBytes = 16 * 1024 * 1024;
  let position = 0x1000000n;
  const reply = standbyReplyPayload();
  const hotStandby = hotStandbyPayload();
  const pageserver = pageserverPayload();
  const bench = new Bench({ time: timeMs });
  bench.add('frame one chunk (decideChunkEnd + XLogData header)', () => {
    const end = decideChunkEnd(position, 0x40000000n, segmentBytes);
    writeXLogDataHeader(header, position, 0x40000000n, pgNowMicros(), Number(end - position));
    position = end >= 0x40000000n ? 0x1000000n : end;
  });
  bench.add("decode standby reply 'r'", () => decodeFeedback(reply));
  bench.add("decode hot-standby feedback 'h'", () => decodeFeedback(hotStandby));
  bench.add("decode pageserver feedback 'z'", () => decodeFeedback(pageserver));
  await bench.run();
  return bench.tasks.map((task) => fromTask(task.name, 'codec', task));
}

function standbyReplyPayload(): Buffer {
  const payload = Buffer.alloc(34);
  payload.write('r', 0, 'latin1');
  payload.writeBigUInt64BE(0x5000000n, 1);
  payload.writeBigUInt64BE(0x5000000n, 9);
  payload.writeBigUInt64BE(0x4ff0000n, 17);
  payload.writeBigInt64BE(pgNowMicros(), 25);
  return payload;
}

function hotStandbyPayload(): Buffer {
  const payload = Buffer.alloc(25);
  payload.write('h', 0, 'latin1');
  payload.writeBigInt64BE(pgNowMicros(), 1);
  payload.writeUInt32BE(1234, 9);
  return payload;
}

/** A Neon PageserverFeedback with the five keys the Rust pageserver sends (old wire names). */
function pageserverPayload(): Buffer {
  const keys: [string, Buffer][] = [
    ['current_timeline_size', u64(123_456_789n)],
    ['ps_writelsn', u64(0x5000000n)],
    ['ps_flushlsn', u64(0x5000000n)],
    ['ps_applylsn', u64(0x4ff0000n)],
    ['ps_replytime', u64(BigInt.asUintN(64, pgNowMicros()))],
  ];
  const parts = keys.flatMap(([name, value]) => {
    const length = Buffer.alloc(4);
    length.writeInt32BE(value.length, 0);
    return [Buffer.from(`${name}\0`), length, value];
  });
  const body = Buffer.concat([Buffer.from([keys.length]), ...parts]);
  const envelope = Buffer.alloc(9);
  envelope.write('z', 0, 'latin1');
  envelope.writeBigUInt64BE(BigInt(body.length), 1);
  return Buffer.concat([envelope, body]);
}

function u64(value: bigint): Buffer {
  const buffer = Buffer.alloc(8);
  buffer.writeBigUInt64BE(value, 0);
  return buffer;
}

/** A loopback server whose single client is the C consumer in --raw mode (reads and discards). */
async function openSink(tools: Tools): Promise<{ socket: Socket; server: Server; stop(): Promise<void> }> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  assert.ok(address !== null && typeof address === 'object', 'listening');
  const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
  const sink = spawnTracked(tools.consumer, ['--raw', '--port', String(address.port), '--timeout-ms', '600000'], { stdio: ['pipe', 'ignore', 'pipe'] });
  const socket = await accepted;
  return {
    socket,
    server,
    stop: async () => {
      socket.destroy();
      server.close();
      await sink.stop();
    },
  };
}

async function sendBenchmark(tools: Tools, wal: PreparedWal, choice: BackendChoice, timeMs: number): Promise<MicroResult> {
  const label = choice.io === 'ts' ? 'ts' : `native-${choice.strategy}`;
  const name = 'read + frame + send one 128 KiB chunk';
  let backend: IoBackend;
  try {
    backend = (await createIoBackend(choice)).backend;
  } catch (error) {
    return { name, backend: label, error: (error as Error).message };
  }
  const path = wal.walcastFiles[0];
  assert.ok(path !== undefined, 'a segment to read');
  const fd = openSync(path, 'r');
  const sink = await openSink(tools);
  try {
    const writer = await backend.openStream(sink.socket);
    const header = Buffer.alloc(XLOG_DATA_HEADER_BYTES);
    const chunksPerSegment = Math.floor(wal.segmentBytes / MAX_SEND_BYTES);
    let index = 0;
    const bench = new Bench({ time: timeMs });
    bench.add(name, async () => {
      const chunk: WalChunk = { file: { fd, path }, fileOffset: (index % chunksPerSegment) * MAX_SEND_BYTES, byteCount: MAX_SEND_BYTES };
      writeXLogDataHeader(header, wal.startLsn + BigInt(chunk.fileOffset), wal.endLsn, pgNowMicros(), MAX_SEND_BYTES);
      await writer.sendChunk(header, chunk);
      index++;
    });
    await bench.run();
    await writer.release();
    return fromTask(name, label, bench.tasks[0], MAX_SEND_BYTES);
  } catch (error) {
    return { name, backend: label, error: (error as Error).message };
  } finally {
    await sink.stop();
    closeSync(fd);
    await backend.close();
  }
}
