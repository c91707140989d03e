/** Timeline directory layout: ids, listing timelines and segment files. */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { CONTROL_FILE_NAME } from './control-file.js';
import { assertValidId, isValidId, listHistoryFiles, listSegmentFiles, listTimelineDirs, newId, timelineDirPath } from './timeline-dir.js';

const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

test('ids are 32 lower-case hex; new ones are random', () => {
  const id = newId();
  assert.ok(isValidId(id));
  assert.notEqual(newId(), id);
  assert.equal(isValidId('A'.repeat(32)), false);
  assert.equal(isValidId('a'.repeat(31)), false);
  assert.throws(() => assertValidId('abc', 'tenant id'), (error) => isWalcastError(error, 'WALCAST_ERR_CONFIG'));
});

test('listTimelineDirs finds timelines with a control file and ignores build directories and strays', async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'walcast-layout-'));
  dirs.push(dataDir);
  const tenant = newId();
  const timeline = newId();
  await mkdir(timelineDirPath(dataDir, tenant, timeline), { recursive: true });
  await writeFile(join(timelineDirPath(dataDir, tenant, timeline), CONTROL_FILE_NAME), 'x');
  await mkdir(join(dataDir, tenant, `.import-${newId()}-1`), { recursive: true });
  await mkdir(join(dataDir, tenant, newId()), { recursive: true });
  await mkdir(join(dataDir, 'not-a-tenant'), { recursive: true });
  assert.deepEqual(await listTimelineDirs(dataDir), [{ tenantId: tenant, timelineId: timeline, dir: timelineDirPath(dataDir, tenant, timeline) }]);
  assert.deepEqual(await listTimelineDirs(join(dataDir, 'missing')), []);
});

test('listSegmentFiles sorts by timeline and segment, and a complete file beats its .partial', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'walcast-segments-'));
  dirs.push(dir);
  for (const name of ['000000010000000000000003', '000000010000000000000002.partial', '000000010000000000000002', '000000020000000000000001.partial', '00000002.history', 'junk']) {
    await writeFile(join(dir, name), '');
  }
  const files = await listSegmentFiles(dir, 16 * 1024 * 1024);
  assert.deepEqual(files.map((file) => [file.name, file.segno, file.partial]), [
    ['000000010000000000000002', 2n, false],
    ['000000010000000000000003', 3n, false],
    ['000000020000000000000001.partial', 1n, true],
  ]);
  assert.deepEqual((await listHistoryFiles(dir)).map((file) => file.pgTimelineId), [2]);
});
