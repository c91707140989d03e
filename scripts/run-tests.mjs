#!/usr/bin/env node
/**
 * The one test command (`npm test`): runs every test with node's built-in runner through tsx, the streaming
 * integration tests once per I/O backend, and ends with one aggregate line, `N passed, N failed, N skipped`.
 *
 * Convention (which files run how often):
 * - `src/**\/*.test.ts` (unit) and `test/**\/*.test.ts` (integration, except test/support/) run once, with
 *   WALCAST_IO=ts, all in one `node --test` invocation.
 * - Files named `*.per-backend.test.ts` (under test/) run once per I/O backend: WALCAST_IO=ts, and, when the
 *   native addon is built (build/Release or build/Debug walcast_native.node), WALCAST_IO=native with
 *   WALCAST_NATIVE_STRATEGY=sendfile, writev and uring in turn.
 * - When the addon is built (and WALCAST_TEST_BACKENDS is not set), the other integration files (test/) run a
 *   second time with WALCAST_IO=native and its default strategy, except the backend-agnostic ones listed in
 *   NATIVE_RERUN_SKIPPED: every test that streams through an I/O backend runs once per backend.
 *
 * Environment:
 * - WALCAST_TEST_FILTER: only files whose path contains this substring.
 * - WALCAST_TEST_BACKENDS: comma list overriding the backends, e.g. `ts,native/uring` (default: ts, plus the
 *   three native strategies when the addon is built).
 * - WALCAST_KEEP_TMP=1: keep the per-run temp dir (postgres logs, data dirs) for inspection.
 * - WALCAST_TEST_TIMEOUT_MS: per-test timeout (default 300000); WALCAST_TEST_RUN_TIMEOUT_MS: per-run bound.
 *
 * Output: the spec reporter streams to stdout as tests finish; a TAP copy of each run goes to a file whose
 * trailer (`# pass N` ...) is what gets counted, so test output can never be mistaken for a summary. Each run gets
 * its own temp dir (WALCAST_TEST_TMPDIR, used by test/support/postgres.ts); afterwards any process still running
 * from it (a leaked postgres) is stopped and reported, and the dir is removed. Exit status is non-zero when a
 * test failed or was cancelled, or a run crashed or timed out.
 */
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const PER_BACKEND_SUFFIX = '.per-backend.test.ts';
const NATIVE_STRATEGIES = ['sendfile', 'writev', 'uring'];
/** Two files at a time: integration files each run PostgreSQL clusters, and CI machines have 2 cores. */
const TEST_CONCURRENCY = 2;
const TEST_TIMEOUT_MS = Number(process.env.WALCAST_TEST_TIMEOUT_MS ?? 300_000);
/** One run must not eat the whole 90-minute CI budget. */
const RUN_TIMEOUT_MS = Number(process.env.WALCAST_TEST_RUN_TIMEOUT_MS ?? 30 * 60_000);
/** A leaked postmaster gets this long for an immediate shutdown before SIGKILL. */
const LEFTOVER_STOP_WAIT_MS = 5_000;
const SKIPPED_DIRS = new Set(['node_modules', 'support', 'fixtures', 'dist', 'build']);
/**
 * Integration files that do not take part in the native rerun, because the I/O backend under test does not change
 * what they exercise: a shell script, command-line parsing, pure codecs, the packed package (it chooses its own
 * backend), a bench that starts one server per backend itself, and children started with WALCAST_IO=ts. Keeps
 * `npm test` within its 20-minute budget on 2 cores. (test/storms.test.ts does rerun, as a reduced variant with the
 * native backend's own memory bound: see its header.)
 */
const NATIVE_RERUN_SKIPPED = new Set([
  'test/install-system-deps.test.ts',
  'test/cli.test.ts',
  'test/fuzz-codecs.test.ts',
  'test/package-install.test.ts',
  'test/bench-smoke.test.ts',
  'test/retention.test.ts',
  // Retention across a switch; streaming through a switch runs per backend in test/failover.test.ts.
  'test/failover-retention.test.ts',
  // Offload naming across a switch against the S3 server, nothing streamed; test/failover-offload.test.ts streams.
  'test/remote-timeline-switch.test.ts',
  // Makes its own ts backend (a small send pool): the native rerun would run the same thing again.
  'test/stalled-replicas-send-pool.test.ts',
]);

function findTests(dir) {
  if (!existsSync(dir)) return [];
  const found = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory() && !SKIPPED_DIRS.has(entry.name) && !entry.name.startsWith('.')) found.push(...findTests(path));
    else if (entry.isFile() && entry.name.endsWith('.test.ts')) found.push(relative(ROOT, path));
  }
  return found.sort();
}

function backends() {
  const all = [{ name: 'ts', env: { WALCAST_IO: 'ts' } }];
  for (const strategy of NATIVE_STRATEGIES) all.push({ name: `native/${strategy}`, env: { WALCAST_IO: 'native', WALCAST_NATIVE_STRATEGY: strategy } });
  const chosen = process.env.WALCAST_TEST_BACKENDS;
  if (chosen !== undefined && chosen !== '') {
    const names = chosen.split(',').map((name) => name.trim());
    const unknown = names.filter((name) => !all.some((backend) => backend.name === name));
    if (unknown.length > 0) throw new Error(`WALCAST_TEST_BACKENDS: unknown backend(s) ${unknown.join(', ')}; known: ${all.map((backend) => backend.name).join(', ')}`);
    return all.filter((backend) => names.includes(backend.name));
  }
  const built = ['Release', 'Debug'].some((kind) => existsSync(join(ROOT, 'build', kind, 'walcast_native.node')));
  if (!built) {
    console.log('run-tests: native addon not built (no build/{Release,Debug}/walcast_native.node): per-backend tests run on ts only');
    return all.slice(0, 1);
  }
  return all;
}

function planRuns() {
  const filter = process.env.WALCAST_TEST_FILTER ?? '';
  const files = [...findTests(join(ROOT, 'src')), ...findTests(join(ROOT, 'test'))].filter((file) => file.includes(filter));
  const perBackend = files.filter((file) => file.endsWith(PER_BACKEND_SUFFIX));
  const once = files.filter((file) => !file.endsWith(PER_BACKEND_SUFFIX));
  const runs = [];
  const chosen = backends();
  if (once.length > 0) runs.push({ name: 'all tests once (WALCAST_IO=ts)', env: { WALCAST_IO: 'ts' }, files: once });
  // The rest of the integration suite (operations, ingest, CLI, native I/O ...) also runs on the native backend
  // with its default strategy, so the whole suite has run once per backend; unit tests do not depend on it.
  const integration = once.filter((file) => file.startsWith('test/') && !NATIVE_RERUN_SKIPPED.has(file));
  const nativeDefault = process.env.WALCAST_TEST_BACKENDS === undefined || process.env.WALCAST_TEST_BACKENDS === '' ? chosen.some((backend) => backend.name.startsWith('native/')) : false;
  if (nativeDefault && integration.length > 0) runs.push({ name: 'integration tests again (WALCAST_IO=native, default strategy)', env: { WALCAST_IO: 'native' }, files: integration });
  if (perBackend.length > 0) for (const backend of chosen) runs.push({ name: `per-backend: ${backend.name}`, env: backend.env, files: perBackend });
  return runs;
}

/** The last value of each `# key N` line at column 0: the run's trailer, after any test output. */
function parseTapTrailer(text) {
  const counts = {};
  for (const match of text.matchAll(/^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$/gm)) counts[match[1]] = Number(match[2]);
  return counts;
}

/** PIDs of processes whose command line mentions DIR: postmasters are started as `postgres -D DIR/...`. */
function processesUsing(dir) {
  const pids = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(dir)) pids.push(Number(entry));
    } catch {
      // Exited while we looked, or not ours to read.
    }
  }
  return pids;
}

async function stopLeftovers(dir) {
  const pids = processesUsing(dir);
  if (pids.length === 0) return 0;
  console.log(`run-tests: WARNING: ${pids.length} process(es) outlived their tests (pids ${pids.join(', ')}); stopping them`);
  for (const pid of pids) signalQuietly(pid, 'SIGQUIT');
  const deadline = Date.now() + LEFTOVER_STOP_WAIT_MS;
  while (processesUsing(dir).length > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
  for (const pid of processesUsing(dir)) signalQuietly(pid, 'SIGKILL');
  return pids.length;
}

function signalQuietly(pid, signal) {
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

let current;
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    // Children run in their own process group (so a timeout can end all of it); pass the signal on.
    if (current !== undefined) signalQuietly(-current.pid, signal);
    process.exitCode = 130;
  });
}

function runOnce(run, index, total) {
  const runDir = mkdtempSync(join(tmpdir(), 'walcast-tests-'));
  // The fixture's postgres user must be able to enter its cluster dirs below this one.
  chmodSync(runDir, 0o755);
  const tapFile = join(runDir, 'results.tap');
  console.log(`\n=== run ${index}/${total}: ${run.name} (${run.files.length} file${run.files.length === 1 ? '' : 's'}) ===`);
  const args = [
    '--import', 'tsx', '--test', `--test-concurrency=${TEST_CONCURRENCY}`, `--test-timeout=${TEST_TIMEOUT_MS}`,
    '--test-reporter=spec', '--test-reporter-destination=stdout', '--test-reporter=tap', `--test-reporter-destination=${tapFile}`,
    ...run.files,
  ];
  const startedMs = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, {
      cwd: ROOT,
      env: { ...process.env, ...run.env, WALCAST_TEST_TMPDIR: runDir },
      stdio: ['ignore', 'inherit', 'inherit'],
      detached: true,
    });
    current = child;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      console.log(`run-tests: run "${run.name}" exceeded ${RUN_TIMEOUT_MS} ms; killing it`);
      signalQuietly(-child.pid, 'SIGKILL');
    }, RUN_TIMEOUT_MS);
    child.once('exit', async (code, signal) => {
      clearTimeout(timer);
      current = undefined;
      const leaked = await stopLeftovers(runDir);
      const counts = existsSync(tapFile) ? parseTapTrailer(readFileSync(tapFile, 'utf8')) : {};
      if (process.env.WALCAST_KEEP_TMP === '1') console.log(`run-tests: kept ${runDir}`);
      else rmSync(runDir, { recursive: true, force: true, maxRetries: 3 });
      resolve({ run, code, signal, timedOut, leaked, counts, seconds: Math.round((Date.now() - startedMs) / 1000) });
    });
  });
}

/** A run that exited badly without a failing test (crash, timeout, no trailer) counts as one failure. */
function tally(result) {
  const { counts } = result;
  const passed = counts.pass ?? 0;
  const skipped = (counts.skipped ?? 0) + (counts.todo ?? 0);
  let failed = (counts.fail ?? 0) + (counts.cancelled ?? 0);
  const crashed = result.timedOut || counts.pass === undefined || (result.code !== 0 && failed === 0);
  if (crashed) failed += 1;
  return { passed, failed, skipped, crashed };
}

async function main() {
  const runs = planRuns();
  if (runs.length === 0) {
    console.log(`run-tests: no test files match WALCAST_TEST_FILTER="${process.env.WALCAST_TEST_FILTER ?? ''}"`);
    console.log('0 passed, 1 failed, 0 skipped');
    process.exit(1);
  }
  const totals = { passed: 0, failed: 0, skipped: 0 };
  const lines = [];
  for (const [index, run] of runs.entries()) {
    const result = await runOnce(run, index + 1, runs.length);
    const counted = tally(result);
    totals.passed += counted.passed;
    totals.failed += counted.failed;
    totals.skipped += counted.skipped;
    const notes = [counted.crashed ? `CRASHED (exit ${result.code ?? result.signal}${result.timedOut ? ', timed out' : ''})` : '', result.leaked > 0 ? `${result.leaked} leaked process(es)` : ''].filter(Boolean);
    lines.push(`  ${run.name}: ${counted.passed} passed, ${counted.failed} failed, ${counted.skipped} skipped (${result.seconds} s)${notes.length > 0 ? ' — ' + notes.join(', ') : ''}`);
    if (process.exitCode === 130) break;
  }
  console.log('\n=== summary ===');
  for (const line of lines) console.log(line);
  // The last line is machine-read (CI): keep exactly this form.
  console.log(`${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`);
  process.exit(totals.failed > 0 || process.exitCode === 130 ? 1 : 0);
}

await main();
