/**
 * A timeline created with `walcast timeline create` while `walcast serve` runs is picked up with no restart: the
 * server's data-directory scan opens it, starts its ingest, and replicas can name it and stream it.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { parseLsnOrThrow } from '../src/lsn.js';
import { connectReplication } from '../src/wire/client.js';
import { makeTempDir, startPrimary, type PgCluster } from './support/postgres.js';
import { runWalcastCli, startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const TEST_TIMEOUT_MS = 300_000;
const CATCH_UP_TIMEOUT_MS = 120_000;

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
});

test('a timeline created while serve runs is opened, followed and streamable without a restart', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const primary: PgCluster = await startPrimary();
  cleanups.push(() => primary.stop({ mode: 'immediate' }));
  const dataDir = await makeTempDir('walcast-hot-add');
  const walcast: RunningWalcast = await startWalcast({ dataDir });
  cleanups.push(() => walcast.stop());
  assert.equal(walcast.server.timelines.list().length, 0);

  const created = await runWalcastCli(['timeline', 'create', '--data-dir', dataDir, '--upstream', `host=127.0.0.1 port=${primary.port} user=repl`, '--json']);
  assert.equal(created.code, 0, created.stderr);
  const createdAt = Date.now();
  const { tenant_id: tenantId, timeline_id: timelineId } = JSON.parse(created.stdout) as { tenant_id: string; timeline_id: string };
  const timeline = await waitFor(async () => walcast.server.timelines.get(tenantId, timelineId), CATCH_UP_TIMEOUT_MS, { pollMs: 10, what: 'the new timeline to be opened' });
  t.diagnostic(`the new timeline was opened ${Date.now() - createdAt} ms after timeline create exited (scan every 500 ms)`);

  await primary.sql('CREATE TABLE hot_rows AS SELECT g AS id FROM generate_series(1, 100) g');
  const written = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
  assert.notEqual(await timeline.commitLsn.waitBeyond(written - 1n, CATCH_UP_TIMEOUT_MS), undefined, 'its ingest started and follows the primary');
  const client = await connectReplication({ host: '127.0.0.1', port: walcast.port, user: 'repl', timeoutMs: 10_000, options: `-c tenant_id=${tenantId} -c timeline_id=${timelineId}` });
  try {
    const identity = await client.query('IDENTIFY_SYSTEM');
    assert.equal(identity.rows[0]?.[0], await primary.sql('SELECT system_identifier FROM pg_control_system()'));
    const stream = await client.startReplication(`START_REPLICATION ${identity.rows[0]?.[2] ?? ''} TIMELINE 1`);
    await stream.sendCopyDone();
  } finally {
    await client.end();
  }
});
