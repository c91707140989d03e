/**
 * Renders what the HTTP API returns as a plain-text report for `walcast status`: a server line, then per timeline
 * one line and a table of its replicas with their lag. Pure: documents in, text out; it reads the JSON shapes
 * status-model.ts writes and tolerates missing fields (an older or newer server), printing "-" for them.
 */
import assert from 'node:assert/strict';

/** Column gap in the replica table. */
const COLUMN_GAP = '  ';
const SECONDS_PER_MINUTE = 60;
const SECONDS_PER_HOUR = 3600;
const SECONDS_PER_DAY = 86_400;
const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'] as const;
const BYTES_PER_UNIT = 1024;

type Document = Record<string, unknown>;

export function renderStatus(server: Document, timelines: readonly Document[]): string {
  const lines = [serverLine(server)];
  if (timelines.length === 0) lines.push('', 'no timelines');
  for (const timeline of timelines) lines.push('', ...timelineLines(timeline));
  return lines.join('\n') + '\n';
}

function serverLine(server: Document): string {
  const io = (server.io ?? {}) as Document;
  const listen = Object.entries((server.listen ?? {}) as Document).map(([name, address]) => `${name} ${text(address)}`).join(', ');
  return `walcast ${text(server.version)}, up ${formatDuration(server.uptime_seconds)}, I/O ${text(io.backend)} (${text(io.strategy)}), ` +
    `${text(server.connections)} connections, listening on ${listen === '' ? '-' : listen}`;
}

function timelineLines(timeline: Document): string[] {
  const senders = Array.isArray(timeline.walsenders) ? (timeline.walsenders as Document[]) : [];
  const header = `timeline ${text(timeline.tenant_id)}/${text(timeline.timeline_id)}  commit ${text(timeline.commit_lsn)}  flush ${text(timeline.flush_lsn)}  ` +
    `start ${text(timeline.timeline_start_lsn)}  replicas ${senders.length}`;
  if (senders.length === 0) return [header, '  no replicas connected'];
  const rows = [['APPNAME', 'ADDRESS', 'KIND', 'SENT', 'CONFIRMED', 'APPLIED', 'LAG', 'APPLY LAG', 'LAST FEEDBACK', 'SENT BYTES', 'CONNECTED']];
  for (const sender of senders) rows.push(replicaRow(sender));
  return [header, ...alignColumns(rows).map((line) => '  ' + line)];
}

function replicaRow(sender: Document): string[] {
  const feedback = (sender.feedback ?? null) as Document | null;
  const pageserver = feedback?.Pageserver as Document | undefined;
  const standby = feedback?.Standby as Document | undefined;
  const reply = standby?.reply as Document | undefined;
  const kind = pageserver !== undefined ? 'pageserver' : standby !== undefined ? 'standby' : '-';
  const confirmed = pageserver?.last_received_lsn ?? reply?.flush_lsn;
  const applied = reply?.apply_lsn ?? pageserver?.remote_consistent_lsn;
  return [
    text(sender.appname),
    text(sender.addr),
    kind,
    text(sender.sent_lsn),
    text(confirmed),
    text(applied),
    formatBytes(sender.lag_bytes),
    formatBytes(sender.apply_lag_bytes),
    typeof sender.last_feedback_age_seconds === 'number' ? `${sender.last_feedback_age_seconds.toFixed(1)}s ago` : '-',
    formatBytes(sender.bytes_sent),
    typeof sender.started_at === 'string' ? sender.started_at : '-',
  ];
}

export function alignColumns(rows: readonly string[][]): string[] {
  const columnCount = rows[0]?.length ?? 0;
  assert.ok(rows.every((row) => row.length === columnCount), 'every row has every column');
  const widths = Array.from({ length: columnCount }, (_unused, column) => Math.max(...rows.map((row) => (row[column] ?? '').length)));
  return rows.map((row) => row.map((cell, column) => cell.padEnd(widths[column] ?? 0)).join(COLUMN_GAP).trimEnd());
}

export function formatBytes(value: unknown): string {
  if (typeof value !== 'number' || !Number.isFinite(value)) return '-';
  let scaled = value;
  let unit = 0;
  while (scaled >= BYTES_PER_UNIT && unit < BYTE_UNITS.length - 1) {
    scaled /= BYTES_PER_UNIT;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${scaled.toFixed(1)} ${BYTE_UNITS[unit]}`;
}

export function formatDuration(value: unknown): string {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) return '-';
  const seconds = Math.floor(value);
  const days = Math.floor(seconds / SECONDS_PER_DAY);
  const hours = Math.floor((seconds % SECONDS_PER_DAY) / SECONDS_PER_HOUR);
  const minutes = Math.floor((seconds % SECONDS_PER_HOUR) / SECONDS_PER_MINUTE);
  if (days > 0) return `${days}d${hours}h`;
  if (hours > 0) return `${hours}h${String(minutes).padStart(2, '0')}m`;
  if (minutes > 0) return `${minutes}m${String(seconds % SECONDS_PER_MINUTE).padStart(2, '0')}s`;
  return `${seconds}s`;
}

function text(value: unknown): string {
  if (value === undefined || value === null || value === '') return '-';
  return typeof value === 'string' ? value : String(value);
}
