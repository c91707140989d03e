/**
 * Builds the benchmark's C helpers (bench/native/*.c) with the system C compiler into bench/results/tmp/bin:
 * the discarding consumer, the sendfile ceiling server and the page-cache tool. They belong to the harness only
 * and are never shipped. A binary is rebuilt when its source is newer.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = dirname(dirname(fileURLToPath(import.meta.url)));
export const REPO_ROOT = dirname(BENCH_DIR);
export const RESULTS_DIR = join(BENCH_DIR, 'results');
export const SCRATCH_DIR = join(RESULTS_DIR, 'tmp');

export interface Tools {
  readonly consumer: string;
  readonly ceiling: string;
  readonly pageCache: string;
}

const SOURCES = { consumer: 'wal-consumer', ceiling: 'ceiling-server', pageCache: 'page-cache' } as const;

export function buildTools(): Tools {
  const binDir = join(SCRATCH_DIR, 'bin');
  mkdirSync(binDir, { recursive: true });
  const built = {} as Record<keyof typeof SOURCES, string>;
  for (const [key, name] of Object.entries(SOURCES) as [keyof typeof SOURCES, string][]) {
    const source = join(BENCH_DIR, 'native', `${name}.c`);
    const binary = join(binDir, name);
    if (!existsSync(binary) || statSync(binary).mtimeMs < statSync(source).mtimeMs) {
      const compiler = process.env.CC ?? 'cc';
      execFileSync(compiler, ['-O2', '-Wall', '-Wextra', '-o', binary, source], { stdio: ['ignore', 'inherit', 'inherit'] });
    }
    built[key] = binary;
  }
  return built;
}
