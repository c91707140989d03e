/**
 * Creating a timeline that follows an upstream (`walcast timeline create --upstream ...`): ask the upstream what it
 * is (IDENTIFY_SYSTEM, SHOW wal_segment_size, TIMELINE_HISTORY for every timeline > 1, so walcast can answer a
 * standby exactly as the primary would), reserve its WAL with a physical slot, and lay out the timeline directory
 * with its history files and a control file that records the upstream. `walcast serve` does the following.
 *
 * The directory is built under a temporary name and renamed into place, so a failed create leaves no timeline.
 */
import assert from 'node:assert/strict';
import { mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { SqlState, WalcastError } from '../errors.js';
import type { Logger } from '../log.js';
import { alignDown, formatLsn, type Lsn } from '../lsn.js';
import { CONTROL_FORMAT_VERSION, PG_VERSION_NUM_15, fsyncDirectory, writeControlFile } from '../storage/control-file.js';
import { assertSegmentSize, historyFileName } from '../storage/segment-name.js';
import { assertValidId, ensureTenantDir, newId, timelineDirPath } from '../storage/timeline-dir.js';
import { ServerError, connectReplication } from '../wire/client.js';
import { formatConnInfo, parseConnInfo, type UpstreamConnInfo } from './conninfo.js';
import { connectFirstMatching } from './upstream-connect.js';
import { parseIdentifySystem, upstreamConnectTimeoutMs, upstreamSlotName, type UpstreamClient, type UpstreamConnect } from './follower.js';

/** SQLSTATEs the slot step tolerates: the slot exists already (a re-create), or the upstream has no slots (walcast). */
/** History files are a line per ancestor timeline; a bigger answer is not a history file. */
const HISTORY_FILE_BYTES_MAX = 1024 * 1024;

export interface CreateTimelineOptions {
  readonly dataDir: string;
  /** libpq-style connection string, without a password. */
  readonly upstream: string;
  readonly password: string | undefined;
  readonly tenantId?: string | undefined;
  readonly timelineId?: string | undefined;
  /** Where to start; rounded down to a segment start. Default: the start of the upstream's current segment. */
  readonly startLsn?: Lsn | undefined;
  readonly log: Logger;
  readonly connect?: UpstreamConnect;
}

export interface CreateTimelineResult {
  readonly tenantId: string;
  readonly timelineId: string;
  readonly dir: string;
  readonly systemId: bigint;
  readonly pgTimelineId: number;
  readonly segmentBytes: number;
  readonly startLsn: Lsn;
  /** The upstream slot reserving WAL, or undefined when the upstream refuses slots. */
  readonly slotName: string | undefined;
  readonly historyFiles: readonly string[];
  readonly upstream: string;
}

interface UpstreamFacts {
  readonly systemId: bigint;
  readonly pgTimelineId: number;
  readonly xlogPos: Lsn;
  readonly segmentBytes: number;
  readonly pgVersion: number;
  readonly histories: ReadonlyMap<string, string>;
}

export async function createFollowingTimeline(options: CreateTimelineOptions): Promise<CreateTimelineResult> {
  const conninfo = parseConnInfo(options.upstream, userInfo().username);
  if (conninfo instanceof WalcastError) throw conninfo;
  const tenantId = options.tenantId ?? newId();
  const timelineId = options.timelineId ?? newId();
  assertValidId(tenantId, 'tenant id');
  assertValidId(timelineId, 'timeline id');
  const dir = timelineDirPath(options.dataDir, tenantId, timelineId);
  if (await exists(dir)) throw new WalcastError('WALCAST_ERR_TIMELINE_EXISTS', `timeline ${tenantId}/${timelineId} already exists in ${options.dataDir}`);
  const client = await connectUpstream(options, conninfo);
  let facts: UpstreamFacts;
  let slot: SlotOutcome;
  let startLsn: Lsn;
  try {
    facts = await readUpstreamFacts(client);
    startLsn = chooseStart(options.startLsn, facts);
    slot = await createSlot(client, upstreamSlotName(timelineId), options.log);
    try {
      await layOutTimeline({ dataDir: options.dataDir, tenantId, timelineId, dir, facts, startLsn, upstream: formatConnInfo(conninfo) });
    } catch (error) {
      // A slot nobody follows would hold the upstream's WAL forever: take back the one this call made.
      if (slot.created) await client.query(`DROP_REPLICATION_SLOT "${slot.name}"`).catch(() => undefined);
      throw error;
    }
  } finally {
    await client.end().catch(() => undefined);
  }
  const slotName = slot.name;
  options.log.info({ tenantId, timelineId, startLsn: formatLsn(startLsn), pgTimelineId: facts.pgTimelineId, slot: slotName ?? null }, 'timeline created');
  return {
    tenantId,
    timelineId,
    dir,
    systemId: facts.systemId,
    pgTimelineId: facts.pgTimelineId,
    segmentBytes: facts.segmentBytes,
    startLsn,
    slotName,
    historyFiles: [...facts.histories.keys()],
    upstream: formatConnInfo(conninfo),
  };
}

/** The first host of the connection string that accepts and matches target_session_attrs, as ingest connects. */
async function connectUpstream(options: CreateTimelineOptions, conninfo: UpstreamConnInfo): Promise<UpstreamClient> {
  try {
    const { client } = await connectFirstMatching({
      conninfo,
      password: options.password,
      timeoutMs: upstreamConnectTimeoutMs(conninfo),
      connect: options.connect ?? connectReplication,
    });
    return client;
  } catch (cause) {
    throw new WalcastError('WALCAST_ERR_UPSTREAM', `cannot connect to the upstream: ${(cause as Error).message}`, { cause });
  }
}

async function readUpstreamFacts(client: UpstreamClient): Promise<UpstreamFacts> {
  const identity = parseIdentifySystem(await upstreamQuery(client, 'IDENTIFY_SYSTEM'));
  const segmentBytes = parseSegmentSizeSetting((await upstreamQuery(client, 'SHOW wal_segment_size')).rows[0]?.[0] ?? null);
  const histories = new Map<string, string>();
  // walreceiver.c WalRcvFetchTimeLineHistoryFiles fetches every missing history 2..TLI; the newest one lists all
  // ancestors, the older ones let a standby that asks for them get them too.
  for (let pgTimelineId = 2; pgTimelineId <= identity.pgTimelineId; pgTimelineId++) {
    const result = await upstreamQuery(client, `TIMELINE_HISTORY ${pgTimelineId}`);
    const [fileName, content] = result.rows[0] ?? [];
    if (fileName !== historyFileName(pgTimelineId) || content == null || content.length > HISTORY_FILE_BYTES_MAX) {
      throw new WalcastError('WALCAST_ERR_UPSTREAM', `the upstream's TIMELINE_HISTORY ${pgTimelineId} answer is malformed`);
    }
    histories.set(fileName, content);
  }
  return { ...identity, segmentBytes, pgVersion: parseServerVersion(client.parameters.get('server_version')), histories };
}

async function upstreamQuery(client: UpstreamClient, sql: string): Promise<Awaited<ReturnType<UpstreamClient['query']>>> {
  try {
    return await client.query(sql);
  } catch (cause) {
    const sqlState = cause instanceof ServerError ? ` (SQLSTATE ${cause.sqlState})` : '';
    throw new WalcastError('WALCAST_ERR_UPSTREAM', `the upstream refused ${sql}: ${(cause as Error).message}${sqlState}`, { cause });
  }
}

interface SlotOutcome {
  /** The slot reserving WAL upstream, or undefined when the upstream has no slots. */
  readonly name: string | undefined;
  /** Whether this call created it (and so may drop it again on failure). */
  readonly created: boolean;
}

/** CREATE_REPLICATION_SLOT ... PHYSICAL RESERVE_WAL; an existing slot is reused, a slotless upstream is logged. */
async function createSlot(client: UpstreamClient, slotName: string, log: Logger): Promise<SlotOutcome> {
  try {
    await client.query(`CREATE_REPLICATION_SLOT "${slotName}" PHYSICAL RESERVE_WAL`);
    return { name: slotName, created: true };
  } catch (error) {
    if (error instanceof ServerError && error.sqlState === SqlState.duplicateObject) {
      log.info({ slot: slotName }, 'the upstream slot exists already: reusing it');
      return { name: slotName, created: false };
    }
    if (error instanceof ServerError && error.sqlState === SqlState.featureNotSupported) {
      log.warn({ slot: slotName, reason: error.message }, 'the upstream does not support replication slots: following without one');
      return { name: undefined, created: false };
    }
    throw new WalcastError('WALCAST_ERR_UPSTREAM', `the upstream refused CREATE_REPLICATION_SLOT: ${(error as Error).message}`, { cause: error });
  }
}

function chooseStart(requested: Lsn | undefined, facts: UpstreamFacts): Lsn {
  const startLsn = alignDown(requested ?? facts.xlogPos, facts.segmentBytes);
  if (startLsn > facts.xlogPos) {
    throw new WalcastError('WALCAST_ERR_CONFIG', `--start-lsn ${formatLsn(startLsn)} is ahead of the upstream's WAL position ${formatLsn(facts.xlogPos)}`);
  }
  return startLsn;
}

async function layOutTimeline(input: { dataDir: string; tenantId: string; timelineId: string; dir: string; facts: UpstreamFacts; startLsn: Lsn; upstream: string }): Promise<void> {
  const tenantDir = await ensureTenantDir(input.dataDir, input.tenantId);
  const tempDir = join(tenantDir, `.create-${input.timelineId}.tmp`);
  await rm(tempDir, { recursive: true, force: true });
  await mkdir(tempDir, { mode: 0o700 });
  try {
    for (const [fileName, content] of input.facts.histories) await writeFile(join(tempDir, fileName), content, { mode: 0o600, flush: true });
    await writeControlFile(tempDir, {
      formatVersion: CONTROL_FORMAT_VERSION,
      tenantId: input.tenantId,
      timelineId: input.timelineId,
      systemId: input.facts.systemId,
      pgVersion: input.facts.pgVersion,
      segmentBytes: input.facts.segmentBytes,
      pgTimelineId: input.facts.pgTimelineId,
      timelineStartLsn: input.startLsn,
      flushLsn: input.startLsn,
      commitLsn: input.startLsn,
      upstream: input.upstream,
      createdAt: new Date().toISOString(),
    });
    await rename(tempDir, input.dir);
    await fsyncDirectory(tenantDir);
  } catch (error) {
    await rm(tempDir, { recursive: true, force: true });
    throw error;
  }
}

/** SHOW wal_segment_size: "16MB" (guc.c prints the unit; pg_receivewal parses "%d%2s" with MB/GB). */
export function parseSegmentSizeSetting(text: string | null): number {
  const match = /^(\d+)\s*(kB|MB|GB)$/.exec(text ?? '');
  const unitBytes = { kB: 1024, MB: 1024 * 1024, GB: 1024 * 1024 * 1024 } as const;
  if (match === null) throw new WalcastError('WALCAST_ERR_SEGMENT_SIZE', `the upstream's wal_segment_size "${text}" is not understood`);
  const bytes = Number(match[1]) * unitBytes[match[2] as keyof typeof unitBytes];
  assertSegmentSize(bytes);
  return bytes;
}

/** "15.18 (Debian 15.18-1)" → 150018 (PG_VERSION_NUM); walcast reads only PostgreSQL 15 WAL. */
export function parseServerVersion(text: string | undefined): number {
  const match = /^(\d+)\.(\d+)/.exec(text ?? '');
  if (match === null) return PG_VERSION_NUM_15;
  const version = Number(match[1]) * 10_000 + Number(match[2]);
  assert.ok(Number.isSafeInteger(version));
  if (Math.floor(version / 10_000) !== 15) {
    throw new WalcastError('WALCAST_ERR_UPSTREAM', `the upstream runs PostgreSQL ${text}; walcast stores only PostgreSQL 15 WAL`);
  }
  return version;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
