/**
 * Live ingest end to end against real PostgreSQL 15 on loopback: walcast follows a primary (and another walcast),
 * stores its WAL durably and serves it while it arrives.
 *
 * One primary and one hot standby (base-backed-up from the primary, streaming from walcast) are shared by the tests,
 * which run in order: the standby sees the primary's rows through walcast and its hot-standby xmin reaches the
 * primary's slot; pg_receivewal from walcast gets byte-identical segments while pgbench writes; a chain primary →
 * walcast A → walcast B → standby works; walcast killed with SIGKILL during pgbench recovers and the standby
 * catches up; and walcast serves as the primary's synchronous standby.
 */
import assert from 'node:assert/strict';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createOperationsMetrics } from '../src/api/metrics.js';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { createIoBackend } from '../src/io/select-backend.js';
import { WalcastServer } from '../src/server.js';
import { upstreamSlotName } from '../src/ingest/follower.js';
import { silentLogger } from '../src/log.js';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { readControlFile } from '../src/storage/control-file.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { connectReplication } from '../src/wire/client.js';
import { firstDifference, freePort, makeStandby, makeTempDir, runReceiveWal, startPrimary, type PgCluster, type PgStandby, type StandbyBase } from './support/postgres.js';
import { runWalcastCli, startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';
import { spawnServe, type ServeProcess } from './support/serve-process.js';

const SEGMENT_BYTES = 16 * 1024 * 1024;
const TEST_TIMEOUT_MS = 300_000;
const CATCH_UP_TIMEOUT_MS = 120_000;
const POLL_MS = 100;

interface Fixture {
  primary: PgCluster;
  standbyBase: StandbyBase;
  standby: PgStandby;
  dataDirA: string;
  walcastA: RunningWalcast;
  timelineIdA: string;
  startLsnA: Lsn;
}

let fixture: Fixture;
const cleanups: (() => Promise<void>)[] = [];

before(async () => {
  const primary = await startPrimary({ extraConf: { wal_keep_size: '2GB' } });
  await primary.pgbench(['-i', '-s', '2', '-q']);
  const dataDirA = await makeTempDir('walcast-ingest-a');
  const created = await createFollowingTimeline({ dataDir: dataDirA, upstream: `host=127.0.0.1 port=${primary.port} user=repl`, password: undefined, log: silentLogger() });
  const walcastA = await startWalcast({ dataDir: dataDirA });
  cleanups.push(() => walcastA.stop());
  // The base backup starts after the timeline, so everything the standby needs is in walcast.
  const standbyBase = await makeStandby(primary, { applicationName: 'stby1', hotStandbyFeedback: true, start: false });
  const standby = await standbyBase.startWithUpstream(walcastA.port);
  fixture = { primary, standbyBase, standby, dataDirA, walcastA, timelineIdA: created.timelineId, startLsnA: created.startLsn };
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  await fixture?.standbyBase.standby?.stop({ mode: 'immediate' });
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  await fixture?.primary.stop({ mode: 'immediate' });
});

describe('live ingest from PostgreSQL 15', { timeout: TEST_TIMEOUT_MS }, () => {
  test('timeline create records the upstream identity and a slot', async () => {
    const timeline = soleTimeline(fixture.walcastA);
    assert.equal(timeline.systemId, BigInt(await fixture.primary.sql('SELECT system_identifier FROM pg_control_system()')));
    assert.equal(timeline.pgTimelineId, 1);
    assert.equal(fixture.startLsnA % BigInt(SEGMENT_BYTES), 0n);
    const slot = await fixture.primary.sql(`SELECT slot_type, active FROM pg_replication_slots WHERE slot_name = '${upstreamSlotName(fixture.timelineIdA)}'`);
    assert.equal(slot, 'physical|t', 'walcast streams through its slot');
    const control = await readControlFile(timeline.dir);
    assert.match(control.upstream ?? '', /^host=127\.0\.0\.1 port=\d+ user=repl/);
  });

  test('a standby streaming from walcast sees rows inserted on the primary; its xmin reaches the primary slot', async (t) => {
    await fixture.primary.sql('CREATE TABLE ingest_rows (id int primary key, at timestamptz default clock_timestamp())');
    await fixture.primary.sql('INSERT INTO ingest_rows (id) SELECT g FROM generate_series(1, 1000) g');
    await waitFor(async () => ((await fixture.standby.sql('SELECT count(*) FROM ingest_rows')) === '1000' ? true : undefined), CATCH_UP_TIMEOUT_MS);
    const timeline = soleTimeline(fixture.walcastA);
    const slotName = upstreamSlotName(fixture.timelineIdA);
    const matched = await waitFor(async () => {
      const aggregate = timeline.replicas.aggregates().hotStandbyXmin;
      const slotXmin = await fixture.primary.sql(`SELECT xmin FROM pg_replication_slots WHERE slot_name = '${slotName}'`);
      if (aggregate === undefined || slotXmin === '') return undefined;
      return BigInt(slotXmin) === (aggregate & 0xffff_ffffn) ? slotXmin : undefined;
    }, 30_000);
    t.diagnostic(`primary slot xmin ${matched} = the standby's hot-standby xmin`);
    // The primary's transaction ids move on; the standby's feedback (and so the slot's xmin) follows.
    await fixture.primary.sql('SELECT txid_current()');
    await fixture.primary.sql('INSERT INTO ingest_rows (id) VALUES (1001)');
    await waitFor(async () => {
      const slotXmin = await fixture.primary.sql(`SELECT xmin FROM pg_replication_slots WHERE slot_name = '${slotName}'`);
      return slotXmin !== '' && BigInt(slotXmin) > BigInt(matched) ? true : undefined;
    }, 30_000);
  });

  test('/metrics times the ingest hop: each commit on the primary adds a publish to walcast_ingest_to_publish_seconds, walcast_ingest_flush_seconds and walcast_ingest_upstream_to_received_seconds', async (t) => {
    const metrics = createOperationsMetrics({ backend: 'ts', strategy: 'fs-net' });
    metrics.bindTimelines(fixture.walcastA.server.timelines);
    const timeline = soleTimeline(fixture.walcastA);
    const labels = `tenant_id="${timeline.tenantId}",timeline_id="${timeline.timelineId}"`;
    const scrape = async (): Promise<{ hop: IngestHistogram; flush: IngestHistogram; upstream: IngestHistogram }> => {
      const { body } = await metrics.render();
      return {
        hop: ingestHistogram(body, 'walcast_ingest_to_publish_seconds', labels),
        flush: ingestHistogram(body, 'walcast_ingest_flush_seconds', labels),
        upstream: ingestHistogram(body, 'walcast_ingest_upstream_to_received_seconds', labels),
      };
    };
    const before = await scrape();
    const COMMITS = 5;
    for (let index = 0; index < COMMITS; index++) {
      await fixture.primary.sql(`INSERT INTO ingest_rows (id) VALUES (${1101 + index})`);
      // One commit at a time, each published before the next: at least one publish per commit.
      const flushed = parseLsnOrThrow(await fixture.primary.sql('SELECT pg_current_wal_flush_lsn()'));
      await timeline.commitLsn.waitBeyond(flushed - 1n, CATCH_UP_TIMEOUT_MS);
    }
    const after = await scrape();
    const publishes = after.hop.count - before.hop.count;
    assert.ok(publishes >= COMMITS, `at least ${COMMITS} publishes timed, got ${publishes}`);
    assert.equal(after.flush.count - before.flush.count, publishes, 'one flush observation per publish');
    const hopSeconds = after.hop.sum - before.hop.sum;
    const flushSeconds = after.flush.sum - before.flush.sum;
    assert.ok(flushSeconds > 0, 'the fdatasyncs took time');
    assert.ok(hopSeconds >= flushSeconds, `the hop (${hopSeconds} s) contains its flushes (${flushSeconds} s)`);
    // PostgreSQL stamps every XLogData with its send time, on this host's clock: each publish has an upstream wait,
    // above 0 (a conversion that put the send after the receipt would clamp every one to 0) and far below a second
    // (a wrong epoch or unit is off by years or by a factor of 1,000).
    assert.equal(after.upstream.count - before.upstream.count, publishes, 'one upstream wait per publish');
    const upstreamSeconds = after.upstream.sum - before.upstream.sum;
    assert.ok(upstreamSeconds > 0 && upstreamSeconds / publishes < 1, `upstream waits: ${upstreamSeconds} s over ${publishes} publishes`);
    // Sub-millisecond buckets, cumulative, ending at +Inf = count.
    for (const histogram of [after.hop, after.flush, after.upstream]) {
      assert.ok(histogram.buckets.some(([bound]) => bound <= 0.0001) && histogram.buckets.some(([bound]) => bound === 0.0005), 'buckets resolve 100 µs steps');
      histogram.buckets.forEach(([, count], index) => assert.ok(index === 0 || count >= (histogram.buckets[index - 1]?.[1] ?? 0), 'cumulative'));
      assert.equal(histogram.buckets.at(-1)?.[0], Number.POSITIVE_INFINITY);
      assert.equal(histogram.buckets.at(-1)?.[1], histogram.count);
    }
    t.diagnostic(`${publishes} publishes: mean hop ${((hopSeconds / publishes) * 1000).toFixed(3)} ms, of which flush ${((flushSeconds / publishes) * 1000).toFixed(3)} ms; upstream wait before it ${((upstreamSeconds / publishes) * 1000).toFixed(3)} ms`);
  });

  test('pg_receivewal from walcast while the primary writes gets segments byte-identical to the primary', async () => {
    const target = await makeTempDir('ingest-receivewal');
    const firstName = segmentFileName(1, fixture.startLsnA / BigInt(SEGMENT_BYTES), SEGMENT_BYTES);
    await writeFile(join(target, `${firstName}.partial`), '');
    const load = fixture.primary.pgbench(['-c', '2', '-T', '5', '-n']);
    await sleep(1500);
    const midLoad = parseLsnOrThrow(await fixture.primary.sql('SELECT pg_current_wal_flush_lsn()'));
    const received = runReceiveWal({ port: fixture.walcastA.port, dir: target, endpos: formatLsn(midLoad), timeoutMs: CATCH_UP_TIMEOUT_MS });
    await load;
    const result = await received;
    assert.equal(result.code, 0, `pg_receivewal failed: ${result.stderr}`);
    await assertSegmentsMatch(target, fixture.primary.walDir, fixture.startLsnA, midLoad);
  });

  test('a chain primary → walcast A → walcast B → standby delivers new rows', async (t) => {
    const dataDirB = await makeTempDir('walcast-ingest-b');
    const created = await createFollowingTimeline({ dataDir: dataDirB, upstream: `host=127.0.0.1 port=${fixture.walcastA.port} user=repl application_name=relay_b`, password: undefined, log: silentLogger() });
    assert.equal(created.slotName, upstreamSlotName(created.timelineId), 'walcast B reserves its WAL on walcast A with a slot');
    assert.ok(soleTimeline(fixture.walcastA).slots.get(created.slotName) !== undefined, 'the slot is on walcast A');
    const walcastB = await startWalcast({ dataDir: dataDirB });
    cleanups.push(() => walcastB.stop());
    await fixture.standby.stop();
    fixture.standby = await fixture.standbyBase.startWithUpstream(walcastB.port);
    await fixture.primary.sql('INSERT INTO ingest_rows (id) SELECT g FROM generate_series(2001, 2500) g');
    const started = Date.now();
    await waitFor(async () => ((await fixture.standby.sql('SELECT count(*) FROM ingest_rows WHERE id > 2000')) === '500' ? true : undefined), CATCH_UP_TIMEOUT_MS);
    t.diagnostic(`rows visible on the standby behind the chain within ${Date.now() - started} ms (polling every ${POLL_MS} ms, includes the standby's reconnect)`);
    const relay = soleTimeline(walcastB);
    assert.ok(relay.commitLsn.get() > created.startLsn, 'walcast B stored WAL from walcast A');
    const replicaOfA = soleTimeline(fixture.walcastA).replicas.snapshot().find((replica) => replica.appName === 'relay_b');
    assert.ok(replicaOfA !== undefined, 'walcast B streams from walcast A');
    assert.equal(soleTimeline(fixture.walcastA).slots.get(created.slotName ?? '')?.activeConnId, replicaOfA.connId, 'through its slot');
  });

  test('walcast killed with SIGKILL during pgbench recovers; the standby catches up; stored segments equal the primary', async (t) => {
    const dataDirC = await makeTempDir('walcast-ingest-c');
    const created = await runWalcastCli(['timeline', 'create', '--data-dir', dataDirC, '--upstream', `host=127.0.0.1 port=${fixture.primary.port} user=repl application_name=walcast_c`, '--json']);
    assert.equal(created.code, 0, `timeline create failed: ${created.stderr}`);
    const createdJson = JSON.parse(created.stdout) as { timeline_id: string; start_lsn: string };
    const startLsnC = parseLsnOrThrow(createdJson.start_lsn);
    const port = await freePort();
    let serve = await spawnIngestServe(dataDirC, port);
    cleanups.push(() => serve.stop());
    await fixture.standby.stop();
    fixture.standby = await fixture.standbyBase.startWithUpstream(port);
    const load = fixture.primary.pgbench(['-c', '4', '-T', '10', '-n']);
    // Two crashes at different moments of the load; each restart recovers from what the previous one left.
    for (const delayMs of [2500, 1700]) {
      await sleep(delayMs);
      serve.kill9();
      await serve.exited;
      t.diagnostic(`killed walcast at primary flush ${await fixture.primary.sql('SELECT pg_current_wal_flush_lsn()')}`);
      serve = await spawnIngestServe(dataDirC, port);
    }
    await load;
    await fixture.primary.sql('INSERT INTO ingest_rows (id) VALUES (3001)');
    const primaryEnd = parseLsnOrThrow(await fixture.primary.sql('SELECT pg_current_wal_flush_lsn()'));
    await waitFor(async () => {
      const replayed = parseLsnOrThrow(await fixture.standby.sql('SELECT pg_last_wal_replay_lsn()'));
      return replayed >= primaryEnd ? true : undefined;
    }, CATCH_UP_TIMEOUT_MS);
    assert.equal(await fixture.standby.sql('SELECT count(*) FROM ingest_rows WHERE id = 3001'), '1');
    const flushC = await identifyPosition(port);
    assert.ok(flushC >= primaryEnd, 'walcast caught up with the primary');
    const [tenantId] = await readdir(dataDirC);
    const compared = await assertSegmentsMatch(join(dataDirC, tenantId ?? '', createdJson.timeline_id), fixture.primary.walDir, startLsnC, flushC);
    t.diagnostic(`${compared} bytes of walcast's segments equal the primary's up to ${formatLsn(flushC)}`);
    assert.match(serve.output(), /recovered the end of stored WAL/);
  });

  test('walcast as the synchronous standby: commits complete, stall while walcast is down, resume after', async () => {
    const primary = fixture.primary;
    await primary.sql("ALTER SYSTEM SET synchronous_standby_names = 'walcast'");
    await primary.sql('SELECT pg_reload_conf()');
    try {
      await waitFor(async () => ((await primary.sql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'walcast'")) === 'sync' ? true : undefined), 30_000);
      await primary.sql('INSERT INTO ingest_rows (id) VALUES (4001)');
      await fixture.walcastA.stop();
      let settled = false;
      const stalled = primary.sql('INSERT INTO ingest_rows (id) VALUES (4002)').finally(() => (settled = true));
      // The primary reports the commit as waiting for its synchronous standby (wait event SyncRep): the event
      // itself, rather than a guess at how long to wait.
      await waitFor(async () => ((await primary.sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND query LIKE '%(4002)%'")) === '1' ? true : undefined), 30_000, { what: 'the commit waits in SyncRep' });
      assert.equal(settled, false, 'a commit waits for walcast while it is down');
      const restarted = await startWalcast({ dataDir: fixture.dataDirA });
      cleanups.push(() => restarted.stop());
      fixture.walcastA = restarted;
      await stalled;
    } finally {
      await primary.sql("ALTER SYSTEM SET synchronous_standby_names = ''");
      await primary.sql('SELECT pg_reload_conf()');
    }
  });

  test('following a standby that is promoted: the upstream ends timeline 1 mid-stream and ingest continues on timeline 2', async () => {
    const { primary } = fixture;
    const cascadeBase = await makeStandby(primary, { applicationName: 'cascade', start: true });
    const cascade = cascadeBase.standby;
    assert.ok(cascade !== undefined);
    cleanups.push(() => cascade.stop({ mode: 'immediate' }));
    const dataDirD = await makeTempDir('walcast-ingest-d');
    await createFollowingTimeline({ dataDir: dataDirD, upstream: `host=127.0.0.1 port=${cascade.port} user=repl`, password: undefined, log: silentLogger() });
    const walcastD = await startWalcast({ dataDir: dataDirD });
    cleanups.push(() => walcastD.stop());
    const follower = walcastD.server.ingest?.followers[0];
    assert.ok(follower !== undefined);
    await primary.sql('INSERT INTO ingest_rows (id) VALUES (5001)');
    const written = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
    const timelineD = soleTimeline(walcastD);
    await timelineD.commitLsn.waitBeyond(written - 1n, CATCH_UP_TIMEOUT_MS);
    const connectsBefore = follower.stats.connects;
    await cascade.sql('SELECT pg_promote()');
    await waitFor(async () => (timelineD.pgTimelineId === 2 ? true : undefined), 60_000);
    await cascade.sql('INSERT INTO ingest_rows (id) VALUES (5002)');
    const promotedEnd = parseLsnOrThrow(await cascade.sql('SELECT pg_current_wal_flush_lsn()'));
    await timelineD.commitLsn.waitBeyond(promotedEnd - 1n, CATCH_UP_TIMEOUT_MS);
    assert.equal(follower.failure, undefined);
    assert.equal(follower.state, 'streaming');
    assert.equal(timelineD.hasWriter(), true, 'the writer stays attached on the new timeline');
    assert.ok(follower.stats.connects - connectsBefore <= 1, 'the next timeline streams on the same connection (or one reconnect)');
    assert.equal((await readControlFile(timelineD.dir)).pgTimelineId, 2);
    assert.equal(await readFile(join(timelineD.dir, '00000002.history'), 'utf8'), await readFile(join(cascade.dataDir, 'pg_wal', '00000002.history'), 'utf8'));

    // A timeline created from the promoted server keeps its TLI and history: walcast answers as it would.
    const dataDirE = await makeTempDir('walcast-ingest-e');
    const createdE = await createFollowingTimeline({ dataDir: dataDirE, upstream: `host=127.0.0.1 port=${cascade.port} user=repl`, password: undefined, log: silentLogger() });
    assert.equal(createdE.pgTimelineId, 2);
    assert.deepEqual(createdE.historyFiles, ['00000002.history']);
    const walcastE = await startWalcast({ dataDir: dataDirE });
    cleanups.push(() => walcastE.stop());
    const client = await connectReplication({ host: '127.0.0.1', port: walcastE.port, user: 'repl', timeoutMs: 10_000 });
    try {
      const identity = await client.query('IDENTIFY_SYSTEM');
      assert.equal(identity.rows[0]?.[1], '2');
      const history = await client.query('TIMELINE_HISTORY 2');
      assert.equal(history.rows[0]?.[0], '00000002.history');
      assert.equal(history.rows[0]?.[1], await readFile(join(cascade.dataDir, 'pg_wal', '00000002.history'), 'utf8'));
    } finally {
      await client.end();
    }
  });

  test('timeline create refuses an inline password and reports an unreachable upstream', async () => {
    const dataDir = await makeTempDir('walcast-ingest-cli');
    const inline = await runWalcastCli(['timeline', 'create', '--data-dir', dataDir, '--upstream', `host=127.0.0.1 port=${fixture.primary.port} user=repl password=secret`]);
    assert.equal(inline.code, 1);
    assert.match(inline.stderr, /WALCAST_ERR_CONFIG: .*password= is not allowed/);
    const unreachable = await runWalcastCli(['timeline', 'create', '--data-dir', dataDir, '--upstream', `host=127.0.0.1 port=${await freePort()} user=repl connect_timeout=2`]);
    assert.equal(unreachable.code, 1);
    assert.match(unreachable.stderr, /WALCAST_ERR_UPSTREAM: cannot connect to the upstream/);
    assert.deepEqual(await readdir(dataDir), [], 'a failed create leaves nothing behind');
  });

  test('a SCRAM upstream: the password comes from --upstream-password-file for create and from serve options', async () => {
    const secured = await startPrimary({ password: 'up-secret' });
    cleanups.push(() => secured.stop({ mode: 'immediate' }));
    const dataDir = await makeTempDir('walcast-ingest-scram');
    const passwordFile = join(await makeTempDir('walcast-ingest-secret'), 'upstream-password');
    await writeFile(passwordFile, 'up-secret\n', { mode: 0o600 });
    const upstream = `host=127.0.0.1 port=${secured.port} user=repl`;
    const refused = await runWalcastCli(['timeline', 'create', '--data-dir', dataDir, '--upstream', upstream], { env: { WALCAST_UPSTREAM_PASSWORD: 'wrong' } });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /WALCAST_ERR_UPSTREAM/);
    const created = await runWalcastCli(['timeline', 'create', '--data-dir', dataDir, '--upstream', upstream, '--upstream-password-file', passwordFile, '--json']);
    assert.equal(created.code, 0, created.stderr);
    const { backend } = await createIoBackend({ io: 'ts' });
    const server = await WalcastServer.start({ dataDir, listen: { host: '127.0.0.1', port: 0 }, auth: { method: 'trust' }, backend, maxConnections: 16, replicaTimeoutMs: 60_000, log: silentLogger(), upstreamPassword: 'up-secret' });
    cleanups.push(() => server.stop());
    await secured.sql('CREATE TABLE scram_rows AS SELECT 1 AS id');
    const written = parseLsnOrThrow(await secured.sql('SELECT pg_current_wal_flush_lsn()'));
    const [timeline] = server.timelines.list();
    assert.ok(timeline !== undefined);
    assert.ok((await timeline.commitLsn.waitBeyond(written - 1n, 30_000)) !== undefined, 'walcast follows the SCRAM upstream');
  });

  test('measure: ingest throughput and commit-to-replica delay (WALCAST_INGEST_BENCH=1)', { skip: process.env.WALCAST_INGEST_BENCH !== '1' }, async (t) => {
    const { primary } = fixture;
    const timeline = soleTimeline(fixture.walcastA);
    await waitFor(async () => (fixture.walcastA.server.ingest?.followers[0]?.state === 'streaming' ? true : undefined), 30_000);
    // Live: pgbench -i writes WAL as fast as PostgreSQL can; walcast follows it.
    const live = await measureLive(primary, timeline, ['-i', '-s', '30', '-q']);
    t.diagnostic(`live pgbench -i -s 30: ${mb(live.walBytes)} MB of WAL in ${live.loadMs} ms (${rate(live.walBytes, live.loadMs)} MB/s from the primary); walcast durable ${live.tailMs} ms after pgbench ended`);
    const tpcb = await measureLive(primary, timeline, ['-c', '4', '-j', '2', '-T', '10', '-n']);
    t.diagnostic(`live pgbench -c 4 -T 10 (TPC-B): ${mb(tpcb.walBytes)} MB of WAL in ${tpcb.loadMs} ms (${rate(tpcb.walBytes, tpcb.loadMs)} MB/s); walcast durable ${tpcb.tailMs} ms after pgbench ended`);
    // Catch-up: with walcast down the primary writes ~1 GB; then walcast ingests it as fast as it can.
    await fixture.walcastA.stop();
    await primary.pgbench(['-i', '-s', '60', '-q']);
    const target = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
    const from = parseLsnOrThrow(await identifyPositionOf(fixture.dataDirA));
    const started = Date.now();
    const restarted = await startWalcast({ dataDir: fixture.dataDirA });
    cleanups.push(() => restarted.stop());
    fixture.walcastA = restarted;
    const caughtUp = soleTimeline(restarted);
    await caughtUp.commitLsn.waitBeyond(target - 1n, CATCH_UP_TIMEOUT_MS);
    const catchUpMs = Date.now() - started;
    const follower = restarted.server.ingest?.followers[0];
    t.diagnostic(`catch-up: ${mb(Number(target - from))} MB in ${catchUpMs} ms = ${rate(Number(target - from), catchUpMs)} MB/s (incl. start-up and recovery); ${follower?.stats.messagesReceived} messages`);
    // Commit-to-replica delay: a commit on the primary until walcast published it, and until the standby replayed it.
    await fixture.standby.stop();
    fixture.standby = await fixture.standbyBase.startWithUpstream(restarted.port);
    const delays = await measureCommitDelays(primary.port, fixture.standby.port, caughtUp, 50);
    t.diagnostic(`commit→walcast durable: median ${median(delays.walcastMs)} ms, p90 ${percentile(delays.walcastMs, 0.9)} ms; commit→standby replayed: median ${median(delays.standbyMs)} ms, p90 ${percentile(delays.standbyMs, 0.9)} ms (n=${delays.walcastMs.length})`);
    // Baseline: the same standby streaming from the primary itself.
    await fixture.standby.stop();
    fixture.standby = await fixture.standbyBase.startWithUpstream(primary.port);
    const direct = await measureCommitDelays(primary.port, fixture.standby.port, undefined, 50);
    t.diagnostic(`baseline commit→standby replayed, streaming from the primary directly: median ${median(direct.standbyMs)} ms, p90 ${percentile(direct.standbyMs, 0.9)} ms`);
  });
});

async function measureLive(primary: PgCluster, timeline: Timeline, pgbenchArgs: string[]): Promise<{ walBytes: number; loadMs: number; tailMs: number }> {
  const before = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
  const started = Date.now();
  await primary.pgbench(pgbenchArgs);
  const loadMs = Date.now() - started;
  const after = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
  const ended = Date.now();
  await timeline.commitLsn.waitBeyond(after - 1n, CATCH_UP_TIMEOUT_MS);
  return { walBytes: Number(after - before), loadMs, tailMs: Date.now() - ended };
}

async function measureCommitDelays(primaryPort: number, standbyPort: number, timeline: Timeline | undefined, samples: number): Promise<{ walcastMs: number[]; standbyMs: number[] }> {
  // A database-mode walsender connection runs plain SQL; it is the one persistent SQL session the wire client has.
  const sqlOptions = { host: '127.0.0.1', user: 'postgres', database: 'postgres', replication: 'database', timeoutMs: 10_000 };
  const writer = await connectReplication({ ...sqlOptions, port: primaryPort });
  const reader = await connectReplication({ ...sqlOptions, port: standbyPort });
  const walcastMs: number[] = [];
  const standbyMs: number[] = [];
  try {
    await writer.query('CREATE TABLE IF NOT EXISTS commit_probe (id int)');
    for (let sample = 0; sample < samples; sample++) {
      await writer.query(`INSERT INTO commit_probe VALUES (${sample})`);
      const committed = performance.now();
      const lsn = parseLsnOrThrow((await writer.query('SELECT pg_current_wal_flush_lsn()')).rows[0]?.[0] ?? '');
      if (timeline !== undefined) {
        await timeline.commitLsn.waitBeyond(lsn - 1n, 10_000);
        walcastMs.push(performance.now() - committed);
      }
      for (let poll = 0; poll < 100_000; poll++) {
        const replayed = parseLsnOrThrow((await reader.query('SELECT pg_last_wal_replay_lsn()')).rows[0]?.[0] ?? '0/0');
        if (replayed >= lsn) break;
      }
      standbyMs.push(performance.now() - committed);
      await sleep(20);
    }
  } finally {
    await writer.end();
    await reader.end();
  }
  return { walcastMs, standbyMs };
}

async function identifyPositionOf(dataDir: string): Promise<string> {
  const [tenantId] = await readdir(dataDir);
  const [timelineId] = await readdir(join(dataDir, tenantId ?? ''));
  return formatLsn((await readControlFile(join(dataDir, tenantId ?? '', timelineId ?? ''))).flushLsn);
}

const mb = (bytes: number): string => (bytes / 1e6).toFixed(1);
const rate = (bytes: number, ms: number): string => (bytes / 1e3 / ms).toFixed(1);
const median = (values: number[]): string => percentile(values, 0.5);
function percentile(values: number[], fraction: number): string {
  const sorted = [...values].sort((a, b) => a - b);
  return (sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * fraction))] ?? Number.NaN).toFixed(2);
}

/** `walcast serve` as a child process on 127.0.0.1:PORT; resolves once it answers IDENTIFY_SYSTEM. */
function spawnIngestServe(dataDir: string, port: number): Promise<ServeProcess> {
  return spawnServe({
    args: ['--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--no-http', '--log-level', 'info'],
    env: { WALCAST_IO: 'ts' },
    ready: async () => {
      await identifyPosition(port);
      return true;
    },
  });
}

async function identifyPosition(port: number): Promise<Lsn> {
  const client = await connectReplication({ host: '127.0.0.1', port, user: 'repl', timeoutMs: 5_000 });
  try {
    const result = await client.query('IDENTIFY_SYSTEM');
    return parseLsnOrThrow(result.rows[0]?.[2] ?? '');
  } finally {
    await client.end();
  }
}

function soleTimeline(walcast: RunningWalcast): Timeline {
  const [timeline] = walcast.server.timelines.list();
  assert.ok(timeline !== undefined, 'walcast has a timeline');
  return timeline;
}

/** Every segment in `receivedDir` equals the primary's from `startLsn` up to `endLsn` (the rest is padding). */
async function assertSegmentsMatch(receivedDir: string, primaryWalDir: string, startLsn: Lsn, endLsn: Lsn): Promise<number> {
  const names = (await readdir(receivedDir)).filter((name) => /^[0-9A-F]{24}(\.partial)?$/.test(name)).sort();
  const firstSegment = startLsn / BigInt(SEGMENT_BYTES);
  const lastSegment = (endLsn - 1n) / BigInt(SEGMENT_BYTES);
  let compared = 0;
  for (let segno = firstSegment; segno <= lastSegment; segno++) {
    const plain = segmentFileName(1, segno, SEGMENT_BYTES);
    const name = names.find((candidate) => candidate.startsWith(plain));
    assert.ok(name !== undefined, `segment ${plain} is missing; have ${names.join(', ')}`);
    const received = await readFile(join(receivedDir, name));
    const original = await readFile(join(primaryWalDir, plain));
    const segmentStart = segno * BigInt(SEGMENT_BYTES);
    const validBytes = endLsn - segmentStart >= BigInt(SEGMENT_BYTES) ? SEGMENT_BYTES : Number(endLsn - segmentStart);
    const difference = firstDifference(received.subarray(0, validBytes), original.subarray(0, validBytes));
    assert.equal(difference, -1, `${name} differs from the primary at offset ${difference}`);
    compared += validBytes;
  }
  return compared;
}


function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface IngestHistogram {
  readonly buckets: [number, number][];
  readonly count: number;
  readonly sum: number;
}

/** One labelled histogram of a Prometheus text exposition: cumulative buckets in order, count and sum. */
function ingestHistogram(text: string, name: string, labels: string): IngestHistogram {
  const buckets: [number, number][] = [];
  let count: number | undefined;
  let sum: number | undefined;
  for (const line of text.split('\n')) {
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (line.startsWith(`${name}_bucket{${labels},le="`)) {
      const le = /le="([^"]+)"/.exec(line)?.[1] ?? '';
      buckets.push([le === '+Inf' ? Number.POSITIVE_INFINITY : Number(le), value]);
    } else if (line.startsWith(`${name}_count{${labels}}`)) {
      count = value;
    } else if (line.startsWith(`${name}_sum{${labels}}`)) {
      sum = value;
    }
  }
  assert.ok(count !== undefined && sum !== undefined && buckets.length > 0, `${name}{${labels}} is in /metrics`);
  return { buckets, count, sum };
}
