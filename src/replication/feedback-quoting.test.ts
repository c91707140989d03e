/**
 * Replica feedback with a hostile type byte: the error it decodes to must serialize into an ErrorResponse (0x00
 * reached the serializer's no-NUL assertion and the client got no FATAL, the log a stack trace per message).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { errorResponse } from '../wire/backend-serializer.js';
import { decodeFeedback } from './feedback.js';

test('feedback with type byte 0x00 is an error whose reply serializes (it tripped "protocol strings cannot contain NUL")', () => {
  const decoded = decodeFeedback(Buffer.from([0x00, 1, 2, 3]));
  assert.ok(isWalcastError(decoded, 'WALCAST_ERR_FEEDBACK_MALFORMED'));
  assert.match(decoded.message, /0x00/);
  errorResponse({ severity: 'FATAL', sqlState: decoded.sqlState, message: decoded.message });
});

