/** The error catalogue and docs/errors.md stay in step: every code documented, no stale code left in the page. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { ERROR_CATALOGUE, WalcastError, isWalcastError } from './errors.js';

const page = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');

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
