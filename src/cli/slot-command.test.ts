/**
 * `walcast slot` without PostgreSQL: on the files when no server runs (or a dead PID is recorded), and through the
 * HTTP API when walcast.server.json names a live server; the server-state file's rules.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { startHttpApi, type HttpApi } from '../api/http-server.js';
import { createOperationsMetrics } from '../api/metrics.js';
import { formatListenAddress } from '../config/listen-address.js';
import { silentLogger } from '../log.js';
import { CONTROL_FORMAT_VERSION, PG_VERSION_NUM_15, writeControlFile } from '../storage/control-file.js';
import { readSlotFile } from '../slots/slot-file.js';
import { openTimelines } from '../timeline/open-timelines.js';
import { SERVER_STATE_FILE_NAME, readLiveServerState, removeServerState, writeServerState } from './server-state.js';
import { runSlot } from './slot-command.js';

const TENANT = 'aa'.repeat(16);
const TIMELINE = 'bb'.repeat(16);
let dataDir: string;
let timelineDir: string;

before(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'walcast-slot-cli-'));
  timelineDir = join(dataDir, TENANT, TIMELINE);
  await mkdir(timelineDir, { recursive: true });
  await writeControlFile(timelineDir, {
    formatVersion: CONTROL_FORMAT_VERSION,
    tenantId: TENANT,
    timelineId: TIMELINE,
    systemId: 7n,
    pgVersion: PG_VERSION_NUM_15,
    segmentBytes: 16 * 1024 * 1024,
    pgTimelineId: 1,
    timelineStartLsn: 0x1000000n,
    flushLsn: 0x1000100n,
    commitLsn: 0x1000100n,
    createdAt: new Date().toISOString(),
  });
});

after(async () => {
  await rm(dataDir, { recursive: true, force: true });
});

/** Runs the command and returns what it printed. */
async function slot(action: 'list' | 'create' | 'drop', name: string | undefined, flags: Record<string, unknown> = {}): Promise<string> {
  const write = process.stdout.write.bind(process.stdout);
  let printed = '';
  process.stdout.write = ((chunk: string | Uint8Array) => {
    printed += chunk.toString();
    return true;
  }) as typeof process.stdout.write;
  try {
    await runSlot(action, name, { dataDir, ...flags });
  } finally {
    process.stdout.write = write;
  }
  return printed;
}

test('without a running server the command edits walcast.slots; a dead recorded PID counts as none', async () => {
  // PID 2^22 + 1 is above Linux's pid_max default, so no process has it.
  await writeServerState(dataDir, { pid: 4_194_305, http: '127.0.0.1:1' });
  assert.equal(await readLiveServerState(dataDir), undefined);
  const created = JSON.parse(await slot('create', 'offline', { reserveWal: true })) as Record<string, unknown>;
  assert.deepEqual([created.slot_name, created.restart_lsn, created.retained_bytes], ['offline', '0/1000100', 0]);
  assert.deepEqual((await readSlotFile(timelineDir)).map((each) => each.name), ['offline']);
  const table = await slot('list', undefined);
  assert.match(table, /^slot_name\s+temporary\s+active/);
  assert.match(table, /offline\s+false\s+false\s+0\/1000100\s+0\s+reserved/);
  await assert.rejects(slot('create', 'offline'), /already exists/);
  await assert.rejects(slot('list', undefined, { tenantId: 'cc'.repeat(16) }), /no timeline/);
  assert.deepEqual(JSON.parse(await slot('drop', 'offline')), { slot_name: 'offline', dropped: true });
  await assert.rejects(slot('drop', undefined), /slot name is required/);
  assert.deepEqual(await readSlotFile(timelineDir), []);
  await removeServerState(dataDir);
});

test('with a live server recorded, the command goes through its HTTP API, and says so when it has none', async () => {
  const timelines = await openTimelines(dataDir, silentLogger());
  const [timeline] = timelines.list();
  assert.ok(timeline !== undefined);
  const api: HttpApi = await startHttpApi({
    listen: { host: '127.0.0.1', port: 0 },
    authToken: undefined,
    view: { timelines, io: { backend: 'ts', strategy: 'fs-net', reason: 'test' }, startedAt: new Date(), listenAddresses: () => ({}), connectionCount: () => 0 },
    metrics: createOperationsMetrics({ backend: 'ts', strategy: 'fs-net' }),
    log: silentLogger(),
  });
  try {
    await writeServerState(dataDir, { pid: process.pid, http: formatListenAddress(api.address()) });
    assert.equal((await readLiveServerState(dataDir))?.pid, process.pid);
    assert.equal(JSON.parse(await slot('create', 'online', { json: true })).slot_name, 'online');
    assert.ok(timeline.slots.get('online') !== undefined, 'created in the server, not behind its back');
    assert.match(await slot('list', undefined, { tenantId: TENANT, timelineId: TIMELINE, json: true }), /"slot_name":"online"/);
    timeline.slots.acquire('online', 9);
    await assert.rejects(slot('drop', 'online'), /HTTP 409: WALCAST_ERR_SLOT_ACTIVE/);
    timeline.slots.release('online', 9);
    await slot('drop', 'online');
    assert.equal(timeline.slots.get('online'), undefined);
    await writeServerState(dataDir, { pid: process.pid, http: null });
    await assert.rejects(slot('list', undefined), /without an HTTP API/);
  } finally {
    await api.close();
    await Promise.all(timelines.list().map((each) => each.slots.close()));
    await removeServerState(dataDir);
  }
});

test('a malformed or oversized server-state file is no server', async () => {
  for (const text of ['not json', JSON.stringify({ pid: -1 }), 'x'.repeat(5000)]) {
    await writeFile(join(dataDir, SERVER_STATE_FILE_NAME), text);
    assert.equal(await readLiveServerState(dataDir), undefined);
  }
  await removeServerState(dataDir);
});
