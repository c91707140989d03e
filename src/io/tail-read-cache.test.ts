/** The shared tail-read cache: one read per range for concurrent callers, bounded entries, failures not kept. */
import assert from 'node:assert/strict';
import { openSync, closeSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { WalChunk } from './backend.js';
import { TAIL_READ_BYTES_MAX, TAIL_READ_ENTRIES_MAX, TailReadCache } from './tail-read-cache.js';

const dir = mkdtempSync(join(tmpdir(), 'walcast-tail-cache-'));
const path = join(dir, 'segment');
const content = Buffer.alloc(256 * 1024);
for (let index = 0; index < content.length; index++) content[index] = (index * 7 + 3) & 0xff;
writeFileSync(path, content);

function chunk(fd: number, fileOffset: number, byteCount: number): WalChunk {
  return { file: { fd, path }, fileOffset, byteCount };
}

test('concurrent callers of one range share one read, with the right bytes', async () => {
  const fd = openSync(path, 'r');
  const cache = new TailReadCache();
  const [first, second] = await Promise.all([cache.read(chunk(fd, 1000, 500)), cache.read(chunk(fd, 1000, 500))]);
  assert.equal(first, second, 'the same buffer serves both');
  assert.ok(first?.equals(content.subarray(1000, 1500)));
  const other = await cache.read(chunk(fd, 1000, 501));
  assert.notEqual(other, first, 'another range is another entry');
  closeSync(fd);
});

test('entries are bounded, least recently used first out', async () => {
  const fd = openSync(path, 'r');
  const cache = new TailReadCache();
  const kept = await cache.read(chunk(fd, 0, 100));
  for (let index = 1; index <= TAIL_READ_ENTRIES_MAX + 10; index++) {
    await cache.read(chunk(fd, index * 100, 100));
    if (index % 8 === 0) assert.equal(await cache.read(chunk(fd, 0, 100)), kept, 'a recently used entry stays');
  }
  assert.equal(cache.size(), TAIL_READ_ENTRIES_MAX);
  const evicted = await cache.read(chunk(fd, 100, 100));
  assert.ok(evicted.equals(content.subarray(100, 200)));
  closeSync(fd);
});

test('a failed read is reported and not remembered; large reads are refused', async () => {
  const cache = new TailReadCache();
  const fd = openSync(path, 'r');
  await assert.rejects(cache.read(chunk(fd, content.length - 10, 100)), /short read/);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(cache.size(), 0);
  assert.throws(() => cache.read(chunk(fd, 0, TAIL_READ_BYTES_MAX + 1)));
  closeSync(fd);
});
