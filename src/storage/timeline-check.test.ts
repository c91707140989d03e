/**
 * The start-up check of a timeline directory against its control file, on listings built by hand: every damage kind
 * is found at the right LSN with the right severity, and a healthy directory yields nothing.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { TIMELINE_PROBLEMS_MAX, checkTimelineFiles, findTimelineProblems, type DirectoryEntry } from './timeline-check.js';
import { parseTimelineHistory } from './timeline-history.js';

const SEGMENT_BYTES = 1024 * 1024;
const MiB = BigInt(SEGMENT_BYTES);
/** Segments 2, 3 and 4 held; the flush LSN inside segment 4. */
const CONTROL = { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1, timelineStartLsn: 2n * MiB, flushLsn: 4n * MiB + 5000n, upstream: undefined };

function segment(segno: number, bytes = SEGMENT_BYTES, suffix = ''): DirectoryEntry {
  return { name: `00000001000000000000000${segno}${suffix}`, bytes, isFile: true };
}

const HEALTHY: DirectoryEntry[] = [
  segment(2),
  segment(3),
  segment(4, SEGMENT_BYTES, '.partial'),
  { name: 'walcast.control', bytes: 300, isFile: true },
  { name: 'walcast.slots', bytes: 100, isFile: true },
  { name: '00000001.history', bytes: 0, isFile: true },
];

describe('timeline file check', () => {
  test('a healthy directory has no problems', () => {
    assert.deepEqual(findTimelineProblems(HEALTHY, CONTROL), []);
  });

  test('after a promotion each segment is expected under its TLI; the old TLI\'s partial switch segment is kept quietly', () => {
    // Timeline 1 ends inside segment 3: segment 2 is TLI 1, segments 3 and 4 are TLI 2 (3 starts with TLI 1's bytes).
    const history = parseTimelineHistory('1\t0/300100\tno recovery target specified\n', 2);
    const control = { ...CONTROL, pgTimelineId: 2, history };
    const tli2 = (segno: number, suffix = ''): DirectoryEntry => ({ name: `00000002000000000000000${segno}${suffix}`, bytes: SEGMENT_BYTES, isFile: true });
    const promoted = [segment(2), segment(3, SEGMENT_BYTES, '.partial'), tli2(3), tli2(4, '.partial'), { name: '00000002.history', bytes: 40, isFile: true }];
    assert.deepEqual(findTimelineProblems(promoted, control), []);
    const missing = findTimelineProblems(promoted.filter((entry) => entry.name !== '000000020000000000000003'), control);
    assert.deepEqual(missing.map((problem) => [problem.kind, problem.file]), [['missing_segment', '000000020000000000000003']], 'the old TLI\'s copy does not stand in for the new one');
  });

  test('a missing segment is an error at its first byte', () => {
    const problems = findTimelineProblems(HEALTHY.filter((entry) => !entry.name.endsWith('3')), CONTROL);
    assert.equal(problems.length, 1);
    assert.deepEqual({ ...problems[0], message: undefined }, { kind: 'missing_segment', severity: 'error', file: '000000010000000000000003', lsn: 3n * MiB, message: undefined });
  });

  test('a truncated segment is an error at its first missing byte; the last segment needs only up to the flush LSN', () => {
    const problems = findTimelineProblems([segment(2), segment(3, 12345), segment(4, 5000, '.partial')], CONTROL);
    assert.deepEqual(problems.map((problem) => [problem.kind, problem.severity, problem.lsn]), [['truncated_segment', 'error', 3n * MiB + 12345n]]);
    const short = findTimelineProblems([segment(2), segment(3), segment(4, 4999, '.partial')], CONTROL);
    assert.deepEqual(short.map((problem) => [problem.kind, problem.lsn]), [['truncated_segment', 4n * MiB + 4999n]]);
  });

  test('extra files are warnings: garbage, a foreign timeline, segments past the flush LSN or before the start, a stray .partial', () => {
    const entries = [
      segment(1),
      segment(2),
      segment(3, SEGMENT_BYTES, '.partial'),
      segment(4, SEGMENT_BYTES, '.partial'),
      segment(6),
      { name: '000000020000000000000003', bytes: SEGMENT_BYTES, isFile: true },
      { name: 'garbage.bin', bytes: 7, isFile: true },
    ];
    const problems = findTimelineProblems(entries, CONTROL);
    assert.ok(problems.every((problem) => problem.severity === 'warning'), JSON.stringify(problems));
    assert.deepEqual(problems.map((problem) => problem.kind).sort(), ['foreign_segment', 'partial_not_last', 'segment_before_start', 'segment_past_flush', 'unexpected_file']);
  });

  test('a followed timeline may hold segments past its flush LSN (recovery judges them)', () => {
    assert.deepEqual(findTimelineProblems([...HEALTHY, segment(5, SEGMENT_BYTES, '.partial')], { ...CONTROL, upstream: 'host=x' }), []);
  });

  test('both NAME and NAME.partial is a warning; an empty timeline needs no segment', () => {
    const problems = findTimelineProblems([...HEALTHY, segment(3, SEGMENT_BYTES, '.partial')], CONTROL);
    assert.deepEqual(problems.map((problem) => problem.kind), ['duplicate_segment']);
    assert.deepEqual(findTimelineProblems([], { ...CONTROL, flushLsn: CONTROL.timelineStartLsn }), []);
  });

  test('the report is bounded', () => {
    const entries = Array.from({ length: TIMELINE_PROBLEMS_MAX * 2 }, (_, index) => ({ name: `junk-${index}`, bytes: 1, isFile: true }));
    assert.equal(findTimelineProblems(entries, CONTROL).length, TIMELINE_PROBLEMS_MAX);
  });

  test('checkTimelineFiles reads sizes from the directory', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'walcast-check-'));
    try {
      for (const entry of HEALTHY) await writeFile(join(dir, entry.name), Buffer.alloc(0));
      for (const entry of HEALTHY) await truncate(join(dir, entry.name), entry.bytes);
      assert.deepEqual(await checkTimelineFiles(dir, CONTROL), []);
      await truncate(join(dir, '000000010000000000000002'), 100);
      assert.deepEqual((await checkTimelineFiles(dir, CONTROL)).map((problem) => problem.lsn), [2n * MiB + 100n]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
