/** LSN parsing, formatting and arithmetic (PostgreSQL's %X/%X). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { alignDown, alignUp, formatLsn, isPowerOfTwo, lsnDistance, parseLsn, parseLsnOrThrow } from './lsn.js';

test('parses and formats %X/%X without padding, upper case', () => {
  assert.equal(parseLsn('16/B374D848'), 0x16_b374_d848n);
  assert.equal(parseLsn('0/0'), 0n);
  assert.equal(parseLsn('ffffffff/ffffffff'), 0xffff_ffff_ffff_ffffn);
  assert.equal(formatLsn(0x16_b374_d848n), '16/B374D848');
  assert.equal(formatLsn(0x49006040n), '0/49006040');
  assert.equal(formatLsn(0xffff_ffff_ffff_ffffn), 'FFFFFFFF/FFFFFFFF');
  for (const lsn of [0n, 1n, 0x1_0000_0000n, 0xdead_beef_0000_0001n]) assert.equal(parseLsn(formatLsn(lsn)), lsn);
});

test('rejects what is not an LSN', () => {
  for (const text of ['', '0', '0/', '/0', '1/2/3', '123456789/0', 'g/0', '0x1/0', '-1/0']) assert.equal(parseLsn(text), undefined, text);
  assert.throws(() => parseLsnOrThrow('nope'), /invalid LSN "nope"/);
  assert.throws(() => formatLsn(-1n));
  assert.throws(() => formatLsn(1n << 64n));
});

test('aligns to pages and segments, measures distances', () => {
  assert.equal(alignDown(0x1234_5678n, 8192), 0x1234_4000n);
  assert.equal(alignUp(0x1234_5678n, 8192), 0x1234_6000n);
  assert.equal(alignUp(0x1000_0000n, 16 << 20), 0x1000_0000n);
  assert.equal(lsnDistance(0x2000n, 0x1000n), 0x1000);
  assert.throws(() => lsnDistance(1n, 2n));
  assert.throws(() => alignDown(1n, 3));
  assert.ok(isPowerOfTwo(1 << 30) && !isPowerOfTwo(0) && !isPowerOfTwo(12));
});
