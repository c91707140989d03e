/** parseRemoteStorageUrl: the accepted forms and every refusal. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { describeRemoteStorage, parseRemoteStorageUrl } from './remote-config.js';

test('s3://BUCKET/PREFIX splits into bucket and prefix; a trailing slash and no prefix are fine', () => {
  assert.deepEqual(parseRemoteStorageUrl('s3://wal-bucket/a/b/'), { bucket: 'wal-bucket', prefix: 'a/b', endpoint: undefined, region: undefined });
  assert.equal(parseRemoteStorageUrl('s3://wal-bucket').prefix, '');
  const config = parseRemoteStorageUrl('s3://wal-bucket/x', { endpoint: 'http://127.0.0.1:9000', region: 'eu-west-1' });
  assert.equal(config.region, 'eu-west-1');
  assert.equal(describeRemoteStorage(config), 's3://wal-bucket/x at http://127.0.0.1:9000');
});

test('malformed URLs, bucket names, prefixes and endpoints are WALCAST_ERR_CONFIG', () => {
  const refused = (url: string, endpoint?: string): void =>
    assert.throws(() => parseRemoteStorageUrl(url, { endpoint }), (error: unknown) => isWalcastError(error, 'WALCAST_ERR_CONFIG'), url);
  refused('/tmp/bucket');
  refused('s3://');
  refused('s3://Upper/x');
  refused('s3://b/x');
  refused('s3://bucket/a//b');
  refused('s3://bucket/../b');
  refused('s3://bucket/x', 'not a url');
  refused('s3://bucket/x', 'ftp://host');
  refused('s3://bucket/x', 'http://key:secret@host:9000');
});
