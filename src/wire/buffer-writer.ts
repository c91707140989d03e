/**
 * A cursor writer over a buffer of a known layout size: the fixed-layout encoders (stream messages) write field
 * after field through it instead of at raw offsets. Writing past the layout or leaving it short is a programmer
 * error, so it asserts; it allocates nothing, so a sender may reuse one target buffer per stream.
 */
import assert from 'node:assert/strict';
import { BYTE1_BYTES, INT32_BYTES, INT64_BYTES } from './field-sizes.js';

export class BufferWriter {
  private offset = 0;

  constructor(
    private readonly target: Buffer,
    /** The layout's size: end() checks that exactly this much was written. */
    private readonly layoutBytes: number,
  ) {
    assert.ok(Number.isSafeInteger(layoutBytes) && layoutBytes > 0, 'a layout has a positive size');
    assert.ok(target.length >= layoutBytes, 'the target holds the layout');
  }

  uint8(value: number): this {
    this.reserve(BYTE1_BYTES);
    this.target.writeUInt8(value, this.offset);
    this.offset += BYTE1_BYTES;
    return this;
  }

  uint32(value: number): this {
    this.reserve(INT32_BYTES);
    this.target.writeUInt32BE(value, this.offset);
    this.offset += INT32_BYTES;
    return this;
  }

  uint64(value: bigint): this {
    this.reserve(INT64_BYTES);
    this.target.writeBigUInt64BE(value, this.offset);
    this.offset += INT64_BYTES;
    return this;
  }

  int64(value: bigint): this {
    this.reserve(INT64_BYTES);
    this.target.writeBigInt64BE(value, this.offset);
    this.offset += INT64_BYTES;
    return this;
  }

  /** Asserts that the whole layout, and nothing more, was written. */
  end(): void {
    assert.equal(this.offset, this.layoutBytes, 'the layout was written completely');
  }

  private reserve(bytes: number): void {
    assert.ok(this.offset + bytes <= this.layoutBytes, 'a field past the end of the layout');
  }
}
