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

describe('ProviderClient.requestText hands requests to undici at the end of the turn', () => {
  it('sends every request of a turn together once the turn ends, and each gets its own answer', async () => {
    const c = client();
    const a = post(c, '/one');
    const b = post(c, '/two');
    expect(c.stats().size).toBe(0); // nothing dispatched yet: the turn's requests go out back to back
    flushTurn();
    expect(c.stats().size).toBe(2);
    expect(JSON.parse((await a).text)).toEqual({ path: '/v1/one' });
    expect(JSON.parse((await b).text)).toEqual({ path: '/v1/two' });
    await c.close();
  });

  it('never sends a request aborted in the turn it was made, and rejects it with the reason', async () => {
    const c = client();
    const signal = new Abort();
    const gone = post(c, '/aborted', signal).then(
      () => 'answered',
      (err: Error) => err.message,
    );
    signal.abort(new Error('client closed the connection'));
    expect(await gone).toBe('client closed the connection');
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
