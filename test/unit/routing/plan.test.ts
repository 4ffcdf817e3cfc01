import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../../src/config/load.js';
import { Gateway } from '../../../src/gateway.js';
import { createLogger } from '../../../src/observability/logger.js';
import { planRequest, type PlanOptions } from '../../../src/routing/plan.js';
import { Writable } from 'node:stream';

const FEATURES = {
  stream: false,
  tools: false,
  toolsParam: 'tools' as const,
  json: false,
  images: false,
  choices: 1,
  promptTokens: 10,
  contextTokens: 10,
  requestedOutputTokens: undefined,
  promptParam: 'messages' as const,
  notForAnthropic: undefined,
};

function weightedRoute() {
  const loaded = parseConfigText(
    JSON.stringify({
      providers: [
        { name: 'a', base_url: 'http://127.0.0.1:9/v1', models: [{ name: 'm' }] },
        { name: 'b', base_url: 'http://127.0.0.1:9/v1', models: [{ name: 'm' }] },
      ],
      routes: {
        r: {
          strategy: 'weighted',
          targets: [
            { target: 'a/m', weight: 1 },
            { target: 'b/m', weight: 1 },
          ],
        },
      },
    }),
    {},
  );
  const quiet = new Writable({ write: (_c, _e, cb) => cb() });
  const gw = new Gateway(loaded, { logger: createLogger('warn', quiet) });
  const route = gw.runtime.routes.get('r')!;
  const opts = (random: () => number, extra: Partial<PlanOptions>): PlanOptions => ({
    strategy: 'weighted',
    provider: undefined,
    routing: loaded.config.routing,
    now: 0,
    random,
    ...extra,
  });
  const first = (random: () => number, extra: Partial<PlanOptions> = {}) =>
    planRequest(route, route.targets, FEATURES, opts(random, extra)).ranked[0]!.candidate.upstream.id;
  return { route, first };
}

describe('planRequest draws', () => {
  it('explain (peek) replays its draws and leaves them for the next real decision', () => {
    const { route, first } = weightedRoute();
    const picked = first(() => 0.9, { peek: true });
    expect(first(() => 0.1, { peek: true })).toBe(picked); // replayed, not drawn again
    expect(first(() => 0.1)).toBe(picked); // the real decision uses explain's draw
    expect(route.pendingRandom).toHaveLength(0);
  });

  it("a call on the route's behalf (aside) draws fresh numbers and leaves explain's draws and the rotation alone", () => {
    const { route, first } = weightedRoute();
    const explained = first(() => 0.9, { peek: true });
    const pending = [...route.pendingRandom];
    const rotation = route.rotation;
    const low = first(() => 0.01, { aside: true });
    const high = first(() => 0.99, { aside: true });
    expect(low).not.toBe(high); // fresh draws each time, not explain's
    expect(route.pendingRandom).toEqual(pending);
    expect(route.rotation).toBe(rotation);
    expect(first(() => 0.01)).toBe(explained);
  });
});
