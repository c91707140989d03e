/**
 * One timeline's replication slots, as PostgreSQL's physical slots (src/backend/replication/slot.c): their names,
 * restart LSNs (the WAL each one holds), which connection has each acquired, and which were invalidated.
 *
 * Persistent slots are saved through a `SlotStore` (slot-file.ts writes DIR/walcast.slots): creation, drop and
 * invalidation are saved at once; restart-LSN advances from replica feedback only mark the table dirty, and dirty
 * tables are saved at most once per SLOT_FLUSH_INTERVAL_MS, so feedback from a thousand replicas costs one fsync a
 * second per timeline, not a thousand. A crash loses at most that interval of advances, which leaves the saved
 * restart LSN behind what the replica confirmed, never ahead (PostgreSQL likewise saves physical slots' advances
 * only at checkpoints). Temporary slots are never saved and are dropped when their connection ends.
 *
 * The table knows no sockets or files: callers pass connection ids, the store does the I/O.
 */
import assert from 'node:assert/strict';
import { WalcastError } from '../errors.js';
import { assertLsn, type Lsn } from '../lsn.js';

export type SlotWalStatus = 'reserved' | 'extended' | 'unreserved' | 'lost';

/** What retention needs of a slot: the WAL it holds. */
export interface SlotHold {
  readonly name: string;
  readonly restartLsn: Lsn | undefined;
  readonly invalidated: boolean;
}

/** The persisted part of a slot. */
export interface PersistedSlot {
  readonly name: string;
  readonly restartLsn: Lsn | undefined;
  readonly invalidated: boolean;
  readonly invalidationReason: string | undefined;
  /** ISO 8601. */
  readonly createdAt: string;
}

export interface SlotSnapshot extends PersistedSlot {
  readonly temporary: boolean;
  /** The connection (walcast's backend pid) that has the slot acquired, if any. */
  readonly activeConnId: number | undefined;
}

/** Saves the persistent slots; each call replaces what the previous one saved. */
export interface SlotStore {
  save(slots: readonly PersistedSlot[]): Promise<void>;
}

/** NAMEDATALEN - 1: PostgreSQL's longest slot name in bytes (slot.c ReplicationSlotValidateName). */
export const SLOT_NAME_BYTES_MAX = 63;
/**
 * Slots per timeline. PostgreSQL's max_replication_slots defaults to 10; walcast serves up to thousands of
 * replicas per timeline and each may hold a slot, so the bound is generous but still bounds the slot file
 * (about 150 bytes a slot) and the per-feedback work.
 */
export const SLOTS_PER_TIMELINE_MAX = 10_000;
/**
 * Dirty slots are saved at most this often per timeline. One second bounds both the fsync rate under feedback
 * from any number of replicas and how far a saved restart LSN lags after a crash (it only ever lags, never leads).
 */
export const SLOT_FLUSH_INTERVAL_MS = 1_000;
/** DROP_REPLICATION_SLOT ... WAIT checks this often whether the holder released the slot. */
export const SLOT_DROP_WAIT_POLL_MS = 100;

const SLOT_NAME_PATTERN = /^[a-z0-9_]+$/;

interface SlotState {
  readonly name: string;
  readonly temporary: boolean;
  readonly createdAt: string;
  restartLsn: Lsn | undefined;
  invalidated: boolean;
  invalidationReason: string | undefined;
  activeConnId: number | undefined;
}

export interface SlotTableOptions {
  /** Where persistent slots are saved; none keeps them in memory only (tests, embedded use). */
  readonly store?: SlotStore | undefined;
  /** Slots loaded from the store at open. */
  readonly initial?: readonly PersistedSlot[];
  readonly flushIntervalMs?: number;
  /** A background save failed (the next change retries); the table keeps serving from memory. */
  readonly onSaveError?: (error: unknown) => void;
}

export interface CreateSlotOptions {
  readonly temporary: boolean;
  /** RESERVE_WAL: the position the slot holds from creation (the timeline's current end). */
  readonly restartLsn?: Lsn | undefined;
  /** The creating connection; a temporary slot stays acquired by it until it ends (slot.c ReplicationSlotRelease). */
  readonly connId?: number | undefined;
}

/** PostgreSQL's name rules (slot.c ReplicationSlotValidateName); throws its errors. Pure. */
export function validateSlotName(name: string): void {
  if (name.length === 0) throw new WalcastError('WALCAST_ERR_SLOT_NAME_INVALID', `replication slot name "${name}" is too short`);
  if (Buffer.byteLength(name, 'utf8') > SLOT_NAME_BYTES_MAX) throw new WalcastError('WALCAST_ERR_SLOT_NAME_TOO_LONG', `replication slot name "${name}" is too long`);
  if (!SLOT_NAME_PATTERN.test(name)) {
    throw new WalcastError('WALCAST_ERR_SLOT_NAME_INVALID', `replication slot name "${name}" contains invalid character`, {
      hint: 'Replication slot names may only contain lower case letters, numbers, and the underscore character.',
    });
  }
}

export class SlotTable {
  private readonly slots = new Map<string, SlotState>();
  private readonly store: SlotStore | undefined;
  private readonly flushIntervalMs: number;
  private readonly onSaveError: (error: unknown) => void;
  private dirty = false;
  private flushTimer: NodeJS.Timeout | undefined;
  /** Saves run one at a time, in order; each saves the table as it is when it runs. */
  private saving: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(options: SlotTableOptions = {}) {
    this.store = options.store;
    this.flushIntervalMs = options.flushIntervalMs ?? SLOT_FLUSH_INTERVAL_MS;
    this.onSaveError = options.onSaveError ?? (() => undefined);
    assert.ok(this.flushIntervalMs > 0, 'flush interval is positive');
    for (const slot of options.initial ?? []) {
      validateSlotName(slot.name);
      assert.ok(!this.slots.has(slot.name), `slot ${slot.name} loaded twice`);
      this.slots.set(slot.name, { ...slot, temporary: false, activeConnId: undefined });
    }
    assert.ok(this.slots.size <= SLOTS_PER_TIMELINE_MAX, 'loaded slots within the bound');
  }

  /** Every slot's hold; invalidated slots hold nothing and say so. */
  holds(): readonly SlotHold[] {
    return [...this.slots.values()].map((slot) => ({ name: slot.name, restartLsn: slot.invalidated ? undefined : slot.restartLsn, invalidated: slot.invalidated }));
  }

  list(): SlotSnapshot[] {
    return [...this.slots.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map(snapshotOf);
  }

  get(name: string): SlotSnapshot | undefined {
    const slot = this.slots.get(name);
    return slot === undefined ? undefined : snapshotOf(slot);
  }

  size(): number {
    return this.slots.size;
  }

  /** CREATE_REPLICATION_SLOT: validates the name, refuses duplicates (42710), saves a persistent slot before returning. */
  async create(name: string, options: CreateSlotOptions): Promise<SlotSnapshot> {
    this.assertOpen();
    validateSlotName(name);
    if (this.slots.has(name)) throw new WalcastError('WALCAST_ERR_SLOT_EXISTS', `replication slot "${name}" already exists`);
    if (this.slots.size >= SLOTS_PER_TIMELINE_MAX) {
      throw new WalcastError('WALCAST_ERR_SLOT_LIMIT', 'all replication slots are in use', { hint: `Free one (walcast keeps at most ${SLOTS_PER_TIMELINE_MAX} slots per timeline).` });
    }
    if (options.restartLsn !== undefined) assertLsn(options.restartLsn);
    assert.ok(!options.temporary || options.connId !== undefined, 'a temporary slot belongs to a connection');
    const slot: SlotState = {
      name,
      temporary: options.temporary,
      createdAt: new Date().toISOString(),
      restartLsn: options.restartLsn,
      invalidated: false,
      invalidationReason: undefined,
      activeConnId: options.temporary ? options.connId : undefined,
    };
    this.slots.set(name, slot);
    if (!slot.temporary) await this.saveNow();
    return snapshotOf(slot);
  }

  /**
   * DROP_REPLICATION_SLOT: unknown is 42704; acquired by another connection is 55006, unless `wait`, which waits
   * (bounded by `signal`) for the holder to release it, as PostgreSQL's WAIT does.
   */
  async drop(name: string, options: { connId?: number | undefined; wait?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    this.assertOpen();
    for (;;) {
      const slot = this.requireSlot(name);
      const heldByOther = slot.activeConnId !== undefined && slot.activeConnId !== options.connId;
      if (!heldByOther) break;
      if (options.wait !== true) throw activeError(slot);
      await sleep(SLOT_DROP_WAIT_POLL_MS, options.signal);
    }
    const slot = this.requireSlot(name);
    this.slots.delete(name);
    if (!slot.temporary) await this.saveNow();
  }

  /** START_REPLICATION SLOT: the connection holds the slot until `release`. 42704 unknown, 55006 held elsewhere. */
  acquire(name: string, connId: number): SlotLease {
    this.assertOpen();
    const slot = this.requireSlot(name);
    if (slot.activeConnId !== undefined && slot.activeConnId !== connId) throw activeError(slot);
    slot.activeConnId = connId;
    return new SlotLease(this, name, connId);
  }

  /** Ends an acquisition; a temporary slot stays with its connection until the connection ends (slot.c). */
  release(name: string, connId: number): void {
    const slot = this.slots.get(name);
    if (slot === undefined || slot.activeConnId !== connId) return;
    if (!slot.temporary) slot.activeConnId = undefined;
  }

  /** A connection ended: its temporary slots are dropped and its acquisitions released (slot.c ReplicationSlotCleanup). */
  endConnection(connId: number): void {
    for (const slot of [...this.slots.values()]) {
      if (slot.activeConnId !== connId) continue;
      if (slot.temporary) this.slots.delete(slot.name);
      else slot.activeConnId = undefined;
    }
  }

  /**
   * Moves a slot's restart LSN forward to `lsn` (a replica's confirmed flush position). Never backwards, and never
   * for an invalidated slot: its WAL may be gone. The save is batched (see SLOT_FLUSH_INTERVAL_MS).
   */
  advance(name: string, lsn: Lsn): boolean {
    assertLsn(lsn);
    const slot = this.slots.get(name);
    if (slot === undefined || slot.invalidated) return false;
    if (slot.restartLsn !== undefined && lsn <= slot.restartLsn) return false;
    slot.restartLsn = lsn;
    assert.ok(slot.restartLsn === lsn);
    if (!slot.temporary) this.markDirty();
    return true;
  }

  /** wal_status 'lost': the slot holds no WAL any more. Saved at once (not awaited; `flushed()` waits). */
  invalidate(name: string, reason: string): void {
    const slot = this.slots.get(name);
    if (slot === undefined || slot.invalidated) return;
    slot.invalidated = true;
    slot.invalidationReason = reason;
    if (!slot.temporary) void this.saveNow().catch(this.onSaveError);
  }

  /** Waits for every save started so far, and saves now if anything is dirty. */
  async flush(): Promise<void> {
    if (this.dirty) await this.saveNow();
    await this.saving;
  }

  /** Saves what is dirty and stops the timer; the table refuses changes afterwards. */
  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    if (this.flushTimer !== undefined) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
  }

  private markDirty(): void {
    this.dirty = true;
    if (this.flushTimer !== undefined || this.store === undefined || this.closed) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      if (this.dirty) this.saveNow().catch(this.onSaveError);
    }, this.flushIntervalMs);
    this.flushTimer.unref();
  }

  /** Queues a save of the persistent slots as they are when it runs. */
  private saveNow(): Promise<void> {
    const store = this.store;
    if (store === undefined) {
      this.dirty = false;
      return Promise.resolve();
    }
    const run = async (): Promise<void> => {
      this.dirty = false;
      const persistent = this.list().filter((slot) => !slot.temporary).map(persistedOf);
      try {
        await store.save(persistent);
      } catch (error) {
        this.dirty = true;
        throw error;
      }
    };
    const next = this.saving.then(run, run);
    this.saving = next.catch(() => undefined);
    return next;
  }

  private requireSlot(name: string): SlotState {
    const slot = this.slots.get(name);
    if (slot === undefined) throw new WalcastError('WALCAST_ERR_SLOT_UNKNOWN', `replication slot "${name}" does not exist`);
    return slot;
  }

  private assertOpen(): void {
    if (this.closed) throw new WalcastError('WALCAST_ERR_SHUTDOWN', 'the server is shutting down');
  }
}

/** One connection's acquisition of a slot, for the length of a stream. */
export class SlotLease {
  private released = false;

  constructor(
    private readonly table: SlotTable,
    readonly name: string,
    readonly connId: number,
  ) {}

  /** The replica durably has everything before `lsn`: the slot need not hold it any longer. */
  confirm(lsn: Lsn): void {
    if (this.released) return;
    this.table.advance(this.name, lsn);
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    this.table.release(this.name, this.connId);
  }
}

/**
 * PostgreSQL's pg_replication_slots.wal_status for a slot, given the timeline's flush LSN and the retention
 * limits (slotfuncs.c pg_get_replication_slots, xlog.c GetWALAvailability): 'lost' once invalidated, 'unreserved'
 * past the per-slot cap, 'extended' when the slot holds more than the operator floor keeps anyway, else 'reserved'.
 * undefined (NULL) when the slot holds nothing yet.
 */
export function slotWalStatus(
  slot: SlotHold,
  flushLsn: Lsn,
  limits: { readonly walKeepBytes?: bigint | undefined; readonly maxSlotWalKeepBytes?: bigint | undefined } = {},
): SlotWalStatus | undefined {
  if (slot.invalidated) return 'lost';
  if (slot.restartLsn === undefined) return undefined;
  const retainedBytes = flushLsn > slot.restartLsn ? flushLsn - slot.restartLsn : 0n;
  if (limits.maxSlotWalKeepBytes !== undefined && retainedBytes > limits.maxSlotWalKeepBytes) return 'unreserved';
  if (limits.walKeepBytes !== undefined && retainedBytes > limits.walKeepBytes) return 'extended';
  return 'reserved';
}

function activeError(slot: SlotState): WalcastError {
  assert.ok(slot.activeConnId !== undefined);
  return new WalcastError('WALCAST_ERR_SLOT_ACTIVE', `replication slot "${slot.name}" is active for PID ${slot.activeConnId}`);
}

function snapshotOf(slot: SlotState): SlotSnapshot {
  return {
    name: slot.name,
    temporary: slot.temporary,
    restartLsn: slot.restartLsn,
    invalidated: slot.invalidated,
    invalidationReason: slot.invalidationReason,
    createdAt: slot.createdAt,
    activeConnId: slot.activeConnId,
  };
}

function persistedOf(slot: SlotSnapshot): PersistedSlot {
  return { name: slot.name, restartLsn: slot.restartLsn, invalidated: slot.invalidated, invalidationReason: slot.invalidationReason, createdAt: slot.createdAt };
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(new WalcastError('WALCAST_ERR_SHUTDOWN', 'the server is shutting down'));
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(new WalcastError('WALCAST_ERR_SHUTDOWN', 'the server is shutting down'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
