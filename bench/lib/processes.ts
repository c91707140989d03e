/**
 * Every child process the benchmark starts (walcast servers, the ceiling server, consumers, compilers) goes
 * through here, so that an interrupted or failed run still stops all of them: by PID, on exit and on signals.
 * PostgreSQL clusters are the shared test fixture's job (test/support/postgres.ts registers its own clean-up).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

/** How long a SIGTERM'd child gets before SIGKILL. walcast drains streams for up to 5 s (SHUTDOWN_GRACE_MS). */
export const STOP_GRACE_MS = 8_000;
/** Captured output per child is capped so a chatty process cannot grow the harness's memory without bound. */
const OUTPUT_CAP_BYTES = 1024 * 1024;

const live = new Set<ChildProcess>();

export interface Tracked {
  readonly child: ChildProcess;
  readonly pid: number;
  /** stderr so far (capped), for error messages. */
  stderr(): string;
  /** Resolves with the exit code (null after a signal) when the process ends. */
  readonly exited: Promise<number | null>;
  stop(): Promise<void>;
}

export function spawnTracked(command: string, args: readonly string[], options: SpawnOptions = {}): Tracked {
  const child = spawn(command, args as string[], { stdio: ['pipe', 'pipe', 'pipe'], ...options });
  assert.ok(child.pid !== undefined, `could not start ${command}`);
  live.add(child);
  let stderrText = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    if (stderrText.length < OUTPUT_CAP_BYTES) stderrText += chunk.toString();
  });
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      live.delete(child);
      resolve(code);
    });
  });
  const pid = child.pid;
  return { child, pid, stderr: () => stderrText, exited, stop: () => stopChild(child, exited) };
}

async function stopChild(child: ChildProcess, exited: Promise<number | null>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
  await exited;
  clearTimeout(timer);
}

/** Stops every tracked child still running (SIGTERM, then SIGKILL after the grace period). */
export async function stopAllChildren(): Promise<void> {
  const running = [...live];
  await Promise.all(running.map((child) => stopChild(child, new Promise((resolve) => child.once('exit', resolve)))));
}

function killAllSync(): void {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // Already gone.
    }
  }
  live.clear();
}

process.once('exit', killAllSync);

/** Exit status of a benchmark stopped by SIGINT / SIGTERM (128 + SIGINT, as shells report it). */
const EXIT_INTERRUPTED = 130;

/**
 * Runs a benchmark script's `main`: on SIGINT/SIGTERM, and however `main` ends, every child process the benchmark
 * started is stopped; a failure is reported through `progress` and sets exit status 1.
 */
export async function runBenchmark(name: string, main: () => Promise<void>, progress: (message: string) => void): Promise<void> {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      progress(`${signal}: stopping every process the benchmark started`);
      void stopAllChildren().finally(() => process.exit(EXIT_INTERRUPTED));
    });
  }
  try {
    await main();
  } catch (error) {
    progress(`${name} failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    process.exitCode = 1;
  } finally {
    await stopAllChildren();
  }
}
