/**
 * Where a timeline's WAL is offloaded: `--remote-storage s3://BUCKET/PREFIX` plus the optional endpoint (an
 * S3-compatible server, addressed path-style) and region. Parsing is pure. Credentials are never part of this
 * configuration: the AWS SDK's default provider chain finds them (environment, shared config/credentials files,
 * instance metadata), so no secret ever appears in a command line or a process listing.
 */
import { WalcastError } from '../errors.js';

export interface RemoteStorageConfig {
  readonly bucket: string;
  /** Key prefix without leading or trailing slash; '' for the bucket root. */
  readonly prefix: string;
  /** e.g. http://127.0.0.1:9000 for an S3-compatible server; undefined: AWS's own endpoint for the region. */
  readonly endpoint?: string | undefined;
  /** undefined: the SDK's chain (AWS_REGION, shared config), else us-east-1 (see s3-object-store.ts). */
  readonly region?: string | undefined;
}

/** S3's bucket naming rules (3 to 63 characters of lower-case letters, digits, dots and hyphens). */
const BUCKET_PATTERN = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
/** Generous: S3 keys are at most 1024 bytes, and tenant/timeline/segment names take about 100 of them. */
export const REMOTE_PREFIX_BYTES_MAX = 512;

/** Parses `s3://BUCKET[/PREFIX]`; throws WALCAST_ERR_CONFIG naming what is wrong. */
export function parseRemoteStorageUrl(url: string, options: { endpoint?: string | undefined; region?: string | undefined } = {}): RemoteStorageConfig {
  const fail = (why: string): never => {
    throw new WalcastError('WALCAST_ERR_CONFIG', `--remote-storage ${JSON.stringify(url)} is invalid: ${why}`);
  };
  const match = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url);
  if (match === null) return fail('expected s3://BUCKET/PREFIX');
  const bucket = match[1] ?? '';
  if (!BUCKET_PATTERN.test(bucket)) fail(`bucket name ${JSON.stringify(bucket)} is not a valid S3 bucket name`);
  const prefix = (match[2] ?? '').replace(/\/+$/, '');
  if (Buffer.byteLength(prefix) > REMOTE_PREFIX_BYTES_MAX) fail(`the prefix is longer than ${REMOTE_PREFIX_BYTES_MAX} bytes`);
  if (prefix.split('/').some((part) => part === '' || part === '.' || part === '..') && prefix !== '') fail('the prefix has an empty, "." or ".." component');
  if (options.endpoint !== undefined) {
    let endpoint: URL | undefined;
    try {
      endpoint = new URL(options.endpoint);
    } catch {
      fail(`--remote-storage-endpoint ${JSON.stringify(options.endpoint)} is not a URL`);
    }
    if (endpoint !== undefined && endpoint.protocol !== 'http:' && endpoint.protocol !== 'https:') fail('--remote-storage-endpoint must be http:// or https://');
    if (endpoint !== undefined && (endpoint.username !== '' || endpoint.password !== '')) fail('--remote-storage-endpoint must not carry credentials');
  }
  return { bucket, prefix, endpoint: options.endpoint, region: options.region };
}

/** The configuration as an operator reads it back (no secrets exist in it). */
export function describeRemoteStorage(config: RemoteStorageConfig): string {
  const where = `s3://${config.bucket}${config.prefix === '' ? '' : '/' + config.prefix}`;
  return config.endpoint === undefined ? where : `${where} at ${config.endpoint}`;
}
