/**
 * The benchmark's meter of PostgreSQL's walsender CPU (bench/lib/servers.ts postgresMeter) against a real
 * PostgreSQL 15 and a real pg_receivewal, the way bench/single-stream.ts and bench/run.ts use it: pg_receivewal
 * streams a range to --endpos and exits, its walsender exits after it, and the meter must still charge that
 * walsender's CPU. The old meter read 0 in some rounds: it looked for walsenders by process title, which an
 * exiting walsender no longer has (cmdline reads empty once its memory map is gone) while it is not yet reaped
 * into the postmaster's cutime; and a short run's walsender often did not move cutime's 10 ms ticks at all. Over
 * a 16 MiB range most rounds read 0 with it, so this test fails on it. The range is bench --smoke's size: its
 * walsender lives only ~20-40 ms, so on a loaded machine a meter that looked for walsenders only every 20 ms
 * sometimes never saw it (1 round in 156 here beside two busy cores and another test file; CI runs failed) and
 * read 0 again.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { findWalsenders } from '../bench/lib/proc-stats.js';
import { postgresMeter } from '../bench/lib/servers.js';
import { runReceiveWal, startPrimary } from './support/postgres.js';

const TEST_TIMEOUT_MS = 300_000;
/** Rounds of pg_receivewal: the old meter's holes showed in a few rounds of ten or more. */
const ROUNDS = 12;

test('postgresMeter charges every pg_receivewal round its exited walsender CPU, and throws rather than reporting 0', { timeout: TEST_TIMEOUT_MS }, async () => {
  const primary = await startPrimary();
  const dirs: string[] = [];
  try {
    const firstSegment = await primary.sql('SELECT pg_walfile_name(pg_current_wal_insert_lsn())');
    await primary.pgbench(['-i', '-s', '1', '-q']);
    const endpos = await primary.sql('SELECT pg_current_wal_flush_lsn()');
    const measured: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const dir = mkdtempSync(join(tmpdir(), 'walcast-meter-test-'));
      dirs.push(dir);
      // An empty .partial of the first segment makes pg_receivewal start there rather than at the server's end.
      writeFileSync(join(dir, `${firstSegment}.partial`), '');
      const meter = postgresMeter(primary.pid);
      const received = await runReceiveWal({ port: primary.port, dir, endpos, timeoutMs: 60_000 });
      assert.equal(received.code, 0, `pg_receivewal failed: ${received.stderr}`);
      const cost = await meter.finish(1, { afterDisconnect: true });
      measured.push(cost.cpuSeconds);
      assert.deepEqual(findWalsenders(primary.pid), [], 'finish returns once the walsender is gone');
    }
    assert.ok(measured.every((seconds) => seconds > 0), `every round measured: ${measured.map((seconds) => seconds.toFixed(4)).join(', ')}`);

    // No client at all: nothing to measure, and the meter says so instead of returning 0.
    const idle = postgresMeter(primary.pid);
    await assert.rejects(idle.finish(1, { afterDisconnect: true }), /walsender CPU was not measured/);
  } finally {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
    await primary.stop();
  }
});
