/**
 * The server's TLS material: certificate, key and optional client CA read from PEM files, turned into the
 * SecureContext each new connection's handshake uses, and reloaded on SIGHUP (a failed reload keeps the old
 * context, so a half-written file never takes TLS down). Streams already encrypted keep the context they started
 * with, as PostgreSQL's backends keep theirs after a reload. The socket upgrade itself is wire/connection.ts's.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createSecureContext, type PeerCertificate, type SecureContext } from 'node:tls';
import { WalcastError } from '../errors.js';

/** prefer: plain and TLS connections are both served; require: a plain StartupMessage is refused (pg_hba hostssl). */
export type TlsMode = 'prefer' | 'require';

/** A PEM file bigger than this is not a certificate chain or key: refuse it rather than parse a stray file. */
export const TLS_FILE_MAX_BYTES = 1024 * 1024;
/** Listeners on reload: the HTTPS API and tests; more means a leak (a listener added per connection). */
const RELOAD_LISTENERS_MAX = 8;

export interface ServerTlsFiles {
  readonly certFile: string;
  readonly keyFile: string;
  /** CA bundle that client certificates must chain to; when set, the server asks clients for a certificate. */
  readonly caFile?: string | undefined;
}

/** The PEM texts, kept so that the HTTP API can serve the same certificate. */
export interface TlsPem {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca: Buffer | undefined;
}

export class ServerTls {
  private current: { readonly pem: TlsPem; readonly context: SecureContext };
  private readonly reloadListeners: Array<() => void> = [];

  private constructor(
    readonly files: ServerTlsFiles,
    readonly mode: TlsMode,
    loaded: { readonly pem: TlsPem; readonly context: SecureContext },
  ) {
    this.current = loaded;
  }

  static async load(files: ServerTlsFiles, mode: TlsMode = 'prefer'): Promise<ServerTls> {
    return new ServerTls(files, mode, await loadContext(files));
  }

  /** True when a client CA is configured: handshakes request (but do not demand) a client certificate. */
  get requestClientCertificate(): boolean {
    return this.files.caFile !== undefined;
  }

  /** The context for the next handshake. */
  secureContext(): SecureContext {
    return this.current.context;
  }

  pem(): TlsPem {
    return this.current.pem;
  }

  /** Re-reads the files; throws WalcastError (and keeps serving the old material) when they are unusable. */
  async reload(): Promise<void> {
    this.current = await loadContext(this.files);
    for (const listener of this.reloadListeners) listener();
  }

  /** Called after each successful reload (the HTTPS server swaps its default context). */
  onReload(listener: () => void): void {
    assert.ok(this.reloadListeners.length < RELOAD_LISTENERS_MAX, 'a handful of servers share one ServerTls');
    this.reloadListeners.push(listener);
  }
}

async function loadContext(files: ServerTlsFiles): Promise<{ pem: TlsPem; context: SecureContext }> {
  const pem: TlsPem = {
    cert: await readPem(files.certFile, 'certificate'),
    key: await readPem(files.keyFile, 'key'),
    ca: files.caFile === undefined ? undefined : await readPem(files.caFile, 'CA'),
  };
  try {
    // Node's defaults: TLS 1.2 minimum and its cipher list; the key must match the certificate.
    const context = createSecureContext({ cert: pem.cert, key: pem.key, ...(pem.ca === undefined ? {} : { ca: pem.ca }) });
    return { pem, context };
  } catch (cause) {
    throw new WalcastError('WALCAST_ERR_CONFIG', `the TLS certificate ${files.certFile} and key ${files.keyFile} are unusable: ${(cause as Error).message}`, { cause });
  }
}

async function readPem(file: string, what: string): Promise<Buffer> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (cause) {
    throw new WalcastError('WALCAST_ERR_CONFIG', `cannot read the TLS ${what} file ${file}: ${(cause as Error).message}`, { cause });
  }
  if (bytes.length > TLS_FILE_MAX_BYTES) throw new WalcastError('WALCAST_ERR_CONFIG', `the TLS ${what} file ${file} is larger than ${TLS_FILE_MAX_BYTES} bytes`);
  if (bytes.length === 0) throw new WalcastError('WALCAST_ERR_CONFIG', `the TLS ${what} file ${file} is empty`);
  return bytes;
}

/**
 * The names a client certificate vouches for: its subject CN, then its SAN DNS names and e-mail addresses.
 * PostgreSQL's cert method maps the CN (clientname=CN, the default); walcast accepts a SAN too, as the issue asks.
 */
export function clientCertificateNames(certificate: PeerCertificate): string[] {
  const names: string[] = [];
  const commonName = certificate.subject?.CN;
  if (typeof commonName === 'string') names.push(commonName);
  else if (Array.isArray(commonName)) names.push(...(commonName as string[]));
  for (const entry of (certificate.subjectaltname ?? '').split(',')) {
    const match = /^\s*(DNS|email):(.*)$/.exec(entry);
    if (match !== null) names.push(match[2]!);
  }
  assert.ok(names.every((name) => typeof name === 'string'));
  return names;
}
