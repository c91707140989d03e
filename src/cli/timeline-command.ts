/**
 * `walcast timeline create` and `walcast timeline restore` (from object storage). `create` records a timeline that follows an upstream (see src/ingest/create-timeline.ts) and
 * prints its ids and start position (as text, or JSON with --json). The upstream password is read from
 * --upstream-password-file or WALCAST_UPSTREAM_PASSWORD, never from the command line.
 */
import { pino } from 'pino';
import { formatLsn, parseLsnOrThrow } from '../lsn.js';
import { createFollowingTimeline } from '../ingest/create-timeline.js';
import { readSecret } from '../config/secrets.js';
import { parseRemoteStorageUrl } from '../remote/remote-config.js';
import { restoreTimeline } from '../remote/restore-timeline.js';
import { S3ObjectStore } from '../remote/s3-object-store.js';

interface TimelineCreateFlags {
  readonly dataDir: string;
  readonly upstream: string;
  readonly upstreamPasswordFile?: string;
  readonly tenantId?: string;
  readonly timelineId?: string;
  readonly startLsn?: string;
  readonly json?: boolean;
  readonly logLevel: string;
}

export async function runTimelineCreate(rawFlags: Record<string, unknown>): Promise<void> {
  const flags = rawFlags as unknown as TimelineCreateFlags;
  // Logs go to stderr so that stdout carries only the result a script parses.
  const log = pino({ level: flags.logLevel }, pino.destination(2)).child({ command: 'timeline create' });
  const password = await readSecret({ file: flags.upstreamPasswordFile, envName: 'WALCAST_UPSTREAM_PASSWORD', what: 'upstream password' });
  const result = await createFollowingTimeline({
    dataDir: flags.dataDir,
    upstream: flags.upstream,
    password,
    tenantId: flags.tenantId?.toLowerCase(),
    timelineId: flags.timelineId?.toLowerCase(),
    startLsn: flags.startLsn === undefined ? undefined : parseLsnOrThrow(flags.startLsn),
    log,
  });
  const printable = {
    tenant_id: result.tenantId,
    timeline_id: result.timelineId,
    start_lsn: formatLsn(result.startLsn),
    system_id: result.systemId.toString(),
    pg_timeline_id: result.pgTimelineId,
    segment_bytes: result.segmentBytes,
    slot: result.slotName ?? null,
    upstream: result.upstream,
  };
  if (flags.json === true) {
    process.stdout.write(JSON.stringify(printable) + '\n');
    return;
  }
  for (const [key, value] of Object.entries(printable)) process.stdout.write(`${key}: ${value}\n`);
}

interface TimelineRestoreFlags {
  readonly dataDir: string;
  readonly remoteStorage: string;
  readonly remoteStorageEndpoint?: string;
  readonly remoteStorageRegion?: string;
  readonly tenantId: string;
  readonly timelineId: string;
  readonly json?: boolean;
}

/** `walcast timeline restore`: see src/remote/restore-timeline.ts. Credentials come from the AWS SDK's chain. */
export async function runTimelineRestore(rawFlags: Record<string, unknown>): Promise<void> {
  const flags = rawFlags as unknown as TimelineRestoreFlags;
  const keys = { tenantId: flags.tenantId.toLowerCase(), timelineId: flags.timelineId.toLowerCase() };
  for (const [name, value] of Object.entries({ '--tenant-id': keys.tenantId, '--timeline-id': keys.timelineId })) {
    if (!/^[0-9a-f]{32}$/.test(value)) throw new RangeError(`${name} must be 32 hex characters`);
  }
  const store = new S3ObjectStore(parseRemoteStorageUrl(flags.remoteStorage, { endpoint: flags.remoteStorageEndpoint, region: flags.remoteStorageRegion }));
  try {
    const result = await restoreTimeline({ dataDir: flags.dataDir, store, keys });
    const printable = {
      tenant_id: result.tenantId,
      timeline_id: result.timelineId,
      timeline_start_lsn: formatLsn(result.timelineStartLsn),
      local_start_lsn: formatLsn(result.localStartLsn),
      backup_lsn: formatLsn(result.backupLsn),
      pg_timeline_id: result.pgTimelineId,
      history_files: result.historyFiles.join(',') || null,
      upstream: result.upstream ?? null,
    };
    if (flags.json === true) {
      process.stdout.write(JSON.stringify(printable) + '\n');
      return;
    }
    for (const [key, value] of Object.entries(printable)) process.stdout.write(`${key}: ${value}\n`);
  } finally {
    store.close();
  }
}
