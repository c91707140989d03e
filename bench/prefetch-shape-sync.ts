/**
 * Does the cold prefetch's piece and window size slow the live writer's fdatasync? (issue 13: a live replica beside
 * cold catch-ups lost 0.3-0.5 ms of commit p50 with 4 MiB pieces and an 8 MiB window, and the ingest hop's mean, which
 * holds the fdatasync, grew 0.1-0.3 ms.) The disk alone, without PostgreSQL, sockets or the sender's JavaScript:
 * `--streams N` cold files are read through the native backend's prefetch (its readahead threads, idle I/O priority)
 * as the sender's Prefetcher asks for them, every piece of the window in flight, the next requested as one finishes
 * (a sender faster than the disk); meanwhile a writer appends 8 KiB and fdatasyncs through libuv's pool every
 * `--sync-every-ms`, as the WAL writer does per commit. Shapes alternate round by round (each file evicted before each
 * round), so a loaded machine hits them alike. A round ends after `--round-ms` or once the files are read, whichever
 * is first; only syncs and timer ticks that started while reads ran count. Reported per shape: fdatasync p50/p90/p99,
 * the event loop's lateness (a timer every ms: its delay p50/p99/max) and the cold read MB/s.
 *
 * Usage: node --import tsx bench/prefetch-shape-sync.ts [--shapes 1:4,4:8,4:8:1] (piece:window[:read] MiB: the sender's
 *   piece and window, and the size of each request to the addon, default the piece) [--rounds 6]
 *   [--round-ms 4000] [--streams 3] [--file-mib 256] [--sync-every-ms 5] [--stream-mbps N (0: unpaced)] [--dir DIR]
 */
import { closeSync, fdatasync, mkdirSync, openSync, rmSync, write, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import type { WalChunk } from '../src/io/backend.js';
import { createNativeBackend } from '../src/io/native-backend.js';
import { buildTools, SCRATCH_DIR } from './lib/tools.js';
import { evictFromPageCache } from './scenarios/streaming.js';

const MIB = 1024 * 1024;
const SYNC_BYTES = 8192;

const { values } = parseArgs({
  options: {
    shapes: { type: 'string', default: '1:4,4:8,4:8:1' },
    rounds: { type: 'string', default: '6' },
    'round-ms': { type: 'string', default: '4000' },
    streams: { type: 'string', default: '3' },
    'file-mib': { type: 'string', default: '256' },
    'sync-every-ms': { type: 'string', default: '5' },
    'stream-mbps': { type: 'string', default: '0' },
    dir: { type: 'string' },
  },
});

const shapes = values.shapes.split(',').map((text) => {
  const [piece, window, read = piece] = text.split(':').map(Number);
  if (!piece || !window || !read || window % piece !== 0 || piece > 4 || read > piece) throw new RangeError(`shape ${text}: piece:window[:read] in MiB, window a multiple of piece, read ≤ piece ≤ 4`);
  return { label: `${piece} MiB / ${window} MiB${read === piece ? '' : ` in ${read} MiB reads`}`, pieceBytes: piece * MIB, windowBytes: window * MIB, readBytes: read * MIB };
});
const rounds = Number(values.rounds);
const roundMs = Number(values['round-ms']);
const streams = Number(values.streams);
const fileBytes = Number(values['file-mib']) * MIB;
const syncEveryMs = Number(values['sync-every-ms']);
/** Each stream's pace, as a sender would take the pieces (0: as fast as the disk). */
const streamBytesPerMs = (Number(values['stream-mbps']) * MIB) / 1000;
const dir = values.dir ?? join(SCRATCH_DIR, `prefetch-shape-sync-${process.pid}`);

const tools = buildTools();
mkdirSync(dir, { recursive: true });
const files = Array.from({ length: streams }, (_, index) => join(dir, `cold-${index}`));
for (const path of files) {
  const fd = openSync(path, 'w');
  const block = randomBytes(16 * MIB);
  for (let done = 0; done < fileBytes; done += block.length) writeSync(fd, block);
  closeSync(fd);
}
// prefetch is the native backend's (its streams' prefetch goes through it): not on IoBackend. One backend per read size.
type Prefetching = Awaited<ReturnType<typeof createNativeBackend>> & { prefetch(chunk: WalChunk): Promise<void> };
const backends = new Map<number, Prefetching>();
for (const shape of shapes) {
  if (!backends.has(shape.readBytes)) backends.set(shape.readBytes, (await createNativeBackend('sendfile', { prefetchReadBytes: shape.readBytes })) as Prefetching);
}

interface Sample {
  syncs: number[];
  lateness: number[];
  readBytes: number;
  seconds: number;
}
const results = new Map<string, Sample[]>();

/** One cold stream: the whole window in flight, in pieces, the next piece asked for as the oldest finishes. */
async function readCold(backend: Prefetching, path: string, pieceBytes: number, windowBytes: number, until: () => boolean): Promise<number> {
  const fd = openSync(path, 'r');
  const file = { fd, path, closed: false };
  let next = 0;
  let read = 0;
  const inFlight: Promise<void>[] = [];
  const ask = (): void => {
    if (next >= fileBytes) return;
    const bytes = Math.min(pieceBytes, fileBytes - next);
    inFlight.push(backend.prefetch({ file, fileOffset: next, byteCount: bytes }).then(() => void (read += bytes)));
    next += bytes;
  };
  const started = performance.now();
  try {
    while (inFlight.length < windowBytes / pieceBytes) ask();
    while (inFlight.length > 0 && !until()) {
      await inFlight.shift();
      // A paced stream asks for the next piece only once it has "sent" the ones before at its rate.
      if (streamBytesPerMs > 0) {
        const due = started + (next - windowBytes) / streamBytesPerMs;
        if (due > performance.now()) await sleep(due - performance.now());
      }
      ask();
    }
    await Promise.all(inFlight);
  } finally {
    file.closed = true;
    closeSync(fd);
  }
  return read;
}

async function round(shape: (typeof shapes)[number]): Promise<Sample> {
  evictFromPageCache(tools, files);
  const syncPath = join(dir, 'wal');
  const syncFd = openSync(syncPath, 'w');
  const page = randomBytes(SYNC_BYTES);
  const syncs: number[] = [];
  const lateness: number[] = [];
  let stop = false;
  const started = performance.now();
  // Only syncs that started while the cold reads ran count (a fast disk finishes the files before the round ends).
  let readingEndedAt = Number.POSITIVE_INFINITY;
  const reading = Promise.all(files.map((path) => readCold(backends.get(shape.readBytes)!, path, shape.pieceBytes, shape.windowBytes, () => stop))).finally(() => (readingEndedAt = performance.now()));
  const syncing = (async () => {
    let offset = 0;
    while (!stop) {
      const begin = performance.now();
      await new Promise<void>((resolve, reject) => write(syncFd, page, 0, SYNC_BYTES, offset, (error) => (error ? reject(error) : resolve())));
      await new Promise<void>((resolve, reject) => fdatasync(syncFd, (error) => (error ? reject(error) : resolve())));
      if (begin < readingEndedAt) syncs.push(performance.now() - begin);
      offset += SYNC_BYTES;
      await sleep(syncEveryMs);
    }
  })();
  const ticking = (async () => {
    while (!stop) {
      const begin = performance.now();
      await sleep(1);
      if (begin < readingEndedAt) lateness.push(performance.now() - begin - 1);
    }
  })();
  await Promise.race([sleep(roundMs), reading]);
  stop = true;
  const readBytes = (await reading).reduce((sum, bytes) => sum + bytes, 0);
  const seconds = (readingEndedAt - started) / 1000;
  await Promise.all([syncing, ticking]);
  closeSync(syncFd);
  rmSync(syncPath, { force: true });
  return { syncs, lateness, readBytes, seconds };
}

const percentile = (values: number[], p: number): number => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
};
const median = (values: number[]): number => percentile(values, 50);

try {
  console.log('| shape | round | fdatasync p50 / p90 / p99 ms | loop lateness p50 / p99 / max ms | cold read MB/s (all streams) |');
  console.log('|---|---:|---|---|---:|');
  for (let index = 0; index < rounds; index++) {
    // Alternate which shape goes first, so neither always follows the other's page-cache state.
    const order = index % 2 === 0 ? shapes : [...shapes].reverse();
    for (const shape of order) {
      const sample = await round(shape);
      results.set(shape.label, [...(results.get(shape.label) ?? []), sample]);
      const f = (n: number): string => n.toFixed(2);
      console.log(`| ${shape.label} | ${index + 1} | ${f(percentile(sample.syncs, 50))} / ${f(percentile(sample.syncs, 90))} / ${f(percentile(sample.syncs, 99))} | ${f(percentile(sample.lateness, 50))} / ${f(percentile(sample.lateness, 99))} / ${f(Math.max(...sample.lateness))} | ${(sample.readBytes / MIB / sample.seconds).toFixed(0)} |`);
    }
  }
  console.log('\nMedians over rounds (of each round\'s figure), and pooled over all rounds:\n');
  console.log('| shape | fdatasync p50 / p90 / p99 ms (median of rounds) | pooled p50 / p90 / p99 ms | syncs | loop lateness p99 ms (median) | cold read MB/s (median) |');
  console.log('|---|---|---|---:|---:|---:|');
  for (const shape of shapes) {
    const samples = results.get(shape.label) ?? [];
    const pooled = samples.flatMap((sample) => sample.syncs);
    const f = (n: number): string => n.toFixed(2);
    console.log(`| ${shape.label} | ${f(median(samples.map((s) => percentile(s.syncs, 50))))} / ${f(median(samples.map((s) => percentile(s.syncs, 90))))} / ${f(median(samples.map((s) => percentile(s.syncs, 99))))} | ${f(percentile(pooled, 50))} / ${f(percentile(pooled, 90))} / ${f(percentile(pooled, 99))} | ${pooled.length} | ${f(median(samples.map((s) => percentile(s.lateness, 99))))} | ${median(samples.map((s) => s.readBytes / MIB / s.seconds)).toFixed(0)} |`);
  }
} finally {
  for (const backend of backends.values()) await backend.close();
  rmSync(dir, { recursive: true, force: true });
}
