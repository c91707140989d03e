/**
 * The failpoint table parser: what a test may arm, and that a typo is refused rather than silently arming nothing.
 * (Firing is exercised by test/kill-matrix.test.ts in a child process, since the table is read once at load.)
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FAILPOINT_NAMES, failpoint, parseFailpoints } from './failpoints.js';

test('name=action[@N] entries separated by ";" are parsed; N defaults to 1', () => {
  const table = parseFailpoints(' wal-after-write=exit@20 ; control-before-rename=enospc;');
  assert.deepEqual([...table.entries()], [
    ['wal-after-write', { action: 'exit', fireAt: 20, hits: 0 }],
    ['control-before-rename', { action: 'enospc', fireAt: 1, hits: 0 }],
  ]);
  assert.equal(parseFailpoints('').size, 0);
});

test('unknown names, unknown actions and malformed counts are refused', () => {
  for (const text of ['wal-after-wrte=exit', 'wal-after-write=crash', 'wal-after-write=exit@0', 'wal-after-write', 'wal-after-write=exit@x']) {
    assert.throws(() => parseFailpoints(text), RangeError, text);
  }
});

test('without WALCAST_FAILPOINTS_ENABLE=1 every point is a no-op', () => {
  assert.notEqual(process.env.WALCAST_FAILPOINTS_ENABLE, '1');
  for (const name of FAILPOINT_NAMES) failpoint(name);
});
