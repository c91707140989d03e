/**
 * The per-timeline control file `walcast.control` in DATA/<tenant_id>/<timeline_id>/: what the timeline is
 * (system id, segment size, PostgreSQL timeline) and how far its durable WAL goes (flush and commit LSN).
 *
 * Format: line 1 is a JSON object (LSNs as "X/Y", the 64-bit system id as a decimal string), line 2 is
 * `crc32c:XXXXXXXX` over the exact bytes of line 1. It is replaced atomically (write a temp file, fsync, rename,
 * fsync the directory), so a reader sees the old file or the new one, never a mix; the checksum catches the rest.
 */
import assert from 'node:assert/strict';
import { readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { WalcastError } from '../errors.js';
import { failpoint } from '../failpoints.js';
import { formatLsn, parseLsn, type Lsn } from '../lsn.js';
import { crc32c } from './crc32c.js';
import { replaceFileDurably } from './durable-file.js';

/** Re-exported for the modules that imported it from here before durable-file.ts existed. */
export { fsyncDirectory } from './durable-file.js';
import { assertSegmentSize } from './segment-name.js';

export const CONTROL_FILE_NAME = 'walcast.control';
/** Where a new control file is written before it is renamed over the old one; never left behind (see below). */
export const CONTROL_TEMP_NAME = 'walcast.control.tmp';
export const CONTROL_FORMAT_VERSION = 1;
/** PG_VERSION_NUM of the only PostgreSQL major walcast reads WAL of (page magic 0xD110). */
export const PG_VERSION_NUM_15 = 150000;
/** A control file is a few hundred bytes; anything bigger is not ours. */
const CONTROL_FILE_BYTES_MAX = 64 * 1024;
const ID_PATTERN = /^[0-9a-f]{32}$/;
const CHECKSUM_LINE = /^crc32c:([0-9a-f]{8})$/;

export interface ControlState {
  readonly formatVersion: number;
  /** 32 lower-case hex characters. */
  readonly tenantId: string;
  readonly timelineId: string;
  /** PostgreSQL's database system identifier (pg_control / long page header xlp_sysid). */
  readonly systemId: bigint;
  /** PG_VERSION_NUM, e.g. 150000. */
  readonly pgVersion: number;
  readonly segmentBytes: number;
  /** The PostgreSQL timeline id (TLI) of the WAL held. */
  readonly pgTimelineId: number;
  /** The first byte held: a segment start. */
  readonly timelineStartLsn: Lsn;
  /** End of durable, validated WAL. */
  readonly flushLsn: Lsn;
  /** End of WAL that may be served to replicas (<= flushLsn). */
  readonly commitLsn: Lsn;
  /** Start of the last valid record before flushLsn, when known (recovery checks the next xl_prev with it). */
  readonly lastRecordLsn?: Lsn | undefined;
  /**
   * Object-storage offload: every segment before this LSN (a segment start) is confirmed in the bucket. Written only
   * after the uploads are confirmed; absent when the timeline was never offloaded. Retention keeps everything from
   * here on (src/retention/horizon.ts).
   */
  readonly backupLsn?: Lsn | undefined;
  /** Where ingest follows from, e.g. a connection string without the password. */
  readonly upstream?: string | undefined;
  /** ISO 8601. */
  readonly createdAt: string;
}

/** Serializes a state to the file's bytes. Pure. */
export function encodeControlFile(state: ControlState): Buffer {
  assertControlState(state);
  const body = JSON.stringify({
    formatVersion: state.formatVersion,
    tenantId: state.tenantId,
    timelineId: state.timelineId,
    systemId: state.systemId.toString(10),
    pgVersion: state.pgVersion,
    segmentBytes: state.segmentBytes,
    pgTimelineId: state.pgTimelineId,
    timelineStartLsn: formatLsn(state.timelineStartLsn),
    flushLsn: formatLsn(state.flushLsn),
    commitLsn: formatLsn(state.commitLsn),
    ...(state.lastRecordLsn === undefined ? {} : { lastRecordLsn: formatLsn(state.lastRecordLsn) }),
    ...(state.backupLsn === undefined ? {} : { backupLsn: formatLsn(state.backupLsn) }),
    ...(state.upstream === undefined ? {} : { upstream: state.upstream }),
    createdAt: state.createdAt,
  });
  const bodyBytes = Buffer.from(body, 'utf8');
  return Buffer.concat([bodyBytes, Buffer.from(`\ncrc32c:${hex8(crc32c(bodyBytes))}\n`, 'utf8')]);
}

/** Parses and validates the file's bytes; throws WALCAST_ERR_CONTROL_FILE naming what is wrong. Pure. */
export function decodeControlFile(bytes: Buffer, where = CONTROL_FILE_NAME): ControlState {
  const fail = (why: string): never => {
    throw new WalcastError('WALCAST_ERR_CONTROL_FILE', `control file ${where} is corrupt: ${why}`);
  };
  const text = bytes.toString('utf8');
  const lines = text.split('\n');
  if (lines.length !== 3 || lines[2] !== '') fail('expected a JSON line and a checksum line');
  const body = lines[0] ?? '';
  const checksum = CHECKSUM_LINE.exec(lines[1] ?? '');
  if (checksum === null) fail('the checksum line is malformed');
  if (checksum?.[1] !== hex8(crc32c(Buffer.from(body, 'utf8')))) fail('checksum mismatch');
  let raw: unknown;
  try {
    raw = JSON.parse(body);
  } catch {
    fail('the body is not JSON');
  }
  return parseFields(raw, fail);
}

type Fail = (why: string) => never;

function parseFields(raw: unknown, fail: Fail): ControlState {
  if (typeof raw !== 'object' || raw === null) return fail('the body is not an object');
  const record = raw as Record<string, unknown>;
  const formatVersion = integerField(record, 'formatVersion', fail);
  if (formatVersion !== CONTROL_FORMAT_VERSION) fail(`unsupported format version ${formatVersion}`);
  const state: ControlState = {
    formatVersion,
    tenantId: idField(record, 'tenantId', fail),
    timelineId: idField(record, 'timelineId', fail),
    systemId: systemIdField(record, fail),
    pgVersion: integerField(record, 'pgVersion', fail),
    segmentBytes: integerField(record, 'segmentBytes', fail),
    pgTimelineId: integerField(record, 'pgTimelineId', fail),
    timelineStartLsn: lsnField(record, 'timelineStartLsn', fail),
    flushLsn: lsnField(record, 'flushLsn', fail),
    commitLsn: lsnField(record, 'commitLsn', fail),
    lastRecordLsn: record.lastRecordLsn === undefined ? undefined : lsnField(record, 'lastRecordLsn', fail),
    // Only when present, so a state without it decodes exactly as before the field existed.
    ...(record.backupLsn === undefined ? {} : { backupLsn: lsnField(record, 'backupLsn', fail) }),
    upstream: record.upstream === undefined ? undefined : stringField(record, 'upstream', fail),
    createdAt: stringField(record, 'createdAt', fail),
  };
  const problem = describeInconsistency(state);
  if (problem !== undefined) fail(problem);
  return state;
}

function stringField(record: Record<string, unknown>, name: string, fail: Fail): string {
  const value = record[name];
  return typeof value === 'string' ? value : fail(`field ${name} is not a string`);
}

function integerField(record: Record<string, unknown>, name: string, fail: Fail): number {
  const value = record[name];
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? value : fail(`field ${name} is not a non-negative integer`);
}

function idField(record: Record<string, unknown>, name: string, fail: Fail): string {
  const value = stringField(record, name, fail);
  return ID_PATTERN.test(value) ? value : fail(`field ${name} is not 32 lower-case hex characters`);
}

function lsnField(record: Record<string, unknown>, name: string, fail: Fail): Lsn {
  const value = parseLsn(stringField(record, name, fail));
  return value ?? fail(`field ${name} is not an LSN`);
}

function systemIdField(record: Record<string, unknown>, fail: Fail): bigint {
  const value = stringField(record, 'systemId', fail);
  if (!/^[0-9]{1,20}$/.test(value)) fail('field systemId is not a decimal number');
  const systemId = BigInt(value);
  return systemId <= 0xffff_ffff_ffff_ffffn ? systemId : fail('field systemId exceeds 64 bits');
}

/** Relations between fields; undefined when consistent. */
function describeInconsistency(state: ControlState): string | undefined {
  try {
    assertSegmentSize(state.segmentBytes);
  } catch {
    return `segment size ${state.segmentBytes} is invalid`;
  }
  if (state.pgTimelineId < 1 || state.pgTimelineId > 0xffff_ffff) return `PostgreSQL timeline id ${state.pgTimelineId} is invalid`;
  if (state.timelineStartLsn % BigInt(state.segmentBytes) !== 0n) return 'timelineStartLsn is not a segment start';
  if (state.flushLsn < state.timelineStartLsn) return 'flushLsn is before timelineStartLsn';
  if (state.commitLsn > state.flushLsn) return 'commitLsn is past flushLsn';
  if (state.backupLsn !== undefined && state.backupLsn % BigInt(state.segmentBytes) !== 0n) return 'backupLsn is not a segment start';
  if (Number.isNaN(Date.parse(state.createdAt))) return 'createdAt is not a date';
  return undefined;
}

function assertControlState(state: ControlState): void {
  assert.ok(ID_PATTERN.test(state.tenantId), 'tenant id is 32 lower-case hex');
  assert.ok(ID_PATTERN.test(state.timelineId), 'timeline id is 32 lower-case hex');
  assert.equal(describeInconsistency(state), undefined);
}

/** Reads and validates DIR/walcast.control; a missing or corrupt file is WALCAST_ERR_CONTROL_FILE. */
export async function readControlFile(dir: string): Promise<ControlState> {
  const path = join(dir, CONTROL_FILE_NAME);
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (error) {
    throw new WalcastError('WALCAST_ERR_CONTROL_FILE', `control file ${path} cannot be read: ${(error as Error).message}`, { cause: error });
  }
  if (bytes.length > CONTROL_FILE_BYTES_MAX) throw new WalcastError('WALCAST_ERR_CONTROL_FILE', `control file ${path} is corrupt: too large`);
  return decodeControlFile(bytes, path);
}

/**
 * Replaces DIR/walcast.control atomically and durably. On failure (ENOSPC, EIO, EROFS ...) the temp file is removed
 * before the error is thrown, so a full disk leaves no stray `walcast.control.tmp` behind; the old control file stays.
 */
export async function writeControlFile(dir: string, state: ControlState): Promise<void> {
  await replaceFileDurably(dir, CONTROL_FILE_NAME, encodeControlFile(state), { tempName: CONTROL_TEMP_NAME, beforeRename: () => failpoint('control-before-rename') });
}

/** Removes a `walcast.control.tmp` left by a crash between writing and renaming it; true when there was one. */
export async function removeStaleControlTemp(dir: string): Promise<boolean> {
  try {
    await unlink(join(dir, CONTROL_TEMP_NAME));
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}

function hex8(value: number): string {
  return value.toString(16).padStart(8, '0');
}
