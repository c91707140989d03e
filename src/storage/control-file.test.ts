/** Control file: round trip, atomic replace, and corruption detection. */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { parseLsnOrThrow } from '../lsn.js';
import { crc32c } from './crc32c.js';
import { CONTROL_FILE_NAME, CONTROL_TEMP_NAME, decodeControlFile, encodeControlFile, readControlFile, removeStaleControlTemp, writeControlFile, type ControlState } from './control-file.js';

const state: ControlState = {
  formatVersion: 1,
  tenantId: 'a'.repeat(32),
  timelineId: '0123456789abcdef0123456789abcdef',
  systemId: 18446744073709551615n,
  pgVersion: 150000,
  segmentBytes: 16 * 1024 * 1024,
  pgTimelineId: 1,
  timelineStartLsn: parseLsnOrThrow('0/49000000'),
  flushLsn: parseLsnOrThrow('0/49006040'),
  commitLsn: parseLsnOrThrow('0/49006040'),
  lastRecordLsn: parseLsnOrThrow('0/49006000'),
  upstream: 'host=127.0.0.1 port=5432',
  createdAt: '2026-11-25T08:00:00.000Z',
};

const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'walcast-control-'));
  dirs.push(dir);
  return dir;
}

function isControlError(error: unknown): boolean {
  return isWalcastError(error, 'WALCAST_ERR_CONTROL_FILE');
}

test('write then read gives the same state (64-bit system id intact); the temp file is gone', async () => {
  const dir = await tempDir();
  await writeControlFile(dir, state);
  assert.deepEqual(await readControlFile(dir), state);
  assert.deepEqual(await readdir(dir), [CONTROL_FILE_NAME]);
  const updated = { ...state, flushLsn: parseLsnOrThrow('0/4A000000'), commitLsn: parseLsnOrThrow('0/4A000000') };
  await writeControlFile(dir, updated);
  assert.deepEqual(await readControlFile(dir), updated);
});

test('optional fields may be absent', () => {
  const minimal: ControlState = { ...state, lastRecordLsn: undefined, upstream: undefined };
  assert.deepEqual(decodeControlFile(encodeControlFile(minimal)), minimal);
});

test('any flipped byte is detected', () => {
  const bytes = encodeControlFile(state);
  for (let index = 0; index < bytes.length; index++) {
    const damaged = Buffer.from(bytes);
    damaged[index] = (damaged[index] ?? 0) ^ 0x01;
    assert.throws(() => decodeControlFile(damaged), isControlError, `byte ${index}`);
  }
});

test('truncation, garbage and a missing file are WALCAST_ERR_CONTROL_FILE', async () => {
  const bytes = encodeControlFile(state);
  assert.throws(() => decodeControlFile(bytes.subarray(0, bytes.length - 5)), isControlError);
  assert.throws(() => decodeControlFile(Buffer.from('{}\n')), isControlError);
  assert.throws(() => decodeControlFile(Buffer.alloc(0)), isControlError);
  const dir = await tempDir();
  await assert.rejects(readControlFile(dir), isControlError);
  await writeFile(join(dir, CONTROL_FILE_NAME), 'not a control file');
  await assert.rejects(readControlFile(dir), isControlError);
});

test('a well-checksummed but inconsistent body is refused', () => {
  const forge = (body: Record<string, unknown>): Buffer => {
    const good = encodeControlFile(state).toString('utf8').split('\n')[0] ?? '';
    const json = JSON.stringify({ ...JSON.parse(good), ...body });
    return Buffer.from(`${json}\ncrc32c:${crc32c(Buffer.from(json)).toString(16).padStart(8, '0')}\n`);
  };
  assert.doesNotThrow(() => decodeControlFile(forge({})));
  assert.throws(() => decodeControlFile(forge({ commitLsn: '0/4A000000' })), /commitLsn is past flushLsn/);
  assert.throws(() => decodeControlFile(forge({ segmentBytes: 12345 })), /segment size/);
  assert.throws(() => decodeControlFile(forge({ formatVersion: 2 })), /unsupported format version/);
  assert.throws(() => decodeControlFile(forge({ tenantId: 'XYZ' })), /tenantId/);
  assert.throws(() => decodeControlFile(forge({ systemId: 42 })), /systemId/);
  assert.throws(() => decodeControlFile(forge({ flushLsn: 'nope' })), /flushLsn/);
  assert.throws(() => decodeControlFile(forge({ backupLsn: '0/49000001' })), /backupLsn is not a segment start/);
  assert.throws(() => decodeControlFile(forge({ backupLsn: 7 })), /backupLsn/);
});

test('the offload backup LSN round-trips when present and is absent from files written without it', () => {
  const offloaded: ControlState = { ...state, backupLsn: parseLsnOrThrow('0/49000000') };
  assert.deepEqual(decodeControlFile(encodeControlFile(offloaded)), offloaded);
  assert.ok(!encodeControlFile(state).toString('utf8').includes('backupLsn'), 'older readers see the same bytes as before');
});

test('a failed update leaves no temp file and the old control file in place', async () => {
  const dir = await tempDir();
  // A directory where the control file belongs makes the rename fail after the temp file was written and synced.
  await mkdir(join(dir, CONTROL_FILE_NAME));
  await assert.rejects(writeControlFile(dir, state), (error: NodeJS.ErrnoException) => error.code === 'EISDIR');
  assert.deepEqual(await readdir(dir), [CONTROL_FILE_NAME]);
});

test('a temp file left by a crash is removed at open, and only then', async () => {
  const dir = await tempDir();
  await writeControlFile(dir, state);
  assert.equal(await removeStaleControlTemp(dir), false);
  await writeFile(join(dir, CONTROL_TEMP_NAME), '');
  assert.equal(await removeStaleControlTemp(dir), true);
  assert.deepEqual(await readdir(dir), [CONTROL_FILE_NAME]);
  assert.deepEqual(await readControlFile(dir), state);
});
