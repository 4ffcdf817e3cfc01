import type { OutgoingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { GATEWAY_SHUTDOWN, isShutdown, SHUTDOWN_CUT, SHUTDOWN_ERROR, type Gateway } from '../gateway.js';
import { GatewayError } from '../errors.js';
import { runFailover, type AttemptRecord, type FailoverOptions } from '../resilience/failover.js';
import type { TierName } from '../config/schema.js';
import { decideChat, largerInOtherTiers } from '../routing/chat-decision.js';
import type { RequestFeatures } from '../routing/features.js';
import { quotaTokens, type Plan } from '../routing/plan.js';
import type { RankedCandidate } from '../routing/types.js';
import type { RouteTarget, Runtime } from '../runtime.js';
import { SseWriter } from '../streaming/relay.js';
import { Abort } from '../upstream/abort.js';
import type { ChatBody } from '../upstream/adapter.js';
import type { AttemptInput, AttemptResult } from '../upstream/attempt.js';
import { attemptJson } from '../upstream/attempt-json.js';
import { attemptStream } from '../upstream/attempt-stream.js';
import {
  ANSWERED,
  answerJson,
  type Answered,
  failRequest,
  reportOnce,
  reportRequest,
  routerHeaders,
  type RequestContext,
} from './report.js';
import { validateChatBody } from './validate.js';

const GONE = Symbol('clientGone');
/** The status a request is counted and logged with when its client left before any answer (nginx's). */
export const CLIENT_CLOSED_REQUEST = 499;
type WatchedResponse = FastifyReply['raw'] & { [GONE]?: Abort };

/** One listener for every response, finding its signal on the response: no closure per request. */
function onResponseClose(this: WatchedResponse): void {
  if (!this.writableFinished) this[GONE]?.abort(new Error('client closed the connection'));
}

/**
 * Ends the requests still running when shutdown's grace is over, instead of dropping their connections:
 * streams through `Gateway.cutStreams` (an error event), the rest (a JSON request, one waiting on the LLM
 * router) by aborting the client signal their response carries, with SHUTDOWN_CUT (their handlers answer
 * 503). Found through the server's connections: nothing is kept per request for it. Returns how many.
 */
export function cutRunning(gw: Gateway, sockets: Iterable<object>): number {
  let cut = gw.cutStreams();
  for (const socket of sockets) {
    const res = (socket as { _httpMessage?: WatchedResponse | null })._httpMessage;
    const signal = res?.[GONE];
    if (signal && !signal.aborted) {
      signal.abort(SHUTDOWN_CUT);
      cut++;
    }
  }
  return cut;
}

/** Fires when the client goes away before its response is complete. */
export function clientGoneSignal(reply: FastifyReply): Abort {
  const gone = new Abort();
  const res = reply.raw as WatchedResponse;
  res[GONE] = gone;
  res.on('close', onResponseClose); // 'close' comes once: `on` spares the wrapper `once` builds
  return gone;
}

export function failoverOptions(
  gw: Gateway,
  rt: Runtime,
  routeName: string,
  startedAt: number,
  reqId: string,
  plan: Plan,
  /** Its `n`, whether it streams, its max_tokens, its prompt's estimate. */
  features: Pick<RequestFeatures, 'choices' | 'stream' | 'requestedOutputTokens' | 'promptTokens'>,
): FailoverOptions {
  const routing = rt.loaded.config.routing;
  return {
    routeName,
    maxAttempts: routing.max_attempts,
    deadline: startedAt + routing.total_timeout_ms,
    now: gw.now,
    metrics: gw.metrics,
    logger: gw.logger,
    scrubber: rt.scrubber,
    reqId,
    choices: features.choices,
    coolingMs: plan.coolingMs,
    stream: features.stream,
    requestedOutputTokens: features.requestedOutputTokens,
    quotaTokens: quotaTokens(features),
    promptTokens: features.promptTokens,
    atQuota: plan.atQuota,
  };
}

/**
 * A stream takes the response over from fastify when it commits; headers hooks put on the reply (the rate
 * limiter's `x-ratelimit-*`) go out with the stream's own, as they would on a JSON answer: returned for the
 * stream's head (relay.ts commit), not set on the response one by one.
 */
function commitRaw(reply: FastifyReply): OutgoingHttpHeaders {
  const pending = reply.getHeaders(); // a copy
  for (const name in pending) if (pending[name] === undefined) delete pending[name];
  reply.hijack();
  return pending as OutgoingHttpHeaders;
}

/**
 * A route handler for an async function that sends its own reply, possibly after it has resolved (a JSON
 * answer may go out at the end of the turn: report.ts answerJson). Fastify is not given the promise: it
 * would send whatever it resolves to, and the way to make it wait, resolving to the reply itself, has it
 * wait on the reply through end-of-stream listeners on every request. A failure goes to the error handler
 * as a thrown one would.
 */
export function ownReply(
  app: FastifyInstance,
  handle: (
    gw: Gateway,
    rt: Runtime,
    req: FastifyRequest,
    reply: FastifyReply,
  ) => Promise<Answered | undefined>,
): (req: FastifyRequest, reply: FastifyReply) => void {
  const run = (req: FastifyRequest, reply: FastifyReply): void => {
    // The request runs on the config live at its start, whose pools stay open until it is done.
    const rt = app.gateway.runtime;
    rt.hold();
    handle(app.gateway, rt, req, reply).then(
      (answered) => {
        rt.release();
        // Never a request left hanging: a handler that ended without an answer is a bug, told as a 500.
        if (answered !== ANSWERED && !reply.sent && !reply.raw.destroyed) {
          void reply.send(new Error('the handler ended without an answer'));
        }
      },
      (err: unknown) => {
        rt.release();
        if (reply.sent) reply.log.error({ err, reqId: req.id }, 'request failed after its reply was sent');
        else void reply.send(err instanceof Error ? err : new Error(String(err)));
      },
    );
  };
  return (req, reply) => {
    if (reply.raw.socket === null) awaitTurn(app.gateway, req, reply, run);
    else run(req, reply);
  };
}

/** Per connection with requests pipelined behind an answer: what each waiting one does if the client goes. */
const waitingOn = new WeakMap<Socket, Set<() => void>>();

/**
 * A request pipelined behind an answer its connection has not finished waits for its turn (Node gives its
 * response the socket then), as nginx serves a pipeline: routed at once, every request of a pipeline went
 * upstream together for a client that might take none of the answers, and when that client left, only the
 * first was aborted (Node closes no response still queued): the others ran to their bounds, and their
 * timeouts opened a healthy upstream's breaker. One that waits when its client leaves is a 499, never routed.
 */
function awaitTurn(
  gw: Gateway,
  req: FastifyRequest,
  reply: FastifyReply,
  run: (req: FastifyRequest, reply: FastifyReply) => void,
): void {
  const socket = req.raw.socket;
  const left = (): void => {
    reply.raw.off('socket', onTurn);
    reportOnce(gw, req, CLIENT_CLOSED_REQUEST, reply.elapsedTime);
  };
  const onTurn = (): void => {
    waitingOn.get(socket)?.delete(left);
    // Its turn came as the gateway drains (the answer before it was cut at the grace's end): nothing may
    // start now that no one would cut, so it is refused as a request arriving now would be.
    if (gw.draining) void reply.send(shutdownError());
    else run(req, reply);
  };
  if (socket.destroyed) return left();
  let waiting = waitingOn.get(socket);
  if (waiting === undefined) {
    // One listener per connection, however long the pipeline.
    const all = (waiting = new Set());
    waitingOn.set(socket, all);
    socket.once('close', () => {
      for (const gone of all) gone();
      all.clear();
    });
  }
  waiting.add(left);
  reply.raw.once('socket', onTurn);
}

export async function chatPlugin(app: FastifyInstance): Promise<void> {
  app.post('/v1/chat/completions', ownReply(app, handleChat));
}

async function handleChat(
  gw: Gateway,
  rt: Runtime,
  req: FastifyRequest,
  reply: FastifyReply,
): Promise<Answered | undefined> {
  const startedAt = gw.now();
  // Let go of when a stream commits (no upstream is sent it again): a long prompt's parsed copy was kept for the
  // stream's whole life.
  let body: ChatBody | undefined = validateChatBody(req.body);
  const clientSignal = clientGoneSignal(reply);
  // A flat route decides synchronously: only a tiered one can have a promise to wait on.
  const pending = decideChat(gw, rt, body, req.headers, clientSignal);
  const decision = pending instanceof Promise ? await pending : pending;
  const { route, hdrs, features, strategy, tier, plan } = decision;
  let opts = failoverOptions(gw, rt, route.name, startedAt, req.id, plan, features);
  /** Candidates of other tiers a refusal as too long moved the request to, with their tier. */
  let movedTo: Map<RankedCandidate<RouteTarget>, TierName> | undefined;
  // A tier the client did not name: a refusal as too long may move the request to another tier's larger window,
  // as the plan moves it when the estimate says the chosen tier cannot hold it.
  if (route.tiers !== undefined && hdrs.tier === undefined && tier.tier !== undefined) {
    opts = {
      ...opts,
      widen: (window, attempts) => {
        const found = largerInOtherTiers(gw, rt, decision, window, attempts);
        movedTo = found.tiers;
        return found;
      },
    };
  }
  const includeUsage =
    (body.stream_options as { include_usage?: unknown } | undefined)?.include_usage === true;
  const created = Math.floor(Date.now() / 1000);
  let lastAttempts: readonly AttemptRecord[] = [];
  let current: RankedCandidate<RouteTarget> | undefined;
  /** The input of the attempt running now: its stream's commit lets go of the body in it too. */
  let sending: { body: ChatBody | undefined } | undefined;
  // A plain property, not a getter reading `body`: a getter made per object gave every input a shape of its
  // own, and the code that reads them went megamorphic (+18 CPU ms per 1,000 JSON requests, bench/ab-cpu.sh).
  const input = (target: RankedCandidate<RouteTarget>): AttemptInput => ({
    upstream: target.candidate.upstream,
    body: body!,
    clientSignal,
    deadline: opts.deadline,
    now: gw.now,
    stream: {
      model: target.candidate.upstream.model.name,
      includeUsage,
      created,
      choices: features.choices,
      json: features.json,
    },
  });
  const headersFor = (
    target: RankedCandidate<RouteTarget>,
    attempts: readonly AttemptRecord[],
  ): Record<string, string> =>
    routerHeaders(
      req.id,
      strategy,
      target.candidate.upstream,
      attempts,
      attempts.length + 1,
      report.tier,
      report.tierReason,
    );

  const report: RequestContext = {
    route: route.name,
    strategy,
    stream: features.stream,
    startedAt,
    ranked: plan.ranked,
    routerMs: tier.routerMs,
    routerCostUsd: tier.routerCostUsd,
    tier: tier.tier,
    tierReason: tier.reason,
    promptTokensEstimate: features.promptTokens,
  };
  // The client left while the LLM router was asked: nothing is routed for it (a shutdown's cut is told below).
  if (clientSignal.aborted && !isShutdown(clientSignal)) {
    reportRequest(gw, req, report, {
      status: CLIENT_CLOSED_REQUEST,
      served: undefined,
      attempts: [],
      upstreamMs: 0,
      error: 'client_closed',
    });
    return undefined;
  }
  const chosen = plan.ranked[0];
  if (chosen) gw.decisionChildren.get(route.name, strategy, chosen.candidate.upstream.provider.name).inc();
  let writer: SseWriter | undefined;
  try {
    if (plan.refusal) throw plan.refusal; // answered as routed: headers, and counted under its route
    if (features.stream) {
      writer = new SseWriter(
        reply.raw,
        clientSignal,
        () => {
          // The stream begins (or is cut, its request's signal aborted with it): no attempt follows.
          body = undefined;
          req.body = undefined;
          if (sending !== undefined) sending.body = undefined;
          return commitRaw(reply);
        },
        () =>
          routerHeaders(
            req.id,
            strategy,
            current?.candidate.upstream,
            lastAttempts,
            lastAttempts.length,
            report.tier,
            report.tierReason,
          ),
        gw.answerStallMs,
      );
      gw.liveStreams.set(writer, { signal: clientSignal, req });
    }
    const attempt = (
      target: RankedCandidate<RouteTarget>,
      attempts: readonly AttemptRecord[],
    ): Promise<AttemptResult> => {
      current = target;
      const moved = movedTo?.get(target);
      if (moved !== undefined && moved !== report.tier) {
        // The tier that serves, in the headers and the log line (the request's report is what both read).
        report.tier = moved;
        report.tierReason = `${tier.reason}; ${tier.tier} refused it as past its context window: ${moved} has a larger one`;
        report.ranked = [...report.ranked, target];
      }
      return writer
        ? attemptStream((sending = input(target)), writer, () => headersFor(target, attempts), opts.scrubber)
        : attemptJson(input(target));
    };
    const out = await runFailover(plan.ranked, opts, attempt, (a) => (lastAttempts = a));
    const served = out.target.candidate.upstream;
    if ('committedFailure' in out) {
      const last = out.attempts[out.attempts.length - 1];
      // Cut by shutdown (Gateway.cutStreams, or main.ts for the rest): not the client's leaving, nor the
      // upstream's fault. A JSON request is answered 503; a stream begun after the cut (its router call cut
      // short) is told now (a stream cut before is already told: cut() is then a no-op).
      const cut = isShutdown(clientSignal);
      if (cut && !writer) throw shutdownError();
      if (cut) writer?.cut(SHUTDOWN_ERROR);
      if (cut ? out.committed : last !== undefined && last.reason !== 'client_closed') {
        gw.metrics.streamFailures.inc({
          provider: served.provider.name,
          model: served.model.name,
          policy: route.onStreamFailure,
        });
      }
      reportRequest(gw, req, report, {
        // A response begun went out as a 200; one the client left before got nothing (nginx's 499).
        status: out.committed ? 200 : cut ? 503 : CLIENT_CLOSED_REQUEST,
        served,
        attempts: out.attempts,
        upstreamMs: out.upstreamMs,
        usage: out.usage, // what the upstream reported before the cut (a usage chunk, Anthropic's input)
        countedTokens: out.relayedTokens, // what the client was sent is paid for: counted like the prompt
        ttftMs: out.committed ? out.ttftMs : undefined,
        error: cut ? GATEWAY_SHUTDOWN : last?.reason,
      });
      return undefined;
    }
    const result = out.result;
    const outcome = {
      status: 200,
      served,
      attempts: out.attempts,
      upstreamMs: out.upstreamMs,
      ttftMs: result.ttftMs,
      heldMs: result.heldMs,
      noPace: result.noPace,
      usage: result.usage,
      countedTokens: result.countedTokens,
    };
    if (!writer) return answerJson(gw, reply, report, outcome, result.body);
    reportRequest(gw, req, report, outcome); // the stream is written: its counts and line follow
    return undefined;
  } catch (err) {
    throw failRequest(gw, req, reply, report, err, current?.candidate.upstream, lastAttempts);
  } finally {
    if (writer) gw.liveStreams.delete(writer);
  }
}

/** The 503 a JSON request still running when shutdown's grace is over gets. */
export function shutdownError(): GatewayError {
  return new GatewayError('gateway_shutdown', SHUTDOWN_ERROR.message, { retryAfterS: 1 });
}
