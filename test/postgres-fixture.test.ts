/**
 * Self-test of the real-PostgreSQL fixture (test/support/postgres.ts): a primary with pgbench data, a hot
 * standby streaming from that primary, standbys copied from one unstarted base backup (the benchmark's
 * standby-replay consumer), pg_receivewal against the primary, a crash and restart, and proof that
 * every postgres process the fixture started is gone afterwards. If this file fails, integration failures
 * elsewhere are probably the fixture's, not walcast's.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { childPids, copyStandby, firstDifference, isProcessAlive, makeStandby, makeTempDir, runReceiveWal, startPrimary } from './support/postgres.js';

const TEST_TIMEOUT_MS = 120_000;
const REPLICATION_WAIT_MS = 60_000;
const POLL_INTERVAL_MS = 100;

test('firstDifference finds the first differing byte, or the shorter length', () => {
  assert.equal(firstDifference(Buffer.from('abc'), Buffer.from('abc')), -1);
  assert.equal(firstDifference(Buffer.from('abc'), Buffer.from('abd')), 2);
  assert.equal(firstDifference(Buffer.from('ab'), Buffer.from('abc')), 2);
  const large = Buffer.alloc(200_000, 7);
  const other = Buffer.from(large);
  other[150_001] = 8;
  assert.equal(firstDifference(large, other), 150_001);
});

test('primary + streaming standby + pg_receivewal, and nothing left running afterwards', { timeout: TEST_TIMEOUT_MS }, async () => {
  const primary = await startPrimary();
  const pids: number[] = [primary.pid];
  try {
    await primary.pgbench(['-i', '-s', '1', '-q']);
    assert.equal(await primary.sql('SELECT count(*) FROM pgbench_accounts'), '100000');
    const base = await makeStandby(primary, { applicationName: 'fixture-standby', hotStandbyFeedback: true, start: true });
    const standby = base.standby;
    assert.ok(standby !== undefined);
    pids.push(standby.pid);
    assert.notEqual(standby.port, primary.port);

    // pg_receivewal --endpos stops once it receives WAL past endpos, so endpos is taken before more WAL is written.
    const endpos = await primary.sql('SELECT pg_current_wal_flush_lsn()');
    await primary.sql('CREATE TABLE fixture_probe AS SELECT 42 AS answer');
    const answer = await waitFor(() => standby.sql('SELECT answer FROM fixture_probe'), REPLICATION_WAIT_MS);
    assert.equal(answer, '42');
    const sender = await primary.sql("SELECT application_name FROM pg_stat_replication WHERE application_name = 'fixture-standby'");
    assert.equal(sender, 'fixture-standby');

    const target = await makeTempDir('fixture-receivewal');
    const received = await runReceiveWal({ port: primary.port, dir: target, endpos, timeoutMs: 60_000 });
    assert.equal(received.code, 0, `pg_receivewal failed: ${received.stderr}`);
    assert.ok((await readdir(target)).some((name) => /^[0-9A-F]{24}(\.partial)?$/.test(name)), 'pg_receivewal wrote a segment');

    pids.push(...childPids(primary.pid), ...childPids(standby.pid));
    await standby.stop();
    await primary.kill9();
    await primary.start();
    pids.push(primary.pid, ...childPids(primary.pid));
    assert.equal(await primary.sql('SELECT answer FROM fixture_probe'), '42', 'crash recovery kept committed data');
  } finally {
    await primary.stop();
  }
  assert.ok(pids.length >= 4);
  const survivors = pids.filter(isProcessAlive);
  assert.deepEqual(survivors, [], 'no postgres process of ours is left');
});

test('copyStandby: each copy of one unstarted base backup replays what the primary wrote after the backup', { timeout: TEST_TIMEOUT_MS }, async () => {
  const primary = await startPrimary();
  try {
    const template = await makeStandby(primary);
    await primary.sql('CREATE TABLE after_backup AS SELECT 7 AS seven');
    const started = await makeStandby(primary, { start: true, applicationName: 'started' });
    try {
      await assert.rejects(copyStandby(started), /never have been started/, 'a started standby is no template');
    } finally {
      await started.standby?.stop();
    }
    for (const name of ['copy-a', 'copy-b']) {
      const copy = await copyStandby(template, { applicationName: name });
      assert.notEqual(copy.dataDir, template.dataDir);
      const standby = await copy.startWithUpstream(primary.port);
      try {
        assert.equal(await waitFor(() => standby.sql('SELECT seven FROM after_backup'), REPLICATION_WAIT_MS), '7', `${name} replayed past the backup`);
        assert.equal(await primary.sql(`SELECT count(*) FROM pg_stat_replication WHERE application_name = '${name}'`), '1');
      } finally {
        await standby.stop();
      }
    }
    assert.ok(!existsSync(join(template.dataDir, 'postmaster.pid')), 'the template itself never ran');
    assert.ok(!existsSync(join(template.dataDir, 'standby.signal')), 'the template stays unconfigured');
  } finally {
    await primary.stop();
  }
});

test('a cluster the test never stops is stopped, and its dir removed, when the process exits', { timeout: TEST_TIMEOUT_MS }, async () => {
  const fixtureUrl = pathToFileURL(join(dirname(fileURLToPath(import.meta.url)), 'support', 'postgres.ts')).href;
  const script = `const f = await import(${JSON.stringify(fixtureUrl)}); const p = await f.startPrimary(); console.log(JSON.stringify({ pid: p.pid, dataDir: p.dataDir }));`;
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { timeout: 60_000, env: { ...process.env, WALCAST_KEEP_TMP: '0' } });
  const started = JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as { pid: number; dataDir: string };
  assert.ok(started.pid > 0);
  assert.equal(isProcessAlive(started.pid), false, 'the exit handler stopped the postmaster');
  assert.equal(existsSync(started.dataDir), false, 'the exit handler removed the temp dir');
});

async function waitFor(probe: () => Promise<string>, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await probe();
    } catch (error) {
      if (Date.now() > deadline) throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_INTERVAL_MS));
  }
}
