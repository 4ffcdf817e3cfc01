import type { BreakerConfig } from '../config/schema.js';
import { CircuitBreaker, type BreakerTransition } from './breaker.js';

/**
 * Where the breakers of all upstreams live: in memory, per replica (with `state.backend: redis`, opens are
 * shared between replicas by src/state/redis.ts).
 */
export interface BreakerStore {
  /** The upstream's breaker, created closed on first use. */
  get(upstreamId: string): CircuitBreaker;
  entries(): Iterable<[string, CircuitBreaker]>;
  /** Drops the breakers of upstreams no longer configured (config reload); the rest keep their state. */
  retain(ids: Iterable<string>): void;
  /** Applies reloaded thresholds to existing and future breakers without resetting their state. */
  setConfig(cfg: BreakerConfig): void;
}

export class MemoryBreakerStore implements BreakerStore {
  #cfg: BreakerConfig;
  readonly #now: () => number;
  readonly #onTransition:
    ((upstreamId: string, t: BreakerTransition, breaker: CircuitBreaker) => void) | undefined;
  // A Map, not an object: upstream ids come from config and must never hit a prototype key.
  readonly #breakers = new Map<string, CircuitBreaker>();

  constructor(
    cfg: BreakerConfig,
    now: () => number,
    onTransition?: (upstreamId: string, t: BreakerTransition, breaker: CircuitBreaker) => void,
  ) {
    this.#cfg = cfg;
    this.#now = now;
    this.#onTransition = onTransition;
  }

  get(upstreamId: string): CircuitBreaker {
    let breaker = this.#breakers.get(upstreamId);
    if (breaker === undefined) {
      const notify = this.#onTransition;
      const created: CircuitBreaker = new CircuitBreaker(
        this.#cfg,
        this.#now,
        notify === undefined ? undefined : (t) => notify(upstreamId, t, created),
      );
      breaker = created;
      this.#breakers.set(upstreamId, breaker);
    }
    return breaker;
  }

  entries(): Iterable<[string, CircuitBreaker]> {
    return this.#breakers.entries();
  }

  /** The upstream's breaker if it has one (never creates it). */
  peek(upstreamId: string): CircuitBreaker | undefined {
    return this.#breakers.get(upstreamId);
  }

  retain(ids: Iterable<string>): void {
    const keep = new Set(ids);
    for (const id of this.#breakers.keys()) {
      if (!keep.has(id)) this.#breakers.delete(id);
    }
  }

  setConfig(cfg: BreakerConfig): void {
    this.#cfg = cfg;
    for (const breaker of this.#breakers.values()) breaker.setConfig(cfg);
  }
}
