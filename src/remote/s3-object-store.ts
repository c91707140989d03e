/**
 * ObjectStore over the AWS SDK v3 S3 client, for AWS S3 and S3-compatible servers (path-style addressing when an
 * endpoint is given, as MinIO, Ceph RGW and s3rver expect).
 *
 * Checksums: every put carries Content-MD5, which S3 and S3-compatible servers verify before they store the object
 * (a mismatch is 400 BadDigest, and nothing is stored). The MD5 is computed by streaming the file once, then the
 * file is streamed again as the body, so memory stays at one read buffer whatever the segment size. The SDK's
 * newer default (a CRC32 trailer in aws-chunked encoding on every put) is turned off ("WHEN_REQUIRED"): several
 * S3-compatible servers store the chunk framing as object bytes, which would break "bytes are sacred".
 *
 * The SDK retries a request a few times on transient faults; longer outages are the callers' (the uploader backs
 * off and retries without end). Every request has a bounded time.
 */
import { createHash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { inspect } from 'node:util';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsCommand,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import assert from 'node:assert/strict';
import { WalcastError } from '../errors.js';
import type { Logger } from '../log.js';
import { ObjectNotFoundError, type ObjectInfo, type ObjectStore } from './object-store.js';
import { describeRemoteStorage, type RemoteStorageConfig } from './remote-config.js';

/** The region when neither the flag nor the SDK's chain names one; S3-compatible servers mostly ignore it. */
export const REMOTE_REGION_DEFAULT = 'us-east-1';
/** Connecting to the store; a loopback or LAN server answers in milliseconds, AWS in well under a second. */
export const REMOTE_CONNECT_TIMEOUT_MS = 10_000;
/** One request, including the transfer of a whole segment (1 GiB at the largest, at >= 20 MB/s: under a minute). */
export const REMOTE_REQUEST_TIMEOUT_MS = 120_000;
/** Attempts per request inside the SDK (standard retry mode, with its own jittered backoff). */
export const REMOTE_SDK_ATTEMPTS_MAX = 3;
/** Keys per ListObjects page: S3's own maximum. */
const LIST_PAGE_KEYS_MAX = 1000;

export class S3ObjectStore implements ObjectStore {
  readonly description: string;
  private readonly client: S3Client;

  /** `log` receives the SDK's own messages at debug level; without it they are dropped (never the console). */
  constructor(
    private readonly config: RemoteStorageConfig,
    log?: Logger,
  ) {
    this.description = describeRemoteStorage(config);
    const clientConfig: S3ClientConfig = {
      logger: sdkLogger(log),
      region: config.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? REMOTE_REGION_DEFAULT,
      // The SDK's standard retries cover transient faults of one request (a keep-alive socket the server closed);
      // a streamed upload body cannot be replayed by it, so the uploader retries those itself.
      maxAttempts: REMOTE_SDK_ATTEMPTS_MAX,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: { connectionTimeout: REMOTE_CONNECT_TIMEOUT_MS, requestTimeout: REMOTE_REQUEST_TIMEOUT_MS },
      ...(config.endpoint === undefined ? {} : { endpoint: config.endpoint, forcePathStyle: true }),
    };
    this.client = new S3Client(clientConfig);
  }

  /** The full key of `relative` under the configured prefix. */
  key(relative: string): string {
    assert.ok(!relative.startsWith('/'), 'relative keys do not start with a slash');
    return this.config.prefix === '' ? relative : `${this.config.prefix}/${relative}`;
  }

  async putFile(key: string, path: string, sizeBytes: number, signal?: AbortSignal): Promise<void> {
    assert.ok(Number.isSafeInteger(sizeBytes) && sizeBytes > 0, 'a put file is not empty');
    // One descriptor for both passes: a missing file is a plain rejection here, never a stream error later.
    const handle = await open(path, 'r');
    try {
      const md5 = await fileMd5(handle, sizeBytes);
      const body = handle.createReadStream({ start: 0, end: sizeBytes - 1, autoClose: false });
      try {
        const answer = await this.client.send(
          new PutObjectCommand({ Bucket: this.config.bucket, Key: key, Body: body, ContentLength: sizeBytes, ContentMD5: md5, ContentType: 'application/octet-stream' }),
          { abortSignal: signal },
        );
        checkEtag(key, answer.ETag, md5);
      } finally {
        body.destroy();
      }
    } finally {
      await handle.close();
    }
  }

  async putBytes(key: string, bytes: Buffer, signal?: AbortSignal): Promise<void> {
    const md5 = createHash('md5').update(bytes).digest('base64');
    const answer = await this.client.send(new PutObjectCommand({ Bucket: this.config.bucket, Key: key, Body: bytes, ContentLength: bytes.length, ContentMD5: md5 }), {
      abortSignal: signal,
    });
    checkEtag(key, answer.ETag, md5);
  }

  async getRange(key: string, start: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    assert.ok(start >= 0 && length > 0, 'a ranged get asks for at least one byte');
    const target = Buffer.allocUnsafe(length);
    let filled = 0;
    await this.getBody(key, rangeHeader(start, length), length, signal, (chunk) => {
      chunk.copy(target, filled);
      filled += chunk.length;
    });
    return target.subarray(0, filled);
  }

  async getRangeToFile(key: string, start: number, length: number, file: FileHandle, filePosition: number, signal?: AbortSignal): Promise<number> {
    assert.ok(start >= 0 && length > 0, 'a ranged get asks for at least one byte');
    const batch: Buffer[] = [];
    let batchBytes = 0;
    let written = 0;
    const flush = async (): Promise<void> => {
      await writevAll(file, batch, filePosition + written);
      written += batchBytes;
      batch.length = 0;
      batchBytes = 0;
    };
    await this.getBody(key, rangeHeader(start, length), length, signal, async (chunk) => {
      batch.push(chunk);
      batchBytes += chunk.length;
      if (batchBytes >= GET_WRITE_BATCH_BYTES || batch.length >= GET_WRITE_BATCH_CHUNKS_MAX) await flush();
    });
    if (batchBytes > 0) await flush();
    return written;
  }

  async getObject(key: string, maxBytes: number, signal?: AbortSignal): Promise<Buffer> {
    const chunks: Buffer[] = [];
    await this.getBody(key, undefined, maxBytes, signal, (chunk) => void chunks.push(chunk));
    return Buffer.concat(chunks);
  }

  /**
   * One GET, its body handed to `onChunk` piece by piece as it arrives (awaited: a slow consumer holds the socket
   * back). In Node the body is the HTTP response stream itself; its chunks are used as they are. The SDK's
   * `transformToByteArray` instead collected them, concatenated them into a new zero-filled array (and we copied that
   * into a Buffer): three passes over every byte and two fresh range-sized allocations per GET, about a fifth of
   * walcast's CPU in a catch-up from the bucket (perf). Another runtime's body type still goes that way.
   */
  private async getBody(key: string, range: string | undefined, maxBytes: number, signal: AbortSignal | undefined, onChunk: (chunk: Buffer) => void | Promise<void>): Promise<void> {
    try {
      const answer = await this.client.send(new GetObjectCommand({ Bucket: this.config.bucket, Key: key, Range: range }), { abortSignal: signal });
      const body = answer.Body;
      assert.ok(body !== undefined, 'a GET answer has a body');
      if (!(body instanceof Readable)) {
        const bytes = Buffer.from(await body.transformToByteArray());
        if (bytes.length > maxBytes) throw new Error(`object ${key} answered ${bytes.length} bytes, more than the ${maxBytes} asked for`);
        await onChunk(bytes);
        return;
      }
      let received = 0;
      try {
        for await (const chunk of body as AsyncIterable<Buffer>) {
          received += chunk.length;
          if (received > maxBytes) throw new Error(`object ${key} answered more than the ${maxBytes} bytes asked for`);
          await onChunk(chunk);
        }
      } finally {
        // Left early (a throw above): the rest is not read, and the socket is not reused for a half-read answer.
        if (!body.readableEnded) body.destroy();
      }
    } catch (error) {
      // A range past the object's end (an empty object, or one shorter than the caller expected) is 416 on S3: no
      // bytes there, which the interface reports as a short (empty) answer for the caller to check, not a failure.
      if (range !== undefined && isRangeNotSatisfiable(error)) return;
      throw notFoundOr(error, key);
    }
  }

  async head(key: string, signal?: AbortSignal): Promise<ObjectInfo | undefined> {
    try {
      const answer = await this.client.send(new HeadObjectCommand({ Bucket: this.config.bucket, Key: key }), { abortSignal: signal });
      return { key, sizeBytes: answer.ContentLength ?? 0 };
    } catch (error) {
      if (notFoundOr(error, key) instanceof ObjectNotFoundError) return undefined;
      throw error;
    }
  }

  /**
   * ListObjects (V1) paged with Marker = the last key seen: every S3-compatible server implements it, while V2's
   * opaque continuation tokens are where they differ (s3rver's are DES-encrypted, which Node 20's OpenSSL 3 lacks).
   */
  async list(prefix: string, signal?: AbortSignal): Promise<ObjectInfo[]> {
    const found: ObjectInfo[] = [];
    let marker: string | undefined;
    for (;;) {
      const page = await this.client.send(new ListObjectsCommand({ Bucket: this.config.bucket, Prefix: prefix, Marker: marker, MaxKeys: LIST_PAGE_KEYS_MAX }), {
        abortSignal: signal,
      });
      const contents = page.Contents ?? [];
      for (const item of contents) if (item.Key !== undefined) found.push({ key: item.Key, sizeBytes: item.Size ?? 0 });
      const last = contents.at(-1)?.Key;
      if (page.IsTruncated !== true || last === undefined) break;
      assert.ok(marker === undefined || last > marker, 'list pages move forward');
      marker = last;
    }
    return found.sort((left, right) => (left.key < right.key ? -1 : left.key > right.key ? 1 : 0));
  }

  async delete(key: string, signal?: AbortSignal): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.config.bucket, Key: key }), { abortSignal: signal });
  }

  close(): void {
    this.client.destroy();
  }
}

/**
 * The SDK writes some warnings (a streamed PUT it will not retry) to the console unless given a logger. walcast's
 * callers log every failure themselves, with the object and attempt, so the SDK's lines go to debug.
 */
function sdkLogger(log: Logger | undefined): NonNullable<S3ClientConfig['logger']> {
  // Only when debug is on: the SDK passes whole request and socket objects, which are large and circular.
  const write = (...content: unknown[]): void => {
    if (log?.isLevelEnabled('debug') === true) log.debug({ component: 'aws-sdk' }, inspect(content, { depth: 1, breakLength: Infinity }));
  };
  return { trace: write, debug: write, info: write, warn: write, error: write };
}

/** An HTTP Range header for bytes [start, start + length). */
function rangeHeader(start: number, length: number): string {
  return `bytes=${start}-${start + length - 1}`;
}

/**
 * Bytes of a streamed GET gathered before they are written to the file in one writev: large enough that the
 * write calls are few (a range arrives in socket reads of up to 64 KiB), small enough that memory per download
 * stays small whatever the range size.
 */
const GET_WRITE_BATCH_BYTES = 1024 * 1024;
/** Chunks per writev at most (IOV_MAX is 1024 on Linux; small socket reads could otherwise exceed it). */
const GET_WRITE_BATCH_CHUNKS_MAX = 256;

/** Writes `buffers` at `position`, continuing after a short write (rare for regular files, but allowed). */
async function writevAll(file: FileHandle, buffers: readonly Buffer[], position: number): Promise<void> {
  let pending = [...buffers];
  let at = position;
  while (pending.length > 0) {
    const { bytesWritten } = await file.writev(pending, at);
    at += bytesWritten;
    let skip = bytesWritten;
    while (pending.length > 0 && skip >= pending[0]!.length) skip -= pending.shift()!.length;
    if (skip > 0) pending[0] = pending[0]!.subarray(skip);
    if (bytesWritten === 0 && pending.length > 0) throw new Error(`writing at ${at} wrote nothing`);
  }
}

/** Bytes read per step while hashing: one buffer, whatever the segment size. */
const HASH_READ_BYTES = 1024 * 1024;

/** Base64 MD5 of the first `sizeBytes` bytes of an open file, read in HASH_READ_BYTES pieces. */
async function fileMd5(handle: FileHandle, sizeBytes: number): Promise<string> {
  const hash = createHash('md5');
  const buffer = Buffer.allocUnsafe(Math.min(HASH_READ_BYTES, sizeBytes));
  for (let position = 0; position < sizeBytes; ) {
    const { bytesRead } = await handle.read(buffer, 0, Math.min(buffer.length, sizeBytes - position), position);
    if (bytesRead === 0) throw new Error(`file ended at ${position} of ${sizeBytes} bytes`);
    hash.update(buffer.subarray(0, bytesRead));
    position += bytesRead;
  }
  return hash.digest('base64');
}

/**
 * The second half of the checksum pair: for a single-part PUT without SSE-KMS, S3 (and MinIO, Ceph, s3rver) answer
 * the MD5 of the bytes they stored as the ETag. Servers that verify Content-MD5 refuse a mismatch already; this
 * also catches one that does not (s3rver). An ETag that is not a plain MD5 (SSE-KMS, some gateways) proves nothing
 * either way and is accepted.
 */
function checkEtag(key: string, etag: string | undefined, md5Base64: string): void {
  const stored = etag?.replace(/"/g, '').toLowerCase();
  if (stored === undefined || !/^[0-9a-f]{32}$/.test(stored)) return;
  const sent = Buffer.from(md5Base64, 'base64').toString('hex');
  if (stored !== sent) throw new WalcastError('WALCAST_ERR_REMOTE_STORAGE', `object ${key} was stored with MD5 ${stored}, expected ${sent}`);
}

/** S3's answer to a Range that starts at or past the object's end: 416 InvalidRange. */
function isRangeNotSatisfiable(error: unknown): boolean {
  const named = error as { name?: string; $metadata?: { httpStatusCode?: number } };
  return named.name === 'InvalidRange' || named.$metadata?.httpStatusCode === 416;
}

/** S3 says "no such key" as NoSuchKey (GET) or a bare 404 NotFound (HEAD, no body). */
function notFoundOr(error: unknown, key: string): unknown {
  const named = error as { name?: string; $metadata?: { httpStatusCode?: number } };
  const missing = named.name === 'NoSuchKey' || named.name === 'NotFound' || named.$metadata?.httpStatusCode === 404;
  return missing ? new ObjectNotFoundError(key, { cause: error }) : error;
}
