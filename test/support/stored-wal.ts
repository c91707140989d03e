/**
 * A walcast data directory holding real PostgreSQL 15 WAL (1 MiB segments, a few segments' worth) imported from a
 * primary that is then stopped, for integration tests that need WAL to stream but no live ingest; and the
 * primary's own bytes for any range, to compare streamed WAL with.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Lsn } from '../../src/lsn.js';
import { segmentFileName } from '../../src/storage/segment-name.js';
import { importWal } from '../../src/storage/wal-import.js';
import { makeTempDir, startPrimary } from './postgres.js';

export const STORED_WAL_SEGMENT_BYTES = 1024 * 1024;

export interface StoredWal {
  readonly dataDir: string;
  readonly startLsn: Lsn;
  readonly endLsn: Lsn;
  /** The primary's bytes for [from, to), read from its own segment files. */
  primaryWal(from: Lsn, to: Lsn): Promise<Buffer>;
}

/** `rows` rows of filler give about 1 MiB of WAL per 15,000. */
export async function makeStoredWal(prefix: string, rows = 30_000): Promise<StoredWal> {
  const primary = await startPrimary({ walSegmentMb: STORED_WAL_SEGMENT_BYTES / (1024 * 1024) });
  try {
    await primary.sql(`CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, ${rows}) g`);
  } finally {
    await primary.stop();
  }
  const dataDir = await makeTempDir(prefix);
  const imported = await importWal({ dataDir, fromDir: primary.walDir });
  assert.ok(imported.endLsn > imported.startLsn);
  const segmentBytes = BigInt(STORED_WAL_SEGMENT_BYTES);
  return {
    dataDir,
    startLsn: imported.startLsn,
    endLsn: imported.endLsn,
    async primaryWal(from, to) {
      const parts: Buffer[] = [];
      for (let position = from; position < to; ) {
        const segno = position / segmentBytes;
        const segmentEnd = (segno + 1n) * segmentBytes;
        const until = to < segmentEnd ? to : segmentEnd;
        const file = await readFile(join(primary.walDir, segmentFileName(1, segno, STORED_WAL_SEGMENT_BYTES)));
        parts.push(file.subarray(Number(position - segno * segmentBytes), Number(until - segno * segmentBytes)));
        position = until;
      }
      return Buffer.concat(parts);
    },
  };
}
