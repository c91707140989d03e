/**
 * Starts and stops offload for a server: one SegmentUploader per timeline, all sharing one object store. A timeline
 * is described structurally (the Timeline object satisfies OffloadTimeline), so this layer, beside storage, never
 * imports the timeline layer above it. The backup LSN is persisted through the timeline's ControlFileWriter, the one
 * writer of walcast.control while the server runs, so it never races ingest's or retention's writes.
 */
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { maxLsn, type Lsn } from '../lsn.js';
import type { ControlFileWriter } from '../storage/control-writer.js';
import { segmentOf } from '../storage/segment-name.js';
import type { TimelineHistory } from '../storage/timeline-history.js';
import type { RemoteSegmentSource } from '../storage/wal-reader.js';
import type { ObjectStore } from './object-store.js';
import { SegmentCache } from './segment-cache.js';
import { SegmentUploader, type OffloadStatus } from './segment-uploader.js';

/** What offload reads of a timeline. */
export interface OffloadTimeline {
  readonly tenantId: string;
  readonly timelineId: string;
  readonly dir: string;
  readonly systemId: bigint;
  readonly pgVersion: number;
  readonly segmentBytes: number;
  /**
   * The PostgreSQL timeline history now; ingest replaces it when it follows a promotion, so offload reads it at
   * every use (never a TLI copied at start) to name each segment by the TLI the history assigns it.
   */
  readonly history: TimelineHistory;
  readonly timelineStartLsn: Lsn;
  readonly flushLsn: { get(): Lsn };
  readonly controlFile: ControlFileWriter;
  /** Set here: the reader's source of segments before the local start. */
  remoteSegments: RemoteSegmentSource | undefined;
}

export interface OffloadHandle {
  readonly store: ObjectStore;
  /**
   * Starts offload (an uploader, and read-back through a segment cache) for a timeline opened while serving, before
   * its retention starts: retention then keeps everything from its backup LSN on. Adding one twice does nothing.
   */
  add(timeline: OffloadTimeline): Promise<void>;
  uploader(tenantId: string, timelineId: string): SegmentUploader | undefined;
  /** Upload and read-back figures of a timeline for the status API and /metrics. */
  status(tenantId: string, timelineId: string): OffloadStatus | undefined;
  cache(tenantId: string, timelineId: string): SegmentCache | undefined;
  /**
   * Stops offloading a timeline being removed and deletes its local cache of fetched segments. Its objects in the
   * bucket stay: they are the timeline's backup, and `walcast timeline restore` can bring it back.
   */
  remove(tenantId: string, timelineId: string): Promise<void>;
  stop(): Promise<void>;
}

export interface StartOffloadOptions {
  readonly timelines: readonly OffloadTimeline[];
  readonly store: ObjectStore;
  /** Root of the fetched-segment caches: <cacheRoot>/<tenant>/<timeline>/. */
  readonly cacheRoot: string;
  readonly cacheBytesMax?: number;
  readonly log: Logger;
}

export async function startOffload(options: StartOffloadOptions): Promise<OffloadHandle> {
  const uploaders = new Map<string, SegmentUploader>();
  const caches = new Map<string, SegmentCache>();
  let stopped = false;
  /** Adds in progress, so that a remove of the same timeline waits for its add and then undoes it. */
  const adding = new Map<string, Promise<void>>();
  const add = async (timeline: OffloadTimeline): Promise<void> => {
    const id = `${timeline.tenantId}/${timeline.timelineId}`;
    const running = adding.get(id) ?? addNow(timeline).finally(() => adding.delete(id));
    adding.set(id, running);
    await running;
  };
  const addNow = async (timeline: OffloadTimeline): Promise<void> => {
    const id = `${timeline.tenantId}/${timeline.timelineId}`;
    assert.ok(!stopped, 'no timeline is added to a stopped offload');
    if (uploaders.has(id)) return;
    const cache = new SegmentCache({
      store: options.store,
      keys: timeline,
      dir: join(options.cacheRoot, timeline.tenantId, timeline.timelineId),
      segmentBytes: timeline.segmentBytes,
      history: () => timeline.history,
      localStartSegment: () => segmentOf(timeline.timelineStartLsn, timeline.segmentBytes),
      log: options.log.child({ tenant: timeline.tenantId, timeline: timeline.timelineId, component: 'remote-read' }),
      ...(options.cacheBytesMax === undefined ? {} : { cacheBytesMax: options.cacheBytesMax }),
    });
    const control = await timeline.controlFile.read();
    // Segments before the local start are gone (removed before offload was turned on): they cannot be uploaded.
    const backupLsn = maxLsn(control.backupLsn ?? timeline.timelineStartLsn, timeline.timelineStartLsn);
    const uploader = new SegmentUploader({
      store: options.store,
      dir: timeline.dir,
      keys: timeline,
      identity: {
        tenantId: timeline.tenantId,
        timelineId: timeline.timelineId,
        systemId: timeline.systemId,
        pgVersion: timeline.pgVersion,
        segmentBytes: timeline.segmentBytes,
        timelineStartLsn: timeline.timelineStartLsn,
        upstream: control.upstream,
      },
      history: () => timeline.history,
      backupLsn,
      flushLsn: () => timeline.flushLsn.get(),
      persistBackupLsn: async (lsn) => {
        await timeline.controlFile.update((state) => (state.backupLsn !== undefined && state.backupLsn >= lsn ? undefined : { ...state, backupLsn: lsn }));
      },
      log: options.log.child({ tenant: timeline.tenantId, timeline: timeline.timelineId, component: 'offload' }),
    });
    // A stop (or a second add) may have come while the control file was read.
    if (stopped || uploaders.has(id)) return;
    caches.set(id, cache);
    timeline.remoteSegments = cache;
    uploaders.set(id, uploader);
    uploader.start();
  };
  for (const timeline of options.timelines) await add(timeline);
  options.log.info({ timelines: uploaders.size, store: options.store.description }, 'WAL offload to object storage started');
  return {
    store: options.store,
    add: async (timeline) => {
      await add(timeline);
      options.log.info({ tenant: timeline.tenantId, timeline: timeline.timelineId, store: options.store.description }, 'WAL offload started for a new timeline');
    },
    uploader: (tenantId, timelineId) => uploaders.get(`${tenantId}/${timelineId}`),
    cache: (tenantId, timelineId) => caches.get(`${tenantId}/${timelineId}`),
    status: (tenantId, timelineId) => {
      const uploader = uploaders.get(`${tenantId}/${timelineId}`);
      return uploader === undefined ? undefined : { ...uploader.status(), remoteReads: caches.get(`${tenantId}/${timelineId}`)?.stats };
    },
    remove: async (tenantId, timelineId) => {
      const key = `${tenantId}/${timelineId}`;
      await adding.get(key);
      const uploader = uploaders.get(key);
      uploaders.delete(key);
      caches.delete(key);
      await uploader?.close();
      await rm(join(options.cacheRoot, tenantId, timelineId), { recursive: true, force: true });
    },
    stop: async () => {
      stopped = true;
      await Promise.all([...uploaders.values()].map((uploader) => uploader.close()));
      options.store.close();
    },
  };
}
