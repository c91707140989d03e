/**
 * The replica timeout (wal_sender_timeout) against replicas that start streaming and then stop reading their
 * socket: their sends wait for room that never comes, and the stream must still end (PostgreSQL's walsender exits
 * on the timeout whatever is pending) rather than hold its connection and replica slot for ever. Before the fix
 * such streams ignored the timeout: the FATAL queued behind the stalled frames and nothing closed the socket.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { startStreaming } from './support/raw-client.js';
import { makeStoredWal, type StoredWal } from './support/stored-wal.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const TIMEOUT_MS = 300_000;
/** Short, so the test waits little; the streams below stall within it. */
const REPLICA_TIMEOUT_MS = 2_000;
const STALLED_REPLICAS = 20;
/**
 * About 6 MiB of WAL: more than a paused loopback connection absorbs (the receiver's 128 KiB plus a send buffer
 * that grows to 4 MiB here), so every stream really stalls instead of catching up.
 */
const WAL_ROWS = 100_000;
const KERNEL_BUFFERS_BYTES_MAX = 4 * 1024 * 1024 + 128 * 1024;

let wal: StoredWal;
let walcast: RunningWalcast;

before(async () => {
  wal = await makeStoredWal('walcast-stalled', WAL_ROWS);
  walcast = await startWalcast({ dataDir: wal.dataDir, replicaTimeoutMs: REPLICA_TIMEOUT_MS });
}, { timeout: TIMEOUT_MS });

after(async () => {
  await walcast?.stop();
});

function streamingReplicas(): number {
  return walcast.server.timelines.list().reduce((sum, timeline) => sum + timeline.replicas.count(), 0);
}

test('replicas that stop reading are ended by the replica timeout', { timeout: TIMEOUT_MS }, async (t) => {
  assert.ok(Number(wal.endLsn - wal.startLsn) > KERNEL_BUFFERS_BYTES_MAX, 'more WAL than the socket buffers hold');
  const sockets: Socket[] = [];
  try {
    for (let index = 0; index < STALLED_REPLICAS; index++) {
      const socket = await startStreaming(walcast.port, wal.startLsn, { bytesAfterCopyBoth: 0, timeoutMs: 60_000 });
      socket.pause();
      sockets.push(socket);
    }
    const startedAtMs = Date.now();
    // Generous: a timeout check every quarter of the timeout, the FATAL's grace, and a loaded machine.
    await waitFor(async () => (streamingReplicas() === 0 && walcast.server.connectionCount() === 0 ? true : undefined), 60_000, {
      what: `${STALLED_REPLICAS} stalled replicas ended`,
    });
    t.diagnostic(`${STALLED_REPLICAS} stalled replicas ended ${Date.now() - startedAtMs} ms after the last one stalled`);
  } finally {
    for (const socket of sockets) socket.destroy();
  }
});
