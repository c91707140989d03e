/**
 * Child process of native-backend.test.ts's pool test: holds BLOCKED libuv pool threads (reads of FIFOs nobody
 * writes, standing in for off-thread checksums whose pages are still on disk), then runs the WAL writer's pool call,
 * fdatasync of a file, and prints `synced` once it completed or `starved` when it has not after WAIT_MS (a liveness
 * check: a starved call never completes, so the bound is generous). The pool size is the UV_THREADPOOL_SIZE the
 * process started with. Exits with SIGKILL: the blocked pool threads would keep a normal exit waiting.
 */
import { execFileSync } from 'node:child_process';
import { fdatasync, mkdtempSync, openSync, read, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const WAIT_MS = 5_000;
const blocked = Number(process.env['BLOCKED']);
const dir = mkdtempSync(join(tmpdir(), 'walcast-pool-'));
for (let index = 0; index < blocked; index++) {
  const fifo = join(dir, `fifo-${index}`);
  execFileSync('mkfifo', [fifo]);
  read(openSync(fifo, 'r+'), Buffer.alloc(1), 0, 1, null, () => undefined);
}
const file = join(dir, 'segment');
writeFileSync(file, 'x');
const fd = openSync(file, 'r+');
const timer = setTimeout(() => finish('starved'), WAIT_MS);
fdatasync(fd, (error) => finish(error === null ? 'synced' : `failed ${error.message}`));

function finish(outcome: string): void {
  clearTimeout(timer);
  process.stdout.write(`${outcome}\n`, () => process.kill(process.pid, 'SIGKILL'));
}
