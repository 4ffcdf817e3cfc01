import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway } from '../helpers/gateway.js';

const track = closeAfterEach();

/** Writes raw bytes, then waits; resolves with what the gateway answered, if anything, and when. */
function rawExchange(url: string, bytes: string, waitMs: number): Promise<{ text: string; ms: number }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const t0 = performance.now();
    const socket = connect(Number(port), hostname, () => socket.write(bytes));
    let text = '';
    socket.on('data', (d) => (text += d.toString()));
    const done = (): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ text, ms: performance.now() - t0 });
    };
    socket.on('close', done);
    socket.on('error', done);
    const timer = setTimeout(done, waitMs);
  });
}

/** The headers and part of a body, then a stall. */
const SLOW_BODY =
  'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":';

const bodyOf = (text: string): unknown => JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));

describe('a client that sends its body too slowly', () => {
  it('gets an OpenAI-shaped 408 within request_timeout_ms, and no upstream is called', async () => {
    const sim = track(await startSimulator({ name: 'a' }));
    const gw = track(
      await startGateway({
        server: { request_timeout_ms: 2_000 },
        providers: [simProvider('a', sim.url, ['m'])],
        routes: { r: { targets: ['a/m'] } },
      }),
    );
    const r = await rawExchange(gw.url, SLOW_BODY, 8_000);
    expect(r.text).toMatch(/^HTTP\/1\.1 408/);
    expect(r.text).toMatch(/\r\nx-request-id: [\w-]+\r\n/i);
    expect(bodyOf(r.text)).toEqual({
      error: {
        message: 'request headers or body arrived too slowly',
        type: 'invalid_request_error',
        param: null,
        code: 'request_timeout',
      },
    });
    // Within the limit, not after it (the sweep runs twice a second against a limit half a second short).
    expect(r.ms).toBeLessThan(2_000 + 500);
    expect(sim.requests).toHaveLength(0);
  });

  it('gets an OpenAI-shaped 400 for bytes that are not HTTP, and the connection closed', async () => {
    const sim = track(await startSimulator({ name: 'a' }));
    const gw = track(
      await startGateway({
        providers: [simProvider('a', sim.url, ['m'])],
        routes: { r: { targets: ['a/m'] } },
      }),
    );
    const r = await rawExchange(gw.url, 'NOT HTTP AT ALL\r\n\r\n', 5_000);
    expect(r.text).toMatch(/^HTTP\/1\.1 400/);
    expect(bodyOf(r.text)).toMatchObject({
      error: { type: 'invalid_request_error', code: 'invalid_request' },
    });
    expect(r.ms).toBeLessThan(5_000); // closed by the gateway, not by our wait
  });
});
