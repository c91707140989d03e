/** Upstream stream codecs: 'w'/'k' decoding against hand-built bytes, 'r'/'h' encoding checked field by field. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { decodeHotStandby, decodeStandbyReply } from '../replication/feedback.js';
import { decodeUpstreamMessage, encodeHotStandbyFeedback, encodeStandbyStatus } from './upstream-messages.js';

/** Independent builder: big-endian u64 as 8 bytes from a hex string. */
function u64(value: bigint): number[] {
  const bytes: number[] = [];
  for (let shift = 56n; shift >= 0n; shift -= 8n) bytes.push(Number((value >> shift) & 0xffn));
  return bytes;
}

test('decodes XLogData with its WAL bytes', () => {
  const payload = Buffer.from([0x77, ...u64(0x1_0000_2000n), ...u64(0x1_0000_3000n), ...u64(123n), 1, 2, 3]);
  const message = decodeUpstreamMessage(payload);
  assert.ok(!isWalcastError(message) && message.kind === 'xlog_data');
  assert.equal(message.dataStart, 0x1_0000_2000n);
  assert.equal(message.walEnd, 0x1_0000_3000n);
  assert.equal(message.sendTimeMicros, 123n);
  assert.deepEqual([...message.data], [1, 2, 3]);
});

test('decodes keepalives and their reply request', () => {
  for (const flag of [0, 1]) {
    const message = decodeUpstreamMessage(Buffer.from([0x6b, ...u64(0x4_0000n), ...u64(7n), flag]));
    assert.ok(!isWalcastError(message) && message.kind === 'keepalive');
    assert.equal(message.walEnd, 0x4_0000n);
    assert.equal(message.replyRequested, flag === 1);
  }
});

test('refuses empty, short, oversized keepalive and unknown messages', () => {
  for (const bytes of [[], [0x77, 1, 2], [0x6b, ...u64(1n), ...u64(2n)], [0x6b, ...u64(1n), ...u64(2n), 0, 0], [0x71, 0]]) {
    assert.ok(isWalcastError(decodeUpstreamMessage(Buffer.from(bytes)), 'WALCAST_ERR_UPSTREAM'));
  }
});

test('standby status round-trips through the server-side decoder', () => {
  const encoded = encodeStandbyStatus({ writeLsn: 0x2_0000_0100n, flushLsn: 0x2_0000_0080n, applyLsn: 0x2_0000_0080n, sendTimeMicros: 99n, replyRequested: true });
  assert.equal(encoded[0], 0x72);
  assert.equal(encoded.length, 34);
  const decoded = decodeStandbyReply(encoded.subarray(1));
  assert.ok(!isWalcastError(decoded));
  assert.equal(decoded.writeLsn, 0x2_0000_0100n);
  assert.equal(decoded.flushLsn, 0x2_0000_0080n);
  assert.equal(decoded.applyLsn, 0x2_0000_0080n);
  assert.equal(decoded.replyTimeMicros, 99n);
  assert.equal(decoded.replyRequested, true);
});

test('hot-standby feedback splits full xids into xid and epoch', () => {
  const encoded = encodeHotStandbyFeedback((3n << 32n) | 1000n, (2n << 32n) | 55n, 5n);
  assert.equal(encoded.length, 25);
  assert.deepEqual([...encoded.subarray(9, 25)], [0, 0, 3, 232, 0, 0, 0, 3, 0, 0, 0, 55, 0, 0, 0, 2]);
  const decoded = decodeHotStandby(encoded.subarray(1));
  assert.ok(!isWalcastError(decoded));
  assert.equal(decoded.xmin, (3n << 32n) | 1000n);
  assert.equal(decoded.catalogXmin, (2n << 32n) | 55n);
  const none = decodeHotStandby(encodeHotStandbyFeedback(0n, 0n, 0n).subarray(1));
  assert.ok(!isWalcastError(none));
  assert.equal(none.xmin, 0n);
});
