/**
 * RetentionTask against a real timeline directory: what a pass removes, the control file written before any
 * unlink, pins of open (and about-to-open) segments honoured, slots holding and being invalidated, and a crash
 * between persisting the start and unlinking simulated and recovered from.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { silentLogger } from '../log.js';
import { CONTROL_FORMAT_VERSION, PG_VERSION_NUM_15, readControlFile, writeControlFile } from '../storage/control-file.js';
import { fsyncDirectory } from '../storage/control-file.js';
import { SIDECAR_SUFFIX, sidecarNameFor } from '../storage/page-checksums.js';
import { segmentFileName } from '../storage/segment-name.js';
import { WalReader } from '../storage/wal-reader.js';
import { openTimeline } from '../timeline/open-timelines.js';
import type { Timeline } from '../timeline/timeline.js';
import { RetentionTask, type RetentionFs, type RetentionSettings } from './retention-task.js';

const SEG = 1024 * 1024;
const FIRST = 2;
const LAST = 10;
const seg = (segno: number | bigint, offset = 0): bigint => BigInt(segno) * BigInt(SEG) + BigInt(offset);
const nameOf = (segno: number | bigint): string => segmentFileName(1, BigInt(segno), SEG);
const keepSegments = (count: number): RetentionSettings => ({ walKeepBytes: count * SEG, maxSlotWalKeepBytes: undefined });
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'walcast-retention-'));
  for (let segno = FIRST; segno <= LAST; segno++) {
    await writeFile(join(dir, nameOf(segno) + (segno === LAST ? '.partial' : '')), Buffer.alloc(4096, segno));
  }
  await writeControlFile(dir, {
    formatVersion: CONTROL_FORMAT_VERSION,
    tenantId: 'ab'.repeat(16),
    timelineId: 'cd'.repeat(16),
    systemId: 7n,
    pgVersion: PG_VERSION_NUM_15,
    segmentBytes: SEG,
    pgTimelineId: 1,
    timelineStartLsn: seg(FIRST),
    flushLsn: seg(LAST, 100),
    commitLsn: seg(LAST, 100),
    createdAt: new Date(0).toISOString(),
  });
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function segnosOnDisk(): Promise<number[]> {
  return (await readdir(dir)).filter((name) => /^[0-9A-F]{24}/.test(name)).map((name) => Number.parseInt(name.slice(16, 24), 16)).sort((a, b) => a - b);
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, index) => from + index);
}

function task(timeline: Timeline, settings: RetentionSettings, fs?: RetentionFs): RetentionTask {
  return new RetentionTask({ timeline, settings, log: silentLogger(), ...(fs === undefined ? {} : { fs }) });
}

test('a pass keeps wal_keep_size behind the end, records the start, then removes what lies before it', async () => {
  const timeline = await openTimeline(dir);
  const retention = task(timeline, keepSegments(3));
  await retention.runPass();
  assert.equal(timeline.timelineStartLsn, seg(7));
  assert.equal((await readControlFile(dir)).timelineStartLsn, seg(7));
  assert.deepEqual(await segnosOnDisk(), range(7, 10));
  const status = retention.status();
  assert.equal(status.segmentsRemoved, 5);
  assert.equal(status.segmentFiles, 4);
  assert.ok(status.diskBytes >= 4 * 4096, `disk bytes ${status.diskBytes}`);
  assert.equal(status.limitedBy, 'wal_keep_size');
  await retention.runPass();
  assert.equal(retention.status().segmentsRemoved, 5, 'a second pass has nothing to do');
});

test('a removed segment takes its page-checksum sidecar with it; kept segments keep theirs', async () => {
  for (let segno = FIRST; segno < LAST; segno++) await writeFile(join(dir, sidecarNameFor(nameOf(segno))), Buffer.alloc(4, segno));
  const timeline = await openTimeline(dir);
  const retention = task(timeline, keepSegments(3));
  await retention.runPass();
  const sidecars = (await readdir(dir)).filter((name) => name.endsWith(SIDECAR_SUFFIX)).sort();
  assert.deepEqual(sidecars, range(7, LAST - 1).map((segno) => sidecarNameFor(nameOf(segno))));
  assert.equal(retention.status().segmentsRemoved, 5, 'sidecars are not counted as segments');
  assert.equal(retention.status().segmentFiles, 4);
});

test('the control file records the new start before the first unlink, and every unlinked file lies before it', async () => {
  const timeline = await openTimeline(dir);
  const unlinked: string[] = [];
  const fs: RetentionFs = {
    readdir: (path) => readdir(path),
    unlink: async (path) => {
      const control = await readControlFile(dir);
      const segno = BigInt(Number.parseInt(path.slice(-8), 16));
      assert.ok(seg(segno + 1n) <= control.timelineStartLsn, `${path} is unlinked only after the control file moved past it`);
      unlinked.push(path);
      await unlink(path);
    },
    diskBytes: async () => 1,
    syncDir: fsyncDirectory,
  };
  await task(timeline, keepSegments(0), fs).runPass();
  assert.equal(unlinked.length, LAST - FIRST);
  assert.deepEqual(await segnosOnDisk(), [LAST]);
});

test('a segment a reader has open is never removed, nor anything after it; closing the reader frees it', async () => {
  const timeline = await openTimeline(dir);
  const reader = new WalReader(dir, timeline, timeline);
  await reader.locate(seg(4, 10), seg(4, 20));
  const retention = task(timeline, keepSegments(0));
  await retention.runPass();
  assert.equal(timeline.timelineStartLsn, seg(4));
  assert.deepEqual(await segnosOnDisk(), range(4, 10));
  const bytes = Buffer.alloc(16);
  assert.equal(await reader.readRange(seg(4, 0), bytes), 16, 'the pinned segment still reads');
  assert.deepEqual([...bytes], new Array(16).fill(4));
  await reader.close();
  await retention.runPass();
  assert.deepEqual(await segnosOnDisk(), [LAST]);
});

test('a reader about to open a segment (pinned, open not finished) keeps it: check and pin are one step', async () => {
  const timeline = await openTimeline(dir);
  const reader = new WalReader(dir, timeline, timeline);
  const locating = reader.locate(seg(3, 0), seg(3, 8));
  await task(timeline, keepSegments(0)).runPass();
  const chunk = await locating;
  assert.equal(chunk.byteCount, 8);
  assert.deepEqual(await segnosOnDisk(), range(3, 10));
  await reader.close();
});

test('a reader asking for a removed segment gets 58P01 "has already been removed"', async () => {
  const timeline = await openTimeline(dir);
  await task(timeline, keepSegments(2)).runPass();
  const reader = new WalReader(dir, timeline, timeline);
  await assert.rejects(reader.locate(seg(5, 0), seg(5, 8)), (error) => {
    assert.ok(isWalcastError(error, 'WALCAST_ERR_WAL_REMOVED'));
    assert.equal(error.sqlState, '58P01');
    assert.equal(error.message, `requested WAL segment ${nameOf(5)} has already been removed`);
    return true;
  });
  await reader.close();
});

test('a slot holds from its restart segment; a released hold lets the WAL go', async () => {
  const timeline = await openTimeline(dir);
  await timeline.slots.create('keeper', { temporary: false, restartLsn: seg(4, 500) });
  const retention = task(timeline, keepSegments(1));
  await retention.runPass();
  assert.deepEqual(await segnosOnDisk(), range(4, 10));
  assert.equal(retention.status().limitingSlot, 'keeper');
  await timeline.slots.drop('keeper');
  await retention.runPass();
  assert.deepEqual(await segnosOnDisk(), range(9, 10));
});

test('max_slot_wal_keep_size: a slot past the cap is invalidated and its WAL removed', async () => {
  const timeline = await openTimeline(dir);
  await timeline.slots.create('laggard', { temporary: false, restartLsn: seg(3) });
  await timeline.slots.create('fresh', { temporary: false, restartLsn: seg(8) });
  const retention = task(timeline, { walKeepBytes: 0, maxSlotWalKeepBytes: 4 * SEG });
  await retention.runPass();
  assert.equal(timeline.slots.get('laggard')?.invalidated, true);
  assert.match(timeline.slots.get('laggard')?.invalidationReason ?? '', /exceeds max_slot_wal_keep_size/);
  assert.equal(timeline.slots.get('fresh')?.invalidated, false);
  assert.equal(retention.status().slotsInvalidated, 1);
  assert.deepEqual(await segnosOnDisk(), range(6, 10), 'the cap (4 segments behind the end) bounds what is kept');
});

test('kill between persisting the start and unlinking: after reopening, the recorded start holds and the leftovers go', async () => {
  const timeline = await openTimeline(dir);
  let unlinks = 0;
  const crashing: RetentionFs = {
    readdir: (path) => readdir(path),
    unlink: async (path) => {
      if (++unlinks > 2) throw Object.assign(new Error('simulated crash'), { code: 'ECRASH' });
      await unlink(path);
    },
    diskBytes: async () => 1,
    syncDir: fsyncDirectory,
  };
  const crashed = task(timeline, keepSegments(2), crashing);
  await crashed.runPass();
  assert.equal(crashed.status().failures, 1);
  assert.equal((await readControlFile(dir)).timelineStartLsn, seg(8));
  assert.ok((await segnosOnDisk()).includes(5), 'leftovers below the recorded start are still on disk');
  // "Restart": a fresh timeline object from the same directory.
  const reopened = await openTimeline(dir);
  assert.equal(reopened.timelineStartLsn, seg(8), 'the reopened timeline claims nothing before the recorded start');
  const reader = new WalReader(dir, reopened, reopened);
  await assert.rejects(reader.locate(seg(5), seg(5, 8)), (error) => isWalcastError(error, 'WALCAST_ERR_WAL_REMOVED'), 'a leftover file below the start is not served');
  await reader.close();
  await task(reopened, keepSegments(2)).runPass();
  assert.deepEqual(await segnosOnDisk(), range(8, 10));
});

test('a failed control-file write unlinks nothing', async () => {
  const timeline = await openTimeline(dir);
  await timeline.controlFile.read();
  await rm(join(dir, 'walcast.control'));
  await writeFile(join(dir, 'walcast.control.tmp'), '');
  // A directory where the temp file must go makes the write fail.
  await rm(join(dir, 'walcast.control.tmp'));
  const { mkdir } = await import('node:fs/promises');
  await mkdir(join(dir, 'walcast.control.tmp'));
  const retention = task(timeline, keepSegments(0));
  await retention.runPass();
  assert.equal(retention.status().failures, 1);
  assert.deepEqual(await segnosOnDisk(), range(FIRST, LAST));
});
