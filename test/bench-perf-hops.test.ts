/**
 * bench/ingest-latency-ab.ts --perf: the thread hops of walcast's commit path read from `perf script` lines (the
 * format perf 6 prints for syscall tracepoints). One scripted commit with known gaps: the segment write on the event
 * loop (pid 100), its fdatasync on a pool thread (tid 104), the loop's eventfd read, the status write to the upstream
 * socket (the fd the loop read before the segment write) and the fan-out's io_uring_enter; a second commit without a
 * replica send counts in every step but the last.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { commitHops } from '../bench/lib/perf-hops.js';

const UPSTREAM_FD = '0x0000001d';
const SEGMENT_FD = '0x0000001e';
const EVENTFD = '0x00000010';

function line(tid: number, seconds: number, event: string, args: string): string {
  return `            node  ${tid} [001] ${seconds.toFixed(6)}:      syscalls:${event}: ${args}`;
}

test('commitHops splits each commit fdatasync into its thread hops', () => {
  const dir = mkdtempSync(join(tmpdir(), 'walcast-perf-hops-'));
  try {
    const rows = [
      line(100, 10.0, 'sys_enter_read', `fd: ${UPSTREAM_FD}, buf: 0x1, count: 0x10000`),
      line(100, 10.0001, 'sys_enter_pwrite64', `fd: ${SEGMENT_FD}, buf: 0x1, count: 0x98, pos: 0x0`),
      line(104, 10.00015, 'sys_enter_fdatasync', `fd: ${SEGMENT_FD}`),
      line(104, 10.00115, 'sys_exit_fdatasync', '0x0'),
      line(100, 10.0012, 'sys_enter_read', `fd: ${EVENTFD}, buf: 0x1, count: 0x400`),
      line(100, 10.00126, 'sys_enter_write', `fd: ${UPSTREAM_FD}, buf: 0x1, count: 0x27`),
      line(100, 10.0014, 'sys_enter_io_uring_enter', 'fd: 0x00000011, to_submit: 0x00000064'),
      // The second commit: no replica waits.
      line(100, 10.01, 'sys_enter_read', `fd: ${UPSTREAM_FD}, buf: 0x1, count: 0x10000`),
      line(100, 10.0101, 'sys_enter_pwrite64', `fd: ${SEGMENT_FD}, buf: 0x1, count: 0x98, pos: 0x98`),
      line(105, 10.0103, 'sys_enter_fdatasync', `fd: ${SEGMENT_FD}`),
      line(105, 10.0113, 'sys_exit_fdatasync', '0x0'),
      line(100, 10.0114, 'sys_enter_read', `fd: ${EVENTFD}, buf: 0x1, count: 0x400`),
      line(100, 10.0115, 'sys_enter_write', `fd: ${UPSTREAM_FD}, buf: 0x1, count: 0x27`),
    ];
    const path = join(dir, 'perf.txt');
    writeFileSync(path, rows.join('\n') + '\n');
    const hops = commitHops(path, 100);
    assert.ok(hops !== undefined);
    assert.equal(hops.commits, 2);
    const near = (step: Parameters<typeof hops.steps.get>[0], p99: number, count: number): void => {
      const found = hops.steps.get(step);
      assert.ok(found !== undefined, step);
      assert.equal(found.count, count, step);
      assert.ok(Math.abs(found.p99 - p99) < 1e-6, `${step}: ${found.p99} ms, expected ${p99}`);
    };
    near('pwrite → fdatasync entry', 0.2, 2);
    near('fdatasync', 1, 2);
    near('fdatasync exit → event loop', 0.1, 2);
    near('event loop → status write', 0.1, 2);
    near('event loop → first replica send', 0.2, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
