/**
 * The programmatic API's own contract: it starts on an empty data directory and stops, reports its backend, and
 * refuses unsafe or invalid options before opening a socket. test/package-install.test.ts checks the same API as
 * an installed package.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { WalcastError, isWalcastError } from './errors.js';
import { silentLogger } from './log.js';
import { WALCAST_VERSION, startWalcast } from './index.js';

async function withDataDir(body: (dataDir: string) => Promise<void>): Promise<void> {
  const dataDir = await mkdtemp(join(tmpdir(), 'walcast-api-'));
  try {
    await body(dataDir);
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

test('starts on a free loopback port with the requested backend, and stops (twice is fine)', async () => {
  await withDataDir(async (dataDir) => {
    const walcast = await startWalcast({ dataDir, io: 'ts', logger: silentLogger() });
    assert.equal(walcast.host, '127.0.0.1');
    assert.ok(walcast.port > 0);
    assert.equal(walcast.io.backend, 'ts');
    assert.equal(walcast.version, WALCAST_VERSION);
    assert.equal(await canConnect(walcast.port), true);
    await walcast.stop();
    await walcast.stop();
    assert.equal(await canConnect(walcast.port), false);
  });
});

test('trust off loopback, an empty password and a bad port are refused', async () => {
  await withDataDir(async (dataDir) => {
    await assert.rejects(startWalcast({ dataDir, host: '0.0.0.0', io: 'ts', logger: silentLogger() }), (error) => isWalcastError(error, 'WALCAST_ERR_CONFIG'));
    await assert.rejects(
      startWalcast({ dataDir, io: 'ts', auth: { method: 'scram-sha-256', password: '' }, logger: silentLogger() }),
      (error) => error instanceof WalcastError && error.code === 'WALCAST_ERR_CONFIG',
    );
    await assert.rejects(startWalcast({ dataDir, port: 70_000, io: 'ts', logger: silentLogger() }), RangeError);
  });
});

test('scram-sha-256 with a password may listen off loopback', async () => {
  await withDataDir(async (dataDir) => {
    const walcast = await startWalcast({ dataDir, host: '0.0.0.0', io: 'ts', auth: { method: 'scram-sha-256', password: 'pw' }, logger: silentLogger() });
    try {
      assert.equal(walcast.host, '0.0.0.0');
    } finally {
      await walcast.stop();
    }
  });
});
