/**
 * The kill -9 matrix: `walcast serve` follows a real PostgreSQL 15 primary while pgbench writes, and a failpoint
 * (src/failpoints.ts) kills it with SIGKILL at a named point of the durability path: after a WAL write before its
 * fdatasync, after the fdatasync before the control file, between writing walcast.control.tmp and renaming it, and
 * between writing walcast.slots.tmp and renaming it (a pg_receivewal streams through a walcast slot meanwhile, so its
 * feedback advances the slot; after the restart the slot must still be there and its restart LSN not past the
 * durable LSN).
 * After each kill walcast is restarted; every stored byte up to the durable LSN it reports (the control file's flush
 * LSN) must equal the primary's WAL, no temp file may remain, and ingest must go on to catch up with the primary.
 * The same harness injects a transient EIO and EROFS into a WAL write: walcast must pause, resume by itself, and
 * store the same bytes. One primary and one timeline go through every case in turn; the child runs on the I/O backend
 * the test runner chose (WALCAST_IO).
 */
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { readSlotFile } from '../src/slots/slot-file.js';
import { readControlFile } from '../src/storage/control-file.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import { connectReplication } from '../src/wire/client.js';
import { firstDifference, freePort, makeTempDir, runReceiveWal, startPrimary, type PgCluster } from './support/postgres.js';
import { waitFor } from './support/wait-for.js';
import { spawnServe, type ServeProcess } from './support/serve-process.js';

const SEGMENT_BYTES = 1024 * 1024;
const TIMEOUT_MS = 300_000;
const EVENT_TIMEOUT_MS = 60_000;
/** pgbench runs this long per case: long enough that the failpoint fires under load. */
const LOAD_SECONDS = '6';

interface Case {
  readonly failpoint: string;
  /** `kill`: the process dies at the point; `pause`: it pauses on the injected errno and resumes. */
  readonly expect: 'kill' | 'pause';
  /** Stream a pg_receivewal through a walcast slot during the case, so the slot file is rewritten. */
  readonly slot?: boolean;
}

const CASES: readonly Case[] = [
  { failpoint: 'wal-after-write=exit@40', expect: 'kill' },
  { failpoint: 'wal-after-fsync=exit@40', expect: 'kill' },
  { failpoint: 'control-before-rename=exit@3', expect: 'kill' },
  // Save 1 is the slot's creation; save 2 is the first batched restart-LSN advance from the receiver's feedback.
  { failpoint: 'slot-before-rename=exit@2', expect: 'kill', slot: true },
  { failpoint: 'wal-after-write=eio@40', expect: 'pause' },
  { failpoint: 'wal-after-write=erofs@40', expect: 'pause' },
];

let primary: PgCluster;
let dataDir: string;
let timelineDir: string;
let timelineStartLsn: Lsn;
let port: number;
let serve: ServeProcess | undefined;

before(async () => {
  primary = await startPrimary({ walSegmentMb: 1, extraConf: { wal_keep_size: '2GB' } });
  await primary.pgbench(['-i', '-s', '1', '-q']);
  dataDir = await makeTempDir('walcast-kill-matrix');
  const created = await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1 port=${primary.port} user=repl`, password: undefined, log: silentLogger() });
  timelineDir = join(dataDir, created.tenantId, created.timelineId);
  timelineStartLsn = created.startLsn;
  port = await freePort();
}, { timeout: TIMEOUT_MS });

after(async () => {
  await serve?.stop();
  await primary?.stop({ mode: 'immediate' });
});

describe('kill -9 matrix and injected I/O errors during pgbench', { timeout: TIMEOUT_MS }, () => {
  for (const testCase of CASES) {
    test(`${testCase.failpoint}: restart or resume, stored WAL equals the primary up to the durable LSN, ingest goes on`, async (t) => {
      const started = Date.now();
      serve = await spawnMatrixServe({ WALCAST_FAILPOINTS_ENABLE: '1', WALCAST_FAILPOINTS: testCase.failpoint });
      const load = primary.pgbench(['-T', LOAD_SECONDS, '-c', '2', '-n']);
      const receiver = testCase.slot === true ? await startSlotReceiver() : undefined;
      if (testCase.expect === 'kill') {
        const signal = await withTimeout(serve.exited, EVENT_TIMEOUT_MS, `walcast was not killed by ${testCase.failpoint}`);
        assert.equal(signal, 'SIGKILL', `walcast died by its failpoint: ${serve.output().slice(-2000)}`);
        const durableAtKill = (await readControlFile(timelineDir)).flushLsn;
        await assertStoredEqualsPrimary(durableAtKill);
        if (receiver !== undefined) {
          await receiver;
          const slots = await readSlotFile(timelineDir);
          const slot = slots.find((candidate) => candidate.name === SLOT_NAME);
          assert.ok(slot !== undefined, 'the slot survived the kill');
          assert.ok(slot.restartLsn !== undefined && slot.restartLsn <= durableAtKill, 'a saved restart LSN never passes durable WAL');
        }
        serve = await spawnMatrixServe({});
        t.diagnostic(`killed with durable LSN ${formatLsn(durableAtKill)}; restarted`);
      } else {
        const code = testCase.failpoint.split('=')[1]?.split('@')[0]?.toUpperCase() ?? '';
        await waitFor(async () => (serve?.output().includes('ingest paused') === true ? true : undefined), EVENT_TIMEOUT_MS);
        assert.match(serve.output(), new RegExp(`"reason":"[^"]*${code}`), 'the pause names the errno');
        await waitFor(async () => (serve?.output().includes('ingest resumes') === true ? true : undefined), EVENT_TIMEOUT_MS);
      }
      await load;
      const target = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
      const durable = await waitFor(async () => {
        const control = await readControlFile(timelineDir);
        return control.flushLsn >= target ? control.flushLsn : undefined;
      }, EVENT_TIMEOUT_MS);
      assert.ok(!(await readdir(timelineDir)).includes('walcast.control.tmp'), 'no temp file remains');
      const compared = await assertStoredEqualsPrimary(durable);
      await serve.stop();
      serve = undefined;
      t.diagnostic(`ingest caught up to ${formatLsn(durable)}; ${compared} bytes equal the primary's; case took ${Date.now() - started} ms`);
    });
  }
});

const SLOT_NAME = 'kill_matrix_slot';

/** Creates a persistent walcast slot and streams pg_receivewal through it (1 s status interval) in the background. */
async function startSlotReceiver(): Promise<Promise<unknown>> {
  const client = await connectReplication({ host: '127.0.0.1', port, user: 'repl', timeoutMs: 10_000 });
  try {
    await client.query(`CREATE_REPLICATION_SLOT ${SLOT_NAME} PHYSICAL RESERVE_WAL`);
  } finally {
    await client.end();
  }
  const dir = await makeTempDir('walcast-kill-receiver');
  // It ends with an error when walcast is killed; that is the point, so its result only needs to settle.
  return runReceiveWal({ port, dir, endpos: 'FFFFFFFF/0', slot: SLOT_NAME, extraArgs: ['-s', '1'], timeoutMs: EVENT_TIMEOUT_MS }).catch((error: unknown) => error);
}

/** Every stored byte from the timeline start to `durable` equals the primary's WAL. */
async function assertStoredEqualsPrimary(durable: Lsn): Promise<number> {
  const names = await readdir(timelineDir);
  let compared = 0;
  for (let segno = timelineStartLsn / BigInt(SEGMENT_BYTES); segno * BigInt(SEGMENT_BYTES) < durable; segno++) {
    const plain = segmentFileName(1, segno, SEGMENT_BYTES);
    const name = names.find((candidate) => candidate === plain || candidate === `${plain}.partial`);
    assert.ok(name !== undefined, `segment ${plain} is stored below the durable LSN ${formatLsn(durable)}`);
    const segmentStart = segno * BigInt(SEGMENT_BYTES);
    const validBytes = durable - segmentStart >= BigInt(SEGMENT_BYTES) ? SEGMENT_BYTES : Number(durable - segmentStart);
    const stored = (await readFile(join(timelineDir, name))).subarray(0, validBytes);
    const original = (await readFile(join(primary.walDir, plain))).subarray(0, validBytes);
    const difference = firstDifference(stored, original);
    assert.equal(difference, -1, `${name} differs from the primary at offset ${difference}`);
    compared += validBytes;
  }
  return compared;
}

/** `walcast serve` as a child process with extra environment (failpoints); resolves once it is listening. */
function spawnMatrixServe(env: Record<string, string>): Promise<ServeProcess> {
  return spawnServe({
    args: ['--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--no-http', '--log-level', 'debug'],
    env,
    ready: async (serve) => (serve.output().includes('"msg":"listening"') ? true : undefined),
    readyTimeoutMs: EVENT_TIMEOUT_MS,
  });
}

async function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<never>((_resolve, reject) => (timer = setTimeout(() => reject(new Error(message)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
