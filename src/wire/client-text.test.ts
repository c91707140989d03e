/**
 * Quoting of client text: every byte a client can send, NUL above all, comes out as text an ErrorResponse field can
 * carry (the serializer asserts there is no NUL), escaped so it cannot forge a log line, and bounded in length.
 * Also the places that build errors from client input: each must serialize without tripping an assertion.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { errorResponse } from './backend-serializer.js';
import { CLIENT_TEXT_QUOTE_MAX_CHARS, describeClientByte, quoteClientText } from './client-text.js';
import { ScramServerExchange, createScramVerifier } from './scram.js';

test('control characters, NUL, DEL, C1, backslash and quote are escaped; other text is kept', () => {
  assert.equal(quoteClientText('abc'), '"abc"');
  assert.equal(quoteClientText('a\0b'), '"a\\x00b"');
  assert.equal(quoteClientText('line\nforged'), '"line\\x0aforged"');
  assert.equal(quoteClientText('\x7f\u0085'), '"\\x7f\\x85"');
  assert.equal(quoteClientText('say "hi" \\'), '"say \\"hi\\" \\\\"');
  assert.equal(quoteClientText('zürich ✓'), '"zürich ✓"');
});

test('quoted text is bounded', () => {
  const quoted = quoteClientText('x'.repeat(10_000));
  assert.equal(quoted, `"${'x'.repeat(CLIENT_TEXT_QUOTE_MAX_CHARS)}..."`);
});

test('every byte value quotes to text without NUL or control characters', () => {
  for (let byte = 0; byte <= 0xff; byte++) {
    for (const text of [quoteClientText(String.fromCharCode(byte)), describeClientByte(byte)]) {
      assert.doesNotMatch(text, /[\x00-\x1f\x7f]/, `byte 0x${byte.toString(16)}`);
      errorResponse({ severity: 'FATAL', sqlState: '08P01', message: text });
    }
  }
  assert.equal(describeClientByte(0), '0x00');
  assert.equal(describeClientByte(0x71), '"q" (0x71)');
});

test('a SCRAM client-first message with NUL in an attribute is refused with an error that serializes', () => {
  const exchange = new ScramServerExchange(createScramVerifier('secret'));
  let caught: unknown;
  try {
    exchange.serverFirst('n,,\0=x,r=abc');
  } catch (error) {
    caught = error;
  }
  assert.ok(isWalcastError(caught, 'WALCAST_ERR_PROTOCOL_VIOLATION'), `got ${String(caught)}`);
  errorResponse({ severity: 'FATAL', sqlState: caught.sqlState, message: caught.message });
});
