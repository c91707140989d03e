/**
 * WAL validation and import on real PostgreSQL 15 segments (1 MiB), generated at test time: the computed end of
 * valid WAL equals pg_waldump's; corruption, gaps, mixed systems, bad sizes and extension behave as documented.
 */
import assert from 'node:assert/strict';
import { cp, readFile, readdir, rm, stat, truncate, writeFile, copyFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { formatLsn, type Lsn } from '../lsn.js';
import { dumpRecords, dumpedEnd, generateWal, initdbOnly, makeTempDir, recordEnd, type DumpedRecord, type GeneratedWal } from '../../test/fixtures/storage/postgres-wal.js';
import { readControlFile } from './control-file.js';
import { segmentFileName, segmentOf, offsetInSegment } from './segment-name.js';
import { directorySegmentSource } from './segment-source.js';
import { listSegmentFiles, timelineDirPath } from './timeline-dir.js';
import { importWal } from './wal-import.js';
import { WalReader } from './wal-reader.js';
import { findValidWalEnd, walkWal } from './wal-validate.js';

const SEGMENT_BYTES = 1024 * 1024;
const SUITE_TIMEOUT_MS = 120_000;

let generated: GeneratedWal;
let records: DumpedRecord[];
let firstSegno: bigint;
let expectedEnd: Lsn;
const scratch: string[] = [];

async function scratchDir(prefix: string): Promise<string> {
  const dir = await makeTempDir(prefix);
  scratch.push(dir);
  return dir;
}

/** A copy of the generated pg_wal the test may damage. */
async function walCopy(): Promise<string> {
  const dir = await scratchDir('walcopy');
  await cp(generated.walDir, dir, { recursive: true });
  return dir;
}

function nameOf(segno: bigint): string {
  return segmentFileName(1, segno, SEGMENT_BYTES);
}

before(async () => {
  generated = await generateWal([
    'CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 30000) g',
    'SELECT pg_switch_wal()',
    'CHECKPOINT',
    // After a checkpoint, updates log full-page images: records that cross pages and segments.
    "UPDATE t SET v = v || 'x' WHERE id % 7 = 0",
    'CREATE INDEX t_v ON t (v)',
    "INSERT INTO t SELECT g, repeat(md5(g::text), 40) FROM generate_series(1, 3000) g",
  ]);
  const names = (await readdir(generated.walDir)).filter((name) => /^[0-9A-F]{24}$/.test(name)).sort();
  firstSegno = BigInt('0x' + (names[0] ?? '').slice(16));
  records = await dumpRecords(generated.walDir, names[0] ?? '', names.at(-1) ?? '');
  expectedEnd = dumpedEnd(records, SEGMENT_BYTES);
}, { timeout: SUITE_TIMEOUT_MS });

after(async () => {
  await generated?.cleanup();
  for (const dir of scratch) await rm(dir, { recursive: true, force: true });
});

describe('validating and importing real PostgreSQL 15 WAL', { timeout: SUITE_TIMEOUT_MS }, () => {
  test('the end of valid WAL equals pg_waldump\'s last record end', async () => {
    assert.ok(records.length > 1000, 'the generated WAL has many records');
    assert.ok(segmentOf(expectedEnd, SEGMENT_BYTES) - firstSegno >= 3n, 'the generated WAL spans several segments');
    // The walk's less common paths are exercised: headers split over pages, multi-page records, XLOG_SWITCH.
    assert.ok(records.some((entry) => Number(entry.lsn % 8192n) > 8192 - 24), 'a record header straddles a page boundary');
    assert.ok(records.some((entry) => entry.totalBytes > 8192), 'a record spans several pages');
    assert.ok(records.some((entry) => entry.isSwitch), 'an XLOG_SWITCH record');
    const source = directorySegmentSource(generated.walDir, 1, SEGMENT_BYTES);
    const walk = await walkWal({ source, segmentBytes: SEGMENT_BYTES, startLsn: firstSegno * BigInt(SEGMENT_BYTES) });
    await source.close();
    assert.equal(formatLsn(walk.endLsn), formatLsn(expectedEnd), walk.stopReason);
    assert.equal(walk.recordCount, records.length);
    assert.equal(walk.lastRecordLsn, records.at(-1)?.lsn);
    assert.equal(walk.stopKind === 'invalid-record' || walk.stopKind === 'invalid-page' || walk.stopKind === 'missing-segment', true);
  });

  test('a walk starting mid-WAL (at a record, with its prev-link) reaches the same end', async () => {
    const middle = Math.floor(records.length / 2);
    const record = records[middle];
    const previous = records[middle - 1];
    assert.ok(record !== undefined && previous !== undefined);
    const result = await findValidWalEnd({ dir: generated.walDir, layout: { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 }, startLsn: record.lsn, prevRecordLsn: previous.lsn });
    assert.equal(formatLsn(result.endLsn), formatLsn(expectedEnd));
    assert.equal(result.recordCount, records.length - middle);
    const wrongPrev = await findValidWalEnd({ dir: generated.walDir, layout: { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 }, startLsn: record.lsn, prevRecordLsn: record.lsn });
    assert.equal(wrongPrev.endLsn, record.lsn);
    assert.match(wrongPrev.stopReason, /incorrect prev-link/);
  });

  test('stopLsn ends the walk before the record starting there', async () => {
    const targetIndex = Math.floor(records.length * 0.7);
    const target = records[targetIndex];
    assert.ok(target !== undefined);
    const source = directorySegmentSource(generated.walDir, 1, SEGMENT_BYTES);
    const walk = await walkWal({ source, segmentBytes: SEGMENT_BYTES, startLsn: firstSegno * BigInt(SEGMENT_BYTES), stopLsn: target.lsn });
    await source.close();
    assert.equal(walk.stopKind, 'stop-lsn');
    assert.equal(formatLsn(walk.endLsn), formatLsn(dumpedEnd(records.slice(0, targetIndex), SEGMENT_BYTES)));
    assert.equal(walk.recordCount, targetIndex);
  });

  test('a segment starting with a continuation is walked from its first full record', async () => {
    // Find a record that crosses into a later segment and start the walk at that segment.
    const crossing = records.find((entry) => segmentOf(recordEnd(entry.lsn, entry.totalBytes, SEGMENT_BYTES) - 1n, SEGMENT_BYTES) > segmentOf(entry.lsn, SEGMENT_BYTES));
    assert.ok(crossing !== undefined, 'some record crosses a segment boundary');
    const segno = segmentOf(crossing.lsn, SEGMENT_BYTES) + 1n;
    const next = records[records.indexOf(crossing) + 1];
    assert.ok(next !== undefined);
    const result = await findValidWalEnd({ dir: generated.walDir, layout: { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 }, startLsn: segno * BigInt(SEGMENT_BYTES) });
    assert.equal(formatLsn(result.endLsn), formatLsn(expectedEnd));
    assert.equal(result.recordCount, records.length - records.indexOf(next));
  });

  test('import creates a timeline: segments, zeroed .partial tail, control file written last', async () => {
    const dataDir = await scratchDir('data');
    const result = await importWal({ dataDir, fromDir: generated.walDir });
    assert.equal(result.created, true);
    assert.equal(result.startLsn, firstSegno * BigInt(SEGMENT_BYTES));
    assert.equal(formatLsn(result.endLsn), formatLsn(expectedEnd));
    const dir = timelineDirPath(dataDir, result.tenantId, result.timelineId);
    const control = await readControlFile(dir);
    assert.equal(control.flushLsn, expectedEnd);
    assert.equal(control.commitLsn, expectedEnd);
    assert.equal(control.timelineStartLsn, result.startLsn);
    assert.equal(control.segmentBytes, SEGMENT_BYTES);
    assert.equal(control.pgTimelineId, 1);
    const files = await listSegmentFiles(dir, SEGMENT_BYTES);
    assert.equal(files.length, result.segmentCount);
    assert.equal(files.at(-1)?.partial, offsetInSegment(expectedEnd, SEGMENT_BYTES) !== 0);
    assert.equal(files.filter((file) => file.partial).length, files.at(-1)?.partial === true ? 1 : 0);
    await assertImportedBytesMatch(dir, result.startLsn, expectedEnd);
    // The stored timeline validates to the same end (what crash recovery will do).
    const again = await findValidWalEnd({ dir, layout: control, startLsn: control.timelineStartLsn });
    assert.equal(formatLsn(again.endLsn), formatLsn(expectedEnd));
  });

  test('a corrupted byte stops validation at that record', async () => {
    const dir = await walCopy();
    const victim = records.find((entry, index) => index > records.length / 3 && entry.totalBytes >= 64 && offsetInSegment(entry.lsn, SEGMENT_BYTES) % 8192 < 4000);
    assert.ok(victim !== undefined);
    const path = join(dir, nameOf(segmentOf(victim.lsn, SEGMENT_BYTES)));
    const bytes = await readFile(path);
    const offset = offsetInSegment(victim.lsn, SEGMENT_BYTES) + 40;
    bytes[offset] = (bytes[offset] ?? 0) ^ 0xff;
    await writeFile(path, bytes);
    const result = await findValidWalEnd({ dir, layout: { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 }, startLsn: firstSegno * BigInt(SEGMENT_BYTES) });
    assert.equal(formatLsn(result.endLsn), formatLsn(victim.lsn));
    assert.match(result.stopReason, /checksum/);
    const dataDir = await scratchDir('data-corrupt');
    const imported = await importWal({ dataDir, fromDir: dir });
    assert.equal(imported.endLsn, victim.lsn);
  });

  test('a missing middle segment is WALCAST_ERR_WAL_GAP naming it', async () => {
    const dir = await walCopy();
    const missing = firstSegno + 1n;
    await rm(join(dir, nameOf(missing)));
    const dataDir = await scratchDir('data-gap');
    await assert.rejects(importWal({ dataDir, fromDir: dir }), (error) => isWalcastError(error, 'WALCAST_ERR_WAL_GAP') && error.message.includes(nameOf(missing)));
    assert.deepEqual(await readdir(dataDir).then((names) => names.flatMap((name) => name)), await leftoverTenants(dataDir));
  });

  test('recycled segments past the end (old pageaddr) are neither a gap nor imported', async () => {
    const switchRecord = records.find((entry) => entry.isSwitch);
    assert.ok(switchRecord !== undefined, 'the generated WAL has an XLOG_SWITCH');
    const switchSegno = segmentOf(switchRecord.lsn, SEGMENT_BYTES);
    const dir = await scratchDir('recycled');
    for (let segno = firstSegno; segno <= switchSegno; segno++) await copyFile(join(generated.walDir, nameOf(segno)), join(dir, nameOf(segno)));
    // PostgreSQL recycles an old segment by renaming it to a future name; its pages keep their old addresses.
    await copyFile(join(generated.walDir, nameOf(firstSegno)), join(dir, nameOf(switchSegno + 2n)));
    const dataDir = await scratchDir('data-recycled');
    const result = await importWal({ dataDir, fromDir: dir });
    assert.equal(result.endLsn, (switchSegno + 1n) * BigInt(SEGMENT_BYTES), 'the end is the segment end after XLOG_SWITCH');
    const files = await listSegmentFiles(timelineDirPath(dataDir, result.tenantId, result.timelineId), SEGMENT_BYTES);
    assert.deepEqual(files.map((file) => file.name), Array.from({ length: Number(switchSegno - firstSegno) + 1 }, (_, index) => nameOf(firstSegno + BigInt(index))));
  });

  test('a segment of another system is WALCAST_ERR_SYSTEM_ID_MISMATCH', async () => {
    const dir = await walCopy();
    const other = await initdbOnly();
    try {
      const otherName = (await readdir(other.walDir)).find((name) => /^[0-9A-F]{24}$/.test(name));
      assert.ok(otherName !== undefined);
      await copyFile(join(other.walDir, otherName), join(dir, nameOf(firstSegno + 2n)));
    } finally {
      await other.cleanup();
    }
    await assert.rejects(importWal({ dataDir: await scratchDir('data-sysid'), fromDir: dir }), (error) => isWalcastError(error, 'WALCAST_ERR_SYSTEM_ID_MISMATCH'));
  });

  test('a short segment file is WALCAST_ERR_SEGMENT_SIZE; an empty directory is WALCAST_ERR_NOTHING_TO_IMPORT', async () => {
    const dir = await walCopy();
    await truncate(join(dir, nameOf(firstSegno + 1n)), 4096);
    await assert.rejects(importWal({ dataDir: await scratchDir('data-size'), fromDir: dir }), (error) => isWalcastError(error, 'WALCAST_ERR_SEGMENT_SIZE'));
    const empty = await scratchDir('empty');
    await assert.rejects(importWal({ dataDir: await scratchDir('data-empty'), fromDir: empty }), (error) => isWalcastError(error, 'WALCAST_ERR_NOTHING_TO_IMPORT'));
  });

  test('a first segment that is not WAL is WALCAST_ERR_WAL_INVALID', async () => {
    const dir = await walCopy();
    const path = join(dir, nameOf(firstSegno));
    const bytes = await readFile(path);
    bytes.fill(0, 0, 64);
    await writeFile(path, bytes);
    await assert.rejects(importWal({ dataDir: await scratchDir('data-invalid'), fromDir: dir }), (error) => isWalcastError(error, 'WALCAST_ERR_WAL_INVALID'));
  });

  test('import extends an existing timeline from a prefix to the full WAL', async () => {
    const prefixDir = await scratchDir('prefix');
    const prefixSegments = 3n;
    for (let segno = firstSegno; segno < firstSegno + prefixSegments; segno++) await copyFile(join(generated.walDir, nameOf(segno)), join(prefixDir, nameOf(segno)));
    const dataDir = await scratchDir('data-extend');
    const first = await importWal({ dataDir, fromDir: prefixDir });
    assert.ok(first.endLsn < expectedEnd);
    const tenantId = first.tenantId;
    const timelineId = first.timelineId;
    const second = await importWal({ dataDir, fromDir: generated.walDir, tenantId, timelineId });
    assert.equal(second.created, false);
    assert.equal(formatLsn(second.endLsn), formatLsn(expectedEnd));
    assert.equal(second.startLsn, first.startLsn);
    const dir = timelineDirPath(dataDir, tenantId, timelineId);
    assert.equal((await readControlFile(dir)).flushLsn, expectedEnd);
    await assertImportedBytesMatch(dir, first.startLsn, expectedEnd);
    const again = await importWal({ dataDir, fromDir: generated.walDir, tenantId, timelineId });
    assert.equal(again.segmentCount, 0);
    assert.equal(again.endLsn, expectedEnd);
  });

  test('extending from WAL that starts after the timeline end is WALCAST_ERR_WAL_GAP', async () => {
    const dataDir = await scratchDir('data-extend-gap');
    const prefixDir = await scratchDir('prefix2');
    await copyFile(join(generated.walDir, nameOf(firstSegno)), join(prefixDir, nameOf(firstSegno)));
    const first = await importWal({ dataDir, fromDir: prefixDir });
    const laterDir = await scratchDir('later');
    const lastSegno = segmentOf(expectedEnd - 1n, SEGMENT_BYTES);
    await mkdir(laterDir, { recursive: true });
    await copyFile(join(generated.walDir, nameOf(lastSegno)), join(laterDir, nameOf(lastSegno)));
    await assert.rejects(
      importWal({ dataDir, fromDir: laterDir, tenantId: first.tenantId, timelineId: first.timelineId }),
      (error) => isWalcastError(error, 'WALCAST_ERR_WAL_GAP'),
    );
  });
});

/** Entries left in the data directory after a failed import: only (empty) tenant directories, no timelines. */
async function leftoverTenants(dataDir: string): Promise<string[]> {
  const names = await readdir(dataDir);
  for (const name of names) assert.deepEqual(await readdir(join(dataDir, name)), [], 'no timeline or temp directory is left behind');
  return names;
}

/** The timeline's bytes equal the source's up to the end, and are zero after it in the last segment. */
async function assertImportedBytesMatch(dir: string, startLsn: Lsn, endLsn: Lsn): Promise<void> {
  const reader = new WalReader(dir, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1, timelineStartLsn: startLsn });
  try {
    const firstSegment = segmentOf(startLsn, SEGMENT_BYTES);
    const lastSegment = segmentOf(endLsn - 1n, SEGMENT_BYTES);
    for (let segno = firstSegment; segno <= lastSegment; segno++) {
      const source = await readFile(join(generated.walDir, nameOf(segno)));
      const stored = Buffer.alloc(SEGMENT_BYTES);
      assert.equal(await reader.readRange(segno * BigInt(SEGMENT_BYTES), stored), SEGMENT_BYTES);
      const validBytes = segno === lastSegment && offsetInSegment(endLsn, SEGMENT_BYTES) !== 0 ? offsetInSegment(endLsn, SEGMENT_BYTES) : SEGMENT_BYTES;
      assert.ok(stored.subarray(0, validBytes).equals(source.subarray(0, validBytes)), `segment ${nameOf(segno)} matches`);
      assert.ok(stored.subarray(validBytes).every((byte) => byte === 0), 'bytes past the end are zero');
    }
    const size = (await stat(join(dir, nameOf(lastSegment) + (offsetInSegment(endLsn, SEGMENT_BYTES) === 0 ? '' : '.partial')))).size;
    assert.equal(size, SEGMENT_BYTES);
  } finally {
    await reader.close();
  }
}
