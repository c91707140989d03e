/**
 * Bounded polling for integration tests: waits until a probe returns a value, retrying probes that throw (a server
 * still starting), and fails with the condition's name and the last error once the deadline passes.
 */
export interface WaitForOptions {
  /** Names the condition in the timeout error. */
  readonly what?: string;
  /** Pause between probes; short where the test checks a deadline the product promises. */
  readonly pollMs?: number;
}

const POLL_MS_DEFAULT = 100;

export async function waitFor<T>(probe: () => Promise<T | undefined>, timeoutMs: number, options: WaitForOptions = {}): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      const what = options.what ?? 'condition';
      throw new Error(`${what}: not met within ${timeoutMs} ms${lastError === undefined ? '' : `: ${String(lastError)}`}`);
    }
    await new Promise((resolve) => setTimeout(resolve, options.pollMs ?? POLL_MS_DEFAULT));
  }
}
