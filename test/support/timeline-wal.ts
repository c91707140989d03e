/**
 * Byte comparison of WAL stored under PostgreSQL timeline ids (after a promotion: segments named by the TLI that
 * holds them, as pg_wal) against a promoted standby's pg_wal, for the failover tests; and the one timeline of an
 * in-process walcast.
 */
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { alignDown, formatLsn, type Lsn } from '../../src/lsn.js';
import { segmentFileName } from '../../src/storage/segment-name.js';
import type { Timeline } from '../../src/timeline/timeline.js';
import { firstDifference } from './postgres.js';
import type { RunningWalcast } from './walcast.js';

/** PostgreSQL's default wal_segment_size, which the failover fixtures' primaries use. */
export const FAILOVER_SEGMENT_BYTES = 16 * 1024 * 1024;

export function soleTimeline(walcast: RunningWalcast): Timeline {
  const [timeline] = walcast.server.timelines.list();
  assert.ok(timeline !== undefined, 'walcast has a timeline');
  return timeline;
}

/** Reads WAL of one TLI out of a pg_wal-like directory, by LSN (NAME or NAME.partial). */
export class SegmentFiles {
  private readonly cache = new Map<string, Buffer>();
  constructor(
    private readonly dir: string,
    private readonly pgTimelineId: number,
  ) {}

  async segment(segno: bigint): Promise<Buffer> {
    const name = segmentFileName(this.pgTimelineId, segno, FAILOVER_SEGMENT_BYTES);
    const cached = this.cache.get(name);
    if (cached !== undefined) return cached;
    const names = await readdir(this.dir);
    const found = names.includes(name) ? name : names.find((candidate) => candidate === `${name}.partial`);
    assert.ok(found !== undefined, `${name} is missing from ${this.dir}`);
    const bytes = await readFile(join(this.dir, found));
    this.cache.clear();
    this.cache.set(name, bytes);
    return bytes;
  }

  async read(lsn: Lsn, length: number): Promise<Buffer> {
    const segno = lsn / BigInt(FAILOVER_SEGMENT_BYTES);
    const offset = Number(lsn % BigInt(FAILOVER_SEGMENT_BYTES));
    assert.ok(offset + length <= FAILOVER_SEGMENT_BYTES, 'a read stays in its segment');
    return (await this.segment(segno)).subarray(offset, offset + length);
  }
}

/** Every byte of [from, to) in `dir`'s files of `pgTimelineId` equals the same range of S's; returns the bytes compared. */
export async function assertRangeMatches(dir: string, promotedWalDir: string, pgTimelineId: number, from: Lsn, to: Lsn): Promise<number> {
  const actual = new SegmentFiles(dir, pgTimelineId);
  const expected = new SegmentFiles(promotedWalDir, pgTimelineId);
  let compared = 0;
  for (let position = from; position < to; ) {
    const segmentEnd = alignDown(position, FAILOVER_SEGMENT_BYTES) + BigInt(FAILOVER_SEGMENT_BYTES);
    const length = Number((segmentEnd < to ? segmentEnd : to) - position);
    const difference = firstDifference(await actual.read(position, length), await expected.read(position, length));
    assert.equal(difference, -1, `timeline ${pgTimelineId} differs from S at ${formatLsn(position + BigInt(difference))} in ${dir}`);
    compared += length;
    position += BigInt(length);
  }
  return compared;
}

export function assertTimeline1Matches(dir: string, promotedWalDir: string, from: Lsn, switchLsn: Lsn): Promise<number> {
  return assertRangeMatches(dir, promotedWalDir, 1, from, switchLsn);
}

/** Timeline 2 starts with its first segment, which holds timeline 1's bytes before the switch point. */
export function assertTimeline2Matches(dir: string, promotedWalDir: string, switchLsn: Lsn, to: Lsn): Promise<number> {
  return assertRangeMatches(dir, promotedWalDir, 2, alignDown(switchLsn, FAILOVER_SEGMENT_BYTES), to);
}
