/** The slot file: round trip, corruption detected, atomic replace, and a SlotTable saving through it. */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { SLOT_FILE_NAME, decodeSlotFile, encodeSlotFile, readSlotFile, slotFileStore } from './slot-file.js';
import { SlotTable, type PersistedSlot } from './slot-table.js';

const slots: PersistedSlot[] = [
  { name: 'a', restartLsn: 0x1_0000_0028n, invalidated: false, invalidationReason: undefined, createdAt: '2026-01-01T00:00:00.000Z' },
  { name: 'b', restartLsn: undefined, invalidated: true, invalidationReason: 'too far behind', createdAt: '2026-01-01T00:00:00.000Z' },
];

test('encode/decode round trip; line 2 is the CRC-32C of line 1', () => {
  const bytes = encodeSlotFile(slots);
  assert.deepEqual(decodeSlotFile(bytes), slots);
  assert.match(bytes.toString(), /^\{.*"restartLsn":"1\/28".*\}\ncrc32c:[0-9a-f]{8}\n$/);
});

test('a flipped byte, a truncated file, a bad name or a duplicate is WALCAST_ERR_SLOT_FILE', () => {
  const bytes = encodeSlotFile(slots);
  const flipped = Buffer.from(bytes);
  flipped[10] = flipped[10]! ^ 1;
  for (const bad of [flipped, bytes.subarray(0, bytes.length - 3), Buffer.from('')]) {
    assert.throws(() => decodeSlotFile(bad), (error) => isWalcastError(error, 'WALCAST_ERR_SLOT_FILE'));
  }
  const duplicated = encodeSlotFile([{ ...slots[0]!, name: 'a' }, { ...slots[0]! }]);
  assert.throws(() => decodeSlotFile(duplicated), /appears twice/);
});

test('a SlotTable saves through the file; a missing file is no slots; reopening restores the slots', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'walcast-slot-file-'));
  try {
    assert.deepEqual(await readSlotFile(dir), []);
    const table = new SlotTable({ store: slotFileStore(dir), flushIntervalMs: 20 });
    await table.create('persistent', { temporary: false, restartLsn: 0x100n });
    await table.create('temporary', { temporary: true, connId: 1, restartLsn: 0x100n });
    table.advance('persistent', 0x200n);
    await table.close();
    const reopened = new SlotTable({ initial: await readSlotFile(dir) });
    assert.deepEqual(reopened.list().map((slot) => [slot.name, slot.restartLsn, slot.temporary]), [['persistent', 0x200n, false]]);
    await writeFile(join(dir, SLOT_FILE_NAME), (await readFile(join(dir, SLOT_FILE_NAME))).subarray(1));
    await assert.rejects(readSlotFile(dir), (error) => isWalcastError(error, 'WALCAST_ERR_SLOT_FILE'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
