/**
 * `walcast import`: creates or extends a timeline from a PostgreSQL pg_wal or WAL archive directory.
 *
 * Order of work, so that a failure never leaves something that looks valid: pick the segment files of the
 * highest PostgreSQL timeline, check sizes, system id and segment size from the long page headers, walk and
 * validate every record to find the end of valid WAL, copy the segments up to that end (the last one as
 * NAME.partial with the bytes past the end zeroed), fsync, record each copied segment's page checksums (its
 * `NAME.crc` sidecar, page-checksums.ts: the send path verifies every page against it), and write the control file LAST. A new timeline is
 * built in a temp directory and renamed into place; an existing one gets new segment files renamed in, then
 * its control file rewritten.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, open, readFile, readdir, rename, rm, stat, truncate, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { WalcastError } from '../errors.js';
import { WAL_PAGE_BYTES, formatLsn, type Lsn } from '../lsn.js';
import { sidecarPathFor, writeSidecarFromSegment } from './page-checksums.js';
import { CONTROL_FORMAT_VERSION, PG_VERSION_NUM_15, fsyncDirectory, readControlFile, writeControlFile, type ControlState } from './control-file.js';
import {
  PARTIAL_SUFFIX,
  assertSegmentSize,
  isSegmentFileName,
  offsetInSegment,
  parseHistoryFileName,
  parseSegmentFileName,
  segmentFileName,
  segmentOf,
  segmentStartLsn,
} from './segment-name.js';
import { FileSegmentSource } from './segment-source.js';
import { assertValidId, ensureTenantDir, newId, timelineDirPath } from './timeline-dir.js';
import { LONG_PAGE_HEADER_BYTES, XLOG_PAGE_MAGIC, checkPage, decodePageHeader } from './wal-page.js';
import { walkWal, type WalkResult } from './wal-validate.js';

export interface ImportOptions {
  readonly dataDir: string;
  readonly fromDir: string;
  readonly tenantId?: string;
  readonly timelineId?: string;
}

export interface ImportResult {
  readonly tenantId: string;
  readonly timelineId: string;
  /** The timeline's first byte (a segment start). */
  readonly startLsn: Lsn;
  /** The end of valid WAL: the timeline's flush and commit LSN. */
  readonly endLsn: Lsn;
  /** Segment files written by this import. */
  readonly segmentCount: number;
  /** True when the timeline was created, false when extended. */
  readonly created: boolean;
}

/** One segment file of the source directory, after selection. */
interface SourceSegment {
  readonly segno: bigint;
  readonly path: string;
}

/** What the source directory holds, checked. */
interface SourceWal {
  readonly segmentBytes: number;
  readonly pgTimelineId: number;
  readonly systemId: bigint;
  /** Sorted by segno; only the highest PostgreSQL timeline. */
  readonly segments: readonly SourceSegment[];
  readonly historyPaths: readonly string[];
}

/** A walked source: the validated range [startLsn, endLsn). */
interface ValidatedWal extends SourceWal {
  readonly startLsn: Lsn;
  readonly endLsn: Lsn;
  readonly lastRecordLsn: Lsn | undefined;
}

/** The temp directory suffix of a timeline being built; listTimelineDirs ignores it (not a 32-hex name). */
const BUILD_DIR_PREFIX = '.import-';
const SEGMENT_TEMP_SUFFIX = '.import-tmp';

export async function importWal(options: ImportOptions): Promise<ImportResult> {
  if (options.tenantId !== undefined) assertValidId(options.tenantId, 'tenant id');
  if (options.timelineId !== undefined) assertValidId(options.timelineId, 'timeline id');
  const source = await scanSource(options.fromDir);
  const tenantId = options.tenantId ?? newId();
  const timelineId = options.timelineId ?? newId();
  const dir = timelineDirPath(options.dataDir, tenantId, timelineId);
  if (await exists(dir)) return extendTimeline(dir, source, tenantId, timelineId);
  const wal = await createTimeline(options.dataDir, source, tenantId, timelineId);
  const segmentCount = countSegments(wal.startLsn, wal.endLsn, wal.segmentBytes);
  return { tenantId, timelineId, startLsn: wal.startLsn, endLsn: wal.endLsn, segmentCount, created: true };
}

/** Lists, selects and checks the source's segment files (sizes, segment size, system id). */
async function scanSource(fromDir: string): Promise<SourceWal> {
  let names: string[];
  try {
    names = (await readdir(fromDir)).sort();
  } catch (error) {
    throw new WalcastError('WALCAST_ERR_NOTHING_TO_IMPORT', `cannot read import directory ${fromDir}: ${(error as Error).message}`, { cause: error });
  }
  const candidates = await nonEmptySegmentNames(fromDir, names);
  if (candidates.length === 0) throw new WalcastError('WALCAST_ERR_NOTHING_TO_IMPORT', `no WAL segment files in ${fromDir}`);
  const first = await readLongHeader(join(fromDir, candidates[0] ?? ''));
  const segmentBytes = first.segmentBytes;
  assertSegmentSize(segmentBytes);
  const segments = selectHighestTimeline(fromDir, candidates, segmentBytes);
  for (const segment of segments.list) await checkSegmentFile(segment.path, segmentBytes, first.systemId);
  const historyPaths = names.filter((name) => parseHistoryFileName(name) !== undefined).map((name) => join(fromDir, name));
  return { segmentBytes, pgTimelineId: segments.pgTimelineId, systemId: first.systemId, segments: segments.list, historyPaths };
}

/** Segment names (24 hex, or .partial), skipping empty .partial files (pg_receivewal's start marker). */
async function nonEmptySegmentNames(fromDir: string, names: readonly string[]): Promise<string[]> {
  const found: string[] = [];
  for (const name of names) {
    if (!isSegmentFileName(name)) continue;
    if (name.endsWith(PARTIAL_SUFFIX) && (await stat(join(fromDir, name))).size === 0) continue;
    found.push(name);
  }
  return found;
}

/** The first page's long header, which must be valid WAL: it tells the segment size and system id. */
async function readLongHeader(path: string): Promise<{ segmentBytes: number; systemId: bigint }> {
  const page = await readHead(path, LONG_PAGE_HEADER_BYTES);
  const decoded = decodePageHeader(page);
  if (!decoded.ok || decoded.header.magic !== XLOG_PAGE_MAGIC || decoded.header.long === undefined) {
    const why = decoded.ok ? `magic ${decoded.header.magic.toString(16)}, info ${decoded.header.info.toString(16)}` : decoded.reason;
    throw new WalcastError('WALCAST_ERR_WAL_INVALID', `${path} does not start with a PostgreSQL 15 WAL long page header (${why})`);
  }
  const { segmentBytes, systemId } = decoded.header.long;
  return { segmentBytes, systemId };
}

async function readHead(path: string, bytes: number): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const target = Buffer.alloc(bytes);
    const { bytesRead } = await handle.read(target, 0, bytes, 0);
    return target.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** Keeps the files of the highest PostgreSQL timeline, one per segment (a complete file beats a .partial). */
function selectHighestTimeline(fromDir: string, names: readonly string[], segmentBytes: number): { pgTimelineId: number; list: SourceSegment[] } {
  const parsed = names.map((name) => {
    const partial = name.endsWith(PARTIAL_SUFFIX);
    const result = parseSegmentFileName(partial ? name.slice(0, -PARTIAL_SUFFIX.length) : name, segmentBytes);
    if (result === undefined) {
      throw new WalcastError('WALCAST_ERR_SEGMENT_SIZE', `segment file name ${name} is impossible with the segment size ${segmentBytes} of the first file`);
    }
    return { ...result, partial, path: join(fromDir, name) };
  });
  const pgTimelineId = Math.max(...parsed.map((entry) => entry.pgTimelineId));
  const bySegno = new Map<bigint, { segno: bigint; path: string; partial: boolean }>();
  for (const entry of parsed) {
    if (entry.pgTimelineId !== pgTimelineId) continue;
    const existing = bySegno.get(entry.segno);
    if (existing === undefined || existing.partial) bySegno.set(entry.segno, entry);
  }
  const list = [...bySegno.values()].sort((a, b) => (a.segno < b.segno ? -1 : 1)).map(({ segno, path }) => ({ segno, path }));
  assert.ok(list.length > 0, 'the highest timeline has at least one segment');
  return { pgTimelineId, list };
}

/** Every file is one segment long; any long header it carries names the same system and segment size. */
async function checkSegmentFile(path: string, segmentBytes: number, systemId: bigint): Promise<void> {
  const size = (await stat(path)).size;
  if (size !== segmentBytes) throw new WalcastError('WALCAST_ERR_SEGMENT_SIZE', `${path} is ${size} bytes, not the segment size ${segmentBytes}`);
  const decoded = decodePageHeader(await readHead(path, LONG_PAGE_HEADER_BYTES));
  // A file whose first page is not WAL (zeroed, preallocated) can only lie past the end; the walk decides.
  if (!decoded.ok || decoded.header.magic !== XLOG_PAGE_MAGIC || decoded.header.long === undefined) return;
  if (decoded.header.long.systemId !== systemId) {
    throw new WalcastError(
      'WALCAST_ERR_SYSTEM_ID_MISMATCH',
      `${path} is from database system ${decoded.header.long.systemId}, but the first segment is from ${systemId}`,
    );
  }
  if (decoded.header.long.segmentBytes !== segmentBytes) {
    throw new WalcastError('WALCAST_ERR_SEGMENT_SIZE', `${path} says segment size ${decoded.header.long.segmentBytes}, the first segment ${segmentBytes}`);
  }
}

/** Walks the source from segment `fromSegno` and turns a missing segment before real WAL into WAL_GAP. */
async function validateSource(source: SourceWal, fromSegno: bigint, onSegmentPassed?: (segno: bigint) => void): Promise<ValidatedWal> {
  const { segmentBytes, pgTimelineId } = source;
  const paths = new Map(source.segments.map((segment) => [segment.segno, segment.path]));
  if (!paths.has(fromSegno)) throw gapError(pgTimelineId, fromSegno, segmentBytes);
  const reader = new FileSegmentSource((segno) => {
    const path = paths.get(segno);
    return path === undefined ? [] : [path];
  });
  const startLsn = segmentStartLsn(fromSegno, segmentBytes);
  let walk: WalkResult;
  try {
    walk = await walkWal({ source: reader, segmentBytes, startLsn, systemId: source.systemId, onSegmentPassed });
  } finally {
    await reader.close();
  }
  if (walk.stopKind === 'missing-segment' && walk.missingSegno !== undefined) {
    if (await hasRealWalAfter(source, walk.missingSegno)) throw gapError(pgTimelineId, walk.missingSegno, segmentBytes);
  }
  if (walk.lastRecordLsn === undefined) {
    throw new WalcastError('WALCAST_ERR_WAL_INVALID', `no valid WAL record from ${formatLsn(startLsn)}: ${walk.stopReason}`);
  }
  return { ...source, startLsn, endLsn: walk.endLsn, lastRecordLsn: walk.lastRecordLsn };
}

function gapError(pgTimelineId: number, segno: bigint, segmentBytes: number): WalcastError {
  return new WalcastError('WALCAST_ERR_WAL_GAP', `WAL segment ${segmentFileName(pgTimelineId, segno, segmentBytes)} is missing from the import directory`);
}

/** True when a segment after `segno` starts with a page written for its own position (not a recycled file). */
async function hasRealWalAfter(source: SourceWal, segno: bigint): Promise<boolean> {
  for (const segment of source.segments) {
    if (segment.segno <= segno) continue;
    const head = await readHead(segment.path, WAL_PAGE_BYTES);
    const pageLsn = segmentStartLsn(segment.segno, source.segmentBytes);
    if (checkPage(head, 0, { pageLsn, segmentBytes: source.segmentBytes, systemId: source.systemId }).ok) return true;
  }
  return false;
}

/** Segments holding bytes of [startLsn, endLsn). */
function countSegments(startLsn: Lsn, endLsn: Lsn, segmentBytes: number): number {
  if (endLsn <= startLsn) return 0;
  return Number(segmentOf(endLsn - 1n, segmentBytes) - segmentOf(startLsn, segmentBytes)) + 1;
}

/**
 * Builds the timeline in a temp directory next to its final place, then renames it in. Segments are copied while
 * the walk goes on (each once the walk has passed it), so disk writes overlap the CPU-bound validation.
 */
async function createTimeline(dataDir: string, source: SourceWal, tenantId: string, timelineId: string): Promise<ValidatedWal> {
  const tenantDir = await ensureTenantDir(dataDir, tenantId);
  const buildDir = join(tenantDir, `${BUILD_DIR_PREFIX}${timelineId}-${process.pid}`);
  await rm(buildDir, { recursive: true, force: true });
  await mkdir(buildDir, { mode: 0o700 });
  const copier = new SegmentCopier(source, buildDir);
  try {
    const wal = await validateSource(source, source.segments[0]?.segno ?? 0n, (segno) => copier.enqueue(segno));
    await copier.drain();
    await finishCopiedSegments(wal, buildDir, copier.copied);
    await writeSidecars(wal, segmentOf(wal.startLsn, wal.segmentBytes), buildDir);
    await copyHistoryFiles(wal.historyPaths, buildDir);
    await writeControlFile(buildDir, controlFor(wal, tenantId, timelineId, wal.startLsn, new Date().toISOString()));
    await rename(buildDir, join(tenantDir, timelineId));
    await fsyncDirectory(tenantDir);
    return wal;
  } catch (error) {
    await copier.drain().catch(() => undefined);
    await rm(buildDir, { recursive: true, force: true });
    throw error;
  }
}

/** Copies segments into a build directory one at a time, in the background, in the order they are queued. */
class SegmentCopier {
  readonly copied = new Set<bigint>();
  private chain: Promise<void> = Promise.resolve();
  private failure: { readonly error: unknown } | undefined;
  private readonly paths: Map<bigint, string>;

  constructor(
    private readonly source: SourceWal,
    private readonly targetDir: string,
  ) {
    this.paths = new Map(source.segments.map((segment) => [segment.segno, segment.path]));
  }

  enqueue(segno: bigint): void {
    const sourcePath = this.paths.get(segno);
    assert.ok(sourcePath !== undefined, 'the walk only passes segments it read');
    const name = segmentFileName(this.source.pgTimelineId, segno, this.source.segmentBytes);
    // Errors are kept, not left in the chain: a rejection nobody awaits yet would be an unhandled rejection.
    this.chain = this.chain
      .then(async () => {
        if (this.failure !== undefined) return;
        await copyFile(sourcePath, join(this.targetDir, name));
        await fsyncFile(join(this.targetDir, name));
        this.copied.add(segno);
      })
      .catch((error: unknown) => {
        this.failure ??= { error };
      });
  }

  /** Waits for every queued copy; rejects with the first copy error. */
  async drain(): Promise<void> {
    await this.chain;
    if (this.failure !== undefined) throw this.failure.error;
  }
}

/**
 * After the walk: copies the segments not copied yet, turns the one holding the end into NAME.partial with its
 * tail zeroed, and removes copies that turned out to lie entirely past the end.
 */
async function finishCopiedSegments(wal: ValidatedWal, dir: string, copied: ReadonlySet<bigint>): Promise<void> {
  const { segmentBytes, pgTimelineId } = wal;
  const paths = new Map(wal.segments.map((segment) => [segment.segno, segment.path]));
  for (let segno = segmentOf(wal.startLsn, segmentBytes); segmentStartLsn(segno, segmentBytes) < wal.endLsn; segno++) {
    const name = segmentFileName(pgTimelineId, segno, segmentBytes);
    const complete = segmentStartLsn(segno + 1n, segmentBytes) <= wal.endLsn;
    if (complete && copied.has(segno)) continue;
    const sourcePath = paths.get(segno);
    assert.ok(sourcePath !== undefined, 'every segment up to the validated end exists');
    if (!copied.has(segno)) await copyFile(sourcePath, join(dir, name));
    if (!complete) {
      await zeroTail(join(dir, name), offsetInSegment(wal.endLsn, segmentBytes), segmentBytes);
      await rename(join(dir, name), join(dir, name + PARTIAL_SUFFIX));
    }
    await fsyncFile(join(dir, complete ? name : name + PARTIAL_SUFFIX));
  }
  for (const segno of copied) {
    if (segmentStartLsn(segno, segmentBytes) >= wal.endLsn) await unlink(join(dir, segmentFileName(pgTimelineId, segno, segmentBytes)));
  }
  await fsyncDirectory(dir);
}

function controlFor(wal: ValidatedWal, tenantId: string, timelineId: string, timelineStartLsn: Lsn, createdAt: string): ControlState {
  return {
    formatVersion: CONTROL_FORMAT_VERSION,
    tenantId,
    timelineId,
    systemId: wal.systemId,
    pgVersion: PG_VERSION_NUM_15,
    segmentBytes: wal.segmentBytes,
    pgTimelineId: wal.pgTimelineId,
    timelineStartLsn,
    flushLsn: wal.endLsn,
    commitLsn: wal.endLsn,
    lastRecordLsn: wal.lastRecordLsn,
    createdAt,
  };
}

/**
 * Copies segments [fromSegno, segment of endLsn] into `targetDir`: complete ones under NAME, the one holding the
 * end as NAME.partial with everything past the end zeroed. Each lands under a temp name, fsynced, then renamed.
 */
async function copySegments(wal: ValidatedWal, fromSegno: bigint, targetDir: string): Promise<number> {
  const { segmentBytes, pgTimelineId } = wal;
  const paths = new Map(wal.segments.map((segment) => [segment.segno, segment.path]));
  let copied = 0;
  for (let segno = fromSegno; segmentStartLsn(segno, segmentBytes) < wal.endLsn; segno++) {
    const sourcePath = paths.get(segno);
    assert.ok(sourcePath !== undefined, 'every segment up to the validated end exists');
    const segmentEnd = segmentStartLsn(segno + 1n, segmentBytes);
    const complete = segmentEnd <= wal.endLsn;
    const name = segmentFileName(pgTimelineId, segno, segmentBytes);
    const tempPath = join(targetDir, name + SEGMENT_TEMP_SUFFIX);
    await copyFile(sourcePath, tempPath);
    if (!complete) await zeroTail(tempPath, offsetInSegment(wal.endLsn, segmentBytes), segmentBytes);
    await fsyncFile(tempPath);
    await rename(tempPath, join(targetDir, complete ? name : name + PARTIAL_SUFFIX));
    // A stale partial of a segment that is now complete must not shadow it (readers try NAME.partial first).
    if (complete) await unlink(join(targetDir, name + PARTIAL_SUFFIX)).catch(ignoreMissing);
    copied += 1;
  }
  await fsyncDirectory(targetDir);
  return copied;
}

/**
 * Records page checksums for segments [fromSegno, segment of endLsn] as copied: every page of a complete segment;
 * of the last one, the pages up to the end, the partial last page with its zeroed tail (a writer resuming there
 * cuts that entry off). Checksummed from the copies just fsynced, after the walk validated their records.
 */
async function writeSidecars(wal: ValidatedWal, fromSegno: bigint, dir: string): Promise<void> {
  const { segmentBytes, pgTimelineId } = wal;
  for (let segno = fromSegno; segmentStartLsn(segno, segmentBytes) < wal.endLsn; segno++) {
    const name = segmentFileName(pgTimelineId, segno, segmentBytes);
    const complete = segmentStartLsn(segno + 1n, segmentBytes) <= wal.endLsn;
    const pages = complete ? segmentBytes / WAL_PAGE_BYTES : Math.ceil(offsetInSegment(wal.endLsn, segmentBytes) / WAL_PAGE_BYTES);
    writeSidecarFromSegment(join(dir, complete ? name : name + PARTIAL_SUFFIX), sidecarPathFor(dir, name), pages);
  }
  await fsyncDirectory(dir);
}

/** Cutting the file to the end and growing it back zero-fills the tail without writing it (sparse). */
async function zeroTail(path: string, endOffset: number, segmentBytes: number): Promise<void> {
  assert.ok(endOffset > 0 && endOffset < segmentBytes, 'the partial segment holds some valid bytes');
  await truncate(path, endOffset);
  await truncate(path, segmentBytes);
}

async function fsyncFile(path: string): Promise<void> {
  const handle = await open(path, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function copyHistoryFiles(historyPaths: readonly string[], targetDir: string): Promise<void> {
  for (const path of historyPaths) {
    const name = path.slice(path.lastIndexOf('/') + 1);
    if (await exists(join(targetDir, name))) continue;
    await copyFile(path, join(targetDir, name));
    await fsyncFile(join(targetDir, name));
  }
}

function ignoreMissing(error: unknown): void {
  if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (error) {
    ignoreMissing(error);
    return false;
  }
}

/**
 * Extends an existing timeline: the source must hold the segment with the timeline's flush LSN, agree with the
 * stored bytes before it, and be the same system, segment size and PostgreSQL timeline.
 */
async function extendTimeline(dir: string, source: SourceWal, tenantId: string, timelineId: string): Promise<ImportResult> {
  const control = await readControlFile(dir);
  checkSameTimeline(control, source);
  const flushSegno = segmentOf(control.flushLsn, control.segmentBytes);
  const firstSource = source.segments[0]?.segno ?? 0n;
  if (firstSource > flushSegno) throw gapError(source.pgTimelineId, flushSegno, source.segmentBytes);
  const wal = await validateSource(source, firstSource);
  const unchanged = { tenantId, timelineId, startLsn: control.timelineStartLsn, endLsn: control.flushLsn, segmentCount: 0, created: false };
  if (wal.endLsn <= control.flushLsn) return unchanged;
  await checkOverlapMatches(dir, control, wal);
  const segmentCount = await copySegments(wal, flushSegno, dir);
  await writeSidecars(wal, flushSegno, dir);
  await copyHistoryFiles(wal.historyPaths, dir);
  await writeControlFile(dir, { ...control, flushLsn: wal.endLsn, commitLsn: wal.endLsn, lastRecordLsn: wal.lastRecordLsn });
  return { ...unchanged, endLsn: wal.endLsn, segmentCount };
}

function checkSameTimeline(control: ControlState, source: SourceWal): void {
  if (control.systemId !== source.systemId) {
    throw new WalcastError('WALCAST_ERR_SYSTEM_ID_MISMATCH', `the timeline holds WAL of system ${control.systemId}, the import directory of ${source.systemId}`);
  }
  if (control.segmentBytes !== source.segmentBytes) {
    throw new WalcastError('WALCAST_ERR_SEGMENT_SIZE', `the timeline uses ${control.segmentBytes}-byte segments, the import directory ${source.segmentBytes}`);
  }
  if (control.pgTimelineId !== source.pgTimelineId) {
    throw new WalcastError('WALCAST_ERR_WAL_INVALID', `the timeline holds PostgreSQL timeline ${control.pgTimelineId}, the import directory ${source.pgTimelineId}`);
  }
}

/** The stored bytes of the flush segment before the flush LSN must equal the source's. */
async function checkOverlapMatches(dir: string, control: ControlState, wal: ValidatedWal): Promise<void> {
  const offset = offsetInSegment(control.flushLsn, control.segmentBytes);
  if (offset === 0) return;
  const segno = segmentOf(control.flushLsn, control.segmentBytes);
  const name = segmentFileName(control.pgTimelineId, segno, control.segmentBytes);
  const storedPath = (await exists(join(dir, name + PARTIAL_SUFFIX))) ? join(dir, name + PARTIAL_SUFFIX) : join(dir, name);
  const sourcePath = wal.segments.find((segment) => segment.segno === segno)?.path;
  assert.ok(sourcePath !== undefined, 'the validated source holds the flush segment');
  const [stored, incoming] = await Promise.all([readFile(storedPath), readFile(sourcePath)]);
  if (!stored.subarray(0, offset).equals(incoming.subarray(0, offset))) {
    throw new WalcastError('WALCAST_ERR_WAL_INVALID', `the import directory's WAL differs from the timeline's before ${formatLsn(control.flushLsn)} in ${name}`);
  }
}
