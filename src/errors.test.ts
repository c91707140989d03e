/**
 * The error catalogue stays the one source of SQLSTATEs: every code is documented in docs/errors.md and raised
 * somewhere in src/, no stale code is left in the page, and no SQLSTATE is written as a literal outside errors.ts.
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { ERROR_CATALOGUE, WalcastError, isWalcastError } from './errors.js';

const page = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');
const SRC_DIR = fileURLToPath(new URL('.', import.meta.url));

/** Catalogued codes that nothing raises yet, each with a comment naming the work that will (none today). */
const NOT_YET_RAISED: ReadonlySet<string> = new Set<string>();

/** Every non-test TypeScript source under src/ except the catalogue itself, as [path relative to src, text]. */
function productSources(): [string, string][] {
  const found: [string, string][] = [];
  const visit = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) visit(path);
      else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts') && path !== join(SRC_DIR, 'errors.ts')) {
        found.push([relative(SRC_DIR, path), readFileSync(path, 'utf8')]);
      }
    }
  };
  visit(SRC_DIR);
  return found;
}

/** A quoted five-character SQLSTATE-shaped literal ('08P01', "00000"): upper-case letters and digits, one digit at least. */
const SQLSTATE_LITERAL = /(['"`])(?=[0-9A-Z]{0,4}[0-9])([0-9A-Z]{5})\1/g;

test('every catalogue code is documented in docs/errors.md with its SQLSTATE', () => {
  for (const [code, entry] of Object.entries(ERROR_CATALOGUE)) {
    const row = page.split('\n').find((line) => line.includes(`\`${code}\``));
    assert.ok(row !== undefined, `${code} is not documented in docs/errors.md`);
    assert.ok(row.includes(entry.sqlState), `${code}: docs/errors.md does not give SQLSTATE ${entry.sqlState}`);
  }
});

test('docs/errors.md names no code that the catalogue lacks', () => {
  const documented = new Set(page.match(/WALCAST_ERR_[A-Z0-9_]+/g) ?? []);
  for (const code of documented) assert.ok(code in ERROR_CATALOGUE, `docs/errors.md documents ${code}, which is not in the catalogue`);
});

test('a WalcastError carries its code, SQLSTATE and cause', () => {
  const cause = new Error('disk');
  const error = new WalcastError('WALCAST_ERR_WAL_REMOVED', 'gone', { cause, detail: 'more' });
  assert.equal(error.sqlState, '58P01');
  assert.equal(error.cause, cause);
  assert.equal(error.detail, 'more');
  assert.ok(isWalcastError(error, 'WALCAST_ERR_WAL_REMOVED'));
  assert.ok(!isWalcastError(error, 'WALCAST_ERR_SYNTAX'));
  assert.ok(!isWalcastError(new Error('x')));
});

test('every catalogue code is raised somewhere in src/', () => {
  const sources = productSources();
  assert.ok(sources.length > 50, 'the scan sees the source tree');
  for (const code of Object.keys(ERROR_CATALOGUE)) {
    if (NOT_YET_RAISED.has(code)) continue;
    const raisedIn = sources.filter(([, text]) => text.includes(`'${code}'`));
    assert.ok(raisedIn.length > 0, `${code} is catalogued but never raised in src/ (raise it, or retire it in docs/errors.md)`);
  }
});

test('no SQLSTATE literal outside errors.ts: every one comes from the catalogue', () => {
  const offenders = productSources().flatMap(([path, text]) => [...text.matchAll(SQLSTATE_LITERAL)].map((match) => `${path}: ${match[0]}`));
  assert.deepEqual(offenders, []);
});

test('the SQLSTATE literal scan finds what it must and ignores severities', () => {
  const sample = `sqlState: '08P01' "00000" \`XX000\` severity: 'ERROR' 'FATAL' 'GAUGE' '123456' 'ab123'`;
  assert.deepEqual([...sample.matchAll(SQLSTATE_LITERAL)].map((match) => match[2]), ['08P01', '00000', 'XX000']);
});
