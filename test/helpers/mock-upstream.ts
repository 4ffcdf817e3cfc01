import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { closeableServer } from './cleanup.js';

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

/** A hand-written upstream on loopback that keeps the JSON bodies it was sent, in order. */
export interface RecordingMock {
  url: string;
  bodies: Record<string, unknown>[];
  close(): Promise<void>;
}

/** Starts a RecordingMock on 127.0.0.1:0: `answer(body, n, res)` writes the answer to the n-th request (0-based). */
export async function startRecordingMock(
  answer: (body: Record<string, unknown>, n: number, res: ServerResponse) => void,
): Promise<RecordingMock> {
  const bodies: Record<string, unknown>[] = [];
  const server = createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (text += c));
    req.on('end', () => {
      const body = JSON.parse(text) as Record<string, unknown>;
      bodies.push(body);
      answer(body, bodies.length - 1, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const closeable = closeableServer(server);
  return { url: `http://127.0.0.1:${port}`, bodies, close: async () => void (await closeable.close()) };
}
