/**
 * A full disk under live ingest from a real PostgreSQL 15 primary: walcast's data directory is a small tmpfs
 * mounted by this test (root only; otherwise it skips and says why). Filling it pauses ingest (status API and
 * metrics say so and why, the API's flush LSN is the control file's, no temp file is left); freeing it resumes
 * ingest by itself, twice in a row. Afterwards every stored byte equals the primary's WAL. The tmpfs is unmounted
 * even when the test fails. (EIO and EROFS take the same path; a tmpfs cannot be remounted read-only under open
 * files, so test/kill-matrix.test.ts injects them with failpoints.)
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, open, readFile, readdir, rm, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { createOperationsMetrics } from '../src/api/metrics.js';
import { startHttpApi, type HttpApi } from '../src/api/http-server.js';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { formatLsn, parseLsnOrThrow, type Lsn } from '../src/lsn.js';
import { readControlFile } from '../src/storage/control-file.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { firstDifference, startPrimary, type PgCluster } from './support/postgres.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const SEGMENT_BYTES = 1024 * 1024;
/** Room for a few 1 MiB segments and the control file: small enough to fill in a moment. */
const TMPFS_BYTES = 12 * 1024 * 1024;
const TIMEOUT_MS = 240_000;
const STATE_TIMEOUT_MS = 60_000;
const FILLER_CHUNK_BYTES = 256 * 1024;

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch((error: unknown) => console.log(`cleanup failed: ${String(error)}`));
});

/** Mounts a tmpfs of TMPFS_BYTES, or says why it cannot (not root, no CAP_SYS_ADMIN). */
async function mountTmpfs(): Promise<{ dir: string } | { skip: string }> {
  if (process.getuid?.() !== 0) return { skip: 'not running as root: cannot mount a tmpfs' };
  const dir = await mkdtemp(join(tmpdir(), 'walcast-diskfull-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${TMPFS_BYTES},mode=0755`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    return { skip: `mount -t tmpfs failed (no CAP_SYS_ADMIN in this container?): ${String((error as { stderr?: Buffer }).stderr ?? error).trim()}` };
  }
  cleanups.push(async () => {
    execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
    await rm(dir, { recursive: true, force: true });
  });
  return { dir };
}

/** Writes a file until the tmpfs has no room left; returns its path. */
async function fillUp(dir: string): Promise<string> {
  const path = join(dir, 'filler');
  const handle = await open(path, 'w');
  const chunk = Buffer.alloc(FILLER_CHUNK_BYTES, 0x5a);
  try {
    for (;;) await handle.write(chunk);
  } catch (error) {
    assert.equal((error as NodeJS.ErrnoException).code, 'ENOSPC', 'the filler stops at a full disk');
  } finally {
    await handle.close();
  }
  return path;
}

async function getJson(api: HttpApi, path: string): Promise<Record<string, unknown>> {
  const address = api.address();
  const response = await fetch(`http://${address.host}:${address.port}${path}`);
  return (await response.json()) as Record<string, unknown>;
}

async function getText(api: HttpApi, path: string): Promise<string> {
  const address = api.address();
  return (await fetch(`http://${address.host}:${address.port}${path}`)).text();
}

async function primaryFlush(primary: PgCluster): Promise<Lsn> {
  return parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_flush_lsn()'));
}

/** Every stored byte in [from, to) equals the primary's WAL. */
async function assertStoredEqualsPrimary(timelineDir: string, primaryWalDir: string, from: Lsn, to: Lsn): Promise<number> {
  const names = await readdir(timelineDir);
  let compared = 0;
  for (let segno = from / BigInt(SEGMENT_BYTES); segno * BigInt(SEGMENT_BYTES) < to; segno++) {
    const plain = segmentFileName(1, segno, SEGMENT_BYTES);
    const name = names.find((candidate) => candidate === plain || candidate === `${plain}.partial`);
    assert.ok(name !== undefined, `segment ${plain} is stored`);
    const segmentStart = segno * BigInt(SEGMENT_BYTES);
    const validBytes = to - segmentStart >= BigInt(SEGMENT_BYTES) ? SEGMENT_BYTES : Number(to - segmentStart);
    const stored = (await readFile(join(timelineDir, name))).subarray(0, validBytes);
    const original = (await readFile(join(primaryWalDir, plain))).subarray(0, validBytes);
    assert.equal(firstDifference(stored, original), -1, `${name} equals the primary's`);
    compared += validBytes;
  }
  return compared;
}

describe('disk full under live ingest', { timeout: TIMEOUT_MS }, () => {
  test('ENOSPC pauses ingest, freeing the disk resumes it, and the stored WAL equals the primary', async (t) => {
    const mounted = await mountTmpfs();
    if ('skip' in mounted) {
      console.log(`disk-full test skipped: ${mounted.skip}`);
      t.skip(mounted.skip);
      return;
    }
    const primary = await startPrimary({ walSegmentMb: 1, extraConf: { wal_keep_size: '1GB' } });
    cleanups.push(() => primary.stop({ mode: 'immediate' }));
    await primary.pgbench(['-i', '-s', '1', '-q']);
    const created = await createFollowingTimeline({ dataDir: mounted.dir, upstream: `host=127.0.0.1 port=${primary.port} user=repl`, password: undefined, log: silentLogger() });
    const walcast: RunningWalcast = await startWalcast({ dataDir: mounted.dir });
    cleanups.push(() => walcast.stop());
    const metrics = createOperationsMetrics({ backend: 'ts', strategy: 'fs-net' });
    metrics.bindTimelines(walcast.server.timelines);
    const api = await startHttpApi({
      listen: { host: '127.0.0.1', port: 0 },
      authToken: undefined,
      metrics,
      log: silentLogger(),
      view: {
        timelines: walcast.server.timelines,
        io: { backend: 'ts', strategy: 'fs-net', reason: 'test' },
        startedAt: new Date(),
        listenAddresses: () => ({}),
        connectionCount: () => 0,
        upstreamStatus: () => walcast.server.ingest?.followers[0]?.status(),
      },
    });
    cleanups.push(() => api.close());
    const [timeline] = walcast.server.timelines.list() as [Timeline];
    const statusPath = `/v1/tenant/${created.tenantId}/timeline/${created.timelineId}`;
    const upstreamOf = async (): Promise<Record<string, unknown>> => (await getJson(api, statusPath)).upstream as Record<string, unknown>;
    await timeline.commitLsn.waitBeyond((await primaryFlush(primary)) - 1n, STATE_TIMEOUT_MS);

    for (const round of [1, 2]) {
      const fault = 'ENOSPC';
      const filler = await fillUp(mounted.dir);
      const load = primary.pgbench(['-t', '300', '-c', '2', '-n']);
      const paused = await waitFor(async () => {
        const upstream = await upstreamOf();
        return upstream.state === 'paused' ? upstream : undefined;
      }, STATE_TIMEOUT_MS);
      assert.match(String(paused.paused_reason), new RegExp(fault), `the API says why: ${String(paused.paused_reason)}`);
      const metricsText = await getText(api, '/metrics');
      assert.match(metricsText, new RegExp(`walcast_ingest_state\\{tenant_id="${created.tenantId}",timeline_id="${created.timelineId}",state="paused"\\} 1`));
      assert.match(metricsText, /walcast_ingest_state_changes_total\{[^}]*state="paused"\} [1-9]/);
      const document = await getJson(api, statusPath);
      const control = await readControlFile(timeline.dir);
      assert.equal(document.flush_lsn, formatLsn(control.flushLsn), 'the API reports the control file\'s flush LSN');
      assert.ok(!(await readdir(timeline.dir)).includes('walcast.control.tmp'), 'no temp file is left behind');
      await load;
      t.diagnostic(`round ${round}: paused (${String(paused.paused_reason)}) at durable ${String(document.flush_lsn)}, primary at ${formatLsn(await primaryFlush(primary))}`);
      await unlink(filler);
      const target = await primaryFlush(primary);
      await timeline.commitLsn.waitBeyond(target - 1n, STATE_TIMEOUT_MS);
      assert.ok(timeline.commitLsn.get() >= target, `ingest resumed by itself after round ${round} and caught up with the primary`);
      await waitFor(async () => ((await upstreamOf()).state === 'streaming' ? true : undefined), STATE_TIMEOUT_MS);
    }

    await walcast.stop();
    const control = await readControlFile(timeline.dir);
    const compared = await assertStoredEqualsPrimary(timeline.dir, primary.walDir, created.startLsn, control.flushLsn);
    t.diagnostic(`${compared} stored bytes equal the primary's up to ${formatLsn(control.flushLsn)}`);
    assert.ok(control.flushLsn >= (await primaryFlush(primary)) - BigInt(SEGMENT_BYTES), 'the control file caught up too');
    assert.ok(!(await readdir(timeline.dir)).includes('walcast.control.tmp'));
  });
});
