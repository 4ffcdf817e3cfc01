import { afterEach, describe, expect, it, vi } from 'vitest';
import { parseConfigText } from '../../../src/config/load.js';
import { SharedState } from '../../../src/state/shared-state.js';

/** SharedState's breaker wake-ups (an open turns half-open on time, without a request), on fake timers. */
describe('breaker wake-ups', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  function setup() {
    vi.useFakeTimers();
    const clock = { t: 1_000_000 };
    const loaded = parseConfigText(
      JSON.stringify({
        providers: [{ name: 'p', base_url: 'http://127.0.0.1:9/v1', models: [{ name: 'm' }] }],
        routes: { r: { targets: ['p/m'] } },
        circuit_breaker: { failure_threshold: 1, open_ms: 1000 },
      }),
      {},
    );
    const shared = new SharedState(loaded, () => clock.t);
    const seen: string[] = [];
    shared.onTransition = (id, to) => seen.push(`${id} ${to}`);
    const advance = (ms: number): void => {
      clock.t += ms;
      vi.advanceTimersByTime(ms);
    };
    const trip = (): void => {
      const b = shared.breakers.get('p/m');
      b.onFailure(b.acquire()!, 'error');
    };
    return { shared, seen, advance, trip };
  }

  it('turns an open breaker half-open when its time is up, once', () => {
    const { seen, advance, trip } = setup();
    trip();
    advance(999);
    expect(seen).toEqual(['p/m open']);
    advance(10);
    expect(seen).toEqual(['p/m open', 'p/m half_open']);
    advance(10_000);
    expect(seen).toHaveLength(2);
  });

  it('says nothing for a breaker a reload dropped, even when its upstream is back with a new one', () => {
    const { shared, seen, advance, trip } = setup();
    trip();
    shared.breakers.retain([]); // the upstream left the config
    shared.breakers.get('p/m'); // and came back: a new, closed breaker
    advance(5_000);
    expect(seen).toEqual(['p/m open']);
    expect(shared.breakers.get('p/m').state).toBe('closed');
  });

  it('keeps one wake-up per breaker however often it is extended', () => {
    const { shared, advance, trip } = setup();
    trip();
    const b = shared.breakers.get('p/m');
    for (let i = 0; i < 50; i++) b.onRateLimit(b.acquire() ?? 0, 2_000 + i);
    expect(vi.getTimerCount()).toBe(1);
    advance(3_000);
    expect(b.state).toBe('half_open');
    shared.close();
    expect(vi.getTimerCount()).toBe(0);
  });
});
