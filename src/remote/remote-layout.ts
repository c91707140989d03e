/**
 * The object layout of offloaded WAL and its metadata codec (pure):
 *   PREFIX/<tenant_id>/<timeline_id>/<segment name>      one completed segment, byte-identical to the file
 *   PREFIX/<tenant_id>/<timeline_id>/0000000N.history    each PostgreSQL timeline history file, byte-identical
 *   PREFIX/<tenant_id>/<timeline_id>/walcast.timeline.json  what a fresh walcast needs to open the timeline
 * Segment and history objects use PostgreSQL's names, and a segment is named with the TLI its history assigns it
 * (after a promotion: the switch segment and later ones with the new TLI, as pg_wal), so `aws s3 cp --recursive`
 * of a timeline prefix is a usable WAL archive (restore_command can read it, recovery_target_timeline = latest
 * finds the history files). The metadata object is JSON with the same field spellings as walcast.control.
 */
import { WalcastError } from '../errors.js';
import { formatLsn, parseLsn, type Lsn } from '../lsn.js';
import { assertSegmentSize, historyFileName, parseSegmentFileName, segmentFileName } from '../storage/segment-name.js';

export const TIMELINE_METADATA_NAME = 'walcast.timeline.json';
export const REMOTE_METADATA_FORMAT_VERSION = 1;
/** The metadata object is a few hundred bytes; anything larger is not ours. */
export const REMOTE_METADATA_BYTES_MAX = 64 * 1024;

export interface TimelineKeys {
  readonly tenantId: string;
  readonly timelineId: string;
}

/** What a fresh walcast needs to open a timeline from the bucket alone. */
export interface RemoteTimelineMetadata {
  readonly formatVersion: number;
  readonly tenantId: string;
  readonly timelineId: string;
  readonly systemId: bigint;
  readonly pgVersion: number;
  readonly segmentBytes: number;
  /**
   * The timeline's current PostgreSQL timeline when the object was written. When its history has more than one
   * timeline, its history file is in the bucket beside it (the uploader puts the histories first).
   */
  readonly pgTimelineId: number;
  /** The first byte offloaded: a segment start. */
  readonly timelineStartLsn: Lsn;
  /** Every segment below this is in the bucket (a segment start). */
  readonly backupLsn: Lsn;
  readonly upstream?: string | undefined;
}

/** "<tenant>/<timeline>/": the timeline's key prefix, relative to the configured prefix. */
export function timelinePrefix(keys: TimelineKeys): string {
  return `${keys.tenantId}/${keys.timelineId}/`;
}

export function segmentKey(keys: TimelineKeys, pgTimelineId: number, segno: bigint, segmentBytes: number): string {
  return timelinePrefix(keys) + segmentFileName(pgTimelineId, segno, segmentBytes);
}

/** The object of PostgreSQL timeline `pgTimelineId`'s history file ("0000000N.history"). */
export function historyKey(keys: TimelineKeys, pgTimelineId: number): string {
  return timelinePrefix(keys) + historyFileName(pgTimelineId);
}

export function metadataKey(keys: TimelineKeys): string {
  return timelinePrefix(keys) + TIMELINE_METADATA_NAME;
}

/** The segment number of a listed key under the timeline prefix, or undefined for other objects. */
export function segnoOfKey(relativeKey: string, keys: TimelineKeys, segmentBytes: number, pgTimelineId: number): bigint | undefined {
  const prefix = timelinePrefix(keys);
  if (!relativeKey.startsWith(prefix)) return undefined;
  const parsed = parseSegmentFileName(relativeKey.slice(prefix.length), segmentBytes);
  return parsed !== undefined && parsed.pgTimelineId === pgTimelineId ? parsed.segno : undefined;
}

export function encodeRemoteMetadata(metadata: RemoteTimelineMetadata): Buffer {
  assertSegmentSize(metadata.segmentBytes);
  return Buffer.from(
    JSON.stringify({
      formatVersion: metadata.formatVersion,
      tenantId: metadata.tenantId,
      timelineId: metadata.timelineId,
      systemId: metadata.systemId.toString(10),
      pgVersion: metadata.pgVersion,
      segmentBytes: metadata.segmentBytes,
      pgTimelineId: metadata.pgTimelineId,
      timelineStartLsn: formatLsn(metadata.timelineStartLsn),
      backupLsn: formatLsn(metadata.backupLsn),
      ...(metadata.upstream === undefined ? {} : { upstream: metadata.upstream }),
    }) + '\n',
    'utf8',
  );
}

/** Parses the metadata object; throws WALCAST_ERR_REMOTE_METADATA naming what is wrong. */
export function decodeRemoteMetadata(bytes: Buffer, where: string): RemoteTimelineMetadata {
  const fail = (why: string): never => {
    throw new WalcastError('WALCAST_ERR_REMOTE_METADATA', `remote timeline metadata ${where} is invalid: ${why}`);
  };
  if (bytes.length > REMOTE_METADATA_BYTES_MAX) fail('too large');
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString('utf8'));
  } catch {
    fail('not JSON');
  }
  if (typeof raw !== 'object' || raw === null) return fail('not an object');
  const record = raw as Record<string, unknown>;
  const text = (name: string): string => (typeof record[name] === 'string' ? (record[name] as string) : fail(`field ${name} is not a string`));
  const integer = (name: string): number => {
    const value = record[name];
    return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? value : fail(`field ${name} is not a non-negative integer`);
  };
  const lsn = (name: string): Lsn => parseLsn(text(name)) ?? fail(`field ${name} is not an LSN`);
  if (integer('formatVersion') !== REMOTE_METADATA_FORMAT_VERSION) fail(`unsupported format version ${String(record.formatVersion)}`);
  const systemIdText = text('systemId');
  if (!/^[0-9]{1,20}$/.test(systemIdText)) fail('field systemId is not a decimal number');
  const metadata: RemoteTimelineMetadata = {
    formatVersion: REMOTE_METADATA_FORMAT_VERSION,
    tenantId: text('tenantId'),
    timelineId: text('timelineId'),
    systemId: BigInt(systemIdText),
    pgVersion: integer('pgVersion'),
    segmentBytes: integer('segmentBytes'),
    pgTimelineId: integer('pgTimelineId'),
    timelineStartLsn: lsn('timelineStartLsn'),
    backupLsn: lsn('backupLsn'),
    upstream: record.upstream === undefined ? undefined : text('upstream'),
  };
  try {
    assertSegmentSize(metadata.segmentBytes);
  } catch {
    fail(`segment size ${metadata.segmentBytes} is invalid`);
  }
  const segmentBytes = BigInt(metadata.segmentBytes);
  if (metadata.timelineStartLsn % segmentBytes !== 0n || metadata.backupLsn % segmentBytes !== 0n) fail('LSNs are not segment starts');
  if (metadata.backupLsn < metadata.timelineStartLsn) fail('backupLsn is before timelineStartLsn');
  return metadata;
}
