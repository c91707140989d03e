/**
 * Pure incremental parser for what a client sends to a PostgreSQL server: the untyped startup-phase packets
 * (postmaster.c ProcessStartupPacket) and then typed messages (postgres.c SocketBackend). Feed it Buffers in
 * any split; it hands out `StartupPacket`s and `FrontendMessage`s in order.
 *
 * Bounds are enforced from the length field, before any body byte is buffered, so a hostile length costs
 * nothing. After the first error the parser is dead: the connection must close (PostgreSQL does the same,
 * since the byte stream cannot be resynchronised).
 */
import assert from 'node:assert/strict';
import { WalcastError } from '../errors.js';
import { BufferReader } from './buffer-reader.js';
import { PacketFramer, UNTYPED_CODE } from './framer.js';
import { FrontendCode, LENGTH_BYTES, StartupCode, type FrontendMessage, type StartupPacket } from './messages.js';

/** PostgreSQL's MAX_STARTUP_PACKET_LENGTH (pqcomm.h): a larger startup packet is refused. */
export const MAX_STARTUP_PACKET_BYTES = 10_000;
/** Smallest startup packet: the length and the request code (pqcomm.h: len < sizeof(ProtocolVersion) is invalid). */
export const MIN_STARTUP_PACKET_BYTES = 8;
/**
 * The largest typed message walcast accepts, counting the length field. A replica only sends short queries and
 * 34-byte status CopyData; 1 MiB leaves room for long option strings and is cheap to buffer per connection.
 */
export const MAX_FRONTEND_MESSAGE_BYTES = 1024 * 1024;
/** CancelRequest body after the request code: backend PID and secret key (pqcomm.h CancelRequestPacket). */
const CANCEL_REQUEST_BODY_BYTES = 8;

assert.ok(MIN_STARTUP_PACKET_BYTES <= MAX_STARTUP_PACKET_BYTES);
assert.ok(MAX_STARTUP_PACKET_BYTES <= MAX_FRONTEND_MESSAGE_BYTES);

export interface FrontendParserHandlers {
  readonly onStartup: (packet: StartupPacket) => void;
  readonly onMessage: (message: FrontendMessage) => void;
}

export class FrontendParser {
  private startupPhase: boolean;
  private failure: unknown;
  private readonly framer: PacketFramer;

  /** @param startupPhase false to parse typed messages from the first byte (for tests and for clients' peers). */
  constructor(startupPhase = true) {
    this.startupPhase = startupPhase;
    this.framer = new PacketFramer(() => !this.startupPhase, checkFrontendLength);
  }

  inStartupPhase(): boolean {
    return this.startupPhase;
  }

  /** Bytes of an incomplete message held by the parser. */
  bufferedBytes(): number {
    return this.framer.bufferedBytes();
  }

  /** Parses one chunk. Throws a WalcastError on bad input, and again on every later call. */
  push(chunk: Buffer, handlers: FrontendParserHandlers): void {
    if (this.failure !== undefined) throw this.failure;
    try {
      this.framer.push(chunk, (code, body) => this.deliver(code, body, handlers));
    } catch (error) {
      this.failure = error;
      throw error;
    }
  }

  private deliver(code: number, body: Buffer, handlers: FrontendParserHandlers): void {
    if (code !== UNTYPED_CODE) {
      handlers.onMessage(decodeFrontendMessage(code, body));
      return;
    }
    assert.ok(this.startupPhase);
    const packet = decodeStartupBody(body);
    // SSL and GSS negotiation are followed by another untyped packet; anything else ends the startup phase.
    if (packet.type === 'startup' || packet.type === 'cancelRequest') this.startupPhase = false;
    handlers.onStartup(packet);
  }
}

function checkFrontendLength(code: number, lengthField: number): void {
  if (code === UNTYPED_CODE) {
    if (lengthField < MIN_STARTUP_PACKET_BYTES || lengthField > MAX_STARTUP_PACKET_BYTES) {
      throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `invalid length of startup packet: ${lengthField} bytes`);
    }
    return;
  }
  if (lengthField < LENGTH_BYTES) {
    throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `invalid message length ${lengthField} for message type 0x${code.toString(16)}`);
  }
  if (lengthField > MAX_FRONTEND_MESSAGE_BYTES) {
    throw new WalcastError('WALCAST_ERR_MESSAGE_TOO_LARGE', `message type 0x${code.toString(16)} of ${lengthField} bytes exceeds the limit of ${MAX_FRONTEND_MESSAGE_BYTES} bytes`);
  }
}

/**
 * Decodes one whole untyped packet, length field included (for callers holding a complete packet).
 * Throws WalcastError WALCAST_ERR_PROTOCOL_VIOLATION if it is malformed.
 */
export function parseStartupPacket(packet: Buffer): StartupPacket {
  const reader = new BufferReader(packet, 'startup packet');
  const lengthField = reader.int32();
  checkFrontendLength(UNTYPED_CODE, lengthField);
  if (lengthField !== packet.length) {
    throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `startup packet length ${lengthField} does not match its ${packet.length} bytes`);
  }
  return decodeStartupBody(reader.rest());
}

/** Decodes the body of an untyped packet (after the length field). */
function decodeStartupBody(body: Buffer): StartupPacket {
  const reader = new BufferReader(body, 'startup packet');
  const code = reader.int32();
  switch (code) {
    case StartupCode.sslRequest:
      reader.end();
      return { type: 'sslRequest' };
    case StartupCode.gssEncRequest:
      reader.end();
      return { type: 'gssEncRequest' };
    case StartupCode.cancelRequest: {
      if (reader.remaining() !== CANCEL_REQUEST_BODY_BYTES) {
        throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', 'invalid length of cancel request packet');
      }
      return { type: 'cancelRequest', processId: reader.int32(), secretKey: reader.int32() };
    }
    default:
      return { type: 'startup', protocolVersion: code, parameters: decodeStartupParameters(reader) };
  }
}

/** name\0value\0 pairs ended by one \0 (postmaster.c ProcessStartupPacket; the final \0 is required). */
function decodeStartupParameters(reader: BufferReader): ReadonlyMap<string, string> {
  const parameters = new Map<string, string>();
  for (;;) {
    const name = reader.cString();
    if (name === '') break;
    parameters.set(name, reader.cString());
  }
  reader.end();
  return parameters;
}

/** Decodes one typed message body (postgres.c PostgresMain's switch on firstchar). */
export function decodeFrontendMessage(code: number, body: Buffer): FrontendMessage {
  switch (code) {
    case FrontendCode.query:
      return { type: 'query', sql: singleString(body, 'Query') };
    case FrontendCode.copyData:
      return { type: 'copyData', payload: body };
    case FrontendCode.copyDone:
      return emptyBody(body, 'CopyDone', { type: 'copyDone' });
    case FrontendCode.copyFail:
      return { type: 'copyFail', message: singleString(body, 'CopyFail') };
    case FrontendCode.terminate:
      return emptyBody(body, 'Terminate', { type: 'terminate' });
    case FrontendCode.sync:
      return emptyBody(body, 'Sync', { type: 'sync' });
    case FrontendCode.flush:
      return emptyBody(body, 'Flush', { type: 'flush' });
    case FrontendCode.password:
      return { type: 'password', payload: body };
    default:
      return { type: 'other', code };
  }
}

function singleString(body: Buffer, what: string): string {
  const reader = new BufferReader(body, what);
  const value = reader.cString();
  reader.end();
  return value;
}

function emptyBody(body: Buffer, what: string, message: FrontendMessage): FrontendMessage {
  new BufferReader(body, what).end();
  return message;
}
