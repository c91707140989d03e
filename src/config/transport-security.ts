/**
 * The one rule for what may cross the network unencrypted, shared by `walcast serve` (src/cli/serve-command.ts) and
 * the programmatic `startWalcast` (src/index.ts), so an embedder cannot start what the command refuses:
 *
 * - `trust` only on a loopback address (anyone who can connect would get the WAL);
 * - off loopback, any other auth needs TLS, or an explicit allowPlaintext (then a warning to log): passwords,
 *   SCRAM exchanges without channel binding, tokens and the WAL itself would travel in clear text;
 * - off loopback, `jwt` needs TLS mode `require`: a token is sent as a cleartext password message, and with
 *   `prefer` a plain client would send it unencrypted.
 *
 * Pure: it decides from the listen host, the auth method and the TLS mode, and names the options in the caller's
 * vocabulary (flags for the command, option fields for the API).
 */
import { WalcastError } from '../errors.js';
import { isLoopbackHost } from './listen-address.js';

export type AuthMethodName = 'trust' | 'scram-sha-256' | 'cert' | 'jwt';

export interface TransportSecurityInput {
  readonly host: string;
  readonly authMethod: AuthMethodName;
  /** The replication port's TLS mode; undefined when TLS is off. */
  readonly tlsMode: 'prefer' | 'require' | undefined;
  readonly allowPlaintext: boolean;
  /** Whose words the messages use: `walcast serve` flags, or `startWalcast` option fields. */
  readonly vocabulary: 'cli' | 'api';
}

export interface TransportSecurity {
  /** Whether a client may authenticate and stream without TLS from another machine (allowed explicitly). */
  readonly plaintextOffLoopback: boolean;
  /** What the caller must log at warn level when plaintext was allowed explicitly. */
  readonly warning: string | undefined;
}

const WORDS = {
  cli: {
    trust: (host: string) => `--auth trust is allowed only on a loopback address, not ${host}: use --auth scram-sha-256 with --password-file`,
    auth: (method: AuthMethodName) => `--auth ${method}`,
    jwtPrefer: '--auth jwt with --tls-mode prefer (tokens would be sent in clear text by plain clients)',
    giveTls: (jwt: boolean) => `give --tls-cert/--tls-key${jwt ? ' and --tls-mode require' : ''}, or --allow-plaintext`,
    allowed: '--allow-plaintext',
  },
  api: {
    trust: (host: string) => `trust auth is allowed only on a loopback address, not ${host}: use scram-sha-256 with a password`,
    auth: (method: AuthMethodName) => `${method} auth`,
    jwtPrefer: "jwt auth with tls mode 'prefer' (tokens would be sent in clear text by plain clients)",
    giveTls: (jwt: boolean) => `give tls: { certFile, keyFile${jwt ? ", mode: 'require'" : ''} }, or allowPlaintext: true`,
    allowed: 'allowPlaintext',
  },
} as const;

/** Throws WALCAST_ERR_CONFIG for a configuration that would expose credentials or WAL; else says what to log. */
export function resolveTransportSecurity(input: TransportSecurityInput): TransportSecurity {
  const words = WORDS[input.vocabulary];
  if (isLoopbackHost(input.host)) return { plaintextOffLoopback: false, warning: undefined };
  if (input.authMethod === 'trust') throw new WalcastError('WALCAST_ERR_CONFIG', words.trust(input.host));
  const jwt = input.authMethod === 'jwt';
  const plainPossible = input.tlsMode === undefined || (jwt && input.tlsMode !== 'require');
  if (!plainPossible) return { plaintextOffLoopback: false, warning: undefined };
  const what = input.tlsMode === undefined ? `${words.auth(input.authMethod)} without TLS` : words.jwtPrefer;
  if (!input.allowPlaintext) {
    throw new WalcastError('WALCAST_ERR_CONFIG', `${what} on ${input.host} would expose credentials and WAL on the network: ${words.giveTls(jwt)}`);
  }
  return { plaintextOffLoopback: true, warning: `${what} off loopback (${words.allowed}): credentials and WAL travel unencrypted` };
}
