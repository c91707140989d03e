/** The reply reader: feedback to the sink, replies on request, graceful and erroneous endings, the silence timeout. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Feedback } from './feedback.js';
import { ReplyReader } from './reply-reader.js';

function standbyReply(replyRequested: boolean): Buffer {
  const message = Buffer.alloc(34);
  message.write('r', 0, 'latin1');
  message.writeBigUInt64BE(0x100n, 1);
  message[33] = replyRequested ? 1 : 0;
  return message;
}

test('feedback reaches the sink; a reply request triggers onReplyRequested; CopyDone ends gracefully', async () => {
  const received: Feedback[] = [];
  let replies = 0;
  const reader = new ReplyReader({ sink: { update: (feedback) => received.push(feedback) }, onReplyRequested: () => replies++, replicaTimeoutMs: 60_000 });
  reader.handle({ kind: 'copy_data', payload: standbyReply(false) });
  reader.handle({ kind: 'copy_data', payload: standbyReply(true) });
  assert.equal(received.length, 2);
  assert.equal(replies, 1);
  reader.handle({ kind: 'copy_done' });
  assert.deepEqual(await reader.ended, { kind: 'copy_done' });
  reader.handle({ kind: 'copy_data', payload: standbyReply(true) });
  assert.equal(received.length, 2, 'nothing is handled after the end');
});

test('malformed feedback and unexpected messages end the stream with 08P01 errors', async () => {
  const malformed = new ReplyReader({ sink: { update: () => undefined }, onReplyRequested: () => undefined, replicaTimeoutMs: 60_000 });
  malformed.handle({ kind: 'copy_data', payload: Buffer.from('h') });
  const end = await malformed.ended;
  assert.ok(end.kind === 'error' && end.error.code === 'WALCAST_ERR_FEEDBACK_MALFORMED' && end.error.sqlState === '08P01');
  const unexpected = new ReplyReader({ sink: { update: () => undefined }, onReplyRequested: () => undefined, replicaTimeoutMs: 60_000 });
  unexpected.handle({ kind: 'unexpected', description: 'Query' });
  const second = await unexpected.ended;
  assert.ok(second.kind === 'error' && second.error.code === 'WALCAST_ERR_PROTOCOL_VIOLATION');
});

test('a silent replica is timed out', async () => {
  const reader = new ReplyReader({ sink: { update: () => undefined }, onReplyRequested: () => undefined, replicaTimeoutMs: 40 });
  // The reader's timer is unref'd (a live socket keeps a server running); the test keeps the loop alive itself.
  const keepAlive = setTimeout(() => undefined, 5000);
  const end = await reader.ended;
  clearTimeout(keepAlive);
  assert.ok(end.kind === 'error' && end.error.code === 'WALCAST_ERR_REPLICA_TIMEOUT');
});
