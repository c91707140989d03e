/**
 * Produces the benchmark's WAL once per run: a PostgreSQL 15 primary (the shared test fixture) runs
 * `pgbench -i -s SCALE` and switches to a new segment; `walcast import` copies that pg_wal into a walcast data
 * dir. Both servers then hold the same bytes [startLsn, endLsn): PostgreSQL in pg_wal, walcast in its timeline
 * dir. The primary keeps running, so its walsender can serve the same range and live-latency runs can commit.
 * Before pgbench runs, a pg_basebackup of the empty primary is taken and never started: each standby-replay run
 * (and the cascading standby of the live-latency reference) starts from a copy of it, so it must stream and
 * replay the whole pgbench range [standbyStartLsn, endLsn) from the server under test.
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseLsnOrThrow, type Lsn } from '../../src/lsn.js';
import { makeStandby, makeTempDir, startPrimary, type PgCluster, type StandbyBase } from '../../test/support/postgres.js';
import { spawnTracked } from './processes.js';
import { REPO_ROOT } from './tools.js';

const SEGMENT_NAME = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$/;
/** Spare walsender slots beyond the largest fan-out (the fixture's own tools, pg_receivewal, the probe). */
const SPARE_WAL_SENDERS = 10;

export interface PreparedWal {
  readonly primary: PgCluster;
  readonly dataDir: string;
  readonly timelineDir: string;
  readonly pgTimelineId: number;
  readonly segmentBytes: number;
  readonly startLsn: Lsn;
  readonly endLsn: Lsn;
  /** walcast's segment files for [startLsn, endLsn). */
  readonly walcastFiles: readonly string[];
  /** The primary's pg_wal files for [startLsn, endLsn). */
  readonly postgresFiles: readonly string[];
  readonly generateSeconds: number;
  readonly importSeconds: number;
  /** A base backup taken before the range was produced; never started, only copied (copyStandby). */
  readonly standbyTemplate: StandbyBase;
  /** The primary's insert position right after that backup: a standby streams at most [standbyStartLsn, endLsn). */
  readonly standbyStartLsn: Lsn;
}

/** PostgreSQL settings for the benchmark primary: room for every walsender, no WAL recycled, quiet logs. */
function benchmarkConf(maxReplicas: number): Record<string, string> {
  return {
    max_wal_senders: String(maxReplicas + SPARE_WAL_SENDERS),
    max_connections: '50',
    // Keep every segment of the run: PostgreSQL must be able to serve the whole range from its own pg_wal.
    wal_keep_size: '16GB',
    max_wal_size: '16GB',
    // 1,000 connections would otherwise write 1,000 log lines per run; logging is not what we measure.
    log_connections: 'off',
    log_replication_commands: 'off',
  };
}

/**
 * `extraConf` adds PostgreSQL settings (the TLS cost benchmark turns on ssl); `walSegmentMb` sets initdb's WAL
 * segment size (default 16; the remote catch-up smoke run uses 1 so a few MB are many segments).
 */
export async function prepareWal(options: { pgbenchScale: number; maxReplicas: number; extraConf?: Record<string, string>; walSegmentMb?: number }): Promise<PreparedWal> {
  const primary = await startPrimary({ extraConf: { ...benchmarkConf(options.maxReplicas), ...options.extraConf }, ...(options.walSegmentMb === undefined ? {} : { walSegmentMb: options.walSegmentMb }) });
  const standbyTemplate = await makeStandby(primary);
  const standbyStartLsn = parseLsnOrThrow(await primary.sql('SELECT pg_current_wal_insert_lsn()'));
  const generateStarted = performance.now();
  await primary.pgbench(['-i', '-s', String(options.pgbenchScale), '-q']);
  // The switch pads the last segment, so the range ends on a segment boundary both servers hold completely.
  await primary.sql('SELECT pg_switch_wal()');
  const generateSeconds = (performance.now() - generateStarted) / 1000;
  const segmentBytes = parseSegmentSize(await primary.sql('SHOW wal_segment_size'));
  const dataDir = await makeTempDir('walcast-bench-data');
  const importStarted = performance.now();
  const imported = await runImport(dataDir, primary.walDir);
  const importSeconds = (performance.now() - importStarted) / 1000;
  const timelineDir = join(dataDir, imported.tenant_id, imported.timeline_id);
  const startLsn = parseLsnOrThrow(imported.start_lsn);
  const endLsn = parseLsnOrThrow(imported.end_lsn);
  assert.ok(endLsn > startLsn, 'the import holds WAL');
  const pgTimelineId = 1;
  return {
    primary,
    dataDir,
    timelineDir,
    pgTimelineId,
    segmentBytes,
    startLsn,
    endLsn,
    walcastFiles: segmentFilesIn(timelineDir, startLsn, endLsn, segmentBytes),
    postgresFiles: segmentFilesIn(primary.walDir, startLsn, endLsn, segmentBytes),
    generateSeconds,
    importSeconds,
    standbyTemplate,
    standbyStartLsn,
  };
}

interface ImportJson {
  readonly tenant_id: string;
  readonly timeline_id: string;
  readonly start_lsn: string;
  readonly end_lsn: string;
}

async function runImport(dataDir: string, fromDir: string): Promise<ImportJson> {
  const child = spawnTracked(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'src/cli/main.ts'), 'import', '--data-dir', dataDir, '--from', fromDir, '--json'], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  child.child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  const code = await child.exited;
  if (code !== 0) throw new Error(`walcast import failed (${code}): ${child.stderr().trim()}`);
  return JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as ImportJson;
}

function parseSegmentSize(text: string): number {
  const match = /^(\d+)(MB|GB)$/.exec(text.trim());
  assert.ok(match !== null, `unexpected wal_segment_size "${text}"`);
  return Number(match[1]) * (match[2] === 'GB' ? 1024 ** 3 : 1024 ** 2);
}

/** Segment files of `dir` that hold part of [startLsn, endLsn), in LSN order. */
export function segmentFilesIn(dir: string, startLsn: Lsn, endLsn: Lsn, segmentBytes: number): string[] {
  const segmentsPerId = 0x1_0000_0000n / BigInt(segmentBytes);
  const first = startLsn / BigInt(segmentBytes);
  const last = (endLsn - 1n) / BigInt(segmentBytes);
  const files: { segno: bigint; path: string }[] = [];
  for (const name of readdirSync(dir)) {
    const match = SEGMENT_NAME.exec(name);
    if (match === null) continue;
    const segno = BigInt(`0x${match[2]}`) * segmentsPerId + BigInt(`0x${match[3]}`);
    if (segno >= first && segno <= last) files.push({ segno, path: join(dir, name) });
  }
  return files.sort((a, b) => (a.segno < b.segno ? -1 : 1)).map((file) => file.path);
}

/**
 * A fresh walcast data dir with one timeline that follows the primary live (`walcast timeline create
 * --upstream`); `walcast serve` on it ingests new WAL as the primary commits. One per walcast server, because a
 * timeline has one writer.
 */
export async function createFollowingDataDir(primary: PgCluster): Promise<string> {
  const dataDir = await makeTempDir('walcast-bench-live');
  const upstream = `host=127.0.0.1 port=${primary.port} user=repl application_name=walcast-bench-ingest`;
  const child = spawnTracked(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'src/cli/main.ts'), 'timeline', 'create', '--upstream', upstream, '--data-dir', dataDir, '--json'], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const code = await child.exited;
  if (code !== 0) throw new Error(`walcast timeline create failed (${code}): ${child.stderr().trim()}`);
  return dataDir;
}
