/**
 * Read-side figures of the block device holding a path, from /sys/dev/block/MAJ:MIN/stat (the counters iostat
 * reads; Documentation/block/stat.rst): how many reads the device completed, how large they were on average and
 * how many were in flight on average. A cold catch-up that issues too few or too small reads shows here as a
 * small average size or a queue depth near 1, whatever the machine's load does to MB/s.
 *
 * The counters are device-wide: other I/O on the same device during a run is counted too (on a shared machine,
 * compare medians over several interleaved rounds).
 */
import { readFileSync, statSync } from 'node:fs';

export interface DiskSample {
  readonly reads: number;
  readonly sectors: number;
  /** Milliseconds reads spent in flight, summed over reads (so Δ / elapsed ms = average reads in flight). */
  readonly readMs: number;
  readonly atMs: number;
}

export interface DiskDelta {
  readonly reads: number;
  readonly mib: number;
  /** Average size of one completed read, KiB. */
  readonly kibPerRead: number;
  /** Average number of reads in flight over the interval (iostat's aqu-sz, reads only). */
  readonly readsInFlight: number;
}

/** The stat file of the device (or partition) holding `path`, or undefined when /sys does not have it. */
export function diskStatPath(path: string): string | undefined {
  const dev = statSync(path).dev;
  // Linux's new_encode_dev: minor bits 0-7 and 20-31, major bits 8-19.
  const major = (dev >> 8) & 0xfff;
  const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
  const statPath = `/sys/dev/block/${major}:${minor}/stat`;
  try {
    readFileSync(statPath);
    return statPath;
  } catch {
    return undefined;
  }
}

export function sampleDisk(statPath: string | undefined): DiskSample | undefined {
  if (statPath === undefined) return undefined;
  const fields = readFileSync(statPath, 'utf8').trim().split(/\s+/).map(Number);
  return { reads: fields[0] ?? 0, sectors: fields[2] ?? 0, readMs: fields[3] ?? 0, atMs: performance.now() };
}

export function diskDelta(before: DiskSample | undefined, after: DiskSample | undefined): DiskDelta | undefined {
  if (before === undefined || after === undefined) return undefined;
  const reads = after.reads - before.reads;
  const bytes = (after.sectors - before.sectors) * 512;
  const elapsedMs = Math.max(1, after.atMs - before.atMs);
  return { reads, mib: bytes / 2 ** 20, kibPerRead: reads > 0 ? bytes / 1024 / reads : 0, readsInFlight: (after.readMs - before.readMs) / elapsedMs };
}
