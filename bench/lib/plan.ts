/**
 * What each mode measures and how much: `--smoke` (CI: tiny WAL, one repetition, 2 replicas; checks the
 * harness, not speed), `--quick` (`npm run bench`: 256 MiB of WAL) and `--full` (`npm run bench:full`: 1 GiB of
 * WAL, more repetitions, 1,000 replicas). Quick and full interleave idle rounds with rounds under one busy core
 * of background load (`--load N` changes it); the smoke run has no load. Fan-out replicas each stream the same
 * WAL from the same start, but only its first `bytesPerReplica`, so that 1,000 replicas finish in seconds.
 */
import assert from 'node:assert/strict';

export type BenchMode = 'smoke' | 'quick' | 'full';

const MIB = 1024 * 1024;

export interface FanOutStep {
  readonly replicas: number;
  /** Bytes each replica streams from the range start; 0 means the whole range. */
  readonly bytesPerReplica: number;
  /** Overrides the plan's repetitions (1,000 replicas take long enough that 3 rounds do). */
  readonly repetitions?: number;
}

export interface BenchPlan {
  readonly mode: BenchMode;
  /** pgbench -i -s SCALE: ~12.4 MiB of WAL per scale unit plus initdb's (scale 20 → 256 MiB, 83 → just over 1 GiB). */
  readonly pgbenchScale: number;
  /** Repetitions of every catch-up / fan-out measurement (min/median/max are over these). */
  readonly repetitions: number;
  readonly fanOut: readonly FanOutStep[];
  readonly coldRepetitions: number;
  readonly receiveWal: boolean;
  /**
   * Rounds with the replaying standby as consumer (the first N of `repetitions`): replaying 1 GiB takes tens of
   * seconds per server, so full runs do fewer of these than of the cheap consumers.
   */
  readonly standbyRepetitions: number;
  /** Busy-spinning processes in the loaded rounds (--load overrides); 0 = idle rounds only. */
  readonly load: number;
  readonly latency: {
    readonly replicaCounts: readonly number[];
    readonly commitsPerSecond: number;
    readonly durationMs: number;
    readonly repetitions: number;
    /** One unrecorded run per server first (JIT, connection caches), as the streaming scenarios do. */
    readonly warmUp: boolean;
    /** Replicas send a status update after every XLogData, as standbys do (wal-consumer --reply-each); default off. */
    readonly replyEach?: boolean;
  };
  /** tinybench time per micro-benchmark task. */
  readonly microTimeMs: number;
  /** Upper bound for one consumer run; a run past it is recorded as failed, never hangs the harness. */
  readonly runTimeoutMs: number;
  readonly note: string;
}

export function planFor(mode: BenchMode): BenchPlan {
  switch (mode) {
    case 'smoke':
      return {
        mode,
        pgbenchScale: 1,
        repetitions: 1,
        fanOut: [{ replicas: 2, bytesPerReplica: 0 }],
        coldRepetitions: 1,
        receiveWal: true,
        standbyRepetitions: 1,
        load: 0,
        latency: { replicaCounts: [2], commitsPerSecond: 20, durationMs: 1_000, repetitions: 1, warmUp: false },
        microTimeMs: 50,
        runTimeoutMs: 60_000,
        note: 'smoke run: a few MB of WAL, one repetition; checks the harness, the numbers mean nothing',
      };
    case 'quick':
      return {
        mode,
        pgbenchScale: 20,
        repetitions: 3,
        fanOut: [
          { replicas: 10, bytesPerReplica: 64 * MIB },
          { replicas: 100, bytesPerReplica: 8 * MIB },
        ],
        coldRepetitions: 3,
        receiveWal: true,
        standbyRepetitions: 3,
        load: 1,
        latency: { replicaCounts: [1, 100], commitsPerSecond: 100, durationMs: 1_500, repetitions: 2, warmUp: true },
        microTimeMs: 300,
        runTimeoutMs: 120_000,
        note: 'quick run: 256 MiB of WAL instead of 1 GiB, 3 repetitions, fan-out up to 100 replicas (npm run bench:full for 1 GiB and 1,000)',
      };
    case 'full':
      return {
        mode,
        pgbenchScale: 83,
        repetitions: 5,
        fanOut: [
          { replicas: 10, bytesPerReplica: 256 * MIB },
          { replicas: 100, bytesPerReplica: 32 * MIB },
          { replicas: 1000, bytesPerReplica: 4 * MIB, repetitions: 3 },
        ],
        coldRepetitions: 3,
        receiveWal: true,
        standbyRepetitions: 3,
        load: 1,
        latency: { replicaCounts: [1, 100, 1000], commitsPerSecond: 100, durationMs: 3_000, repetitions: 3, warmUp: true },
        microTimeMs: 1_000,
        runTimeoutMs: 300_000,
        note: 'full run: 1 GiB of WAL, 5 repetitions, fan-out up to 1,000 replicas',
      };
  }
}

/** The plan with every repetition count at most `reps` (undefined: unchanged). */
export function capRepetitions(plan: BenchPlan, reps: number | undefined): BenchPlan {
  if (reps === undefined) return plan;
  assert.ok(Number.isInteger(reps) && reps >= 1, 'at least one repetition');
  const cap = (count: number): number => Math.min(count, reps);
  return {
    ...plan,
    repetitions: cap(plan.repetitions),
    coldRepetitions: cap(plan.coldRepetitions),
    standbyRepetitions: cap(plan.standbyRepetitions),
    fanOut: plan.fanOut.map((step) => (step.repetitions === undefined ? step : { ...step, repetitions: cap(step.repetitions) })),
    latency: { ...plan.latency, repetitions: cap(plan.latency.repetitions) },
    note: `${plan.note}; repetitions capped at ${reps} (--reps)`,
  };
}

export function maxReplicas(plan: BenchPlan): number {
  const counts = [1, ...plan.fanOut.map((step) => step.replicas), ...plan.latency.replicaCounts];
  const largest = Math.max(...counts);
  assert.ok(largest >= 1, 'at least one replica');
  return largest;
}

/** What `--scenarios` can select; `catch-up` alone means all three catch-up consumers. */
export const SCENARIO_KEYS = ['catch-up:wal-consumer', 'catch-up:pg_receivewal', 'catch-up:standby', 'fan-out', 'cold-catch-up', 'live-latency', 'micro'] as const;
export type ScenarioKey = (typeof SCENARIO_KEYS)[number];

/** Parses a comma-separated --scenarios list; throws on an unknown name. Undefined = everything. */
export function parseScenarios(text: string | undefined): ReadonlySet<ScenarioKey> {
  if (text === undefined) return new Set(SCENARIO_KEYS);
  const selected = new Set<ScenarioKey>();
  for (const name of text.split(',').map((entry) => entry.trim()).filter((entry) => entry !== '')) {
    const matches = SCENARIO_KEYS.filter((key) => key === name || key.startsWith(`${name}:`));
    if (matches.length === 0) throw new Error(`unknown scenario "${name}" (known: catch-up, ${SCENARIO_KEYS.join(', ')})`);
    for (const key of matches) selected.add(key);
  }
  if (selected.size === 0) throw new Error('--scenarios selects nothing');
  return selected;
}
