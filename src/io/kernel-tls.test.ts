/**
 * The kernel TLS probe (native/kernel-tls.cc through native-backend.ts): a well-formed answer, stable across
 * calls, that agrees with what the kernel itself lists afterwards (/proc/sys/net/ipv4/tcp_available_ulp names
 * `tls` exactly when the ULP could be attached), and how each backend reports it.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { createNativeBackend, probeKernelTls, probeNative } from './native-backend.js';
import { loadNativeAddon } from './native-binding.js';
import { createTsBackend } from './ts-backend.js';

const AVAILABLE_ULP_FILE = '/proc/sys/net/ipv4/tcp_available_ulp';

test('probeKernelTls answers a known state with OK or an errno name, and the same answer twice', () => {
  const answer = probeKernelTls();
  assert.ok(['available', 'unavailable', 'error'].includes(answer.state), `state ${answer.state}`);
  if (answer.state === 'available') assert.equal(answer.code, 'OK');
  else assert.match(answer.code, /^(E[A-Z0-9]+|UNKNOWN_ERRNO_\d+|ADDON_UNAVAILABLE|ADDON_TOO_OLD)$/);
  assert.ok(answer.detail.length > 0);
  assert.match(answer.detail, /TypeScript path/, 'the detail says TLS streams do not use kTLS');
  assert.equal(probeKernelTls(), answer, 'probed once per process');
});

test('the raw probe is repeatable and agrees with the ULPs the kernel lists afterwards', (t) => {
  const loaded = loadNativeAddon();
  if (!loaded.ok) return t.skip(`native addon unavailable: ${loaded.reason}`);
  const first = loaded.addon.probeKernelTls();
  assert.deepEqual(loaded.addon.probeKernelTls(), first, 'a second probe answers the same');
  assert.equal(first.state === 'available', first.code === 'OK');
  assert.ok(first.step.length > 0);
  const wrapped = probeKernelTls();
  assert.deepEqual([wrapped.state, wrapped.code], [first.state, first.code]);
  if (first.state === 'error' || !existsSync(AVAILABLE_ULP_FILE)) return;
  // The probe loads the tls module when it can (root may autoload it), so afterwards the kernel lists `tls`
  // exactly when the ULP step succeeded.
  const listed = readFileSync(AVAILABLE_ULP_FILE, 'utf8').trim().split(/\s+/).includes('tls');
  const ulpAttached = first.state === 'available' || first.step !== 'setsockopt(TCP_ULP)';
  assert.equal(listed, ulpAttached, `${AVAILABLE_ULP_FILE} vs probe ${JSON.stringify(first)}`);
});

test('the ts backend reports not-probed; the native backend reports the probe', async (t) => {
  const ts = createTsBackend();
  assert.deepEqual([ts.kernelTls.state, ts.kernelTls.code], ['not-probed', 'TS_BACKEND']);
  await ts.close();
  if (!probeNative().ok) return t.skip('native addon unavailable');
  const native = await createNativeBackend('sendfile');
  try {
    assert.equal(native.kernelTls, probeKernelTls());
  } finally {
    await native.close();
  }
});
