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
import assert from 'node:assert/strict';
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { WalcastError } from '../errors.js';
import { WAL_PAGE_BYTES, type Lsn } from '../lsn.js';
import { SIDECAR_ENTRY_BYTES, SIDECAR_SUFFIX, sidecarPathFor } from '../storage/page-checksums.js';
import { CONTROL_FORMAT_VERSION, fsyncDirectory, writeControlFile } from '../storage/control-file.js';
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
      const head = entry.pgTimelineId === metadata.pgTimelineId ? history.sizeBytes : (await store.head(key))?.sizeBytes;
      if (head === undefined) {
        // The oldest TLI has no file (TLI 1, or a timeline imported without its history); the restored one must.
        if (index === 0 || entry.pgTimelineId !== pgTimelineId) continue;
        throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `history file object ${key} of PostgreSQL timeline ${pgTimelineId} is missing from ${store.description}`);
      }
      if (head > HISTORY_FILE_BYTES_MAX) throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `history file object ${key} has ${head} bytes`);
      await download(store, key, join(tempDir, historyFileName(entry.pgTimelineId)), head);
      historyFiles.push(historyFileName(entry.pgTimelineId));
    }
    const name = segmentFileName(pgTimelineId, lastSegno, metadata.segmentBytes);
    const segmentObjectKey = store.key(segmentKey(keys, pgTimelineId, lastSegno, metadata.segmentBytes));
    await download(store, segmentObjectKey, join(tempDir, name), metadata.segmentBytes);
    // Its page checksums, when the bucket has them (segment-uploader.ts putSidecar), so the one local segment is
    // verified before it is sent like every other.
    const sidecar = await store.head(segmentObjectKey + SIDECAR_SUFFIX);
    if (sidecar !== undefined && sidecar.sizeBytes > 0 && sidecar.sizeBytes <= (metadata.segmentBytes / WAL_PAGE_BYTES) * SIDECAR_ENTRY_BYTES) {
      await download(store, segmentObjectKey + SIDECAR_SUFFIX, sidecarPathFor(tempDir, name), sidecar.sizeBytes);
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
 * The history of the metadata's TLI from its history file in the bucket. Without one, the TLI is served as a single
 * timeline, as open-timelines.ts readHistory does locally (TLI 1, or a timeline imported without its history).
 */
async function readRemoteHistory(store: ObjectStore, keys: TimelineKeys, pgTimelineId: number): Promise<{ history: TimelineHistory; sizeBytes: number | undefined }> {
  const key = store.key(historyKey(keys, pgTimelineId));
  const head = pgTimelineId === 1 ? undefined : await store.head(key);
  if (head === undefined) return { history: singleTimelineHistory(pgTimelineId), sizeBytes: undefined };
  if (head.sizeBytes > HISTORY_FILE_BYTES_MAX) throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `history file object ${key} has ${head.sizeBytes} bytes`);
  const bytes = head.sizeBytes === 0 ? Buffer.alloc(0) : await store.getRange(key, 0, head.sizeBytes);
  try {
    return { history: parseTimelineHistory(bytes.toString('utf8'), pgTimelineId), sizeBytes: head.sizeBytes };
  } catch (error) {
    throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `history file object ${key} is invalid: ${(error as Error).message}`, { cause: error });
  }
}

async function readMetadata(store: ObjectStore, keys: TimelineKeys): Promise<RemoteTimelineMetadata> {
  const key = store.key(metadataKey(keys));
  const head = await store.head(key);
  if (head === undefined) throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `no timeline metadata object ${key} in ${store.description}`);
  if (head.sizeBytes === 0 || head.sizeBytes > REMOTE_METADATA_BYTES_MAX) throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `timeline metadata object ${key} has ${head.sizeBytes} bytes`);
  const metadata = decodeRemoteMetadata(await store.getRange(key, 0, head.sizeBytes), key);
  if (metadata.tenantId !== keys.tenantId || metadata.timelineId !== keys.timelineId) {
    throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `timeline metadata object ${key} describes ${metadata.tenantId}/${metadata.timelineId}`);
  }
  return metadata;
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
      assert.equal(written, length, 'a ranged GET returns the bytes asked for');
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}
