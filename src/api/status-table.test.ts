/** The `walcast status` text report: alignment, units, and documents with missing fields. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { alignColumns, formatBytes, formatDuration, renderStatus } from './status-table.js';

test('bytes and durations are human units', () => {
  assert.equal(formatBytes(0), '0 B');
  assert.equal(formatBytes(1023), '1023 B');
  assert.equal(formatBytes(16 * 1024 * 1024), '16.0 MiB');
  assert.equal(formatBytes(null), '-');
  assert.equal(formatDuration(59.9), '59s');
  assert.equal(formatDuration(3725), '1h02m');
  assert.equal(formatDuration(90_000), '1d1h');
  assert.equal(formatDuration(undefined), '-');
});

test('columns are padded to the widest cell', () => {
  assert.deepEqual(alignColumns([['A', 'BB'], ['CCC', 'D']]), ['A    BB', 'CCC  D']);
});

test('a report lists each timeline and each replica with its lag', () => {
  const server = { version: '0.1.0', uptime_seconds: 61, io: { backend: 'native', strategy: 'sendfile' }, connections: 2, listen: { postgres: '127.0.0.1:5454' } };
  const timeline = {
    tenant_id: 'aa', timeline_id: 'bb', commit_lsn: '0/3000000', flush_lsn: '0/3000000', timeline_start_lsn: '0/1000000',
    walsenders: [
      { appname: 'stby1', addr: '127.0.0.1:1', feedback: { Standby: { reply: { flush_lsn: '0/2F00000', apply_lsn: '0/2E00000' } } }, sent_lsn: '0/3000000', lag_bytes: 1048576, apply_lag_bytes: 2097152, last_feedback_age_seconds: 0.25, bytes_sent: 4096, started_at: '2026-01-01T00:00:00.000Z' },
      { appname: null, addr: '127.0.0.1:2', feedback: null, sent_lsn: '0/1000000' },
    ],
  };
  const text = renderStatus(server, [timeline, { tenant_id: 'cc', timeline_id: 'dd', walsenders: [] }]);
  assert.match(text, /^walcast 0\.1\.0, up 1m01s, I\/O native \(sendfile\), 2 connections, listening on postgres 127\.0\.0\.1:5454\n/);
  assert.match(text, /timeline aa\/bb {2}commit 0\/3000000 {2}flush 0\/3000000 {2}start 0\/1000000 {2}replicas 2/);
  assert.match(text, /stby1 +127\.0\.0\.1:1 +standby +0\/3000000 +0\/2F00000 +0\/2E00000 +1\.0 MiB +2\.0 MiB +0\.3s ago +4\.0 KiB/);
  assert.match(text, /\n {2}- +127\.0\.0\.1:2 +- +0\/1000000 +- +- +- +- +- +- +-\n/);
  assert.match(text, /timeline cc\/dd .*\n {2}no replicas connected\n$/);
  assert.equal(renderStatus(server, []).endsWith('no timelines\n'), true);
});
