/**
 * The addon's CRC-32C (native/crc32c.cc): the hardware paths (VPCLMULQDQ folding where the CPU has it, and the
 * three-lane crc32q loop), the software path and the TypeScript one agree on random data at every alignment and
 * length class (the folding steps and their 16-byte and byte tails, the three-lane loop, its joins and tails), and
 * crc32cFilePages checksums the pages of a file range, refusing a range past the end of the file. The pool variant
 * (crc32cFilePagesAsync) maps whole 2 MiB windows around its range: ranges crossing, starting and ending inside
 * them, a last window past the end of the file and files smaller than one window give the same bytes' checksums.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from 'node:fs';
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

test('every length 0-600 at every alignment 0-63 agrees with the software path, whatever lies outside the range', { skip }, () => {
  assert.ok(loaded.ok);
  const { addon } = loaded;
  // Exhaustive where the folding path has its joins: below one 256-byte step (three-lane/byte paths), one and two
  // steps, and every 64/16/8/1-byte tail after them; every start from 0 to 63 bytes past a 64-byte line.
  const data = randomBytes(64 + 600 + 64);
  const scrambled = Buffer.from(data);
  for (let length = 0; length <= 600; length++) {
    for (let start = 0; start < 64; start++) {
      const state = round32(randomInt(0, 2 ** 32 - 1));
      const expected = addon.crc32cUpdateSoftware(state, data, start, start + length);
      assert.equal(addon.crc32cUpdate(state, data, start, start + length), expected, `hardware, length ${length} at ${start}`);
      assert.equal(addon.crc32cUpdateLanes(state, data, start, start + length), expected, `three lanes, length ${length} at ${start}`);
      if (start % 16 === 0) assert.equal(crc32cUpdate(state, data, start, start + length), expected, `TypeScript, length ${length} at ${start}`);
      // The bytes just outside the range never count (an overread that folded them in would change the result).
      scrambled.fill(0xa5, 0, start);
      scrambled.fill(0x5a, start + length);
      assert.equal(addon.crc32cUpdate(state, scrambled, start, start + length), expected, `hardware with other bytes around, length ${length} at ${start}`);
      data.copy(scrambled);
    }
  }
});

test('ranges around the 2 KiB prefetch distance and ending at the end of their buffer agree with the software path', { skip }, () => {
  assert.ok(loaded.ok);
  const { addon } = loaded;
  const prefetchBytes = 2048;
  const lengths: number[] = [];
  for (let steps = 7; steps <= 10; steps++) for (const delta of [-17, -16, -1, 0, 1, 15, 16, 63, 64, 65]) lengths.push(steps * 256 + delta);
  for (const delta of [-1, 0, 1, 255, 256, 257]) lengths.push(2 * prefetchBytes + delta, 4 * prefetchBytes + delta);
  for (const length of lengths) {
    for (const start of [0, 1, 8, 31, 63]) {
      // A buffer of exactly start + length bytes (not a slice of the pool): the range ends where the memory does.
      const exact = new Uint8Array(new ArrayBuffer(start + length));
      exact.set(randomBytes(start + length));
      const state = round32(randomInt(0, 2 ** 32 - 1));
      const expected = addon.crc32cUpdateSoftware(state, exact, start, start + length);
      assert.equal(addon.crc32cUpdate(state, exact, start, start + length), expected, `hardware, length ${length} at ${start}`);
      assert.equal(crc32cUpdate(state, exact, start, start + length), expected, `TypeScript, length ${length} at ${start}`);
    }
  }
});

test('crc32cFilePages agrees at unaligned offsets and odd piece sizes, up to a page-aligned end of file', { skip }, () => {
  assert.ok(loaded.ok);
  const { addon } = loaded;
  const dir = mkdtempSync(join(tmpdir(), 'walcast-crc-'));
  try {
    const path = join(dir, 'file');
    // The file ends on a memory page, so its mapping does too: a read past the range's end would fault or differ.
    const content = randomBytes(4 * 4096);
    writeFileSync(path, content);
    const fd = openSync(path, 'r');
    try {
      for (const pieceBytes of [1, 63, 255, 256, 257, 2047, 2049, 4095, 8192]) {
        for (const offset of [0, 1, 63, 4096 - 257, 4096 + 5]) {
          const byteCount = content.length - offset;
          const out = new Uint32Array(Math.ceil(byteCount / pieceBytes));
          addon.crc32cFilePages(fd, offset, byteCount, pieceBytes, out);
          for (let piece = 0; piece < out.length; piece++) {
            const from = offset + piece * pieceBytes;
            const to = Math.min(from + pieceBytes, content.length);
            assert.equal(out[piece], crc32c(content, from, to), `piece ${piece} of ${pieceBytes} bytes from offset ${offset}`);
          }
        }
      }
    } finally {
      closeSync(fd);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
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

/** crc32cFilePagesAsync as a promise (null → resolved, native error → rejected). */
function filePagesAsync(fd: number, offset: number, byteCount: number, pageBytes: number, out: Uint32Array): Promise<void> {
  assert.ok(loaded.ok);
  const checksum = loaded.addon.crc32cFilePagesAsync;
  assert.ok(checksum !== undefined, 'the addon has crc32cFilePagesAsync');
  return new Promise((resolve, reject) => checksum.call(loaded.addon, fd, offset, byteCount, pageBytes, out, (error) => (error === null ? resolve() : reject(error))));
}

test('crc32cFilePagesAsync agrees with crc32cFilePages on a cold file, refuses a range past its end, and keeps its own descriptor', { skip }, async () => {
  assert.ok(loaded.ok);
  const { addon } = loaded;
  const dir = mkdtempSync(join(tmpdir(), 'walcast-crc-'));
  try {
    const path = join(dir, 'file');
    const content = randomBytes(300 * WAL_PAGE_BYTES + 4096);
    writeFileSync(path, content);
    const fd = openSync(path, 'r');
    try {
      for (const [offset, byteCount] of [[0, content.length], [1, 3 * WAL_PAGE_BYTES], [5 * WAL_PAGE_BYTES + 17, 128 * WAL_PAGE_BYTES], [content.length - 100, 100]] as const) {
        // Cold: the pool thread's mapping reads the pages in (the event loop never does).
        addon.dropCache(fd, 0, 0);
        const pages = Math.ceil(byteCount / WAL_PAGE_BYTES);
        const viaPool = new Uint32Array(pages);
        await filePagesAsync(fd, offset, byteCount, WAL_PAGE_BYTES, viaPool);
        const inline = new Uint32Array(pages);
        addon.crc32cFilePages(fd, offset, byteCount, WAL_PAGE_BYTES, inline);
        assert.deepEqual(viaPool, inline, `range ${offset}+${byteCount}`);
        assert.equal(viaPool[0], crc32c(content, offset, Math.min(offset + WAL_PAGE_BYTES, offset + byteCount)));
      }
      await assert.rejects(filePagesAsync(fd, content.length - WAL_PAGE_BYTES, 2 * WAL_PAGE_BYTES, WAL_PAGE_BYTES, new Uint32Array(2)), (error: unknown) => error instanceof NativeIoError && error.code === 'ENXIO');
      assert.throws(() => addon.crc32cFilePagesAsync?.(fd, 0, 5 * WAL_PAGE_BYTES, WAL_PAGE_BYTES, new Uint32Array(4), () => undefined), RangeError);
      // The caller's descriptor may be closed (and its number reused) while the check runs: the check has its own.
      const out = new Uint32Array(2);
      const running = filePagesAsync(fd, 0, 2 * WAL_PAGE_BYTES, WAL_PAGE_BYTES, out);
      closeSync(fd);
      await running;
      assert.equal(out[1], crc32c(content, WAL_PAGE_BYTES, 2 * WAL_PAGE_BYTES));
    } catch (error) {
      try {
        closeSync(fd);
      } catch {
        // Closed by the test already.
      }
      throw error;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** The TypeScript CRC-32C of each page-sized piece of content[offset, offset + byteCount): the independent reference. */
function expectedPages(content: Buffer, offset: number, byteCount: number, pageBytes: number): Uint32Array {
  const out = new Uint32Array(Math.ceil(byteCount / pageBytes));
  for (let page = 0; page < out.length; page++) {
    const start = offset + page * pageBytes;
    out[page] = crc32c(content, start, Math.min(start + pageBytes, offset + byteCount)) >>> 0;
  }
  return out;
}

test('crc32cFilePagesAsync maps 2 MiB windows: ranges across, inside and at the ends of windows, a last window past the end of the file, and a file smaller than a window', { skip }, async () => {
  assert.ok(loaded.ok);
  const { addon } = loaded;
  const MIB = 1024 * 1024;
  const dir = mkdtempSync(join(tmpdir(), 'walcast-crc-'));
  try {
    // Ends 100 bytes into a page of the third window: the last window reaches past the end of the file.
    const large = randomBytes(5 * MIB + 3 * WAL_PAGE_BYTES + 100);
    const small = randomBytes(3 * WAL_PAGE_BYTES + 5);
    writeFileSync(join(dir, 'large'), large);
    writeFileSync(join(dir, 'small'), small);
    const cases: Array<readonly [Buffer, string, number, number, number]> = [
      [large, 'large', 0, MIB, WAL_PAGE_BYTES], // a prefetch piece: the first half of a window
      [large, 'large', MIB, MIB, WAL_PAGE_BYTES], // the second half, ending at the window's end
      [large, 'large', 2 * MIB, 2 * MIB, WAL_PAGE_BYTES], // exactly one window
      [large, 'large', 2 * MIB - WAL_PAGE_BYTES, 2 * WAL_PAGE_BYTES, WAL_PAGE_BYTES], // one page each side of a window edge
      [large, 'large', 2 * MIB - 1, 3, WAL_PAGE_BYTES], // three bytes across the edge, at no alignment
      [large, 'large', 3 * MIB + 4095, MIB + 2, 3000], // odd start, odd length, odd page size
      [large, 'large', 0, large.length, WAL_PAGE_BYTES], // three windows, the last one past the end of the file
      [large, 'large', 4 * MIB + 17, large.length - 4 * MIB - 17, WAL_PAGE_BYTES], // to the end, inside the last window
      [large, 'large', large.length - 100, 100, WAL_PAGE_BYTES], // the last 100 bytes
      [small, 'small', 0, small.length, WAL_PAGE_BYTES], // a file smaller than its window
      [small, 'small', small.length - 5, 5, WAL_PAGE_BYTES],
    ];
    for (const warm of ['cold', 'read ahead'] as const) {
      for (const [content, name, offset, byteCount, pageBytes] of cases) {
        const fd = openSync(join(dir, name), 'r');
        try {
          addon.dropCache(fd, 0, 0);
          // Sequential reads: the kernel's readahead brings the file in as large folios, which a 2 MiB-aligned
          // mapping maps whole; cold, the pool thread's own faults read the pages in.
          if (warm === 'read ahead') for (let position = 0, buffer = Buffer.alloc(MIB); position < content.length; position += MIB) readSync(fd, buffer, 0, MIB, position);
          const out = new Uint32Array(Math.ceil(byteCount / pageBytes) + 1).fill(0xdeadbeef);
          await filePagesAsync(fd, offset, byteCount, pageBytes, out);
          assert.deepEqual(out.subarray(0, out.length - 1), expectedPages(content, offset, byteCount, pageBytes), `${warm} ${name} ${offset}+${byteCount}`);
          assert.equal(out[out.length - 1], 0xdeadbeef, 'nothing written past the range\'s pages');
        } finally {
          closeSync(fd);
        }
      }
    }
    const fd = openSync(join(dir, 'large'), 'r');
    try {
      const refused = (error: unknown): boolean => error instanceof NativeIoError && error.code === 'ENXIO';
      // One byte past the end inside the last window, a range starting at the end, and one in a window wholly past it.
      await assert.rejects(filePagesAsync(fd, large.length - WAL_PAGE_BYTES + 1, WAL_PAGE_BYTES, WAL_PAGE_BYTES, new Uint32Array(1)), refused);
      await assert.rejects(filePagesAsync(fd, large.length, 1, WAL_PAGE_BYTES, new Uint32Array(1)), refused);
      await assert.rejects(filePagesAsync(fd, large.length + 3 * MIB, WAL_PAGE_BYTES, WAL_PAGE_BYTES, new Uint32Array(1)), refused);
      // The caller closes its descriptor while the check runs, and the number is reused for another file at once:
      // the check reads the file it was given, through its own descriptor.
      const out = new Uint32Array(MIB / WAL_PAGE_BYTES);
      const running = filePagesAsync(fd, 2 * MIB, MIB, WAL_PAGE_BYTES, out);
      closeSync(fd);
      const reused = openSync(join(dir, 'small'), 'r');
      try {
        await running;
      } finally {
        closeSync(reused);
      }
      assert.deepEqual(out, expectedPages(large, 2 * MIB, MIB, WAL_PAGE_BYTES));
    } catch (error) {
      try {
        closeSync(fd);
      } catch {
        // Closed by the test already.
      }
      throw error;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
