/**
 * `walcast timeline create`: records a timeline that follows an upstream (see src/ingest/create-timeline.ts) and
 * prints its ids and start position (as text, or JSON with --json). The upstream password is read from
 * --upstream-password-file or WALCAST_UPSTREAM_PASSWORD, never from the command line.
 */
import { pino } from 'pino';
import { formatLsn, parseLsnOrThrow } from '../lsn.js';
import { createFollowingTimeline } from '../ingest/create-timeline.js';
import { readSecret } from '../config/secrets.js';

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
