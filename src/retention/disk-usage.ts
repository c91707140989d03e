/**
 * The disk usage of one timeline's segment files, measured without an lstat of every file every time.
 *
 * Why: the retention task reports bytes on disk (status API, /metrics) every DISK_USAGE_REFRESH_MS. One lstat per
 * file each time is one thread-pool round trip per file: with the default 1 GiB kept that is 64 segments and their
 * sidecars, ~65 round trips a second per timeline, and with slots holding 100 GiB some 6,400 a second. Each round
 * trip wakes a pool thread and then the event loop, and on a two-CPU machine the woken pool thread preempted the
 * event-loop thread in the middle of catch-ups (docs/benchmarks.md, "Context switches per catch-up, and the background
 * work of an idle server").
 *
 * What may change: a complete segment file (NAME) is written whole before its rename from NAME.partial and is never
 * written again, so its size is known once looked at; NAME.partial grows with ingest and is looked at every time;
 * a sidecar (NAME.crc) grows as pages are first verified. Everything cached is looked at again at least every
 * `fullRefreshMs`, so a file that changed anyway (a sidecar, or one replaced by hand) is counted right within that
 * bound. Names that disappear are forgotten.
 */
import assert from 'node:assert/strict';
import { PARTIAL_SUFFIX } from '../storage/segment-name.js';

/** Cached sizes are measured again at least this often. */
export const DISK_USAGE_FULL_REFRESH_MS = 60_000;

export interface DiskUsageEntry {
  /** The directory entry's name (NAME, NAME.partial or NAME.crc). */
  readonly name: string;
  readonly path: string;
}

export interface DiskUsageTotal {
  readonly bytes: number;
  /** lstat calls this measurement made (for tests). */
  readonly measured: number;
}

export class DiskUsageCache {
  private readonly sizes = new Map<string, number>();
  private fullAt = Number.NEGATIVE_INFINITY;

  constructor(
    /** Bytes the file occupies; rejects when it is gone (the retention task's RetentionFs.diskBytes). */
    private readonly diskBytes: (path: string) => Promise<number>,
    private readonly fullRefreshMs = DISK_USAGE_FULL_REFRESH_MS,
  ) {
    assert.ok(fullRefreshMs > 0, 'a full refresh interval is positive');
  }

  /** The sum over `entries` (the directory's segment files now), measuring only what may have changed. */
  async total(entries: readonly DiskUsageEntry[], now: number): Promise<DiskUsageTotal> {
    const full = now - this.fullAt >= this.fullRefreshMs;
    if (full) this.fullAt = now;
    const present = new Set<string>();
    let bytes = 0;
    let measured = 0;
    for (const entry of entries) {
      present.add(entry.name);
      // A .partial is never cached: it grows until it is renamed, and the renamed file is measured once as new.
      const growing = entry.name.endsWith(PARTIAL_SUFFIX);
      const cached = this.sizes.get(entry.name);
      if (cached !== undefined && !full && !growing) {
        bytes += cached;
        continue;
      }
      measured++;
      let size: number | undefined;
      try {
        size = await this.diskBytes(entry.path);
      } catch {
        // Gone since the directory was read (removed, or renamed from .partial): counted as nothing, cached as nothing.
        size = undefined;
      }
      if (size === undefined || growing) this.sizes.delete(entry.name);
      else this.sizes.set(entry.name, size);
      bytes += size ?? 0;
    }
    // Removed files leave the cache, so it never holds more names than the directory.
    for (const name of this.sizes.keys()) if (!present.has(name)) this.sizes.delete(name);
    return { bytes, measured };
  }
}
