/**
 * Interleaved A/B against servers held up by bench/hold-servers.ts (issue 13): many short catch-ups of one consumer
 * (the discarding C wal-consumer, or pg_receivewal --no-sync into /dev/shm) against each named server in turn, the
 * order rotating round by round, then per server the median and quartiles of its CPU per GB, its MB/s and the
 * consumer's CPU per GB, and each server's CPU ratio to the first one named, paired round by round. The servers stay
 * up between rounds, so after a few rounds every walcast is a warmed, long-running server (JIT settled), and one run
 * takes a second: twenty rounds of four servers fit in a few minutes, and the quartiles show the machine's noise.
 *
 *   node --import tsx bench/hold-servers.ts --mib 1024 --also base=DIR > /tmp/held.json &
 *   node --import tsx bench/held-ab.ts --held /tmp/held.json --rounds 12 [--consumer pg_receivewal] [--gap-seconds S] base new ceiling postgres
 *
 * --gap-seconds S waits S seconds before every run and then reads the server's files again (as bench/run.ts does before
 * each warm run: this guest's DAMON reclaim pages out cache idle for ~6 s), so each server idles for minutes between
 * its runs, as in a full run, instead of seconds.
 *
 * CPU: bench/run.ts's meters (walcast and the ceiling: the server process; PostgreSQL: the run's walsender, followed by
 * pid). Nothing here is a benchmark figure for the README: bench/run.ts is.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { PG_BIN_DIR } from '../test/support/postgres.js';
import { readCpu } from './lib/proc-stats.js';
import { postgresMeter, singleProcessMeter } from './lib/servers.js';
import { BYTES_PER_GB, BYTES_PER_MB } from './lib/results.js';
import { summarize } from './lib/stats.js';
import { buildTools } from './lib/tools.js';
import { rewarmPageCache } from './scenarios/streaming.js';

interface HeldServers {
  readonly endpos: string;
  readonly start: string;
  readonly bytes: number;
  readonly first: string;
  readonly servers: readonly { readonly name: string; readonly port: number; readonly pid: number; readonly walFiles?: readonly string[] }[];
}

interface Sample {
  readonly serverCpuPerGB: number;
  readonly mbps: number;
  readonly consumerCpuPerGB: number;
}

const USAGE = 'usage: node --import tsx bench/held-ab.ts --held FILE [--rounds N] [--consumer wal-consumer|pg_receivewal] [--gap-seconds S] NAME...';
const { values, positionals } = parseArgs({ allowPositionals: true, options: { held: { type: 'string' }, rounds: { type: 'string', default: '10' }, consumer: { type: 'string', default: 'wal-consumer' }, 'gap-seconds': { type: 'string', default: '0' } } });
if (values.held === undefined || positionals.length === 0) throw new Error(USAGE);
if (values.consumer !== 'wal-consumer' && values.consumer !== 'pg_receivewal') throw new Error(USAGE);
const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1 || rounds > 1000) throw new Error(`--rounds takes 1..1000, got ${values.rounds}`);
const gapSeconds = Number(values['gap-seconds']);
if (!Number.isFinite(gapSeconds) || gapSeconds < 0 || gapSeconds > 600) throw new Error(`--gap-seconds takes 0..600, got ${values['gap-seconds']}`);
const held = JSON.parse(readFileSync(values.held, 'utf8')) as HeldServers;
const servers = positionals.map((name) => {
  const server = held.servers.find((candidate) => candidate.name === name);
  if (server === undefined) throw new Error(`no held server named ${name} (held: ${held.servers.map((candidate) => candidate.name).join(', ')})`);
  return server;
});
if (gapSeconds > 0 && servers.some((server) => server.walFiles === undefined)) {
  throw new Error('--gap-seconds needs a held file that lists each server\'s walFiles (bench/hold-servers.ts)');
}
const tools = buildTools();
const consumerBinary = tools.consumer;
const gigabytes = held.bytes / BYTES_PER_GB;
function consumerCpu(): number {
  return readCpu(process.pid)?.reapedChildrenSeconds ?? 0;
}
/** Runs a program to its end (asynchronously: PostgreSQL's meter follows the walsender from this event loop). */
async function run(command: string, args: readonly string[]): Promise<void> {
  const child = spawn(command, args, { stdio: 'ignore', timeout: 600_000 });
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', resolve);
  });
  if (code !== 0) throw new Error(`${basename(command)} exited ${code}`);
}
async function runConsumer(port: number): Promise<void> {
  if (values.consumer === 'wal-consumer') {
    await run(consumerBinary, ['--port', String(port), '--start', held.start, '--bytes', String(held.bytes), '--user', 'repl']);
    return;
  }
  const dir = mkdtempSync('/dev/shm/walcast-held-ab-');
  try {
    // An empty .partial of the range's first segment makes pg_receivewal start there (reference §4).
    writeFileSync(join(dir, `${basename(held.first)}.partial`), '');
    await run(join(PG_BIN_DIR, 'pg_receivewal'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'repl', '-D', dir, '--endpos', held.endpos, '-n', '--no-sync', '-w']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
const samples = new Map<string, Sample[]>(servers.map((server) => [server.name, []]));
for (let round = 0; round < rounds; round++) {
  for (let turn = 0; turn < servers.length; turn++) {
    const server = servers[(turn + round) % servers.length]!;
    if (gapSeconds > 0) {
      await sleep(gapSeconds * 1000);
      rewarmPageCache(tools, server.walFiles!);
    }
    // The harness's own meters: walcast and the ceiling are one process; PostgreSQL's are the run's walsenders only.
    const meter = server.name === 'postgres' ? postgresMeter(server.pid) : singleProcessMeter(server.pid);
    const consumerBefore = consumerCpu();
    const started = performance.now();
    await runConsumer(server.port);
    const seconds = (performance.now() - started) / 1000;
    const cost = await meter.finish(1, { afterDisconnect: true });
    samples.get(server.name)!.push({
      serverCpuPerGB: cost.cpuSeconds / gigabytes,
      mbps: held.bytes / BYTES_PER_MB / seconds,
      consumerCpuPerGB: (consumerCpu() - consumerBefore) / gigabytes,
    });
  }
  process.stderr.write(`round ${round + 1}/${rounds} done\n`);
}
function medianOf(values: readonly number[]): number {
  const summary = summarize(values);
  assert.ok(summary !== undefined, 'every server has samples');
  return summary.median;
}
/** Median and quartiles, as `median [q1–q3]`. */
function quartiles(values: readonly number[]): string {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (fraction: number): number => sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))]!;
  return `${medianOf(values).toFixed(3)} [${at(0.25).toFixed(3)}–${at(0.75).toFixed(3)}]`;
}
const base = samples.get(servers[0]!.name)!;
const lines = [`${values.consumer}, ${rounds} rounds, ${(held.bytes / 2 ** 20).toFixed(0)} MiB each; median [quartiles]`, '| server | server CPU s/GB | MB/s | consumer CPU s/GB | CPU ÷ ' + servers[0]!.name + ' |', '|---|---|---|---|---|'];
for (const server of servers) {
  const mine = samples.get(server.name)!;
  const ratio = server === servers[0] ? '' : quartiles(mine.map((sample, index) => sample.serverCpuPerGB / base[index]!.serverCpuPerGB));
  lines.push(`| ${server.name} | ${quartiles(mine.map((sample) => sample.serverCpuPerGB))} | ${medianOf(mine.map((sample) => sample.mbps)).toFixed(3)} | ${quartiles(mine.map((sample) => sample.consumerCpuPerGB))} | ${ratio} |`);
}
process.stdout.write(`${lines.join('\n')}\n`);
