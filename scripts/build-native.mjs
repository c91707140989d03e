#!/usr/bin/env node
/**
 * Builds the native I/O addon (native/, binding.gyp) with node-gyp, offline, against the Node headers on this
 * machine. Runs as the package's `install` script: a failed build (no compiler, no liburing, not Linux) is
 * reported and tolerated, because walcast then runs on its pure-TypeScript backend. With --required (npm run
 * build:native) a failure exits non-zero.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const required = process.argv.includes('--required');
const debug = process.argv.includes('--debug') || process.env.WALCAST_NATIVE_DEBUG === '1';

function finish(ok, why) {
  const line = ok ? `walcast: native I/O addon built (${why})` : `walcast: native I/O addon not built: ${why}; walcast will use the TypeScript I/O backend`;
  process.stderr.write(line + '\n');
  process.exit(ok || !required ? 0 : 1);
}

if (process.platform !== 'linux') finish(false, `platform ${process.platform} is not Linux`);
if (process.env.WALCAST_SKIP_NATIVE === '1') finish(false, 'WALCAST_SKIP_NATIVE=1');

let nodeGyp;
try {
  nodeGyp = createRequire(join(root, 'package.json')).resolve('node-gyp/bin/node-gyp.js');
} catch {
  finish(false, 'node-gyp is not installed (install dev dependencies)');
}
// Node's headers ship with Node itself (<prefix>/include/node: /usr for distribution packages, the tarball's
// root for nodejs.org builds); pointing node-gyp at them keeps the build offline. Without them node-gyp would
// try to download headers, and fail without network, which is tolerated like any other build failure.
const prefixes = [join(dirname(process.execPath), '..'), '/usr', '/usr/local'];
const prefix = prefixes.find((candidate) => existsSync(join(candidate, 'include', 'node', 'node.h')));
const nodeDir = prefix === undefined ? [] : [`--nodedir=${prefix}`];
const args = [nodeGyp, 'rebuild', ...nodeDir, ...(debug ? ['--debug'] : []), '--loglevel=warn'];
const result = spawnSync(process.execPath, args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
if (result.status === 0) finish(true, debug ? 'Debug' : 'Release');
finish(false, `node-gyp exited with ${result.status ?? result.signal}`);
