/**
 * One connect round over a multi-host upstream connection string, as libpq does it (fe-connect.c PQconnectPoll,
 * "Specifying Multiple Hosts"): hosts are tried in order, a host that refuses or does not match
 * target_session_attrs is skipped, and `prefer-standby` makes a second pass accepting any server. The server's
 * role is read from the `in_hot_standby` ParameterStatus every PostgreSQL 14+ server reports at startup (on a
 * replication connection libpq cannot run `SHOW transaction_read_only`).
 */
import assert from 'node:assert/strict';
import { WalcastError } from '../errors.js';
import type { ReplicationClientOptions } from '../wire/client.js';
import { upstreamTls, type TargetSessionAttrs, type UpstreamConnInfo, type UpstreamHost } from './conninfo.js';

/** The part of a connected client this module reads. */
export interface ConnectedUpstream {
  readonly parameters: Map<string, string>;
  end(): Promise<void>;
}

export interface ConnectRoundOptions<Client extends ConnectedUpstream> {
  readonly conninfo: UpstreamConnInfo;
  readonly password: string | undefined;
  readonly timeoutMs: number;
  readonly connect: (options: ReplicationClientOptions) => Promise<Client>;
}

export interface ConnectedHost<Client> {
  readonly client: Client;
  readonly host: UpstreamHost;
}

type Role = 'primary' | 'standby';

/** Connects to the first host that accepts and matches; throws WALCAST_ERR_UPSTREAM listing why each one failed. */
export async function connectFirstMatching<Client extends ConnectedUpstream>(options: ConnectRoundOptions<Client>): Promise<ConnectedHost<Client>> {
  const { conninfo } = options;
  assert.ok(conninfo.hosts.length > 0, 'a connection string names at least one host');
  const passes: (TargetSessionAttrs)[] = conninfo.targetSessionAttrs === 'prefer-standby' ? ['standby', 'any'] : [conninfo.targetSessionAttrs];
  const failures: string[] = [];
  for (const wanted of passes) {
    for (const host of conninfo.hosts) {
      const attempt = await tryHost(options, host, wanted);
      if ('client' in attempt) return attempt;
      failures.push(`${host.host}:${host.port}: ${attempt.failure}`);
    }
  }
  throw new WalcastError('WALCAST_ERR_UPSTREAM', `no upstream host accepted (target_session_attrs=${conninfo.targetSessionAttrs}): ${failures.join('; ')}`);
}

async function tryHost<Client extends ConnectedUpstream>(options: ConnectRoundOptions<Client>, host: UpstreamHost, wanted: TargetSessionAttrs): Promise<ConnectedHost<Client> | { failure: string }> {
  const info = options.conninfo;
  let client: Client;
  try {
    client = await options.connect({
      host: host.host,
      port: host.port,
      user: info.user,
      password: options.password,
      applicationName: info.applicationName,
      options: info.options,
      tls: upstreamTls(info, host),
      timeoutMs: options.timeoutMs,
    });
  } catch (error) {
    return { failure: error instanceof Error ? error.message : String(error) };
  }
  const role: Role = client.parameters.get('in_hot_standby') === 'on' ? 'standby' : 'primary';
  if (matches(role, wanted)) return { client, host };
  await client.end().catch(() => undefined);
  return { failure: `it is a ${role}, not ${wanted}` };
}

function matches(role: Role, wanted: TargetSessionAttrs): boolean {
  switch (wanted) {
    case 'any':
      return true;
    case 'read-write':
    case 'primary':
      return role === 'primary';
    case 'read-only':
    case 'standby':
    case 'prefer-standby':
      return role === 'standby';
  }
}
