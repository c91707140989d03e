/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of PostgreSQL WAL records
 * (src/include/port/pg_crc32c.h: INIT_CRC32C, COMP_CRC32C, FIN_CRC32C) and of walcast's control file.
 *
 * Pure TypeScript, slice-by-8: eight 256-entry tables let the loop fold eight input bytes per step. It works on
 * a range of a Buffer without copying and is incremental, so a WAL record split over pages and reads is
 * checksummed piece by piece without being reassembled.
 */
import assert from 'node:assert/strict';

/** The reflected Castagnoli polynomial. */
const POLYNOMIAL = 0x82f63b78;
const TABLE_ENTRIES = 256;
const SLICES = 8;

/** The running state before any byte: INIT_CRC32C. */
export const CRC32C_INITIAL = 0xffffffff;

const TABLES = buildTables();

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
  return updateRange(state | 0, bytes, start, end) >>> 0;
}

/** The hot loop: primitive arguments only, eight bytes per step, then the tail byte by byte. */
function updateRange(state: number, bytes: Uint8Array, start: number, end: number): number {
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

/** FIN_CRC32C: the checksum value of a finished state, an unsigned 32-bit number. */
export function crc32cFinish(state: number): number {
  return (~state) >>> 0;
}

/** The CRC-32C of bytes [start, end) in one call. */
export function crc32c(bytes: Uint8Array, start = 0, end = bytes.length): number {
  return crc32cFinish(crc32cUpdate(CRC32C_INITIAL, bytes, start, end));
}
