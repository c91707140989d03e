/**
 * scripts/install-system-deps.sh (run by `npm test`'s pretest) must never harm the machine: it stops only a
 * PostgreSQL cluster that its own install created, and never stops or disables a service. The script runs for real
 * with stand-ins on PATH for the system tools it calls (dpkg-query, apt-get, pg_lsclusters, pg_ctlcluster,
 * systemctl, sudo), which record every call, and with the cluster config and policy-rc.d paths moved into a temp
 * dir, so the machine's own PostgreSQL is never touched.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { makeTempDir } from './support/postgres.js';
import { REPO_ROOT } from './support/walcast.js';

/** The script does nothing slow with the stand-ins; this only bounds a hang. */
const SCRIPT_TIMEOUT_MS = 60_000;

/** Each stand-in appends its name and arguments to $SHIM_LOG; dpkg-query and apt-get simulate a missing package. */
const SHIMS: Record<string, string> = {
  'dpkg-query': `#!/bin/sh
package="$(eval echo \\$$#)"
if [ "$package" = postgresql-15 ] && [ -n "$SHIM_PG_MISSING" ] && [ ! -e "$SHIM_DIR/installed" ]; then exit 1; fi
printf 'install ok installed'
`,
  'apt-get': `#!/bin/sh
echo "apt-get $*" >> "$SHIM_LOG"
case "$*" in *install*) mkdir -p "$WALCAST_DEBIAN_CLUSTER_CONFIG"; touch "$SHIM_DIR/installed" ;; esac
`,
  pg_lsclusters: `#!/bin/sh
[ -d "$WALCAST_DEBIAN_CLUSTER_CONFIG" ] && echo "15  main    5432 online postgres /var/lib/postgresql/15/main /var/log/postgresql/postgresql-15-main.log"
exit 0
`,
  pg_ctlcluster: '#!/bin/sh\necho "pg_ctlcluster $*" >> "$SHIM_LOG"\n',
  systemctl: '#!/bin/sh\necho "systemctl $*" >> "$SHIM_LOG"\n',
  sudo: '#!/bin/sh\necho "sudo $*" >> "$SHIM_LOG"\n[ "$1" = -n ] && shift\nexec "$@"\n',
};

interface ScriptRun {
  readonly code: number | null;
  readonly output: string;
  readonly calls: string[];
}

async function runScript(options: { clusterExistsBefore: boolean; postgresMissing: boolean }): Promise<ScriptRun> {
  const dir = await makeTempDir('install-deps');
  const shimDir = join(dir, 'bin');
  await mkdir(shimDir);
  for (const [name, body] of Object.entries(SHIMS)) {
    await writeFile(join(shimDir, name), body);
    await chmod(join(shimDir, name), 0o755);
  }
  const clusterConfig = join(dir, 'etc-postgresql-15-main');
  if (options.clusterExistsBefore) await mkdir(clusterConfig);
  const log = join(dir, 'calls.log');
  await writeFile(log, '');
  const env = {
    ...process.env,
    PATH: `${shimDir}:${process.env.PATH ?? ''}`,
    SHIM_DIR: shimDir,
    SHIM_LOG: log,
    SHIM_PG_MISSING: options.postgresMissing ? '1' : '',
    WALCAST_DEBIAN_CLUSTER_CONFIG: clusterConfig,
    WALCAST_POLICY_RC_D: join(dir, 'policy-rc.d'),
  };
  const child = spawn('bash', [join(REPO_ROOT, 'scripts/install-system-deps.sh')], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), SCRIPT_TIMEOUT_MS);
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  clearTimeout(timer);
  const calls = (await readFile(log, 'utf8')).split('\n').filter((line) => line !== '');
  return { code, output, calls };
}

test('a cluster that was there before the run is left alone, and no service is stopped or disabled', async () => {
  const run = await runScript({ clusterExistsBefore: true, postgresMissing: false });
  assert.equal(run.code, 0, run.output);
  assert.deepEqual(run.calls.filter((call) => /pg_ctlcluster|systemctl/.test(call)), [], run.calls.join('\n'));
});

test('an install that finds the cluster already there (only another package missing) leaves it alone', async () => {
  const run = await runScript({ clusterExistsBefore: true, postgresMissing: true });
  assert.equal(run.code, 0, run.output);
  assert.ok(run.calls.some((call) => call.includes('apt-get install')), `the missing package is installed:\n${run.calls.join('\n')}`);
  assert.deepEqual(run.calls.filter((call) => /pg_ctlcluster|systemctl/.test(call)), [], run.calls.join('\n'));
});

test('a cluster that this run installed and found running is stopped, and no service is disabled', async () => {
  const run = await runScript({ clusterExistsBefore: false, postgresMissing: true });
  assert.equal(run.code, 0, run.output);
  assert.ok(run.calls.some((call) => call.includes('apt-get install')), run.calls.join('\n'));
  assert.deepEqual(run.calls.filter((call) => call.startsWith('pg_ctlcluster')), ['pg_ctlcluster 15 main stop']);
  assert.deepEqual(run.calls.filter((call) => call.startsWith('systemctl')), []);
});
