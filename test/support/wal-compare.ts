/**
 * Byte comparison of WAL a client received against the source pg_wal: every segment in [startLsn, endLsn) must be
 * present exactly once and identical to the source up to endLsn (the rest of a .partial segment is not compared).
 */
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Lsn } from '../../src/lsn.js';
import { firstDifference } from './postgres.js';

/** PostgreSQL's default wal_segment_size, which the fixture's primaries use. */
export const DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024;

export async function assertSegmentsMatch(receivedDir: string, sourceWalDir: string, startLsn: Lsn, endLsn: Lsn, segmentBytes = DEFAULT_SEGMENT_BYTES): Promise<void> {
  const names = (await readdir(receivedDir)).filter((name) => /^[0-9A-F]{24}(\.partial)?$/.test(name)).sort();
  const firstSegment = startLsn / BigInt(segmentBytes);
  const lastSegment = (endLsn - 1n) / BigInt(segmentBytes);
  assert.equal(names.length, Number(lastSegment - firstSegment + 1n), `segments received: ${names.join(', ')}`);
  for (const name of names) {
    const plain = name.replace('.partial', '');
    const received = await readFile(join(receivedDir, name));
    const original = await readFile(join(sourceWalDir, plain));
    const segno = BigInt(parseInt(plain.slice(16), 16)) + BigInt(parseInt(plain.slice(8, 16), 16)) * (0x1_0000_0000n / BigInt(segmentBytes));
    const segmentStart = segno * BigInt(segmentBytes);
    const validBytes = endLsn - segmentStart >= BigInt(segmentBytes) ? segmentBytes : Number(endLsn - segmentStart);
    const difference = firstDifference(received.subarray(0, validBytes), original.subarray(0, validBytes));
    assert.equal(difference, -1, `${name} differs from the source at offset ${difference}`);
  }
}
