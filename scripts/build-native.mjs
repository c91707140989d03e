#!/usr/bin/env node
/**
 * Builds the native I/O addon (native/, binding.gyp) with node-gyp, offline, against the Node headers on this
 * machine. Runs as the package's `install` script: a failed build (no compiler, no liburing, not Linux) is
 * reported and tolerated, because walcast then runs on its pure-TypeScript backend. With --required (npm run
 * build:native) a failure exits non-zero.
 *
 * A build whose stamp (build/walcast-native.stamp: a hash of binding.gyp, native/ sources, the node-addon-api
 * version, platform, arch, Debug/Release and WALCAST_NATIVE_SANITIZE) matches is kept, so reinstalling does not recompile; --force rebuilds.
 * node-gyp comes from the package's own dependencies when installed (a checkout's devDependencies), else from the
 * copy npm bundles and names in npm_config_node_gyp (a user's `npm install walcast`).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, readdirSync, statSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const required = process.argv.includes('--required');
const debug = process.argv.includes('--debug') || process.env.WALCAST_NATIVE_DEBUG === '1';
const force = process.argv.includes('--force');
const builtAddon = join(root, 'build', debug ? 'Debug' : 'Release', 'walcast_native.node');
const stampPath = join(root, 'build', 'walcast-native.stamp');

function finish(ok, why) {
  const line = ok ? `walcast: native I/O addon built (${why})` : `walcast: native I/O addon not built: ${why}; walcast will use the TypeScript I/O backend`;
  process.stderr.write(line + '\n');
  process.exit(ok || !required ? 0 : 1);
}

if (process.platform !== 'linux') finish(false, `platform ${process.platform} is not Linux`);
if (process.env.WALCAST_SKIP_NATIVE === '1') finish(false, 'WALCAST_SKIP_NATIVE=1');

/** What the build depends on; a stamp that matches means the existing build is this one. */
function buildKey() {
  const hash = createHash('sha256');
  hash.update(`${process.platform} ${process.arch} ${debug ? 'Debug' : 'Release'}\n`);
  // binding.gyp reads this one environment variable (the ASan build's); a build made with it is another build.
  hash.update(`sanitize ${process.env.WALCAST_NATIVE_SANITIZE ?? 'none'}\n`);
  try {
    hash.update(`node-addon-api ${requireFromRoot('node-addon-api/package.json').version}\n`);
  } catch {
    hash.update('node-addon-api missing\n');
  }
  const sources = ['binding.gyp', ...readdirSync(join(root, 'native')).filter((name) => /\.(cc|h)$/.test(name)).sort().map((name) => `native/${name}`)];
  for (const source of sources) hash.update(`${source}\n`).update(readFileSync(join(root, source)));
  return hash.digest('hex');
}

const requireFromRoot = createRequire(join(root, 'package.json'));
const key = buildKey();
if (!force && existsSync(builtAddon) && existsSync(stampPath) && readFileSync(stampPath, 'utf8').trim() === key) {
  finish(true, `${debug ? 'Debug' : 'Release'}, up to date: kept the existing build`);
}

function findNodeGyp() {
  try {
    return requireFromRoot.resolve('node-gyp/bin/node-gyp.js');
  } catch {
    const bundled = process.env.npm_config_node_gyp;
    return bundled !== undefined && bundled !== '' && existsSync(bundled) ? bundled : undefined;
  }
}

const nodeGyp = findNodeGyp();
if (nodeGyp === undefined) finish(false, 'node-gyp is not installed and npm did not name its bundled copy (npm_config_node_gyp)');
// Node's headers ship with Node itself (<prefix>/include/node: /usr for distribution packages, the tarball's
// root for nodejs.org builds); pointing node-gyp at them keeps the build offline. Without them node-gyp would
// try to download headers, and fail without network, which is tolerated like any other build failure.
const prefixes = [join(dirname(process.execPath), '..'), '/usr', '/usr/local'];
const prefix = prefixes.find((candidate) => existsSync(join(candidate, 'include', 'node', 'node.h')));
const nodeDir = prefix === undefined ? [] : [`--nodedir=${prefix}`];
const args = [nodeGyp, 'rebuild', ...nodeDir, ...(debug ? ['--debug'] : []), '--loglevel=warn'];
// `node-gyp rebuild` deletes build/ first, so two builds of one checkout at once (an install and a test run's
// pretest, say) break each other. One build per checkout at a time: a lock file, waited for (bounded).
const BUILD_LOCK_WAIT_MS = 300_000;
/** A lock older than this is left over from a killed build. */
const BUILD_LOCK_STALE_MS = 600_000;
const lockPath = join(tmpdir(), `walcast-native-build-${createHash('sha256').update(root).digest('hex').slice(0, 16)}.lock`);

function lockIsStale() {
  try {
    if (Date.now() - statSync(lockPath).mtimeMs > BUILD_LOCK_STALE_MS) return true;
    process.kill(Number(readFileSync(lockPath, 'utf8')), 0);
    return false;
  } catch (error) {
    // ESRCH: the holder is gone; ENOENT: released meanwhile. EPERM: alive, another user's process.
    return error.code !== 'EPERM';
  }
}

function acquireBuildLock() {
  const deadline = Date.now() + BUILD_LOCK_WAIT_MS;
  while (Date.now() < deadline) {
    try {
      const fd = openSync(lockPath, 'wx');
      writeSync(fd, String(process.pid));
      closeSync(fd);
      process.once('exit', () => {
        try {
          unlinkSync(lockPath);
        } catch {
          // Already gone.
        }
      });
      return true;
    } catch (error) {
      if (error.code !== 'EEXIST') return false;
      if (lockIsStale()) {
        try {
          unlinkSync(lockPath);
        } catch {
          // Someone else removed it first.
        }
        continue;
      }
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 500);
    }
  }
  return false;
}

if (!acquireBuildLock()) finish(false, `another build of this checkout holds ${lockPath}`);
const result = spawnSync(process.execPath, args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
if (result.status === 0) {
  writeFileSync(stampPath, `${key}\n`);
  finish(true, debug ? 'Debug' : 'Release');
}
finish(false, `node-gyp exited with ${result.status ?? result.signal}`);
