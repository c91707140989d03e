/**
 * Offload across a PostgreSQL timeline switch, against a real S3 API server (s3rver): a real Timeline opened from
 * its control file, offload started by startOffload while it is on TLI 1, then a promotion stored as ingest stores
 * it (storeTimelineSwitch, the control file's commit, Timeline.switchPgTimeline) while the uploader runs, and WAL
 * written on TLI 2 past the switch point. 1 MiB segments of random bytes (the uploader and the cache do not read WAL
 * structure; the switch copies the old TLI's bytes before the switch point, as PostgreSQL does).
 * - every complete segment is in the bucket under the name its history gives it (TLI 1 before the switch segment,
 *   TLI 2 from it on), byte-identical; the history file is in the bucket byte-identical, put before the first TLI-2
 *   segment; no upload fails; the backup LSN passes the switch point; the metadata object names TLI 2;
 * - reading back from the bucket (segment cache + WAL reader, nothing local) returns the whole stream
 *   byte-identical across the switch;
 * - restore brings back the history file and the last segment under the right names, and the restored directory
 *   passes the start-up check; with a backup LSN still before the switch, restore stops at TLI 1;
 * - a store that refuses the history file holds back the new TLI's segments (and the backup LSN) until it takes it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { storeTimelineSwitch } from '../src/ingest/timeline-switch.js';
import { createLogger, silentLogger } from '../src/log.js';
import { WAL_PAGE_BYTES, formatLsn, type Lsn } from '../src/lsn.js';
import { ObjectNotFoundError, type ObjectStore } from '../src/remote/object-store.js';
import { startOffload, type OffloadHandle } from '../src/remote/offload-manager.js';
import { parseRemoteStorageUrl } from '../src/remote/remote-config.js';
import { REMOTE_METADATA_FORMAT_VERSION, decodeRemoteMetadata, encodeRemoteMetadata, historyKey, metadataKey, segmentKey, timelinePrefix } from '../src/remote/remote-layout.js';
import { restoreTimeline } from '../src/remote/restore-timeline.js';
import { S3ObjectStore } from '../src/remote/s3-object-store.js';
import { SegmentUploader } from '../src/remote/segment-uploader.js';
import { CONTROL_FORMAT_VERSION, readControlFile, writeControlFile } from '../src/storage/control-file.js';
import { segmentFileName, segmentStartLsn } from '../src/storage/segment-name.js';
import { checkTimelineFiles } from '../src/storage/timeline-check.js';
import { parseTimelineHistory } from '../src/storage/timeline-history.js';
import { WalReader } from '../src/storage/wal-reader.js';
import { WalWriter } from '../src/storage/wal-writer.js';
import { openTimeline } from '../src/timeline/open-timelines.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { TEST_BUCKET, startTestS3, type TestS3 } from './support/s3.js';
import { waitFor } from './support/wait-for.js';

const SEG = 1024 * 1024;
const seg = (segno: number, offset = 0): Lsn => segmentStartLsn(BigInt(segno), SEG) + BigInt(offset);
const START = seg(2);
/** Inside segment 5, mid-page: TLI 2's segment 5 starts with TLI 1's bytes up to here. */
const SWITCH_LSN = seg(5, 2 * WAL_PAGE_BYTES + 100);
/** The end of the WAL written on TLI 2: inside segment 9, so segments 2..8 are complete. */
const END = seg(9, 500);
const HISTORY = `1\t${formatLsn(SWITCH_LSN)}\tno recovery target specified\n`;
const KEYS = { tenantId: 'a'.repeat(32), timelineId: 'b'.repeat(32) };
const WAIT_MS = 60_000;
const log = process.env.DEBUG_UPLOADER ? createLogger({ level: 'info', pretty: false }) : silentLogger();

let s3: TestS3;
let root: string;
let dir: string;
let store: S3ObjectStore;
let timeline: Timeline;
let offload: OffloadHandle;
/** The timeline's WAL from START to END as a replica on TLI 2 receives it. */
let stream: Buffer;
/** Keys of the puts the uploader made, in the order they completed. */
const puts: string[] = [];

const expectedSegment = (segno: number): Buffer => stream.subarray(Number(seg(segno) - START), Number(seg(segno + 1) - START));
const relative = (key: string): string => key.slice(key.indexOf(timelinePrefix(KEYS)) + timelinePrefix(KEYS).length);

function newStore(): S3ObjectStore {
  return new S3ObjectStore(parseRemoteStorageUrl(`s3://${TEST_BUCKET}/switch`, { endpoint: s3.endpoint }));
}

/** A store that records which objects it put. */
function recordingStore(): S3ObjectStore {
  const recording = newStore();
  const putFile = recording.putFile.bind(recording);
  const putBytes = recording.putBytes.bind(recording);
  recording.putFile = async (key, ...rest) => {
    await putFile(key, ...rest);
    puts.push(relative(key));
  };
  recording.putBytes = async (key, ...rest) => {
    await putBytes(key, ...rest);
    puts.push(relative(key));
  };
  return recording;
}

async function until(condition: () => boolean, what: string): Promise<void> {
  await waitFor(async () => (condition() ? true : undefined), WAIT_MS, { what, pollMs: 20 });
}

/** The whole object in one GET (no HEAD whose size a rewrite by the running uploader could change), or undefined. */
async function getObject(objectStore: ObjectStore, relativeKey: string): Promise<Buffer | undefined> {
  try {
    return await objectStore.getObject(objectStore.key(relativeKey), SEG);
  } catch (error) {
    if (error instanceof ObjectNotFoundError) return undefined;
    throw error;
  }
}

function backupLsn(): Lsn {
  const status = offload.status(KEYS.tenantId, KEYS.timelineId);
  assert.ok(status !== undefined);
  return status.backupLsn;
}

before(async () => {
  s3 = await startTestS3();
  root = await mkdtemp(join(tmpdir(), 'walcast-remote-switch-'));
  dir = join(root, 'data', KEYS.tenantId, KEYS.timelineId);
  await mkdir(dir, { recursive: true });
  stream = randomBytes(Number(END - START));
  // TLI 1 from START up to the switch point, as ingest leaves it before the promotion.
  const writer = new WalWriter({ dir, pgTimelineId: 1, segmentBytes: SEG, startLsn: START });
  writer.write(START, stream.subarray(0, Number(SWITCH_LSN - START)));
  await writer.close();
  await writeControlFile(dir, {
    formatVersion: CONTROL_FORMAT_VERSION,
    ...KEYS,
    systemId: 7n,
    pgVersion: 150000,
    segmentBytes: SEG,
    pgTimelineId: 1,
    timelineStartLsn: START,
    flushLsn: SWITCH_LSN,
    commitLsn: SWITCH_LSN,
    createdAt: new Date().toISOString(),
  });
  timeline = await openTimeline(dir);
  store = newStore();
  offload = await startOffload({ timelines: [timeline], store: recordingStore(), cacheRoot: join(root, 'cache'), log });
});

after(async () => {
  await offload?.stop();
  store?.close();
  await s3?.dispose();
  await rm(root, { recursive: true, force: true });
});

test('before the switch: the complete TLI-1 segments are uploaded under TLI-1 names', async () => {
  offload.uploader(KEYS.tenantId, KEYS.timelineId)?.poke();
  await until(() => backupLsn() === seg(5), 'backup LSN at the start of the segment holding the flush LSN');
  for (const segno of [2, 3, 4]) {
    const stored = await getObject(store, segmentKey(KEYS, 1, BigInt(segno), SEG));
    assert.ok(stored?.equals(expectedSegment(segno)), `TLI-1 segment ${segno} byte-identical in the bucket`);
  }
  assert.equal(decodeRemoteMetadata((await getObject(store, metadataKey(KEYS))) ?? Buffer.alloc(0), 'test').pgTimelineId, 1);
});

test('a promotion while the uploader runs: TLI-2 segments uploaded under TLI-2 names after the history file; the backup LSN passes the switch', async () => {
  // Ingest's steps for a switch (src/ingest/follower.ts): store it, commit it in the control file, publish it.
  const writer = await storeTimelineSwitch({
    dir,
    segmentBytes: SEG,
    pgTimelineId: 1,
    writtenLsn: SWITCH_LSN,
    switchLsn: SWITCH_LSN,
    nextPgTimelineId: 2,
    historyContent: HISTORY,
    commitSwitch: () => timeline.controlFile.update((state) => ({ ...state, pgTimelineId: 2 })),
    log,
  });
  timeline.switchPgTimeline(parseTimelineHistory(HISTORY, 2));
  writer.write(SWITCH_LSN, stream.subarray(Number(SWITCH_LSN - START)));
  await writer.close();
  await timeline.controlFile.update((state) => ({ ...state, flushLsn: END, commitLsn: END }));
  timeline.publish({ flushLsn: END, commitLsn: END });
  offload.uploader(KEYS.tenantId, KEYS.timelineId)?.poke();

  await until(() => backupLsn() === seg(9), 'backup LSN past the switch point, at the segment being filled');
  const status = offload.status(KEYS.tenantId, KEYS.timelineId);
  assert.equal(status?.uploadErrors, 0, 'no upload failed (none looked for a file under the old TLI)');
  assert.equal(status?.segmentsUploaded, 7);
  assert.equal((await readControlFile(dir)).backupLsn, seg(9), 'the backup LSN is persisted');

  for (const segno of [2, 3, 4]) {
    const stored = await getObject(store, segmentKey(KEYS, 1, BigInt(segno), SEG));
    assert.ok(stored?.equals(expectedSegment(segno)), `TLI-1 segment ${segno} byte-identical`);
    assert.equal(await getObject(store, segmentKey(KEYS, 2, BigInt(segno), SEG)), undefined, `no TLI-2 object for segment ${segno}`);
  }
  for (const segno of [5, 6, 7, 8]) {
    const stored = await getObject(store, segmentKey(KEYS, 2, BigInt(segno), SEG));
    assert.ok(stored?.equals(expectedSegment(segno)), `TLI-2 segment ${segno} byte-identical (the switch segment holds TLI 1's bytes before the switch point)`);
    assert.equal(await getObject(store, segmentKey(KEYS, 1, BigInt(segno), SEG)), undefined, `no TLI-1 object for segment ${segno}`);
  }
  assert.equal(await getObject(store, segmentKey(KEYS, 2, 9n, SEG)), undefined, 'the segment being filled is not uploaded');

  const history = await getObject(store, historyKey(KEYS, 2));
  assert.ok(history?.equals(await readFile(join(dir, '00000002.history'))), 'the history file is in the bucket byte-identical');
  const historyAt = puts.indexOf('00000002.history');
  const firstTli2 = puts.findIndex((key) => key.startsWith('00000002') && key !== '00000002.history');
  assert.ok(historyAt >= 0 && firstTli2 > historyAt, `the history file went up before the first TLI-2 segment (puts: ${puts.join(', ')})`);

  const metadata = decodeRemoteMetadata((await getObject(store, metadataKey(KEYS))) ?? Buffer.alloc(0), 'test');
  assert.equal(metadata.pgTimelineId, 2, 'the metadata names the current TLI');
  assert.equal(metadata.backupLsn, seg(9));
  const names = (await store.list(store.key(timelinePrefix(KEYS)))).map((info) => relative(info.key)).sort();
  const segments = [...[2n, 3n, 4n].map((segno) => segmentFileName(1, segno, SEG)), ...[5n, 6n, 7n, 8n].map((segno) => segmentFileName(2, segno, SEG))];
  // Each segment's page-checksum sidecar goes with it (NAME.crc): a restore_command fetching by name ignores them.
  const expected = [...segments, ...segments.map((name) => `${name}.crc`), '00000002.history', 'walcast.timeline.json'];
  assert.deepEqual(names, expected.sort(), 'the prefix is a WAL archive as pg_wal after the promotion (plus the metadata and sidecars)');
});

test('read back from the bucket alone: old-TLI, switch and new-TLI segments byte-identical through the segment cache', async () => {
  const cache = offload.cache(KEYS.tenantId, KEYS.timelineId);
  assert.ok(cache !== undefined);
  const empty = await mkdtemp(join(root, 'empty-'));
  // Nothing local (every pin refused, as after retention): each segment comes from the object the history names.
  const reader = new WalReader(empty, timeline, { pinSegment: () => undefined }, cache);
  try {
    const copy = Buffer.alloc(Number(seg(9) - START));
    assert.equal(await reader.readRange(START, copy), copy.length);
    assert.ok(copy.equals(stream.subarray(0, copy.length)), 'the stream across the switch is byte-identical');
  } finally {
    await reader.close();
  }
  assert.equal(cache.stats.segmentsFetched, 7);
  assert.equal(cache.stats.fetchErrors, 0);
});

test('restore brings back the history file and the last segment under TLI 2; the restored directory passes the start-up check', async () => {
  const dataDir = join(root, 'restored');
  const result = await restoreTimeline({ dataDir, store, keys: KEYS });
  assert.equal(result.pgTimelineId, 2);
  assert.deepEqual(result.historyFiles, ['00000002.history']);
  const restored = join(dataDir, KEYS.tenantId, KEYS.timelineId);
  assert.ok((await readFile(join(restored, '00000002.history'))).equals(await readFile(join(dir, '00000002.history'))));
  assert.ok((await readFile(join(restored, segmentFileName(2, 8n, SEG)))).equals(expectedSegment(8)));
  const control = await readControlFile(restored);
  assert.equal(control.pgTimelineId, 2);
  assert.equal(control.timelineStartLsn, seg(8));
  assert.equal(control.flushLsn, seg(9));
  const reopened = await openTimeline(restored);
  assert.deepEqual(reopened.history, parseTimelineHistory(HISTORY, 2), 'the restored timeline has the history');
  const problems = await checkTimelineFiles(restored, { ...control, history: reopened.history });
  assert.deepEqual(problems.filter((problem) => problem.severity === 'error'), []);
});

test('restore with a backup LSN still before the switch (metadata on TLI 2): the restored WAL ends on TLI 1', async () => {
  // What the bucket holds when walcast restarted after the switch before any TLI-2 segment went up.
  const current = decodeRemoteMetadata((await getObject(store, metadataKey(KEYS))) ?? Buffer.alloc(0), 'test');
  await store.putBytes(store.key(metadataKey(KEYS)), encodeRemoteMetadata({ ...current, formatVersion: REMOTE_METADATA_FORMAT_VERSION, pgTimelineId: 2, backupLsn: seg(5) }));
  const dataDir = join(root, 'restored-early');
  const result = await restoreTimeline({ dataDir, store, keys: KEYS });
  assert.equal(result.pgTimelineId, 1);
  const restored = join(dataDir, KEYS.tenantId, KEYS.timelineId);
  assert.deepEqual((await readdir(restored)).filter((name) => !name.startsWith('walcast.')).sort(), [segmentFileName(1, 4n, SEG), `${segmentFileName(1, 4n, SEG)}.crc`]);
  assert.ok((await readFile(join(restored, segmentFileName(1, 4n, SEG)))).equals(expectedSegment(4)));
  const control = await readControlFile(restored);
  assert.equal(control.pgTimelineId, 1);
  assert.equal(control.flushLsn, seg(5));
  assert.deepEqual(await checkTimelineFiles(restored, control).then((problems) => problems.filter((problem) => problem.severity === 'error')), []);
});

test('a history file the store refuses holds back the first segment of its TLI (the backup LSN waits at the switch segment), then both go up', async () => {
  const keys = { tenantId: 'c'.repeat(32), timelineId: 'd'.repeat(32) };
  const switchDir = await mkdtemp(join(root, 'refused-'));
  const switchLsn = seg(4, 0x100);
  const history = `1\t${formatLsn(switchLsn)}\tno recovery target specified\n`;
  await writeFile(join(switchDir, '00000002.history'), history);
  const bytes = new Map<number, Buffer>();
  for (const [segno, tli, suffix] of [[2, 1, ''], [3, 1, ''], [4, 1, '.partial'], [4, 2, ''], [5, 2, ''], [6, 2, '.partial']] as const) {
    const content = randomBytes(SEG);
    if (tli === 2 || segno < 4) bytes.set(segno, content);
    await writeFile(join(switchDir, segmentFileName(tli, BigInt(segno), SEG) + suffix), content);
  }
  let refuseHistory = true;
  const refusing = newStore();
  const putBytes = refusing.putBytes.bind(refusing);
  refusing.putBytes = async (key, ...rest) => {
    if (refuseHistory && key.endsWith('.history')) throw new Error('injected: the store refuses the history file');
    await putBytes(key, ...rest);
  };
  const persisted: Lsn[] = [];
  const uploader = new SegmentUploader({
    store: refusing,
    dir: switchDir,
    keys,
    identity: { ...keys, systemId: 7n, pgVersion: 150000, segmentBytes: SEG, timelineStartLsn: seg(2) },
    history: () => parseTimelineHistory(history, 2),
    backupLsn: seg(2),
    flushLsn: () => seg(6, 10),
    persistBackupLsn: async (lsn) => {
      persisted.push(lsn);
    },
    log,
    pollMs: 50,
    retryDelayMinMs: 50,
  });
  uploader.start();
  try {
    await until(() => uploader.backupLsn === seg(4) && uploader.stats.uploadErrors >= 3, 'TLI-1 segments up, TLI-2 segments failing on the history file');
    assert.equal(uploader.backupLsn, seg(4), 'the backup LSN waits at the switch segment');
    for (const segno of [4n, 5n]) assert.equal(await getObject(store, segmentKey(keys, 2, segno, SEG)), undefined, `no TLI-2 segment ${segno} before its history file`);
    refuseHistory = false;
    await until(() => uploader.backupLsn === seg(6), 'the history file and the TLI-2 segments go up once the store takes them');
  } finally {
    await uploader.close();
    refusing.close();
  }
  assert.equal(await getObject(store, historyKey(keys, 2)).then((stored) => stored?.toString('utf8')), history);
  for (const segno of [2, 3]) assert.ok((await getObject(store, segmentKey(keys, 1, BigInt(segno), SEG)))?.equals(bytes.get(segno) ?? Buffer.alloc(0)));
  for (const segno of [4, 5]) assert.ok((await getObject(store, segmentKey(keys, 2, BigInt(segno), SEG)))?.equals(bytes.get(segno) ?? Buffer.alloc(0)));
  assert.equal(await getObject(store, segmentKey(keys, 1, 4n, SEG)), undefined, "the old TLI's .partial of the switch segment is not uploaded");
  assert.deepEqual(persisted.at(-1), seg(6));
});
