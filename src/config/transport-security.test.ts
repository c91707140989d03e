/**
 * The shared rule for plaintext off loopback (config/transport-security.ts), in both vocabularies: what is refused,
 * what is allowed with a warning, and that loopback is never restricted.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { resolveTransportSecurity, type AuthMethodName, type TransportSecurityInput } from './transport-security.js';

function decide(host: string, authMethod: AuthMethodName, tlsMode: TransportSecurityInput['tlsMode'], allowPlaintext = false, vocabulary: 'cli' | 'api' = 'cli'): ReturnType<typeof resolveTransportSecurity> | string {
  try {
    return resolveTransportSecurity({ host, authMethod, tlsMode, allowPlaintext, vocabulary });
  } catch (error) {
    assert.ok(isWalcastError(error, 'WALCAST_ERR_CONFIG'), `a config error: ${String(error)}`);
    return error.message;
  }
}

test('loopback addresses accept every method with or without TLS', () => {
  for (const host of ['127.0.0.1', '127.9.9.9', 'localhost', '::1']) {
    for (const method of ['trust', 'scram-sha-256', 'cert', 'jwt'] as const) {
      assert.deepEqual(decide(host, method, undefined), { plaintextOffLoopback: false, warning: undefined }, `${host} ${method}`);
    }
  }
});

test('off loopback: trust is refused, even with TLS or allowPlaintext', () => {
  for (const tlsMode of [undefined, 'prefer', 'require'] as const) {
    assert.match(String(decide('0.0.0.0', 'trust', tlsMode, true)), /^--auth trust is allowed only on a loopback address, not 0\.0\.0\.0/);
    assert.match(String(decide('10.0.0.5', 'trust', tlsMode, true, 'api')), /^trust auth is allowed only on a loopback address, not 10\.0\.0\.5/);
  }
});

test('off loopback: password and certificate auth need TLS unless plaintext is allowed (with a warning)', () => {
  for (const method of ['scram-sha-256', 'cert'] as const) {
    assert.equal(decide('0.0.0.0', method, undefined), `--auth ${method} without TLS on 0.0.0.0 would expose credentials and WAL on the network: give --tls-cert/--tls-key, or --allow-plaintext`);
    assert.equal(decide('0.0.0.0', method, undefined, false, 'api'), `${method} auth without TLS on 0.0.0.0 would expose credentials and WAL on the network: give tls: { certFile, keyFile }, or allowPlaintext: true`);
    assert.deepEqual(decide('0.0.0.0', method, undefined, true), { plaintextOffLoopback: true, warning: `--auth ${method} without TLS off loopback (--allow-plaintext): credentials and WAL travel unencrypted` });
    for (const tlsMode of ['prefer', 'require'] as const) assert.deepEqual(decide('192.168.1.2', method, tlsMode), { plaintextOffLoopback: false, warning: undefined });
  }
});

test('off loopback: tokens need TLS mode require, since a plain client would send one in clear text', () => {
  assert.match(String(decide('::', 'jwt', undefined)), /--auth jwt without TLS .* give --tls-cert\/--tls-key and --tls-mode require, or --allow-plaintext/);
  assert.match(String(decide('::', 'jwt', 'prefer')), /^--auth jwt with --tls-mode prefer \(tokens would be sent in clear text by plain clients\) on ::/);
  assert.match(String(decide('::', 'jwt', 'prefer', false, 'api')), /^jwt auth with tls mode 'prefer' .* give tls: \{ certFile, keyFile, mode: 'require' \}, or allowPlaintext: true$/);
  assert.deepEqual(decide('::', 'jwt', 'require'), { plaintextOffLoopback: false, warning: undefined });
  const allowed = decide('::', 'jwt', 'prefer', true);
  assert.ok(typeof allowed !== 'string' && allowed.plaintextOffLoopback && /travel unencrypted/.test(allowed.warning ?? ''));
});
