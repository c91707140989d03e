/**
 * TLS on the replication port and token authentication, with real libpq clients (psql as the postgres OS user) and
 * certificates made by openssl: sslmode verify-full against walcast's certificate, SCRAM-SHA-256-PLUS with
 * channel_binding=require, client certificates (--auth cert), sslmode=require against a plain-only walcast, a plain
 * client against --tls-mode require, certificate reload, and JWTs: the right tenant gets in, every bad token and
 * the wrong tenant get 28000 before a single WAL byte. The same through the programmatic API (startWalcast).
 */
import assert from 'node:assert/strict';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { createHmac } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { TokenVerifier, createToken } from '../src/auth/jwt.js';
import { startWalcast as startPublicWalcast, type Walcast, type WalcastOptions } from '../src/index.js';
import { silentLogger } from '../src/log.js';
import { importWal } from '../src/storage/wal-import.js';
import { ServerTls } from '../src/tls/server-tls.js';
import { createScramVerifier } from '../src/wire/scram.js';
import { makeTempDir, runPsqlAsServerUser, startPrimary, type PgCluster } from './support/postgres.js';
import { queryMessage, sendRawAndCollect, startupPacket, typedMessage } from './support/raw-client.js';
import { makeTestCertificates, type TestCertificates } from './support/tls-certs.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';

const TEST_TIMEOUT_MS = 180_000;
const PASSWORD = 'tls-test-pw';

interface Fixture {
  primary: PgCluster;
  certs: TestCertificates;
  dataDir: string;
  tenantId: string;
  timelineId: string;
  servers: RunningWalcast[];
}

let fixture: Fixture;

before(async () => {
  const certs = await makeTestCertificates();
  const primary = await startPrimary();
  await primary.sql('CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g');
  await primary.stop();
  const dataDir = await makeTempDir('walcast-tls-data');
  const imported = await importWal({ dataDir, fromDir: primary.walDir });
  fixture = { primary, certs, dataDir, tenantId: imported.tenantId, timelineId: imported.timelineId, servers: [] };
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  for (const server of fixture?.servers ?? []) await server.stop();
});

async function serve(options: Parameters<typeof startWalcast>[0]): Promise<RunningWalcast> {
  const server = await startWalcast(options);
  fixture.servers.push(server);
  return server;
}

async function tls(mode: 'prefer' | 'require' = 'prefer', withCa = false): Promise<ServerTls> {
  const { certs } = fixture;
  return ServerTls.load({ certFile: certs.serverCert, keyFile: certs.serverKey, caFile: withCa ? certs.caCert : undefined }, mode);
}

function conninfo(port: number, extra: string): string {
  return `host=127.0.0.1 port=${port} user=repl replication=true connect_timeout=10 ${extra}`;
}

const verifyFull = (): string => `sslmode=verify-full sslrootcert=${fixture.certs.caCert}`;

describe('TLS on the replication port', { timeout: TEST_TIMEOUT_MS }, () => {
  test('psql with sslmode=verify-full gets a TLS connection and IDENTIFY_SYSTEM answers', async () => {
    const server = await serve({ dataDir: fixture.dataDir, tls: await tls() });
    const result = await runPsqlAsServerUser(conninfo(server.port, verifyFull()), 'IDENTIFY_SYSTEM');
    assert.equal(result.code, 0, result.stderr);
    const info = await runPsqlAsServerUser(conninfo(server.port, verifyFull()), '\\conninfo');
    assert.match(info.stdout, /SSL connection \(protocol: TLSv1\.[23]/, info.stdout);
  });

  test('verify-full refuses a host name the certificate does not name', async () => {
    const server = await serve({ dataDir: fixture.dataDir, tls: await tls() });
    // hostaddr connects to 127.0.0.1 while the name checked is "wrong.example".
    const result = await runPsqlAsServerUser(`host=wrong.example hostaddr=127.0.0.1 port=${server.port} user=repl replication=true ${verifyFull()}`, 'IDENTIFY_SYSTEM');
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /does not match host name "wrong.example"/);
  });

  test('sslmode=require against a walcast without TLS fails as it does against PostgreSQL', async () => {
    const server = await serve({ dataDir: fixture.dataDir });
    const result = await runPsqlAsServerUser(conninfo(server.port, 'sslmode=require'), 'IDENTIFY_SYSTEM');
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /server does not support SSL, but SSL was required/);
  });

  test('a plain client against --tls-mode require gets 28000 and a message saying TLS is required', async () => {
    const server = await serve({ dataDir: fixture.dataDir, tls: await tls('require') });
    const result = await runPsqlAsServerUser(conninfo(server.port, 'sslmode=disable'), 'IDENTIFY_SYSTEM');
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /no encryption: walcast requires TLS/);
    const raw = await sendRawAndCollect(server.port, startupPacket({ user: 'repl', replication: 'true' }));
    assert.equal(errorCode(raw.received), '28000');
    const ok = await runPsqlAsServerUser(conninfo(server.port, 'sslmode=require'), 'IDENTIFY_SYSTEM');
    assert.equal(ok.code, 0, ok.stderr);
  });

  test('channel_binding=require works over TLS with SCRAM-SHA-256-PLUS; plain SCRAM still works', async () => {
    const auth = { method: 'scram-sha-256' as const, verifier: createScramVerifier(PASSWORD) };
    const server = await serve({ dataDir: fixture.dataDir, tls: await tls(), auth });
    const bound = await runPsqlAsServerUser(conninfo(server.port, `${verifyFull()} channel_binding=require`), 'IDENTIFY_SYSTEM', { password: PASSWORD });
    assert.equal(bound.code, 0, bound.stderr);
    const wrong = await runPsqlAsServerUser(conninfo(server.port, `${verifyFull()} channel_binding=require`), 'IDENTIFY_SYSTEM', { password: 'wrong' });
    assert.match(wrong.stderr, /password authentication failed/);
    const plain = await runPsqlAsServerUser(conninfo(server.port, 'sslmode=disable'), 'IDENTIFY_SYSTEM', { password: PASSWORD });
    assert.equal(plain.code, 0, plain.stderr);
    const tlsNoBinding = await runPsqlAsServerUser(conninfo(server.port, 'sslmode=require channel_binding=disable'), 'IDENTIFY_SYSTEM', { password: PASSWORD });
    assert.equal(tlsNoBinding.code, 0, tlsNoBinding.stderr);
    const unboundPlain = await runPsqlAsServerUser(conninfo(server.port, 'sslmode=disable channel_binding=require'), 'IDENTIFY_SYSTEM', { password: PASSWORD });
    assert.notEqual(unboundPlain.code, 0, 'libpq refuses a connection without channel binding');
  });

  test('SIGHUP-style reload: new connections get the new certificate, an open connection keeps working', async () => {
    const material = await tls();
    const server = await serve({ dataDir: fixture.dataDir, tls: material });
    const before = await runPsqlAsServerUser(conninfo(server.port, verifyFull()), '\\conninfo');
    assert.equal(before.code, 0, before.stderr);
    // Point the same ServerTls at the second certificate, as SIGHUP does after files change on disk.
    const swapped = await ServerTls.load({ certFile: fixture.certs.serverCert2, keyFile: fixture.certs.serverKey2 });
    Object.assign(material, { files: swapped.files });
    await material.reload();
    const subject = await peerSubject(server.port);
    assert.match(subject, /walcast-reloaded/);
    const afterReload = await runPsqlAsServerUser(conninfo(server.port, verifyFull()), 'IDENTIFY_SYSTEM');
    assert.equal(afterReload.code, 0, afterReload.stderr);
  });
});

describe('client certificate authentication (--auth cert)', { timeout: TEST_TIMEOUT_MS }, () => {
  let port = 0;
  before(async () => {
    port = (await serve({ dataDir: fixture.dataDir, tls: await tls('require', true), auth: { method: 'cert' } })).port;
  });
  const withCert = (cert: string, key: string): string => `${verifyFull()} sslcert=${cert} sslkey=${key}`;

  test('a certificate from the CA whose CN is the user gets in', async () => {
    const result = await runPsqlAsServerUser(conninfo(port, withCert(fixture.certs.clientCert, fixture.certs.clientKey)), 'IDENTIFY_SYSTEM');
    assert.equal(result.code, 0, result.stderr);
  });

  test('a CA certificate for another name, a self-signed one, and none are refused', async () => {
    const other = await runPsqlAsServerUser(conninfo(port, withCert(fixture.certs.otherClientCert, fixture.certs.otherClientKey)), 'IDENTIFY_SYSTEM');
    assert.match(other.stderr, /certificate authentication failed for user "repl"/);
    const rogue = await runPsqlAsServerUser(conninfo(port, withCert(fixture.certs.rogueClientCert, fixture.certs.rogueClientKey)), 'IDENTIFY_SYSTEM');
    assert.notEqual(rogue.code, 0);
    assert.match(rogue.stderr, /certificate authentication failed|not trusted/);
    const none = await runPsqlAsServerUser(conninfo(port, `${verifyFull()} sslcert=/nonexistent sslkey=/nonexistent`), 'IDENTIFY_SYSTEM');
    assert.match(none.stderr, /connection requires a valid client certificate/);
  });
});

describe('token authentication (--auth jwt)', { timeout: TEST_TIMEOUT_MS }, () => {
  let port = 0;
  let privateKeyPem = '';
  before(async () => {
    privateKeyPem = await readFile(fixture.certs.tokenPrivateKey, 'utf8');
    const tokens = await TokenVerifier.load([fixture.certs.tokenPublicKey]);
    port = (await serve({ dataDir: fixture.dataDir, tls: await tls(), auth: { method: 'jwt', tokens } })).port;
  });

  const tenantToken = (tenantId: string, ttlSeconds = 3600): Promise<string> => createToken({ privateKeyPem, scope: 'tenant', tenantId, ttlSeconds });

  test('a token for the tenant streams over TLS; a safekeeperdata token too', async () => {
    const selected = `options='-c tenant_id=${fixture.tenantId} -c timeline_id=${fixture.timelineId}'`;
    const ok = await runPsqlAsServerUser(conninfo(port, `${verifyFull()} ${selected}`), 'IDENTIFY_SYSTEM', { password: await tenantToken(fixture.tenantId) });
    assert.equal(ok.code, 0, ok.stderr);
    const admin = await createToken({ privateKeyPem, scope: 'safekeeperdata', ttlSeconds: 60 });
    const adminOk = await runPsqlAsServerUser(conninfo(port, verifyFull()), 'IDENTIFY_SYSTEM', { password: admin });
    assert.equal(adminOk.code, 0, adminOk.stderr);
    const raw = await tokenAttempt(port, await tenantToken(fixture.tenantId));
    assert.equal(errorCode(raw), undefined, 'no error for the right tenant');
    assert.equal(messages(raw).filter(([type]) => type === 'D').length, 1, 'IDENTIFY_SYSTEM answered with its row');
  });

  test('wrong tenant, expired, bad signature, alg none, HS256 with the public key, garbage: 28000 and no WAL byte', async () => {
    const otherPem = await readFile(fixture.certs.otherTokenPrivateKey, 'utf8');
    const publicPem = await readFile(fixture.certs.tokenPublicKey, 'utf8');
    const now = Math.floor(Date.now() / 1000);
    const claims = { scope: 'tenant', tenant_id: fixture.tenantId };
    const bad: Record<string, string> = {
      'wrong tenant': await tenantToken('0'.repeat(32)),
      expired: await signEd25519(privateKeyPem, { ...claims, exp: now - 3600 }),
      'bad signature': await createToken({ privateKeyPem: otherPem, scope: 'tenant', tenantId: fixture.tenantId, ttlSeconds: 60 }),
      'alg none': `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`,
      'HS256 with the public key': hs256(publicPem, claims),
      garbage: 'not-a-token',
    };
    for (const [what, token] of Object.entries(bad)) {
      const received = await tokenAttempt(port, token, true);
      assert.equal(errorCode(received), '28000', `${what}: expected 28000`);
      assert.ok(!received.includes(Buffer.from('W', 'latin1')) || copyBothCount(received) === 0, `${what}: no CopyBoth`);
      assert.equal(copyDataCount(received), 0, `${what}: no WAL byte`);
      const psql = await runPsqlAsServerUser(conninfo(port, verifyFull()), 'IDENTIFY_SYSTEM', { password: token });
      assert.notEqual(psql.code, 0, `${what}: psql must fail`);
    }
  });
});

/** The certificate subject walcast presents now, read with a raw TLS handshake after an SSLRequest. */
async function peerSubject(port: number): Promise<string> {
  const { connect: netConnect } = await import('node:net');
  const { connect: tlsConnect } = await import('node:tls');
  const socket = netConnect({ host: '127.0.0.1', port });
  await new Promise((resolve) => socket.once('connect', resolve));
  const sslRequest = Buffer.alloc(8);
  sslRequest.writeInt32BE(8, 0);
  sslRequest.writeInt32BE(80877103, 4);
  socket.write(sslRequest);
  const answer = await new Promise<Buffer>((resolve) => socket.once('data', resolve));
  assert.equal(answer.toString('latin1'), 'S');
  const secure = tlsConnect({ socket, rejectUnauthorized: false });
  await new Promise((resolve) => secure.once('secureConnect', resolve));
  const subject = JSON.stringify(secure.getPeerCertificate().subject);
  secure.destroy();
  return subject;
}

/**
 * Startup (plain, loopback), the token as a PasswordMessage, then START_REPLICATION pipelined behind it: a refused
 * token must end the connection before the command runs, so the reply holds an ErrorResponse and no CopyData.
 */
async function tokenAttempt(port: number, token: string, startStreaming = false): Promise<Buffer> {
  const startup = startupPacket({ user: 'repl', replication: 'true', options: `-c tenant_id=${fixture.tenantId} -c timeline_id=${fixture.timelineId}` });
  const password = typedMessage('p', Buffer.from(`${token}\0`));
  const command = queryMessage(startStreaming ? 'START_REPLICATION 0/1000000' : 'IDENTIFY_SYSTEM');
  return (await sendRawAndCollect(port, Buffer.concat([startup, password, command]))).received;
}

/** Walks backend messages; returns the SQLSTATE of the first ErrorResponse, if any. */
function errorCode(bytes: Buffer): string | undefined {
  for (const [type, body] of messages(bytes)) {
    if (type !== 'E') continue;
    for (const field of body.toString('utf8').split('\0')) if (field.startsWith('C')) return field.slice(1);
  }
  return undefined;
}

function copyDataCount(bytes: Buffer): number {
  return messages(bytes).filter(([type]) => type === 'd').length;
}

function copyBothCount(bytes: Buffer): number {
  return messages(bytes).filter(([type]) => type === 'W').length;
}

function messages(bytes: Buffer): Array<[string, Buffer]> {
  const result: Array<[string, Buffer]> = [];
  for (let offset = 0; offset + 5 <= bytes.length; ) {
    const length = bytes.readInt32BE(offset + 1);
    result.push([String.fromCharCode(bytes[offset]!), bytes.subarray(offset + 5, offset + 1 + length)]);
    offset += 1 + length;
  }
  return result;
}

function b64(value: object): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/** The key-confusion attack: an HS256 token whose HMAC key is the server's public key PEM. */
function hs256(secret: string, claims: object): string {
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

async function signEd25519(privateKeyPem: string, claims: Record<string, unknown>): Promise<string> {
  const { SignJWT } = await import('jose');
  const { createPrivateKey } = await import('node:crypto');
  return new SignJWT(claims).setProtectedHeader({ alg: 'EdDSA' }).sign(createPrivateKey(privateKeyPem));
}

/**
 * The programmatic API (`import { startWalcast } from 'walcast'`) takes the same TLS and token configuration as
 * `walcast serve` and refuses the same unsafe ones (src/config/transport-security.ts); real libpq clients here.
 */
describe('TLS and tokens through the programmatic API (startWalcast)', { timeout: TEST_TIMEOUT_MS }, () => {
  const started: Walcast[] = [];
  after(async () => {
    for (const walcast of started) await walcast.stop();
  });
  const api = async (options: Omit<WalcastOptions, 'dataDir' | 'logger'>): Promise<Walcast> => {
    const walcast = await startPublicWalcast({ dataDir: fixture.dataDir, logger: silentLogger(), ...options });
    started.push(walcast);
    return walcast;
  };

  test('SCRAM with channel binding over verify-full; a plain client gets the TLS-required error', async () => {
    const walcast = await api({ tls: { certFile: fixture.certs.serverCert, keyFile: fixture.certs.serverKey, mode: 'require' }, auth: { method: 'scram-sha-256', password: PASSWORD } });
    const bound = await runPsqlAsServerUser(conninfo(walcast.port, `${verifyFull()} channel_binding=require`), 'IDENTIFY_SYSTEM', { password: PASSWORD });
    assert.equal(bound.code, 0, bound.stderr);
    const plain = await runPsqlAsServerUser(conninfo(walcast.port, 'sslmode=disable'), 'IDENTIFY_SYSTEM', { password: PASSWORD });
    assert.notEqual(plain.code, 0);
    assert.match(plain.stderr, /walcast requires TLS/);
  });

  test('jwt from key files: a tenant token gets in over TLS, a token signed by another key does not; reload keeps working material', async () => {
    const dir = await makeTempDir('walcast-api-tls');
    const certFile = `${dir}/server.crt`;
    const keyFile = `${dir}/server.key`;
    await copyFile(fixture.certs.serverCert, certFile);
    await copyFile(fixture.certs.serverKey, keyFile);
    const walcast = await api({ host: '127.0.0.1', tls: { certFile, keyFile, mode: 'require' }, auth: { method: 'jwt', publicKeyFiles: [fixture.certs.tokenPublicKey] } });
    const selected = `options='-c tenant_id=${fixture.tenantId} -c timeline_id=${fixture.timelineId}'`;
    const privateKeyPem = await readFile(fixture.certs.tokenPrivateKey, 'utf8');
    const good = await createToken({ privateKeyPem, scope: 'tenant', tenantId: fixture.tenantId, ttlSeconds: 600 });
    const ok = await runPsqlAsServerUser(conninfo(walcast.port, `${verifyFull()} ${selected}`), 'IDENTIFY_SYSTEM', { password: good });
    assert.equal(ok.code, 0, ok.stderr);
    const foreign = await createToken({ privateKeyPem: await readFile(fixture.certs.otherTokenPrivateKey, 'utf8'), scope: 'tenant', tenantId: fixture.tenantId, ttlSeconds: 600 });
    const refused = await runPsqlAsServerUser(conninfo(walcast.port, `${verifyFull()} ${selected}`), 'IDENTIFY_SYSTEM', { password: foreign });
    assert.notEqual(refused.code, 0, 'a token from an untrusted key is refused');
    // A half-written key file: reload rejects and the previous certificate stays in use.
    await writeFile(keyFile, '-----BEGIN PRIVATE KEY-----\ngarbage\n');
    await assert.rejects(walcast.reload());
    const still = await runPsqlAsServerUser(conninfo(walcast.port, `${verifyFull()} ${selected}`), 'IDENTIFY_SYSTEM', { password: good });
    assert.equal(still.code, 0, still.stderr);
  });
});
