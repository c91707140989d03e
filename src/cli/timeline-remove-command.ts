/**
 * `walcast timeline remove`: removes a timeline, whether or not `walcast serve` runs on the data directory
 * (docs/timeline-removal.md).
 *
 * The request is made durable first: `walcast.remove` in the timeline directory (the same crash-safe replace as the
 * control file). Then:
 * - a live serve with an HTTP API (DATA/walcast.server.json, or --http): DELETE /v1/tenant/:t/timeline/:l, which
 *   answers once the timeline's streams ended with 57P04 and its directory is gone;
 * - a live serve without one: its data-directory scan (every 500 ms) finds the marker; this waits for the directory
 *   to go, up to --wait-seconds;
 * - no serve: the directory is renamed to `.removing-*` and deleted here.
 * Whatever happens after the marker is written (this command killed, serve stopped or crashed), the next serve
 * start finishes the removal, so the request is never lost.
 */
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { WalcastError } from '../errors.js';
import { readSecret } from '../config/secrets.js';
import { deleteRetiredDir, retireTimelineDir, writeRemovalMarker } from '../storage/timeline-removal-files.js';
import { readLiveServerState } from './server-state.js';
import { apiRequest } from './slot-command.js';
import { parseBaseUrl } from './status-command.js';

/** Default of --wait-seconds: time for the streams to end (5 s grace) and a large directory to be deleted. */
export const REMOVE_WAIT_SECONDS_DEFAULT = 60;
/** How often the command looks whether serve's scan has removed the directory (the scan runs every 500 ms). */
const REMOVE_POLL_MS = 100;
const ID_PATTERN = /^[0-9a-f]{32}$/;

interface TimelineRemoveFlags {
  readonly dataDir: string;
  readonly tenantId: string;
  readonly timelineId: string;
  readonly waitSeconds?: number;
  readonly http?: string;
  readonly httpAuthTokenFile?: string;
  readonly json?: boolean;
}

export async function runTimelineRemove(rawFlags: Record<string, unknown>): Promise<void> {
  const flags = rawFlags as unknown as TimelineRemoveFlags;
  const tenantId = flags.tenantId.toLowerCase();
  const timelineId = flags.timelineId.toLowerCase();
  for (const [name, value] of Object.entries({ '--tenant-id': tenantId, '--timeline-id': timelineId })) {
    if (!ID_PATTERN.test(value)) throw new RangeError(`${name} must be 32 hex characters`);
  }
  const waitMs = (flags.waitSeconds ?? REMOVE_WAIT_SECONDS_DEFAULT) * 1000;
  const dir = join(flags.dataDir, tenantId, timelineId);
  if (!(await exists(dir))) throw new WalcastError('WALCAST_ERR_NO_TIMELINE', `no timeline ${tenantId}/${timelineId} in ${flags.dataDir}`);
  await writeRemovalMarker(dir, { requestedAt: new Date(), requestedBy: `walcast timeline remove (PID ${process.pid})` });
  const server = await readLiveServerState(flags.dataDir);
  const http = flags.http ?? server?.http ?? undefined;
  let result: Record<string, unknown>;
  if (waitMs === 0 && server !== undefined) {
    // --wait-seconds 0: the durable request is all that was asked for; serve's scan acts on it within 500 ms.
    result = { tenant_id: tenantId, timeline_id: timelineId, removed: false, requested: true, via: `walcast.remove (serve PID ${server.pid} finishes it)` };
  } else if (http !== undefined) {
    result = await removeThroughApi(http, flags, { tenantId, timelineId }, waitMs);
  } else if (server !== undefined) {
    result = await waitForServe(dir, server.pid, { tenantId, timelineId }, waitMs);
  } else {
    await deleteRetiredDir(await retireTimelineDir(dir));
    result = { tenant_id: tenantId, timeline_id: timelineId, removed: true, via: 'files' };
  }
  print(result, flags.json === true);
  // Still there after the wait: the request stands (serve finishes it), but the caller asked for a removal now.
  if (result.removed !== true && waitMs > 0) process.exitCode = 1;
}

async function removeThroughApi(http: string, flags: TimelineRemoveFlags, ids: { tenantId: string; timelineId: string }, waitMs: number): Promise<Record<string, unknown>> {
  const token = await readSecret({ file: flags.httpAuthTokenFile, envName: 'WALCAST_HTTP_AUTH_TOKEN', what: 'HTTP auth token' });
  const path = `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`;
  const signal = AbortSignal.timeout(waitMs);
  try {
    const answer = (await apiRequest(parseBaseUrl(http), token, signal, 'DELETE', path, undefined, waitMs)) as Record<string, unknown>;
    return { ...answer, via: 'http' };
  } catch (error) {
    // Still running when the wait ran out: serve goes on with it (and its scan would pick up the marker anyway).
    if (signal.aborted) return { tenant_id: ids.tenantId, timeline_id: ids.timelineId, removed: false, requested: true, via: `http (no answer within ${waitMs / 1000} s; serve finishes the removal)` };
    throw error;
  }
}

/** serve runs without an HTTP API: its scan finds the marker; wait for the directory to go. */
async function waitForServe(dir: string, pid: number, ids: { tenantId: string; timelineId: string }, waitMs: number): Promise<Record<string, unknown>> {
  const deadline = Date.now() + waitMs;
  while (await exists(dir)) {
    if (Date.now() >= deadline) {
      // Not an error of the request: it is durable and serve will act on it; the caller asked not to wait longer.
      return { tenant_id: ids.tenantId, timeline_id: ids.timelineId, removed: false, requested: true, via: `walcast.remove (serve PID ${pid} finishes it)` };
    }
    await new Promise((resolve) => setTimeout(resolve, REMOVE_POLL_MS));
  }
  return { tenant_id: ids.tenantId, timeline_id: ids.timelineId, removed: true, via: `walcast.remove (serve PID ${pid})` };
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

function print(result: Record<string, unknown>, json: boolean): void {
  if (json) {
    process.stdout.write(JSON.stringify(result) + '\n');
    return;
  }
  for (const [key, value] of Object.entries(result)) process.stdout.write(`${key}: ${String(value)}\n`);
}
