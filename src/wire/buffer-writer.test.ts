/** The cursor writer: fields in order, big-endian, and a layout written past or left short is an assertion. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BufferWriter } from './buffer-writer.js';

test('writes fields one after another, big-endian, exactly filling the layout', () => {
  const target = Buffer.alloc(1 + 4 + 8 + 8);
  const writer = new BufferWriter(target, target.length);
  writer.uint8(0x64).uint32(0x01020304).uint64(0x1122334455667788n).int64(-2n);
  writer.end();
  assert.deepEqual(target, Buffer.from('64' + '01020304' + '1122334455667788' + 'fffffffffffffffe', 'hex'));
});

test('a field past the layout, a short layout and a target too small are programmer errors', () => {
  const writer = new BufferWriter(Buffer.alloc(16), 4);
  writer.uint32(1);
  assert.throws(() => writer.uint8(1), { code: 'ERR_ASSERTION' });
  const short = new BufferWriter(Buffer.alloc(8), 8);
  short.uint32(1);
  assert.throws(() => short.end(), { code: 'ERR_ASSERTION' });
  assert.throws(() => new BufferWriter(Buffer.alloc(2), 4), { code: 'ERR_ASSERTION' });
});
