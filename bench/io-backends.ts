/**
 * Backend-level throughput harness: the real sender loop (replication/send-wal.ts) streaming WAL-like segment
 * files through each I/O backend (ts, native sendfile / writev / uring) to a C receiver that discards
 * (native/bench/discard-receiver.c, compiled on first use), over loopback.
 *
 * Reports per backend, median [min-max] over --reps runs, all in one process run: MB/s and sender-process CPU
 * seconds per GB (process.cpuUsage(): every thread of this process, libuv's pool included) for one receiver
 * streaming --single-mib of warm data and for --fanout receivers streaming --fanout-mib each. With --cold it
 * also streams --cold-mib from files made cold with posix_fadvise(DONTNEED) and reports the event-loop delay
 * (perf_hooks.monitorEventLoopDelay) with and without the backend's prefetch. With --verify it measures instead
 * what page verification (storage/page-verifier.ts, sidecars made for the data set) costs: the same warm runs
 * with and without it, paired per repetition after an unrecorded warm-up pair, and the CPU s/GB it adds.
 *
 *   node --import tsx bench/io-backends.ts [--reps 3] [--backends ts,sendfile,writev,uring] [--cold] [--quick] [--verify]
 *   node --import tsx bench/io-backends.ts --cold-only --reps 9 --cold-cases sendfile,sendfile-off [--cold-mib 256]
 *
 * The data set lives in $TMPDIR/walcast-bench-io: give each concurrent user of the machine its own TMPDIR, or one
 * run's DONTNEED evicts the files another run is measuring.
 *
 * Back of the envelope (native/README.md): loopback sendfile tops out near 3-3.6 GB/s at ~0.3 CPU s/GB on this
 * kind of 2-vCPU guest; one payload copy in JS costs ~1 CPU s/GB, so ts should sit near 1 GB/s.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, openSync, statSync, writeFileSync, closeSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import type { IoBackend, StreamWriter, WalChunk, WalFileHandle } from '../src/io/backend.js';
import { NATIVE_STRATEGIES, defaultNativeStrategy, createNativeBackend, probeNative, type NativeStrategy } from '../src/io/native-backend.js';
import { loadNativeAddon } from '../src/io/native-binding.js';
import { createTsBackend } from '../src/io/ts-backend.js';
import type { Lsn } from '../src/lsn.js';
import { silentLogger } from '../src/log.js';
import { sendWal } from '../src/replication/send-wal.js';
import { encodeEntries } from '../src/storage/page-checksums.js';
import { PageVerifier } from '../src/storage/page-verifier.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import { checksumPagesByReading, createChecksumPool } from '../src/io/ts-backend.js';
import { diskDelta, diskStatPath, sampleDisk, type DiskDelta } from './lib/disk-stats.js';

const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const RECEIVER_SOURCE = join(REPO_ROOT, 'native', 'bench', 'discard-receiver.c');
const WORK_DIR = join(tmpdir(), 'walcast-bench-io');
const RECEIVER_BINARY = join(WORK_DIR, 'discard-receiver');

/** PostgreSQL's default segment size; 64 of them make the 1 GiB data set. */
const SEGMENT_BYTES = 16 * 1024 * 1024;
const SEGMENT_COUNT = 64;
const MIB = 1024 * 1024;
/** Streams start on distinct segments (10 segments apart, wrapping) so fan-out reads the whole data set. */
const FANOUT_START_STRIDE_SEGMENTS = 10;
/** First LSN of the data set: segment 1, as a cluster's first WAL is never at 0/0. */
const BASE_LSN: Lsn = BigInt(SEGMENT_BYTES);
/** A run that takes longer than this is broken, not slow. */
const RUN_TIMEOUT_MS = 300_000;

type BackendName = 'ts' | NativeStrategy;

interface Options {
  reps: number;
  backends: BackendName[];
  singleBytes: number;
  fanout: number;
  fanoutBytes: number;
  cold: boolean;
  /** Skip the warm tables (for iterating on the cold case). */
  coldOnly: boolean;
  coldBytes: number;
  /** Which cold cases to run (keys of COLD_CASES), in this order within every repetition. */
  coldCases: ColdCaseKey[];
  verify: boolean;
}

interface RunResult {
  bytes: number;
  seconds: number;
  cpuSeconds: number;
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
  /** Longest synchronous part of one sendChunk call: where a blocking sendfile on a cache miss would show. */
  sendCallMaxMs: number;
  /** What the block device holding the data set did meanwhile (undefined when its stats are not readable). */
  disk: DiskDelta | undefined;
  /** Event-loop delay p99 of this process idling right after the run: what the machine's load alone costs. */
  idleLoopDelayP99Ms?: number;
  /** Minor page faults of this process during the run (mappings of the segment files being populated). */
  minorFaults: number;
}

function parseOptions(argv: readonly string[]): Options {
  const value = (name: string, fallback: string): string => {
    const index = argv.indexOf(`--${name}`);
    return index >= 0 && argv[index + 1] !== undefined ? argv[index + 1]! : fallback;
  };
  const quick = argv.includes('--quick');
  const backends = value('backends', 'ts,sendfile,writev,uring').split(',') as BackendName[];
  for (const name of backends) assert.ok(['ts', 'sendfile', 'writev', 'uring'].includes(name), `unknown backend ${name}`);
  return {
    reps: Number(value('reps', quick ? '1' : '3')),
    backends,
    singleBytes: Number(value('single-mib', quick ? '256' : '1024')) * MIB,
    fanout: Number(value('fanout', '100')),
    fanoutBytes: Number(value('fanout-mib', quick ? '16' : '64')) * MIB,
    cold: argv.includes('--cold'),
    coldOnly: argv.includes('--cold-only'),
    coldBytes: Number(value('cold-mib', '256')) * MIB,
    coldCases: value('cold-cases', Object.keys(COLD_CASES).join(',')).split(',').map((key) => {
      assert.ok(key in COLD_CASES, `unknown cold case ${key} (known: ${Object.keys(COLD_CASES).join(', ')})`);
      return key as ColdCaseKey;
    }),
    verify: argv.includes('--verify'),
  };
}

/** 64 x 16 MiB of random bytes (incompressible, like WAL full-page images); made once, reused. */
function ensureDataSet(): WalFileHandle[] {
  mkdirSync(WORK_DIR, { recursive: true });
  const handles: WalFileHandle[] = [];
  for (let index = 0; index < SEGMENT_COUNT; index++) {
    const path = join(WORK_DIR, `segment-${String(index).padStart(2, '0')}`);
    if (!existsSync(path) || statSync(path).size !== SEGMENT_BYTES) writeFileSync(path, randomBytes(SEGMENT_BYTES));
    handles.push({ fd: openSync(path, 'r'), path });
  }
  return handles;
}

/**
 * The verifier reads a segment's sidecar from beside the file read (storage/page-verifier.ts), named after the
 * segment number the LSN is in: the data set's files are in WORK_DIR, so their sidecars go there too. (Kept in a
 * subdirectory, they were never found, and every page cost a failed open instead of a checksum.)
 */
const SIDECAR_DIR = WORK_DIR;
/** Segment numbers the runs reach: starts up to segment 64 plus 1 GiB (64 segments), with room. */
const SIDECAR_SEGMENTS = 3 * SEGMENT_COUNT;
const PAGE_BYTES = 8192;
/** The unrecorded warm-up pair of --verify, per backend. */
const VERIFY_WARMUP_BYTES = 64 * MIB;

/** Page-checksum sidecars for every segment number the runs use (segment n is file n % 64), made from the files. */
async function ensureSidecars(handles: readonly WalFileHandle[]): Promise<void> {
  mkdirSync(SIDECAR_DIR, { recursive: true });
  // Made once like the data set (newer than every file of it), so a profile of the run is not mostly this setup.
  const dataMtimeMs = Math.max(...handles.map((handle) => statSync(handle.path).mtimeMs));
  const sidecarPath = (segno: number): string => join(SIDECAR_DIR, `${segmentFileName(1, BigInt(segno), SEGMENT_BYTES)}.crc`);
  const current = (segno: number): boolean => existsSync(sidecarPath(segno)) && statSync(sidecarPath(segno)).mtimeMs > dataMtimeMs;
  if (Array.from({ length: SIDECAR_SEGMENTS }, (_, segno) => segno).every(current)) return;
  const perFile: Buffer[] = [];
  const checksumPool = createChecksumPool();
  for (const handle of handles) {
    const crcs = new Uint32Array(SEGMENT_BYTES / PAGE_BYTES);
    await checksumPagesByReading({ file: handle, fileOffset: 0, byteCount: SEGMENT_BYTES }, PAGE_BYTES, crcs, checksumPool);
    perFile.push(encodeEntries(crcs));
  }
  for (let segno = 0; segno < SIDECAR_SEGMENTS; segno++) {
    writeFileSync(sidecarPath(segno), perFile[segno % SEGMENT_COUNT]!);
  }
}

function ensureReceiver(): void {
  if (existsSync(RECEIVER_BINARY) && statSync(RECEIVER_BINARY).mtimeMs >= statSync(RECEIVER_SOURCE).mtimeMs) return;
  const result = spawnSync('cc', ['-O2', '-o', RECEIVER_BINARY, RECEIVER_SOURCE], { stdio: 'inherit' });
  assert.equal(result.status, 0, 'compiling the discard receiver failed');
}

function warmCache(handles: readonly WalFileHandle[]): void {
  spawnSync('cat', handles.map((handle) => handle.path), { stdio: ['ignore', 'ignore', 'inherit'] });
}

function coolCache(handles: readonly WalFileHandle[]): void {
  const loaded = loadNativeAddon();
  assert.ok(loaded.ok, 'the cold run needs the addon for posix_fadvise');
  for (const handle of handles) loaded.addon.dropCache(handle.fd, 0, 0);
}

async function makeBackend(name: BackendName): Promise<IoBackend> {
  return name === 'ts' ? createTsBackend() : createNativeBackend(name);
}

/** Maps LSNs onto the data set, wrapping around its 64 segments. */
function walSource(handles: readonly WalFileHandle[]): { locate(lsn: Lsn, endLsn: Lsn): Promise<WalChunk> } {
  return {
    async locate(lsn: Lsn, endLsn: Lsn): Promise<WalChunk> {
      const segment = Number(lsn / BigInt(SEGMENT_BYTES)) % SEGMENT_COUNT;
      const fileOffset = Number(lsn % BigInt(SEGMENT_BYTES));
      const byteCount = Math.min(Number(endLsn - lsn), SEGMENT_BYTES - fileOffset);
      return { file: handles[segment]!, fileOffset, byteCount };
    },
  };
}

/** The block device counters of the data set's file system (set once the data set exists). */
let DISK_STAT_PATH: string | undefined;

/** Longest synchronous sendChunk call of the current run, in ms. */
let sendCallMaxMs = 0;

/**
 * The writer, timing the synchronous part of each sendChunk (a native send runs entirely inside the call), and
 * optionally with prefetch switched off: shows what a cold sendfile does to the event loop.
 */
function instrumented(writer: StreamWriter, prefetch: boolean): StreamWriter {
  return {
    path: writer.path,
    sendChunk: (header, chunk) => {
      const started = performance.now();
      const sending = writer.sendChunk(header, chunk);
      sendCallMaxMs = Math.max(sendCallMaxMs, performance.now() - started);
      return sending;
    },
    sendMessage: (bytes) => writer.sendMessage(bytes),
    prefetch: prefetch ? (chunk) => writer.prefetch(chunk) : async () => undefined,
    afterWritten: (observer) => writer.afterWritten(observer),
    release: () => writer.release(),
    get bytesSent() {
      return writer.bytesSent;
    },
  };
}

async function streamOne(backend: IoBackend, socket: Socket, handles: readonly WalFileHandle[], startLsn: Lsn, bytes: number, prefetch: boolean, verifier: PageVerifier | undefined): Promise<void> {
  const writer = instrumented(await backend.openStream(socket), prefetch);
  const log = silentLogger();
  const stopLsn = startLsn + BigInt(bytes);
  const source = walSource(handles);
  const end = await sendWal({
    replicaName: 'bench',
    startLsn,
    segmentBytes: SEGMENT_BYTES,
    endWatch: { get: () => stopLsn, waitBeyond: async () => undefined },
    source,
    prefetchSource: source,
    writer,
    verify: verifier === undefined ? undefined : (chunk, chunkLsn) => verifier.verify(chunk, chunkLsn, { checksummer: backend, tail: undefined, log }),
    verifyNow: verifier === undefined ? undefined : (chunk, chunkLsn) => verifier.verifyNow(chunk, chunkLsn, { checksummer: backend, tail: undefined, log }),
    signal: new AbortController().signal,
    stopAtEnd: true,
    shouldStop: () => true,
    onSent: () => undefined,
    // The bench receiver only reads; a last reply of "now" means the sender never asks it for one.
    replicaTimeoutMs: 60_000,
    lastReplyAtMs: () => Date.now(),
  });
  assert.equal(end.kind, 'recovery_finished');
  await writer.release();
  socket.end();
}

/** One measured run: `receivers` connections, each streaming `bytesEach` from its own start. */
async function runOnce(name: BackendName, handles: readonly WalFileHandle[], receivers: number, bytesEach: number, prefetch = true, verify = false): Promise<RunResult> {
  const backend = await makeBackend(name);
  // A fresh verifier per run: every page is checked once in the run, as after a restart (the worst case).
  const verifier = verify ? new PageVerifier(SIDECAR_DIR, { segmentBytes: SEGMENT_BYTES, pgTimelineId: 1 }) : undefined;
  const server = createServer();
  const sockets: Socket[] = [];
  const allConnected = new Promise<void>((resolve) => {
    server.on('connection', (socket) => {
      socket.on('error', () => undefined);
      sockets.push(socket);
      if (sockets.length === receivers) resolve();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  const receiver = spawn(RECEIVER_BINARY, ['127.0.0.1', String(port), String(receivers)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let output = '';
  receiver.stdout.on('data', (data: Buffer) => (output += data.toString()));
  const exited = new Promise<number | null>((resolve) => receiver.on('exit', resolve));
  const timeout = setTimeout(() => receiver.kill('SIGKILL'), RUN_TIMEOUT_MS);
  await allConnected;
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  sendCallMaxMs = 0;
  const cpuBefore = process.cpuUsage();
  const diskBefore = sampleDisk(DISK_STAT_PATH);
  const faultsBefore = process.resourceUsage().minorPageFault;
  const started = performance.now();
  await Promise.all(
    sockets.map((socket, index) => {
      const startSegment = (index * FANOUT_START_STRIDE_SEGMENTS) % SEGMENT_COUNT;
      return streamOne(backend, socket, handles, BASE_LSN + BigInt(startSegment * SEGMENT_BYTES), bytesEach, prefetch, verifier);
    }),
  );
  const code = await exited;
  const seconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  const disk = diskDelta(diskBefore, sampleDisk(DISK_STAT_PATH));
  const minorFaults = process.resourceUsage().minorPageFault - faultsBefore;
  delay.disable();
  clearTimeout(timeout);
  server.close();
  await backend.close();
  assert.equal(code, 0, `receiver failed: ${output}`);
  const received = Number(/bytes=(\d+)/.exec(output)?.[1] ?? 0);
  const headerBytes = 30 * Math.ceil(bytesEach / (128 * 1024)) * receivers;
  assert.ok(received >= bytesEach * receivers && received <= bytesEach * receivers + headerBytes * 2, `received ${received} bytes`);
  return {
    bytes: received,
    seconds,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    loopDelayP99Ms: delay.percentile(99) / 1e6,
    loopDelayMaxMs: delay.max / 1e6,
    sendCallMaxMs,
    disk,
    minorFaults,
  };
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

function summary(values: readonly number[], digits: number): string {
  const sorted = [...values].sort((a, b) => a - b);
  const spread = sorted.length > 1 ? ` [${sorted[0]!.toFixed(digits)}-${sorted[sorted.length - 1]!.toFixed(digits)}]` : '';
  return `${median(values).toFixed(digits)}${spread}`;
}

function row(label: string, runs: readonly RunResult[]): string {
  const mbPerSecond = runs.map((run) => run.bytes / 1e6 / run.seconds);
  const cpuPerGb = runs.map((run) => run.cpuSeconds / (run.bytes / 1e9));
  const p99 = summary(runs.map((run) => run.loopDelayP99Ms), 1);
  const sendCall = summary(runs.map((run) => run.sendCallMaxMs), 2);
  return `| ${label} | ${summary(mbPerSecond, 0)} | ${summary(cpuPerGb, 2)} | ${p99} | ${sendCall} |`;
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const native = probeNative();
  if (!native.ok) {
    console.log(`native addon unavailable (${native.reason}): ts only`);
    options.backends = options.backends.filter((name) => name === 'ts');
  }
  const handles = ensureDataSet();
  DISK_STAT_PATH = diskStatPath(WORK_DIR);
  ensureReceiver();
  warmCache(handles);
  if (options.verify) {
    await verifyRuns(options, handles);
    for (const handle of handles) closeSync(handle.fd);
    return;
  }
  const single = new Map<BackendName, RunResult[]>();
  const fanout = new Map<BackendName, RunResult[]>();
  // Repetitions interleave the backends, so machine noise spreads over all of them alike.
  for (let rep = 0; rep < (options.coldOnly ? 0 : options.reps); rep++) {
    for (const name of options.backends) {
      single.set(name, [...(single.get(name) ?? []), await runOnce(name, handles, 1, options.singleBytes)]);
      fanout.set(name, [...(fanout.get(name) ?? []), await runOnce(name, handles, options.fanout, options.fanoutBytes)]);
      process.stderr.write('.');
    }
  }
  process.stderr.write('\n');
  printHeader(options);
  if (!options.coldOnly) printWarmTables(options, single, fanout);
  if ((options.cold || options.coldOnly) && native.ok) await coldRuns(options, handles);
  for (const handle of handles) closeSync(handle.fd);
}

function printWarmTables(options: Options, single: Map<BackendName, RunResult[]>, fanout: Map<BackendName, RunResult[]>): void {
  console.log(`\n### 1 receiver, ${options.singleBytes / MIB} MiB warm\n| backend | MB/s | sender CPU s/GB | event-loop delay p99 ms | longest sendChunk call ms |\n|---|---|---|---|---|`);
  for (const name of options.backends) console.log(row(name, single.get(name)!));
  console.log(`\n### ${options.fanout} receivers, ${options.fanoutBytes / MIB} MiB each (${((options.fanout * options.fanoutBytes) / 2 ** 30).toFixed(2)} GiB), warm\n| backend | MB/s (aggregate) | sender CPU s/GB | event-loop delay p99 ms | longest sendChunk call ms |\n|---|---|---|---|---|`);
  for (const name of options.backends) console.log(row(name, fanout.get(name)!));
}

/** Bytes of the unrecorded warm-up run per cold case. */
const COLD_WARM_UP_BYTES = 64 * MIB;

/** How long the idle reference measurement after each cold run lasts. */
const IDLE_REFERENCE_MS = 300;

/**
 * The event-loop delay p99 of this process doing nothing for IDLE_REFERENCE_MS: on a loaded machine the loop waits
 * for a CPU as well, which no backend can help; a run's p99 near this figure means the backend added nothing.
 */
async function idleLoopDelayP99Ms(): Promise<number> {
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  await new Promise((resolve) => setTimeout(resolve, IDLE_REFERENCE_MS));
  delay.disable();
  return delay.percentile(99) / 1e6;
}

/** The cold cases, by the key --cold-cases names them with. */
const COLD_CASES = {
  ts: { label: 'ts (async pread on the libuv pool)', name: 'ts', prefetch: true },
  ...Object.fromEntries(NATIVE_STRATEGIES.map((name) => [name, { label: `native ${name} + prefetch${name === defaultNativeStrategy() ? ' (default)' : ''}`, name, prefetch: true }])),
  'sendfile-off': { label: 'native sendfile, prefetch off', name: 'sendfile', prefetch: false },
} as const satisfies Record<string, { label: string; name: BackendName; prefetch: boolean }>;
type ColdCaseKey = keyof typeof COLD_CASES;

/**
 * Cold catch-up: one receiver from files just dropped from page cache; the event loop must stay responsive.
 * Repetitions interleave the cases (A/B per round), so machine noise spreads over all of them alike. The disk
 * columns come from the block device's counters (bench/lib/disk-stats.ts): average read size and reads in flight.
 */
async function coldRuns(options: Options, handles: readonly WalFileHandle[]): Promise<void> {
  const runs = new Map<ColdCaseKey, RunResult[]>();
  // One unrecorded warm run per case first: otherwise the first case of the process pays V8's compilation of the
  // send path (CPU, event-loop delay) and looks worse than the cases after it.
  warmCache(handles);
  for (const key of options.coldCases) await runOnce(COLD_CASES[key].name, handles, 1, COLD_WARM_UP_BYTES, COLD_CASES[key].prefetch);
  for (let rep = 0; rep < options.reps; rep++) {
    for (const key of options.coldCases) {
      const entry = COLD_CASES[key];
      coolCache(handles);
      const run = await runOnce(entry.name, handles, 1, options.coldBytes, entry.prefetch);
      run.idleLoopDelayP99Ms = await idleLoopDelayP99Ms();
      runs.set(key, [...(runs.get(key) ?? []), run]);
      process.stderr.write('.');
    }
  }
  process.stderr.write('\n');
  console.log(`\n### cold cache, 1 receiver, ${options.coldBytes / MIB} MiB (posix_fadvise DONTNEED before each run), cases interleaved per round`);
  console.log('| case | MB/s | sender CPU s/GB | event-loop delay p99 ms | longest sendChunk call ms | event-loop delay max ms | disk KiB/read | disk reads in flight | idle event-loop delay p99 ms |\n|---|---|---|---|---|---|---|---|---|');
  for (const key of options.coldCases) {
    const caseRuns = runs.get(key)!;
    const max = summary(caseRuns.map((run) => run.loopDelayMaxMs), 1);
    const disks = caseRuns.flatMap((run) => (run.disk === undefined ? [] : [run.disk]));
    const disk = disks.length === 0 ? 'n/a | n/a' : `${summary(disks.map((entry) => entry.kibPerRead), 0)} | ${summary(disks.map((entry) => entry.readsInFlight), 1)}`;
    const idle = summary(caseRuns.map((run) => run.idleLoopDelayP99Ms ?? 0), 1);
    console.log(`${row(COLD_CASES[key].label, caseRuns)} ${max} | ${disk} | ${idle} |`);
  }
  warmCache(handles);
}

/**
 * The cost of page verification: warm runs with and without it, interleaved per repetition (1 receiver and the
 * fan-out case), and the CPU s/GB it adds, computed per pair so machine noise between pairs cancels.
 */
async function verifyRuns(options: Options, handles: readonly WalFileHandle[]): Promise<void> {
  await ensureSidecars(handles);
  // --fanout 0 measures the one-receiver case only (for profiling it: docs/benchmarks.md).
  const cases = [
    { label: `1 receiver, ${options.singleBytes / MIB} MiB`, receivers: 1, bytes: options.singleBytes },
    { label: `${options.fanout} receivers, ${options.fanoutBytes / MIB} MiB each`, receivers: options.fanout, bytes: options.fanoutBytes },
  ].filter((entry) => entry.receivers > 0);
  const results = new Map<string, { plain: RunResult[]; verified: RunResult[] }>();
  // One unrecorded pair per backend first: V8 compiles the verify path during the first verified run (~0.05 CPU s
  // in the profile), a one-time cost a running server has paid long before, which would otherwise land in rep 1.
  for (const name of options.backends) {
    await runOnce(name, handles, 1, VERIFY_WARMUP_BYTES, true, false);
    await runOnce(name, handles, 1, VERIFY_WARMUP_BYTES, true, true);
  }
  for (let rep = 0; rep < options.reps; rep++) {
    for (const entry of cases) {
      for (const name of options.backends) {
        const key = `${entry.label}|${name}`;
        const runs = results.get(key) ?? { plain: [], verified: [] };
        runs.plain.push(await runOnce(name, handles, entry.receivers, entry.bytes, true, false));
        runs.verified.push(await runOnce(name, handles, entry.receivers, entry.bytes, true, true));
        results.set(key, runs);
        process.stderr.write('.');
      }
    }
  }
  process.stderr.write('\n');
  printHeader(options);
  for (const entry of cases) {
    console.log(
      `\n### page verification, ${entry.label}, warm\n| backend | MB/s off | MB/s on | CPU s/GB off | CPU s/GB on | added CPU s/GB (per pair) | minor faults/GB off | on |\n|---|---|---|---|---|---|---|---|`,
    );
    for (const name of options.backends) {
      const { plain, verified } = results.get(`${entry.label}|${name}`)!;
      const cpuPerGb = (run: RunResult): number => run.cpuSeconds / (run.bytes / 1e9);
      const rate = (run: RunResult): number => run.bytes / 1e6 / run.seconds;
      const added = plain.map((run, index) => cpuPerGb(verified[index]!) - cpuPerGb(run));
      const faultsPerGb = (run: RunResult): number => run.minorFaults / (run.bytes / 1e9);
      console.log(
        `| ${name} | ${summary(plain.map(rate), 0)} | ${summary(verified.map(rate), 0)} | ${summary(plain.map(cpuPerGb), 3)} | ${summary(verified.map(cpuPerGb), 3)} | ${summary(added, 3)} | ${median(plain.map(faultsPerGb)).toFixed(0)} | ${median(verified.map(faultsPerGb)).toFixed(0)} |`,
      );
    }
  }
}

function printHeader(options: Options): void {
  const kernel = spawnSync('uname', ['-r'], { encoding: 'utf8' }).stdout.trim();
  console.log(`## bench/io-backends.ts, ${new Date().toISOString()}`);
  console.log(`${cpus().length} x ${cpus()[0]?.model ?? 'unknown CPU'}, Linux ${kernel}, Node ${process.version}; loopback, C discard receiver;`);
  console.log(`16 MiB segments, 128 KiB chunks + 30-byte headers through replication/send-wal.ts; median [min-max] of ${options.reps}.`);
}

await main();
