/**
 * A deployment's per-minute budget (`rpm`, `tpm`), as Azure OpenAI and most providers state theirs: requests
 * and tokens sent in the last 60 seconds, kept in 60 one-second buckets. The plan leaves out an upstream with
 * no room for one more request or for this request's tokens, so traffic moves to the others before the
 * provider starts answering 429; when none has room the client gets a 429 and the time until one has.
 * With Redis, the other replicas' windows are added (QuotaUse, exchanged with the statistics: a second old),
 * bucket by bucket, so a wait for room counts their buckets' leaving too.
 */
export interface QuotaLimits {
  readonly rpm?: number | undefined;
  readonly tpm?: number | undefined;
}

/** A window's totals: requests and tokens of the last 60 s, and when each part leaves it. */
export interface QuotaUse {
  readonly requests: number;
  readonly tokens: number;
  /** `[ms from now until it leaves the window, requests, tokens]` per bucket, soonest first. */
  readonly leaving: readonly Leaving[];
}

export type Leaving = readonly [ms: number, requests: number, tokens: number];

/** What one attempt took from the window, to be put right when its real token count is known. */
export interface QuotaTake {
  readonly second: number;
  readonly tokens: number;
}

const WINDOW_S = 60;
/** How long a request counts against a per-minute budget (the provider's window). */
export const QUOTA_WINDOW_MS = WINDOW_S * 1000;

export class Quota {
  readonly #requests = new Float64Array(WINDOW_S);
  readonly #tokens = new Float64Array(WINDOW_S);
  /** The second each bucket counts; -1: empty. */
  readonly #seconds = new Float64Array(WINDOW_S).fill(-1);
  #usedRequests = 0;
  #usedTokens = 0;
  /** The latest second the window was moved to. */
  #at = Number.NEGATIVE_INFINITY;
  /** The other replicas' windows, as last exchanged (state.backend redis): totals, and buckets by leave time. */
  #remote = { requests: 0, tokens: 0 };
  /** `[now() when it leaves, requests, tokens]`, soonest first; the ones gone are dropped as time passes. */
  #remoteLeaving: [number, number, number][] = [];

  constructor(
    public limits: QuotaLimits,
    private readonly now: () => number,
  ) {}

  /** Whether a limit is set: a window without one only counts (for the replicas that have one). */
  get limited(): boolean {
    return this.limits.rpm !== undefined || this.limits.tpm !== undefined;
  }

  /** Whether one more request of `tokens` fits. One larger than the whole `tpm` fits an empty window. */
  room(tokens: number): boolean {
    this.#advance();
    this.#expireRemote(this.now());
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
    this.#expireRemote(nowMs);
    let requests = this.#usedRequests + this.#remote.requests;
    let used = this.#usedTokens + this.#remote.tokens;
    if (this.#fits(requests, used, tokens)) return 0;
    // Every bucket, ours and the other replicas', by when it leaves the window.
    const leaving = this.#ownLeaving(nowMs, sec);
    for (const [at, r, t] of this.#remoteLeaving) leaving.push([at - nowMs, r, t]);
    leaving.sort((a, b) => a[0] - b[0]);
    for (const [ms, r, t] of leaving) {
      requests -= r;
      used -= t;
      if (this.#fits(requests, used, tokens)) return Math.max(1, Math.ceil(ms));
    }
    return WINDOW_S * 1000;
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
    const nowMs = this.now();
    const leaving = this.#ownLeaving(nowMs, this.#advance());
    return { requests: this.#usedRequests, tokens: Math.round(this.#usedTokens), leaving };
  }

  /** The other replicas' windows, summed (undefined: none, or Redis is down); the totals are their buckets'. */
  setRemote(use: QuotaUse | undefined): void {
    const nowMs = this.now();
    let requests = 0;
    let tokens = 0;
    this.#remoteLeaving = (use?.leaving ?? []).map(([ms, r, t]) => {
      requests += r;
      tokens += t;
      return [nowMs + ms, r, t];
    });
    this.#remoteLeaving.sort((a, b) => a[0] - b[0]);
    this.#remote = { requests, tokens };
  }

  /** For /router/status and /metrics: the limits and what the last minute used of them, fleet-wide. */
  snapshot(): {
    rpm: number | null;
    tpm: number | null;
    requests_last_minute: number;
    tokens_last_minute: number;
  } {
    this.#advance();
    this.#expireRemote(this.now());
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

  /** This replica's buckets still in the window: `[ms from now until it leaves, requests, tokens]`. */
  #ownLeaving(nowMs: number, sec: number): [number, number, number][] {
    const out: [number, number, number][] = [];
    for (let s = sec - WINDOW_S + 1; s <= sec; s++) {
      const slot = slotOf(s);
      const r = this.#requests[slot]!;
      const t = this.#tokens[slot]!;
      // The bucket of second `s` leaves when second s + 60 begins.
      if (this.#seconds[slot] === s && (r > 0 || t > 0))
        out.push([Math.max(0, (s + WINDOW_S) * 1000 - nowMs), r, Math.round(t)]);
    }
    return out;
  }

  /** Drops the other replicas' buckets that have left the window since they were exchanged. */
  #expireRemote(nowMs: number): void {
    const list = this.#remoteLeaving;
    let i = 0;
    let { requests, tokens } = this.#remote;
    for (; i < list.length && list[i]![0] <= nowMs; i++) {
      requests -= list[i]![1];
      tokens -= list[i]![2];
    }
    if (i === 0) return;
    list.splice(0, i);
    this.#remote = { requests: Math.max(0, requests), tokens: Math.max(0, tokens) };
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
