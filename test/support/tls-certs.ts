/**
 * Test certificates made with the real `openssl` command: a CA, server certificates for 127.0.0.1/localhost (two,
 * so a reload can be told apart), client certificates, and an Ed25519 key pair for tokens. Files are owned by the
 * postgres OS user with mode 0600 when the tests run as root, because libpq and the PostgreSQL server refuse keys
 * that others can read and run as that user in the fixtures.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir } from './postgres.js';

export interface TestCertificates {
  readonly dir: string;
  readonly caCert: string;
  readonly caKey: string;
  readonly serverCert: string;
  readonly serverKey: string;
  /** A second server certificate (CN walcast-reloaded), same CA and names, to prove SIGHUP swapped certificates. */
  readonly serverCert2: string;
  readonly serverKey2: string;
  /** Issued by the CA to CN=repl (the fixtures' replication user). */
  readonly clientCert: string;
  readonly clientKey: string;
  /** Issued by the CA to CN=someone-else. */
  readonly otherClientCert: string;
  readonly otherClientKey: string;
  /** Self-signed CN=repl: not trusted by the CA. */
  readonly rogueClientCert: string;
  readonly rogueClientKey: string;
  readonly tokenPrivateKey: string;
  readonly tokenPublicKey: string;
  /** A second Ed25519 pair walcast does not trust. */
  readonly otherTokenPrivateKey: string;
}

/** openssl runs in milliseconds; this bound only keeps a wedged run from hanging the suite. */
const OPENSSL_TIMEOUT_MS = 30_000;
/** Certificates outlive any test run by far and still expire, as real ones do. */
const VALID_DAYS = '2';

function openssl(dir: string, args: readonly string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], timeout: OPENSSL_TIMEOUT_MS });
}

function newKey(dir: string, name: string): string {
  openssl(dir, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-out', name]);
  return join(dir, name);
}

/** A certificate for SUBJECT signed by the CA (SHA-256), with the given extensions. */
function issue(dir: string, name: string, subject: string, extensions: string): { cert: string; key: string } {
  const key = newKey(dir, `${name}.key`);
  openssl(dir, ['req', '-new', '-key', key, '-subj', subject, '-out', `${name}.csr`]);
  openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-sha256', '-days', VALID_DAYS, '-out', `${name}.crt`, '-extfile', writeExt(dir, name, extensions)]);
  return { cert: join(dir, `${name}.crt`), key };
}

function writeExt(dir: string, name: string, text: string): string {
  const file = `${name}.ext`;
  execFileSync('sh', ['-c', `printf '%s\\n' "$1" > "$2"`, 'sh', text, file], { cwd: dir });
  return file;
}

export async function makeTestCertificates(): Promise<TestCertificates> {
  const dir = await makeTempDir('walcast-tls');
  const caKey = newKey(dir, 'ca.key');
  openssl(dir, ['req', '-x509', '-new', '-key', caKey, '-sha256', '-days', VALID_DAYS, '-subj', '/CN=walcast test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-out', 'ca.crt']);
  const serverExt = 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth';
  const server = issue(dir, 'server', '/CN=localhost', serverExt);
  const server2 = issue(dir, 'server2', '/CN=walcast-reloaded', serverExt);
  const client = issue(dir, 'client', '/CN=repl', 'extendedKeyUsage=clientAuth');
  const other = issue(dir, 'other', '/CN=someone-else', 'extendedKeyUsage=clientAuth');
  const rogueKey = newKey(dir, 'rogue.key');
  openssl(dir, ['req', '-x509', '-new', '-key', rogueKey, '-sha256', '-days', VALID_DAYS, '-subj', '/CN=repl', '-out', 'rogue.crt']);
  openssl(dir, ['genpkey', '-algorithm', 'ed25519', '-out', 'token.key']);
  openssl(dir, ['pkey', '-in', 'token.key', '-pubout', '-out', 'token.pub']);
  openssl(dir, ['genpkey', '-algorithm', 'ed25519', '-out', 'other-token.key']);
  restrictToServerUser(dir);
  return {
    dir,
    caCert: join(dir, 'ca.crt'),
    caKey,
    serverCert: server.cert,
    serverKey: server.key,
    serverCert2: server2.cert,
    serverKey2: server2.key,
    clientCert: client.cert,
    clientKey: client.key,
    otherClientCert: other.cert,
    otherClientKey: other.key,
    rogueClientCert: join(dir, 'rogue.crt'),
    rogueClientKey: rogueKey,
    tokenPrivateKey: join(dir, 'token.key'),
    tokenPublicKey: join(dir, 'token.pub'),
    otherTokenPrivateKey: join(dir, 'other-token.key'),
  };
}

/** libpq and postgres accept a key only when its owner alone can read it; the fixtures run them as postgres. */
function restrictToServerUser(dir: string): void {
  const asRoot = process.getuid?.() === 0;
  const uid = asRoot ? Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim()) : undefined;
  const gid = asRoot ? Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim()) : undefined;
  for (const name of readdirSync(dir)) {
    chmodSync(join(dir, name), 0o600);
    if (uid !== undefined && gid !== undefined) chownSync(join(dir, name), uid, gid);
  }
}
