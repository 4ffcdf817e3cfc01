/**
 * A deployment's per-minute budget (`rpm`, `tpm`), as Azure OpenAI and most providers state theirs: requests
 * and tokens sent in the last 60 seconds, kept in 60 one-second buckets. The plan leaves out an upstream with
 * no room for one more request or for this request's tokens, so traffic moves to the others before the
 * provider starts answering 429; when none has room the client gets a 429 and the time until one has.
 * With Redis, the other replicas' windows are added (QuotaUse, exchanged with the statistics: a second old).
 */
export interface QuotaLimits {
  readonly rpm?: number | undefined;
  readonly tpm?: number | undefined;
}

/** A window's totals: requests and tokens of the last 60 s. */
export interface QuotaUse {
  readonly requests: number;
  readonly tokens: number;
}

/** What one attempt took from the window, to be put right when its real token count is known. */
export interface QuotaTake {
  readonly second: number;
  readonly tokens: number;
}

const WINDOW_S = 60;
const NO_USE: QuotaUse = { requests: 0, tokens: 0 };

export class Quota {
  readonly #requests = new Float64Array(WINDOW_S);
  readonly #tokens = new Float64Array(WINDOW_S);
  /** The second each bucket counts; -1: empty. */
  readonly #seconds = new Float64Array(WINDOW_S).fill(-1);
  #usedRequests = 0;
  #usedTokens = 0;
  /** The latest second the window was moved to. */
  #at = Number.NEGATIVE_INFINITY;
  /** The other replicas' windows, as last exchanged (state.backend redis). */
  #remote: QuotaUse = NO_USE;

  constructor(
    public limits: QuotaLimits,
    private readonly now: () => number,
  ) {}

  /** Whether one more request of `tokens` fits. One larger than the whole `tpm` fits an empty window. */
  room(tokens: number): boolean {
    this.#advance();
    return this.#fits(
      this.#usedRequests + this.#remote.requests,
      this.#usedTokens + this.#remote.tokens,
      tokens,
    );
  }

  /** How long until one more request of `tokens` fits, ms: 0 when it does now. */
  msUntilRoom(tokens: number): number {
    const nowMs = this.now();
    const sec = this.#advance();
    const remote = this.#remote;
    let requests = this.#usedRequests + remote.requests;
    let used = this.#usedTokens + remote.tokens;
    if (this.#fits(requests, used, tokens)) return 0;
    // Oldest first: the bucket of second `s` leaves the window when second s + 60 begins.
    for (let s = sec - WINDOW_S + 1; s <= sec; s++) {
      const slot = slotOf(s);
      if (this.#seconds[slot] !== s) continue;
      requests -= this.#requests[slot]!;
      used -= this.#tokens[slot]!;
      if (this.#fits(requests, used, tokens)) return Math.max(1, (s + WINDOW_S) * 1000 - nowMs);
    }
    // The other replicas' use is what stands in the way, its buckets unknown here: taken as spread evenly
    // over the minute, the share of it that has to leave the window first.
    const { rpm, tpm } = this.limits;
    let share = 0;
    if (rpm !== undefined && remote.requests > 0)
      share = Math.max(share, (remote.requests + 1 - rpm) / remote.requests);
    if (tpm !== undefined && remote.tokens > 0)
      share = Math.max(share, (remote.tokens + Math.min(tokens, tpm) - tpm) / remote.tokens);
    return Math.min(WINDOW_S * 1000, Math.max(1000, Math.ceil(share * WINDOW_S * 1000)));
  }

  /** Counts a request sent with `tokens` (its estimate). */
  take(estimate: number): QuotaTake {
    const tokens = Math.max(0, Math.round(estimate));
    const sec = this.#advance();
    const slot = slotOf(sec);
    this.#requests[slot]! += 1;
    this.#tokens[slot]! += tokens;
    this.#usedRequests += 1;
    this.#usedTokens += tokens;
    return { second: sec, tokens };
  }

  /** Replaces a take's estimate with the tokens the attempt really used, while its bucket is in the window. */
  settle(take: QuotaTake, tokens: number): void {
    this.#advance();
    const slot = slotOf(take.second);
    if (this.#seconds[slot] !== take.second) return;
    const delta = Math.max(0, Math.round(tokens)) - take.tokens;
    const next = Math.max(0, this.#tokens[slot]! + delta);
    this.#usedTokens = Math.max(0, this.#usedTokens + next - this.#tokens[slot]!);
    this.#tokens[slot] = next;
  }

  /** This replica's window: what it sends the other replicas. */
  local(): QuotaUse {
    this.#advance();
    return { requests: this.#usedRequests, tokens: Math.round(this.#usedTokens) };
  }

  /** The other replicas' windows, summed (undefined: none, or Redis is down). */
  setRemote(use: QuotaUse | undefined): void {
    this.#remote = use ?? NO_USE;
  }

  /** For /router/status and /metrics: the limits and what the last minute used of them, fleet-wide. */
  snapshot(): {
    rpm: number | null;
    tpm: number | null;
    requests_last_minute: number;
    tokens_last_minute: number;
  } {
    this.#advance();
    return {
      rpm: this.limits.rpm ?? null,
      tpm: this.limits.tpm ?? null,
      requests_last_minute: this.#usedRequests + this.#remote.requests,
      tokens_last_minute: Math.round(this.#usedTokens + this.#remote.tokens),
    };
  }

  #fits(requests: number, used: number, tokens: number): boolean {
    const { rpm, tpm } = this.limits;
    if (rpm !== undefined && requests + 1 > rpm) return false;
    return tpm === undefined || used + Math.min(tokens, tpm) <= tpm;
  }

  /** Drops the buckets that left the window; returns the current second. */
  #advance(): number {
    const sec = Math.floor(this.now() / 1000);
    if (sec <= this.#at) return this.#at; // a clock that steps back keeps the window where it was
    const from = Math.max(this.#at + 1, sec - WINDOW_S + 1);
    for (let s = from; s <= sec; s++) {
      const slot = slotOf(s);
      if (this.#seconds[slot] === s) continue;
      this.#usedRequests -= this.#requests[slot]!;
      this.#usedTokens -= this.#tokens[slot]!;
      this.#requests[slot] = 0;
      this.#tokens[slot] = 0;
      this.#seconds[slot] = s;
    }
    this.#at = sec;
    return sec;
  }
}

function slotOf(second: number): number {
  return ((second % WINDOW_S) + WINDOW_S) % WINDOW_S;
}
