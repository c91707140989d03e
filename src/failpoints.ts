/**
 * Fault injection for tests, as Neon's failpoints (the `fail` crate): named points in the durability path where a
 * test can make walcast die (kill -9 of itself) or fail a system call, to prove that what is on disk afterwards is
 * consistent.
 *
 * Off unless WALCAST_FAILPOINTS_ENABLE=1 at start-up: the table is read once when this module loads, and a point then
 * costs one boolean test. With it on, WALCAST_FAILPOINTS lists `name=action[@N]` separated by `;`, e.g.
 * `wal-after-write=exit@20;control-before-rename=enospc`. Actions: `exit` sends SIGKILL to this process (no
 * handler, no flush: what a crash leaves), `enospc`/`eio`/`erofs` throw an errno error as the failing system call
 * would. `@N` fires on the Nth time the point is reached (default 1), and only then: an injected EIO is a transient
 * fault that the code under test must recover from.
 */
import assert from 'node:assert/strict';

/** Every point compiled into walcast; a test naming another one is refused at start-up. */
export const FAILPOINT_NAMES = [
  /** WAL bytes are in the page cache (pwrite done), the fdatasync that makes them durable has not started. */
  'wal-after-write',
  /** fdatasync (and the renames of completed segments) done, the durable position not yet published or persisted. */
  'wal-after-fsync',
  /** walcast.control.tmp written and synced, not yet renamed over walcast.control. */
  'control-before-rename',
  /** walcast.slots.tmp written and synced, not yet renamed over walcast.slots (slots/slot-file.ts). */
  'slot-before-rename',
  /** A timeline removal's walcast.remove is durable; nothing is torn down yet (timeline/timeline-removal.ts). */
  'removal-after-marker',
  /** The removed timeline's directory is renamed to .removing-*, not yet deleted. */
  'removal-after-rename',
  /** A segment's PUT is confirmed by the object store; the backup LSN over it is not yet persisted (remote/segment-uploader.ts). */
  'offload-after-put',
  /** One ranged GET of an offloaded segment has answered; its bytes are not yet in the cache file (remote/segment-cache.ts). */
  'remote-read-after-get',
] as const;
export type FailpointName = (typeof FAILPOINT_NAMES)[number];

type FailpointAction = 'exit' | 'enospc' | 'eio' | 'erofs';
const ACTIONS: ReadonlySet<string> = new Set<FailpointAction>(['exit', 'enospc', 'eio', 'erofs']);
const ERRNO_MESSAGES: Record<Exclude<FailpointAction, 'exit'>, string> = {
  enospc: 'no space left on device',
  eio: 'i/o error',
  erofs: 'read-only file system',
};

interface Armed {
  readonly action: FailpointAction;
  readonly fireAt: number;
  hits: number;
}

const armed: ReadonlyMap<FailpointName, Armed> = process.env.WALCAST_FAILPOINTS_ENABLE === '1' ? parseFailpoints(process.env.WALCAST_FAILPOINTS ?? '') : new Map();
const anyArmed = armed.size > 0;

/** Parses `name=action[@N];...`; throws on an unknown name or action so a typo cannot make a test pass vacuously. */
export function parseFailpoints(text: string): Map<FailpointName, Armed> {
  const table = new Map<FailpointName, Armed>();
  for (const item of text.split(';').map((part) => part.trim()).filter((part) => part !== '')) {
    const match = /^([a-z-]+)=([a-z]+)(?:@([1-9][0-9]{0,8}))?$/.exec(item);
    const name = match?.[1] ?? '';
    const action = match?.[2] ?? '';
    if (match === null || !(FAILPOINT_NAMES as readonly string[]).includes(name) || !ACTIONS.has(action)) {
      throw new RangeError(`WALCAST_FAILPOINTS: "${item}" is not name=action[@N] with name in ${FAILPOINT_NAMES.join(', ')} and action in ${[...ACTIONS].join(', ')}`);
    }
    table.set(name as FailpointName, { action: action as FailpointAction, fireAt: Number(match[3] ?? '1'), hits: 0 });
  }
  return table;
}

/** Marks a point; does nothing unless a test armed it. */
export function failpoint(name: FailpointName): void {
  if (!anyArmed) return;
  const point = armed.get(name);
  if (point === undefined) return;
  point.hits++;
  if (point.hits !== point.fireAt) return;
  if (point.action === 'exit') {
    process.kill(process.pid, 'SIGKILL');
    return;
  }
  const code = point.action.toUpperCase();
  const error: NodeJS.ErrnoException = new Error(`${code}: ${ERRNO_MESSAGES[point.action]} (failpoint ${name})`);
  error.code = code;
  error.syscall = 'failpoint';
  throw error;
}

assert.ok(FAILPOINT_NAMES.every((name) => /^[a-z-]+$/.test(name)), 'failpoint names match the parser');
