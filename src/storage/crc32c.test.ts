/** CRC-32C: the standard check vector, RFC 3720 vectors, ranges and incremental updates. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { CRC32C_INITIAL, crc32c, crc32cFinish, crc32cUpdate } from './crc32c.js';

/** Bit-at-a-time reference, independent of the table code. */
function referenceCrc32c(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return (~crc) >>> 0;
}

test('check vector "123456789" is 0xE3069283', () => {
  assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
});

test('RFC 3720 B.4 vectors', () => {
  assert.equal(crc32c(Buffer.alloc(32, 0)), 0x8a9136aa);
  assert.equal(crc32c(Buffer.alloc(32, 0xff)), 0x62a8ab43);
  const ascending = Buffer.from(Array.from({ length: 32 }, (_, index) => index));
  assert.equal(crc32c(ascending), 0x46dd794e);
  assert.equal(crc32c(Buffer.alloc(0)), 0);
});

test('matches the bit-wise reference for every length 0..64 and random data', () => {
  const data = randomBytes(4096);
  for (let length = 0; length <= 64; length++) assert.equal(crc32c(data, 0, length), referenceCrc32c(data.subarray(0, length)));
  assert.equal(crc32c(data), referenceCrc32c(data));
});

test('ranges and incremental updates split at every point give the same value', () => {
  const data = randomBytes(200);
  const whole = crc32c(data, 3, 197);
  for (let split = 3; split <= 197; split++) {
    const state = crc32cUpdate(crc32cUpdate(CRC32C_INITIAL, data, 3, split), data, split, 197);
    assert.equal(crc32cFinish(state), whole);
  }
});
