/**
 * Corrupted stored WAL is never served, for the I/O backend named by WALCAST_IO (the runner repeats this file per
 * backend and native strategy).
 *
 * WAL from a real PostgreSQL 15 (1 MiB segments) is imported into walcast, then damaged on disk the way a bad
 * disk would: one flipped byte inside a record, one damaged page-header byte, one zeroed 8 KiB page, each in its
 * own segment, written into the files after import (so the sidecars hold the good pages' checksums). Each replica
 * that reaches a damaged page must get XX001 naming the segment file and byte offset, exactly at the start of the
 * damaged page, having received only bytes equal to PostgreSQL's own; a replica on an undamaged range streams to
 * the end meanwhile; a repaired segment is served again.
 */
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, readSync, renameSync, writeFileSync, writeSync } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WAL_PAGE_BYTES, formatLsn, type Lsn } from '../src/lsn.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import { importWal } from '../src/storage/wal-import.js';
import { ServerError, connectReplication } from '../src/wire/client.js';
import { generateWal, type GeneratedWal } from './fixtures/storage/postgres-wal.js';
import { makeTempDir, runReceiveWal } from './support/postgres.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';

const SEGMENT_BYTES = 1024 * 1024;
const TEST_TIMEOUT_MS = 240_000;
/** XLogData: 'w', dataStart (8), walEnd (8), sendTime (8), then WAL. */
const XLOG_DATA_HEADER_BYTES = 25;
/** Offset of xlp_info in a page header (PostgreSQL xlog_internal.h XLogPageHeaderData). */
const PAGE_INFO_OFFSET = 2;

interface Damage {
  readonly kind: string;
  readonly segno: bigint;
  /** Byte offset of the damaged page in its segment. */
  readonly pageOffset: number;
  readonly apply: (page: Buffer) => void;
}

let wal: GeneratedWal;
let dataDir = '';
let timelineDir = '';
let walcast: RunningWalcast;
let startLsn: Lsn;
let endLsn: Lsn;
let damages: Damage[] = [];

before(async () => {
  wal = await generateWal([
    'CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 60000) g',
    'CHECKPOINT',
  ]);
  dataDir = await makeTempDir('walcast-integrity');
  const imported = await importWal({ dataDir, fromDir: wal.walDir });
  startLsn = imported.startLsn;
  endLsn = imported.endLsn;
  const firstSegno = startLsn / BigInt(SEGMENT_BYTES);
  assert.ok(endLsn - startLsn > 5n * BigInt(SEGMENT_BYTES), 'the WAL spans the segments the damage needs');
  timelineDir = join(dataDir, imported.tenantId, imported.timelineId);
  damages = [
    { kind: 'flipped byte inside a record', segno: firstSegno + 1n, pageOffset: 37 * WAL_PAGE_BYTES, apply: flipRecordByte },
    { kind: 'damaged page-header byte', segno: firstSegno + 2n, pageOffset: 64 * WAL_PAGE_BYTES, apply: (page) => (page[PAGE_INFO_OFFSET]! ^= 0x40) },
    { kind: 'zeroed page', segno: firstSegno + 3n, pageOffset: 5 * WAL_PAGE_BYTES, apply: (page) => page.fill(0) },
  ];
  for (const damage of damages) damagePage(damage);
  walcast = await startWalcast({ dataDir });
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  await walcast?.stop();
  await wal?.cleanup();
});

describe('corrupted stored WAL is refused, never sent', { timeout: TEST_TIMEOUT_MS }, () => {
  test('each damage ends the stream with XX001 at the damaged page, after only correct bytes', async () => {
    for (const damage of damages) {
      const from = segmentStart(damage.segno);
      const received = await streamFrom(from);
      const damagedLsn = from + BigInt(damage.pageOffset);
      assert.ok(received.error instanceof ServerError, `${damage.kind}: the stream ends with an error`);
      assert.equal(received.error.sqlState, 'XX001', `${damage.kind}: SQLSTATE`);
      assert.match(received.error.message, new RegExp(`byte offset ${damage.pageOffset} of \\S*${segmentName(damage.segno)}`), `${damage.kind}: names file and offset`);
      assert.equal(formatLsn(received.endLsn), formatLsn(damagedLsn), `${damage.kind}: everything before the damaged page, nothing of it`);
      assertEqualsSource(received.bytes, from, damage.kind);
    }
    const timeline = walcast.server.timelines.list()[0];
    assert.ok(timeline !== undefined);
    assert.equal(timeline.pages.corruptionsDetected, damages.length, 'each damaged page is counted once');
    assert.equal(timeline.pages.quarantinedPages, damages.length);
  });

  test('pg_receivewal gets the error and has archived only correct bytes; a replica past the damage streams meanwhile', async () => {
    const damage = damages[0]!;
    const target = await makeTempDir('receivewal-integrity');
    await writeFile(join(target, `${segmentName(startLsn / BigInt(SEGMENT_BYTES))}.partial`), '');
    const clean = streamFrom(segmentStart(damages[2]!.segno + 1n));
    const result = await runReceiveWal({ port: walcast.port, dir: target, endpos: formatLsn(endLsn - 1n) });
    assert.notEqual(result.code, 0, 'pg_receivewal fails');
    assert.match(result.stderr, /stored WAL is corrupted/);
    const partial = readFileSync(join(target, `${segmentName(damage.segno)}.partial`));
    const source = readFileSync(join(wal.walDir, segmentName(damage.segno)));
    assert.ok(partial.subarray(0, damage.pageOffset).equals(source.subarray(0, damage.pageOffset)), 'archived bytes equal the source');
    assert.ok(partial.subarray(damage.pageOffset).equals(Buffer.alloc(partial.length - damage.pageOffset)), 'nothing of the damaged page was archived');
    for (const name of (await readdir(target)).filter((entry) => /^[0-9A-F]{24}$/.test(entry))) {
      assert.ok(readFileSync(join(target, name)).equals(readFileSync(join(wal.walDir, name))), `${name} equals the source`);
    }
    const streamed = await clean;
    assert.equal(streamed.error, undefined, 'the replica on undamaged WAL is not disturbed');
    assert.equal(formatLsn(streamed.endLsn), formatLsn(endLsn));
    assertEqualsSource(streamed.bytes, segmentStart(damages[2]!.segno + 1n), 'undamaged range');
  });

  test('a quarantined page is refused to every replica until the segment is repaired, then served', async () => {
    const damage = damages[1]!;
    const from = segmentStart(damage.segno);
    const again = await streamFrom(from);
    assert.equal(again.error?.sqlState, 'XX001', 'still refused');
    const timeline = walcast.server.timelines.list()[0];
    assert.ok(timeline !== undefined);
    assert.equal(timeline.pages.corruptionsDetected, damages.length, 'a refusal of a known page is not a new detection');
    // The operator restores the segment from a good copy (a new file renamed over the damaged one).
    const path = join(timelineDir, segmentName(damage.segno));
    writeFileSync(`${path}.restore`, readFileSync(join(wal.walDir, segmentName(damage.segno))));
    renameSync(`${path}.restore`, path);
    const repaired = await streamFrom(from, segmentStart(damage.segno + 1n));
    assert.equal(repaired.error, undefined, 'served after repair');
    assert.equal(formatLsn(repaired.endLsn), formatLsn(segmentStart(damage.segno + 1n)));
    assertEqualsSource(repaired.bytes, from, 'repaired segment');
    assert.equal(timeline.pages.quarantinedPages, damages.length - 1);
  });
});

interface Received {
  readonly bytes: Buffer;
  readonly endLsn: Lsn;
  readonly error: ServerError | undefined;
}

/** Streams from `from` with the raw replication client until an error, the end of the WAL, or `until`. */
async function streamFrom(from: Lsn, until: Lsn = endLsn): Promise<Received> {
  const client = await connectReplication({ host: '127.0.0.1', port: walcast.port, user: 'repl', timeoutMs: 10_000 });
  const pieces: Buffer[] = [];
  let position = from;
  try {
    const stream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(from)}`);
    for await (const payload of stream) {
      if (payload[0] !== 0x77) continue;
      const dataStart = payload.readBigUInt64BE(1);
      assert.equal(formatLsn(dataStart), formatLsn(position), 'contiguous XLogData');
      const data = payload.subarray(XLOG_DATA_HEADER_BYTES);
      pieces.push(Buffer.from(data));
      position += BigInt(data.length);
      if (position >= until) break;
    }
    if (position >= until) {
      await stream.sendCopyDone();
      return { bytes: Buffer.concat(pieces), endLsn: position, error: undefined };
    }
    const end = await stream.ended;
    return { bytes: Buffer.concat(pieces), endLsn: position, error: end.how === 'error' || end.how === 'closed' ? asServerError(end.error) : undefined };
  } catch (error) {
    if (error instanceof ServerError) return { bytes: Buffer.concat(pieces), endLsn: position, error };
    throw error;
  } finally {
    await client.end().catch(() => undefined);
  }
}

function asServerError(error: unknown): ServerError | undefined {
  return error instanceof ServerError ? error : undefined;
}

/** Received WAL equals PostgreSQL's own segment files, byte for byte. */
function assertEqualsSource(bytes: Buffer, from: Lsn, what: string): void {
  let done = 0;
  while (done < bytes.length) {
    const lsn = from + BigInt(done);
    const segno = lsn / BigInt(SEGMENT_BYTES);
    const offset = Number(lsn % BigInt(SEGMENT_BYTES));
    const take = Math.min(bytes.length - done, SEGMENT_BYTES - offset);
    const source = readFileSync(join(wal.walDir, segmentName(segno))).subarray(offset, offset + take);
    assert.ok(bytes.subarray(done, done + take).equals(source), `${what}: bytes of ${segmentName(segno)} from ${offset} equal the source`);
    done += take;
  }
}

function damagePage(damage: Damage): void {
  const path = join(timelineDir, segmentName(damage.segno));
  const fd = openSync(path, 'r+');
  try {
    const page = Buffer.alloc(WAL_PAGE_BYTES);
    readSync(fd, page, 0, WAL_PAGE_BYTES, damage.pageOffset);
    const before = Buffer.from(page);
    damage.apply(page);
    assert.ok(!page.equals(before), `${damage.kind} changes the page`);
    writeSync(fd, page, 0, WAL_PAGE_BYTES, damage.pageOffset);
  } finally {
    closeSync(fd);
  }
}

/** Flips a bit of a byte well inside the page's records (the first non-zero byte from the middle: not padding). */
function flipRecordByte(page: Buffer): void {
  let offset = WAL_PAGE_BYTES / 2;
  while (page[offset] === 0) offset++;
  page[offset]! ^= 0x01;
}

function segmentStart(segno: bigint): Lsn {
  return segno * BigInt(SEGMENT_BYTES);
}

function segmentName(segno: bigint): string {
  return segmentFileName(1, segno, SEGMENT_BYTES);
}
