/**
 * `walcast timeline restore`: brings a timeline up on a new machine from object storage alone. It reads the
 * timeline's metadata object, downloads the last offloaded segment (so recovery at the next start validates real
 * WAL and ingest resumes from the backup LSN), and writes a control file whose local start is that segment and
 * whose backup LSN says everything before is in the bucket. `walcast serve --remote-storage …` then serves the
 * older WAL from the bucket through the segment cache, and follows the recorded upstream from the backup LSN.
 *
 * Explicit rather than automatic on serve: restoring decides which machine owns a timeline, an operator's call,
 * and a serve that silently created timelines from a bucket could start a second writer for one timeline.
 * The directory appears atomically (built under a temp name, fsynced, renamed), as `walcast timeline create` does.
 *
 * PostgreSQL timelines: the metadata names the timeline's current TLI, whose history file (when it has ancestors)
 * is in the bucket. The restored segment is read from the object the history names (the uploader's rule), and the
 * restored control file records the TLI of that segment, i.e. the history cut at the backup LSN: when the backup
 * LSN is still before the newest switch, the WAL after it is the old TLI's, and ingest follows the upstream across
 * the switch as it always does (catching up to the switch point, then switching). The history files of that TLI
 * and its ancestors come back byte-identical, so TIMELINE_HISTORY and replicas work as before.
 */
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { WalcastError } from '../errors.js';
import { WAL_PAGE_BYTES, type Lsn } from '../lsn.js';
import { SIDECAR_ENTRY_BYTES, SIDECAR_SUFFIX, sidecarPathFor } from '../storage/page-checksums.js';
import { CONTROL_FORMAT_VERSION, fsyncDirectory, writeControlFile } from '../storage/control-file.js';
import { writeFileSynced } from '../storage/durable-file.js';
import { historyFileName, segmentFileName, segmentOf } from '../storage/segment-name.js';
import { HISTORY_FILE_BYTES_MAX, parseTimelineHistory, segmentPgTimeline, singleTimelineHistory, type TimelineHistory } from '../storage/timeline-history.js';
import { ObjectNotFoundError, type ObjectStore } from './object-store.js';
import { REMOTE_GET_RANGE_BYTES } from './segment-cache.js';
import { REMOTE_METADATA_BYTES_MAX, decodeRemoteMetadata, historyKey, metadataKey, segmentKey, type RemoteTimelineMetadata, type TimelineKeys } from './remote-layout.js';

export interface RestoreResult {
  readonly tenantId: string;
  readonly timelineId: string;
  /** The first byte held locally after restore: the last offloaded segment's start. */
  readonly localStartLsn: Lsn;
  /** Everything before this is in the bucket; ingest resumes here. */
  readonly backupLsn: Lsn;
  /** The first byte the bucket holds. */
  readonly timelineStartLsn: Lsn;
  /** The PostgreSQL timeline of the restored WAL's end (the control file's); history files restored up to it. */
  readonly pgTimelineId: number;
  readonly historyFiles: readonly string[];
  readonly upstream: string | undefined;
}

export async function restoreTimeline(options: { dataDir: string; store: ObjectStore; keys: TimelineKeys }): Promise<RestoreResult> {
  const { store, keys } = options;
  const finalDir = join(options.dataDir, keys.tenantId, keys.timelineId);
  if (await stat(finalDir).catch(() => undefined)) {
    throw new WalcastError('WALCAST_ERR_TIMELINE_EXISTS', `timeline ${keys.tenantId}/${keys.timelineId} already exists in ${options.dataDir}`);
  }
  const metadata = await readMetadata(store, keys);
  if (metadata.backupLsn <= metadata.timelineStartLsn) {
    throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `timeline ${keys.tenantId}/${keys.timelineId} has no offloaded segment in ${store.description}`);
  }
  const history = await readRemoteHistory(store, keys, metadata.pgTimelineId);
  const lastSegno = segmentOf(metadata.backupLsn, metadata.segmentBytes) - 1n;
  const localStartLsn = lastSegno * BigInt(metadata.segmentBytes);
  const pgTimelineId = segmentPgTimeline(lastSegno, metadata.segmentBytes, history.history);
  const tempDir = join(options.dataDir, keys.tenantId, `.restore-${keys.timelineId}`);
  await rm(tempDir, { recursive: true, force: true });
  await mkdir(tempDir, { recursive: true, mode: 0o700 });
  const historyFiles: string[] = [];
  try {
    for (const [index, entry] of history.history.entries()) {
      if (entry.pgTimelineId > pgTimelineId) break;
      const key = store.key(historyKey(keys, entry.pgTimelineId));
      // The bytes restore parsed for the metadata's TLI are the ones it writes: one GET per object, never a HEAD's
      // size applied to a later GET (an object rewritten in between would be cut or padded).
      const bytes = entry.pgTimelineId === metadata.pgTimelineId ? history.bytes : await getHistoryObject(store, key);
      if (bytes === undefined) {
        // The oldest TLI has no file (TLI 1, or a timeline imported without its history); the restored one must.
        if (index === 0 || entry.pgTimelineId !== pgTimelineId) continue;
        throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `history file object ${key} of PostgreSQL timeline ${pgTimelineId} is missing from ${store.description}`);
      }
      await writeFileSynced(join(tempDir, historyFileName(entry.pgTimelineId)), bytes, 'wx');
      historyFiles.push(historyFileName(entry.pgTimelineId));
    }
    const name = segmentFileName(pgTimelineId, lastSegno, metadata.segmentBytes);
    const segmentObjectKey = store.key(segmentKey(keys, pgTimelineId, lastSegno, metadata.segmentBytes));
    await download(store, segmentObjectKey, join(tempDir, name), metadata.segmentBytes);
    // Its page checksums, when the bucket has them (segment-uploader.ts putSidecar), so the one local segment is
    // verified before it is sent like every other.
    // One GET of the whole object, as the segment cache reads it (no HEAD whose size a rewrite could change).
    const sidecarBytesMax = (metadata.segmentBytes / WAL_PAGE_BYTES) * SIDECAR_ENTRY_BYTES;
    const sidecar = await getWholeObject(store, segmentObjectKey + SIDECAR_SUFFIX, sidecarBytesMax + 1);
    if (sidecar !== undefined && sidecar.length > 0 && sidecar.length <= sidecarBytesMax) {
      await writeFileSynced(sidecarPathFor(tempDir, name), sidecar, 'wx');
    }
    await writeControlFile(tempDir, {
      formatVersion: CONTROL_FORMAT_VERSION,
      tenantId: keys.tenantId,
      timelineId: keys.timelineId,
      systemId: metadata.systemId,
      pgVersion: metadata.pgVersion,
      segmentBytes: metadata.segmentBytes,
      pgTimelineId,
      timelineStartLsn: localStartLsn,
      flushLsn: metadata.backupLsn,
      commitLsn: metadata.backupLsn,
      backupLsn: metadata.backupLsn,
      upstream: metadata.upstream,
      createdAt: new Date().toISOString(),
    });
    await rename(tempDir, finalDir);
    await fsyncDirectory(join(options.dataDir, keys.tenantId));
  } catch (error) {
    await rm(tempDir, { recursive: true, force: true });
    throw error;
  }
  return { ...keys, localStartLsn, backupLsn: metadata.backupLsn, timelineStartLsn: metadata.timelineStartLsn, pgTimelineId, historyFiles, upstream: metadata.upstream };
}

/**
 * The history of the metadata's TLI from its history file in the bucket, with the file's bytes. Without one, the TLI
 * is served as a single timeline, as open-timelines.ts readHistory does locally (TLI 1, or a timeline imported
 * without its history).
 */
async function readRemoteHistory(store: ObjectStore, keys: TimelineKeys, pgTimelineId: number): Promise<{ history: TimelineHistory; bytes: Buffer | undefined }> {
  const key = store.key(historyKey(keys, pgTimelineId));
  const bytes = pgTimelineId === 1 ? undefined : await getHistoryObject(store, key);
  if (bytes === undefined) return { history: singleTimelineHistory(pgTimelineId), bytes: undefined };
  try {
    return { history: parseTimelineHistory(bytes.toString('utf8'), pgTimelineId), bytes };
  } catch (error) {
    throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `history file object ${key} is invalid: ${(error as Error).message}`, { cause: error });
  }
}

/** A history file object's bytes, or undefined when the bucket has none; refused when larger than any history file. */
async function getHistoryObject(store: ObjectStore, key: string): Promise<Buffer | undefined> {
  const bytes = await getWholeObject(store, key, HISTORY_FILE_BYTES_MAX + 1);
  if (bytes !== undefined && bytes.length > HISTORY_FILE_BYTES_MAX) throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `history file object ${key} has more than ${HISTORY_FILE_BYTES_MAX} bytes`);
  return bytes;
}

/**
 * The metadata object in one GET of the whole object. Not a HEAD and then a ranged GET of the HEAD's size: the
 * walcast that offloads the timeline rewrites this object after every advance of its backup LSN, and a rewrite
 * between the two (a longer LSN, an upstream added) cut the new JSON at the old length, failing restore with
 * "not JSON". S3 replaces an object atomically, so one GET answers one version whole.
 */
async function readMetadata(store: ObjectStore, keys: TimelineKeys): Promise<RemoteTimelineMetadata> {
  const key = store.key(metadataKey(keys));
  const bytes = await getWholeObject(store, key, REMOTE_METADATA_BYTES_MAX + 1);
  if (bytes === undefined) throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `no timeline metadata object ${key} in ${store.description}`);
  if (bytes.length === 0) throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `timeline metadata object ${key} is empty`);
  if (bytes.length > REMOTE_METADATA_BYTES_MAX) throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `timeline metadata object ${key} has more than ${REMOTE_METADATA_BYTES_MAX} bytes`);
  const metadata = decodeRemoteMetadata(bytes, key);
  if (metadata.tenantId !== keys.tenantId || metadata.timelineId !== keys.timelineId) {
    throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `timeline metadata object ${key} describes ${metadata.tenantId}/${metadata.timelineId}`);
  }
  return metadata;
}

/**
 * The whole of `key` (at most `maxBytes`: the store refuses a larger answer, reported here as WALCAST_ERR_REMOTE_STORAGE
 * naming the object), or undefined when the bucket does not have it.
 */
async function getWholeObject(store: ObjectStore, key: string, maxBytes: number): Promise<Buffer | undefined> {
  try {
    return await store.getObject(key, maxBytes);
  } catch (error) {
    if (error instanceof ObjectNotFoundError) return undefined;
    throw new WalcastError('WALCAST_ERR_REMOTE_STORAGE', `reading ${key} failed: ${(error as Error).message}`, { cause: error });
  }
}

/** Copies an object to a new file in REMOTE_GET_RANGE_BYTES GETs streamed into it, and fsyncs it. */
async function download(store: ObjectStore, key: string, path: string, sizeBytes: number): Promise<void> {
  const handle = await open(path, 'wx', 0o600);
  try {
    for (let position = 0; position < sizeBytes; position += REMOTE_GET_RANGE_BYTES) {
      const length = Math.min(REMOTE_GET_RANGE_BYTES, sizeBytes - position);
      let written: number;
      try {
        written = await store.getRangeToFile(key, position, length, handle, position);
      } catch (error) {
        if (error instanceof ObjectNotFoundError) throw new WalcastError('WALCAST_ERR_REMOTE_STORAGE', `segment object ${key} is missing from the bucket`, { cause: error });
        throw new WalcastError('WALCAST_ERR_REMOTE_STORAGE', `reading ${key} failed: ${(error as Error).message}`, { cause: error });
      }
      // The object is shorter than the metadata says (damaged, or not what walcast put there): the bucket's
      // state, not an invariant of this code, so a clear error naming the object rather than an assertion.
      if (written !== length) {
        throw new WalcastError('WALCAST_ERR_REMOTE_STORAGE', `object ${key} answered ${written} bytes at offset ${position}, expected ${length}: it is shorter than ${sizeBytes} bytes`);
      }
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}
