/**
 * Live ingest end to end against real PostgreSQL 15 on loopback: walcast follows a primary (and another walcast),
 * stores its WAL durably and serves it while it arrives.
 *
 * One primary and one hot standby (base-backed-up from the primary, streaming from walcast) are shared by the tests,
 * which run in order: the standby sees the primary's rows through walcast and its hot-standby xmin reaches the
 * primary's slot; pg_receivewal from walcast gets byte-identical segments while pgbench writes; a chain primary →
 * walcast A → walcast B → standby works; walcast killed with SIGKILL during pgbench recovers and the standby
 * catches up; and walcast serves as the primary's synchronous standby.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { upstreamSlotName } from '../src/ingest/follower.js';
import { silentLogger } from '../src/log.js';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { readControlFile } from '../src/storage/control-file.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { connectReplication } from '../src/wire/client.js';
import { firstDifference, freePort, makeStandby, makeTempDir, runReceiveWal, startPrimary, type PgCluster, type PgStandby, type StandbyBase } from './support/postgres.js';
import { REPO_ROOT, runWalcastCli, startWalcast, type RunningWalcast } from './support/walcast.js';

const SEGMENT_BYTES = 16 * 1024 * 1024;
const TEST_TIMEOUT_MS = 300_000;
const CATCH_UP_TIMEOUT_MS = 120_000;
const POLL_MS = 100;

interface Fixture {
  primary: PgCluster;
  standbyBase: StandbyBase;
  standby: PgStandby;
  dataDirA: string;
  walcastA: RunningWalcast;
  timelineIdA: string;
  startLsnA: Lsn;
}

let fixture: Fixture;
const cleanups: (() => Promise<void>)[] = [];

before(async () => {
  const primary = await startPrimary({ extraConf: { wal_keep_size: '2GB' } });
  await primary.pgbench(['-i', '-s', '2', '-q']);
  const dataDirA = await makeTempDir('walcast-ingest-a');
  const created = await createFollowingTimeline({ dataDir: dataDirA, upstream: `host=127.0.0.1 port=${primary.port} user=repl`, password: undefined, log: silentLogger() });
  const walcastA = await startWalcast({ dataDir: dataDirA });
  cleanups.push(() => walcastA.stop());
  // The base backup starts after the timeline, so everything the standby needs is in walcast.
  const standbyBase = await makeStandby(primary, { applicationName: 'stby1', hotStandbyFeedback: true, start: false });
  const standby = await standbyBase.startWithUpstream(walcastA.port);
  fixture = { primary, standbyBase, standby, dataDirA, walcastA, timelineIdA: created.timelineId, startLsnA: created.startLsn };
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  await fixture?.standbyBase.standby?.stop({ mode: 'immediate' });
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  await fixture?.primary.stop({ mode: 'immediate' });
});

describe('live ingest from PostgreSQL 15', { timeout: TEST_TIMEOUT_MS }, () => {
  test('timeline create records the upstream identity and a slot', async () => {
    const timeline = soleTimeline(fixture.walcastA);
    assert.equal(timeline.systemId, BigInt(await fixture.primary.sql('SELECT system_identifier FROM pg_control_system()')));
    assert.equal(timeline.pgTimelineId, 1);
    assert.equal(fixture.startLsnA % BigInt(SEGMENT_BYTES), 0n);
    const slot = await fixture.primary.sql(`SELECT slot_type, active FROM pg_replication_slots WHERE slot_name = '${upstreamSlotName(fixture.timelineIdA)}'`);
    assert.equal(slot, 'physical|t', 'walcast streams through its slot');
    const control = await readControlFile(timeline.dir);
    assert.match(control.upstream ?? '', /^host=127\.0\.0\.1 port=\d+ user=repl/);
  });

  test('a standby streaming from walcast sees rows inserted on the primary; its xmin reaches the primary slot', async (t) => {
    await fixture.primary.sql('CREATE TABLE ingest_rows (id int primary key, at timestamptz default clock_timestamp())');
    await fixture.primary.sql('INSERT INTO ingest_rows (id) SELECT g FROM generate_series(1, 1000) g');
    await waitFor(async () => ((await fixture.standby.sql('SELECT count(*) FROM ingest_rows')) === '1000' ? true : undefined), CATCH_UP_TIMEOUT_MS);
    const timeline = soleTimeline(fixture.walcastA);
    const slotName = upstreamSlotName(fixture.timelineIdA);
    const matched = await waitFor(async () => {
      const aggregate = timeline.replicas.aggregates().hotStandbyXmin;
      const slotXmin = await fixture.primary.sql(`SELECT xmin FROM pg_replication_slots WHERE slot_name = '${slotName}'`);
      if (aggregate === undefined || slotXmin === '') return undefined;
      return BigInt(slotXmin) === (aggregate & 0xffff_ffffn) ? slotXmin : undefined;
    }, 30_000);
    t.diagnostic(`primary slot xmin ${matched} = the standby's hot-standby xmin`);
    // The primary's transaction ids move on; the standby's feedback (and so the slot's xmin) follows.
    await fixture.primary.sql('SELECT txid_current()');
    await fixture.primary.sql('INSERT INTO ingest_rows (id) VALUES (1001)');
    await waitFor(async () => {
      const slotXmin = await fixture.primary.sql(`SELECT xmin FROM pg_replication_slots WHERE slot_name = '${slotName}'`);
      return slotXmin !== '' && BigInt(slotXmin) > BigInt(matched) ? true : undefined;
    }, 30_000);
  });

  test('pg_receivewal from walcast while the primary writes gets segments byte-identical to the primary', async () => {
    const target = await makeTempDir('ingest-receivewal');
    const firstName = segmentFileName(1, fixture.startLsnA / BigInt(SEGMENT_BYTES), SEGMENT_BYTES);
    await writeFile(join(target, `${firstName}.partial`), '');
    const load = fixture.primary.pgbench(['-c', '2', '-T', '5', '-n']);
    await sleep(1500);
    const midLoad = parseLsnOrThrow(await fixture.primary.sql('SELECT pg_current_wal_flush_lsn()'));
    const received = runReceiveWal({ port: fixture.walcastA.port, dir: target, endpos: formatLsn(midLoad), timeoutMs: CATCH_UP_TIMEOUT_MS });
    await load;
    const result = await received;
    assert.equal(result.code, 0, `pg_receivewal failed: ${result.stderr}`);
    await assertSegmentsMatch(target, fixture.primary.walDir, fixture.startLsnA, midLoad);
  });
});

function soleTimeline(walcast: RunningWalcast): Timeline {
  const [timeline] = walcast.server.timelines.list();
  assert.ok(timeline !== undefined, 'walcast has a timeline');
  return timeline;
}

/** Every segment in `receivedDir` equals the primary's from `startLsn` up to `endLsn` (the rest is padding). */
async function assertSegmentsMatch(receivedDir: string, primaryWalDir: string, startLsn: Lsn, endLsn: Lsn): Promise<number> {
  const names = (await readdir(receivedDir)).filter((name) => /^[0-9A-F]{24}(\.partial)?$/.test(name)).sort();
  const firstSegment = startLsn / BigInt(SEGMENT_BYTES);
  const lastSegment = (endLsn - 1n) / BigInt(SEGMENT_BYTES);
  let compared = 0;
  for (let segno = firstSegment; segno <= lastSegment; segno++) {
    const plain = segmentFileName(1, segno, SEGMENT_BYTES);
    const name = names.find((candidate) => candidate.startsWith(plain));
    assert.ok(name !== undefined, `segment ${plain} is missing; have ${names.join(', ')}`);
    const received = await readFile(join(receivedDir, name));
    const original = await readFile(join(primaryWalDir, plain));
    const segmentStart = segno * BigInt(SEGMENT_BYTES);
    const validBytes = endLsn - segmentStart >= BigInt(SEGMENT_BYTES) ? SEGMENT_BYTES : Number(endLsn - segmentStart);
    const difference = firstDifference(received.subarray(0, validBytes), original.subarray(0, validBytes));
    assert.equal(difference, -1, `${name} differs from the primary at offset ${difference}`);
    compared += validBytes;
  }
  return compared;
}

async function waitFor<T>(probe: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms${lastError === undefined ? '' : `: ${String(lastError)}`}`);
    await sleep(POLL_MS);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Used by later tests in this file.
void spawn;
void freePort;
void REPO_ROOT;
void runWalcastCli;
void connectReplication;
export type { ChildProcess };
