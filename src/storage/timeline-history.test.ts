/**
 * Timeline history files: parsing as timeline.c readTimeLineHistory, the TLI of an LSN and of a segment file (the
 * switch point's segment belongs to the new TLI), writing one byte for byte, reading one for TIMELINE_HISTORY.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { WalReader } from './wal-reader.js';
import { parseTimelineHistory, pgTimelineAt, readTimelineHistory, segmentPgTimeline, singleTimelineHistory, switchPointOf, writeHistoryFile } from './timeline-history.js';

const dir = mkdtempSync(join(tmpdir(), 'walcast-history-'));
const content = '1\t0/3000000\tno recovery target specified\n';
writeFileSync(join(dir, '0000001A.history'), content);

test('reads a held history file by PostgreSQL timeline id, named as PostgreSQL names it', async () => {
  assert.deepEqual(await readTimelineHistory(dir, 0x1a), { fileName: '0000001A.history', content });
});

test('a history file that is not held is WALCAST_ERR_WAL_REMOVED with PostgreSQL\'s message', async () => {
  await assert.rejects(readTimelineHistory(dir, 2), (error) => {
    assert.ok(isWalcastError(error, 'WALCAST_ERR_WAL_REMOVED'));
    assert.equal(error.message, 'could not open file "00000002.history": no such file or directory');
    return true;
  });
});

const THREE = '# comment lines and blank lines are skipped\n1\t0/3000100\tno recovery target specified\n\n2\t0/5000000\tbefore 2026-12-02\n';
const MIB = 1024 * 1024;
const madeDirs: string[] = [dir];
after(() => {
  for (const made of madeDirs) rmSync(made, { recursive: true, force: true });
});

test('parses a history as PostgreSQL: each line ends its timeline, the file\'s own timeline is open-ended', () => {
  assert.deepEqual(parseTimelineHistory(THREE, 3), [
    { pgTimelineId: 1, beginLsn: 0n, endLsn: 0x3000100n },
    { pgTimelineId: 2, beginLsn: 0x3000100n, endLsn: 0x5000000n },
    { pgTimelineId: 3, beginLsn: 0x5000000n, endLsn: undefined },
  ]);
  assert.deepEqual(singleTimelineHistory(1), [{ pgTimelineId: 1, beginLsn: 0n, endLsn: undefined }]);
  for (const bad of ['x\t0/1\treason\n', '1\tnot-an-lsn\n', '2\t0/1\n1\t0/2\n', '3\t0/1\n']) {
    assert.throws(() => parseTimelineHistory(bad, 3), (error) => isWalcastError(error, 'WALCAST_ERR_WAL_INVALID'), bad);
  }
});

test('a switch point belongs to the new timeline; a segment holding one is read from the new timeline\'s file', () => {
  const history = parseTimelineHistory(THREE, 3);
  assert.equal(pgTimelineAt(0x30000ffn, history), 1);
  assert.equal(pgTimelineAt(0x3000100n, history), 2);
  assert.equal(pgTimelineAt(0x5000000n, history), 3);
  assert.deepEqual(switchPointOf(1, history), { switchLsn: 0x3000100n, nextPgTimelineId: 2 });
  assert.equal(switchPointOf(3, history), undefined);
  // 16 MiB segments: segment 0/2 is wholly timeline 1, 0/3 holds the switch to 2, 0/4 is timeline 2, 0/5 starts 3.
  const segment = 16 * MIB;
  assert.deepEqual([2n, 3n, 4n, 5n].map((segno) => segmentPgTimeline(segno, segment, history)), [1, 2, 2, 3]);
});

test('a reader given a history opens each segment from its timeline\'s file and follows a switch while it runs', async () => {
  const walDir = mkdtempSync(join(tmpdir(), 'walcast-history-reader-'));
  madeDirs.push(walDir);
  writeFileSync(join(walDir, '000000010000000000000001'), Buffer.alloc(MIB, 1));
  writeFileSync(join(walDir, '000000010000000000000002.partial'), Buffer.alloc(MIB, 2));
  writeFileSync(join(walDir, '000000020000000000000002.partial'), Buffer.alloc(MIB, 3));
  const layout: { segmentBytes: number; pgTimelineId: number; timelineStartLsn: bigint; history: ReturnType<typeof parseTimelineHistory> } = {
    segmentBytes: MIB,
    pgTimelineId: 1,
    timelineStartLsn: BigInt(MIB),
    history: singleTimelineHistory(1),
  };
  const reader = new WalReader(walDir, layout);
  const before = Buffer.alloc(4);
  await reader.readRange(2n * BigInt(MIB), before);
  assert.deepEqual([...before], [2, 2, 2, 2], 'timeline 1 still current: its own file');
  layout.history = parseTimelineHistory('1\t0/200100\treason\n', 2);
  layout.pgTimelineId = 2;
  const after = Buffer.alloc(4);
  await reader.readRange(2n * BigInt(MIB), after);
  assert.deepEqual([...after], [3, 3, 3, 3], 'after the switch the same segment comes from the new timeline\'s file');
  await reader.readRange(BigInt(MIB), after);
  assert.deepEqual([...after], [1, 1, 1, 1], 'older segments stay on timeline 1');
  await reader.close();
});

test('a history file is written durably with exactly the upstream\'s bytes', async () => {
  const target = mkdtempSync(join(tmpdir(), 'walcast-history-write-'));
  madeDirs.push(target);
  await writeHistoryFile(target, 3, THREE);
  assert.equal(readFileSync(join(target, '00000003.history'), 'utf8'), THREE);
  assert.deepEqual(await readTimelineHistory(target, 3), { fileName: '00000003.history', content: THREE });
});
