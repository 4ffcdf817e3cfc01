import { describe, expect, it } from 'vitest';
import type { BreakerConfig } from '../../../src/config/schema.js';
import {
  CircuitBreaker,
  isProbe,
  type BreakerTransition,
  type Permit,
} from '../../../src/resilience/breaker.js';

const CFG: BreakerConfig = {
  failure_threshold: 3,
  open_ms: 1_000,
  max_open_ms: 5_000,
  half_open_probes: 1,
  success_threshold: 2,
};

function setup(overrides: Partial<BreakerConfig> = {}) {
  const clock = { t: 10_000 };
  const transitions: BreakerTransition[] = [];
  const breaker = new CircuitBreaker(
    { ...CFG, ...overrides },
    () => clock.t,
    (t) => transitions.push(t),
  );
  return { clock, transitions, breaker };
}

/** A permit as a word: a half-open trial or not (undefined: refused). */
function kind(permit: Permit | undefined): 'normal' | 'probe' | undefined {
  return permit === undefined ? undefined : isProbe(permit) ? 'probe' : 'normal';
}

function trip(breaker: CircuitBreaker, n = CFG.failure_threshold): void {
  for (let i = 0; i < n; i++) breaker.onFailure(breaker.acquire()!, 'error');
}

describe('CircuitBreaker: closed', () => {
  it('starts closed and admits normal permits', () => {
    const { breaker } = setup();
    expect(breaker.state).toBe('closed');
    expect(breaker.canAttempt()).toBe(true);
    expect(kind(breaker.acquire())).toBe('normal');
    expect(breaker.msUntilHalfOpen()).toBe(0);
    expect(breaker.snapshot()).toEqual({
      state: 'closed',
      consecutiveFailures: 0,
      consecutiveSuccesses: 0,
      openMs: 1_000,
      openUntil: null,
      msUntilHalfOpen: 0,
      tripCause: null,
      probesInFlight: 0,
      opens: 0,
    });
  });

  it('opens at exactly failure_threshold consecutive failures', () => {
    const { breaker, clock, transitions } = setup();
    trip(breaker, 2);
    expect(breaker.state).toBe('closed');
    expect(breaker.snapshot().consecutiveFailures).toBe(2);
    breaker.onFailure(breaker.acquire()!, 'error');
    expect(breaker.state).toBe('open');
    expect(breaker.canAttempt()).toBe(false);
    expect(breaker.acquire()).toBeUndefined();
    expect(breaker.msUntilHalfOpen()).toBe(1_000);
    expect(breaker.snapshot()).toMatchObject({
      state: 'open',
      openUntil: clock.t + 1_000,
      tripCause: 'errors',
      opens: 1,
      consecutiveFailures: 3,
    });
    expect(transitions).toEqual([{ from: 'closed', to: 'open', cause: 'errors', openMs: 1_000 }]);
  });

  it('a success resets the consecutive failure count', () => {
    const { breaker } = setup();
    trip(breaker, 2);
    breaker.onSuccess(breaker.acquire()!);
    expect(breaker.snapshot().consecutiveFailures).toBe(0);
    trip(breaker, 2);
    expect(breaker.state).toBe('closed');
  });

  it('a neutral result neither resets nor counts', () => {
    const { breaker } = setup();
    trip(breaker, 2);
    breaker.onNeutral(breaker.acquire()!);
    expect(breaker.snapshot().consecutiveFailures).toBe(2);
    expect(breaker.state).toBe('closed');
    trip(breaker, 1);
    expect(breaker.state).toBe('open');
  });

  it('names the trip cause by the majority of the run: timeouts', () => {
    const { breaker } = setup({ failure_threshold: 3 });
    breaker.onFailure(breaker.acquire()!, 'timeout');
    breaker.onFailure(breaker.acquire()!, 'error');
    breaker.onFailure(breaker.acquire()!, 'timeout');
    expect(breaker.snapshot().tripCause).toBe('timeouts');
  });

  it('names the trip cause by the majority of the run: errors, and errors win ties', () => {
    const { breaker } = setup({ failure_threshold: 2 });
    breaker.onFailure(breaker.acquire()!, 'timeout');
    breaker.onFailure(breaker.acquire()!, 'error');
    expect(breaker.snapshot().tripCause).toBe('errors');
  });

  it('the run restarts after a success, so old timeouts do not decide the cause', () => {
    const { breaker } = setup({ failure_threshold: 2 });
    breaker.onFailure(breaker.acquire()!, 'timeout');
    breaker.onSuccess(breaker.acquire()!);
    breaker.onFailure(breaker.acquire()!, 'error');
    breaker.onFailure(breaker.acquire()!, 'error');
    expect(breaker.snapshot().tripCause).toBe('errors');
  });

  it('429s without Retry-After are ordinary failures, named rate_limit when they are the majority', () => {
    const { breaker, transitions } = setup();
    breaker.onRateLimit(breaker.acquire()!, undefined);
    breaker.onRateLimit(breaker.acquire()!, undefined);
    expect(breaker.state).toBe('closed');
    breaker.onFailure(breaker.acquire()!, 'error');
    expect(breaker.state).toBe('open');
    expect(transitions).toEqual([{ from: 'closed', to: 'open', cause: 'rate_limit', openMs: 1_000 }]);
  });

  it('a Retry-After of 0 (e.g. a past date) is an ordinary failure, not a 0 ms open', () => {
    const { breaker } = setup();
    breaker.onRateLimit(breaker.acquire()!, 0);
    expect(breaker.state).toBe('closed');
    expect(breaker.snapshot().consecutiveFailures).toBe(1);
  });
});

describe('CircuitBreaker: open → half_open', () => {
  it('reports half_open lazily once open_ms has elapsed, without any timer', () => {
    const { breaker, clock, transitions } = setup();
    trip(breaker);
    clock.t += 999;
    expect(breaker.state).toBe('open');
    expect(breaker.msUntilHalfOpen()).toBe(1);
    expect(breaker.canAttempt()).toBe(false);
    clock.t += 1;
    expect(breaker.state).toBe('half_open');
    expect(breaker.msUntilHalfOpen()).toBe(0);
    expect(breaker.snapshot()).toMatchObject({ state: 'half_open', openUntil: null, msUntilHalfOpen: 0 });
    expect(breaker.canAttempt()).toBe(true);
    // Readers did not materialise the transition.
    expect(transitions).toHaveLength(1);
  });

  it('canAttempt has no side effects', () => {
    const { breaker, clock, transitions } = setup();
    trip(breaker);
    clock.t += 1_000;
    const before = breaker.snapshot();
    for (let i = 0; i < 10; i++) expect(breaker.canAttempt()).toBe(true);
    expect(breaker.snapshot()).toEqual(before);
    expect(transitions).toHaveLength(1);
    expect(kind(breaker.acquire())).toBe('probe');
    expect(breaker.canAttempt()).toBe(false);
  });

  it('acquire after expiry transitions to half_open and hands out a probe', () => {
    const { breaker, clock, transitions } = setup();
    trip(breaker);
    clock.t += 1_000;
    expect(kind(breaker.acquire())).toBe('probe');
    expect(transitions[1]).toEqual({ from: 'open', to: 'half_open', cause: 'errors', openMs: 1_000 });
    expect(breaker.snapshot()).toMatchObject({ state: 'half_open', probesInFlight: 1, tripCause: 'errors' });
  });

  it('limits concurrent probes to half_open_probes (1)', () => {
    const { breaker, clock } = setup();
    trip(breaker);
    clock.t += 1_000;
    expect(kind(breaker.acquire())).toBe('probe');
    expect(breaker.acquire()).toBeUndefined();
    expect(breaker.canAttempt()).toBe(false);
  });

  it('limits concurrent probes to half_open_probes (3)', () => {
    const { breaker, clock } = setup({ half_open_probes: 3 });
    trip(breaker);
    clock.t += 1_000;
    expect([breaker.acquire(), breaker.acquire(), breaker.acquire(), breaker.acquire()].map(kind)).toEqual([
      'probe',
      'probe',
      'probe',
      undefined,
    ]);
    expect(breaker.snapshot().probesInFlight).toBe(3);
  });
});

describe('CircuitBreaker: wake (a timer, not a request, makes the open half-open)', () => {
  it('says how long is left while open, then transitions once its time is up, once', () => {
    const { breaker, clock, transitions } = setup();
    expect(breaker.wake()).toBe(0); // closed: nothing to do
    trip(breaker);
    clock.t += 400;
    expect(breaker.wake()).toBe(600);
    expect(transitions.map((t) => t.to)).toEqual(['open']);
    clock.t += 600;
    expect(breaker.wake()).toBe(0);
    expect(transitions.map((t) => `${t.from}->${t.to}`)).toEqual(['closed->open', 'open->half_open']);
    expect(breaker.wake()).toBe(0);
    expect(transitions).toHaveLength(2);
    expect(kind(breaker.acquire())).toBe('probe');
  });
});

describe('CircuitBreaker: half_open', () => {
  function halfOpen(overrides: Partial<BreakerConfig> = {}) {
    const s = setup(overrides);
    trip(s.breaker);
    s.clock.t += s.breaker.msUntilHalfOpen();
    return s;
  }

  it('closes after success_threshold consecutive probe successes', () => {
    const { breaker, transitions } = halfOpen();
    breaker.onSuccess(breaker.acquire()!);
    expect(breaker.state).toBe('half_open');
    expect(breaker.snapshot()).toMatchObject({ consecutiveSuccesses: 1, probesInFlight: 0 });
    breaker.onSuccess(breaker.acquire()!);
    expect(breaker.state).toBe('closed');
    expect(breaker.snapshot()).toMatchObject({
      consecutiveFailures: 0,
      consecutiveSuccesses: 0,
      tripCause: null,
      openMs: 1_000,
      probesInFlight: 0,
    });
    expect(transitions.map((t) => t.to)).toEqual(['open', 'half_open', 'closed']);
    expect(transitions[2]).toEqual({ from: 'half_open', to: 'closed', cause: undefined, openMs: 1_000 });
    expect(kind(breaker.acquire())).toBe('normal');
  });

  it('a neutral probe frees its slot and counts nothing', () => {
    const { breaker } = halfOpen();
    breaker.onNeutral(breaker.acquire()!);
    expect(breaker.snapshot()).toMatchObject({
      state: 'half_open',
      probesInFlight: 0,
      consecutiveSuccesses: 0,
    });
    expect(kind(breaker.acquire())).toBe('probe');
  });

  it('a probe failure re-opens with the open duration doubled', () => {
    const { breaker, clock, transitions } = halfOpen();
    breaker.onFailure(breaker.acquire()!, 'timeout');
    expect(breaker.state).toBe('open');
    expect(breaker.msUntilHalfOpen()).toBe(2_000);
    expect(breaker.snapshot()).toMatchObject({
      tripCause: 'timeouts',
      openMs: 2_000,
      opens: 2,
      probesInFlight: 0,
    });
    expect(transitions[2]).toEqual({ from: 'half_open', to: 'open', cause: 'timeouts', openMs: 2_000 });
    clock.t += 1_999;
    expect(breaker.state).toBe('open');
    clock.t += 1;
    expect(breaker.state).toBe('half_open');
  });

  it('doubling is capped at max_open_ms', () => {
    const { breaker, clock } = halfOpen();
    const opens: number[] = [];
    for (let i = 0; i < 5; i++) {
      breaker.onFailure(breaker.acquire()!, 'error');
      opens.push(breaker.msUntilHalfOpen());
      clock.t += breaker.msUntilHalfOpen();
    }
    expect(opens).toEqual([2_000, 4_000, 5_000, 5_000, 5_000]);
  });

  it('a successful close resets the doubling to open_ms', () => {
    const { breaker, clock } = halfOpen();
    breaker.onFailure(breaker.acquire()!, 'error'); // 2 s
    clock.t += 2_000;
    breaker.onSuccess(breaker.acquire()!);
    breaker.onSuccess(breaker.acquire()!);
    expect(breaker.state).toBe('closed');
    trip(breaker);
    expect(breaker.msUntilHalfOpen()).toBe(1_000);
  });

  it('a probe failure after some probe successes re-opens and restarts the success count', () => {
    const { breaker, clock } = halfOpen({ success_threshold: 3 });
    breaker.onSuccess(breaker.acquire()!);
    breaker.onSuccess(breaker.acquire()!);
    breaker.onFailure(breaker.acquire()!, 'error');
    expect(breaker.state).toBe('open');
    clock.t += breaker.msUntilHalfOpen();
    breaker.onSuccess(breaker.acquire()!);
    expect(breaker.snapshot()).toMatchObject({ state: 'half_open', consecutiveSuccesses: 1 });
  });

  it('a probe 429 without Retry-After re-opens like any failure (doubled)', () => {
    const { breaker } = halfOpen();
    breaker.onRateLimit(breaker.acquire()!, undefined);
    expect(breaker.snapshot()).toMatchObject({
      state: 'open',
      tripCause: 'rate_limit',
      msUntilHalfOpen: 2_000,
    });
  });
});

describe('CircuitBreaker: Retry-After', () => {
  it('opens a closed breaker for exactly Retry-After, cause rate_limit, without touching openMs', () => {
    const { breaker, clock, transitions } = setup();
    breaker.onRateLimit(breaker.acquire()!, 7_500);
    expect(breaker.snapshot()).toMatchObject({
      state: 'open',
      tripCause: 'rate_limit',
      msUntilHalfOpen: 7_500,
      openUntil: clock.t + 7_500,
      openMs: 1_000,
      opens: 1,
    });
    expect(transitions).toEqual([{ from: 'closed', to: 'open', cause: 'rate_limit', openMs: 7_500 }]);
    clock.t += 7_499;
    expect(breaker.canAttempt()).toBe(false);
    clock.t += 1;
    expect(breaker.state).toBe('half_open');
    expect(kind(breaker.acquire())).toBe('probe');
  });

  it('a cooldown is not a fault: a later probe failure opens for open_ms, not doubled', () => {
    const { breaker, clock } = setup();
    breaker.onRateLimit(breaker.acquire()!, 500);
    clock.t += 500;
    breaker.onFailure(breaker.acquire()!, 'error');
    expect(breaker.msUntilHalfOpen()).toBe(1_000);
  });

  it('a probe rate-limited with Retry-After re-opens for exactly that long and keeps the backoff', () => {
    const { breaker, clock } = setup();
    trip(breaker);
    clock.t += 1_000;
    breaker.onFailure(breaker.acquire()!, 'error'); // backoff 2 s
    clock.t += 2_000;
    breaker.onRateLimit(breaker.acquire()!, 300);
    expect(breaker.snapshot()).toMatchObject({
      state: 'open',
      msUntilHalfOpen: 300,
      openMs: 2_000,
      tripCause: 'rate_limit',
      probesInFlight: 0,
    });
    clock.t += 300;
    breaker.onFailure(breaker.acquire()!, 'error');
    expect(breaker.msUntilHalfOpen()).toBe(4_000);
  });

  it('while open, a later Retry-After extends the cooldown but never shortens it', () => {
    const { breaker, clock, transitions } = setup({ failure_threshold: 1 });
    const a = breaker.acquire()!;
    const b = breaker.acquire()!;
    const c = breaker.acquire()!;
    breaker.onFailure(a, 'error'); // open 1 s
    breaker.onRateLimit(b, 200);
    expect(breaker.snapshot()).toMatchObject({ msUntilHalfOpen: 1_000, tripCause: 'errors' });
    breaker.onRateLimit(c, 5_000);
    expect(breaker.snapshot()).toMatchObject({ msUntilHalfOpen: 5_000, tripCause: 'rate_limit', opens: 1 });
    // One transition, then the extension told as open -> open (shared state republishes it; metrics skip it).
    expect(transitions).toEqual([
      { from: 'closed', to: 'open', cause: 'errors', openMs: 1_000 },
      { from: 'open', to: 'open', cause: 'rate_limit', openMs: 5_000 },
    ]);
    clock.t += 5_000;
    expect(breaker.state).toBe('half_open');
  });
});

describe('CircuitBreaker: stale permits', () => {
  it('a late success of a normal permit while open does nothing', () => {
    const { breaker } = setup();
    const late = breaker.acquire()!;
    trip(breaker);
    const before = breaker.snapshot();
    breaker.onSuccess(late);
    expect(breaker.snapshot()).toEqual(before);
  });

  it('a late failure of a normal permit while open does nothing (no extension, no doubling)', () => {
    const { breaker, transitions } = setup();
    const late = breaker.acquire()!;
    trip(breaker);
    const before = breaker.snapshot();
    breaker.onFailure(late, 'timeout');
    breaker.onRateLimit(late, undefined);
    breaker.onNeutral(late);
    expect(breaker.snapshot()).toEqual(before);
    expect(transitions).toHaveLength(1);
  });

  it('a late normal permit in half_open neither closes the breaker nor takes a probe slot', () => {
    const { breaker, clock } = setup({ success_threshold: 1 });
    const late = [breaker.acquire()!, breaker.acquire()!];
    trip(breaker);
    clock.t += 1_000;
    const probe = breaker.acquire()!;
    breaker.onSuccess(late[0]!);
    expect(breaker.snapshot()).toMatchObject({
      state: 'half_open',
      probesInFlight: 1,
      consecutiveSuccesses: 0,
    });
    breaker.onFailure(late[1]!, 'error');
    expect(breaker.snapshot()).toMatchObject({ state: 'half_open', probesInFlight: 1 });
    expect(breaker.acquire()).toBeUndefined();
    breaker.onSuccess(probe);
    expect(breaker.state).toBe('closed');
  });

  it('a late normal result after expiry materialises half_open but is otherwise ignored', () => {
    const { breaker, clock, transitions } = setup();
    const late = breaker.acquire()!;
    trip(breaker);
    clock.t += 1_000;
    breaker.onFailure(late, 'error');
    expect(transitions.map((t) => t.to)).toEqual(['open', 'half_open']);
    expect(breaker.snapshot()).toMatchObject({ state: 'half_open', openMs: 1_000, opens: 1 });
    expect(kind(breaker.acquire())).toBe('probe');
  });

  it('a probe that outlives its episode holds no slot and counts for nothing after it', () => {
    const { breaker, clock } = setup({ half_open_probes: 2, success_threshold: 5 });
    trip(breaker);
    clock.t += 1_000;
    const p1 = breaker.acquire()!;
    const p2 = breaker.acquire()!;
    breaker.onFailure(p1, 'error'); // re-open; p2 still out, of the episode before
    expect(breaker.snapshot()).toMatchObject({ state: 'open', probesInFlight: 0 });
    const before = breaker.snapshot();
    breaker.onSuccess(p2); // late, while open: ignored
    breaker.onNeutral(p2); // a (buggy) double settle changes nothing either
    expect(breaker.snapshot()).toEqual(before);
    clock.t += 2_000;
    expect([breaker.acquire(), breaker.acquire(), breaker.acquire()].map(kind)).toEqual([
      'probe',
      'probe',
      undefined,
    ]);
  });

  it("a stale probe still in flight when the next half-open starts neither holds a slot nor feeds that episode's count", () => {
    const { breaker, clock } = setup({ half_open_probes: 2, success_threshold: 2 });
    trip(breaker);
    clock.t += 1_000;
    const p1 = breaker.acquire()!;
    const p2 = breaker.acquire()!;
    breaker.onFailure(p1, 'error'); // re-open for 2 s
    clock.t += 2_000;
    const p3 = breaker.acquire()!;
    expect(kind(p3)).toBe('probe');
    expect(kind(breaker.acquire())).toBe('probe');
    breaker.onSuccess(p3);
    breaker.onSuccess(p2); // the earlier episode's: not this one's second success
    expect(breaker.snapshot()).toMatchObject({
      state: 'half_open',
      consecutiveSuccesses: 1,
      opens: 2,
      probesInFlight: 1, // this episode's second trial, still out
    });
  });

  it('a request begun before an open that fails after the breaker healed does not re-open it', () => {
    const { breaker, clock } = setup({ success_threshold: 1 });
    const late = [breaker.acquire()!, breaker.acquire()!, breaker.acquire()!];
    trip(breaker);
    clock.t += 1_000;
    breaker.onSuccess(breaker.acquire()!); // closed again
    for (const p of late) breaker.onFailure(p, 'timeout');
    expect(breaker.snapshot()).toMatchObject({ state: 'closed', consecutiveFailures: 0, opens: 1 });
  });

  it("a 429's Retry-After applies whenever it comes: the upstream named its cooldown", () => {
    const { breaker } = setup();
    const late = breaker.acquire()!;
    trip(breaker);
    breaker.onRateLimit(late, 60_000);
    expect(breaker.snapshot()).toMatchObject({
      state: 'open',
      tripCause: 'rate_limit',
      msUntilHalfOpen: 60_000,
    });
  });
});

describe('CircuitBreaker: config and callbacks', () => {
  it('setConfig applies new thresholds and keeps the state', () => {
    const { breaker } = setup();
    trip(breaker, 2);
    breaker.setConfig({ ...CFG, failure_threshold: 10 });
    trip(breaker, 7);
    expect(breaker.state).toBe('closed');
    trip(breaker, 1);
    expect(breaker.state).toBe('open');
  });

  it('setConfig moves an unearned backoff to the new open_ms and clamps an earned one to the new max', () => {
    const { breaker, clock } = setup();
    breaker.setConfig({ ...CFG, open_ms: 3_000 });
    expect(breaker.snapshot().openMs).toBe(3_000);
    trip(breaker);
    clock.t += 3_000;
    breaker.onFailure(breaker.acquire()!, 'error');
    expect(breaker.snapshot().openMs).toBe(5_000);
    breaker.setConfig({ ...CFG, open_ms: 3_000, max_open_ms: 4_000 });
    expect(breaker.snapshot().openMs).toBe(4_000);
    expect(breaker.msUntilHalfOpen()).toBe(5_000); // the current open keeps its deadline
  });

  it('open_ms above max_open_ms never shrinks on re-open', () => {
    const { breaker, clock } = setup({ open_ms: 10_000, max_open_ms: 5_000 });
    trip(breaker);
    clock.t += 10_000;
    breaker.onFailure(breaker.acquire()!, 'error');
    expect(breaker.msUntilHalfOpen()).toBe(10_000);
  });

  it('reports every transition in order and works without a callback', () => {
    const { breaker, clock, transitions } = setup({ success_threshold: 1 });
    trip(breaker);
    clock.t += 1_000;
    breaker.onFailure(breaker.acquire()!, 'error');
    clock.t += 2_000;
    breaker.onSuccess(breaker.acquire()!);
    expect(transitions).toEqual([
      { from: 'closed', to: 'open', cause: 'errors', openMs: 1_000 },
      { from: 'open', to: 'half_open', cause: 'errors', openMs: 1_000 },
      { from: 'half_open', to: 'open', cause: 'errors', openMs: 2_000 },
      { from: 'open', to: 'half_open', cause: 'errors', openMs: 2_000 },
      { from: 'half_open', to: 'closed', cause: undefined, openMs: 1_000 },
    ]);
    const silent = new CircuitBreaker(CFG, () => clock.t);
    trip(silent);
    expect(silent.state).toBe('open');
  });

  it('the callback sees the state already updated', () => {
    const clock = { t: 0 };
    const seen: string[] = [];
    const breaker: CircuitBreaker = new CircuitBreaker(
      { ...CFG, failure_threshold: 1 },
      () => clock.t,
      () => {
        seen.push(breaker.state);
      },
    );
    breaker.onFailure(breaker.acquire()!, 'error');
    expect(seen).toEqual(['open']);
  });
});

describe('CircuitBreaker: an open adopted from another replica (state.backend redis)', () => {
  it("opens until the same moment at the fleet's backoff, goes half-open after, and a failed probe here doubles it", () => {
    // Regression: an adopted open set no backoff, so a failed probe on another replica than the opener
    // re-opened for plain open_ms: the fleet's backoff never grew while probes landed on different replicas.
    const { clock, transitions, breaker } = setup();
    expect(breaker.adoptOpen(2_000, 'errors')).toBe(true);
    expect(breaker.state).toBe('open');
    expect(breaker.canAttempt()).toBe(false);
    expect(breaker.snapshot()).toMatchObject({ tripCause: 'errors', msUntilHalfOpen: 2_000, openMs: 2_000 });
    expect(transitions).toEqual([{ from: 'closed', to: 'open', cause: 'errors', openMs: 2_000 }]);
    clock.t += 2_000;
    expect(breaker.state).toBe('half_open');
    breaker.onFailure(breaker.acquire()!, 'error');
    expect(breaker.msUntilHalfOpen()).toBe(4_000);
    // A rate limit's cooldown is no backoff: after it, a fault opens for open_ms.
    const limited = setup();
    limited.breaker.adoptOpen(3_000, 'rate_limit');
    limited.clock.t += 3_000;
    limited.breaker.onFailure(limited.breaker.acquire()!, 'error');
    expect(limited.breaker.msUntilHalfOpen()).toBe(CFG.open_ms);
  });

  it('never longer than this replica would open for itself: max_open_ms for a fault, 24 h for a rate limit', () => {
    const fault = setup();
    expect(fault.breaker.adoptOpen(1e12, 'errors')).toBe(true);
    expect(fault.breaker.msUntilHalfOpen()).toBe(CFG.max_open_ms);
    expect(fault.transitions.at(-1)?.openMs).toBe(CFG.max_open_ms);
    const limited = setup();
    limited.breaker.adoptOpen(1e12, 'rate_limit');
    expect(limited.breaker.msUntilHalfOpen()).toBe(86_400_000);
  });

  it('keeps a longer open, extends a shorter one, and ignores nonsense', () => {
    const { clock, transitions, breaker } = setup();
    trip(breaker); // open for 1 s
    expect(breaker.adoptOpen(500, 'timeouts')).toBe(false);
    expect(breaker.msUntilHalfOpen()).toBe(1_000);
    expect(breaker.adoptOpen(4_000, 'rate_limit')).toBe(true);
    expect(breaker.msUntilHalfOpen()).toBe(4_000);
    expect(breaker.snapshot().tripCause).toBe('rate_limit');
    expect(transitions).toHaveLength(1); // already open: no new transition
    for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY])
      expect(breaker.adoptOpen(bad, 'errors')).toBe(false);
    clock.t += 4_000;
    expect(breaker.state).toBe('half_open');
  });
});

describe('CircuitBreaker: held for the fleet (scale-out probe lease)', () => {
  it('an ended open that is held stays open (no probe, no lazy lapse) until released', () => {
    const { breaker, clock, transitions } = setup();
    trip(breaker);
    breaker.hold(2_000);
    clock.t += 1_500; // the open (1 s) has ended; the hold runs 2 s past it
    expect(breaker.held).toBe(true);
    expect(breaker.state).toBe('open');
    expect(breaker.snapshot().state).toBe('open');
    expect(breaker.canAttempt()).toBe(false);
    expect(breaker.acquire()).toBeUndefined();
    expect(breaker.wake()).toBe(0);
    expect(transitions.map((t) => t.to)).toEqual(['open']);
    breaker.release();
    expect(breaker.held).toBe(false);
    expect(kind(breaker.acquire())).toBe('probe');
    expect(transitions.map((t) => t.to)).toEqual(['open', 'half_open']);
  });

  it('a hold lapses on its own: a replica never stays open because Redis went quiet', () => {
    const { breaker, clock } = setup();
    trip(breaker);
    breaker.hold(2_000);
    clock.t += 3_001;
    expect(breaker.held).toBe(false);
    expect(kind(breaker.acquire())).toBe('probe');
  });

  it('an open extended while held keeps its hold past the new end', () => {
    const { breaker, clock } = setup();
    trip(breaker);
    breaker.hold(500);
    breaker.adoptOpen(5_000, 'errors'); // running: extended to now + 5 s
    clock.t += 5_200;
    expect(breaker.held).toBe(true);
    expect(breaker.canAttempt()).toBe(false);
  });

  it('an open adopted while held (the prober re-opened) is a new open: held anew by the caller, not half-open', () => {
    const { breaker, clock, transitions } = setup();
    trip(breaker);
    breaker.hold(2_000);
    clock.t += 1_500;
    expect(breaker.adoptOpen(2_000, 'errors')).toBe(true);
    expect(transitions.at(-1)).toMatchObject({ from: 'open', to: 'open' });
    expect(breaker.held).toBe(false);
    expect(breaker.msUntilHalfOpen()).toBe(2_000);
  });

  it('adoptClose closes an ended (held) open or a half-open one, never an open still running', () => {
    const running = setup();
    trip(running.breaker);
    expect(running.breaker.adoptClose()).toBe(false);
    expect(running.breaker.state).toBe('open');

    const held = setup();
    trip(held.breaker);
    held.breaker.hold(2_000);
    held.clock.t += 1_500;
    expect(held.breaker.adoptClose()).toBe(true);
    expect(held.breaker.state).toBe('closed');
    expect(held.transitions.at(-1)).toMatchObject({ from: 'open', to: 'closed' });
    expect(held.breaker.held).toBe(false);

    const half = setup();
    trip(half.breaker);
    half.clock.t += 1_000;
    expect(kind(half.breaker.acquire())).toBe('probe');
    expect(half.breaker.adoptClose()).toBe(true);
    expect(half.transitions.at(-1)).toMatchObject({ from: 'half_open', to: 'closed' });
    expect(setup().breaker.adoptClose()).toBe(false); // closed already
  });
});

describe('CircuitBreaker: onProbe', () => {
  it('is told of each half-open trial admitted, never of a normal permit or a refused one', () => {
    const { clock, breaker } = setup({ half_open_probes: 1 });
    let told = 0;
    breaker.onProbe = () => told++;
    breaker.onSuccess(breaker.acquire()!); // closed: normal
    trip(breaker);
    expect(breaker.acquire()).toBeUndefined(); // open
    clock.t += CFG.open_ms;
    const probe = breaker.acquire();
    expect(kind(probe)).toBe('probe');
    expect(breaker.acquire()).toBeUndefined(); // the one probe slot is taken
    expect(told).toBe(1);
    breaker.onSuccess(probe!);
    expect(kind(breaker.acquire())).toBe('probe');
    expect(told).toBe(2);
  });
});

describe('CircuitBreaker: probeGate', () => {
  it('a closed gate refuses half-open trials (canAttempt agrees) and is never asked while closed', () => {
    const { clock, breaker } = setup({ half_open_probes: 1 });
    let open = false;
    let asked = 0;
    breaker.probeGate = () => {
      asked++;
      return open;
    };
    breaker.onSuccess(breaker.acquire()!);
    expect(asked).toBe(0);
    trip(breaker);
    clock.t += CFG.open_ms;
    expect(breaker.canAttempt()).toBe(false);
    expect(breaker.acquire()).toBeUndefined();
    expect(breaker.state).toBe('half_open');
    open = true;
    expect(breaker.canAttempt()).toBe(true);
    expect(kind(breaker.acquire())).toBe('probe');
  });
});
