/**
 * Holds a one-replica setup up for work by hand (issue 13): prepares a WAL range, starts walcast from this tree (native
 * sendfile, and native writev as `new-writev`) and from each --also checkout, exposes PostgreSQL's walsender and the C
 * sendfile ceiling (bench/native/ceiling-server.c: header + sendfile, no JavaScript), warms the
 * page cache, prints the range, ports and PIDs as one JSON line on stdout and waits for SIGTERM/SIGINT. A consumer can
 * then be run against each server under strace or perf (docs/benchmarks.md, "One replica: consumer cost and JIT
 * warm-up", has the command lines).
 *
 *   node --import tsx bench/hold-servers.ts --mib 1024 [--also NAME=DIR]... [--also-io ts|native] [--ts] [--node-args NAME=ARGS]...
 *     [--serve-args NAME=ARGS]... > servers.json
 *
 * --also-io ts serves the --also checkouts on the TypeScript backend (default native sendfile); --ts adds this tree's
 * TypeScript backend as `new-ts`.
 * --node-args NAME=ARGS starts one more walcast from this tree, named NAME, with the node flags ARGS (split on spaces),
 * e.g. `--node-args nomr=--no-memory-reducer` to A/B a V8 setting against `new`. --serve-args NAME=ARGS does the same
 * with flags of `walcast serve`, e.g. `--serve-args "bbr=--tcp-congestion-loopback system"`.
 */
import { parseArgs } from 'node:util';
import { formatLsn } from '../src/lsn.js';
import { alsoIoChoice, namedArgs, postgresTarget, startCeilingServer, startCheckoutServer, startWalcastServer, type ServerTarget } from './lib/servers.js';
import { buildTools } from './lib/tools.js';
import { prepareWal } from './lib/wal-source.js';
import { warmPageCache } from './scenarios/streaming.js';

const { values } = parseArgs({ options: { mib: { type: 'string', default: '1024' }, also: { type: 'string', multiple: true, default: [] }, 'node-args': { type: 'string', multiple: true, default: [] }, 'serve-args': { type: 'string', multiple: true, default: [] }, 'also-io': { type: 'string', default: 'native' }, ts: { type: 'boolean', default: false } } });
const alsoIo = alsoIoChoice(values['also-io']);

const wal = await prepareWal({ pgbenchScale: Math.max(1, Math.round(Number(values.mib) / 12.4)), maxReplicas: 4 });
const targets: ServerTarget[] = [];
for (const entry of values.also) targets.push(await startCheckoutServer(wal, entry, alsoIo));
targets.push(await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'native', strategy: 'sendfile', name: 'new' }));
if (values.ts) targets.push(await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'ts', name: 'new-ts' }));
for (const entry of values['node-args']) {
  const { name, args } = namedArgs(entry, '--node-args');
  targets.push(await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'native', strategy: 'sendfile', name, nodeArgs: args }));
}
for (const entry of values['serve-args']) {
  const { name, args } = namedArgs(entry, '--serve-args');
  targets.push(await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'native', strategy: 'sendfile', name, extraArgs: args }));
}
targets.push(await startWalcastServer({ dataDir: wal.dataDir, walFiles: wal.walcastFiles, io: 'native', strategy: 'writev', name: 'new-writev' }));
targets.push(postgresTarget(wal.primary, wal));
targets.push(await startCeilingServer(buildTools().ceiling, wal));
warmPageCache([...wal.walcastFiles, ...wal.postgresFiles]);
process.stdout.write(`${JSON.stringify({ endpos: formatLsn(wal.endLsn - 1n), start: formatLsn(wal.startLsn), bytes: Number(wal.endLsn - wal.startLsn), first: wal.walcastFiles[0], standbyTemplate: wal.standbyTemplate, standbyStart: formatLsn(wal.standbyStartLsn), servers: targets.map((t) => ({ name: t.name, port: t.port, pid: t.pid, walFiles: t.walFiles })), postmaster: wal.primary.pid })}\n`);
const stop = async (): Promise<void> => {
  await Promise.all(targets.map((target) => target.stop()));
  await wal.primary.stop();
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());
// Keeps the process alive until a signal: the servers are child processes, not handles of this loop.
setInterval(() => undefined, 1 << 30);
