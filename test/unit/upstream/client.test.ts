import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { flushTurn } from '../../../src/end-of-turn.js';
import { Abort } from '../../../src/upstream/abort.js';
import { ProviderClient } from '../../../src/upstream/client.js';

/** Answers every request with its own path; remembers which paths arrived. */
let server: Server;
const arrived: string[] = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    arrived.push(req.url ?? '');
    req.resume();
    req.on('end', () => res.end(JSON.stringify({ path: req.url })));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

function client(): ProviderClient {
  const { port } = server.address() as AddressInfo;
  return new ProviderClient({
    name: 'p',
    base_url: `http://127.0.0.1:${port}/v1`,
    max_concurrency: 4,
    timeouts: { connect_ms: 1_000, first_byte_ms: 1_000, idle_ms: 1_000 },
  } as ConstructorParameters<typeof ProviderClient>[0]);
}

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function post(c: ProviderClient, path: string, signal = new Abort()) {
  return c.requestText({
    method: 'POST',
    path,
    headers: { 'content-type': 'application/json' },
    body: '{}',
    signal,
    maxBytes: 1024,
    errorMaxBytes: 1024,
  });
}

describe('ProviderClient.requestText hands requests to undici in turn order', () => {
  it("sends a turn's first request at once and the others together when the turn ends", async () => {
    const c = client();
    await nextTurn(); // a fresh turn: no write has run in it yet
    const a = post(c, '/one');
    expect(c.stats().size).toBe(1);
    const b = post(c, '/two');
    const d = post(c, '/three');
    expect(c.stats().size).toBe(1); // waiting: the turn's later writes go out back to back
    flushTurn();
    expect(c.stats().size).toBe(3);
    expect(JSON.parse((await a).text)).toEqual({ path: '/v1/one' });
    expect(JSON.parse((await b).text)).toEqual({ path: '/v1/two' });
    expect(JSON.parse((await d).text)).toEqual({ path: '/v1/three' });
    await c.close();
  });

  it('never sends a request aborted in the turn it was made, and rejects it with the reason', async () => {
    const c = client();
    const signal = new Abort();
    const first = post(c, '/first'); // the turn's first write goes at once: the next one waits for its end
    const gone = post(c, '/aborted', signal).then(
      () => 'answered',
      (err: Error) => err.message,
    );
    signal.abort(new Error('client closed the connection'));
    expect(await gone).toBe('client closed the connection');
    expect((await first).statusCode).toBe(200);
    expect(await post(c, '/after').then((r) => r.statusCode)).toBe(200);
    expect(arrived).not.toContain('/v1/aborted');
    expect(arrived).toContain('/v1/after');
    await c.close();
  });

  it('rejects, never throws, a request on a closed client', async () => {
    const c = client();
    await c.close();
    let thrown: unknown;
    let out: Promise<unknown> | undefined;
    try {
      out = post(c, '/closed');
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeUndefined();
    await expect(out).rejects.toThrow();
  });
});
