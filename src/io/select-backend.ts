/**
 * Chooses the I/O backend at startup: `ts` everywhere; `native` (the C++ addon) on Linux when it loads and passes
 * its self-test. `auto` picks native when it can and says why not otherwise; an explicit `native` that cannot load
 * is a startup error, never a silent fallback (an operator who asked for it must learn it is not running).
 */
import { WalcastError } from '../errors.js';
import type { IoBackend } from './backend.js';
import { createTsBackend } from './ts-backend.js';
import type { Logger } from '../log.js';

export type IoChoice = 'auto' | 'native' | 'ts';
export type NativeStrategyChoice = 'sendfile' | 'writev' | 'uring';

export interface IoSelection {
  readonly backend: IoBackend;
  /** One sentence for the log and the status API: why this backend runs. */
  readonly reason: string;
}

/** The native module's face, loaded lazily so that a missing or broken addon cannot stop the TS backend. */
interface NativeModule {
  defaultNativeStrategy(): NativeStrategyChoice;
  probeNative(): { ok: true } | { ok: false; reason: string };
  createNativeBackend(strategy: NativeStrategyChoice, options?: { chunkBatch?: boolean; log?: Logger }): Promise<IoBackend>;
}

async function loadNativeModule(): Promise<NativeModule | string> {
  if (process.platform !== 'linux') return `the native addon exists only for Linux (this is ${process.platform})`;
  try {
    return (await import('./native-backend.js')) as NativeModule;
  } catch (error) {
    return `the native backend module failed to load: ${(error as Error).message}`;
  }
}

/** `log`: where the backend reports streams whose send buffers it writes off (send-stall.ts). */
export async function createIoBackend(choice: { io: IoChoice; strategy?: NativeStrategyChoice; chunkBatch?: boolean; syncReads?: boolean; log?: Logger }): Promise<IoSelection> {
  const tsOptions = { ...(choice.log === undefined ? {} : { log: choice.log }), ...(choice.chunkBatch === false ? { chunkBatch: false } : {}), ...(choice.syncReads === false ? { syncReads: false } : {}) };
  const batch = choice.chunkBatch === false ? ', commit fan-out batch off (WALCAST_FANOUT_BATCH=off)' : '';
  const tsBatch = `${batch}${choice.syncReads === false ? ', catch-up reads on the thread pool only (WALCAST_TS_SYNC_READS=off)' : ''}`;
  if (choice.io === 'ts') return { backend: createTsBackend(tsOptions), reason: `requested (--io ts / WALCAST_IO=ts)${tsBatch}` };
  const native = await loadNativeModule();
  const probe = typeof native === 'string' ? { ok: false as const, reason: native } : native.probeNative();
  if (typeof native === 'string' || !probe.ok) {
    const why = probe.ok ? 'unknown' : probe.reason;
    if (choice.io === 'native') throw new WalcastError('WALCAST_ERR_NATIVE_UNAVAILABLE', `--io native was requested but the native addon is unavailable: ${why}`);
    return { backend: createTsBackend(tsOptions), reason: `auto: native addon unavailable (${why}), using the TypeScript backend${tsBatch}` };
  }
  const strategy = choice.strategy ?? native.defaultNativeStrategy();
  const backend = await native.createNativeBackend(strategy, { ...(choice.log === undefined ? {} : { log: choice.log }), ...(choice.chunkBatch === undefined ? {} : { chunkBatch: choice.chunkBatch }) });
  const priority = backend.prefetchPriorityNote === undefined ? '' : `, ${backend.prefetchPriorityNote}`;
  const reason = `${choice.io === 'native' ? `requested (--io native), strategy ${strategy}` : `auto: native addon loaded on Linux, strategy ${strategy}`}${batch}${priority}`;
  return { backend, reason };
}
