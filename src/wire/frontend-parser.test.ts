/**
 * Tests for the frontend parser: every byte split, joined messages, startup packets and every error path.
 * Expected inputs are built here by hand, never by walcast's serializers.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { FrontendParser, MAX_FRONTEND_MESSAGE_BYTES, MAX_STARTUP_PACKET_BYTES, parseStartupPacket } from './frontend-parser.js';
import type { FrontendMessage, StartupPacket } from './messages.js';

function typed(tag: string, body: Buffer | string = Buffer.alloc(0)): Buffer {
  const bytes = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  const header = Buffer.alloc(5);
  header.write(tag, 0, 'latin1');
  header.writeInt32BE(bytes.length + 4, 1);
  return Buffer.concat([header, bytes]);
}

function untyped(code: number, rest: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(8);
  header.writeInt32BE(8 + rest.length, 0);
  header.writeInt32BE(code, 4);
  return Buffer.concat([header, rest]);
}

type Event = { startup: StartupPacket } | { message: FrontendMessage };

function parseAll(chunks: Buffer[], startupPhase = false): Event[] {
  const parser = new FrontendParser(startupPhase);
  const events: Event[] = [];
  for (const chunk of chunks) {
    parser.push(chunk, { onStartup: (startup) => events.push({ startup }), onMessage: (message) => events.push({ message }) });
  }
  assert.equal(parser.bufferedBytes(), 0, 'nothing left over');
  return events;
}

const STARTUP = untyped(196608, Buffer.from('user\0repl\0replication\0true\0\0', 'latin1'));
const QUERY = typed('Q', 'IDENTIFY_SYSTEM\0');
const STATUS = typed('d', Buffer.from([0x72, ...new Array<number>(33).fill(7)]));

describe('FrontendParser', () => {
  test('splitting two messages at every byte boundary gives the same result', () => {
    const joined = Buffer.concat([QUERY, STATUS, typed('c'), typed('X')]);
    const expected = parseAll([joined]);
    assert.equal(expected.length, 4);
    assert.deepEqual(expected[0], { message: { type: 'query', sql: 'IDENTIFY_SYSTEM' } });
    assert.deepEqual(expected[2], { message: { type: 'copyDone' } });
    assert.deepEqual(expected[3], { message: { type: 'terminate' } });
    for (let cut = 0; cut <= joined.length; cut++) {
      assert.deepEqual(parseAll([joined.subarray(0, cut), joined.subarray(cut)]), expected, `cut at ${cut}`);
    }
    // One byte at a time, the worst case for the straddling path.
    assert.deepEqual(parseAll([...joined].map((byte) => Buffer.from([byte]))), expected);
  });

  test('startup packets, then typed messages, split at every boundary', () => {
    const joined = Buffer.concat([untyped(80877103), untyped(80877104), STARTUP, QUERY]);
    const expected = parseAll([joined], true);
    assert.deepEqual(expected[0], { startup: { type: 'sslRequest' } });
    assert.deepEqual(expected[1], { startup: { type: 'gssEncRequest' } });
    assert.deepEqual(expected[2], {
      startup: { type: 'startup', protocolVersion: 196608, parameters: new Map([['user', 'repl'], ['replication', 'true']]) },
    });
    assert.deepEqual(expected[3], { message: { type: 'query', sql: 'IDENTIFY_SYSTEM' } });
    for (let cut = 0; cut <= joined.length; cut++) {
      assert.deepEqual(parseAll([joined.subarray(0, cut), joined.subarray(cut)], true), expected, `cut at ${cut}`);
    }
  });

  test('decodes every message kind', () => {
    const events = parseAll([typed('f', 'gave up\0'), typed('S'), typed('H'), typed('p', 'pw\0'), typed('P', 'x'), typed('d')]);
    assert.deepEqual(events, [
      { message: { type: 'copyFail', message: 'gave up' } },
      { message: { type: 'sync' } },
      { message: { type: 'flush' } },
      { message: { type: 'password', payload: Buffer.from('pw\0') } },
      { message: { type: 'other', code: 0x50 } },
      { message: { type: 'copyData', payload: Buffer.alloc(0) } },
    ]);
  });

  test('CancelRequest ends the startup phase', () => {
    const rest = Buffer.alloc(8);
    rest.writeInt32BE(42, 0);
    rest.writeInt32BE(-7, 4);
    assert.deepEqual(parseStartupPacket(untyped(80877102, rest)), { type: 'cancelRequest', processId: 42, secretKey: -7 });
  });

  test('a message at exactly the limit is accepted, one byte more is refused before buffering', () => {
    const body = Buffer.alloc(MAX_FRONTEND_MESSAGE_BYTES - 4, 1);
    assert.equal(parseAll([typed('d', body)]).length, 1);
    const parser = new FrontendParser(false);
    const header = Buffer.from([0x64, 0, 0, 0, 0]);
    header.writeInt32BE(MAX_FRONTEND_MESSAGE_BYTES + 1, 1);
    assert.throws(() => parser.push(header, noHandlers), (error) => isWalcastError(error, 'WALCAST_ERR_MESSAGE_TOO_LARGE'));
    assert.equal(parser.bufferedBytes(), 0);
    // Dead after the first error: the stream cannot be resynchronised.
    assert.throws(() => parser.push(QUERY, noHandlers), (error) => isWalcastError(error, 'WALCAST_ERR_MESSAGE_TOO_LARGE'));
  });

  test('a length below 4 is a protocol violation, also when the header straddles chunks', () => {
    const bad = Buffer.from([0x51, 0, 0, 0, 3]);
    assert.throws(() => parseAll([bad]), (error) => isWalcastError(error, 'WALCAST_ERR_PROTOCOL_VIOLATION'));
    assert.throws(() => parseAll([bad.subarray(0, 2), bad.subarray(2)]), (error) => isWalcastError(error, 'WALCAST_ERR_PROTOCOL_VIOLATION'));
    const negative = Buffer.from([0x51, 0xff, 0xff, 0xff, 0xff]);
    assert.throws(() => parseAll([negative]), (error) => isWalcastError(error, 'WALCAST_ERR_PROTOCOL_VIOLATION'));
  });

  test('truncated input stays buffered and emits nothing', () => {
    const parser = new FrontendParser(false);
    const events: FrontendMessage[] = [];
    parser.push(QUERY.subarray(0, QUERY.length - 1), { onStartup: () => assert.fail(), onMessage: (message) => events.push(message) });
    assert.equal(events.length, 0);
    // The decoded 5-byte header is not counted; the body bytes so far are held.
    assert.equal(parser.bufferedBytes(), QUERY.length - 1 - 5);
  });

  test('malformed bodies are protocol violations', () => {
    for (const bad of [typed('Q', 'no terminator'), typed('Q', 'two\0strings\0'), typed('c', 'x'), typed('X', 'x'), typed('f', 'open')]) {
      assert.throws(() => parseAll([bad]), (error) => isWalcastError(error, 'WALCAST_ERR_PROTOCOL_VIOLATION'), bad.toString('latin1'));
    }
  });

  test('startup packets: bounds and malformed parameter lists', () => {
    const big = untyped(196608, Buffer.alloc(MAX_STARTUP_PACKET_BYTES - 7, 0x61));
    assert.throws(() => parseAll([big.subarray(0, 8)], true), (error) => isWalcastError(error, 'WALCAST_ERR_PROTOCOL_VIOLATION'));
    const tiny = Buffer.from([0, 0, 0, 4]);
    assert.throws(() => parseAll([tiny], true), (error) => isWalcastError(error, 'WALCAST_ERR_PROTOCOL_VIOLATION'));
    const unterminated = untyped(196608, Buffer.from('user\0repl\0', 'latin1'));
    assert.throws(() => parseStartupPacket(unterminated), (error) => isWalcastError(error, 'WALCAST_ERR_PROTOCOL_VIOLATION'));
    const sslWithTail = untyped(80877103, Buffer.alloc(1));
    assert.throws(() => parseStartupPacket(sslWithTail), (error) => isWalcastError(error, 'WALCAST_ERR_PROTOCOL_VIOLATION'));
    assert.throws(() => parseStartupPacket(STARTUP.subarray(0, STARTUP.length - 1)), (error) => isWalcastError(error, 'WALCAST_ERR_PROTOCOL_VIOLATION'));
    const oldProtocol = parseStartupPacket(untyped(131072, Buffer.alloc(1)));
    assert.deepEqual(oldProtocol, { type: 'startup', protocolVersion: 131072, parameters: new Map() });
  });
});

const noHandlers = { onStartup: (): void => assert.fail('no startup packet expected'), onMessage: (): void => assert.fail('no message expected') };
