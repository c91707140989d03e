/**
 * Loads the native I/O addon (build/…/walcast_native.node) and describes its JavaScript surface.
 *
 * Load order (style anchor 13): an explicit path (option, or env WALCAST_NATIVE_PATH), then build/Debug, then
 * build/Release; Debug first, so a developer who built one (-O1 -g, for a debugger) gets it. Both check the
 * addon's invariants (WALCAST_ASSERT, live in Release too).
 * Loading never throws: it returns why not, and the caller falls back to the TS backend. The error class every
 * native failure is built with (errno, code, syscall: style anchor 11) is defined here and handed to the addon once.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The file name node-gyp gives the addon (binding.gyp target `walcast_native`). */
export const NATIVE_ADDON_FILE = 'walcast_native.node';

/** Engine event kinds, as io-engine.h `EventKind`. */
export enum NativeEventKind {
  /** The stream's queue dropped below its bound: a waiting sendChunk may resolve. */
  space = 1,
  /** Everything accepted on the stream reached the kernel (asked for by flush()). */
  drained = 2,
  /** A write failed; the third argument is a NativeIoError. */
  failed = 3,
  /** A prefetch read finished (the id is the prefetch token). */
  prefetched = 4,
}

/** sendChunk / sendMessage results, as io-engine.h `SendStatus`. */
export enum NativeSendStatus {
  /** sendChunkBatch only: the stream failed (its error is in the returned array). */
  failed = -1,
  sent = 0,
  queued = 1,
  /** Queued, but the stream is at its in-flight bound: wait for a `space` event before sending more. */
  queueFull = 2,
}

/** Socket strategies by number, as io-engine.h `Strategy`. */
export const NATIVE_STRATEGY_CODES = { sendfile: 0, writev: 1, uring: 2 } as const;

/** A failed system call in the addon. The addon builds every one of its errors with this class. */
export class NativeIoError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly syscall: string;

  constructor(message: string, errno: number, code: string, syscall: string) {
    super(message);
    this.name = 'NativeIoError';
    this.errno = errno;
    this.code = code;
    this.syscall = syscall;
  }
}

export type NativeEventHandler = (kind: NativeEventKind, id: number, error: NativeIoError | undefined) => void;

/** One engine: an epoll set (+ io_uring) behind one uv_poll handle, for all streams of one backend. */
export interface NativeEngine {
  openStream(fd: number): number;
  sendChunk(id: number, header: Buffer, fd: number, offset: number, count: number): NativeSendStatus;
  /**
   * sendChunk for `count` streams at once (ids[0..count)), the same header and range to each; statuses[i] is the
   * NativeSendStatus of ids[i], or -1 when that stream failed: the returned array then holds its NativeIoError at
   * index i (undefined when none failed).
   */
  sendChunkBatch(ids: Float64Array, count: number, header: Buffer, fd: number, offset: number, bytes: number, statuses: Int32Array): (NativeIoError | undefined)[] | undefined;
  /**
   * sendChunk for chunks first..first+count-1 of one stream's run, in order, stopping after the first that leaves the
   * stream at its in-flight bound: chunk i's header is headers[i * headerBytes, (i + 1) * headerBytes), its range
   * ranges[3i] (fd), ranges[3i + 1] (offset), ranges[3i + 2] (bytes). result[0] = chunks taken, result[1] = the last
   * one's NativeSendStatus. Throws the NativeIoError of a chunk that failed (result[0] counts those taken before it).
   */
  sendChunkRun(id: number, headers: Buffer, headerBytes: number, ranges: Float64Array, first: number, count: number, result: Int32Array): void;
  sendMessage(id: number, bytes: Buffer): NativeSendStatus;
  flush(id: number): boolean;
  closeStream(id: number): void;
  bytesSent(id: number): number;
  /** readBytes (default count): the range reaches the readahead threads as reads of at most that many bytes, one event. */
  prefetch(fd: number, offset: number, count: number, token: number, readBytes?: number): boolean;
  /**
   * sendsInFlight / readsInFlight: io_uring requests whose completions are not reaped yet (readsInFlight also counts
   * prefetch requests at the readahead thread). lowPriorityReads: prefetch reads start at idle I/O priority
   * (native/readahead-thread.h); idleReadFallbacks: prefetches taken back from a starved readahead thread and read at
   * the engine's own priority (io-engine.h kIdleReadWaitMaxMs); readaheadJobs: reads handed to the readahead threads; when not although the ring is up, lowPriorityReadsFailure says why ("ioprio_set: EPERM").
   */
  stats(): { streams: number; mappedFiles: number; ring: boolean; sendsInFlight: number; readsInFlight: number; idleReadFallbacks: number; readaheadJobs: number; lowPriorityReads: boolean; lowPriorityReadsFailure?: string };
  close(): void;
}

export interface NativeAddon {
  init(errorClass: typeof NativeIoError): void;
  Engine: new (strategy: number, onEvent: NativeEventHandler) => NativeEngine;
  selfTest(): { ok: true; ring: boolean };
  errorForTest(errno: number): NativeIoError;
  /** Stops readahead threads while one is blocked in its read (native/addon.cc): the stop must not wait for it. */
  /** The next Engine's readahead threads read into (a dup of) fd instead of /dev/null: a test holds them in a full FIFO. */
  readaheadSinkForTest(fd: number): void;
  readaheadStopWhileReadingForTest(path: string): { liveAfterStop: number; wakesAfterStop: number; liveAtEnd: number };
  /** posix_fadvise(DONTNEED) on a range: makes a file cold for tests and the benchmark. */
  dropCache(fd: number, offset: number, length: number): void;
  /** Bytes of the range in page cache and up to date, in whole pages (tests of prefetch). */
  residentBytes(fd: number, offset: number, length: number): number;
  /** posix_fadvise(RANDOM): no kernel readahead for this open file (tests of prefetch without it). */
  adviseRandom(fd: number): void;
  /**
   * TCP_CONGESTION on a socket (native/tcp-congestion.h): set it, read it, or try a name on a socket of the addon's
   * own. Each throws the NativeIoError (ENOENT: not available; EPERM: not in tcp_allowed_congestion_control).
   * Absent from addons built before it existed.
   */
  setTcpCongestion?(fd: number, name: string): void;
  tcpCongestion?(fd: number): string;
  tryTcpCongestion?(name: string): void;
  readonly headerBytesMax: number;
  readonly messageBytesMax: number;
  readonly payloadBytesMax: number;
  /** Chunks one sendChunkRun call takes (io-engine.h kRunChunksMax). */
  readonly runChunksMax: number;
  readonly prefetchBytesMax: number;
  /** Units one stream may queue (io-engine.h kQueuedUnitsHardMax). */
  readonly queuedUnitsHardMax: number;
  /** sizeof(Stream) and sizeof(SendUnit): with queuedUnitsHardMax, the heap one stream may hold. */
  readonly streamRecordBytes: number;
  readonly sendUnitBytes: number;
  /** COMP_CRC32C over bytes[start, end) from a raw state (native/crc32c.cc; hardware when crc32cHardware). */
  crc32cUpdate(state: number, bytes: Uint8Array, start: number, end: number): number;
  /** The portable slice-by-8 path, for tests against the hardware one. */
  crc32cUpdateSoftware(state: number, bytes: Uint8Array, start: number, end: number): number;
  /** The SSE4.2 three-lane path even where crc32cFold is in use, for tests against the folding one. */
  crc32cUpdateLanes(state: number, bytes: Uint8Array, start: number, end: number): number;
  /** out[i] = CRC-32C of the i-th pageBytes piece of the file range, read through a shared mapping. */
  crc32cFilePages(fd: number, offset: number, byteCount: number, pageBytes: number, out: Uint32Array): void;
  /**
   * crc32cFilePages on a libuv pool thread, off the event loop (the descriptor is duplicated before it returns);
   * `done` gets null or the native error. Absent from addons built before it existed.
   */
  crc32cFilePagesAsync?(fd: number, offset: number, byteCount: number, pageBytes: number, out: Uint32Array, done: (error: Error | null) => void): void;
  /**
   * Tries the `tls` TCP ULP and TLS_TX keys on a private loopback connection (native/kernel-tls.cc). code is OK
   * or the errno name of the failing step.
   */
  probeKernelTls(): { state: 'available' | 'unavailable' | 'error'; code: string; step: string };
  /** Whether the CPU's CRC-32C instruction (SSE4.2) is in use. */
  readonly crc32cHardware: boolean;
  /** Whether crc32cUpdate folds ranges of 256 bytes or more with AVX-512 VPCLMULQDQ (native/crc32c.cc). */
  readonly crc32cFold: boolean;
  /** Largest byteCount of one crc32cFilePages call. */
  readonly crc32cFileRangeBytesMax: number;
}

export type NativeLoadResult = { ok: true; addon: NativeAddon; path: string } | { ok: false; reason: string };

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * Where the addon is looked for, in order. An explicit path (option, else WALCAST_NATIVE_PATH) is the only
 * candidate when given: an operator who names a file must not silently get another build.
 */
export function nativeAddonCandidates(explicitPath?: string): string[] {
  const explicit = explicitPath ?? process.env.WALCAST_NATIVE_PATH;
  if (explicit !== undefined && explicit !== '') return [resolve(explicit)];
  const candidates: string[] = [];
  candidates.push(join(REPO_ROOT, 'build', 'Debug', NATIVE_ADDON_FILE), join(REPO_ROOT, 'build', 'Release', NATIVE_ADDON_FILE));
  return candidates;
}

let cached: NativeLoadResult | undefined;

/** Loads the addon once per process (a .node file cannot be unloaded anyway). */
export function loadNativeAddon(options: { path?: string } = {}): NativeLoadResult {
  if (cached !== undefined && options.path === undefined) return cached;
  const result = loadFirst(nativeAddonCandidates(options.path));
  if (options.path === undefined) cached = result;
  return result;
}

function loadFirst(candidates: readonly string[]): NativeLoadResult {
  if (process.platform !== 'linux') return { ok: false, reason: `the native addon exists only for Linux (this is ${process.platform})` };
  const require = createRequire(import.meta.url);
  const tried: string[] = [];
  for (const path of candidates) {
    if (!existsSync(path)) {
      tried.push(`${path}: not built`);
      continue;
    }
    try {
      const addon = require(path) as NativeAddon;
      if (typeof addon.init !== 'function' || typeof addon.Engine !== 'function') {
        tried.push(`${path}: not a walcast addon`);
        continue;
      }
      addon.init(NativeIoError);
      return { ok: true, addon, path };
    } catch (error) {
      tried.push(`${path}: ${(error as Error).message}`);
    }
  }
  return { ok: false, reason: tried.join('; ') };
}
