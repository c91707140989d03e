/**
 * walcast following an upstream PostgreSQL 15 that has ssl=on and a hostssl-only pg_hba, with libpq's sslmode
 * meanings in --upstream: verify-full (certificate chain and host name) follows and stores new WAL; a plain
 * connection is refused by the upstream's pg_hba; verify-full against a name the certificate does not carry, and
 * require against a plain-only server, fail the way libpq fails.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { parseLsnOrThrow } from '../src/lsn.js';
import { makeTempDir, startPrimary, type PgCluster } from './support/postgres.js';
import { makeTestCertificates, type TestCertificates } from './support/tls-certs.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';

const TEST_TIMEOUT_MS = 180_000;
const CATCH_UP_TIMEOUT_MS = 60_000;

let primary: PgCluster;
let plainPrimary: PgCluster;
let certs: TestCertificates;
const cleanups: Array<() => Promise<void>> = [];

before(async () => {
  certs = await makeTestCertificates();
  primary = await startPrimary({ extraConf: { ssl: 'on', ssl_cert_file: certs.serverCert, ssl_key_file: certs.serverKey } });
  // hostssl only: a plain connection finds no pg_hba entry. hba_file is read at server start, hence the restart.
  await primary.sql(`ALTER SYSTEM SET hba_file = '${join(primary.dataDir, 'pg_hba_ssl.conf')}'`);
  await writeHba(join(primary.dataDir, 'pg_hba_ssl.conf'), ['local all all trust', 'hostssl replication repl 127.0.0.1/32 trust', 'hostssl all all 127.0.0.1/32 trust']);
  await primary.stop();
  await primary.start();
  await primary.sql('CREATE TABLE upstream_rows (id int)');
  plainPrimary = await startPrimary();
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  await primary?.stop();
  await plainPrimary?.stop();
});

async function writeHba(file: string, lines: readonly string[]): Promise<void> {
  const { chownSync, statSync } = await import('node:fs');
  await writeFile(file, lines.join('\n') + '\n', { mode: 0o600 });
  const owner = statSync(primary.dataDir);
  chownSync(file, owner.uid, owner.gid);
}

function upstream(port: number, extra: string): string {
  return `host=localhost hostaddr=127.0.0.1 port=${port} user=repl connect_timeout=10 ${extra}`;
}

describe('walcast following a TLS-only upstream', { timeout: TEST_TIMEOUT_MS }, () => {
  test('sslmode=verify-full follows the upstream and stores new WAL', async () => {
    const dataDir = await makeTempDir('walcast-tls-follow');
    await createFollowingTimeline({ dataDir, upstream: upstream(primary.port, `sslmode=verify-full sslrootcert=${certs.caCert}`), password: undefined, log: silentLogger() });
    const walcast: RunningWalcast = await startWalcast({ dataDir });
    cleanups.push(() => walcast.stop());
    await primary.sql('INSERT INTO upstream_rows SELECT g FROM generate_series(1, 1000) g');
    const written = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
    const [timeline] = walcast.server.timelines.list();
    assert.ok(timeline !== undefined);
    assert.ok((await timeline.commitLsn.waitBeyond(written - 1n, CATCH_UP_TIMEOUT_MS)) !== undefined, 'walcast stored the new WAL over TLS');
    const follower = walcast.server.ingest?.followers[0];
    assert.equal(follower?.state, 'streaming');
  });

  test('sslmode=disable is refused by the hostssl-only upstream', async () => {
    const dataDir = await makeTempDir('walcast-tls-plain');
    await assert.rejects(createFollowingTimeline({ dataDir, upstream: upstream(primary.port, 'sslmode=disable'), password: undefined, log: silentLogger() }), /no pg_hba\.conf entry .* no encryption/);
  });

  test('verify-full refuses a host name the certificate does not name; verify-ca accepts the chain', async () => {
    const wrongName = `host=wrong.example hostaddr=127.0.0.1 port=${primary.port} user=repl sslmode=verify-full sslrootcert=${certs.caCert}`;
    await assert.rejects(createFollowingTimeline({ dataDir: await makeTempDir('walcast-tls-wrong'), upstream: wrongName, password: undefined, log: silentLogger() }), /wrong\.example|altnames/i);
    const verifyCa = wrongName.replace('verify-full', 'verify-ca');
    const created = await createFollowingTimeline({ dataDir: await makeTempDir('walcast-tls-ca'), upstream: verifyCa, password: undefined, log: silentLogger() });
    assert.ok(created.startLsn > 0n);
  });

  test('sslmode=require against a plain-only server fails as libpq does', async () => {
    const dataDir = await makeTempDir('walcast-tls-require');
    await assert.rejects(createFollowingTimeline({ dataDir, upstream: upstream(plainPrimary.port, 'sslmode=require'), password: undefined, log: silentLogger() }), /server does not support SSL, but SSL was required/);
  });
});
