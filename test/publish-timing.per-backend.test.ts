/**
 * walcast's own commit latency histograms (timeline/publish-timing.ts) against live ingest from PostgreSQL 15, on
 * the I/O backend named by WALCAST_IO (the runner repeats this file per backend and native strategy): a few
 * replicas wait on the commit LSN while the primary commits, every replica gets exactly the primary's bytes, and
 * the histograms in /metrics agree with each other — every publish reached every live replica once, and each
 * replica's observation is counted once it was written.
 */
import assert from 'node:assert/strict';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createOperationsMetrics } from '../src/api/metrics.js';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { formatLsn, type Lsn } from '../src/lsn.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { connectReplication, type ReplicationClient, type ReplicationStream } from '../src/wire/client.js';
import { makeTempDir, startPrimary, type PgCluster } from './support/postgres.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const TEST_TIMEOUT_MS = 300_000;
const SEGMENT_BYTES = 16 * 1024 * 1024;
const REPLICAS = 3;
const COMMITS = 20;
const CATCH_UP_TIMEOUT_MS = 60_000;

interface Fixture {
  primary: PgCluster;
  walcast: RunningWalcast;
  timeline: Timeline;
}

let fixture: Fixture;

before(async () => {
  const primary = await startPrimary();
  await primary.sql('CREATE TABLE commits (id int)');
  const dataDir = await makeTempDir('walcast-publish-timing');
  await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1 port=${primary.port} user=repl`, password: undefined, log: silentLogger() });
  const walcast = await startWalcast({ dataDir });
  const [timeline] = walcast.server.timelines.list();
  assert.ok(timeline !== undefined);
  fixture = { primary, walcast, timeline };
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  await fixture?.walcast.stop();
  await fixture?.primary.stop({ mode: 'immediate' });
});

/** One replica: its XLogData, checked contiguous from the start, and where it has got to. */
class Replica {
  receivedLsn: Lsn;
  readonly pieces: { readonly lsn: Lsn; readonly bytes: Buffer }[] = [];
  private readonly done: Promise<void>;

  constructor(
    readonly client: ReplicationClient,
    readonly stream: ReplicationStream,
    startLsn: Lsn,
  ) {
    this.receivedLsn = startLsn;
    this.done = this.read();
  }

  private async read(): Promise<void> {
    for await (const payload of this.stream) {
      if (payload[0] !== 'w'.charCodeAt(0)) continue;
      const dataStart = payload.readBigUInt64BE(1);
      assert.equal(dataStart, this.receivedLsn, 'XLogData is contiguous');
      const bytes = payload.subarray(25);
      this.pieces.push({ lsn: dataStart, bytes: Buffer.from(bytes) });
      this.receivedLsn = dataStart + BigInt(bytes.length);
    }
  }

  async stop(): Promise<void> {
    await this.stream.sendCopyDone();
    await this.done;
    await this.client.end();
  }
}

async function primaryBytes(primary: PgCluster, lsn: Lsn, length: number): Promise<Buffer> {
  const segno = lsn / BigInt(SEGMENT_BYTES);
  const file = await open(join(primary.walDir, segmentFileName(1, segno, SEGMENT_BYTES)), 'r');
  try {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await file.read(buffer, 0, length, Number(lsn % BigInt(SEGMENT_BYTES)));
    assert.equal(bytesRead, length);
    return buffer;
  } finally {
    await file.close();
  }
}

interface Sample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: number;
}

/**
 * The samples of each metric family in the exposition, read line by line (parse-prometheus-text-format drops the
 * labels, _sum and _count of histograms), keyed by family name: histograms keep their _bucket/_sum/_count names.
 */
async function scrape(): Promise<Map<string, Sample[]>> {
  const metrics = createOperationsMetrics({ backend: fixture.walcast.server.backend.kind, strategy: fixture.walcast.server.backend.strategy });
  metrics.bindTimelines(fixture.walcast.server.timelines);
  const { body } = await metrics.render();
  const families = new Map<string, Sample[]>();
  let family = '';
  for (const line of body.split('\n')) {
    const type = /^# TYPE (\S+) /.exec(line);
    if (type !== null) family = type[1] ?? '';
    if (line.startsWith('#') || line === '') continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(sample !== null, `an exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, key, value] of (sample[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[key ?? ''] = value ?? '';
    const samples = families.get(family) ?? [];
    samples.push({ name: sample[1] ?? '', labels, value: Number(sample[3]) });
    families.set(family, samples);
  }
  return families;
}

function histogramCount(families: Map<string, Sample[]>, family: string, match: Record<string, string> = {}): number {
  return (families.get(family) ?? [])
    .filter((sample) => sample.name === `${family}_count` && Object.entries(match).every(([key, value]) => sample.labels[key] === value))
    .reduce((sum, sample) => sum + sample.value, 0);
}

describe('publish → socket timing with live replicas', { timeout: TEST_TIMEOUT_MS }, () => {
  test(`${REPLICAS} waiting replicas: every commit reaches each of them byte-identical, and the histograms count each once`, async () => {
    const { timeline, primary } = fixture;
    const startLsn = timeline.commitLsn.get();
    const replicas: Replica[] = [];
    for (let index = 0; index < REPLICAS; index++) {
      const client = await connectReplication({ host: '127.0.0.1', port: fixture.walcast.port, user: 'repl', applicationName: `timed-${index}`, timeoutMs: 10_000 });
      const stream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(startLsn)}`);
      replicas.push(new Replica(client, stream, startLsn));
    }
    try {
      // Settled: every replica has what was published and waits for more. Publishes before all of them were live
      // reached fewer replicas, so the counts are compared from here.
      const quiet = (what: string) => {
        let last = '';
        return waitFor(async () => {
          const commitLsn = timeline.commitLsn.get();
          last = `commit ${formatLsn(commitLsn)}, replicas at ${replicas.map((replica) => formatLsn(replica.receivedLsn)).join(' ')}, ${timeline.publishTiming.liveStreams()} live`;
          if (timeline.publishTiming.liveStreams() !== REPLICAS || replicas.some((replica) => replica.receivedLsn < commitLsn)) return undefined;
          const families = await scrape();
          const perStream = histogramCount(families, 'walcast_publish_to_socket_seconds');
          const fanout = histogramCount(families, 'walcast_publish_fanout_seconds');
          last += `; ${perStream} stream observations, ${fanout} publishes`;
          return timeline.commitLsn.get() === commitLsn ? { families, fanout, perStream, commitLsn } : undefined;
        }, CATCH_UP_TIMEOUT_MS, { what }).catch((error: Error) => {
          throw new Error(`${error.message} (${last})`);
        });
      };
      const before = await quiet('every replica waits on the commit LSN');
      assert.equal(before.fanout, timeline.publishTiming.fanout.count, '/metrics shows the timeline\'s histogram');

      for (let index = 0; index < COMMITS; index++) await primary.sql(`INSERT INTO commits VALUES (${index})`);
      const target = BigInt(await primary.sql('SELECT pg_current_wal_flush_lsn() - \'0/0\'::pg_lsn'));
      await waitFor(async () => (timeline.commitLsn.get() >= target ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'walcast published the commits' });
      const settled = await quiet('every publish settled on every replica');
      // Every publish since reached all live replicas, and each one wrote it: one observation per replica and publish.
      const published = settled.fanout - before.fanout;
      assert.equal(settled.perStream - before.perStream, REPLICAS * published, `${published} publishes, each observed once per replica`);
      assert.ok(published >= 1, 'the commits were timed');
      assert.ok(settled.commitLsn >= target);
      const dropped = (settled.families.get('walcast_publish_timing_streams_dropped_total') ?? []).reduce((sum, sample) => sum + sample.value, 0);
      assert.equal(dropped, 0, 'no replica fell behind');
      const waiting = histogramCount(settled.families, 'walcast_publish_to_socket_seconds', { state: 'waiting' });
      const busy = histogramCount(settled.families, 'walcast_publish_to_socket_seconds', { state: 'busy' });
      assert.equal(waiting + busy, settled.perStream);
      assert.ok(waiting >= REPLICAS, 'the first commit found every replica waiting');
      assert.ok(settled.families.get('walcast_publish_fanout_seconds')?.some((sample) => sample.labels.tenant_id === timeline.tenantId), 'labelled by timeline');
      // Buckets are cumulative and end with +Inf = count.
      for (const family of ['walcast_publish_to_socket_seconds', 'walcast_publish_fanout_seconds']) {
        for (const count of (settled.families.get(family) ?? []).filter((sample) => sample.name === `${family}_count`)) {
          const buckets = (settled.families.get(family) ?? []).filter(
            (sample) => sample.name === `${family}_bucket` && sample.labels.state === count.labels.state,
          );
          const ordered = buckets.sort((a, b) => Number(a.labels.le) - Number(b.labels.le)).map((sample) => sample.value);
          for (let index = 1; index < ordered.length; index++) assert.ok((ordered[index] ?? 0) >= (ordered[index - 1] ?? 0), `${family} buckets are cumulative`);
          assert.equal(buckets.find((sample) => sample.labels.le === '+Inf')?.value, count.value);
        }
      }
      // And the bytes: each replica got exactly the primary's WAL from its start to the commit LSN.
      for (const replica of replicas) {
        for (const piece of replica.pieces) assert.ok((await primaryBytes(primary, piece.lsn, piece.bytes.length)).equals(piece.bytes), `bytes at ${formatLsn(piece.lsn)}`);
      }
    } finally {
      for (const replica of replicas) await replica.stop().catch(() => undefined);
    }
    await waitFor(async () => (timeline.publishTiming.liveStreams() === 0 ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'ended streams leave the timing' });
  });

  test('streams at different positions and a stalled one share publishes: each gets exactly the primary\'s bytes', async () => {
    const { timeline, primary } = fixture;
    const open = async (name: string, startLsn: Lsn): Promise<Replica> => {
      const client = await connectReplication({ host: '127.0.0.1', port: fixture.walcast.port, user: 'repl', applicationName: name, timeoutMs: 10_000 });
      const stream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(startLsn)}`);
      return new Replica(client, stream, startLsn);
    };
    const oldLsn = timeline.commitLsn.get();
    const replicas: Replica[] = [];
    try {
      // Live from the start, and one that stops reading: its socket fills and its sends wait for room while the
      // others are woken by the same publishes.
      replicas.push(await open('live-0', oldLsn), await open('live-1', oldLsn));
      const stalled = await open('stalled', oldLsn);
      replicas.push(stalled);
      stalled.client.setPaused(true);
      await primary.sql('INSERT INTO commits SELECT generate_series(1, 200000)');
      const bulkEnd = BigInt(await primary.sql('SELECT pg_current_wal_flush_lsn() - \'0/0\'::pg_lsn'));
      await waitFor(async () => (timeline.commitLsn.get() >= bulkEnd ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'walcast published the bulk insert' });
      // Catching up from the old position while the next commits are published, and two waiting at the newest one.
      replicas.push(await open('behind-0', oldLsn), await open('behind-1', oldLsn));
      const newLsn = timeline.commitLsn.get();
      replicas.push(await open('new-0', newLsn), await open('new-1', newLsn));
      for (let index = 0; index < COMMITS; index++) await primary.sql(`INSERT INTO commits VALUES (${index})`);
      const target = BigInt(await primary.sql('SELECT pg_current_wal_flush_lsn() - \'0/0\'::pg_lsn'));
      // Behind on the server's side too (its sends wait for room), not only in its own socket buffer.
      const stalledSent = timeline.replicas.snapshot().find((replica) => replica.appName === 'stalled')?.sentLsn;
      assert.ok(stalledSent !== undefined && stalledSent < target, 'the stalled replica is behind while the others are served');
      stalled.client.setPaused(false);
      await waitFor(
        async () => (replicas.every((replica) => replica.receivedLsn >= target) ? true : undefined),
        CATCH_UP_TIMEOUT_MS,
        { what: 'every replica reached the last commit' },
      );
      for (const replica of replicas) {
        let bytes = 0;
        for (const piece of replica.pieces) {
          assert.ok((await primaryBytes(primary, piece.lsn, piece.bytes.length)).equals(piece.bytes), `bytes at ${formatLsn(piece.lsn)}`);
          bytes += piece.bytes.length;
        }
        assert.ok(bytes > 0 && replica.receivedLsn >= target);
      }
    } finally {
      for (const replica of replicas) await replica.stop().catch(() => undefined);
    }
  });
});
