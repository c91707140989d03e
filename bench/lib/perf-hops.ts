/**
 * walcast's commit path as thread hops, from `perf record` of syscall tracepoints on one walcast process
 * (bench/ingest-latency-ab.ts --perf). Unlike `strace` (bench/lib/sync-trace.ts), tracepoints stop nothing, so the
 * process runs at its own pace with 100 or 1,000 replicas whose sends would otherwise each cost two ptrace stops.
 * Per commit fdatasync (the segment: the file descriptor most fdatasynced, on a libuv pool thread):
 *
 * - pwrite → fdatasync entry: the event loop's last segment write before it, to the pool thread entering the sync
 *   (the pool's wake-up; a queue if the pool were busy);
 * - fdatasync: the disk;
 * - fdatasync exit → event loop: to the event-loop thread's next read(), its uv_async eventfd (the completion waiting
 *   for the loop: a thread wake-up, or whatever the loop was busy with);
 * - event loop → status write: the 'r' to the upstream (the upstream socket: what the loop read last before a
 *   segment write);
 * - event loop → first replica send: the loop's first io_uring_enter, sendfile or write/writev to another socket
 *   (the fan-out; on native backends small commits go through the batch ring's io_uring_enter).
 *
 * The event-loop thread is the process's own pid. Events: syscalls:sys_{enter,exit}_fdatasync and sys_enter_ of
 * read, pwrite64, write, writev, sendfile64, io_uring_enter (PERF_EVENTS).
 */
import { readFileSync } from 'node:fs';
import { percentile } from './stats.js';

export const PERF_EVENTS = [
  'syscalls:sys_enter_fdatasync',
  'syscalls:sys_exit_fdatasync',
  'syscalls:sys_enter_read',
  'syscalls:sys_enter_pwrite64',
  'syscalls:sys_enter_write',
  'syscalls:sys_enter_writev',
  'syscalls:sys_enter_sendfile64',
  'syscalls:sys_enter_io_uring_enter',
].join(',');

/** stdin, stdout, stderr: a log line is not a replica send. */
const STDIO_FDS_MAX = 2;

export const HOP_STEPS = ['pwrite → fdatasync entry', 'fdatasync', 'fdatasync exit → event loop', 'event loop → status write', 'event loop → first replica send'] as const;

export interface CommitHops {
  readonly commits: number;
  /** Per step: p50, p90, p99 in ms, and how many commits had it. */
  readonly steps: ReadonlyMap<(typeof HOP_STEPS)[number], { readonly p50: number; readonly p90: number; readonly p99: number; readonly count: number }>;
}

interface Event {
  readonly tid: number;
  readonly ms: number;
  readonly exit: boolean;
  readonly call: string;
  readonly fd: number | undefined;
}

/** `perf script` default lines: `comm pid/tid [cpu] seconds: syscalls:sys_enter_x: fd: 0x..., ...`. */
export function parsePerfScript(text: string): Event[] {
  const events: Event[] = [];
  const line = /^\s*\S.*?\s(\d+)(?:\/(\d+))?\s+\[\d+\]\s+([\d.]+):\s+syscalls:sys_(enter|exit)_(\w+):\s*(.*)$/;
  for (const row of text.split('\n')) {
    const match = line.exec(row);
    if (match === null) continue;
    const fd = /fd: (0x[0-9a-f]+)/.exec(match[6] ?? '')?.[1];
    events.push({ tid: Number(match[2] ?? match[1]), ms: Number(match[3]) * 1000, exit: match[4] === 'exit', call: match[5] ?? '', fd: fd === undefined ? undefined : Number(fd) });
  }
  return events;
}

/** The hops of every commit fdatasync in `perf script` output of process `pid`; undefined when none. */
export function commitHops(perfScriptPath: string, pid: number): CommitHops | undefined {
  const events = parsePerfScript(readFileSync(perfScriptPath, 'utf8'));
  const mostCommon = (pick: (index: number) => number | undefined): number | undefined => {
    const counts = new Map<number, number>();
    for (let index = 0; index < events.length; index++) {
      const key = pick(index);
      if (key !== undefined) counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    return [...counts].sort((a, b) => b[1] - a[1])[0]?.[0];
  };
  const isLoop = (event: Event): boolean => event.tid === pid;
  const segmentFd = mostCommon((index) => (events[index]?.call === 'fdatasync' && events[index]?.exit === false ? events[index]?.fd : undefined));
  const upstreamFd = mostCommon((index) => {
    const event = events[index];
    if (event === undefined || event.call !== 'pwrite64' || event.fd !== segmentFd || !isLoop(event)) return undefined;
    for (let back = index - 1; back >= 0; back--) {
      const earlier = events[back];
      if (earlier !== undefined && isLoop(earlier) && earlier.call === 'read') return earlier.fd;
    }
    return undefined;
  });
  if (segmentFd === undefined) return undefined;
  const samples = new Map<(typeof HOP_STEPS)[number], number[]>(HOP_STEPS.map((step) => [step, []]));
  const add = (step: (typeof HOP_STEPS)[number], value: number): void => void samples.get(step)?.push(value);
  let lastWriteMs: number | undefined;
  let commits = 0;
  for (let index = 0; index < events.length; index++) {
    const event = events[index] as Event;
    if (isLoop(event) && event.call === 'pwrite64' && event.fd === segmentFd) lastWriteMs = event.ms;
    if (event.call !== 'fdatasync' || event.exit || event.fd !== segmentFd || isLoop(event)) continue;
    let exitAt = index + 1;
    while (exitAt < events.length && !(events[exitAt]?.tid === event.tid && events[exitAt]?.call === 'fdatasync' && events[exitAt]?.exit === true)) exitAt++;
    const exit = events[exitAt];
    if (exit === undefined) continue;
    commits++;
    if (lastWriteMs !== undefined) add('pwrite → fdatasync entry', event.ms - lastWriteMs);
    lastWriteMs = undefined;
    add('fdatasync', exit.ms - event.ms);
    let wakeAt = exitAt + 1;
    while (wakeAt < events.length && !(isLoop(events[wakeAt] as Event) && events[wakeAt]?.call === 'read')) wakeAt++;
    const wake = events[wakeAt];
    if (wake === undefined) continue;
    add('fdatasync exit → event loop', wake.ms - exit.ms);
    let statusMs: number | undefined;
    let sendMs: number | undefined;
    for (let at = wakeAt + 1; at < events.length && (statusMs === undefined || sendMs === undefined); at++) {
      const next = events[at] as Event;
      if (!isLoop(next)) continue;
      // The next commit's segment write ends this commit's window.
      if (next.call === 'pwrite64' && next.fd === segmentFd) break;
      const write = next.call === 'write' || next.call === 'writev';
      if (statusMs === undefined && write && next.fd === upstreamFd) statusMs = next.ms;
      else if (sendMs === undefined && (next.call === 'io_uring_enter' || next.call === 'sendfile64' || (write && next.fd !== upstreamFd && (next.fd ?? 0) > STDIO_FDS_MAX))) sendMs = next.ms;
    }
    if (statusMs !== undefined) add('event loop → status write', statusMs - wake.ms);
    if (sendMs !== undefined) add('event loop → first replica send', sendMs - wake.ms);
  }
  if (commits === 0) return undefined;
  const steps = new Map<(typeof HOP_STEPS)[number], { p50: number; p90: number; p99: number; count: number }>();
  for (const [step, values] of samples) {
    if (values.length > 0) steps.set(step, { p50: percentile(values, 50), p90: percentile(values, 90), p99: percentile(values, 99), count: values.length });
  }
  return { commits, steps };
}
