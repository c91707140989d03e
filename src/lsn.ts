/**
 * Log sequence numbers: the one place where walcast parses, formats and does arithmetic on LSNs.
 *
 * An LSN is a byte position in the WAL stream, an unsigned 64-bit integer. It is a `bigint` everywhere in
 * walcast so that no position above 2^53 is ever rounded. The text form is PostgreSQL's `%X/%X`: upper-case
 * hex of the high and low 32 bits, no padding (see PostgreSQL src/include/access/xlogdefs.h, LSN_FORMAT_ARGS).
 */
import assert from 'node:assert/strict';

export type Lsn = bigint;

/** InvalidXLogRecPtr: PostgreSQL's "no position". */
export const INVALID_LSN: Lsn = 0n;
export const LSN_MAX: Lsn = 0xffff_ffff_ffff_ffffn;

/** XLOG_BLCKSZ: the WAL page size PostgreSQL is built with by default; walcast supports only this. */
export const WAL_PAGE_BYTES = 8192;

const LSN_TEXT = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

/** Parses `X/Y`; returns undefined for anything else, so callers can report the input they got. */
export function parseLsn(text: string): Lsn | undefined {
  const match = LSN_TEXT.exec(text.trim());
  if (match === null) return undefined;
  return (BigInt('0x' + match[1]) << 32n) | BigInt('0x' + match[2]);
}

/** Parses `X/Y` or throws a RangeError naming the input. */
export function parseLsnOrThrow(text: string): Lsn {
  const lsn = parseLsn(text);
  if (lsn === undefined) throw new RangeError(`invalid LSN "${text}": expected X/Y in hex, as 16/B374D848`);
  return lsn;
}

export function formatLsn(lsn: Lsn): string {
  assertLsn(lsn);
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffff_ffffn).toString(16).toUpperCase()}`;
}

export function assertLsn(lsn: Lsn): void {
  assert.equal(typeof lsn, 'bigint');
  assert.ok(lsn >= 0n, 'LSN is negative');
  assert.ok(lsn <= LSN_MAX, 'LSN exceeds 64 bits');
}

export function minLsn(a: Lsn, b: Lsn): Lsn {
  return a < b ? a : b;
}

export function maxLsn(a: Lsn, b: Lsn): Lsn {
  return a > b ? a : b;
}

/** Rounds down to a multiple of `unitBytes` (a power of two: a page or a segment size). */
export function alignDown(lsn: Lsn, unitBytes: number): Lsn {
  assert.ok(isPowerOfTwo(unitBytes), 'alignment unit must be a power of two');
  return lsn - (lsn % BigInt(unitBytes));
}

/** Rounds up to a multiple of `unitBytes` (a power of two). */
export function alignUp(lsn: Lsn, unitBytes: number): Lsn {
  const down = alignDown(lsn, unitBytes);
  return down === lsn ? lsn : down + BigInt(unitBytes);
}

/** The distance `later - earlier` as a safe JS number; asserts it fits (callers bound their ranges). */
export function lsnDistance(later: Lsn, earlier: Lsn): number {
  assert.ok(later >= earlier, 'lsnDistance: later < earlier');
  const bytes = later - earlier;
  assert.ok(bytes <= BigInt(Number.MAX_SAFE_INTEGER), 'lsnDistance: too large for a number');
  return Number(bytes);
}

export function isPowerOfTwo(value: number): boolean {
  return Number.isInteger(value) && value > 0 && (value & (value - 1)) === 0;
}
