/**
 * Summaries the report uses: min/median/max over repeated runs, percentiles of latency samples, and ratios
 * computed pair by pair (run i of A against run i of B, measured back to back) rather than ratio of medians.
 */
import assert from 'node:assert/strict';

export interface Summary {
  readonly min: number;
  readonly median: number;
  readonly max: number;
  readonly runs: number;
}

/** min/median/max of finite values; undefined when no run produced a value. */
export function summarize(values: readonly number[]): Summary | undefined {
  const finite = values.filter((value) => Number.isFinite(value));
  if (finite.length === 0) return undefined;
  const sorted = [...finite].sort((a, b) => a - b);
  return { min: sorted[0]!, median: median(sorted), max: sorted[sorted.length - 1]!, runs: sorted.length };
}

function median(sorted: readonly number[]): number {
  assert.ok(sorted.length > 0, 'median of nothing');
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

/** Nearest-rank percentile (p in 0..100) of unsorted samples. */
export function percentile(samples: readonly number[], p: number): number {
  assert.ok(samples.length > 0, 'percentile of nothing');
  assert.ok(p >= 0 && p <= 100, 'percentile out of range');
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1]!;
}

/**
 * Ratios numerator[i] / denominator[i] for every repetition both sides completed, summarized. Index i pairs runs
 * that were measured in the same repetition round, so slow drift of the machine cancels out.
 */
export function pairwiseRatio(numerator: readonly (number | undefined)[], denominator: readonly (number | undefined)[]): Summary | undefined {
  const ratios: number[] = [];
  const pairs = Math.min(numerator.length, denominator.length);
  for (let index = 0; index < pairs; index++) {
    const top = numerator[index];
    const bottom = denominator[index];
    if (top === undefined || bottom === undefined || !Number.isFinite(top) || !Number.isFinite(bottom) || bottom === 0) continue;
    ratios.push(top / bottom);
  }
  return summarize(ratios);
}
