/**
 * Admission bookkeeping: separate pools for startup and authenticated connections, per-address shares, eviction of
 * the oldest (idle first) startup connection once it is old enough, refusal of newcomers when none is, and the
 * load-time checks of the settings.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { Admission, STARTUP_EVICTION_AGE_MIN_MS, type AdmissionTicket, type AdmitResult } from './admission.js';
import { resolveAdmission } from './admission-options.js';

const OLD = STARTUP_EVICTION_AGE_MIN_MS;

function admitted(result: AdmitResult): Extract<AdmitResult, { ticket: AdmissionTicket }> {
  assert.ok(!('refused' in result), 'admitted');
  return result;
}

test('authenticated connections have their own pool that startup connections never take', () => {
  const admission = new Admission({ maxConnections: 2, maxStartupConnections: 3, maxStartupConnectionsPerAddress: 3 });
  const tickets = ['a', 'b', 'c'].map((address) => admitted(admission.admit(address, 0)).ticket);
  assert.equal(admission.startupCount(), 3);
  assert.equal(admission.authenticate(tickets[0]!), undefined);
  assert.equal(admission.authenticate(tickets[1]!), undefined);
  const refused = admission.authenticate(tickets[2]!);
  assert.ok(isWalcastError(refused, 'WALCAST_ERR_TOO_MANY_CONNECTIONS'));
  assert.equal(refused.message, 'sorry, too many clients already');
  assert.equal(admission.authenticated(), 2);
  // Two authenticated sessions leave the whole startup pool free for newcomers.
  admission.release(tickets[2]!);
  for (const address of ['d', 'e', 'f']) admitted(admission.admit(address, 0));
  assert.equal(admission.startupCount(), 3);
  admission.release(tickets[0]!);
  assert.equal(admission.authenticated(), 1);
});

test('a full startup pool evicts its oldest idle connection once old enough, else refuses the newcomer', () => {
  const admission = new Admission({ maxConnections: 10, maxStartupConnections: 3, maxStartupConnectionsPerAddress: 3 });
  const first = admitted(admission.admit('a', 0)).ticket;
  const second = admitted(admission.admit('b', 0)).ticket;
  admitted(admission.admit('c', 0));
  admission.markActive(first);
  const tooYoung = admission.admit('d', OLD - 1);
  assert.ok('refused' in tooYoung && isWalcastError(tooYoung.refused, 'WALCAST_ERR_TOO_MANY_CONNECTIONS'));
  const result = admitted(admission.admit('d', OLD));
  assert.equal(result.evicted?.ticket, second, 'the oldest that sent nothing goes first');
  assert.equal(second.state, 'released');
  assert.equal(admission.startupCount(), 3);
  // An evicted connection that completes authentication anyway is refused.
  assert.ok(isWalcastError(admission.authenticate(second), 'WALCAST_ERR_TOO_MANY_CONNECTIONS'));
});

test('one address cannot take more than its share: its own oldest is evicted, other addresses are untouched', () => {
  const admission = new Admission({ maxConnections: 10, maxStartupConnections: 10, maxStartupConnectionsPerAddress: 2 });
  const other = admitted(admission.admit('10.0.0.9', 0)).ticket;
  const first = admitted(admission.admit('10.0.0.1', 0)).ticket;
  admitted(admission.admit('10.0.0.1', 0));
  const third = admitted(admission.admit('10.0.0.1', OLD));
  assert.equal(third.evicted?.ticket, first);
  assert.equal(other.state, 'startup_idle');
  assert.equal(admission.startupCount(), 3);
});

test('release is idempotent and frees the slot of either pool', () => {
  const admission = new Admission({ maxConnections: 1, maxStartupConnections: 1, maxStartupConnectionsPerAddress: 1 });
  const ticket = admitted(admission.admit('a', 0)).ticket;
  assert.equal(admission.authenticate(ticket), undefined);
  admission.release(ticket);
  admission.release(ticket);
  assert.equal(admission.authenticated(), 0);
  assert.equal(admission.startupCount(), 0);
});

test('settings are checked at load time with errors naming the flag; defaults fit a lowered startup pool', () => {
  const defaults = resolveAdmission({ maxConnections: 100 });
  assert.ok(defaults.limits.maxStartupConnectionsPerAddress <= defaults.limits.maxStartupConnections);
  assert.equal(resolveAdmission({ maxConnections: 100, maxStartupConnections: 8 }).limits.maxStartupConnectionsPerAddress, 8);
  const bad = [
    [{ maxConnections: 100, maxStartupConnections: 0 }, /--max-startup-connections must be/],
    [{ maxConnections: 100, maxStartupConnections: 8, maxStartupConnectionsPerAddress: 9 }, /must not exceed/],
    [{ maxConnections: 100, authenticationTimeoutMs: 0 }, /--authentication-timeout must be/],
    [{ maxConnections: 100_001 }, /--max-connections must be/],
  ] as const;
  for (const [settings, pattern] of bad) {
    assert.throws(() => resolveAdmission(settings), (error: unknown) => isWalcastError(error, 'WALCAST_ERR_CONFIG') && pattern.test(error.message));
  }
});
