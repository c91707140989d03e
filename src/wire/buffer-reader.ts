/**
 * A bounds-checked cursor over one message body: every field read of the wire codecs goes through here, so a
 * short or malformed body becomes one typed protocol error instead of a RangeError from deep inside Buffer.
 */
import assert from 'node:assert/strict';
import { WalcastError, type WalcastErrorCode } from '../errors.js';
import { BYTE1_BYTES, INT32_BYTES, INT64_BYTES } from './field-sizes.js';

const NUL = 0;

export class BufferReader {
  private offset = 0;

  constructor(
    private readonly buffer: Buffer,
    /** Names the message in error texts, e.g. "StartupMessage". */
    private readonly what: string,
    /** The error a short or malformed body becomes (replica feedback has its own code). */
    private readonly errorCode: WalcastErrorCode = 'WALCAST_ERR_PROTOCOL_VIOLATION',
  ) {}

  remaining(): number {
    return this.buffer.length - this.offset;
  }

  int8(): number {
    this.need(BYTE1_BYTES);
    const value = this.buffer.readUInt8(this.offset);
    this.offset += BYTE1_BYTES;
    return value;
  }

  int16(): number {
    this.need(2);
    const value = this.buffer.readInt16BE(this.offset);
    this.offset += 2;
    return value;
  }

  int32(): number {
    this.need(INT32_BYTES);
    const value = this.buffer.readInt32BE(this.offset);
    this.offset += INT32_BYTES;
    return value;
  }

  uint32(): number {
    this.need(INT32_BYTES);
    const value = this.buffer.readUInt32BE(this.offset);
    this.offset += INT32_BYTES;
    return value;
  }

  /** An unsigned Int64 (an LSN). */
  uint64(): bigint {
    this.need(INT64_BYTES);
    const value = this.buffer.readBigUInt64BE(this.offset);
    this.offset += INT64_BYTES;
    return value;
  }

  /** A signed Int64 (a TimestampTz). */
  int64(): bigint {
    this.need(INT64_BYTES);
    const value = this.buffer.readBigInt64BE(this.offset);
    this.offset += INT64_BYTES;
    return value;
  }

  bytes(count: number): Buffer {
    assert.ok(count >= 0);
    this.need(count);
    const value = this.buffer.subarray(this.offset, this.offset + count);
    this.offset += count;
    return value;
  }

  /** The rest of the body, zero-copy. */
  rest(): Buffer {
    return this.bytes(this.remaining());
  }

  /**
   * A NUL-terminated string (pq_getmsgstring); the terminator is consumed. `maxBytes` bounds the string (not
   * counting the NUL) for fields that are short by nature.
   */
  cString(options: { readonly maxBytes?: number; readonly encoding?: BufferEncoding } = {}): string {
    const end = this.buffer.indexOf(NUL, this.offset);
    if (end < 0) throw this.malformed('a string is not NUL-terminated');
    if (options.maxBytes !== undefined && end - this.offset > options.maxBytes) throw this.malformed(`a string is longer than ${options.maxBytes} bytes`);
    const value = this.buffer.toString(options.encoding ?? 'utf8', this.offset, end);
    this.offset = end + 1;
    assert.ok(this.offset <= this.buffer.length);
    return value;
  }

  /** pq_getmsgend: the body must be fully consumed. */
  end(): void {
    if (this.remaining() !== 0) throw this.malformed(`${this.remaining()} unexpected trailing bytes`);
  }

  private need(count: number): void {
    if (this.remaining() < count) throw this.malformed(`needs ${count} more bytes, has ${this.remaining()}`);
  }

  private malformed(reason: string): WalcastError {
    return new WalcastError(this.errorCode, `invalid ${this.what} message format: ${reason}`);
  }
}
