import { describe, expect, it } from 'vitest';
import type { BreakerConfig } from '../../../src/config/schema.js';
import type { BreakerTransition } from '../../../src/resilience/breaker.js';
import { MemoryBreakerStore } from '../../../src/resilience/store.js';

const CFG: BreakerConfig = {
  failure_threshold: 2,
  open_ms: 1_000,
  max_open_ms: 8_000,
  half_open_probes: 1,
  success_threshold: 1,
};

describe('MemoryBreakerStore', () => {
  it('creates one closed breaker per upstream on first use and returns the same one after', () => {
    const store = new MemoryBreakerStore(CFG, () => 0);
    const a = store.get('openai/gpt-4o-mini');
    expect(a.state).toBe('closed');
    expect(store.get('openai/gpt-4o-mini')).toBe(a);
    expect(store.get('anthropic/claude-haiku-4-5')).not.toBe(a);
    expect([...store.entries()].map(([id]) => id)).toEqual([
      'openai/gpt-4o-mini',
      'anthropic/claude-haiku-4-5',
    ]);
  });

  it('treats prototype-like ids as plain keys', () => {
    const store = new MemoryBreakerStore(CFG, () => 0);
    const proto = store.get('__proto__');
    expect(store.get('__proto__')).toBe(proto);
    expect(store.get('constructor')).not.toBe(proto);
    expect([...store.entries()]).toHaveLength(2);
  });

  it('tags transitions with the upstream id', () => {
    const seen: Array<[string, BreakerTransition]> = [];
    const store = new MemoryBreakerStore(
      CFG,
      () => 0,
      (id, t) => seen.push([id, t]),
    );
    const b = store.get('p/m');
    b.onFailure(b.acquire()!, 'error');
    b.onFailure(b.acquire()!, 'timeout');
    expect(seen).toEqual([['p/m', { from: 'closed', to: 'open', cause: 'errors', openMs: 1_000 }]]);
  });

  it('retain drops breakers of upstreams no longer configured and keeps the state of the rest', () => {
    const store = new MemoryBreakerStore(CFG, () => 0);
    const kept = store.get('a/x');
    kept.onRateLimit(kept.acquire()!, 5_000);
    const dropped = store.get('b/y');
    dropped.onRateLimit(dropped.acquire()!, 5_000);
    store.get('c/z');
    store.retain(['a/x', 'c/z', 'd/new']);
    expect([...store.entries()].map(([id]) => id)).toEqual(['a/x', 'c/z']);
    expect(store.get('a/x')).toBe(kept);
    expect(kept.state).toBe('open');
    // b/y was open when it left the config: coming back, it starts afresh.
    expect(store.get('b/y')).not.toBe(dropped);
    expect(store.get('b/y').state).toBe('closed');
  });

  it('setConfig applies new thresholds to existing and future breakers without resetting them', () => {
    const clock = { t: 0 };
    const store = new MemoryBreakerStore(CFG, () => clock.t);
    const old = store.get('a/x');
    old.onFailure(old.acquire()!, 'error');
    store.setConfig({ ...CFG, failure_threshold: 3, open_ms: 2_000 });
    old.onFailure(old.acquire()!, 'error');
    expect(old.state).toBe('closed');
    old.onFailure(old.acquire()!, 'error');
    expect(old.snapshot()).toMatchObject({ state: 'open', msUntilHalfOpen: 2_000 });
    const fresh = store.get('b/y');
    for (let i = 0; i < 3; i++) fresh.onFailure(fresh.acquire()!, 'error');
    expect(fresh.snapshot()).toMatchObject({ state: 'open', msUntilHalfOpen: 2_000 });
  });

  it('shares the injected clock with its breakers', () => {
    const clock = { t: 0 };
    const store = new MemoryBreakerStore(CFG, () => clock.t);
    const b = store.get('a/x');
    b.onFailure(b.acquire()!, 'error');
    b.onFailure(b.acquire()!, 'error');
    clock.t = 1_000;
    expect(b.state).toBe('half_open');
  });
});
