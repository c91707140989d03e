/**
 * S3ObjectStore against a real S3 API server (s3rver on loopback): put streamed from a file, ranged get, head,
 * list across pages, delete, not-found mapping, and a put while the server is down rejecting rather than hanging.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ObjectNotFoundError } from '../src/remote/object-store.js';
import { parseRemoteStorageUrl } from '../src/remote/remote-config.js';
import { S3ObjectStore } from '../src/remote/s3-object-store.js';
import { TEST_BUCKET, startTestS3, type TestS3 } from './support/s3.js';

let s3: TestS3;
let workDir: string;

before(async () => {
  s3 = await startTestS3();
  workDir = await mkdtemp(join(tmpdir(), 'walcast-remote-store-'));
});

after(async () => {
  await s3.dispose();
  await rm(workDir, { recursive: true, force: true });
});

function store(prefix = 'p/q'): S3ObjectStore {
  return new S3ObjectStore(parseRemoteStorageUrl(`s3://${TEST_BUCKET}/${prefix}`, { endpoint: s3.endpoint }));
}

test('a file put streamed comes back byte-identical, whole and by range', async () => {
  const objects = store();
  const bytes = randomBytes(3 * 1024 * 1024 + 17);
  const path = join(workDir, 'segment');
  await writeFile(path, bytes);
  const key = objects.key('t/segment');
  await objects.putFile(key, path, bytes.length);
  assert.deepEqual(await objects.head(key), { key, sizeBytes: bytes.length });
  assert.ok((await objects.getRange(key, 0, bytes.length)).equals(bytes));
  assert.ok((await objects.getRange(key, 1_000_001, 65_536)).equals(bytes.subarray(1_000_001, 1_000_001 + 65_536)));
  await objects.putFile(key, path, bytes.length);
  assert.ok((await objects.getRange(key, bytes.length - 5, 5)).equals(bytes.subarray(-5)), 'a second put of the same object is harmless');
  // Into a caller's buffer (the segment cache reuses one per download): the answer is a view of it.
  const target = Buffer.alloc(2 * 1024 * 1024, 0xee);
  const read = await objects.getRange(key, 1_000_001, 1024 * 1024 + 3, undefined, target);
  assert.equal(read.buffer, target.buffer, 'read into the given buffer');
  assert.ok(read.equals(bytes.subarray(1_000_001, 1_000_001 + 1024 * 1024 + 3)));
  assert.equal(target[1024 * 1024 + 3], 0xee, 'nothing past the range is written');
  const reused = await objects.getRange(key, 0, 7, undefined, target);
  assert.ok(reused.equals(bytes.subarray(0, 7)), 'the buffer is reused for the next range');
  objects.close();
});

test('missing objects: head is undefined, get is ObjectNotFoundError naming the key, delete is quiet', async () => {
  const objects = store();
  const key = objects.key('t/absent');
  assert.equal(await objects.head(key), undefined);
  await assert.rejects(objects.getRange(key, 0, 10), (error: unknown) => error instanceof ObjectNotFoundError && error.key === key);
  await objects.delete(key);
  objects.close();
});

test('list pages through more keys than one page holds, in order, only under the prefix', async () => {
  const objects = store('listing');
  const names = Array.from({ length: 1_005 }, (_, index) => objects.key(`t/${String(index).padStart(5, '0')}`));
  const pending = [...names];
  await Promise.all(Array.from({ length: 16 }, async () => {
    for (let name = pending.shift(); name !== undefined; name = pending.shift()) await objects.putBytes(name, Buffer.from(name));
  }));
  await store('other').putBytes('other/t/x', Buffer.from('x'));
  const listed = await objects.list(objects.key('t/'));
  assert.deepEqual(listed.map((item) => item.key), names);
  await objects.delete(names[0] ?? '');
  assert.equal((await objects.list(objects.key('t/'))).length, names.length - 1);
  objects.close();
});

test('a put while the server is stopped rejects (the caller retries); after restart it succeeds', async () => {
  const objects = store();
  await s3.stop();
  try {
    await assert.rejects(objects.putBytes(objects.key('t/while-down'), Buffer.from('x')));
  } finally {
    await s3.start();
  }
  await objects.putBytes(objects.key('t/while-down'), Buffer.from('x'));
  assert.deepEqual(await objects.getRange(objects.key('t/while-down'), 0, 1), Buffer.from('x'));
  objects.close();
});
