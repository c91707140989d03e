/**
 * How far retention's last completed pass trails the keep window, the allowance the disk-bound tests
 * (test/retention.test.ts, test/support/failover-cluster.ts) give a disk sample: the segment start a pass would keep
 * from now (commit LSN less --wal-keep-size), less the LSN before which the last completed pass had removed every
 * file (RetentionStatus.removedBeforeLsn; undefined before a pass completed: no lag counted).
 */
import { alignDown, type Lsn } from '../../src/lsn.js';

export function retentionPassLagBytes(commitLsn: Lsn, removedBeforeLsn: Lsn | undefined, walKeepBytes: number, segmentBytes: number): number {
  const keepFrom = commitLsn > BigInt(walKeepBytes) ? alignDown(commitLsn - BigInt(walKeepBytes), segmentBytes) : 0n;
  return removedBeforeLsn !== undefined && removedBeforeLsn < keepFrom ? Number(keepFrom - removedBeforeLsn) : 0;
}
