/**
 * Failover end to end against real PostgreSQL 15: primary P, its physical standby S, walcast W following
 * `host=P,S`, a hot standby R and pg_receivewal streaming from W while pgbench writes. P stops and S is promoted:
 * W finds S by itself and follows it onto timeline 2; R and pg_receivewal follow W onto timeline 2 as they would
 * follow PostgreSQL, and so does a chain W → W2 → R2; every stored and received byte equals S's pg_wal. Then the historic-timeline protocol of W is
 * checked directly: a replica far behind on timeline 1 is streamed up to the switch point and handed the next
 * timeline, a start exactly at the switch point skips COPY mode, a start past it is refused.
 */
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { alignDown, formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { parseTimelineHistory, switchPointOf } from '../src/storage/timeline-history.js';
import { ServerError, connectReplication } from '../src/wire/client.js';
import { firstDifference, makeStandby, makeTempDir, runReceiveWal, startPrimary, type PgCluster, type PgStandby, type ReceiveWalResult } from './support/postgres.js';
import { FAILOVER_SEGMENT_BYTES, SegmentFiles, assertTimeline1Matches, assertTimeline2Matches, soleTimeline } from './support/timeline-wal.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const SEGMENT_BYTES = FAILOVER_SEGMENT_BYTES;
const TEST_TIMEOUT_MS = 600_000;
const CATCH_UP_TIMEOUT_MS = 180_000;
/** pg_receivewal stops this many segments past the primary's position at its start: a few segments into TLI 2. */
const RECEIVE_SEGMENTS = 4;
/** How often the time-to-new-timeline probe asks the downstream standby. */
const PROBE_INTERVAL_MS = 50;

interface Fixture {
  primary: PgCluster;
  promoted: PgStandby;
  walcast: RunningWalcast;
  replica: PgStandby;
  /** A second walcast following the first (the chain P → W → W2 → R2). */
  relay: RunningWalcast;
  relayReplica: PgStandby;
}

let fixture: Fixture;
const cleanups: (() => Promise<void>)[] = [];

before(async () => {
  const primary = await startPrimary({ extraConf: { wal_keep_size: '1GB' } });
  cleanups.push(() => primary.stop({ mode: 'immediate' }));
  await primary.pgbench(['-i', '-s', '1', '-q']);
  const standbyBase = await makeStandby(primary, { applicationName: 'failover_s', start: true, extraConf: { wal_keep_size: '1GB' } });
  const promoted = standbyBase.standby;
  assert.ok(promoted !== undefined);
  cleanups.push(() => promoted.stop({ mode: 'immediate' }));
  const dataDir = await makeTempDir('walcast-failover');
  const upstream = `host=127.0.0.1,127.0.0.1 port=${primary.port},${promoted.port} user=repl`;
  await createFollowingTimeline({ dataDir, upstream, password: undefined, log: silentLogger() });
  const walcast = await startWalcast({ dataDir });
  cleanups.push(() => walcast.stop());
  const relayDir = await makeTempDir('walcast-failover-relay');
  await createFollowingTimeline({ dataDir: relayDir, upstream: `host=127.0.0.1 port=${walcast.port} user=repl application_name=relay`, password: undefined, log: silentLogger() });
  const relay = await startWalcast({ dataDir: relayDir });
  cleanups.push(() => relay.stop());
  const replicaBase = await makeStandby(primary, { applicationName: 'failover_r', start: false });
  const replica = await replicaBase.startWithUpstream(walcast.port);
  cleanups.push(() => replica.stop({ mode: 'immediate' }));
  const relayReplicaBase = await makeStandby(primary, { applicationName: 'failover_r2', start: false });
  const relayReplica = await relayReplicaBase.startWithUpstream(relay.port);
  cleanups.push(() => relayReplica.stop({ mode: 'immediate' }));
  fixture = { primary, promoted, walcast, replica, relay, relayReplica };
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
});

describe('failover: walcast follows a promotion and its replicas follow walcast', { timeout: TEST_TIMEOUT_MS }, () => {
  let switchLsn: Lsn = 0n;

  test('P stops, S is promoted: W follows S onto timeline 2; R and pg_receivewal follow W; bytes equal S', async (t) => {
    const { primary, promoted, walcast, replica } = fixture;
    const timeline = soleTimeline(walcast);
    await primary.sql('CREATE TABLE failover_rows (id int primary key, tli int)');
    const receiveDir = await makeTempDir('walcast-failover-receivewal');
    const receiveEnd = alignDown(parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()')), SEGMENT_BYTES) + BigInt(RECEIVE_SEGMENTS * SEGMENT_BYTES);
    const received = runReceiveWal({ port: walcast.port, dir: receiveDir, endpos: formatLsn(receiveEnd), timeoutMs: CATCH_UP_TIMEOUT_MS });
    const load = primary.pgbench(['-T', '30', '-c', '2', '-R', '200']).catch((error: unknown) => `pgbench ended by the shutdown: ${String(error).slice(0, 80)}`);
    await waitFor(async () => ((await primary.sql("SELECT count(*) FROM pg_stat_replication WHERE application_name IN ('walcast', 'failover_s') AND state = 'streaming'")) === '2' ? true : undefined), CATCH_UP_TIMEOUT_MS);
    await primary.sql('INSERT INTO failover_rows SELECT g, 1 FROM generate_series(1, 100) g');
    await waitFor(async () => ((await replica.sql('SELECT count(*) FROM failover_rows')) === '100' ? true : undefined), CATCH_UP_TIMEOUT_MS);

    // A fast shutdown sends everything, its checkpoint included, to both streaming standbys before it ends.
    await primary.stop({ mode: 'fast' });
    t.diagnostic(String(await load).split('\n')[0] ?? '');
    const walcastEnd = timeline.flushLsn.get();
    await waitFor(async () => (parseLsnOrThrow(await promoted.sql('SELECT pg_last_wal_receive_lsn()')) >= walcastEnd ? true : undefined), CATCH_UP_TIMEOUT_MS);
    const probe = probeNewTimeline(replica);
    const promotedAt = Date.now();
    assert.equal(await promoted.sql('SELECT pg_promote()'), 't');
    await promoted.sql('INSERT INTO failover_rows SELECT g, 2 FROM generate_series(101, 200) g');

    const walcastSwitchedAt = await waitFor(async () => (timeline.pgTimelineId === 2 ? Date.now() : undefined), CATCH_UP_TIMEOUT_MS, { pollMs: 10 });
    const firstByteMs = (await probe) - promotedAt;
    t.diagnostic(`promotion (pg_promote called) to walcast on timeline 2: ${walcastSwitchedAt - promotedAt} ms; to the standby behind walcast receiving timeline 2: ${firstByteMs} ms (probe every ${PROBE_INTERVAL_MS} ms)`);
    const historyText = await readFile(join(promoted.dataDir, 'pg_wal', '00000002.history'), 'utf8');
    const sEnd = switchPointOf(1, parseTimelineHistory(historyText, 2));
    assert.ok(sEnd !== undefined);
    switchLsn = sEnd.switchLsn;
    assert.equal(switchLsn, walcastEnd, "walcast held timeline 1 exactly up to S's switch point");
    assert.deepEqual(timeline.pgTimelineEnd(1), { switchLsn, nextPgTimelineId: 2 });
    assert.equal(await readFile(join(timeline.dir, '00000002.history'), 'utf8'), historyText, 'the history file is kept as PostgreSQL wrote it');

    await waitFor(async () => ((await replica.sql('SELECT count(*) FROM failover_rows WHERE tli = 2')) === '100' ? true : undefined), CATCH_UP_TIMEOUT_MS);
    assert.equal(await replica.sql('SELECT received_tli FROM pg_stat_wal_receiver'), '2');
    // The chain: W ended timeline 1 under W2's live stream at the switch point; W2 followed, and so did R2.
    const relayTimeline = soleTimeline(fixture.relay);
    await waitFor(async () => ((await fixture.relayReplica.sql('SELECT count(*) FROM failover_rows WHERE tli = 2')) === '100' ? true : undefined), CATCH_UP_TIMEOUT_MS);
    assert.equal(relayTimeline.pgTimelineId, 2);
    assert.deepEqual(relayTimeline.pgTimelineEnd(1), { switchLsn, nextPgTimelineId: 2 });
    assert.equal(await readFile(join(relayTimeline.dir, '00000002.history'), 'utf8'), historyText);

    // Move S past pg_receivewal's end position; each pg_switch_wal closes a segment.
    for (let round = 0; parseLsnOrThrow(await promoted.sql('SELECT pg_current_wal_flush_lsn()')) <= receiveEnd; round++) {
      assert.ok(round <= RECEIVE_SEGMENTS + 2, 'a few switches reach the end position');
      await promoted.sql(`INSERT INTO failover_rows VALUES (${1000 + round}, 2)`);
      await promoted.sql('SELECT pg_switch_wal()');
    }
    const receiveResult: ReceiveWalResult = await received;
    assert.equal(receiveResult.code, 0, `pg_receivewal: ${receiveResult.stderr}`);
    assert.equal(await readFile(join(receiveDir, '00000002.history'), 'utf8'), historyText, 'pg_receivewal fetched the history from walcast');
    const receivedBytes = await assertTimeline2Matches(receiveDir, join(promoted.dataDir, 'pg_wal'), switchLsn, receiveEnd);
    t.diagnostic(`pg_receivewal: ${receivedBytes} bytes of timeline 2 equal S's pg_wal`);
    assert.match(receiveResult.stderr, /switched to timeline 2/);

    const promotedFlush = parseLsnOrThrow(await promoted.sql('SELECT pg_current_wal_flush_lsn()'));
    await timeline.commitLsn.waitBeyond(promotedFlush - 1n, CATCH_UP_TIMEOUT_MS);
    const storedTli1 = await assertTimeline1Matches(timeline.dir, join(promoted.dataDir, 'pg_wal'), timeline.timelineStartLsn, switchLsn);
    const storedTli2 = await assertTimeline2Matches(timeline.dir, join(promoted.dataDir, 'pg_wal'), switchLsn, promotedFlush);
    t.diagnostic(`walcast: ${storedTli1} bytes of timeline 1 and ${storedTli2} of timeline 2 equal S's pg_wal`);
    await relayTimeline.commitLsn.waitBeyond(promotedFlush - 1n, CATCH_UP_TIMEOUT_MS);
    await assertTimeline1Matches(relayTimeline.dir, join(promoted.dataDir, 'pg_wal'), relayTimeline.timelineStartLsn, switchLsn);
    await assertTimeline2Matches(relayTimeline.dir, join(promoted.dataDir, 'pg_wal'), switchLsn, promotedFlush);
  });

  test('a replica far behind on timeline 1 is streamed up to the switch point, then told the next timeline', async () => {
    const { walcast } = fixture;
    const timeline = soleTimeline(walcast);
    assert.ok(switchLsn > timeline.timelineStartLsn, 'the failover test ran');
    const client = await connectReplication({ host: '127.0.0.1', port: walcast.port, user: 'repl', timeoutMs: 10_000 });
    try {
      const identity = await client.query('IDENTIFY_SYSTEM');
      assert.equal(identity.rows[0]?.[1], '2', 'IDENTIFY_SYSTEM reports the current timeline');
      const stream = await client.startReplication(`START_REPLICATION ${formatLsn(timeline.timelineStartLsn)} TIMELINE 1`);
      let position = timeline.timelineStartLsn;
      const expected = new SegmentFiles(join(fixture.promoted.dataDir, 'pg_wal'), 1);
      for await (const payload of stream) {
        if (payload[0] !== 0x77) continue; // 'w' XLogData; keepalives are skipped
        const dataStart = payload.readBigUInt64BE(1);
        assert.equal(dataStart, position, 'contiguous');
        const data = payload.subarray(25);
        assert.ok(position + BigInt(data.length) <= switchLsn, 'no byte past the switch point on timeline 1');
        assert.equal(firstDifference(data, await expected.read(position, data.length)), -1, `timeline 1 bytes at ${formatLsn(position)}`);
        position += BigInt(data.length);
      }
      assert.equal(position, switchLsn, 'the stream ends exactly at the switch point');
      const end = await stream.sendCopyDone();
      assert.equal(end.how, 'completed');
      assert.ok(end.how === 'completed' && end.serverCopyDone);
      assert.deepEqual(end.columns, ['next_tli', 'next_tli_startpos']);
      assert.deepEqual(end.rows, [['2', formatLsn(switchLsn)]]);
      assert.deepEqual(end.tags, ['START_STREAMING', 'START_REPLICATION']);

      const atEnd = await client.query(`START_REPLICATION ${formatLsn(switchLsn)} TIMELINE 1`);
      assert.deepEqual(atEnd.rows, [['2', formatLsn(switchLsn)]], 'a start at the switch point skips COPY mode');
      await assert.rejects(client.startReplication(`START_REPLICATION ${formatLsn(switchLsn + 8n)} TIMELINE 1`), (error: unknown) => {
        assert.ok(error instanceof ServerError);
        assert.match(error.message, /requested starting point .* on timeline 1 is not in this server's history/);
        return true;
      });
      await assert.rejects(client.startReplication(`START_REPLICATION ${formatLsn(switchLsn)} TIMELINE 3`), /requested timeline 3 is not in this server's history/);
      const history = await client.query('TIMELINE_HISTORY 2');
      assert.equal(history.rows[0]?.[1], await readFile(join(fixture.promoted.dataDir, 'pg_wal', '00000002.history'), 'utf8'));
    } finally {
      await client.end();
    }
  });

  test('W restarted after the failover reopens on timeline 2 with its history and no storage problem', async () => {
    const dataDir = soleTimeline(fixture.walcast).dir.split('/').slice(0, -2).join('/');
    await fixture.walcast.stop();
    const restarted = await startWalcast({ dataDir });
    cleanups.push(() => restarted.stop());
    fixture.walcast = restarted;
    const timeline = soleTimeline(restarted);
    assert.equal(timeline.pgTimelineId, 2);
    assert.deepEqual(timeline.pgTimelineEnd(1), { switchLsn, nextPgTimelineId: 2 });
    assert.deepEqual(timeline.storageProblems, [], 'segments are expected under the TLI that holds them');
    const follower = restarted.server.ingest?.followers[0];
    assert.ok(follower !== undefined);
    await fixture.promoted.sql('INSERT INTO failover_rows VALUES (5000, 2)');
    const promotedFlush = parseLsnOrThrow(await fixture.promoted.sql('SELECT pg_current_wal_flush_lsn()'));
    assert.notEqual(await timeline.commitLsn.waitBeyond(promotedFlush - 1n, CATCH_UP_TIMEOUT_MS), undefined, 'ingest resumes on timeline 2');
  });
});

describe('divergence: walcast ahead of the promoted standby refuses to follow it', { timeout: TEST_TIMEOUT_MS }, () => {
  test('W holds timeline-1 WAL the promoted S never had: ingest stops with WALCAST_ERR_UPSTREAM_DIVERGED, nothing is served as timeline 2', async () => {
    const primary = await startPrimary();
    cleanups.push(() => primary.stop({ mode: 'immediate' }));
    const standbyBase = await makeStandby(primary, { applicationName: 'diverge_s', start: true });
    const standby = standbyBase.standby;
    assert.ok(standby !== undefined);
    const dataDir = await makeTempDir('walcast-diverge');
    await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1,127.0.0.1 port=${primary.port},${standby.port} user=repl`, password: undefined, log: silentLogger() });
    const walcast = await startWalcast({ dataDir });
    cleanups.push(() => walcast.stop());
    const timeline = soleTimeline(walcast);
    const follower = walcast.server.ingest?.followers[0];
    assert.ok(follower !== undefined);
    // S stops receiving (an empty primary_conninfo ends its walreceiver; it keeps its port); P goes on writing to W
    // only; then P is gone and S is promoted behind W.
    await standby.sql("ALTER SYSTEM SET primary_conninfo = ''");
    await standby.sql('SELECT pg_reload_conf()');
    await waitFor(async () => ((await standby.sql('SELECT count(*) FROM pg_stat_wal_receiver')) === '0' ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: "S's walreceiver to stop" });
    await primary.sql('CREATE TABLE diverged_rows AS SELECT g AS id FROM generate_series(1, 1000) g');
    const primaryEnd = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
    await timeline.commitLsn.waitBeyond(primaryEnd - 1n, CATCH_UP_TIMEOUT_MS);
    await primary.stop({ mode: 'fast' });
    cleanups.push(() => standby.stop({ mode: 'immediate' }));
    assert.equal(await standby.sql('SELECT pg_promote()'), 't');
    await waitFor(async () => (follower.state === 'failed' ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'ingest to stop' });
    assert.equal((follower.failure as { code?: string } | undefined)?.code, 'WALCAST_ERR_UPSTREAM_DIVERGED');
    assert.match(follower.status().failure ?? '', /past the upstream's switch point/);
    assert.equal(timeline.pgTimelineId, 1, 'the diverged history is never adopted');
    assert.equal(timeline.hasWriter(), false);
    assert.deepEqual((await readdir(timeline.dir)).filter((name) => name.endsWith('.history')), [], 'no history file of the new timeline is kept');
    const client = await connectReplication({ host: '127.0.0.1', port: walcast.port, user: 'repl', timeoutMs: 10_000 });
    try {
      assert.equal((await client.query('IDENTIFY_SYSTEM')).rows[0]?.[1], '1');
      await assert.rejects(client.startReplication(`START_REPLICATION ${formatLsn(alignDown(primaryEnd, SEGMENT_BYTES))} TIMELINE 2`), /requested timeline 2 is not in this server's history/);
      await assert.rejects(client.query('TIMELINE_HISTORY 2'), /could not open file "00000002.history"/);
    } finally {
      await client.end();
    }
  });
});

/** Resolves with the time the standby behind walcast first reports a flushed timeline-2 position. */
async function probeNewTimeline(replica: PgStandby): Promise<number> {
  return waitFor(async () => ((await replica.sql('SELECT received_tli FROM pg_stat_wal_receiver')) === '2' ? Date.now() : undefined), CATCH_UP_TIMEOUT_MS, { pollMs: PROBE_INTERVAL_MS, what: "the standby behind walcast on timeline 2" });
}
