/**
 * The on-disk layout of timelines: DATA/<tenant_id>/<timeline_id>/ holding segment files (NAME, and the one
 * being filled as NAME.partial), PostgreSQL history files (%08X.history) and walcast.control. Ids are 32
 * lower-case hex characters, like Neon's. This module names, creates and lists; it does not read WAL.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { WalcastError } from '../errors.js';
import { CONTROL_FILE_NAME } from './control-file.js';
import { PARTIAL_SUFFIX, parseHistoryFileName, parseSegmentFileName } from './segment-name.js';

/** 16 random bytes as hex: the id size Neon uses for tenants and timelines. */
const ID_BYTES = 16;
const ID_PATTERN = /^[0-9a-f]{32}$/;

export function isValidId(id: string): boolean {
  return ID_PATTERN.test(id);
}

/** A new random tenant or timeline id. */
export function newId(): string {
  return randomBytes(ID_BYTES).toString('hex');
}

/** Throws WALCAST_ERR_CONFIG unless `id` is 32 lower-case hex characters. */
export function assertValidId(id: string, what: 'tenant id' | 'timeline id'): void {
  if (!isValidId(id)) throw new WalcastError('WALCAST_ERR_CONFIG', `${what} "${id}" is invalid: expected 32 lower-case hex characters`);
}

export function timelineDirPath(dataDir: string, tenantId: string, timelineId: string): string {
  assert.ok(isValidId(tenantId), 'tenant id is 32 lower-case hex');
  assert.ok(isValidId(timelineId), 'timeline id is 32 lower-case hex');
  return join(dataDir, tenantId, timelineId);
}

export interface TimelineLocation {
  readonly tenantId: string;
  readonly timelineId: string;
  readonly dir: string;
}

/** Every DATA/<tenant>/<timeline>/ that holds a control file; temp and foreign entries are ignored. */
export async function listTimelineDirs(dataDir: string): Promise<TimelineLocation[]> {
  const found: TimelineLocation[] = [];
  for (const tenantId of await listIdDirs(dataDir)) {
    for (const timelineId of await listIdDirs(join(dataDir, tenantId))) {
      const dir = join(dataDir, tenantId, timelineId);
      const names = await readdir(dir);
      if (names.includes(CONTROL_FILE_NAME)) found.push({ tenantId, timelineId, dir });
    }
  }
  return found;
}

async function listIdDirs(dir: string): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  return entries.filter((entry) => entry.isDirectory() && isValidId(entry.name)).map((entry) => entry.name).sort();
}

export interface SegmentFileEntry {
  readonly pgTimelineId: number;
  readonly segno: bigint;
  /** The file name as found, with `.partial` when partial. */
  readonly name: string;
  readonly partial: boolean;
  readonly path: string;
}

/**
 * Segment files in `dir`, sorted by (timeline, segno). When both NAME and NAME.partial exist (a crash between
 * writing the complete file and removing the partial one), the complete file wins.
 */
export async function listSegmentFiles(dir: string, segmentBytes: number): Promise<SegmentFileEntry[]> {
  const byKey = new Map<string, SegmentFileEntry>();
  for (const name of await readdir(dir)) {
    const partial = name.endsWith(PARTIAL_SUFFIX);
    const parsed = parseSegmentFileName(partial ? name.slice(0, -PARTIAL_SUFFIX.length) : name, segmentBytes);
    if (parsed === undefined) continue;
    const key = `${parsed.pgTimelineId}/${parsed.segno}`;
    const existing = byKey.get(key);
    if (existing !== undefined && !existing.partial) continue;
    byKey.set(key, { ...parsed, name, partial, path: join(dir, name) });
  }
  return [...byKey.values()].sort(compareSegments);
}

function compareSegments(a: SegmentFileEntry, b: SegmentFileEntry): number {
  if (a.pgTimelineId !== b.pgTimelineId) return a.pgTimelineId - b.pgTimelineId;
  return a.segno < b.segno ? -1 : a.segno > b.segno ? 1 : 0;
}

/** History files (%08X.history) in `dir`, by PostgreSQL timeline id. */
export async function listHistoryFiles(dir: string): Promise<{ readonly pgTimelineId: number; readonly name: string; readonly path: string }[]> {
  const found = [];
  for (const name of await readdir(dir)) {
    const pgTimelineId = parseHistoryFileName(name);
    if (pgTimelineId !== undefined) found.push({ pgTimelineId, name, path: join(dir, name) });
  }
  return found.sort((a, b) => a.pgTimelineId - b.pgTimelineId);
}

/** Creates DATA/<tenant>/ (the timeline directory itself is renamed into place by import). */
export async function ensureTenantDir(dataDir: string, tenantId: string): Promise<string> {
  assert.ok(isValidId(tenantId), 'tenant id is 32 lower-case hex');
  const dir = join(dataDir, tenantId);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  return dir;
}
