/**
 * Deferred writeback from earlier steps, flushed before a measured run starts.
 *
 * The kernel writes a dirty page back about 30 s after it was dirtied (vm.dirty_expire_centisecs, 3000 by default).
 * The harness dirties hundreds of MB outside any measured window: the primary's pgbench load (fsync=off), the base
 * backup copies behind a cascading or replaying standby, a previous round's standby replay. Thirty seconds later that
 * writeback queues on the disk in front of whatever fsyncs then: measured on this project's VM (ext4 on virtio,
 * mq-deadline), one 200-byte pwrite + fdatasync every 10 ms took p50 0.35 ms and ONE call 70-77 ms while 140 MB of
 * dirty pages were written back, whether the file was zero-filled or sparse. A following walcast (and a cascading
 * standby's walreceiver) fsyncs every commit, so the live round that happened to contain the writeback showed ~10
 * commits 50-100 ms late (commit → received p99 65-85 ms, ingest hop p99 in the 100 ms bucket, 30-35 s after the
 * servers started, whatever the code): a property of the harness's timing, charged to whichever server was measured.
 *
 * `settleWriteback` runs sync(1) before the meter starts, so each run measures only writes made during it. It
 * changes no setting of the machine. Writeback that other work on the host causes during a run stays in the figures,
 * as production would see it.
 */
import { execFileSync } from 'node:child_process';

/** Flushes every dirty page on the machine (sync(1)). */
export function settleWriteback(): void {
  execFileSync('sync', [], { stdio: 'ignore' });
}
