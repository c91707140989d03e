/**
 * The commit fan-out batch (replication/fanout-batch.ts) against live ingest from PostgreSQL 15, on the I/O backend
 * named by WALCAST_IO (the runner repeats this file per backend and native strategy). Many replicas wait on the
 * commit LSN and every one must receive exactly the primary's bytes, contiguous from its start: while the batch
 * sends each commit to all of them in one backend call (plain sockets: one addon call on native, one file read and
 * one shared frame on ts), while one of them stops reading (its
 * socket fills mid-batch and it goes on alone), while one vanishes mid-batch, and with TLS streams (the encrypting
 * per-stream path) beside plain ones. Both backends batch, and are held to the same bytes.
 */
import assert from 'node:assert/strict';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createOperationsMetrics } from '../src/api/metrics.js';
import { createFollowingTimeline } from '../src/ingest/create-timeline.js';
import { silentLogger } from '../src/log.js';
import { formatLsn, type Lsn } from '../src/lsn.js';
import { existingFanoutBatcher } from '../src/replication/fanout-batch.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import type { Timeline } from '../src/timeline/timeline.js';
import { ServerTls } from '../src/tls/server-tls.js';
import { connectReplication, type ClientTlsOptions, type ReplicationClient, type ReplicationStream } from '../src/wire/client.js';
import { makeTempDir, startPrimary, type PgCluster } from './support/postgres.js';
import { makeTestCertificates, type TestCertificates } from './support/tls-certs.js';
import { backendUnderTest, startWalcast, type RunningWalcast } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

const TEST_TIMEOUT_MS = 300_000;
const SEGMENT_BYTES = 16 * 1024 * 1024;
const REPLICAS = 12;
const COMMITS = 20;
const CATCH_UP_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 10_000;
/** Both backends batch plain streams (the ts one since its ChunkBatch: one read per group, one frame for every socket). */
const BATCHES = true;

interface Fixture {
  primary: PgCluster;
  walcast: RunningWalcast;
  timeline: Timeline;
  certs: TestCertificates;
}

let fixture: Fixture;

before(async () => {
  const certs = await makeTestCertificates();
  const primary = await startPrimary();
  await primary.sql('CREATE TABLE commits (id int, filler text)');
  const dataDir = await makeTempDir('walcast-fanout-batch');
  await createFollowingTimeline({ dataDir, upstream: `host=127.0.0.1 port=${primary.port} user=repl`, password: undefined, log: silentLogger() });
  // TLS offered, not required: plain and TLS replicas side by side on one timeline.
  const tls = await ServerTls.load({ certFile: certs.serverCert, keyFile: certs.serverKey }, 'prefer');
  const walcast = await startWalcast({ dataDir, tls });
  const [timeline] = walcast.server.timelines.list();
  assert.ok(timeline !== undefined);
  fixture = { primary, walcast, timeline, certs };
}, { timeout: TEST_TIMEOUT_MS });

after(async () => {
  await fixture?.walcast.stop();
  await fixture?.primary.stop({ mode: 'immediate' });
});

/** One replica: its XLogData, checked contiguous from the start, and where it has got to. */
class Replica {
  receivedLsn: Lsn;
  readonly pieces: { readonly lsn: Lsn; readonly bytes: Buffer }[] = [];
  readonly done: Promise<void>;

  constructor(
    readonly name: string,
    readonly client: ReplicationClient,
    readonly stream: ReplicationStream,
    readonly startLsn: Lsn,
  ) {
    this.receivedLsn = startLsn;
    this.done = this.read();
  }

  private async read(): Promise<void> {
    for await (const payload of this.stream) {
      if (payload[0] !== 'w'.charCodeAt(0)) continue;
      const dataStart = payload.readBigUInt64BE(1);
      assert.equal(dataStart, this.receivedLsn, `${this.name}: XLogData is contiguous`);
      const bytes = payload.subarray(25);
      this.pieces.push({ lsn: dataStart, bytes: Buffer.from(bytes) });
      this.receivedLsn = dataStart + BigInt(bytes.length);
    }
  }

  /** Ends the stream; a server that does not answer within STOP_TIMEOUT_MS gets the connection dropped (and the test fails elsewhere). */
  async stop(): Promise<void> {
    this.client.setPaused(false);
    const ended = (async () => {
      await this.stream.sendCopyDone();
      await this.done;
      await this.client.end();
    })();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => (timer = setTimeout(() => resolve(this.client.destroy()), STOP_TIMEOUT_MS)));
    await Promise.race([ended, late]).finally(() => clearTimeout(timer));
  }
}

async function openReplica(name: string, startLsn: Lsn, tls?: ClientTlsOptions): Promise<Replica> {
  const client = await connectReplication({ host: '127.0.0.1', port: fixture.walcast.port, user: 'repl', applicationName: name, timeoutMs: 10_000, tls });
  const stream = await client.startReplication(`START_REPLICATION PHYSICAL ${formatLsn(startLsn)}`);
  return new Replica(name, client, stream, startLsn);
}

async function primaryBytes(lsn: Lsn, length: number): Promise<Buffer> {
  const segno = lsn / BigInt(SEGMENT_BYTES);
  const file = await open(join(fixture.primary.walDir, segmentFileName(1, segno, SEGMENT_BYTES)), 'r');
  try {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await file.read(buffer, 0, length, Number(lsn % BigInt(SEGMENT_BYTES)));
    assert.equal(bytesRead, length);
    return buffer;
  } finally {
    await file.close();
  }
}

/** Every replica received exactly the primary's bytes from its start up to `target` at least (pieces may cross segments). */
async function assertPrimaryBytes(replicas: readonly Replica[], target: Lsn): Promise<void> {
  for (const replica of replicas) {
    assert.ok(replica.receivedLsn >= target, `${replica.name} reached ${formatLsn(target)}`);
    let expectedLsn = replica.startLsn;
    for (const piece of replica.pieces) {
      assert.equal(piece.lsn, expectedLsn, `${replica.name}: contiguous`);
      let done = 0;
      while (done < piece.bytes.length) {
        const lsn = piece.lsn + BigInt(done);
        const inSegment = Math.min(piece.bytes.length - done, SEGMENT_BYTES - Number(lsn % BigInt(SEGMENT_BYTES)));
        assert.ok((await primaryBytes(lsn, inSegment)).equals(piece.bytes.subarray(done, done + inSegment)), `${replica.name}: bytes at ${formatLsn(lsn)}`);
        done += inSegment;
      }
      expectedLsn = piece.lsn + BigInt(piece.bytes.length);
    }
  }
}

async function flushLsn(): Promise<Lsn> {
  const lsn = BigInt(await fixture.primary.sql('SELECT pg_current_wal_flush_lsn() - \'0/0\'::pg_lsn'));
  await waitFor(async () => (fixture.timeline.commitLsn.get() >= lsn ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'walcast published the commits' });
  return lsn;
}

async function waitAllReached(replicas: readonly Replica[], target: Lsn): Promise<void> {
  await waitFor(async () => (replicas.every((replica) => replica.receivedLsn >= target) ? true : undefined), CATCH_UP_TIMEOUT_MS, {
    what: `every replica reached ${formatLsn(target)}`,
  });
}

/** Waits until `count` streams are parked in the batch (native), i.e. caught up and waiting on the commit LSN. */
async function waitParked(count: number): Promise<void> {
  if (!BATCHES) return;
  await waitFor(async () => ((existingFanoutBatcher(fixture.timeline.commitLsn)?.parkedCount ?? 0) === count ? true : undefined), CATCH_UP_TIMEOUT_MS, {
    what: `${count} streams parked in the batch`,
  });
}

function batchCounters(): { batches: number; chunksBatched: number; resumed: number } {
  const batcher = existingFanoutBatcher(fixture.timeline.commitLsn);
  return { batches: batcher?.batches ?? 0, chunksBatched: batcher?.chunksBatched ?? 0, resumed: batcher?.resumed ?? 0 };
}

describe(`commit fan-out batch (${backendUnderTest().io}${backendUnderTest().strategy === undefined ? '' : '/' + backendUnderTest().strategy})`, { timeout: TEST_TIMEOUT_MS }, () => {
  test(`${REPLICAS} waiting replicas get every commit byte-identical, small ones and one larger than a chunk`, async () => {
    const startLsn = fixture.timeline.commitLsn.get();
    const replicas: Replica[] = [];
    try {
      for (let index = 0; index < REPLICAS; index++) replicas.push(await openReplica(`batch-${index}`, startLsn));
      await waitParked(REPLICAS);
      const before = batchCounters();
      for (let index = 0; index < COMMITS; index++) await fixture.primary.sql(`INSERT INTO commits VALUES (${index}, 'x')`);
      // About 1 MiB in one commit: several MAX_SEND_BYTES chunks, so the batch sends more than one round.
      await fixture.primary.sql(`INSERT INTO commits SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 3000) g`);
      const target = await flushLsn();
      await waitAllReached(replicas, target);
      await assertPrimaryBytes(replicas, target);
      if (BATCHES) {
        const after = batchCounters();
        const batches = after.batches - before.batches;
        const chunks = after.chunksBatched - before.chunksBatched;
        assert.ok(batches > 0, 'the commits went through the batch');
        // Several replicas per addon call: the point of it. (Not all: a replica may leave for a reply or its bound.)
        assert.ok(chunks > batches * 2, `${chunks} chunks in ${batches} batch calls`);
        // And /metrics shows the same counters.
        const metrics = createOperationsMetrics({ backend: fixture.walcast.server.backend.kind, strategy: fixture.walcast.server.backend.strategy });
        metrics.bindTimelines(fixture.walcast.server.timelines);
        const { body } = await metrics.render();
        const exported = /^walcast_fanout_batch_chunks_total\{[^}]*\} (\d+)$/m.exec(body);
        assert.ok(exported !== null, 'walcast_fanout_batch_chunks_total is exported');
        assert.ok(Number(exported[1]) >= after.chunksBatched, 'the exported count is the batcher\'s');
      }
    } finally {
      for (const replica of replicas) await replica.stop().catch(() => undefined);
    }
  });

  test('a replica that stops reading mid-batch goes on alone and catches up byte-identical; the others are not held up', async () => {
    const startLsn = fixture.timeline.commitLsn.get();
    const replicas: Replica[] = [];
    try {
      for (let index = 0; index < 4; index++) replicas.push(await openReplica(`full-${index}`, startLsn));
      const stalled = replicas[0];
      assert.ok(stalled !== undefined);
      await waitParked(4);
      const before = batchCounters();
      stalled.client.setPaused(true);
      // Several MiB: far more than the stalled socket's buffers, so its batched sends queue, fill, and it leaves.
      await fixture.primary.sql(`INSERT INTO commits SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 40000) g`);
      for (let index = 0; index < COMMITS; index++) await fixture.primary.sql(`INSERT INTO commits VALUES (${index}, 'y')`);
      const target = await flushLsn();
      const others = replicas.slice(1);
      await waitAllReached(others, target);
      assert.ok(stalled.receivedLsn < target, 'the stalled replica is behind while the others got everything');
      // Behind on the server's side too (its sends wait for room on its own path), not only in its socket buffer. It
      // left the batch when its queue reached the bound, or at an idle keepalive just before the insert; either way
      // the batch went on without it (test/native-io.test.ts checks the bound itself, deterministically).
      const stalledSent = fixture.timeline.replicas.snapshot().find((replica) => replica.appName === 'full-0')?.sentLsn;
      assert.ok(stalledSent !== undefined && stalledSent < target, 'the stalled stream is behind on the server');
      if (BATCHES) assert.ok(batchCounters().chunksBatched > before.chunksBatched, 'the others were batched meanwhile');
      stalled.client.setPaused(false);
      await waitAllReached(replicas, target);
      // Caught up again, it parks with the others and the next commits reach all four through the batch.
      await waitParked(4);
      const rejoined = batchCounters();
      for (let index = 0; index < 5; index++) await fixture.primary.sql(`INSERT INTO commits VALUES (${index}, 'z')`);
      const last = await flushLsn();
      await waitAllReached(replicas, last);
      await assertPrimaryBytes(replicas, last);
      if (BATCHES) assert.ok(batchCounters().chunksBatched - rejoined.chunksBatched >= 4, 'the rejoined replica is batched again');
    } finally {
      for (const replica of replicas) await replica.stop().catch(() => undefined);
    }
  });

  test('a replica that disconnects mid-batch ends alone; the others keep receiving byte-identical', async () => {
    const startLsn = fixture.timeline.commitLsn.get();
    const replicas: Replica[] = [];
    try {
      for (let index = 0; index < 6; index++) replicas.push(await openReplica(`gone-${index}`, startLsn));
      await waitParked(6);
      const gone = replicas.splice(2, 1)[0];
      assert.ok(gone !== undefined);
      // Commits keep coming while the replica vanishes between (or during) the batches that carry them.
      const commits = (async () => {
        for (let index = 0; index < COMMITS; index++) await fixture.primary.sql(`INSERT INTO commits SELECT g, repeat('w', 200) FROM generate_series(1, 50) g`);
      })();
      await waitFor(async () => (gone.receivedLsn > startLsn ? true : undefined), CATCH_UP_TIMEOUT_MS, { what: 'the doomed replica received something' });
      gone.client.destroy();
      await gone.done.catch(() => undefined);
      await commits;
      const target = await flushLsn();
      await waitAllReached(replicas, target);
      await assertPrimaryBytes(replicas, target);
      await waitFor(async () => (fixture.timeline.replicas.snapshot().some((replica) => replica.appName === 'gone-2') ? undefined : true), CATCH_UP_TIMEOUT_MS, {
        what: 'the vanished replica left the registry',
      });
      await waitParked(5);
    } finally {
      for (const replica of replicas) await replica.stop().catch(() => undefined);
    }
  });

  test('TLS replicas (per-stream encrypting path) beside plain ones (batched) receive the same bytes', async () => {
    const startLsn = fixture.timeline.commitLsn.get();
    const tls: ClientTlsOptions = { mode: 'verify-full', rootCertFile: fixture.certs.caCert, serverName: 'localhost' };
    const replicas: Replica[] = [];
    try {
      for (let index = 0; index < 3; index++) {
        replicas.push(await openReplica(`plain-${index}`, startLsn));
        replicas.push(await openReplica(`tls-${index}`, startLsn, tls));
      }
      // Only the plain ones park: TLS writers are not batched (they encrypt per stream).
      await waitParked(BATCHES ? 3 : 0);
      for (let index = 0; index < COMMITS; index++) await fixture.primary.sql(`INSERT INTO commits VALUES (${index}, 't')`);
      await fixture.primary.sql(`INSERT INTO commits SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 2000) g`);
      const target = await flushLsn();
      await waitAllReached(replicas, target);
      await assertPrimaryBytes(replicas, target);
      const tlsSnapshot = fixture.timeline.replicas.snapshot().filter((replica) => replica.appName.startsWith('tls-'));
      assert.equal(tlsSnapshot.length, 3);
    } finally {
      for (const replica of replicas) await replica.stop().catch(() => undefined);
    }
  });
});
