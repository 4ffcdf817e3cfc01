import Fastify, { type FastifyRequest } from 'fastify';
import { describe, expect, it } from 'vitest';
import type { Gateway } from '../../../src/gateway.js';
import { flushTurn, inTurnOrder } from '../../../src/end-of-turn.js';
import {
  answerJson,
  reportRequest,
  type RequestContext,
  type RequestOutcome,
} from '../../../src/http/report.js';
import type { Upstream } from '../../../src/runtime.js';

/** Just what a report touches: counts, the request log and the clock. */
function fakeGateway(clock: { now: number }, failOnRoute?: string) {
  const lines: Record<string, unknown>[] = [];
  const errors: unknown[] = [];
  const counted: string[] = [];
  const gw = {
    now: () => clock.now,
    requestChildren: {
      get: (route: string) => {
        if (route === failOnRoute) throw new Error('label cache broke');
        return {
          requests: { inc: () => counted.push(route) },
          duration: { observe: () => undefined },
          overhead: { observe: () => undefined },
        };
      },
    },
    requestLog: { isLevelEnabled: () => true },
    requestLines: { write: (l: string) => lines.push(JSON.parse(l) as Record<string, unknown>) },
    runtime: { scrubber: { scrub: (t: string) => t } },
    logger: { error: (o: unknown) => errors.push(o) },
  } as unknown as Gateway;
  return { gw, lines, errors, counted };
}

function context(route: string): RequestContext {
  return {
    route,
    strategy: 'priority',
    stream: false,
    startedAt: 100,
    ranked: [],
    routerMs: 0,
    tier: undefined,
    tierReason: undefined,
    promptTokensEstimate: 1,
  };
}

const failed: RequestOutcome = { status: 502, served: undefined, attempts: [], upstreamMs: 0 };

function request(id: string): FastifyRequest {
  return { id, reported: false } as FastifyRequest;
}

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('request reports wait until the ready answers are written', () => {
  it('are counted and logged at the end of the turn, with the latency of when the answer went out', async () => {
    const clock = { now: 130 };
    const { gw, lines, counted } = fakeGateway(clock);
    const req = request('r-1');
    reportRequest(gw, req, context('plain'), failed);
    expect(req.reported).toBe(true); // the onResponse hook must not report it again
    expect(lines).toEqual([]);
    expect(counted).toEqual([]);
    clock.now = 900; // the loop is slow to get there: the latency is still the answer's
    await nextTurn();
    expect(counted).toEqual(['plain']);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ reqId: 'r-1', route: 'plain', status: 502, latencyMs: 30 });
  });

  it('are written at once by flushTurn (the close path), and only once', async () => {
    const { gw, lines } = fakeGateway({ now: 100 });
    reportRequest(gw, request('a'), context('plain'), failed);
    reportRequest(gw, request('b'), context('plain'), failed);
    flushTurn();
    expect(lines.map((l) => l.reqId)).toEqual(['a', 'b']);
    await nextTurn();
    expect(lines).toHaveLength(2);
  });

  it('that fail are logged as errors, never thrown, and do not cost the others their line', async () => {
    const { gw, lines, errors } = fakeGateway({ now: 100 }, 'broken');
    reportRequest(gw, request('before'), context('plain'), failed);
    reportRequest(gw, request('bad'), context('broken'), failed);
    reportRequest(gw, request('after'), context('plain'), failed);
    await nextTurn();
    expect(lines.map((l) => l.reqId)).toEqual(['before', 'after']);
    expect(errors).toHaveLength(1);
  });
});

/** An upstream as a report reads it: names, price and the per-upstream counters (no-ops here). */
function servedBy(provider: string, model: string): Upstream {
  const counter = { inc: () => undefined, observe: () => undefined };
  return {
    id: `${provider}/${model}`,
    provider: { name: provider },
    model: { name: model, price: { input_per_mtok: 1, output_per_mtok: 2 } },
    metrics: {
      promptTokens: counter,
      completionTokens: counter,
      cost: counter,
      ttft: counter,
      tpot: counter,
    },
  } as unknown as Upstream;
}

/** A fastify app whose one route answers through answerJson; `before` runs first in the handler. */
function answeringApp(gw: Gateway, clock: { now: number }, before: () => void) {
  const app = Fastify();
  const sentOnReturn: boolean[] = [];
  app.post('/answer', (_req, reply) => {
    before();
    answerJson(
      gw,
      reply,
      context('plain'),
      {
        status: 200,
        served: servedBy('b', 'chat'),
        attempts: [
          { upstream: 'a/chat', outcome: 'error', reason: 'http_500', status: 500, latencyMs: 3 },
          { upstream: 'b/chat', outcome: 'success', reason: 'ok', status: 200, latencyMs: 5 },
        ],
        upstreamMs: 8,
        ttftMs: 5,
        usage: { prompt_tokens: 4, completion_tokens: 2, total_tokens: 6 },
        countedTokens: 0,
      },
      '{"id":"x","choices":[]}',
    );
    sentOnReturn.push(reply.sent);
    clock.now = 160; // the turn's other sockets take a while
  });
  return { app, sentOnReturn };
}

describe('served JSON answers go out in turn order', () => {
  it("go at once when they are the turn's first write, with their x-router headers", async () => {
    const clock = { now: 130 };
    const { gw, lines } = fakeGateway(clock);
    await nextTurn();
    const { app, sentOnReturn } = answeringApp(gw, clock, () => undefined);
    const res = await app.inject({ method: 'POST', url: '/answer', payload: {} });
    await app.close();
    expect(sentOnReturn).toEqual([true]);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.body).toBe('{"id":"x","choices":[]}');
    expect(res.headers).toMatchObject({
      'x-router-provider': 'b',
      'x-router-model': 'chat',
      'x-router-attempts': '2',
      'x-router-trail': 'a/chat=http_500',
    });
    await nextTurn();
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ status: 200, upstream: 'b/chat', attempts: 2, latencyMs: 30 });
  });

  it('wait for the end of the turn behind its first write, and are reported with the latency of the send', async () => {
    const clock = { now: 100 };
    const { gw, lines } = fakeGateway(clock);
    const order: string[] = [];
    const { app, sentOnReturn } = answeringApp(gw, clock, () =>
      inTurnOrder((what: string) => order.push(what), 'an earlier write', 0, 0, 0),
    );
    const res = await app.inject({ method: 'POST', url: '/answer', payload: {} });
    await app.close();
    expect(order).toEqual(['an earlier write']);
    expect(sentOnReturn).toEqual([false]); // it waited for the end of the turn
    expect(res.statusCode).toBe(200);
    expect(res.body).toBe('{"id":"x","choices":[]}');
    await nextTurn();
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ status: 200, upstream: 'b/chat', latencyMs: 60 });
  });
});
