/** The slot table: PostgreSQL's name rules and errors, acquisition, monotonic restart LSNs, batched saves. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { SLOT_NAME_BYTES_MAX, SlotTable, slotWalStatus, type PersistedSlot, type SlotStore } from './slot-table.js';

class RecordingStore implements SlotStore {
  readonly saves: PersistedSlot[][] = [];
  async save(slots: readonly PersistedSlot[]): Promise<void> {
    this.saves.push([...slots]);
  }
}

test('names follow PostgreSQL: too long is 42622, bad characters and empty are 42602, duplicates 42710', async () => {
  const table = new SlotTable();
  await assert.rejects(table.create('x'.repeat(SLOT_NAME_BYTES_MAX + 1), { temporary: false }), (error) => isWalcastError(error, 'WALCAST_ERR_SLOT_NAME_TOO_LONG') && error.sqlState === '42622');
  await table.create('x'.repeat(SLOT_NAME_BYTES_MAX), { temporary: false });
  for (const bad of ['Upper', 'has-dash', 'sp ace', '']) {
    await assert.rejects(table.create(bad, { temporary: false }), (error) => isWalcastError(error, 'WALCAST_ERR_SLOT_NAME_INVALID') && error.sqlState === '42602');
  }
  await table.create('s1', { temporary: false });
  await assert.rejects(table.create('s1', { temporary: true, connId: 3 }), (error) => isWalcastError(error, 'WALCAST_ERR_SLOT_EXISTS') && error.message === 'replication slot "s1" already exists');
});

test('acquire: unknown is 42704, held by another connection is 55006; release frees it', async () => {
  const table = new SlotTable();
  assert.throws(() => table.acquire('nope', 1), (error) => isWalcastError(error, 'WALCAST_ERR_SLOT_UNKNOWN') && error.sqlState === '42704');
  await table.create('s', { temporary: false });
  const lease = table.acquire('s', 1);
  assert.equal(table.get('s')?.activeConnId, 1);
  assert.throws(() => table.acquire('s', 2), (error) => isWalcastError(error, 'WALCAST_ERR_SLOT_ACTIVE') && error.message === 'replication slot "s" is active for PID 1');
  await assert.rejects(table.drop('s', { connId: 2 }), (error) => isWalcastError(error, 'WALCAST_ERR_SLOT_ACTIVE'));
  lease.release();
  assert.equal(table.get('s')?.activeConnId, undefined);
  table.acquire('s', 2).release();
});

test('DROP ... WAIT waits for the holder to release', async () => {
  const table = new SlotTable();
  await table.create('s', { temporary: false });
  const lease = table.acquire('s', 1);
  const dropped = table.drop('s', { connId: 2, wait: true });
  setTimeout(() => lease.release(), 150);
  await dropped;
  assert.equal(table.get('s'), undefined);
});

test('restart LSN only moves forward; an invalidated slot holds nothing and does not advance', async () => {
  const table = new SlotTable();
  await table.create('s', { temporary: false });
  assert.deepEqual(table.holds(), [{ name: 's', restartLsn: undefined, invalidated: false }]);
  assert.ok(table.advance('s', 100n));
  assert.ok(!table.advance('s', 50n));
  assert.equal(table.get('s')?.restartLsn, 100n);
  table.invalidate('s', 'behind max-slot-wal-keep-size');
  assert.ok(!table.advance('s', 200n));
  assert.deepEqual(table.holds(), [{ name: 's', restartLsn: undefined, invalidated: true }]);
  assert.equal(slotWalStatus(table.holds()[0]!, 1000n), 'lost');
});

test('temporary slots stay with their connection and vanish when it ends; they are never saved', async () => {
  const store = new RecordingStore();
  const table = new SlotTable({ store });
  await table.create('t', { temporary: true, connId: 7 });
  await table.create('p', { temporary: false });
  assert.equal(table.get('t')?.activeConnId, 7);
  assert.throws(() => table.acquire('t', 8), (error) => isWalcastError(error, 'WALCAST_ERR_SLOT_ACTIVE'));
  table.acquire('t', 7).release();
  assert.equal(table.get('t')?.activeConnId, 7, 'release keeps a temporary slot with its connection');
  table.acquire('p', 7);
  table.endConnection(7);
  assert.equal(table.get('t'), undefined);
  assert.equal(table.get('p')?.activeConnId, undefined);
  assert.ok(store.saves.every((saved) => saved.every((slot) => slot.name !== 't')));
});

test('create and drop save at once; advances are batched into one save per interval', async () => {
  const store = new RecordingStore();
  const table = new SlotTable({ store, flushIntervalMs: 50 });
  await table.create('s', { temporary: false });
  assert.equal(store.saves.length, 1);
  for (let lsn = 1n; lsn <= 1000n; lsn++) table.advance('s', lsn);
  assert.equal(store.saves.length, 1, 'advances alone do not save');
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(store.saves.length, 2, 'one save for a thousand advances');
  assert.equal(store.saves[1]?.[0]?.restartLsn, 1000n);
  table.advance('s', 2000n);
  await table.close();
  assert.equal(store.saves.at(-1)?.[0]?.restartLsn, 2000n, 'close saves what is dirty');
});

test('wal_status: NULL without a restart LSN, reserved, extended past the floor, unreserved past the cap', () => {
  const hold = (restartLsn: bigint | undefined) => ({ name: 's', restartLsn, invalidated: false });
  assert.equal(slotWalStatus(hold(undefined), 100n), undefined);
  assert.equal(slotWalStatus(hold(90n), 100n, { walKeepBytes: 20n }), 'reserved');
  assert.equal(slotWalStatus(hold(50n), 100n, { walKeepBytes: 20n }), 'extended');
  assert.equal(slotWalStatus(hold(50n), 100n, { walKeepBytes: 20n, maxSlotWalKeepBytes: 40n }), 'unreserved');
});
