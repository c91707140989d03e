/**
 * Replica feedback codecs: 'r', 'h' and 'z' (old and new Neon key names), built byte by byte here, and malformed,
 * truncated and oversized input, which must come back as errors and never throw.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WalcastError } from '../errors.js';
import { decodeFeedback, type Feedback } from './feedback.js';

function u64(value: bigint): Buffer {
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64BE(value);
  return bytes;
}
function u32(value: number): Buffer {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(value);
  return bytes;
}
function key(name: string, value: Buffer): Buffer {
  return Buffer.concat([Buffer.from(name + '\0', 'latin1'), u32(value.length), value]);
}
function zMessage(keys: Buffer[]): Buffer {
  const payload = Buffer.concat([Buffer.from([keys.length]), ...keys]);
  return Buffer.concat([Buffer.from('z'), u64(BigInt(payload.length)), payload]);
}

const standbyReply = Buffer.concat([Buffer.from('r'), u64(0x1_0000_0100n), u64(0x1_0000_0080n), u64(0x1_0000_0040n), u64(777n), Buffer.from([1])]);
const hotStandby = Buffer.concat([Buffer.from('h'), u64(555n), u32(1234), u32(2), u32(1200), u32(3)]);

function decoded(payload: Buffer): Feedback {
  const result = decodeFeedback(payload);
  assert.ok(!(result instanceof WalcastError), result instanceof WalcastError ? result.message : '');
  return result;
}

test("'r' decodes write/flush/apply/time/replyRequested", () => {
  assert.deepEqual(decoded(standbyReply), {
    kind: 'standby_reply',
    writeLsn: 0x1_0000_0100n,
    flushLsn: 0x1_0000_0080n,
    applyLsn: 0x1_0000_0040n,
    replyTimeMicros: 777n,
    replyRequested: true,
  });
});

test("'h' decodes full transaction ids as epoch << 32 | xid, and xid 0 as none", () => {
  assert.deepEqual(decoded(hotStandby), { kind: 'hot_standby', timeMicros: 555n, xmin: (2n << 32n) | 1234n, catalogXmin: (3n << 32n) | 1200n });
  const none = Buffer.concat([Buffer.from('h'), u64(1n), u32(0), u32(9), u32(0), u32(9)]);
  assert.deepEqual(decoded(none), { kind: 'hot_standby', timeMicros: 1n, xmin: 0n, catalogXmin: 0n });
});

test("'z' with the old wire names (as the Rust pageserver writes them)", () => {
  const message = zMessage([
    key('current_timeline_size', u64(1000n)),
    key('ps_writelsn', u64(0x300n)),
    key('ps_flushlsn', u64(0x200n)),
    key('ps_applylsn', u64(0x100n)),
    key('ps_replytime', u64(99n)),
  ]);
  assert.deepEqual(decoded(message), {
    kind: 'pageserver',
    currentTimelineSize: 1000n,
    lastReceivedLsn: 0x300n,
    diskConsistentLsn: 0x200n,
    remoteConsistentLsn: 0x100n,
    replyTimeMicros: 99n,
    shardNumber: 0,
    corruptionDetected: false,
  });
});

test("'z' with the new names, shard number, corruption flag and an unknown key skipped", () => {
  const message = zMessage([
    key('last_received_lsn', u64(0x30n)),
    key('some_future_key', Buffer.from('whatever')),
    key('disk_consistent_lsn', u64(0x20n)),
    key('remote_consistent_lsn', u64(0x10n)),
    key('replytime', u64(5n)),
    key('shard_number', u32(7)),
    key('corruption_detected', Buffer.from([1])),
  ]);
  const feedback = decoded(message);
  assert.equal(feedback.kind, 'pageserver');
  assert.ok(feedback.kind === 'pageserver');
  assert.equal(feedback.lastReceivedLsn, 0x30n);
  assert.equal(feedback.diskConsistentLsn, 0x20n);
  assert.equal(feedback.remoteConsistentLsn, 0x10n);
  assert.equal(feedback.replyTimeMicros, 5n);
  assert.equal(feedback.shardNumber, 7);
  assert.equal(feedback.corruptionDetected, true);
});

test('every truncation of a valid message is an error, never a throw', () => {
  const valid = [standbyReply, hotStandby, zMessage([key('ps_writelsn', u64(1n)), key('replytime', u64(2n))])];
  for (const message of valid) {
    for (let length = 0; length < message.length; length++) {
      const result = decodeFeedback(message.subarray(0, length));
      assert.ok(result instanceof WalcastError, `length ${length} of ${String.fromCharCode(message[0] ?? 0)} must be rejected`);
      assert.equal(result.code, 'WALCAST_ERR_FEEDBACK_MALFORMED');
    }
  }
});

test('wrong value lengths, bad flags, unknown tags and oversized payloads are errors', () => {
  const cases: Buffer[] = [
    zMessage([key('ps_writelsn', u32(1))]),
    zMessage([key('shard_number', u64(1n))]),
    Buffer.concat([standbyReply.subarray(0, 33), Buffer.from([7])]),
    Buffer.from('x123'),
    zMessage([key('current_timeline_size', Buffer.alloc(5000))]),
    // A key whose declared length runs past the end.
    Buffer.concat([Buffer.from('z'), u64(0n), Buffer.from([1]), Buffer.from('ps_writelsn\0'), u32(0x7fffffff)]),
    // A key name with no terminator.
    Buffer.concat([Buffer.from('z'), u64(0n), Buffer.from([1]), Buffer.alloc(100, 0x61)]),
    // A negative value length, and a terminated key name longer than any real key.
    Buffer.concat([Buffer.from('z'), u64(0n), Buffer.from([1]), Buffer.from('ps_writelsn\0'), u32(0xffffffff)]),
    zMessage([key('k'.repeat(65), u64(1n))]),
  ];
  for (const message of cases) assert.ok(decodeFeedback(message) instanceof WalcastError, message.toString('hex').slice(0, 40));
});

test('random bytes never throw', () => {
  let seed = 12345;
  const random = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
  for (let round = 0; round < 5000; round++) {
    const bytes = Buffer.alloc(random() % 80);
    for (let index = 0; index < bytes.length; index++) bytes[index] = random() & 0xff;
    if (bytes.length > 0) bytes[0] = [0x72, 0x68, 0x7a][random() % 3] ?? 0x72;
    assert.doesNotThrow(() => decodeFeedback(bytes));
  }
});
