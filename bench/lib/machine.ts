/**
 * The machine description every result file carries (style anchor 19: a published number names its date,
 * machine, Node and PostgreSQL versions): CPU model, cores, memory, kernel, Node, PostgreSQL.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';

export interface MachineDescription {
  readonly date: string;
  readonly cpuModel: string;
  readonly cores: number;
  readonly memoryBytes: number;
  readonly kernel: string;
  readonly node: string;
  readonly postgres: string;
  readonly walcastCommit: string;
  /** 1/5/15-minute load averages when the measurements began: other work on the machine shows up here. */
  readonly loadAverage: readonly number[];
  /**
   * net.ipv4.tcp_congestion_control: the algorithm PostgreSQL's walsender (and walcast with --tcp-congestion-loopback
   * system) sends with; BBR without fq paces every send (docs/benchmarks.md, "Loopback connections and BBR's pacing").
   * Absent from result files written before it was recorded.
   */
  readonly tcpCongestion?: string;
}

export function describeMachine(postgresBinDir: string, repoRoot: string): MachineDescription {
  return {
    date: new Date().toISOString(),
    cpuModel: cpuModel(),
    cores: cpus().length,
    memoryBytes: totalmem(),
    kernel: release(),
    node: process.version,
    postgres: commandOutput(`${postgresBinDir}/postgres`, ['--version']),
    walcastCommit: commandOutput('git', ['-C', repoRoot, 'rev-parse', '--short', 'HEAD']),
    loadAverage: loadavg().map((value) => Number(value.toFixed(2))),
    tcpCongestion: fileText('/proc/sys/net/ipv4/tcp_congestion_control'),
  };
}

function cpuModel(): string {
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((entry) => entry.startsWith('model name'));
    if (line !== undefined) return line.slice(line.indexOf(':') + 1).trim();
  } catch {
    // Not Linux: fall back to what Node knows.
  }
  return cpus()[0]?.model ?? 'unknown';
}

function fileText(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

function commandOutput(command: string, args: readonly string[]): string {
  try {
    return execFileSync(command, args as string[], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'unknown';
  }
}
