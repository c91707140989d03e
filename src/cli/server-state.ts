/**
 * `DATA/walcast.server.json`: how commands find the server that serves a data directory. `walcast serve` writes it
 * (its PID and HTTP API address) once the API listens and removes it on shutdown; `walcast slot` reads it to decide
 * between asking the running server (which owns the slot files while it runs) and editing the files directly.
 * A file left by a server that died (kill -9) names a PID that is no longer alive and is ignored.
 */
import { readFile, rm, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';

export const SERVER_STATE_FILE_NAME = 'walcast.server.json';
/** The file holds a PID and an address; anything larger is not ours. */
const SERVER_STATE_BYTES_MAX = 4096;

export interface ServerState {
  readonly pid: number;
  /** "host:port" of the HTTP API, or null when serve runs with --no-http. */
  readonly http: string | null;
}

export async function writeServerState(dataDir: string, state: ServerState): Promise<void> {
  const path = join(dataDir, SERVER_STATE_FILE_NAME);
  // Written whole and renamed into place, so a reader never sees half a file; not fsynced: after a crash it is stale anyway.
  await writeFile(`${path}.tmp`, JSON.stringify(state) + '\n', { mode: 0o600 });
  await rename(`${path}.tmp`, path);
}

export async function removeServerState(dataDir: string): Promise<void> {
  await rm(join(dataDir, SERVER_STATE_FILE_NAME), { force: true });
}

/** The state of a live server for this data directory, or undefined when none runs (no file, or its PID is gone). */
export async function readLiveServerState(dataDir: string): Promise<ServerState | undefined> {
  let text: string;
  try {
    text = await readFile(join(dataDir, SERVER_STATE_FILE_NAME), 'utf8');
  } catch {
    return undefined;
  }
  if (text.length > SERVER_STATE_BYTES_MAX) return undefined;
  let parsed: Partial<ServerState>;
  try {
    parsed = JSON.parse(text) as Partial<ServerState>;
  } catch {
    return undefined;
  }
  if (typeof parsed.pid !== 'number' || !Number.isSafeInteger(parsed.pid) || parsed.pid <= 0) return undefined;
  if (!isAlive(parsed.pid)) return undefined;
  return { pid: parsed.pid, http: typeof parsed.http === 'string' ? parsed.http : null };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to someone else; only ESRCH means gone.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
