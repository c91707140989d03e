/**
 * RetentionTask against a real timeline directory: what a pass removes, the control file written before any
 * unlink, pins of open (and about-to-open) segments honoured, slots holding and being invalidated, and a crash
 * between persisting the start and unlinking simulated and recovered from.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, mock, test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { silentLogger } from '../log.js';
import { CONTROL_FORMAT_VERSION, PG_VERSION_NUM_15, readControlFile, writeControlFile } from '../storage/control-file.js';
import { fsyncDirectory } from '../storage/control-file.js';
import { SIDECAR_SUFFIX, sidecarNameFor } from '../storage/page-checksums.js';
import { segmentFileName } from '../storage/segment-name.js';
import { formatLsn } from '../lsn.js';
import { WalReader } from '../storage/wal-reader.js';
import { openTimeline } from '../timeline/open-timelines.js';
import type { Timeline } from '../timeline/timeline.js';
import { DISK_USAGE_FULL_REFRESH_MS } from './disk-usage.js';
import { DISK_USAGE_REFRESH_MS, REMOVAL_RELIST_MS, RetentionTask, type RetentionFs, type RetentionSettings } from './retention-task.js';

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
  assert.equal(retention.status().removedBeforeLsn, undefined, 'nothing removed before the first pass');
  await retention.runPass();
  assert.equal(timeline.timelineStartLsn, seg(7));
  assert.equal(retention.status().removedBeforeLsn, seg(7), 'the completed pass removed everything before the start');
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

test('an idle timeline\'s passes do not list its directory every second: again when WAL arrives, a removal is due, or a minute passed', async (context) => {
  mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
  context.after(() => mock.timers.reset());
  const timeline = await openTimeline(dir);
  let listings = 0;
  const fs: RetentionFs = {
    readdir: (path) => {
      listings++;
      return readdir(path);
    },
    unlink,
    diskBytes: async () => 4096,
    syncDir: fsyncDirectory,
  };
  const retention = task(timeline, keepSegments(3), fs);
  await retention.runPass();
  assert.equal(listings, 2, 'the first pass lists to remove, then to measure');
  assert.deepEqual(await segnosOnDisk(), range(LAST - 3, LAST));
  for (let second = 1; second <= 30; second++) {
    mock.timers.tick(1_000);
    await retention.runPass();
  }
  assert.equal(listings, 2, 'nothing moved: 30 passes, no listing');
  assert.equal(retention.status().passes, 31);
  // WAL arrives: disk usage is measured again (at most every DISK_USAGE_REFRESH_MS), still no removal listing.
  timeline.flushLsn.advance(seg(LAST, 200));
  mock.timers.tick(DISK_USAGE_REFRESH_MS);
  await retention.runPass();
  assert.equal(listings, 3);
  // The horizon moves a segment on: the pass lists and removes.
  timeline.flushLsn.advance(seg(LAST + 1, 100));
  timeline.commitLsn.advance(seg(LAST + 1, 100));
  await writeFile(join(dir, nameOf(LAST + 1) + '.partial'), Buffer.alloc(4096, LAST + 1));
  mock.timers.tick(1_000);
  await retention.runPass();
  assert.ok(listings >= 4);
  assert.deepEqual(await segnosOnDisk(), range(LAST - 2, LAST + 1));
  // Idle again, then a minute: one relist (files put below the start by hand go) and one full measurement.
  const settled = listings;
  await writeFile(join(dir, nameOf(FIRST)), Buffer.alloc(4096, FIRST));
  for (let second = 1; second < Math.min(REMOVAL_RELIST_MS, DISK_USAGE_FULL_REFRESH_MS) / 1_000; second++) {
    mock.timers.tick(1_000);
    await retention.runPass();
  }
  assert.equal(listings, settled, 'idle for under a minute: no listing');
  mock.timers.tick(1_000);
  await retention.runPass();
  assert.equal(listings, settled + 2);
  assert.deepEqual(await segnosOnDisk(), range(LAST - 2, LAST + 1), 'the relist removed the stray file below the start');
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

describe('after a promotion upstream (the timeline moved from PostgreSQL TLI 1 to TLI 2 inside segment 6)', () => {
  const SWITCH_SEGNO = 6;
  const switchLsn = seg(SWITCH_SEGNO, 100);
  const tliName = (pgTimelineId: number, segno: number): string => segmentFileName(pgTimelineId, BigInt(segno), SEG);
  /** The fill byte of a file tells which TLI's copy the reader opened. */
  const fillOf = (pgTimelineId: number, segno: number): number => pgTimelineId * 0x20 + segno;
  let switchedDir: string;

  beforeEach(async () => {
    switchedDir = await mkdtemp(join(tmpdir(), 'walcast-retention-tli-'));
    const put = async (pgTimelineId: number, segno: number, partial: boolean): Promise<void> => {
      const name = tliName(pgTimelineId, segno);
      await writeFile(join(switchedDir, name + (partial ? '.partial' : '')), Buffer.alloc(4096, fillOf(pgTimelineId, segno)));
      await writeFile(join(switchedDir, sidecarNameFor(name)), Buffer.alloc(4, segno));
    };
    // TLI 1 up to the switch; its switch segment stays NAME.partial, as PostgreSQL renames it at promotion.
    for (let segno = FIRST; segno <= SWITCH_SEGNO; segno++) await put(1, segno, segno === SWITCH_SEGNO);
    // TLI 2 from the switch segment on (its file starts with TLI 1's bytes before the switch point).
    for (let segno = SWITCH_SEGNO; segno <= LAST; segno++) await put(2, segno, segno === LAST);
    await writeFile(join(switchedDir, '00000002.history'), `1\t${formatLsn(switchLsn)}\tno recovery target specified\n`);
    await writeControlFile(switchedDir, {
      formatVersion: CONTROL_FORMAT_VERSION,
      tenantId: 'ab'.repeat(16),
      timelineId: 'ef'.repeat(16),
      systemId: 7n,
      pgVersion: PG_VERSION_NUM_15,
      segmentBytes: SEG,
      pgTimelineId: 2,
      timelineStartLsn: seg(FIRST),
      flushLsn: seg(LAST, 100),
      commitLsn: seg(LAST, 100),
      createdAt: new Date(0).toISOString(),
    });
  });

  afterEach(async () => {
    await rm(switchedDir, { recursive: true, force: true });
  });

  /** "TLI:segno" of every segment file (not sidecars), and the same for sidecars. */
  async function filesOnDisk(): Promise<{ segments: string[]; sidecars: string[]; others: string[] }> {
    const segments: string[] = [];
    const sidecars: string[] = [];
    const others: string[] = [];
    for (const name of (await readdir(switchedDir)).sort()) {
      if (!/^[0-9A-F]{24}/.test(name)) {
        others.push(name);
        continue;
      }
      const label = `${Number.parseInt(name.slice(0, 8), 16)}:${Number.parseInt(name.slice(16, 24), 16)}`;
      (name.endsWith(SIDECAR_SUFFIX) ? sidecars : segments).push(label);
    }
    return { segments, sidecars, others };
  }

  async function firstByteServedAt(timeline: Timeline, lsn: bigint): Promise<number> {
    const reader = new WalReader(switchedDir, timeline, timeline);
    try {
      const bytes = Buffer.alloc(1);
      assert.equal(await reader.readRange(lsn, bytes), 1);
      return bytes[0] ?? -1;
    } finally {
      await reader.close();
    }
  }

  test('old-TLI segments and their sidecars go once below the horizon, with the current TLI\'s; the history file stays', async () => {
    const timeline = await openTimeline(switchedDir);
    assert.equal(timeline.pgTimelineId, 2);
    const retention = task(timeline, keepSegments(2));
    await retention.runPass();
    assert.equal((await readControlFile(switchedDir)).timelineStartLsn, seg(8));
    const files = await filesOnDisk();
    assert.deepEqual(files.segments, ['2:8', '2:9', '2:10'], 'no TLI 1 file is left once the start passed the switch segment');
    assert.deepEqual(files.sidecars, ['2:8', '2:9', '2:10']);
    assert.ok(files.others.includes('00000002.history'), 'TIMELINE_HISTORY 2 still has its file');
    // Removed: TLI 1 segments 2..6 (6 is the .partial) and TLI 2 segments 6..7.
    assert.equal(retention.status().segmentsRemoved, 5 + 2);
    assert.equal(retention.status().segmentFiles, 3);
    assert.equal(await firstByteServedAt(await openTimeline(switchedDir), seg(8)), fillOf(2, 8));
  });

  test('a horizon before the switch keeps the old TLI\'s segments from it on, the switch segment under both names, and serves each from the file the history names', async () => {
    const timeline = await openTimeline(switchedDir);
    const retention = task(timeline, keepSegments(6));
    await retention.runPass();
    assert.equal(timeline.timelineStartLsn, seg(4));
    const files = await filesOnDisk();
    assert.deepEqual(files.segments, ['1:4', '1:5', '1:6', '2:6', '2:7', '2:8', '2:9', '2:10']);
    assert.deepEqual(files.sidecars, files.segments, 'each kept segment keeps its sidecar, each removed one lost it');
    assert.equal(retention.status().segmentFiles, 8, 'disk usage counts the files of every TLI');
    assert.equal(retention.status().segmentsRemoved, 2);
    assert.equal(await firstByteServedAt(timeline, seg(4)), fillOf(1, 4), 'before the switch segment: the TLI 1 file');
    assert.equal(await firstByteServedAt(timeline, seg(5)), fillOf(1, 5));
    assert.equal(await firstByteServedAt(timeline, seg(SWITCH_SEGNO)), fillOf(2, SWITCH_SEGNO), 'the switch segment: the TLI 2 file (walsender.c)');
  });

  test('a slot holding WAL of the old TLI keeps those files; dropping it lets them go', async () => {
    const timeline = await openTimeline(switchedDir);
    await timeline.slots.create('behind', { temporary: false, restartLsn: seg(3, 10) });
    const retention = task(timeline, keepSegments(1));
    await retention.runPass();
    assert.deepEqual((await filesOnDisk()).segments, ['1:3', '1:4', '1:5', '1:6', '2:6', '2:7', '2:8', '2:9', '2:10']);
    assert.equal(retention.status().limitingSlot, 'behind');
    assert.equal(await firstByteServedAt(timeline, seg(3, 10)), fillOf(1, 3));
    await timeline.slots.drop('behind');
    await retention.runPass();
    assert.deepEqual((await filesOnDisk()).segments, ['2:9', '2:10']);
  });

  test('files of a TLI no history lists (left by an interrupted attempt) also go once below the start', async () => {
    await writeFile(join(switchedDir, tliName(3, 4)), Buffer.alloc(4096, 0x77));
    await writeFile(join(switchedDir, sidecarNameFor(tliName(3, 4))), Buffer.alloc(4));
    await writeFile(join(switchedDir, tliName(3, 9) + '.partial'), Buffer.alloc(4096, 0x77));
    const timeline = await openTimeline(switchedDir);
    await task(timeline, keepSegments(3)).runPass();
    assert.deepEqual((await filesOnDisk()).segments, ['2:7', '2:8', '2:9', '2:10', '3:9'], 'below the start every name goes; above it nothing is touched');
    assert.deepEqual((await filesOnDisk()).sidecars, ['2:7', '2:8', '2:9', '2:10']);
  });
});
