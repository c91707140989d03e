/** Exact 64-bit integers in API JSON: bigints become bare digits, everything else is plain JSON.stringify. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { stringifyJson } from './json.js';

test('bigints are written as exact JSON numbers, at any depth', () => {
  const text = stringifyJson({ xmin: (0xffff_ffffn << 32n) | 0xffff_fffen, list: [1n, -2n], nested: { ts: 812_345_678_901_234_567n } });
  assert.equal(text, '{"xmin":18446744073709551614,"list":[1,-2],"nested":{"ts":812345678901234567}}');
});

test('strings, numbers, null and indentation are untouched', () => {
  assert.equal(stringifyJson({ a: 'bigint:1', b: 1.5, c: null }), '{"a":"bigint:1","b":1.5,"c":null}');
  assert.equal(stringifyJson([1n], 2), '[\n  1\n]');
});
