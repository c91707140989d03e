/**
 * The replication protocol as walcast serves it, command by command and stream ending by stream ending, against WAL
 * made by a real PostgreSQL 15 (1 MiB segments so several segment boundaries are crossed) and imported. Every byte
 * streamed is compared with the primary's own segment files. Runs once per I/O backend.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { formatLsn, type Lsn } from '../src/lsn.js';
import { importWal } from '../src/storage/wal-import.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import { connectReplication, ServerError, type ReplicationClient, type ReplicationStream } from '../src/wire/client.js';
import { makeTempDir, startPrimary, type PgCluster } from './support/postgres.js';
import { sendRawAndCollect, startupPacket, typedMessage } from './support/raw-client.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';

const SEGMENT_BYTES = 1024 * 1024;
const PAGE_BYTES = 8192;
const MAX_SEND_BYTES = 128 * 1024;
const TIMEOUT_MS = 120_000;

let primary: PgCluster;
let walcast: RunningWalcast;
let startLsn: Lsn;
let endLsn: Lsn;
let systemId: string;

before(async () => {
  primary = await startPrimary({ walSegmentMb: 1 });
  systemId = await primary.sql('SELECT system_identifier FROM pg_control_system()');
  await primary.sql('CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 60000) g');
  await primary.stop();
  const dataDir = await makeTempDir('walcast-protocol');
  const imported = await importWal({ dataDir, fromDir: primary.walDir });
  startLsn = imported.startLsn;
  endLsn = imported.endLsn;
  assert.ok(endLsn - startLsn > 3n * BigInt(SEGMENT_BYTES), 'the WAL crosses several segment boundaries');
  walcast = await startWalcast({ dataDir });
}, { timeout: TIMEOUT_MS });

after(async () => {
  await walcast?.stop();
});

function connect(applicationName = 'protocol-test'): Promise<ReplicationClient> {
  return connectReplication({ host: '127.0.0.1', port: walcast.port, user: 'repl', applicationName, timeoutMs: 10_000 });
}

/** The primary's WAL bytes for [from, to), read from its segment files. */
async function primaryWal(from: Lsn, to: Lsn): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let position = from; position < to; ) {
    const segno = position / BigInt(SEGMENT_BYTES);
    const segmentEnd = (segno + 1n) * BigInt(SEGMENT_BYTES);
    const until = to < segmentEnd ? to : segmentEnd;
    const file = await readFile(join(primary.walDir, segmentFileName(1, segno, SEGMENT_BYTES)));
    parts.push(file.subarray(Number(position % BigInt(SEGMENT_BYTES)), Number(until - segno * BigInt(SEGMENT_BYTES))));
    position = until;
  }
  return Buffer.concat(parts);
}

interface Received {
  readonly wal: Buffer;
  readonly chunks: { start: Lsn; end: Lsn; walEnd: Lsn }[];
  readonly keepalives: { walEnd: Lsn; replyRequested: boolean }[];
}

/** Reads the stream until `until` is received (and `extra` more messages), collecting WAL and keepalives. */
async function receive(stream: ReplicationStream, until: Lsn, options: { keepalivesWanted?: number } = {}): Promise<Received> {
  const parts: Buffer[] = [];
  const chunks: Received['chunks'] = [];
  const keepalives: Received['keepalives'] = [];
  let position: Lsn | undefined;
  const deadline = Date.now() + TIMEOUT_MS;
  while (Date.now() < deadline) {
    if ((position ?? 0n) >= until && keepalives.length >= (options.keepalivesWanted ?? 0)) break;
    const payload = await stream.read();
    if (payload === undefined) break;
    if (payload[0] === 0x77) {
      const start = payload.readBigUInt64BE(1);
      const bytes = payload.length - 25;
      assert.ok(position === undefined || start === position, `chunk at ${formatLsn(start)} follows ${position === undefined ? '-' : formatLsn(position)}`);
      chunks.push({ start, end: start + BigInt(bytes), walEnd: payload.readBigUInt64BE(9) });
      parts.push(payload.subarray(25));
      position = start + BigInt(bytes);
    } else if (payload[0] === 0x6b) {
      assert.equal(payload.length, 18, 'a keepalive is exactly 17 bytes after its tag');
      keepalives.push({ walEnd: payload.readBigUInt64BE(1), replyRequested: payload[17] === 1 });
    } else {
      assert.fail(`unexpected stream message 0x${(payload[0] ?? 0).toString(16)}`);
    }
  }
  return { wal: Buffer.concat(parts), chunks, keepalives };
}

function standbyReply(position: Lsn, replyRequested: boolean): Buffer {
  const message = Buffer.alloc(34);
  message.write('r', 0, 'latin1');
  message.writeBigUInt64BE(position, 1);
  message.writeBigUInt64BE(position, 9);
  message.writeBigUInt64BE(position, 17);
  message.writeBigInt64BE(0n, 25);
  message[33] = replyRequested ? 1 : 0;
  return message;
}

function pageserverFeedback(remoteConsistentLsn: Lsn): Buffer {
  const key = (name: string, value: bigint): Buffer => {
    const bytes = Buffer.alloc(name.length + 1 + 4 + 8);
    bytes.write(name, 0, 'latin1');
    bytes.writeInt32BE(8, name.length + 1);
    bytes.writeBigUInt64BE(value, name.length + 5);
    return bytes;
  };
  const payload = Buffer.concat([Buffer.from([3]), key('last_received_lsn', remoteConsistentLsn), key('disk_consistent_lsn', remoteConsistentLsn), key('remote_consistent_lsn', remoteConsistentLsn)]);
  const header = Buffer.alloc(9);
  header.write('z', 0, 'latin1');
  header.writeBigUInt64BE(BigInt(payload.length), 1);
  return Buffer.concat([header, payload]);
}

describe('replication commands', { timeout: TIMEOUT_MS }, () => {
  test('IDENTIFY_SYSTEM answers with the primary system id, timeline 1, the end LSN and a NULL dbname', async () => {
    const client = await connect();
    const result = await client.query('IDENTIFY_SYSTEM');
    assert.deepEqual(result.columns, ['systemid', 'timeline', 'xlogpos', 'dbname']);
    assert.deepEqual(result.rows, [[systemId, '1', formatLsn(endLsn), null]]);
    assert.equal(result.tag, 'IDENTIFY_SYSTEM');
    assert.equal(client.parameters.get('integer_datetimes'), 'on');
    assert.match(client.parameters.get('server_version') ?? '', /^15\./);
    await client.end();
  });

  test('SHOW, READ_REPLICATION_SLOT, TIMELINE_STATUS and TIMELINE_HISTORY have PostgreSQL result shapes', async () => {
    const client = await connect();
    assert.deepEqual((await client.query('SHOW wal_segment_size')).rows, [['1MB']]);
    assert.deepEqual((await client.query('SHOW data_directory_mode')).rows, [['0700']]);
    const slot = await client.query('READ_REPLICATION_SLOT some_slot');
    assert.deepEqual(slot.columns, ['slot_type', 'restart_lsn', 'restart_tli']);
    assert.deepEqual(slot.rows, [[null, null, null]]);
    const status = await client.query('TIMELINE_STATUS');
    assert.deepEqual(status.rows, [[formatLsn(endLsn), formatLsn(endLsn)]]);
    await assert.rejects(client.query('TIMELINE_HISTORY 1'), (error: ServerError) => error.sqlState === '58P01');
    assert.deepEqual((await client.query('')).rows, [], 'an empty query gets EmptyQueryResponse and ReadyForQuery');
    await assert.rejects(client.query('SHOW shared_buffers'), (error: ServerError) => error.sqlState === '42704');
    await assert.rejects(client.query('SELECT 1'), (error: ServerError) => error.sqlState === '0A000');
    await assert.rejects(client.query('BASE_BACKUP'), (error: ServerError) => error.sqlState === '0A000');
    await assert.rejects(client.query('START_REPLICATION PHYSICAL banana'), (error: ServerError) => error.sqlState === '42601');
    await assert.rejects(client.query('TIMELINE_HISTORY 0'), (error: ServerError) => error.sqlState === '42601');
    await assert.rejects(client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(startLsn)} TIMELINE 2`), (error: ServerError) => error.sqlState === '22023');
    assert.deepEqual((await client.query('IDENTIFY_SYSTEM')).rows[0]?.[1], '1', 'the connection survives every error above');
    await client.end();
  });

  test('a timeline named in options must exist; malformed ids are refused at startup', async () => {
    const missing = await connectReplication({ host: '127.0.0.1', port: walcast.port, user: 'repl', options: `-c tenant_id=${'0'.repeat(32)} -c timeline_id=${'1'.repeat(32)}`, timeoutMs: 10_000 });
    await assert.rejects(missing.query('IDENTIFY_SYSTEM'), (error: ServerError) => error.sqlState === '42704');
    await missing.end();
    await assert.rejects(
      connectReplication({ host: '127.0.0.1', port: walcast.port, user: 'repl', options: '-c tenant_id=xyz -c timeline_id=abc', timeoutMs: 10_000 }),
      (error: ServerError) => error.sqlState === '22023',
    );
  });
});

describe('streaming', { timeout: TIMEOUT_MS }, () => {
  test('streams byte-identical WAL from an unaligned LSN across segments, in page-cut chunks of at most 128 KiB, then keeps alive', async () => {
    const from = startLsn + BigInt(SEGMENT_BYTES) - 12_345n;
    const client = await connect();
    const stream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(from)} TIMELINE 1`);
    const received = await receive(stream, endLsn, { keepalivesWanted: 1 });
    assert.equal(received.chunks[0]?.start, from, 'the first byte is exactly the requested LSN');
    assert.equal(received.wal.length, Number(endLsn - from), 'nothing past the validated end');
    assert.ok(received.wal.equals(await primaryWal(from, endLsn)), 'the bytes equal the primary segments');
    for (const chunk of received.chunks) {
      assert.ok(chunk.end - chunk.start <= BigInt(MAX_SEND_BYTES));
      assert.equal(chunk.walEnd, endLsn, 'walEnd is the current end');
      const crossesSegment = chunk.start / BigInt(SEGMENT_BYTES) !== (chunk.end - 1n) / BigInt(SEGMENT_BYTES);
      assert.ok(!crossesSegment, 'no chunk crosses a segment boundary');
      const cutAtPage = chunk.end % BigInt(PAGE_BYTES) === 0n;
      assert.ok(cutAtPage || chunk.end === endLsn, `chunk ending ${formatLsn(chunk.end)} is cut at a page boundary or the end`);
    }
    assert.deepEqual(received.keepalives[0], { walEnd: endLsn, replyRequested: true }, 'idle keepalives ask for a reply');
    // A status update that asks for a reply gets a keepalive at once, not asking back.
    await stream.sendCopyData(standbyReply(endLsn, true));
    const answer = await receive(stream, 0n, { keepalivesWanted: 1 });
    assert.equal(answer.keepalives.length, 1);
    const end = await stream.sendCopyDone();
    assert.equal(end.how, 'completed');
    assert.ok(end.how === 'completed' && end.serverCopyDone);
    assert.deepEqual(end.how === 'completed' ? end.tags : [], ['START_STREAMING', 'START_REPLICATION']);
    assert.equal((await client.query('TIMELINE_STATUS')).rows.length, 1, 'the connection is usable after CopyDone');
    await client.end();
  });

  test('a pageserver that reports remote-consistent at the commit LSN is ended with SQLSTATE 00000', async () => {
    const client = await connect('pageserver-1');
    const stream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(endLsn - 100n)}`);
    await receive(stream, endLsn);
    await stream.sendCopyData(pageserverFeedback(endLsn));
    let end;
    for (;;) {
      const payload = await stream.read();
      if (payload === undefined) break;
    }
    end = await stream.ended;
    assert.ok(end.how === 'closed' || end.how === 'error', `ended ${end.how}`);
    const error = end.error as ServerError;
    assert.equal(error.sqlState, '00000');
    assert.match(error.message, /^ending streaming to pageserver-1 at [0-9A-F]+\/[0-9A-F]+, receiver is caughtup and there is no computes$/);
    await client.end().catch(() => undefined);
  });

  test("a term (recovery) stream sends everything up to the flush LSN and ends there with 00000", async () => {
    const client = await connect();
    const from = endLsn - 300_000n;
    const stream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(from)} (term='7')`);
    const received = await receive(stream, endLsn + 1n);
    assert.ok(received.wal.equals(await primaryWal(from, endLsn)));
    const end = await stream.ended;
    assert.equal((end as { error?: ServerError }).error?.sqlState, '00000');
    await client.end().catch(() => undefined);
  });

  test('starts out of range are refused after CopyBothResponse and the connection stays usable', async () => {
    const client = await connect();
    await assert.rejects(client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(endLsn + 1n)}`), (error: ServerError) =>
      error.sqlState === 'XX000' && error.message === `requested starting point ${formatLsn(endLsn + 1n)} is ahead of the WAL flush position of this server ${formatLsn(endLsn)}`,
    );
    await assert.rejects(client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(startLsn - 1n)}`), (error: ServerError) =>
      error.sqlState === '58P01' && error.message === `requested WAL segment ${segmentFileName(1, (startLsn - 1n) / BigInt(SEGMENT_BYTES), SEGMENT_BYTES)} has already been removed`,
    );
    // Starting exactly at the end is legal: nothing to send yet, keepalives only.
    const stream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(endLsn)}`);
    const idle = await receive(stream, 0n, { keepalivesWanted: 1 });
    assert.equal(idle.wal.length, 0);
    assert.equal((await stream.sendCopyDone()).how, 'completed');
    await client.end();
  });

  test('malformed feedback ends the stream with FATAL 08P01 and closes; others keep streaming', async () => {
    const bystander = await connect('bystander');
    const bystanderStream = await bystander.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(startLsn)}`);
    const client = await connect();
    const stream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(endLsn)}`);
    await stream.sendCopyData(Buffer.from('r-too-short'));
    const end = await stream.ended;
    assert.equal(end.how, 'closed');
    assert.equal((end.error as ServerError).sqlState, '08P01');
    const received = await receive(bystanderStream, endLsn);
    assert.ok(received.wal.equals(await primaryWal(startLsn, endLsn)), 'the bystander got every byte');
    await bystanderStream.sendCopyDone();
    await bystander.end();
  });

  test('an oversized or garbage message gets 08P01 and a close before it is buffered', async () => {
    // A typed message claiming 1 GiB: the server must refuse from the header alone.
    const startup = startupPacket({ user: 'repl', database: 'replication', replication: 'true' });
    const huge = Buffer.alloc(5);
    huge.write('Q', 0, 'latin1');
    huge.writeInt32BE(0x4000_0000, 1);
    const collected = await sendRawAndCollect(walcast.port, Buffer.concat([startup, huge]));
    assert.ok(collected.closed, 'the server closed the connection');
    assert.ok(collected.received.includes(Buffer.from('C08P01\0', 'latin1')), 'with SQLSTATE 08P01');
    const shortLength = await sendRawAndCollect(walcast.port, Buffer.concat([startup, typedMessage('Q', Buffer.alloc(0)).subarray(0, 1), Buffer.from([0, 0, 0, 2])]));
    assert.ok(shortLength.closed);
    const badStartup = await sendRawAndCollect(walcast.port, Buffer.from([0, 0, 0, 8, 0, 2, 0, 0]));
    assert.ok(badStartup.closed, 'an unknown protocol version is refused');
    const client = await connect();
    assert.equal((await client.query('IDENTIFY_SYSTEM')).rows.length, 1, 'the server keeps serving');
    await client.end();
  });
});
