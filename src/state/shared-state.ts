import type { LoadedConfig } from '../config/load.js';
import { MAX_TIMER_MS } from '../config/schema.js';
import type { CircuitBreaker, TripCause } from '../resilience/breaker.js';
import { Quota, type QuotaLimits } from '../resilience/quota.js';
import { MemoryBreakerStore } from '../resilience/store.js';
import { UpstreamStats } from '../routing/stats.js';
import { ParamFit, type FieldFit } from '../upstream/param-fit.js';
import type { RedisState } from './redis.js';

/**
 * Scale-out: how long an ended open is held while this replica asks for the fleet's probe lease (a Redis
 * command's timeout, 1 s, and the wake-up's own lateness); past it, the open lapses here whatever Redis says.
 */
const PROBE_LEASE_WAIT_MS = 2_000;

/** What outlives a config reload: breakers and statistics of upstreams that remain, and the clock. */
export class SharedState {
  readonly stats = new Map<string, UpstreamStats>();
  /** Per-minute budgets (`rpm`, `tpm`) of the upstreams that have one: a reload keeps what was counted. */
  readonly quotas = new Map<string, Quota>();
  readonly breakers: MemoryBreakerStore;
  /** Learned request fits, by upstream, server and model name: a reload that moves an upstream starts anew. */
  readonly fits = new Map<string, ParamFit>();
  /** Set by the current Runtime so a learned fit reaches its log. */
  onFit: ((upstreamId: string, param: string, fit: FieldFit, value: string | undefined) => void) | undefined;
  /** Set by the current Runtime so breaker transitions reach its metrics and log. */
  onTransition: ((upstreamId: string, to: string, cause: string | undefined) => void) | undefined;
  /** The fleet's shared state (`state.backend: redis`), told of every breaker this replica opens. */
  redis: RedisState | undefined;
  /** An open adopted from another replica is not published back. */
  #adopting = false;
  /** Every upstream's traffic is counted in a per-minute window, limited or not (state.backend redis). */
  readonly #countAll: boolean;
  /** Pending wake-ups of open breakers, one each. */
  readonly #wakers = new Map<CircuitBreaker, NodeJS.Timeout>();
  /**
   * Breakers half-open here under the fleet's probe lease: their upstream's id (the lease given back when the
   * breaker is dropped or we close) and the tick that renews it while a probe is out.
   */
  readonly #leases = new Map<CircuitBreaker, { readonly id: string; readonly timer: NodeJS.Timeout }>();

  constructor(
    loaded: LoadedConfig,
    readonly now: () => number,
  ) {
    this.#countAll = loaded.config.state.backend === 'redis';
    this.breakers = new MemoryBreakerStore(loaded.config.circuit_breaker, now, (id, t, breaker) => {
      // A breaker a reload dropped (a request still in flight on its upstream settles on it) speaks for no
      // upstream now: the one of that name since re-added has its own.
      if (this.breakers.peek(id) !== breaker) return;
      if (t.from !== t.to) this.onTransition?.(id, t.to, t.cause);
      const redis = this.redis;
      // This replica's probe decided: its lease is given back, and a close is news for the fleet.
      if (redis && t.from === 'half_open' && t.to !== 'half_open') {
        this.#stopRenewing(breaker);
        redis.endProbeLease(id);
        if (t.to === 'closed' && !this.#adopting) redis.publishClosed(id);
      }
      if (t.to !== 'open') return;
      // One replica of the fleet probes when the open ends (it takes the lease), not each: held until then.
      if (redis) breaker.hold(PROBE_LEASE_WAIT_MS);
      this.#wakeAfter(id, breaker, t.openMs);
      if (!this.#adopting) redis?.publishOpen(id, t.openMs, t.cause ?? 'errors');
    });
  }

  /**
   * Turns an open breaker half-open when its time is up, not at the next request: with no traffic the
   * transition (its metric and log line) would wait for one while the gauge and /router/status showed it.
   */
  #wakeAfter(id: string, breaker: CircuitBreaker, ms: number): void {
    // One wake-up per breaker: each open or extension replaces the last (wake() re-arms for what is left).
    clearTimeout(this.#wakers.get(breaker));
    // At most Node's longest timer (past it one fires at once): wake() re-arms for the rest.
    const timer = setTimeout(
      () => {
        this.#wakers.delete(breaker);
        // A breaker a reload dropped (its upstream gone, maybe back since with a new one) says nothing.
        if (this.breakers.peek(id) !== breaker) return;
        const left = breaker.wake();
        if (left > 0) this.#wakeAfter(id, breaker, left);
        else if (breaker.held) this.#askProbeLease(id, breaker);
      },
      Math.min(ms + 1, MAX_TIMER_MS),
    );
    timer.unref();
    this.#wakers.set(breaker, timer);
  }

  /**
   * A held open has ended: the replica that takes the fleet's probe lease for this upstream goes half-open
   * and probes; the others stay open and ask again when the lease would lapse, unless its holder's close
   * (`adoptClose`) or re-open (an adopted open) reaches them first. Without Redis, this replica probes.
   */
  #askProbeLease(id: string, breaker: CircuitBreaker): void {
    const redis = this.redis;
    const episode = breaker.snapshot().opens;
    const probeHere = (): void => {
      breaker.release();
      breaker.wake();
    };
    const leaseMs = breaker.baseOpenMs;
    if (!redis) {
      probeHere();
      return;
    }
    // Redis away (or answering errors): this replica probes on its own meanwhile, and asks for the lease
    // once Redis is back.
    const probeUnleased = (erroring: boolean): void => {
      probeHere();
      this.#renewWhileProbing(id, breaker, leaseMs, Number.NEGATIVE_INFINITY, erroring);
    };
    if (!redis.connected) {
      probeUnleased(false);
      return;
    }
    const askedAt = this.now();
    redis.takeProbeLease(id, leaseMs).then(
      (won) => {
        // Still this open, still held (not closed, re-opened or dropped by a reload meanwhile)? If not, a
        // lease won is given back at once, not kept from the others for open_ms.
        if (this.breakers.peek(id) !== breaker || breaker.snapshot().opens !== episode || !breaker.held) {
          if (won) redis.endProbeLease(id);
          return;
        }
        if (won) {
          probeHere();
          this.#renewWhileProbing(id, breaker, leaseMs, askedAt);
          return;
        }
        breaker.hold(leaseMs + PROBE_LEASE_WAIT_MS);
        this.#wakeAfter(id, breaker, leaseMs);
      },
      () => {
        if (this.breakers.peek(id) === breaker && breaker.held) probeUnleased(true);
      },
    );
  }

  /**
   * The lease is this replica's for `leaseMs`; a trial may take longer (an LLM answer, success_threshold
   * trials in a row): renewed while a probe is out, so another replica does not probe alongside. A holder
   * with no probe out lets it lapse: one that gets no traffic for the upstream must not keep the fleet open;
   * it then begins no trial (the breaker's probeGate) until it holds the lease again. `askedAt` -Infinity:
   * half-open without the lease (Redis was away), asked for once Redis answers. `erroring`: Redis is there
   * but refuses the lease commands (out of memory, read-only, an ACL without scripting): with no lease to be
   * had, this replica probes as it would without Redis, until a lease command is answered.
   */
  #renewWhileProbing(
    id: string,
    breaker: CircuitBreaker,
    leaseMs: number,
    askedAt: number,
    erroring = false,
  ): void {
    this.#stopRenewing(breaker);
    // Until when the lease is ours, on our clock: counted from when we asked, so never past Redis's PX.
    let leaseUntil = askedAt + leaseMs;
    let refused = erroring;
    // A request wanted to probe here while the lease was not ours: ask for it again at the next tick.
    let wanted = false;
    let away = false;
    const renew = (): void => {
      const redis = this.redis;
      if (this.breakers.peek(id) !== breaker || !redis?.connected) return;
      const sent = this.now();
      redis.takeProbeLease(id, leaseMs).then(
        (ours) => {
          if (this.#leases.get(breaker)?.timer !== timer) return;
          leaseUntil = ours ? sent + leaseMs : 0;
          refused = false;
        },
        () => {
          if (this.#leases.get(breaker)?.timer === timer) refused = true;
        },
      );
    };
    // Trials begin only under the lease: one that lapsed while this replica was idle, and that another then
    // took, must not let a trial start here alongside its holder's.
    breaker.probeGate = () => {
      // No Redis, or one refusing the lease: each replica probes.
      if (refused || this.now() < leaseUntil || !this.redis?.connected) return true;
      wanted = true;
      return false;
    };
    // Renewed as each trial begins too: the ticks run from the win, so a trial begun after one was renewed
    // only at the next — the instant the lease lapsed and the other replicas asked again.
    breaker.onProbe = renew;
    const timer = setInterval(
      () => {
        const redis = this.redis;
        if (this.breakers.peek(id) !== breaker || breaker.state !== 'half_open' || redis === undefined) {
          this.#stopRenewing(breaker);
          return;
        }
        if (!redis.connected) {
          // A restarted Redis has lost the lease: ours no longer, whatever our clock says.
          leaseUntil = Number.NEGATIVE_INFINITY;
          away = true;
          return;
        }
        if (away) {
          // Back: ask for the lease again (ours, or the gate stays shut while another replica holds it).
          away = false;
          renew();
        } else if (breaker.snapshot().probesInFlight > 0 || refused) renew();
        else if (wanted && this.now() >= leaseUntil) {
          wanted = false;
          renew();
        }
      },
      Math.min(Math.max(100, Math.floor(leaseMs / 2)), MAX_TIMER_MS),
    );
    timer.unref();
    this.#leases.set(breaker, { id, timer });
  }

  #stopRenewing(breaker: CircuitBreaker): void {
    breaker.onProbe = undefined;
    breaker.probeGate = undefined;
    const lease = this.#leases.get(breaker);
    if (lease === undefined) return;
    clearInterval(lease.timer);
    this.#leases.delete(breaker);
  }

  /** Another replica's probe closed `upstreamId`'s breaker: closed here too if its open has ended. */
  adoptClose(upstreamId: string): void {
    this.#adopting = true;
    try {
      this.breakers.peek(upstreamId)?.adoptClose();
    } finally {
      this.#adopting = false;
    }
  }

  /**
   * Keeps the breakers of `ids` (a reload's upstreams): the others are dropped with their wake-ups, which
   * would hold them (and fire for nothing) until their open ended — up to 24 h for a Retry-After.
   */
  retainBreakers(ids: Iterable<string>): void {
    this.breakers.retain(ids);
    const kept = new Set<CircuitBreaker>();
    for (const [, breaker] of this.breakers.entries()) kept.add(breaker);
    for (const [breaker, timer] of this.#wakers) {
      if (kept.has(breaker)) continue;
      clearTimeout(timer);
      this.#wakers.delete(breaker);
    }
    for (const [breaker, { id }] of this.#leases) {
      if (kept.has(breaker)) continue;
      // Its upstream is gone here: the replicas that still have it need not wait out the lease.
      this.redis?.endProbeLease(id);
      this.#stopRenewing(breaker);
    }
  }

  /**
   * Drops what is known of `ids` (a reload moved them to another server or model, or gave them another key):
   * their breakers (with wake-ups and leases) and, with `stats`, their statistics; the next use starts fresh.
   */
  forget(ids: ReadonlySet<string>, stats: boolean): void {
    if (ids.size === 0) return;
    for (const id of ids) this.redis?.forgetOpen(id); // the fleet's open was the old server's too
    this.retainBreakers([...this.breakers.entries()].map(([id]) => id).filter((id) => !ids.has(id)));
    if (stats) for (const id of ids) this.stats.delete(id);
    for (const id of ids) this.quotas.delete(id); // another server or key: another budget
  }

  /** Stops the breakers' wake-ups (the gateway is closing). */
  close(): void {
    for (const timer of this.#wakers.values()) clearTimeout(timer);
    this.#wakers.clear();
    for (const { id, timer } of this.#leases.values()) {
      clearInterval(timer);
      // A replica going away gives its leases back: the fleet probes at once, not after open_ms.
      this.redis?.endProbeLease(id);
    }
    this.#leases.clear();
  }

  /** Opens `upstreamId`'s breaker as another replica did, without publishing it again. */
  adoptOpen(upstreamId: string, remainingMs: number, cause: TripCause, levelMs = remainingMs): void {
    this.#adopting = true;
    try {
      this.breakers.get(upstreamId).adoptOpen(remainingMs, cause, levelMs);
    } finally {
      this.#adopting = false;
    }
  }

  fitFor(id: string, baseUrl: string, model: string, limitsOnly: boolean): ParamFit {
    const key = `${id}\n${baseUrl}\n${model}\n${limitsOnly ? 'limits' : 'all'}`;
    let f = this.fits.get(key);
    if (!f) {
      f = new ParamFit((param, fit, value) => this.onFit?.(id, param, fit, value), limitsOnly);
      this.fits.set(key, f);
    }
    return f;
  }

  /**
   * The upstream's budget under these limits, its count kept across reloads; none without limits, except on
   * Redis: a replica whose config has no limit for it still counts what it sends, for the replicas that have one.
   */
  quotaFor(id: string, limits: QuotaLimits): Quota | undefined {
    if (limits.rpm === undefined && limits.tpm === undefined && !this.#countAll) {
      this.quotas.delete(id);
      return undefined;
    }
    let q = this.quotas.get(id);
    if (q === undefined) {
      q = new Quota(limits, this.now);
      this.quotas.set(id, q);
    } else q.limits = limits;
    return q;
  }

  statsFor(id: string): UpstreamStats {
    let s = this.stats.get(id);
    if (!s) {
      s = new UpstreamStats(this.now);
      this.stats.set(id, s);
    }
    return s;
  }
}
