/**
 * Connection storms against one in-process server (bounded, sized to fit `ulimit -n` here: 20,000, and each socket
 * costs two descriptors because both ends live in this process): 5,000 idle sockets while a replica connects.
 * Measured figures go to the test diagnostics; speed is reported, never asserted.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { connectReplication } from '../src/wire/client.js';
import { makeStoredWal, type StoredWal } from './support/stored-wal.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const TIMEOUT_MS = 600_000;
const IDLE_SOCKETS = 5_000;

let wal: StoredWal;
let walcast: RunningWalcast;

before(async () => {
  wal = await makeStoredWal('walcast-storms');
  walcast = await startWalcast({ dataDir: wal.dataDir, maxConnections: 4096 });
}, { timeout: TIMEOUT_MS });

after(async () => {
  await walcast?.stop();
});

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
});
