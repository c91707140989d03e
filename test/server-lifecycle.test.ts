/**
 * The server's connection lifecycle against real WAL: many concurrent streams leave no pile of listeners on a shared
 * signal; client bytes that once tripped an assertion get a clean FATAL while other streams carry on; and shutdown
 * ends every session with FATAL 57P01 (a real pg_receivewal reports it) while newcomers hear 57P03, as PostgreSQL.
 */
import assert from 'node:assert/strict';
import { connect as connectSocket, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { formatLsn } from '../src/lsn.js';
import { connectReplication, ServerError, type ReplicationClient, type ReplicationStream } from '../src/wire/client.js';
import { makeTempDir, runReceiveWal } from './support/postgres.js';
import { startupPacket } from './support/raw-client.js';
import { makeStoredWal, type StoredWal } from './support/stored-wal.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const TIMEOUT_MS = 180_000;
/** Node warns at 11 listeners of one kind on one EventTarget: 20 streams are well past it. */
const CONCURRENT_STREAMS = 20;

let wal: StoredWal;
let walcast: RunningWalcast;

before(async () => {
  wal = await makeStoredWal('walcast-lifecycle');
  walcast = await startWalcast({ dataDir: wal.dataDir });
}, { timeout: TIMEOUT_MS });

after(async () => {
  await walcast?.stop();
});

function connect(applicationName: string, port = walcast.port): Promise<ReplicationClient> {
  return connectReplication({ host: '127.0.0.1', port, user: 'repl', applicationName, timeoutMs: 30_000 });
}

/** Reads a stream until `bytes` WAL bytes arrived; returns them. */
async function readWal(stream: ReplicationStream, bytes: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let received = 0;
  while (received < bytes) {
    const payload = await stream.read();
    if (payload === undefined) throw new Error(`the stream ended after ${received} bytes`);
    if (payload[0] !== 0x77) continue; // 'w' XLogData; keepalives are skipped
    const data = payload.subarray(25);
    parts.push(data);
    received += data.length;
  }
  return Buffer.concat(parts).subarray(0, bytes);
}

describe('connection lifecycle', { timeout: TIMEOUT_MS }, () => {
  test(`${CONCURRENT_STREAMS} concurrent streams and their ends raise no MaxListenersExceededWarning`, async () => {
    const warnings: Error[] = [];
    const onWarning = (warning: Error): void => {
      if (warning.name === 'MaxListenersExceededWarning') warnings.push(warning);
    };
    process.on('warning', onWarning);
    try {
      const clients = await Promise.all(Array.from({ length: CONCURRENT_STREAMS }, (_, index) => connect(`listener-${index}`)));
      const streams = await Promise.all(clients.map((client) => client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(wal.startLsn)}`)));
      await Promise.all(streams.map((stream) => readWal(stream, 64 * 1024)));
      const timeline = walcast.server.timelines.list()[0];
      assert.ok(timeline !== undefined);
      assert.equal(timeline.replicas.count(), CONCURRENT_STREAMS);
      await Promise.all(streams.map((stream) => stream.sendCopyDone()));
      await Promise.all(clients.map((client) => client.end()));
      // Warnings are emitted on the next tick after the listener that crossed the limit.
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      process.off('warning', onWarning);
    }
    assert.deepEqual(warnings.map((warning) => warning.message), []);
  });

  test('feedback whose type byte is 0x00 gets FATAL 08P01 naming the byte; another stream keeps getting identical WAL', async () => {
    const bystander = await connect('bystander');
    const bystanderStream = await bystander.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(wal.startLsn)}`);
    const client = await connect('nul-feedback');
    const stream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(wal.startLsn)}`);
    await stream.sendCopyData(Buffer.from([0x00, 0x01, 0x02]));
    const end = await stream.ended;
    assert.equal(end.how, 'closed');
    const error = end.error;
    assert.ok(error instanceof ServerError, `a FATAL ErrorResponse arrived, got ${String(error)}`);
    assert.equal(error.sqlState, '08P01');
    assert.match(error.message, /0x00/);
    const bytes = Number(wal.endLsn - wal.startLsn);
    assert.ok((await readWal(bystanderStream, bytes)).equals(await wal.primaryWal(wal.startLsn, wal.endLsn)), 'the bystander got every byte');
    await bystanderStream.sendCopyDone();
    await bystander.end();
    await waitFor(async () => (walcast.server.connectionCount() === 0 ? true : undefined), 10_000, { what: 'connections closed' });
  });
});

/** A raw trust client that completes startup and then only listens; it does not close on the server's FIN. */
async function idleClient(port: number, waitUntil: 'ready' | 'ended' = 'ready'): Promise<{ socket: Socket; received: () => Buffer }> {
  const socket = connectSocket({ host: '127.0.0.1', port, allowHalfOpen: true });
  const chunks: Buffer[] = [];
  let ended = false;
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  socket.on('end', () => (ended = true));
  socket.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.write(startupPacket({ user: 'repl', database: 'replication', replication: 'true', application_name: 'idle' }));
  const readyForQuery = Buffer.from([0x5a, 0, 0, 0, 5, 0x49]);
  const done = (): boolean => (waitUntil === 'ready' ? Buffer.concat(chunks).includes(readyForQuery) : ended);
  await waitFor(async () => (done() ? true : undefined), 10_000, { what: waitUntil === 'ready' ? 'ReadyForQuery' : 'the server ended the connection', pollMs: 10 });
  return { socket, received: () => Buffer.concat(chunks) };
}

/** The bytes of an ErrorResponse's SQLSTATE field. */
function sqlStateField(sqlState: string): Buffer {
  return Buffer.from(`C${sqlState}\0`, 'latin1');
}

describe('shutdown', { timeout: TIMEOUT_MS }, () => {
  test('a stream and an idle connection get FATAL 57P01; a client connecting meanwhile gets 57P03, not 53300', async () => {
    const server = await startWalcast({ dataDir: wal.dataDir });
    const client = await connect('streaming', server.port);
    const stream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(wal.startLsn)}`);
    await readWal(stream, 64 * 1024);
    const idle = await idleClient(server.port);
    const stopping = server.stop();
    // The idle client keeps its half of the connection open, so its session lingers and the listener stays up.
    await waitFor(async () => (idle.received().includes(sqlStateField('57P01')) ? true : undefined), 10_000, { what: 'idle client got 57P01', pollMs: 10 });
    assert.ok(idle.received().includes(Buffer.from('terminating connection due to administrator command', 'latin1')));
    const late = await idleClient(server.port, 'ended').catch((error: unknown) => error);
    assert.ok(!(late instanceof Error), `a late client is answered, not refused: ${String(late)}`);
    const lateBytes = (late as Awaited<ReturnType<typeof idleClient>>).received();
    assert.ok(lateBytes.includes(sqlStateField('57P03')), `late client: ${lateBytes.toString('latin1')}`);
    assert.ok(lateBytes.includes(Buffer.from('the database system is shutting down', 'latin1')));
    assert.ok(!lateBytes.includes(sqlStateField('53300')));
    const end = await stream.ended;
    assert.equal(end.how, 'closed');
    assert.ok(end.error instanceof ServerError, `the stream got an ErrorResponse, got ${String(end.error)}`);
    assert.equal(end.error.sqlState, '57P01');
    await stopping;
    idle.socket.destroy();
    (late as Awaited<ReturnType<typeof idleClient>>).socket.destroy();
  });

  test('a real pg_receivewal streaming from walcast reports 57P01 "terminating connection due to administrator command"', async () => {
    const server = await startWalcast({ dataDir: wal.dataDir });
    const dir = await makeTempDir('receivewal-shutdown');
    // An end position far ahead: pg_receivewal streams, catches up and waits for more until the server stops.
    const receiving = runReceiveWal({ port: server.port, dir, endpos: formatLsn(wal.endLsn + 64n * 1024n * 1024n), timeoutMs: 60_000 });
    const timeline = server.server.timelines.list()[0];
    assert.ok(timeline !== undefined);
    await waitFor(async () => (timeline.replicas.snapshot().some((replica) => replica.sentLsn >= wal.endLsn) ? true : undefined), 30_000, { what: 'pg_receivewal caught up' });
    await server.stop();
    const result = await receiving;
    assert.ok(!result.timedOut, 'pg_receivewal exited after the shutdown');
    assert.match(result.stderr, /terminating connection due to administrator command/);
  });
});
