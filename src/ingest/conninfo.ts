/**
 * The upstream connection string: a libpq-style `key=value` list (PostgreSQL docs, "Connection Strings",
 * libpq fe-connect.c conninfo_parse) narrowed to what ingest needs to reach a replication walsender. Pure: text in,
 * a typed config or a WalcastError out.
 *
 * The password is refused here on purpose: the string is stored in the control file and typed on command lines,
 * both visible to other users; the password comes from --upstream-password-file or WALCAST_UPSTREAM_PASSWORD.
 */
import assert from 'node:assert/strict';
import { WalcastError } from '../errors.js';
import type { ClientTlsOptions } from '../wire/client.js';

/** libpq's default port (pg_config_manual.h DEF_PGPORT). */
export const DEFAULT_UPSTREAM_PORT = 5432;
/** The application_name walcast announces upstream; synchronous_standby_names can name it. */
export const DEFAULT_APPLICATION_NAME = 'walcast';
/** A connection string is a handful of keywords; anything longer is a mistake, not a config. */
export const CONNINFO_MAX_BYTES = 4096;
/** Above this a connect attempt is not worth waiting for; libpq's connect_timeout is in seconds too. */
const CONNECT_TIMEOUT_MAX_S = 3600;

/** One host of a multi-host string, tried in order (libpq "Specifying Multiple Hosts"). */
export interface UpstreamHost {
  readonly host: string;
  readonly port: number;
}

/** libpq target_session_attrs as it applies to a replication connection (fe-connect.c). */
export type TargetSessionAttrs = 'any' | 'read-write' | 'read-only' | 'primary' | 'standby' | 'prefer-standby';
const TARGET_SESSION_ATTRS: readonly TargetSessionAttrs[] = ['any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby'];
/** A list of hosts is typed by a person; more than this is a mistake (and bounds one connect round). */
export const UPSTREAM_HOSTS_MAX = 16;

export interface UpstreamConnInfo {
  /** The first host (for logs and single-host callers); `hosts` holds them all. */
  readonly host: string;
  readonly port: number;
  /** Every host:port, in the order they are tried; at least one. */
  readonly hosts: readonly UpstreamHost[];
  /** Which server a connect round accepts; `any` by default, as libpq. */
  readonly targetSessionAttrs: TargetSessionAttrs;
  readonly user: string;
  readonly applicationName: string;
  /** Seconds; undefined means the caller's default. */
  readonly connectTimeoutS: number | undefined;
  /** libpq's sslmode, with libpq's meanings (see wire/client.ts negotiateTls). */
  readonly sslMode: SslMode;
  /** CA file the upstream's certificate must chain to (verify-ca, verify-full, and require when given). */
  readonly sslRootCert: string | undefined;
  /** Client certificate and key files, for an upstream that authenticates walcast by certificate. */
  readonly sslCert: string | undefined;
  readonly sslKey: string | undefined;
  /**
   * The name verify-full checks the first host's certificate against: host=, even when hostaddr= says where to
   * connect. With several hosts each is checked against its own name (upstreamTls).
   */
  readonly serverName: string;
  /** The startup `options` parameter, e.g. "-c tenant_id=... -c timeline_id=..." to pick a walcast upstream's timeline. */
  readonly options: string | undefined;
}

export type SslMode = 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';
const SSL_MODES: ReadonlySet<string> = new Set(['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']);

/** Keywords accepted and ignored: they are meaningful to libpq but change nothing for a replication client. */
const IGNORED_KEYWORDS = new Set(['dbname', 'replication', 'keepalives', 'keepalives_idle', 'keepalives_interval', 'keepalives_count', 'gssencmode', 'channel_binding', 'client_encoding', 'fallback_application_name']);
const KNOWN_KEYWORDS = new Set(['host', 'hostaddr', 'port', 'target_session_attrs', 'user', 'application_name', 'connect_timeout', 'sslmode', 'sslrootcert', 'sslcert', 'sslkey', 'password', 'passfile', 'options', ...IGNORED_KEYWORDS]);

function configError(message: string): WalcastError {
  return new WalcastError('WALCAST_ERR_CONFIG', `invalid upstream connection string: ${message}`);
}

/** Splits `key=value key='quoted \' value'` into pairs, as conninfo_parse does (backslash escapes inside quotes). */
export function tokenizeConnInfo(text: string): Map<string, string> | WalcastError {
  if (Buffer.byteLength(text) > CONNINFO_MAX_BYTES) return configError(`longer than ${CONNINFO_MAX_BYTES} bytes`);
  const pairs = new Map<string, string>();
  let index = 0;
  const skipSpace = (): void => {
    while (index < text.length && /\s/.test(text[index] ?? '')) index++;
  };
  for (skipSpace(); index < text.length; skipSpace()) {
    const keyStart = index;
    while (index < text.length && text[index] !== '=' && !/\s/.test(text[index] ?? '')) index++;
    const key = text.slice(keyStart, index);
    skipSpace();
    if (text[index] !== '=') return configError(`missing "=" after "${key}"`);
    index++;
    skipSpace();
    const value = readConnInfoValue(text, index);
    if (value instanceof WalcastError) return value;
    index = value.next;
    if (key.length === 0) return configError('empty keyword');
    pairs.set(key, value.text);
  }
  return pairs;
}

function readConnInfoValue(text: string, start: number): { text: string; next: number } | WalcastError {
  let index = start;
  let value = '';
  if (text[index] !== "'") {
    while (index < text.length && !/\s/.test(text[index] ?? '')) {
      if (text[index] === '\\' && index + 1 < text.length) index++;
      value += text[index];
      index++;
    }
    return { text: value, next: index };
  }
  index++;
  for (;;) {
    if (index >= text.length) return configError('unterminated quoted string');
    const char = text[index];
    if (char === "'") return { text: value, next: index + 1 };
    if (char === '\\' && index + 1 < text.length) index++;
    value += text[index];
    index++;
  }
}

/** Parses and checks a connection string; `defaultUser` stands in for libpq's "the OS user" when user= is absent. */
export function parseConnInfo(text: string, defaultUser: string): UpstreamConnInfo | WalcastError {
  assert.ok(defaultUser.length > 0, 'a default user is given');
  const pairs = tokenizeConnInfo(text);
  if (pairs instanceof WalcastError) return pairs;
  for (const key of pairs.keys()) {
    if (!KNOWN_KEYWORDS.has(key)) return configError(`unknown keyword "${key}"`);
  }
  if (pairs.has('password')) return configError('password= is not allowed here: use --upstream-password-file or WALCAST_UPSTREAM_PASSWORD');
  if (pairs.has('passfile')) return configError('passfile= is not supported: use --upstream-password-file or WALCAST_UPSTREAM_PASSWORD');
  const hosts = parseHosts(pairs);
  if (hosts instanceof WalcastError) return hosts;
  const targetSessionAttrs = pairs.get('target_session_attrs') ?? 'any';
  if (!isTargetSessionAttrs(targetSessionAttrs)) return configError(`target_session_attrs=${targetSessionAttrs} is invalid: use one of ${TARGET_SESSION_ATTRS.join(', ')}`);
  const [first] = hosts;
  assert.ok(first !== undefined, 'at least one host');
  const connectTimeoutS = parseConnectTimeout(pairs.get('connect_timeout'));
  if (connectTimeoutS instanceof WalcastError) return connectTimeoutS;
  const ssl = parseSsl(pairs);
  if (ssl instanceof WalcastError) return ssl;
  return {
    host: first.host,
    port: first.port,
    hosts,
    targetSessionAttrs,
    user: pairs.get('user') ?? defaultUser,
    applicationName: pairs.get('application_name') ?? DEFAULT_APPLICATION_NAME,
    connectTimeoutS,
    ...ssl,
    serverName: pairs.get('host')?.split(',')[0] || first.host,
    options: pairs.get('options'),
  };
}

function parseSsl(pairs: ReadonlyMap<string, string>): Pick<UpstreamConnInfo, 'sslMode' | 'sslRootCert' | 'sslCert' | 'sslKey'> | WalcastError {
  const sslMode = pairs.get('sslmode') ?? 'prefer';
  if (!SSL_MODES.has(sslMode)) return configError(`sslmode=${sslMode} is not one of disable, allow, prefer, require, verify-ca, verify-full`);
  const sslRootCert = pairs.get('sslrootcert');
  const sslCert = pairs.get('sslcert');
  const sslKey = pairs.get('sslkey');
  if ((sslMode === 'verify-ca' || sslMode === 'verify-full') && sslRootCert === undefined) {
    // libpq falls back to ~/.postgresql/root.crt; a server's home is no place for trust anchors, so walcast asks.
    return configError(`sslmode=${sslMode} needs sslrootcert=FILE (walcast does not read ~/.postgresql/root.crt)`);
  }
  if ((sslCert === undefined) !== (sslKey === undefined)) return configError('sslcert= and sslkey= go together');
  return { sslMode: sslMode as SslMode, sslRootCert, sslCert, sslKey };
}

/**
 * The wire client's TLS settings for one host of this upstream: verify-full checks each host's certificate against
 * that host's own name (libpq), or against host= when hostaddr= gave the address of a single host.
 */
export function upstreamTls(info: UpstreamConnInfo, host: UpstreamHost = info.hosts[0] ?? { host: info.host, port: info.port }): ClientTlsOptions {
  const serverName = info.hosts.length === 1 ? info.serverName : host.host;
  return { mode: info.sslMode, rootCertFile: info.sslRootCert, certFile: info.sslCert, keyFile: info.sslKey, serverName };
}

function isTargetSessionAttrs(text: string): text is TargetSessionAttrs {
  return (TARGET_SESSION_ATTRS as readonly string[]).includes(text);
}

/**
 * host (or hostaddr) and port as comma-separated lists, as libpq: one port applies to every host, otherwise there
 * must be one port per host; an empty port is the default port.
 */
function parseHosts(pairs: Map<string, string>): UpstreamHost[] | WalcastError {
  const hostText = pairs.get('hostaddr') ?? pairs.get('host');
  if (hostText === undefined || hostText.length === 0) return configError('host= is required');
  const names = hostText.split(',');
  if (names.length > UPSTREAM_HOSTS_MAX) return configError(`more than ${UPSTREAM_HOSTS_MAX} hosts`);
  const portTexts = (pairs.get('port') ?? '').split(',');
  if (portTexts.length !== 1 && portTexts.length !== names.length) return configError(`could not match ${portTexts.length} port numbers to ${names.length} hosts`);
  const hosts: UpstreamHost[] = [];
  for (const [index, host] of names.entries()) {
    if (host.length === 0) return configError('an empty host in the host list');
    if (host.startsWith('/')) return configError('unix-domain sockets are not supported: give a TCP host');
    const portText = portTexts.length === 1 ? portTexts[0] : portTexts[index];
    const port = parsePort(portText === '' ? undefined : portText);
    if (port instanceof WalcastError) return port;
    hosts.push({ host, port });
  }
  return hosts;
}

function parsePort(text: string | undefined): number | WalcastError {
  if (text === undefined) return DEFAULT_UPSTREAM_PORT;
  const port = Number(text);
  if (!/^\d+$/.test(text) || port < 1 || port > 65535) return configError(`port=${text} is not a TCP port`);
  return port;
}

function parseConnectTimeout(text: string | undefined): number | undefined | WalcastError {
  if (text === undefined) return undefined;
  const seconds = Number(text);
  if (!/^\d+$/.test(text) || seconds > CONNECT_TIMEOUT_MAX_S) return configError(`connect_timeout=${text} is not a number of seconds up to ${CONNECT_TIMEOUT_MAX_S}`);
  // libpq: "zero, negative, or not specified means wait indefinitely"; we keep the caller's bounded default.
  return seconds === 0 ? undefined : seconds;
}

/** The string back in canonical form, for logs and the control file (never holds a password). */
export function formatConnInfo(info: UpstreamConnInfo): string {
  const quote = (value: string): string => (/^[^\s'\\]+$/.test(value) ? value : `'${value.replaceAll('\\', '\\\\').replaceAll("'", "\\'")}'`);
  const hostList = info.hosts.length === 1 ? info.serverName : info.hosts.map((entry) => entry.host).join(',');
  const portList = info.hosts.map((entry) => String(entry.port)).join(',');
  const parts = [`host=${quote(hostList)}`, `port=${portList}`, `user=${quote(info.user)}`, `application_name=${quote(info.applicationName)}`];
  if (info.targetSessionAttrs !== 'any') parts.push(`target_session_attrs=${info.targetSessionAttrs}`);
  if (info.connectTimeoutS !== undefined) parts.push(`connect_timeout=${info.connectTimeoutS}`);
  if (info.sslMode !== 'prefer') parts.push(`sslmode=${info.sslMode}`);
  if (info.hosts.length === 1 && info.serverName !== info.host) parts.push(`hostaddr=${quote(info.host)}`);
  for (const [keyword, value] of [['sslrootcert', info.sslRootCert], ['sslcert', info.sslCert], ['sslkey', info.sslKey]] as const) {
    if (value !== undefined) parts.push(`${keyword}=${quote(value)}`);
  }
  if (info.options !== undefined) parts.push(`options=${quote(info.options)}`);
  return parts.join(' ');
}
