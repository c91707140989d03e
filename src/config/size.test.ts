/** parseSizeMegabytes: PostgreSQL's memory units, base unit MB, rounding, -1, and every rejection. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SIZE_MEGABYTES_MAX, SIZE_UNLIMITED, megabytesToBytes, parseSizeMegabytes } from './size.js';

const keep = { name: '--wal-keep-size', allowUnlimited: false };
const cap = { name: '--max-slot-wal-keep-size', allowUnlimited: true };

test('units as PostgreSQL: a plain number is MB; B, kB, MB, GB, TB; white space allowed', () => {
  const cases: [string, number][] = [
    ['64', 64], ['64MB', 64], ['1GB', 1024], ['2TB', 2 * 1024 * 1024], ['2048kB', 2], [`${3 * 1024 * 1024}B`, 3],
    [' 16 MB ', 16], ['0', 0], ['1.5GB', 1536], ['.5GB', 512], ['1.GB', 1024],
  ];
  for (const [text, megabytes] of cases) assert.equal(parseSizeMegabytes(text, keep), megabytes, text);
});

test('values are rounded to whole megabytes, halves to even (guc.c convert_to_base_unit uses rint)', () => {
  assert.equal(parseSizeMegabytes('100kB', keep), 0);
  assert.equal(parseSizeMegabytes('512kB', keep), 0, 'half rounds to even 0');
  assert.equal(parseSizeMegabytes('1536kB', keep), 2, 'half rounds to even 2');
  assert.equal(parseSizeMegabytes('1600kB', keep), 2);
});

test('-1 is unlimited only where allowed', () => {
  assert.equal(parseSizeMegabytes('-1', cap), SIZE_UNLIMITED);
  assert.throws(() => parseSizeMegabytes('-1', keep), /invalid value for --wal-keep-size: "-1": a size is not negative/);
  assert.throws(() => parseSizeMegabytes('-2', cap), /-1 means unlimited/);
});

test('malformed text, unknown or wrongly cased units and oversized values are RangeErrors naming the flag', () => {
  for (const text of ['', 'MB', '1 G B', '1e3', 'ten', '0x10', '1,5GB']) {
    assert.throws(() => parseSizeMegabytes(text, keep), (error) => error instanceof RangeError && error.message.includes('--wal-keep-size'), text);
  }
  for (const text of ['1gb', '1Mb', '1KB', '1PB', '1k']) {
    assert.throws(() => parseSizeMegabytes(text, keep), /valid units for this parameter are "B", "kB", "MB", "GB", and "TB"/, text);
  }
  assert.equal(parseSizeMegabytes(`${SIZE_MEGABYTES_MAX}`, keep), SIZE_MEGABYTES_MAX);
  assert.throws(() => parseSizeMegabytes(`${SIZE_MEGABYTES_MAX + 1}`, keep), /the largest size/);
  assert.throws(() => parseSizeMegabytes('3000TB', keep), /the largest size/);
});

test('megabytesToBytes', () => {
  assert.equal(megabytesToBytes(64), 64 * 1024 * 1024);
  assert.throws(() => megabytesToBytes(SIZE_UNLIMITED));
});
