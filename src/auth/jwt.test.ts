/** Token keys (PEM, JWK, JWK Set), EdDSA pinning, claims, tenant scope and minting, with keys made by node:crypto. */
import assert from 'node:assert/strict';
import { createHmac, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { TokenVerifier, createToken, mayAccessTenant, parsePublicKeys } from './jwt.js';

const dir = mkdtempSync(join(tmpdir(), 'walcast-jwt-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const TENANT = '0123456789abcdef0123456789abcdef';
const first = generateKeyPairSync('ed25519');
const second = generateKeyPairSync('ed25519');
const pem = (key: typeof first.publicKey): string => key.export({ type: 'spki', format: 'pem' }).toString();
const privatePem = (key: typeof first.privateKey): string => key.export({ type: 'pkcs8', format: 'pem' }).toString();

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

test('PEM blocks, a JWK and a JWK Set all load; a non-Ed25519 key is refused', () => {
  assert.equal(parsePublicKeys(pem(first.publicKey) + pem(second.publicKey), 'two.pem').length, 2);
  assert.equal(parsePublicKeys(JSON.stringify(first.publicKey.export({ format: 'jwk' })), 'one.jwk').length, 1);
  assert.equal(parsePublicKeys(JSON.stringify({ keys: [first.publicKey.export({ format: 'jwk' }), second.publicKey.export({ format: 'jwk' })] }), 'set.json').length, 2);
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  assert.throws(() => parsePublicKeys(pem(rsa.publicKey), 'rsa.pem'), /not Ed25519/);
});

test('any configured key verifies; reload swaps the key set', async () => {
  const keyFile = file('keys.pem', pem(first.publicKey) + pem(second.publicKey));
  const verifier = await TokenVerifier.load([keyFile]);
  const bySecond = await createToken({ privateKeyPem: privatePem(second.privateKey), scope: 'tenant', tenantId: TENANT, ttlSeconds: 60 });
  assert.deepEqual(await verifier.verify(bySecond), { scope: 'tenant', tenantId: TENANT });
  writeFileSync(keyFile, pem(first.publicKey));
  await verifier.reload();
  await assert.rejects(verifier.verify(bySecond), (error: unknown) => isWalcastError(error, 'WALCAST_ERR_TOKEN_INVALID'));
});

test('alg none, HS256 keyed with the public key, bad claims and oversized tokens are refused', async () => {
  const verifier = await TokenVerifier.load([file('one.pem', pem(first.publicKey))]);
  const b64 = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  const claims = { scope: 'tenant', tenant_id: TENANT };
  const head = `${b64({ alg: 'HS256' })}.${b64(claims)}`;
  const refused = [
    `${b64({ alg: 'none' })}.${b64(claims)}.`,
    `${head}.${createHmac('sha256', pem(first.publicKey)).update(head).digest('base64url')}`,
    'x'.repeat(9000),
    await createToken({ privateKeyPem: privatePem(second.privateKey), scope: 'safekeeperdata', ttlSeconds: 60 }),
  ];
  for (const token of refused) await assert.rejects(verifier.verify(token), (error: unknown) => isWalcastError(error, 'WALCAST_ERR_TOKEN_INVALID'), token.slice(0, 40));
});

test('scope: a tenant token reaches only its tenant, safekeeperdata every tenant', () => {
  assert.ok(mayAccessTenant({ scope: 'tenant', tenantId: TENANT }, TENANT.toUpperCase()));
  assert.ok(!mayAccessTenant({ scope: 'tenant', tenantId: TENANT }, 'f'.repeat(32)));
  assert.ok(mayAccessTenant({ scope: 'safekeeperdata', tenantId: undefined }, 'f'.repeat(32)));
});

test('createToken refuses a tenant scope without a tenant id and a tenant id on safekeeperdata', async () => {
  const key = privatePem(first.privateKey);
  await assert.rejects(createToken({ privateKeyPem: key, scope: 'tenant', ttlSeconds: 60 }), /needs --tenant-id/);
  await assert.rejects(createToken({ privateKeyPem: key, scope: 'safekeeperdata', tenantId: TENANT, ttlSeconds: 60 }), /applies only to --scope tenant/);
});
