/**
 * walcast as users install it: `npm pack` the repository, `npm install` the tarball into an empty directory (the
 * package's install script builds the native addon there, from its own dependencies and npm's bundled node-gyp),
 * then check from that directory only: `import 'walcast'` starts and stops a server on the native backend, the
 * package carries its types and not the test scripts, and the installed `walcast serve` streams WAL that
 * pg_receivewal receives byte-identical to the primary's.
 *
 * Slow (pack builds the TypeScript, install compiles the addon): about 2-4 minutes on 2 cores. It runs once per
 * suite: the installed package picks its backend itself, so the runner's native re-run skips it.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { formatLsn, type Lsn } from '../src/lsn.js';
import { importWal } from '../src/storage/wal-import.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import { firstDifference, freePort, makeTempDir, runReceiveWal, startPrimary, type PgCluster } from './support/postgres.js';
import { REPO_ROOT } from './support/walcast.js';
import { waitFor } from './support/wait-for.js';

/** `npm pack` runs `prepare` (tsc); generous for a loaded 2-core machine. */
const PACK_TIMEOUT_MS = 300_000;
/** `npm install` of the tarball: dependencies from npm's cache where it has them, plus the addon's compile. */
const INSTALL_TIMEOUT_MS = 600_000;
const SERVE_START_TIMEOUT_MS = 60_000;
const FILE_TIMEOUT_MS = PACK_TIMEOUT_MS + INSTALL_TIMEOUT_MS + 300_000;
const SEGMENT_BYTES = 16 * 1024 * 1024;
/** CI builds the addon in the checkout; where it could, the installed package must build it too. */
const NATIVE_EXPECTED = ['Release', 'Debug'].some((kind) => existsSync(join(REPO_ROOT, 'build', kind, 'walcast_native.node')));
const RERUN_ON_NATIVE = process.env.WALCAST_IO === 'native';

interface CommandResult {
  readonly code: number | null;
  readonly output: string;
}

/**
 * The outer `npm test` exports npm_* settings (lifecycle, package, config) that a nested npm must not inherit, and
 * the runner's WALCAST_IO / WALCAST_NATIVE_STRATEGY would override what the installed package chooses itself.
 */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.toLowerCase().startsWith('npm_') && name !== 'WALCAST_IO' && name !== 'WALCAST_NATIVE_STRATEGY') env[name] = value;
  }
  return env;
}

function run(command: string, args: readonly string[], options: { cwd: string; timeoutMs: number }): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd: options.cwd, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

interface Installed {
  readonly dir: string;
  readonly packageDir: string;
  readonly installOutput: string;
}

async function packAndInstall(): Promise<Installed> {
  const packDir = await makeTempDir('walcast-pack');
  const pack = await run('npm', ['pack', '--pack-destination', packDir, '--silent'], { cwd: REPO_ROOT, timeoutMs: PACK_TIMEOUT_MS });
  assert.equal(pack.code, 0, `npm pack failed:\n${pack.output}`);
  const tarball = (await readdir(packDir)).find((name) => name.endsWith('.tgz'));
  assert.ok(tarball !== undefined, `npm pack wrote no tarball:\n${pack.output}`);
  const dir = await makeTempDir('walcast-installed');
  await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'walcast-install-check', version: '1.0.0', private: true, type: 'module' }));
  // --prefer-offline: dependencies come from npm's cache (filled by the checkout's own install) without a
  // registry round trip each; --foreground-scripts puts the addon build's output into a failure message.
  const args = ['install', join(packDir, tarball), '--prefer-offline', '--no-audit', '--no-fund', '--foreground-scripts'];
  const install = await run('npm', args, { cwd: dir, timeoutMs: INSTALL_TIMEOUT_MS });
  assert.equal(install.code, 0, `npm install of the tarball failed:\n${install.output}`);
  return { dir, packageDir: join(dir, 'node_modules', 'walcast'), installOutput: install.output };
}

interface Wal {
  readonly primary: PgCluster;
  readonly dataDir: string;
  readonly startLsn: Lsn;
  readonly endLsn: Lsn;
}

async function makeWal(): Promise<Wal> {
  const primary = await startPrimary();
  await primary.sql('CREATE TABLE shipped AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g');
  await primary.stop();
  const dataDir = await makeTempDir('walcast-installed-data');
  const imported = await importWal({ dataDir, fromDir: primary.walDir });
  return { primary, dataDir, startLsn: imported.startLsn, endLsn: imported.endLsn };
}

let installed: Installed;
let wal: Wal;

before(async () => {
  if (RERUN_ON_NATIVE) return;
  [installed, wal] = await Promise.all([packAndInstall(), makeWal()]);
}, { timeout: FILE_TIMEOUT_MS });

after(async () => {
  await wal?.primary.stop();
});

describe('the packed package, installed into an empty directory', { skip: RERUN_ON_NATIVE ? 'runs once per suite (the installed package picks its backend)' : false, timeout: FILE_TIMEOUT_MS }, () => {
  test('ships the build script, types and docs, not the test scripts', () => {
    for (const file of ['dist/index.js', 'dist/index.d.ts', 'dist/cli/main.js', 'scripts/build-native.mjs', 'binding.gyp', 'docs/api.md']) {
      assert.ok(existsSync(join(installed.packageDir, file)), `${file} is in the package`);
    }
    for (const file of ['scripts/run-tests.mjs', 'scripts/install-system-deps.sh', 'native/bench', 'src', 'test']) {
      assert.ok(!existsSync(join(installed.packageDir, file)), `${file} is not in the package`);
    }
  });

  test('the install script built the addon there', { skip: NATIVE_EXPECTED ? false : 'the addon cannot be built on this machine (the checkout has none)' }, () => {
    assert.ok(existsSync(join(installed.packageDir, 'build', 'Release', 'walcast_native.node')), `no addon was built:\n${installed.installOutput}`);
  });

  test("import 'walcast' starts a server on a data directory and stops it", async () => {
    const script = `
      import { startWalcast, WALCAST_VERSION } from 'walcast';
      const walcast = await startWalcast({ dataDir: process.argv[1], io: process.argv[2], ingest: false });
      console.log(JSON.stringify({ port: walcast.port, io: walcast.io, version: walcast.version, expected: WALCAST_VERSION }));
      await walcast.stop();
    `;
    const io = NATIVE_EXPECTED ? 'native' : 'auto';
    const result = await run(process.execPath, ['--input-type=module', '-e', script, wal.dataDir, io], { cwd: installed.dir, timeoutMs: SERVE_START_TIMEOUT_MS });
    assert.equal(result.code, 0, result.output);
    const report = JSON.parse(result.output.trim().split('\n').at(-1) ?? '') as { port: number; io: { backend: string }; version: string; expected: string };
    assert.ok(report.port > 0, result.output);
    assert.equal(report.version, report.expected);
    if (NATIVE_EXPECTED) assert.equal(report.io.backend, 'native', result.output);
  });

  test('the installed `walcast serve` streams WAL that pg_receivewal receives byte-identical', async () => {
    const port = await freePort();
    const io = NATIVE_EXPECTED ? 'native' : 'auto';
    const serve = spawn(join(installed.dir, 'node_modules', '.bin', 'walcast'), ['serve', '--data-dir', wal.dataDir, '--listen', `127.0.0.1:${port}`, '--no-http', '--io', io, '--log-level', 'info'], {
      cwd: installed.dir,
      env: cleanEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let log = '';
    serve.stdout.on('data', (chunk: Buffer) => (log += chunk.toString()));
    serve.stderr.on('data', (chunk: Buffer) => (log += chunk.toString()));
    try {
      await waitFor(async () => (log.includes('"listening"') ? true : undefined), SERVE_START_TIMEOUT_MS, { what: `walcast serve listening (log so far: ${log})` });
      if (NATIVE_EXPECTED) assert.match(log, /"io":"native"/, log);
      // The command's shebang (`env -S node FLAGS`) gave node the flags serve runs with (src/cli/node-flags.ts).
      assert.doesNotMatch(log, /started without the node flags/, log);
      const target = await makeTempDir('installed-receivewal');
      const firstName = segmentFileName(1, wal.startLsn / BigInt(SEGMENT_BYTES), SEGMENT_BYTES);
      // An empty .partial of the first segment makes pg_receivewal start there instead of at the newest segment.
      await writeFile(join(target, `${firstName}.partial`), '');
      const received = await runReceiveWal({ port, dir: target, endpos: formatLsn(wal.endLsn - 1n) });
      assert.equal(received.code, 0, `pg_receivewal failed: ${received.stderr}\n${log}`);
      await assertSegmentsMatch(target, wal.primary.walDir, wal.endLsn);
    } finally {
      await stopChild(serve);
    }
  });
});

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), SERVE_START_TIMEOUT_MS);
  await exited;
  clearTimeout(timer);
}

/** Every received segment equals the primary's up to the end of the imported WAL. */
async function assertSegmentsMatch(receivedDir: string, primaryWalDir: string, endLsn: Lsn): Promise<void> {
  const names = (await readdir(receivedDir)).filter((name) => /^[0-9A-F]{24}(\.partial)?$/.test(name)).sort();
  assert.ok(names.length > 0, 'pg_receivewal wrote segments');
  for (const name of names) {
    const plain = name.replace('.partial', '');
    const received = await readFile(join(receivedDir, name));
    const original = await readFile(join(primaryWalDir, plain));
    const segno = BigInt(parseInt(plain.slice(16), 16)) + BigInt(parseInt(plain.slice(8, 16), 16)) * (0x1_0000_0000n / BigInt(SEGMENT_BYTES));
    const validBytes = Math.min(SEGMENT_BYTES, Number(endLsn - segno * BigInt(SEGMENT_BYTES)));
    assert.ok(validBytes > 0, `${name} lies before the end of the imported WAL`);
    const difference = firstDifference(received.subarray(0, validBytes), original.subarray(0, validBytes));
    assert.equal(difference, -1, `${name} differs from the primary at offset ${difference}`);
  }
}
