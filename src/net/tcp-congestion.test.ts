import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { describe, test } from 'node:test';
import { pino } from 'pino';
import { Writable } from 'node:stream';
import { loadNativeAddon, type NativeAddon } from '../io/native-binding.js';
import { socketFd } from '../io/socket-fd.js';
import type { Logger } from '../log.js';
import { TCP_CONGESTION_DEFAULT, TcpCongestion, describeResolved, parseCongestionChoice, peerClass } from './tcp-congestion.js';

const loaded = loadNativeAddon();
const addon: NativeAddon | undefined = loaded.ok ? loaded.addon : undefined;
const noAddon = addon === undefined ? `no native addon: ${loaded.ok ? '' : loaded.reason}` : false;
/** reno is built into every Linux kernel and always allowed, so tests can ask for it anywhere. */
const ALWAYS_THERE = 'reno';
const SYSTEM_DEFAULT = process.platform === 'linux' ? readFileSync('/proc/sys/net/ipv4/tcp_congestion_control', 'utf8').trim() : '';

function recordingLog(): { log: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { log: pino({ level: 'info' }, sink), lines };
}

/** A loopback listener whose accepted sockets go through `onAccept`; resolves with the server side of one connection. */
async function acceptedPair(onAccept: (socket: Socket) => void): Promise<{ server: Server; accepted: Socket; client: Socket }> {
  let resolveAccepted: (socket: Socket) => void = () => undefined;
  const acceptedPromise = new Promise<Socket>((resolve) => {
    resolveAccepted = resolve;
  });
  const server = createServer((socket) => {
    onAccept(socket);
    resolveAccepted(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  assert.ok(address !== null && typeof address === 'object');
  const client = connect(address.port, '127.0.0.1');
  const accepted = await acceptedPromise;
  return { server, accepted, client };
}

async function closePair(pair: { server: Server; accepted: Socket; client: Socket }): Promise<void> {
  pair.client.destroy();
  pair.accepted.destroy();
  await new Promise<void>((resolve) => pair.server.close(() => resolve()));
}

describe('parseCongestionChoice', () => {
  test('"system" and lists of kernel-style names', () => {
    assert.equal(parseCongestionChoice('system', '--x'), 'system');
    assert.deepEqual(parseCongestionChoice(' cubic, reno ', '--x'), { names: ['cubic', 'reno'], required: true });
    assert.deepEqual(parseCongestionChoice('bbr', '--x'), { names: ['bbr'], required: true });
  });

  test('refuses what no kernel module is called, and more than four names', () => {
    for (const bad of ['', 'CUBIC', 'cu bic', 'a,,b', '1cubic', 'x'.repeat(16), 'cubic;reno', 'a,b,c,d,e']) {
      assert.throws(() => parseCongestionChoice(bad, '--tcp-congestion'), /--tcp-congestion/, bad);
    }
  });
});

describe('peerClass', () => {
  test('127.0.0.0/8, ::1 and IPv4-mapped loopback are loopback; everything else is remote', () => {
    for (const address of ['127.0.0.1', '127.5.6.7', '::1', '::ffff:127.0.0.1', '::FFFF:127.0.0.9']) assert.equal(peerClass(address), 'loopback', address);
    for (const address of ['10.0.0.1', '::ffff:10.0.0.1', '2001:db8::1', '128.0.0.1', 'fe80::1', undefined]) assert.equal(peerClass(address), 'remote', String(address));
  });
});

describe('TcpCongestion.resolve', () => {
  test('takes the first name the kernel accepts; an unknown name before it is skipped', { skip: noAddon }, () => {
    const { log } = recordingLog();
    const chosen = TcpCongestion.resolve({ loopback: { names: ['nosuchalgo', ALWAYS_THERE], required: true }, remote: 'system' }, { addon, log }).describe();
    assert.deepEqual(chosen.loopback, { algorithm: ALWAYS_THERE });
    assert.deepEqual(chosen.remote, { system: 'configured' });
    assert.equal(describeResolved(chosen.remote), 'system (configured)');
  });

  test('names the operator gave that the kernel refuses are a configuration error naming the flag and errno', { skip: noAddon }, () => {
    const { log } = recordingLog();
    assert.throws(
      () => TcpCongestion.resolve({ loopback: 'system', remote: { names: ['nosuchalgo'], required: true } }, { addon, log }),
      (error: Error & { code?: string }) => error.code === 'WALCAST_ERR_CONFIG' && /--tcp-congestion: .*nosuchalgo: ENOENT/.test(error.message),
    );
  });

  test('a default preference the kernel refuses keeps the system default with a warning', { skip: noAddon }, () => {
    const { log, lines } = recordingLog();
    const chosen = TcpCongestion.resolve({ loopback: { names: ['nosuchalgo'], required: false }, remote: 'system' }, { addon, log }).describe();
    assert.deepEqual(chosen.loopback, { system: 'refused' });
    assert.ok(lines.some((line) => line.level === 40 && String(line.msg).includes('left to the system')), JSON.stringify(lines));
  });

  test('without the addon the default keeps the system choice, and explicit names are an error', () => {
    const { log } = recordingLog();
    assert.deepEqual(TcpCongestion.resolve(TCP_CONGESTION_DEFAULT, { addon: undefined, log }).describe().loopback, { system: 'no native addon' });
    assert.throws(() => TcpCongestion.resolve({ loopback: { names: ['cubic'], required: true }, remote: 'system' }, { addon: undefined, log }), /native addon/);
  });
});

describe('TcpCongestion.apply', () => {
  test('a loopback connection gets the chosen algorithm on its accepted socket, and is counted', { skip: noAddon }, async () => {
    const { log } = recordingLog();
    const congestion = TcpCongestion.resolve({ loopback: { names: [ALWAYS_THERE], required: true }, remote: 'system' }, { addon, log });
    const pair = await acceptedPair((socket) => congestion.apply(socket));
    try {
      const fd = socketFd(pair.accepted);
      assert.ok(fd !== undefined);
      assert.equal(addon!.tcpCongestion!(fd), ALWAYS_THERE);
      assert.equal(congestion.counts().set.get('loopback'), 1);
      assert.equal(congestion.counts().failed.get('loopback'), undefined);
    } finally {
      await closePair(pair);
    }
  });

  test('"system" leaves the socket with the kernel default', { skip: noAddon }, async () => {
    const { log } = recordingLog();
    const congestion = TcpCongestion.resolve({ loopback: 'system', remote: 'system' }, { addon, log });
    const pair = await acceptedPair((socket) => congestion.apply(socket));
    try {
      assert.equal(addon!.tcpCongestion!(socketFd(pair.accepted)!), SYSTEM_DEFAULT);
      assert.equal(congestion.counts().set.size, 0);
    } finally {
      await closePair(pair);
    }
  });

  test('a socket the kernel refuses (a Unix socket: no TCP) or that is gone is counted as failed, logged once per code, never thrown', { skip: noAddon }, async () => {
    const { log, lines } = recordingLog();
    const congestion = TcpCongestion.resolve({ loopback: 'system', remote: { names: [ALWAYS_THERE], required: true } }, { addon, log });
    const directory = await mkdtemp(join(tmpdir(), 'walcast-cc-'));
    const path = join(directory, 'socket');
    let resolveAccepted: (socket: Socket) => void = () => undefined;
    const acceptedPromise = new Promise<Socket>((resolve) => {
      resolveAccepted = resolve;
    });
    const server = createServer(resolveAccepted);
    await new Promise<void>((resolve) => server.listen(path, resolve));
    const client = connect(path);
    const accepted = await acceptedPromise;
    try {
      assert.equal(peerClass(accepted.remoteAddress), 'remote');
      congestion.apply(accepted);
      congestion.apply(accepted);
      assert.equal(congestion.counts().failed.get('remote'), 2);
      const warnings = lines.filter((line) => String(line.msg).includes('could not set the TCP congestion control'));
      assert.equal(warnings.length, 1, JSON.stringify(lines));
      assert.equal(warnings[0]!.code, 'EOPNOTSUPP');
      const closed = new Promise((resolve) => accepted.once('close', resolve));
      accepted.destroy();
      await closed;
      congestion.apply(accepted);
      assert.equal(congestion.counts().failed.get('remote'), 3);
      assert.equal(lines.filter((line) => String(line.msg).includes('could not set the TCP congestion control')).length, 2);
      assert.equal(congestion.counts().set.size, 0);
    } finally {
      client.destroy();
      accepted.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(directory, { recursive: true, force: true });
    }
  });
});
