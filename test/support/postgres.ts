/**
 * The one shared fixture for real PostgreSQL 15 on 127.0.0.1 in integration tests: temp dirs, primaries,
 * base-backed-up standbys (and copies of one unstarted base backup, for the benchmark), pg_receivewal runs, and the
 * clean-up that keeps clusters from outliving a test file.
 *
 * PostgreSQL refuses to run as root, so when the tests run as root the server-side programs (initdb, postgres,
 * pg_basebackup) are spawned with the uid/gid of the `postgres` OS user and every temp dir is chowned to it.
 * Clients (psql, pgbench, pg_receivewal) run as whoever runs the tests and connect over the cluster's own
 * unix socket dir (trust) or 127.0.0.1. Each cluster listens on a port picked free at start-up; when another
 * process takes it first, start-up retries on a new one. Every started postmaster is registered so that it is
 * stopped by PID when the process exits or is signalled, even when a test failed half-way.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, chmodSync, chownSync, closeSync, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

/** Debian's PostgreSQL 15; /usr/local/bin may hold an unrelated pg_ctl. WALCAST_PG_BIN overrides it. */
export const PG_BIN_DIR = process.env.WALCAST_PG_BIN ?? '/usr/lib/postgresql/15/bin';
/** The replication role every cluster gets; its password matters only when host auth is scram-sha-256. */
export const REPL_USER = 'repl';
export const REPL_PASSWORD_DEFAULT = 'repl-pw';
const SUPERUSER = 'postgres';

/** A primary is ready in ~1 s; a standby replays its base backup's WAL first, so both get generous bounds. */
const START_TIMEOUT_MS = 60_000;
/** Fast shutdown checkpoints; with fsync=off that is quick, past this we escalate to SIGKILL. */
const STOP_TIMEOUT_MS = 30_000;
/** Backends notice postmaster death through its pipe within milliseconds; this bounds the wait after kill9. */
const ORPHAN_EXIT_TIMEOUT_MS = 10_000;
const POLL_INTERVAL_MS = 50;
/** Another process can take a probed free port before postgres binds it; a few retries make that harmless. */
const PORT_ATTEMPTS_MAX = 5;
const SQL_TIMEOUT_MS = 120_000;
const PGBENCH_TIMEOUT_MS = 600_000;
const BASEBACKUP_TIMEOUT_MS = 300_000;
const RECEIVEWAL_TIMEOUT_MS = 120_000;
/** How much of the server log goes into an error message: enough for the FATAL and its context. */
const LOG_TAIL_BYTES = 4_000;
/** Caps captured client output so a chatty tool cannot grow a test's memory without bound. */
const OUTPUT_BYTES_MAX = 4 * 1024 * 1024;
/** The exit handler cannot await; it polls synchronously for at most this long before SIGKILL. */
const EXIT_STOP_WAIT_MS = 5_000;

export interface PgCluster {
  readonly port: number;
  readonly dataDir: string;
  readonly walDir: string;
  /** The postmaster's PID (changes when `start()` restarts it). */
  readonly pid: number;
  readonly socketDir: string;
  readonly logFile: string;
  /** The repl role's password (scram-sha-256 on host connections only when `startPrimary({ password })`). */
  readonly replPassword: string;
  /** Runs one statement through psql as the superuser over the unix socket; returns `-At` output, trimmed. */
  sql(query: string, db?: string): Promise<string>;
  /** Runs pgbench against database `postgres`; returns its stdout. */
  pgbench(args: readonly string[]): Promise<string>;
  stop(options?: { mode?: 'fast' | 'immediate' }): Promise<void>;
  /** Simulates a crash: SIGKILL to the postmaster, then waits for its orphaned children to exit. */
  kill9(): Promise<void>;
  /** Starts the server again (after stop or kill9) on a fresh port. */
  start(): Promise<void>;
  logTail(): string;
}

export interface PgStandby {
  readonly port: number;
  readonly dataDir: string;
  readonly pid: number;
  readonly logFile: string;
  sql(query: string, db?: string): Promise<string>;
  /** Runs pgbench against database `postgres` (writes need a promoted standby); returns its stdout. */
  pgbench(args: readonly string[]): Promise<string>;
  stop(options?: { mode?: 'fast' | 'immediate' }): Promise<void>;
  kill9(): Promise<void>;
  logTail(): string;
}

export interface StandbyOptions {
  /** Where to stream from when `start` is true; 0 means the primary itself. */
  upstreamPort?: number;
  applicationName?: string;
  hotStandbyFeedback?: boolean;
  start?: boolean;
  /** Extra postgresql.conf settings for the standby. */
  extraConf?: Record<string, string>;
}

export interface StandbyBase {
  readonly dataDir: string;
  /** The running standby once started (by `start: true` or `startWithUpstream`). */
  readonly standby: PgStandby | undefined;
  /**
   * Points primary_conninfo at 127.0.0.1:PORT and starts the standby; may be called again after its stop().
   * `conninfo` adds keywords (sslmode=verify-full sslrootcert=...).
   */
  startWithUpstream(port: number, options?: { password?: string; conninfo?: string }): Promise<PgStandby>;
}

export interface ReceiveWalResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

interface RunAs {
  readonly uid: number;
  readonly gid: number;
}

/** The process we spawned for one postmaster, so clean-up can find it without reading the data dir. */
interface Postmaster {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly dataDir: string;
}

const livePostmasters = new Set<Postmaster>();
const tempDirs = new Set<string>();
let runAsCache: RunAs | undefined | null = null;

/** The postgres OS user's ids when we are root (postgres refuses to run as root), else undefined. */
function serverUser(): RunAs | undefined {
  if (runAsCache !== null) return runAsCache;
  if (process.getuid?.() !== 0) return (runAsCache = undefined);
  const id = (flag: string): number => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
  runAsCache = { uid: id('-u'), gid: id('-g') };
  assert.ok(runAsCache.uid > 0, 'the postgres OS user must not be root');
  return runAsCache;
}

/** The base for temp dirs: the test runner points WALCAST_TEST_TMPDIR at one dir per run so it can sweep it. */
function tempBase(): string {
  return process.env.WALCAST_TEST_TMPDIR ?? tmpdir();
}

/** A fresh 0700 dir under the temp base, owned by the postgres user when we are root, removed at exit. */
export async function makeTempDir(prefix: string): Promise<string> {
  assert.ok(/^[A-Za-z0-9._-]+$/.test(prefix), `temp dir prefix must be a plain name: ${prefix}`);
  const dir = mkdtempSync(join(tempBase(), `${prefix}-`));
  chmodSync(dir, 0o700);
  const user = serverUser();
  if (user !== undefined) chownSync(dir, user.uid, user.gid);
  tempDirs.add(dir);
  return dir;
}

/** -1 when equal, else the first differing offset (the shorter length when one is a prefix of the other). */
export function firstDifference(a: Buffer, b: Buffer): number {
  const common = Math.min(a.length, b.length);
  const CHUNK_BYTES = 64 * 1024;
  for (let offset = 0; offset < common; offset += CHUNK_BYTES) {
    const end = Math.min(offset + CHUNK_BYTES, common);
    if (a.subarray(offset, end).equals(b.subarray(offset, end))) continue;
    for (let index = offset; index < end; index++) if (a[index] !== b[index]) return index;
  }
  return a.length === b.length ? -1 : common;
}

/** A port nobody listens on right now (the kernel picks it); postgres start-up retries if it is taken later. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      assert.ok(address !== null && typeof address === 'object');
      server.close(() => resolve(address.port));
    });
  });
}

export function isProcessAlive(pid: number): boolean {
  try {
    // A zombie still answers kill(0); it is dead for our purposes.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Direct children of PID (postgres backends, walsenders, walreceivers...), read from /proc. */
export function childPids(pid: number): number[] {
  const children: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === pid) children.push(Number(entry));
    } catch {
      // The process exited while we listed /proc.
    }
  }
  return children;
}

function readTail(file: string, bytes = LOG_TAIL_BYTES): string {
  try {
    const text = readFileSync(file, 'utf8');
    return text.length > bytes ? text.slice(text.length - bytes) : text;
  } catch {
    return '(no log)';
  }
}

/** Env for PostgreSQL programs: no inherited PG* variables (PGHOST, PGPORT...) can redirect them. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) if (!key.startsWith('PG')) env[key] = value;
  return { ...env, PGCONNECT_TIMEOUT: '10', LC_ALL: 'C', ...extra };
}

interface ToolResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

/** Runs a PostgreSQL program to completion with a bound on its run time and on its captured output. */
function runTool(program: string, args: readonly string[], options: { timeoutMs: number; asServerUser?: boolean; cwd?: string; env?: Record<string, string> }): Promise<ToolResult> {
  const user = options.asServerUser === true ? serverUser() : undefined;
  return new Promise((resolve, reject) => {
    const child = spawn(join(PG_BIN_DIR, program), args, {
      cwd: options.cwd ?? tempBase(),
      env: cleanEnv(options.env),
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(user === undefined ? {} : { uid: user.uid, gid: user.gid }),
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (chunk: Buffer) => { if (stdout.length < OUTPUT_BYTES_MAX) stdout += chunk.toString(); });
    child.stderr.on('data', (chunk: Buffer) => { if (stderr.length < OUTPUT_BYTES_MAX) stderr += chunk.toString(); });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, options.timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`could not run ${program}: ${error.message}`, { cause: error }));
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, timedOut });
    });
  });
}

async function runToolOrThrow(program: string, args: readonly string[], options: Parameters<typeof runTool>[2]): Promise<string> {
  const result = await runTool(program, args, options);
  if (result.code === 0) return result.stdout;
  const why = result.timedOut ? `timed out after ${options.timeoutMs} ms` : `exited with ${result.code}`;
  throw new Error(`${program} ${args.join(' ')} ${why}\n${result.stderr}${result.stdout}`);
}

function confLines(settings: Record<string, string>): string {
  return Object.entries(settings).map(([key, value]) => `${key} = '${value.replaceAll("'", "''")}'\n`).join('');
}

/** Settings for a fast, disposable primary that can feed many walsenders and keeps its WAL for the tests. */
function primaryConf(socketDir: string, extraConf: Record<string, string>): Record<string, string> {
  return {
    listen_addresses: '127.0.0.1',
    unix_socket_directories: socketDir,
    wal_level: 'replica',
    max_wal_senders: '20',
    max_replication_slots: '20',
    // Tests read pg_wal after stopping the primary; keeping 1 GB means checkpoints remove none of it.
    wal_keep_size: '1GB',
    max_wal_size: '2GB',
    hot_standby: 'on',
    fsync: 'off',
    full_page_writes: 'on',
    shared_buffers: '32MB',
    max_connections: '40',
    // Autovacuum would write WAL at random moments; tests that want it can turn it back on.
    autovacuum: 'off',
    log_line_prefix: '%m [%p] %q%a ',
    log_replication_commands: 'on',
    log_connections: 'on',
    ...extraConf,
  };
}

function hbaConf(hostMethod: 'trust' | 'scram-sha-256'): string {
  return [
    'local all all trust',
    `host replication all 127.0.0.1/32 ${hostMethod}`,
    `host all all 127.0.0.1/32 ${hostMethod}`,
    '',
  ].join('\n');
}

/** Reads postmaster.pid: line 1 the PID, line 8 the status ("starting", "ready", "standby", "stopping"). */
function postmasterStatus(dataDir: string): { pid: number; status: string } | undefined {
  try {
    const lines = readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n');
    return { pid: Number(lines[0]), status: (lines[7] ?? '').trim() };
  } catch {
    return undefined;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

class PortInUse extends Error {}

/** Spawns `postgres -D dataDir` on PORT as the server user, logging to logFile; resolves when it accepts connections. */
async function spawnPostmaster(dataDir: string, port: number, logFile: string, timeoutMs: number): Promise<Postmaster> {
  const user = serverUser();
  const logFd = openSync(logFile, 'a');
  if (user !== undefined) chownSync(logFile, user.uid, user.gid);
  const child = spawn(join(PG_BIN_DIR, 'postgres'), ['-D', dataDir, '-p', String(port)], {
    cwd: dataDir,
    // HOME is the cluster's own dir: a walreceiver's libpq reads ~/.postgresql/ for TLS files, and root's home is
    // not the postgres user's to read.
    env: cleanEnv({ HOME: dirname(dataDir) }),
    // No pipes: a postmaster must never block on a full pipe, and its children inherit the log fd.
    stdio: ['ignore', logFd, logFd],
    ...(user === undefined ? {} : { uid: user.uid, gid: user.gid }),
  });
  closeSync(logFd);
  // unref: a test that forgets stop() must not hang its file; the exit handler stops the cluster instead.
  child.unref();
  assert.ok(child.pid !== undefined, `could not spawn postgres for ${dataDir}`);
  const postmaster: Postmaster = { child, pid: child.pid, dataDir };
  livePostmasters.add(postmaster);
  child.once('exit', () => livePostmasters.delete(postmaster));
  await waitUntilReady(postmaster, logFile, timeoutMs);
  return postmaster;
}

async function waitUntilReady(postmaster: Postmaster, logFile: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (postmaster.child.exitCode !== null || postmaster.child.signalCode !== null) {
      const tail = readTail(logFile);
      if (/could not bind|Address already in use/.test(tail)) throw new PortInUse(tail);
      throw new Error(`postgres for ${postmaster.dataDir} exited during start-up (${postmaster.child.exitCode ?? postmaster.child.signalCode}); log tail:\n${tail}`);
    }
    const state = postmasterStatus(postmaster.dataDir);
    // pg_ctl -w treats both as started: "standby" is a standby without hot_standby (pg_ctl.c, get_pgpid/wait_for_postmaster).
    if (state?.pid === postmaster.pid && (state.status === 'ready' || state.status === 'standby')) return;
    if (Date.now() > deadline) {
      await stopPostmaster(postmaster, 'SIGQUIT');
      throw new Error(`postgres for ${postmaster.dataDir} was not ready within ${timeoutMs} ms; log tail:\n${readTail(logFile)}`);
    }
    await sleep(POLL_INTERVAL_MS);
  }
}

/** Starts on a free port, retrying on a new one when something else bound it first. */
async function startOnFreePort(dataDir: string, logFile: string, timeoutMs: number): Promise<{ postmaster: Postmaster; port: number }> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    try {
      return { postmaster: await spawnPostmaster(dataDir, port, logFile, timeoutMs), port };
    } catch (error) {
      if (!(error instanceof PortInUse) || attempt >= PORT_ATTEMPTS_MAX) throw error;
    }
  }
}

async function waitForExit(pids: readonly number[], timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (pids.some(isProcessAlive)) {
    if (Date.now() > deadline) return false;
    await sleep(POLL_INTERVAL_MS);
  }
  return true;
}

/** SIGINT is fast shutdown, SIGQUIT immediate (postgres docs, "Shutting Down the Server"); SIGKILL if it hangs. */
async function stopPostmaster(postmaster: Postmaster, signal: 'SIGINT' | 'SIGQUIT' | 'SIGKILL'): Promise<void> {
  const children = childPids(postmaster.pid);
  try {
    process.kill(postmaster.pid, signal);
  } catch {
    // Already gone.
  }
  if (!(await waitForExit([postmaster.pid], signal === 'SIGKILL' ? ORPHAN_EXIT_TIMEOUT_MS : STOP_TIMEOUT_MS))) {
    killQuietly(postmaster.pid, 'SIGKILL');
    await waitForExit([postmaster.pid], ORPHAN_EXIT_TIMEOUT_MS);
  }
  // After a SIGKILL the backends are orphans; they exit on postmaster death, but we make sure of it.
  if (!(await waitForExit(children, ORPHAN_EXIT_TIMEOUT_MS))) for (const pid of children) killQuietly(pid, 'SIGKILL');
  livePostmasters.delete(postmaster);
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // ESRCH: it exited meanwhile.
  }
}

/** Shared running state and lifecycle of one cluster (primary or standby). */
class ClusterProcess {
  postmaster: Postmaster | undefined;
  port = 0;

  constructor(
    readonly dataDir: string,
    readonly socketDir: string,
    readonly logFile: string,
  ) {}

  get pid(): number {
    assert.ok(this.postmaster !== undefined, `cluster ${this.dataDir} is not running`);
    return this.postmaster.pid;
  }

  async start(timeoutMs = START_TIMEOUT_MS): Promise<void> {
    assert.ok(this.postmaster === undefined || !isProcessAlive(this.postmaster.pid), 'cluster already running');
    const { postmaster, port } = await startOnFreePort(this.dataDir, this.logFile, timeoutMs);
    this.postmaster = postmaster;
    this.port = port;
  }

  async stop(options: { mode?: 'fast' | 'immediate' } = {}): Promise<void> {
    if (this.postmaster === undefined) return;
    await stopPostmaster(this.postmaster, options.mode === 'immediate' ? 'SIGQUIT' : 'SIGINT');
    this.postmaster = undefined;
  }

  async kill9(): Promise<void> {
    if (this.postmaster === undefined) return;
    await stopPostmaster(this.postmaster, 'SIGKILL');
    this.postmaster = undefined;
  }

  async sql(query: string, db = 'postgres'): Promise<string> {
    const args = ['-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1', '-h', this.socketDir, '-p', String(this.port), '-U', SUPERUSER, '-d', db, '-c', query];
    try {
      return (await runToolOrThrow('psql', args, { timeoutMs: SQL_TIMEOUT_MS })).trim();
    } catch (error) {
      throw new Error(`${(error as Error).message}\nserver log tail:\n${readTail(this.logFile, 1500)}`, { cause: error });
    }
  }

  logTail(): string {
    return readTail(this.logFile);
  }
}

/** Lays out a cluster dir: data/ (0700, the server user's), the socket dir is the cluster dir itself, and the log. */
async function makeClusterDir(prefix: string): Promise<{ root: string; dataDir: string; logFile: string }> {
  const root = await makeTempDir(prefix);
  return { root, dataDir: join(root, 'data'), logFile: join(root, 'postgres.log') };
}

function writeAsServerUser(file: string, text: string, append: boolean): void {
  if (append) appendFileSync(file, text);
  else writeFileSync(file, text, { mode: 0o600 });
  const user = serverUser();
  if (user !== undefined) chownSync(file, user.uid, user.gid);
}

/** initdb + a fast replication-ready configuration + the repl role; the returned cluster is running. */
export async function startPrimary(options: { walSegmentMb?: number; extraConf?: Record<string, string>; password?: string } = {}): Promise<PgCluster> {
  const { root, dataDir, logFile } = await makeClusterDir('walcast-pg-primary');
  const segmentArgs = options.walSegmentMb === undefined ? [] : [`--wal-segsize=${options.walSegmentMb}`];
  await runToolOrThrow('initdb', ['-D', dataDir, '-U', SUPERUSER, '--auth-local=trust', '--auth-host=scram-sha-256', '--no-locale', '-E', 'UTF8', '--no-sync', '--no-instructions', ...segmentArgs], {
    timeoutMs: START_TIMEOUT_MS,
    asServerUser: true,
    cwd: root,
  });
  writeAsServerUser(join(dataDir, 'postgresql.conf'), `\n# walcast test fixture\n${confLines(primaryConf(root, options.extraConf ?? {}))}`, true);
  writeAsServerUser(join(dataDir, 'pg_hba.conf'), hbaConf(options.password === undefined ? 'trust' : 'scram-sha-256'), false);
  const cluster = new ClusterProcess(dataDir, root, logFile);
  await cluster.start();
  const replPassword = options.password ?? REPL_PASSWORD_DEFAULT;
  await cluster.sql(`CREATE ROLE ${REPL_USER} LOGIN REPLICATION PASSWORD '${replPassword.replaceAll("'", "''")}'`);
  return primaryFacade(cluster, replPassword);
}

function primaryFacade(cluster: ClusterProcess, replPassword: string): PgCluster {
  return {
    get port() { return cluster.port; },
    get pid() { return cluster.pid; },
    dataDir: cluster.dataDir,
    walDir: join(cluster.dataDir, 'pg_wal'),
    socketDir: cluster.socketDir,
    logFile: cluster.logFile,
    replPassword,
    sql: (query, db) => cluster.sql(query, db),
    pgbench: (args) => runPgbench(cluster, args),
    stop: (options) => cluster.stop(options),
    kill9: () => cluster.kill9(),
    start: () => cluster.start(),
    logTail: () => cluster.logTail(),
  };
}

/**
 * pg_basebackup of PRIMARY (as repl over 127.0.0.1), configured as a hot standby. With `start: true` it starts
 * streaming from `upstreamPort` (0 or absent: the primary); otherwise call `startWithUpstream(port)` later.
 */
export async function makeStandby(primary: PgCluster, options: StandbyOptions = {}): Promise<StandbyBase> {
  const { root, dataDir, logFile } = await makeClusterDir('walcast-pg-standby');
  const password = primary.replPassword;
  await runToolOrThrow('pg_basebackup', ['-h', '127.0.0.1', '-p', String(primary.port), '-U', REPL_USER, '-D', dataDir, '-X', 'stream', '-c', 'fast', '--no-sync', '-w'], {
    timeoutMs: BASEBACKUP_TIMEOUT_MS,
    asServerUser: true,
    cwd: root,
    env: { PGPASSWORD: password },
  });
  const base = standbyBase(new ClusterProcess(dataDir, root, logFile), root, options);
  if (options.start === true) await base.startWithUpstream(options.upstreamPort === undefined || options.upstreamPort === 0 ? primary.port : options.upstreamPort);
  return base;
}

/**
 * A standby from a copy of a base backup that was never started (a `makeStandby` without `start`): the benchmark
 * takes one pg_basebackup before it produces its WAL range and copies it per run, so every run replays the same
 * range from the same starting point, and a run costs a file copy instead of a base backup.
 */
export async function copyStandby(template: StandbyBase, options: StandbyOptions = {}): Promise<StandbyBase> {
  assert.ok(template.standby === undefined, 'the template base backup must never have been started');
  const { root, dataDir, logFile } = await makeClusterDir('walcast-pg-standby-copy');
  // cp -a keeps modes and (as root) the postgres user's ownership; the template is a stopped cluster.
  execFileSync('cp', ['-a', template.dataDir, dataDir]);
  for (const stale of ['postmaster.pid', 'postmaster.opts']) rmSync(join(dataDir, stale), { force: true });
  const base = standbyBase(new ClusterProcess(dataDir, root, logFile), root, options);
  if (options.start === true) {
    assert.ok(options.upstreamPort !== undefined && options.upstreamPort > 0, 'copyStandby({ start: true }) needs an upstreamPort');
    await base.startWithUpstream(options.upstreamPort);
  }
  return base;
}

function standbyBase(cluster: ClusterProcess, root: string, options: StandbyOptions): StandbyBase {
  const dataDir = cluster.dataDir;
  let standby: PgStandby | undefined;
  const base: StandbyBase = {
    dataDir,
    get standby() { return standby; },
    async startWithUpstream(port, startOptions = {}) {
      configureStandby(cluster, root, { ...options, upstreamPort: port, conninfoExtra: startOptions.conninfo }, startOptions.password);
      await cluster.start();
      standby = standbyFacade(cluster);
      return standby;
    },
  };
  return base;
}

/** primary_conninfo and friends; appended, so a later call (a new upstream) overrides an earlier one. */
function configureStandby(cluster: ClusterProcess, root: string, options: StandbyOptions & { upstreamPort: number; conninfoExtra?: string | undefined }, password: string | undefined): void {
  assert.ok(options.upstreamPort > 0, 'a standby needs an upstream port');
  let conninfo = `host=127.0.0.1 port=${options.upstreamPort} user=${REPL_USER} application_name=${options.applicationName ?? 'standby'}`;
  if (options.conninfoExtra !== undefined) conninfo += ` ${options.conninfoExtra}`;
  if (password !== undefined) {
    const passfile = join(root, 'pgpass');
    writeAsServerUser(passfile, `127.0.0.1:${options.upstreamPort}:*:${REPL_USER}:${password.replaceAll('\\', '\\\\').replaceAll(':', '\\:')}\n`, false);
    conninfo += ` passfile=${passfile}`;
  }
  const settings = {
    unix_socket_directories: root,
    primary_conninfo: conninfo,
    hot_standby: 'on',
    hot_standby_feedback: options.hotStandbyFeedback === true ? 'on' : 'off',
    // Short intervals so tests see reconnects and feedback quickly (defaults: 60 s, 5 s, 10 s).
    wal_receiver_timeout: '30s',
    wal_retrieve_retry_interval: '1s',
    wal_receiver_status_interval: '1s',
    ...options.extraConf,
  };
  writeAsServerUser(join(cluster.dataDir, 'postgresql.conf'), `\n# walcast test fixture: standby\n${confLines(settings)}`, true);
  writeAsServerUser(join(cluster.dataDir, 'standby.signal'), '', false);
}

function standbyFacade(cluster: ClusterProcess): PgStandby {
  return {
    get port() { return cluster.port; },
    get pid() { return cluster.pid; },
    dataDir: cluster.dataDir,
    logFile: cluster.logFile,
    sql: (query, db) => cluster.sql(query, db),
    pgbench: (args) => runPgbench(cluster, args),
    stop: (options) => cluster.stop(options),
    kill9: () => cluster.kill9(),
    logTail: () => cluster.logTail(),
  };
}

function runPgbench(cluster: ClusterProcess, args: readonly string[]): Promise<string> {
  return runToolOrThrow('pgbench', ['-h', cluster.socketDir, '-p', String(cluster.port), '-U', SUPERUSER, ...args, 'postgres'], { timeoutMs: PGBENCH_TIMEOUT_MS });
}

/** pg_receivewal as repl from 127.0.0.1:PORT into DIR until ENDPOS; killed after timeoutMs (then code is null). */
export async function runReceiveWal(options: { port: number; dir: string; endpos: string; slot?: string; extraArgs?: readonly string[]; timeoutMs?: number; password?: string }): Promise<ReceiveWalResult> {
  const slot = options.slot === undefined ? [] : ['-S', options.slot];
  const args = ['-h', '127.0.0.1', '-p', String(options.port), '-U', REPL_USER, '-D', options.dir, '--endpos', options.endpos, '-n', '--no-sync', '-v', '-w', ...slot, ...(options.extraArgs ?? [])];
  return runTool('pg_receivewal', args, {
    timeoutMs: options.timeoutMs ?? RECEIVEWAL_TIMEOUT_MS,
    cwd: options.dir,
    env: options.password === undefined ? {} : { PGPASSWORD: options.password },
  });
}

/** Runs psql with a connection string (as whoever runs the tests) and returns its exit code and output. */
export function runPsql(conninfo: string, command: string): Promise<ReceiveWalResult> {
  return runTool('psql', ['-X', '-A', '-t', '-d', conninfo, '-c', command], { timeoutMs: SQL_TIMEOUT_MS });
}

/**
 * Runs psql (as the postgres OS user, so client keys it owns are usable) with a full connection string, for tests of
 * what a libpq client sees: sslmode, channel_binding, client certificates. Never throws on a failed connection.
 */
export async function runPsqlAsServerUser(conninfo: string, sql: string, options: { password?: string; timeoutMs?: number } = {}): Promise<ReceiveWalResult> {
  return runTool('psql', ['-X', '-At', '-w', '-d', conninfo, '-c', sql], {
    timeoutMs: options.timeoutMs ?? SQL_TIMEOUT_MS,
    asServerUser: true,
    // libpq looks for ~/.postgresql/postgresql.crt; root's home is not the postgres user's to read.
    env: { HOME: tempBase(), ...(options.password === undefined ? {} : { PGPASSWORD: options.password }) },
  });
}

/** Synchronous clean-up for process exit: immediate shutdown of every postmaster we started, then temp dirs. */
function cleanUpSync(): void {
  const pids = [...livePostmasters].map((postmaster) => postmaster.pid).filter(isProcessAlive);
  for (const pid of pids) killQuietly(pid, 'SIGQUIT');
  const deadline = Date.now() + EXIT_STOP_WAIT_MS;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  while (pids.some(isProcessAlive) && Date.now() < deadline) Atomics.wait(pause, 0, 0, POLL_INTERVAL_MS);
  for (const pid of pids.filter(isProcessAlive)) killQuietly(pid, 'SIGKILL');
  livePostmasters.clear();
  if (process.env.WALCAST_KEEP_TMP === '1') return;
  for (const dir of tempDirs) if (existsSync(dir)) rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
  tempDirs.clear();
}

process.once('exit', cleanUpSync);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  const onSignal = (): void => {
    cleanUpSync();
    // Only re-raise when nobody else (node:test's own handler) will end the process.
    if (process.listenerCount(signal) === 1) {
      process.removeListener(signal, onSignal);
      process.kill(process.pid, signal);
    }
  };
  process.on(signal, onSignal);
}
