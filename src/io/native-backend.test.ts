/**
 * Unit tests of the native backend's TypeScript surface that need no sockets: importing loads nothing, the probe,
 * the default strategy, and refusal of a bad strategy before the addon is asked. Socket-level behaviour is tested
 * in test/native-io.test.ts.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, constants, fdatasyncSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import {
  MEASURED_FASTEST_STRATEGY,
  NATIVE_STRATEGIES,
  NATIVE_PREFETCH_BYTES_MAX,
  NATIVE_PREFETCH_READ_BYTES,
  NATIVE_PREFETCH_SHAPE,
  NO_RING_STRATEGY,
  OFF_THREAD_CHECKSUMS_MAX,
  OFF_THREAD_CHECKSUMS_QUEUED_MAX,
  offThreadChecksumsMax,
  libuvPoolThreads,
  POOL_THREADS_KEPT_FOR_STORAGE,
  createNativeBackend,
  defaultNativeStrategy,
  probeNative,
  type NativeStrategy,
} from './native-backend.js';
import { NATIVE_ADDON_FILE, NATIVE_STRATEGY_CODES, NativeEventKind, loadNativeAddon } from './native-binding.js';

/** Bound for the child node below (tsx compiles on the way): generous, the machine is shared. */
const CHILD_TIMEOUT_MS = 120_000;

test('importing the backend module loads no addon; the first probe does, and reports as before', () => {
  // A fresh process: this file's own imports must not have loaded anything yet either way. The addon counts as
  // loaded when its shared object is mapped into the process.
  const script = `
    import { readFileSync } from 'node:fs';
    const mapped = () => readFileSync('/proc/self/maps', 'utf8').includes(${JSON.stringify(NATIVE_ADDON_FILE)});
    const native = await import(${JSON.stringify(new URL('./native-backend.ts', import.meta.url).href)});
    const afterImport = mapped();
    const probe = native.probeNative();
    console.log(JSON.stringify({ afterImport, afterProbe: mapped(), probe }));
  `;
  const output = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '--eval', script], { encoding: 'utf8', timeout: CHILD_TIMEOUT_MS });
  const seen = JSON.parse(output.trim().split('\n').at(-1)!) as { afterImport: boolean; afterProbe: boolean; probe: { ok: boolean; reason?: string } };
  assert.equal(seen.afterImport, false, 'import alone loads no addon');
  assert.deepEqual(seen.probe, probeNative(), 'the child probed to the same answer as this process');
  assert.equal(seen.afterProbe, seen.probe.ok, 'the addon is loaded exactly when the probe succeeded');
});

test('the default strategy is the measured fastest when io_uring works, else sendfile', () => {
  const strategy = defaultNativeStrategy();
  assert.ok(NATIVE_STRATEGIES.includes(strategy));
  assert.ok([MEASURED_FASTEST_STRATEGY, NO_RING_STRATEGY].includes(strategy));
  assert.equal(NO_RING_STRATEGY, 'sendfile', 'the fallback needs no io_uring');
  const loaded = loadNativeAddon();
  if (loaded.ok && loaded.addon.selfTest().ring) assert.equal(strategy, MEASURED_FASTEST_STRATEGY);
  assert.deepEqual([...NATIVE_STRATEGIES].sort(), ['sendfile', 'uring', 'writev']);
});

test('probeNative answers ok or a reason, and the same answer twice', () => {
  const first = probeNative();
  assert.ok(first.ok || first.reason.length > 0);
  assert.deepEqual(probeNative(), first);
});

test('an unknown strategy is a RangeError that names the choices', async () => {
  await assert.rejects(createNativeBackend('splice' as NativeStrategy), /sendfile, writev, uring/);
});

test('createNativeBackend either starts the engine or throws WALCAST_ERR_NATIVE_UNAVAILABLE', async () => {
  const probe = probeNative();
  for (const strategy of NATIVE_STRATEGIES) {
    try {
      const backend = await createNativeBackend(strategy);
      assert.ok(probe.ok);
      assert.equal(backend.kind, 'native');
      assert.equal(backend.strategy, strategy);
      await backend.close();
      await backend.close(); // idempotent
    } catch (error) {
      assert.ok(isWalcastError(error, 'WALCAST_ERR_NATIVE_UNAVAILABLE'), String(error));
    }
  }
});

test('checksumPagesOffThread agrees with checksumPagesNow, refuses a handle storage has started closing, and keeps at most its bound on the pool', { skip: probeNative().ok ? false : 'the native addon is not available' }, async () => {
  const backend = await createNativeBackend('sendfile');
  const dir = mkdtempSync(join(tmpdir(), 'walcast-offthread-'));
  try {
    const path = join(dir, 'segment');
    writeFileSync(path, randomBytes(40 * 8192));
    const fd = openSync(path, 'r');
    try {
      const chunk = { file: { fd, path, closed: false }, fileOffset: 3 * 8192 + 11, byteCount: 20 * 8192 };
      const offThread = new Uint32Array(21);
      const inline = new Uint32Array(21);
      assert.ok(backend.checksumPagesOffThread !== undefined && backend.checksumPagesNow !== undefined);
      await backend.checksumPagesOffThread(chunk, 8192, offThread);
      backend.checksumPagesNow(chunk, 8192, inline);
      assert.deepEqual(offThread, inline);
      await assert.rejects(backend.checksumPagesOffThread({ ...chunk, file: { ...chunk.file, closed: true } }, 8192, offThread), (error: unknown) => isWalcastError(error, 'WALCAST_ERR_NATIVE_IO'));
      // Many at once: at most offThreadChecksumsMax() (OFF_THREAD_CHECKSUMS_MAX with the default pool) on the pool, the rest queued, every result right.
      const outs = Array.from({ length: 12 }, () => new Uint32Array(21));
      const running = outs.map((out) => backend.checksumPagesOffThread!(chunk, 8192, out));
      const inFlight = (backend as unknown as { offThreadChecksumsInFlight: number }).offThreadChecksumsInFlight;
      assert.equal(inFlight, offThreadChecksumsMax(), 'the pool holds the bound, no more');
      await Promise.all(running);
      for (const out of outs) assert.deepEqual(out, inline);
      assert.equal((backend as unknown as { offThreadChecksumsInFlight: number }).offThreadChecksumsInFlight, 0);
    } finally {
      closeSync(fd);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await backend.close();
  }
});

test('a check ahead that finds the pool share full waits for a slot instead of running on the event loop, in order, refused if its handle closed while it waited', { skip: probeNative().ok ? false : 'the native addon is not available' }, async () => {
  // Inline, one check of a whole 4 MiB prefetch piece held the event loop ~1 ms beside live replicas (issue 13).
  const backend = await createNativeBackend('sendfile');
  const counters = backend as unknown as { offThreadChecksumsInFlight: number; offThreadChecksumsQueued: number; offThreadChecksumsInline: number };
  const dir = mkdtempSync(join(tmpdir(), 'walcast-queued-'));
  try {
    const path = join(dir, 'segment');
    const pieceBytes = NATIVE_PREFETCH_SHAPE.pieceBytes;
    writeFileSync(path, randomBytes(pieceBytes + 2 * 8192));
    const fd = openSync(path, 'r');
    try {
      const chunk = { file: { fd, path, closed: false }, fileOffset: 8192 + 11, byteCount: pieceBytes - 5 };
      const pages = Math.ceil(chunk.byteCount / 8192);
      const expected = new Uint32Array(pages);
      assert.ok(backend.checksumPagesNow !== undefined && backend.checksumPagesOffThread !== undefined);
      backend.checksumPagesNow(chunk, 8192, expected);
      assert.ok(offThreadChecksumsMax() > 0 && OFF_THREAD_CHECKSUMS_QUEUED_MAX >= 2);
      const holding = Array.from({ length: offThreadChecksumsMax() }, () => backend.checksumPagesOffThread!(chunk, 8192, new Uint32Array(pages)));
      assert.equal(counters.offThreadChecksumsInFlight, offThreadChecksumsMax(), 'the pool share is full');
      const out = new Uint32Array(pages);
      const queued = backend.checksumPagesOffThread(chunk, 8192, out);
      const retiredFile = { fd, path, closed: false };
      const retired = backend.checksumPagesOffThread({ ...chunk, file: retiredFile }, 8192, new Uint32Array(pages));
      // Inline, the call would have filled out before returning its promise.
      assert.ok(out.every((crc) => crc === 0), 'nothing was checksummed on the event loop');
      assert.equal(counters.offThreadChecksumsQueued, 2);
      assert.equal(counters.offThreadChecksumsInFlight, offThreadChecksumsMax(), 'the queue does not overtake the bound');
      retiredFile.closed = true;
      const refused = assert.rejects(retired, (error: unknown) => isWalcastError(error, 'WALCAST_ERR_NATIVE_IO'), 'a handle closed while queued is refused');
      await queued;
      assert.deepEqual(out, expected, 'the queued check ran, on the pool, with the same checksums');
      await refused;
      await Promise.all(holding);
      assert.equal(counters.offThreadChecksumsInline, 0, 'no check ran inline');
      assert.equal(counters.offThreadChecksumsQueued, 0);
      assert.equal(counters.offThreadChecksumsInFlight, 0, 'every slot was handed back');
    } finally {
      closeSync(fd);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await backend.close();
  }
});

test('a 4 MiB prefetch piece is one addon request, read by the readahead threads as 1 MiB reads, with one event once all are cached', { skip: probeNative().ok ? false : 'the native addon is not available' }, async () => {
  // 4 MiB reads held the live writer's fdatasync behind them on the disk (~16 ms p50 against ~8 with 1 MiB reads while
  // three cold files were read at full speed: bench/prefetch-shape-sync.ts); the sender keeps its 4 MiB pieces, and
  // since 2026-12-07 so does the backend's call into the addon (one request, token and event per piece): the engine
  // splits the piece into the readahead threads' 1 MiB jobs, one after another.
  const loaded = loadNativeAddon();
  assert.ok(loaded.ok);
  const { addon } = loaded;
  const backend = await createNativeBackend('sendfile');
  const dir = mkdtempSync(join(tmpdir(), 'walcast-reads-'));
  // The engine's handles do not keep the loop alive (live sockets do, in the server).
  const keepAlive = setInterval(() => undefined, 1000);
  const engines: InstanceType<typeof addon.Engine>[] = [];
  try {
    const path = join(dir, 'cold');
    const pieceBytes = NATIVE_PREFETCH_SHAPE.pieceBytes;
    assert.equal(NATIVE_PREFETCH_READ_BYTES, 1024 * 1024);
    assert.ok(pieceBytes > NATIVE_PREFETCH_READ_BYTES, 'a piece is several reads');
    writeSyncedFile(path, pieceBytes + 8192);
    const fd = openSync(path, 'r');
    try {
      addon.dropCache(fd, 0, pieceBytes + 8192);
      // The real engine, its prefetch calls recorded on the way through.
      const engine = (backend as unknown as { engine: InstanceType<typeof addon.Engine> }).engine;
      const requests: number[][] = [];
      const prefetch = engine.prefetch.bind(engine);
      // The addon's methods are read-only on its prototype: an own property of the instance shadows it.
      Object.defineProperty(engine, 'prefetch', {
        configurable: true,
        value: (file: number, offset: number, bytes: number, token: number, readBytes?: number): boolean => {
          requests.push([offset, bytes, readBytes ?? bytes]);
          return prefetch(file, offset, bytes, token, readBytes);
        },
      });
      const jobsBefore = engine.stats().readaheadJobs;
      const writer = backend as unknown as { prefetch(chunk: { file: { fd: number; path: string }; fileOffset: number; byteCount: number }): Promise<void> };
      await writer.prefetch({ file: { fd, path }, fileOffset: 8192, byteCount: pieceBytes });
      assert.deepEqual(requests, [[8192, pieceBytes, NATIVE_PREFETCH_READ_BYTES]], 'one request for the piece, its reads 1 MiB');
      assert.equal(addon.residentBytes(fd, 8192, pieceBytes), pieceBytes, 'the whole piece is cached once its prefetch settled');
      if (engine.stats().lowPriorityReads) assert.equal(engine.stats().readaheadJobs - jobsBefore, pieceBytes / NATIVE_PREFETCH_READ_BYTES, 'one readahead job per MiB');
      await assert.rejects(createNativeBackend('sendfile', { prefetchReadBytes: 5 * 1024 * 1024 }), RangeError);

      // The engine alone: one event for the split range, after its last read (so after all of them: a file's reads run
      // in order), and the jobs in file order as far as the thread's reads show (every MiB up to date at the event).
      const events: number[] = [];
      let settle: (() => void) | undefined;
      const direct = new addon.Engine(NATIVE_STRATEGY_CODES.sendfile, (kind: NativeEventKind, id: number) => {
        if (kind !== NativeEventKind.prefetched) return;
        events.push(id);
        if (id === 7) settle?.();
      });
      engines.push(direct);
      addon.dropCache(fd, 0, pieceBytes + 8192);
      const settled = new Promise<void>((resolve) => (settle = resolve));
      assert.equal(direct.prefetch(fd, 0, pieceBytes, 7, NATIVE_PREFETCH_READ_BYTES), false, 'cold: an event follows');
      await settled;
      assert.equal(addon.residentBytes(fd, 0, pieceBytes), pieceBytes, 'every read is done at the event');
      if (direct.stats().lowPriorityReads) assert.equal(direct.stats().readaheadJobs, pieceBytes / NATIVE_PREFETCH_READ_BYTES);
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.deepEqual(events, [7], 'one event for the range, none for its leading reads');
      assert.throws(() => direct.prefetch(fd, 0, pieceBytes, 8, NATIVE_PREFETCH_BYTES_MAX + 1), RangeError);
    } finally {
      closeSync(fd);
    }
  } finally {
    for (const engine of engines) engine.close();
    clearInterval(keepAlive);
    rmSync(dir, { recursive: true, force: true });
    await backend.close();
  }
});

test('a handle storage has started closing is refused on every checksum path, even once its number names another file', { skip: probeNative().ok ? false : 'the native addon is not available' }, async () => {
  // The CI failure this guards against (cold-catchup, native/sendfile): the prefetcher verifies a piece after awaiting
  // its prefetch; by then its reader had closed that segment and opened a later one under the same number, and the
  // pool being full, the check ran inline on the number: the later segment's checksums, good WAL counted as damaged.
  const backend = await createNativeBackend('sendfile');
  const dir = mkdtempSync(join(tmpdir(), 'walcast-closed-'));
  try {
    const earlier = join(dir, 'earlier');
    const later = join(dir, 'later');
    writeFileSync(earlier, randomBytes(8 * 8192));
    writeFileSync(later, randomBytes(8 * 8192));
    const earlierFd = openSync(earlier, 'r');
    closeSync(earlierFd);
    const laterFd = openSync(later, 'r');
    try {
      assert.equal(laterFd, earlierFd, 'the closed number is reused by the next open');
      const retired = { file: { fd: earlierFd, path: earlier, closed: true }, fileOffset: 0, byteCount: 8 * 8192 };
      const out = new Uint32Array(8);
      assert.ok(backend.checksumPagesNow !== undefined && backend.checksumPagesOffThread !== undefined);
      assert.throws(() => backend.checksumPagesNow!(retired, 8192, out), (error: unknown) => isWalcastError(error, 'WALCAST_ERR_NATIVE_IO'));
      await assert.rejects(backend.checksumPages(retired, 8192, out), (error: unknown) => isWalcastError(error, 'WALCAST_ERR_NATIVE_IO'));
      // The pool full (the bound reached by open handles), so the next call would run inline.
      const open = { file: { fd: laterFd, path: later, closed: false }, fileOffset: 0, byteCount: 8 * 8192 };
      const running = Array.from({ length: offThreadChecksumsMax() }, () => backend.checksumPagesOffThread!(open, 8192, new Uint32Array(8)));
      await assert.rejects(backend.checksumPagesOffThread(retired, 8192, out), (error: unknown) => isWalcastError(error, 'WALCAST_ERR_NATIVE_IO'));
      await Promise.all(running);
    } finally {
      closeSync(laterFd);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await backend.close();
  }
});

test('libuvPoolThreads reads UV_THREADPOOL_SIZE as libuv does; the checksum bound always leaves a pool thread', () => {
  assert.equal(libuvPoolThreads({}), 4);
  assert.equal(libuvPoolThreads({ UV_THREADPOOL_SIZE: '8' }), 8);
  assert.equal(libuvPoolThreads({ UV_THREADPOOL_SIZE: '0' }), 1);
  assert.equal(libuvPoolThreads({ UV_THREADPOOL_SIZE: 'many' }), 1);
  assert.equal(libuvPoolThreads({ UV_THREADPOOL_SIZE: '5000' }), 1024);
  assert.equal(offThreadChecksumsMax(4), OFF_THREAD_CHECKSUMS_MAX);
  assert.equal(offThreadChecksumsMax(64), OFF_THREAD_CHECKSUMS_MAX);
  for (const pool of [1, 2, 3, 4]) assert.equal(offThreadChecksumsMax(pool), Math.min(OFF_THREAD_CHECKSUMS_MAX, pool - POOL_THREADS_KEPT_FOR_STORAGE));
});

test("the WAL writer's fdatasync is not starved behind a pool full of off-thread checksums, at any pool size", () => {
  // A real process per pool size (libuv sizes its pool once, from the environment it started with): the bound's
  // worth of pool threads held, as by cold streams' checksums waiting on disk; the writer's fdatasync still completes.
  // The control holds every thread (what a fixed bound of 3 allowed with UV_THREADPOOL_SIZE=3): the sync starves.
  const child = join(import.meta.dirname, '../../test/support/pool-starvation-child.ts');
  const run = (pool: number, blocked: number): string =>
    spawnSync(process.execPath, ['--import', 'tsx', child], { env: { ...process.env, UV_THREADPOOL_SIZE: String(pool), BLOCKED: String(blocked) }, encoding: 'utf8' }).stdout.trim();
  for (const pool of [2, 3, 4]) assert.equal(run(pool, offThreadChecksumsMax(pool)), 'synced', `pool of ${pool}`);
  assert.equal(run(3, 3), 'starved', 'the control: with every pool thread held the sync waits');
});

/** The engine's readahead threads (native/readahead-thread.h), by their name. */
function readaheadThreadIds(): string[] {
  // A stopped thread exits on its own (detached) and may be gone between the listing and the read.
  return readdirSync('/proc/self/task').filter((tid) => {
    try {
      return readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim() === 'walcast-ra';
    } catch {
      return false;
    }
  });
}

/** Bytes the threads submitted reads for (accounted to the submitting thread at submit_bio). */
function threadsReadBytes(tids: readonly string[]): number {
  let total = 0;
  for (const tid of tids) {
    const line = readFileSync(`/proc/self/task/${tid}/io`, 'utf8').split('\n').find((entry) => entry.startsWith('read_bytes:'));
    total += Number(line?.split(/\s+/)[1] ?? Number.NaN);
  }
  return total;
}

/** Random bytes written back to disk: dirty pages cannot be dropped from page cache. */
function writeSyncedFile(path: string, bytes: number): void {
  writeFileSync(path, randomBytes(bytes));
  const writable = openSync(path, 'r+');
  fdatasyncSync(writable);
  closeSync(writable);
}

const ringSkip = !probeNative().ok ? 'the native addon is not available' : loadNativeAddon().ok && (loadNativeAddon() as { ok: true; addon: { selfTest(): { ring: boolean } } }).addon.selfTest().ring ? false : 'no io_uring here';

test('prefetch reads start on a thread of idle I/O priority that submits them; switched off, the engine says so and still prefetches', { skip: ringSkip }, async () => {
  const loaded = loadNativeAddon();
  assert.ok(loaded.ok);
  const { addon } = loaded;
  const directory = mkdtempSync(join(tmpdir(), 'walcast-ioprio-'));
  const path = join(directory, 'cold');
  const bytes = 4 * 1024 * 1024;
  writeSyncedFile(path, bytes);
  const fd = openSync(path, 'r');
  // tmpfs has no block device: nothing is read from storage there, so no thread's read_bytes grows.
  const onDisk = spawnSync('stat', ['-f', '-c', '%T', directory], { encoding: 'utf8' }).stdout.trim() !== 'tmpfs';
  const prefetchCold = async (engine: InstanceType<typeof addon.Engine>, done: Map<number, () => void>, token: number): Promise<void> => {
    addon.dropCache(fd, 0, bytes);
    const settled = new Promise<void>((resolve) => done.set(token, resolve));
    // The engine's handles do not keep the loop alive (live sockets do, in the server).
    const keepAlive = setInterval(() => undefined, 1000);
    // One request for a native stream's whole 4 MiB prefetch piece (NATIVE_PREFETCH_SHAPE.pieceBytes): one thread read, one event.
    if (engine.prefetch(fd, 0, NATIVE_PREFETCH_SHAPE.pieceBytes, token)) done.get(token)?.();
    await settled;
    clearInterval(keepAlive);
    assert.equal(addon.residentBytes(fd, 0, NATIVE_PREFETCH_SHAPE.pieceBytes), NATIVE_PREFETCH_SHAPE.pieceBytes, 'the range is up to date once prefetched');
  };
  const engines: InstanceType<typeof addon.Engine>[] = [];
  const previous = process.env.WALCAST_PREFETCH_IOPRIO;
  try {
    const done = new Map<number, () => void>();
    const onEvent = (kind: NativeEventKind, id: number): void => {
      if (kind === NativeEventKind.prefetched) done.get(id)?.();
    };
    const engine = new addon.Engine(NATIVE_STRATEGY_CODES.sendfile, onEvent);
    engines.push(engine);
    assert.equal(engine.stats().lowPriorityReads, true, JSON.stringify(engine.stats()));
    const tids = readaheadThreadIds();
    assert.ok(tids.length > 0, 'the readahead threads run');
    for (const tid of tids) {
      const ionice = spawnSync('ionice', ['-p', tid], { encoding: 'utf8' });
      if (ionice.status === 0) assert.equal(ionice.stdout.trim(), 'idle', 'each thread has the idle I/O class');
    }
    const before = threadsReadBytes(tids);
    await prefetchCold(engine, done, 1);
    if (onDisk) assert.ok(threadsReadBytes(tids) - before >= 1024 * 1024, `the threads submitted the reads: ${threadsReadBytes(tids) - before} bytes`);
    engine.close();
    // close() stops the threads without waiting for them (a read in hand finishes detached): they exit soon after.
    for (let turn = 0; turn < 500 && readaheadThreadIds().length > 0; turn += 1) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.deepEqual(readaheadThreadIds(), [], 'close() stops the threads');

    process.env.WALCAST_PREFETCH_IOPRIO = 'default';
    const plain = new addon.Engine(NATIVE_STRATEGY_CODES.sendfile, onEvent);
    engines.push(plain);
    assert.deepEqual([plain.stats().lowPriorityReads, plain.stats().lowPriorityReadsFailure], [false, 'switched off (WALCAST_PREFETCH_IOPRIO=default)']);
    assert.deepEqual(readaheadThreadIds(), []);
    await prefetchCold(plain, done, 2);
    const backend = await createNativeBackend('sendfile');
    try {
      assert.equal(backend.prefetchPriorityNote, 'prefetch reads at normal I/O priority (switched off (WALCAST_PREFETCH_IOPRIO=default))');
    } finally {
      await backend.close();
    }
  } finally {
    if (previous === undefined) delete process.env.WALCAST_PREFETCH_IOPRIO;
    else process.env.WALCAST_PREFETCH_IOPRIO = previous;
    for (const engine of engines) engine.close();
    closeSync(fd);
    rmSync(directory, { recursive: true, force: true });
  }
});

test('stopping the readahead threads does not wait for a read in hand: the read finishes detached on its own descriptor and wakes nobody', { skip: ringSkip }, () => {
  // A read starved behind best-effort I/O can take mq-deadline's prio_aging_expire (10 s) per request; Engine::Close
  // joined the threads and blocked the event loop (and a SIGTERM stop) that long. Here the read is held for real: it
  // goes into a full one-page pipe. The check runs in a child: without the fix the stop never returns.
  const directory = mkdtempSync(join(tmpdir(), 'walcast-ra-stop-'));
  try {
    const path = join(directory, 'segment');
    writeFileSync(path, randomBytes(2 * 1024 * 1024));
    const script = `const { loadNativeAddon } = await import(${JSON.stringify(new URL('./native-binding.ts', import.meta.url).href)});
      const loaded = loadNativeAddon(); if (!loaded.ok) throw new Error('no addon');
      process.stdout.write(JSON.stringify(loaded.addon.readaheadStopWhileReadingForTest(${JSON.stringify(path)})));`;
    const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: CHILD_TIMEOUT_MS });
    assert.equal(child.status, 0, `the stop returned (signal ${String(child.signal)}): ${child.stderr}`);
    const result = JSON.parse(child.stdout) as { liveAfterStop: number; wakesAfterStop: number; liveAtEnd: number };
    assert.ok(result.liveAfterStop >= 1, `the stop returned while a thread was still in its read: ${child.stdout}`);
    assert.equal(result.wakesAfterStop, 0, 'a read finished after the stop wakes no eventfd');
    assert.equal(result.liveAtEnd, 0, 'the detached thread exits once its read returns');
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
});

test('a prefetch starved at a readahead thread is taken back after kIdleReadWaitMaxMs and read at the engine\'s priority, and the next ones skip the threads for a while', { skip: ringSkip }, async () => {
  const loaded = loadNativeAddon();
  assert.ok(loaded.ok);
  const { addon } = loaded;
  const directory = mkdtempSync(join(tmpdir(), 'walcast-ra-starved-'));
  const path = join(directory, 'segment');
  const fifo = join(directory, 'sink');
  const bytes = 4 * 1024 * 1024;
  writeSyncedFile(path, bytes);
  const fd = openSync(path, 'r');
  execFileSync('mkfifo', [fifo]);
  // The threads' reads go into a FIFO nobody reads (opened read-write: it never reports a closed reader): a read held
  // there is a read starved for as long as the test lasts, as mq-deadline holds back idle reads next to a busy writer.
  const sink = openSync(fifo, 'r+');
  addon.readaheadSinkForTest(sink);
  closeSync(sink);
  const drain = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  const done = new Map<number, () => void>();
  const engine = new addon.Engine(NATIVE_STRATEGY_CODES.sendfile, (kind: NativeEventKind, id: number) => {
    if (kind === NativeEventKind.prefetched) done.get(id)?.();
  });
  const keepAlive = setInterval(() => undefined, 1000);
  const prefetched = async (offset: number, token: number): Promise<void> => {
    // The whole file: page cache may hold it in folios larger than the range, which a partial drop leaves.
    addon.dropCache(fd, 0, bytes);
    assert.equal(addon.residentBytes(fd, offset, 1024 * 1024), 0, 'the range starts cold');
    const settled = new Promise<void>((resolve) => done.set(token, resolve));
    assert.equal(engine.prefetch(fd, offset, 1024 * 1024, token), false, 'a cold range is read, not answered at once');
    let bound: NodeJS.Timeout | undefined;
    // A bound on the wait, not a speed check: without the take-back the prefetch never completes.
    await Promise.race([settled, new Promise((_, reject) => (bound = setTimeout(() => reject(new Error(`prefetch ${token} never completed: ${JSON.stringify(engine.stats())}`)), CHILD_TIMEOUT_MS / 2)))]);
    clearTimeout(bound);
  };
  try {
    assert.equal(engine.stats().lowPriorityReads, true);
    await prefetched(0, 1);
    assert.equal(engine.stats().idleReadFallbacks, 1, 'the starved read was taken back once');
    assert.equal(addon.residentBytes(fd, 0, 1024 * 1024), 1024 * 1024, 'and the range was read at the engine\'s priority');
    // Within the back-off the next cold piece goes to the engine's READs directly: nothing more is taken back.
    await prefetched(2 * 1024 * 1024, 2);
    assert.equal(engine.stats().idleReadFallbacks, 1, JSON.stringify(engine.stats()));
    assert.equal(addon.residentBytes(fd, 2 * 1024 * 1024, 1024 * 1024), 1024 * 1024);
  } finally {
    clearInterval(keepAlive);
    engine.close();
    // Let the held thread finish its read (it exits once stopped); bounded.
    const scratch = Buffer.alloc(65536);
    for (let turn = 0; turn < 200 && readaheadThreadIds().length > 0; turn += 1) {
      try {
        readSync(drain, scratch);
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    }
    closeSync(drain);
    closeSync(fd);
    rmSync(directory, { recursive: true, force: true });
  }
});
