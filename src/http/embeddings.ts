import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { isShutdown, type Gateway } from '../gateway.js';
import { runFailover, type AttemptRecord } from '../resilience/failover.js';
import { checkTierHeader, readRoutingHeaders, resolveRoute } from '../routing/decide.js';
import { embeddingsFeatures } from '../routing/features.js';
import { planRequest } from '../routing/plan.js';
import { APPROXIMATE, estimateTextTokens } from '../routing/tokens.js';
import type { RankedCandidate } from '../routing/types.js';
import type { RouteTarget, Runtime } from '../runtime.js';
import { openaiHeaders, stringifyWithModel } from '../upstream/adapters/openai.js';
import { MAX_JSON_BODY_BYTES } from '../upstream/attempt.js';
import { attemptPlainJson } from '../upstream/attempt-json.js';
import { CLIENT_CLOSED_REQUEST, clientGoneSignal, failoverOptions, ownReply, shutdownError } from './chat.js';
import { answerJson, type Answered, failRequest, reportRequest, type RequestContext } from './report.js';
import { validateEmbeddingsBody } from './validate.js';

export async function embeddingsPlugin(app: FastifyInstance): Promise<void> {
  app.post('/v1/embeddings', ownReply(app, handleEmbeddings));
}

/**
 * Tokens of all inputs (what the request costs) and of the largest (what a context window bounds: each input
 * is embedded on its own, and a batch of 64 short documents is not one long one).
 */
function inputTokens(input: unknown): { total: number; largest: number } {
  if (typeof input === 'string') {
    const n = estimateTextTokens(input, APPROXIMATE);
    return { total: n, largest: n };
  }
  if (!Array.isArray(input)) return { total: 0, largest: 0 };
  // One input given as token ids.
  if (input.length > 0 && typeof input[0] === 'number') return { total: input.length, largest: input.length };
  let total = 0;
  let largest = 0;
  for (const x of input) {
    const n = typeof x === 'string' ? estimateTextTokens(x, APPROXIMATE) : Array.isArray(x) ? x.length : 1;
    total += n;
    largest = Math.max(largest, n);
  }
  return { total, largest };
}

/**
 * The largest answer this request can get: each input's vector as float JSON (~24 bytes a number, at most
 * 4,096 numbers unless `dimensions` says) — 2,048 inputs of a 3,072-dimension model are ~75 MB — and never
 * less than any JSON answer's bound, nor more than 256 MiB.
 */
function answerBound(body: { input?: unknown; dimensions?: unknown }): number {
  const inputs = Array.isArray(body.input) && typeof body.input[0] !== 'number' ? body.input.length : 1;
  const dims =
    typeof body.dimensions === 'number' && body.dimensions > 0
      ? Math.min(body.dimensions, MAX_DIMENSIONS)
      : MAX_DIMENSIONS;
  return Math.min(MAX_ANSWER_BYTES, Math.max(MAX_JSON_BODY_BYTES, inputs * dims * 24 + 1024 * 1024));
}

const MAX_DIMENSIONS = 4_096;
const MAX_ANSWER_BYTES = 256 * 1024 * 1024;

/**
 * An embeddings request's routing decision (its handler's, and /router/explain's): the body validated, its
 * route, strategy and ranked upstreams. Calls nothing.
 */
export function decideEmbeddings(
  gw: Gateway,
  rt: Runtime,
  raw: unknown,
  headers: FastifyRequest['headers'],
  /** Explain: read the rotation and draws without taking a turn (the next request gets what it is told). */
  peek = false,
) {
  const body = validateEmbeddingsBody(raw);
  const route = resolveRoute(rt, body.model, 'embeddings');
  const hdrs = readRoutingHeaders(headers, rt);
  if (hdrs.tier !== undefined) checkTierHeader(route, hdrs.tier);
  const strategy = hdrs.strategy ?? route.strategy;
  const tokens = inputTokens(body.input);
  const features = embeddingsFeatures(tokens.total, tokens.largest);
  const plan = planRequest(route, route.targets, features, {
    strategy,
    provider: hdrs.provider,
    routing: rt.loaded.config.routing,
    now: gw.now(),
    random: gw.random,
    peek,
  });
  return { body, route, strategy, tokens, features, plan };
}

/** Embeddings go through the same engine as chat: strategy, breakers, failover; answers relayed as they are. */
async function handleEmbeddings(
  gw: Gateway,
  rt: Runtime,
  req: FastifyRequest,
  reply: FastifyReply,
): Promise<Answered | undefined> {
  const startedAt = gw.now();
  const { body, route, strategy, tokens, plan } = decideEmbeddings(gw, rt, req.body, req.headers);
  const maxBodyBytes = answerBound(body);
  const chosen = plan.ranked[0];
  if (chosen) gw.decisionChildren.get(route.name, strategy, chosen.candidate.upstream.provider.name).inc();
  const opts = failoverOptions(
    gw,
    rt,
    route.name,
    startedAt,
    req.id,
    plan,
    embeddingsFeatures(tokens.total, 0),
  );
  const clientSignal = clientGoneSignal(reply);
  let lastAttempts: readonly AttemptRecord[] = [];
  let current: RankedCandidate<RouteTarget> | undefined;
  const report: RequestContext = {
    route: route.name,
    strategy,
    stream: false,
    startedAt,
    ranked: plan.ranked,
    routerMs: 0,
    tier: undefined,
    tierReason: undefined,
    promptTokensEstimate: tokens.total,
  };
  try {
    if (plan.refusal) throw plan.refusal; // answered as routed: headers, and counted under its route
    const out = await runFailover(
      plan.ranked,
      opts,
      (target) => {
        current = target;
        const up = target.candidate.upstream;
        const headers = openaiHeaders(up.provider.adapterProvider);
        return attemptPlainJson(
          { upstream: up, clientSignal, deadline: opts.deadline, now: gw.now, maxBodyBytes },
          { path: '/embeddings', headers, body: Buffer.from(stringifyWithModel(body, up.upstreamModel)) },
        );
      },
      (a) => (lastAttempts = a),
    );
    const served = out.target.candidate.upstream;
    if ('committedFailure' in out) {
      if (isShutdown(clientSignal)) throw shutdownError(); // still running when shutdown's grace was over
      // The client went away: still this route's request, with its line and counts (as chat reports it).
      reportRequest(gw, req, report, {
        status: CLIENT_CLOSED_REQUEST,
        served,
        attempts: out.attempts,
        upstreamMs: out.upstreamMs,
        error: out.attempts[out.attempts.length - 1]?.reason,
      });
      return undefined;
    }
    return answerJson(
      gw,
      reply,
      report,
      {
        status: 200,
        served,
        attempts: out.attempts,
        upstreamMs: out.upstreamMs,
        usage: out.result.usage,
        countedTokens: 0,
      },
      out.result.body,
    );
  } catch (err) {
    throw failRequest(gw, req, reply, report, err, current?.candidate.upstream, lastAttempts);
  }
}
