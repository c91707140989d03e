/**
 * Starts and stops WAL retention for a server: one RetentionTask per timeline. WAL is removed only from timelines
 * that follow an upstream (the timelines that grow); a timeline built by `walcast import` without an upstream is an
 * archive the operator made on purpose and does not grow, so its task only measures its disk usage.
 */
import type { Logger } from '../log.js';
import type { Lsn } from '../lsn.js';
import type { Timeline } from '../timeline/timeline.js';
import type { TimelineRegistry } from '../timeline/timeline-registry.js';
import { RetentionTask, type RetentionSettings, type RetentionStatus } from './retention-task.js';

export interface RetentionHandle {
  /** The task of a timeline, when retention runs for it. */
  task(tenantId: string, timelineId: string): RetentionTask | undefined;
  status(tenantId: string, timelineId: string): RetentionStatus | undefined;
  /** Starts retention for a timeline opened while the server runs. */
  add(timeline: Timeline): Promise<void>;
  /** Stops retention for a timeline being removed; its last pass finishes first. */
  remove(tenantId: string, timelineId: string): Promise<void>;
  stop(): Promise<void>;
}

export interface StartRetentionOptions {
  readonly timelines: TimelineRegistry;
  readonly settings: RetentionSettings;
  readonly log: Logger;
  /** With offload: a timeline's backup LSN (everything before it is in object storage), which bounds the horizon. */
  readonly backupLsn?: ((timeline: Timeline) => Lsn) | undefined;
}

export async function startRetention(options: StartRetentionOptions): Promise<RetentionHandle> {
  const tasks = new Map<string, RetentionTask>();
  let stopped = false;
  const add = async (timeline: Timeline): Promise<void> => {
    if (stopped || tasks.has(key(timeline.tenantId, timeline.timelineId))) return;
    const control = await timeline.controlFile.read();
    const backupLsn = options.backupLsn;
    const task = new RetentionTask({
      timeline,
      settings: options.settings,
      log: options.log,
      removes: control.upstream !== undefined,
      ...(backupLsn === undefined ? {} : { backupLsn: () => backupLsn(timeline) }),
    });
    tasks.set(key(timeline.tenantId, timeline.timelineId), task);
    task.start();
  };
  for (const timeline of options.timelines.list()) await add(timeline);
  const removing = [...tasks.values()].filter((task) => task.status().removes).length;
  if (removing > 0) {
    options.log.info({ timelines: removing, walKeepBytes: options.settings.walKeepBytes, maxSlotWalKeepBytes: options.settings.maxSlotWalKeepBytes ?? -1 }, 'WAL retention started');
  }
  return {
    task: (tenantId, timelineId) => tasks.get(key(tenantId, timelineId)),
    status: (tenantId, timelineId) => tasks.get(key(tenantId, timelineId))?.status(),
    add,
    remove: async (tenantId, timelineId) => {
      const task = tasks.get(key(tenantId, timelineId));
      tasks.delete(key(tenantId, timelineId));
      await task?.stop();
    },
    stop: async () => {
      stopped = true;
      await Promise.all([...tasks.values()].map((task) => task.stop()));
    },
  };
}

function key(tenantId: string, timelineId: string): string {
  return `${tenantId}/${timelineId}`;
}
