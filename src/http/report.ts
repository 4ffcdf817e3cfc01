import type { FastifyReply, FastifyRequest } from 'fastify';
import { closeIfStalled } from '../streaming/stalled-answer.js';
import { GatewayError, isGatewayError } from '../errors.js';
import { afterThisTurn, inTurnOrder } from '../end-of-turn.js';
import type { Gateway } from '../gateway.js';
import type { AttemptRecord } from '../resilience/failover.js';
import { trailOf } from '../resilience/failover.js';
import { fixed } from '../routing/strategies/rank.js';
import type { RankedCandidate } from '../routing/types.js';
import type { RouteTarget, Upstream } from '../runtime.js';
import { clip } from '../text.js';
import { ANTHROPIC_CACHE, reportedCompletion, reportedPrompt, type Usage } from '../upstream/adapter.js';
import { isPreflight } from './cors.js';
import { tokenCount } from '../upstream/adapters/common.js';

/** What is known of a routed request once it is planned: built once per request. */
export interface RequestContext {
  readonly route: string;
  readonly strategy: string;
  readonly stream: boolean;
  readonly startedAt: number;
  /**
   * The plan's ranking: the line gives the score and reason of the upstream that served (or last failed). A
   * request moved to another tier (a refusal as too long) adds the upstream it moved to.
   */
  ranked: readonly RankedCandidate<RouteTarget>[];
  /** Time the LLM router took to pick the tier: waiting on its upstream, so not the gateway's overhead. */
  readonly routerMs: number;
  /** What the LLM router call this request made cost (in llm_router_cost_usd_total under its upstream). */
  readonly routerCostUsd?: number;
  /** The tier the request was served from (another than the chosen one when a refusal moved it). */
  tier: string | undefined;
  tierReason: string | undefined;
  readonly promptTokensEstimate: number;
}

/**
 * How it ended. A separate object rather than `{ ...context, status, ... }`: on Node 20 a spread followed
 * by new keys costs microseconds per object (measured 2-7 µs), more than the rest of the line.
 */
export interface RequestOutcome {
  readonly status: number;
  /** The upstream that served (or last failed). */
  readonly served: Upstream | undefined;
  readonly attempts: readonly AttemptRecord[];
  readonly upstreamMs: number;
  readonly ttftMs?: number | undefined;
  /** Of the served attempt's time, what it waited on a slow client (not the upstream's generation). */
  readonly heldMs?: number | undefined;
  /** The answer came whole: no time per output token. */
  readonly noPace?: boolean | undefined;
  readonly usage?: Usage | undefined;
  readonly countedTokens?: number | undefined;
  readonly error?: string | undefined;
}

/** `x-router-*` response headers for the upstream that served (or was being tried). */
export function routerHeaders(
  requestId: string,
  strategy: string,
  upstream: Upstream | undefined,
  attempts: readonly AttemptRecord[],
  attemptCount: number,
  tier: string | undefined,
  tierReason?: string,
): Record<string, string> {
  const h: Record<string, string> = {
    'x-request-id': requestId,
    'x-router-strategy': strategy,
    'x-router-attempts': String(attemptCount),
  };
  if (upstream) {
    h['x-router-provider'] = headerText(upstream.provider.name);
    h['x-router-model'] = headerText(upstream.model.name);
  }
  // Present on every routed response, empty when no attempt failed.
  h['x-router-trail'] = headerText(trailOf(attempts, true));
  if (tier !== undefined) h['x-router-tier'] = tier;
  if (tierReason !== undefined) h['x-router-tier-reason'] = headerSafe(tierReason);
  return h;
}

const NOT_HEADER_SAFE = /[^\x20-\x7e]/g;
const NOT_ASCII = /[^\x20-\x7e]/;
const NOT_ASCII_CHARS = /[^\x20-\x7e]/gu;

/**
 * A configured name as a header value: as it is when printable ASCII (every name in practice), else with each
 * other character percent-encoded as UTF-8 (`llama3-中文` -> `llama3-%E4%B8%AD%E6%96%87`). Node refuses a
 * header value outside Latin-1, which left such a model's answers unsent.
 */
export function headerText(name: string): string {
  if (!NOT_ASCII.test(name)) return name;
  return name.replace(NOT_ASCII_CHARS, (c) => {
    let out = '';
    for (const byte of Buffer.from(c, 'utf8')) out += `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
    return out;
  });
}

/** A header value from text we did not write (an LLM router's reason): printable ASCII, bounded. */
function headerSafe(text: string): string {
  return text.slice(0, 200).replace(NOT_HEADER_SAFE, '?');
}

/**
 * The prompt tokens an upstream says it read from its cache (OpenAI's prompt_tokens_details.cached_tokens,
 * Anthropic's cache_read_input_tokens as translated): at most the prompt's, none when the prompt was estimated.
 */
function cachedTokens(usage: Usage | undefined, promptTokens: number): number {
  if (usage === undefined || reportedPrompt(usage) === undefined) return 0;
  const n = tokenCount(
    (usage.prompt_tokens_details as { cached_tokens?: unknown } | undefined)?.cached_tokens,
  );
  return n === undefined ? 0 : Math.min(n, promptTokens);
}

/** Anthropic's cache prices as multiples of the input price: reads, and what writes cost above it. */
const ANTHROPIC_READ = 0.1;
const ANTHROPIC_WRITE_5M = 0.25;
const ANTHROPIC_WRITE_1H = 1;

/** Tokens and spend of one served answer, counted on its upstream; the figures go in the log line. */
export function recordUsage(
  up: Upstream,
  usage: Usage | undefined,
  promptEstimate: number,
  counted: number | undefined,
): { promptTokens: number; completionTokens: number; costUsd: number } {
  const promptTokens = reportedPrompt(usage) ?? promptEstimate;
  const completionTokens = reportedCompletion(usage) ?? counted ?? 0;
  const price = up.model.price;
  // Anthropic bills cache reads at a tenth of the input price and writes above it (adapter.ts
  // ANTHROPIC_CACHE); a price's own cached_input_per_mtok says otherwise for reads.
  const anthropic = reportedPrompt(usage) === undefined ? undefined : usage?.[ANTHROPIC_CACHE];
  const cachedPrice =
    price.cached_input_per_mtok ?? (anthropic ? price.input_per_mtok * ANTHROPIC_READ : undefined);
  const cached = cachedPrice === undefined ? 0 : cachedTokens(usage, promptTokens);
  const writesAbove = anthropic
    ? (anthropic.writes5m * ANTHROPIC_WRITE_5M + anthropic.writes1h * ANTHROPIC_WRITE_1H) *
      price.input_per_mtok
    : 0;
  const costUsd =
    ((promptTokens - cached) * price.input_per_mtok +
      cached * (cachedPrice ?? 0) +
      writesAbove +
      completionTokens * price.output_per_mtok) /
    1e6;
  up.metrics.promptTokens.inc(promptTokens);
  if (completionTokens > 0) up.metrics.completionTokens.inc(completionTokens);
  if (costUsd > 0) up.metrics.cost.inc(costUsd);
  return { promptTokens, completionTokens, costUsd };
}

declare module 'fastify' {
  interface FastifyRequest {
    /** This request's line and counts are written (a plain field: a WeakSet entry per request costs GC). */
    reported: boolean;
  }
}

/** Requests answered before routing (400, 401, 404, 413, 415...) still get their count and log line. */
export function reportUnrouted(gw: Gateway, req: FastifyRequest, status: number, elapsedMs: number): void {
  const route = req.routeOptions.url ?? 'unmatched';
  logUnrouted(
    gw,
    req.id,
    req.method,
    route === PASSTHROUGH ? gw.runtime.scrubber.scrub(proxiedPath(req.url)) : route,
    status,
    elapsedMs,
  );
}

const PASSTHROUGH = '/v1/*';

/** A proxied request's own path (`/v1/batches/batch_abc`, not `/v1/*`), without its query, cut short. */
function proxiedPath(url: string): string {
  const q = url.indexOf('?');
  return clip(q < 0 ? url : url.slice(0, q), 200);
}

/** reportUnrouted for a request Node answered before fastify had one (an Expect it cannot meet: 417). */
export function logUnrouted(
  gw: Gateway,
  reqId: string,
  method: string | undefined,
  path: string,
  status: number,
  elapsedMs: number,
): void {
  gw.metrics.requests.inc({ route: 'none', provider: 'none', model: 'none', status: String(status) });
  // Observed as it is counted: a dashboard's average or SLO over the histogram sees every request.
  gw.metrics.requestDuration.observe(UNROUTED_DURATION, elapsedMs / 1000);
  gw.requestLog.info({ reqId, method, path, status, latencyMs: Math.round(elapsedMs * 10) / 10 }, 'request');
}

const UNROUTED_DURATION = Object.freeze({ route: 'none', provider: 'none', model: 'none', stream: 'none' });

/** Health, metrics and admin reads: not requests, in the log or the counters. */
const NOT_REQUESTS = new Set(['/healthz', '/readyz', '/metrics', '/router/status', '/router/explain']);

/**
 * The count and line of a request that does not report itself (all but routed chat and embeddings), and of
 * early rejections: once, whichever of its ends comes first (its answer finished, its client gone, its
 * answer cut). Health, metrics and admin reads served (status, explain: it calls no upstream) stay out.
 */
export function reportOnce(gw: Gateway, req: FastifyRequest, status: number, elapsedMs: number): void {
  if (req.reported) return; // before routeOptions: fastify builds that object on every read
  req.reported = true;
  if (isPreflight(req)) return; // a browser's CORS question, not a request
  const route = req.routeOptions.url;
  // A refused read (a wrong admin or metrics key) is a request: someone guessing keys leaves a trace.
  if (route === undefined || status === 401 || !NOT_REQUESTS.has(route))
    reportUnrouted(gw, req, status, elapsedMs);
}

/**
 * Counts a routed request and writes its line once this turn's ready answers are written (end-of-turn.ts:
 * done between them, it cost ~4.6 CPU-µs a request in client wake-ups). Latency is taken now; the line's
 * `time` when it is written, within the same turn of the loop.
 */
export function reportRequest(
  gw: Gateway,
  req: FastifyRequest,
  ctx: RequestContext,
  r: RequestOutcome,
): void {
  req.reported = true;
  afterThisTurn(writeReport, gw, req, ctx, r, gw.now() - ctx.startedAt);
}

/** What answerJson returns, for its handler to pass on (chat.ts ownReply): the answer is sent or queued. */
export const ANSWERED = Symbol('answered');
export type Answered = typeof ANSWERED;

/**
 * Sends a served JSON answer, then reports it, in turn order (end-of-turn.ts inTurnOrder): the first write of
 * this turn goes at once, a later one when the loop has handled every socket ready in the turn, with the
 * turn's other answers and requests to upstreams back to back. The route's handler must leave the reply to
 * us (chat.ts ownReply). The latency reported is the client's: taken when the answer is handed to its socket.
 */
export function answerJson(
  gw: Gateway,
  reply: FastifyReply,
  ctx: RequestContext,
  r: RequestOutcome,
  body: string | undefined,
): Answered {
  inTurnOrder(sendAnswer, gw, reply, ctx, r, body);
  return ANSWERED;
}

function sendAnswer(
  gw: Gateway,
  reply: FastifyReply,
  ctx: RequestContext,
  r: RequestOutcome,
  body: string | undefined,
): void {
  const req = reply.request;
  try {
    void reply
      .code(200)
      .headers(
        routerHeaders(
          req.id,
          ctx.strategy,
          r.served,
          r.attempts, // the trail leaves out the served attempt: it succeeded
          r.attempts.length,
          ctx.tier,
          ctx.tierReason,
        ),
      )
      .type('application/json')
      .send(body);
    closeIfStalled(reply.raw, gw.answerStallMs);
  } catch (err) {
    gw.logger.error({ err, reqId: req.id }, 'could not send an answer');
    reply.raw.destroy(); // not left open with nothing coming: the client sees the connection cut
  }
  reportRequest(gw, req, ctx, r);
}

/** Off the request's path: a failure here is logged, never thrown. */
function writeReport(
  gw: Gateway,
  req: FastifyRequest,
  ctx: RequestContext,
  r: RequestOutcome,
  totalMs: number,
): void {
  try {
    const up = r.served;
    const provider = up?.provider.name ?? 'none';
    const model = up?.model.name ?? 'none';
    // An upstream a reload removed has no series any more: its last request must not bring them back.
    if (up?.metrics.seriesGone !== true) {
      const c = gw.requestChildren.get(ctx.route, provider, model, r.status, ctx.stream ? 'true' : 'false');
      c.requests.inc();
      c.duration.observe(totalMs / 1000);
      c.overhead.observe(Math.max(0, totalMs - r.upstreamMs - ctx.routerMs) / 1000);
    }

    let promptTokens: number | undefined;
    let completionTokens: number | undefined;
    let costUsd: number | undefined;
    if (up && r.status === 200) {
      ({ promptTokens, completionTokens, costUsd } = recordUsage(
        up,
        r.usage,
        ctx.promptTokensEstimate,
        r.countedTokens,
      ));
      if (r.ttftMs !== undefined) {
        up.metrics.ttft.observe(r.ttftMs / 1000);
        const last = r.attempts[r.attempts.length - 1];
        // Only a stream has a time per output token: a JSON answer's TTFT is its whole duration.
        if (ctx.stream && completionTokens > 0 && last && r.noPace !== true) {
          const generatingMs = last.latencyMs - (r.heldMs ?? 0) - r.ttftMs;
          up.metrics.tpot.observe(Math.max(0, generatingMs) / 1000 / completionTokens);
        }
      }
    }
    if (gw.requestLog.isLevelEnabled('info')) {
      const error = r.error === undefined ? undefined : gw.runtime.scrubber.scrub(r.error);
      gw.requestLines.write(
        requestLine(req.id, ctx, r, totalMs, promptTokens, completionTokens, costUsd, error),
      );
    }
  } catch (err) {
    gw.logger.error({ err, reqId: req.id }, 'could not write a request report');
  }
}

/** A number as JSON writes it (NaN and infinities are null). */
function num(x: number): string {
  return Number.isFinite(x) ? String(x) : 'null';
}

/**
 * Dollars to the nearest picodollar, for the line: tokens x price / 1e6 carries float noise that JSON shows
 * (10 x 0.1 + 8 x 0.4 tokens' worth printed as 0.0000042000000000000004). Exact below $9,000 a request.
 */
function toPicoUsd(usd: number): number {
  return Math.abs(usd) < 9_000 ? Math.round(usd * 1e12) / 1e12 : usd;
}

/** Milliseconds to a tenth, as JSON: through integer arithmetic (see `fixed`), not a double's shortest form. */
function tenths(ms: number): string {
  return Number.isFinite(ms) ? fixed(ms, 1) : 'null';
}

/**
 * The request's line, in the shape pino writes (`{"level":30,"time":...,fields,"msg":"request"}`, absent
 * fields left out) but built by hand: pino's generic serialiser walked the field object on every request
 * (~5 µs of a ~130 µs request). Text goes through JSON.stringify, which escapes it.
 */
export function requestLine(
  reqId: string,
  ctx: RequestContext,
  r: RequestOutcome,
  totalMs: number,
  promptTokens: number | undefined,
  completionTokens: number | undefined,
  costUsd: number | undefined,
  error: string | undefined,
): string {
  let s =
    '{"level":30,"time":' +
    Date.now() +
    ',"reqId":' +
    JSON.stringify(reqId) +
    ',"route":' +
    JSON.stringify(ctx.route) +
    ',"strategy":' +
    JSON.stringify(ctx.strategy);
  if (r.served) s += ',"upstream":' + JSON.stringify(r.served.id);
  const chosen = decisionOf(ctx.ranked, r.served);
  if (chosen) s += ',"score":' + num(chosen.score) + ',"reason":' + JSON.stringify(chosen.reason);
  if (ctx.tier !== undefined) s += ',"tier":' + JSON.stringify(ctx.tier);
  if (ctx.tierReason !== undefined) s += ',"tierReason":' + JSON.stringify(ctx.tierReason);
  s += ',"attempts":' + r.attempts.length;
  const trail = trailOf(r.attempts);
  if (trail !== '') s += ',"trail":' + JSON.stringify(trail);
  s += ',"status":' + r.status + ',"stream":' + ctx.stream + ',"latencyMs":' + tenths(totalMs);
  if (r.ttftMs !== undefined) s += ',"ttftMs":' + tenths(r.ttftMs);
  if (promptTokens !== undefined) s += ',"promptTokens":' + num(promptTokens);
  if (completionTokens !== undefined) s += ',"completionTokens":' + num(completionTokens);
  if (costUsd !== undefined) s += ',"costUsd":' + num(toPicoUsd(costUsd));
  if (ctx.routerCostUsd !== undefined && ctx.routerCostUsd > 0)
    s += ',"routerCostUsd":' + num(toPicoUsd(ctx.routerCostUsd));
  if (error !== undefined) s += ',"error":' + JSON.stringify(error);
  return s + ',"msg":"request"}\n';
}

/** `served`'s place in the ranking (the first, unless the request failed over), else the first. */
function decisionOf(
  ranked: readonly RankedCandidate<RouteTarget>[],
  served: Upstream | undefined,
): RankedCandidate<RouteTarget> | undefined {
  const first = ranked[0];
  if (first === undefined || served === undefined || first.candidate.upstream === served) return first;
  for (const c of ranked) if (c.candidate.upstream === served) return c;
  return first;
}

/**
 * A routed request that ends in an error: its `x-router-*` headers (the attempts so far), its line and
 * counts, and the error to throw for the OpenAI-shaped body (an unexpected one becomes a 500 that leaks
 * nothing).
 */
export function failRequest(
  gw: Gateway,
  req: FastifyRequest,
  reply: FastifyReply,
  ctx: RequestContext,
  err: unknown,
  served: Upstream | undefined,
  attempts: readonly AttemptRecord[],
): GatewayError {
  reply.headers(
    routerHeaders(req.id, ctx.strategy, served, attempts, attempts.length, ctx.tier, ctx.tierReason),
  );
  reportRequest(gw, req, ctx, {
    status: isGatewayError(err) ? err.status : 500,
    served,
    attempts,
    upstreamMs: waitedOn(attempts),
    error: err instanceof Error ? err.message : String(err),
  });
  return err instanceof GatewayError
    ? err
    : new GatewayError('internal', 'internal gateway error', { cause: err });
}

/** The time a failed request spent waiting on its upstreams (not the gateway's overhead). */
function waitedOn(attempts: readonly AttemptRecord[]): number {
  let ms = 0;
  for (const a of attempts) ms += a.latencyMs;
  return ms;
}
