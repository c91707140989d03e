/**
 * `walcast serve` with TLS and tokens as an operator runs it (a child process): the HTTP API over HTTPS with the
 * same certificate, Bearer JWTs scoped per tenant (cross-tenant reads refused), SIGHUP swapping the certificate for
 * new connections without dropping an open one, `walcast token create`, and the refusals of unsafe configurations.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { importWal } from '../src/storage/wal-import.js';
import { freePort, makeTempDir, runPsqlAsServerUser, startPrimary } from './support/postgres.js';
import { makeTestCertificates, type TestCertificates } from './support/tls-certs.js';
import { REPO_ROOT, runWalcastCli } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const TEST_TIMEOUT_MS = 180_000;
const START_TIMEOUT_MS = 60_000;
/** SSLRequest code (pqcomm.h NEGOTIATE_SSL_CODE). */
const SSL_REQUEST_CODE = 80877103;

interface Fixture {
  certs: TestCertificates;
  dataDir: string;
  tenantId: string;
  timelineId: string;
  pgPort: number;
  httpPort: number;
  child: ChildProcess;
  certFile: string;
  keyFile: string;
  stderr: string[];
}

let fixture: Fixture;

before(async () => {
  const certs = await makeTestCertificates();
  const primary = await startPrimary();
  await primary.stop();
  const dataDir = await makeTempDir('walcast-tls-cli');
  const imported = await importWal({ dataDir, fromDir: primary.walDir });
  // The served files are copies, so the test can overwrite them and send SIGHUP.
  const certFile = join(dataDir, 'server.crt');
  const keyFile = join(dataDir, 'server.key');
  await copyFile(certs.serverCert, certFile);
  await copyFile(certs.serverKey, keyFile);
  const pgPort = await freePort();
  const httpPort = await freePort();
  const args = ['serve', '--data-dir', dataDir, '--listen', `127.0.0.1:${pgPort}`, '--http', `127.0.0.1:${httpPort}`, '--http-tls', '--io', 'ts', '--tls-cert', certFile, '--tls-key', keyFile, '--tls-mode', 'require', '--auth', 'jwt', '--jwt-public-key', certs.tokenPublicKey];
  const child = spawn(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'src/cli/main.ts'), ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  const stderr: string[] = [];
  child.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk.toString()));
  fixture = { certs, dataDir, tenantId: imported.tenantId, timelineId: imported.timelineId, pgPort, httpPort, child, certFile, keyFile, stderr };
  await waitFor(async () => ((await httpsGet('/v1/status', await token('safekeeperdata'))).status === 200 ? true : undefined), START_TIMEOUT_MS, { what: 'walcast serve answers over HTTPS' });
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  if (fixture?.child.exitCode === null) {
    const exited = new Promise((resolve) => fixture.child.once('exit', resolve));
    fixture.child.kill('SIGTERM');
    await exited;
  }
});

async function token(scope: 'tenant' | 'safekeeperdata', tenantId?: string): Promise<string> {
  const args = ['token', 'create', '--private-key', fixture.certs.tokenPrivateKey, '--scope', scope, '--ttl', '10m', ...(tenantId === undefined ? [] : ['--tenant-id', tenantId])];
  const result = await runWalcastCli(args);
  assert.equal(result.code, 0, result.stderr);
  return result.stdout.trim();
}

function httpsGet(path: string, bearer: string | undefined): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const headers = bearer === undefined ? {} : { authorization: `Bearer ${bearer}` };
    const req = request({ host: '127.0.0.1', port: fixture.httpPort, path, headers, ca: readFileSync(fixture.certs.caCert), servername: 'localhost' }, (response) => {
      let body = '';
      response.on('data', (chunk: Buffer) => (body += chunk.toString()));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('walcast serve with TLS and tokens', { timeout: TEST_TIMEOUT_MS }, () => {
  test('the HTTP API over HTTPS scopes JWTs per tenant and refuses cross-tenant reads', async () => {
    const timelinePath = `/v1/tenant/${fixture.tenantId}/timeline/${fixture.timelineId}`;
    const own = await token('tenant', fixture.tenantId);
    const other = await token('tenant', 'f'.repeat(32));
    const admin = await token('safekeeperdata');
    assert.equal((await httpsGet(timelinePath, own)).status, 200);
    assert.equal((await httpsGet(`${timelinePath}/slots`, own)).status, 200);
    assert.equal((await httpsGet(timelinePath, other)).status, 403, 'cross-tenant read refused');
    assert.equal((await httpsGet(`${timelinePath}/slots`, other)).status, 403);
    assert.equal((await httpsGet('/v1/status', own)).status, 403, 'a tenant token is not an admin token');
    assert.equal((await httpsGet('/v1/timelines', own)).status, 403);
    assert.equal((await httpsGet('/metrics', admin)).status, 200);
    assert.equal((await httpsGet('/v1/status', admin)).status, 200);
    assert.equal((await httpsGet(timelinePath, admin)).status, 200);
    assert.equal((await httpsGet(timelinePath, undefined)).status, 401);
    assert.equal((await httpsGet(timelinePath, 'garbage')).status, 401);
  });

  test('replication over TLS with a tenant token; a plain client is refused with the TLS-required error', async () => {
    const own = await token('tenant', fixture.tenantId);
    const conninfo = `host=localhost hostaddr=127.0.0.1 port=${fixture.pgPort} user=repl replication=true sslmode=verify-full sslrootcert=${fixture.certs.caCert}`;
    const ok = await runPsqlAsServerUser(conninfo, 'IDENTIFY_SYSTEM', { password: own });
    assert.equal(ok.code, 0, ok.stderr);
    const plain = await runPsqlAsServerUser(`host=127.0.0.1 port=${fixture.pgPort} user=repl replication=true sslmode=disable`, 'IDENTIFY_SYSTEM', { password: own });
    assert.match(plain.stderr, /no encryption: walcast requires TLS/);
  });

  test('SIGHUP reloads the certificate for new connections and keeps an open one', async () => {
    const open = await openTlsConnection();
    assert.match(JSON.stringify(open.getPeerCertificate().subject), /localhost/);
    await writeFile(fixture.certFile, await readFile(fixture.certs.serverCert2));
    await writeFile(fixture.keyFile, await readFile(fixture.certs.serverKey2));
    fixture.child.kill('SIGHUP');
    await waitFor(async () => {
      const fresh = await openTlsConnection();
      const subject = JSON.stringify(fresh.getPeerCertificate().subject);
      fresh.destroy();
      return subject.includes('walcast-reloaded') ? true : undefined;
    }, START_TIMEOUT_MS, { what: 'new connections get the reloaded certificate' });
    assert.ok(!open.destroyed, 'the connection opened before SIGHUP is still open');
    open.destroy();
    assert.equal(fixture.child.exitCode, null, 'SIGHUP does not stop the server');
  });
});

describe('walcast token create and unsafe configurations', { timeout: TEST_TIMEOUT_MS }, () => {
  test('token create refuses a tenant scope without a tenant id and a non-Ed25519 key', async () => {
    const missing = await runWalcastCli(['token', 'create', '--private-key', fixture.certs.tokenPrivateKey, '--scope', 'tenant']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /--scope tenant needs --tenant-id/);
    const rsa = await runWalcastCli(['token', 'create', '--private-key', fixture.certs.serverKey, '--scope', 'safekeeperdata']);
    assert.equal(rsa.code, 1);
    assert.match(rsa.stderr, /not Ed25519/);
  });

  test('off loopback, password auth without TLS is refused unless --allow-plaintext; jwt needs --tls-mode require', async () => {
    const passwordFile = join(fixture.dataDir, 'pw');
    await writeFile(passwordFile, 'secret\n');
    const base = ['serve', '--data-dir', fixture.dataDir, '--listen', '0.0.0.0:0', '--no-http'];
    const plain = await runWalcastCli([...base, '--auth', 'scram-sha-256', '--password-file', passwordFile]);
    assert.equal(plain.code, 1);
    assert.match(plain.stderr, /would expose credentials and WAL on the network/);
    const jwtPrefer = await runWalcastCli([...base, '--auth', 'jwt', '--jwt-public-key', fixture.certs.tokenPublicKey, '--tls-cert', fixture.certs.serverCert, '--tls-key', fixture.certs.serverKey]);
    assert.equal(jwtPrefer.code, 1);
    assert.match(jwtPrefer.stderr, /--tls-mode require/);
    const certWithoutCa = await runWalcastCli(['serve', '--data-dir', fixture.dataDir, '--no-http', '--auth', 'cert', '--tls-cert', fixture.certs.serverCert, '--tls-key', fixture.certs.serverKey]);
    assert.equal(certWithoutCa.code, 1);
    assert.match(certWithoutCa.stderr, /--auth cert needs/);
  });
});

/** A TLS connection to the replication port after an SSLRequest, left open until the caller destroys it. */
async function openTlsConnection(): Promise<import('node:tls').TLSSocket> {
  const socket = netConnect({ host: '127.0.0.1', port: fixture.pgPort });
  await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const sslRequest = Buffer.alloc(8);
  sslRequest.writeInt32BE(8, 0);
  sslRequest.writeInt32BE(SSL_REQUEST_CODE, 4);
  socket.write(sslRequest);
  const answer = await new Promise<Buffer>((resolve) => socket.once('data', resolve));
  assert.equal(answer.toString('latin1'), 'S');
  const secure = tlsConnect({ socket, ca: await readFile(fixture.certs.caCert), servername: 'localhost' });
  await new Promise((resolve, reject) => secure.once('secureConnect', resolve).once('error', reject));
  return secure;
}
