/**
 * Per-task scheduler figures from /proc (issue 13, "the standby replays slower from walcast under CPU load"): CPU time
 * and run-queue wait (/proc/PID/task/TID/schedstat: sum_exec_runtime, run_delay, timeslices, all since the task
 * started) and voluntary / involuntary context switches (/proc/PID/task/TID/status). A process's figures are the
 * sum over its live threads; a snapshot before a run and one after give what each thread did in between.
 */
import { readFileSync, readdirSync } from 'node:fs';

export interface TaskSched {
  /** Thread name (comm): "node", "libuv-worker", "V8 DefaultWorke", "postgres" ... */
  readonly name: string;
  readonly cpuSeconds: number;
  /** Time runnable but waiting for a CPU. */
  readonly waitSeconds: number;
  readonly slices: number;
  readonly voluntary: number;
  readonly involuntary: number;
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function statusNumber(text: string, key: string): number {
  const line = text.split('\n').find((entry) => entry.startsWith(`${key}:`));
  return line === undefined ? 0 : Number(line.slice(key.length + 1).trim());
}

/** One task's figures (pid/task/tid), or undefined once it has exited. */
export function readTask(pid: number, tid: number): TaskSched | undefined {
  const sched = read(`/proc/${pid}/task/${tid}/schedstat`);
  const status = read(`/proc/${pid}/task/${tid}/status`);
  const name = read(`/proc/${pid}/task/${tid}/comm`);
  if (sched === undefined || status === undefined || name === undefined) return undefined;
  const [run, wait, slices] = sched.trim().split(' ').map(Number);
  return { name: name.trim(), cpuSeconds: (run ?? 0) / 1e9, waitSeconds: (wait ?? 0) / 1e9, slices: slices ?? 0, voluntary: statusNumber(status, 'voluntary_ctxt_switches'), involuntary: statusNumber(status, 'nonvoluntary_ctxt_switches') };
}

/** Every live thread of a process, by tid. */
export function readThreads(pid: number): Map<number, TaskSched> {
  const threads = new Map<number, TaskSched>();
  let entries: string[] = [];
  try {
    entries = readdirSync(`/proc/${pid}/task`);
  } catch {
    return threads;
  }
  for (const entry of entries) {
    const task = readTask(pid, Number(entry));
    if (task !== undefined) threads.set(Number(entry), task);
  }
  return threads;
}

/** What each thread did between two snapshots (threads born in between count from zero), grouped by name; the main thread (tid = pid) is "main". */
export function threadDelta(pid: number, before: Map<number, TaskSched>, after: Map<number, TaskSched>): Map<string, TaskSched> {
  const groups = new Map<string, TaskSched>();
  for (const [tid, measured] of after) {
    const end = tid === pid ? { ...measured, name: 'main' } : measured;
    const start = before.get(tid);
    const delta: TaskSched = { name: end.name, cpuSeconds: end.cpuSeconds - (start?.cpuSeconds ?? 0), waitSeconds: end.waitSeconds - (start?.waitSeconds ?? 0), slices: end.slices - (start?.slices ?? 0), voluntary: end.voluntary - (start?.voluntary ?? 0), involuntary: end.involuntary - (start?.involuntary ?? 0) };
    const group = groups.get(end.name);
    groups.set(end.name, group === undefined ? delta : { name: end.name, cpuSeconds: group.cpuSeconds + delta.cpuSeconds, waitSeconds: group.waitSeconds + delta.waitSeconds, slices: group.slices + delta.slices, voluntary: group.voluntary + delta.voluntary, involuntary: group.involuntary + delta.involuntary });
  }
  return groups;
}

/** One line: "NAME cpu 1.23 s wait 0.45 s slices N vcs N ivcs N". */
export function formatSched(label: string, task: TaskSched): string {
  return `${label} cpu ${task.cpuSeconds.toFixed(2)} s wait ${task.waitSeconds.toFixed(2)} s slices ${task.slices} vcs ${task.voluntary} ivcs ${task.involuntary}`;
}
