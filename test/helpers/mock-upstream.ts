import type { ServerResponse } from 'node:http';

/** For hand-written upstream mocks: a JSON answer with its status and any extra headers. */
export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

/**
 * A gate a mock upstream waits on for the client's word ("I have seen the first part"), bounded so a test
 * that never opens it still ends: `wait` resolves 'client' when opened, 'bound' when the bound ran out.
 */
export function gate(boundMs = 3000): { open(): void; wait: Promise<'client' | 'bound'> } {
  let open!: () => void;
  const wait = new Promise<'client' | 'bound'>((resolve) => {
    const t = setTimeout(() => resolve('bound'), boundMs);
    open = () => {
      clearTimeout(t);
      resolve('client');
    };
  });
  return { open, wait };
}
