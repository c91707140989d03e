/**
 * What TLS costs, measured small: one pg_receivewal replica streams the same imported WAL from walcast (ts backend;
 * native backend plain and with TLS, where TLS streams fall back to the encrypting TS path) and from PostgreSQL 15
 * with ssl=on. Prints MB/s (wall clock of the whole pg_receivewal run) and server CPU seconds per GB (walcast:
 * process.cpuUsage of this process, which runs the server; PostgreSQL: utime+stime of its walsender from /proc).
 * Run: node --import tsx bench/tls-cost.ts [--segments N]. Numbers from a shared machine are indicative only.
 */
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createIoBackend } from '../src/io/select-backend.js';
import { silentLogger } from '../src/log.js';
import { formatLsn } from '../src/lsn.js';
import { WalcastServer } from '../src/server.js';
import { segmentFileName } from '../src/storage/segment-name.js';
import { importWal } from '../src/storage/wal-import.js';
import { ServerTls } from '../src/tls/server-tls.js';
import { makeTempDir, runReceiveWal, startPrimary } from '../test/support/postgres.js';
import { makeTestCertificates } from '../test/support/tls-certs.js';

const SEGMENT_BYTES = 16 * 1024 * 1024;
const CLOCK_TICKS_PER_S = 100;
const segmentsWanted = Number(process.argv[process.argv.indexOf('--segments') + 1] || 8);

const certs = await makeTestCertificates();
const primary = await startPrimary({ extraConf: { ssl: 'on', ssl_cert_file: certs.serverCert, ssl_key_file: certs.serverKey } });
await primary.sql(`CREATE TABLE filler AS SELECT g, md5(g::text) AS v FROM generate_series(1, ${segmentsWanted * 120_000}) g`);
const dataDir = await makeTempDir('tls-cost');
const imported = await importWal({ dataDir, fromDir: primary.walDir });
const startLsn = imported.startLsn;
const endLsn = imported.endLsn;
const gigabytes = Number(endLsn - startLsn) / 1e9;

interface Row { readonly server: string; readonly seconds: number; readonly cpuSeconds: number }
const rows: Row[] = [];

async function receive(port: number, conninfo: string): Promise<number> {
  const dir = await makeTempDir('tls-cost-recv');
  writeFileSync(join(dir, `${segmentFileName(1, startLsn / BigInt(SEGMENT_BYTES), SEGMENT_BYTES)}.partial`), '');
  const started = process.hrtime.bigint();
  const result = await runReceiveWal({ port, dir, endpos: formatLsn(endLsn - 1n), extraArgs: ['-d', conninfo] });
  if (result.code !== 0) throw new Error(`pg_receivewal failed: ${result.stderr}`);
  return Number(process.hrtime.bigint() - started) / 1e9;
}

// One unmeasured pass brings the segments into page cache, so the first measured server does not pay for the disk.
{
  const { backend } = await createIoBackend({ io: 'ts' });
  const warm = await WalcastServer.start({ dataDir, listen: { host: '127.0.0.1', port: 0 }, auth: { method: 'trust' }, backend, maxConnections: 16, replicaTimeoutMs: 60_000, log: silentLogger(), ingest: false });
  await receive(warm.address().port, 'sslmode=disable');
  await warm.stop();
}

for (const io of ['ts', 'native'] as const) {
  for (const useTls of [false, true]) {
    const { backend } = await createIoBackend({ io });
    const tls = useTls ? await ServerTls.load({ certFile: certs.serverCert, keyFile: certs.serverKey }) : undefined;
    const server = await WalcastServer.start({ dataDir, listen: { host: '127.0.0.1', port: 0 }, auth: { method: 'trust' }, tls, backend, maxConnections: 16, replicaTimeoutMs: 60_000, log: silentLogger(), ingest: false });
    const cpu = process.cpuUsage();
    const seconds = await receive(server.address().port, useTls ? 'sslmode=require' : 'sslmode=disable');
    const used = process.cpuUsage(cpu);
    rows.push({ server: `walcast ${io}${io === 'native' && useTls ? ' (TLS: TS fallback)' : ''} ${useTls ? 'TLS' : 'plain'}`, seconds, cpuSeconds: (used.user + used.system) / 1e6 });
    await server.stop();
  }
}

/** CPU of PostgreSQL's walsenders: the postmaster's children whose command line says walsender. */
function walsenderTicks(postmasterPid: number): number {
  let ticks = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) !== postmasterPid) continue;
      if (!readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes('walsender')) continue;
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // The process ended between readdir and read.
    }
  }
  return ticks;
}

for (const useTls of [false, true]) {
  let peakTicks = 0;
  const poll = setInterval(() => (peakTicks = Math.max(peakTicks, walsenderTicks(primary.pid))), 20);
  const seconds = await receive(primary.port, useTls ? 'sslmode=require' : 'sslmode=disable');
  clearInterval(poll);
  // Polled every 20 ms, so the last few ms of the walsender's CPU may be missed: a slight underestimate.
  rows.push({ server: `PostgreSQL 15 ${useTls ? 'ssl=on TLS' : 'plain'}`, seconds, cpuSeconds: peakTicks / CLOCK_TICKS_PER_S });
}
await primary.stop();

console.log(`WAL streamed: ${(gigabytes * 1000).toFixed(0)} MB, one pg_receivewal replica, loopback (shared machine: indicative only)`);
console.log('| server | MB/s | server CPU s/GB |\n|---|---|---|');
for (const row of rows) console.log(`| ${row.server} | ${(gigabytes * 1000 / row.seconds).toFixed(0)} | ${(row.cpuSeconds / gigabytes).toFixed(2)} |`);
process.exit(0);
