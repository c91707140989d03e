/**
 * DiskUsageCache: the total is what one lstat per file would give, while complete segments are looked at once,
 * .partial files every time, and everything again after the full-refresh interval.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DiskUsageCache, type DiskUsageEntry } from './disk-usage.js';

/** A directory held in memory: name → bytes on disk, and every lstat the cache made. */
function fakeDirectory(files: Record<string, number>): { sizes: Map<string, number>; lstats: string[]; entries: () => DiskUsageEntry[]; diskBytes: (path: string) => Promise<number> } {
  const sizes = new Map(Object.entries(files));
  const lstats: string[] = [];
  return {
    sizes,
    lstats,
    entries: () => [...sizes.keys()].map((name) => ({ name, path: `/wal/${name}` })),
    diskBytes: async (path) => {
      const name = path.slice('/wal/'.length);
      lstats.push(name);
      const size = sizes.get(name);
      if (size === undefined) throw Object.assign(new Error(`ENOENT: ${path}`), { code: 'ENOENT' });
      return size;
    },
  };
}

const A = '000000010000000000000002';
const B = '000000010000000000000003';
const C = '000000010000000000000004';

describe('DiskUsageCache', () => {
  test('complete segments are measured once, a .partial every time, and the totals stay exact', async () => {
    const dir = fakeDirectory({ [A]: 100, [`${A}.crc`]: 8, [`${B}.partial`]: 50 });
    const cache = new DiskUsageCache(dir.diskBytes, 60_000);
    assert.deepEqual(await cache.total(dir.entries(), 0), { bytes: 158, measured: 3 });
    dir.sizes.set(`${B}.partial`, 70);
    dir.lstats.length = 0;
    assert.deepEqual(await cache.total(dir.entries(), 2_000), { bytes: 178, measured: 1 });
    assert.deepEqual(dir.lstats, [`${B}.partial`]);
  });

  test('a renamed .partial is measured as a new file, a removed one leaves the total and the cache', async () => {
    const dir = fakeDirectory({ [A]: 100, [`${B}.partial`]: 50 });
    const cache = new DiskUsageCache(dir.diskBytes, 60_000);
    await cache.total(dir.entries(), 0);
    dir.sizes.delete(`${B}.partial`);
    dir.sizes.set(B, 120);
    dir.sizes.set(`${C}.partial`, 10);
    dir.lstats.length = 0;
    assert.deepEqual(await cache.total(dir.entries(), 1_000), { bytes: 230, measured: 2 });
    assert.deepEqual(dir.lstats.sort(), [B, `${C}.partial`]);
    dir.sizes.delete(A);
    dir.lstats.length = 0;
    assert.deepEqual(await cache.total(dir.entries(), 2_000), { bytes: 130, measured: 1 });
    // A file of that name made again later is measured again, not taken from a stale entry.
    dir.sizes.set(A, 7);
    assert.equal((await cache.total(dir.entries(), 3_000)).bytes, 137);
  });

  test('everything is measured again after the full-refresh interval: a grown sidecar is counted', async () => {
    const dir = fakeDirectory({ [A]: 100, [`${A}.crc`]: 8 });
    const cache = new DiskUsageCache(dir.diskBytes, 60_000);
    await cache.total(dir.entries(), 0);
    dir.sizes.set(`${A}.crc`, 16);
    assert.deepEqual(await cache.total(dir.entries(), 59_999), { bytes: 108, measured: 0 });
    assert.deepEqual(await cache.total(dir.entries(), 60_000), { bytes: 116, measured: 2 });
  });

  test('a file gone between the listing and its lstat counts nothing and is not cached', async () => {
    const dir = fakeDirectory({ [A]: 100 });
    const cache = new DiskUsageCache(dir.diskBytes, 60_000);
    const listed = [...dir.entries(), { name: B, path: `/wal/${B}` }];
    assert.deepEqual(await cache.total(listed, 0), { bytes: 100, measured: 2 });
    dir.sizes.set(B, 40);
    assert.deepEqual(await cache.total(dir.entries(), 1_000), { bytes: 140, measured: 1 });
  });
});
