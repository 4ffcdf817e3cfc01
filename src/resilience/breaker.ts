import type { BreakerConfig } from '../config/schema.js';

export type BreakerState = 'closed' | 'open' | 'half_open';
export type TripCause = 'errors' | 'timeouts' | 'rate_limit';
export type FailureKind = 'error' | 'timeout';
/**
 * What `acquire()` admitted a request as — a trial (probe) or not, and in which episode of the breaker —
 * to hand back when it settles: `episode * 2 + (probe ? 1 : 0)`, a number (no allocation per request).
 */
export type Permit = number;

/** Whether `permit` was a half-open trial. */
export function isProbe(permit: Permit): boolean {
  return permit % 2 === 1;
}

export interface BreakerTransition {
  from: BreakerState;
  to: BreakerState;
  cause: TripCause | undefined;
  /**
   * `to: 'open'`: how long this open lasts. Otherwise: the open duration the next fault would get.
   * `from` and `to` both 'open': not a transition, a running open extended (a later Retry-After).
   */
  openMs: number;
}

export interface BreakerSnapshot {
  state: BreakerState;
  consecutiveFailures: number;
  consecutiveSuccesses: number;
  /** The open duration the next fault-open would use (doubles on re-open, resets on close). */
  openMs: number;
  openUntil: number | null;
  msUntilHalfOpen: number;
  tripCause: TripCause | null;
  probesInFlight: number;
  /** How many times the breaker has opened since it was created. */
  opens: number;
}

/**
 * One upstream's circuit breaker (SPEC §2): a pure state machine with an injected clock and no timers.
 *
 * `open` turns into `half_open` lazily: readers (`state`, `canAttempt`, `snapshot`) report it as soon as
 * the cooldown has passed, and the first mutating call materialises it (firing `onTransition`).
 *
 * Contract with the caller: every permit `acquire()` returns is settled exactly once, by `onSuccess`,
 * `onFailure`, `onRateLimit` or `onNeutral` (a client abort is `onNeutral`).
 *
 * A result counts only in the episode its request began in (each state change starts one): a request begun
 * before an open that fails after the breaker healed must not re-open it, and a probe of an earlier
 * half-open must neither close nor re-open (and double) a later one. Only a 429's Retry-After applies
 * whenever it comes: the upstream named its cooldown. `probesInFlight` counts this episode's trials (an
 * earlier episode's still out hold no slot: the upstream may see one more trial, never a stuck half-open).
 */
/** The longest rate-limit cooldown adopted from another replica (parseRetryAfter's cap). */
const ADOPTED_RATE_LIMIT_CAP_MS = 86_400_000;

export class CircuitBreaker {
  #cfg: BreakerConfig;
  readonly #now: () => number;
  readonly #onTransition: ((t: BreakerTransition) => void) | undefined;

  // Stored state; an 'open' whose #openUntil has passed is reported as half_open (see #isOpen).
  #state: BreakerState = 'closed';
  #openUntil = 0;
  #openMs: number;
  // True once a fault opened the breaker since it last closed: only then does a re-open double #openMs.
  #backoffArmed = false;
  #cause: TripCause | undefined;
  #failures = 0;
  #successes = 0;
  // Kinds within the current run of consecutive failures, to name the trip cause by majority.
  #runErrors = 0;
  #runTimeouts = 0;
  #runRateLimits = 0;
  #probes = 0;
  #opens = 0;
  /** The episode: bumped at each state change; a permit carries the one it was given in. */
  #episode = 0;
  // Scale-out: an open lasts this much past #openUntil while the fleet decides which replica probes.
  #holdMs = 0;
  /**
   * Called when a half-open trial is admitted (scale-out: the replica holding the fleet's probe lease renews
   * it then, so a trial that begins late in the lease does not outlive it). Never called while closed.
   */
  onProbe: (() => void) | undefined;
  /**
   * Scale-out: whether this replica may begin a half-open trial now (it holds the fleet's probe lease). Unset:
   * it may. Asked only while half-open.
   */
  probeGate: (() => boolean) | undefined;

  constructor(cfg: BreakerConfig, now: () => number, onTransition?: (t: BreakerTransition) => void) {
    this.#cfg = cfg;
    this.#now = now;
    this.#onTransition = onTransition;
    this.#openMs = cfg.open_ms;
  }

  get state(): BreakerState {
    return this.#state === 'open' && !this.#isOpen() ? 'half_open' : this.#state;
  }

  /** Would `acquire()` succeed now? O(1), no allocation, no side effects: safe in candidate filters. */
  canAttempt(): boolean {
    if (this.#state === 'closed') return true;
    if (this.#state === 'open' && this.#isOpen()) return false;
    return this.#probes < this.#cfg.half_open_probes && (this.probeGate === undefined || this.probeGate());
  }

  /**
   * Makes a lapsed open half-open now, as the next request would (firing `onTransition`), so an operator sees
   * the transition when it happens, not at the next request. Returns the ms left while still open, else 0
   * (a held open stays open: see `hold`).
   */
  wake(): number {
    if (this.#state !== 'open') return 0;
    const now = this.#now();
    const left = this.#openUntil - now;
    if (left > 0) return left;
    if (now < this.#openUntil + this.#holdMs) return 0;
    this.#toHalfOpen();
    return 0;
  }

  /**
   * Scale-out: keeps the current open from lapsing into half-open for `ms` past its end (or past now, when
   * it has ended), so that one replica of the fleet probes, not each. `release()` lets it lapse; a close or
   * an open adopted meanwhile replaces it. No effect unless open.
   */
  hold(ms: number): void {
    if (this.#state === 'open') this.#holdMs = Math.max(this.#openUntil, this.#now()) + ms - this.#openUntil;
  }

  release(): void {
    this.#holdMs = 0;
  }

  /** Open past its end, held (see `hold`). */
  get held(): boolean {
    const now = this.#now();
    return this.#state === 'open' && now >= this.#openUntil && now < this.#openUntil + this.#holdMs;
  }

  /** `open_ms` as configured: how long one replica's probing may hold the fleet's lease. */
  get baseOpenMs(): number {
    return this.#cfg.open_ms;
  }

  /**
   * Another replica's probe closed this upstream's breaker (scale-out): closes it here too, if its open has
   * ended (held, or lapsing) or it is half-open. An open still running is newer news: kept. False when
   * nothing changed.
   */
  adoptClose(): boolean {
    if (this.#state === 'closed' || (this.#state === 'open' && this.#now() < this.#openUntil)) return false;
    this.#close();
    return true;
  }

  acquire(): Permit | undefined {
    if (this.#state === 'closed') return this.#episode * 2;
    if (this.#state === 'open') {
      if (this.#isOpen()) return undefined;
      this.#toHalfOpen();
    }
    if (this.#probes >= this.#cfg.half_open_probes) return undefined;
    if (this.probeGate !== undefined && !this.probeGate()) return undefined;
    this.#probes++;
    this.onProbe?.();
    return this.#episode * 2 + 1;
  }

  onSuccess(permit: Permit): void {
    if (!this.#settle(permit)) return; // an earlier episode's: says nothing about this one
    if (this.#state === 'closed') {
      this.#resetRun();
    } else if (this.#state === 'half_open' && isProbe(permit)) {
      this.#failures = 0; // a success ends the run of failures that opened it: one run at a time
      this.#successes++;
      if (this.#successes >= this.#cfg.success_threshold) this.#close();
    }
  }

  onFailure(permit: Permit, kind: FailureKind): void {
    if (this.#settle(permit)) this.#fail(permit, kind === 'timeout' ? 'timeouts' : 'errors');
  }

  /** A 429. With a Retry-After the upstream named its cooldown, so that wins over any stale-permit rule. */
  onRateLimit(permit: Permit, retryAfterMs: number | undefined): void {
    const current = this.#settle(permit);
    // Retry-After: 0 (or a past date) means "retry now": opening for 0 ms would only force probing.
    if (retryAfterMs === undefined || !(retryAfterMs > 0) || !Number.isFinite(retryAfterMs)) {
      if (current) this.#fail(permit, 'rate_limit');
      return;
    }
    if (this.#state === 'open') {
      // Already cooling down: extend to the upstream's deadline, never shorten, no new transition.
      const until = this.#now() + retryAfterMs;
      if (until > this.#openUntil) {
        this.#openUntil = until;
        this.#cause = 'rate_limit';
        // Not a transition (metrics and log skip open -> open), but other replicas must hear of it.
        this.#emit('open', 'open', 'rate_limit', retryAfterMs);
      }
      return;
    }
    this.#open('rate_limit', retryAfterMs);
  }

  /**
   * Another replica opened this upstream's breaker (state shared through Redis, SPEC §7): open here too,
   * until the same moment. A fault's open also sets the backoff it reached there (the fleet's backoff: the
   * next re-open doubles it, whichever replica's probe fails); a rate limit's sets none. An open that
   * already lasts longer is kept. Never longer than this replica would open for itself: `max_open_ms` for a
   * fault, 24 h for a rate limit (Retry-After's own cap). False when nothing changed.
   */
  adoptOpen(remainingMs: number, cause: TripCause, levelMs = remainingMs): boolean {
    if (!(remainingMs > 0) || !Number.isFinite(remainingMs)) return false;
    if (cause !== 'rate_limit') {
      const level = Math.min(
        Number.isFinite(levelMs) && levelMs >= remainingMs ? levelMs : remainingMs,
        this.#maxOpenMs(),
      );
      this.#openMs = Math.max(this.#backoffArmed ? this.#openMs : this.#cfg.open_ms, level);
      this.#backoffArmed = true;
    }
    const cap = cause === 'rate_limit' ? ADOPTED_RATE_LIMIT_CAP_MS : this.#maxOpenMs();
    const now = this.#now();
    const until = now + Math.min(remainingMs, cap);
    if (this.#state === 'open' && now < this.#openUntil) {
      if (until <= this.#openUntil) return false;
      this.#openUntil = until;
      this.#cause = cause;
      return true;
    }
    // A held open that ended is open still (a new one now, to be held anew); an unheld one is half-open.
    const from = this.#state === 'open' && !this.#isOpen() ? 'half_open' : this.#state;
    this.#holdMs = 0;
    this.#state = 'open';
    this.#newEpisode();
    this.#openUntil = until;
    this.#cause = cause;
    this.#successes = 0;
    this.#runErrors = this.#runTimeouts = this.#runRateLimits = 0;
    this.#opens++;
    this.#emit(from, 'open', cause, until - this.#now());
    return true;
  }

  /** A client error (400/404/413/422): says nothing about the upstream's health; frees a probe slot. */
  onNeutral(permit: Permit): void {
    this.#settle(permit);
  }

  msUntilHalfOpen(): number {
    return this.#state === 'open' ? Math.max(0, this.#openUntil - this.#now()) : 0;
  }

  /** Applies reloaded thresholds, keeping the current state and any backoff already earned. */
  setConfig(cfg: BreakerConfig): void {
    this.#cfg = cfg;
    // Backoff earned is kept, never below the new open_ms (a raised open_ms holds at the next re-open too).
    this.#openMs = this.#backoffArmed
      ? Math.min(Math.max(this.#openMs, cfg.open_ms), this.#maxOpenMs())
      : cfg.open_ms;
  }

  snapshot(): BreakerSnapshot {
    // One clock read, so the fields cannot contradict each other.
    const now = this.#now();
    const msLeft = this.#state === 'open' ? Math.max(0, this.#openUntil - now) : 0;
    const open = msLeft > 0;
    return {
      state:
        this.#state === 'open' && !open && now >= this.#openUntil + this.#holdMs ? 'half_open' : this.#state,
      consecutiveFailures: this.#failures,
      consecutiveSuccesses: this.#successes,
      openMs: this.#openMs,
      openUntil: open ? this.#openUntil : null,
      msUntilHalfOpen: msLeft,
      tripCause: this.#state === 'closed' ? null : (this.#cause ?? null),
      probesInFlight: this.#probes,
      opens: this.#opens,
    };
  }

  #isOpen(): boolean {
    const now = this.#now();
    return now < this.#openUntil + this.#holdMs;
  }

  /**
   * Materialises a lapsed open before a result is applied, and frees the permit's probe slot. True when the
   * permit is of the current episode (its result counts).
   */
  #settle(permit: Permit): boolean {
    if (this.#state === 'open' && !this.#isOpen()) this.#toHalfOpen();
    if (Math.floor(permit / 2) !== this.#episode) return false;
    if (isProbe(permit) && this.#probes > 0) this.#probes--;
    return true;
  }

  #fail(permit: Permit, cause: TripCause): void {
    if (this.#state === 'closed') {
      this.#failures++;
      if (cause === 'errors') this.#runErrors++;
      else if (cause === 'timeouts') this.#runTimeouts++;
      else this.#runRateLimits++;
      if (this.#failures >= this.#cfg.failure_threshold) this.#open(this.#runMajority(), undefined);
    } else if (this.#state === 'half_open' && isProbe(permit)) {
      this.#failures++;
      this.#open(cause, undefined);
    }
  }

  // Ties go to the more generic cause: errors, then timeouts.
  #runMajority(): TripCause {
    const e = this.#runErrors;
    const t = this.#runTimeouts;
    const r = this.#runRateLimits;
    if (e >= t && e >= r) return 'errors';
    return t >= r ? 'timeouts' : 'rate_limit';
  }

  /** `cooldownMs` undefined = a fault: use (and on a re-open, first double) the backoff. */
  #open(cause: TripCause, cooldownMs: number | undefined): void {
    let durationMs: number;
    if (cooldownMs === undefined) {
      if (this.#backoffArmed) this.#openMs = Math.min(this.#openMs * 2, this.#maxOpenMs());
      this.#backoffArmed = true;
      durationMs = this.#openMs;
    } else {
      durationMs = cooldownMs;
    }
    const from = this.#state;
    this.#state = 'open';
    this.#newEpisode();
    this.#holdMs = 0;
    this.#openUntil = this.#now() + durationMs;
    this.#cause = cause;
    this.#successes = 0;
    this.#runErrors = this.#runTimeouts = this.#runRateLimits = 0;
    this.#opens++;
    this.#emit(from, 'open', cause, durationMs);
  }

  #toHalfOpen(): void {
    this.#state = 'half_open';
    this.#newEpisode();
    this.#successes = 0;
    this.#emit('open', 'half_open', this.#cause, this.#openMs);
  }

  #close(): void {
    const from = this.#state;
    this.#state = 'closed';
    this.#newEpisode();
    this.#resetRun();
    this.#successes = 0;
    this.#cause = undefined;
    this.#openUntil = 0;
    this.#openMs = this.#cfg.open_ms;
    this.#backoffArmed = false;
    this.#holdMs = 0;
    this.#emit(from, 'closed', undefined, this.#openMs);
  }

  /** A state change: results of requests begun before it no longer count, nor do their probe slots. */
  #newEpisode(): void {
    this.#episode++;
    this.#probes = 0;
  }

  #resetRun(): void {
    this.#failures = 0;
    this.#runErrors = this.#runTimeouts = this.#runRateLimits = 0;
  }

  // A config with open_ms above max_open_ms must not make doubling shrink the open time.
  #maxOpenMs(): number {
    return Math.max(this.#cfg.max_open_ms, this.#cfg.open_ms);
  }

  #emit(from: BreakerState, to: BreakerState, cause: TripCause | undefined, openMs: number): void {
    this.#onTransition?.({ from, to, cause, openMs });
  }
}
