import { request } from 'undici';
import { it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { simProvider, startGateway } from '../helpers/gateway.js';
it('dbg', async () => {
  const f = await startSimulator({ name: 'f', latencyMs: 5 });
  const s = await startSimulator({ name: 's', latencyMs: 200 });
  const gw = await startGateway({ providers: [simProvider('f', f.url, ['m']), simProvider('s', s.url, ['m'])], routes: { r: { strategy: 'latency', targets: ['s/m', 'f/m'] } } });
  const st = async () => ((await (await request(`${gw.url}/router/status`)).body.json()) as any).upstreams.map((u: any) => `${u.id} ttft=${u.stats.ttftMs} lat=${u.stats.latencyMs} n=${u.stats.samples}`).join(' | ');
  for (let b = 0; b < 15; b++) {
    const r = await Promise.all(Array.from({ length: 10 }, async () => {
      const t0 = performance.now();
      const res = await request(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'r', messages: [{ role: 'user', content: 'hi' }] }) });
      await res.body.text();
      return `${res.headers['x-router-provider']}:${Math.round(performance.now() - t0)}`;
    }));
    console.log(b, r.join(' '), '\n   ', await st());
  }
  await gw.close(); await f.close(); await s.close();
});
