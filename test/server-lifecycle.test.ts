/**
 * The server's connection lifecycle against real WAL: many concurrent streams leave no pile of listeners on a shared
 * signal, and client bytes that once tripped an assertion get a clean FATAL while other streams carry on.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { formatLsn } from '../src/lsn.js';
import { connectReplication, ServerError, type ReplicationClient, type ReplicationStream } from '../src/wire/client.js';
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
