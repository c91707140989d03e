/**
 * Reads an `strace -f -T -tt` log of a relay (walcast, or a standby's walreceiver; bench/ingest-latency-ab.ts
 * --strace) and summarizes its commit fdatasyncs: the segment is the file descriptor with the most pwrite64 calls,
 * and each of its fdatasyncs is one group commit. Counted beside them: the other files' fsync/fdatasync calls (for
 * walcast: the control-file write and the checksum sidecar) and how many commit syncs ran while one of those did —
 * ext4 journal commits that the commit's fdatasync shares. Syscall durations survive a loaded machine far better
 * than end-to-end latency, and the overlap count does not depend on the load at all.
 *
 * A call split by another thread's (`fdatasync(31 <unfinished ...>` … `<... fdatasync resumed>) = 0 <0.002>`) is
 * joined per thread id.
 */
import { readFileSync } from 'node:fs';
import { percentile } from './stats.js';

interface TracedCall {
  readonly startMs: number;
  readonly call: string;
  readonly fd: number;
  readonly durationMs: number;
}

export interface SyncTraceSummary {
  readonly commitSyncs: number;
  readonly p50Ms: number;
  readonly p90Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  /** fsync/fdatasync of any other file descriptor. */
  readonly otherSyncs: number;
  /** Commit syncs that ran while another file's sync did. */
  readonly overlapped: number;
  /** Their median duration (undefined when none). */
  readonly overlappedP50Ms: number | undefined;
}

const CALL = /^(\d+)\s+(\d\d):(\d\d):(\d\d\.\d+) (\w+)\((\d+)(.*)$/;
const RESUMED = /^(\d+)\s+\S+ <\.\.\. (\w+) resumed>.*<(\d+\.\d+)>\s*$/;
const DURATION = /<(\d+\.\d+)>\s*$/;

function parseTrace(text: string): TracedCall[] {
  const calls: TracedCall[] = [];
  const unfinished = new Map<string, { startMs: number; call: string; fd: number }>();
  for (const line of text.split('\n')) {
    const resumed = RESUMED.exec(line);
    if (resumed !== null) {
      const [, thread = '', call = '', seconds = '0'] = resumed;
      const started = unfinished.get(thread);
      if (started !== undefined && started.call === call) calls.push({ ...started, durationMs: Number(seconds) * 1000 });
      unfinished.delete(thread);
      continue;
    }
    const match = CALL.exec(line);
    if (match === null) continue;
    const [, thread = '', hours = '0', minutes = '0', seconds = '0', call = '', fdText = '0', rest = ''] = match;
    const startMs = ((Number(hours) * 60 + Number(minutes)) * 60 + Number(seconds)) * 1000;
    if (rest.includes('<unfinished ...>')) {
      unfinished.set(thread, { startMs, call, fd: Number(fdText) });
      continue;
    }
    const duration = DURATION.exec(rest);
    if (duration !== null) calls.push({ startMs, call, fd: Number(fdText), durationMs: Number(duration[1]) * 1000 });
  }
  return calls.sort((a, b) => a.startMs - b.startMs);
}

export function summarizeSyncTrace(path: string): SyncTraceSummary | undefined {
  const calls = parseTrace(readFileSync(path, 'utf8'));
  const writes = new Map<number, number>();
  for (const call of calls) if (call.call === 'pwrite64') writes.set(call.fd, (writes.get(call.fd) ?? 0) + 1);
  const segmentFd = [...writes.entries()].sort((a, b) => b[1] - a[1])[0]?.[0];
  if (segmentFd === undefined) return undefined;
  const isSync = (call: TracedCall): boolean => call.call === 'fdatasync' || call.call === 'fsync';
  const commits = calls.filter((call) => call.fd === segmentFd && call.call === 'fdatasync');
  const others = calls.filter((call) => call.fd !== segmentFd && isSync(call));
  if (commits.length === 0) return undefined;
  const overlaps = (a: TracedCall, b: TracedCall): boolean => a.startMs < b.startMs + b.durationMs && b.startMs < a.startMs + a.durationMs;
  const overlapped = commits.filter((commit) => others.some((other) => overlaps(commit, other))).map((commit) => commit.durationMs);
  const durations = commits.map((commit) => commit.durationMs);
  return {
    commitSyncs: commits.length,
    p50Ms: percentile(durations, 50),
    p90Ms: percentile(durations, 90),
    p99Ms: percentile(durations, 99),
    maxMs: Math.max(...durations),
    otherSyncs: others.length,
    overlapped: overlapped.length,
    overlappedP50Ms: overlapped.length === 0 ? undefined : percentile(overlapped, 50),
  };
}
