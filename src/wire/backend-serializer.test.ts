/**
 * Serializer and result-set tests: each expected message is written out byte by byte here, independently of the
 * serializer, following the PostgreSQL "Message Formats" page.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  authenticationOk,
  authenticationSasl,
  authenticationSaslContinue,
  authenticationSaslFinal,
  backendKeyData,
  commandComplete,
  copyBothResponse,
  copyData,
  copyDone,
  dataRow,
  emptyQueryResponse,
  errorResponse,
  noticeResponse,
  parameterStatus,
  readyForQuery,
} from './backend-serializer.js';
import { simpleResultSet } from './result-set.js';

/** Builds expected bytes from a readable spec: strings are latin1 text, numbers are given with explicit widths. */
function bytes(...parts: Array<string | [number, 1 | 2 | 4]>): Buffer {
  return Buffer.concat(
    parts.map((part) => {
      if (typeof part === 'string') return Buffer.from(part, 'latin1');
      const [value, width] = part;
      const buffer = Buffer.alloc(width);
      if (width === 1) buffer.writeInt8(value);
      else if (width === 2) buffer.writeInt16BE(value);
      else buffer.writeInt32BE(value);
      return buffer;
    }),
  );
}

describe('backend serializer', () => {
  test('authentication requests', () => {
    assert.deepEqual(authenticationOk(), bytes('R', [8, 4], [0, 4]));
    assert.deepEqual(authenticationSasl(['SCRAM-SHA-256']), bytes('R', [23, 4], [10, 4], 'SCRAM-SHA-256\0\0'));
    assert.deepEqual(authenticationSaslContinue('r=abc'), bytes('R', [13, 4], [11, 4], 'r=abc'));
    assert.deepEqual(authenticationSaslFinal(Buffer.from('v=x')), bytes('R', [11, 4], [12, 4], 'v=x'));
  });

  test('session messages', () => {
    assert.deepEqual(parameterStatus('integer_datetimes', 'on'), bytes('S', [25, 4], 'integer_datetimes\0on\0'));
    assert.deepEqual(backendKeyData(1234, -5), bytes('K', [12, 4], [1234, 4], [-5, 4]));
    assert.deepEqual(readyForQuery('I'), bytes('Z', [5, 4], 'I'));
    assert.deepEqual(commandComplete('START_STREAMING'), bytes('C', [20, 4], 'START_STREAMING\0'));
    assert.deepEqual(emptyQueryResponse(), bytes('I', [4, 4]));
  });

  test('ErrorResponse and NoticeResponse carry S, V, C, M, optional D and H, and a terminator', () => {
    const body = 'SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "x"\0\0';
    assert.deepEqual(
      errorResponse({ severity: 'FATAL', sqlState: '28P01', message: 'password authentication failed for user "x"' }),
      bytes('E', [4 + body.length, 4], body),
    );
    const full = 'SWARNING\0VWARNING\0C01000\0Mm\0Dd\0Hh\0\0';
    assert.deepEqual(noticeResponse({ severity: 'WARNING', sqlState: '01000', message: 'm', detail: 'd', hint: 'h' }), bytes('N', [4 + full.length, 4], full));
  });

  test('COPY messages', () => {
    assert.deepEqual(copyBothResponse(), bytes('W', [7, 4], [0, 1], [0, 2]));
    assert.deepEqual(copyDone(), bytes('c', [4, 4]));
    assert.deepEqual(copyData(Buffer.from('kabc')), bytes('d', [8, 4], 'kabc'));
  });

  test('DataRow: text values, UTF-8 lengths in bytes, NULL as -1', () => {
    assert.deepEqual(dataRow(['1', null, 'é']), bytes('D', [4 + 2 + 5 + 4 + 6, 4], [3, 2], [1, 4], '1', [-1, 4], [2, 4], '\u00c3\u00a9'));
  });

  test('simpleResultSet has the IDENTIFY_SYSTEM shape of printsimple.c', () => {
    const messages = simpleResultSet(
      [
        { name: 'systemid', type: 'text' },
        { name: 'timeline', type: 'int4' },
        { name: 'restart_tli', type: 'int8' },
      ],
      [['7', '1', null]],
      'IDENTIFY_SYSTEM',
    );
    const field = (name: string, oid: number, size: number): Buffer => bytes(`${name}\0`, [0, 4], [0, 2], [oid, 4], [size, 2], [-1, 4], [0, 2]);
    const fields = Buffer.concat([field('systemid', 25, -1), field('timeline', 23, 4), field('restart_tli', 20, 8)]);
    assert.equal(messages.length, 3);
    assert.deepEqual(messages[0], Buffer.concat([bytes('T', [4 + 2 + fields.length, 4], [3, 2]), fields]));
    assert.deepEqual(messages[1], bytes('D', [4 + 2 + 5 + 5 + 4, 4], [3, 2], [1, 4], '7', [1, 4], '1', [-1, 4]));
    assert.deepEqual(messages[2], bytes('C', [20, 4], 'IDENTIFY_SYSTEM\0'));
  });

  test('an empty result set is RowDescription and CommandComplete only', () => {
    assert.equal(simpleResultSet([{ name: 'a', type: 'text' }], [], 'SHOW').length, 2);
  });
});
