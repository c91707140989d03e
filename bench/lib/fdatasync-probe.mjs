/**
 * Diagnostic preload for a walcast server under a benchmark (never loaded by walcast itself):
 * WALCAST_BENCH_SERVER_NODE_ARGS="--import bench/lib/fdatasync-probe.mjs" makes every fs.fdatasync log
 * "FD CALL_US CALLBACK_US" (realtime µs) to FDATASYNC_PROBE_DIR/log-PID.txt (default /tmp). Matched per fd with the
 * entries of `strace -f -tt -T -e fdatasync` on the server (bench/ingest-latency-ab.ts --strace), taking for each
 * logged call the first syscall on that fd entered between its call and its callback: pool queue wait = syscall
 * entry − call, callback delay = callback − syscall exit. It replaces fs.fdatasync before walcast's modules import
 * node:fs (syncBuiltinESMExports updates the ESM named export the WAL writer imports).
 */
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
const out = fs.openSync(`${process.env.FDATASYNC_PROBE_DIR ?? '/tmp'}/log-${process.pid}.txt`, 'a');
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
const original = fs.fdatasync;
fs.fdatasync = function (fd, callback) {
  const t0 = nowUs();
  return original.call(fs, fd, (error) => {
    fs.writeSync(out, `${fd} ${t0} ${nowUs()}\n`);
    callback(error);
  });
};
syncBuiltinESMExports();
