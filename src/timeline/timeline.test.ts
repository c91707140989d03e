/** Timeline: the advanceable start, segment pins, and the rules between them. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Timeline } from './timeline.js';

const SEG = 1024 * 1024;
const seg = (segno: number): bigint => BigInt(segno) * BigInt(SEG);

function makeTimeline(): Timeline {
  return new Timeline(
    { tenantId: 'ab'.repeat(16), timelineId: 'cd'.repeat(16), dir: '/nonexistent', systemId: 1n, pgVersion: 150000, segmentBytes: SEG, pgTimelineId: 1, timelineStartLsn: seg(2) },
    { flushLsn: seg(10) + 5n, commitLsn: seg(10) },
  );
}

test('the start moves forward to segment starts only, never past the flush LSN or backwards', () => {
  const timeline = makeTimeline();
  timeline.advanceStart(seg(4));
  assert.equal(timeline.timelineStartLsn, seg(4));
  assert.throws(() => timeline.advanceStart(seg(3)), /only forward/);
  assert.throws(() => timeline.advanceStart(seg(5) + 1n), /segment start/);
  assert.throws(() => timeline.advanceStart(seg(11)), /flush LSN/);
  timeline.advanceStart(seg(10));
  assert.equal(timeline.timelineStartLsn, seg(10));
});

test('pins: refused before the start; the lowest pin bounds the start; released pins free it', () => {
  const timeline = makeTimeline();
  assert.equal(timeline.pinSegment(1n), undefined, 'a removed segment cannot be pinned');
  const unpinThree = timeline.pinSegment(3n);
  const unpinThreeAgain = timeline.pinSegment(3n);
  const unpinSix = timeline.pinSegment(6n);
  assert.ok(unpinThree !== undefined && unpinThreeAgain !== undefined && unpinSix !== undefined);
  assert.equal(timeline.lowestPinnedSegment(), 3n);
  timeline.advanceStart(seg(3));
  assert.throws(() => timeline.advanceStart(seg(4)), /pinned segment/);
  unpinThree();
  unpinThree();
  assert.equal(timeline.lowestPinnedSegment(), 3n, 'a second reader still holds segment 3; a double release counts once');
  unpinThreeAgain();
  assert.equal(timeline.lowestPinnedSegment(), 6n);
  timeline.advanceStart(seg(6));
  assert.equal(timeline.pinSegment(5n), undefined);
  unpinSix();
  assert.equal(timeline.lowestPinnedSegment(), undefined);
});
