/**
 * storeTimelineSwitch against a real directory: files already named with the new PostgreSQL timeline (left by an
 * earlier attempt that wrote them but never committed the switch) are removed and the removal fsync'd before the
 * commit, so the new timeline starts with exactly the old timeline's bytes before the switch point and zeros after
 * them; a failed or crashed commit leaves no stale file the retry would build on.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { silentLogger } from '../log.js';
import { WAL_PAGE_BYTES, formatLsn, type Lsn } from '../lsn.js';
import { crc32c } from '../storage/crc32c.js';
import { fsyncDirectory } from '../storage/durable-file.js';
import { readSidecar, sidecarNameFor } from '../storage/page-checksums.js';
import { segmentFileName } from '../storage/segment-name.js';
import { parseTimelineHistory } from '../storage/timeline-history.js';
import { WalReader } from '../storage/wal-reader.js';
import { WalWriter } from '../storage/wal-writer.js';
import { storeTimelineSwitch, type SwitchFs } from './timeline-switch.js';

const SEG = 1024 * 1024;
const seg = (segno: number, offset = 0): Lsn => BigInt(segno) * BigInt(SEG) + BigInt(offset);
const OLD_START = seg(3);
/** Inside segment 4, mid-page: the new timeline's segment 4 starts with TLI 1's bytes up to here. */
const SWITCH_LSN = seg(4, 2 * WAL_PAGE_BYTES + 100);
const SWITCH_OFFSET = 2 * WAL_PAGE_BYTES + 100;
const HISTORY = `1\t${formatLsn(SWITCH_LSN)}\tno recovery target specified\n`;
const name = (pgTimelineId: number, segno: number): string => segmentFileName(pgTimelineId, BigInt(segno), SEG);
const STALE_BYTE = 0xee;
let dir: string;
/** TLI 1's WAL from OLD_START to the switch point, as stored. */
let oldWal: Buffer;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'walcast-switch-'));
  oldWal = randomBytes(Number(SWITCH_LSN - OLD_START));
  const writer = new WalWriter({ dir, pgTimelineId: 1, segmentBytes: SEG, startLsn: OLD_START });
  writer.write(OLD_START, oldWal);
  await writer.close();
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** What an interrupted earlier attempt (or a different promotion seen before a crash) leaves under TLI 2. */
async function leaveStaleTli2Files(): Promise<string[]> {
  const stale = [
    [name(2, 4) + '.partial', Buffer.alloc(SEG, STALE_BYTE)],
    [sidecarNameFor(name(2, 4)), Buffer.alloc(128 * 4, STALE_BYTE)],
    [name(2, 5), Buffer.alloc(SEG, STALE_BYTE)],
    [sidecarNameFor(name(2, 5)), Buffer.alloc(128 * 4, STALE_BYTE)],
    [name(2, 6) + '.partial', Buffer.alloc(SEG, STALE_BYTE)],
  ] as const;
  for (const [file, bytes] of stale) await writeFile(join(dir, file), bytes);
  return stale.map(([file]) => file);
}

function switchInput(overrides: { commitSwitch?: () => Promise<unknown>; fs?: SwitchFs } = {}): Parameters<typeof storeTimelineSwitch>[0] {
  return {
    dir,
    segmentBytes: SEG,
    pgTimelineId: 1,
    writtenLsn: SWITCH_LSN,
    switchLsn: SWITCH_LSN,
    nextPgTimelineId: 2,
    historyContent: HISTORY,
    commitSwitch: overrides.commitSwitch ?? (async () => undefined),
    log: silentLogger(),
    ...(overrides.fs === undefined ? {} : { fs: overrides.fs }),
  };
}

async function tli2Files(): Promise<string[]> {
  return (await readdir(dir)).filter((file) => file.startsWith('00000002') && file !== '00000002.history').sort();
}

/** TLI 2's switch segment must be TLI 1's bytes up to the switch point and zeros after them, nothing stale. */
async function assertSwitchSegmentClean(): Promise<void> {
  const file = await readFile(join(dir, name(2, 4) + '.partial'));
  assert.equal(file.length, SEG);
  assert.ok(file.subarray(0, SWITCH_OFFSET).equals(oldWal.subarray(SEG)), 'the prefix is TLI 1\'s segment 4 up to the switch point');
  assert.ok(file.subarray(SWITCH_OFFSET).equals(Buffer.alloc(SEG - SWITCH_OFFSET)), 'past the switch point the file holds zeros, not a stale attempt\'s bytes');
}

/** Every file not named with TLI 2 (TLI 1's, another TLI's): the switch to TLI 2 leaves them alone. */
async function otherFiles(): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  for (const file of (await readdir(dir)).sort()) if (!file.startsWith('00000002')) files.set(file, await readFile(join(dir, file)));
  return files;
}

test('stale files of the new TLI are removed before the commit: the new timeline is the old prefix, then zeros', async () => {
  await leaveStaleTli2Files();
  await writeFile(join(dir, name(3, 5)), Buffer.alloc(16, 1));
  const before = await otherFiles();
  let atCommit: string[] = [];
  const writer = await storeTimelineSwitch(switchInput({
    commitSwitch: async () => {
      atCommit = await tli2Files();
      await assertSwitchSegmentClean();
    },
  }));
  assert.deepEqual(atCommit, [sidecarNameFor(name(2, 4)), name(2, 4) + '.partial'], 'at the commit only the new switch segment (and its sidecar) carry TLI 2');
  assert.equal(writer.durableLsn, SWITCH_LSN);
  await writer.close();
  await assertSwitchSegmentClean();
  assert.deepEqual(await tli2Files(), [sidecarNameFor(name(2, 4)), name(2, 4) + '.partial']);
  assert.deepEqual(await otherFiles(), before, 'TLI 1\'s files and other TLIs\' are untouched');
  assert.equal(await readFile(join(dir, '00000002.history'), 'utf8'), HISTORY);

  // The sidecar vouches for the pages as now stored, not for the stale attempt's.
  const file = await readFile(join(dir, name(2, 4) + '.partial'));
  const entries = await readSidecar(join(dir, sidecarNameFor(name(2, 4))), 0);
  assert.equal(entries.length, 3, 'two whole pages and the partial one, entered at close');
  for (let page = 0; page < entries.length; page++) {
    assert.equal(entries[page], crc32c(file.subarray(page * WAL_PAGE_BYTES, (page + 1) * WAL_PAGE_BYTES)), `page ${page}`);
  }

  // Served through the history, the new timeline reads TLI 1's bytes up to the switch point and nothing stale after.
  const history = parseTimelineHistory(HISTORY, 2);
  const reader = new WalReader(dir, { segmentBytes: SEG, pgTimelineId: 2, timelineStartLsn: seg(3), history });
  try {
    const read = Buffer.alloc(Number(SWITCH_LSN - OLD_START) + 64);
    assert.equal(await reader.readRange(OLD_START, read), read.length);
    assert.ok(read.subarray(0, oldWal.length).equals(oldWal));
    assert.ok(read.subarray(oldWal.length).equals(Buffer.alloc(64)));
    await assert.rejects(reader.readRange(seg(5), Buffer.alloc(8)), (error) => isWalcastError(error, 'WALCAST_ERR_WAL_REMOVED'), 'the stale TLI 2 segment 5 is gone');
  } finally {
    await reader.close();
  }
});

test('order: the stale files are unlinked, then the directory fsync\'d, and only then the switch committed', async () => {
  const stale = await leaveStaleTli2Files();
  const steps: string[] = [];
  const fs: SwitchFs = {
    readdir: (path) => readdir(path),
    unlink: async (path) => {
      steps.push(`unlink ${path.slice(dir.length + 1)}`);
      await unlink(path);
    },
    syncDir: async (path) => {
      steps.push('fsync dir');
      await fsyncDirectory(path);
    },
  };
  const writer = await storeTimelineSwitch(switchInput({ fs, commitSwitch: async () => void steps.push('commit') }));
  await writer.close();
  assert.deepEqual(steps.slice(0, stale.length).sort(), stale.map((file) => `unlink ${file}`).sort());
  assert.deepEqual(steps.slice(stale.length), ['fsync dir', 'commit']);
});

test('a commit that fails (or a crash before it) leaves no stale file; the retry starts clean and commits', async () => {
  await leaveStaleTli2Files();
  await assert.rejects(
    storeTimelineSwitch(switchInput({ commitSwitch: async () => Promise.reject(Object.assign(new Error('simulated crash at the commit'), { code: 'ECRASH' })) })),
    /simulated crash/,
  );
  // The failed attempt's own switch segment is now the stale file; someone (a different promotion, say) scribbles on it.
  await writeFile(join(dir, name(2, 4) + '.partial'), Buffer.alloc(SEG, STALE_BYTE));
  await writeFile(join(dir, name(2, 7)), Buffer.alloc(SEG, STALE_BYTE));
  let committed = false;
  const writer = await storeTimelineSwitch(switchInput({ commitSwitch: async () => void (committed = true) }));
  await writer.close();
  assert.ok(committed);
  await assertSwitchSegmentClean();
  assert.deepEqual(await tli2Files(), [sidecarNameFor(name(2, 4)), name(2, 4) + '.partial']);
});

test('nothing stale: no removal and no extra directory fsync; a removal that fails stops the switch before the commit', async () => {
  const steps: string[] = [];
  const recording: SwitchFs = {
    readdir: (path) => readdir(path),
    unlink: async (path) => void steps.push(`unlink ${path}`),
    syncDir: async () => void steps.push('fsync dir'),
  };
  const writer = await storeTimelineSwitch(switchInput({ fs: recording }));
  await writer.close();
  assert.deepEqual(steps, []);

  await rm(join(dir, name(2, 4) + '.partial'));
  await leaveStaleTli2Files();
  let committed = false;
  const failing: SwitchFs = {
    readdir: (path) => readdir(path),
    unlink: async () => Promise.reject(Object.assign(new Error('EIO: i/o error, unlink'), { code: 'EIO' })),
    syncDir: fsyncDirectory,
  };
  await assert.rejects(storeTimelineSwitch(switchInput({ fs: failing, commitSwitch: async () => void (committed = true) })), /EIO/);
  assert.equal(committed, false, 'a switch whose stale files could not be removed is never committed');
});
