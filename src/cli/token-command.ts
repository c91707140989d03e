/**
 * `walcast token create`: mints an Ed25519-signed JWT in Neon's claim shape (`scope` tenant|safekeeperdata,
 * `tenant_id`) and prints it on stdout, for operators and tests. The private key never leaves its file.
 */
import { readFile } from 'node:fs/promises';
import { createToken, type TokenScope } from '../auth/jwt.js';
import { WalcastError } from '../errors.js';

/** The longest lifetime `--ttl` accepts: a year; longer-lived credentials should be rotated, not minted. */
export const TOKEN_TTL_MAX_S = 366 * 24 * 3600;

const TTL_UNITS_S: Readonly<Record<string, number>> = { s: 1, m: 60, h: 3600, d: 86_400 };

/** "90s", "30m", "24h", "7d", or plain seconds. */
export function parseTtl(text: string): number {
  const match = /^(\d+)([smhd]?)$/.exec(text.trim());
  if (match === null) throw new RangeError(`--ttl must look like 3600, 90s, 30m, 24h or 7d, got "${text}"`);
  const seconds = Number(match[1]) * TTL_UNITS_S[match[2] === '' ? 's' : match[2]!]!;
  if (seconds <= 0 || seconds > TOKEN_TTL_MAX_S) throw new RangeError(`--ttl must be between 1 s and ${TOKEN_TTL_MAX_S} s, got "${text}"`);
  return seconds;
}

export async function runTokenCreate(options: Record<string, unknown>): Promise<void> {
  const scope = options.scope as TokenScope;
  const file = options.privateKey as string;
  let privateKeyPem: string;
  try {
    privateKeyPem = await readFile(file, 'utf8');
  } catch (cause) {
    throw new WalcastError('WALCAST_ERR_CONFIG', `cannot read the private key file ${file}: ${(cause as Error).message}`, { cause });
  }
  const token = await createToken({ privateKeyPem, scope, tenantId: options.tenantId as string | undefined, ttlSeconds: parseTtl(options.ttl as string) });
  process.stdout.write(`${token}\n`);
}
