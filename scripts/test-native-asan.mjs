#!/usr/bin/env node
/**
 * `npm run test:asan`: builds the addon with AddressSanitizer (scripts/build-native-asan.mjs) and runs
 * test/native-buffer-lifetimes.asan.ts against it, in a node with libasan preloaded. detect_leaks=0 because node
 * itself leaks by design at exit; every other ASan finding (use-after-free, overflow, and the engine's own loan
 * checks of buffers lent to io_uring, native/kernel-loans.h) aborts the run, and the exit status is non-zero.
 */
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildNativeAsan } from './build-native-asan.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const TEST_FILE = join('test', 'native-buffer-lifetimes.asan.ts');
/** The whole run's bound: the test takes well under a minute on a quiet machine. */
const RUN_TIMEOUT_MS = 10 * 60_000;

let addonPath;
try {
  addonPath = buildNativeAsan();
} catch (error) {
  process.stderr.write(`test:asan: ${error.message}\n`);
  process.exit(1);
}
const gcc = spawnSync('gcc', ['-print-file-name=libasan.so'], { encoding: 'utf8' });
const libasan = gcc.status === 0 ? gcc.stdout.trim() : '';
if (!libasan.startsWith('/')) {
  process.stderr.write(`test:asan: cannot locate libasan.so through gcc (${gcc.error?.message ?? gcc.stderr})\n`);
  process.exit(1);
}
const env = {
  ...process.env,
  LD_PRELOAD: libasan,
  ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1',
  WALCAST_NATIVE_PATH: addonPath,
};
const result = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-reporter=spec', TEST_FILE], { cwd: root, env, stdio: 'inherit', timeout: RUN_TIMEOUT_MS });
if (result.status !== 0) {
  process.stderr.write(`test:asan: failed (${result.status ?? result.signal})\n`);
  process.exit(1);
}
process.stdout.write('test:asan: no AddressSanitizer report\n');
