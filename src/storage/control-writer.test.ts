/** ControlFileWriter: ordered patches, coalesced writes, no lost field between two writers, failures. */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { CONTROL_FORMAT_VERSION, PG_VERSION_NUM_15, readControlFile, writeControlFile, type ControlState } from './control-file.js';
import { ControlFileWriter, type ControlFileStorage } from './control-writer.js';

const SEG = 1024 * 1024;
const initial: ControlState = {
  formatVersion: CONTROL_FORMAT_VERSION,
  tenantId: 'ab'.repeat(16),
  timelineId: 'cd'.repeat(16),
  systemId: 7n,
  pgVersion: PG_VERSION_NUM_15,
  segmentBytes: SEG,
  pgTimelineId: 1,
  timelineStartLsn: BigInt(2 * SEG),
  flushLsn: BigInt(2 * SEG),
  commitLsn: BigInt(2 * SEG),
  createdAt: new Date(0).toISOString(),
};

/** In-memory storage whose writes wait for the test to release them, so interleavings are chosen, not raced. */
function gatedStorage(): ControlFileStorage & { written: ControlState[]; release(): Promise<void>; failNext: boolean } {
  let gate: (() => void) | undefined;
  const storage = {
    written: [] as ControlState[],
    failNext: false,
    read: async () => storage.written.at(-1) ?? initial,
    write: async (_dir: string, state: ControlState) => {
      await new Promise<void>((resolve) => (gate = resolve));
      if (storage.failNext) {
        storage.failNext = false;
        throw new Error('disk full');
      }
      storage.written.push(state);
    },
    /** Waits until a write is blocked at the gate, then lets it go on. */
    release: async () => {
      await until(() => gate !== undefined);
      const open = gate;
      gate = undefined;
      open?.();
    },
  };
  return storage;
}

async function until(condition: () => boolean): Promise<void> {
  for (let attempt = 0; attempt < 1000 && !condition(); attempt++) await new Promise((resolve) => setImmediate(resolve));
  assert.ok(condition(), 'condition never held');
}

test('ingest and retention patches both land: neither overwrites the other with a stale field', async () => {
  const storage = gatedStorage();
  const writer = new ControlFileWriter('/x', storage);
  const flush = writer.update((state) => ({ ...state, flushLsn: BigInt(5 * SEG), commitLsn: BigInt(5 * SEG) }));
  await until(() => writer.current() !== undefined);
  // Queued while the first write runs: retention advances the start, ingest the flush again.
  const start = writer.update((state) => ({ ...state, timelineStartLsn: BigInt(4 * SEG) }));
  const flushAgain = writer.update((state) => ({ ...state, flushLsn: BigInt(6 * SEG), commitLsn: BigInt(6 * SEG) }));
  await storage.release();
  await flush;
  assert.equal(storage.written.length, 1);
  await storage.release();
  const [afterStart, afterFlush] = await Promise.all([start, flushAgain]);
  assert.equal(storage.written.length, 2, 'the two queued patches were coalesced into one write');
  assert.equal(afterStart, afterFlush);
  assert.equal(afterFlush.timelineStartLsn, BigInt(4 * SEG));
  assert.equal(afterFlush.flushLsn, BigInt(6 * SEG));
  assert.equal(writer.writes, 2);
});

test('a patch that changes nothing writes nothing', async () => {
  const storage = gatedStorage();
  const writer = new ControlFileWriter('/x', storage);
  const state = await writer.update(() => undefined);
  assert.equal(state, initial);
  assert.equal(storage.written.length, 0);
});

test('a failed write rejects its patches and keeps the old state; the next write starts from it', async () => {
  const storage = gatedStorage();
  const writer = new ControlFileWriter('/x', storage);
  storage.failNext = true;
  const failing = writer.update((state) => ({ ...state, timelineStartLsn: BigInt(3 * SEG), flushLsn: BigInt(3 * SEG) }));
  await storage.release();
  await assert.rejects(failing, /disk full/);
  assert.equal(writer.current(), initial);
  const next = writer.update((state) => ({ ...state, flushLsn: BigInt(9 * SEG) }));
  await storage.release();
  const state = await next;
  assert.equal(state.timelineStartLsn, BigInt(2 * SEG), 'the failed start was not kept');
  assert.equal(state.flushLsn, BigInt(9 * SEG));
});

test('a patch that throws rejects its batch without writing', async () => {
  const writer = new ControlFileWriter('/x', gatedStorage());
  await assert.rejects(writer.update(() => assert.fail('bad patch')), /bad patch/);
});

test('against the real file: read once, then every update is durable on disk', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'walcast-control-writer-'));
  try {
    await writeControlFile(dir, initial);
    const writer = new ControlFileWriter(dir);
    await Promise.all([
      writer.update((state) => ({ ...state, flushLsn: BigInt(8 * SEG), commitLsn: BigInt(8 * SEG) })),
      writer.update((state) => ({ ...state, timelineStartLsn: BigInt(6 * SEG) })),
    ]);
    const onDisk = await readControlFile(dir);
    assert.equal(onDisk.flushLsn, BigInt(8 * SEG));
    assert.equal(onDisk.timelineStartLsn, BigInt(6 * SEG));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
