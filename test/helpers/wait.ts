/** Polls `check` every 20 ms until it holds; throws naming `what` past `timeoutMs`. */
export async function until(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 3_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Retries `check` every `stepMs` until it stops throwing; past `timeoutMs` its last error is thrown. */
export async function retryUntil<T>(
  check: () => T | Promise<T>,
  timeoutMs: number,
  stepMs: number,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (performance.now() > deadline) throw err;
      await new Promise<void>((r) => setTimeout(r, stepMs));
    }
  }
}
