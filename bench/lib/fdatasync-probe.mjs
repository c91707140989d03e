// Diagnostic preload (bench only): logs each fs.fdatasync's JS call and callback time (realtime µs) per fd, to match
// with strace -f -tt -T entries of the pool thread: queue wait = syscall entry - call, callback delay = callback - exit.
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
