/**
 * The walcast server: the composition root that ties the layers together for `walcast serve`. It opens every
 * timeline in the data directory, listens for PostgreSQL protocol connections, runs one session per
 * connection, bounds how many run at once, and shuts down in order (stop accepting, end streams, close).
 */
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { Admission, type AdmissionTicket, type AdmitResult } from './admission/admission.js';
import { resolveAdmission, type ResolvedAdmission } from './admission/admission-options.js';
import { join } from 'node:path';
import type { ListenAddress } from './config/listen-address.js';
import { WalcastError } from './errors.js';
import { startIngest, type IngestHandle } from './ingest/ingest-manager.js';
import type { IoBackend } from './io/backend.js';
import type { Logger } from './log.js';
import { runSession } from './replication/session.js';
import { startOffload, type OffloadHandle } from './remote/offload-manager.js';
import type { RemoteStorageConfig } from './remote/remote-config.js';
import { S3ObjectStore } from './remote/s3-object-store.js';
import { startRetention, type RetentionHandle } from './retention/retention-manager.js';
import { RETENTION_SETTINGS_DEFAULT, type RetentionSettings } from './retention/retention-task.js';
import type { StreamOutcome } from './replication/start-replication.js';
import { openNewTimelines, openTimelines } from './timeline/open-timelines.js';
import type { TimelineKeyPair, TimelineRegistry } from './timeline/timeline-registry.js';
import { TimelineRemovals, type TimelineRemovalResult } from './timeline/timeline-removal.js';
import { formatLsn } from './lsn.js';
import { PgConnection } from './wire/connection.js';
import type { AuthConfig } from './wire/startup.js';
import type { ServerTls } from './tls/server-tls.js';
import type { TcpCongestion } from './net/tcp-congestion.js';

/** Segments fetched back from object storage are cached under DATA/<this>/<tenant>/<timeline>/ (not a timeline id). */
export const REMOTE_CACHE_DIR_NAME = '.remote-cache';
/**
 * How often serve looks for timelines created while it runs (`walcast timeline create`): the issue asks for a new
 * timeline to be streamable within a second, and one readdir per tenant every half second costs nothing.
 */
export const TIMELINE_SCAN_INTERVAL_MS = 500;

/** How long shutdown waits for sessions to end after asking them to, before destroying their sockets. */
export const SHUTDOWN_GRACE_MS = 5_000;

export interface ServerOptions {
  readonly dataDir: string;
  readonly listen: ListenAddress;
  readonly auth: AuthConfig;
  /** Certificate, key, client CA and mode for TLS on the replication port; undefined: plain only ('N'). */
  readonly tls?: ServerTls | undefined;
  readonly backend: IoBackend;
  /** Authenticated sessions at once (`--max-connections`); connections still starting up have their own pool. */
  readonly maxConnections: number;
  /** Connections in startup/authentication at once (default STARTUP_CONNECTIONS_DEFAULT); see src/admission. */
  readonly maxStartupConnections?: number;
  /** Of those, from one address (default STARTUP_CONNECTIONS_PER_ADDRESS_DEFAULT). */
  readonly maxStartupConnectionsPerAddress?: number;
  /** Startup and authentication must finish within this (default AUTHENTICATION_TIMEOUT_MS_DEFAULT). */
  readonly authenticationTimeoutMs?: number;
  readonly replicaTimeoutMs: number;
  readonly log: Logger;
  /** Password for the upstreams that timelines follow (live ingest); see src/ingest. */
  readonly upstreamPassword?: string | undefined;
  /** Follow upstreams recorded in control files (default true); false serves stored WAL only. */
  readonly ingest?: boolean;
  /** WAL retention limits (--wal-keep-size, --max-slot-wal-keep-size); RETENTION_SETTINGS_DEFAULT when absent. */
  readonly retention?: RetentionSettings;
  /** Offload completed segments to this object store (--remote-storage); absent: local disk only. */
  readonly remoteStorage?: RemoteStorageConfig | undefined;
  /** Hooks for the operations surface (metrics); optional so tests can run a bare server. */
  readonly hooks?: ServerHooks;
  /** The congestion control accepted connections get per peer class (src/net); absent: the system's for all. */
  readonly tcpCongestion?: TcpCongestion | undefined;
}

export interface ServerHooks {
  onStreamEnd?(outcome: StreamOutcome, applicationName: string): void;
  onCommand?(kind: string): void;
  onConnectionRefused?(cause: string): void;
}

/** One accepted connection, from accept until its socket closes. */
interface LiveConnection {
  readonly socket: Socket;
  readonly conn: PgConnection;
  readonly ticket: AdmissionTicket;
  /**
   * Tells this connection's session to end. One controller per connection rather than one shared signal: each
   * stream listens for shutdown while it runs, and N streams on one AbortSignal pile up N listeners
   * (MaxListenersExceededWarning at 11); here each signal has at most the listeners of one session.
   */
  readonly stop: AbortController;
  /** The timeline the session selected at startup (set before ReadyForQuery): a removal ends this connection. */
  timelineKey?: TimelineKeyPair | undefined;
  /** The session, from accept until it ends. */
  session?: Promise<void>;
}

export class WalcastServer {
  readonly timelines: TimelineRegistry;
  readonly backend: IoBackend;
  private readonly options: ServerOptions;
  private readonly listener: Server;
  /** Every open connection by admission ticket id, until its socket closes. */
  private readonly live = new Map<number, LiveConnection>();
  private readonly admission: Admission;
  /** Both pools full: the most sockets open at once (descriptors are bounded by this, not by the pools alone). */
  private readonly socketsMax: number;
  private readonly authenticationTimeoutMs: number;
  private readonly sessions = new Set<Promise<void>>();
  private stopping = false;
  private nextConnId = 1;
  /** Live ingest: one follower per timeline that has an upstream. */
  ingest: IngestHandle | undefined;
  /** WAL removal: one task per timeline that follows an upstream. */
  retention: RetentionHandle | undefined;
  /** Offload to object storage: one uploader per timeline, when --remote-storage is given. */
  offload: OffloadHandle | undefined;
  private scanTimer: NodeJS.Timeout | undefined;
  private scanning: Promise<void> | undefined;
  /** The last scan failure, logged once until it changes (a broken directory would otherwise log twice a second). */
  private lastScanError: string | undefined;
  /** Timeline removals while serving (timeline/timeline-removal.ts); the server supplies the hooks. */
  readonly removals: TimelineRemovals;

  private constructor(options: ServerOptions, admission: ResolvedAdmission, timelines: TimelineRegistry) {
    this.options = options;
    this.timelines = timelines;
    this.backend = options.backend;
    this.admission = new Admission(admission.limits);
    this.authenticationTimeoutMs = admission.authenticationTimeoutMs;
    this.socketsMax = this.admission.limits.maxConnections + this.admission.limits.maxStartupConnections;
    this.listener = createServer({ noDelay: true }, (socket) => this.accept(socket));
    this.removals = new TimelineRemovals({
      registry: timelines,
      log: options.log,
      hooks: {
        endConnections: (tenantId, timelineId, error) => this.endTimelineConnections(tenantId, timelineId, error),
        stopTasks: async (tenantId, timelineId) => {
          await this.ingest?.unfollow(tenantId, timelineId);
          await this.retention?.remove(tenantId, timelineId);
          await this.offload?.remove(tenantId, timelineId);
        },
      },
    });
  }

  static async start(options: ServerOptions): Promise<WalcastServer> {
    // The bound the replica registry and the LSN watches derive from: refuse a setting above it before opening anything.
    const admission = resolveAdmission(options);
    const timelines = await openTimelines(options.dataDir, options.log);
    const server = new WalcastServer(options, admission, timelines);
    await new Promise<void>((resolve, reject) => {
      server.listener.once('error', reject);
      server.listener.listen(options.listen.port, options.listen.host, () => {
        server.listener.off('error', reject);
        resolve();
      });
    });
    if (options.ingest !== false) server.ingest = await startIngest({ timelines, upstreamPassword: options.upstreamPassword, log: options.log });
    // Offload starts before retention: with it, retention keeps every segment not yet confirmed in the bucket.
    if (options.remoteStorage !== undefined) {
      server.offload = await startOffload({
        timelines: timelines.list(),
        store: new S3ObjectStore(options.remoteStorage, options.log),
        cacheRoot: join(options.dataDir, REMOTE_CACHE_DIR_NAME),
        log: options.log,
      });
    }
    const offload = server.offload;
    server.retention = await startRetention({
      timelines,
      settings: options.retention ?? RETENTION_SETTINGS_DEFAULT,
      log: options.log,
      backupLsn: offload === undefined ? undefined : (timeline) => offload.uploader(timeline.tenantId, timeline.timelineId)?.backupLsn ?? timeline.timelineStartLsn,
    });
    server.scanTimer = setInterval(() => server.scanForNewTimelines(), TIMELINE_SCAN_INTERVAL_MS);
    return server;
  }

  /**
   * Removes a timeline while serving (HTTP DELETE, `walcast timeline remove`, or a `walcast.remove` marker the scan
   * found): see timeline/timeline-removal.ts. Resolves once its directory is gone.
   */
  removeTimeline(tenantId: string, timelineId: string, requestedBy: string): Promise<TimelineRemovalResult> {
    if (this.stopping) return Promise.reject(new WalcastError('WALCAST_ERR_SHUTDOWN', 'the server is stopping: the removal request stays in walcast.remove and is finished at the next start'));
    return this.removals.remove(tenantId, timelineId, requestedBy);
  }

  /**
   * Ends every connection that selected the timeline with `error` (FATAL 57P04), as shutdown ends them all: a
   * bounded wait, then their sockets are destroyed. Returns how many there were.
   */
  private async endTimelineConnections(tenantId: string, timelineId: string, error: WalcastError): Promise<number> {
    const ending = [...this.live.values()].filter((live) => live.timelineKey?.tenantId === tenantId && live.timelineKey.timelineId === timelineId);
    for (const live of ending) live.stop.abort(error);
    const sessions = ending.map((live) => live.session ?? Promise.resolve());
    const grace = new Promise<void>((resolve) => setTimeout(resolve, SHUTDOWN_GRACE_MS).unref());
    await Promise.race([Promise.allSettled(sessions), grace]);
    for (const live of ending) if (this.live.has(live.ticket.id)) live.socket.destroy();
    await Promise.allSettled(sessions);
    return ending.length;
  }

  /**
   * Opens timelines created since start (see openNewTimelines for why a half-made one is never picked up) and starts
   * the removal of served timelines whose directory holds a removal request (`walcast.remove`).
   */
  private scanForNewTimelines(): void {
    if (this.scanning !== undefined || this.stopping) return;
    this.scanning = this.removals
      .startRequestedRemovals()
      .then(() => openNewTimelines(this.options.dataDir, this.timelines, this.options.log))
      .then(async (opened) => {
        for (const timeline of opened) {
          await this.ingest?.follow(timeline);
          // Offload before retention, as at start: retention then keeps every segment not yet in the bucket.
          await this.offload?.add(timeline);
          await this.retention?.add(timeline);
        }
        this.lastScanError = undefined;
      })
      .catch((error: unknown) => {
        const message = error instanceof Error ? error.message : String(error);
        if (message !== this.lastScanError) this.options.log.error({ err: error }, 'opening a new timeline failed');
        this.lastScanError = message;
      })
      .finally(() => {
        this.scanning = undefined;
      });
  }

  address(): ListenAddress {
    const address = this.listener.address();
    assert.ok(address !== null && typeof address === 'object', 'server is listening');
    return { host: address.address, port: address.port };
  }

  connectionCount(): number {
    return this.live.size;
  }

  private accept(socket: Socket): void {
    // Before the first byte is sent: the algorithm decides how every later send is paced.
    this.options.tcpCongestion?.apply(socket);
    const connId = this.nextConnId++;
    const conn = new PgConnection(socket);
    const admitted = this.admit(socket);
    if ('refused' in admitted) {
      const refusal = admitted.refused;
      this.options.hooks?.onConnectionRefused?.(refusal.code === 'WALCAST_ERR_SHUTTING_DOWN' ? 'shutting_down' : 'too_many_connections');
      void conn.close({ sqlState: refusal.sqlState, message: refusal.message });
      return;
    }
    const { ticket, evicted } = admitted;
    if (evicted !== undefined) this.evict(evicted.ticket, evicted.error);
    const live: LiveConnection = { socket, conn, ticket, stop: new AbortController() };
    this.live.set(ticket.id, live);
    // Bytes from the client make it a less likely squatter: idle connections are evicted first.
    socket.once('data', () => this.admission.markActive(ticket));
    socket.once('close', () => {
      this.live.delete(ticket.id);
      this.admission.release(ticket);
    });
    const session = this.runSession(live, connId)
      // A session is over once its socket is: its goodbye (a FATAL) gets CLOSE_GRACE_MS to reach the client.
      .then(() => conn.close())
      .finally(() => this.sessions.delete(session));
    this.sessions.add(session);
    live.session = session;
  }

  /** Admission (src/admission): refused while stopping or beyond every pool; else a ticket, maybe at another's cost. */
  private admit(socket: Socket): AdmitResult {
    if (this.stopping) return { refused: new WalcastError('WALCAST_ERR_SHUTTING_DOWN', 'the database system is shutting down') };
    // Sockets still closing after an eviction count too: this bounds descriptors, whatever the pools say.
    if (this.live.size >= this.socketsMax) return { refused: new WalcastError('WALCAST_ERR_TOO_MANY_CONNECTIONS', 'sorry, too many clients already') };
    return this.admission.admit(socket.remoteAddress ?? 'unknown', Date.now());
  }

  private evict(ticket: AdmissionTicket, error: WalcastError): void {
    const victim = this.live.get(ticket.id);
    assert.ok(victim !== undefined, 'an admitted ticket has a live connection until its socket closes');
    this.options.hooks?.onConnectionRefused?.('startup_evicted');
    void victim.conn.close({ sqlState: error.sqlState, message: error.message });
  }

  private runSession(live: LiveConnection, connId: number): Promise<void> {
    const { socket, conn, ticket } = live;
    const log = this.options.log.child({ conn: connId, addr: `${socket.remoteAddress}:${socket.remotePort}` });
    return runSession({
      conn,
      connId,
      timelines: this.timelines,
      backend: this.backend,
      auth: this.options.auth,
      tls: this.options.tls,
      replicaTimeoutMs: this.options.replicaTimeoutMs,
      startupTimeoutMs: this.authenticationTimeoutMs,
      admit: () => this.admission.authenticate(ticket),
      shutdownSignal: live.stop.signal,
      log,
      onCommand: (kind) => this.options.hooks?.onCommand?.(kind),
      onStartupRefused: (cause) => this.options.hooks?.onConnectionRefused?.(cause),
      onTimelineSelected: (key) => {
        live.timelineKey = key;
      },
      onStreamEnd: (outcome, applicationName) => {
        const fields = { appname: applicationName, startLsn: formatLsn(outcome.startLsn), endLsn: formatLsn(outcome.endLsn), bytesSent: outcome.bytesSent, how: outcome.how };
        // Damaged storage is the operator's problem, not the replica's: it must stand out in the log.
        if (outcome.storageError !== undefined) log.error({ ...fields, code: outcome.storageError.code, sqlState: outcome.storageError.sqlState }, `stream ended by a storage error: ${outcome.storageError.message}`);
        else log.info(fields, 'stream ended');
        this.options.hooks?.onStreamEnd?.(outcome, applicationName);
      },
    }).catch((error: unknown) => {
      // A bug, not a client's doing: log it loudly, drop this connection, keep serving everyone else.
      log.error({ err: error }, 'session failed');
      socket.destroy();
    });
  }

  /**
   * Asks every session to end (each sends FATAL 57P01, a stream after its last chunk), waits a bounded time, then
   * destroys what is left. Until then the listener stays open, so a client connecting meanwhile hears 57P03 "the
   * database system is shutting down" rather than a refused connection, as from PostgreSQL's postmaster.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.scanTimer);
    await this.scanning;
    // A removal under way finishes first (its connections end with 57P04 rather than 57P01); one that cannot is
    // finished at the next start from its durable walcast.remove.
    await this.removals.settle();
    // Retention stops before ingest, so no pass runs against a timeline whose writer is closing.
    await this.retention?.stop();
    await this.offload?.stop();
    // Ingest first: its final flush publishes what is durable before the senders are told to end.
    await this.ingest?.stop();
    for (const live of this.live.values()) live.stop.abort();
    const grace = new Promise<void>((resolve) => setTimeout(resolve, SHUTDOWN_GRACE_MS).unref());
    await Promise.race([Promise.allSettled([...this.sessions]), grace]);
    const closed = new Promise<void>((resolve) => this.listener.close(() => resolve()));
    for (const live of this.live.values()) live.socket.destroy();
    await closed;
    // Sessions have ended, so slot acquisitions have too: save what replica feedback advanced since the last save.
    await Promise.all(this.timelines.list().map((timeline) => timeline.slots.close().catch((error: unknown) => this.options.log.error({ err: error }, 'saving replication slots at shutdown failed'))));
    await this.backend.close();
  }
}
