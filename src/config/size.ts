/**
 * Size settings in PostgreSQL's GUC syntax, for flags such as `--wal-keep-size 1GB`: an integer or decimal
 * number, optional white space, and an optional memory unit `B`, `kB`, `MB`, `GB` or `TB` (case-sensitive, as in
 * PostgreSQL: `1gb` is an error there too). A number without a unit is in the setting's base unit, which for
 * `wal_keep_size` and `max_slot_wal_keep_size` is megabytes; values are rounded to whole megabytes, as
 * PostgreSQL's convert_to_base_unit does (src/backend/utils/misc/guc.c, memory_unit_conversion_table).
 * `-1` means "unlimited" where a setting allows it (max_slot_wal_keep_size). Pure: no I/O.
 */
import assert from 'node:assert/strict';

export const BYTES_PER_MEGABYTE = 1024 * 1024;
/** The value PostgreSQL uses for "no limit" in max_slot_wal_keep_size. */
export const SIZE_UNLIMITED = -1;
/** PostgreSQL stores these settings as int megabytes: at most INT_MAX MB (about 2 PB). */
export const SIZE_MEGABYTES_MAX = 2_147_483_647;

/** Units and how many megabytes one of each is (the MB rows of PostgreSQL's memory_unit_conversion_table). */
const UNIT_MEGABYTES: Readonly<Record<string, number>> = {
  B: 1 / BYTES_PER_MEGABYTE,
  kB: 1 / 1024,
  MB: 1,
  GB: 1024,
  TB: 1024 * 1024,
};
const SIZE_TEXT = /^\s*(-?(?:\d+(?:\.\d*)?|\.\d+))\s*([A-Za-z]*)\s*$/;

assert.ok(Number.isSafeInteger(SIZE_MEGABYTES_MAX * BYTES_PER_MEGABYTE), 'the largest size in bytes is exact in a double');

export interface SizeOptions {
  /** The flag or setting name, for the error message. */
  readonly name: string;
  /** Whether -1 (unlimited) is accepted. */
  readonly allowUnlimited: boolean;
}

/**
 * Parses `text` to whole megabytes (or SIZE_UNLIMITED). Throws a RangeError naming the setting and the valid
 * units for malformed text, an unknown unit, a negative value other than -1, or a value past INT_MAX MB.
 */
export function parseSizeMegabytes(text: string, options: SizeOptions): number {
  const match = SIZE_TEXT.exec(text);
  const fail = (why: string): never => {
    throw new RangeError(`invalid value for ${options.name}: "${text}": ${why}`);
  };
  if (match === null) return fail('expected a number with an optional unit, as 64MB or 1GB');
  const [, numberText = '', unit = ''] = match;
  const perUnit = unit === '' ? 1 : UNIT_MEGABYTES[unit];
  if (perUnit === undefined) return fail('valid units for this parameter are "B", "kB", "MB", "GB", and "TB"');
  const megabytes = roundHalfEven(Number(numberText) * perUnit);
  if (megabytes === SIZE_UNLIMITED && options.allowUnlimited) return SIZE_UNLIMITED;
  if (megabytes < 0) return fail(options.allowUnlimited ? 'a size is not negative (-1 means unlimited)' : 'a size is not negative');
  if (megabytes > SIZE_MEGABYTES_MAX) return fail(`the largest size is ${SIZE_MEGABYTES_MAX}MB`);
  assert.ok(Number.isSafeInteger(megabytes));
  return megabytes;
}

/** Megabytes (from parseSizeMegabytes, not unlimited) as bytes. */
export function megabytesToBytes(megabytes: number): number {
  assert.ok(Number.isSafeInteger(megabytes) && megabytes >= 0, 'a size in megabytes is a non-negative integer');
  return megabytes * BYTES_PER_MEGABYTE;
}

/** C's rint() in the default rounding mode: halves go to the even neighbour. */
function roundHalfEven(value: number): number {
  const floor = Math.floor(value);
  const fraction = value - floor;
  if (fraction > 0.5) return floor + 1;
  if (fraction < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}
