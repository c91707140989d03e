/**
 * Parsing of `HOST:PORT` listen addresses, and the loopback test that decides whether `trust` auth (or an
 * unauthenticated HTTP API) may be used: only connections that cannot come from another machine may skip auth.
 */
import { isIP } from 'node:net';

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

/** Accepts `host:port`, `[v6]:port` and `:port` (loopback). Throws a RangeError naming the flag. */
export function parseListenAddress(text: string, flag: string): ListenAddress {
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text.trim());
  if (match === null) throw new RangeError(`${flag} must be HOST:PORT, got "${text}"`);
  const host = match[1] ?? (match[2] === '' || match[2] === undefined ? '127.0.0.1' : match[2]);
  const port = Number(match[3]);
  if (port > 65535) throw new RangeError(`${flag}: port ${port} is out of range (0-65535)`);
  return { host, port };
}

export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) === 6) return host === '::1' || host === '0:0:0:0:0:0:0:1';
  return false;
}

export function formatListenAddress(address: ListenAddress): string {
  return isIP(address.host) === 6 ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}
