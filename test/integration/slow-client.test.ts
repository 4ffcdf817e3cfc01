import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway } from '../helpers/gateway.js';

const track = closeAfterEach();

/** Sends the headers and part of a body, then stalls; resolves with what the gateway answered, if anything. */
function slowBody(url: string, waitMs: number): Promise<{ text: string; ms: number }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const t0 = performance.now();
    const socket = connect(Number(port), hostname, () => {
      socket.write(
        'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":',
      );
    });
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

describe('a client that sends its body too slowly', () => {
  it('gets 408 within request_timeout_ms (plus the once-a-second check), and no upstream is called', async () => {
    const sim = track(await startSimulator({ name: 'a' }));
    const gw = track(
      await startGateway({
        server: { request_timeout_ms: 1_000 },
        providers: [simProvider('a', sim.url, ['m'])],
        routes: { r: { targets: ['a/m'] } },
      }),
    );
    const r = await slowBody(gw.url, 8_000);
    expect(r.text).toMatch(/^HTTP\/1\.1 408/);
    expect(r.ms).toBeLessThan(4_000);
    expect(sim.requests).toHaveLength(0);
  });
});
