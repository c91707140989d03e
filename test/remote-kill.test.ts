/**
 * kill -9 of a walcast that offloads to object storage, at two points armed by failpoints (src/failpoints.ts), with
 * `walcast serve` as a child process following a real PostgreSQL 15 primary (1 MiB segments) with --remote-storage
 * (s3rver on loopback) and a 3 MB --wal-keep-size:
 * - during uploads (`offload-after-put`: a PUT is confirmed, the backup LSN over it not yet persisted, other PUTs in
 *   flight): at the kill every segment below the persisted backup LSN is in the bucket byte-identical, the segment
 *   just PUT is there too (past the backup LSN: the crash window), and every segment from the backup LSN to the
 *   durable end is still on local disk, equal to the primary's. After a restart the uploader resumes from the
 *   persisted backup LSN until every completed segment is in the bucket byte-identical (and the metadata object
 *   records the new backup LSN). All along, a poller of the control file sees the backup LSN never go backwards and
 *   the local start never pass it (retention removed WAL, but never WAL not yet offloaded);
 * - during remote reads (`remote-read-after-get`: a ranged GET of an offloaded segment answered, its bytes in the
 *   `*.download` file, not yet renamed into the cache) while pg_receivewal streams from the timeline's first LSN: after a restart the same
 *   pg_receivewal directory resumes where the replica stopped, and ends byte-identical to the primary's WAL; no
 *   half-downloaded cache file is used or left;
 * - with the object store down (more WAL than the keep window written meanwhile): killed -9, restarted while the store
 *   is still down, the backup LSN holds and every segment from it to the durable end stays on local disk; once the
 *   store is back the uploader catches up, byte-identical.
 * test/remote-faults.test.ts kills a restored walcast with PUTs and GETs delayed by its fault proxy; this file kills
 * the live, retention-bounded walcast at the exact crash windows.
 */
import assert from 'node:assert/strict';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { parseRemoteStorageUrl } from '../src/remote/remote-config.js';
import { REMOTE_METADATA_BYTES_MAX, decodeRemoteMetadata, metadataKey, segmentKey } from '../src/remote/remote-layout.js';
import { S3ObjectStore } from '../src/remote/s3-object-store.js';
import { REMOTE_CACHE_DIR_NAME } from '../src/server.js';
import { readControlFile } from '../src/storage/control-file.js';
import { PARTIAL_SUFFIX, segmentFileName, segmentStartLsn } from '../src/storage/segment-name.js';
import { timelineDirPath } from '../src/storage/timeline-dir.js';
import { firstDifference, freePort, makeTempDir, runReceiveWal, startPrimary, type PgCluster } from './support/postgres.js';
import { TEST_BUCKET, startTestS3, type TestS3 } from './support/s3.js';
import { spawnServe, type ServeProcess } from './support/serve-process.js';
import { waitFor } from './support/wait-for.js';

const MIB = 1024 * 1024;
const SEGMENT_BYTES = MIB;
const SEGMENT = BigInt(SEGMENT_BYTES);
const PREFIX = 'kill';
const SEGMENT_NAME = /^[0-9A-F]{24}$/;
/** The PUT that kills: late enough that retention has removed offloaded WAL by then. */
const KILL_AT_PUT = 16;
/** The ranged GET that kills (one GET per 1 MiB segment; the reader fetches up to 4 ahead): the replica has received a few segments by then. */
const KILL_AT_GET = 10;
/** WAL written while the first walcast runs: well past KILL_AT_PUT segments. */
const FIRST_RUN_WAL_BYTES = 26 * MIB;
const WAIT_MS = 120_000;
/** WAL written while the store is down, per phase: more than the 3 MB keep window. */
const OUTAGE_WAL_BYTES = 6 * MIB;
/** Between inserts of the first run (2.2 MB each): retention (a pass a second) removes offloaded WAL before the kill. */
const PRODUCE_PAUSE_MS = 500;
/** How often the watcher reads the control file: often enough to see every persist of a 1 MiB segment's upload. */
const CONTROL_POLL_MS = 20;
/** One INSERT of this writes about 2.2 MB of WAL. */
const FILLER_SQL = "INSERT INTO kill_filler SELECT g, repeat('x', 1000) FROM generate_series(1, 2000) g";

let s3: TestS3;
let store: S3ObjectStore;
let primary: PgCluster;
let dataDir: string;
let timelineDir: string;
let tenantId: string;
let timelineId: string;
let firstLsn: Lsn;
let port: number;
let serve: ServeProcess | undefined;

before(async () => {
  s3 = await startTestS3();
  store = new S3ObjectStore(parseRemoteStorageUrl(`s3://${TEST_BUCKET}/${PREFIX}`, { endpoint: s3.endpoint }));
  primary = await startPrimary({ walSegmentMb: 1 });
  await primary.sql('CREATE TABLE kill_filler (id int, pad text) WITH (autovacuum_enabled = off)');
  dataDir = await makeTempDir('walcast-remote-kill');
  const created = await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1 port=${primary.port} user=repl`, password: undefined, log: silentLogger() });
  ({ tenantId, timelineId } = created);
  firstLsn = created.startLsn;
  timelineDir = timelineDirPath(dataDir, tenantId, timelineId);
  port = await freePort();
}, { timeout: 300_000 });

after(async () => {
  await serve?.stop();
  await primary?.stop({ mode: 'immediate' });
  store?.close();
  await s3?.dispose();
});

describe('kill -9 of an offloading walcast', { timeout: 600_000 }, () => {
  test(`during uploads (offload-after-put, PUT ${KILL_AT_PUT}): nothing un-uploaded removed, the bucket holds everything below the persisted backup LSN, the restarted uploader resumes`, async (t) => {
    const watch = watchControlFile();
    try {
      serve = await spawnOffloadingServe({ WALCAST_FAILPOINTS_ENABLE: '1', WALCAST_FAILPOINTS: `offload-after-put=exit@${KILL_AT_PUT}` });
      const produced = produceWalUntil(firstLsn + BigInt(FIRST_RUN_WAL_BYTES), PRODUCE_PAUSE_MS);
      const signal = await withTimeout(serve.exited, WAIT_MS, 'walcast was not killed by offload-after-put');
      assert.equal(signal, 'SIGKILL', `walcast died by its failpoint: ${serve.output().slice(-2000)}`);
      serve = undefined;
      await produced;

      const atKill = await readControlFile(timelineDir);
      const backupAtKill = atKill.backupLsn ?? firstLsn;
      assert.ok(atKill.timelineStartLsn > firstLsn, 'retention had removed offloaded WAL before the kill');
      assert.ok(atKill.timelineStartLsn <= backupAtKill, `the local start ${formatLsn(atKill.timelineStartLsn)} is not past the backup LSN ${formatLsn(backupAtKill)}`);
      const inBucket = await assertBucketEqualsPrimary(firstLsn, backupAtKill);
      // The segment whose PUT fired the failpoint is in the bucket but not covered by the persisted backup LSN. Other
      // PUTs were in flight at the kill (REMOTE_UPLOADS_IN_FLIGHT_MAX): s3rver keeps what arrived of an interrupted
      // PUT as the object (S3 itself stores nothing of a PUT whose body fell short of its Content-Length), so a short
      // object may be there too. Not covered by the backup LSN either, it is uploaded again after the restart, which
      // the comparison of the whole bucket below checks.
      const beyondObjects = await objectsFrom(backupAtKill);
      const beyond = beyondObjects.filter((object) => object.sizeBytes === SEGMENT_BYTES).map((object) => object.segno);
      const interrupted = beyondObjects.length - beyond.length;
      assert.ok(beyond.length >= 1, `a whole object past the persisted backup LSN ${formatLsn(backupAtKill)} (the crash window) is in the bucket`);
      for (const segno of beyond) await assertBucketEqualsPrimary(segmentStartLsn(segno, SEGMENT_BYTES), segmentStartLsn(segno + 1n, SEGMENT_BYTES));
      // Not offloaded as far as the control file knows, so still local: every segment from the backup LSN through the
      // last one PUT and the last one completed locally (renamed only once durable), and on to the durable end the
      // control file records (which lags the WAL files: recovery scans past it on start).
      const completedLocally = (await readdir(timelineDir)).filter((name) => SEGMENT_NAME.test(name)).map(segnoOf);
      const lastWhole = [...beyond, ...completedLocally].reduce((max, segno) => (segno > max ? segno : max), 0n);
      const localEnd = segmentStartLsn(lastWhole + 1n, SEGMENT_BYTES) > atKill.flushLsn ? segmentStartLsn(lastWhole + 1n, SEGMENT_BYTES) : atKill.flushLsn;
      const local = await assertLocalEqualsPrimary(backupAtKill, localEnd);

      serve = await spawnOffloadingServe({});
      await produceWalUntil((await currentLsn()) + 3n * SEGMENT);
      const target = alignDown(await currentLsn());
      const resumed = await waitFor(async () => {
        const control = await readControlFile(timelineDir);
        return (control.backupLsn ?? 0n) >= target ? control : undefined;
      }, WAIT_MS, { what: `the restarted uploader reached ${formatLsn(target)}`, pollMs: 200 });
      const compared = await assertBucketEqualsPrimary(firstLsn, resumed.backupLsn ?? 0n);
      // The bucket alone describes the timeline again: its metadata object caught up with the resumed backup LSN.
      const metadataObject = store.key(metadataKey({ tenantId, timelineId }));
      await waitFor(async () => {
        // One GET of the whole object: the uploader may be rewriting it (a HEAD's size would not fit the next GET).
        const bytes = await store.getObject(metadataObject, REMOTE_METADATA_BYTES_MAX);
        return decodeRemoteMetadata(bytes, metadataObject).backupLsn >= target ? true : undefined;
      }, WAIT_MS, { what: 'the metadata object records the resumed backup LSN', pollMs: 200 });
      // Retention (a pass a second) removes offloaded WAL behind the 3 MB window: "nothing un-uploaded removed" was put to the test.
      const removedTo = await waitFor(async () => {
        const { timelineStartLsn } = await readControlFile(timelineDir);
        return timelineStartLsn >= target - 3n * SEGMENT ? timelineStartLsn : undefined;
      }, WAIT_MS, { what: 'retention removed offloaded WAL locally', pollMs: 200 });
      await serve.stop();
      serve = undefined;
      const { samples, violation } = await watch.stop();
      assert.equal(violation, undefined);
      assert.ok(samples > 10, `the control file was sampled (${samples})`);
      t.diagnostic(
        `killed after PUT ${KILL_AT_PUT}: backup LSN ${formatLsn(backupAtKill)} (${inBucket} segments in the bucket, ${beyond.length} more past it, ${interrupted} interrupted PUTs), local start ${formatLsn(atKill.timelineStartLsn)}, ` +
          `${local} segments from it to ${formatLsn(localEnd)} still local; after the restart backup LSN ${formatLsn(resumed.backupLsn ?? 0n)}, local start ${formatLsn(removedTo)}, ${compared} segments byte-identical in the bucket; ` +
          `${samples} control-file samples, backup LSN never backwards`,
      );
    } finally {
      await watch.stop();
      await serve?.stop();
      serve = undefined;
    }
  });

  test(`during remote reads (remote-read-after-get, GET ${KILL_AT_GET}): the same pg_receivewal directory resumes after a restart and ends byte-identical`, async (t) => {
    t.after(async () => {
      await serve?.stop();
      serve = undefined;
    });
    const control = await readControlFile(timelineDir);
    const localStart = control.timelineStartLsn;
    assert.ok(localStart >= firstLsn + BigInt(KILL_AT_GET + 1) * SEGMENT, `the first ${KILL_AT_GET + 1} segments are only in the bucket (local start ${formatLsn(localStart)})`);
    const endLsn = alignDown(control.flushLsn);
    assert.ok(endLsn > localStart, 'the stream goes on from the bucket into local WAL');
    const dir = await makeTempDir('walcast-remote-kill-receiver');
    // A zeroed full-size .partial makes pg_receivewal start at the timeline's first segment (receivelog.c FindStreamingStart).
    await writeFile(join(dir, `${segmentFileName(1, firstLsn / SEGMENT, SEGMENT_BYTES)}${PARTIAL_SUFFIX}`), Buffer.alloc(SEGMENT_BYTES));

    serve = await spawnOffloadingServe({ WALCAST_FAILPOINTS_ENABLE: '1', WALCAST_FAILPOINTS: `remote-read-after-get=exit@${KILL_AT_GET}` });
    const interrupted = await runReceiveWal({ port, dir, endpos: formatLsn(endLsn), timeoutMs: WAIT_MS });
    const signal = await withTimeout(serve.exited, WAIT_MS, 'walcast was not killed by remote-read-after-get');
    assert.equal(signal, 'SIGKILL', `walcast died by its failpoint: ${serve.output().slice(-2000)}`);
    serve = undefined;
    assert.notEqual(interrupted.code, 0, 'the replica lost its stream');
    const received = (await readdir(dir)).filter((name) => SEGMENT_NAME.test(name));
    assert.ok(received.length >= 1, `the replica had completed segments before the kill: ${JSON.stringify(await readdir(dir))}`);

    serve = await spawnOffloadingServe({});
    const result = await runReceiveWal({ port, dir, endpos: formatLsn(endLsn), timeoutMs: WAIT_MS });
    assert.equal(result.code, 0, `${result.stderr}\n${serve.output().slice(-3000)}`);
    const resumedAt = /starting log streaming at ([0-9A-F]+\/[0-9A-F]+)/.exec(result.stderr)?.[1];
    assert.ok(resumedAt !== undefined && parseLsnOrThrow(resumedAt) > firstLsn, `the replica resumed after what it had (${resumedAt ?? result.stderr})`);
    let compared = 0;
    for (let segno = firstLsn / SEGMENT; segmentStartLsn(segno, SEGMENT_BYTES) < endLsn; segno++) {
      const name = segmentFileName(1, segno, SEGMENT_BYTES);
      const difference = firstDifference(await readFile(join(dir, name)), await readFile(join(primary.walDir, name)));
      assert.equal(difference, -1, `${name} received by the replica differs from the primary's at ${difference}`);
      compared++;
    }
    const cacheDir = join(dataDir, REMOTE_CACHE_DIR_NAME, tenantId, timelineId);
    // A fetched segment comes with its page-checksum sidecar (NAME.crc); anything else would be a half download.
    const leftovers = (await readdir(cacheDir)).filter((name) => !SEGMENT_NAME.test(name.replace(/\.crc$/, '')));
    assert.deepEqual(leftovers, [], 'no half-downloaded file is left in the cache');
    await serve.stop();
    serve = undefined;
    t.diagnostic(`killed at GET ${KILL_AT_GET} with ${received.length} segments received; resumed at ${resumedAt}; ${compared} segments from ${formatLsn(firstLsn)} to ${formatLsn(endLsn)} (local start ${formatLsn(localStart)}) byte-identical`);
  });

  test('with the object store down: kill -9, a restart while it is still down, then its return: the backup LSN holds, nothing un-uploaded is removed, the uploader catches up', async (t) => {
    const watch = watchControlFile();
    let storeDown = false;
    try {
      await s3.stop();
      storeDown = true;
      serve = await spawnOffloadingServe({});
      const heldAt = (await readControlFile(timelineDir)).backupLsn ?? firstLsn;
      // More than the 3 MB keep window while nothing can be uploaded: retention would remove it if it could.
      const outageTarget = (await currentLsn()) + BigInt(OUTAGE_WAL_BYTES);
      await produceWalUntil(outageTarget, PRODUCE_PAUSE_MS);
      await waitForDurable(outageTarget - SEGMENT);
      serve.kill9();
      assert.equal(await serve.exited, 'SIGKILL');
      serve = undefined;
      const atKill = await readControlFile(timelineDir);
      assert.equal(atKill.backupLsn ?? firstLsn, heldAt, 'the backup LSN did not move while the store was down');
      const localAtKill = await assertLocalEqualsPrimary(heldAt, atKill.flushLsn);

      serve = await spawnOffloadingServe({});
      const secondTarget = (await currentLsn()) + BigInt(OUTAGE_WAL_BYTES);
      await produceWalUntil(secondTarget, PRODUCE_PAUSE_MS);
      const durable = await waitForDurable(secondTarget - SEGMENT);
      const whileDown = await readControlFile(timelineDir);
      assert.equal(whileDown.backupLsn ?? firstLsn, heldAt, 'restarted with the store down, the backup LSN still holds');
      assert.ok(durable - heldAt > 4n * SEGMENT, 'more WAL than the keep window waits for the store: retention would have removed some');
      const localAfterRestart = await assertLocalEqualsPrimary(heldAt, durable);

      await s3.start();
      storeDown = false;
      const target = alignDown(await currentLsn());
      const caughtUp = await waitFor(async () => {
        const control = await readControlFile(timelineDir);
        return (control.backupLsn ?? 0n) >= target ? control : undefined;
      }, WAIT_MS, { what: `the uploader caught up to ${formatLsn(target)} once the store was back`, pollMs: 200 });
      const compared = await assertBucketEqualsPrimary(heldAt, caughtUp.backupLsn ?? 0n);
      await serve.stop();
      serve = undefined;
      const { samples, violation } = await watch.stop();
      assert.equal(violation, undefined);
      t.diagnostic(
        `store down: backup LSN held at ${formatLsn(heldAt)}; at the kill ${localAtKill} segments up to ${formatLsn(atKill.flushLsn)} local; after a restart still down ${localAfterRestart} up to ${formatLsn(durable)}; ` +
          `store back: backup LSN ${formatLsn(caughtUp.backupLsn ?? 0n)}, ${compared} more segments byte-identical in the bucket; ${samples} control-file samples`,
      );
    } finally {
      await watch.stop();
      if (storeDown) await s3.start();
      await serve?.stop();
      serve = undefined;
    }
  });
});

/** `walcast serve` as a child process offloading to the test bucket, with a small keep window; ready once listening. */
function spawnOffloadingServe(env: Record<string, string>): Promise<ServeProcess> {
  return spawnServe({
    args: ['--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--no-http', '--wal-keep-size', '3MB',
      '--remote-storage', `s3://${TEST_BUCKET}/${PREFIX}`, '--remote-storage-endpoint', s3.endpoint],
    env,
    ready: async (child) => (child.output().includes('"msg":"listening"') ? true : undefined),
  });
}

/**
 * Reads the control file every few milliseconds in the background, across kills and restarts, and records the first
 * backup LSN that went backwards or local start past the backup LSN. stop() ends it and returns what it saw.
 */
function watchControlFile(): { stop(): Promise<{ samples: number; violation: string | undefined }> } {
  let running = true;
  let samples = 0;
  let violation: string | undefined;
  let lastBackup: Lsn | undefined;
  const loop = (async () => {
    while (running) {
      const control = await readControlFile(timelineDir).catch(() => undefined);
      if (control !== undefined) {
        samples++;
        if (lastBackup !== undefined && (control.backupLsn === undefined || control.backupLsn < lastBackup)) {
          violation ??= `the backup LSN went back from ${formatLsn(lastBackup)} to ${control.backupLsn === undefined ? 'none' : formatLsn(control.backupLsn)}`;
        }
        const backup = control.backupLsn ?? firstLsn;
        if (control.timelineStartLsn > backup) violation ??= `the local start ${formatLsn(control.timelineStartLsn)} passed the backup LSN ${formatLsn(backup)}`;
        lastBackup = control.backupLsn ?? lastBackup;
      }
      await new Promise((resolve) => setTimeout(resolve, CONTROL_POLL_MS));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return { samples, violation };
    },
  };
}

/** Segment objects in the bucket at or past `from`: segment number and size. */
async function objectsFrom(from: Lsn): Promise<{ readonly segno: bigint; readonly sizeBytes: number }[]> {
  const prefix = store.key(`${tenantId}/${timelineId}/`);
  const found: { segno: bigint; sizeBytes: number }[] = [];
  for (const object of await store.list(prefix)) {
    const name = object.key.slice(prefix.length);
    if (!SEGMENT_NAME.test(name)) continue;
    const segno = segnoOf(name);
    if (segmentStartLsn(segno, SEGMENT_BYTES) >= from) found.push({ segno, sizeBytes: object.sizeBytes });
  }
  return found;
}

/** The segment number of a plain segment name (TLI, log, seg: 8 hex digits each). */
function segnoOf(name: string): bigint {
  return BigInt(`0x${name.slice(8, 16)}`) * (0x1_0000_0000n / SEGMENT) + BigInt(`0x${name.slice(16)}`);
}

/** Every segment object in [from, to) equals the primary's file; returns how many were compared. */
async function assertBucketEqualsPrimary(from: Lsn, to: Lsn): Promise<number> {
  let compared = 0;
  for (let segno = from / SEGMENT; segmentStartLsn(segno, SEGMENT_BYTES) < to; segno++) {
    const name = segmentFileName(1, segno, SEGMENT_BYTES);
    const stored = await store.getRange(store.key(segmentKey({ tenantId, timelineId }, 1, segno, SEGMENT_BYTES)), 0, SEGMENT_BYTES);
    const difference = firstDifference(stored, await readFile(join(primary.walDir, name)));
    assert.equal(difference, -1, `${name} in the bucket differs from the primary's at ${difference}`);
    compared++;
  }
  return compared;
}

/** Every segment from `from` to the durable `to` is on local disk (complete or .partial) and equals the primary's up to `to`. */
async function assertLocalEqualsPrimary(from: Lsn, to: Lsn): Promise<number> {
  const names = new Set(await readdir(timelineDir));
  let compared = 0;
  for (let segno = from / SEGMENT; segmentStartLsn(segno, SEGMENT_BYTES) < to; segno++) {
    const plain = segmentFileName(1, segno, SEGMENT_BYTES);
    const name = [plain, plain + PARTIAL_SUFFIX].find((candidate) => names.has(candidate));
    assert.ok(name !== undefined, `${plain}, not offloaded (backup LSN ${formatLsn(from)}), is still on local disk`);
    const valid = Number(to - segmentStartLsn(segno, SEGMENT_BYTES) < SEGMENT ? to - segmentStartLsn(segno, SEGMENT_BYTES) : SEGMENT);
    const difference = firstDifference((await readFile(join(timelineDir, name))).subarray(0, valid), (await readFile(join(primary.walDir, plain))).subarray(0, valid));
    assert.equal(difference, -1, `local ${name} differs from the primary's at ${difference}`);
    compared++;
  }
  return compared;
}

async function currentLsn(): Promise<Lsn> {
  return parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
}

/** Writes WAL up to `target`, pausing `pauseMs` between inserts so that retention passes run while the WAL comes. */
async function produceWalUntil(target: Lsn, pauseMs = 0): Promise<void> {
  while ((await currentLsn()) < target) {
    await primary.sql(FILLER_SQL);
    if (pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, pauseMs));
  }
}

/** Waits until the control file's durable flush LSN reaches `lsn` (walcast ingested it); returns that flush LSN. */
async function waitForDurable(lsn: Lsn): Promise<Lsn> {
  return waitFor(async () => {
    const { flushLsn } = await readControlFile(timelineDir);
    return flushLsn >= lsn ? flushLsn : undefined;
  }, WAIT_MS, { what: `walcast made ${formatLsn(lsn)} durable`, pollMs: 100 });
}

function alignDown(lsn: Lsn): Lsn {
  return lsn - (lsn % SEGMENT);
}

async function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<never>((_resolve, reject) => (timer = setTimeout(() => reject(new Error(message)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
