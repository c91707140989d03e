/**
 * Connection admission: who gets a slot. Connections that have not yet authenticated live in their own, smaller
 * pool (`--max-startup-connections`, at most `--max-startup-connections-per-address` from one address) and must
 * finish within the authentication timeout; authenticated sessions have their own pool (`--max-connections`),
 * which unauthenticated ones can never occupy: that pool is the reserve that keeps replicas able to connect while
 * thousands of idle sockets sit on the port.
 *
 * When the startup pool (or an address's share of it) is full, a newcomer is not simply refused: the oldest
 * connection there is evicted instead, preferring one that has sent nothing yet, provided it has been starting up
 * for at least STARTUP_EVICTION_AGE_MIN_MS. A real client finishes startup within milliseconds, so such a
 * connection is almost always a socket that will never send a startup packet; refusing the newcomer instead would
 * let idle sockets lock everyone out until their deadline (PostgreSQL forks per connection and can afford
 * authentication_timeout = 60 s; one walcast process serves all of them). The minimum age keeps a legitimate burst
 * (a fleet reconnecting at once) from evicting itself: beyond the pool it is refused with 53300 and retries.
 *
 * Pure bookkeeping, no sockets: the server closes what this module tells it to.
 */
import assert from 'node:assert/strict';
import { WalcastError } from '../errors.js';

/** Default startup deadline (`--authentication-timeout`): generous for SCRAM across a WAN, short for a squatter. */
export const AUTHENTICATION_TIMEOUT_MS_DEFAULT = 10_000;
/** Default startup pool (`--max-startup-connections`): above a fleet's reconnect burst, far below the fd limit. */
export const STARTUP_CONNECTIONS_DEFAULT = 2048;
/** Default share of one address (`--max-startup-connections-per-address`): half, so one host cannot take it all. */
export const STARTUP_CONNECTIONS_PER_ADDRESS_DEFAULT = 1024;
/** A startup connection younger than this is never evicted: a real client is through startup well within it. */
export const STARTUP_EVICTION_AGE_MIN_MS = 1_000;

export interface AdmissionLimits {
  /** Authenticated sessions at once (`--max-connections`). */
  readonly maxConnections: number;
  /** Connections in startup or authentication at once (`--max-startup-connections`). */
  readonly maxStartupConnections: number;
  /** Of those, from one remote address (`--max-startup-connections-per-address`). */
  readonly maxStartupConnectionsPerAddress: number;
}

/** One admitted connection, from accept to close. */
export interface AdmissionTicket {
  readonly id: number;
  readonly address: string;
  readonly admittedAtMs: number;
  /** Set by admission; the server reads it when told to evict the ticket. */
  state: 'startup_idle' | 'startup_active' | 'authenticated' | 'released';
}

export type AdmitResult =
  | {
      readonly ticket: AdmissionTicket;
      /** A connection to close now to make room, with the error to close it with. */
      readonly evicted: { readonly ticket: AdmissionTicket; readonly error: WalcastError } | undefined;
    }
  | { readonly refused: WalcastError };

export class Admission {
  readonly limits: AdmissionLimits;
  /** Startup connections that have sent nothing, oldest first (Map keeps insertion order). */
  private readonly idle = new Map<number, AdmissionTicket>();
  /** Startup connections that have sent bytes, oldest first. */
  private readonly active = new Map<number, AdmissionTicket>();
  /** Startup connections per address, oldest first. */
  private readonly byAddress = new Map<string, Set<AdmissionTicket>>();
  private authenticatedCount = 0;
  private nextId = 1;

  constructor(limits: AdmissionLimits) {
    assert.ok(limits.maxConnections > 0);
    assert.ok(limits.maxStartupConnections > 0);
    assert.ok(limits.maxStartupConnectionsPerAddress > 0);
    assert.ok(limits.maxStartupConnectionsPerAddress <= limits.maxStartupConnections, 'per-address share within the startup pool');
    this.limits = limits;
  }

  startupCount(): number {
    return this.idle.size + this.active.size;
  }

  authenticated(): number {
    return this.authenticatedCount;
  }

  /**
   * Admits a new connection into the startup pool, evicting the oldest startup connection it displaces (of its
   * address when the address's share is full, else overall), or refuses it when none is old enough to evict.
   */
  admit(address: string, nowMs: number): AdmitResult {
    const sameAddress = this.byAddress.get(address);
    let evicted: { ticket: AdmissionTicket; error: WalcastError } | undefined;
    if (sameAddress !== undefined && sameAddress.size >= this.limits.maxStartupConnectionsPerAddress) {
      const victim = oldestPreferringIdle(sameAddress.values(), nowMs);
      if (victim === undefined) return { refused: new WalcastError('WALCAST_ERR_TOO_MANY_CONNECTIONS', `sorry, too many connections from ${address} still starting up`) };
      evicted = { ticket: victim, error: new WalcastError('WALCAST_ERR_TOO_MANY_CONNECTIONS', `too many connections from ${address} still starting up: closed the oldest`) };
    } else if (this.startupCount() >= this.limits.maxStartupConnections) {
      const victim = oldestPreferringIdle(this.idle.values(), nowMs) ?? oldestPreferringIdle(this.active.values(), nowMs);
      if (victim === undefined) return { refused: new WalcastError('WALCAST_ERR_TOO_MANY_CONNECTIONS', 'sorry, too many connections still starting up') };
      evicted = { ticket: victim, error: new WalcastError('WALCAST_ERR_TOO_MANY_CONNECTIONS', 'too many connections still starting up: closed the oldest') };
    }
    if (evicted !== undefined) this.release(evicted.ticket);
    const ticket: AdmissionTicket = { id: this.nextId++, address, admittedAtMs: nowMs, state: 'startup_idle' };
    this.idle.set(ticket.id, ticket);
    let set = this.byAddress.get(address);
    if (set === undefined) this.byAddress.set(address, (set = new Set()));
    set.add(ticket);
    assert.ok(this.startupCount() <= this.limits.maxStartupConnections);
    assert.ok(set.size <= this.limits.maxStartupConnectionsPerAddress);
    return { ticket, evicted };
  }

  /** The connection sent its first bytes: it is no longer the first to be evicted. */
  markActive(ticket: AdmissionTicket): void {
    if (ticket.state !== 'startup_idle') return;
    this.idle.delete(ticket.id);
    this.active.set(ticket.id, ticket);
    ticket.state = 'startup_active';
  }

  /**
   * The connection authenticated: it moves to the authenticated pool, or gets the error to refuse it with when
   * that pool is full (PostgreSQL: 53300 "sorry, too many clients already").
   */
  authenticate(ticket: AdmissionTicket): WalcastError | undefined {
    if (ticket.state === 'released') return new WalcastError('WALCAST_ERR_TOO_MANY_CONNECTIONS', 'the connection was closed to make room for others');
    assert.ok(ticket.state !== 'authenticated', 'authenticates once');
    if (this.authenticatedCount >= this.limits.maxConnections) return new WalcastError('WALCAST_ERR_TOO_MANY_CONNECTIONS', 'sorry, too many clients already');
    this.removeFromStartup(ticket);
    ticket.state = 'authenticated';
    this.authenticatedCount++;
    return undefined;
  }

  /** The connection closed (or was evicted): its slot is free. Idempotent. */
  release(ticket: AdmissionTicket): void {
    if (ticket.state === 'released') return;
    if (ticket.state === 'authenticated') this.authenticatedCount--;
    else this.removeFromStartup(ticket);
    ticket.state = 'released';
    assert.ok(this.authenticatedCount >= 0);
  }

  private removeFromStartup(ticket: AdmissionTicket): void {
    this.idle.delete(ticket.id);
    this.active.delete(ticket.id);
    const set = this.byAddress.get(ticket.address);
    set?.delete(ticket);
    if (set?.size === 0) this.byAddress.delete(ticket.address);
  }
}

/**
 * Among `tickets` (in admission order, so oldest first), the first that has sent nothing, else the first, provided
 * it has been starting up for at least STARTUP_EVICTION_AGE_MIN_MS; undefined when that one is too young.
 */
function oldestPreferringIdle(tickets: Iterable<AdmissionTicket>, nowMs: number): AdmissionTicket | undefined {
  let oldest: AdmissionTicket | undefined;
  for (const ticket of tickets) {
    oldest ??= ticket;
    if (ticket.state === 'startup_idle') {
      oldest = ticket;
      break;
    }
  }
  if (oldest === undefined || nowMs - oldest.admittedAtMs < STARTUP_EVICTION_AGE_MIN_MS) return undefined;
  return oldest;
}
