/**
 * The node flags `walcast serve` is meant to run with, and the check that it does.
 *
 * `--no-memory-reducer`: V8's memory reducer shrinks the heap with full mark-compacts once the allocation rate drops
 * after a busy spell. In a following walcast at 100 commits/s, two "Mark-Compact (reduce)" GCs ~32 s after start
 * paused the event loop for 18 ms (plus 10 ms of incremental steps), and the round of live commits around them had its
 * commit → replica p99 at 10-25 ms against 3-5 ms in the others (docs/benchmarks.md, "Late commits"). A replication
 * server's heap is bounded by its limits (connections, queues, caches), so giving a few MB back to the OS is worth less
 * than a latency spike for every replica; ordinary GCs still run when allocation needs them.
 *
 * Why on node's command line and not set at run time: V8 reads the flag when it sets up the heap. `v8.setFlagsFromString`
 * at the start of serve left the reducer running (`--trace-gc` showed its reducing GCs on the main isolate ~16 s after
 * start either way). So `npm start`, the `walcast` command's shebang (`env -S`) and the test and benchmark harnesses
 * put it there, and serve logs when it is missing (a server started as `node dist/cli/main.js serve`).
 */

/** Node flags for `walcast serve`, as they must appear in node's own arguments (before the script). */
export const SERVE_NODE_FLAGS: readonly string[] = ['--no-memory-reducer'];

/** The SERVE_NODE_FLAGS missing from node's own arguments (`process.execArgv`; V8 also reads `_` for `-`). */
export function missingServeNodeFlags(execArgv: readonly string[]): string[] {
  const given = new Set(execArgv.map((arg) => arg.replaceAll('_', '-')));
  return SERVE_NODE_FLAGS.filter((flag) => !given.has(flag));
}
