/**
 * The sliced /metrics render (metrics-render.ts) against prom-client's own registry.metrics(), with in-process
 * timelines and 1,000 registered replicas (no sockets: the render reads only the registries): the same families,
 * series and values, label values escaped alike, and the event loop given turns during the render, which the
 * one-go render never did (a scrape held the loop for all of it: issue 13). The same for the timeline document
 * (timeline-document.ts), against stringifyJson(timelineStatus(...)).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import parsePrometheusTextFormat, { type ParsedFamily } from 'parse-prometheus-text-format';
import { parseLsnOrThrow } from '../lsn.js';
import { Timeline } from '../timeline/timeline.js';
import { TimelineRegistry } from '../timeline/timeline-registry.js';
import { createOperationsMetrics, type OperationsMetrics } from './metrics.js';
import { stringifyJson } from './json.js';
import { RENDER_ROWS_PER_CHECK, RenderSlicer } from './metrics-render.js';
import { timelineStatus } from './status-model.js';
import { renderTimelineDocument } from './timeline-document.js';

const COMMIT_LSN = parseLsnOrThrow('0/3000100');
const REPLICAS = 1000;
/** Families with one series per replica. */
const REPLICA_FAMILIES = ['walcast_replica_lag_bytes', 'walcast_replica_apply_lag_bytes', 'walcast_replica_send_lag_bytes', 'walcast_replica_sent_lsn', 'walcast_replica_bytes_sent', 'walcast_replica_feedback_age_seconds'];
/** Process metrics: series and values move between two renders by themselves (handles, heap, CPU); not compared. */
const PROCESS = /^(process_|nodejs_)/;
/** Values that move with the clock, compared by series only. */
const MOVING = /feedback_age_seconds$/;

function timelineWithReplicas(tenantId: string, appName: (index: number) => string, count = REPLICAS / 2): Timeline {
  const timeline = new Timeline(
    { tenantId, timelineId: 'fedcba9876543210fedcba9876543210', dir: '/nonexistent', systemId: 7_400_000_000_000_000_001n, pgVersion: 150018, segmentBytes: 16 * 1024 * 1024, pgTimelineId: 1, timelineStartLsn: 0x1000000n },
    { flushLsn: COMMIT_LSN, commitLsn: COMMIT_LSN },
  );
  for (let index = 0; index < count; index++) {
    const replica = timeline.replicas.register({ appName: appName(index), remoteAddress: `127.0.0.1:${40000 + index}`, startLsn: 0x2000000n, startedAt: new Date(), connId: index + 1 });
    replica.setSentLsn(COMMIT_LSN - BigInt(index));
    replica.addBytesSent(1000 + index);
    // Every third replica has not replied yet: its lag series are absent, as before.
    if (index % 3 !== 0) replica.update({ kind: 'standby_reply', writeLsn: COMMIT_LSN, flushLsn: COMMIT_LSN - 100n, applyLsn: index % 2 === 0 ? 0n : COMMIT_LSN - 200n, replyTimeMicros: 0n, replyRequested: false });
  }
  return timeline;
}

function fixture(): OperationsMetrics {
  const timelines = new TimelineRegistry();
  timelines.add(timelineWithReplicas('0123456789abcdef0123456789abcdef', (index) => `standby-${index}`));
  // Label values that need escaping: a quote, a backslash, a newline.
  timelines.add(timelineWithReplicas('11111111111111111111111111111111', (index) => `odd "name" \\ ${index}\nline`));
  const metrics = createOperationsMetrics({ backend: 'ts', strategy: 'fs-net' });
  metrics.bindTimelines(timelines);
  return metrics;
}

function seriesOf(family: ParsedFamily): Map<string, string> {
  return new Map(family.metrics.map((metric) => [JSON.stringify(Object.entries(metric.labels ?? {}).sort()), 'value' in metric ? String(metric.value) : JSON.stringify(metric)]));
}

describe('sliced /metrics render', () => {
  test('gives the event loop turns while rendering 1,000 replicas (a slice of 0 ms: a turn at every check)', async () => {
    const metrics = fixture();
    let ticks = 0;
    let ticking = true;
    const tick = (): void => {
      ticks++;
      if (ticking) setImmediate(tick);
    };
    setImmediate(tick);
    const slicer = new RenderSlicer(0);
    const { body } = await metrics.render(slicer);
    ticking = false;
    // One check per RENDER_ROWS_PER_CHECK replicas in the walk and in each family, and one per family.
    assert.ok(slicer.yields >= ((REPLICA_FAMILIES.length + 1) * REPLICAS) / RENDER_ROWS_PER_CHECK, `${slicer.yields} turns given`);
    // prom-client's registry.metrics() resolves in microtasks only: no setImmediate ran while it rendered.
    assert.ok(ticks >= slicer.yields - 1, `${ticks} event-loop turns ran during the render`);
    assert.equal(body.split('\n').filter((line) => line.startsWith('walcast_replica_sent_lsn{')).length, REPLICAS);
  });

  test('writes the families, series and values prom-client writes, label values escaped alike', async () => {
    const metrics = fixture();
    const ours = new Map(parsePrometheusTextFormat((await metrics.render()).body).map((family) => [family.name, family]));
    const theirs = new Map(parsePrometheusTextFormat(await metrics.registry.metrics()).map((family) => [family.name, family]));
    assert.deepEqual([...ours.keys()], [...theirs.keys()]);
    for (const [name, family] of theirs) {
      const mine = ours.get(name);
      assert.ok(mine !== undefined);
      assert.equal(mine.help, family.help, name);
      assert.equal(mine.type, family.type, name);
      const [a, b] = [seriesOf(mine), seriesOf(family)];
      if (PROCESS.test(name)) continue;
      if (MOVING.test(name)) assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), name);
      else assert.deepEqual(a, b, name);
    }
    for (const name of REPLICA_FAMILIES) assert.ok((ours.get(name)?.metrics.length ?? 0) > 0, name);
    // 2 timelines × 500 replicas; a third of them never replied (no confirmed lag), half of the rest report apply 0/0.
    assert.equal(ours.get('walcast_replica_sent_lsn')?.metrics.length, REPLICAS);
    assert.equal(ours.get('walcast_replica_lag_bytes')?.metrics.length, 2 * (500 - 167));
    const escaped = ours.get('walcast_replica_sent_lsn')?.metrics.find((metric) => metric.labels?.conn_id === '7' && metric.labels.tenant_id?.startsWith('1') === true);
    assert.equal(escaped?.labels?.appname, 'odd "name" \\ 6\nline');
  });

  test('prom-client\'s get() of a per-replica family answers the same series (getMetricsAsJSON callers)', async () => {
    const metrics = fixture();
    const family = (await metrics.registry.getMetricsAsJSON()).find((metric) => metric.name === 'walcast_replica_bytes_sent');
    assert.equal(family?.values.length, REPLICAS);
    assert.deepEqual(family?.values.find((value) => value.labels.conn_id === '3' && value.labels.tenant_id === '0123456789abcdef0123456789abcdef'), {
      labels: { tenant_id: '0123456789abcdef0123456789abcdef', timeline_id: 'fedcba9876543210fedcba9876543210', appname: 'standby-2', conn_id: '3' },
      value: 1002,
    });
  });

  test('the timeline document written in slices is the one-go document, with turns given between walsender batches', async () => {
    const timeline = timelineWithReplicas('0123456789abcdef0123456789abcdef', (index) => `odd "name" \\ ${index}\nline`);
    const now = new Date();
    const slicer = new RenderSlicer(0);
    const sliced = await renderTimelineDocument(timeline, now, {}, slicer);
    assert.equal(sliced, stringifyJson(timelineStatus(timeline, now)));
    assert.ok(slicer.yields >= REPLICAS / 2 / RENDER_ROWS_PER_CHECK - 1, `${slicer.yields} turns given`);
    const empty = timelineWithReplicas('22222222222222222222222222222222', () => '', 0);
    assert.equal(await renderTimelineDocument(empty, now, {}), stringifyJson(timelineStatus(empty, now)));
    assert.match(await renderTimelineDocument(empty, now, {}), /"walsenders":\[\],/);
  });
});
