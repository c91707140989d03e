/** Reading timeline history files: the content as stored, and WALCAST_ERR_WAL_REMOVED for one not held. */
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { readTimelineHistory } from './timeline-history.js';

const dir = mkdtempSync(join(tmpdir(), 'walcast-history-'));
const content = '1\t0/3000000\tno recovery target specified\n';
writeFileSync(join(dir, '0000001A.history'), content);

test('reads a held history file by PostgreSQL timeline id, named as PostgreSQL names it', async () => {
  assert.deepEqual(await readTimelineHistory(dir, 0x1a), { fileName: '0000001A.history', content });
});

test('a history file that is not held is WALCAST_ERR_WAL_REMOVED with PostgreSQL\'s message', async () => {
  await assert.rejects(readTimelineHistory(dir, 2), (error) => {
    assert.ok(isWalcastError(error, 'WALCAST_ERR_WAL_REMOVED'));
    assert.equal(error.message, 'could not open file "00000002.history": no such file or directory');
    return true;
  });
});
