/**
 * Reads the kernel's accounting of other processes from /proc: CPU seconds (utime + stime, and the reaped
 * children's cutime + cstime), resident memory, and PostgreSQL walsender discovery. The benchmark charges a
 * server only with what the kernel says its own processes spent, never with the harness's or the consumer's.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';

/** Clock ticks per second for /proc/PID/stat times (sysconf(_SC_CLK_TCK); 100 on every Linux we target). */
const CLOCK_TICKS_PER_SECOND = readClockTicks();

/** Field numbers (1-based, man 5 proc) counted after the ")" that ends the command name. */
const STAT_FIELD_PPID = 4;
const STAT_FIELD_UTIME = 14;
const STAT_FIELD_STIME = 15;
const STAT_FIELD_CUTIME = 16;
const STAT_FIELD_CSTIME = 17;
/** The first field after "pid (comm)" is field 3 (state). */
const STAT_FIRST_FIELD_AFTER_COMM = 3;

function readClockTicks(): number {
  try {
    const ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isSafeInteger(ticks) && ticks > 0 ? ticks : 100;
  } catch {
    return 100;
  }
}

function statFields(pid: number): string[] | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name may contain spaces and parentheses; everything after the last ")" is space separated.
  const afterComm = text.slice(text.lastIndexOf(')') + 2).trim().split(' ');
  assert.ok(afterComm.length > STAT_FIELD_CSTIME - STAT_FIRST_FIELD_AFTER_COMM, `short /proc/${pid}/stat`);
  return afterComm;
}

function field(fields: string[], number: number): number {
  const value = Number(fields[number - STAT_FIRST_FIELD_AFTER_COMM]);
  assert.ok(Number.isFinite(value), `bad /proc stat field ${number}`);
  return value;
}

/**
 * User-mode CPU seconds of one thread (/proc/PID/task/TID/stat utime, 10 ms ticks): for walcast's main thread, its
 * JavaScript and the runtime's own work, without the system calls it makes (whose cost moves with the machine's load:
 * a socket write that wakes a peer is charged the wake-up). Undefined when the thread is gone.
 */
export function readThreadUserSeconds(pid: number, tid: number): number | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const fields = text.slice(text.lastIndexOf(')') + 2).trim().split(' ');
  return field(fields, STAT_FIELD_UTIME) / CLOCK_TICKS_PER_SECOND;
}

export interface CpuSample {
  /** utime + stime of the live process (all its threads), seconds. */
  readonly ownSeconds: number;
  /** cutime + cstime: CPU of children the process has reaped (PostgreSQL's exited backends), seconds. */
  readonly reapedChildrenSeconds: number;
}

/** The process's CPU accounting, or undefined once it has exited. */
export function readCpu(pid: number): CpuSample | undefined {
  const fields = statFields(pid);
  if (fields === undefined) return undefined;
  return {
    ownSeconds: (field(fields, STAT_FIELD_UTIME) + field(fields, STAT_FIELD_STIME)) / CLOCK_TICKS_PER_SECOND,
    reapedChildrenSeconds: (field(fields, STAT_FIELD_CUTIME) + field(fields, STAT_FIELD_CSTIME)) / CLOCK_TICKS_PER_SECOND,
  };
}

/**
 * CPU time of one task (a single-threaded process, or a process's main thread) in nanosecond precision, from
 * /proc/PID/schedstat (sum_exec_runtime). /proc/PID/stat truncates each process's time to clock ticks (10 ms),
 * which turns 100 walsenders that ran 2 ms each into zero.
 */
export function readTaskCpuSeconds(pid: number): number | undefined {
  try {
    const nanoseconds = Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]);
    return Number.isFinite(nanoseconds) ? nanoseconds / 1e9 : undefined;
  } catch {
    return undefined;
  }
}

function readTaskCpuSecondsOf(pid: number, thread: number): number | undefined {
  try {
    const nanoseconds = Number(readFileSync(`/proc/${pid}/task/${thread}/schedstat`, 'utf8').split(' ')[0]);
    return Number.isFinite(nanoseconds) ? nanoseconds / 1e9 : undefined;
  } catch {
    return undefined;
  }
}

/** Per-thread CPU seconds (schedstat) of every live thread of a process, by thread id. */
export function readThreadCpuSeconds(pid: number): Map<number, number> {
  const threads = new Map<number, number>();
  let entries: string[];
  try {
    entries = readdirSync(`/proc/${pid}/task`);
  } catch {
    return threads;
  }
  for (const entry of entries) {
    const seconds = readTaskCpuSecondsOf(pid, Number(entry));
    if (seconds !== undefined) threads.set(Number(entry), seconds);
  }
  return threads;
}

function statusKilobytes(pid: number, file: 'status' | 'smaps_rollup', key: string): number | undefined {
  try {
    const line = readFileSync(`/proc/${pid}/${file}`, 'utf8').split('\n').find((entry) => entry.startsWith(`${key}:`));
    if (line === undefined) return undefined;
    const kilobytes = Number(line.slice(key.length + 1).trim().split(/\s+/)[0]);
    return Number.isFinite(kilobytes) ? kilobytes : undefined;
  } catch {
    return undefined;
  }
}

/** Resident set size in bytes (VmRSS), or undefined once the process has exited. */
export function readRssBytes(pid: number): number | undefined {
  const kilobytes = statusKilobytes(pid, 'status', 'VmRSS');
  return kilobytes === undefined ? undefined : kilobytes * 1024;
}

/**
 * Proportional set size in bytes: shared pages (PostgreSQL's shared memory, libraries) divided among the
 * processes mapping them. Used for per-process PostgreSQL walsenders, where plain RSS would count shared
 * buffers once per walsender.
 */
export function readPssBytes(pid: number): number | undefined {
  const kilobytes = statusKilobytes(pid, 'smaps_rollup', 'Pss');
  return kilobytes === undefined ? undefined : kilobytes * 1024;
}

export interface ChildProcessInfo {
  readonly pid: number;
  /** The state letter of /proc/PID/stat: R, S, D, Z (exited, not yet reaped), X (being reaped) ... */
  readonly state: string;
  /**
   * The command line with NULs as spaces (PostgreSQL's process title). Empty once the process is exiting: the
   * kernel drops its memory map (exit_mm) before it becomes a zombie, and cmdline is read from that map.
   */
  readonly title: string;
}

/** State and title of a child of `parentPid`, or undefined when it is gone or (pid reused) not that parent's. */
export function readChild(pid: number, parentPid: number): ChildProcessInfo | undefined {
  const fields = statFields(pid);
  if (fields === undefined || field(fields, STAT_FIELD_PPID) !== parentPid) return undefined;
  let title = '';
  try {
    title = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
  } catch {
    // Exited between the two reads.
  }
  return { pid, state: fields[0] ?? '?', title };
}

/**
 * A child that has started to exit and is not reaped yet: a zombie (Z), being reaped (X), or still running its
 * exit (no memory map any more, so no title; it is neither a zombie nor counted in its parent's reaped time yet).
 */
export function isExiting(child: ChildProcessInfo): boolean {
  return child.state === 'Z' || child.state === 'X' || child.title === '';
}

/** Every child of `parentPid`, from a scan of /proc (slow with many processes, but misses none). */
export function listChildren(parentPid: number): ChildProcessInfo[] {
  const found: ChildProcessInfo[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const child = readChild(Number(entry), parentPid);
    if (child !== undefined) found.push(child);
  }
  return found;
}

/**
 * Child pids of `parentPid` from /proc/PID/task/TID/children: one small read per thread instead of a scan of
 * /proc, cheap enough to poll during a run. The kernel documents the list as possibly incomplete while children
 * come and go, so it only discovers; decisions that must not miss a child use listChildren. Undefined when the
 * kernel lacks the file (CONFIG_PROC_CHILDREN) or the process is gone.
 */
export function readChildPids(parentPid: number): number[] | undefined {
  let threads: string[];
  try {
    threads = readdirSync(`/proc/${parentPid}/task`);
  } catch {
    return undefined;
  }
  const pids: number[] = [];
  for (const thread of threads) {
    let text: string;
    try {
      text = readFileSync(`/proc/${parentPid}/task/${thread}/children`, 'utf8');
    } catch {
      return undefined;
    }
    for (const entry of text.split(' ')) if (entry.trim() !== '') pids.push(Number(entry));
  }
  return pids;
}

/** The process title PostgreSQL gives its walsender backends ("postgres: walsender USER HOST ..."). */
export function isWalsenderTitle(title: string): boolean {
  return title.startsWith('postgres: walsender');
}

/** PostgreSQL walsender backends of a postmaster (process title "postgres: walsender ..."). */
export function findWalsenders(postmasterPid: number): number[] {
  return listChildren(postmasterPid).filter((child) => isWalsenderTitle(child.title)).map((child) => child.pid);
}
