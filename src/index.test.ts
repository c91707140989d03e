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
import { pino } from 'pino';
import { Writable } from 'node:stream';
import { silentLogger, type Logger } from './log.js';
import { WALCAST_VERSION, startWalcast } from './index.js';

async function withDataDir(body: (dataDir: string) => Promise<void>): Promise<void> {
  const dataDir = await mkdtemp(join(tmpdir(), 'walcast-api-'));
  try {
    await body(dataDir);
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
}

/** A pino logger whose JSON lines the test reads. */
function recordingLogger(lines: string[]): Logger {
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString('utf8').split('\n').filter((line) => line !== ''));
      done();
    },
  });
  return pino<never>({ level: 'info' }, sink);
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

test('tcpCongestion: names the kernel refuses are WALCAST_ERR_CONFIG, a bad name a RangeError, reno and system start', { skip: process.platform !== 'linux' }, async () => {
  await withDataDir(async (dataDir) => {
    await assert.rejects(startWalcast({ dataDir, io: 'ts', tcpCongestion: { remote: ['nosuchalgo'] }, logger: silentLogger() }), (error) => isWalcastError(error, 'WALCAST_ERR_CONFIG') && /nosuchalgo: ENOENT/.test(error.message));
    await assert.rejects(startWalcast({ dataDir, io: 'ts', tcpCongestion: { loopback: ['Not A Name'] }, logger: silentLogger() }), RangeError);
    const walcast = await startWalcast({ dataDir, io: 'ts', tcpCongestion: { loopback: ['reno'], remote: 'system' }, logger: silentLogger() });
    assert.equal(await canConnect(walcast.port), true);
    await walcast.stop();
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

test('off loopback, scram-sha-256 without TLS is refused as walcast serve refuses it, unless allowPlaintext (warned)', async () => {
  await withDataDir(async (dataDir) => {
    const scram = { method: 'scram-sha-256', password: 'pw' } as const;
    await assert.rejects(startWalcast({ dataDir, host: '0.0.0.0', io: 'ts', auth: scram, logger: silentLogger() }), (error) =>
      isWalcastError(error, 'WALCAST_ERR_CONFIG') && /would expose credentials and WAL on the network: give tls: \{ certFile, keyFile \}, or allowPlaintext: true/.test(error.message));
    // jwt is refused before its key files are read: none of these exist.
    await assert.rejects(startWalcast({ dataDir, host: '0.0.0.0', io: 'ts', auth: { method: 'jwt', publicKeyFiles: ['/nonexistent.pub'] }, logger: silentLogger() }), (error) =>
      isWalcastError(error, 'WALCAST_ERR_CONFIG') && /mode: 'require'/.test(error.message));
    const lines: string[] = [];
    const walcast = await startWalcast({ dataDir, host: '0.0.0.0', io: 'ts', auth: scram, allowPlaintext: true, logger: recordingLogger(lines) });
    try {
      assert.equal(walcast.host, '0.0.0.0');
      assert.ok(lines.some((line) => /"level":40.*credentials and WAL travel unencrypted/.test(line)), `a warning is logged: ${lines.join('\n')}`);
    } finally {
      await walcast.stop();
    }
  });
});

test('cert auth needs a CA, jwt needs key files, and a bad TLS mode is a RangeError', async () => {
  await withDataDir(async (dataDir) => {
    await assert.rejects(startWalcast({ dataDir, io: 'ts', auth: { method: 'cert' }, logger: silentLogger() }), (error) => isWalcastError(error, 'WALCAST_ERR_CONFIG') && /caFile/.test(error.message));
    await assert.rejects(startWalcast({ dataDir, io: 'ts', auth: { method: 'jwt', publicKeyFiles: [] }, logger: silentLogger() }), (error) => isWalcastError(error, 'WALCAST_ERR_CONFIG'));
    await assert.rejects(startWalcast({ dataDir, io: 'ts', tls: { certFile: 'a', keyFile: 'b', mode: 'always' as 'require' }, logger: silentLogger() }), RangeError);
  });
});

test('the kernel TLS probe is part of the reported I/O choice', async () => {
  await withDataDir(async (dataDir) => {
    const walcast = await startWalcast({ dataDir, io: 'ts', logger: silentLogger() });
    try {
      assert.deepEqual([walcast.io.kernelTls.state, walcast.io.kernelTls.code], ['not-probed', 'TS_BACKEND']);
    } finally {
      await walcast.stop();
    }
  });
});
