/**
 * Open segment files, counted by holder: what lets the readers of one stream (the sender's send reader and its
 * prefetch reader, src/replication/start-replication.ts) share one descriptor per segment instead of each opening,
 * stat'ing and closing the segment on its own.
 *
 * Why: each open, fstat and close is a round trip through libuv's thread pool, and on a small machine the woken pool
 * thread preempts the event-loop thread that asked (docs/benchmarks.md, "Context switches per catch-up"): two readers
 * per stream made six such round trips per 16 MiB segment. The prefetch reader runs ahead of the send reader, so it
 * opens each segment first and the send reader finds it open.
 *
 * A shared segment is closed (and its pin released) only when its last holder lets it go, so it stays open at least
 * as long as each reader alone would keep it (each reader keeps its previous segment open one segment longer for
 * in-flight sends: src/storage/wal-reader.ts). `file.closed` is set only when the descriptor itself starts closing.
 */
import assert from 'node:assert/strict';
import type { FileHandle } from 'node:fs/promises';
import type { TimelineHistory } from './timeline-history.js';
import type { WalFileHandle } from './wal-chunk.js';

/** The WalFileHandle storage hands out for an open segment; `closed` is set as soon as its close starts. */
export interface SegmentFile extends WalFileHandle {
  closed: boolean;
}

export interface OpenSegment {
  readonly segno: bigint;
  readonly name: string;
  readonly handle: FileHandle;
  readonly file: SegmentFile;
  /** The file's size when last looked at; looked at again only when a range reaches past it. */
  bytes: number;
  readonly unpin: () => void;
  /** Read back from object storage (a cache file), not a segment of the timeline's directory. */
  readonly remote: boolean;
  /**
   * The layout's history and PostgreSQL timeline when the segment was opened: `name` is a function of them and the
   * segment number, so while both are the same objects the name needs no recomputing (WalReader.locateNow).
   */
  readonly namedFor: { readonly history: TimelineHistory | undefined; readonly pgTimelineId: number };
}

interface Held {
  readonly segment: OpenSegment;
  holders: number;
}

/** Open segments by name, each with its number of holders; one per stream (or per reader when nothing shares). */
export class OpenSegments {
  private readonly held = new Map<string, Held>();
  /** Opens under way, by name: a holder arriving meanwhile waits for it instead of opening a second descriptor. */
  private readonly opening = new Map<string, Promise<OpenSegment>>();

  /**
   * The open segment named `name`, with one more holder: the one already open, the one being opened, or a new one
   * from `open` (which pins before it opens, and unpins when it fails).
   */
  async acquire(name: string, open: () => Promise<OpenSegment>): Promise<OpenSegment> {
    for (;;) {
      const held = this.held.get(name);
      if (held !== undefined) {
        assert.ok(!held.segment.file.closed, 'a held segment is open');
        held.holders++;
        return held.segment;
      }
      const pending = this.opening.get(name);
      if (pending === undefined) break;
      // Then look again: its opener holds it now (take a share), or it failed or is already let go (open anew).
      await pending.catch(() => undefined);
    }
    const opened = open();
    this.opening.set(name, opened);
    try {
      const segment = await opened;
      assert.ok(!this.held.has(name), 'one open segment per name');
      this.held.set(name, { segment, holders: 1 });
      return segment;
    } finally {
      this.opening.delete(name);
    }
  }

  /**
   * Drops one holder of `segment`; the last one closes it (marked closed at once, then the descriptor, then the pin).
   * Resolves when that close is done, at once when other holders remain.
   */
  async release(segment: OpenSegment | undefined): Promise<void> {
    if (segment === undefined) return;
    const held = this.held.get(segment.name);
    assert.ok(held !== undefined && held.segment === segment && held.holders > 0, 'a segment is released by a holder');
    held.holders--;
    if (held.holders > 0) return;
    this.held.delete(segment.name);
    await closeSegment(segment);
  }

  /** Segments open now (tests). */
  get size(): number {
    return this.held.size;
  }
}

/**
 * Closes the descriptor, then releases the pin: the file may be unlinked only once nobody holds it. The handle is
 * marked closed before the close starts (synchronously), so no chunk of it is handed out or used from then on.
 */
async function closeSegment(segment: OpenSegment): Promise<void> {
  segment.file.closed = true;
  try {
    await segment.handle.close();
  } finally {
    segment.unpin();
  }
}
