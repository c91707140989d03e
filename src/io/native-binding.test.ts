/**
 * Unit tests of the addon loader: candidate order (explicit path, WALCAST_NATIVE_PATH, build/Debug,
 * build/Release), a reason instead of a throw when nothing loads, the error class handed to the addon, and that
 * every build carries its invariant checks.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, test } from 'node:test';
import { NATIVE_ADDON_FILE, NativeIoError, loadNativeAddon, nativeAddonCandidates } from './native-binding.js';

const savedPath = process.env.WALCAST_NATIVE_PATH;

afterEach(() => {
  if (savedPath === undefined) delete process.env.WALCAST_NATIVE_PATH;
  else process.env.WALCAST_NATIVE_PATH = savedPath;
});

test('without an explicit path the loader tries build/Debug, then build/Release', () => {
  delete process.env.WALCAST_NATIVE_PATH;
  const candidates = nativeAddonCandidates();
  assert.equal(candidates.length, 2);
  assert.ok(candidates[0]!.endsWith(join('build', 'Debug', NATIVE_ADDON_FILE)));
  assert.ok(candidates[1]!.endsWith(join('build', 'Release', NATIVE_ADDON_FILE)));
});

test('an explicit path, from the option or WALCAST_NATIVE_PATH, is the only candidate', () => {
  process.env.WALCAST_NATIVE_PATH = '/opt/env/walcast_native.node';
  assert.deepEqual(nativeAddonCandidates(), ['/opt/env/walcast_native.node']);
  assert.deepEqual(nativeAddonCandidates('/opt/option/walcast_native.node'), ['/opt/option/walcast_native.node'], 'the option wins over the env');
});

test('a missing or broken addon yields a reason, never a throw', () => {
  const missing = loadNativeAddon({ path: '/nonexistent/walcast_native.node' });
  assert.equal(missing.ok, false);
  assert.match(missing.ok ? '' : missing.reason, /not built/);
  const dir = mkdtempSync(join(tmpdir(), 'walcast-binding-'));
  try {
    const broken = join(dir, NATIVE_ADDON_FILE);
    writeFileSync(broken, 'not an ELF file');
    const result = loadNativeAddon({ path: broken });
    assert.equal(result.ok, false);
    assert.ok(!result.ok && result.reason.includes(broken));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('NativeIoError carries errno, code and syscall', () => {
  const error = new NativeIoError('sendfile failed: EPIPE (Broken pipe)', 32, 'EPIPE', 'sendfile');
  assert.ok(error instanceof Error);
  assert.equal(error.name, 'NativeIoError');
  assert.equal(error.errno, 32);
  assert.equal(error.code, 'EPIPE');
  assert.equal(error.syscall, 'sendfile');
});

test('the addon carries its invariant checks in every build, Release included (native/invariant.h)', (context) => {
  const loaded = loadNativeAddon();
  if (!loaded.ok) {
    context.skip(`native addon unavailable: ${loaded.reason}`);
    return;
  }
  // WALCAST_ASSERT's failure message is in the binary exactly when its checks were compiled in.
  assert.ok(readFileSync(loaded.path).includes('walcast native: invariant failed'), `${loaded.path} was built without its invariant checks`);
});
