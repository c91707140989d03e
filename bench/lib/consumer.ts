/**
 * Drives the C discarding consumer (bench/native/wal-consumer.c) and pg_receivewal, the two clients every
 * scenario uses. The consumer reports on stdout as JSON lines and holds its connections open after "done"
 * until released, so the harness can read server-side accounting while PostgreSQL's walsenders still exist.
 */
import assert from 'node:assert/strict';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { formatLsn, type Lsn } from '../../src/lsn.js';
import { spawnTracked, type Tracked } from './processes.js';

/** After stdin closes a consumer exits at once; one that does not within this is stopped. */
const RELEASE_TIMEOUT_MS = 5_000;

export interface ConsumerResult {
  readonly connections: number;
  readonly completed: number;
  readonly failed: number;
  readonly timedOut: boolean;
  /** WAL payload bytes received, counted up to the requested byte count per connection. */
  readonly bytesTotal: number;
  readonly bytesMin: number;
  readonly bytesMax: number;
  readonly messages: number;
  /** From the first START_REPLICATION sent to the last connection reaching its byte count. */
  readonly wallSeconds: number;
  /** From the first START_REPLICATION to every connection streaming. */
  readonly setupSeconds: number;
  /** From the first connect() to every connection through startup (ReadyForQuery). */
  readonly connectSeconds: number;
  readonly cpuUserSeconds: number;
  readonly cpuSystemSeconds: number;
  readonly latencyRecords: number;
  readonly error: string;
}

export interface ConsumerOptions {
  readonly binary: string;
  readonly port: number;
  readonly connections: number;
  readonly startLsn: Lsn;
  /** WAL bytes each connection must receive; 0 streams until `stopStreaming()`. */
  readonly bytesPerConnection: number;
  readonly appName: string;
  readonly timeoutMs: number;
  readonly latencyLog?: string;
  readonly pgTimelineId?: number;
  /** A standby status update after every XLogData (wal-consumer --reply-each), as PostgreSQL's walreceiver replies. */
  readonly replyEach?: boolean;
}

interface ConnectionCounts {
  readonly connections: number;
  readonly failed: number;
}

export interface RunningConsumer {
  readonly pid: number;
  /** Resolves once every connection finished its startup (or failed); nothing streams before `start()`. */
  readonly ready: Promise<ConnectionCounts>;
  /** Sends START_REPLICATION on every ready connection at once. */
  start(): void;
  /** Resolves once every connection is streaming (or failed). */
  readonly streaming: Promise<ConnectionCounts>;
  /** Resolves with the consumer's final report. */
  readonly done: Promise<ConsumerResult>;
  /** Unlimited mode: ask the consumer to report and stop. */
  stopStreaming(): void;
  /** Closes the consumer's connections and waits for it to exit. */
  release(): Promise<void>;
}

export function startConsumer(options: ConsumerOptions): RunningConsumer {
  assert.ok(options.connections > 0, 'at least one connection');
  assert.ok(options.bytesPerConnection >= 0, 'byte count is not negative');
  const args = [
    '--port', String(options.port),
    '--connections', String(options.connections),
    '--start', formatLsn(options.startLsn),
    '--bytes', String(options.bytesPerConnection),
    '--timeline', String(options.pgTimelineId ?? 1),
    '--app-name', options.appName,
    '--timeout-ms', String(options.timeoutMs),
    '--wait-start',
    ...(options.latencyLog === undefined ? [] : ['--latency-log', options.latencyLog]),
    ...(options.replyEach === true ? ['--reply-each'] : []),
  ];
  const tracked = spawnTracked(options.binary, args);
  return wrapConsumer(tracked);
}

function wrapConsumer(tracked: Tracked): RunningConsumer {
  const lines = createInterface({ input: tracked.child.stdout! });
  let resolveReady!: (value: ConnectionCounts) => void;
  let resolveStreaming!: (value: ConnectionCounts) => void;
  let resolveDone!: (value: ConsumerResult) => void;
  let rejectDone!: (error: Error) => void;
  const ready = new Promise<ConnectionCounts>((resolve) => (resolveReady = resolve));
  const streaming = new Promise<ConnectionCounts>((resolve) => (resolveStreaming = resolve));
  const done = new Promise<ConsumerResult>((resolve, reject) => {
    resolveDone = resolve;
    rejectDone = reject;
  });
  lines.on('line', (line) => {
    const event = JSON.parse(line) as { event: string } & Record<string, unknown>;
    const counts = { connections: Number(event.connections), failed: Number(event.failed) };
    if (event.event === 'ready') resolveReady(counts);
    if (event.event === 'streaming') resolveStreaming(counts);
    if (event.event === 'done') {
      resolveReady(counts);
      resolveStreaming(counts);
      resolveDone(event as unknown as ConsumerResult);
    }
  });
  // 'close' comes after the last stdout line was read ('exit' can come before it): only then is a missing report
  // a failure. A consumer whose report nobody awaits (a reference released early) must not crash the harness.
  lines.once('close', () => {
    void tracked.exited.then((code) => {
      rejectDone(new Error(`wal-consumer exited (${code}) without a report: ${tracked.stderr()}`));
      resolveReady({ connections: 0, failed: -1 });
      resolveStreaming({ connections: 0, failed: -1 });
    });
  });
  done.catch(() => undefined);
  return {
    pid: tracked.pid,
    ready,
    start: () => {
      tracked.child.stdin?.write('go\n');
    },
    streaming,
    done,
    stopStreaming: () => {
      tracked.child.stdin?.write('q\n');
    },
    release: async () => {
      tracked.child.stdin?.end();
      // A consumer released before its report (the run failed half-way) may still be streaming: stop it.
      const exited = await Promise.race([tracked.exited.then(() => true), sleep(RELEASE_TIMEOUT_MS).then(() => false)]);
      if (!exited) await tracked.stop();
    },
  };
}
