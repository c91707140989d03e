/**
 * Replication slots end to end, against real PostgreSQL 15 and its real clients: walcast follows a primary (1 MiB
 * segments, so a few MB of WAL cross many segment boundaries) and serves slots downstream.
 *
 * The slot commands are run against the primary and against walcast and their answers compared; pg_receivewal
 * creates a slot, streams, is restarted in an empty directory and resumes where the slot says, byte-identical to the
 * primary's WAL; a standby streams through walcast with primary_slot_name, then with a walreceiver temporary slot;
 * and walcast is killed with SIGKILL while a replica's feedback advances its slot: after the restart the slot is not
 * ahead of what the replica confirmed. `walcast slot` is exercised through a running server and on the files.
 */
import assert from 'node:assert/strict';
import { appendFile, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { connectReplication, ServerError, type ReplicationClient } from '../src/wire/client.js';
import { firstDifference, freePort, makeStandby, makeTempDir, runReceiveWal, startPrimary, type PgCluster } from './support/postgres.js';
import { runWalcastCli, startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';
import { spawnServe, type ServeProcess } from './support/serve-process.js';

const SEGMENT_BYTES = 1024 * 1024;
const TEST_TIMEOUT_MS = 300_000;
const CATCH_UP_TIMEOUT_MS = 120_000;

let primary: PgCluster;
let walcast: RunningWalcast;
let dataDir: string;
let timelineStartLsn: Lsn;
const cleanups: (() => Promise<void>)[] = [];

before(async () => {
  primary = await startPrimary({ walSegmentMb: 1, extraConf: { wal_keep_size: '1GB' } });
  await primary.sql('CREATE TABLE slot_rows (id int primary key, filler text)');
  dataDir = await makeTempDir('walcast-slots');
  const created = await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1 port=${primary.port} user=repl`, password: undefined, log: silentLogger() });
  timelineStartLsn = created.startLsn;
  walcast = await startWalcast({ dataDir });
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  await walcast?.stop();
  await primary?.stop({ mode: 'immediate' });
});

function timelineOf(server: RunningWalcast): Timeline {
  const [timeline] = server.server.timelines.list();
  assert.ok(timeline !== undefined);
  return timeline;
}

function connect(port: number, applicationName = 'slots-test', password?: string): Promise<ReplicationClient> {
  return connectReplication({ host: '127.0.0.1', port, user: 'repl', password, applicationName, timeoutMs: 10_000 });
}

/** Writes about `rows` × 1 KiB of WAL on the primary and waits until walcast has committed it; returns that LSN. */
async function generateWal(rows: number, from: number): Promise<Lsn> {
  await primary.sql(`INSERT INTO slot_rows SELECT g, repeat(md5(g::text), 32) FROM generate_series(${from}, ${from + rows - 1}) g`);
  const end = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
  await waitFor(async () => (timelineOf(walcast).commitLsn.get() >= end ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'walcast caught up' });
  return end;
}

type Answer = { rows: (string | null)[][]; columns: string[]; tag: string } | { sqlState: string; message: string; hint: string | undefined };

async function answer(client: ReplicationClient, command: string): Promise<Answer> {
  try {
    const result = await client.query(command);
    return { rows: result.rows, columns: result.columns, tag: result.tag };
  } catch (error) {
    if (!(error instanceof ServerError)) throw error;
    return { sqlState: error.sqlState, message: error.message.replace(/PID \d+/, 'PID n'), hint: error.hint };
  }
}

describe('replication slots', { timeout: TEST_TIMEOUT_MS }, () => {
  test('slot commands answer as PostgreSQL 15 answers them', async (t) => {
    const restartLsnPattern = /^[0-9A-F]+\/[0-9A-F]+$/;
    const lsnOf = async (port: number): Promise<string> => {
      const client = await connect(port);
      const position = (await client.query('IDENTIFY_SYSTEM')).rows[0]?.[2];
      await client.end();
      return position ?? '0/0';
    };
    const script = (startLsn: string): Array<['a' | 'b', string]> => [
      ['a', 'CREATE_REPLICATION_SLOT cmp_plain PHYSICAL'],
      ['a', 'READ_REPLICATION_SLOT cmp_plain'],
      ['a', 'CREATE_REPLICATION_SLOT cmp_reserved PHYSICAL (RESERVE_WAL)'],
      ['a', 'CREATE_REPLICATION_SLOT cmp_legacy PHYSICAL RESERVE_WAL'],
      ['a', 'CREATE_REPLICATION_SLOT cmp_plain PHYSICAL'],
      ['a', 'CREATE_REPLICATION_SLOT "Bad" PHYSICAL'],
      ['a', 'CREATE_REPLICATION_SLOT "a-b" PHYSICAL'],
      ['a', 'CREATE_REPLICATION_SLOT "" PHYSICAL'],
      ['a', `CREATE_REPLICATION_SLOT ${'x'.repeat(64)} PHYSICAL`],
      ['a', `DROP_REPLICATION_SLOT ${'x'.repeat(63)}`],
      ['a', 'CREATE_REPLICATION_SLOT opt PHYSICAL (RESERVE_WAL maybe)'],
      ['a', 'CREATE_REPLICATION_SLOT opt PHYSICAL (RESERVE_WAL, RESERVE_WAL)'],
      ['a', 'CREATE_REPLICATION_SLOT opt PHYSICAL EXPORT_SNAPSHOT'],
      ['a', 'READ_REPLICATION_SLOT nope'],
      ['a', 'READ_REPLICATION_SLOT "Bad-x"'],
      ['a', 'CREATE_REPLICATION_SLOT cmp_temp TEMPORARY PHYSICAL'],
      ['b', 'READ_REPLICATION_SLOT cmp_temp'],
      ['b', 'DROP_REPLICATION_SLOT cmp_temp'],
      ['b', `START_REPLICATION SLOT cmp_temp PHYSICAL ${startLsn}`],
      ['b', `START_REPLICATION SLOT nope PHYSICAL ${startLsn}`],
      ['b', 'DROP_REPLICATION_SLOT nope'],
      ['b', 'DROP_REPLICATION_SLOT cmp_plain WAIT'],
      // An ERROR on a walsender connection drops its temporary slots (walsender.c WalSndErrorCleanup).
      ['a', 'SHOW no_such_setting'],
      ['b', 'READ_REPLICATION_SLOT cmp_temp'],
      ['a', 'DROP_REPLICATION_SLOT cmp_legacy'],
    ];
    const run = async (port: number, password?: string): Promise<Answer[]> => {
      const startLsn = await lsnOf(port);
      const [a, b] = [await connect(port, 'a', password), await connect(port, 'b', password)];
      const answers: Answer[] = [];
      for (const [who, command] of script(startLsn)) answers.push(await answer(who === 'a' ? a : b, command));
      await Promise.all([a.end(), b.end()]);
      return answers;
    };
    const fromPostgres = await run(primary.port, primary.replPassword);
    const fromWalcast = await run(walcast.port);
    for (let index = 0; index < fromPostgres.length; index++) {
      const [command] = script('0/0')[index]!.slice(1);
      assert.deepEqual(fromWalcast[index], fromPostgres[index], `${command}: walcast answered differently from PostgreSQL`);
    }
    // READ_REPLICATION_SLOT of a reserved slot: physical, an LSN, timeline 1, on both. The LSNs differ: RESERVE_WAL
    // holds from "the current position", PostgreSQL's insert position and walcast's commit LSN.
    for (const port of [primary.port, walcast.port]) {
      const client = await connect(port, 'reader', port === primary.port ? primary.replPassword : undefined);
      const read = await client.query('READ_REPLICATION_SLOT cmp_reserved');
      assert.equal(read.rows[0]?.[0], 'physical');
      assert.match(read.rows[0]?.[1] ?? '', restartLsnPattern);
      assert.equal(read.rows[0]?.[2], '1');
      await client.query('DROP_REPLICATION_SLOT cmp_reserved');
      await client.end();
    }
    t.diagnostic(`${fromPostgres.length} commands answered identically`);
  });

  test('READ_REPLICATION_SLOT after the same feedback: the same row from walcast and PostgreSQL', async () => {
    // A segment start both servers hold; the slot is confirmed exactly there.
    const committed = timelineOf(walcast).commitLsn.get();
    const startLsn = committed - (committed % BigInt(SEGMENT_BYTES));
    const rows: (string | null)[][] = [];
    for (const [port, password] of [[primary.port, primary.replPassword], [walcast.port, undefined]] as const) {
      const client = await connect(port, 'same-state', password);
      await client.query('CREATE_REPLICATION_SLOT same_state PHYSICAL');
      const stream = await client.startReplication(`START_REPLICATION SLOT same_state PHYSICAL ${formatLsn(startLsn)} TIMELINE 1`);
      await stream.sendCopyData(standbyReply(startLsn));
      const end = await stream.sendCopyDone();
      assert.equal(end.how, 'completed');
      rows.push((await client.query('READ_REPLICATION_SLOT same_state')).rows[0] ?? []);
      await client.query('DROP_REPLICATION_SLOT same_state');
      await client.end();
    }
    assert.deepEqual(rows[1], rows[0]);
    assert.deepEqual(rows[0], ['physical', formatLsn(startLsn), '1']);
  });

  test('bad input: LOGICAL slots are 0A000, a too-long name through the API is 42622; walcast keeps serving', async () => {
    const client = await connect(walcast.port);
    const logical = await answer(client, 'CREATE_REPLICATION_SLOT l1 LOGICAL test_decoding');
    assert.ok('sqlState' in logical && logical.sqlState === '0A000', JSON.stringify(logical));
    assert.match((logical as { message: string }).message, /physical replication only/);
    await assert.rejects(timelineOf(walcast).slots.create('y'.repeat(64), { temporary: false }), /too long/);
    assert.equal((await client.query('IDENTIFY_SYSTEM')).rows.length, 1);
    await client.end();
  });

  test('pg_receivewal --create-slot, then --slot; restarted in an empty directory it resumes where the slot says, byte-identical', async (t) => {
    const createDir = await makeTempDir('slots-receivewal-create');
    const created = await runReceiveWal({ port: walcast.port, dir: createDir, endpos: '0/0', slot: 'recv', extraArgs: ['--create-slot'] });
    assert.equal(created.code, 0, created.stderr);
    assert.deepEqual(await readSlot(walcast.port, 'recv'), ['physical', null, null], 'a slot created without RESERVE_WAL holds nothing yet');
    // The same client and slot against the primary, to compare the slot state both servers end up with.
    const createdOnPrimary = await runReceiveWal({ port: primary.port, dir: createDir, endpos: '0/0', slot: 'recv', extraArgs: ['--create-slot'], password: primary.replPassword });
    assert.equal(createdOnPrimary.code, 0, createdOnPrimary.stderr);

    const firstEnd = await generateWal(3000, 1);
    const firstDir = await makeTempDir('slots-receivewal-1');
    const primaryDir = await makeTempDir('slots-receivewal-primary');
    const seed = `${segmentFileName(1, timelineStartLsn / BigInt(SEGMENT_BYTES), SEGMENT_BYTES)}.partial`;
    await writeFile(join(firstDir, seed), '');
    await writeFile(join(primaryDir, seed), '');
    const first = await runReceiveWal({ port: walcast.port, dir: firstDir, endpos: formatLsn(firstEnd), slot: 'recv' });
    assert.equal(first.code, 0, first.stderr);
    const againstPrimary = await runReceiveWal({ port: primary.port, dir: primaryDir, endpos: formatLsn(firstEnd), slot: 'recv', password: primary.replPassword });
    assert.equal(againstPrimary.code, 0, againstPrimary.stderr);
    await assertSegmentsMatch(firstDir, timelineStartLsn, firstEnd);
    // Both hold the position pg_receivewal last reported flushed. walcast asks for a reply after 1 s without WAL to
    // send (pg_receivewal then fsyncs and reports), PostgreSQL only every wal_sender_timeout / 2, so walcast's slot
    // may be further on; the exact same-state comparison is in the first test.
    const slotAfterFirst = await readSlot(walcast.port, 'recv');
    const slotOnPrimary = await readSlot(primary.port, 'recv', primary.replPassword);
    assert.deepEqual([slotAfterFirst[0], slotAfterFirst[2]], ['physical', '1']);
    const restartLsn = parseLsnOrThrow(slotAfterFirst[1] ?? 'missing');
    assert.ok(restartLsn >= parseLsnOrThrow(slotOnPrimary[1] ?? 'missing') && restartLsn <= firstEnd, `restart LSN ${formatLsn(restartLsn)} (PostgreSQL's: ${slotOnPrimary[1]}) lies within what was streamed`);
    assert.ok(restartLsn > timelineStartLsn);

    const secondEnd = await generateWal(3000, 3001);
    const secondDir = await makeTempDir('slots-receivewal-2');
    const second = await runReceiveWal({ port: walcast.port, dir: secondDir, endpos: formatLsn(secondEnd), slot: 'recv' });
    assert.equal(second.code, 0, second.stderr);
    const resumeLsn = restartLsn - (restartLsn % BigInt(SEGMENT_BYTES));
    assert.match(second.stderr, new RegExp(`starting log streaming at ${formatLsn(resumeLsn)} \\(timeline 1\\)`), 'pg_receivewal started at the segment of the slot restart LSN');
    const compared = await assertSegmentsMatch(secondDir, resumeLsn, secondEnd);
    const slotAfterSecond = parseLsnOrThrow((await readSlot(walcast.port, 'recv'))[1] ?? 'missing');
    assert.ok(slotAfterSecond >= restartLsn, 'the restart LSN never moves back');
    t.diagnostic(`resumed at ${formatLsn(resumeLsn)} (slot ${formatLsn(restartLsn)}); ${compared} bytes equal the primary's; slot now ${formatLsn(slotAfterSecond)}`);
    for (const port of [walcast.port, primary.port]) {
      const dropped = await runReceiveWal({ port, dir: createDir, endpos: '0/0', slot: 'recv', extraArgs: ['--drop-slot'], ...(port === primary.port ? { password: primary.replPassword } : {}) });
      assert.equal(dropped.code, 0, dropped.stderr);
    }
    assert.deepEqual(await readSlot(walcast.port, 'recv'), [null, null, null]);
  });

  test('a standby streams through walcast with primary_slot_name; then with a walreceiver temporary slot that goes with it', async (t) => {
    const timeline = timelineOf(walcast);
    await timeline.slots.create('standby_one', { temporary: false });
    const base = await makeStandby(primary, { applicationName: 'slot_standby', start: false });
    cleanups.push(async () => base.standby?.stop({ mode: 'immediate' }));
    // Appended here rather than through the fixture's extraConf, which it re-appends at every start.
    await appendFile(join(base.dataDir, 'postgresql.conf'), "\nprimary_slot_name = 'standby_one'\n");
    const standby = await base.startWithUpstream(walcast.port);
    const end = await generateWal(1000, 10_001);
    await waitFor(async () => ((await standby.sql('SELECT count(*) FROM slot_rows WHERE id > 10000')) === '1000' ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'standby replayed' });
    const held = await waitFor(async () => {
      const slot = timeline.slots.get('standby_one');
      return slot?.restartLsn !== undefined && slot.restartLsn >= end ? slot : undefined;
    }, CATCH_UP_TIMEOUT_MS, { what: 'the slot follows the standby flush position' });
    const replica = timeline.replicas.snapshot().find((each) => each.appName === 'slot_standby');
    assert.equal(held.activeConnId, replica?.connId, 'the slot is active for the standby connection');
    assert.ok((held.restartLsn ?? 0n) <= timeline.commitLsn.get(), 'never beyond what was committed');
    await standby.stop();
    await waitFor(async () => (timeline.slots.get('standby_one')?.activeConnId === undefined ? true : undefined), 30_000, { what: 'slot released' });
    assert.ok((timeline.slots.get('standby_one')?.restartLsn ?? 0n) >= (held.restartLsn ?? 0n), 'the slot keeps its position after the standby left');

    // Without primary_slot_name, wal_receiver_create_temp_slot makes the walreceiver create pg_walreceiver_<pid>.
    await appendFile(join(base.dataDir, 'postgresql.conf'), "\nprimary_slot_name = ''\nwal_receiver_create_temp_slot = on\n");
    const again = await base.startWithUpstream(walcast.port);
    const temporary = await waitFor(async () => timeline.slots.list().find((slot) => /^pg_walreceiver_\d+$/.test(slot.name)), CATCH_UP_TIMEOUT_MS, { what: 'walreceiver temporary slot' });
    assert.ok(temporary.temporary && temporary.activeConnId !== undefined);
    const slotFile = await readFile(join(timeline.dir, 'walcast.slots'), 'utf8');
    assert.ok(!slotFile.includes(temporary.name), 'temporary slots are never persisted');
    await again.stop();
    await waitFor(async () => (timeline.slots.get(temporary.name) === undefined ? true : undefined), 30_000, { what: 'temporary slot dropped with its connection' });
    await timeline.slots.drop('standby_one');
    t.diagnostic(`standby slot held ${formatLsn(held.restartLsn ?? 0n)}; temporary slot ${temporary.name} gone after the standby stopped`);
  });

  test('walcast killed with SIGKILL while feedback advances a slot: after restart the slot is not ahead of the replica', async (t) => {
    const killDir = await makeTempDir('walcast-slots-kill');
    const created = await createFollowingTimeline({ dataDir: killDir, upstream: `host=127.0.0.1 port=${primary.port} user=repl application_name=walcast_kill`, password: undefined, log: silentLogger() });
    const [pgPort, httpPort] = [await freePort(), await freePort()];
    const serve = await spawnSlotServe(killDir, pgPort, httpPort);
    cleanups.push(() => serve.stop());
    const createdSlot = await runWalcastCli(['slot', 'create', 'killed', '--data-dir', killDir, '--json']);
    assert.equal(createdSlot.code, 0, createdSlot.stderr);
    assert.equal((JSON.parse(createdSlot.stdout) as { slot_name: string }).slot_name, 'killed', 'created through the running server');
    const duplicate = await runWalcastCli(['slot', 'create', 'killed', '--data-dir', killDir]);
    assert.equal(duplicate.code, 1);
    assert.match(duplicate.stderr, /WALCAST_ERR_SLOT_EXISTS/);

    const client = await connect(pgPort, 'kill_replica');
    const stream = await client.startReplication(`START_REPLICATION SLOT killed PHYSICAL ${formatLsn(created.startLsn)}`);
    let received = created.startLsn;
    let confirmed = 0n;
    const confirmations: Lsn[] = [];
    const reading = (async () => {
      for (;;) {
        const message = await stream.read().catch(() => undefined);
        if (message === undefined) return;
        if (message[0] === 0x77) received = message.readBigUInt64BE(1) + BigInt(message.length - 25);
      }
    })();
    const feedback = setInterval(() => {
      // This replica "flushes" everything received, then confirms it.
      confirmed = received;
      confirmations.push(received);
      stream.sendCopyData(standbyReply(received)).catch(() => undefined);
    }, 20);
    const load = primary.pgbench(['-i', '-s', '3', '-q']);
    await waitFor(async () => (confirmed > created.startLsn + 4n * BigInt(SEGMENT_BYTES) ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'replica confirmed WAL' });
    await sleep(1500);
    serve.kill9();
    await serve.exited;
    clearInterval(feedback);
    const maxConfirmed = confirmed;
    await load;
    await reading;
    await client.end().catch(() => undefined);

    // No server runs now (its PID is gone): `walcast slot list` reads the slot file.
    const listed = await runWalcastCli(['slot', 'list', '--data-dir', killDir, '--json']);
    assert.equal(listed.code, 0, listed.stderr);
    const [slot] = JSON.parse(listed.stdout) as Array<{ slot_name: string; restart_lsn: string | null; active: boolean }>;
    assert.equal(slot?.slot_name, 'killed');
    const persisted = parseLsnOrThrow(slot?.restart_lsn ?? 'missing');
    assert.ok(persisted <= maxConfirmed, `persisted ${formatLsn(persisted)} is not ahead of the replica's ${formatLsn(maxConfirmed)}`);
    assert.ok(confirmations.includes(persisted), 'the persisted restart LSN is one the replica confirmed');
    assert.ok(persisted > created.startLsn, 'batched saves ran while the replica confirmed');
    const restarted = await startWalcast({ dataDir: killDir });
    cleanups.push(() => restarted.stop());
    assert.deepEqual(await readSlot(restarted.port, 'killed'), ['physical', formatLsn(persisted), '1']);
    await restarted.stop();
    const dropped = await runWalcastCli(['slot', 'drop', 'killed', '--data-dir', killDir]);
    assert.equal(dropped.code, 0, dropped.stderr);
    const unknown = await runWalcastCli(['slot', 'drop', 'killed', '--data-dir', killDir]);
    assert.match(unknown.stderr, /WALCAST_ERR_SLOT_UNKNOWN/);
    t.diagnostic(`replica confirmed up to ${formatLsn(maxConfirmed)}; slot persisted at ${formatLsn(persisted)}`);
  });
});

/** A standby status update ('r'): written and flushed up to `lsn`, nothing applied, no reply wanted. Built by hand. */
function standbyReply(lsn: Lsn): Buffer {
  const reply = Buffer.alloc(34);
  reply.write('r', 0, 'latin1');
  reply.writeBigUInt64BE(lsn, 1);
  reply.writeBigUInt64BE(lsn, 9);
  reply.writeBigUInt64BE(0n, 17);
  return reply;
}

async function readSlot(port: number, name: string, password?: string): Promise<(string | null)[]> {
  const client = await connect(port, 'slot-reader', password);
  try {
    return (await client.query(`READ_REPLICATION_SLOT ${name}`)).rows[0] ?? [];
  } finally {
    await client.end();
  }
}

/** Every segment in `receivedDir` equals the primary's from `startLsn` up to `endLsn` (the rest is padding). */
async function assertSegmentsMatch(receivedDir: string, startLsn: Lsn, endLsn: Lsn): Promise<number> {
  const names = (await readdir(receivedDir)).filter((name) => /^[0-9A-F]{24}(\.partial)?$/.test(name)).sort();
  let compared = 0;
  for (let segno = startLsn / BigInt(SEGMENT_BYTES); segno <= (endLsn - 1n) / BigInt(SEGMENT_BYTES); segno++) {
    const plain = segmentFileName(1, segno, SEGMENT_BYTES);
    const name = names.find((candidate) => candidate.startsWith(plain));
    assert.ok(name !== undefined, `segment ${plain} is missing; have ${names.join(', ')}`);
    const received = await readFile(join(receivedDir, name));
    const original = await readFile(join(primary.walDir, plain));
    const segmentStart = segno * BigInt(SEGMENT_BYTES);
    const validBytes = endLsn - segmentStart >= BigInt(SEGMENT_BYTES) ? SEGMENT_BYTES : Number(endLsn - segmentStart);
    const difference = firstDifference(received.subarray(0, validBytes), original.subarray(0, validBytes));
    assert.equal(difference, -1, `${name} differs from the primary at offset ${difference}`);
    compared += validBytes;
  }
  return compared;
}

/** `walcast serve` with its HTTP API; ready once the API answers and the server has recorded its state file. */
function spawnSlotServe(dataDirectory: string, port: number, httpPort: number): Promise<ServeProcess> {
  return spawnServe({
    args: ['--data-dir', dataDirectory, '--listen', `127.0.0.1:${port}`, '--http', `127.0.0.1:${httpPort}`, '--log-level', 'info'],
    env: { WALCAST_IO: 'ts' },
    ready: async (serve) => {
      const response = await fetch(`http://127.0.0.1:${httpPort}/v1/status`);
      const state = await readFile(join(dataDirectory, 'walcast.server.json'), 'utf8');
      return response.ok && state.includes(String(serve.child.pid)) ? true : undefined;
    },
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
