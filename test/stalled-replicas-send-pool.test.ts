/**
 * Replicas that stop reading must not starve the others of the TS backend's send pool (io/send-stall.ts): with a
 * send pool their stalled runs fill, and a replica timeout far longer than the test (so nothing ends them), a
 * pg_receivewal started afterwards still receives every byte of the stored WAL, identical to the primary's. Without
 * the write-off it waits in the pool until the stalled replicas time out, and its run times out here.
 * The TS backend only: the native one sends plain sockets from the page cache and has no send pool.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { formatLsn } from '../src/lsn.js';
import { silentLogger } from '../src/log.js';
import { BufferPool } from '../src/io/buffer-pool.js';
import { FRAME_BYTES_MAX, STREAM_CHUNKS_IN_FLIGHT_MAX, createTsBackend } from '../src/io/ts-backend.js';
import type { IoBackend } from '../src/io/backend.js';
import { WalcastServer } from '../src/server.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import { makeTempDir, runReceiveWal } from './support/postgres.js';
import { startStreaming } from './support/raw-client.js';
import { STORED_WAL_SEGMENT_BYTES, makeStoredWal, type StoredWal } from './support/stored-wal.js';
import { waitFor } from './support/wait-for.js';

const TIMEOUT_MS = 300_000;
/** Longer than the test: the stalled replicas stay connected, holding their frames, throughout. */
const REPLICA_TIMEOUT_MS = 600_000;
const STALLED_REPLICAS = 2;
/** About 6 MiB of WAL: more than a paused loopback connection absorbs, so every stalled stream really stalls. */
const WAL_ROWS = 100_000;

let wal: StoredWal;
let server: WalcastServer;
let backend: IoBackend;
const sendPool = new BufferPool(FRAME_BYTES_MAX, STALLED_REPLICAS * STREAM_CHUNKS_IN_FLIGHT_MAX, STALLED_REPLICAS * STREAM_CHUNKS_IN_FLIGHT_MAX);

before(async () => {
  wal = await makeStoredWal('walcast-stalled-pool', WAL_ROWS);
  backend = createTsBackend({ sendPool, sendStallMs: 500 });
  server = await WalcastServer.start({ dataDir: wal.dataDir, listen: { host: '127.0.0.1', port: 0 }, auth: { method: 'trust' }, tls: undefined, backend, maxConnections: 64, replicaTimeoutMs: REPLICA_TIMEOUT_MS, log: silentLogger() });
}, { timeout: TIMEOUT_MS });

after(async () => {
  await server?.stop();
});

test('replicas that stop reading with the send pool full do not hold up pg_receivewal, which gets every byte', { timeout: TIMEOUT_MS }, async () => {
  const port = server.address().port;
  const sockets: Socket[] = [];
  try {
    for (let index = 0; index < STALLED_REPLICAS; index++) {
      const socket = await startStreaming(port, wal.startLsn, { bytesAfterCopyBoth: 0, timeoutMs: 60_000 });
      socket.pause();
      sockets.push(socket);
    }
    await waitFor(async () => (sendPool.inUse() === sendPool.buffersMax ? true : undefined), 60_000, { what: 'the stalled replicas pin the send pool' });

    const target = await makeTempDir('receivewal-beside-stalled');
    // An empty .partial of the first segment makes pg_receivewal start there instead of at the newest segment.
    const firstSegno = wal.startLsn / BigInt(STORED_WAL_SEGMENT_BYTES);
    await writeFile(join(target, `${segmentFileName(1, firstSegno, STORED_WAL_SEGMENT_BYTES)}.partial`), '');
    const result = await runReceiveWal({ port, dir: target, endpos: formatLsn(wal.endLsn - 1n), timeoutMs: 120_000 });
    assert.equal(result.code, 0, `pg_receivewal failed or waited past its bound: ${result.stderr}`);
    for (let segno = firstSegno; segno * BigInt(STORED_WAL_SEGMENT_BYTES) < wal.endLsn; segno++) {
      const segmentStart = segno * BigInt(STORED_WAL_SEGMENT_BYTES);
      const from = wal.startLsn > segmentStart ? wal.startLsn : segmentStart;
      const segmentEnd = segmentStart + BigInt(STORED_WAL_SEGMENT_BYTES);
      const to = wal.endLsn < segmentEnd ? wal.endLsn : segmentEnd;
      const name = segmentFileName(1, segno, STORED_WAL_SEGMENT_BYTES);
      const file = await readFile(join(target, name)).catch(() => readFile(join(target, `${name}.partial`)));
      const received = file.subarray(Number(from - segmentStart), Number(to - segmentStart));
      assert.ok(received.equals(await wal.primaryWal(from, to)), `segment ${name} matches the primary's bytes`);
    }
    const stats = backend.sendBufferStats!();
    assert.ok(stats.writtenOffTotal > 0, 'the stalled streams\' buffers were written off');
    assert.ok(stats.writtenOff <= stats.writtenOffMax && stats.inUse <= stats.buffersMax, 'within the pool and the written-off budget');
    const streaming = server.timelines.list().reduce((sum, timeline) => sum + timeline.replicas.count(), 0);
    assert.equal(streaming, STALLED_REPLICAS, 'the stalled replicas are still connected (the replica timeout did not free the pool)');
  } finally {
    for (const socket of sockets) socket.destroy();
  }
});
