/** node-flags: what serve checks, and that every way this repository starts serve gives node those flags. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { SERVE_NODE_FLAGS, missingServeNodeFlags } from './node-flags.js';

const REPO_ROOT = join(fileURLToPath(import.meta.url), '..', '..', '..');

test('missingServeNodeFlags names the flags node was not given, in either spelling V8 reads', () => {
  assert.deepEqual(missingServeNodeFlags([]), [...SERVE_NODE_FLAGS]);
  assert.deepEqual(missingServeNodeFlags(['--import', 'tsx']), [...SERVE_NODE_FLAGS]);
  assert.deepEqual(missingServeNodeFlags([...SERVE_NODE_FLAGS]), []);
  assert.deepEqual(missingServeNodeFlags(SERVE_NODE_FLAGS.map((flag) => flag.replaceAll('-', '_').replace(/^__/, '--'))), []);
});

test('npm start and the walcast command (its shebang, kept by tsc) give node every serve flag', () => {
  const manifest = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  const start = manifest.scripts.start ?? '';
  const shebang = readFileSync(join(REPO_ROOT, 'src/cli/main.ts'), 'utf8').split('\n')[0] ?? '';
  assert.match(shebang, /^#!\/usr\/bin\/env -S node /, 'env -S splits the flags from the interpreter');
  for (const flag of SERVE_NODE_FLAGS) {
    // Before the script: after it, node would hand the flag to walcast as an argument.
    assert.ok(start.startsWith('node ') && start.indexOf(flag) > 0 && start.indexOf(flag) < start.indexOf('dist/cli/main.js'), `npm start: ${start}`);
    assert.ok(shebang.split(' ').includes(flag), `shebang: ${shebang}`);
  }
});
