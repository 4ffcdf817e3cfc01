import { afterAll, afterEach, beforeAll, expect, vi } from 'vitest';

/**
 * Keeps a test file's clients on loopback: a `fetch` anywhere else (LangChain may fetch tokenizer files) is
 * refused, and each test fails if one was tried. Call once at the top of a file.
 */
export function onlyLoopbackFetch(): void {
  const offLoopback: string[] = [];
  beforeAll(() => {
    const realFetch = globalThis.fetch;
    vi.stubGlobal('fetch', (input: string | URL | Request, init?: RequestInit) => {
      const url = new URL(input instanceof Request ? input.url : String(input));
      if (url.hostname !== '127.0.0.1' && url.hostname !== 'localhost' && url.hostname !== '[::1]') {
        offLoopback.push(url.href);
        return Promise.reject(new Error(`refused off-loopback fetch to ${url.href}`));
      }
      return realFetch(input, init);
    });
  });
  afterAll(() => vi.unstubAllGlobals());
  afterEach(() => expect(offLoopback.splice(0)).toEqual([]));
}
