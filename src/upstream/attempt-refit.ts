/** An attempt sent again to the same upstream, fitted to a field it refused (param-fit.ts). */
import type { ChatBody, StreamContext } from './adapter.js';
import { requestedOutputTokens } from '../routing/tokens.js';
import { localStopsFor } from './adapters/local-stops.js';
import type { AttemptInput, AttemptResult } from './attempt.js';

/** How many times one attempt is sent again, each time fitted to one more field its upstream refused. */
const MAX_REFITS = 4;

/**
 * After a failed send of `sent`: the body to send again, when the upstream refused a field a fit exists for,
 * the fit changes what is sent, and the attempt still has time (the request's deadline, and the provider's
 * total_ms from the first send: a slow refusing upstream cannot hold an attempt once per fit). Undefined:
 * the failure stands. A fit is not a failover: the same upstream answers.
 */
export function refitted(
  input: AttemptInput,
  sent: ChatBody,
  refits: number,
  firstStart: number,
  failed: AttemptResult,
): ChatBody | undefined {
  const fit = input.upstream.fit;
  if (refits >= MAX_REFITS || failed.ok || failed.status === undefined) return undefined;
  const now = input.now();
  if (failed.status >= 500 || now >= input.deadline) return undefined;
  if (now - firstStart >= input.upstream.provider.config.timeouts.total_ms) return undefined;
  const roomy = withRoomForAnswer(input, sent, failed);
  if (roomy !== undefined) {
    input.upstream.quota?.take(0);
    return roomy;
  }
  const param = fit.learn(failed.info, sent, input.body);
  if (param === undefined) return undefined;
  const next = ownLimitKept(input, sent, fit.apply(input.body));
  // The same field as it was just refused (a fit that cannot change it): sending it again would be refused again.
  if (next[param] === sent[param] && Object.hasOwn(next, param) === Object.hasOwn(sent, param))
    return undefined;
  // Sent again: one more request of the upstream's rpm (its tokens are the attempt's, settled at its end).
  input.upstream.quota?.take(0);
  return next;
}

/** Claude's refusal of a max_tokens past the room its window leaves: the prompt, the limit, the window. */
const NO_ROOM = /exceed context limit: (\d{1,12}) \+ (\d{1,12}) > (\d{1,12})/;
/** Below this room an answer is better asked of a larger window (failover) than cut this short. */
const MIN_ANSWER_ROOM = 1024;

/**
 * A Claude upstream refused the gateway's own default_max_tokens (the client asked for no limit) beside a
 * prompt that fits its window ("input length and `max_tokens` exceed context limit: 7000 + 4096 > 10000"): the
 * body with max_tokens set to the room the refusal states, as an API that caps it (OpenAI's) would have
 * answered. Undefined when the client set a limit (its own stands) or the room is under MIN_ANSWER_ROOM.
 */
function withRoomForAnswer(input: AttemptInput, sent: ChatBody, failed: AttemptResult): ChatBody | undefined {
  if (failed.ok || failed.status !== 400 || input.upstream.provider.kind !== 'anthropic') return undefined;
  if (requestedOutputTokens(input.body) !== undefined) return undefined;
  const m = NO_ROOM.exec(failed.info?.message ?? '');
  if (m === null) return undefined;
  const [prompt, refused, window] = [Number(m[1]), Number(m[2]), Number(m[3])];
  // The refusal's own sum must hold, and the room be less than what it refused: a limit only goes down.
  if (!(prompt + refused > window)) return undefined;
  const room = Math.min(window - prompt, input.upstream.fit.outputCap ?? Number.POSITIVE_INFINITY);
  return room >= MIN_ANSWER_ROOM && room < refused ? { ...sent, max_tokens: room } : undefined;
}

/**
 * `next` (the client's body fitted anew) with the limit the gateway itself set for room in an earlier send
 * kept, when the client set none: a refit for another field (a cap learned) must not send the default it
 * replaced again (which the window refuses, then the room again: round and round).
 */
function ownLimitKept(input: AttemptInput, sent: ChatBody, next: ChatBody): ChatBody {
  const own = sent.max_tokens;
  if (requestedOutputTokens(input.body) !== undefined || typeof own !== 'number') return next;
  const limit = Math.min(own, input.upstream.fit.outputCap ?? Number.POSITIVE_INFINITY);
  return typeof next.max_tokens === 'number' && next.max_tokens <= limit
    ? next
    : { ...next, max_tokens: limit };
}

/**
 * The answer to a send after a refused one: the refused send's time counts as time waiting on the upstream,
 * before the first token as well as in all (time per output token is the rest over the tokens: the refusal's
 * wait is not the model's pace).
 */
export async function afterRefused(
  refused: AttemptResult,
  next: Promise<AttemptResult>,
): Promise<AttemptResult> {
  const result = await next;
  return {
    ...result,
    totalMs: result.totalMs + refused.totalMs,
    ...(result.ttftMs === undefined ? {} : { ttftMs: result.ttftMs + refused.totalMs }),
  };
}

/** The client's body as this attempt's upstream takes it. */
export function fitted(input: AttemptInput): ChatBody {
  return input.upstream.fit.apply(input.body);
}

/**
 * The answer's context for one send of `sent` (the client's body, fitted): with the stop sequences the
 * upstream is not sent, which the gateway applies itself (adapters/local-stops.ts).
 */
export function contextFor(input: AttemptInput, sent: ChatBody): StreamContext {
  if (input.body.stop === undefined || input.body.stop === null) return input.stream;
  const stops = localStopsFor(input.upstream.provider.config.kind, input.body, sent);
  return stops.length === 0 ? input.stream : { ...input.stream, localStops: stops };
}
