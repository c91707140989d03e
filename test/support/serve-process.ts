/**
 * `walcast serve` as a child process, for tests that must kill -9 it, restart it or read its log: spawned from the
 * source through tsx, its output kept (bounded), stopped with SIGTERM and, if it hangs, SIGKILL. Each test passes its
 * own flags and its own readiness probe (IDENTIFY_SYSTEM, the HTTP API, a log line), so this file knows none of them.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { SERVE_NODE_FLAGS } from '../../src/cli/node-flags.js';
import { waitFor } from './wait-for.js';
import { REPO_ROOT } from './walcast.js';
/** Output kept from a child walcast: enough for its recovery, removal and error lines. */
export const SERVE_OUTPUT_BYTES_MAX = 1024 * 1024;
/** How long a SIGTERM may take before the child is killed; a clean stop takes well under a second. */
const STOP_GRACE_MS = 10_000;
/** How long a child may take to come up on a loaded 2-core machine. */
const READY_TIMEOUT_MS = 60_000;

export interface ServeProcess {
  readonly child: ChildProcess;
  /** Resolves with the signal that ended the process (null for a plain exit). */
  readonly exited: Promise<NodeJS.Signals | null>;
  kill9(): void;
  stop(): Promise<void>;
  output(): string;
}

export interface SpawnServeOptions {
  /** Everything after `walcast serve`. */
  readonly args: readonly string[];
  /** Added to the test's environment; WALCAST_IO defaults to ts. */
  readonly env?: Readonly<Record<string, string>>;
  /** Resolves truthy once the server is ready; thrown errors and undefined mean "not yet". */
  readonly ready: (serve: ServeProcess) => Promise<boolean | undefined>;
  readonly readyTimeoutMs?: number;
}

/** Spawns `walcast serve ARGS` and resolves once `ready` says so; kills the child if it never does. */
export async function spawnServe(options: SpawnServeOptions): Promise<ServeProcess> {
  const child = spawn(process.execPath, [...SERVE_NODE_FLAGS, '--import', 'tsx', join(REPO_ROOT, 'src/cli/main.ts'), 'serve', ...options.args], {
    cwd: REPO_ROOT,
    env: { ...process.env, WALCAST_IO: process.env.WALCAST_IO ?? 'ts', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const collect = (chunk: Buffer): void => {
    if (output.length < SERVE_OUTPUT_BYTES_MAX) output += chunk.toString();
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
  const serve: ServeProcess = {
    child,
    exited,
    kill9: () => child.kill('SIGKILL'),
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
      await exited;
      clearTimeout(timer);
    },
    output: () => output,
  };
  // A child that exits while starting fails the wait at once rather than after the whole timeout.
  const exitedEarly = exited.then((signal) => {
    throw new Error(`walcast serve exited (${signal ?? `code ${String(child.exitCode)}`})`);
  });
  const ready = waitFor(() => options.ready(serve), options.readyTimeoutMs ?? READY_TIMEOUT_MS);
  await Promise.race([ready, exitedEarly]).catch((error: unknown) => {
    child.kill('SIGKILL');
    throw new Error(`walcast serve did not come up: ${String(error)}\n${output}`);
  });
  exitedEarly.catch(() => undefined);
  return serve;
}
