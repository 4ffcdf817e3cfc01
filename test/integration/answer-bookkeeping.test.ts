import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterAll } from '../helpers/cleanup.js';
import { simProvider, startGateway } from '../helpers/gateway.js';
import { parseProm, value } from '../helpers/prom-text.js';

/**
 * An answer's counts, log line, breaker and statistics are written after the answers of its turn of the event
 * loop (src/end-of-turn.ts). Whatever a client has read must already be accounted for when it looks.
 */
const track = closeAfterAll();

interface UpstreamStatus {
  id: string;
  breaker: { state: string; consecutive_failures: number };
  stats: { successes: number; failures: number; outputTokens: number };
}

describe('a burst of concurrent answers', () => {
  it('is counted, logged and learnt by the time its clients have read it', async () => {
    const ok = track(await startSimulator({ name: 'ok', completionTokens: 4 }));
    const bad = track(await startSimulator({ name: 'bad', status: 500 }));
    const gw = track(
      await startGateway({
        providers: [simProvider('ok', ok.url, ['m']), simProvider('bad', bad.url, ['m'])],
        routes: {
          plain: { strategy: 'priority', targets: ['ok/m'] },
          fo: { strategy: 'priority', targets: ['bad/m', 'ok/m'] },
        },
        // Above the burst's failures: the breaker stays closed and every request tries bad/m first.
        circuit_breaker: { failure_threshold: 100, open_ms: 60_000 },
      }),
    );
    const N = 30;
    const call = async (route: string, i: number): Promise<number> => {
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-request-id': `${route}-${i}` },
        body: JSON.stringify({ model: route, messages: [{ role: 'user', content: `burst ${i}` }] }),
      });
      await res.body.text();
      return res.statusCode;
    };
    const statuses = await Promise.all(
      Array.from({ length: N }, (_, i) => [call('plain', i), call('fo', i)]).flat(),
    );
    expect(statuses.every((s) => s === 200)).toBe(true);

    const samples = parseProm(await (await request(`${gw.url}/metrics`)).body.text());
    const requests = (route: string) =>
      value(samples, 'llm_router_requests_total', { route, provider: 'ok', model: 'm', status: '200' });
    expect(requests('plain')).toBe(N);
    expect(requests('fo')).toBe(N);
    const attempts = (provider: string, outcome: string) =>
      value(samples, 'llm_router_upstream_attempts_total', { provider, model: 'm', outcome });
    expect(attempts('ok', 'success')).toBe(2 * N);
    expect(attempts('bad', 'error')).toBe(N);

    const lines = gw.logs.filter((l) => l.msg === 'request');
    expect(lines).toHaveLength(2 * N);
    expect(new Set(lines.map((l) => l.reqId)).size).toBe(2 * N);

    const status = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: UpstreamStatus[];
    };
    const byId = new Map(status.upstreams.map((u) => [u.id, u]));
    expect(byId.get('ok/m')?.stats).toMatchObject({ successes: 2 * N, failures: 0, outputTokens: 8 * N });
    expect(byId.get('bad/m')?.stats).toMatchObject({ successes: 0, failures: N });
    expect(byId.get('bad/m')?.breaker).toMatchObject({ state: 'closed', consecutive_failures: N });
  });
});
