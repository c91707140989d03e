/**
 * The addon's CRC-32C (native/crc32c.cc): the hardware paths (VPCLMULQDQ folding where the CPU has it, and the
 * three-lane crc32q loop), the software path and the TypeScript one agree on random data at every alignment and
 * length class (the folding steps and their 16-byte and byte tails, the three-lane loop, its joins and tails), and
 * crc32cFilePages checksums the pages of a file range, refusing a range past the end of the file.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { WAL_PAGE_BYTES } from '../lsn.js';
import { CRC32C_INITIAL, crc32c, crc32cUpdate } from '../storage/crc32c.js';
import { NativeIoError, loadNativeAddon } from './native-binding.js';

const loaded = loadNativeAddon();
const skip = loaded.ok ? false : `the native addon is not built: ${loaded.ok ? '' : loaded.reason}`;

test('hardware, software and TypeScript CRC-32C agree on random data', { skip }, () => {
  assert.ok(loaded.ok);
  const { addon } = loaded;
  if (process.arch === 'x64') assert.equal(addon.crc32cHardware, true, 'every x86-64 CPU this runs on has SSE4.2');
  const data = randomBytes(64 * 1024 + 64);
  const lengths = [0, 1, 7, 8, 9, 255, 256, 257, 271, 272, 511, 512, 513, 2719, 2720, 8159, 8160, 8161, 8192, 16_384 + 3, 64 * 1024];
  for (let round = 0; round < 200; round++) lengths.push(randomInt(0, 64 * 1024));
  for (const length of lengths) {
    const start = randomInt(0, 64);
    const state = round32(randomInt(0, 2 ** 32 - 1));
    const expected = crc32cUpdate(state, data, start, start + length);
    assert.equal(addon.crc32cUpdate(state, data, start, start + length), expected, `hardware, length ${length} at ${start}`);
    assert.equal(addon.crc32cUpdateSoftware(state, data, start, start + length), expected, `software, length ${length} at ${start}`);
    assert.equal(addon.crc32cUpdateLanes(state, data, start, start + length), expected, `three lanes, length ${length} at ${start}`);
  }
  assert.equal(addon.crc32cUpdate(CRC32C_INITIAL, Buffer.from('123456789'), 0, 9) ^ 0xffffffff, 0xe3069283 | 0);
  // Which path ran is logged, so a run on a CPU without VPCLMULQDQ says it did not cover folding.
  console.log(`crc32cFold: ${addon.crc32cFold}`);
});

test('crc32cFilePages checksums each page of a range and refuses one past the end of the file', { skip }, () => {
  assert.ok(loaded.ok);
  const { addon } = loaded;
  const dir = mkdtempSync(join(tmpdir(), 'walcast-crc-'));
  try {
    const path = join(dir, 'file');
    const content = randomBytes(10 * WAL_PAGE_BYTES);
    writeFileSync(path, content);
    const fd = openSync(path, 'r');
    try {
      const out = new Uint32Array(4);
      addon.crc32cFilePages(fd, 3 * WAL_PAGE_BYTES, 3 * WAL_PAGE_BYTES + 100, WAL_PAGE_BYTES, out);
      for (let page = 0; page < 3; page++) assert.equal(out[page], crc32c(content, (3 + page) * WAL_PAGE_BYTES, (4 + page) * WAL_PAGE_BYTES));
      assert.equal(out[3], crc32c(content, 6 * WAL_PAGE_BYTES, 6 * WAL_PAGE_BYTES + 100), 'the last piece may be short');
      assert.throws(() => addon.crc32cFilePages(fd, 9 * WAL_PAGE_BYTES, 2 * WAL_PAGE_BYTES, WAL_PAGE_BYTES, out), (error: unknown) => error instanceof NativeIoError && error.code === 'ENXIO');
      assert.throws(() => addon.crc32cFilePages(fd, 0, 5 * WAL_PAGE_BYTES, WAL_PAGE_BYTES, new Uint32Array(4)), RangeError);
    } finally {
      closeSync(fd);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

function round32(value: number): number {
  return value >>> 0;
}
