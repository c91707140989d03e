/**
 * Unit tests of the native backend's TypeScript surface that need no sockets: the probe, the default
 * strategy, and refusal of a bad strategy before the addon is asked. Socket-level behaviour is tested in
 * test/native-io.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import {
  DEFAULT_NATIVE_STRATEGY,
  MEASURED_FASTEST_STRATEGY,
  NATIVE_STRATEGIES,
  NO_RING_STRATEGY,
  createNativeBackend,
  probeNative,
  type NativeStrategy,
} from './native-backend.js';
import { loadNativeAddon } from './native-binding.js';

test('the default strategy is the measured fastest when io_uring works, else sendfile', () => {
  assert.ok(NATIVE_STRATEGIES.includes(DEFAULT_NATIVE_STRATEGY));
  assert.ok([MEASURED_FASTEST_STRATEGY, NO_RING_STRATEGY].includes(DEFAULT_NATIVE_STRATEGY));
  assert.equal(NO_RING_STRATEGY, 'sendfile', 'the fallback needs no io_uring');
  const loaded = loadNativeAddon();
  if (loaded.ok && loaded.addon.selfTest().ring) assert.equal(DEFAULT_NATIVE_STRATEGY, MEASURED_FASTEST_STRATEGY);
  assert.deepEqual([...NATIVE_STRATEGIES].sort(), ['sendfile', 'uring', 'writev']);
});

test('probeNative answers ok or a reason, and the same answer twice', () => {
  const first = probeNative();
  assert.ok(first.ok || first.reason.length > 0);
  assert.deepEqual(probeNative(), first);
});

test('an unknown strategy is a RangeError that names the choices', async () => {
  await assert.rejects(createNativeBackend('splice' as NativeStrategy), /sendfile, writev, uring/);
});

test('createNativeBackend either starts the engine or throws WALCAST_ERR_NATIVE_UNAVAILABLE', async () => {
  const probe = probeNative();
  for (const strategy of NATIVE_STRATEGIES) {
    try {
      const backend = await createNativeBackend(strategy);
      assert.ok(probe.ok);
      assert.equal(backend.kind, 'native');
      assert.equal(backend.strategy, strategy);
      await backend.close();
      await backend.close(); // idempotent
    } catch (error) {
      assert.ok(isWalcastError(error, 'WALCAST_ERR_NATIVE_UNAVAILABLE'), String(error));
    }
  }
});
