/** Object keys and the timeline metadata codec: round trip, keys of other objects ignored, refusals. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { decodeRemoteMetadata, encodeRemoteMetadata, historyKey, metadataKey, segmentKey, segnoOfKey, type RemoteTimelineMetadata } from './remote-layout.js';

const keys = { tenantId: 'a'.repeat(32), timelineId: 'b'.repeat(32) };
const MIB16 = 16 * 1024 * 1024;
const metadata: RemoteTimelineMetadata = {
  formatVersion: 1,
  ...keys,
  systemId: 18_446_744_073_709_551_615n,
  pgVersion: 150000,
  segmentBytes: MIB16,
  pgTimelineId: 1,
  timelineStartLsn: 0x1000000n,
  backupLsn: 0x5000000n,
  upstream: 'host=127.0.0.1',
};

test('segment keys use PostgreSQL segment names under tenant/timeline and parse back', () => {
  const key = segmentKey(keys, 1, 0x105n, MIB16);
  assert.equal(key, `${keys.tenantId}/${keys.timelineId}/000000010000000100000005`);
  assert.equal(segnoOfKey(key, keys, MIB16, 1), 0x105n);
  assert.equal(segnoOfKey(metadataKey(keys), keys, MIB16, 1), undefined);
  assert.equal(segnoOfKey(key, keys, MIB16, 2), undefined, 'another PostgreSQL timeline is not ours');
});

test('history files keep PostgreSQL names beside the segments (a WAL archive as pg_wal), and are not segments', () => {
  const key = historyKey(keys, 0x1a);
  assert.equal(key, `${keys.tenantId}/${keys.timelineId}/0000001A.history`);
  assert.equal(segnoOfKey(key, keys, MIB16, 0x1a), undefined);
});

test('metadata round-trips, 64-bit system id included', () => {
  assert.deepEqual(decodeRemoteMetadata(encodeRemoteMetadata(metadata), 'm'), metadata);
});

test('malformed metadata is WALCAST_ERR_REMOTE_METADATA', () => {
  const refused = (bytes: Buffer): void => assert.throws(() => decodeRemoteMetadata(bytes, 'm'), (error: unknown) => isWalcastError(error, 'WALCAST_ERR_REMOTE_METADATA'));
  const edit = (change: Record<string, unknown>): Buffer => Buffer.from(JSON.stringify({ ...JSON.parse(encodeRemoteMetadata(metadata).toString()), ...change }));
  refused(Buffer.from('not json'));
  refused(Buffer.from('[]'));
  refused(edit({ formatVersion: 2 }));
  refused(edit({ systemId: '-1' }));
  refused(edit({ segmentBytes: 1000 }));
  refused(edit({ backupLsn: '0/1' }));
  refused(edit({ backupLsn: '0/0' }));
  refused(Buffer.alloc(70 * 1024, 0x20));
});
