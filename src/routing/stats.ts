/**
 * Live statistics of one upstream, fed by the attempt loop and read by the strategies on every request.
 * Getters are O(1) and allocate nothing; time comes from an injected clock so tests are exact.
 */
import type { UpstreamStatsView } from './types.js';

export type FailureKind = 'error' | 'timeout' | 'rate_limit' | 'client_error';

export interface SuccessSample {
  /** Time to first token (streamed) or to the full response (non-streamed), ms. */
  readonly ttftMs: number;
  readonly totalMs: number;
  readonly outputTokens: number | undefined;
  readonly streamed: boolean;
}

export interface UpstreamStatsOptions {
  /** Half-life of the success/failure counts behind `successRate`, ms. */
  readonly halfLifeMs?: number;
  /** Time constant with which a lower TTFT sample pulls the peak-EWMA down, ms (Finagle's default 10 s). */
  readonly peakDecayMs?: number;
  /** Per-sample weight of the plain EWMAs (latency, tokens/s, output tokens). */
  readonly alpha?: number;
}

/** What /router/status shows for one upstream; `null` = not measured yet. */
export interface UpstreamStatsSnapshot {
  readonly samples: number;
  readonly ttftMs: number | null;
  readonly latencyMs: number | null;
  readonly tokensPerSec: number | null;
  readonly meanOutputTokens: number | null;
  readonly successRate: number;
  readonly inFlight: number;
  readonly requests: number;
  readonly successes: number;
  /** Upstream failures (error, timeout, rate limit); client errors are counted apart. */
  readonly failures: number;
  readonly failuresByKind: { readonly error: number; readonly timeout: number; readonly rate_limit: number };
  readonly clientErrors: number;
  readonly outputTokens: number;
}

const DEFAULT_HALF_LIFE_MS = 60_000;
const DEFAULT_PEAK_DECAY_MS = 10_000;
const DEFAULT_ALPHA = 0.1;
/** Pseudo-successes added to the decayed counts: one failure reads 0.5, not 0, and long silence reads 1. */
const SUCCESS_PRIOR = 1;

function positive(x: number | undefined, fallback: number): number {
  return x !== undefined && x > 0 && Number.isFinite(x) ? x : fallback;
}

function isMs(x: unknown): x is number {
  return typeof x === 'number' && x >= 0 && Number.isFinite(x);
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export class UpstreamStats implements UpstreamStatsView {
  readonly #now: () => number;
  readonly #decayPerMs: number;
  readonly #peakDecayMs: number;
  readonly #alpha: number;

  #samples = 0;
  #ttft = 0;
  /** A plain EWMA of the same samples: where the peak relaxes to while no sample comes. */
  #ttftBase = 0;
  #ttftAt = 0;
  #latency = 0;
  #tps = 0;
  #tpsSamples = 0;
  #meanOut = 0;
  #outSamples = 0;

  /** Exponentially decayed counts, both as of #countsAt. */
  #okWeight = 0;
  #failWeight = 0;
  #countsAt = 0;

  #inFlight = 0;
  #successes = 0;
  #errors = 0;
  #timeouts = 0;
  #rateLimits = 0;
  #clientErrors = 0;
  #outputTokens = 0;

  constructor(now: () => number, opts: UpstreamStatsOptions = {}) {
    this.#now = now;
    this.#decayPerMs = Math.LN2 / positive(opts.halfLifeMs, DEFAULT_HALF_LIFE_MS);
    this.#peakDecayMs = positive(opts.peakDecayMs, DEFAULT_PEAK_DECAY_MS);
    const a = opts.alpha;
    this.#alpha = a !== undefined && a > 0 && a <= 1 ? a : DEFAULT_ALPHA;
    this.#countsAt = now();
  }

  get samples(): number {
    return this.#samples;
  }

  get lastSampleAt(): number | undefined {
    return this.#samples > 0 ? this.#ttftAt : undefined;
  }

  /**
   * The peak-EWMA as of now. Between samples the peak relaxes towards the plain average with the peak's
   * time constant: an upstream that looked slow once gets no traffic under `latency`, so no new sample
   * would ever bring its estimate down (it was held off for the 60 s staleness limit).
   */
  get ttftMs(): number | undefined {
    if (this.#samples === 0) return undefined;
    const excess = this.#ttft - this.#ttftBase;
    if (excess <= 0) return this.#ttft;
    const dt = this.#now() - this.#ttftAt;
    return dt > 0 ? this.#ttftBase + excess * Math.exp(-dt / this.#peakDecayMs) : this.#ttft;
  }

  get latencyMs(): number | undefined {
    return this.#samples > 0 ? this.#latency : undefined;
  }

  get tokensPerSec(): number | undefined {
    return this.#tpsSamples > 0 ? this.#tps : undefined;
  }

  get meanOutputTokens(): number | undefined {
    return this.#outSamples > 0 ? this.#meanOut : undefined;
  }

  get successRate(): number {
    const f = this.#decayFactor(this.#now());
    const ok = this.#okWeight * f;
    return (ok + SUCCESS_PRIOR) / (ok + this.#failWeight * f + SUCCESS_PRIOR);
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  begin(): void {
    this.#inFlight++;
  }

  end(): void {
    if (this.#inFlight > 0) this.#inFlight--;
  }

  recordSuccess(s: SuccessSample): void {
    const now = this.#now();
    this.#successes++;
    this.#decayCounts(now);
    this.#okWeight += 1;

    const out = s.outputTokens;
    const hasOut = isMs(out);
    if (hasOut) {
      this.#outputTokens += out;
      this.#meanOut = this.#outSamples === 0 ? out : this.#ewma(this.#meanOut, out);
      this.#outSamples++;
    }

    const ttft = s.ttftMs;
    const total = s.totalMs;
    if (!isMs(ttft) || !isMs(total)) return;
    const first = this.#samples === 0;
    this.#samples++;
    this.#latency = first ? total : this.#ewma(this.#latency, total);
    this.#observeTtft(ttft, now, first);

    // Throughput needs a stream, at least 2 tokens and a positive generation time to mean anything.
    const genMs = total - ttft;
    if (s.streamed && hasOut && out >= 2 && genMs > 0) {
      const tps = out / (genMs / 1000);
      this.#tps = this.#tpsSamples === 0 ? tps : this.#ewma(this.#tps, tps);
      this.#tpsSamples++;
    }
  }

  recordFailure(kind: FailureKind): void {
    switch (kind) {
      case 'client_error':
        // The upstream answered correctly to a bad request: not its fault.
        this.#clientErrors++;
        return;
      case 'timeout':
        this.#timeouts++;
        break;
      case 'rate_limit':
        this.#rateLimits++;
        break;
      default:
        this.#errors++;
    }
    this.#decayCounts(this.#now());
    this.#failWeight += 1;
  }

  snapshot(): UpstreamStatsSnapshot {
    const failures = this.#errors + this.#timeouts + this.#rateLimits;
    const measured = this.#samples > 0;
    return {
      samples: this.#samples,
      ttftMs: measured ? round(this.ttftMs ?? 0, 1) : null,
      latencyMs: measured ? round(this.#latency, 1) : null,
      tokensPerSec: this.#tpsSamples > 0 ? round(this.#tps, 1) : null,
      meanOutputTokens: this.#outSamples > 0 ? round(this.#meanOut, 1) : null,
      successRate: round(this.successRate, 4),
      inFlight: this.#inFlight,
      requests: this.#successes + failures + this.#clientErrors,
      successes: this.#successes,
      failures,
      failuresByKind: { error: this.#errors, timeout: this.#timeouts, rate_limit: this.#rateLimits },
      clientErrors: this.#clientErrors,
      outputTokens: this.#outputTokens,
    };
  }

  #ewma(prev: number, x: number): number {
    return prev + this.#alpha * (x - prev);
  }

  /**
   * Peak-EWMA (Finagle): a sample above the estimate is taken at once, so one slow answer makes the
   * upstream look slow immediately; lower samples pull it down with a weight that grows with the time
   * since the previous sample, and by at least `alpha` per sample, so a single cold-start outlier on a
   * busy upstream is forgotten within tens of answers, not held for the whole decay time.
   */
  #observeTtft(x: number, now: number, first: boolean): void {
    this.#ttftBase = first ? x : this.#ewma(this.#ttftBase, x);
    if (first || x > this.#ttft) {
      this.#ttft = x;
    } else {
      const dt = now > this.#ttftAt ? now - this.#ttftAt : 0;
      const w = Math.min(Math.exp(-dt / this.#peakDecayMs), 1 - this.#alpha);
      this.#ttft = this.#ttft * w + x * (1 - w);
    }
    this.#ttftAt = now;
  }

  #decayFactor(now: number): number {
    const dt = now - this.#countsAt;
    return dt > 0 ? Math.exp(-dt * this.#decayPerMs) : 1;
  }

  #decayCounts(now: number): void {
    const f = this.#decayFactor(now);
    this.#okWeight *= f;
    this.#failWeight *= f;
    if (now > this.#countsAt) this.#countsAt = now;
  }
}
