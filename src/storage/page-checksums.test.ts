/**
 * Page-checksum sidecars: naming, the entries the WAL writer records as pages fill (checked against the stored
 * bytes), the partial last page (in memory while writing, recorded on close, cut off when writing resumes), and
 * whole sidecars built from a stored segment.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { WAL_PAGE_BYTES } from '../lsn.js';
import { crc32c } from './crc32c.js';
import { SIDECAR_ENTRY_BYTES, decodeEntries, readSidecar, sidecarNameFor, writeSidecarFromSegment } from './page-checksums.js';
import { WalWriter } from './wal-writer.js';

const SEGMENT_BYTES = 1024 * 1024;
const PAGES_PER_SEGMENT = SEGMENT_BYTES / WAL_PAGE_BYTES;
let dir = '';

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'walcast-sidecar-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** The checksums of every page of a stored file, computed independently of the writer. */
function pageCrcsOf(path: string, pages: number): number[] {
  const file = readFileSync(path);
  return Array.from({ length: pages }, (_, page) => crc32c(file, page * WAL_PAGE_BYTES, (page + 1) * WAL_PAGE_BYTES));
}

function sidecarEntries(name: string): number[] {
  return [...decodeEntries(readFileSync(join(dir, name)))];
}

test('the sidecar is named after the segment without .partial', () => {
  assert.equal(sidecarNameFor('000000010000000000000003.partial'), '000000010000000000000003.crc');
  assert.equal(sidecarNameFor('000000010000000000000003'), '000000010000000000000003.crc');
});

test('the writer records every full page it wrote, across segments and odd write sizes, and keeps the tail in memory', async () => {
  const writer = new WalWriter({ dir, pgTimelineId: 1, segmentBytes: SEGMENT_BYTES, startLsn: 0n });
  const data = randomBytes(SEGMENT_BYTES + 5 * WAL_PAGE_BYTES + 1234);
  let position = 0;
  const sizes = [1, 8191, 8192, 100, 70_000, 12_345];
  for (let index = 0; position < data.length; index++) {
    const size = Math.min(sizes[index % sizes.length]!, data.length - position);
    writer.write(BigInt(position), data.subarray(position, position + size));
    position += size;
  }
  await writer.flush();
  assert.deepEqual(sidecarEntries('000000010000000000000000.crc'), pageCrcsOf(join(dir, '000000010000000000000000'), PAGES_PER_SEGMENT));
  assert.deepEqual(sidecarEntries('000000010000000000000001.crc'), pageCrcsOf(join(dir, '000000010000000000000001.partial'), 5), 'the partial page has no entry yet');
  const tailLsn = BigInt(SEGMENT_BYTES + 5 * WAL_PAGE_BYTES);
  const tailStart = SEGMENT_BYTES + 5 * WAL_PAGE_BYTES;
  assert.equal(writer.tailPagePrefixCrc(tailLsn, 1234), crc32c(data, tailStart, tailStart + 1234));
  assert.equal(writer.tailPagePrefixCrc(tailLsn, 100), crc32c(data, tailStart, tailStart + 100));
  assert.equal(writer.tailPagePrefixCrc(tailLsn, 1235), undefined, 'not written yet');
  assert.equal(writer.tailPagePrefixCrc(tailLsn - BigInt(WAL_PAGE_BYTES), 10), undefined, 'a full page is the sidecar\'s');
  await writer.close();
  assert.deepEqual(sidecarEntries('000000010000000000000001.crc'), pageCrcsOf(join(dir, '000000010000000000000001.partial'), 6), 'close records the partial page with its zeros');
});

test('the prefix checksum of the page being filled is right after every write, small or across pages (kept as bytes arrive)', async () => {
  const writer = new WalWriter({ dir, pgTimelineId: 1, segmentBytes: SEGMENT_BYTES, startLsn: 0n });
  const data = randomBytes(4 * WAL_PAGE_BYTES);
  const sizes = [150, 1, 3000, 8192, 5000, 200, 12_000];
  let position = 0;
  for (let index = 0; position < data.length; index++) {
    const size = Math.min(sizes[index % sizes.length]!, data.length - position);
    writer.write(BigInt(position), data.subarray(position, position + size));
    position += size;
    const fill = position % WAL_PAGE_BYTES;
    const pageStart = position - fill;
    if (fill > 0) {
      assert.equal(writer.tailPagePrefixCrc(BigInt(pageStart), fill), crc32c(data, pageStart, position), `whole prefix after ${position} bytes`);
      assert.equal(writer.tailPagePrefixCrc(BigInt(pageStart), 1), crc32c(data, pageStart, pageStart + 1), `shorter prefix after ${position} bytes`);
    }
  }
  await writer.close();
  assert.deepEqual(sidecarEntries('000000010000000000000000.crc'), pageCrcsOf(join(dir, '000000010000000000000000.partial'), 4));
});

test('a writer resuming inside a recorded page cuts its entry off and rebuilds it when the page fills', async () => {
  const first = new WalWriter({ dir, pgTimelineId: 1, segmentBytes: SEGMENT_BYTES, startLsn: 0n });
  const data = randomBytes(3 * WAL_PAGE_BYTES);
  first.write(0n, data.subarray(0, WAL_PAGE_BYTES + 500));
  await first.close();
  assert.equal(statSync(join(dir, '000000010000000000000000.crc')).size, 2 * SIDECAR_ENTRY_BYTES);
  const second = new WalWriter({ dir, pgTimelineId: 1, segmentBytes: SEGMENT_BYTES, startLsn: BigInt(WAL_PAGE_BYTES + 500) });
  second.write(BigInt(WAL_PAGE_BYTES + 500), data.subarray(WAL_PAGE_BYTES + 500, WAL_PAGE_BYTES + 600));
  assert.equal(statSync(join(dir, '000000010000000000000000.crc')).size, SIDECAR_ENTRY_BYTES, 'the partial page\'s entry is gone');
  assert.equal(second.tailPagePrefixCrc(BigInt(WAL_PAGE_BYTES), 600), crc32c(data, WAL_PAGE_BYTES, WAL_PAGE_BYTES + 600), 'the stored prefix was loaded');
  second.write(BigInt(WAL_PAGE_BYTES + 600), data.subarray(WAL_PAGE_BYTES + 600));
  await second.close();
  assert.deepEqual(sidecarEntries('000000010000000000000000.crc'), pageCrcsOf(join(dir, '000000010000000000000000.partial'), 3));
});

test('a sidecar built from a stored segment matches its pages; reading skips entries and tolerates absence', async () => {
  const writer = new WalWriter({ dir, pgTimelineId: 1, segmentBytes: SEGMENT_BYTES, startLsn: 0n });
  writer.write(0n, randomBytes(4 * WAL_PAGE_BYTES));
  await writer.close();
  const segment = join(dir, '000000010000000000000000.partial');
  const rebuilt = join(dir, 'rebuilt.crc');
  writeSidecarFromSegment(segment, rebuilt, 6);
  const expected = pageCrcsOf(segment, 6);
  assert.deepEqual([...(await readSidecar(rebuilt, 0))], expected);
  assert.deepEqual([...(await readSidecar(rebuilt, 4))], expected.slice(4));
  assert.equal(expected[5], crc32c(Buffer.alloc(WAL_PAGE_BYTES)), 'pages past the end are zeros');
  assert.equal((await readSidecar(join(dir, 'absent.crc'), 0)).length, 0);
  assert.equal(existsSync(`${rebuilt}.tmp`), false, 'no temp file is left');
});
