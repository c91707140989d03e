/**
 * `walcast import`: validates a pg_wal or archive directory and creates or extends a timeline from it, then
 * prints the tenant id, timeline id, start and end LSN (as text, or JSON with --json).
 */
import { formatLsn } from '../lsn.js';
import { importWal } from '../storage/wal-import.js';

interface ImportFlags {
  readonly from: string;
  readonly dataDir: string;
  readonly tenantId?: string;
  readonly timelineId?: string;
  readonly json?: boolean;
}

export async function runImport(rawFlags: Record<string, unknown>): Promise<void> {
  const flags = rawFlags as unknown as ImportFlags;
  const result = await importWal({
    dataDir: flags.dataDir,
    fromDir: flags.from,
    ...(flags.tenantId === undefined ? {} : { tenantId: flags.tenantId.toLowerCase() }),
    ...(flags.timelineId === undefined ? {} : { timelineId: flags.timelineId.toLowerCase() }),
  });
  const printable = {
    tenant_id: result.tenantId,
    timeline_id: result.timelineId,
    start_lsn: formatLsn(result.startLsn),
    end_lsn: formatLsn(result.endLsn),
    segments: result.segmentCount,
    created: result.created,
  };
  if (flags.json === true) {
    process.stdout.write(JSON.stringify(printable) + '\n');
    return;
  }
  for (const [key, value] of Object.entries(printable)) process.stdout.write(`${key}: ${value}\n`);
}
