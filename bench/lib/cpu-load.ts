/**
 * Bounded background CPU load for the "loaded machine" rounds: `--load N` starts N small Node processes that
 * busy-spin (one core each), the way other work keeps a production host busy. They are started once, paused
 * with SIGSTOP during idle rounds and resumed with SIGCONT during loaded rounds, so switching conditions costs
 * nothing and idle and loaded rounds can be interleaved; every spinner is a tracked child (stopped on exit,
 * error and Ctrl-C like every other process the harness starts) and ends by itself when the harness dies.
 */
import { spawnTracked, type Tracked } from './processes.js';

/** Upper bound on --load: more spinners than this only measure the scheduler, and it bounds what we start. */
export const MAX_LOAD_PROCESSES = 64;

/**
 * The spinner: spins in slices and checks once per slice that its parent is still there, so a harness killed
 * with SIGKILL (no exit handler runs) cannot leave a core busy forever.
 */
const SPINNER_SOURCE = `// walcast-bench-cpu-load
const parent = process.ppid;
for (;;) {
  const until = Date.now() + 200;
  while (Date.now() < until) {}
  try { process.kill(parent, 0); } catch { process.exit(0); }
  if (process.ppid !== parent) process.exit(0);
}
`;

export type Condition = 'idle' | 'loaded';

export class CpuLoad {
  private readonly spinners: Tracked[] = [];
  private current: Condition = 'idle';

  private constructor(readonly processes: number) {}

  /** Starts `processes` spinners, paused: the machine is idle until `set('loaded')`. */
  static start(processes: number): CpuLoad {
    if (!Number.isInteger(processes) || processes < 0 || processes > MAX_LOAD_PROCESSES) throw new Error(`--load must be an integer from 0 to ${MAX_LOAD_PROCESSES}`);
    const load = new CpuLoad(processes);
    for (let index = 0; index < processes; index++) {
      const spinner = spawnTracked(process.execPath, ['-e', SPINNER_SOURCE], { stdio: ['ignore', 'ignore', 'pipe'] });
      spinner.child.kill('SIGSTOP');
      load.spinners.push(spinner);
    }
    return load;
  }

  /** The conditions a round runs under, in order: idle first, then loaded when there is a load. */
  get conditions(): readonly Condition[] {
    return this.processes === 0 ? ['idle'] : ['idle', 'loaded'];
  }

  get condition(): Condition {
    return this.current;
  }

  get pids(): readonly number[] {
    return this.spinners.map((spinner) => spinner.pid);
  }

  set(condition: Condition): void {
    if (condition === this.current) return;
    for (const spinner of this.spinners) spinner.child.kill(condition === 'loaded' ? 'SIGCONT' : 'SIGSTOP');
    this.current = condition;
  }

  /** Stops the spinners (a stopped process must be continued to act on SIGTERM). */
  async stop(): Promise<void> {
    for (const spinner of this.spinners) spinner.child.kill('SIGCONT');
    await Promise.all(this.spinners.map((spinner) => spinner.stop()));
    this.spinners.length = 0;
    this.current = 'idle';
  }
}
