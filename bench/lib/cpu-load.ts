/**
 * Bounded background CPU load for the "loaded machine" rounds: `--load N` starts N small Node processes that
 * busy-spin (one core each), the way other work keeps a production host busy. They are started once and told
 * over their stdin to spin ('r') or to sit idle ('p'), acknowledging each switch on stdout, so switching
 * conditions costs nothing and idle and loaded rounds can be interleaved. Every spinner is a tracked child
 * (stopped on exit, error and Ctrl-C like every other process the harness starts), and it exits by itself when
 * its stdin closes, which the kernel does when the harness dies in any way, SIGKILL included.
 */
import { spawnTracked, type Tracked } from './processes.js';

/** Upper bound on --load: more spinners than this only measure the scheduler, and it bounds what we start. */
export const MAX_LOAD_PROCESSES = 64;
/** A spinner starts in well under a second; a switch is acknowledged within one spin slice (20 ms). */
const SPINNER_REPLY_TIMEOUT_MS = 30_000;

/**
 * The spinner: spins in 20 ms slices while running, yielding to its event loop between slices so it reads its
 * commands (and the end of stdin) promptly; echoes every command once it has taken effect.
 */
const SPINNER_SOURCE = `// walcast-bench-cpu-load
let running = false;
const spin = () => {
  if (!running) return;
  const until = Date.now() + 20;
  while (Date.now() < until) {}
  setImmediate(spin);
};
process.stdin.on('data', (chunk) => {
  for (const command of chunk.toString()) {
    if (command === 'r' && !running) { running = true; setImmediate(spin); }
    if (command === 'p') running = false;
    process.stdout.write(command);
  }
});
process.stdin.on('end', () => process.exit(0));
process.stdout.write('p');
`;

export type Condition = 'idle' | 'loaded';

export class CpuLoad {
  private readonly spinners: Tracked[] = [];
  private current: Condition = 'idle';

  private constructor(readonly processes: number) {}

  /** Starts `processes` spinners, idle: the machine is idle until `set('loaded')`. */
  static async start(processes: number): Promise<CpuLoad> {
    if (!Number.isInteger(processes) || processes < 0 || processes > MAX_LOAD_PROCESSES) throw new Error(`--load must be an integer from 0 to ${MAX_LOAD_PROCESSES}`);
    const load = new CpuLoad(processes);
    for (let index = 0; index < processes; index++) load.spinners.push(spawnTracked(process.execPath, ['-e', SPINNER_SOURCE]));
    try {
      await Promise.all(load.spinners.map((spinner) => reply(spinner, 'p')));
    } catch (error) {
      await load.stop();
      throw error;
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

  /** Switches every spinner and resolves once each has acknowledged (spinning, or done with its last slice). */
  async set(condition: Condition): Promise<void> {
    if (condition === this.current) return;
    const command = condition === 'loaded' ? 'r' : 'p';
    await Promise.all(this.spinners.map((spinner) => {
      const replied = reply(spinner, command);
      spinner.child.stdin?.write(command);
      return replied;
    }));
    this.current = condition;
  }

  async stop(): Promise<void> {
    for (const spinner of this.spinners) spinner.child.stdin?.end();
    await Promise.all(this.spinners.map((spinner) => spinner.stop()));
    this.spinners.length = 0;
    this.current = 'idle';
  }
}

/** Waits for the spinner to echo `command` on stdout. */
function reply(spinner: Tracked, command: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const stdout = spinner.child.stdout;
    if (stdout === null || stdout === undefined) return reject(new Error('spinner has no stdout'));
    const timer = setTimeout(() => finish(new Error(`load spinner ${spinner.pid} did not answer "${command}" within ${SPINNER_REPLY_TIMEOUT_MS} ms`)), SPINNER_REPLY_TIMEOUT_MS);
    const onData = (chunk: Buffer): void => {
      if (chunk.toString().includes(command)) finish(undefined);
    };
    const onExit = (): void => finish(new Error(`load spinner ${spinner.pid} exited: ${spinner.stderr().trim()}`));
    function finish(error: Error | undefined): void {
      clearTimeout(timer);
      stdout?.off('data', onData);
      spinner.child.off('exit', onExit);
      if (error === undefined) resolve();
      else reject(error);
    }
    stdout.on('data', onData);
    spinner.child.once('exit', onExit);
  });
}
