/**
 * Chooses the TCP congestion control of each accepted connection (TCP_CONGESTION, Linux, through the native addon).
 *
 * Why walcast touches it: on a host whose default is BBR (net.ipv4.tcp_congestion_control = bbr) and whose interface
 * has no fq qdisc (loopback never has one), the kernel paces every TCP send with its own timers. On loopback there is
 * no bottleneck to pace for, and the pacing cost walcast's sender about twice the CPU per GB and held a fast replica
 * back (docs/benchmarks.md, "Loopback connections and BBR's pacing"). So a connection from a loopback address gets the
 * first algorithm of `loopback` the kernel accepts (default cubic, then reno: neither paces), and any other
 * connection keeps the system's choice unless `remote` names one: on a real network BBR may be what the operator
 * chose it for.
 *
 * The choice is made once at start-up by trying each name on a socket of the addon's own; per connection there is
 * one setsockopt. A failure there never refuses the connection: it is counted (walcast_tcp_congestion_sockets_total)
 * and logged once per error code.
 */
import type { Socket } from 'node:net';
import { isIP } from 'node:net';
import { WalcastError } from '../errors.js';
import { loadNativeAddon, type NativeAddon } from '../io/native-binding.js';
import { socketFd } from '../io/socket-fd.js';
import type { Logger } from '../log.js';

/** The connections a setting applies to: from a loopback address, or from anywhere else. */
export type PeerClass = 'loopback' | 'remote';

/**
 * 'system': leave the socket as the kernel made it. Otherwise the names to try in order; `required` (the operator
 * named them) makes "none accepted" a configuration error at start-up instead of a warning.
 */
export type CongestionChoice = 'system' | { readonly names: readonly string[]; readonly required: boolean };

export interface TcpCongestionSettings {
  readonly loopback: CongestionChoice;
  readonly remote: CongestionChoice;
}

/** Loopback peers: cubic (the kernel's own default), else reno (built into every kernel); others: the system's. */
export const TCP_CONGESTION_DEFAULT: TcpCongestionSettings = { loopback: { names: ['cubic', 'reno'], required: false }, remote: 'system' };

/** A name as the kernel spells its modules (TCP_CA_NAME_MAX is 16 with the NUL). */
const ALGORITHM_NAME = /^[a-z][a-z0-9_]{0,14}$/;
/** Names one setting may list: a preference and its fallbacks, not a search. */
const ALGORITHMS_PER_SETTING_MAX = 4;
/** Distinct failure codes logged; after that they are only counted (each code is logged once). */
const LOGGED_FAILURE_CODES_MAX = 16;

/** Parses `system` or a comma-separated list of algorithm names (`cubic,reno`); `flag` names the option in errors. */
export function parseCongestionChoice(text: string, flag: string): CongestionChoice {
  const trimmed = text.trim();
  if (trimmed === 'system') return 'system';
  const names = trimmed.split(',').map((name) => name.trim());
  if (names.length > ALGORITHMS_PER_SETTING_MAX) throw new RangeError(`${flag} takes at most ${ALGORITHMS_PER_SETTING_MAX} names, got ${names.length}`);
  for (const name of names) {
    if (!ALGORITHM_NAME.test(name)) throw new RangeError(`${flag} must be "system" or congestion control names such as cubic,reno; got "${text}"`);
  }
  return { names, required: true };
}

/** Which class a peer address is in: 127.0.0.0/8, ::1 and IPv4-mapped 127.x are loopback; anything else remote. */
export function peerClass(address: string | undefined): PeerClass {
  if (address === undefined) return 'remote';
  const mapped = address.toLowerCase().startsWith('::ffff:') ? address.slice(7) : address;
  if (isIP(mapped) === 4) return mapped.startsWith('127.') ? 'loopback' : 'remote';
  return address === '::1' || address === '0:0:0:0:0:0:0:1' ? 'loopback' : 'remote';
}

/** Sockets per peer class and algorithm that got it, and those whose setsockopt failed. */
export interface TcpCongestionCounts {
  readonly set: ReadonlyMap<PeerClass, number>;
  readonly failed: ReadonlyMap<PeerClass, number>;
}

/** What a class resolved to: the algorithm sockets get, or why they keep the system's. */
export type ResolvedCongestion = { readonly algorithm: string } | { readonly system: string };

type TcpCongestionCalls = Required<Pick<NativeAddon, 'setTcpCongestion' | 'tryTcpCongestion'>>;

export class TcpCongestion {
  private readonly setCounts = new Map<PeerClass, number>();
  private readonly failedCounts = new Map<PeerClass, number>();
  private readonly loggedCodes = new Set<string>();

  private constructor(
    private readonly calls: TcpCongestionCalls | undefined,
    private readonly chosen: Readonly<Record<PeerClass, ResolvedCongestion>>,
    private readonly log: Logger,
  ) {}

  /**
   * Decides each class's algorithm by trying the names in order on a socket of the addon's own. A class whose names
   * were all refused keeps the system's choice with a warning, or, when the operator named them, is a configuration
   * error (WALCAST_ERR_CONFIG). Without the addon (other platforms, a build that failed) every class keeps the
   * system's choice; an operator's explicit names are then an error too.
   */
  static resolve(settings: TcpCongestionSettings, options: { readonly addon: NativeAddon | undefined; readonly log: Logger }): TcpCongestion {
    const addon = options.addon;
    const calls: TcpCongestionCalls | undefined =
      addon?.setTcpCongestion !== undefined && addon.tryTcpCongestion !== undefined
        ? { setTcpCongestion: addon.setTcpCongestion.bind(addon), tryTcpCongestion: addon.tryTcpCongestion.bind(addon) }
        : undefined;
    const chosen = {
      loopback: resolveClass('loopback', settings.loopback, calls, options.log),
      remote: resolveClass('remote', settings.remote, calls, options.log),
    };
    return new TcpCongestion(calls, chosen, options.log);
  }

  /** Per class: the algorithm connections get, or the reason they keep the system's. */
  describe(): Readonly<Record<PeerClass, ResolvedCongestion>> {
    return this.chosen;
  }

  /** Sets the socket's algorithm for its peer's class (nothing for a 'system' class). Never throws. */
  apply(socket: Socket): void {
    const peer = peerClass(socket.remoteAddress);
    const resolved = this.chosen[peer];
    if (!('algorithm' in resolved) || this.calls === undefined) return;
    const fd = socketFd(socket);
    if (fd === undefined) {
      this.countFailure(peer, resolved.algorithm, 'ENOTSOCK', new Error('the socket has no descriptor'));
      return;
    }
    try {
      this.calls.setTcpCongestion(fd, resolved.algorithm);
      this.setCounts.set(peer, (this.setCounts.get(peer) ?? 0) + 1);
    } catch (error) {
      this.countFailure(peer, resolved.algorithm, String((error as { code?: unknown }).code ?? 'UNKNOWN'), error);
    }
  }

  private countFailure(peer: PeerClass, algorithm: string, code: string, error: unknown): void {
    this.failedCounts.set(peer, (this.failedCounts.get(peer) ?? 0) + 1);
    if (this.loggedCodes.has(code) || this.loggedCodes.size >= LOGGED_FAILURE_CODES_MAX) return;
    this.loggedCodes.add(code);
    this.log.warn({ peer, algorithm, code, err: error }, 'could not set the TCP congestion control of a connection: it keeps the system default (logged once per error code; counted in walcast_tcp_congestion_sockets_total)');
  }

  counts(): TcpCongestionCounts {
    return { set: this.setCounts, failed: this.failedCounts };
  }
}

function resolveClass(peer: PeerClass, choice: CongestionChoice, calls: TcpCongestionCalls | undefined, log: Logger): ResolvedCongestion {
  const flag = peer === 'loopback' ? '--tcp-congestion-loopback' : '--tcp-congestion';
  if (choice === 'system') return { system: 'configured' };
  if (calls === undefined) {
    const why = 'the native addon (TCP_CONGESTION) is not available on this platform or build';
    if (choice.required) throw new WalcastError('WALCAST_ERR_CONFIG', `${flag} ${choice.names.join(',')}: ${why}; use "system"`);
    log.info({ peer }, `TCP congestion control left to the system: ${why}`);
    return { system: 'no native addon' };
  }
  const refusals: string[] = [];
  for (const name of choice.names) {
    try {
      calls.tryTcpCongestion(name);
      return { algorithm: name };
    } catch (error) {
      refusals.push(`${name}: ${String((error as { code?: unknown }).code ?? (error as Error).message)}`);
    }
  }
  const why = `the kernel refused ${refusals.join(', ')} (ENOENT: not available, see net.ipv4.tcp_available_congestion_control; EPERM: not in net.ipv4.tcp_allowed_congestion_control)`;
  if (choice.required) throw new WalcastError('WALCAST_ERR_CONFIG', `${flag}: ${why}`);
  log.warn({ peer, refused: refusals }, `TCP congestion control left to the system: ${why}`);
  return { system: 'refused' };
}

/** "cubic", or "system (why)" for a class left to the kernel's default: logs, the status API, metrics labels. */
export function describeResolved(resolved: ResolvedCongestion): string {
  return 'algorithm' in resolved ? resolved.algorithm : `system (${resolved.system})`;
}

/**
 * What `walcast serve` and startWalcast share: settings from option text per class ('system' or 'cubic,reno'; unset
 * takes TCP_CONGESTION_DEFAULT, `labels` name the options in errors), resolved against the addon this process loads
 * (absent on other platforms, whichever I/O backend runs), the choice logged once.
 */
export function startTcpCongestion(given: { readonly loopback?: string | undefined; readonly remote?: string | undefined }, labels: Readonly<Record<PeerClass, string>>, log: Logger): TcpCongestion {
  const settings: TcpCongestionSettings = {
    loopback: given.loopback === undefined ? TCP_CONGESTION_DEFAULT.loopback : parseCongestionChoice(given.loopback, labels.loopback),
    remote: given.remote === undefined ? TCP_CONGESTION_DEFAULT.remote : parseCongestionChoice(given.remote, labels.remote),
  };
  const loaded = loadNativeAddon();
  const tcpCongestion = TcpCongestion.resolve(settings, { addon: loaded.ok ? loaded.addon : undefined, log });
  const chosen = tcpCongestion.describe();
  log.info({ loopback: describeResolved(chosen.loopback), remote: describeResolved(chosen.remote) }, 'TCP congestion control of accepted connections');
  return tcpCongestion;
}
