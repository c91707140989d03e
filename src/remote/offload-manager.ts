/**
 * Starts and stops offload for a server: one SegmentUploader per timeline, all sharing one object store. A timeline
 * is described structurally (the Timeline object satisfies OffloadTimeline), so this layer, beside storage, never
 * imports the timeline layer above it. The backup LSN is persisted through the timeline's ControlFileWriter, the one
 * writer of walcast.control while the server runs, so it never races ingest's or retention's writes.
 */
import type { Logger } from '../log.js';
import { maxLsn, type Lsn } from '../lsn.js';
import type { ControlFileWriter } from '../storage/control-writer.js';
import type { ObjectStore } from './object-store.js';
import { SegmentUploader } from './segment-uploader.js';

/** What offload reads of a timeline. */
export interface OffloadTimeline {
  readonly tenantId: string;
  readonly timelineId: string;
  readonly dir: string;
  readonly systemId: bigint;
  readonly pgVersion: number;
  readonly segmentBytes: number;
  readonly pgTimelineId: number;
  readonly timelineStartLsn: Lsn;
  readonly flushLsn: { get(): Lsn };
  readonly controlFile: ControlFileWriter;
}

export interface OffloadHandle {
  readonly store: ObjectStore;
  uploader(tenantId: string, timelineId: string): SegmentUploader | undefined;
  stop(): Promise<void>;
}

export async function startOffload(options: { timelines: readonly OffloadTimeline[]; store: ObjectStore; log: Logger }): Promise<OffloadHandle> {
  const uploaders = new Map<string, SegmentUploader>();
  for (const timeline of options.timelines) {
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
        pgTimelineId: timeline.pgTimelineId,
        timelineStartLsn: timeline.timelineStartLsn,
        upstream: control.upstream,
      },
      backupLsn,
      flushLsn: () => timeline.flushLsn.get(),
      persistBackupLsn: async (lsn) => {
        await timeline.controlFile.update((state) => (state.backupLsn !== undefined && state.backupLsn >= lsn ? undefined : { ...state, backupLsn: lsn }));
      },
      log: options.log.child({ tenant: timeline.tenantId, timeline: timeline.timelineId, component: 'offload' }),
    });
    uploaders.set(`${timeline.tenantId}/${timeline.timelineId}`, uploader);
    uploader.start();
  }
  options.log.info({ timelines: uploaders.size, store: options.store.description }, 'WAL offload to object storage started');
  return {
    store: options.store,
    uploader: (tenantId, timelineId) => uploaders.get(`${tenantId}/${timelineId}`),
    stop: async () => {
      await Promise.all([...uploaders.values()].map((uploader) => uploader.close()));
      options.store.close();
    },
  };
}
