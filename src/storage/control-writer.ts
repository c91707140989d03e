/**
 * The one writer of a timeline's control file while the server runs. Ingest persists flush positions about once a
 * second and retention persists a new timeline start before it unlinks segments; if each wrote its own copy of the
 * state, one could overwrite the other's field with a stale value, or two renames could race. So every change is a
 * patch (a function of the current state) queued here: patches apply in call order to the newest durable state,
 * and patches queued while a write runs are coalesced into the next single write (one fsync for all of them).
 * A caller's promise resolves once a write that includes its patch is durable, and rejects if that write failed.
 */
import assert from 'node:assert/strict';
import { readControlFile, writeControlFile, type ControlState } from './control-file.js';

/** Returns the changed state, or undefined for "nothing to change". Must be pure: it may run once per write. */
export type ControlPatch = (state: ControlState) => ControlState | undefined;

/** Where the state lives; the files by default, a fake in tests (crash simulation). */
export interface ControlFileStorage {
  read(dir: string): Promise<ControlState>;
  write(dir: string, state: ControlState): Promise<void>;
}

/**
 * Patches waiting for the running write. Writers are ingest (one a second, plus shutdown) and retention (one per
 * pass): a handful at most. Far more means a caller loops without awaiting, a bug this bound exposes.
 */
export const CONTROL_PATCHES_PENDING_MAX = 1024;

const FILE_STORAGE: ControlFileStorage = { read: readControlFile, write: writeControlFile };

interface PendingPatch {
  readonly patch: ControlPatch;
  readonly resolve: (state: ControlState) => void;
  readonly reject: (error: unknown) => void;
}

export class ControlFileWriter {
  private state: ControlState | undefined;
  private readonly pending: PendingPatch[] = [];
  private draining = false;
  /** Completed writes, for tests and the status API. */
  writes = 0;

  constructor(
    readonly dir: string,
    private readonly storage: ControlFileStorage = FILE_STORAGE,
  ) {}

  /** The newest durable state this writer knows (undefined before the first read or update). */
  current(): ControlState | undefined {
    return this.state;
  }

  /** The durable state: read from the file once, then kept up to date by this writer's own writes. */
  async read(): Promise<ControlState> {
    if (this.state === undefined) this.state = await this.storage.read(this.dir);
    return this.state;
  }

  /** Queues a patch; resolves with the durable state that includes it. */
  update(patch: ControlPatch): Promise<ControlState> {
    assert.ok(this.pending.length < CONTROL_PATCHES_PENDING_MAX, 'too many control file patches pending');
    return new Promise((resolve, reject) => {
      this.pending.push({ patch, resolve, reject });
      if (!this.draining) {
        this.draining = true;
        void this.drain();
      }
    });
  }

  private async drain(): Promise<void> {
    try {
      while (this.pending.length > 0) await this.writeBatch(this.pending.splice(0));
    } finally {
      this.draining = false;
    }
  }

  private async writeBatch(batch: readonly PendingPatch[]): Promise<void> {
    assert.ok(batch.length > 0);
    let next: ControlState;
    try {
      const base = await this.read();
      next = batch.reduce((state, item) => item.patch(state) ?? state, base);
      if (next !== base) {
        await this.storage.write(this.dir, next);
        this.state = next;
        this.writes++;
      }
    } catch (error) {
      for (const item of batch) item.reject(error);
      return;
    }
    for (const item of batch) item.resolve(next);
  }
}
