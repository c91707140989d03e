/** The cursor reader: each field type, bounded strings, and the error code a short body becomes. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { BufferReader } from './buffer-reader.js';

test('reads fixed-width fields in order, big-endian, signed and unsigned', () => {
  const body = Buffer.from('ff' + 'fffe' + 'fffffffd' + 'fffffffc' + 'fffffffffffffffb' + 'fffffffffffffffa', 'hex');
  const reader = new BufferReader(body, 'test');
  assert.equal(reader.int8(), 0xff);
  assert.equal(reader.int16(), -2);
  assert.equal(reader.int32(), -3);
  assert.equal(reader.uint32(), 0xfffffffc);
  assert.equal(reader.uint64(), 0xfffffffffffffffbn);
  assert.equal(reader.int64(), -6n);
  reader.end();
});

test('a C string may be bounded and decoded as latin1', () => {
  const reader = new BufferReader(Buffer.from('key\0\xe9t\xe9\0', 'latin1'), 'test');
  assert.equal(reader.cString({ maxBytes: 3 }), 'key');
  assert.equal(reader.cString({ encoding: 'latin1' }), 'été');
  const long = new BufferReader(Buffer.from('longer\0'), 'test');
  assert.throws(() => long.cString({ maxBytes: 5 }), (error) => isWalcastError(error, 'WALCAST_ERR_PROTOCOL_VIOLATION') && /longer than 5 bytes/.test(error.message));
});

test('a short body is a protocol violation by default, or the code the codec names', () => {
  assert.throws(() => new BufferReader(Buffer.alloc(7), 'StartupMessage').uint64(), (error) =>
    isWalcastError(error, 'WALCAST_ERR_PROTOCOL_VIOLATION') && error.message === 'invalid StartupMessage message format: needs 8 more bytes, has 7');
  assert.throws(() => new BufferReader(Buffer.alloc(3), 'hot standby feedback', 'WALCAST_ERR_FEEDBACK_MALFORMED').uint32(), (error) =>
    isWalcastError(error, 'WALCAST_ERR_FEEDBACK_MALFORMED'));
});
