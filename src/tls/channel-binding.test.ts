/** tls-server-end-point (RFC 5929 §4.1): the hash follows the certificate's signature algorithm, MD5/SHA-1 become SHA-256. */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { endPointHashName, tlsServerEndPoint } from './channel-binding.js';

/** A self-signed certificate made by openssl with the given key and digest, as DER. */
function certificate(keyArgs: readonly string[], digest: string): Buffer {
  const dir = mkdtempSync(join(tmpdir(), 'walcast-cb-'));
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', ...keyArgs, '-nodes', '-keyout', join(dir, 'k'), '-out', join(dir, 'c'), `-${digest}`, '-days', '1', '-subj', '/CN=cb'], { stdio: 'ignore' });
    return new X509Certificate(readFileSync(join(dir, 'c'))).raw;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('hash follows the signature algorithm (RSA and ECDSA, SHA-256/384/512)', () => {
  const rsa384 = certificate(['rsa:2048'], 'sha384');
  assert.equal(endPointHashName(rsa384), 'sha384');
  assert.deepEqual(tlsServerEndPoint(rsa384), createHash('sha384').update(rsa384).digest());
  const ec256 = certificate(['ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'], 'sha256');
  assert.equal(endPointHashName(ec256), 'sha256');
  assert.equal(endPointHashName(certificate(['ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'], 'sha512')), 'sha512');
});

test('SHA-1 signatures bind with SHA-256; EdDSA certificates have no defined binding', () => {
  const sha1 = certificate(['rsa:2048'], 'sha1');
  assert.equal(endPointHashName(sha1), 'sha256');
  assert.deepEqual(tlsServerEndPoint(sha1), createHash('sha256').update(sha1).digest());
  const ed = certificate(['ed25519'], 'sha256');
  assert.equal(tlsServerEndPoint(ed), undefined);
});
