import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../../src/config/load.js';
import { flushTurn } from '../../../src/end-of-turn.js';
import { Gateway } from '../../../src/gateway.js';
import { createLogger } from '../../../src/observability/logger.js';
import { classifyStatus } from '../../../src/resilience/classify.js';
import { runFailover, type FailoverOptions } from '../../../src/resilience/failover.js';
import type { RankedCandidate } from '../../../src/routing/types.js';
import type { RouteTarget } from '../../../src/runtime.js';
import type { AttemptResult } from '../../../src/upstream/attempt.js';
import { closeAfterEach } from '../../helpers/cleanup.js';

const track = closeAfterEach();

/** A gateway's runtime with upstreams a/m and b/m (nothing listens: the attempts below are scripted). */
function setup() {
  const loaded = parseConfigText(
    JSON.stringify({
      providers: [
        { name: 'a', base_url: 'http://127.0.0.1:9/v1', models: [{ name: 'm' }] },
        { name: 'b', base_url: 'http://127.0.0.1:9/v1', models: [{ name: 'm' }] },
      ],
      routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
    }),
    {},
  );
  const quiet = new Writable({ write: (_c, _e, cb) => cb() });
  const gw = track(new Gateway(loaded, { logger: createLogger('warn', quiet) }));
  const rt = gw.runtime;
  const [a, b] = rt.routes.get('r')!.targets as [RouteTarget, RouteTarget];
  const ranked = (...targets: RouteTarget[]): RankedCandidate<RouteTarget>[] =>
    targets.map((candidate) => ({ candidate, score: 1, reason: 'scripted' }));
  const opts = (maxAttempts: number): FailoverOptions => ({
    routeName: 'r',
    maxAttempts,
    deadline: Number.POSITIVE_INFINITY,
    now: () => 0,
    metrics: gw.metrics,
    logger: gw.logger,
    scrubber: rt.scrubber,
  });
  return { a, b, ranked, opts };
}

const FAILED_500: AttemptResult = {
  ok: false,
  classified: classifyStatus(500),
  status: 500,
  retryAfterMs: undefined,
  info: undefined,
  committed: false,
  clientGone: false,
  deadlineReached: false,
  totalMs: 1,
};
const SERVED: AttemptResult = {
  ok: true,
  usage: undefined,
  countedTokens: 0,
  body: '{}',
  ttftMs: 1,
  totalMs: 1,
};

/** `a/m` answers 500, anything else answers; every call is logged by upstream id. */
function scripted(calls: string[]) {
  return (target: RankedCandidate<RouteTarget>): Promise<AttemptResult> => {
    calls.push(target.candidate.id);
    return Promise.resolve(target.candidate.id === 'a/m' ? FAILED_500 : SERVED);
  };
}

describe('runFailover', () => {
  // Regression (audit 4): a plan listing pa/ma twice had it fail twice in one request (trail
  // `pa/ma=http_500,pa/ma=http_500`). SPEC §2: an upstream that failed in this request is never retried by it.
  it('never attempts an upstream twice in one request, even when the plan lists it twice', async () => {
    const { a, b, ranked, opts } = setup();
    const calls: string[] = [];
    // max_attempts 2: the repeated entry must not use up the second attempt either.
    const out = await runFailover(ranked(a, a, b), opts(2), scripted(calls));
    flushTurn();
    expect(calls).toEqual(['a/m', 'b/m']);
    expect(out.attempts.map((x) => `${x.upstream}=${x.reason}`)).toEqual(['a/m=http_500', 'b/m=ok']);
    expect(a.upstream.breaker.snapshot().consecutiveFailures).toBe(1);

    const only: string[] = [];
    const err = await runFailover(ranked(a, a), opts(3), scripted(only)).then(
      () => undefined,
      (e: unknown) => e as { code?: string; message?: string },
    );
    flushTurn();
    expect(only).toEqual(['a/m']);
    expect(err?.code).toBe('upstream_error');
    expect(err?.message).toMatch(/^all 1 upstream attempt\(s\) failed: a\/m: http_500/);
  });
});
