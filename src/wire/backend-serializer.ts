/**
 * Pure serializers for the backend (server-to-client) messages walcast sends; each returns one Buffer holding
 * one whole message (PostgreSQL docs, "Message Formats"). Nothing here touches a socket.
 */
import assert from 'node:assert/strict';
import { AuthCode, BackendCode, HEADER_BYTES, LENGTH_BYTES, TAG_BYTES, type ErrorFields } from './messages.js';

/** Int16 field count limit of RowDescription/DataRow (PostgreSQL MaxTupleAttributeNumber is lower still). */
const MAX_FIELD_COUNT = 0x7fff;
/** DataRow column length that means NULL. */
const NULL_LENGTH = -1;
/** CopyBothResponse: overall format 0 (text) and zero columns, as walsender.c StartReplication sends it. */
const COPY_FORMAT_TEXT = 0;
const COPY_COLUMN_COUNT = 0;

/** Frames `body` as one typed message: tag byte, Int32 length (counting itself), body. */
export function frame(code: number, body: Buffer): Buffer {
  assert.ok(code >= 0 && code <= 0xff, 'a tag is one byte');
  const message = Buffer.allocUnsafe(HEADER_BYTES + body.length);
  message.writeUInt8(code, 0);
  message.writeInt32BE(LENGTH_BYTES + body.length, TAG_BYTES);
  body.copy(message, HEADER_BYTES);
  assert.equal(message.length, TAG_BYTES + message.readInt32BE(TAG_BYTES));
  return message;
}

/** A NUL-terminated UTF-8 string; an embedded NUL would silently truncate the field on the client, so refuse it. */
export function cString(value: string): Buffer {
  assert.ok(!value.includes('\0'), 'protocol strings cannot contain NUL');
  return Buffer.from(`${value}\0`, 'utf8');
}

export function int32(value: number): Buffer {
  const buffer = Buffer.allocUnsafe(4);
  buffer.writeInt32BE(value, 0);
  return buffer;
}

export function int16(value: number): Buffer {
  const buffer = Buffer.allocUnsafe(2);
  buffer.writeInt16BE(value, 0);
  return buffer;
}

function authentication(code: AuthCode, data: Buffer = Buffer.alloc(0)): Buffer {
  return frame(BackendCode.authentication, Buffer.concat([int32(code), data]));
}

export function authenticationOk(): Buffer {
  return authentication(AuthCode.ok);
}

export function authenticationCleartextPassword(): Buffer {
  return authentication(AuthCode.cleartextPassword);
}

/** AuthenticationSASL: the mechanism names, each NUL-terminated, then an empty name. */
export function authenticationSasl(mechanisms: readonly string[]): Buffer {
  assert.ok(mechanisms.length > 0);
  return authentication(AuthCode.sasl, Buffer.concat([...mechanisms.map(cString), cString('')]));
}

export function authenticationSaslContinue(data: Buffer | string): Buffer {
  return authentication(AuthCode.saslContinue, Buffer.from(data));
}

export function authenticationSaslFinal(data: Buffer | string): Buffer {
  return authentication(AuthCode.saslFinal, Buffer.from(data));
}

export function parameterStatus(name: string, value: string): Buffer {
  return frame(BackendCode.parameterStatus, Buffer.concat([cString(name), cString(value)]));
}

export function backendKeyData(processId: number, secretKey: number): Buffer {
  return frame(BackendCode.backendKeyData, Buffer.concat([int32(processId), int32(secretKey)]));
}

/** 'I' idle, 'T' in a transaction, 'E' in a failed transaction. */
export function readyForQuery(status: 'I' | 'T' | 'E'): Buffer {
  return frame(BackendCode.readyForQuery, Buffer.from(status, 'latin1'));
}

export function commandComplete(tag: string): Buffer {
  return frame(BackendCode.commandComplete, cString(tag));
}

export function emptyQueryResponse(): Buffer {
  return frame(BackendCode.emptyQueryResponse, Buffer.alloc(0));
}

/**
 * ErrorResponse with S (localised severity), V (non-localised severity, PG >= 9.6), C, M and optional D and H,
 * ended by a zero byte (elog.c send_message_to_frontend). libpq needs at least S, C and M.
 */
export function errorResponse(fields: ErrorFields): Buffer {
  return frame(BackendCode.errorResponse, noticeFields(fields));
}

export function noticeResponse(fields: ErrorFields): Buffer {
  return frame(BackendCode.noticeResponse, noticeFields(fields));
}

function noticeFields(fields: ErrorFields): Buffer {
  assert.match(fields.sqlState, /^[0-9A-Z]{5}$/, 'SQLSTATE is five characters');
  const parts = [field('S', fields.severity), field('V', fields.severity), field('C', fields.sqlState), field('M', fields.message)];
  if (fields.detail !== undefined) parts.push(field('D', fields.detail));
  if (fields.hint !== undefined) parts.push(field('H', fields.hint));
  parts.push(Buffer.alloc(1));
  return Buffer.concat(parts);
}

function field(code: string, value: string): Buffer {
  assert.equal(code.length, 1);
  return Buffer.concat([Buffer.from(code, 'latin1'), cString(value)]);
}

/** One RowDescription field, as printsimple.c and walsender.c describe their columns. */
export interface FieldDescription {
  readonly name: string;
  readonly tableOid: number;
  readonly columnNumber: number;
  readonly typeOid: number;
  readonly typeSize: number;
  readonly typeModifier: number;
  readonly format: 0 | 1;
}

export function rowDescription(fields: readonly FieldDescription[]): Buffer {
  assert.ok(fields.length <= MAX_FIELD_COUNT);
  const parts = [int16(fields.length)];
  for (const description of fields) {
    const fixed = Buffer.allocUnsafe(18);
    fixed.writeInt32BE(description.tableOid, 0);
    fixed.writeInt16BE(description.columnNumber, 4);
    fixed.writeInt32BE(description.typeOid, 6);
    fixed.writeInt16BE(description.typeSize, 10);
    fixed.writeInt32BE(description.typeModifier, 12);
    fixed.writeInt16BE(description.format, 16);
    parts.push(cString(description.name), fixed);
  }
  return frame(BackendCode.rowDescription, Buffer.concat(parts));
}

/** DataRow in text format; null becomes length -1 with no bytes. */
export function dataRow(values: readonly (string | null)[]): Buffer {
  assert.ok(values.length <= MAX_FIELD_COUNT);
  const parts = [int16(values.length)];
  for (const value of values) {
    if (value === null) {
      parts.push(int32(NULL_LENGTH));
      continue;
    }
    const bytes = Buffer.from(value, 'utf8');
    parts.push(int32(bytes.length), bytes);
  }
  return frame(BackendCode.dataRow, Buffer.concat(parts));
}

/** CopyBothResponse 'W': Int8 format 0, Int16 zero columns (walsender.c StartReplication). */
export function copyBothResponse(): Buffer {
  const body = Buffer.alloc(3);
  body.writeInt8(COPY_FORMAT_TEXT, 0);
  body.writeInt16BE(COPY_COLUMN_COUNT, 1);
  return frame(BackendCode.copyBothResponse, body);
}

export function copyData(payload: Buffer): Buffer {
  return frame(BackendCode.copyData, payload);
}

export function copyDone(): Buffer {
  return frame(BackendCode.copyDone, Buffer.alloc(0));
}
