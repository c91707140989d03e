/**
 * Interleaved A/B against servers held up by bench/hold-servers.ts (issue 13): many short catch-ups of one consumer
 * (the discarding C wal-consumer, or pg_receivewal --no-sync into /dev/shm) against each named server in turn, the
 * order rotating round by round, then per server the median and quartiles of its CPU per GB, its MB/s and the
 * consumer's CPU per GB, and each server's CPU ratio to the first one named, paired round by round. The servers stay
 * up between rounds, so after a few rounds every walcast is a warmed, long-running server (JIT settled), and one run
 * takes a second: twenty rounds of four servers fit in a few minutes, and the quartiles show the machine's noise.
 *
 *   node --import tsx bench/hold-servers.ts --mib 1024 --also base=DIR > /tmp/held.json &
 *   node --import tsx bench/held-ab.ts --held /tmp/held.json --rounds 12 [--consumer pg_receivewal] base new ceiling postgres
 *
 * CPU: /proc utime+stime of the server process (PostgreSQL: the postmaster's reaped children, i.e. the walsender,
 * read once it has exited). Nothing here is a benchmark figure for the README: bench/run.ts is.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { PG_BIN_DIR } from '../test/support/postgres.js';
import { readCpu } from './lib/proc-stats.js';
import { BYTES_PER_GB, BYTES_PER_MB } from './lib/results.js';
import { buildTools } from './lib/tools.js';

interface HeldServers {
  readonly endpos: string;
  readonly start: string;
  readonly bytes: number;
  readonly first: string;
  readonly servers: readonly { readonly name: string; readonly port: number; readonly pid: number }[];
}

interface Sample {
  readonly serverCpuPerGB: number;
  readonly mbps: number;
  readonly consumerCpuPerGB: number;
}

const USAGE = 'usage: node --import tsx bench/held-ab.ts --held FILE [--rounds N] [--consumer wal-consumer|pg_receivewal] NAME...';
const { values, positionals } = parseArgs({ allowPositionals: true, options: { held: { type: 'string' }, rounds: { type: 'string', default: '10' }, consumer: { type: 'string', default: 'wal-consumer' } } });
if (values.held === undefined || positionals.length === 0) throw new Error(USAGE);
if (values.consumer !== 'wal-consumer' && values.consumer !== 'pg_receivewal') throw new Error(USAGE);
const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1 || rounds > 1000) throw new Error(`--rounds takes 1..1000, got ${values.rounds}`);
const held = JSON.parse(readFileSync(values.held, 'utf8')) as HeldServers;
const servers = positionals.map((name) => {
  const server = held.servers.find((candidate) => candidate.name === name);
  if (server === undefined) throw new Error(`no held server named ${name} (held: ${held.servers.map((candidate) => candidate.name).join(', ')})`);
  return server;
});
const consumerBinary = buildTools().consumer;
const gigabytes = held.bytes / BYTES_PER_GB;
/** The server's CPU seconds so far: its own, or (PostgreSQL) what its postmaster reaped from exited walsenders. */
function serverCpu(name: string, pid: number): number {
  const sample = readCpu(pid);
  if (sample === undefined) throw new Error(`server ${name} (pid ${pid}) is gone`);
  return name === 'postgres' ? sample.ownSeconds + sample.reapedChildrenSeconds : sample.ownSeconds;
}
function consumerCpu(): number {
  return readCpu(process.pid)?.reapedChildrenSeconds ?? 0;
}
function runConsumer(port: number): void {
  if (values.consumer === 'wal-consumer') {
    const result = spawnSync(consumerBinary, ['--port', String(port), '--start', held.start, '--bytes', String(held.bytes), '--user', 'repl'], { stdio: 'ignore', timeout: 600_000 });
    if (result.status !== 0) throw new Error(`wal-consumer exited ${result.status}`);
    return;
  }
  const dir = mkdtempSync('/dev/shm/walcast-held-ab-');
  try {
    // An empty .partial of the range's first segment makes pg_receivewal start there (reference §4).
    writeFileSync(join(dir, `${basename(held.first)}.partial`), '');
    const result = spawnSync(join(PG_BIN_DIR, 'pg_receivewal'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'repl', '-D', dir, '--endpos', held.endpos, '-n', '--no-sync', '-w'], { stdio: 'ignore', timeout: 600_000 });
    if (result.status !== 0) throw new Error(`pg_receivewal exited ${result.status}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
const samples = new Map<string, Sample[]>(servers.map((server) => [server.name, []]));
for (let round = 0; round < rounds; round++) {
  for (let turn = 0; turn < servers.length; turn++) {
    const server = servers[(turn + round) % servers.length]!;
    const serverBefore = serverCpu(server.name, server.pid);
    const consumerBefore = consumerCpu();
    const started = performance.now();
    runConsumer(server.port);
    const seconds = (performance.now() - started) / 1000;
    // PostgreSQL's walsender is counted once its postmaster has reaped it.
    await new Promise((resolve) => setTimeout(resolve, 150));
    samples.get(server.name)!.push({
      serverCpuPerGB: (serverCpu(server.name, server.pid) - serverBefore) / gigabytes,
      mbps: held.bytes / BYTES_PER_MB / seconds,
      consumerCpuPerGB: (consumerCpu() - consumerBefore) / gigabytes,
    });
  }
  process.stderr.write(`round ${round + 1}/${rounds} done\n`);
}
/** Median and quartiles, as `median [q1–q3]`. */
function quartiles(values: readonly number[]): string {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (fraction: number): number => sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))]!;
  const middle = sorted.length % 2 === 1 ? sorted[(sorted.length - 1) / 2]! : (sorted[sorted.length / 2 - 1]! + sorted[sorted.length / 2]!) / 2;
  return `${middle.toFixed(3)} [${at(0.25).toFixed(3)}–${at(0.75).toFixed(3)}]`;
}
const base = samples.get(servers[0]!.name)!;
const lines = [`${values.consumer}, ${rounds} rounds, ${(held.bytes / 2 ** 20).toFixed(0)} MiB each; median [quartiles]`, '| server | server CPU s/GB | MB/s | consumer CPU s/GB | CPU ÷ ' + servers[0]!.name + ' |', '|---|---|---|---|---|'];
for (const server of servers) {
  const mine = samples.get(server.name)!;
  const ratio = server === servers[0] ? '' : quartiles(mine.map((sample, index) => sample.serverCpuPerGB / base[index]!.serverCpuPerGB));
  lines.push(`| ${server.name} | ${quartiles(mine.map((sample) => sample.serverCpuPerGB))} | ${quartiles(mine.map((sample) => sample.mbps)).split(' ')[0]} | ${quartiles(mine.map((sample) => sample.consumerCpuPerGB))} | ${ratio} |`);
}
process.stdout.write(`${lines.join('\n')}\n`);
