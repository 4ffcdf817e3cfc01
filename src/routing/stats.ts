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
  /** The whole answer's completion tokens, all its choices'. */
  readonly outputTokens: number | undefined;
  readonly streamed: boolean;
  /**
   * Completions in the answer (`n`; 1 when absent), written side by side: the mean output and the pace are
   * per completion, as an `n: 1` answer teaches them (cost.ts multiplies the mean by the next request's `n`).
   */
  readonly choices?: number;
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

/**
 * One replica's measurements of an upstream, as it shares them (SPEC §7), or the other replicas' merged:
 * each average with the samples behind it, the decayed success and failure weights, and how long ago the
 * last sample came (clocks of different machines are not compared).
 */
export interface SharedStats {
  readonly samples: number;
  readonly ttftMs: number;
  readonly latencyMs: number;
  readonly tpsSamples: number;
  readonly tokensPerSec: number;
  readonly outSamples: number;
  readonly meanOutputTokens: number;
  readonly okWeight: number;
  readonly failWeight: number;
  readonly lastSampleAgeMs: number;
}

/** The samples a side of a blend counts for at most: past it, this replica's own view weighs as much. */
const BLEND_CAP = 10;

/** One figure from this replica's and the others' estimates, each weighed by its (capped) samples. */
function blend(local: number, localN: number, remote: number, remoteN: number): number | undefined {
  if (remoteN === 0) return localN > 0 ? local : undefined;
  if (localN === 0) return remote;
  const a = Math.min(localN, BLEND_CAP);
  const b = Math.min(remoteN, BLEND_CAP);
  return (local * a + remote * b) / (a + b);
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

/**
 * Peak-EWMA (Finagle): a sample above the estimate is taken at once, so one slow answer makes the
 * upstream look slow immediately; lower samples pull it down with a weight that grows with the time
 * since the previous sample, and by at least `alpha` per sample, so a single cold-start outlier on a
 * busy upstream is forgotten within tens of answers, not held for the whole decay time. Between samples
 * the peak relaxes towards the plain average of the same samples with the decay time constant: an
 * upstream that looked slow once gets no traffic under `latency`, so no new sample would bring it down.
 */
class PeakEwma {
  samples = 0;
  /** When the last sample came. */
  at = 0;
  #peak = 0;
  /** A plain EWMA of the same samples: where the peak relaxes to while no sample comes. */
  #base = 0;

  constructor(
    private readonly alpha: number,
    private readonly decayMs: number,
  ) {}

  observe(x: number, now: number): void {
    const first = this.samples === 0;
    // Compared with and blended from the estimate as it stands now, relaxed since the last sample: from the
    // stored peak, a 500 ms answer after a 2 s outlier had relaxed to 1.2 s raised the estimate to 1.4 s.
    const cur = first ? x : this.value(now);
    if (first) {
      this.#base = x;
      this.#peak = x;
    } else if (x > cur) {
      // Taken at once as the peak, but not into the average it relaxes to: one slow answer relaxes back to
      // where the upstream was, not to an average it raised (20 ms and one 400 ms relaxed to 58 ms, benching
      // a fast upstream until it went stale a minute later). A slowdown that lasts shows at its next sample.
      this.#peak = x;
    } else {
      this.#base += this.alpha * (x - this.#base);
      const dt = now > this.at ? now - this.at : 0;
      const w = Math.min(Math.exp(-dt / this.decayMs), 1 - this.alpha);
      this.#peak = cur * w + x * (1 - w);
    }
    this.at = now;
    this.samples++;
  }

  /** The estimate as of `now` (0 before any sample). */
  value(now: number): number {
    const excess = this.#peak - this.#base;
    if (excess <= 0) return this.#peak;
    const dt = now - this.at;
    return dt > 0 ? this.#base + excess * Math.exp(-dt / this.decayMs) : this.#peak;
  }
}

export class UpstreamStats implements UpstreamStatsView {
  readonly #now: () => number;
  readonly #decayPerMs: number;
  readonly #peakDecayMs: number;
  readonly #alpha: number;

  #samples = 0;
  /** Time to first token, ms: peak-EWMA. */
  readonly #ttft: PeakEwma;
  /** A whole attempt's time, ms: peak-EWMA too, or one slow answer held it up for minutes (alpha 0.1 a sample). */
  readonly #latency: PeakEwma;
  /**
   * Generation time per output token, ms (the reciprocal of tokens/s): peak-EWMA too, so an upstream whose
   * generation slows down looks slow at its next answer, not ten answers later.
   */
  readonly #msPerToken: PeakEwma;
  #meanOut = 0;
  #outSamples = 0;

  /** Exponentially decayed counts, both as of #countsAt. */
  #okWeight = 0;
  #failWeight = 0;
  #countsAt = 0;

  /** The other replicas' view (SPEC §7), with when it was taken on this clock; none without Redis. */
  #remote: SharedStats | undefined;
  #remoteAt = 0;

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
    this.#ttft = new PeakEwma(this.#alpha, this.#peakDecayMs);
    this.#latency = new PeakEwma(this.#alpha, this.#peakDecayMs);
    this.#msPerToken = new PeakEwma(this.#alpha, this.#peakDecayMs);
    this.#countsAt = now();
  }

  get samples(): number {
    return this.#remote === undefined ? this.#samples : this.#samples + this.#remote.samples;
  }

  get lastSampleAt(): number | undefined {
    const r = this.#remote;
    const remoteAt = r !== undefined && r.samples > 0 ? this.#remoteAt - r.lastSampleAgeMs : undefined;
    if (this.#samples === 0) return remoteAt;
    return remoteAt !== undefined && remoteAt > this.#ttft.at ? remoteAt : this.#ttft.at;
  }

  /** The peak-EWMA as of now (it relaxes between samples: see PeakEwma). */
  get ttftMs(): number | undefined {
    const r = this.#remote;
    const local = this.#samples > 0 ? this.#ttft.value(this.#now()) : 0;
    return blend(local, this.#samples, r?.ttftMs ?? 0, r?.samples ?? 0);
  }

  get latencyMs(): number | undefined {
    const r = this.#remote;
    const local = this.#samples > 0 ? this.#latency.value(this.#now()) : 0;
    return blend(local, this.#samples, r?.latencyMs ?? 0, r?.samples ?? 0);
  }

  get tokensPerSec(): number | undefined {
    const r = this.#remote;
    return blend(
      this.#localTps(this.#now()),
      this.#msPerToken.samples,
      r?.tokensPerSec ?? 0,
      r?.tpsSamples ?? 0,
    );
  }

  get meanOutputTokens(): number | undefined {
    const r = this.#remote;
    return blend(this.#meanOut, this.#outSamples, r?.meanOutputTokens ?? 0, r?.outSamples ?? 0);
  }

  get successRate(): number {
    const f = this.#decayFactor(this.#now());
    let ok = this.#okWeight * f;
    let fail = this.#failWeight * f;
    const r = this.#remote;
    if (r !== undefined) {
      // The others' counts weigh at most as much as this replica's own (and 10 when it has none).
      const remote = r.okWeight + r.failWeight;
      const k = remote > 0 ? Math.min(1, Math.max(BLEND_CAP, ok + fail) / remote) : 0;
      ok += r.okWeight * k;
      fail += r.failWeight * k;
    }
    return (ok + SUCCESS_PRIOR) / (ok + fail + SUCCESS_PRIOR);
  }

  /** This replica's own measurements, to share (SPEC §7); undefined when it has none. */
  local(): SharedStats | undefined {
    const now = this.#now();
    const f = this.#decayFactor(now);
    const okWeight = this.#okWeight * f;
    const failWeight = this.#failWeight * f;
    if (this.#samples === 0 && okWeight + failWeight < 0.01) return undefined;
    return {
      samples: this.#samples,
      ttftMs: this.#samples > 0 ? this.#ttft.value(now) : 0,
      latencyMs: this.#samples > 0 ? this.#latency.value(now) : 0,
      tpsSamples: this.#msPerToken.samples,
      tokensPerSec: this.#localTps(now),
      outSamples: this.#outSamples,
      meanOutputTokens: this.#meanOut,
      okWeight,
      failWeight,
      lastSampleAgeMs: this.#samples > 0 ? Math.max(0, now - this.#ttft.at) : 0,
    };
  }

  /** The other replicas' merged view, replacing the previous one (undefined: none, e.g. Redis is down). */
  setRemote(view: SharedStats | undefined): void {
    this.#remote = view;
    this.#remoteAt = this.#now();
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

    const whole = s.outputTokens;
    const hasOut = isMs(whole);
    const out = hasOut ? whole / Math.max(1, s.choices ?? 1) : 0;
    if (hasOut) {
      this.#outputTokens += whole;
      this.#meanOut = this.#outSamples === 0 ? out : this.#ewma(this.#meanOut, out);
      this.#outSamples++;
    }

    let ttft = s.ttftMs;
    const total = s.totalMs;
    if (!isMs(ttft) || !isMs(total)) return;
    this.#samples++;
    this.#latency.observe(total, now);

    if (s.streamed) {
      // Throughput needs at least 2 tokens and a positive generation time to mean anything.
      const genMs = total - ttft;
      if (hasOut && out >= 2 && genMs > 0) {
        // The first pace: the first-token figure held whole answers' times until now (with no pace to take
        // their generation out): it starts again from this, a real first token (else ~30 answers to forget).
        if (this.#msPerToken.samples === 0) this.#ttft.samples = 0;
        this.#msPerToken.observe(genMs / out, now);
      }
    } else if (hasOut && this.#msPerToken.samples > 0) {
      // A whole answer's time is its first token's plus its generation: the part the known pace does not
      // explain is the wait before the first token (the latency estimate adds the generation back).
      ttft = Math.max(0, total - out * this.#msPerToken.value(now));
    }
    this.#ttft.observe(ttft, now);
  }

  /**
   * A first byte that did not come within first_byte_ms: a timeout, and a first token at least that slow,
   * taken at once as the peak (SPEC §2: latency reacts at once to a slow outlier), so the next requests do
   * not each wait out the same timeout before failing over. Unmeasured, it stays unmeasured.
   */
  recordTimeout(waitedMs: number): void {
    this.recordFailure('timeout');
    if (this.#samples === 0 || !isMs(waitedMs)) return;
    const now = this.#now();
    this.#ttft.observe(waitedMs, now);
    this.#latency.observe(waitedMs, now);
  }

  /**
   * A wait for a first token that ended with none, cut by no bound of the upstream's own (the request's
   * deadline, its client leaving): no failure, but a first token at least that slow. Taken as a timeout's
   * wait is when it is slower than the estimate (below it, a lower bound says nothing), so the next requests
   * do not each go to the upstream that kept the last one waiting.
   */
  recordSlowWait(waitedMs: number, whole?: { readonly outputTokens: number | undefined }): void {
    if (this.#samples === 0 || !isMs(waitedMs)) return;
    const now = this.#now();
    let firstToken = waitedMs;
    // A JSON request's wait holds its answer's generation (a long answer given up on says nothing of the
    // first token): what the known pace explains of it, for the tokens asked for (else the mean), is not.
    if (whole !== undefined && this.#msPerToken.samples > 0)
      firstToken -= (whole.outputTokens ?? this.#meanOut) * this.#msPerToken.value(now);
    if (firstToken <= this.#ttft.value(now)) return;
    this.#ttft.observe(firstToken, now);
    this.#latency.observe(waitedMs, now);
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
    const orNull = (x: number | undefined): number | null => (x === undefined ? null : round(x, 1));
    return {
      samples: this.samples,
      ttftMs: orNull(this.ttftMs),
      latencyMs: orNull(this.latencyMs),
      tokensPerSec: orNull(this.tokensPerSec),
      meanOutputTokens: orNull(this.meanOutputTokens),
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

  /** This replica's tokens/s as of `now` (0 before any streamed sample). */
  #localTps(now: number): number {
    const ms = this.#msPerToken.value(now);
    return ms > 0 ? 1000 / ms : 0;
  }

  #ewma(prev: number, x: number): number {
    return prev + this.#alpha * (x - prev);
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
