/**
 * The files of a timeline removal: the durable marker, the rename out of the id namespace, and the start-up sweep
 * of `.removing-*` directories a crash left (and nothing else).
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { REMOVE_MARKER_FILE_NAME, hasRemovalMarker, retireTimelineDir, sweepRetiredTimelineDirs, writeRemovalMarker } from './timeline-removal-files.js';

const TENANT = 'ab'.repeat(16);
const TIMELINE = 'cd'.repeat(16);

test('the marker is written whole (no temp file left) and found', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'walcast-marker-'));
  assert.equal(await hasRemovalMarker(dir), false);
  await writeRemovalMarker(dir, { requestedAt: new Date('2026-12-06T10:00:00Z'), requestedBy: 'test' });
  assert.equal(await hasRemovalMarker(dir), true);
  assert.deepEqual(JSON.parse(await readFile(join(dir, REMOVE_MARKER_FILE_NAME), 'utf8')), { requested_at: '2026-12-06T10:00:00.000Z', requested_by: 'test' });
  assert.deepEqual(await readdir(dir), [REMOVE_MARKER_FILE_NAME]);
  assert.equal(await hasRemovalMarker(join(dir, 'missing')), false);
});

test('retiring renames the directory out of the id namespace; the sweep deletes only .removing-* directories', async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'walcast-retire-'));
  const timelineDir = join(dataDir, TENANT, TIMELINE);
  await mkdir(join(timelineDir, 'nested'), { recursive: true });
  await writeFile(join(timelineDir, 'nested', 'segment'), Buffer.alloc(128));
  const keptDir = join(dataDir, TENANT, 'ef'.repeat(16));
  await mkdir(keptDir);
  await writeFile(join(dataDir, TENANT, '.removing-not-a-dir'), 'a file with the prefix is not swept');

  const retired = await retireTimelineDir(timelineDir, new Date(1234));
  assert.equal(retired, join(dataDir, TENANT, `.removing-${TIMELINE}-1234`));
  assert.deepEqual((await readdir(join(dataDir, TENANT))).sort(), [`.removing-${TIMELINE}-1234`, '.removing-not-a-dir', 'ef'.repeat(16)]);

  assert.deepEqual(await sweepRetiredTimelineDirs(dataDir), [retired]);
  assert.deepEqual((await readdir(join(dataDir, TENANT))).sort(), ['.removing-not-a-dir', 'ef'.repeat(16)]);
  assert.deepEqual(await sweepRetiredTimelineDirs(dataDir), []);
  assert.deepEqual(await sweepRetiredTimelineDirs(join(dataDir, 'missing')), [], 'a missing data directory holds nothing to sweep');
});
