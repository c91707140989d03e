/**
 * A replica that replies only when asked must survive a long catch-up (issue 15, item 1), on the I/O backend named
 * by WALCAST_IO (the runner repeats this file per backend and native strategy).
 *
 * `pg_receivewal -s 0` sends no status updates of its own: it answers only keepalives that request a reply
 * (receivelog.c ProcessKeepaliveMsg). PostgreSQL's walsender asks for one once half of wal_sender_timeout has
 * passed without a reply, even while it is busy sending (walsender.c WalSndKeepaliveIfNecessary). A sender that
 * asks only while idle lets a catch-up longer than the replica timeout end in "terminating walsender process due
 * to replication timeout"; this test streams far more WAL than fits in one timeout and compares every byte.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { formatLsn, type Lsn } from '../src/lsn.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import { importWal } from '../src/storage/wal-import.js';
import { makeTempDir, runReceiveWal, startPrimary, type PgCluster } from './support/postgres.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';
import { DEFAULT_SEGMENT_BYTES, assertSegmentsMatch } from './support/wal-compare.js';

const TEST_TIMEOUT_MS = 300_000;
/**
 * Short, so the catch-up below outlasts it (before the fix, on the 2-core dev VM, every backend's stream was cut
 * after 6 to 8 of the 30 segments), and long enough that a reply asked for at half of it arrives in time behind
 * the socket buffers' backlog while other tests load the machine (at 1 s, one run in four missed it under a load
 * average of 15).
 */
const REPLICA_TIMEOUT_MS = 2000;
/** One logical message per MiB: WAL fills quickly without table data, checkpoints or full-page images. */
const MESSAGE_BYTES = 1024 * 1024;
/** 480 MiB: 30 segments to catch up. */
const MESSAGE_COUNT = 480;

interface Fixture {
  primary: PgCluster;
  walcast: RunningWalcast;
  startLsn: Lsn;
  endLsn: Lsn;
}

let fixture: Fixture;

before(async () => {
  const primary = await startPrimary();
  await primary.sql(`SELECT count(pg_logical_emit_message(false, 'walcast-test', repeat('x', ${MESSAGE_BYTES}))) FROM generate_series(1, ${MESSAGE_COUNT})`);
  await primary.stop();
  const dataDir = await makeTempDir('walcast-data');
  const imported = await importWal({ dataDir, fromDir: primary.walDir });
  assert.ok(imported.endLsn - imported.startLsn > BigInt(MESSAGE_COUNT * MESSAGE_BYTES), 'the WAL holds every message');
  const walcast = await startWalcast({ dataDir, replicaTimeoutMs: REPLICA_TIMEOUT_MS });
  fixture = { primary, walcast, startLsn: imported.startLsn, endLsn: imported.endLsn };
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  await fixture?.walcast.stop();
  await fixture?.primary.stop();
});

describe('a busy stream asks a silent replica for replies', { timeout: TEST_TIMEOUT_MS }, () => {
  test('pg_receivewal -s 0 catches up hundreds of MB with a short replica timeout, byte-identical', async () => {
    const target = await makeTempDir('receivewal-silent');
    // An empty .partial of the first segment makes pg_receivewal start there instead of at the newest segment.
    const firstName = segmentFileName(1, fixture.startLsn / BigInt(DEFAULT_SEGMENT_BYTES), DEFAULT_SEGMENT_BYTES);
    await writeFile(join(target, `${firstName}.partial`), '');
    const result = await runReceiveWal({ port: fixture.walcast.port, dir: target, endpos: formatLsn(fixture.endLsn - 1n), extraArgs: ['-s', '0'] });
    assert.doesNotMatch(result.stderr, /replication timeout/, 'the stream was not cut for silence');
    assert.equal(result.code, 0, `pg_receivewal failed: ${result.stderr}`);
    await assertSegmentsMatch(target, fixture.primary.walDir, fixture.startLsn, fixture.endLsn);
  });
});
