/**
 * WAL over TLS, end to end, for the I/O backend named by WALCAST_IO (the runner repeats this file per backend and
 * native strategy): pg_receivewal with sslmode=verify-full receives segments byte-identical to the primary's, a
 * PostgreSQL 15 standby streams through walcast with sslmode=verify-full and replays, and a tenant token streams
 * too. On the native backend every TLS stream must take the encrypting path and the log must say so.
 */
import assert from 'node:assert/strict';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { TokenVerifier, createToken } from '../src/auth/jwt.js';
import type { Logger } from '../src/log.js';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import { importWal } from '../src/storage/wal-import.js';
import { probeKernelTls } from '../src/io/native-backend.js';
import { ServerTls } from '../src/tls/server-tls.js';
import { firstDifference, makeStandby, makeTempDir, runReceiveWal, startPrimary, type PgStandby } from './support/postgres.js';
import { makeTestCertificates, type TestCertificates } from './support/tls-certs.js';
import { backendUnderTest, startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const SEGMENT_BYTES = 16 * 1024 * 1024;
const TEST_TIMEOUT_MS = 240_000;

interface Fixture {
  certs: TestCertificates;
  walcast: RunningWalcast;
  tokenWalcast: RunningWalcast;
  standby: PgStandby;
  logLines: string[];
  startLsn: Lsn;
  endLsn: Lsn;
  primaryWalDir: string;
  tenantId: string;
  timelineId: string;
}

let fixture: Fixture;

/** A pino logger whose JSON lines the test can read: the per-stream I/O path is part of the contract. */
function recordingLogger(lines: string[]): Logger {
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString('utf8').split('\n').filter((line) => line !== ''));
      done();
    },
  });
  return pino<never>({ level: 'info' }, sink);
}

before(async () => {
  const certs = await makeTestCertificates();
  const primary = await startPrimary();
  await primary.pgbench(['-i', '-s', '2', '-q']);
  const standbyBase = await makeStandby(primary, { applicationName: 'tls_standby', start: false });
  await primary.sql('CREATE TABLE after_backup AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g');
  await primary.stop();
  const dataDir = await makeTempDir('walcast-tls-stream');
  const imported = await importWal({ dataDir, fromDir: primary.walDir });
  assert.ok(imported.endLsn - imported.startLsn > BigInt(SEGMENT_BYTES), 'the test WAL spans segments');
  const logLines: string[] = [];
  const tls = await ServerTls.load({ certFile: certs.serverCert, keyFile: certs.serverKey }, 'require');
  const walcast = await startWalcast({ dataDir, tls, log: recordingLogger(logLines) });
  const tokens = await TokenVerifier.load([certs.tokenPublicKey]);
  const tokenWalcast = await startWalcast({ dataDir, tls, auth: { method: 'jwt', tokens } });
  const standby = await standbyBase.startWithUpstream(walcast.port, { conninfo: `sslmode=verify-full sslrootcert=${certs.caCert}` });
  fixture = { certs, walcast, tokenWalcast, standby, logLines, startLsn: imported.startLsn, endLsn: imported.endLsn, primaryWalDir: primary.walDir, tenantId: imported.tenantId, timelineId: imported.timelineId };
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  await fixture?.standby.stop();
  await fixture?.walcast.stop();
  await fixture?.tokenWalcast.stop();
});

describe(`WAL over TLS (${backendUnderTest().io}${backendUnderTest().strategy === undefined ? '' : '/' + backendUnderTest().strategy})`, { timeout: TEST_TIMEOUT_MS }, () => {
  test('pg_receivewal with sslmode=verify-full receives byte-identical segments', async () => {
    const target = await receiveAll(fixture.walcast.port, `sslmode=verify-full sslrootcert=${fixture.certs.caCert}`);
    await assertSegmentsMatch(target);
  });

  test('a standby with sslmode=verify-full replays to the end through walcast', async () => {
    const replayed = await waitFor(async () => {
      const lsn = parseLsnOrThrow((await fixture.standby.sql('SELECT pg_last_wal_replay_lsn()')).trim());
      return lsn >= fixture.endLsn ? lsn : undefined;
    }, TEST_TIMEOUT_MS / 2, { what: 'standby replay over TLS' });
    assert.ok(replayed >= fixture.endLsn);
    assert.equal(await fixture.standby.sql('SELECT count(*) FROM after_backup'), '100000');
  });

  test('a tenant token streams its tenant over TLS, byte-identical', async () => {
    const privateKeyPem = await readFile(fixture.certs.tokenPrivateKey, 'utf8');
    const token = await createToken({ privateKeyPem, scope: 'tenant', tenantId: fixture.tenantId, ttlSeconds: 600 });
    const options = `options='-c tenant_id=${fixture.tenantId} -c timeline_id=${fixture.timelineId}'`;
    const target = await receiveAll(fixture.tokenWalcast.port, `sslmode=require ${options}`, token);
    await assertSegmentsMatch(target);
  });

  test('every TLS stream names its path; on the native backend it is the encrypting TLS-socket path', () => {
    const streams = fixture.logLines
      .map((line) => JSON.parse(line) as { msg: string; path?: string; tls?: boolean; io?: string; kernel_tls?: string; kernel_tls_code?: string })
      .filter((entry) => entry.path !== undefined);
    if (backendUnderTest().io === 'native') {
      // pg_receivewal's stream at least; the standby's too once it connected.
      assert.ok(streams.length >= 1, `stream path lines: ${JSON.stringify(streams)}`);
      const kernelTls = probeKernelTls();
      for (const entry of streams) {
        assert.equal(entry.tls, true);
        assert.equal(entry.path, 'fs-net+tls');
        assert.match(entry.msg, /native backend cannot encrypt/);
        // The line carries the kernel TLS probe's answer, whatever this kernel said.
        assert.deepEqual([entry.kernel_tls, entry.kernel_tls_code], [kernelTls.state, kernelTls.code]);
      }
    } else {
      // The TS backend logs its path at debug level; the logger here records info, so nothing is expected.
      assert.equal(streams.length, 0);
    }
  });
});

/** pg_receivewal from the first imported segment to the end, over the given TLS settings. */
async function receiveAll(port: number, conninfo: string, password?: string): Promise<string> {
  const target = await makeTempDir('receivewal-tls');
  // An empty .partial of the first segment makes pg_receivewal start there instead of at the newest segment.
  await writeFile(join(target, `${segmentFileName(1, fixture.startLsn / BigInt(SEGMENT_BYTES), SEGMENT_BYTES)}.partial`), '');
  const result = await runReceiveWal({ port, dir: target, endpos: formatLsn(fixture.endLsn - 1n), extraArgs: ['-d', conninfo], ...(password === undefined ? {} : { password }) });
  assert.equal(result.code, 0, `pg_receivewal failed: ${result.stderr}`);
  return target;
}

async function assertSegmentsMatch(receivedDir: string): Promise<void> {
  const { startLsn, endLsn } = fixture;
  const names = (await readdir(receivedDir)).filter((name) => /^[0-9A-F]{24}(\.partial)?$/.test(name)).sort();
  const firstSegment = startLsn / BigInt(SEGMENT_BYTES);
  const lastSegment = (endLsn - 1n) / BigInt(SEGMENT_BYTES);
  assert.equal(names.length, Number(lastSegment - firstSegment + 1n), `segments received: ${names.join(', ')}`);
  for (const name of names) {
    const plain = name.replace('.partial', '');
    const received = await readFile(join(receivedDir, name));
    const original = await readFile(join(fixture.primaryWalDir, plain));
    const segmentStart = BigInt(parseInt(plain.slice(16), 16)) * BigInt(SEGMENT_BYTES) + BigInt(parseInt(plain.slice(8, 16), 16)) * 0x1_0000_0000n;
    const validBytes = endLsn - segmentStart >= BigInt(SEGMENT_BYTES) ? SEGMENT_BYTES : Number(endLsn - segmentStart);
    const difference = firstDifference(received.subarray(0, validBytes), original.subarray(0, validBytes));
    assert.equal(difference, -1, `${name} differs from the primary at offset ${difference}`);
  }
}
