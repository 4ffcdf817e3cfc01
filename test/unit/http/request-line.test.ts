import { describe, expect, it } from 'vitest';
import { requestLine, type RequestContext, type RequestOutcome } from '../../../src/http/report.js';
import type { RankedCandidate } from '../../../src/routing/types.js';
import type { RouteTarget, Upstream } from '../../../src/runtime.js';

const HOSTILE = 'a "quoted" \\ back\nslash\u0000 \u2028 ünï 😀 </script>';

function context(over: Partial<RequestContext> = {}): RequestContext {
  return {
    route: 'plain',
    strategy: 'hybrid',
    stream: false,
    startedAt: 0,
    ranked: [ranked(served, 0.93, 'hybrid 0.93 = cost ...')],
    routerMs: 0,
    tier: undefined,
    tierReason: undefined,
    promptTokensEstimate: 12,
    ...over,
  };
}

const served = { id: 'ok/m' } as Upstream;

function ranked(upstream: Upstream, score: number, reason: string): RankedCandidate<RouteTarget> {
  return { score, reason, candidate: { upstream } } as unknown as RankedCandidate<RouteTarget>;
}

function outcome(over: Partial<RequestOutcome> = {}): RequestOutcome {
  return { status: 200, served, attempts: [], upstreamMs: 1, ...over };
}

describe('the hand-built request log line', () => {
  it('is one line of JSON shaped as pino writes it: level and time first, msg last', () => {
    const line = requestLine('req-1', context(), outcome({ ttftMs: 2.04 }), 3.26, 12, 8, 0.000012, undefined);
    expect(line.endsWith('}\n')).toBe(true);
    expect(line.indexOf('\n')).toBe(line.length - 1);
    expect(line.startsWith('{"level":30,"time":')).toBe(true);
    expect(line.endsWith(',"msg":"request"}\n')).toBe(true);
    const parsed = JSON.parse(line) as Record<string, unknown>;
    expect(parsed).toEqual({
      level: 30,
      time: parsed.time,
      reqId: 'req-1',
      route: 'plain',
      strategy: 'hybrid',
      upstream: 'ok/m',
      score: 0.93,
      reason: 'hybrid 0.93 = cost ...',
      attempts: 0,
      status: 200,
      stream: false,
      latencyMs: 3.3,
      ttftMs: 2,
      promptTokens: 12,
      completionTokens: 8,
      costUsd: 0.000012,
      msg: 'request',
    });
    expect(Math.abs((parsed.time as number) - Date.now())).toBeLessThan(10_000);
  });

  it('writes the cost without float noise: what the tokens cost, to the picodollar', () => {
    const noisy = (10 * 0.1 + 8 * 0.4) / 1e6; // 0.0000042000000000000004 as JSON writes it
    const line = requestLine('req-1', context(), outcome(), 1, 10, 8, noisy, undefined);
    expect(line).toContain(',"costUsd":0.0000042,');
    expect(requestLine('req-1', context(), outcome(), 1, 1, 0, 3e-7, undefined)).toContain(
      ',"costUsd":3e-7,',
    );
    expect(requestLine('req-1', context(), outcome(), 1, 1e9, 1e9, 12_345.678, undefined)).toContain(
      ',"costUsd":12345.678,',
    );
  });

  it('escapes every text field, so hostile route names, LLM reasons and upstream errors stay one valid line', () => {
    const line = requestLine(
      HOSTILE,
      context({ route: HOSTILE, tier: 'deep', tierReason: HOSTILE }),
      outcome({
        served: { id: HOSTILE } as Upstream,
        attempts: [{ upstream: HOSTILE, outcome: 'error', reason: 'http_500', status: 500, latencyMs: 1 }],
      }),
      1,
      undefined,
      undefined,
      undefined,
      HOSTILE,
    );
    expect(line.indexOf('\n')).toBe(line.length - 1);
    const parsed = JSON.parse(line) as Record<string, unknown>;
    for (const k of ['reqId', 'route', 'upstream', 'tierReason', 'error']) expect(parsed[k], k).toBe(HOSTILE);
    expect(parsed.trail).toBe(`${HOSTILE}=http_500`);
    expect(parsed.tier).toBe('deep');
  });

  it('leaves out what is absent and writes non-finite numbers as null, as JSON.stringify does', () => {
    const line = requestLine(
      'r',
      context({ ranked: [ranked(served, Number.NaN, 'x')] }),
      outcome({ served: undefined, status: 503 }),
      Number.POSITIVE_INFINITY,
      undefined,
      undefined,
      undefined,
      undefined,
    );
    const parsed = JSON.parse(line) as Record<string, unknown>;
    expect(parsed.score).toBeNull();
    expect(parsed.latencyMs).toBeNull();
    for (const k of ['upstream', 'tier', 'tierReason', 'trail', 'ttftMs', 'promptTokens', 'costUsd', 'error'])
      expect(k in parsed, k).toBe(false);
  });
});
