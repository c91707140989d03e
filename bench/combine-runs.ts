/**
 * Combines the result files of several `bench/run.ts` runs (taken at different times, e.g. two `--full` runs) into
 * one table: every cell's median [min–max] over the rounds of all the runs, and every ratio computed round by round
 * (a round pairs only with the same round of the same run) then summarized. The README's figures come from here, so
 * that they are what the reruns showed, not one run's.
 *
 *   node --import tsx bench/combine-runs.ts bench/results/A-full.json bench/results/B-full.json [--out FILE.md]
 *
 * Files must be from the same mode (the same plan); the machine line is the first file's, the WAL range each run's own.
 * Records older than the event-loop delay figures (eventLoopDelay*) get them derived from the raw intervals, as the
 * harness now does (responsiveness.ts).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { renderMarkdown, type BenchReport } from './lib/report-markdown.js';
import { pastTimer } from './lib/responsiveness.js';
import { computeFigures, computeRatios, type RunRecord } from './lib/results.js';

const EXIT_USAGE = 2;

interface ResultFile extends BenchReport {
  readonly runs: readonly RunRecord[];
}

function withDelayFigures(record: RunRecord): RunRecord {
  const p99 = record.eventLoopDelayP99Ms ?? pastTimer(record.eventLoopP99Ms);
  const max = record.eventLoopDelayMaxMs ?? pastTimer(record.eventLoopMaxMs);
  return { ...record, ...(p99 === undefined ? {} : { eventLoopDelayP99Ms: p99 }), ...(max === undefined ? {} : { eventLoopDelayMaxMs: max }) };
}

function main(argv: readonly string[]): void {
  const { values, positionals } = parseArgs({ args: [...argv], options: { out: { type: 'string' } }, allowPositionals: true, strict: true });
  if (positionals.length === 0) {
    process.stderr.write('usage: node --import tsx bench/combine-runs.ts RESULT.json... [--out FILE.md]\n');
    process.exit(EXIT_USAGE);
  }
  const files = positionals.map((path) => ({ path, result: JSON.parse(readFileSync(path, 'utf8')) as ResultFile }));
  const modes = new Set(files.map((file) => file.result.mode));
  if (modes.size !== 1) throw new Error(`the files come from different modes (${[...modes].join(', ')}): their rounds do not compare`);
  // Repetition indexes restart at 0 in every file; shift them so that a round pairs only inside its own run.
  const runs: RunRecord[] = [];
  let offset = 0;
  for (const file of files) {
    const records = file.result.runs.map(withDelayFigures);
    runs.push(...records.map((record) => ({ ...record, repetition: record.repetition + offset })));
    offset += Math.max(0, ...records.map((record) => record.repetition)) + 1;
  }
  const first = files[0]!.result;
  const report: BenchReport = {
    ...first,
    note: `${files.length} runs combined (${files.map((file) => `${file.path}: walcast ${file.result.machine.walcastCommit}, ${file.result.machine.date}`).join('; ')}). ${first.note}`,
    scenarios: [...new Set(files.flatMap((file) => file.result.scenarios))],
    figures: computeFigures(runs),
    ratios: computeRatios(runs),
    micro: [],
    notes: [...new Set(files.flatMap((file) => file.result.notes))],
    elapsedSeconds: files.reduce((sum, file) => sum + file.result.elapsedSeconds, 0),
  };
  const markdown = renderMarkdown(report);
  if (values.out === undefined) process.stdout.write(markdown);
  else writeFileSync(values.out, markdown);
}

main(process.argv.slice(2));
