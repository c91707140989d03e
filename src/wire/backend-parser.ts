/**
 * Pure decoders for backend (server-to-client) message bodies, for client.ts: authentication requests,
 * ErrorResponse/NoticeResponse fields, RowDescription column names and DataRow values. Framing is done by
 * framer.ts; these functions see one message body each.
 */
import { WalcastError } from '../errors.js';
import { BufferReader } from './buffer-reader.js';

/** The largest backend message the client accepts: a WAL CopyData is 128 KiB (walsender MAX_SEND_SIZE); Neon may send more. */
export const MAX_BACKEND_MESSAGE_BYTES = 64 * 1024 * 1024;
/** DataRow column length that means NULL. */
const NULL_LENGTH = -1;
/** Fixed bytes after each RowDescription field name: table OID, attnum, type OID, typlen, typmod, format. */
const FIELD_DESCRIPTION_FIXED_BYTES = 18;

/** Fields of ErrorResponse/NoticeResponse, keyed by their one-letter codes (S, V, C, M, D, H, ...). */
export interface ServerNotice {
  readonly severity: string;
  readonly sqlState: string;
  readonly message: string;
  readonly detail: string | undefined;
  readonly hint: string | undefined;
  readonly fields: ReadonlyMap<string, string>;
}

export function decodeNotice(body: Buffer): ServerNotice {
  const reader = new BufferReader(body, 'ErrorResponse');
  const fields = new Map<string, string>();
  for (;;) {
    const code = reader.int8();
    if (code === 0) break;
    fields.set(String.fromCharCode(code), reader.cString());
  }
  reader.end();
  return {
    severity: fields.get('V') ?? fields.get('S') ?? 'ERROR',
    sqlState: fields.get('C') ?? '',
    message: fields.get('M') ?? '',
    detail: fields.get('D'),
    hint: fields.get('H'),
    fields,
  };
}

/** An 'R' message: the request code and whatever follows it (MD5 salt, SASL mechanisms or data). */
export function decodeAuthentication(body: Buffer): { readonly code: number; readonly data: Buffer } {
  const reader = new BufferReader(body, 'Authentication');
  return { code: reader.int32(), data: reader.rest() };
}

/** The mechanism list of AuthenticationSASL: NUL-terminated names ended by an empty one. */
export function decodeSaslMechanisms(data: Buffer): string[] {
  const reader = new BufferReader(data, 'AuthenticationSASL');
  const mechanisms: string[] = [];
  for (let name = reader.cString(); name !== ''; name = reader.cString()) mechanisms.push(name);
  return mechanisms;
}

export function decodeParameterStatus(body: Buffer): readonly [string, string] {
  const reader = new BufferReader(body, 'ParameterStatus');
  const name = reader.cString();
  const value = reader.cString();
  reader.end();
  return [name, value];
}

export function decodeBackendKeyData(body: Buffer): { readonly processId: number; readonly secretKey: number } {
  const reader = new BufferReader(body, 'BackendKeyData');
  const processId = reader.int32();
  const secretKey = reader.int32();
  reader.end();
  return { processId, secretKey };
}

export function decodeRowDescription(body: Buffer): string[] {
  const reader = new BufferReader(body, 'RowDescription');
  const count = reader.int16();
  if (count < 0) throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `RowDescription with ${count} fields`);
  const names: string[] = [];
  for (let index = 0; index < count; index++) {
    names.push(reader.cString());
    reader.bytes(FIELD_DESCRIPTION_FIXED_BYTES);
  }
  reader.end();
  return names;
}

/** A DataRow's values as text (walcast and walsenders send text format only). */
export function decodeDataRow(body: Buffer): (string | null)[] {
  const reader = new BufferReader(body, 'DataRow');
  const count = reader.int16();
  if (count < 0) throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `DataRow with ${count} columns`);
  const values: (string | null)[] = [];
  for (let index = 0; index < count; index++) {
    const length = reader.int32();
    if (length < NULL_LENGTH) throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `DataRow column length ${length}`);
    values.push(length === NULL_LENGTH ? null : reader.bytes(length).toString('utf8'));
  }
  reader.end();
  return values;
}

export function decodeCommandComplete(body: Buffer): string {
  const reader = new BufferReader(body, 'CommandComplete');
  const tag = reader.cString();
  reader.end();
  return tag;
}
