/**
 * Loopback tests of PgConnection + acceptStartup (server side) and client.ts, against each other and against
 * raw sockets that send hand-built bytes. A tiny in-test server answers a few commands the way walcast's
 * session does, so that the wire layer is tested without the replication layer.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { WalcastError, isWalcastError } from '../errors.js';
import { commandComplete, copyBothResponse, copyData, copyDone, errorResponse, readyForQuery } from './backend-serializer.js';
import { ServerError, connectReplication } from './client.js';
import { MAX_QUEUED_MESSAGES, PAUSE_QUEUED_MESSAGES, PgConnection } from './connection.js';
import type { FrontendMessage } from './messages.js';
import { simpleResultSet } from './result-set.js';
import { createScramVerifier } from './scram.js';
import { acceptStartup, isPhysicalReplication, parseOptions, replicationMode, type AuthConfig, type StartupResult } from './startup.js';

const TIMEOUT_MS = 5000;
const CHUNK_BYTES = 128 * 1024;

interface TestServer {
  readonly port: number;
  readonly startups: StartupResult[];
  readonly startupErrors: unknown[];
  readonly feedback: Buffer[];
  readonly server: Server;
}

async function startServer(auth: AuthConfig, startupTimeoutMs = TIMEOUT_MS): Promise<TestServer> {
  const state = { startups: [] as StartupResult[], startupErrors: [] as unknown[], feedback: [] as Buffer[] };
  const server = createServer((socket) => {
    void serve(new PgConnection(socket), auth, startupTimeoutMs, state);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { ...state, server, port: (server.address() as AddressInfo).port };
}

async function serve(conn: PgConnection, auth: AuthConfig, startupTimeoutMs: number, state: Pick<TestServer, 'startups' | 'startupErrors' | 'feedback'>): Promise<void> {
  try {
    const validate = (result: StartupResult): void => {
      if (result.options.has('refuse')) throw new WalcastError('WALCAST_ERR_NO_TIMELINE', `timeline ${result.options.get('refuse')} not found`);
    };
    state.startups.push(await acceptStartup(conn, { auth, serverVersion: '15.18 (walcast test)', backendPid: 4242, secretKey: 99, startupTimeoutMs, validate }));
  } catch (error) {
    state.startupErrors.push(error);
    return;
  }
  while (!conn.isClosed()) {
    let message: FrontendMessage;
    try {
      message = await conn.readMessage(TIMEOUT_MS);
    } catch (error) {
      await conn.close(isWalcastError(error) ? { sqlState: error.sqlState, message: error.message } : undefined);
      return;
    }
    if (message.type === 'terminate') return void (await conn.close());
    if (message.type === 'query') await answer(conn, message.sql, state.feedback);
  }
}

async function answer(conn: PgConnection, sql: string, feedback: Buffer[]): Promise<void> {
  const [command, argument] = sql.split(' ');
  if (command === 'IDENTIFY_SYSTEM') {
    await conn.write([...simpleResultSet([{ name: 'systemid', type: 'text' }, { name: 'dbname', type: 'text' }], [['7', null]], 'IDENTIFY_SYSTEM'), readyForQuery('I')]);
  } else if (command === 'START_REPLICATION' && argument === 'AHEAD') {
    await conn.write(copyBothResponse());
    await conn.write([errorResponse({ severity: 'ERROR', sqlState: 'XX000', message: 'requested starting point is ahead of the WAL flush position' }), readyForQuery('I')]);
  } else if (command === 'START_REPLICATION') {
    await stream(conn, Number(argument), feedback);
  } else {
    await conn.write([errorResponse({ severity: 'ERROR', sqlState: '0A000', message: 'cannot execute SQL commands in WAL sender for physical replication' }), readyForQuery('I')]);
  }
}

/** Sends `totalBytes` in numbered chunks, then ends like walsender.c after the client's CopyDone. */
async function stream(conn: PgConnection, totalBytes: number, feedback: Buffer[]): Promise<void> {
  let clientDone!: () => void;
  const copyDoneSeen = new Promise<void>((resolve) => (clientDone = resolve));
  await conn.write(copyBothResponse());
  conn.setMessageHandler((message) => {
    if (message.type === 'copyData') feedback.push(Buffer.from(message.payload));
    if (message.type === 'copyDone') clientDone();
  });
  for (let sent = 0, index = 0; sent < totalBytes; index++) {
    const payload = Buffer.alloc(Math.min(CHUNK_BYTES, totalBytes - sent), index & 0xff);
    payload.writeUInt32BE(index, 0);
    await conn.write(copyData(payload));
    sent += payload.length;
  }
  await conn.write(copyDone());
  await copyDoneSeen;
  conn.setMessageHandler(undefined);
  await conn.write([commandComplete('START_STREAMING'), commandComplete('START_REPLICATION'), readyForQuery('I')]);
}

/** Writes raw bytes, then collects everything the server sends until it closes. */
async function rawExchange(port: number, steps: Array<Buffer | 'waitN'>): Promise<{ received: Buffer; closed: boolean }> {
  const socket = connect({ port, host: '127.0.0.1' });
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  await once(socket, 'connect');
  for (const step of steps) {
    if (step === 'waitN') await waitFor(() => Buffer.concat(chunks).length >= 1);
    else socket.write(step);
  }
  const closed = await Promise.race([once(socket, 'close').then(() => true), delay(TIMEOUT_MS).then(() => false)]);
  socket.destroy();
  return { received: Buffer.concat(chunks), closed };
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

async function waitFor(condition: () => boolean): Promise<void> {
  for (let attempt = 0; attempt < 500 && !condition(); attempt++) await delay(10);
  assert.ok(condition());
}

function int32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeInt32BE(value);
  return buffer;
}

function startupPacket(version: number, parameters: Record<string, string>): Buffer {
  const body = Buffer.concat([int32(version), Buffer.from(Object.entries(parameters).flatMap(([k, v]) => [k, v]).join('\0') + '\0\0', 'utf8')]);
  return Buffer.concat([int32(body.length + 4), body]);
}

/** Splits raw server output into [tag, body] pairs. */
function messages(received: Buffer): Array<[string, Buffer]> {
  const result: Array<[string, Buffer]> = [];
  for (let offset = 0; offset < received.length; ) {
    const length = received.readInt32BE(offset + 1);
    result.push([String.fromCharCode(received[offset]!), received.subarray(offset + 5, offset + 1 + length)]);
    offset += 1 + length;
  }
  return result;
}

function errorCode(body: Buffer): string | undefined {
  return /C([0-9A-Z]{5})\0/.exec(body.toString('latin1'))?.[1];
}

describe('startup over loopback (raw client bytes)', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ method: 'trust' });
  });
  after(() => server.server.close());

  test('SSLRequest is answered with N, then startup completes with the PostgreSQL 15 parameter set', async () => {
    const ssl = Buffer.concat([int32(8), int32(80877103)]);
    const { received } = await rawExchange(server.port, [
      ssl,
      'waitN',
      startupPacket(196608, { user: 'repl', replication: 'true', application_name: 'stby1', options: '-c tenant_id=t1 --timeline-id=x1' }),
      Buffer.from([0x58, 0, 0, 0, 4]),
    ]);
    assert.equal(received.subarray(0, 1).toString('latin1'), 'N');
    const list = messages(received.subarray(1));
    assert.deepEqual(list.map(([tag]) => tag).join(''), 'R' + 'S'.repeat(13) + 'KZ');
    const parameters = new Map(list.filter(([tag]) => tag === 'S').map(([, body]) => body.toString('utf8').split('\0').slice(0, 2) as [string, string]));
    assert.equal(parameters.get('integer_datetimes'), 'on');
    assert.equal(parameters.get('server_version'), '15.18 (walcast test)');
    assert.equal(parameters.get('application_name'), 'stby1');
    const startup = server.startups.at(-1)!;
    assert.equal(startup.user, 'repl');
    assert.equal(startup.options.get('tenant_id'), 't1');
    assert.equal(startup.options.get('timeline_id'), 'x1');
  });

  test('a third encryption request is a protocol violation', async () => {
    const ssl = Buffer.concat([int32(8), int32(80877103)]);
    const { received, closed } = await rawExchange(server.port, [ssl, 'waitN', ssl, ssl]);
    assert.ok(closed);
    assert.equal(received.subarray(0, 2).toString('latin1'), 'NN');
    assert.equal(errorCode(messages(received.subarray(2))[0]![1]), '08P01');
  });

  test('the validate hook refuses after authentication, before ReadyForQuery', async () => {
    const { received, closed } = await rawExchange(server.port, [startupPacket(196608, { user: 'repl', options: '-c refuse=x' })]);
    const list = messages(received);
    assert.deepEqual(list.map(([tag]) => tag), ['R', 'E']);
    assert.equal(errorCode(list[1]![1]), '42704');
    assert.ok(closed);
  });

  test('protocol 2.0 is refused with FATAL 0A000', async () => {
    const { received, closed } = await rawExchange(server.port, [startupPacket(131072, { user: 'repl' })]);
    const list = messages(received);
    assert.equal(list.length, 1);
    assert.equal(list[0]![0], 'E');
    assert.match(list[0]![1].toString('latin1'), /SFATAL/);
    assert.equal(errorCode(list[0]![1]), '0A000');
    assert.ok(closed);
  });

  test('a startup packet without user is refused with FATAL 28000', async () => {
    const { received, closed } = await rawExchange(server.port, [startupPacket(196608, { database: 'replication' })]);
    assert.equal(errorCode(messages(received)[0]![1]), '28000');
    assert.ok(closed);
  });

  test('garbage, an oversized startup packet and a CancelRequest close the connection', async () => {
    const garbage = await rawExchange(server.port, [Buffer.from('GET / HTTP/1.1\r\n\r\n')]);
    assert.ok(garbage.closed);
    assert.equal(errorCode(messages(garbage.received)[0]![1]), '08P01');
    const cancel = await rawExchange(server.port, [Buffer.concat([int32(16), int32(80877102), int32(1), int32(2)])]);
    assert.ok(cancel.closed);
    assert.equal(cancel.received.length, 0, 'a cancel request gets no reply');
  });

  test('an oversized typed message after startup closes with 08P01 before it is buffered', async () => {
    const header = Buffer.from([0x51, 0, 0, 0, 0]);
    header.writeInt32BE(64 * 1024 * 1024, 1);
    const { received, closed } = await rawExchange(server.port, [startupPacket(196608, { user: 'repl' }), header]);
    const list = messages(received);
    assert.equal(list.at(-1)![0], 'E');
    assert.equal(errorCode(list.at(-1)![1]), '08P01');
    assert.ok(closed);
  });

  test('a client that never finishes startup is closed after the startup timeout', async () => {
    const slow = await startServer({ method: 'trust' }, 50);
    try {
      const { received, closed } = await rawExchange(slow.port, [Buffer.from([0, 0])]);
      assert.ok(closed);
      assert.equal(errorCode(messages(received)[0]![1]), '08P01');
      await waitFor(() => isWalcastError(slow.startupErrors[0], 'WALCAST_ERR_STARTUP_TIMEOUT'));
    } finally {
      slow.server.close();
    }
  });
});

describe('client.ts against the in-test server', () => {
  let trust: TestServer;
  let scram: TestServer;
  before(async () => {
    trust = await startServer({ method: 'trust' });
    scram = await startServer({ method: 'scram-sha-256', verifier: createScramVerifier('s3cret-pw') });
  });
  after(() => {
    trust.server.close();
    scram.server.close();
  });

  test('SCRAM with the right password; queries; errors keep the connection usable', async () => {
    const client = await connectReplication({ host: '127.0.0.1', port: scram.port, user: 'repl', password: 's3cret-pw', timeoutMs: TIMEOUT_MS });
    assert.equal(client.backendPid, 4242);
    assert.equal(client.parameters.get('integer_datetimes'), 'on');
    assert.deepEqual(await client.query('IDENTIFY_SYSTEM'), { columns: ['systemid', 'dbname'], rows: [['7', null]], tag: 'IDENTIFY_SYSTEM' });
    await assert.rejects(client.query('SELECT 1'), (error: ServerError) => error.sqlState === '0A000' && error.severity === 'ERROR');
    await assert.rejects(client.startReplication('START_REPLICATION AHEAD'), (error: ServerError) => error.sqlState === 'XX000' && /ahead/.test(error.message));
    assert.equal((await client.query('IDENTIFY_SYSTEM')).rows.length, 1);
    await client.end();
  });

  test('SCRAM with a wrong password is refused with FATAL 28P01', async () => {
    await assert.rejects(connectReplication({ host: '127.0.0.1', port: scram.port, user: 'repl', password: 'wrong', timeoutMs: TIMEOUT_MS }), (error: ServerError) =>
      error.sqlState === '28P01' && error.message === 'password authentication failed for user "repl"' && error.severity === 'FATAL',
    );
    await waitFor(() => scram.startupErrors.some((error) => isWalcastError(error, 'WALCAST_ERR_AUTH_FAILED')));
  });

  test('SCRAM without a password fails on the client side', async () => {
    await assert.rejects(connectReplication({ host: '127.0.0.1', port: scram.port, user: 'repl', timeoutMs: TIMEOUT_MS }), /password/);
  });

  test('a 48 MiB stream arrives intact through a slow consumer, then ends with CopyDone, C, C, Z', async () => {
    const totalBytes = 48 * 1024 * 1024 + 12345;
    const client = await connectReplication({ host: '127.0.0.1', port: trust.port, user: 'repl', timeoutMs: TIMEOUT_MS });
    const replication = await client.startReplication(`START_REPLICATION ${totalBytes}`);
    await replication.sendCopyData(Buffer.from('r-status'));
    let received = 0;
    let index = 0;
    for await (const payload of replication) {
      assert.equal(payload.readUInt32BE(0), index, 'payloads arrive in order');
      assert.equal(payload[payload.length - 1], index & 0xff);
      received += payload.length;
      // Lag behind now and then, so that the client's buffer fills and the socket pauses.
      if (index++ % 64 === 0) await delay(20);
    }
    assert.equal(received, totalBytes);
    const end = await replication.sendCopyDone();
    assert.equal(end.how, 'completed');
    assert.ok(end.how === 'completed' && end.serverCopyDone);
    assert.deepEqual(end.how === 'completed' ? end.tags : [], ['START_STREAMING', 'START_REPLICATION']);
    assert.deepEqual(trust.feedback.map(String), ['r-status'], 'CopyData from the client reached the message handler');
    assert.equal((await client.query('IDENTIFY_SYSTEM')).tag, 'IDENTIFY_SYSTEM', 'usable after the stream');
    await client.end();
  });
});

describe('client.ts password methods against a hand-written server', () => {
  /** Serves one connection: sends `request` after the startup packet, captures the 'p' reply, then R(0) and Z. */
  async function passwordExchange(request: Buffer, password: string | undefined): Promise<{ reply: string | undefined; error: unknown }> {
    let reply: string | undefined;
    const server = createServer((socket) => {
      let buffered = Buffer.alloc(0);
      let sentRequest = false;
      socket.on('data', (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk]);
        if (!sentRequest && buffered.length >= 4 && buffered.length >= buffered.readInt32BE(0)) {
          buffered = buffered.subarray(buffered.readInt32BE(0));
          sentRequest = true;
          socket.write(request);
        }
        if (sentRequest && buffered.length >= 5 && buffered.length >= 1 + buffered.readInt32BE(1)) {
          reply = buffered.subarray(5, 1 + buffered.readInt32BE(1)).toString('latin1');
          socket.write(Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0, 0x5a, 0, 0, 0, 5, 0x49]));
        }
      });
      socket.on('error', () => undefined);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    try {
      const client = await connectReplication({ host: '127.0.0.1', port, user: 'alice', password, timeoutMs: TIMEOUT_MS });
      client['socket'].destroy();
      return { reply, error: undefined };
    } catch (error) {
      return { reply, error };
    } finally {
      server.close();
    }
  }

  test('cleartext sends the password NUL-terminated', async () => {
    const { reply, error } = await passwordExchange(Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 3]), 'pw');
    assert.equal(error, undefined);
    assert.equal(reply, 'pw\0');
  });

  test('md5 sends "md5" + md5(md5(password + user) + salt)', async () => {
    const salt = Buffer.from([1, 2, 3, 250]);
    const { reply, error } = await passwordExchange(Buffer.concat([Buffer.from([0x52, 0, 0, 0, 12, 0, 0, 0, 5]), salt]), 'pw');
    assert.equal(error, undefined);
    const inner = createHash('md5').update('pwalice').digest('hex');
    const outer = createHash('md5').update(Buffer.concat([Buffer.from(inner), salt])).digest('hex');
    assert.equal(reply, `md5${outer}\0`);
  });

  test('a FATAL ErrorResponse while idle becomes the error of the next operation', async () => {
    const fatal = Buffer.from('SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0', 'latin1');
    const header = Buffer.from([0x45, 0, 0, 0, 0]);
    header.writeInt32BE(fatal.length + 4, 1);
    const server = createServer((socket) => {
      socket.once('data', () => {
        socket.write(Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0, 0x5a, 0, 0, 0, 5, 0x49]));
        setTimeout(() => socket.end(Buffer.concat([header, fatal])), 20);
      });
      socket.on('error', () => undefined);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const client = await connectReplication({ host: '127.0.0.1', port: (server.address() as AddressInfo).port, user: 'u', timeoutMs: TIMEOUT_MS });
    await client.closed;
    await assert.rejects(client.query('IDENTIFY_SYSTEM'), (error: ServerError) => error.sqlState === '57P01');
    server.close();
  });

  test('an unsupported authentication request fails the connect', async () => {
    const { error } = await passwordExchange(Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 7]), 'pw');
    assert.match(String(error), /unsupported authentication request 7/);
  });
});

describe('PgConnection directly', () => {
  async function pair(): Promise<{ conn: PgConnection; peer: Socket; close: () => void }> {
    let closeServer = (): void => undefined;
    const accepted = new Promise<Socket>((resolve) => {
      const server = createServer(resolve);
      server.listen(0, '127.0.0.1', () => {
        const peer = connect({ port: (server.address() as AddressInfo).port, host: '127.0.0.1' });
        peerReady(peer);
      });
      closeServer = () => server.close();
    });
    let peerReady!: (peer: Socket) => void;
    const peerPromise = new Promise<Socket>((resolve) => (peerReady = resolve));
    const socket = await accepted;
    const peer = await peerPromise;
    return { conn: new PgConnection(socket), peer, close: () => closeServer() };
  }

  const startup = startupPacket(196608, { user: 'u' });
  const query = (sql: string): Buffer => Buffer.concat([Buffer.from('Q'), int32(sql.length + 5), Buffer.from(sql + '\0')]);

  test('queues messages, hands them to a handler while one is set, and reports disconnects', async () => {
    const { conn, peer, close } = await pair();
    peer.write(Buffer.concat([startup, query('A'), query('B')]));
    assert.equal((await conn.readStartupPacket(TIMEOUT_MS)).type, 'startup');
    assert.equal(conn.remoteAddress.startsWith('127.0.0.1:'), true);
    await waitFor(() => true);
    const first = await conn.readMessage(TIMEOUT_MS);
    assert.deepEqual(first, { type: 'query', sql: 'A' });
    const handled: FrontendMessage[] = [];
    conn.setMessageHandler((message) => handled.push(message));
    assert.deepEqual(handled, [{ type: 'query', sql: 'B' }], 'queued messages go to the new handler first');
    peer.write(query('C'));
    await waitFor(() => handled.length === 2);
    conn.setMessageHandler(undefined);
    peer.write(query('D'));
    assert.deepEqual(await conn.readMessage(TIMEOUT_MS), { type: 'query', sql: 'D' });
    await assert.rejects(conn.readMessage(20), (error) => isWalcastError(error, 'WALCAST_ERR_IDLE_TIMEOUT'));
    peer.end();
    await assert.rejects(conn.readMessage(TIMEOUT_MS), (error: Error) => (error as { code?: string }).code === 'disconnected');
    await conn.closed;
    assert.ok(conn.isClosed());
    await assert.rejects(conn.write(Buffer.from('x')));
    await conn.close();
    close();
  });

  test('unread input pauses the socket; reading resumes it', async () => {
    const { conn, peer, close } = await pair();
    peer.write(Buffer.concat([startup, ...Array.from({ length: PAUSE_QUEUED_MESSAGES + 4 }, (_, index) => query(`Q${index}`))]));
    await waitFor(() => conn.socket.isPaused());
    await conn.readStartupPacket(TIMEOUT_MS);
    for (let index = 0; index < PAUSE_QUEUED_MESSAGES + 4; index++) assert.deepEqual(await conn.readMessage(TIMEOUT_MS), { type: 'query', sql: `Q${index}` });
    assert.equal(conn.socket.isPaused(), false);
    peer.destroy();
    await conn.closed;
    close();
  });

  test('more queued messages than the bound close the connection with 08P01', async () => {
    const { conn, peer, close } = await pair();
    const received: Buffer[] = [];
    peer.on('data', (chunk: Buffer) => received.push(chunk));
    const sync = Buffer.from([0x53, 0, 0, 0, 4]);
    peer.write(Buffer.concat([startup, ...new Array<Buffer>(MAX_QUEUED_MESSAGES + 1).fill(sync)]));
    await conn.closed;
    assert.equal(errorCode(messages(Buffer.concat(received))[0]![1]), '08P01');
    // Queued messages are still handed out, then the reason the input ended.
    assert.equal((await conn.readStartupPacket(TIMEOUT_MS)).type, 'startup');
    for (let index = 0; index < MAX_QUEUED_MESSAGES - 1; index++) assert.equal((await conn.readMessage(TIMEOUT_MS)).type, 'sync');
    await assert.rejects(conn.readMessage(TIMEOUT_MS), (error) => isWalcastError(error, 'WALCAST_ERR_PROTOCOL_VIOLATION'));
    close();
  });

  test('readMessage takes input back from a stale handler; releaseMessageHandler leaves a newer one alone', async () => {
    const { conn, peer, close } = await pair();
    peer.write(startup);
    await conn.readStartupPacket(TIMEOUT_MS);
    const stale = (): void => assert.fail('the stale handler must not see messages');
    conn.setMessageHandler(stale);
    const next = conn.readMessage(TIMEOUT_MS);
    peer.write(query('E'));
    assert.deepEqual(await next, { type: 'query', sql: 'E' });
    const current: FrontendMessage[] = [];
    const handler = (message: FrontendMessage): void => void current.push(message);
    conn.setMessageHandler(handler);
    conn.releaseMessageHandler(stale);
    peer.write(query('F'));
    await waitFor(() => current.length === 1);
    conn.releaseMessageHandler(handler);
    peer.write(query('G'));
    assert.deepEqual(await conn.readMessage(TIMEOUT_MS), { type: 'query', sql: 'G' });
    peer.destroy();
    await conn.closed;
    close();
  });

  test('a parse error while a handler is set closes with FATAL 08P01', async () => {
    const { conn, peer, close } = await pair();
    const received: Buffer[] = [];
    peer.on('data', (chunk: Buffer) => received.push(chunk));
    peer.write(startup);
    await conn.readStartupPacket(TIMEOUT_MS);
    const handled: FrontendMessage[] = [];
    conn.setMessageHandler((message) => handled.push(message));
    peer.write(Buffer.from([0x64, 0, 0, 0, 1]));
    await conn.closed;
    assert.equal(handled.length, 0);
    assert.equal(errorCode(messages(Buffer.concat(received))[0]![1]), '08P01');
    close();
  });
});

describe('startup helpers', () => {
  test('isPhysicalReplication follows parse_bool', () => {
    for (const value of ['true', 'ON', 'yes', '1', 't', 'Y', 'tru']) assert.equal(isPhysicalReplication(value), true, value);
    for (const value of ['false', 'off', 'database', '0', '', 'o', 'nope']) assert.equal(isPhysicalReplication(value), false, value);
  });

  test('replicationMode: absent or false is a normal connection, database is logical, anything else invalid', () => {
    assert.equal(replicationMode(undefined), 'none');
    for (const value of ['false', 'OFF', 'of', 'no', 'n', 'f', '0']) assert.equal(replicationMode(value), 'none', value);
    for (const value of ['true', 'on', '1', 'y']) assert.equal(replicationMode(value), 'physical', value);
    assert.equal(replicationMode('Database'), 'logical');
    for (const value of ['', 'o', 'maybe', '2']) assert.equal(replicationMode(value), 'invalid', value);
  });

  test('parseOptions collects -c k=v, -ck=v, --k=v and bare k=v', () => {
    const options = parseOptions('-c timeline_id=abc -ctenant_id=def  --neon-flag=1 ztenant=zz \\ stray -c a=b\\ c');
    assert.deepEqual([...options], [
      ['timeline_id', 'abc'],
      ['tenant_id', 'def'],
      ['neon_flag', '1'],
      ['ztenant', 'zz'],
      ['a', 'b c'],
    ]);
  });
});
