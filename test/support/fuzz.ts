/**
 * Budget and seed for the fault suite's property-based tests (fast-check). CI runs a fixed seed and
 * WALCAST_FUZZ_RUNS_DEFAULT cases in total, spread over the properties by share; `npm run fuzz` sets
 * WALCAST_FUZZ_RUNS (one million) and WALCAST_FUZZ_SEED=random, and prints the seed so any failure can be replayed
 * (fast-check reports the seed, the path and the shrunk counterexample of a failure).
 */
import { randomInt } from 'node:crypto';
import type { Parameters as FcParameters } from 'fast-check';
import { ERROR_CATALOGUE, isWalcastError } from '../../src/errors.js';
import { errorResponse } from '../../src/wire/backend-serializer.js';

/** Cases per CI run, over all fuzz properties: about 20,000, which runs in well under two minutes on 2 cores. */
export const WALCAST_FUZZ_RUNS_DEFAULT = 20_000;
/** CI's fixed seed: the same cases every run, so a failure is reproducible from the log alone. */
const FUZZ_SEED_FIXED = 0x5eed_2026;

function readSeed(): number {
  const text = process.env.WALCAST_FUZZ_SEED;
  if (text === undefined || text === '') return FUZZ_SEED_FIXED;
  if (text === 'random') return randomInt(0x7fff_ffff);
  const seed = Number(text);
  if (!Number.isSafeInteger(seed)) throw new RangeError(`WALCAST_FUZZ_SEED must be an integer or "random", got "${text}"`);
  return seed;
}

export const FUZZ_SEED = readSeed();
export const FUZZ_RUNS_TOTAL = Number(process.env.WALCAST_FUZZ_RUNS ?? WALCAST_FUZZ_RUNS_DEFAULT);
if (!Number.isSafeInteger(FUZZ_RUNS_TOTAL) || FUZZ_RUNS_TOTAL < 1) throw new RangeError('WALCAST_FUZZ_RUNS must be a positive integer');
if (process.env.WALCAST_FUZZ_SEED !== undefined) process.stderr.write(`fuzz: seed ${FUZZ_SEED}, ${FUZZ_RUNS_TOTAL} cases in total\n`);

/** fast-check parameters for a property that gets `share` of the total budget (at least `minimum` cases). */
export function fuzzParameters<T>(share: number, minimum = 1): FcParameters<T> {
  return { seed: FUZZ_SEED, numRuns: Math.max(minimum, Math.round(FUZZ_RUNS_TOTAL * share)), endOnFailure: false };
}

const CATALOGUED_SQLSTATES = new Set<string>([...Object.values(ERROR_CATALOGUE).map((entry) => entry.sqlState), '00000']);

export function isCataloguedSqlState(sqlState: string): boolean {
  return CATALOGUED_SQLSTATES.has(sqlState);
}

/** Runs `parse`; a throw must be a catalogued WalcastError whose message an ErrorResponse can carry. */
export function expectCleanOutcome(parse: () => unknown): void {
  try {
    parse();
  } catch (error) {
    if (!isWalcastError(error)) throw new Error(`not a WalcastError: ${String(error)}`, { cause: error });
    errorResponse({ severity: 'FATAL', sqlState: error.sqlState, message: error.message });
  }
}
