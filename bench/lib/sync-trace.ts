/**
 * Reads an `strace -f -T -tt` log of a relay (walcast, or a standby's walreceiver; bench/ingest-latency-ab.ts
 * --strace) and summarizes its commit fdatasyncs: the segment is the file descriptor with the most pwrite64 calls,
 * and each of its fdatasyncs is one group commit. Counted beside them: the other files' fsync/fdatasync calls (for
 * walcast: the control-file write and the checksum sidecar) and how many commit syncs ran while one of those did —
 * ext4 journal commits that the commit's fdatasync shares. Syscall durations survive a loaded machine far better
 * than end-to-end latency, and the overlap count does not depend on the load at all.
 *
 * `commitChain` follows each commit through walcast's syscalls when the trace has them (`--strace-calls
 * read,pwrite64,fdatasync,fsync,write,sendto,sendfile,writev,sendmsg`): the upstream socket read, the segment pwrite,
 * the fdatasync on a libuv pool thread, the event loop's wake-up (its eventfd read), the status reply to the
 * upstream, the first send to a replica socket. Each step's duration is per commit, from the end of the previous
 * step's syscall (the start, for the wake-up and the sends, whose own duration is not part of the wait).
 *
 * A call split by another thread's (`fdatasync(31 <unfinished ...>` … `<... fdatasync resumed>) = 0 <0.002>`) is
 * joined per thread id.
 */
import { readFileSync } from 'node:fs';
import { percentile } from './stats.js';

interface TracedCall {
  readonly thread: number;
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
  const unfinished = new Map<string, { thread: number; startMs: number; call: string; fd: number }>();
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
      unfinished.set(thread, { thread: Number(thread), startMs, call, fd: Number(fdText) });
      continue;
    }
    const duration = DURATION.exec(rest);
    if (duration !== null) calls.push({ thread: Number(thread), startMs, call, fd: Number(fdText), durationMs: Number(duration[1]) * 1000 });
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

export const CHAIN_STEPS = ['receive → write', 'write → fdatasync entry', 'fdatasync', 'fdatasync exit → event loop', 'event loop → status to upstream', 'status → replica send', 'receive → replica send'] as const;

export interface CommitChain {
  readonly commits: number;
  /** Per step of CHAIN_STEPS: p50, p90, p99 in ms. */
  readonly steps: ReadonlyMap<(typeof CHAIN_STEPS)[number], readonly [number, number, number]>;
}

const SENDS: ReadonlySet<string> = new Set(['sendto', 'sendfile', 'writev', 'sendmsg']);

/** walcast's commit path step by step (module comment); undefined when the trace lacks the calls. */
export function commitChain(path: string): CommitChain | undefined {
  const calls = parseTrace(readFileSync(path, 'utf8'));
  const countBy = (pick: (index: number) => number | undefined): number | undefined => {
    const counts = new Map<number, number>();
    for (let index = 0; index < calls.length; index++) {
      const fd = pick(index);
      if (fd !== undefined) counts.set(fd, (counts.get(fd) ?? 0) + 1);
    }
    return [...counts.entries()].sort((a, b) => b[1] - a[1])[0]?.[0];
  };
  const segmentFd = countBy((index) => (calls[index]?.call === 'pwrite64' ? calls[index]?.fd : undefined));
  const mainThread = countBy((index) => (calls[index]?.call === 'pwrite64' && calls[index]?.fd === segmentFd ? calls[index]?.thread : undefined));
  // The upstream socket: what the event loop read last before a segment write.
  const upstreamFd = countBy((index) => {
    if (calls[index]?.call !== 'pwrite64' || calls[index]?.fd !== segmentFd) return undefined;
    for (let back = index - 1; back >= 0; back--) if (calls[back]?.thread === mainThread && calls[back]?.call === 'read') return calls[back]?.fd;
    return undefined;
  });
  // libuv's async eventfd: what the event loop reads first after a commit fdatasync returns.
  const wakeFd = countBy((index) => {
    const sync = calls[index];
    if (sync?.call !== 'fdatasync' || sync.fd !== segmentFd) return undefined;
    const end = sync.startMs + sync.durationMs;
    return calls.find((call, at) => at > index && call.startMs >= end && call.thread === mainThread && call.call === 'read')?.fd;
  });
  if (segmentFd === undefined || upstreamFd === undefined || wakeFd === undefined) return undefined;
  const samples = new Map<(typeof CHAIN_STEPS)[number], number[]>(CHAIN_STEPS.map((step) => [step, []]));
  const next = (from: number, match: (call: TracedCall) => boolean): number | undefined => {
    for (let at = from + 1; at < calls.length; at++) if (match(calls[at] as TracedCall)) return at;
    return undefined;
  };
  let commits = 0;
  for (let index = 0; index < calls.length; index++) {
    const write = calls[index] as TracedCall;
    if (write.call !== 'pwrite64' || write.fd !== segmentFd) continue;
    let readAt: number | undefined;
    for (let back = index - 1; back >= 0 && readAt === undefined; back--) if (calls[back]?.call === 'read' && calls[back]?.fd === upstreamFd) readAt = back;
    const syncAt = next(index, (call) => call.call === 'fdatasync' && call.fd === segmentFd);
    if (readAt === undefined || syncAt === undefined) continue;
    // One commit per sync only: a sync that covers several writes is counted from its last one.
    if (calls.slice(index + 1, syncAt).some((call) => call.call === 'pwrite64' && call.fd === segmentFd)) continue;
    const read = calls[readAt] as TracedCall;
    const sync = calls[syncAt] as TracedCall;
    const syncEnd = sync.startMs + sync.durationMs;
    // Commits with no replica waiting (the other targets' runs, the gaps between runs) have no send before the next
    // commit's write: they are left out.
    const nextWriteAt = next(syncAt, (call) => call.call === 'pwrite64' && call.fd === segmentFd) ?? calls.length;
    const wakeAt = next(syncAt, (call) => call.startMs >= syncEnd && call.thread === mainThread && call.call === 'read' && call.fd === wakeFd);
    const statusAt = wakeAt === undefined ? undefined : next(wakeAt, (call) => call.thread === mainThread && call.call === 'write' && call.fd === upstreamFd);
    const sendAt = statusAt === undefined ? undefined : next(statusAt, (call) => call.thread === mainThread && SENDS.has(call.call) && call.fd !== upstreamFd);
    if (wakeAt === undefined || statusAt === undefined || sendAt === undefined || sendAt > nextWriteAt) continue;
    const wake = calls[wakeAt] as TracedCall;
    const status = calls[statusAt] as TracedCall;
    const send = calls[sendAt] as TracedCall;
    const readEnd = read.startMs + read.durationMs;
    const writeEnd = write.startMs + write.durationMs;
    const values = [writeEnd - readEnd, sync.startMs - writeEnd, sync.durationMs, wake.startMs - syncEnd, status.startMs - wake.startMs, send.startMs - status.startMs, send.startMs - readEnd];
    CHAIN_STEPS.forEach((step, at) => samples.get(step)?.push(values[at] ?? 0));
    commits++;
  }
  if (commits === 0) return undefined;
  const steps = new Map<(typeof CHAIN_STEPS)[number], readonly [number, number, number]>();
  for (const [step, values] of samples) steps.set(step, [percentile(values, 50), percentile(values, 90), percentile(values, 99)]);
  return { commits, steps };
}
