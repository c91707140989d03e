/**
 * One client connection from startup to close: authentication, timeline selection, then the replication
 * command loop (walsender.c exec_replication_command). Each command answers with a result or an ErrorResponse
 * and the connection stays usable; only protocol violations, FATAL startup errors and stream endings that
 * PostgreSQL or Neon end with a close, close it.
 */
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { WalcastError, isWalcastError } from '../errors.js';
import type { IoBackend } from '../io/backend.js';
import { mayAccessTenant } from '../auth/jwt.js';
import type { ServerTls } from '../tls/server-tls.js';
import type { Logger } from '../log.js';
import { readTimelineHistory } from '../storage/timeline-history.js';
import type { Timeline } from '../timeline/timeline.js';
import type { TimelineRegistry } from '../timeline/timeline-registry.js';
import { PG_SERVER_VERSION } from '../version.js';
import { isDisconnected, type PgConnection } from '../wire/connection.js';
import { quoteClientText } from '../wire/client-text.js';
import { commandComplete, emptyQueryResponse, errorResponse, readyForQuery } from '../wire/backend-serializer.js';
import { acceptStartup, replicationMode, type AuthConfig, type StartupResult } from '../wire/startup.js';
import { parseReplicationCommand, type ReplicationCommand } from './command-parser.js';
import type { SlotLease } from '../slots/slot-table.js';
import {
  createReplicationSlotResult,
  formatSegmentSize,
  identifySystemResult,
  readReplicationSlotResult,
  showResult,
  timelineHistoryResult,
  timelineStatusResult,
} from './command-results.js';
import { runStartReplication, type StreamOutcome } from './start-replication.js';
import { stopErrorOf } from './shutdown-error.js';
import { selectTimeline, type TimelineKey } from './timeline-selection.js';

/** An idle command connection is closed after this long (Neon's safekeeper uses a 10-minute read timeout). */
export const COMMAND_IDLE_TIMEOUT_MS = 10 * 60_000;

export interface SessionContext {
  readonly conn: PgConnection;
  readonly connId: number;
  readonly timelines: TimelineRegistry;
  readonly backend: IoBackend;
  readonly auth: AuthConfig;
  /** TLS material and mode, when the server was given a certificate. */
  readonly tls?: ServerTls | undefined;
  readonly replicaTimeoutMs: number;
  /** Startup and authentication must finish within this (`--authentication-timeout`). */
  readonly startupTimeoutMs: number;
  /**
   * Asked once the client has authenticated, before ReadyForQuery: an error refuses the connection with it
   * (the authenticated pool is full). See src/admission.
   */
  readonly admit?: () => WalcastError | undefined;
  readonly shutdownSignal: AbortSignal;
  readonly log: Logger;
  /** Called once per finished stream, for logs and metrics. */
  readonly onStreamEnd?: (outcome: StreamOutcome, applicationName: string) => void;
  readonly onCommand?: (command: ReplicationCommand['kind']) => void;
  /** Called when startup or authentication refuses the connection, with the error code as the cause. */
  readonly onStartupRefused?: (cause: string) => void;
  /**
   * Called once, before ReadyForQuery, with the timeline the connection selected (undefined: none). Synchronous with
   * the check that it is not being removed, so a removal either sees the connection or the connection sees it.
   */
  readonly onTimelineSelected?: (key: TimelineKey | undefined) => void;
}

interface SessionState {
  readonly startup: StartupResult;
  readonly timelineKey: TimelineKey | undefined;
}

export async function runSession(context: SessionContext): Promise<void> {
  const phase = { streaming: false };
  // Outside a stream the session closes the connection with 57P01 itself; a stream ends through its own writer.
  const onShutdown = (): void => {
    if (phase.streaming) return;
    const shutdown = stopErrorOf(context.shutdownSignal);
    void context.conn.close({ sqlState: shutdown.sqlState, message: shutdown.message });
  };
  if (context.shutdownSignal.aborted) onShutdown();
  context.shutdownSignal.addEventListener('abort', onShutdown, { once: true });
  try {
    await startupAndCommands(context, phase);
  } catch (error) {
    // The client went away while its command was being answered (found by the session fuzzer: a Query pipelined
    // behind other messages, then a close): its doing, not a bug, so not an error-level "session failed".
    if (!isDisconnected(error)) throw error;
    context.log.info({ err: describe(error) }, 'client disconnected while its command was answered');
  } finally {
    context.shutdownSignal.removeEventListener('abort', onShutdown);
  }
}

async function startupAndCommands(context: SessionContext, phase: { streaming: boolean }): Promise<void> {
  const { conn, log } = context;
  let state: SessionState | undefined;
  try {
    const startup = await acceptStartup(conn, {
      auth: context.auth,
      serverVersion: PG_SERVER_VERSION,
      backendPid: context.connId,
      secretKey: randomInt(0x7fff_ffff),
      startupTimeoutMs: context.startupTimeoutMs,
      tls: context.tls,
      validate: (result) => {
        const prepared = prepareSession(context, result);
        const refusal = context.admit?.();
        if (refusal !== undefined) throw refusal;
        context.onTimelineSelected?.(prepared.timelineKey);
        state = prepared;
      },
    });
    assert.ok(state !== undefined && state.startup === startup, 'validate ran before ReadyForQuery');
  } catch (error) {
    log.info({ err: describe(error) }, 'connection refused during startup');
    context.onStartupRefused?.(isWalcastError(error) ? error.code : 'startup_failed');
    return;
  }
  try {
    await commandLoop(context, state, phase);
  } finally {
    // slot.c ReplicationSlotCleanup at backend exit: temporary slots go, acquisitions end.
    findTimeline(context, state)?.slots.endConnection(context.connId);
  }
}

/**
 * Checks what PostgreSQL checks before ReadyForQuery: the replication mode, and here also the timeline named in
 * `options`. Throws a WalcastError, which refuses the connection with that FATAL error.
 */
function prepareSession(context: SessionContext, startup: StartupResult): SessionState {
  switch (replicationMode(startup.replication)) {
    case 'physical':
      break;
    case 'none':
      // PostgreSQL would start a normal SQL backend here; walcast has none, so it refuses rather than answer SQL.
      throw new WalcastError('WALCAST_ERR_NOT_REPLICATION', 'walcast serves only physical replication connections: connect with replication=true');
    case 'logical':
      throw new WalcastError('WALCAST_ERR_NOT_REPLICATION', 'logical replication is not supported by walcast: connect with replication=true');
    case 'invalid':
      throw new WalcastError('WALCAST_ERR_INVALID_STARTUP_PARAMETER', `invalid value for parameter "replication": ${quoteClientText(startup.replication ?? '')}`);
  }
  const defaultKey = context.timelines.soleTimelineKey();
  const timelineKey = selectTimeline(startup.options, defaultKey);
  checkTokenScope(startup, timelineKey);
  // A timeline being removed refuses newcomers with the FATAL its connections got (57P04).
  const removed = timelineKey === undefined ? undefined : context.timelines.removalError(timelineKey.tenantId, timelineKey.timelineId);
  if (removed !== undefined) throw removed;
  return { startup, timelineKey };
}

/**
 * A tenant token reads only its tenant's timelines (Neon safekeeper handler.rs check_permission): the connection is
 * refused before ReadyForQuery, so not one WAL byte of another tenant is sent.
 */
function checkTokenScope(startup: StartupResult, timelineKey: TimelineKey | undefined): void {
  if (startup.token === undefined) return;
  if (timelineKey === undefined) {
    if (startup.token.scope === 'safekeeperdata') return;
    throw new WalcastError('WALCAST_ERR_TOKEN_SCOPE', 'a tenant token must select its timeline: pass -c tenant_id=... -c timeline_id=... in options');
  }
  if (!mayAccessTenant(startup.token, timelineKey.tenantId)) {
    throw new WalcastError('WALCAST_ERR_TOKEN_SCOPE', `the token does not grant access to tenant ${timelineKey.tenantId}`);
  }
}

async function commandLoop(context: SessionContext, state: SessionState, phase: { streaming: boolean }): Promise<void> {
  const { conn } = context;
  while (!conn.isClosed() && !context.shutdownSignal.aborted) {
    let message;
    try {
      message = await conn.readMessage(COMMAND_IDLE_TIMEOUT_MS);
    } catch (error) {
      if (isWalcastError(error)) void conn.close({ sqlState: error.sqlState, message: error.message });
      else void conn.close();
      return;
    }
    switch (message.type) {
      case 'query': {
        const keep = await handleQuery(context, state, message.sql, phase);
        if (!keep) {
          void conn.close();
          return;
        }
        break;
      }
      case 'terminate':
        void conn.close();
        return;
      case 'sync':
      case 'flush':
        await conn.write(readyForQuery('I'));
        break;
      case 'copyData':
      case 'copyDone':
      case 'copyFail':
        // Left over from a stream that ended with an error: PostgreSQL ignores these too.
        break;
      case 'password':
      case 'other': {
        const what = message.type === 'other' ? `message type 0x${message.code.toString(16)}` : 'a password message';
        const violation = new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `unexpected ${what} on a replication connection`);
        void conn.close({ sqlState: violation.sqlState, message: violation.message });
        return;
      }
    }
  }
  // A stream refused during shutdown (start out of range...) leaves the connection open: it ends like any other.
  if (context.shutdownSignal.aborted && !conn.isClosed()) {
    const shutdown = stopErrorOf(context.shutdownSignal);
    void conn.close({ sqlState: shutdown.sqlState, message: shutdown.message });
  }
}

/** Runs one simple Query; returns false when the connection must close afterwards. */
async function handleQuery(context: SessionContext, state: SessionState, sql: string, phase: { streaming: boolean }): Promise<boolean> {
  const { conn } = context;
  const command = parseReplicationCommand(sql);
  context.onCommand?.(command.kind);
  try {
    if (command.kind === 'start_replication') return await handleStartReplication(context, state, command, phase);
    const result = await answerCommand(context, state, command);
    await conn.write([...result, readyForQuery('I')]);
  } catch (error) {
    if (!isWalcastError(error)) throw error;
    // walsender.c WalSndErrorCleanup: after any ERROR the connection's temporary slots are dropped (PostgreSQL 15 does
    // the same, so a client that needs its temporary slot must not provoke errors on that connection).
    findTimeline(context, state)?.slots.endConnection(context.connId);
    await conn.write([errorResponse({ severity: 'ERROR', sqlState: error.sqlState, message: error.message, hint: error.hint }), readyForQuery('I')]);
  }
  return true;
}

type StartReplicationCommand = Extract<ReplicationCommand, { kind: 'start_replication' }>;

/** START_REPLICATION [SLOT name]: the slot is acquired first (walsender.c StartReplication) and released at stream end. */
async function handleStartReplication(context: SessionContext, state: SessionState, command: StartReplicationCommand, phase: { streaming: boolean }): Promise<boolean> {
  const timeline = requireTimeline(context, state);
  const slot: SlotLease | undefined = command.slotName === undefined ? undefined : timeline.slots.acquire(command.slotName, context.connId);
  const recovery = command.term !== undefined || state.startup.applicationName === 'wal_proposer_recovery';
  phase.streaming = true;
  try {
    const outcome = await runStartReplication(
      {
        conn: context.conn,
        connId: context.connId,
        backend: context.backend,
        timeline,
        applicationName: state.startup.applicationName,
        replicaTimeoutMs: context.replicaTimeoutMs,
        shutdownSignal: context.shutdownSignal,
        log: context.log,
        slot,
      },
      { startLsn: command.startLsn, pgTimelineId: command.pgTimelineId, recovery },
    );
    context.onStreamEnd?.(outcome, state.startup.applicationName);
    return outcome.keepConnection;
  } finally {
    phase.streaming = false;
    slot?.release();
  }
}

async function answerCommand(context: SessionContext, state: SessionState, command: ReplicationCommand): Promise<Buffer[]> {
  switch (command.kind) {
    case 'identify_system': {
      const timeline = requireTimeline(context, state);
      // Neon: the walproposer and peer safekeepers want everything written; everyone else what is committed.
      const appName = state.startup.applicationName;
      const wantsFlush = appName === 'wal_proposer_recovery' || appName.startsWith('safekeeper');
      const xlogPos = wantsFlush ? timeline.flushLsn.get() : timeline.commitLsn.get();
      return identifySystemResult({ systemId: timeline.systemId, pgTimelineId: timeline.pgTimelineId, xlogPos });
    }
    case 'show':
      return answerShow(context, state, command.name);
    case 'timeline_status': {
      const timeline = findTimeline(context, state);
      return timelineStatusResult(timeline === undefined ? undefined : { flushLsn: timeline.flushLsn.get(), commitLsn: timeline.commitLsn.get() });
    }
    case 'read_replication_slot': {
      // No timeline selected means no slots: NULLs, as PostgreSQL answers for a slot it does not have.
      const timeline = findTimeline(context, state);
      const slot = timeline?.slots.get(command.slotName);
      return readReplicationSlotResult(slot === undefined || timeline === undefined ? undefined : { restartLsn: slot.invalidated ? undefined : slot.restartLsn, pgTimelineId: timeline.pgTimelineId });
    }
    case 'timeline_history':
      return answerTimelineHistory(context, state, command.pgTimelineId);
    case 'set':
      return [commandComplete('SET')];
    case 'empty':
      return [emptyQueryResponse()];
    case 'create_replication_slot':
      return createSlot(context, state, command);
    case 'drop_replication_slot':
      await requireTimeline(context, state).slots.drop(command.slotName, { connId: context.connId, wait: command.wait, signal: context.shutdownSignal });
      context.log.info({ slot: command.slotName }, 'replication slot dropped');
      return [commandComplete('DROP_REPLICATION_SLOT')];
    case 'unsupported':
      throw new WalcastError('WALCAST_ERR_SQL_NOT_SUPPORTED', `${quoteClientText(command.command)} is not supported by walcast`);
    case 'sql':
      throw new WalcastError('WALCAST_ERR_SQL_NOT_SUPPORTED', 'cannot execute SQL commands in WAL sender for physical replication');
    case 'invalid':
      throw new WalcastError('WALCAST_ERR_SYNTAX', command.message);
    case 'start_replication':
      throw new Error('unreachable: START_REPLICATION is handled by handleQuery');
  }
}

async function createSlot(context: SessionContext, state: SessionState, command: Extract<ReplicationCommand, { kind: 'create_replication_slot' }>): Promise<Buffer[]> {
  if (command.slotKind === 'logical') {
    throw new WalcastError('WALCAST_ERR_SLOT_LOGICAL', 'logical replication slots are not supported: walcast serves physical replication only');
  }
  const timeline = requireTimeline(context, state);
  // slot.c ReplicationSlotReserveWal holds from the current position; walcast's is the commit LSN (what it serves).
  const restartLsn = command.reserveWal ? timeline.commitLsn.get() : undefined;
  await timeline.slots.create(command.slotName, { temporary: command.temporary, restartLsn, connId: context.connId });
  context.log.info({ slot: command.slotName, temporary: command.temporary, reserveWal: command.reserveWal }, 'replication slot created');
  return createReplicationSlotResult(command.slotName);
}

function answerShow(context: SessionContext, state: SessionState, name: string): Buffer[] {
  switch (name.toLowerCase()) {
    case 'wal_segment_size':
      return showResult('wal_segment_size', formatSegmentSize(requireTimeline(context, state).segmentBytes));
    case 'data_directory_mode':
      return showResult('data_directory_mode', '0700');
    case 'server_version':
      return showResult('server_version', PG_SERVER_VERSION);
    case 'integer_datetimes':
      return showResult('integer_datetimes', 'on');
    default:
      throw new WalcastError('WALCAST_ERR_UNKNOWN_SETTING', `unrecognized configuration parameter ${quoteClientText(name)}`);
  }
}

async function answerTimelineHistory(context: SessionContext, state: SessionState, pgTimelineId: number): Promise<Buffer[]> {
  const history = await readTimelineHistory(requireTimeline(context, state).dir, pgTimelineId);
  return timelineHistoryResult(history.fileName, history.content);
}

function findTimeline(context: SessionContext, state: SessionState): Timeline | undefined {
  return state.timelineKey === undefined ? undefined : context.timelines.get(state.timelineKey.tenantId, state.timelineKey.timelineId);
}

function requireTimeline(context: SessionContext, state: SessionState): Timeline {
  const timeline = findTimeline(context, state);
  if (timeline !== undefined) return timeline;
  if (state.timelineKey === undefined) {
    throw new WalcastError('WALCAST_ERR_NO_TIMELINE', 'no timeline selected: pass -c tenant_id=... -c timeline_id=... in options (the data directory does not hold exactly one timeline)');
  }
  const removed = context.timelines.removalError(state.timelineKey.tenantId, state.timelineKey.timelineId);
  if (removed !== undefined) throw removed;
  const unavailable = context.timelines.getUnavailable(state.timelineKey.tenantId, state.timelineKey.timelineId);
  if (unavailable !== undefined) {
    throw new WalcastError('WALCAST_ERR_CONTROL_FILE', `timeline ${unavailable.tenantId}/${unavailable.timelineId} is not served: ${unavailable.error.message}`);
  }
  throw new WalcastError('WALCAST_ERR_NO_TIMELINE', `timeline ${state.timelineKey.tenantId}/${state.timelineKey.timelineId} not found`);
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

