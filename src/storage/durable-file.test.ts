/** replaceFileDurably: the new bytes replace the old at once, and a failure leaves the old file and no temp file. */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { replaceFileDurably } from './durable-file.js';

test('replaces the file with exactly the new bytes and leaves no temp file', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'walcast-durable-'));
  try {
    await writeFile(join(dir, 'meta'), 'old');
    await replaceFileDurably(dir, 'meta', Buffer.from('new'), { tempName: 'meta.tmp' });
    assert.equal(await readFile(join(dir, 'meta'), 'utf8'), 'new');
    assert.deepEqual(await readdir(dir), ['meta']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a failure before the rename keeps the old file and removes the temp file', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'walcast-durable-'));
  try {
    await writeFile(join(dir, 'meta'), 'old');
    const failing = replaceFileDurably(dir, 'meta', Buffer.from('new'), {
      tempName: 'meta.tmp',
      beforeRename: () => {
        throw new Error('injected');
      },
    });
    await assert.rejects(failing, /injected/);
    assert.equal(await readFile(join(dir, 'meta'), 'utf8'), 'old');
    assert.deepEqual(await readdir(dir), ['meta']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
