/**
 * Loopback tests of TLS in the wire layer: PgConnection.startTls + acceptStartup on one side, the replication client's
 * sslmode handling on the other (certificates made with openssl), plus tokens and client certificates through the
 * same path. The libpq-facing behaviour is tested with real clients in test/tls*.test.ts.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { TokenVerifier, createToken } from '../auth/jwt.js';
import { isWalcastError } from '../errors.js';
import { ServerTls } from '../tls/server-tls.js';
import { ServerError, connectReplication, type ClientTlsOptions } from './client.js';
import { PgConnection } from './connection.js';
import { acceptStartup, type AuthConfig, type StartupResult } from './startup.js';

const TIMEOUT_MS = 10_000;
const TENANT = 'abcdefabcdefabcdefabcdefabcdef01';
const dir = mkdtempSync(join(tmpdir(), 'walcast-tls-loopback-'));
const servers: Server[] = [];

function openssl(args: readonly string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
}

before(() => {
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '1', '-subj', '/CN=loopback CA', '-addext', 'basicConstraints=critical,CA:TRUE']);
  for (const [name, subject, ext] of [['server', '/CN=localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], ['client', '/CN=repl', 'extendedKeyUsage=clientAuth']] as const) {
    openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject]);
    writeFileSync(join(dir, `${name}.ext`), ext + '\n');
    openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '1', '-out', `${name}.crt`, '-extfile', `${name}.ext`]);
  }
});

after(() => {
  for (const server of servers) server.close();
  rmSync(dir, { recursive: true, force: true });
});

async function serve(auth: AuthConfig, tls: ServerTls | undefined): Promise<{ port: number; results: Array<StartupResult | unknown> }> {
  const results: Array<StartupResult | unknown> = [];
  const server = createServer((socket) => {
    const conn = new PgConnection(socket);
    acceptStartup(conn, { auth, tls, serverVersion: '15 (test)', backendPid: 1, secretKey: 2, startupTimeoutMs: TIMEOUT_MS })
      .then((result) => {
        results.push({ ...result, encrypted: conn.encrypted });
        return conn.close();
      })
      .catch((error: unknown) => results.push(error));
  });
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as AddressInfo).port, results };
}

const serverTls = (mode: 'prefer' | 'require' = 'prefer', withCa = false): Promise<ServerTls> =>
  ServerTls.load({ certFile: join(dir, 'server.crt'), keyFile: join(dir, 'server.key'), caFile: withCa ? join(dir, 'ca.crt') : undefined }, mode);

async function connectWith(port: number, tls: ClientTlsOptions | undefined, password?: string, user = 'repl'): Promise<void> {
  const client = await connectReplication({ host: '127.0.0.1', port, user, password, timeoutMs: TIMEOUT_MS, tls });
  await client.end();
}

describe('TLS between PgConnection and the replication client', () => {
  test('verify-full connects and the server side is encrypted; prefer falls back to plain without TLS', async () => {
    const secured = await serve({ method: 'trust' }, await serverTls());
    await connectWith(secured.port, { mode: 'verify-full', rootCertFile: join(dir, 'ca.crt'), serverName: 'localhost' });
    assert.equal((secured.results[0] as { encrypted: boolean }).encrypted, true);
    const plain = await serve({ method: 'trust' }, undefined);
    await connectWith(plain.port, { mode: 'prefer', serverName: '127.0.0.1' });
    assert.equal((plain.results[0] as { encrypted: boolean }).encrypted, false);
    await assert.rejects(connectWith(plain.port, { mode: 'require', serverName: '127.0.0.1' }), /server does not support SSL, but SSL was required/);
  });

  test('verify-full checks the name; verify-ca only the chain', async () => {
    const { port } = await serve({ method: 'trust' }, await serverTls());
    const ca = join(dir, 'ca.crt');
    await assert.rejects(connectWith(port, { mode: 'verify-full', rootCertFile: ca, serverName: 'other.example' }), /other\.example/);
    await connectWith(port, { mode: 'verify-ca', rootCertFile: ca, serverName: 'other.example' });
  });

  test('--tls-mode require refuses a plain startup with 28000', async () => {
    const { port } = await serve({ method: 'trust' }, await serverTls('require'));
    await assert.rejects(connectWith(port, { mode: 'disable', serverName: '127.0.0.1' }), (error: unknown) => error instanceof ServerError && error.sqlState === '28000' && /requires TLS/.test(error.message));
  });

  test('plaintext injected after the SSLRequest is refused', async () => {
    const { port, results } = await serve({ method: 'trust' }, await serverTls());
    const socket = connect({ host: '127.0.0.1', port });
    const sslRequest = Buffer.alloc(8);
    sslRequest.writeInt32BE(8, 0);
    sslRequest.writeInt32BE(80877103, 4);
    socket.end(Buffer.concat([sslRequest, Buffer.from('injected')]));
    // Read (and drop) the server's answer so the socket sees its end and closes.
    socket.resume();
    await once(socket, 'close');
    await waitUntil(() => results.length > 0);
    assert.ok(isWalcastError(results[0], 'WALCAST_ERR_PROTOCOL_VIOLATION'));
  });

  test('cert auth: the CA-signed certificate for the user gets in, the wrong user does not', async () => {
    const { port, results } = await serve({ method: 'cert' }, await serverTls('require', true));
    const tls: ClientTlsOptions = { mode: 'verify-full', rootCertFile: join(dir, 'ca.crt'), certFile: join(dir, 'client.crt'), keyFile: join(dir, 'client.key'), serverName: 'localhost' };
    await connectWith(port, tls);
    await assert.rejects(connectWith(port, tls, undefined, 'postgres'), /certificate authentication failed for user "postgres"/);
    await assert.rejects(connectWith(port, { ...tls, certFile: undefined, keyFile: undefined }), /requires a valid client certificate/);
    assert.ok(results.some((result) => isWalcastError(result, 'WALCAST_ERR_CERT_AUTH')));
  });

  test('jwt auth: the token as the password yields its claims; a bad token gets 28000', async () => {
    const keys = generateKeyPairSync('ed25519');
    const publicFile = join(dir, 'jwt.pub');
    writeFileSync(publicFile, keys.publicKey.export({ type: 'spki', format: 'pem' }));
    const tokens = await TokenVerifier.load([publicFile]);
    const { port, results } = await serve({ method: 'jwt', tokens }, await serverTls());
    const tls: ClientTlsOptions = { mode: 'require', serverName: '127.0.0.1' };
    const token = await createToken({ privateKeyPem: keys.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), scope: 'tenant', tenantId: TENANT, ttlSeconds: 60 });
    await connectWith(port, tls, token);
    assert.deepEqual((results[0] as StartupResult).token, { scope: 'tenant', tenantId: TENANT });
    await assert.rejects(connectWith(port, tls, 'garbage'), (error: unknown) => error instanceof ServerError && error.sqlState === '28000');
  });
});

async function waitUntil(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + TIMEOUT_MS;
  while (!condition()) {
    assert.ok(Date.now() < deadline, 'condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
