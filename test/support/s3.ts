/**
 * A real S3 API server for tests: s3rver (the npm package) on a free loopback port, storing objects in a temp
 * directory, with one bucket. Stoppable and restartable on the same port and directory, so fault tests can take
 * the store away during uploads and bring it back. Credentials go through the environment, as the SDK's default
 * provider chain reads them in production (s3rver accepts the fixed pair S3RVER/S3RVER).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import S3rver from 's3rver';

export const TEST_BUCKET = 'walcast-test';

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
