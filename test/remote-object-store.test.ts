/**
 * S3ObjectStore against a real S3 API server (s3rver on loopback): put streamed from a file, ranged get, head,
 * list across pages, delete, not-found mapping, and a put while the server is down rejecting rather than hanging.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ObjectNotFoundError } from '../src/remote/object-store.js';
import { S3ObjectStore } from '../src/remote/s3-object-store.js';
import { startTestS3, testStore, type TestS3 } from './support/s3.js';

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
  return testStore(s3.endpoint, prefix);
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
  // Streamed into a file at a position (the segment cache's download): only the range's bytes are written there.
  const filePath = join(workDir, 'streamed');
  await writeFile(filePath, Buffer.alloc(3 * 1024 * 1024, 0xee));
  const file = await open(filePath, 'r+');
  try {
    assert.equal(await objects.getRangeToFile(key, 1_000_001, 2 * 1024 * 1024 + 3, file, 17), 2 * 1024 * 1024 + 3);
  } finally {
    await file.close();
  }
  const streamed = await readFile(filePath);
  assert.ok(streamed.subarray(17, 17 + 2 * 1024 * 1024 + 3).equals(bytes.subarray(1_000_001, 1_000_001 + 2 * 1024 * 1024 + 3)), 'the range is in the file');
  assert.ok(streamed.subarray(0, 17).equals(Buffer.alloc(17, 0xee)) && streamed.subarray(17 + 2 * 1024 * 1024 + 3).every((byte) => byte === 0xee), 'nothing else written');
  // A whole object in one GET, bounded.
  assert.ok((await objects.getObject(key, bytes.length)).equals(bytes));
  await assert.rejects(objects.getObject(key, bytes.length - 1), /more than the/);
  await objects.putBytes(objects.key('t/empty'), Buffer.alloc(0));
  assert.equal((await objects.getObject(objects.key('t/empty'), 8)).length, 0, 'an empty object is empty, not an error');
  await assert.rejects(objects.getObject(objects.key('t/absent-whole'), 8), (error: unknown) => error instanceof ObjectNotFoundError);
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
