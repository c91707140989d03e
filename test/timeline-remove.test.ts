/**
 * Removing a timeline while `walcast serve` runs (docs/timeline-removal.md), on real PostgreSQL 15 WAL imported into
 * four timelines of one tenant: a client streaming the removed timeline and an idle client of it both get FATAL
 * 57P04, its directory is gone with no `.removing-*` left, a client naming it afterwards is told it does not exist,
 * and a client streaming another timeline all along receives WAL byte-identical to the primary's. A `walcast.remove`
 * marker is acted on by the running server's scan, and at start a marked timeline is removed (not served) and a
 * `.removing-*` directory a crash left is swept. The CLI removes through serve's HTTP API and on the files. A
 * timeline following a live primary loses its ingest and the upstream slot walcast created for it.
 */
import assert from 'node:assert/strict';
import { access, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { connect as connectSocket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { formatLsn, type Lsn } from '../src/lsn.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import { importWal } from '../src/storage/wal-import.js';
import { writeRemovalMarker } from '../src/storage/timeline-removal-files.js';
import { connectReplication, ServerError, type ReplicationClient, type ReplicationStream } from '../src/wire/client.js';
import { generateWal, type GeneratedWal } from './fixtures/storage/postgres-wal.js';
import { freePort, makeTempDir, runReceiveWal, startPrimary, type PgCluster } from './support/postgres.js';
import { startupPacket } from './support/raw-client.js';
import { spawnServe, type ServeProcess } from './support/serve-process.js';
import { runWalcastCli, startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const TIMEOUT_MS = 300_000;
const SEGMENT_BYTES = 1024 * 1024;
const TENANT = 'abcdef0123456789abcdef0123456789';
const REMOVED = '11111111111111111111111111111111';
const BYSTANDER = '22222222222222222222222222222222';
const MARKED = '33333333333333333333333333333333';
const SPARE = '44444444444444444444444444444444';
const LINGERING = '55555555555555555555555555555555';
const RECEIVED = 'cccccccccccccccccccccccccccccccc';

const READY_FOR_QUERY = Buffer.from([0x5a, 0, 0, 0, 5, 0x49]);

let wal: GeneratedWal;
let dataDir: string;
let startLsn: Lsn;
let endLsn: Lsn;
let walcast: RunningWalcast | undefined;

before(async () => {
  wal = await generateWal(['CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 30000) g']);
  dataDir = await makeTempDir('walcast-remove');
  for (const timelineId of [REMOVED, BYSTANDER, MARKED, SPARE, LINGERING, RECEIVED]) {
    const imported = await importWal({ dataDir, fromDir: wal.walDir, tenantId: TENANT, timelineId });
    startLsn = imported.startLsn;
    endLsn = imported.endLsn;
  }
}, { timeout: TIMEOUT_MS });

after(async () => {
  await walcast?.stop();
  await wal?.cleanup();
});

/** The primary's own bytes for [from, to), from its segment files. */
async function primaryWal(from: Lsn, to: Lsn): Promise<Buffer> {
  const parts: Buffer[] = [];
  const segmentBytes = BigInt(SEGMENT_BYTES);
  for (let position = from; position < to; ) {
    const segno = position / segmentBytes;
    const until = to < (segno + 1n) * segmentBytes ? to : (segno + 1n) * segmentBytes;
    const file = await readFile(join(wal.walDir, segmentFileName(1, segno, SEGMENT_BYTES)));
    parts.push(file.subarray(Number(position - segno * segmentBytes), Number(until - segno * segmentBytes)));
    position = until;
  }
  return Buffer.concat(parts);
}

function connectTo(port: number, timelineId: string, applicationName: string): Promise<ReplicationClient> {
  return connectReplication({ host: '127.0.0.1', port, user: 'repl', applicationName, timeoutMs: 30_000, options: `-c tenant_id=${TENANT} -c timeline_id=${timelineId}` });
}

/** Reads XLogData until `bytes` WAL bytes arrived (keepalives skipped). */
async function readWal(stream: ReplicationStream, bytes: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let received = 0;
  while (received < bytes) {
    const payload = await stream.read();
    if (payload === undefined) throw new Error(`the stream ended after ${received} bytes`);
    if (payload[0] !== 0x77) continue;
    const data = payload.subarray(25);
    parts.push(data);
    received += data.length;
  }
  return Buffer.concat(parts);
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

describe('timeline removal while serving', { timeout: TIMEOUT_MS }, () => {
  test('streams and idle connections of the removed timeline get FATAL 57P04; its directory goes; another timeline streams on byte-identical', async () => {
    walcast = await startWalcast({ dataDir });
    const server = walcast.server;
    assert.equal(server.timelines.list().length, 6);
    const victim = await connectTo(walcast.port, REMOVED, 'victim');
    const victimStream = await victim.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(startLsn)}`);
    await readWal(victimStream, 64 * 1024);
    const idle = await connectTo(walcast.port, REMOVED, 'idle');
    const bystander = await connectTo(walcast.port, BYSTANDER, 'bystander');
    const bystanderStream = await bystander.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(startLsn)}`);
    const before = await readWal(bystanderStream, 64 * 1024);

    const result = await server.removeTimeline(TENANT, REMOVED, 'test');
    assert.equal(result.connectionsEnded, 2, 'the streaming and the idle connection');

    const end = await victimStream.ended;
    assert.ok(end.how !== 'completed' && end.error instanceof ServerError, `the stream got an ErrorResponse, got ${JSON.stringify(end)}`);
    assert.equal(end.error.sqlState, '57P04');
    assert.equal(end.error.severity, 'FATAL');
    assert.match(end.error.message, new RegExp(`timeline ${TENANT}/${REMOVED} was removed`));
    await assert.rejects(idle.query('IDENTIFY_SYSTEM'), (error: unknown) => error instanceof ServerError && error.sqlState === '57P04');

    assert.equal(await exists(join(dataDir, TENANT, REMOVED)), false, 'the directory is gone');
    assert.deepEqual((await readdir(join(dataDir, TENANT))).filter((name) => name.startsWith('.')), [], 'no .removing-* left');
    assert.equal(server.timelines.get(TENANT, REMOVED), undefined);
    assert.equal(server.timelines.removalError(TENANT, REMOVED), undefined, 'the removal is over');

    const late = await connectTo(walcast.port, REMOVED, 'late');
    try {
      await assert.rejects(late.query('IDENTIFY_SYSTEM'), (error: unknown) => error instanceof ServerError && error.sqlState === '42704' && /not found/.test(error.message));
    } finally {
      await late.end();
    }

    // The bystander never noticed: the rest of its WAL, to the end, equals the primary's.
    const rest = await readWal(bystanderStream, Number(endLsn - startLsn) - before.length);
    const streamed = Buffer.concat([before, rest]).subarray(0, Number(endLsn - startLsn));
    assert.ok(streamed.equals(await primaryWal(startLsn, endLsn)), 'the other timeline streamed byte-identical WAL');
    assert.equal(server.timelines.get(TENANT, BYSTANDER)?.replicas.count(), 1);
    await bystanderStream.sendCopyDone();
    await bystander.end();
    await victim.end().catch(() => undefined);
    await idle.end().catch(() => undefined);
  });

  test('while the removal waits for a connection that does not hang up, a newcomer naming the timeline is refused with FATAL 57P04', async () => {
    assert.ok(walcast !== undefined);
    const server = walcast.server;
    // A raw client that keeps its half of the connection open: its session lingers CLOSE_GRACE_MS after the FATAL.
    const lingering = connectSocket({ host: '127.0.0.1', port: walcast.port, allowHalfOpen: true });
    const received: Buffer[] = [];
    lingering.on('data', (chunk: Buffer) => received.push(chunk));
    lingering.on('error', () => undefined);
    await new Promise<void>((resolve) => lingering.once('connect', resolve));
    lingering.write(startupPacket({ user: 'repl', database: 'replication', replication: 'true', application_name: 'lingering', options: `-c tenant_id=${TENANT} -c timeline_id=${LINGERING}` }));
    await waitFor(async () => (Buffer.concat(received).includes(READY_FOR_QUERY) ? true : undefined), 10_000, { what: 'ReadyForQuery', pollMs: 10 });

    const removal = server.removeTimeline(TENANT, LINGERING, 'test');
    await waitFor(async () => (server.timelines.removalError(TENANT, LINGERING) !== undefined ? true : undefined), 10_000, { what: 'the removal to begin', pollMs: 1 });
    const refused = await connectTo(walcast.port, LINGERING, 'newcomer').then(
      async (client) => {
        await client.end();
        return undefined;
      },
      (error: unknown) => error,
    );
    assert.ok(refused instanceof ServerError, `the newcomer was refused at startup, got ${String(refused)}`);
    assert.equal(refused.sqlState, '57P04');
    assert.equal(refused.severity, 'FATAL');
    assert.equal((await removal).connectionsEnded, 1);
    assert.ok(Buffer.concat(received).includes(Buffer.from('C57P04\0', 'latin1')), 'the lingering client got the FATAL too');
    assert.equal(await exists(join(dataDir, TENANT, LINGERING)), false);
    lingering.destroy();
  });

  test('a real pg_receivewal streaming the removed timeline reports the 57P04 message', async (t) => {
    assert.ok(walcast !== undefined);
    const server = walcast.server;
    const dir = await makeTempDir('receivewal-removed');
    // An end position far ahead: pg_receivewal streams everything and waits for more until the timeline goes.
    const receiving = runReceiveWal({
      port: walcast.port,
      dir,
      endpos: formatLsn(endLsn + 64n * 1024n * 1024n),
      timeoutMs: 60_000,
      extraArgs: ['-d', `options='-c tenant_id=${TENANT} -c timeline_id=${RECEIVED}'`],
    });
    await waitFor(async () => (server.timelines.get(TENANT, RECEIVED)?.replicas.count() === 1 ? true : undefined), 30_000, { what: 'pg_receivewal to stream', pollMs: 20 });
    assert.equal((await server.removeTimeline(TENANT, RECEIVED, 'test')).connectionsEnded, 1);
    const result = await receiving;
    assert.equal(result.timedOut, false);
    assert.notEqual(result.code, 0, result.stderr);
    assert.match(result.stderr, new RegExp(`terminating connection because timeline ${TENANT}/${RECEIVED} was removed`));
    t.diagnostic(`pg_receivewal: ${result.stderr.trim().split('\n').slice(-2).join(' | ')}`);
  });

  test('a walcast.remove marker is acted on by the running server within a scan', async () => {
    assert.ok(walcast !== undefined);
    const server = walcast.server;
    assert.ok(server.timelines.get(TENANT, MARKED) !== undefined);
    await writeRemovalMarker(join(dataDir, TENANT, MARKED), { requestedAt: new Date(), requestedBy: 'test' });
    await waitFor(async () => (!(await exists(join(dataDir, TENANT, MARKED))) && server.timelines.removalError(TENANT, MARKED) === undefined ? true : undefined), 30_000, {
      what: 'the marked timeline to be removed by the scan',
      pollMs: 20,
    });
    assert.equal(server.timelines.get(TENANT, MARKED), undefined);
    assert.ok(server.timelines.get(TENANT, BYSTANDER) !== undefined, 'the others stay');
    await walcast.stop();
    walcast = undefined;
  });

  test('at start a marked timeline is removed instead of served, and a .removing-* directory a crash left is swept', async () => {
    const leftover = join(dataDir, TENANT, `.removing-${'5'.repeat(32)}-1`);
    await mkdir(join(leftover, 'deep'), { recursive: true });
    await writeFile(join(leftover, 'deep', '000000010000000000000001'), Buffer.alloc(1024));
    await writeRemovalMarker(join(dataDir, TENANT, SPARE), { requestedAt: new Date(), requestedBy: 'test' });
    walcast = await startWalcast({ dataDir });
    assert.equal(walcast.server.timelines.get(TENANT, SPARE), undefined);
    assert.equal(await exists(join(dataDir, TENANT, SPARE)), false);
    assert.equal(await exists(leftover), false);
    assert.deepEqual(walcast.server.timelines.list().map((timeline) => timeline.timelineId), [BYSTANDER]);
    await walcast.stop();
    walcast = undefined;
  });
});

describe('walcast timeline remove', { timeout: TIMEOUT_MS }, () => {
  let cliDataDir: string;
  const ids = ['66666666666666666666666666666666', '77777777777777777777777777777777'] as const;

  before(async () => {
    cliDataDir = await makeTempDir('walcast-remove-cli');
    for (const timelineId of ids) await importWal({ dataDir: cliDataDir, fromDir: wal.walDir, tenantId: TENANT, timelineId });
  });

  test('bad ids exit 2, an unknown timeline exits 1, and nothing is touched', async () => {
    const bad = await runWalcastCli(['timeline', 'remove', '--data-dir', cliDataDir, '--tenant-id', TENANT, '--timeline-id', 'xyz']);
    assert.equal(bad.code, 2, bad.stderr);
    const unknown = await runWalcastCli(['timeline', 'remove', '--data-dir', cliDataDir, '--tenant-id', TENANT, '--timeline-id', '8'.repeat(32)]);
    assert.equal(unknown.code, 1, unknown.stderr);
    assert.match(unknown.stderr, /WALCAST_ERR_NO_TIMELINE/);
    assert.deepEqual((await readdir(join(cliDataDir, TENANT))).sort(), [...ids]);
  });

  test('through the HTTP API of a running serve: its stream gets 57P04 and the status API no longer lists it', async () => {
    let serve: ServeProcess | undefined;
    try {
      const port = await freePort();
      const httpPort = await freePort();
      serve = await spawnServe({
        args: ['--data-dir', cliDataDir, '--listen', `127.0.0.1:${port}`, '--http', `127.0.0.1:${httpPort}`, '--log-level', 'info'],
        ready: async (child) => {
          const response = await fetch(`http://127.0.0.1:${httpPort}/v1/status`);
          const state = await readFile(join(cliDataDir, 'walcast.server.json'), 'utf8');
          return response.ok && state.includes(String(child.child.pid)) ? true : undefined;
        },
      });
      const state = { http: `127.0.0.1:${httpPort}` };
      const client = await connectTo(port, ids[0], 'cli-victim');
      const stream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(startLsn)}`);
      await readWal(stream, 64 * 1024);

      const removed = await runWalcastCli(['timeline', 'remove', '--data-dir', cliDataDir, '--tenant-id', TENANT, '--timeline-id', ids[0], '--json']);
      assert.equal(removed.code, 0, removed.stderr);
      const result = JSON.parse(removed.stdout) as Record<string, unknown>;
      assert.deepEqual(result, { tenant_id: TENANT, timeline_id: ids[0], removed: true, connections_ended: 1, via: 'http' });
      const end = await stream.ended;
      assert.ok(end.how !== 'completed' && end.error instanceof ServerError);
      assert.equal(end.error.sqlState, '57P04');
      await client.end().catch(() => undefined);
      assert.equal(await exists(join(cliDataDir, TENANT, ids[0])), false);
      const listed = (await (await fetch(`http://${state.http}/v1/timelines`)).json()) as Array<{ timeline_id: string }>;
      assert.deepEqual(listed.map((entry) => entry.timeline_id), [ids[1]]);
      assert.match(serve.output(), /timeline removed/);
    } finally {
      await serve?.stop();
    }
  });

  test('with no serve running it removes the files itself', async () => {
    const removed = await runWalcastCli(['timeline', 'remove', '--data-dir', cliDataDir, '--tenant-id', TENANT, '--timeline-id', ids[1], '--json']);
    assert.equal(removed.code, 0, removed.stderr);
    assert.deepEqual(JSON.parse(removed.stdout), { tenant_id: TENANT, timeline_id: ids[1], removed: true, via: 'files' });
    assert.deepEqual(await readdir(join(cliDataDir, TENANT)), []);
  });
});

describe('removing a timeline that follows an upstream', { timeout: TIMEOUT_MS }, () => {
  test('its ingest stops and the upstream slot walcast created for it is dropped on the primary', async () => {
    const primary: PgCluster = await startPrimary();
    let running: RunningWalcast | undefined;
    try {
      const followDir = await makeTempDir('walcast-remove-follow');
      running = await startWalcast({ dataDir: followDir });
      const created = await runWalcastCli(['timeline', 'create', '--data-dir', followDir, '--upstream', `host=127.0.0.1 port=${primary.port} user=repl`, '--json']);
      assert.equal(created.code, 0, created.stderr);
      const { tenant_id: tenantId, timeline_id: timelineId, slot } = JSON.parse(created.stdout) as { tenant_id: string; timeline_id: string; slot: string };
      const slotCount = async (): Promise<string> => primary.sql(`SELECT count(*) FROM pg_replication_slots WHERE slot_name = '${slot}'`);
      assert.equal(await slotCount(), '1');
      const server = running.server;
      const timeline = await waitFor(async () => server.timelines.get(tenantId, timelineId), 60_000, { what: 'the new timeline to be opened', pollMs: 20 });
      await waitFor(async () => (timeline.hasWriter() ? true : undefined), 60_000, { what: 'ingest to stream from the primary' });

      await server.removeTimeline(tenantId, timelineId, 'test');
      assert.equal(await slotCount(), '0', 'the upstream slot is gone');
      assert.equal(timeline.hasWriter(), false, 'ingest stopped');
      assert.equal(server.ingest?.followers.length, 0);
      assert.equal(await exists(join(followDir, tenantId, timelineId)), false);
    } finally {
      await running?.stop();
      await primary.stop({ mode: 'immediate' });
    }
  });
});

describe('a crash during a removal', { timeout: TIMEOUT_MS }, () => {
  const crashTimelines = { marker: '88888888888888888888888888888888', rename: '99999999999999999999999999999999', kept: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' } as const;

  test('kill -9 after the marker or after the rename: the next start finishes the removal and the other timeline streams byte-identical', async () => {
    const crashDir = await makeTempDir('walcast-remove-crash');
    for (const timelineId of Object.values(crashTimelines)) await importWal({ dataDir: crashDir, fromDir: wal.walDir, tenantId: TENANT, timelineId });
    for (const [point, timelineId] of [['removal-after-marker', crashTimelines.marker], ['removal-after-rename', crashTimelines.rename]] as const) {
      const httpPort = await freePort();
      const serve = await spawnServe({
        args: ['--data-dir', crashDir, '--listen', `127.0.0.1:${await freePort()}`, '--http', `127.0.0.1:${httpPort}`, '--log-level', 'info'],
        env: { WALCAST_FAILPOINTS_ENABLE: '1', WALCAST_FAILPOINTS: `${point}=exit` },
        ready: async () => ((await fetch(`http://127.0.0.1:${httpPort}/v1/status`)).ok ? true : undefined),
      });
      try {
        const removed = await runWalcastCli(['timeline', 'remove', '--data-dir', crashDir, '--tenant-id', TENANT, '--timeline-id', timelineId, '--json']);
        assert.equal(await serve.exited, 'SIGKILL', `serve died at ${point}`);
        assert.notEqual(removed.code, 0, 'the command saw serve die');
      } finally {
        await serve.stop();
      }
      const left = await readdir(join(crashDir, TENANT));
      if (point === 'removal-after-marker') assert.ok(left.includes(timelineId), 'killed before anything was torn down');
      else assert.ok(left.some((name) => name.startsWith(`.removing-${timelineId}-`)), `killed between rename and delete: ${left.join(', ')}`);
    }

    const restarted = await startWalcast({ dataDir: crashDir });
    try {
      assert.deepEqual(await readdir(join(crashDir, TENANT)), [crashTimelines.kept], 'both removals finished at start, nothing left');
      assert.deepEqual(restarted.server.timelines.list().map((timeline) => timeline.timelineId), [crashTimelines.kept]);
      const client = await connectTo(restarted.port, crashTimelines.kept, 'after-crash');
      const stream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(startLsn)}`);
      const streamed = (await readWal(stream, Number(endLsn - startLsn))).subarray(0, Number(endLsn - startLsn));
      assert.ok(streamed.equals(await primaryWal(startLsn, endLsn)), 'the kept timeline streams byte-identical WAL');
      await stream.sendCopyDone();
      await client.end();
    } finally {
      await restarted.stop();
    }
  });
});
