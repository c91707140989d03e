/**
 * Removing a timeline while the server runs (docs/timeline-removal.md). The steps, each logged:
 *
 * 1. The request is made durable first (`walcast.remove` in the timeline directory, storage/timeline-removal-files.ts),
 *    so a crash at any later step still ends with the timeline gone: the next start finishes the job.
 * 2. The registry takes the timeline out of service: new connections naming it are refused with FATAL 57P04
 *    (WALCAST_ERR_TIMELINE_REMOVED), and the scan for new timelines skips it.
 * 3. Every connection that selected it ends with that FATAL (streams after their last whole message), and the
 *    removal waits until they are gone (the server's hook bounds this and destroys stragglers).
 * 4. Its ingest (dropping the upstream slot walcast created for it), retention and offload stop.
 * 5. It waits until no reader holds one of its segments (the pins WAL readers take), then flushes its slot table.
 * 6. The directory is renamed to `<tenant>/.removing-<timeline>-<ms>`, then deleted recursively.
 *
 * A failure at any step after 2 leaves the timeline listed as unavailable with "removal failed: ..." (status API,
 * /metrics), never served again by this process; a new request retries from step 1 (or from the delete, when the
 * rename had happened). Requests for a timeline already being removed join the running removal.
 *
 * The timeline layer knows neither sockets nor the ingest/retention/offload managers above it: the server passes
 * what ends connections and stops tasks as hooks.
 */
import { formatLsn } from '../lsn.js';
import { WalcastError } from '../errors.js';
import { failpoint } from '../failpoints.js';
import type { Logger } from '../log.js';
import { deleteRetiredDir, hasRemovalMarker, retireTimelineDir, writeRemovalMarker } from '../storage/timeline-removal-files.js';
import type { Timeline } from './timeline.js';
import type { TimelineRegistry, UnavailableTimeline } from './timeline-registry.js';

/** How long readers may keep a segment pinned after their connections ended before the removal gives up. */
export const REMOVAL_READERS_TIMEOUT_MS = 10_000;
/** How often the pin check looks again; readers release their pins as their streams' cleanup runs. */
const REMOVAL_READERS_POLL_MS = 10;

export interface TimelineRemovalHooks {
  /** Ends every connection that selected the timeline with `error`; resolves once they are gone. Returns how many. */
  endConnections(tenantId: string, timelineId: string, error: WalcastError): Promise<number>;
  /** Stops the timeline's ingest (and drops walcast's upstream slot), retention and offload. */
  stopTasks(tenantId: string, timelineId: string): Promise<void>;
}

export interface TimelineRemovalResult {
  readonly tenantId: string;
  readonly timelineId: string;
  /** Connections ended with 57P04. */
  readonly connectionsEnded: number;
  readonly removed: true;
}

export class TimelineRemovals {
  private readonly registry: TimelineRegistry;
  private readonly hooks: TimelineRemovalHooks;
  private readonly log: Logger;
  private readonly running = new Map<string, Promise<TimelineRemovalResult>>();
  /** Directories renamed by a removal that then failed to delete them: a retry deletes, nothing else. */
  private readonly retired = new Map<string, string>();

  constructor(options: { registry: TimelineRegistry; hooks: TimelineRemovalHooks; log: Logger }) {
    this.registry = options.registry;
    this.hooks = options.hooks;
    this.log = options.log;
  }

  /** Whether a removal of this timeline is running now. */
  isRunning(tenantId: string, timelineId: string): boolean {
    return this.running.has(`${tenantId}/${timelineId}`);
  }

  /** Removes a served or unavailable timeline; rejects with WALCAST_ERR_NO_TIMELINE when it is neither. */
  remove(tenantId: string, timelineId: string, requestedBy: string): Promise<TimelineRemovalResult> {
    const key = `${tenantId}/${timelineId}`;
    const running = this.running.get(key);
    if (running !== undefined) return running;
    const removal = this.run(tenantId, timelineId, requestedBy).finally(() => this.running.delete(key));
    this.running.set(key, removal);
    return removal;
  }

  /**
   * Starts (without waiting for) the removal of every registered timeline whose directory holds `walcast.remove`:
   * the request of `walcast timeline remove` when no HTTP API was there to take it. A timeline whose removal failed
   * is not retried on every scan (it would fail and log twice a second); a new explicit request retries it.
   */
  async startRequestedRemovals(): Promise<void> {
    const candidates = [...this.registry.list(), ...this.registry.listUnavailable().filter((entry) => entry.removalFailed !== true)];
    for (const candidate of candidates) {
      if (this.isRunning(candidate.tenantId, candidate.timelineId) || !(await hasRemovalMarker(candidate.dir))) continue;
      this.remove(candidate.tenantId, candidate.timelineId, 'walcast.remove found by the data-directory scan').catch((error: unknown) => {
        this.log.error({ err: error, tenantId: candidate.tenantId, timelineId: candidate.timelineId }, 'timeline removal could not start');
      });
    }
  }

  /** Waits for every running removal (at server stop: a half-done removal is finished by the next start anyway). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.running.values()]);
  }

  private async run(tenantId: string, timelineId: string, requestedBy: string): Promise<TimelineRemovalResult> {
    const key = `${tenantId}/${timelineId}`;
    const log = this.log.child({ tenantId, timelineId });
    const served = this.registry.get(tenantId, timelineId);
    const unavailable = this.registry.getUnavailable(tenantId, timelineId);
    const dir = served?.dir ?? unavailable?.dir;
    if (dir === undefined) throw new WalcastError('WALCAST_ERR_NO_TIMELINE', `timeline ${key} not found`);
    const retiredBefore = this.retired.get(key);
    // 1. Durable request (unless an earlier attempt already renamed the directory).
    if (retiredBefore === undefined) await writeRemovalMarker(dir, { requestedAt: new Date(), requestedBy });
    failpoint('removal-after-marker');
    log.info({ dir, requestedBy }, 'timeline removal requested: the request is durable (walcast.remove)');
    // 2. Out of service.
    const removedError = new WalcastError('WALCAST_ERR_TIMELINE_REMOVED', `terminating connection because timeline ${key} was removed`);
    const { timeline } = this.registry.beginRemoval(tenantId, timelineId, removedError);
    log.info('timeline removal: no longer served, new connections to it are refused (57P04)');
    let retiredDir = retiredBefore;
    let connectionsEnded = 0;
    try {
      // 3. Connections.
      connectionsEnded = await this.hooks.endConnections(tenantId, timelineId, removedError);
      log.info({ connections: connectionsEnded }, 'timeline removal: its connections ended with FATAL 57P04');
      // 4. Background work.
      await this.hooks.stopTasks(tenantId, timelineId);
      log.info('timeline removal: ingest, retention and offload stopped');
      // 5. Readers.
      if (timeline !== undefined) {
        await waitForReaders(timeline);
        await timeline.slots.close();
        log.info({ commitLsn: formatLsn(timeline.commitLsn.get()) }, 'timeline removal: no reader uses its files');
      }
      // 6. Rename, then delete.
      if (retiredDir === undefined) {
        retiredDir = await retireTimelineDir(dir);
        this.retired.set(key, retiredDir);
        failpoint('removal-after-rename');
        log.info({ retiredDir }, 'timeline removal: directory renamed out of the data directory');
      }
      await deleteRetiredDir(retiredDir);
      this.retired.delete(key);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      const failure: UnavailableTimeline = {
        tenantId,
        timelineId,
        dir: retiredDir ?? dir,
        error: new Error(`removal failed: ${message}; retry with walcast timeline remove${retiredDir === undefined ? '' : ` (the directory was renamed to ${retiredDir} and is deleted at the next start)`}`, { cause: error }),
      };
      this.registry.endRemoval(tenantId, timelineId, failure);
      log.error({ err: error, dir: failure.dir }, 'timeline removal failed: the timeline stays out of service');
      throw error;
    }
    this.registry.endRemoval(tenantId, timelineId);
    log.info({ connections: connectionsEnded }, 'timeline removed');
    return { tenantId, timelineId, connectionsEnded, removed: true };
  }
}

/** Waits until no stream is registered on the timeline and no reader holds a segment pin, bounded. */
async function waitForReaders(timeline: Timeline): Promise<void> {
  const deadline = Date.now() + REMOVAL_READERS_TIMEOUT_MS;
  while (timeline.replicas.count() > 0 || timeline.lowestPinnedSegment() !== undefined) {
    if (Date.now() > deadline) {
      throw new Error(`${timeline.replicas.count()} stream(s) still read the timeline's files after ${REMOVAL_READERS_TIMEOUT_MS} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, REMOVAL_READERS_POLL_MS));
  }
}
