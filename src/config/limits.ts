/**
 * Capacity bounds that several layers must agree on, in one place. The connection ceiling is the one named bound:
 * the replica registry (one replica per connection at most) and the LSN watches (one waiter per sender at most)
 * size their own leak-guard assertions from it, so no accepted setting of `--max-connections` can reach one of
 * those assertions; a setting above it is refused at load time with a clear error instead.
 */
import { WalcastError } from '../errors.js';

/**
 * Connections one server may serve at once (`--max-connections` ceiling). Each costs at least one descriptor and a
 * few KiB of state; beyond this a single process is the wrong tool, and the bounds below stop guarding leaks.
 */
export const CONNECTIONS_MAX = 100_000;
/** Connections still in startup or authentication at once (`--max-startup-connections` ceiling). */
export const STARTUP_CONNECTIONS_MAX = 10_000;

/** Checks an operator's `--max-connections` against the ceiling; the error names the flag and the range. */
export function checkMaxConnections(value: number, flag = '--max-connections'): number {
  return checkRange(value, 1, CONNECTIONS_MAX, flag);
}

/** Checks an integer setting against [min, max], throwing WALCAST_ERR_CONFIG that names the flag. */
export function checkRange(value: number, min: number, max: number, flag: string): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new WalcastError('WALCAST_ERR_CONFIG', `${flag} must be an integer from ${min} to ${max}, got ${value}`);
  }
  return value;
}
