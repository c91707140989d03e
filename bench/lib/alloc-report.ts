/**
 * Reads sampling heap profiles (bench/lib/alloc-sampler.mjs writes them) and prints where the bytes were allocated,
 * summed over every file given (e.g. the windows of one server's runs): by allocating function, and by walcast call
 * path (the innermost walcast frames of the stack, so that Buffer, Map or promise internals are charged to the walcast
 * code that called them), as MB and, with --per N, bytes per N (e.g. the publishes of those windows).
 *
 * Usage: node --import tsx bench/lib/alloc-report.ts PROFILE.heapprofile... [--per 1200] [--top 40] [--depth 4]
 *   [--match NAME] (only stacks with a frame whose function name contains NAME)
 *   [--exclude TEXT] (not stacks with a frame whose function name or file contains TEXT, e.g. metrics)
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface CallFrame {
  readonly functionName: string;
  readonly url: string;
  readonly lineNumber: number;
}

interface ProfileNode {
  readonly callFrame: CallFrame;
  readonly selfSize: number;
  readonly children: readonly ProfileNode[];
}

interface SamplingProfile {
  readonly head: ProfileNode;
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    per: { type: 'string' },
    top: { type: 'string', default: '40' },
    depth: { type: 'string', default: '4' },
    match: { type: 'string' },
    exclude: { type: 'string' },
  },
});
const per = values.per === undefined ? undefined : Number(values.per);
const top = Number(values.top);
const depth = Number(values.depth);

/** A frame of walcast's own source (this tree or a baseline tree), not of node_modules or node itself. */
function isWalcast(frame: CallFrame): boolean {
  return frame.url.includes('/src/') && !frame.url.includes('node_modules');
}

function frameName(frame: CallFrame): string {
  const file = frame.url === '' ? '' : ` ${frame.url.replace(/^.*\/(src|node_modules)\//, '$1/').replace(/^node:/, 'node:')}:${frame.lineNumber + 1}`;
  return `${frame.functionName === '' ? '(anonymous)' : frame.functionName}${file}`;
}

function add(into: Map<string, number>, key: string, bytes: number): void {
  into.set(key, (into.get(key) ?? 0) + bytes);
}

function format(bytes: number): string {
  const mb = (bytes / 1e6).toFixed(2).padStart(8);
  return per === undefined ? `${mb} MB` : `${mb} MB ${(bytes / per).toFixed(0).padStart(7)} B/unit`;
}

const bySelf = new Map<string, number>();
const byPath = new Map<string, number>();
let total = 0;
let excluded = 0;
const excludes = (frame: CallFrame): boolean => values.exclude !== undefined && (frame.functionName.includes(values.exclude) || frame.url.includes(values.exclude));
const walk = (node: ProfileNode, stack: CallFrame[]): void => {
  stack.push(node.callFrame);
  if (node.selfSize > 0 && (values.match === undefined || stack.some((frame) => frame.functionName.includes(values.match!)))) {
    if (stack.some(excludes)) {
      excluded += node.selfSize;
    } else {
      total += node.selfSize;
      add(bySelf, frameName(node.callFrame), node.selfSize);
      const own = stack.filter(isWalcast).slice(-depth).map(frameName);
      const leaf = isWalcast(node.callFrame) ? '' : ` <- ${frameName(node.callFrame)}`;
      add(byPath, own.length === 0 ? `(no walcast frame)${leaf}` : `${own.reverse().join(' < ')}${leaf}`, node.selfSize);
    }
  }
  for (const child of node.children) walk(child, stack);
  stack.pop();
};
for (const file of positionals) walk((JSON.parse(readFileSync(file, 'utf8')) as SamplingProfile).head, []);
process.stdout.write(`${positionals.length} profile(s): ${format(total)} sampled${values.match === undefined ? '' : ` under "${values.match}"`}`);
process.stdout.write(values.exclude === undefined ? '\n' : `, ${(excluded / 1e6).toFixed(2)} MB more under "${values.exclude}" left out\n`);
process.stdout.write('\nBy allocating function:\n');
for (const [key, bytes] of [...bySelf].sort((a, b) => b[1] - a[1]).slice(0, top)) process.stdout.write(`${format(bytes)}  ${key}\n`);
process.stdout.write('\nBy walcast call path (innermost first):\n');
for (const [key, bytes] of [...byPath].sort((a, b) => b[1] - a[1]).slice(0, top)) process.stdout.write(`${format(bytes)}  ${key}\n`);
