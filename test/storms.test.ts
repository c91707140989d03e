/**
 * Connection storms against one in-process server (bounded, sized to fit `ulimit -n` here: 20,000, and each socket
 * costs two descriptors because both ends live in this process): 5,000 idle sockets while a replica connects;
 * 1,000 replicas that start streaming and then stop reading (server memory stays within the send path's
 * documented bounds); 10,000 connect / stream / drop cycles (no descriptor or session outlives its connection,
 * as the status API shows). Measured figures go to the test diagnostics; speed is reported, never asserted.
 * The send-path bounds used are the TypeScript backend's (the runner's default for this file).
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { get } from 'node:http';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { createOperationsMetrics } from '../src/api/metrics.js';
import { startHttpApi, type HttpApi } from '../src/api/http-server.js';
import { FRAME_BYTES_MAX, POOL_BUFFERS_MAX, STREAM_CHUNKS_IN_FLIGHT_MAX } from '../src/io/ts-backend.js';
import { silentLogger } from '../src/log.js';
import { connectReplication } from '../src/wire/client.js';
import { startStreaming } from './support/raw-client.js';
import { makeStoredWal, type StoredWal } from './support/stored-wal.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const TIMEOUT_MS = 600_000;
const IDLE_SOCKETS = 5_000;
const SLOW_REPLICAS = 1_000;
const CYCLES = 10_000;
/** Storm clients connecting at once: well inside the listen backlog and the per-address startup share. */
const STORM_CONCURRENCY = 50;
/** One storm connection's deadline to reach streaming, on a loaded 2-core machine. */
const STREAM_START_TIMEOUT_MS = 60_000;
/** WAL each cycle receives before it drops: a few pages, so every cycle really streams. */
const CYCLE_BYTES = 16 * 1024;
/**
 * Memory a connection may cost beyond the WAL in flight, counting both ends (both live in this process): socket
 * handles, session and replica objects, the client's last read buffer. Generous (a few KiB are typical); what it
 * must not admit is a copy of the stream's WAL, which is what unbounded buffering would hold per replica.
 */
const CONNECTION_OVERHEAD_BYTES_MAX = 64 * 1024;
/** Silence a paused replica may keep without being ended (wal_sender_timeout): longer than this file runs. */
const REPLICA_TIMEOUT_MS = 600_000;

let wal: StoredWal;
let walcast: RunningWalcast;
let api: HttpApi;

before(async () => {
  // Enough WAL that a server copying a paused replica's whole stream would pass the memory bound several times.
  wal = await makeStoredWal('walcast-storms', 60_000);
  walcast = await startWalcast({ dataDir: wal.dataDir, maxConnections: 4096, replicaTimeoutMs: REPLICA_TIMEOUT_MS });
  const metrics = createOperationsMetrics({ backend: walcast.server.backend.kind, strategy: walcast.server.backend.strategy });
  metrics.bindTimelines(walcast.server.timelines);
  const view = {
    timelines: walcast.server.timelines,
    io: { backend: walcast.server.backend.kind, strategy: walcast.server.backend.strategy, reason: 'test' },
    startedAt: new Date(),
    listenAddresses: () => ({ postgres: '127.0.0.1' }),
    connectionCount: () => walcast.server.connectionCount(),
  };
  api = await startHttpApi({ listen: { host: '127.0.0.1', port: 0 }, authToken: undefined, view, metrics, log: silentLogger() });
}, { timeout: TIMEOUT_MS });

after(async () => {
  await api?.close();
  await walcast?.stop();
});

/** GET on the status API on a connection that closes after the reply, so the probe itself leaves no descriptor. */
function getJson(path: string): Promise<unknown> {
  const { port } = api.address();
  return new Promise((resolve, reject) => {
    const request = get({ host: '127.0.0.1', port, path, agent: false, headers: { connection: 'close' } }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => (response.statusCode === 200 ? resolve(JSON.parse(body)) : reject(new Error(`${path}: HTTP ${response.statusCode}`))));
    });
    request.on('error', reject);
  });
}

/** Sessions and streaming replicas as the status API reports them. */
async function apiCounts(): Promise<{ connections: number; replicas: number }> {
  const status = (await getJson('/v1/status')) as { connections: number };
  const timelines = (await getJson('/v1/timelines')) as Array<{ replicas?: number }>;
  return { connections: status.connections, replicas: timelines.reduce((sum, timeline) => sum + (timeline.replicas ?? 0), 0) };
}

async function openFds(): Promise<number> {
  return (await readdir('/proc/self/fd')).length;
}

/** Runs `task(0..count-1)` with at most `concurrency` running at once; rejects with the first failure. */
async function runBounded(count: number, concurrency: number, task: (index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) await task(next++);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
}

function openSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port }, () => resolve(socket));
    socket.once('error', reject);
  });
}

async function closeAll(sockets: readonly Socket[]): Promise<void> {
  for (const socket of sockets) socket.destroy();
  await waitFor(async () => (walcast.server.connectionCount() === 0 ? true : undefined), 60_000, { what: 'server-side sockets closed' });
}

describe('storms', { timeout: TIMEOUT_MS }, () => {
  test(`${IDLE_SOCKETS} idle sockets: a replica is still admitted`, async (t) => {
    const sockets: Socket[] = [];
    for (let index = 0; index < IDLE_SOCKETS; index++) {
      const socket = await openSocket(walcast.port);
      socket.on('error', () => undefined);
      socket.resume();
      sockets.push(socket);
    }
    const startedAtMs = Date.now();
    const client = await connectReplication({ host: '127.0.0.1', port: walcast.port, user: 'repl', applicationName: 'legit', timeoutMs: 60_000 });
    const admittedMs = Date.now() - startedAtMs;
    const result = await client.query('IDENTIFY_SYSTEM');
    assert.equal(result.rows.length, 1);
    await client.end();
    t.diagnostic(`replica admitted ${admittedMs} ms after ${IDLE_SOCKETS} idle sockets were opened`);
    await closeAll(sockets);
  });

  test(`${SLOW_REPLICAS} slow replicas: server memory stays within the per-stream in-flight bounds`, async (t) => {
    // The send path's own bound: STREAM_CHUNKS_IN_FLIGHT_MAX frames per stream, all from a pool of POOL_BUFFERS_MAX.
    const walInFlightMax = Math.min(POOL_BUFFERS_MAX, SLOW_REPLICAS * STREAM_CHUNKS_IN_FLIGHT_MAX) * FRAME_BYTES_MAX;
    const boundBytes = walInFlightMax + SLOW_REPLICAS * CONNECTION_OVERHEAD_BYTES_MAX;
    const walBytes = Number(wal.endLsn - wal.startLsn);
    assert.ok(walBytes > (2 * boundBytes) / SLOW_REPLICAS, `the stored WAL (${walBytes} bytes) is big enough for buffering it per replica to break the bound`);
    const rssBefore = process.memoryUsage().rss;
    const replicas: Socket[] = [];
    const startedAtMs = Date.now();
    try {
      await runBounded(SLOW_REPLICAS, STORM_CONCURRENCY, async () => {
        const socket = await startStreaming(walcast.port, wal.startLsn, { bytesAfterCopyBoth: 0, timeoutMs: STREAM_START_TIMEOUT_MS });
        // A slow replica: it never reads its socket again, so the kernel's buffers fill and the server's sends stall.
        socket.pause();
        replicas.push(socket);
      });
      const streamingMs = Date.now() - startedAtMs;
      await waitFor(async () => ((await apiCounts()).replicas === SLOW_REPLICAS ? true : undefined), 60_000, { what: `${SLOW_REPLICAS} replicas in the status API` });
      const rssAfter = await settledRss();
      const perReplica = (rssAfter - rssBefore) / SLOW_REPLICAS;
      t.diagnostic(`${SLOW_REPLICAS} paused replicas streaming after ${streamingMs} ms; RSS ${mib(rssBefore)} -> ${mib(rssAfter)} MiB, ${(perReplica / 1024).toFixed(1)} KiB per replica (bound ${(boundBytes / SLOW_REPLICAS / 1024).toFixed(1)} KiB)`);
      assert.ok(rssAfter - rssBefore <= boundBytes, `RSS grew ${rssAfter - rssBefore} bytes for ${SLOW_REPLICAS} paused replicas, bound ${boundBytes}`);
    } finally {
      await closeAll(replicas);
    }
    await waitFor(async () => ((await apiCounts()).replicas === 0 ? true : undefined), 60_000, { what: 'replicas gone from the status API' });
  });

  test(`${CYCLES} connect / stream / drop cycles: descriptors and sessions stay flat`, async (t) => {
    await waitFor(async () => (walcast.server.connectionCount() === 0 ? true : undefined), 60_000, { what: 'quiet server' });
    const fdsBefore = await openFds();
    const startedAtMs = Date.now();
    await runBounded(CYCLES, STORM_CONCURRENCY, async () => {
      const socket = await startStreaming(walcast.port, wal.startLsn, { bytesAfterCopyBoth: CYCLE_BYTES, timeoutMs: STREAM_START_TIMEOUT_MS });
      socket.destroy();
    });
    const cyclesMs = Date.now() - startedAtMs;
    const counts = await waitFor(async () => {
      const now = await apiCounts();
      return now.connections === 0 && now.replicas === 0 ? now : undefined;
    }, 60_000, { what: 'every session gone from the status API' });
    // Server-side closes finish asynchronously after the sessions end: wait (bounded) for the count to come back.
    const fdsAfter = await waitFor(async () => {
      const fds = await openFds();
      return fds <= fdsBefore ? fds : undefined;
    }, 60_000, { what: `descriptors back to ${fdsBefore}` }).catch(async (error: unknown) => {
      t.diagnostic(`descriptors: ${fdsBefore} before, ${await openFds()} after`);
      throw error;
    });
    t.diagnostic(`${CYCLES} cycles (${STORM_CONCURRENCY} at a time) in ${cyclesMs} ms; descriptors ${fdsBefore} before, ${fdsAfter} after; status API: ${counts.connections} connections, ${counts.replicas} replicas`);
    assert.equal(counts.replicas, 0);
  });
});

/** RSS once the stalled streams have filled what they may: sampled until it stops growing (bounded). */
async function settledRss(): Promise<number> {
  const SAMPLE_MS = 1_000;
  const SAMPLES_MAX = 30;
  let previous = process.memoryUsage().rss;
  for (let sample = 0; sample < SAMPLES_MAX; sample++) {
    await new Promise((resolve) => setTimeout(resolve, SAMPLE_MS));
    const rss = process.memoryUsage().rss;
    if (rss <= previous) return Math.max(rss, previous);
    previous = rss;
  }
  return previous;
}

function mib(bytes: number): string {
  return (bytes / (1024 * 1024)).toFixed(1);
}
