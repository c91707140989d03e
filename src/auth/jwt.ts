/**
 * Token authentication in Neon's safekeeper model (libs/utils/src/auth.rs): Ed25519-signed JWTs whose `scope` is
 * `tenant` (with the `tenant_id` it may read) or `safekeeperdata` (every tenant and server-wide endpoints). This
 * file owns the public-key set (PEM or JWK files, reloaded on SIGHUP), verification with the algorithm pinned to
 * EdDSA (jose refuses `none`, and an HS256 token signed with a public key never matches an Ed25519 key), the
 * scope check, and minting tokens for `walcast token create`. Verification is jose's; nothing here parses JWTs.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { SignJWT, jwtVerify } from 'jose';
import { WalcastError } from '../errors.js';

/** The one algorithm accepted: Ed25519 signatures (RFC 8037), as Neon's safekeeper. */
export const JWT_ALGORITHM = 'EdDSA';
/** A key file bigger than this is not a handful of public keys. */
export const JWT_KEY_FILE_MAX_BYTES = 256 * 1024;
/** Keys accepted at once: enough for rotation (old and new) across a few issuers, few enough to try each. */
export const JWT_KEYS_MAX = 16;
/** A token longer than this is not one of ours; refusing it early bounds the work an anonymous client causes. */
export const JWT_TOKEN_MAX_BYTES = 8 * 1024;
/** Clock skew tolerated on `exp` and `nbf` between the issuer and this server. */
export const JWT_CLOCK_TOLERANCE_S = 30;

export type TokenScope = 'tenant' | 'safekeeperdata';

export interface TokenClaims {
  readonly scope: TokenScope;
  /** The tenant a `tenant` token is for (lower-case hex); undefined for `safekeeperdata`. */
  readonly tenantId: string | undefined;
}

const TENANT_ID = /^[0-9a-f]{32}$/;

/** True when a token with these claims may read `tenantId`'s timelines (Neon auth.rs check_permission). */
export function mayAccessTenant(claims: TokenClaims, tenantId: string): boolean {
  if (claims.scope === 'safekeeperdata') return true;
  return claims.tenantId !== undefined && claims.tenantId === tenantId.toLowerCase();
}

function refused(reason: string, cause?: unknown): WalcastError {
  // One message for every bad token: the client learns nothing about which check failed; the log has the cause.
  return new WalcastError('WALCAST_ERR_TOKEN_INVALID', `token authentication failed: ${reason}`, cause === undefined ? undefined : { cause });
}

/** The public keys tokens are checked against, from one or more files; reload() swaps them all or none. */
export class TokenVerifier {
  private keys: readonly KeyObject[];

  private constructor(
    readonly files: readonly string[],
    keys: readonly KeyObject[],
  ) {
    this.keys = keys;
  }

  static async load(files: readonly string[]): Promise<TokenVerifier> {
    return new TokenVerifier(files, await loadPublicKeys(files));
  }

  async reload(): Promise<void> {
    this.keys = await loadPublicKeys(this.files);
  }

  get keyCount(): number {
    return this.keys.length;
  }

  /** Verifies signature, algorithm, expiry and claims; throws WalcastError WALCAST_ERR_TOKEN_INVALID otherwise. */
  async verify(token: string): Promise<TokenClaims> {
    if (token.length === 0 || token.length > JWT_TOKEN_MAX_BYTES) throw refused('malformed token');
    let lastError: unknown;
    for (const key of this.keys) {
      try {
        const { payload } = await jwtVerify(token, key, { algorithms: [JWT_ALGORITHM], clockTolerance: JWT_CLOCK_TOLERANCE_S });
        return claimsOf(payload);
      } catch (error) {
        if (error instanceof WalcastError) throw error;
        lastError = error;
      }
    }
    throw refused((lastError as Error | undefined)?.message ?? 'no key', lastError);
  }
}

function claimsOf(payload: Record<string, unknown>): TokenClaims {
  const scope = payload.scope;
  if (scope === 'safekeeperdata') return { scope, tenantId: undefined };
  if (scope !== 'tenant') throw refused(`scope ${JSON.stringify(scope)} is not tenant or safekeeperdata`);
  const tenantId = payload.tenant_id;
  if (typeof tenantId !== 'string' || !TENANT_ID.test(tenantId.toLowerCase())) throw refused('a tenant token needs a 32-hex tenant_id');
  return { scope, tenantId: tenantId.toLowerCase() };
}

async function loadPublicKeys(files: readonly string[]): Promise<KeyObject[]> {
  assert.ok(files.length > 0, 'at least one key file');
  const keys: KeyObject[] = [];
  for (const file of files) keys.push(...parsePublicKeys(await readKeyFile(file), file));
  if (keys.length === 0) throw new WalcastError('WALCAST_ERR_CONFIG', `no Ed25519 public key in ${files.join(', ')}`);
  if (keys.length > JWT_KEYS_MAX) throw new WalcastError('WALCAST_ERR_CONFIG', `more than ${JWT_KEYS_MAX} token public keys in ${files.join(', ')}`);
  return keys;
}

async function readKeyFile(file: string): Promise<string> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (cause) {
    throw new WalcastError('WALCAST_ERR_CONFIG', `cannot read the token key file ${file}: ${(cause as Error).message}`, { cause });
  }
  if (bytes.length > JWT_KEY_FILE_MAX_BYTES) throw new WalcastError('WALCAST_ERR_CONFIG', `the token key file ${file} is larger than ${JWT_KEY_FILE_MAX_BYTES} bytes`);
  return bytes.toString('utf8');
}

/** Every key in a file: PEM blocks ("PUBLIC KEY"), or JSON holding one JWK or a JWK Set ({"keys": [...]}). */
export function parsePublicKeys(text: string, file: string): KeyObject[] {
  const trimmed = text.trim();
  const sources: Array<Parameters<typeof createPublicKey>[0]> = [];
  if (trimmed.startsWith('{')) {
    let json: unknown;
    try {
      json = JSON.parse(trimmed);
    } catch (cause) {
      throw new WalcastError('WALCAST_ERR_CONFIG', `the token key file ${file} is not valid JSON: ${(cause as Error).message}`, { cause });
    }
    const jwks = (json as { keys?: unknown }).keys;
    const list = Array.isArray(jwks) ? (jwks as unknown[]) : [json];
    for (const jwk of list) sources.push({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' });
  } else {
    for (const block of trimmed.match(/-----BEGIN PUBLIC KEY-----[\s\S]+?-----END PUBLIC KEY-----/g) ?? []) sources.push(block);
  }
  return sources.map((source, index) => toEd25519PublicKey(source, `${file} key ${index + 1}`));
}

function toEd25519PublicKey(source: Parameters<typeof createPublicKey>[0], where: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey(source);
  } catch (cause) {
    throw new WalcastError('WALCAST_ERR_CONFIG', `${where} is not a public key: ${(cause as Error).message}`, { cause });
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new WalcastError('WALCAST_ERR_CONFIG', `${where} is ${key.asymmetricKeyType ?? 'unknown'}, not Ed25519`);
  return key;
}

/** Mints a token (for `walcast token create` and tests): EdDSA, iat now, exp now + ttlSeconds. */
export async function createToken(options: { privateKeyPem: string; scope: TokenScope; tenantId?: string | undefined; ttlSeconds: number }): Promise<string> {
  assert.ok(options.ttlSeconds > 0);
  if (options.scope === 'tenant' && (options.tenantId === undefined || !TENANT_ID.test(options.tenantId.toLowerCase()))) {
    throw new WalcastError('WALCAST_ERR_CONFIG', '--scope tenant needs --tenant-id with 32 hex digits');
  }
  if (options.scope === 'safekeeperdata' && options.tenantId !== undefined) throw new WalcastError('WALCAST_ERR_CONFIG', '--tenant-id applies only to --scope tenant');
  let key: KeyObject;
  try {
    key = createPrivateKey(options.privateKeyPem);
  } catch (cause) {
    throw new WalcastError('WALCAST_ERR_CONFIG', `the private key is unusable: ${(cause as Error).message}`, { cause });
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new WalcastError('WALCAST_ERR_CONFIG', `the private key is ${key.asymmetricKeyType ?? 'unknown'}, not Ed25519`);
  const claims = options.scope === 'tenant' ? { scope: options.scope, tenant_id: options.tenantId!.toLowerCase() } : { scope: options.scope };
  return new SignJWT(claims).setProtectedHeader({ alg: JWT_ALGORITHM, typ: 'JWT' }).setIssuedAt().setExpirationTime(`${options.ttlSeconds}s`).sign(key);
}
