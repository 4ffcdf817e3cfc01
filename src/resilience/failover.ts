import { afterThisTurn } from '../end-of-turn.js';
import { GatewayError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { RankedCandidate } from '../routing/types.js';
import type { RouteTarget, Upstream } from '../runtime.js';
import type { AttemptResult } from '../upstream/attempt.js';
import { reportedCompletion, reportedPrompt, type Usage } from '../upstream/adapter.js';
import type { Permit } from './breaker.js';
import { QUEUE_TIMEOUT } from './classify.js';
import { clip } from '../text.js';
import { CONTEXT_LENGTH_EXCEEDED, statedWindow } from '../upstream/context-overflow.js';

/** One attempt as the trail and the final error report it. */
export interface AttemptRecord {
  readonly upstream: string;
  readonly outcome: string;
  readonly reason: string;
  readonly status: number | undefined;
  readonly latencyMs: number;
}

export interface FailoverOptions {
  readonly routeName: string;
  readonly maxAttempts: number;
  /** Absolute deadline on `now()`'s clock. */
  readonly deadline: number;
  readonly now: () => number;
  readonly metrics: Metrics;
  readonly logger: Logger;
  /** Removes secrets from text an upstream wrote (the runtime's Scrubber). */
  readonly scrubber: { scrub(text: string): string };
  /** The client request's id, for the log line of each failed attempt (none for the LLM router's call). */
  readonly reqId?: string;
  /**
   * Completions in each answer (`n`; 1 when absent): statistics are per completion, so an answer of `n`
   * choices teaches its upstream's pace and mean output as one of them would.
   */
  readonly choices?: number;
  /** A candidate left out while it cools down from a 429 is back this soon, ms (Plan.coolingMs). */
  readonly coolingMs?: number;
  /**
   * The attempts are streams: an attempt cut with no content waited that long for a first token. A JSON
   * attempt's wait holds its generation too (a long answer abandoned says little of the first token).
   */
  readonly stream?: boolean;
  /** The request's max_tokens (or max_completion_tokens), when it gave one. */
  readonly requestedOutputTokens?: number | undefined;
  /** What an attempt takes of its upstream's `tpm` when sent (plan.ts quotaTokens); its prompt's part too. */
  readonly quotaTokens?: number;
  readonly promptTokens?: number;
  /** Candidates the plan left out at their rpm/tpm (Plan.atQuota). */
  readonly atQuota?: readonly RouteTarget[] | undefined;
  /**
   * Candidates outside the ranked list (a tiered route's other tiers) whose context window is above `window`,
   * ranked: asked once, when an upstream refuses the request as too long and the list has no larger window.
   */
  readonly widen?: (
    window: number,
    attempts: readonly AttemptRecord[],
  ) => {
    readonly ranked: readonly RankedCandidate<RouteTarget>[];
    /** Larger windows there left out at their rpm/tpm. */
    readonly atQuota: readonly RouteTarget[] | undefined;
  };
}

/** Failures before the request reached the upstream: no token of it was counted there. */
const NEVER_SENT: ReadonlySet<string> = new Set([
  QUEUE_TIMEOUT,
  'connect_timeout',
  'connect_refused',
  'dns_failure',
  'host_unreachable',
]);

/** How much of an upstream's error message a failed attempt's log line keeps. */
const MAX_LOGGED_MESSAGE = 300;

export interface FailoverSuccess {
  readonly target: RankedCandidate<RouteTarget>;
  readonly result: Extract<AttemptResult, { ok: true }>;
  readonly attempts: readonly AttemptRecord[];
  /** Time spent waiting on upstreams, for the overhead metric. */
  readonly upstreamMs: number;
}

/**
 * The response ended on a committed stream that then failed (the client was told in-stream), or the client
 * went away (before or after a commit).
 */
export interface FailoverCommittedFailure {
  readonly target: RankedCandidate<RouteTarget>;
  readonly committedFailure: true;
  /** The response had begun (a stream's status and first frames were sent). */
  readonly committed: boolean;
  readonly attempts: readonly AttemptRecord[];
  readonly upstreamMs: number;
  /** Completion tokens a committed stream sent before it failed. */
  readonly relayedTokens?: number | undefined;
  /** The usage that stream reported before it failed (its prompt, as the upstream counted it). */
  readonly usage?: Usage | undefined;
  /** When that stream's first content went out (its time to first token, observed like a finished one's). */
  readonly ttftMs?: number | undefined;
}

/**
 * `x-router-trail`: each failed attempt as `provider/model=reason`. For the header (`escaped`), a `%`, `,`
 * or `=` in a model's name is percent-encoded, so the list still splits into its attempts.
 */
export function trailOf(attempts: readonly AttemptRecord[], escaped = false): string {
  let out = '';
  for (const a of attempts) {
    if (a.outcome === 'success') continue;
    const upstream = escaped && TRAIL_SEPARATORS.test(a.upstream) ? escapeSeparators(a.upstream) : a.upstream;
    out += `${out === '' ? '' : ','}${upstream}=${a.reason}`;
  }
  return out;
}

const TRAIL_SEPARATORS = /[%,=]/;

function escapeSeparators(name: string): string {
  return name.replace(/[%,=]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** Each attempt's upstream, reason, status and time, for an error message (never a key). */
export function describeAttempts(attempts: readonly AttemptRecord[]): string {
  return attempts
    .map((a) => `${a.upstream}: ${a.reason}${a.status ? ` (HTTP ${a.status})` : ''} after ${a.latencyMs} ms`)
    .join('; ');
}

/** Whether `id` was already attempted: a linear scan, the list holds at most `maxAttempts` records. */
export function attempted(attempts: readonly AttemptRecord[], id: string): boolean {
  for (let i = 0; i < attempts.length; i++) if (attempts[i]!.upstream === id) return true;
  return false;
}

/**
 * Walks the ranked list: at most `maxAttempts` distinct upstreams, within the deadline, each admitted by
 * its breaker and none twice (SPEC §2: an upstream that failed in this request is never retried by it).
 * Retryable failures move on; a client error is relayed as the upstream said it; every outcome is fed to
 * the breaker, the statistics and the metrics. Throws the final GatewayError.
 */
export async function runFailover(
  ranked: readonly RankedCandidate<RouteTarget>[],
  opts: FailoverOptions,
  attempt: (
    target: RankedCandidate<RouteTarget>,
    attempts: readonly AttemptRecord[],
  ) => Promise<AttemptResult>,
  onAttempts?: (attempts: readonly AttemptRecord[]) => void,
): Promise<FailoverSuccess | FailoverCommittedFailure> {
  const attempts: AttemptRecord[] = [];
  let upstreamMs = 0;
  // A candidate still cooling down from an earlier 429 counts: every upstream answering 429, the client may
  // come back when the first of them, tried or not, is free again.
  let minRetryAfterMs = opts.coolingMs ?? Number.POSITIVE_INFINITY;
  let rateLimited = 0;
  let deadlineReached = false;
  /** How soon a candidate passed over at its rpm/tpm has room again, ms. */
  let quotaMs = Number.POSITIVE_INFINITY;
  /** The same, of the larger windows passed over after a refusal as too long. */
  let largerQuotaMs = Number.POSITIVE_INFINITY;
  /** The failed attempt a next one fails over from: counted only once that next attempt starts. */
  let from: { provider: string; reason: string } | undefined;
  /**
   * An upstream refused the request as past its context window, and the list has a larger window (further
   * down, or already failed): its error, the client's answer if no larger window is tried at all, that window
   * (only larger ones are tried after it), and whether one was.
   */
  let overflow: { error: GatewayError; window: number; tried: boolean } | undefined;
  /** The ranked list, and after a refusal as too long the larger windows `opts.widen` found outside it. */
  let list = ranked;
  let widened = false;
  /** Candidates left out at their rpm/tpm: the plan's, and after a widening the other tiers' too. */
  let held = opts.atQuota;
  for (let i = 0; i < list.length; i++) {
    const target = list[i]!;
    if (attempts.length >= opts.maxAttempts) break;
    if (opts.now() >= opts.deadline) break;
    const up = target.candidate.upstream;
    // The config rejects a target listed twice; a plan that still holds one must not try it again.
    if (attempted(attempts, up.id)) continue;
    if (overflow !== undefined && !((up.model.context_window ?? 0) > overflow.window)) continue;
    const quota = up.quota;
    const tokens = opts.quotaTokens ?? 0;
    if (quota !== undefined && !quota.room(tokens)) {
      // Filled by other requests since the plan was made (it left out the ones full then).
      const ms = quota.msUntilRoom(tokens);
      quotaMs = Math.min(quotaMs, ms);
      if (overflow !== undefined) largerQuotaMs = Math.min(largerQuotaMs, ms);
      continue;
    }
    const permit = up.breaker.acquire();
    if (permit === undefined) continue; // half-open with its probes taken, or opened since the plan was made
    const taken = quota?.take(tokens);
    if (overflow !== undefined) overflow.tried = true;
    if (from !== undefined) {
      opts.metrics.failovers.inc({
        route: opts.routeName,
        from_provider: from.provider,
        reason: from.reason,
      });
      from = undefined;
    }
    up.stats.begin();
    up.metrics.inflight.inc();
    const client = up.provider.client;
    client.active++;
    let result: AttemptResult;
    try {
      result = await attempt(target, attempts);
    } finally {
      up.stats.end();
      up.metrics.inflight.dec();
      client.active--;
    }
    upstreamMs += result.totalMs;
    if (taken !== undefined) quota!.settle(taken, usedTokens(result, opts.promptTokens ?? 0));
    // The breaker and statistics learn at the end of this turn, after the answer is written (end-of-turn.ts).
    // Only other requests read them, and no upstream is tried twice by one request.
    afterThisTurn(record, up, permit, result, opts);
    const window = result.ok ? undefined : overflowWindow(result, up);
    const rec: AttemptRecord = {
      upstream: up.id,
      outcome: result.ok ? 'success' : result.classified.outcome,
      reason: result.ok ? 'ok' : window !== undefined ? CONTEXT_LENGTH_EXCEEDED : result.classified.reason,
      status: result.ok ? 200 : result.status,
      latencyMs: Math.round(result.totalMs),
    };
    attempts.push(rec);
    onAttempts?.(attempts);
    if (result.ok) return { target, result, attempts, upstreamMs };
    if (result.committed || result.clientGone) {
      return {
        target,
        committedFailure: true,
        committed: result.committed,
        attempts,
        upstreamMs,
        relayedTokens: result.relayedTokens,
        usage: result.usage,
        ttftMs: result.ttftMs,
      };
    }
    if (!result.classified.retryable) {
      const info = result.info;
      // Every field is the upstream's text: an echo of our key may be in any of them.
      const scrub = (text: string | null | undefined): string | null =>
        text == null ? null : opts.scrubber.scrub(text);
      const error = new GatewayError(
        'invalid_request',
        opts.scrubber.scrub(info?.message ?? `upstream ${up.id} rejected the request`),
        {
          status: result.status ?? 400,
          type: scrub(info?.type) ?? 'invalid_request_error',
          param: scrub(info?.param),
          bodyCode: scrub(info?.code),
        },
      );
      // Too long for this upstream's window: one with a larger window may take it (the plan let both through
      // on an estimate). Not this upstream's fault, and no failover when no larger window is left to try.
      if (window === undefined) throw error;
      let larger = largerWindows(list, i, attempts, window);
      if (!larger.ahead && !larger.tried && opts.widen !== undefined && !widened) {
        widened = true;
        const more = opts.widen(window, attempts);
        if (more.atQuota !== undefined) held = [...(held ?? []), ...more.atQuota];
        if (more.ranked.length > 0) {
          list = list.concat(more.ranked);
          larger = largerWindows(list, i, attempts, window);
        }
      }
      if (!larger.ahead && !larger.tried) throw heldLarger(held, opts, window, up.id) ?? error;
      // A larger window that already failed (a strategy ranked it first) makes the request the upstreams'
      // failure, not one for the client to shorten: the final error is about those attempts.
      overflow = { error, window, tried: larger.tried };
      from = { provider: up.provider.name, reason: CONTEXT_LENGTH_EXCEEDED };
      opts.logger.info(
        { reqId: opts.reqId, upstream: up.id, route: opts.routeName, contextWindow: window },
        `${up.id} refused the request as past its context window of ${window} tokens: trying a larger window`,
      );
      continue;
    }
    if (result.deadlineReached) {
      // The request's own time is up: starting another attempt would only hand it a sliver of a budget
      // (timers may fire a little before now() reads the deadline) and charge its breaker for our clock.
      deadlineReached = true;
      break;
    }
    if (result.classified.outcome === 'rate_limited') {
      rateLimited++;
      // One that named no cooldown is not kept off by its breaker: it may take a retry at once (finalError
      // makes that the least Retry-After, 1 s), whatever wait another one named.
      minRetryAfterMs = Math.min(minRetryAfterMs, result.retryAfterMs ?? 0);
    }
    from = { provider: up.provider.name, reason: result.classified.outcome };
    // What the upstream said (an overloaded_error event, a 500's message), scrubbed and cut: the client's
    // 502 and the trail give only the reason's code.
    const said = result.info?.message;
    opts.logger.warn(
      {
        reqId: opts.reqId,
        upstream: up.id,
        reason: result.classified.reason,
        status: result.status,
        route: opts.routeName,
        upstreamMessage: said ? clip(opts.scrubber.scrub(said), MAX_LOGGED_MESSAGE) : undefined,
      },
      `attempt on ${up.id} failed (${result.classified.reason})`,
    );
  }
  // No larger window was tried (every one's breaker refused, or the attempts or the time ran out): the client
  // gets the refusal, as from a route with no larger window.
  if (overflow !== undefined && !overflow.tried)
    throw Number.isFinite(largerQuotaMs) ? largerWindowWait(largerQuotaMs) : overflow.error;
  throw finalError(attempts, {
    rateLimited,
    minRetryAfterMs,
    quotaMs,
    deadlineHit: deadlineReached || opts.now() >= opts.deadline,
    ranked: list,
    overflowWindow: overflow?.window,
  });
}

/**
 * A refusal as too long where the only larger windows were left out at their rpm/tpm: the request fits the
 * route, it has to wait (a 429 until the first has room), not be shortened.
 */
function heldLarger(
  held: readonly RouteTarget[] | undefined,
  opts: FailoverOptions,
  window: number,
  refusing: string,
): GatewayError | undefined {
  let ms = Number.POSITIVE_INFINITY;
  for (const t of held ?? []) {
    const up = t.upstream;
    if (up.id === refusing || !((up.model.context_window ?? 0) > window) || up.quota === undefined) continue;
    ms = Math.min(ms, up.quota.msUntilRoom(opts.quotaTokens ?? 0));
  }
  return Number.isFinite(ms) ? largerWindowWait(ms) : undefined;
}

function largerWindowWait(ms: number): GatewayError {
  const retryAfterS = Math.max(1, Math.ceil(ms / 1000));
  return new GatewayError(
    'rate_limited',
    `the request is past the context window of the upstreams with room; every one with a larger window is at its rpm/tpm limit: retry in ${retryAfterS}s`,
    { retryAfterS },
  );
}

/**
 * The tokens an attempt used of its upstream's `tpm`: what the upstream reported, else the prompt's estimate
 * and the output counted as it was relayed.
 */
function usedTokens(result: AttemptResult, promptTokens: number): number {
  const prompt = reportedPrompt(result.usage) ?? promptTokens;
  if (!result.ok && !result.committed) {
    // A provider counts a prompt it read, answered or not; not one it never got, nor one turned away at its limit.
    const { outcome, reason } = result.classified;
    return outcome === 'rate_limited' || NEVER_SENT.has(reason) ? 0 : prompt;
  }
  const relayed = result.ok ? result.countedTokens : (result.relayedTokens ?? 0);
  return prompt + (reportedCompletion(result.usage) ?? relayed);
}

/**
 * The context window an upstream's refusal was about, when it refused the request as too long for it: the
 * configured one, else the one it states (a field of its error, its message). Undefined for any other outcome.
 */
function overflowWindow(result: Extract<AttemptResult, { ok: false }>, up: Upstream): number | undefined {
  if (result.classified.outcome !== 'client_error' || result.info?.code !== CONTEXT_LENGTH_EXCEEDED)
    return undefined;
  return up.model.context_window ?? result.info.window ?? statedWindow(result.info.message);
}

/**
 * Candidates with a configured context window above `window`: whether one after `index` is still to try, and
 * whether one was already tried (and failed: the walk goes on only past failures).
 */
function largerWindows(
  ranked: readonly RankedCandidate<RouteTarget>[],
  index: number,
  attempts: readonly AttemptRecord[],
  window: number,
): { ahead: boolean; tried: boolean } {
  let ahead = false;
  let tried = false;
  for (let i = 0; i < ranked.length; i++) {
    const up = ranked[i]!.candidate.upstream;
    if (i === index || !((up.model.context_window ?? 0) > window)) continue;
    if (attempted(attempts, up.id)) tried = true;
    else if (i > index) ahead = true;
  }
  return { ahead, tried };
}

function record(up: Upstream, permit: Permit, result: AttemptResult, opts: FailoverOptions): void {
  if (result.ok) {
    up.breaker.onSuccess(permit);
    const outputTokens =
      reportedCompletion(result.usage) ?? (result.countedTokens > 0 ? result.countedTokens : undefined);
    up.stats.recordSuccess({
      choices: opts.choices ?? 1,
      ttftMs: result.ttftMs,
      totalMs: result.totalMs - (result.heldMs ?? 0),
      outputTokens,
      // A stream whose answer came whole (one JSON object, or all in one read) teaches what a JSON answer
      // does: no pace.
      streamed: result.body === undefined && result.noPace !== true && result.oneRead !== true,
    });
    up.metrics.attempts.success.inc();
    return;
  }
  const c = result.classified;
  if (result.clientGone) {
    up.breaker.onNeutral(permit);
    // Clients that give up on an upstream that sends nothing: it is slower than it was thought.
    slowWait(up, result, opts);
    return;
  }
  if (result.clientSlow) {
    // Its client read slower than total_ms allows: the stream is cut, but the upstream had done its part.
    up.breaker.onNeutral(permit);
    up.metrics.attempts.client_error.inc();
    return;
  }
  if (result.deadlineReached || c.reason === QUEUE_TIMEOUT) {
    // Cut by our own budget (routing.total_timeout_ms, the LLM router's timeout_ms), not by one of the
    // provider's timeouts: a healthy upstream slower than the budget is not failing (its own first_byte_ms
    // and total_ms still count against it). Nor is one whose request waited in our pool's queue
    // (max_concurrency busy) and never reached it.
    up.breaker.onNeutral(permit);
    // Waited on for the whole budget with nothing: the next request should not go to it first.
    if (c.reason !== QUEUE_TIMEOUT) slowWait(up, result, opts);
    up.metrics.attempts[c.outcome].inc();
    return;
  }
  switch (c.outcome) {
    case 'client_error':
      up.breaker.onNeutral(permit);
      up.stats.recordFailure('client_error');
      break;
    case 'rate_limited':
      up.breaker.onRateLimit(permit, result.retryAfterMs);
      up.stats.recordFailure('rate_limit');
      break;
    case 'timeout':
      up.breaker.onFailure(permit, 'timeout');
      // No content within first_byte_ms, or none within idle_ms after a preamble (a role chunk, then
      // silence): a first token at least that slow, taken at once.
      if (c.reason === 'first_byte_timeout' || (c.reason === 'idle_timeout' && !result.committed))
        up.stats.recordTimeout(result.totalMs);
      else up.stats.recordFailure('timeout');
      break;
    default:
      up.breaker.onFailure(permit, 'error');
      up.stats.recordFailure('error');
  }
  up.metrics.attempts[c.outcome].inc();
  if (result.status === 401 || result.status === 403) {
    opts.logger.error(
      { reqId: opts.reqId, upstream: up.id, status: result.status },
      `provider ${up.provider.name} rejected our credentials (HTTP ${result.status}): check its api_key`,
    );
  }
}

/**
 * An attempt that ended with no content and no fault of its own bounds: the time the upstream had it (not
 * the pool's queue: a request that never got a connection says nothing of the upstream) is a first token at
 * least that slow (a JSON attempt's, less the generation its known pace explains).
 */
function slowWait(up: Upstream, result: AttemptResult, opts: FailoverOptions): void {
  if (result.ok || result.committed || result.queuedMs === undefined) return;
  const whole = opts.stream === true ? undefined : { outputTokens: opts.requestedOutputTokens };
  up.stats.recordSlowWait(result.totalMs - result.queuedMs, whole);
}

function finalError(
  attempts: readonly AttemptRecord[],
  d: {
    rateLimited: number;
    minRetryAfterMs: number;
    /** How soon a candidate passed over at its rpm/tpm has room again, ms. */
    quotaMs: number;
    deadlineHit: boolean;
    ranked: readonly RankedCandidate<RouteTarget>[];
    /** The window a refusal as too long named: only candidates above it could take the request. */
    overflowWindow?: number | undefined;
  },
): GatewayError {
  if (attempts.length === 0) {
    let minMs = Number.POSITIVE_INFINITY;
    for (const t of d.ranked) minMs = Math.min(minMs, t.candidate.upstream.breaker.msUntilHalfOpen());
    const retryAfterS = Math.max(1, Math.ceil((Number.isFinite(minMs) ? minMs : 1000) / 1000));
    if (d.deadlineHit)
      return new GatewayError('timeout', 'the request ran out of time before any upstream was tried');
    if (Number.isFinite(d.quotaMs))
      return new GatewayError('rate_limited', 'every upstream left is at its rpm/tpm limit', {
        retryAfterS: Math.max(1, Math.ceil(d.quotaMs / 1000)),
      });
    return new GatewayError(
      'no_available_upstream',
      'no upstream could take the request (circuits open or probing)',
      {
        retryAfterS,
      },
    );
  }
  const list = describeAttempts(attempts);
  // A refusal as too long is the request's, not a failure: the others say what went wrong (a 429 with its
  // wait, a timeout), while the message lists every attempt.
  const rest = attempts.filter((a) => a.reason !== CONTEXT_LENGTH_EXCEEDED);
  const failed = rest.length > 0 ? rest : attempts;
  if (d.rateLimited === failed.length) {
    // A candidate max_attempts left untried may take the request now: the client is not sent away for the
    // rate-limited ones' whole wait while it is free (their breakers now keep the next request off them).
    // After a refusal as too long, only a larger window could.
    let minMs = Math.min(d.minRetryAfterMs, d.quotaMs);
    for (const t of d.ranked) {
      const up = t.candidate.upstream;
      if (d.overflowWindow !== undefined && !((up.model.context_window ?? 0) > d.overflowWindow)) continue;
      if (!attempted(attempts, up.id)) minMs = Math.min(minMs, up.breaker.msUntilHalfOpen());
    }
    const retryAfterS = Number.isFinite(minMs) ? Math.max(1, Math.ceil(minMs / 1000)) : 1;
    return new GatewayError('rate_limited', `every upstream tried is rate limited: ${list}`, { retryAfterS });
  }
  if (!d.deadlineHit && failed.every((a) => a.reason === QUEUE_TIMEOUT)) {
    // No upstream saw it: each was at max_concurrency. A slot may be free in a moment, so a retry is
    // welcome (a Retry-After, which also keeps the x-should-retry: false of a spent route deadline off it).
    return new GatewayError('timeout', `upstreams timed out: ${list}`, { retryAfterS: 1 });
  }
  if (d.deadlineHit || failed.every((a) => a.outcome === 'timeout')) {
    return new GatewayError('timeout', `upstreams timed out: ${list}`);
  }
  return new GatewayError('upstream_error', `all ${attempts.length} upstream attempt(s) failed: ${list}`, {
    noRetry: failed.every((a) => OURS.has(a.reason)),
  });
}

/**
 * Failures of the gateway's own setup, not of a moment: a key refused (401, 403), an account drained (402, as
 * OpenAI's 429 `insufficient_quota` and Anthropic's credit refusal are read), a `base_url` with no API behind
 * it (a 404 page, 405) or a proxy refusing us (407). When every attempt failed so, the same request again
 * fails the same way: the 502 tells the OpenAI SDKs not to retry it (they would, twice, by default).
 */
const OURS: ReadonlySet<string> = new Set([
  'http_401',
  'http_402',
  'http_403',
  'http_404',
  'http_405',
  'http_407',
]);
