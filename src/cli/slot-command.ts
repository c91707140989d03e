/**
 * `walcast slot list|create|drop`: manages a timeline's replication slots from the shell.
 *
 * While `walcast serve` runs on the data directory (DATA/walcast.server.json names a live PID), the server owns the
 * slot files: it holds the slots in memory and rewrites walcast.slots on its own schedule, so an edit of the file
 * behind its back would be overwritten. The command therefore goes through the server's HTTP API
 * (/v1/tenant/:t/timeline/:tl/slots), with the same bearer token as `walcast status`. When no server runs, it
 * edits walcast.slots directly with the same crash-safe replace the server uses. A server started during such an
 * edit reads the old or the new file, never a mix; starting one in the middle of an edit is the operator's race.
 */
import { silentLogger } from '../log.js';
import { slotsStatus } from '../api/status-model.js';
import { openTimelines } from '../timeline/open-timelines.js';
import type { Timeline } from '../timeline/timeline.js';
import { readSecret } from '../config/secrets.js';
import { readLiveServerState } from './server-state.js';
import { parseBaseUrl } from './status-command.js';

/** A slot command's HTTP requests must finish within this; a hung server is reported, not waited on. */
export const SLOT_COMMAND_TIMEOUT_MS = 10_000;

type SlotAction = 'list' | 'create' | 'drop';

interface SlotFlags {
  readonly dataDir: string;
  readonly tenantId?: string;
  readonly timelineId?: string;
  readonly http?: string;
  readonly httpAuthTokenFile?: string;
  readonly reserveWal?: boolean;
  readonly json?: boolean;
}

export async function runSlot(action: SlotAction, name: string | undefined, rawFlags: Record<string, unknown>): Promise<void> {
  const flags = rawFlags as unknown as SlotFlags;
  const server = await readLiveServerState(flags.dataDir);
  const http = flags.http ?? server?.http ?? undefined;
  const result = server === undefined && flags.http === undefined ? await runOnFiles(action, name, flags) : await runThroughApi(action, name, flags, http, server?.pid);
  print(action, result, flags.json === true);
}

async function runOnFiles(action: SlotAction, name: string | undefined, flags: SlotFlags): Promise<unknown> {
  const timelines = await openTimelines(flags.dataDir, silentLogger());
  const timeline = pickTimeline(timelines.list(), flags);
  try {
    switch (action) {
      case 'list':
        return slotsStatus(timeline);
      case 'create':
        await timeline.slots.create(requireName(name), { temporary: false, restartLsn: flags.reserveWal === true ? timeline.commitLsn.get() : undefined });
        return slotsStatus(timeline).find((slot) => slot.slot_name === name);
      case 'drop':
        await timeline.slots.drop(requireName(name));
        return { slot_name: name, dropped: true };
    }
  } finally {
    await Promise.all(timelines.list().map((each) => each.slots.close()));
  }
}

function pickTimeline(timelines: readonly Timeline[], flags: SlotFlags): Timeline {
  const tenantId = flags.tenantId?.toLowerCase();
  const timelineId = flags.timelineId?.toLowerCase();
  const matching = timelines.filter((timeline) => (tenantId === undefined || timeline.tenantId === tenantId) && (timelineId === undefined || timeline.timelineId === timelineId));
  if (matching.length === 1 && matching[0] !== undefined) return matching[0];
  if (matching.length === 0) throw new RangeError(`no timeline ${tenantId ?? '*'}/${timelineId ?? '*'} in ${flags.dataDir}`);
  throw new RangeError(`${flags.dataDir} holds ${matching.length} timelines: choose one with --tenant-id and --timeline-id`);
}

function requireName(name: string | undefined): string {
  if (name === undefined) throw new RangeError('a slot name is required');
  return name;
}

async function runThroughApi(action: SlotAction, name: string | undefined, flags: SlotFlags, http: string | undefined, pid: number | undefined): Promise<unknown> {
  if (http === undefined) {
    throw new RangeError(`walcast serve (PID ${pid ?? '?'}) runs on ${flags.dataDir} without an HTTP API: slots can be changed only through it (restart it with --http, or stop it)`);
  }
  const base = parseBaseUrl(http);
  const token = await readSecret({ file: flags.httpAuthTokenFile, envName: 'WALCAST_HTTP_AUTH_TOKEN', what: 'HTTP auth token' });
  const signal = AbortSignal.timeout(SLOT_COMMAND_TIMEOUT_MS);
  const call = (method: string, path: string, body?: unknown): Promise<unknown> => apiRequest(base, token, signal, method, path, body);
  const { tenantId, timelineId } = flags.tenantId !== undefined && flags.timelineId !== undefined ? { tenantId: flags.tenantId, timelineId: flags.timelineId } : await soleTimeline(call, flags);
  const slotsPath = `/v1/tenant/${encodeURIComponent(tenantId)}/timeline/${encodeURIComponent(timelineId)}/slots`;
  switch (action) {
    case 'list':
      return call('GET', slotsPath);
    case 'create':
      return call('POST', slotsPath, { name: requireName(name), reserve_wal: flags.reserveWal === true });
    case 'drop':
      return call('DELETE', `${slotsPath}/${encodeURIComponent(requireName(name))}`);
  }
}

async function soleTimeline(call: (method: string, path: string) => Promise<unknown>, flags: SlotFlags): Promise<{ tenantId: string; timelineId: string }> {
  const summaries = (await call('GET', '/v1/timelines')) as Array<{ tenant_id: string; timeline_id: string }>;
  const matching = summaries.filter((summary) => (flags.tenantId === undefined || summary.tenant_id === flags.tenantId.toLowerCase()) && (flags.timelineId === undefined || summary.timeline_id === flags.timelineId.toLowerCase()));
  const [only] = matching;
  if (matching.length !== 1 || only === undefined) throw new RangeError(`the server serves ${matching.length} matching timelines: choose one with --tenant-id and --timeline-id`);
  return { tenantId: only.tenant_id, timelineId: only.timeline_id };
}

/** One JSON request to the HTTP API; a non-2xx answer throws with its error code and message. Also used by `timeline remove`. */
export async function apiRequest(base: URL, token: string | undefined, signal: AbortSignal, method: string, path: string, body?: unknown, timeoutMs = SLOT_COMMAND_TIMEOUT_MS): Promise<unknown> {
  const url = new URL(base.pathname.replace(/\/$/, '') + path, base);
  const headers: Record<string, string> = token === undefined ? {} : { authorization: `Bearer ${token}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  let response: Response;
  try {
    response = await fetch(url, { method, signal, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  } catch (cause) {
    throw new Error(`cannot reach the walcast HTTP API at ${url.origin}: ${signal.aborted ? `no answer within ${timeoutMs} ms` : (cause as Error).message}`, { cause });
  }
  const text = await response.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  if (!response.ok) {
    const error = parsed as { error?: string; msg?: string } | undefined;
    throw new Error(`${method} ${url.pathname}: HTTP ${response.status}: ${error?.error === undefined ? '' : `${error.error}: `}${error?.msg ?? text.slice(0, 200)}`);
  }
  return parsed;
}

function print(action: SlotAction, result: unknown, json: boolean): void {
  if (json || action !== 'list') {
    process.stdout.write(JSON.stringify(result) + '\n');
    return;
  }
  const rows = result as Array<Record<string, unknown>>;
  const columns = ['slot_name', 'temporary', 'active', 'active_pid', 'restart_lsn', 'retained_bytes', 'wal_status'];
  const cells = [columns, ...rows.map((row) => columns.map((column) => (row[column] === null || row[column] === undefined ? '' : String(row[column]))))];
  const widths = columns.map((_, index) => Math.max(...cells.map((line) => (line[index] ?? '').length)));
  for (const line of cells) process.stdout.write(line.map((cell, index) => cell.padEnd(widths[index] ?? 0)).join('  ').trimEnd() + '\n');
}

