/**
 * The timeline document (GET /v1/tenant/:t/timeline/:l) as JSON text, its walsender list written in event-loop
 * slices. The document holds one walsender object per replica; with 1,000 replicas building and stringifying them
 * took ~10 ms of the event loop that sends WAL (bench/metrics-render.ts), so, as for /metrics (metrics-render.ts),
 * they are built and stringified RENDER_ROWS_PER_CHECK at a time with a turn given whenever a slice of
 * METRICS_RENDER_SLICE_MS has run out, and spliced into the rest of the document. The text is what
 * stringifyJson(timelineStatus(...)) writes (metrics-render.test.ts compares them).
 */
import { stringifyJson } from './json.js';
import { RENDER_ROWS_PER_CHECK, RenderSlicer } from './metrics-render.js';
import { timelineStatus, walsenderStatus } from './status-model.js';
import type { UpstreamStatus } from '../ingest/follower.js';
import type { OffloadStatus } from '../remote/segment-uploader.js';
import type { RetentionStatus } from '../retention/retention-task.js';
import type { Timeline } from '../timeline/timeline.js';

/** Stands in for the walsender list while the rest of the document is stringified (a NUL never occurs unescaped). */
const WALSENDERS_MARKER = '\u0000walsenders';
/** How JSON.stringify writes the marker. */
const WALSENDERS_MARKER_JSON = '"\\u0000walsenders"';

export async function renderTimelineDocument(
  timeline: Timeline,
  now: Date,
  status: { readonly upstream?: UpstreamStatus | undefined; readonly retention?: RetentionStatus | undefined; readonly offload?: OffloadStatus | undefined },
  slicer = new RenderSlicer(),
): Promise<string> {
  // The rest of the document and the walsenders read the same commit LSN, as timelineStatus does.
  const commitLsn = timeline.commitLsn.get();
  const rest = stringifyJson(timelineStatus(timeline, now, status.upstream, status.retention, status.offload, WALSENDERS_MARKER));
  const chunks: string[] = [];
  let batch: Record<string, unknown>[] = [];
  const flush = (): void => {
    // A batch as a JSON array without its brackets: the chunks joined by commas are the list's elements.
    chunks.push(stringifyJson(batch).slice(1, -1));
    batch = [];
  };
  for (const replica of timeline.replicas.snapshots()) {
    batch.push(walsenderStatus(timeline, replica, commitLsn, now));
    if (batch.length === RENDER_ROWS_PER_CHECK) {
      flush();
      await slicer.maybeYield();
    }
  }
  if (batch.length > 0) flush();
  const at = rest.indexOf(WALSENDERS_MARKER_JSON);
  return `${rest.slice(0, at)}[${chunks.join(',')}]${rest.slice(at + WALSENDERS_MARKER_JSON.length)}`;
}
