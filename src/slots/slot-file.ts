/**
 * The per-timeline slot file `walcast.slots` in DATA/<tenant_id>/<timeline_id>/: the timeline's persistent
 * replication slots (temporary ones are never written). Same discipline as the control file: line 1 is a JSON object,
 * line 2 `crc32c:XXXXXXXX` over line 1's bytes; replaced atomically (temp file, fsync, rename, fsync the directory),
 * so after a crash the file is the old one or the new one, never a mix.
 *
 * A missing file is "no slots" (timelines made before slots existed have none); a corrupt one stops the server,
 * as a slot it cannot read may be holding WAL a replica needs.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { WalcastError } from '../errors.js';
import { failpoint } from '../failpoints.js';
import { formatLsn, parseLsn } from '../lsn.js';
import { replaceFileDurably } from '../storage/durable-file.js';
import { crc32c } from '../storage/crc32c.js';
import { SLOTS_PER_TIMELINE_MAX, validateSlotName, type PersistedSlot, type SlotStore } from './slot-table.js';

export const SLOT_FILE_NAME = 'walcast.slots';
const SLOT_TEMP_NAME = 'walcast.slots.tmp';
export const SLOT_FILE_FORMAT_VERSION = 1;
/** About 200 bytes a slot at the slot bound, with room to spare; anything bigger is not ours. */
const SLOT_FILE_BYTES_MAX = SLOTS_PER_TIMELINE_MAX * 1024;
const CHECKSUM_LINE = /^crc32c:([0-9a-f]{8})$/;

/** Serializes the slots to the file's bytes. Pure. */
export function encodeSlotFile(slots: readonly PersistedSlot[]): Buffer {
  const body = JSON.stringify({
    formatVersion: SLOT_FILE_FORMAT_VERSION,
    slots: slots.map((slot) => ({
      name: slot.name,
      restartLsn: slot.restartLsn === undefined ? null : formatLsn(slot.restartLsn),
      invalidated: slot.invalidated,
      ...(slot.invalidationReason === undefined ? {} : { invalidationReason: slot.invalidationReason }),
      createdAt: slot.createdAt,
    })),
  });
  const bodyBytes = Buffer.from(body, 'utf8');
  return Buffer.concat([bodyBytes, Buffer.from(`\ncrc32c:${crc32c(bodyBytes).toString(16).padStart(8, '0')}\n`, 'utf8')]);
}

/** Parses and validates the file's bytes; throws WALCAST_ERR_SLOT_FILE naming what is wrong. Pure. */
export function decodeSlotFile(bytes: Buffer, where = SLOT_FILE_NAME): PersistedSlot[] {
  const fail = (why: string): never => {
    throw new WalcastError('WALCAST_ERR_SLOT_FILE', `slot file ${where} is corrupt: ${why}`);
  };
  const lines = bytes.toString('utf8').split('\n');
  if (lines.length !== 3 || lines[2] !== '') fail('expected a JSON line and a checksum line');
  const body = lines[0] ?? '';
  const checksum = CHECKSUM_LINE.exec(lines[1] ?? '');
  if (checksum?.[1] !== crc32c(Buffer.from(body, 'utf8')).toString(16).padStart(8, '0')) fail('checksum mismatch');
  let raw: unknown;
  try {
    raw = JSON.parse(body);
  } catch {
    fail('the body is not JSON');
  }
  const record = raw as { formatVersion?: unknown; slots?: unknown };
  if (record?.formatVersion !== SLOT_FILE_FORMAT_VERSION) fail(`unsupported format version ${String(record?.formatVersion)}`);
  if (!Array.isArray(record.slots) || record.slots.length > SLOTS_PER_TIMELINE_MAX) fail('slots is not a list within the bound');
  const slots = (record.slots as unknown[]).map((entry) => parseSlot(entry, fail));
  if (new Set(slots.map((slot) => slot.name)).size !== slots.length) fail('a slot name appears twice');
  return slots;
}

function parseSlot(entry: unknown, fail: (why: string) => never): PersistedSlot {
  const slot = entry as Record<string, unknown>;
  if (typeof slot !== 'object' || slot === null) return fail('a slot is not an object');
  const name = typeof slot.name === 'string' ? slot.name : fail('a slot name is not a string');
  try {
    validateSlotName(name);
  } catch {
    fail(`slot name "${name}" is invalid`);
  }
  const restartLsn = slot.restartLsn === null ? undefined : typeof slot.restartLsn === 'string' ? (parseLsn(slot.restartLsn) ?? fail(`slot ${name}: restartLsn is not an LSN`)) : fail(`slot ${name}: restartLsn is not an LSN`);
  if (typeof slot.invalidated !== 'boolean') fail(`slot ${name}: invalidated is not a boolean`);
  const reason = slot.invalidationReason;
  if (reason !== undefined && typeof reason !== 'string') fail(`slot ${name}: invalidationReason is not a string`);
  if (typeof slot.createdAt !== 'string' || Number.isNaN(Date.parse(slot.createdAt))) fail(`slot ${name}: createdAt is not a date`);
  return { name, restartLsn, invalidated: slot.invalidated as boolean, invalidationReason: reason as string | undefined, createdAt: slot.createdAt as string };
}

/** Reads DIR/walcast.slots; a missing file is no slots. */
export async function readSlotFile(dir: string): Promise<PersistedSlot[]> {
  const path = join(dir, SLOT_FILE_NAME);
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new WalcastError('WALCAST_ERR_SLOT_FILE', `slot file ${path} cannot be read: ${(error as Error).message}`, { cause: error });
  }
  if (bytes.length > SLOT_FILE_BYTES_MAX) throw new WalcastError('WALCAST_ERR_SLOT_FILE', `slot file ${path} is corrupt: too large`);
  return decodeSlotFile(bytes, path);
}

/** Replaces DIR/walcast.slots atomically and durably. */
export async function writeSlotFile(dir: string, slots: readonly PersistedSlot[]): Promise<void> {
  await replaceFileDurably(dir, SLOT_FILE_NAME, encodeSlotFile(slots), { tempName: SLOT_TEMP_NAME, beforeRename: () => failpoint('slot-before-rename') });
}

/** The SlotStore of one timeline directory. */
export function slotFileStore(dir: string): SlotStore {
  return { save: (slots) => writeSlotFile(dir, slots) };
}
