/**
 * Admission against lock-out before authentication, on a real socket: idle sockets that never send a startup packet
 * no longer take the slots of authenticated replicas, they are closed at the authentication timeout, and once the
 * startup pool is full the oldest idle one makes room for a newcomer.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { CONNECTIONS_MAX } from '../src/config/limits.js';
import { isWalcastError } from '../src/errors.js';
import { createIoBackend } from '../src/io/select-backend.js';
import { silentLogger } from '../src/log.js';
import { WalcastServer } from '../src/server.js';
import { connectReplication } from '../src/wire/client.js';
import { makeTempDir } from './support/postgres.js';
import { startWalcast, type RunningWalcast, type StartWalcastOptions } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const TIMEOUT_MS = 120_000;

const servers: RunningWalcast[] = [];
const sockets: Socket[] = [];

after(async () => {
  for (const socket of sockets) socket.destroy();
  await Promise.all(servers.map((server) => server.stop()));
});

async function server(options: Omit<StartWalcastOptions, 'dataDir'>): Promise<RunningWalcast> {
  const running = await startWalcast({ dataDir: await makeTempDir('walcast-admission'), ...options });
  servers.push(running);
  return running;
}

/** Opens `count` sockets that send nothing; resolves once all are connected. */
async function idleSockets(port: number, count: number): Promise<Socket[]> {
  const opened = await Promise.all(
    Array.from({ length: count }, () => new Promise<Socket>((resolve, reject) => {
      const socket = connect({ host: '127.0.0.1', port }, () => resolve(socket));
      // Read (and drop) whatever arrives, so the server's FIN is seen and 'close' fires.
      socket.resume();
      socket.on('error', () => undefined);
      socket.once('error', reject);
    })),
  );
  sockets.push(...opened);
  return opened;
}

async function replicaConnects(port: number): Promise<void> {
  const client = await connectReplication({ host: '127.0.0.1', port, user: 'repl', applicationName: 'legit', timeoutMs: 30_000 });
  await client.end();
}

describe('admission', { timeout: TIMEOUT_MS }, () => {
  test('WalcastServer.start refuses maxConnections above the ceiling before listening', async () => {
    const { backend } = await createIoBackend({ io: 'ts' });
    await assert.rejects(
      WalcastServer.start({ dataDir: '/nonexistent-walcast-dir', listen: { host: '127.0.0.1', port: 0 }, auth: { method: 'trust' }, backend, maxConnections: CONNECTIONS_MAX + 1, replicaTimeoutMs: 1000, log: silentLogger() }),
      (error: unknown) => isWalcastError(error, 'WALCAST_ERR_CONFIG'),
    );
    await backend.close();
  });

  test('more idle sockets than --max-connections do not lock a replica out (it got 53300 before)', async () => {
    const walcast = await server({ maxConnections: 256 });
    await idleSockets(walcast.port, 300);
    await replicaConnects(walcast.port);
  });

  test('a socket that sends nothing is closed with 08P01 at the authentication timeout (it was 60 s)', async () => {
    const walcast = await server({ authenticationTimeoutMs: 500 });
    const [socket] = await idleSockets(walcast.port, 1);
    assert.ok(socket !== undefined);
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    const closedAtMs = await new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now())));
    assert.ok(closedAtMs > 0);
    assert.ok(Buffer.concat(chunks).includes(Buffer.from('C08P01\0', 'latin1')), 'FATAL 08P01 before the close');
  });

  test('a full startup pool evicts its oldest idle socket for a newcomer; the authenticated pool is untouched', async () => {
    const walcast = await server({ maxConnections: 4, maxStartupConnections: 16, maxStartupConnectionsPerAddress: 16 });
    const idle = await idleSockets(walcast.port, 16);
    const closed = idle.map((socket) => new Promise<void>((resolve) => socket.once('close', () => resolve())));
    // Younger than the eviction age, the pool's members are kept and the newcomer is refused...
    await assert.rejects(replicaConnects(walcast.port), /still starting up/);
    // ...older, the oldest idle one makes room.
    await new Promise((resolve) => setTimeout(resolve, 1_200));
    await replicaConnects(walcast.port);
    await Promise.race(closed);
    await waitFor(async () => (walcast.server.connectionCount() <= 16 ? true : undefined), 10_000, { what: 'evicted sockets closed' });
  });
});
