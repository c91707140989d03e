import assert from 'node:assert/strict';
import { closeSync, fdatasyncSync, openSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { WalFileHandle } from './backend.js';
import { loadNativeAddon } from './native-binding.js';
import {
  SYNC_READ_BACKOFF_MAX_MS,
  SYNC_READ_DISK_MIN_MS,
  SYNC_READ_BACKOFF_MS,
  SYNC_READ_BYTES_PER_TURN_MAX,
  SYNC_READ_SLOW_MS,
  SyncReadGate,
  type GateClosure,
} from './sync-read-gate.js';
import { readRangeInto } from './vectored-read.js';

const RUN_BYTES = 512 * 1024;

/** A gate on a fake clock, block-input count and voluntary-switch count; turns end only when the test says so. */
function fakeGate(): { gate: SyncReadGate; clock: { ms: number }; disk: { inputs: number; sleeps: number }; closures: GateClosure[]; endTurn: () => void } {
  const clock = { ms: 1_000 };
  const disk = { inputs: 0, sleeps: 0 };
  const closures: GateClosure[] = [];
  let pending: (() => void) | undefined;
  const gate = new SyncReadGate({
    now: () => clock.ms,
    usage: () => ({ blockInputs: disk.inputs, voluntarySwitches: disk.sleeps }),
    afterTurn: (reset) => (pending = reset),
    onClose: (closure) => closures.push(closure),
  });
  return {
    gate,
    clock,
    disk,
    closures,
    endTurn: () => {
      pending?.();
      pending = undefined;
    },
  };
}

/** A temporary file of `length` bytes, byte i = pattern(i), open for reading while `use` runs; removed afterwards. */
async function withPatternedFile(length: number, pattern: (index: number) => number, use: (opened: { file: WalFileHandle; bytes: Buffer; dir: string }) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'walcast-sync-read-'));
  try {
    const path = join(dir, 'segment');
    const bytes = Buffer.alloc(length);
    for (let index = 0; index < length; index++) bytes[index] = pattern(index);
    writeFileSync(path, bytes);
    const fd = openSync(path, 'r');
    try {
      await use({ file: { fd, path }, bytes, dir });
    } finally {
      closeSync(fd);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe('SyncReadGate', () => {
  test('reads served from page cache keep it open and are counted', () => {
    const { gate, clock, endTurn } = fakeGate();
    for (let index = 0; index < 3; index++) {
      assert.equal(gate.allows(RUN_BYTES), true);
      assert.equal(gate.readNow(RUN_BYTES, () => (clock.ms += 0.1)), clock.ms);
      endTurn();
    }
    gate.countPoolRead();
    assert.deepEqual(gate.stats(), { syncReads: 3, poolReads: 1, slowSyncReads: 0, preemptedSyncReads: 0, open: true });
  });

  test('a read that moved the block-input count and took more than SYNC_READ_DISK_MIN_MS closes it for the back-off, then it opens again', () => {
    const { gate, clock, disk, closures, endTurn } = fakeGate();
    // Another thread's disk read during a copy from page cache: not this read's wait.
    gate.readNow(RUN_BYTES, () => {
      disk.inputs += 16;
      clock.ms += SYNC_READ_DISK_MIN_MS;
    });
    assert.deepEqual(closures, []);
    gate.readNow(RUN_BYTES, () => {
      disk.inputs += 1024;
      clock.ms += 0.5;
    });
    endTurn();
    assert.equal(gate.allows(RUN_BYTES), false);
    assert.deepEqual(closures, [{ elapsedMs: 0.5, blockInputs: 1024, voluntarySwitches: 0, backoffMs: SYNC_READ_BACKOFF_MS }]);
    assert.deepEqual(gate.stats(), { syncReads: 2, poolReads: 0, slowSyncReads: 1, preemptedSyncReads: 0, open: false });
    clock.ms += SYNC_READ_BACKOFF_MS - 1;
    assert.equal(gate.allows(RUN_BYTES), false);
    clock.ms += 1;
    assert.equal(gate.allows(RUN_BYTES), true);
    assert.equal(gate.stats().open, true);
  });

  test('a read slower than SYNC_READ_SLOW_MS while a thread slept closes it even without block input (storage that is no block device)', () => {
    const { gate, clock, disk, closures } = fakeGate();
    const sleepingRead = (ms: number) => () => {
      disk.sleeps += 1;
      clock.ms += ms;
    };
    gate.readNow(RUN_BYTES, sleepingRead(SYNC_READ_SLOW_MS));
    assert.equal(gate.allows(RUN_BYTES), true, 'exactly the threshold is not slow');
    gate.readNow(RUN_BYTES, sleepingRead(SYNC_READ_SLOW_MS + 0.5));
    assert.deepEqual(closures, [{ elapsedMs: SYNC_READ_SLOW_MS + 0.5, blockInputs: 0, voluntarySwitches: 1, backoffMs: SYNC_READ_BACKOFF_MS }]);
    assert.equal(gate.allows(1), false);
  });

  test('a slow read during which no thread slept (the thread lost its CPU) is counted and leaves it open, and ends a back-off as a fast read does', () => {
    const { gate, clock, disk, closures, endTurn } = fakeGate();
    gate.readNow(RUN_BYTES, () => (clock.ms += 5));
    assert.equal(closures.length, 0);
    assert.equal(gate.allows(RUN_BYTES), true);
    assert.deepEqual(gate.stats(), { syncReads: 1, poolReads: 0, slowSyncReads: 0, preemptedSyncReads: 1, open: true });
    // A disk wait, a back-off, then a preempted read from page cache: the next disk wait starts the back-off over.
    gate.readNow(RUN_BYTES, () => {
      disk.inputs += 64;
      clock.ms += 1;
    });
    endTurn();
    clock.ms += SYNC_READ_BACKOFF_MS;
    gate.readNow(RUN_BYTES, () => (clock.ms += 5));
    endTurn();
    gate.readNow(RUN_BYTES, () => {
      disk.inputs += 64;
      clock.ms += 1;
    });
    assert.deepEqual(closures.map((closure) => closure.backoffMs), [SYNC_READ_BACKOFF_MS, SYNC_READ_BACKOFF_MS]);
    assert.equal(gate.stats().preemptedSyncReads, 2);
  });

  test('the back-off doubles while the first read after it is slow again, up to its bound, and a fast one resets it', () => {
    const { gate, clock, disk, closures, endTurn } = fakeGate();
    const slowRead = (): void => {
      assert.equal(gate.allows(RUN_BYTES), true);
      gate.readNow(RUN_BYTES, () => {
        disk.inputs += 8;
        clock.ms += 1;
      });
      endTurn();
      clock.ms += closures.at(-1)!.backoffMs;
    };
    for (let index = 0; index < 9; index++) slowRead();
    assert.deepEqual(
      closures.map((closure) => closure.backoffMs),
      [250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 32_000],
    );
    assert.equal(closures.at(-1)!.backoffMs, SYNC_READ_BACKOFF_MAX_MS);
    gate.readNow(RUN_BYTES, () => (clock.ms += 0.1));
    endTurn();
    slowRead();
    assert.equal(closures.at(-1)!.backoffMs, SYNC_READ_BACKOFF_MS, 'a cold stretch after a warm read starts over');
  });

  test('a turn copies at most SYNC_READ_BYTES_PER_TURN_MAX on the event loop; the next turn may again', () => {
    const { gate, endTurn } = fakeGate();
    let read = 0;
    while (gate.allows(RUN_BYTES)) {
      gate.readNow(RUN_BYTES, () => undefined);
      read += RUN_BYTES;
      assert.ok(read <= SYNC_READ_BYTES_PER_TURN_MAX, 'bounded');
    }
    assert.equal(read, SYNC_READ_BYTES_PER_TURN_MAX);
    assert.equal(gate.stats().open, true, 'the budget is no closure');
    endTurn();
    assert.equal(gate.allows(RUN_BYTES), true);
  });

  test('a read that throws is counted and judged, and its error reaches the caller', () => {
    const { gate, clock, disk } = fakeGate();
    assert.throws(
      () =>
        gate.readNow(RUN_BYTES, () => {
          disk.sleeps += 1;
          clock.ms += SYNC_READ_SLOW_MS + 1;
          throw new Error('EIO');
        }),
      /EIO/,
    );
    assert.deepEqual(gate.stats(), { syncReads: 1, poolReads: 0, slowSyncReads: 1, preemptedSyncReads: 0, open: false });
  });

  test('the real gate turns the event loop over with setImmediate', async () => {
    const gate = new SyncReadGate();
    for (let read = 0; read < SYNC_READ_BYTES_PER_TURN_MAX; read += RUN_BYTES) gate.readNow(RUN_BYTES, () => undefined);
    assert.equal(gate.allows(RUN_BYTES), false, 'this turn spent its budget');
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(gate.allows(RUN_BYTES), true);
  });
});

describe('readRangeInto with a gate', () => {
  test('reads exactly the range on the calling thread while the gate allows it, on the pool while it does not', async () => {
    await withPatternedFile(3 * RUN_BYTES, (index) => (index * 7 + (index >> 12)) & 0xff, async ({ file, bytes }) => {
      const { path } = file;
      const { gate, clock, disk } = fakeGate();
      const views = [Buffer.alloc(100_000), Buffer.alloc(RUN_BYTES - 100_000)];
      await readRangeInto(file, 12_345, views, gate);
      assert.deepEqual(Buffer.concat(views), bytes.subarray(12_345, 12_345 + RUN_BYTES));
      assert.deepEqual(gate.stats(), { syncReads: 1, poolReads: 0, slowSyncReads: 0, preemptedSyncReads: 0, open: true });
      // Closed: the same read goes to the pool and reads the same bytes.
      gate.readNow(1, () => {
        disk.inputs += 8;
        clock.ms += SYNC_READ_SLOW_MS + 1;
      });
      const again = [Buffer.alloc(RUN_BYTES)];
      await readRangeInto(file, 12_345, again, gate);
      assert.deepEqual(again[0], bytes.subarray(12_345, 12_345 + RUN_BYTES));
      assert.equal(gate.stats().poolReads, 1);
      clock.ms += SYNC_READ_BACKOFF_MS;
      // Past the file's end on the synchronous path: an I/O error naming the file, never bytes that are not there.
      await assert.rejects(readRangeInto(file, bytes.length - 10, [Buffer.alloc(20)], gate), (error: Error) => error.message.includes(`short read from ${path}`));
    });
  });

  const addon = loadNativeAddon();
  test('a read of a file dropped from page cache closes the real gate, and the bytes are right', { skip: addon.ok ? false : 'dropping a file from page cache needs the native addon' }, async (context) => {
    assert.ok(addon.ok);
    await withPatternedFile(8 * RUN_BYTES, (index) => (index * 13 + (index >> 9)) & 0xff, async ({ file, bytes, dir }) => {
      const { fd } = file;
      fdatasyncSync(fd);
      addon.addon.dropCache(fd, 0, 0);
      if (addon.addon.residentBytes(fd, 0, bytes.length) > 0) {
        context.skip(`${dir} keeps its pages in memory (tmpfs?): nothing to read from disk`);
        return;
      }
      const closures: GateClosure[] = [];
      const gate = new SyncReadGate({ onClose: (closure) => closures.push(closure) });
      // 2 MiB at once: long enough to wait for the disk (above SYNC_READ_DISK_MIN_MS) even on a fast NVMe drive.
      const views = [Buffer.alloc(4 * RUN_BYTES)];
      await readRangeInto(file, RUN_BYTES, views, gate);
      assert.deepEqual(views[0], bytes.subarray(RUN_BYTES, 5 * RUN_BYTES));
      assert.equal(closures.length, 1, 'the cold read was seen');
      const closure = closures[0]!;
      assert.ok((closure.blockInputs > 0 && closure.elapsedMs > SYNC_READ_DISK_MIN_MS) || (closure.voluntarySwitches > 0 && closure.elapsedMs > SYNC_READ_SLOW_MS), JSON.stringify(closure));
      assert.equal(gate.allows(RUN_BYTES), false, 'the next reads go to the pool');
    });
  });
});
