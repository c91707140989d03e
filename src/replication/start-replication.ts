/**
 * START_REPLICATION: switches a connection into COPY BOTH, runs the sender and the reply reader side by side,
 * and ends the stream the way the client expects (walsender.c StartReplication / WalSndLoop; Neon
 * send_wal.rs handle_start_replication). The replica is registered for exactly as long as this runs.
 */
import assert from 'node:assert/strict';
import { SqlState, WalcastError, isWalcastError } from '../errors.js';
import type { IoBackend, StreamWriter } from '../io/backend.js';
import { INVALID_LSN, formatLsn, minLsn, type Lsn } from '../lsn.js';
import type { Logger } from '../log.js';
import type { SlotLease } from '../slots/slot-table.js';
import { OpenSegments } from '../storage/open-segments.js';
import { WalReader, startAheadError } from '../storage/wal-reader.js';
import type { Timeline } from '../timeline/timeline.js';
import { CLOSE_GRACE_MS, type PgConnection } from '../wire/connection.js';
import type { FrontendMessage } from '../wire/messages.js';
import { quoteClientText } from '../wire/client-text.js';
import { commandComplete, copyBothResponse, copyDone, errorResponse, readyForQuery } from '../wire/backend-serializer.js';
import type { Feedback } from './feedback.js';
import { ReplyReader, type ReplicaEnd } from './reply-reader.js';
import { fanoutBatcherFor } from './fanout-batch.js';
import { sendWal, type SendWalEnd } from './send-wal.js';
import { stopErrorOf } from './shutdown-error.js';
import { nextTimelineResult } from './command-results.js';
import { encodeKeepalive, pgNowMicros } from './stream-messages.js';
import { toStreamInput } from './stream-input.js';

/** CopyFail's reason is client text; PostgreSQL repeats it whole, walcast a bounded, escaped prefix of it. */
const COPY_FAIL_QUOTE_MAX_CHARS = 200;
/**
 * A sender's wait for one prefetch read (cold WAL from disk) this long is logged: the native backend reads at idle I/O
 * priority, and a disk saturated by best-effort I/O holds such reads back up to mq-deadline's prio_aging_expire (10 s)
 * per request. Status and /metrics show the waits too (disk_wait_seconds).
 */
export const SLOW_DISK_WAIT_LOG_MS = 5_000;

export interface StartReplicationRequest {
  readonly startLsn: Lsn;
  readonly pgTimelineId: number | undefined;
  /** Term/recovery streams (Neon walproposer) stream to the flush LSN and end there. */
  readonly recovery: boolean;
}

export interface StreamContext {
  readonly conn: PgConnection;
  readonly connId: number;
  readonly backend: IoBackend;
  readonly timeline: Timeline;
  readonly applicationName: string;
  readonly replicaTimeoutMs: number;
  readonly shutdownSignal: AbortSignal;
  readonly log: Logger;
  /** The slot acquired by START_REPLICATION SLOT: the replica's confirmed flush position advances it. */
  readonly slot?: SlotLease | undefined;
}

/** How the stream ended, for the connection log line and for the session: keep serving or close. */
export interface StreamOutcome {
  readonly how: string;
  readonly startLsn: Lsn;
  /** The end of the last WAL handed to the backend: where the replica's WAL stops. */
  readonly endLsn: Lsn;
  /** A storage error that ended the stream (sent to the replica as an ErrorResponse); the server logs it as an error. */
  readonly storageError?: { readonly code: string; readonly sqlState: string; readonly message: string };
  readonly bytesSent: number;
  readonly keepConnection: boolean;
}

export async function runStartReplication(context: StreamContext, request: StartReplicationRequest): Promise<StreamOutcome> {
  const { conn, timeline } = context;
  const endWatch = request.recovery ? timeline.flushLsn : timeline.commitLsn;
  const base = { startLsn: request.startLsn, endLsn: request.startLsn, bytesSent: 0 };
  const pgTimelineId = request.pgTimelineId ?? timeline.pgTimelineId;
  // PostgreSQL checks the timeline before COPY BOTH (walsender.c StartReplication).
  const timelineError = checkRequestedTimeline(request.startLsn, pgTimelineId, timeline);
  if (timelineError !== undefined) {
    await conn.write([errorResponse({ severity: 'ERROR', sqlState: timelineError.sqlState, message: timelineError.message, detail: timelineError.detail }), readyForQuery('I')]);
    return { ...base, how: timelineError.code, keepConnection: true };
  }
  const historicEnd = timeline.pgTimelineEnd(pgTimelineId);
  if (historicEnd !== undefined && request.startLsn === historicEnd.switchLsn) {
    // "If there is nothing to stream, don't even enter COPY mode": the next-timeline row and the two tags at once.
    await conn.write(endOfTimelineMessages(historicEnd));
    return { ...base, how: 'start at the end of a historic timeline', keepConnection: true };
  }
  await conn.write(copyBothResponse());
  // Like PostgreSQL, range errors come after CopyBothResponse, as ErrorResponse + ReadyForQuery.
  const rangeError = checkStartRange(request.startLsn, endWatch.get(), timeline);
  if (rangeError !== undefined) {
    await conn.write([errorResponse({ severity: 'ERROR', sqlState: rangeError.sqlState, message: rangeError.message }), readyForQuery('I')]);
    return { ...base, how: rangeError.code, keepConnection: true };
  }
  return streamToReplica(context, { ...request, pgTimelineId }, endWatch);
}

/**
 * PostgreSQL's timeline checks: the TLI must be in this server's history, and a start on a historic TLI must not
 * be past its switch point (the messages are walsender.c StartReplication's).
 */
function checkRequestedTimeline(startLsn: Lsn, pgTimelineId: number, timeline: Timeline): WalcastError | undefined {
  if (!timeline.hasPgTimeline(pgTimelineId)) {
    return new WalcastError('WALCAST_ERR_INVALID_TIMELINE', `requested timeline ${pgTimelineId} is not in this server's history`);
  }
  const end = timeline.pgTimelineEnd(pgTimelineId);
  if (end === undefined || startLsn <= end.switchLsn) return undefined;
  return new WalcastError('WALCAST_ERR_INVALID_TIMELINE', `requested starting point ${formatLsn(startLsn)} on timeline ${pgTimelineId} is not in this server's history`, {
    detail: `This server's history forked from timeline ${pgTimelineId} at ${formatLsn(end.switchLsn)}.`,
  });
}

/** The end of a historic timeline's stream after COPY: next_tli row, "START_STREAMING", "START_REPLICATION", Z. */
function endOfTimelineMessages(end: { readonly switchLsn: Lsn; readonly nextPgTimelineId: number }): Buffer[] {
  return [...nextTimelineResult(end.nextPgTimelineId, end.switchLsn), commandComplete('START_STREAMING'), commandComplete('START_REPLICATION'), readyForQuery('I')];
}

/**
 * Names, per stream, how its bytes reach the socket. A TLS stream on the native backend cannot use it (the addon
 * writes plaintext to the fd), so it goes through the TLSSocket instead; operators must be able to see that.
 */
function logStreamPath(context: StreamContext, writer: StreamWriter): void {
  // On TLS streams the kernel TLS probe's answer rides along, so the line says whether kTLS could have been an
  // option here (docs/security.md: it is not used either way).
  const kernelTls = context.conn.encrypted ? { kernel_tls: context.backend.kernelTls.state, kernel_tls_code: context.backend.kernelTls.code } : {};
  const fields = { io: context.backend.kind, path: writer.path, tls: context.conn.encrypted, ...kernelTls };
  if (context.backend.kind === 'native' && context.conn.encrypted) {
    context.log.info(fields, 'TLS stream: the native backend cannot encrypt, so this stream is sent through the TLS socket (TypeScript path)');
  } else {
    context.log.debug(fields, 'stream I/O path');
  }
}

/** Refuses a start the timeline cannot serve: before its first byte, or ahead of its end. */
function checkStartRange(startLsn: Lsn, endLsn: Lsn, timeline: Timeline): WalcastError | undefined {
  if (startLsn > endLsn) return startAheadError(startLsn, endLsn);
  // With offload, WAL before the local start may still be in object storage: the reader decides (58P01 if not).
  if (startLsn < timeline.timelineStartLsn && timeline.remoteSegments === undefined) {
    const reader = new WalReader(timeline.dir, timeline);
    return reader.removedError(startLsn);
  }
  return undefined;
}

async function streamToReplica(context: StreamContext, request: StartReplicationRequest & { readonly pgTimelineId: number }, endWatch: Timeline['commitLsn']): Promise<StreamOutcome> {
  const { conn, timeline, log } = context;
  const replica = timeline.replicas.register({
    appName: context.applicationName,
    remoteAddress: conn.remoteAddress,
    startLsn: request.startLsn,
    startedAt: new Date(),
    connId: context.connId,
  });
  log.info({ appname: context.applicationName, startLsn: formatLsn(request.startLsn), recovery: request.recovery }, 'stream started');
  const stopController = new AbortController();
  const onShutdown = (): void => stopController.abort();
  context.shutdownSignal.addEventListener('abort', onShutdown, { once: true });
  // Both readers pin the segments they open, so retention never unlinks one under this stream. They share their open
  // segments: the prefetch reader opens each one first, and the send reader takes the same descriptor.
  const openSegments = new OpenSegments();
  const source = new WalReader(timeline.dir, timeline, timeline, timeline.remoteSegments, openSegments);
  const prefetchSource = new WalReader(timeline.dir, timeline, timeline, timeline.remoteSegments, openSegments);
  let writer: StreamWriter | undefined;
  // Kept from onSent, not only from sendWal's result: a stream that fails has no result but did send up to here.
  let sentLsn = request.startLsn;
  const reader = new ReplyReader({
    sink: {
      update: (feedback) => {
        replica.update(feedback);
        const confirmed = slotConfirmedLsn(feedback, sentLsn);
        if (confirmed !== undefined) context.slot?.confirm(confirmed);
      },
    },
    onReplyRequested: () => {
      writer?.sendMessage(encodeKeepalive(endWatch.get(), pgNowMicros(), false)).catch(() => undefined);
    },
    replicaTimeoutMs: context.replicaTimeoutMs,
  });
  const onMessage = (message: FrontendMessage): void => reader.handle(toStreamInput(message));
  conn.setMessageHandler(onMessage);
  let finished = false;
  let stalledEnd: NodeJS.Timeout | undefined;
  void reader.ended.then((end) => {
    // Messages after the stream (a new command after CopyDone) go back to the session's queue. Only this stream's
    // handler is released: a late cleanup must not unset the handler of a next stream on the same connection.
    conn.releaseMessageHandler(onMessage);
    stopController.abort();
    // A replica that stopped reading (the usual cause of a replica timeout) leaves this stream's sends waiting for
    // room that never comes, so neither the sender's stop nor the FATAL below would ever go through and the session
    // would hold its slot forever. As PostgreSQL's walsender (WalSndCheckTimeOut, then exit), the connection goes:
    // after CLOSE_GRACE_MS for the FATAL to get out, the socket is destroyed, which fails the waiting sends.
    if (end.kind === 'error' && !finished) stalledEnd = setTimeout(() => finished || conn.socket.destroy(), CLOSE_GRACE_MS);
  });
  void conn.closed.then(() => reader.handle({ kind: 'disconnected' }));
  let sent: SendWalEnd | undefined;
  let failure: unknown;
  // Commit latency is measured for ordinary streams only: recovery streams follow the flush watch, not commits.
  const publishClock = request.recovery ? undefined : timeline.publishTiming.openStream();
  try {
    writer = await context.backend.openStream(conn.socket);
    logStreamPath(context, writer);
    const verifyAheadWith = aheadChecksummer(context.backend);
    let diskWaitStartedAt = 0;
    sent = await sendWal({
      replicaName: context.applicationName === '' ? 'replica' : context.applicationName,
      startLsn: request.startLsn,
      segmentBytes: timeline.segmentBytes,
      endWatch,
      source,
      prefetchSource,
      writer,
      verify: (chunk, chunkLsn) => timeline.pages.verify(chunk, chunkLsn, { checksummer: context.backend, tail: timeline.tailPages(), log }),
      verifyNow: (chunk, chunkLsn) => timeline.pages.verifyNow(chunk, chunkLsn, { checksummer: context.backend, tail: timeline.tailPages(), log }),
      verifyAhead: (chunk, chunkLsn) => timeline.pages.verify(chunk, chunkLsn, { checksummer: verifyAheadWith, tail: timeline.tailPages(), log }),
      signal: stopController.signal,
      stopAtEnd: request.recovery,
      timelineEnd: () => timeline.pgTimelineEnd(request.pgTimelineId)?.switchLsn,
      ...(publishClock === undefined ? {} : { publishClock }),
      ...(request.recovery || context.backend.chunkBatch === undefined
        ? {}
        : { fanout: fanoutBatcherFor(endWatch, timeline.segmentBytes, context.backend.chunkBatch, () => new WalReader(timeline.dir, timeline, timeline, timeline.remoteSegments), () => timeline.history) }),
      shouldStop: () => timeline.shouldSenderStop(replica.remoteConsistentLsn()),
      replicaTimeoutMs: context.replicaTimeoutMs,
      lastReplyAtMs: () => reader.lastMessageAt(),
      onDiskWait: (waiting) => {
        if (waiting) {
          diskWaitStartedAt = Date.now();
        } else {
          const waitedMs = Date.now() - diskWaitStartedAt;
          if (waitedMs >= SLOW_DISK_WAIT_LOG_MS) log.warn({ waitedMs, sentLsn: formatLsn(sentLsn) }, 'slow cold WAL read: the sender waited for the disk (a busy disk holds back idle-priority reads)');
        }
        replica.diskWait(waiting);
      },
      onSent: (lsn, walBytes, wireBytes) => {
        // The send reader's open segment is still the one this chunk came from: the next locate comes after.
        const served = timeline.walBytesServed;
        if (source.locatedRemote) served.remote += walBytes;
        else served.local += walBytes;
        sentLsn = lsn;
        replica.setSentLsn(lsn);
        replica.addBytesSent(wireBytes);
      },
    });
  } catch (error) {
    failure = error;
  } finally {
    publishClock?.close();
    context.shutdownSignal.removeEventListener('abort', onShutdown);
    replica.unregister();
    await Promise.all([source.close(), prefetchSource.close()]);
  }
  const bytesSent = writer?.bytesSent ?? 0;
  const endLsn = sent?.sentLsn ?? sentLsn;
  const how = await finishStream(context, writer, sent, failure, reader, request.pgTimelineId);
  finished = true;
  clearTimeout(stalledEnd);
  reader.stop();
  log.debug({ how, endLsn: formatLsn(endLsn) }, 'stream finished');
  const storageError = isStorageFailure(failure) ? { code: failure.code, sqlState: failure.sqlState, message: failure.message } : undefined;
  return { how: how.description, startLsn: request.startLsn, endLsn, bytesSent, keepConnection: how.keepConnection, ...(storageError === undefined ? {} : { storageError }) };
}

/** An error of the stored WAL (not of the replica's socket): it ends the stream with an ErrorResponse. */
/**
 * The checksummer the prefetcher verifies ahead with: the backend's off-thread checksum where it has one (native),
 * else its ordinary one. No checksumPagesNow: verifying ahead never checksums on the event-loop thread by choice.
 */
function aheadChecksummer(backend: IoBackend): Pick<IoBackend, 'checksumPages'> {
  const offThread = backend.checksumPagesOffThread;
  if (offThread === undefined) return backend;
  return { checksumPages: (chunk, pageBytes, out) => offThread.call(backend, chunk, pageBytes, out) };
}

function isStorageFailure(failure: unknown): failure is WalcastError {
  return isWalcastError(failure) && failure.code !== 'WALCAST_ERR_STREAM_IO';
}

/**
 * The position a slot may advance to after this feedback: the replica's flush position from 'r' (walsender.c
 * ProcessStandbyReplyMessage -> PhysicalConfirmReceivedLocation) or a pageserver's remote-consistent LSN from 'z',
 * never past what this stream sent (a replica cannot have flushed WAL it was never given; a start position it
 * already had counts as sent). 'h' carries no position. 0/0 means "none".
 */
export function slotConfirmedLsn(feedback: Feedback, sentLsn: Lsn): Lsn | undefined {
  const reported = feedback.kind === 'standby_reply' ? feedback.flushLsn : feedback.kind === 'pageserver' ? feedback.remoteConsistentLsn : INVALID_LSN;
  if (reported === INVALID_LSN) return undefined;
  return minLsn(reported, sentLsn);
}

interface Finish {
  readonly description: string;
  readonly keepConnection: boolean;
}

/** Sends the protocol ending that matches why the stream stopped. */
async function finishStream(
  context: StreamContext,
  writer: StreamWriter | undefined,
  sent: SendWalEnd | undefined,
  failure: unknown,
  reader: ReplyReader,
  pgTimelineId: number,
): Promise<Finish> {
  const { conn } = context;
  if (failure !== undefined || sent === undefined) {
    await writer?.release().catch(() => undefined);
    if (isStorageFailure(failure) && !conn.isClosed()) {
      // A storage error (a segment removed under the stream, invalid WAL): report it like PostgreSQL, E then Z.
      await conn.write([errorResponse({ severity: 'ERROR', sqlState: failure.sqlState, message: failure.message }), readyForQuery('I')]).catch(() => undefined);
      return { description: failure.code, keepConnection: true };
    }
    return { description: `I/O error: ${(failure as Error | undefined)?.message ?? 'unknown'}`, keepConnection: false };
  }
  if (sent.kind === 'caught_up' || sent.kind === 'recovery_finished') {
    // Neon ends these with an ErrorResponse carrying SQLSTATE 00000, then closes (a contract with pageservers).
    await writer?.sendMessage(errorResponse({ severity: 'ERROR', sqlState: SqlState.successfulCompletion, message: sent.message })).catch(() => undefined);
    await writer?.release().catch(() => undefined);
    return { description: sent.kind, keepConnection: false };
  }
  if (sent.kind === 'timeline_end') return finishTimelineEnd(context, writer, reader, pgTimelineId);
  const replicaEnd: ReplicaEnd = context.shutdownSignal.aborted ? { kind: 'disconnected' } : await reader.ended;
  return finishReplicaEnd(context, writer, replicaEnd);
}

/**
 * The requested timeline ended at its switch point (walsender.c WalSndLoop, sendTimeLineIsHistoric): CopyDone,
 * wait for the client's CopyDone, then the next-timeline row and the command tags. A standby or pg_receivewal then
 * asks for the next timeline's history and streams it from the switch point.
 */
async function finishTimelineEnd(context: StreamContext, writer: StreamWriter | undefined, reader: ReplyReader, pgTimelineId: number): Promise<Finish> {
  const end = context.timeline.pgTimelineEnd(pgTimelineId);
  assert.ok(end !== undefined, 'a stream ends at a timeline end only on a historic timeline');
  await writer?.sendMessage(copyDone()).catch(() => undefined);
  const replicaEnd: ReplicaEnd = context.shutdownSignal.aborted ? { kind: 'disconnected' } : await reader.ended;
  if (context.shutdownSignal.aborted || replicaEnd.kind !== 'copy_done') return finishReplicaEnd(context, writer, replicaEnd);
  await writer?.release().catch(() => undefined);
  await context.conn.write(endOfTimelineMessages(end)).catch(() => undefined);
  return { description: `end of timeline ${pgTimelineId} at ${formatLsn(end.switchLsn)}`, keepConnection: true };
}

async function finishReplicaEnd(context: StreamContext, writer: StreamWriter | undefined, end: ReplicaEnd): Promise<Finish> {
  const { conn } = context;
  if (context.shutdownSignal.aborted) {
    // Through the writer, after the last chunk: a FATAL written to the socket beside it could land mid-message.
    const shutdown = stopErrorOf(context.shutdownSignal);
    await writer?.sendMessage(errorResponse({ severity: 'FATAL', sqlState: shutdown.sqlState, message: shutdown.message })).catch(() => undefined);
    await writer?.release().catch(() => undefined);
    return { description: shutdown.code === 'WALCAST_ERR_SHUTDOWN' ? 'server shutdown' : shutdown.code, keepConnection: false };
  }
  switch (end.kind) {
    case 'copy_done':
      // walsender.c: CopyDone back, then two CommandCompletes (libpqrcv_endstreaming needs both), then Z.
      await writer?.sendMessage(copyDone()).catch(() => undefined);
      await writer?.release().catch(() => undefined);
      await conn.write([commandComplete('START_STREAMING'), commandComplete('START_REPLICATION'), readyForQuery('I')]).catch(() => undefined);
      return { description: 'client CopyDone', keepConnection: true };
    case 'copy_fail':
      await writer?.release().catch(() => undefined);
      const failed = new WalcastError('WALCAST_ERR_COPY_FAILED', `COPY from stdin failed: ${quoteClientText(end.message, COPY_FAIL_QUOTE_MAX_CHARS)}`);
      await conn.write([errorResponse({ severity: 'ERROR', sqlState: failed.sqlState, message: failed.message }), readyForQuery('I')]).catch(() => undefined);
      return { description: 'client CopyFail', keepConnection: true };
    case 'error':
      await writer?.sendMessage(errorResponse({ severity: 'FATAL', sqlState: end.error.sqlState, message: end.error.message })).catch(() => undefined);
      await writer?.release().catch(() => undefined);
      return { description: end.error.code, keepConnection: false };
    case 'terminate':
    case 'disconnected':
      await writer?.release().catch(() => undefined);
      return { description: `client ${end.kind}`, keepConnection: false };
  }
}
