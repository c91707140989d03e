/**
 * Counted pins on segment numbers: what keeps an open segment file from retention (src/timeline Timeline.pinSegment
 * checks the timeline start, then pins here). A segment is pinned while any holder has it; each release counts once,
 * however often it is called, so a reader that closes twice cannot unpin another reader's hold.
 */
import assert from 'node:assert/strict';

export class SegmentPins {
  private readonly counts = new Map<bigint, number>();

  /** Segment number → holders now (a live view, for status and tests). */
  get pinned(): ReadonlyMap<bigint, number> {
    return this.counts;
  }

  /** Adds a holder of `segno`; the returned function releases it (once). */
  pin(segno: bigint): () => void {
    this.counts.set(segno, (this.counts.get(segno) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const count = this.counts.get(segno) ?? 0;
      assert.ok(count > 0, 'a segment pin is released once');
      if (count === 1) this.counts.delete(segno);
      else this.counts.set(segno, count - 1);
    };
  }

  /** The lowest pinned segment number, if any is held. */
  lowest(): bigint | undefined {
    let lowest: bigint | undefined;
    for (const segno of this.counts.keys()) if (lowest === undefined || segno < lowest) lowest = segno;
    return lowest;
  }
}
