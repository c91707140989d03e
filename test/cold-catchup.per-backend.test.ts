/**
 * Cold catch-up streams byte-exact WAL, for the I/O backend named by WALCAST_IO (the runner repeats this file per
 * backend and native strategy).
 *
 * WAL from a real PostgreSQL 15 (1 MiB segments) is imported into walcast, the served segment files are written
 * back and dropped from page cache (posix_fadvise DONTNEED through the addon, residency checked with mincore), and
 * replicas stream the range from disk: through the sender's prefetcher, which brings each window piece into page
 * cache off the event loop and verifies it ahead of the sender (replication/send-wal.ts Prefetcher). Every byte
 * must equal PostgreSQL's own segment files, and no page may be taken for damaged.
 */
import assert from 'node:assert/strict';
import { closeSync, fdatasyncSync, openSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadNativeAddon } from '../src/io/native-binding.js';
import { formatLsn, type Lsn } from '../src/lsn.js';
import { isSegmentFileName, segmentFileName } from '../src/storage/segment-name.js';
import { importWal } from '../src/storage/wal-import.js';
import { connectReplication } from '../src/wire/client.js';
import { generateWal, type GeneratedWal } from './fixtures/storage/postgres-wal.js';
import { makeTempDir } from './support/postgres.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';

const SEGMENT_BYTES = 1024 * 1024;
const TEST_TIMEOUT_MS = 240_000;
/** XLogData: 'w', dataStart (8), walEnd (8), sendTime (8), then WAL. */
const XLOG_DATA_HEADER_BYTES = 25;

const addon = loadNativeAddon();
const skip = addon.ok ? false : `dropping files from page cache needs the native addon: ${addon.ok ? '' : addon.reason}`;

let wal: GeneratedWal;
let timelineDir = '';
let walcast: RunningWalcast;
let startLsn: Lsn;
let endLsn: Lsn;

before(async () => {
  if (skip !== false) return;
  wal = await generateWal(['CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 90000) g', 'CHECKPOINT']);
  const dataDir = await makeTempDir('walcast-cold');
  const imported = await importWal({ dataDir, fromDir: wal.walDir });
  startLsn = imported.startLsn;
  endLsn = imported.endLsn;
  assert.ok(endLsn - startLsn > 6n * BigInt(SEGMENT_BYTES), 'the range spans more segments than a prefetch window');
  timelineDir = join(dataDir, imported.tenantId, imported.timelineId);
  walcast = await startWalcast({ dataDir });
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  await walcast?.stop();
  await wal?.cleanup();
});

describe('cold catch-up', { timeout: TEST_TIMEOUT_MS, skip }, () => {
  test('replicas streaming from files dropped from page cache get exactly PostgreSQL\'s bytes, and no page is refused', async () => {
    assert.equal(evictSegments(), 0, 'the served files start cold');
    // Two replicas at once, one from the start and one from the middle of a segment further on.
    const middle = (startLsn / BigInt(SEGMENT_BYTES) + 3n) * BigInt(SEGMENT_BYTES) + 12_345n;
    const [whole, later] = await Promise.all([streamRange(startLsn, endLsn), streamRange(middle, endLsn)]);
    assert.equal(whole.length, Number(endLsn - startLsn));
    assertEqualsSource(whole, startLsn, 'from the start');
    assertEqualsSource(later, middle, `from ${formatLsn(middle)}`);
    const timeline = walcast.server.timelines.list()[0];
    assert.ok(timeline !== undefined);
    assert.equal(timeline.pages.corruptionsDetected, 0, 'verifying cold pages ahead finds nothing wrong with good WAL');
    assert.equal(timeline.pages.quarantinedPages, 0);
  });
});

/** Writes back and drops every served segment file from page cache; returns the bytes still cached afterwards. */
function evictSegments(): number {
  assert.ok(addon.ok);
  let cached = 0;
  for (const name of readdirSync(timelineDir).filter(isSegmentFileName)) {
    const fd = openSync(join(timelineDir, name), 'r');
    try {
      fdatasyncSync(fd);
      addon.addon.dropCache(fd, 0, 0);
      cached += addon.addon.residentBytes(fd, 0, SEGMENT_BYTES);
    } finally {
      closeSync(fd);
    }
  }
  return cached;
}

/** Streams [from, until) with the raw replication client; XLogData must be contiguous. */
async function streamRange(from: Lsn, until: Lsn): Promise<Buffer> {
  const client = await connectReplication({ host: '127.0.0.1', port: walcast.port, user: 'repl', timeoutMs: 10_000 });
  const pieces: Buffer[] = [];
  let position = from;
  try {
    const stream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(from)}`);
    for await (const payload of stream) {
      if (payload[0] !== 0x77) continue;
      assert.equal(formatLsn(payload.readBigUInt64BE(1)), formatLsn(position), 'contiguous XLogData');
      const data = payload.subarray(XLOG_DATA_HEADER_BYTES);
      pieces.push(Buffer.from(data));
      position += BigInt(data.length);
      if (position >= until) break;
    }
    assert.equal(formatLsn(position), formatLsn(until), 'the stream reached the end of the range');
    await stream.sendCopyDone();
    return Buffer.concat(pieces);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Received WAL equals PostgreSQL's own segment files, byte for byte. */
function assertEqualsSource(bytes: Buffer, from: Lsn, what: string): void {
  let done = 0;
  while (done < bytes.length) {
    const lsn = from + BigInt(done);
    const segno = lsn / BigInt(SEGMENT_BYTES);
    const offset = Number(lsn % BigInt(SEGMENT_BYTES));
    const take = Math.min(bytes.length - done, SEGMENT_BYTES - offset);
    const source = readFileSync(join(wal.walDir, segmentFileName(1, segno, SEGMENT_BYTES))).subarray(offset, offset + take);
    assert.ok(bytes.subarray(done, done + take).equals(source), `${what}: bytes of segment ${segno} from ${offset} equal the source`);
    done += take;
  }
}
