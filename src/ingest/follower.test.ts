/**
 * The follower's state machine against a scripted fake upstream: durable-then-publish, status and hot-standby
 * feedback, the writer attachment, reconnects after a closed stream or a gap, the slot fallback, and the two ways an
 * upstream timeline switch shows (CopyDone with a next timeline, IDENTIFY_SYSTEM with a new TLI) moving ingest onto
 * the new timeline, and a diverged history stopping it; when the periodic control-file write starts (never during a
 * commit's flush, and still on a saturated stream).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { silentLogger } from '../log.js';
import { CONTROL_FORMAT_VERSION, PG_VERSION_NUM_15, readControlFile, writeControlFile, type ControlState } from '../storage/control-file.js';
import { Timeline } from '../timeline/timeline.js';
import { ServerError, type QueryResult, type StreamEnd } from '../wire/client.js';
import type { ServerNotice } from '../wire/backend-parser.js';
import { WalWriter } from '../storage/wal-writer.js';
import { UpstreamFollower, type FollowerOptions, type UpstreamClient, type UpstreamStream } from './follower.js';

const SEGMENT_BYTES = 1024 * 1024;
const SYSTEM_ID = 7311234567890123456n;
const START_LSN = 4n * BigInt(SEGMENT_BYTES);
const TIMELINE_ID = 'ab'.repeat(16);

let dir = '';
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'walcast-follower-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** One scripted stream: payloads to deliver, then how it ends. */
interface StreamScript {
  readonly payloads: Buffer[];
  readonly end: 'close' | 'timeline-switch' | 'hold';
  /** Awaited before payload `index` is delivered: paces the stream. */
  readonly before?: (index: number) => Promise<void>;
}

class FakeStream implements UpstreamStream {
  readonly sent: Buffer[] = [];
  private index = 0;
  private release: (() => void) | undefined;
  private closed = false;

  constructor(private readonly script: StreamScript) {}

  async read(): Promise<Buffer | undefined> {
    const payload = this.script.payloads[this.index];
    if (payload !== undefined) {
      await this.script.before?.(this.index);
      this.index++;
      return payload;
    }
    if (this.script.end === 'hold' && !this.closed) await new Promise<void>((resolve) => (this.release = resolve));
    return undefined;
  }

  async sendCopyData(payload: Buffer): Promise<void> {
    this.sent.push(Buffer.from(payload));
  }

  async sendCopyDone(): Promise<StreamEnd> {
    if (this.script.end === 'timeline-switch') return { how: 'completed', serverCopyDone: true, tags: ['START_STREAMING'], columns: ['next_tli', 'next_tli_startpos'], rows: [['2', '0/400100']] };
    return { how: 'closed', serverCopyDone: false, tags: [], error: new Error('closed') };
  }

  close(): void {
    this.closed = true;
    this.release?.();
  }
}

class FakeUpstream {
  readonly commands: string[] = [];
  readonly streams: FakeStream[] = [];
  connects = 0;
  pgTimelineId = 1;
  slotMissing = false;
  /** 00000002.history as the upstream sends it: timeline 1 ends 256 bytes into the start segment. */
  history2 = '1\t0/400100\tno recovery target specified\n';

  constructor(private readonly scripts: StreamScript[]) {}

  connect = async (): Promise<UpstreamClient> => {
    this.connects++;
    let current: FakeStream | undefined;
    return {
      parameters: new Map([['server_version', '15.18']]),
      query: async (sql: string): Promise<QueryResult> => {
        this.commands.push(sql);
        if (sql === 'TIMELINE_HISTORY 2') return { columns: ['filename', 'content'], rows: [['00000002.history', this.history2]], tag: 'TIMELINE_HISTORY' };
        assert.equal(sql, 'IDENTIFY_SYSTEM');
        return { columns: ['systemid', 'timeline', 'xlogpos', 'dbname'], rows: [[SYSTEM_ID.toString(), String(this.pgTimelineId), '0/5000000', null]], tag: 'IDENTIFY_SYSTEM' };
      },
      startReplication: async (command: string): Promise<UpstreamStream> => {
        this.commands.push(command);
        if (this.slotMissing && command.includes('SLOT')) throw new ServerError(notice('42704', 'replication slot does not exist'));
        const script = this.scripts.shift() ?? { payloads: [], end: 'hold' };
        current = new FakeStream(script);
        this.streams.push(current);
        return current;
      },
      end: async () => current?.close(),
    };
  };
}

function notice(sqlState: string, message: string): ServerNotice {
  return { severity: 'ERROR', sqlState, message, detail: undefined, hint: undefined, fields: new Map() };
}

function xlogData(dataStart: bigint, data: Buffer): Buffer {
  const header = Buffer.alloc(25);
  header[0] = 0x77;
  header.writeBigUInt64BE(dataStart, 1);
  header.writeBigUInt64BE(dataStart + BigInt(data.length), 9);
  return Buffer.concat([header, data]);
}

/** Makes `data` (received at START_LSN, a segment start) begin with a valid long page header, as real WAL does. */
function walAtSegmentStart(data: Buffer): Buffer {
  const header = Buffer.alloc(40);
  header.writeUInt16LE(0xd110, 0); // XLOG_PAGE_MAGIC (PostgreSQL 15)
  header.writeUInt16LE(0x0002, 2); // XLP_LONG_HEADER
  header.writeUInt32LE(1, 4);
  header.writeBigUInt64LE(START_LSN, 8);
  header.writeBigUInt64LE(SYSTEM_ID, 24);
  header.writeUInt32LE(SEGMENT_BYTES, 32);
  header.writeUInt32LE(8192, 36);
  header.copy(data, 0, 0, Math.min(header.length, data.length));
  return data;
}

async function makeTimeline(): Promise<{ timeline: Timeline; control: ControlState }> {
  const control: ControlState = {
    formatVersion: CONTROL_FORMAT_VERSION,
    tenantId: 'cd'.repeat(16),
    timelineId: TIMELINE_ID,
    systemId: SYSTEM_ID,
    pgVersion: PG_VERSION_NUM_15,
    segmentBytes: SEGMENT_BYTES,
    pgTimelineId: 1,
    timelineStartLsn: START_LSN,
    flushLsn: START_LSN,
    commitLsn: START_LSN,
    upstream: 'host=127.0.0.1 port=1 user=repl',
    createdAt: new Date().toISOString(),
  };
  await writeControlFile(dir, control);
  const timeline = new Timeline({ ...control, dir }, { flushLsn: START_LSN, commitLsn: START_LSN });
  return { timeline, control };
}

function makeFollower(timeline: Timeline, control: ControlState, upstream: FakeUpstream, extra: Partial<FollowerOptions> = {}): UpstreamFollower {
  return new UpstreamFollower({
    ...extra,
    timeline,
    control,
    conninfo: { host: '127.0.0.1', port: 1, hosts: [{ host: '127.0.0.1', port: 1 }], targetSessionAttrs: 'any', user: 'repl', applicationName: 'walcast', connectTimeoutS: undefined, sslMode: 'prefer', sslRootCert: undefined, sslCert: undefined, sslKey: undefined, serverName: '127.0.0.1', options: undefined },
    password: undefined,
    log: silentLogger(),
    connect: upstream.connect,
  });
}

async function until(condition: () => boolean, what: string): Promise<void> {
  for (let attempt = 0; attempt < 500; attempt++) {
    if (condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.fail(`timed out waiting for ${what}`);
}

test('writes XLogData, publishes only durable positions, reports them upstream and attaches while streaming', async () => {
  const { timeline, control } = await makeTimeline();
  const first = walAtSegmentStart(Buffer.alloc(3000, 1));
  const second = Buffer.alloc(5000, 2);
  const upstream = new FakeUpstream([{ payloads: [xlogData(START_LSN, first), xlogData(START_LSN + 3000n, second)], end: 'hold' }]);
  const follower = makeFollower(timeline, control, upstream);
  void follower.start();
  await until(() => timeline.flushLsn.get() === START_LSN + 8000n, 'the flush LSN');
  assert.equal(timeline.commitLsn.get(), START_LSN + 8000n);
  assert.equal(timeline.hasWriter(), true, 'a live stream counts as an attached writer');
  assert.match(upstream.commands[1] ?? '', /^START_REPLICATION SLOT "walcast_abababababababab" PHYSICAL 0\/400000 TIMELINE 1$/);
  const stream = upstream.streams[0];
  assert.ok(stream !== undefined);
  await until(() => stream.sent.some((message) => message[0] === 0x72 && message.readBigUInt64BE(9) === START_LSN + 8000n), 'a status update with the durable LSN');
  const file = readFileSync(join(dir, '000000010000000000000004.partial'));
  assert.ok(file.subarray(0, 3000).equals(first));
  assert.ok(file.subarray(3000, 8000).equals(second));
  await follower.stop();
  assert.equal(follower.state, 'stopped');
  assert.equal(timeline.hasWriter(), false);
  assert.equal((await readControlFile(dir)).flushLsn, START_LSN + 8000n, 'stop persists the durable position');
});

test('WAL with an invalid page header is neither written nor published; ingest retries', async () => {
  const { timeline, control } = await makeTimeline();
  const bad = walAtSegmentStart(Buffer.alloc(300, 7));
  bad.writeBigUInt64LE(START_LSN + 8192n, 8); // xlp_pageaddr of another page: a misdirected write upstream
  const upstream = new FakeUpstream([{ payloads: [xlogData(START_LSN, bad)], end: 'hold' }]);
  const follower = makeFollower(timeline, control, upstream);
  void follower.start();
  await until(() => follower.state === 'waiting', 'the retry after invalid WAL');
  assert.equal(timeline.flushLsn.get(), START_LSN, 'nothing published');
  const path = join(dir, '000000010000000000000004.partial');
  assert.ok(!existsSync(path) || readFileSync(path).subarray(0, 300).equals(Buffer.alloc(300)), 'nothing written');
  await follower.stop();
});

test('forwards the replicas hot-standby xmin as h with epoch and xid split', async () => {
  const { timeline, control } = await makeTimeline();
  const upstream = new FakeUpstream([{ payloads: [], end: 'hold' }]);
  const follower = makeFollower(timeline, control, upstream);
  const replica = timeline.replicas.register({ appName: 'stby', remoteAddress: 'x', startLsn: START_LSN, startedAt: new Date(), connId: 1 });
  replica.update({ kind: 'hot_standby', timeMicros: 0n, xmin: (5n << 32n) | 777n, catalogXmin: 0n });
  void follower.start();
  await until(() => upstream.streams[0]?.sent.some((message) => message[0] === 0x68) === true, 'hot-standby feedback');
  const feedback = upstream.streams[0]?.sent.find((message) => message[0] === 0x68);
  assert.ok(feedback !== undefined);
  assert.equal(feedback.readUInt32BE(9), 777);
  assert.equal(feedback.readUInt32BE(13), 5);
  await follower.stop();
});

test('a closed stream reconnects and resumes from the written position; a gap is not written', async () => {
  const { timeline, control } = await makeTimeline();
  const upstream = new FakeUpstream([
    { payloads: [xlogData(START_LSN, walAtSegmentStart(Buffer.alloc(100, 3)))], end: 'close' },
    { payloads: [xlogData(START_LSN + 500n, Buffer.alloc(100, 4))], end: 'close' },
    { payloads: [xlogData(START_LSN + 50n, Buffer.alloc(100, 5))], end: 'hold' },
  ]);
  const follower = makeFollower(timeline, control, upstream);
  void follower.start();
  await until(() => timeline.flushLsn.get() === START_LSN + 150n, 'the resumed stream');
  assert.equal(upstream.connects, 3);
  assert.deepEqual(
    upstream.commands.filter((command) => command.startsWith('START')).map((command) => command.split(' ').at(-3)),
    ['0/400000', '0/400064', '0/400064'],
    'every start asks for exactly the next byte',
  );
  const file = readFileSync(join(dir, '000000010000000000000004.partial'));
  assert.ok(file.subarray(100, 150).equals(Buffer.alloc(50, 5)), 'the overlapping prefix is skipped, the rest appended');
  await follower.stop();
});

test('without the upstream slot (42704) it streams without one', async () => {
  const { timeline, control } = await makeTimeline();
  const upstream = new FakeUpstream([{ payloads: [xlogData(START_LSN, walAtSegmentStart(Buffer.alloc(10, 1)))], end: 'hold' }]);
  upstream.slotMissing = true;
  const follower = makeFollower(timeline, control, upstream);
  void follower.start();
  await until(() => timeline.flushLsn.get() === START_LSN + 10n, 'streaming without a slot');
  assert.equal(upstream.commands.at(-1), 'START_REPLICATION PHYSICAL 0/400000 TIMELINE 1');
  await follower.stop();
});

test('an upstream timeline end (CopyDone + next_tli row) moves ingest onto timeline 2 on the same connection', async () => {
  const { timeline, control } = await makeTimeline();
  const before = walAtSegmentStart(Buffer.alloc(256, 9));
  const after = Buffer.alloc(100, 7);
  const upstream = new FakeUpstream([
    { payloads: [xlogData(START_LSN, before)], end: 'timeline-switch' },
    { payloads: [xlogData(START_LSN + 256n, after)], end: 'hold' },
  ]);
  const follower = makeFollower(timeline, control, upstream);
  void follower.start();
  await until(() => timeline.flushLsn.get() === START_LSN + 356n, 'WAL of timeline 2');
  assert.equal(timeline.pgTimelineId, 2);
  assert.equal(upstream.connects, 1, 'no reconnect: the next timeline streams on the same connection');
  assert.ok(upstream.commands.includes('TIMELINE_HISTORY 2'));
  assert.equal(upstream.commands.at(-1), 'START_REPLICATION SLOT "walcast_abababababababab" PHYSICAL 0/400100 TIMELINE 2');
  assert.equal(readFileSync(join(dir, '00000002.history'), 'utf8'), upstream.history2, 'the history file is kept byte for byte');
  const newSegment = readFileSync(join(dir, '000000020000000000000004.partial'));
  assert.ok(newSegment.subarray(0, 256).equals(before), "the new timeline's first segment starts with the old timeline's bytes");
  assert.ok(newSegment.subarray(256, 356).equals(after));
  assert.ok(readFileSync(join(dir, '000000010000000000000004.partial')).subarray(0, 256).equals(before), "the old timeline's segment stays");
  assert.equal((await readControlFile(dir)).pgTimelineId, 2, 'the control file commits the switch');
  assert.deepEqual(timeline.pgTimelineEnd(1), { switchLsn: START_LSN + 256n, nextPgTimelineId: 2 });
  await follower.stop();
  assert.equal(follower.state, 'stopped');
});

test('a switch retried after an attempt that left timeline-2 files but never committed: the stale files are not built on', async () => {
  const { timeline, control } = await makeTimeline();
  // An earlier attempt (a crash after writing new-TLI files, before the control file recorded the switch).
  writeFileSync(join(dir, '000000020000000000000004.partial'), Buffer.alloc(SEGMENT_BYTES, 0xee));
  writeFileSync(join(dir, '000000020000000000000004.crc'), Buffer.alloc(64, 0xee));
  writeFileSync(join(dir, '000000020000000000000005'), Buffer.alloc(SEGMENT_BYTES, 0xee));
  const before = walAtSegmentStart(Buffer.alloc(256, 9));
  const after = Buffer.alloc(100, 7);
  const upstream = new FakeUpstream([
    { payloads: [xlogData(START_LSN, before)], end: 'timeline-switch' },
    { payloads: [xlogData(START_LSN + 256n, after)], end: 'hold' },
  ]);
  const follower = makeFollower(timeline, control, upstream);
  void follower.start();
  try {
    await until(() => timeline.flushLsn.get() === START_LSN + 356n, 'WAL of timeline 2');
    const newSegment = readFileSync(join(dir, '000000020000000000000004.partial'));
    assert.ok(newSegment.subarray(0, 256).equals(before));
    assert.ok(newSegment.subarray(256, 356).equals(after));
    assert.ok(newSegment.subarray(356).equals(Buffer.alloc(SEGMENT_BYTES - 356)), 'past the written WAL the segment is zeros, not the stale attempt\'s bytes');
    assert.equal(existsSync(join(dir, '000000020000000000000005')), false, 'a stale later segment of timeline 2 is gone');
  } finally {
    await follower.stop();
  }
});

test('IDENTIFY_SYSTEM on a newer timeline: stream the rest of ours up to the switch point, then switch', async () => {
  const { timeline, control } = await makeTimeline();
  const upstream = new FakeUpstream([
    { payloads: [xlogData(START_LSN, walAtSegmentStart(Buffer.alloc(256, 3)))], end: 'timeline-switch' },
    { payloads: [xlogData(START_LSN + 256n, Buffer.alloc(10, 4))], end: 'hold' },
  ]);
  upstream.pgTimelineId = 2;
  const follower = makeFollower(timeline, control, upstream);
  void follower.start();
  await until(() => timeline.flushLsn.get() === START_LSN + 266n, 'WAL of timeline 2');
  const starts = upstream.commands.filter((command) => command.startsWith('START'));
  assert.deepEqual(starts.map((command) => command.split(' ').slice(-3).join(' ')), ['0/400000 TIMELINE 1', '0/400100 TIMELINE 2']);
  assert.equal(timeline.pgTimelineId, 2);
  await follower.stop();
});

test('IDENTIFY_SYSTEM on a newer timeline whose switch point is exactly our end: switch without streaming the old one', async () => {
  const { timeline, control } = await makeTimeline();
  const first = walAtSegmentStart(Buffer.alloc(64, 4));
  const upstream = new FakeUpstream([{ payloads: [xlogData(START_LSN, first)], end: 'hold' }]);
  upstream.pgTimelineId = 2;
  upstream.history2 = '1\t0/400000\tno recovery target specified\n';
  const follower = makeFollower(timeline, control, upstream);
  void follower.start();
  await until(() => timeline.flushLsn.get() === START_LSN + 64n, 'WAL of timeline 2');
  assert.deepEqual(upstream.commands.filter((command) => command.startsWith('START')).map((command) => command.split(' ').slice(-3).join(' ')), ['0/400000 TIMELINE 2']);
  assert.ok(readFileSync(join(dir, '000000020000000000000004.partial')).subarray(0, 64).equals(first));
  await follower.stop();
});

test('walcast ahead of the new timeline\'s switch point: ingest stops with WALCAST_ERR_UPSTREAM_DIVERGED and stays on timeline 1', async () => {
  const { timeline, control } = await makeTimeline();
  const upstream = new FakeUpstream([{ payloads: [xlogData(START_LSN, walAtSegmentStart(Buffer.alloc(512, 1)))], end: 'close' }]);
  upstream.history2 = '1\t0/400100\tno recovery target specified\n';
  const follower = makeFollower(timeline, control, upstream);
  void follower.start();
  await until(() => timeline.flushLsn.get() === START_LSN + 512n, 'WAL of timeline 1');
  upstream.pgTimelineId = 2;
  await until(() => follower.state === 'failed', 'ingest to stop');
  assert.equal((follower.failure as { code?: string } | undefined)?.code, 'WALCAST_ERR_UPSTREAM_DIVERGED');
  assert.match(follower.status().failure ?? '', /past the upstream's switch point 0\/400100/);
  assert.equal(timeline.pgTimelineId, 1, 'a diverged history is never adopted');
  assert.equal(upstream.commands.filter((command) => command.includes('TIMELINE 2')).length, 0);
  assert.equal(timeline.hasWriter(), false);
});

test('IDENTIFY_SYSTEM on an older timeline than ours is refused and retried, never streamed', async () => {
  const { timeline, control } = await makeTimeline();
  const upstream = new FakeUpstream([]);
  upstream.pgTimelineId = 2;
  upstream.history2 = '1\t0/400000\tno recovery target specified\n';
  const follower = makeFollower(timeline, control, upstream);
  void follower.start();
  await until(() => timeline.pgTimelineId === 2, 'the switch');
  const startsBefore = upstream.commands.filter((command) => command.startsWith('START')).length;
  upstream.pgTimelineId = 1;
  upstream.streams[0]?.close();
  await until(() => upstream.connects >= 2, 'a reconnect');
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(upstream.commands.filter((command) => command.startsWith('START')).length, startsBefore, 'no stream from an older timeline');
  assert.notEqual(follower.state, 'failed');
  await follower.stop();
});

test('a live stream\'s periodic control-file write waits for a publish with no flush behind it, and still keeps up', async () => {
  const { timeline, control } = await makeTimeline();
  const messageBytes = 100;
  const messages = 80; // 8,000 bytes: inside the first page, whose (long) header is the only one the data needs
  const payloads = [xlogData(START_LSN, walAtSegmentStart(Buffer.alloc(messageBytes, 1)))];
  for (let index = 1; index < messages; index++) payloads.push(xlogData(START_LSN + BigInt(index * messageBytes), Buffer.alloc(messageBytes, 1 + (index % 200))));
  // One commit at a time, as a primary at a low commit rate: the next arrives 2 ms after the previous was published.
  const before = async (index: number): Promise<void> => {
    if (index === 0) return;
    while (timeline.flushLsn.get() < START_LSN + BigInt(index * messageBytes)) await new Promise((resolve) => setTimeout(resolve, 1));
    await new Promise((resolve) => setTimeout(resolve, 2));
  };
  const upstream = new FakeUpstream([{ payloads, end: 'hold', before }]);
  // Which flushes run when a control-file write starts (its first step is the open sidecar's sync). Each flush is made
  // 5 ms slower, so that a write started at a random moment would land in one most of the time.
  const flush = WalWriter.prototype.flush;
  const syncOpenSidecar = WalWriter.prototype.syncOpenSidecar;
  let flushesRunning = 0;
  const flushesRunningAtPersist: number[] = [];
  WalWriter.prototype.flush = function (this: WalWriter) {
    flushesRunning++;
    return new Promise((resolve) => setTimeout(resolve, 5)).then(() => flush.call(this)).finally(() => flushesRunning--);
  };
  WalWriter.prototype.syncOpenSidecar = function (this: WalWriter) {
    if (timeline.hasWriter()) flushesRunningAtPersist.push(flushesRunning);
    return syncOpenSidecar.call(this);
  };
  const follower = makeFollower(timeline, control, upstream, { controlPersistIntervalMs: 60 });
  try {
    void follower.start();
    const end = START_LSN + BigInt(messages * messageBytes);
    await until(() => timeline.flushLsn.get() === end, 'every message published');
    await until(() => timeline.persistedFlushLsn === end, 'the control file caught up while the stream stays live');
    assert.equal(timeline.hasWriter(), true);
    assert.ok(flushesRunningAtPersist.length >= 2, `periodic control-file writes during the stream: ${flushesRunningAtPersist.length}`);
    assert.deepEqual(flushesRunningAtPersist.filter((running) => running > 0), [], 'no control-file write started while a commit flush ran');
  } finally {
    await follower.stop();
    WalWriter.prototype.flush = flush;
    WalWriter.prototype.syncOpenSidecar = syncOpenSidecar;
  }
});

test('a stream that never leaves a quiet moment (a flush always behind the publish) still gets its control file written', async () => {
  const { timeline, control } = await makeTimeline();
  const messageBytes = 100;
  const messages = 80;
  const payloads = [xlogData(START_LSN, walAtSegmentStart(Buffer.alloc(messageBytes, 1)))];
  for (let index = 1; index < messages; index++) payloads.push(xlogData(START_LSN + BigInt(index * messageBytes), Buffer.alloc(messageBytes, 1 + (index % 200))));
  // A message every 2 ms into flushes made 10 ms slower: every publish finds the next message written, a flush behind it.
  let persistsStarted = 0;
  let persistsStartedBeforeLast: number | undefined;
  const before = async (index: number): Promise<void> => {
    await new Promise((resolve) => setTimeout(resolve, 2));
    if (index === messages - 1) persistsStartedBeforeLast = persistsStarted;
  };
  const upstream = new FakeUpstream([{ payloads, end: 'hold', before }]);
  const flush = WalWriter.prototype.flush;
  const syncOpenSidecar = WalWriter.prototype.syncOpenSidecar;
  WalWriter.prototype.syncOpenSidecar = function (this: WalWriter) {
    if (timeline.hasWriter()) persistsStarted++; // a control-file write starts with the open sidecar's sync
    return syncOpenSidecar.call(this);
  };
  WalWriter.prototype.flush = function (this: WalWriter) {
    // Slower after it took its target, so the messages that arrive meanwhile are left for the next flush.
    return flush.call(this).then((durable) => new Promise((resolve) => setTimeout(() => resolve(durable), 10)));
  };
  const follower = makeFollower(timeline, control, upstream, { controlPersistIntervalMs: 20 });
  try {
    void follower.start();
    await until(() => timeline.flushLsn.get() === START_LSN + BigInt(messages * messageBytes), 'every message published');
    assert.ok(persistsStartedBeforeLast !== undefined && persistsStartedBeforeLast > 0, 'a control-file write started while the stream was saturated');
    await until(() => timeline.persistedFlushLsn > START_LSN, 'the control file moved');
  } finally {
    await follower.stop();
    WalWriter.prototype.flush = flush;
    WalWriter.prototype.syncOpenSidecar = syncOpenSidecar;
  }
});

test('one segment fdatasync per commit: a paced commit costs one flush, no flush of nothing, no sidecar sync on the commit path; a burst shares them', async () => {
  // The fan-out benchmark's strace once read 2.2 fdatasyncs per publish: both A/B servers follow one primary, so each
  // ingested both arms' commits (docs/benchmarks.md, "fdatasyncs per commit"). This pins the count per commit itself.
  const { timeline, control } = await makeTimeline();
  const messageBytes = 100;
  const paced = 20; // one XLogData per commit, as a PostgreSQL 15 walsender sends a small commit (strace: 1 message per read)
  const burst = 30; // then messages back to back, as a busy primary or a large commit sends them
  const payloads = [xlogData(START_LSN, walAtSegmentStart(Buffer.alloc(messageBytes, 1)))];
  for (let index = 1; index < paced + burst; index++) payloads.push(xlogData(START_LSN + BigInt(index * messageBytes), Buffer.alloc(messageBytes, 1 + (index % 200))));
  const flushesAtPublish: number[] = [];
  const before = async (index: number): Promise<void> => {
    if (index === 0 || index > paced) return;
    // The next commit arrives only after the previous one was published (and its status reply left).
    while (timeline.flushLsn.get() < START_LSN + BigInt(index * messageBytes)) await new Promise((resolve) => setTimeout(resolve, 1));
    flushesAtPublish.push(flushes);
  };
  const upstream = new FakeUpstream([{ payloads, end: 'hold', before }]);
  const flush = WalWriter.prototype.flush;
  let flushes = 0;
  let writer: WalWriter | undefined;
  WalWriter.prototype.flush = function (this: WalWriter) {
    writer = this;
    flushes++;
    return flush.call(this);
  };
  // No periodic control-file write during the test: its sidecar sync is off the commit path and counted apart.
  const follower = makeFollower(timeline, control, upstream, { controlPersistIntervalMs: 3_600_000 });
  try {
    void follower.start();
    const end = START_LSN + BigInt((paced + burst) * messageBytes);
    await until(() => timeline.flushLsn.get() === end, 'every message published');
    assert.deepEqual(flushesAtPublish, Array.from({ length: paced }, (_, index) => index + 1), 'each paced commit published after exactly one flush of its own');
    assert.ok(writer !== undefined);
    const burstFlushes = flushes - paced;
    assert.ok(burstFlushes >= 1 && burstFlushes <= 2, `the burst of ${burst} messages shares its flushes (group commit): ${burstFlushes}`);
    assert.equal(writer.stats.fsyncCount, flushes, 'one segment fdatasync per flush (no segment completed)');
    assert.equal(writer.stats.sidecarSyncCount, 0, 'no sidecar fdatasync on the commit path');
    assert.equal(timeline.ingestTiming.flush.count, flushes, 'every flush published');
  } finally {
    await follower.stop();
    WalWriter.prototype.flush = flush;
  }
});
