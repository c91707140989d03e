/**
 * JSON for the HTTP API with exact 64-bit integers. Transaction ids (epoch << 32 | xid) and PostgreSQL timestamps
 * (microseconds since 2000-01-01, ~8e17 today) do not fit a double, and Neon's safekeeper emits them as plain JSON
 * numbers, so a bigint is written as its decimal digits rather than rounded or quoted. Pure: no I/O here.
 */
import assert from 'node:assert/strict';

/** Marks a bigint while JSON.stringify runs; the NUL cannot occur in any other string we emit unescaped. */
const BIGINT_MARKER = '\u0000bigint:';
/** How JSON.stringify writes the marker inside a string literal. */
const BIGINT_MARKER_PATTERN = /"\\u0000bigint:(-?\d+)"/g;

export function stringifyJson(value: unknown, indentSpaces = 0): string {
  assert.ok(indentSpaces >= 0 && indentSpaces <= 10, 'JSON indent is 0..10 spaces');
  const text = JSON.stringify(value, (_key, field: unknown) => (typeof field === 'bigint' ? `${BIGINT_MARKER}${field.toString()}` : field), indentSpaces);
  assert.ok(text !== undefined, 'the API only serializes JSON-representable values');
  return text.replace(BIGINT_MARKER_PATTERN, '$1');
}
