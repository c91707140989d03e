/**
 * barman (Debian's package) as a real backup client of walcast's replication slots: `receive-wal --create-slot`
 * creates the slot on walcast, barman's streaming archiver (its pg_receivewal, `slot_name` set, `streaming_conninfo`
 * at walcast) archives segments byte-identical to the primary's, `barman check` is run, and `receive-wal
 * --drop-slot` drops the slot. barman runs as the unprivileged postgres OS user with its own configuration and home
 * in a temp dir; every barman command has a bounded run time.
 *
 * barman reads its `conninfo` server (a real PostgreSQL: SQL, which walcast does not serve) for everything that is
 * not streaming, including the "replication slot" line of `barman check`, which queries that server's
 * pg_replication_slots. With `conninfo` at the primary that line describes the primary, not walcast; the test
 * therefore checks the slot on walcast itself (active for barman's pg_receivewal, restart LSN advancing) and records
 * what barman's line says.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, writeFile, chown } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { parseLsnOrThrow } from '../src/lsn.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { firstDifference, makeTempDir, PG_BIN_DIR, startPrimary, type PgCluster } from './support/postgres.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const BARMAN = '/usr/bin/barman';
const SEGMENT_BYTES = 1024 * 1024;
const TEST_TIMEOUT_MS = 300_000;
/** One barman command (not receive-wal itself) must finish within this. */
const BARMAN_COMMAND_TIMEOUT_MS = 60_000;
const ARCHIVE_TIMEOUT_MS = 120_000;
const OUTPUT_BYTES_MAX = 256 * 1024;
const SERVER = 'pg';
const SLOT = 'barman_slot';

let primary: PgCluster;
let walcast: RunningWalcast;
let home: string;
let configFile: string;
let runAs: { uid: number; gid: number };
let receiver: ChildProcess | undefined;

before(async () => {
  assert.ok(existsSync(BARMAN), 'barman is installed (scripts/install-system-deps.sh installs it)');
  runAs = { uid: Number(execFileSync('id', ['-u', 'postgres']).toString()), gid: Number(execFileSync('id', ['-g', 'postgres']).toString()) };
  primary = await startPrimary({ walSegmentMb: 1, extraConf: { wal_keep_size: '1GB' } });
  const dataDir = await makeTempDir('walcast-barman');
  await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1 port=${primary.port} user=repl`, password: undefined, log: silentLogger() });
  walcast = await startWalcast({ dataDir });
  home = await makeTempDir('barman-home');
  configFile = join(home, 'barman.conf');
  await writeFile(configFile, barmanConfig());
  await mkdir(join(home, 'conf.d'));
  await chown(configFile, runAs.uid, runAs.gid);
  await chown(join(home, 'conf.d'), runAs.uid, runAs.gid);
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  if (receiver !== undefined && receiver.exitCode === null) receiver.kill('SIGKILL');
  await walcast?.stop();
  await primary?.stop({ mode: 'immediate' });
});

function barmanConfig(): string {
  return [
    '[barman]',
    'barman_user = postgres',
    `barman_home = ${home}`,
    `configuration_files_directory = ${join(home, 'conf.d')}`,
    `log_file = ${join(home, 'barman.log')}`,
    'log_level = DEBUG',
    '',
    `[${SERVER}]`,
    'description = walcast slot test',
    `conninfo = host=127.0.0.1 port=${primary.port} user=postgres dbname=postgres`,
    `streaming_conninfo = host=127.0.0.1 port=${walcast.port} user=repl`,
    'backup_method = postgres',
    'streaming_archiver = on',
    `slot_name = ${SLOT}`,
    // barman's own sanity check looks for the slot on the conninfo server (the primary), where it is not; "auto"
    // makes it (re)create the slot through the streaming connection, i.e. on walcast, instead of refusing.
    'create_slot = auto',
    'archiver = off',
    `path_prefix = ${PG_BIN_DIR}`,
    '',
  ].join('\n');
}

interface Run {
  readonly code: number | null;
  readonly output: string;
}

/** Runs `barman -c CONFIG ARGS` as the postgres user, killed after BARMAN_COMMAND_TIMEOUT_MS. */
function barman(args: readonly string[]): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawnBarman(args);
    let output = '';
    const collect = (chunk: Buffer): void => {
      if (output.length < OUTPUT_BYTES_MAX) output += chunk.toString();
    };
    child.stdout?.on('data', collect);
    child.stderr?.on('data', collect);
    const timer = setTimeout(() => child.kill('SIGKILL'), BARMAN_COMMAND_TIMEOUT_MS);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

function spawnBarman(args: readonly string[]): ChildProcess {
  return spawn(BARMAN, ['-c', configFile, ...args], { cwd: home, uid: runAs.uid, gid: runAs.gid, env: { ...process.env, HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] });
}

function timeline(): Timeline {
  const [only] = walcast.server.timelines.list();
  assert.ok(only !== undefined);
  return only;
}

describe('barman streaming archiver through walcast slots', { timeout: TEST_TIMEOUT_MS }, () => {
  test('receive-wal --create-slot creates the slot on walcast; a second create says it exists', async () => {
    const created = await barman(['receive-wal', '--create-slot', SERVER]);
    assert.equal(created.code, 0, created.output);
    assert.match(created.output, new RegExp(`Replication slot '${SLOT}' created`));
    const slot = timeline().slots.get(SLOT);
    assert.ok(slot !== undefined && !slot.temporary && slot.restartLsn === undefined);
    const again = await barman(['receive-wal', '--create-slot', SERVER]);
    assert.match(again.output, /already exists/);
  });

  test('the streaming archiver archives segments byte-identical to the primary; check sees receive-wal and streaming OK', async (t) => {
    receiver = spawnBarman(['receive-wal', SERVER]);
    let receiverOutput = '';
    receiver.stdout?.on('data', (chunk: Buffer) => (receiverOutput = (receiverOutput + chunk.toString()).slice(-OUTPUT_BYTES_MAX)));
    receiver.stderr?.on('data', (chunk: Buffer) => (receiverOutput = (receiverOutput + chunk.toString()).slice(-OUTPUT_BYTES_MAX)));
    await waitFor(async () => (timeline().slots.get(SLOT)?.activeConnId !== undefined ? true : undefined), ARCHIVE_TIMEOUT_MS, { what: `barman's pg_receivewal acquired the slot; output: ${receiverOutput}` });
    await primary.sql('CREATE TABLE barman_rows AS SELECT g AS id, repeat(md5(g::text), 32) AS filler FROM generate_series(1, 4000) g');
    const switched = parseLsnOrThrow(await primary.sql('SELECT pg_switch_wal()'));
    const wanted = switched / BigInt(SEGMENT_BYTES) - 1n;
    await waitFor(async () => (timeline().slots.get(SLOT)?.restartLsn ?? 0n) >= wanted * BigInt(SEGMENT_BYTES) ? true : undefined, ARCHIVE_TIMEOUT_MS, { what: 'the slot follows barman' });
    const archived = await waitFor(async () => {
      const run = await barman(['archive-wal', SERVER]);
      assert.equal(run.code, 0, run.output);
      const segments = await archivedSegments();
      return segments.length >= 3 ? segments : undefined;
    }, ARCHIVE_TIMEOUT_MS, { what: 'segments archived by barman' });
    for (const segment of archived) {
      const original = await readFile(join(primary.walDir, segment.name));
      const copy = await readFile(segment.path);
      assert.equal(firstDifference(copy, original), -1, `${segment.name} archived by barman differs from the primary's`);
    }
    const check = await barman(['check', SERVER]);
    for (const line of ['PostgreSQL streaming: OK', 'receive-wal running: OK', 'pg_receivexlog: OK', 'pg_receivexlog compatible: OK']) {
      assert.ok(check.output.includes(line), `barman check lacks "${line}":\n${check.output}`);
    }
    const slotLine = check.output.split('\n').find((line) => line.includes('replication slot:')) ?? '(none)';
    t.diagnostic(`${archived.length} segments archived byte-identical; barman check's slot line (about the conninfo server): ${slotLine.trim()}`);
  });

  test('receive-wal --stop, then --drop-slot drops the slot on walcast', async () => {
    const stopped = await barman(['receive-wal', '--stop', SERVER]);
    assert.equal(stopped.code, 0, stopped.output);
    await waitFor(async () => (timeline().slots.get(SLOT)?.activeConnId === undefined ? true : undefined), ARCHIVE_TIMEOUT_MS, { what: 'slot released' });
    const dropped = await barman(['receive-wal', '--drop-slot', SERVER]);
    assert.equal(dropped.code, 0, dropped.output);
    assert.match(dropped.output, new RegExp(`Replication slot '${SLOT}' dropped`));
    assert.equal(timeline().slots.get(SLOT), undefined);
  });
});

async function archivedSegments(): Promise<Array<{ name: string; path: string }>> {
  const walsDir = join(home, SERVER, 'wals');
  if (!existsSync(walsDir)) return [];
  const found: Array<{ name: string; path: string }> = [];
  for (const prefix of await readdir(walsDir)) {
    if (!/^[0-9A-F]{16}$/.test(prefix)) continue;
    for (const name of await readdir(join(walsDir, prefix))) if (/^[0-9A-F]{24}$/.test(name)) found.push({ name, path: join(walsDir, prefix, name) });
  }
  return found.sort((a, b) => a.name.localeCompare(b.name));
}
