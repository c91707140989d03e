/**
 * A bounds-checked cursor over one message body: every field read of the wire codecs goes through here, so a
 * short or malformed body becomes one typed protocol error instead of a RangeError from deep inside Buffer.
 */
import assert from 'node:assert/strict';
import { WalcastError } from '../errors.js';

const NUL = 0;

export class BufferReader {
  private offset = 0;

  constructor(
    private readonly buffer: Buffer,
    /** Names the message in error texts, e.g. "StartupMessage". */
    private readonly what: string,
  ) {}

  remaining(): number {
    return this.buffer.length - this.offset;
  }

  int8(): number {
    this.need(1);
    const value = this.buffer.readUInt8(this.offset);
    this.offset += 1;
    return value;
  }

  int16(): number {
    this.need(2);
    const value = this.buffer.readInt16BE(this.offset);
    this.offset += 2;
    return value;
  }

  int32(): number {
    this.need(4);
    const value = this.buffer.readInt32BE(this.offset);
    this.offset += 4;
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

  /** A NUL-terminated string (pq_getmsgstring); the terminator is consumed. */
  cString(): string {
    const end = this.buffer.indexOf(NUL, this.offset);
    if (end < 0) throw this.malformed('a string is not NUL-terminated');
    const value = this.buffer.toString('utf8', this.offset, end);
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
    return new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `invalid ${this.what} message format: ${reason}`);
  }
}
