/**
 * Starts the benchmark's S3-compatible server (s3rver, the tests' fixture) as a child process on a loopback port
 * (bench/lib/s3-server-main.ts) and hands back its endpoint, bucket and PID (for CPU accounting). walcast finds
 * the credentials s3rver accepts in the environment, as in production (the AWS SDK's default chain): they are set
 * in this process's environment, which every child inherits.
 */
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { useTestS3Credentials } from '../../test/support/s3.js';
import { spawnTracked } from './processes.js';
import { BENCH_DIR, REPO_ROOT } from './tools.js';

export interface BenchS3 {
  readonly endpoint: string;
  readonly bucket: string;
  /** Where s3rver keeps the objects (removed when it stops). */
  readonly directory: string;
  readonly pid: number;
  stop(): Promise<void>;
}

export async function startBenchS3(): Promise<BenchS3> {
  useTestS3Credentials();
  const child = spawnTracked(process.execPath, ['--import', 'tsx', join(BENCH_DIR, 'lib', 's3-server-main.ts')], { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
  const lines = createInterface({ input: child.child.stdout! });
  const ready = await new Promise<{ endpoint: string; bucket: string; directory: string }>((resolve, reject) => {
    lines.once('line', (line) => resolve(JSON.parse(line) as { endpoint: string; bucket: string; directory: string }));
    void child.exited.then((code) => reject(new Error(`s3rver exited with ${code}: ${child.stderr().trim()}`)));
  });
  return { ...ready, pid: child.pid, stop: () => child.stop() };
}
