/**
 * The walcast server: the composition root that ties the layers together for `walcast serve`. It opens every
 * timeline in the data directory, listens for PostgreSQL protocol connections, runs one session per
 * connection, bounds how many run at once, and shuts down in order (stop accepting, end streams, close).
 */
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import type { ListenAddress } from './config/listen-address.js';
import { WalcastError } from './errors.js';
import { startIngest, type IngestHandle } from './ingest/ingest-manager.js';
import type { IoBackend } from './io/backend.js';
import type { Logger } from './log.js';
import { runSession } from './replication/session.js';
import { startRetention, type RetentionHandle } from './retention/retention-manager.js';
import { RETENTION_SETTINGS_DEFAULT, type RetentionSettings } from './retention/retention-task.js';
import type { StreamOutcome } from './replication/start-replication.js';
import { openNewTimelines, openTimelines } from './timeline/open-timelines.js';
import type { TimelineRegistry } from './timeline/timeline-registry.js';
import { formatLsn } from './lsn.js';
import { PgConnection } from './wire/connection.js';
import type { AuthConfig } from './wire/startup.js';

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
  readonly backend: IoBackend;
  readonly maxConnections: number;
  readonly replicaTimeoutMs: number;
  readonly log: Logger;
  /** Password for the upstreams that timelines follow (live ingest); see src/ingest. */
  readonly upstreamPassword?: string | undefined;
  /** Follow upstreams recorded in control files (default true); false serves stored WAL only. */
  readonly ingest?: boolean;
  /** WAL retention limits (--wal-keep-size, --max-slot-wal-keep-size); RETENTION_SETTINGS_DEFAULT when absent. */
  readonly retention?: RetentionSettings;
  /** Hooks for the operations surface (metrics); optional so tests can run a bare server. */
  readonly hooks?: ServerHooks;
}

export interface ServerHooks {
  onStreamEnd?(outcome: StreamOutcome, applicationName: string): void;
  onCommand?(kind: string): void;
  onConnectionRefused?(cause: string): void;
}

export class WalcastServer {
  readonly timelines: TimelineRegistry;
  readonly backend: IoBackend;
  private readonly options: ServerOptions;
  private readonly listener: Server;
  private readonly sockets = new Set<Socket>();
  private readonly sessions = new Set<Promise<void>>();
  private readonly shutdown = new AbortController();
  private nextConnId = 1;
  /** Live ingest: one follower per timeline that has an upstream. */
  ingest: IngestHandle | undefined;
  /** WAL removal: one task per timeline that follows an upstream. */
  retention: RetentionHandle | undefined;
  private scanTimer: NodeJS.Timeout | undefined;
  private scanning: Promise<void> | undefined;
  /** The last scan failure, logged once until it changes (a broken directory would otherwise log twice a second). */
  private lastScanError: string | undefined;

  private constructor(options: ServerOptions, timelines: TimelineRegistry) {
    this.options = options;
    this.timelines = timelines;
    this.backend = options.backend;
    this.listener = createServer({ noDelay: true }, (socket) => this.accept(socket));
  }

  static async start(options: ServerOptions): Promise<WalcastServer> {
    assert.ok(options.maxConnections > 0);
    const timelines = await openTimelines(options.dataDir, options.log);
    const server = new WalcastServer(options, timelines);
    await new Promise<void>((resolve, reject) => {
      server.listener.once('error', reject);
      server.listener.listen(options.listen.port, options.listen.host, () => {
        server.listener.off('error', reject);
        resolve();
      });
    });
    if (options.ingest !== false) server.ingest = await startIngest({ timelines, upstreamPassword: options.upstreamPassword, log: options.log });
    server.retention = await startRetention({ timelines, settings: options.retention ?? RETENTION_SETTINGS_DEFAULT, log: options.log });
    server.scanTimer = setInterval(() => server.scanForNewTimelines(), TIMELINE_SCAN_INTERVAL_MS);
    return server;
  }

  /** Opens timelines created since start (see openNewTimelines for why a half-made one is never picked up). */
  private scanForNewTimelines(): void {
    if (this.scanning !== undefined || this.shutdown.signal.aborted) return;
    this.scanning = openNewTimelines(this.options.dataDir, this.timelines, this.options.log)
      .then(async (opened) => {
        for (const timeline of opened) {
          await this.ingest?.follow(timeline);
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
    return this.sockets.size;
  }

  private accept(socket: Socket): void {
    const connId = this.nextConnId++;
    const log = this.options.log.child({ conn: connId, addr: `${socket.remoteAddress}:${socket.remotePort}` });
    const conn = new PgConnection(socket);
    if (this.sockets.size >= this.options.maxConnections || this.shutdown.signal.aborted) {
      this.options.hooks?.onConnectionRefused?.('too_many_connections');
      const refusal = new WalcastError('WALCAST_ERR_TOO_MANY_CONNECTIONS', 'sorry, too many clients already');
      void conn.close({ sqlState: refusal.sqlState, message: refusal.message });
      return;
    }
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    const session = runSession({
      conn,
      connId,
      timelines: this.timelines,
      backend: this.backend,
      auth: this.options.auth,
      replicaTimeoutMs: this.options.replicaTimeoutMs,
      shutdownSignal: this.shutdown.signal,
      log,
      onCommand: (kind) => this.options.hooks?.onCommand?.(kind),
      onStartupRefused: (cause) => this.options.hooks?.onConnectionRefused?.(cause),
      onStreamEnd: (outcome, applicationName) => {
        const fields = { appname: applicationName, startLsn: formatLsn(outcome.startLsn), endLsn: formatLsn(outcome.endLsn), bytesSent: outcome.bytesSent, how: outcome.how };
        // Damaged storage is the operator's problem, not the replica's: it must stand out in the log.
        if (outcome.storageError !== undefined) log.error({ ...fields, code: outcome.storageError.code, sqlState: outcome.storageError.sqlState }, `stream ended by a storage error: ${outcome.storageError.message}`);
        else log.info(fields, 'stream ended');
        this.options.hooks?.onStreamEnd?.(outcome, applicationName);
      },
    })
      .catch((error: unknown) => {
        // A bug, not a client's doing: log it loudly, drop this connection, keep serving everyone else.
        log.error({ err: error }, 'session failed');
        socket.destroy();
      })
      .finally(() => this.sessions.delete(session));
    this.sessions.add(session);
  }

  /** Stops accepting, asks every session to end, waits a bounded time, then destroys what is left. */
  async stop(): Promise<void> {
    if (this.shutdown.signal.aborted) return;
    this.shutdown.abort();
    clearInterval(this.scanTimer);
    await this.scanning;
    // Retention stops before ingest, so no pass runs against a timeline whose writer is closing.
    await this.retention?.stop();
    // Ingest first: its final flush publishes what is durable before the senders are told to end.
    await this.ingest?.stop();
    const closed = new Promise<void>((resolve) => this.listener.close(() => resolve()));
    for (const socket of this.sockets) socket.end();
    const grace = new Promise<void>((resolve) => setTimeout(resolve, SHUTDOWN_GRACE_MS).unref());
    await Promise.race([Promise.allSettled([...this.sessions]), grace]);
    for (const socket of this.sockets) socket.destroy();
    await closed;
    // Sessions have ended, so slot acquisitions have too: save what replica feedback advanced since the last save.
    await Promise.all(this.timelines.list().map((timeline) => timeline.slots.close().catch((error: unknown) => this.options.log.error({ err: error }, 'saving replication slots at shutdown failed'))));
    await this.backend.close();
  }
}
