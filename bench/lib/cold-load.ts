/**
 * Cold catch-up as background load (issue 13, production mix): while live replicas are measured, N other replicas
 * catch up from old WAL that is not in page cache. Each of the N streams reads its own slice of the old range (so
 * each one really reads from disk, as separate lagging replicas would), and a pass ends when every stream received
 * its slice; passes repeat, with the files evicted again before each (bench/native/page-cache.c: fdatasync +
 * posix_fadvise(DONTNEED) on the served files only, as bench/run.ts's cold scenario does; machine-wide caches are
 * never dropped), until stop(). Reported: MB/s per cold stream over the finished passes and the fraction of the
 * files still cached after each eviction (pages the server keeps mapped cannot be evicted).
 */
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Lsn } from '../../src/lsn.js';
import { startConsumer, type RunningConsumer } from './consumer.js';
import { BYTES_PER_MB } from './results.js';
import type { Tools } from './tools.js';
import { evictFromPageCache } from '../scenarios/streaming.js';

/** Slice starts are page-aligned (XLOG_BLCKSZ), as a standby's requests are. */
const WAL_PAGE_BYTES = 8192n;
const COLD_PASS_TIMEOUT_MS = 120_000;
const SEGMENT_FILE = /^[0-9A-F]{24}$/;

export interface ColdLoadSummary {
  readonly passes: number;
  /** Mean over finished streams of bytes / wall seconds. */
  readonly mbPerSecondPerStream: number | undefined;
  readonly residentFractionMax: number;
  readonly failures: number;
}

export interface ColdLoad {
  stop(): Promise<ColdLoadSummary>;
}

/** The directory of `dataDir` holding segment files (a following data dir has one timeline). */
export function timelineDirOf(dataDir: string): string {
  const walk = (dir: string, depth: number): string | undefined => {
    const entries = readdirSync(dir);
    if (entries.some((name) => SEGMENT_FILE.test(name))) return dir;
    if (depth === 0) return undefined;
    for (const name of entries) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) {
        const found = walk(path, depth - 1);
        if (found !== undefined) return found;
      }
    }
    return undefined;
  };
  const found = walk(dataDir, 3);
  if (found === undefined) throw new Error(`no segment files under ${dataDir}`);
  return found;
}

export function startColdLoad(options: { tools: Tools; port: number; streams: number; fromLsn: Lsn; toLsn: Lsn; files: readonly string[]; pgTimelineId: number }): ColdLoad {
  const slice = ((options.toLsn - options.fromLsn) / BigInt(options.streams) / WAL_PAGE_BYTES) * WAL_PAGE_BYTES;
  let stopping = false;
  let passes = 0;
  let failures = 0;
  let residentFractionMax = 0;
  const rates: number[] = [];
  const running: RunningConsumer[] = [];
  const loop = (async () => {
    while (!stopping) {
      residentFractionMax = Math.max(residentFractionMax, evictFromPageCache(options.tools, options.files));
      const consumers = Array.from({ length: options.streams }, (_, index) =>
        startConsumer({
          binary: options.tools.consumer,
          port: options.port,
          connections: 1,
          startLsn: options.fromLsn + BigInt(index) * slice,
          bytesPerConnection: Number(slice),
          appName: 'bench-cold-load',
          timeoutMs: COLD_PASS_TIMEOUT_MS,
          pgTimelineId: options.pgTimelineId,
        }),
      );
      running.push(...consumers);
      try {
        await Promise.all(consumers.map((consumer) => consumer.ready));
        for (const consumer of consumers) consumer.start();
        for (const result of await Promise.all(consumers.map((consumer) => consumer.done))) {
          if (result.failed > 0 || result.timedOut || result.bytesTotal !== Number(slice)) failures++;
          else rates.push(result.bytesTotal / BYTES_PER_MB / result.wallSeconds);
        }
        passes++;
      } catch {
        failures++;
      } finally {
        await Promise.all(consumers.map((consumer) => consumer.release()));
        running.length = 0;
      }
    }
  })();
  return {
    async stop() {
      stopping = true;
      await loop;
      return {
        passes,
        mbPerSecondPerStream: rates.length === 0 ? undefined : rates.reduce((sum, rate) => sum + rate, 0) / rates.length,
        residentFractionMax,
        failures,
      };
    },
  };
}
