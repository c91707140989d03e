/**
 * The benchmark's object store as its own process: the tests' s3rver fixture (test/support/s3.ts: loopback, free
 * port, one bucket, temp directory) started here, its endpoint printed as one JSON line on stdout. A separate
 * process so the remote catch-up benchmark can account its CPU apart from the harness's and walcast's. SIGTERM or
 * a closed stdin stops it and removes its directory.
 *
 * Run by bench/lib/s3-server.ts, not by hand.
 */
import { TEST_BUCKET, startTestS3 } from '../../test/support/s3.js';

const s3 = await startTestS3();
let stopping = false;
async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  await s3.dispose();
  process.exit(0);
}
process.once('SIGTERM', () => void stop());
process.once('SIGINT', () => void stop());
process.stdin.on('end', () => void stop());
process.stdin.resume();
process.stdout.write(`${JSON.stringify({ endpoint: s3.endpoint, bucket: TEST_BUCKET, directory: s3.directory })}\n`);
