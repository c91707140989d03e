/**
 * Pure serializers for frontend (client-to-server) messages, used by client.ts (and by tests that need bytes
 * a real client would send). Each returns one Buffer holding one whole message or startup packet.
 */
import assert from 'node:assert/strict';
import { cString, frame, int32 } from './backend-serializer.js';
import { FrontendCode, LENGTH_BYTES, StartupCode } from './messages.js';

/** StartupMessage: Int32 length, Int32 protocol 3.0, name\0value\0 pairs, final \0. */
export function startupMessage(parameters: ReadonlyMap<string, string> | Record<string, string>): Buffer {
  const entries = parameters instanceof Map ? [...parameters.entries()] : Object.entries(parameters);
  const body = Buffer.concat([int32(StartupCode.protocol3), ...entries.flatMap(([name, value]) => [cString(name), cString(value)]), Buffer.alloc(1)]);
  return Buffer.concat([int32(LENGTH_BYTES + body.length), body]);
}

/** SSLRequest / GSSENCRequest: Int32 8 and the request code. */
export function negotiationRequest(code: StartupCode.sslRequest | StartupCode.gssEncRequest): Buffer {
  return Buffer.concat([int32(8), int32(code)]);
}

export function cancelRequest(processId: number, secretKey: number): Buffer {
  return Buffer.concat([int32(16), int32(StartupCode.cancelRequest), int32(processId), int32(secretKey)]);
}

export function query(sql: string): Buffer {
  return frame(FrontendCode.query, cString(sql));
}

/** PasswordMessage (cleartext or md5 text). */
export function passwordMessage(text: string): Buffer {
  return frame(FrontendCode.password, cString(text));
}

/** SASLInitialResponse: mechanism\0, Int32 length of the data, data. */
export function saslInitialResponse(mechanism: string, data: string): Buffer {
  const bytes = Buffer.from(data, 'utf8');
  return frame(FrontendCode.password, Buffer.concat([cString(mechanism), int32(bytes.length), bytes]));
}

/** SASLResponse: the data, without a length or terminator. */
export function saslResponse(data: string): Buffer {
  return frame(FrontendCode.password, Buffer.from(data, 'utf8'));
}

export function frontendCopyData(payload: Buffer): Buffer {
  return frame(FrontendCode.copyData, payload);
}

export function frontendCopyDone(): Buffer {
  return frame(FrontendCode.copyDone, Buffer.alloc(0));
}

export function terminate(): Buffer {
  const message = frame(FrontendCode.terminate, Buffer.alloc(0));
  assert.equal(message.length, 5);
  return message;
}
