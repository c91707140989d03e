/**
 * The streaming core end to end against real PostgreSQL 15 on loopback, for the I/O backend named by WALCAST_IO
 * (the test runner repeats this file once per backend and native strategy).
 *
 * One primary generates WAL over several segments; a standby is base-backed-up from it mid-way; the primary is
 * stopped and its pg_wal imported into walcast. Then real clients stream from walcast: pg_receivewal (files
 * byte-identical to the primary's), the hot standby (replays to the imported end and reports feedback), psql
 * with SCRAM, and misbehaving raw clients that must not disturb a concurrent stream.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { importWal } from '../src/storage/wal-import.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import { createScramVerifier } from '../src/wire/scram.js';
import { connectReplication } from '../src/wire/client.js';
import { makeStandby, makeTempDir, runReceiveWal, startPrimary, type PgCluster, type PgStandby } from './support/postgres.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';
import { assertSegmentsMatch } from './support/wal-compare.js';

const SEGMENT_BYTES = 16 * 1024 * 1024;
const TEST_TIMEOUT_MS = 180_000;

interface Fixture {
  primary: PgCluster;
  standby: PgStandby | undefined;
  walcast: RunningWalcast;
  scramWalcast: RunningWalcast;
  endLsn: Lsn;
  startLsn: Lsn;
  rowCount: number;
  primaryWalDir: string;
  dataDir: string;
}

let fixture: Fixture;

before(async () => {
  const primary = await startPrimary();
  await primary.pgbench(['-i', '-s', '4', '-q']);
  // The standby's base backup starts mid-way, so it must fetch everything after its checkpoint from walcast.
  const standbyBase = await makeStandby(primary, { upstreamPort: 0, applicationName: 'stby1', hotStandbyFeedback: true, start: false });
  await primary.sql('CREATE TABLE after_backup AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g');
  const rowCount = Number(await primary.sql('SELECT count(*) FROM after_backup'));
  await primary.stop();
  const dataDir = await makeTempDir('walcast-data');
  const imported = await importWal({ dataDir, fromDir: primary.walDir });
  assert.ok(imported.endLsn - imported.startLsn > 2n * BigInt(SEGMENT_BYTES), 'the test WAL spans several segments');
  const walcast = await startWalcast({ dataDir });
  const scramWalcast = await startWalcast({ dataDir, auth: { method: 'scram-sha-256', verifier: createScramVerifier('s3cret-pw') } });
  const standby = await standbyBase.startWithUpstream(walcast.port);
  fixture = { primary, standby, walcast, scramWalcast, endLsn: imported.endLsn, startLsn: imported.startLsn, rowCount, primaryWalDir: primary.walDir, dataDir };
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  await fixture?.standby?.stop();
  await fixture?.walcast.stop();
  await fixture?.scramWalcast.stop();
  await fixture?.primary.stop();
});

describe('streaming from walcast to real PostgreSQL clients', { timeout: TEST_TIMEOUT_MS }, () => {
  test('pg_receivewal --endpos receives byte-identical segments and exits 0', async () => {
    const target = await makeTempDir('receivewal');
    // An empty .partial of the first segment makes pg_receivewal start there instead of at the newest segment.
    const firstName = segmentFileName(1, fixture.startLsn / BigInt(SEGMENT_BYTES), SEGMENT_BYTES);
    await writeFile(join(target, `${firstName}.partial`), '');
    const result = await runReceiveWal({ port: fixture.walcast.port, dir: target, endpos: formatLsn(fixture.endLsn - 1n) });
    assert.equal(result.code, 0, `pg_receivewal failed: ${result.stderr}`);
    await assertSegmentsMatch(target, fixture.primaryWalDir, fixture.startLsn, fixture.endLsn);
  });

  test('a second pg_receivewal of the range, its pages verified now, is byte-identical too (TS backend: read on the event loop)', async () => {
    const target = await makeTempDir('receivewal-again');
    const firstName = segmentFileName(1, fixture.startLsn / BigInt(SEGMENT_BYTES), SEGMENT_BYTES);
    await writeFile(join(target, `${firstName}.partial`), '');
    const before = fixture.walcast.backend.chunkReadStats?.();
    const result = await runReceiveWal({ port: fixture.walcast.port, dir: target, endpos: formatLsn(fixture.endLsn - 1n) });
    assert.equal(result.code, 0, `pg_receivewal failed: ${result.stderr}`);
    await assertSegmentsMatch(target, fixture.primaryWalDir, fixture.startLsn, fixture.endLsn);
    const after = fixture.walcast.backend.chunkReadStats?.();
    if (before !== undefined && after !== undefined) {
      // Warm files: the catch-up runs were read on the event-loop thread (io/sync-read-gate.ts), not all on the pool.
      assert.ok(after.syncReads > before.syncReads, `no catch-up read ran on the event loop: ${JSON.stringify({ before, after })}`);
    }
  });

  test('a hot standby replays to the imported end through walcast and reports feedback', async () => {
    const standby = fixture.standby;
    assert.ok(standby !== undefined);
    const replayed = await waitFor(async () => {
      const lsn = parseLsnOrThrow((await standby.sql('SELECT pg_last_wal_replay_lsn()')).trim());
      return lsn >= fixture.endLsn ? lsn : undefined;
    }, 120_000);
    assert.equal(formatLsn(replayed), formatLsn(fixture.endLsn));
    assert.equal(Number(await standby.sql('SELECT count(*) FROM after_backup')), fixture.rowCount);
    const timeline = fixture.walcast.server.timelines.list()[0];
    assert.ok(timeline !== undefined);
    const replica = await waitFor(async () => {
      const found = timeline.replicas.snapshot().find((entry) => entry.appName === 'stby1');
      return found?.standbyReply !== undefined && found.hotStandby !== undefined ? found : undefined;
    }, 30_000);
    assert.ok(replica.standbyReply !== undefined && replica.standbyReply.flushLsn > 0n, 'the standby reported a flush position');
    assert.ok(replica.hotStandby !== undefined, 'the standby sent hot-standby feedback');
  });

  test('SCRAM-SHA-256: the right password works, a wrong one is refused with 28P01', async () => {
    const port = fixture.scramWalcast.port;
    const good = await connectReplication({ host: '127.0.0.1', port, user: 'repl', password: 's3cret-pw', timeoutMs: 10_000 });
    const result = await good.query('IDENTIFY_SYSTEM');
    assert.equal(result.rows[0]?.[2], formatLsn(fixture.endLsn));
    await good.end();
    await assert.rejects(
      connectReplication({ host: '127.0.0.1', port, user: 'repl', password: 'wrong', timeoutMs: 10_000 }),
      (error: { sqlState?: string }) => error.sqlState === '28P01',
    );
  });

  test('garbage, vanishing clients and out-of-range starts get errors while another replica keeps streaming', async () => {
    const port = fixture.walcast.port;
    const target = await makeTempDir('receivewal-concurrent');
    const firstName = segmentFileName(1, fixture.startLsn / BigInt(SEGMENT_BYTES), SEGMENT_BYTES);
    await writeFile(join(target, `${firstName}.partial`), '');
    const concurrent = runReceiveWal({ port, dir: target, endpos: formatLsn(fixture.endLsn - 1n) });

    const { sendRawAndCollect, startAndVanish } = await import('./support/raw-client.js');
    const garbage = await sendRawAndCollect(port, Buffer.from('this is not a startup packet at all, just noise\n'));
    assert.ok(garbage.closed, 'the server closes a garbage connection');
    for (let index = 0; index < 5; index++) await startAndVanish(port, fixture.startLsn);

    const client = await connectReplication({ host: '127.0.0.1', port, user: 'repl', timeoutMs: 10_000 });
    await assert.rejects(client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(fixture.endLsn + 0x1000000n)}`), (error: { sqlState?: string; message: string }) =>
      error.sqlState === 'XX000' && /ahead of the WAL flush position/.test(error.message),
    );
    await assert.rejects(client.startReplication('START_REPLICATION PHYSICAL 0/10000'), (error: { sqlState?: string; message: string }) =>
      error.sqlState === '58P01' && /has already been removed/.test(error.message),
    );
    const unknown = await client.query('SELECT 1').catch((error: { sqlState?: string }) => error);
    assert.equal((unknown as { sqlState?: string }).sqlState, '0A000');
    const still = await client.query('IDENTIFY_SYSTEM');
    assert.equal(still.rows.length, 1, 'the connection stays usable after errors');
    await client.end();

    const result = await concurrent;
    assert.equal(result.code, 0, `concurrent pg_receivewal failed: ${result.stderr}`);
    await assertSegmentsMatch(target, fixture.primaryWalDir, fixture.startLsn, fixture.endLsn);
  });
});
