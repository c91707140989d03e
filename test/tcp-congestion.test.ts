/**
 * `walcast serve --tcp-congestion-loopback` end to end: the accepted socket of a loopback client runs the algorithm
 * asked for (read from the kernel with ss(8), not from walcast), /v1/status and /metrics say so and count it, the
 * default gives loopback peers a non-pacing algorithm, and a name the kernel does not have stops start-up with
 * WALCAST_ERR_CONFIG before the port opens.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { freePort, makeTempDir } from './support/postgres.js';
import { spawnServe, type ServeProcess } from './support/serve-process.js';
import { runWalcastCli } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const run = promisify(execFile);
const TEST_TIMEOUT_MS = 120_000;
const noLinux = process.platform !== 'linux' ? 'TCP_CONGESTION is Linux only' : false;

interface Served {
  readonly serve: ServeProcess;
  readonly pgPort: number;
  readonly httpBase: string;
}

const started: ServeProcess[] = [];
after(async () => {
  for (const serve of started) await serve.stop();
});

async function serveWith(extraArgs: readonly string[]): Promise<Served> {
  const dataDir = await makeTempDir('walcast-cc-data');
  const pgPort = await freePort();
  const httpPort = await freePort();
  const httpBase = `http://127.0.0.1:${httpPort}`;
  const serve = await spawnServe({
    args: ['--data-dir', dataDir, '--listen', `127.0.0.1:${pgPort}`, '--http', `127.0.0.1:${httpPort}`, '--log-level', 'info', ...extraArgs],
    ready: async () => (await fetch(`${httpBase}/v1/status`)).ok,
  });
  started.push(serve);
  return { serve, pgPort, httpBase };
}

/** Opens a plain TCP connection to walcast from 127.0.0.1 and keeps it open (accept is where the algorithm is set). */
async function openClient(port: number): Promise<Socket> {
  const socket = connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return socket;
}

/** The congestion control ss(8) reports for walcast's side of the connection from `clientPort`. */
async function serverSideAlgorithm(pgPort: number, clientPort: number): Promise<string | undefined> {
  const { stdout } = await run('ss', ['-Htin', 'state', 'established', `( sport = :${pgPort} and dport = :${clientPort} )`]);
  // ss -i prints the algorithm as the first word of the info line ("cubic wscale:... rto:...", "reno ...", "bbr ...").
  const match = /^\s*([a-z][a-z0-9_]*)\s+wscale:/m.exec(stdout);
  return match?.[1];
}

async function status(httpBase: string): Promise<{ loopback: { algorithm: string; sockets_set: number; sockets_failed: number } }> {
  const body = (await (await fetch(`${httpBase}/v1/status`)).json()) as { io: { tcp_congestion: { loopback: { algorithm: string; sockets_set: number; sockets_failed: number } } } };
  return body.io.tcp_congestion;
}

describe('walcast serve: TCP congestion control of accepted connections', { skip: noLinux, timeout: TEST_TIMEOUT_MS }, () => {
  test('--tcp-congestion-loopback reno: the kernel reports reno on walcast\'s socket; status and /metrics count it', async () => {
    const served = await serveWith(['--tcp-congestion-loopback', 'reno']);
    const client = await openClient(served.pgPort);
    try {
      const algorithm = await waitFor(async () => (await serverSideAlgorithm(served.pgPort, client.localPort!)) ?? undefined, 10_000);
      assert.equal(algorithm, 'reno');
      const loopback = await waitFor(async () => {
        const current = (await status(served.httpBase)).loopback;
        return current.sockets_set >= 1 ? current : undefined;
      }, 10_000);
      assert.deepEqual(loopback, { algorithm: 'reno', sockets_set: 1, sockets_failed: 0 });
      const metrics = await (await fetch(`${served.httpBase}/metrics`)).text();
      assert.match(metrics, /^walcast_tcp_congestion_sockets_total\{peer="loopback",outcome="set"\} 1$/m);
      assert.match(metrics, /^walcast_tcp_congestion_info\{peer="loopback",algorithm="reno"\} 1$/m);
      assert.match(metrics, /^walcast_tcp_congestion_info\{peer="remote",algorithm="system \(configured\)"\} 1$/m);
      assert.match(served.serve.output(), /TCP congestion control of accepted connections/);
    } finally {
      client.destroy();
      await served.serve.stop();
    }
  });

  test('the default gives loopback peers cubic or, where cubic is refused, reno: never the pacing system default', async () => {
    const served = await serveWith([]);
    const client = await openClient(served.pgPort);
    try {
      const reported = (await status(served.httpBase)).loopback.algorithm;
      assert.ok(reported === 'cubic' || reported === 'reno', `status says ${reported}`);
      const algorithm = await waitFor(async () => (await serverSideAlgorithm(served.pgPort, client.localPort!)) ?? undefined, 10_000);
      assert.equal(algorithm, reported);
    } finally {
      client.destroy();
      await served.serve.stop();
    }
  });

  test('a name the kernel does not have stops start-up with WALCAST_ERR_CONFIG naming the flag', async () => {
    const dataDir = await makeTempDir('walcast-cc-bad');
    const port = await freePort();
    const result = await runWalcastCli(['serve', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--no-http', '--tcp-congestion', 'nosuchalgo'], { timeoutMs: 60_000 });
    assert.notEqual(result.code, 0);
    assert.match(result.stderr + result.stdout, /--tcp-congestion: the kernel refused nosuchalgo: ENOENT/);
  });
});
