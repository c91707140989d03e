/** CRC-32C: the standard check vector, RFC 3720 vectors, ranges and incremental updates. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { ARENA_BYTES } from './crc32c-wasm.js';
import { CRC32C_IMPLEMENTATION, CRC32C_INITIAL, allocateCrc32cBuffer, crc32c, crc32cFinish, crc32cUpdate, crc32cUpdateUsing, type Crc32cImplementation } from './crc32c.js';

/** Every loop crc32c.ts has: each must agree with the reference to the bit. */
const IMPLEMENTATIONS: readonly Crc32cImplementation[] = ['wasm', 'words', 'bytes'];

function crc32cUsing(implementation: Crc32cImplementation, bytes: Uint8Array, start: number, end: number): number {
  return crc32cFinish(crc32cUpdateUsing(implementation, CRC32C_INITIAL, bytes, start, end));
}

/** Bit-at-a-time reference, independent of the table code. */
function referenceCrc32c(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return (~crc) >>> 0;
}

/** CRC-32C of 8,192 zero bytes, of bytes (i * 31 + 7) & 0xff for i in 0..8191, and of that ramp's bytes 3..8194. */
const KNOWN_ZEROS_8192 = 0x90444623;
const KNOWN_RAMP_8192 = 0x29202efc;
const KNOWN_RAMP_3_8195 = 0x8a338bc2;

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

test('this runtime checksums long ranges with WebAssembly (the fast path did not silently fall back)', () => {
  assert.equal(typeof WebAssembly, 'object');
  assert.equal(CRC32C_IMPLEMENTATION, 'wasm');
});

test('every loop (wasm, aligned words, bytes) matches the reference at every start alignment, odd lengths and views', () => {
  // Lengths around the byte-loop/word-loop threshold and around 16-byte steps, pages and a chunk.
  const data = randomBytes(140 * 1024 + 64);
  const lengths = [0, 1, 7, 15, 16, 17, 255, 256, 257, 271, 272, 1000, 4099, 8191, 8192, 8193, 131072, 131073];
  for (const start of [0, 1, 2, 3, 4, 5, 6, 7, 13]) {
    for (const length of lengths) {
      const expected = referenceCrc32c(data.subarray(start, start + length));
      assert.equal(crc32c(data, start, start + length), expected, `start ${start}, length ${length}`);
      for (const implementation of IMPLEMENTATIONS) assert.equal(crc32cUsing(implementation, data, start, start + length), expected, `${implementation}: start ${start}, length ${length}`);
    }
  }
  // A Buffer whose own byteOffset is odd (a slice of a larger allocation): alignment is of the memory, not the index.
  for (const shift of [1, 2, 3]) {
    const view = data.subarray(shift, shift + 9000);
    for (const start of [0, 1, 2, 3]) {
      const expected = referenceCrc32c(view.subarray(start, 9000 - start));
      for (const implementation of IMPLEMENTATIONS) assert.equal(crc32cUsing(implementation, view, start, 9000 - start), expected, `${implementation}: shift ${shift}, start ${start}`);
    }
  }
});

test('known answers over 8 KiB pages of fixed patterns, from aligned and unaligned starts', () => {
  // Values agreed by the bit-wise reference above, the previous slice-by-8 code and the CPU CRC-32C instruction
  // (native addon crc32cUpdate); fixed here so a change to both the tables and the reference cannot pass unnoticed.
  const zeros = Buffer.alloc(8192 + 3, 0);
  const ramp = Buffer.from(Array.from({ length: 8192 + 3 }, (_, index) => (index * 31 + 7) & 0xff));
  assert.equal(crc32c(zeros, 0, 8192), referenceCrc32c(zeros.subarray(0, 8192)));
  assert.equal(crc32c(zeros, 3, 8195), crc32c(zeros, 0, 8192));
  assert.equal(crc32c(ramp, 1, 8194), referenceCrc32c(ramp.subarray(1, 8194)));
  for (const implementation of IMPLEMENTATIONS) {
    assert.equal(crc32cUsing(implementation, zeros, 0, 8192), KNOWN_ZEROS_8192, implementation);
    assert.equal(crc32cUsing(implementation, ramp, 0, 8192), KNOWN_RAMP_8192, implementation);
    assert.equal(crc32cUsing(implementation, ramp, 3, 8192 + 3), KNOWN_RAMP_3_8195, implementation);
  }
});

test('incremental updates split across the fast paths give the whole range\'s value', () => {
  // Longer than the WebAssembly scratch area (64 KiB), so one call folds it in several copies.
  const data = randomBytes(200_000);
  const whole = referenceCrc32c(data.subarray(5, 199_999));
  for (const split of [5, 6, 261, 262, 263, 264, 8197, 65_541, 65_542, 100_000, 199_743, 199_998, 199_999]) {
    assert.equal(crc32cFinish(crc32cUpdate(crc32cUpdate(CRC32C_INITIAL, data, 5, split), data, split, 199_999)), whole, `split ${split}`);
    for (const implementation of IMPLEMENTATIONS) {
      const state = crc32cUpdateUsing(implementation, crc32cUpdateUsing(implementation, CRC32C_INITIAL, data, 5, split), data, split, 199_999);
      assert.equal(crc32cFinish(state), whole, `${implementation}: split ${split}`);
    }
  }
});

test('buffers in the WebAssembly memory are checksummed in place, to the bit: random ranges against the copied path, the word loop and the reference', () => {
  const bytes = 140 * 1024;
  const inMemory = allocateCrc32cBuffer(bytes);
  assert.ok(inMemory !== undefined, 'the arena has room');
  assert.ok(inMemory.buffer.byteLength > ARENA_BYTES, 'a view of the WebAssembly memory');
  const onHeap = randomBytes(bytes);
  onHeap.copy(inMemory);
  const second = allocateCrc32cBuffer(bytes);
  assert.ok(second !== undefined);
  second.fill(0xa5);
  assert.ok(inMemory.equals(onHeap), 'a second buffer does not overlap the first');
  for (let round = 0; round < 200; round++) {
    // Lengths from a few bytes to past a chunk's worth of pages, both ends at any alignment; a few get the reference.
    const length = Math.floor(Math.random() * (round % 4 === 0 ? bytes : 20_000));
    const start = Math.floor(Math.random() * (bytes - length + 1));
    const state = (Math.random() * 0x1_0000_0000) >>> 0;
    const expected = crc32cUpdateUsing('words', state, onHeap, start, start + length);
    assert.equal(crc32cUpdateUsing('wasm', state, inMemory, start, start + length), expected, `in place: start ${start}, length ${length}`);
    assert.equal(crc32cUpdateUsing('wasm', state, onHeap, start, start + length), expected, `copied: start ${start}, length ${length}`);
    assert.equal(crc32cUpdate(state, inMemory.subarray(start), 0, length), expected, `a subarray of it: start ${start}, length ${length}`);
    if (round % 20 === 0) assert.equal(crc32c(inMemory, start, start + length), referenceCrc32c(onHeap.subarray(start, start + length)), `reference: start ${start}, length ${length}`);
  }
});

test('the arena is bounded: allocation answers undefined when it is full, and the room of collected buffers is used again', async () => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const bytes = 1024 * 1024;
  let held: Buffer[] = [];
  for (let buffer = allocateCrc32cBuffer(bytes); buffer !== undefined; buffer = allocateCrc32cBuffer(bytes)) held.push(buffer);
  assert.ok(held.length > 0 && held.length <= ARENA_BYTES / bytes, `${held.length} buffers of 1 MiB in an arena of ${ARENA_BYTES} bytes`);
  const offsets = new Set(held.map((buffer) => buffer.byteOffset));
  assert.equal(offsets.size, held.length, 'no two buffers share a slot');
  held = [];
  let again: Buffer | undefined;
  for (let attempt = 0; attempt < 50 && again === undefined; attempt++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 10));
    again = allocateCrc32cBuffer(bytes);
  }
  assert.ok(again !== undefined && offsets.has(again.byteOffset), 'a collected buffer\'s slot is handed out again');
});
