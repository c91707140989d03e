/**
 * A real S3 API server for tests: s3rver (the npm package) on a free loopback port, storing objects in a temp
 * directory, with one bucket. Stoppable and restartable on the same port and directory, so fault tests can take
 * the store away during uploads and bring it back. Credentials go through the environment, as the SDK's default
 * provider chain reads them in production (s3rver accepts the fixed pair S3RVER/S3RVER).
 *
 * PUT is made atomic, as S3's is (a reader sees the old object or the new one, never part of one): s3rver 3.7 writes
 * a PUT's body into the object's file in place (truncated first, then filled as the body arrives) and its metadata
 * after, so a HEAD or GET during a rewrite saw an empty or half-written object, and a GET could pair one version's
 * length with the other's bytes. Tests that read an object walcast rewrites (the timeline metadata) then failed on
 * something S3 never does. makePutsAtomic below fixes that in the fixture; walcast itself must not rely on it. It
 * also answers a ranged GET of an empty object 416, as S3 does (s3rver sent a broken 206).
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import S3rver, { type S3rverFilesystemStore, type S3rverStoredObject } from 's3rver';
import { parseRemoteStorageUrl } from '../../src/remote/remote-config.js';
import { S3ObjectStore } from '../../src/remote/s3-object-store.js';

export const TEST_BUCKET = 'walcast-test';

/** A store on `prefix` of the test bucket through `endpoint`: the S3 server's own, or a fault proxy's in front of it. */
export function testStore(endpoint: string, prefix: string): S3ObjectStore {
  return new S3ObjectStore(parseRemoteStorageUrl(`s3://${TEST_BUCKET}/${prefix}`, { endpoint }));
}

export interface TestS3 {
  readonly endpoint: string;
  readonly port: number;
  readonly directory: string;
  stop(): Promise<void>;
  start(): Promise<void>;
  dispose(): Promise<void>;
}

/** s3rver's only accepted credentials; set for the SDK's environment provider. */
export function useTestS3Credentials(): void {
  process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
  process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
  process.env.AWS_REGION = 'us-east-1';
}

export async function startTestS3(): Promise<TestS3> {
  useTestS3Credentials();
  const directory = await mkdtemp(join(tmpdir(), 'walcast-s3-'));
  let port = 0;
  let server: S3rver | undefined;
  const start = async (): Promise<void> => {
    const instance = new S3rver({ address: '127.0.0.1', port, silent: true, directory, configureBuckets: [{ name: TEST_BUCKET, configs: [] }] });
    makePutsAtomic(instance.store);
    const address = await instance.run();
    port = address.port;
    server = instance;
  };
  await start();
  const stop = async (): Promise<void> => {
    const running = server;
    server = undefined;
    if (running === undefined) return;
    // The SDK keeps connections alive; close() alone would wait for them.
    const closing = running.close();
    running.httpServer?.closeAllConnections();
    await closing;
  };
  return {
    get endpoint() {
      return `http://127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    directory,
    stop,
    start,
    dispose: async () => {
      await stop();
      await rm(directory, { recursive: true, force: true });
    },
  };
}

/**
 * Replaces s3rver's in-place PUT with one that stores the body in a temp file beside the object (a name s3rver's
 * listing ignores), then, holding the key's lock, writes the metadata and renames the temp file over the object. A
 * GET or HEAD holds the same lock while s3rver reads the metadata and opens the object file, so it answers one
 * version throughout (an open file keeps its bytes across the rename). A body that fails part-way (the client went
 * away) stores nothing, as S3.
 */
/** What s3rver's store answers a GET or HEAD with (its S3Object). */
interface S3rverObject {
  readonly size: number;
  readonly range?: { start: number; end: number };
  content: NodeJS.ReadableStream & { destroy(): void } | null;
}

function makePutsAtomic(store: S3rverFilesystemStore): void {
  const locks = new Map<string, Promise<void>>();
  const withKeyLock = async <T>(bucket: string, key: string, work: () => Promise<T>): Promise<T> => {
    const id = `${bucket}/${key}`;
    const before = locks.get(id) ?? Promise.resolve();
    const done = before.then(work);
    const settled = done.then(
      () => undefined,
      () => undefined,
    );
    locks.set(id, settled);
    void settled.then(() => {
      if (locks.get(id) === settled) locks.delete(id);
    });
    return done;
  };
  let temps = 0;
  const getObject = store.getObject.bind(store);
  store.getObject = async (bucket, key, options) => {
    const object = (await withKeyLock(bucket, key, () => getObject(bucket, key, options))) as S3rverObject | null;
    // A Range on an empty object: s3rver answered 206 with Content-Length 1 and no body (the client then waited
    // for a byte that never came); S3 answers 416 InvalidRange, which s3rver's controller sends for a null content.
    if (object !== null && object.range !== undefined && object.size === 0 && object.content !== null) {
      object.content.destroy();
      object.content = null;
    }
    return object;
  };
  store.putObject = async (object: S3rverStoredObject) => {
    const objectPath = store.getResourcePath(object.bucket, object.key, 'object');
    await mkdir(dirname(objectPath), { recursive: true });
    const tempPath = `${objectPath}.put-${process.pid}-${++temps}`;
    const md5 = createHash('md5');
    let size = 0;
    try {
      if (Buffer.isBuffer(object.content)) {
        md5.update(object.content);
        size = object.content.length;
        await writeFile(tempPath, object.content);
      } else {
        const hashing = new Transform({
          transform(chunk: Buffer, _encoding, callback) {
            md5.update(chunk);
            size += chunk.length;
            callback(null, chunk);
          },
        });
        await pipeline(object.content, hashing, createWriteStream(tempPath));
      }
      const digest = md5.digest('hex');
      await withKeyLock(object.bucket, object.key, async () => {
        await store.putMetadata(object.bucket, object.key, object.metadata, digest);
        await rename(tempPath, objectPath);
      });
      return { size, md5: digest };
    } catch (error) {
      await unlink(tempPath).catch(() => undefined);
      throw error;
    }
  };
}
