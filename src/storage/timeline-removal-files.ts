/**
 * The files of a timeline removal (docs/timeline-removal.md): the durable request, and the two-step disposal of the
 * directory that makes a crash at any point safe.
 *
 * 1. `walcast.remove` in the timeline directory is the request, written with replaceFileDurably before anything is
 *    torn down: once it is on disk the removal finishes, whether serve does it now, the periodic scan finds it, or
 *    the next start finds it (openTimelines removes a marked timeline instead of opening it).
 * 2. The directory is renamed to `<tenant>/.removing-<timeline>-<ms>` (one atomic rename on the same file system,
 *    made durable by an fsync of the tenant directory): from then on no scan can mistake it for a timeline, since
 *    timeline directories are 32 hex digits. Only then is it deleted recursively, which is not atomic; a crash in
 *    the middle leaves a `.removing-*` directory that `sweepRetiredTimelineDirs` deletes at the next start.
 */
import { readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fsyncDirectory, replaceFileDurably } from './durable-file.js';

/** The removal request in a timeline directory. */
export const REMOVE_MARKER_FILE_NAME = 'walcast.remove';
const REMOVE_MARKER_TEMP_NAME = 'walcast.remove.tmp';
/** Prefix of a timeline directory renamed out of the way and not yet deleted. */
export const RETIRED_DIR_PREFIX = '.removing-';

/** What the marker records: who asked and when, for the operator reading the directory. */
export interface RemovalRequest {
  readonly requestedAt: Date;
  readonly requestedBy: string;
}

/** Writes the marker durably (temp, fsync, rename, fsync dir); rewriting an existing one is harmless. */
export async function writeRemovalMarker(timelineDir: string, request: RemovalRequest): Promise<void> {
  const body = JSON.stringify({ requested_at: request.requestedAt.toISOString(), requested_by: request.requestedBy }) + '\n';
  await replaceFileDurably(timelineDir, REMOVE_MARKER_FILE_NAME, Buffer.from(body, 'utf8'), { tempName: REMOVE_MARKER_TEMP_NAME });
}

export async function hasRemovalMarker(timelineDir: string): Promise<boolean> {
  try {
    await stat(join(timelineDir, REMOVE_MARKER_FILE_NAME));
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}

/**
 * Renames the timeline directory to `<parent>/.removing-<name>-<ms>` and makes the rename durable; returns the new
 * path. After this the timeline is gone for every scan and every start, whatever happens to the delete.
 */
export async function retireTimelineDir(timelineDir: string, now: Date = new Date()): Promise<string> {
  const parent = dirname(timelineDir);
  const retired = join(parent, `${RETIRED_DIR_PREFIX}${basename(timelineDir)}-${now.getTime()}`);
  await rename(timelineDir, retired);
  await fsyncDirectory(parent);
  return retired;
}

/** Deletes a retired directory and everything in it. */
export async function deleteRetiredDir(retiredDir: string): Promise<void> {
  await rm(retiredDir, { recursive: true, force: true });
}

/**
 * Deletes every `.removing-*` directory under the tenant directories of `dataDir` (left by a crash between the
 * rename and the end of the delete); returns their paths. A missing data directory holds none.
 */
export async function sweepRetiredTimelineDirs(dataDir: string): Promise<string[]> {
  const swept: string[] = [];
  let tenants;
  try {
    tenants = await readdir(dataDir, { withFileTypes: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return swept;
    throw error;
  }
  for (const tenant of tenants) {
    if (!tenant.isDirectory() || tenant.name.startsWith('.')) continue;
    const tenantDir = join(dataDir, tenant.name);
    for (const entry of await readdir(tenantDir, { withFileTypes: true })) {
      if (!entry.isDirectory() || !entry.name.startsWith(RETIRED_DIR_PREFIX)) continue;
      const path = join(tenantDir, entry.name);
      await deleteRetiredDir(path);
      swept.push(path);
    }
  }
  return swept;
}
