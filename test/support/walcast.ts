/**
 * Runs walcast for integration tests: in-process (`startWalcast`, so tests can look at the replica registry)
 * with the I/O backend chosen by WALCAST_IO / WALCAST_NATIVE_STRATEGY, which the test runner sets per backend
 * run; and as a real child process through the CLI (`runWalcastCli`) for command-line behaviour.
 */
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RemoteStorageConfig } from '../../src/remote/remote-config.js';
import type { RetentionSettings } from '../../src/retention/retention-task.js';
import type { AuthConfig } from '../../src/wire/startup.js';
import type { ServerTls } from '../../src/tls/server-tls.js';
import type { Logger } from '../../src/log.js';
import type { IoBackend } from '../../src/io/backend.js';
import { createIoBackend } from '../../src/io/select-backend.js';
import { silentLogger } from '../../src/log.js';
import { WalcastServer } from '../../src/server.js';

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface RunningWalcast {
  readonly server: WalcastServer;
  readonly port: number;
  /** The I/O backend it runs on (its counters: chunkReadStats, sendBufferStats). */
  readonly backend: IoBackend;
  stop(): Promise<void>;
}

/** The backend under test: the runner sets WALCAST_IO=ts|native and WALCAST_NATIVE_STRATEGY per run. */
export function backendUnderTest(): { io: 'ts' | 'native'; strategy?: 'sendfile' | 'writev' | 'uring' } {
  const io = process.env.WALCAST_IO === 'native' ? 'native' : 'ts';
  const strategy = process.env.WALCAST_NATIVE_STRATEGY as 'sendfile' | 'writev' | 'uring' | undefined;
  return strategy === undefined || io === 'ts' ? { io } : { io, strategy };
}

export interface StartWalcastOptions {
  readonly dataDir: string;
  readonly auth?: AuthConfig;
  readonly tls?: ServerTls;
  readonly log?: Logger;
  readonly replicaTimeoutMs?: number;
  readonly maxConnections?: number;
  readonly maxStartupConnections?: number;
  readonly maxStartupConnectionsPerAddress?: number;
  readonly authenticationTimeoutMs?: number;
  readonly retention?: RetentionSettings;
  readonly remoteStorage?: RemoteStorageConfig;
}

export async function startWalcast(options: StartWalcastOptions): Promise<RunningWalcast> {
  const { backend } = await createIoBackend(backendUnderTest());
  const server = await WalcastServer.start({
    dataDir: options.dataDir,
    listen: { host: '127.0.0.1', port: 0 },
    auth: options.auth ?? { method: 'trust' },
    tls: options.tls,
    backend,
    maxConnections: options.maxConnections ?? 4096,
    replicaTimeoutMs: options.replicaTimeoutMs ?? 60_000,
    ...(options.retention === undefined ? {} : { retention: options.retention }),
    maxStartupConnections: options.maxStartupConnections,
    maxStartupConnectionsPerAddress: options.maxStartupConnectionsPerAddress,
    authenticationTimeoutMs: options.authenticationTimeoutMs,
    ...(options.remoteStorage === undefined ? {} : { remoteStorage: options.remoteStorage }),
    log: options.log ?? silentLogger(),
  });
  return { server, port: server.address().port, backend, stop: () => server.stop() };
}

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `walcast ARGS` through tsx as a child process, with a bounded wait. */
export function runWalcastCli(args: readonly string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'src/cli/main.ts'), ...args], {
      cwd: REPO_ROOT,
      env: { ...process.env, ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`walcast ${args.join(' ')} did not finish in ${options.timeoutMs ?? 60_000} ms; stderr: ${stderr}`));
    }, options.timeoutMs ?? 60_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
