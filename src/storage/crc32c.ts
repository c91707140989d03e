/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of PostgreSQL WAL records
 * (src/include/port/pg_crc32c.h: INIT_CRC32C, COMP_CRC32C, FIN_CRC32C) and of walcast's control file.
 *
 * Table-driven, no native code: sixteen 256-entry tables let the loop fold sixteen input bytes per step. Where the
 * runtime has WebAssembly, long ranges go through that loop compiled to it (crc32c-wasm.ts, built from its opcodes
 * at load: ~0.23 CPU s/GB on 8 KiB pages of a buffer in its memory, allocateCrc32cBuffer, ~0.26 with the copy in of
 * any other); otherwise through the same loop in
 * TypeScript, reading four aligned 32-bit words through an Int32Array view of the buffer's memory on little-endian
 * hosts (~0.44), where a word read is the bytes in CRC order. The former slice-by-8 over byte reads cost ~0.79
 * (module microbenchmark, issue 13: the TS backend verifies every page it sends). Short ranges, the unaligned head
 * and the tail go eight or one byte at a time from the same tables. It works on a range of a Buffer and is
 * incremental, so a WAL record split over pages and reads is checksummed piece by piece without being reassembled.
 */
import assert from 'node:assert/strict';
import { endianness } from 'node:os';
import { createWasmCrc32c } from './crc32c-wasm.js';

/** The reflected Castagnoli polynomial. */
const POLYNOMIAL = 0x82f63b78;
const TABLE_ENTRIES = 256;
/** Tables: slice k maps a byte to its CRC contribution k bytes ahead of the end of a step. */
const SLICES = 16;
/**
 * Ranges shorter than this take the byte-read loop: the word view (an object per call) or the call into
 * WebAssembly costs more than the faster loop saves on a record header or a small record.
 */
const WORD_PATH_BYTES_MIN = 256;
/** A 32-bit word read is the four bytes in CRC order only on a little-endian host; elsewhere bytes are read. */
const WORD_READS = endianness() === 'LE';

/** The running state before any byte: INIT_CRC32C. */
export const CRC32C_INITIAL = 0xffffffff;

const TABLES = buildTables();
const WASM = createWasmCrc32c(TABLES);

/** The loops a range of WORD_PATH_BYTES_MIN or more goes through: the fastest this runtime has. */
export type Crc32cImplementation = 'wasm' | 'words' | 'bytes';
export const CRC32C_IMPLEMENTATION: Crc32cImplementation = WASM !== undefined ? 'wasm' : WORD_READS ? 'words' : 'bytes';

function buildTables(): Int32Array {
  const tables = new Int32Array(TABLE_ENTRIES * SLICES);
  for (let byte = 0; byte < TABLE_ENTRIES; byte++) {
    let crc = byte;
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ POLYNOMIAL : crc >>> 1;
    tables[byte] = crc;
  }
  for (let slice = 1; slice < SLICES; slice++) {
    for (let byte = 0; byte < TABLE_ENTRIES; byte++) {
      const previous = tables[(slice - 1) * TABLE_ENTRIES + byte]!;
      tables[slice * TABLE_ENTRIES + byte] = (previous >>> 8) ^ tables[previous & 0xff]!;
    }
  }
  return tables;
}

/** Folds bytes [start, end) of `bytes` into a running state (COMP_CRC32C). Returns the new state. */
export function crc32cUpdate(state: number, bytes: Uint8Array, start = 0, end = bytes.length): number {
  assert.ok(start >= 0 && start <= end, 'crc32c range starts inside the buffer');
  assert.ok(end <= bytes.length, 'crc32c range ends inside the buffer');
  return updateRange(state | 0, bytes, start, end, CRC32C_IMPLEMENTATION) >>> 0;
}

/**
 * crc32cUpdate through the named loops, for tests and benchmarks to compare them (all must agree to the bit). Names
 * this runtime lacks fall back as crc32cUpdate does.
 */
export function crc32cUpdateUsing(implementation: Crc32cImplementation, state: number, bytes: Uint8Array, start = 0, end = bytes.length): number {
  assert.ok(start >= 0 && start <= end && end <= bytes.length, 'crc32c range inside the buffer');
  return updateRange(state | 0, bytes, start, end, implementation) >>> 0;
}

/** The hot loop's dispatch: primitive arguments only. */
function updateRange(state: number, bytes: Uint8Array, start: number, end: number, implementation: Crc32cImplementation): number {
  if (end - start < WORD_PATH_BYTES_MIN || implementation === 'bytes') return updateBytes(state, bytes, start, end);
  if (implementation === 'wasm' && WASM !== undefined) {
    const crc = WASM.updateSteps(state, bytes, start, end);
    return updateBytes(crc, bytes, start + ((end - start) & ~15), end);
  }
  if (!WORD_READS) return updateBytes(state, bytes, start, end);
  // Bytes up to the first 4-byte-aligned address, so the words below are aligned reads of the same memory.
  const head = (4 - ((bytes.byteOffset + start) & 3)) & 3;
  let crc = updateBytes(state, bytes, start, start + head);
  const wordsStart = start + head;
  const steps = (end - wordsStart) >>> 4;
  const words = new Int32Array(bytes.buffer, bytes.byteOffset + wordsStart, steps * 4);
  crc = updateWords(crc, words);
  return updateBytes(crc, bytes, wordsStart + steps * 16, end);
}

/** Sixteen bytes (four little-endian words) per step: slice-by-16. `words.length` is a multiple of four. */
function updateWords(state: number, words: Int32Array): number {
  const t = TABLES;
  let crc = state;
  for (let index = 0; index < words.length; index += 4) {
    const a = crc ^ words[index]!;
    const b = words[index + 1]!;
    const c = words[index + 2]!;
    const d = words[index + 3]!;
    crc =
      t[15 * 256 + (a & 0xff)]! ^
      t[14 * 256 + ((a >>> 8) & 0xff)]! ^
      t[13 * 256 + ((a >>> 16) & 0xff)]! ^
      t[12 * 256 + (a >>> 24)]! ^
      t[11 * 256 + (b & 0xff)]! ^
      t[10 * 256 + ((b >>> 8) & 0xff)]! ^
      t[9 * 256 + ((b >>> 16) & 0xff)]! ^
      t[8 * 256 + (b >>> 24)]! ^
      t[7 * 256 + (c & 0xff)]! ^
      t[6 * 256 + ((c >>> 8) & 0xff)]! ^
      t[5 * 256 + ((c >>> 16) & 0xff)]! ^
      t[4 * 256 + (c >>> 24)]! ^
      t[3 * 256 + (d & 0xff)]! ^
      t[2 * 256 + ((d >>> 8) & 0xff)]! ^
      t[256 + ((d >>> 16) & 0xff)]! ^
      t[d >>> 24]!;
  }
  return crc;
}

/** Eight bytes per step assembled from byte reads (any alignment, any host), then the tail byte by byte. */
function updateBytes(state: number, bytes: Uint8Array, start: number, end: number): number {
  const t = TABLES;
  let crc = state;
  let index = start;
  const wordsEnd = end - ((end - start) & 7);
  while (index < wordsEnd) {
    const low = crc ^ (bytes[index]! | (bytes[index + 1]! << 8) | (bytes[index + 2]! << 16) | (bytes[index + 3]! << 24));
    const high = bytes[index + 4]! | (bytes[index + 5]! << 8) | (bytes[index + 6]! << 16) | (bytes[index + 7]! << 24);
    crc =
      t[7 * 256 + (low & 0xff)]! ^
      t[6 * 256 + ((low >>> 8) & 0xff)]! ^
      t[5 * 256 + ((low >>> 16) & 0xff)]! ^
      t[4 * 256 + (low >>> 24)]! ^
      t[3 * 256 + (high & 0xff)]! ^
      t[2 * 256 + ((high >>> 8) & 0xff)]! ^
      t[256 + ((high >>> 16) & 0xff)]! ^
      t[high >>> 24]!;
    index += 8;
  }
  while (index < end) {
    crc = (crc >>> 8) ^ t[(crc ^ bytes[index]!) & 0xff]!;
    index += 1;
  }
  return crc;
}

/**
 * A buffer of `bytes` inside the WebAssembly loop's memory, whose ranges are checksummed in place instead of being
 * copied in first (crc32c-wasm.ts: the arena, ARENA_BYTES in all), or undefined when this runtime has no
 * WebAssembly or the arena has no room left: the caller then allocates on the heap (checksummed with the copy). Its
 * contents are not zeroed (a slot a collected buffer left); its room returns when it is garbage-collected.
 */
export function allocateCrc32cBuffer(bytes: number): Buffer | undefined {
  return WASM?.allocate(bytes);
}

/** FIN_CRC32C: the checksum value of a finished state, an unsigned 32-bit number. */
export function crc32cFinish(state: number): number {
  return (~state) >>> 0;
}

/** The CRC-32C of bytes [start, end) in one call. */
export function crc32c(bytes: Uint8Array, start = 0, end = bytes.length): number {
  return crc32cFinish(crc32cUpdate(CRC32C_INITIAL, bytes, start, end));
}
