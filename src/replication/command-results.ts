/**
 * Result sets of the replication commands other than START_REPLICATION, in the exact shapes PostgreSQL's
 * walsender returns (walsender.c IdentifySystem, ReadReplicationSlot, SendTimeLineHistory; printsimple.c).
 * Pure: each function maps timeline facts to protocol messages.
 */
import { formatLsn, type Lsn } from '../lsn.js';
import { simpleResultSet } from '../wire/result-set.js';

export interface IdentifyFacts {
  readonly systemId: bigint;
  readonly pgTimelineId: number;
  readonly xlogPos: Lsn;
}

export function identifySystemResult(facts: IdentifyFacts): Buffer[] {
  return simpleResultSet(
    [
      { name: 'systemid', type: 'text' },
      { name: 'timeline', type: 'int4' },
      { name: 'xlogpos', type: 'text' },
      { name: 'dbname', type: 'text' },
    ],
    [[facts.systemId.toString(), String(facts.pgTimelineId), formatLsn(facts.xlogPos), null]],
    'IDENTIFY_SYSTEM',
  );
}

/** PostgreSQL prints wal_segment_size with GUC units: "16MB", "1GB" (pg_receivewal parses "%d%2s"). */
export function formatSegmentSize(segmentBytes: number): string {
  const mib = segmentBytes / (1024 * 1024);
  return mib >= 1024 && mib % 1024 === 0 ? `${mib / 1024}GB` : `${mib}MB`;
}

export function showResult(name: string, value: string): Buffer[] {
  return simpleResultSet([{ name, type: 'text' }], [[value]], 'SHOW');
}

/** Neon's TIMELINE_STATUS: a row only when the timeline exists. */
export function timelineStatusResult(status: { flushLsn: Lsn; commitLsn: Lsn } | undefined): Buffer[] {
  const rows = status === undefined ? [] : [[formatLsn(status.flushLsn), formatLsn(status.commitLsn)]];
  return simpleResultSet([{ name: 'flush_lsn', type: 'text' }, { name: 'commit_lsn', type: 'text' }], rows, 'TIMELINE_STATUS');
}

/**
 * walsender.c ReadReplicationSlot: ('physical', restart LSN, its timeline) for a slot, the LSN and timeline NULL
 * while the slot holds nothing yet, and a row of NULLs for a slot that does not exist.
 */
export function readReplicationSlotResult(slot: { restartLsn: Lsn | undefined; pgTimelineId: number } | undefined): Buffer[] {
  const row =
    slot === undefined
      ? [null, null, null]
      : ['physical', slot.restartLsn === undefined ? null : formatLsn(slot.restartLsn), slot.restartLsn === undefined ? null : String(slot.pgTimelineId)];
  return simpleResultSet(
    [
      { name: 'slot_type', type: 'text' },
      { name: 'restart_lsn', type: 'text' },
      { name: 'restart_tli', type: 'int8' },
    ],
    [row],
    'READ_REPLICATION_SLOT',
  );
}

/**
 * walsender.c CreateReplicationSlot: slot_name, consistent_point, snapshot_name, output_plugin, all text. A physical
 * slot has no consistent point (its confirmed_flush stays 0/0) and neither snapshot nor plugin.
 */
export function createReplicationSlotResult(slotName: string): Buffer[] {
  return simpleResultSet(
    [
      { name: 'slot_name', type: 'text' },
      { name: 'consistent_point', type: 'text' },
      { name: 'snapshot_name', type: 'text' },
      { name: 'output_plugin', type: 'text' },
    ],
    [[slotName, formatLsn(0n), null, null]],
    'CREATE_REPLICATION_SLOT',
  );
}

export function timelineHistoryResult(fileName: string, content: string): Buffer[] {
  return simpleResultSet([{ name: 'filename', type: 'text' }, { name: 'content', type: 'text' }], [[fileName, content]], 'TIMELINE_HISTORY');
}

/**
 * After a stream of a historic timeline: one row (next_tli int8, next_tli_startpos text) with no CommandComplete of
 * its own; the caller sends "START_STREAMING" and "START_REPLICATION" after it (walsender.c StartReplication).
 */
export function nextTimelineResult(nextPgTimelineId: number, switchLsn: Lsn): Buffer[] {
  return simpleResultSet(
    [
      { name: 'next_tli', type: 'int8' },
      { name: 'next_tli_startpos', type: 'text' },
    ],
    [[String(nextPgTimelineId), formatLsn(switchLsn)]],
    undefined,
  );
}
