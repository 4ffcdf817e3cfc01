/**
 * What one OpenAI-dialect upstream refuses of OpenAI's own request fields, learned from its 400s, so a route
 * alias works whatever model is behind it. A client names a route, not a model, and sends what its SDK
 * sends: `max_tokens` and a `temperature` to a route served by an OpenAI reasoning model (o-series, GPT-5)
 * get "Unsupported parameter: 'max_tokens' ... Use 'max_completion_tokens' instead" and "Only the default (1)
 * value is supported"; `reasoning_effort` (which the gateway turns into Claude's thinking) gets "Unrecognized
 * request argument supplied: reasoning_effort" from GPT-4o; `reasoning_effort: none` gets a list of the
 * values GPT-5 takes; Ollama refuses `minimal`, and any effort to a model that does not think. A 400 is a
 * client error (no failover), so each of these failed the whole request.
 *
 * Nothing is guessed from model names: a body goes as the client sent it until the upstream itself refuses
 * one of the fields below, by OpenAI's own wording or code. Then that same attempt is sent again with the field
 * fitted, and every later request to that upstream is fitted before it is sent. Token limits are only ever
 * renamed, never dropped, and lowered to the most the model writes once it says so (for Anthropic upstreams
 * too, the only fit they get); sampling and reasoning fields the model cannot take are dropped (the model's
 * default is what it would use anyway); a refused `reasoning_effort` value becomes the nearest one the
 * upstream lists. Any other 400 — another value out of range, a field not listed here — is relayed as before.
 */
import { createHash } from 'node:crypto';
import type { ChatBody, UpstreamErrorInfo } from './adapter.js';

/** What a refused field becomes: dropped, sent under another name, or (reasoning_effort) another value. */
export type FieldFit =
  | { readonly kind: 'drop' }
  | { readonly kind: 'rename'; readonly to: string }
  /** Refused value -> the value sent instead; `null`: the field is dropped for that value. */
  | { readonly kind: 'values'; readonly values: ReadonlyMap<string, string | null> }
  /** The token limit is lowered to the most the model writes (either name of it). */
  | { readonly kind: 'cap'; readonly max: number }
  /** `messages`: tool call ids of other providers sent as 9 letters and digits (Mistral's rule). */
  | { readonly kind: 'short_tool_ids' }
  /** Not sent; the gateway applies it to the answer (`stop`: adapters/local-stops.ts). */
  | { readonly kind: 'local' };

/** OpenAI's two names for the answer's token limit: reasoning models take only the new one, some servers only the old. */
const TOKEN_LIMITS: ReadonlyMap<string, string> = new Map([
  ['max_tokens', 'max_completion_tokens'],
  ['max_completion_tokens', 'max_tokens'],
]);

/**
 * Fields whose absence means "the model's default": what reasoning models refuse (sampling, log
 * probabilities, penalties), and what non-reasoning models refuse (reasoning's knobs). `top_logprobs` goes
 * with `logprobs` (it needs it).
 */
const DROPPABLE = new Set([
  'temperature',
  'top_p',
  'presence_penalty',
  'frequency_penalty',
  'logprobs',
  'top_logprobs',
  'logit_bias',
  'parallel_tool_calls',
  'reasoning_effort',
  'verbosity',
]);

/** OpenAI's reasoning efforts, least to most. */
const EFFORTS = ['none', 'minimal', 'low', 'medium', 'high', 'xhigh', 'max'];

/**
 * A field the upstream refused: the field itself, or (`value`) the value it was sent with; or (`limit`) a
 * token limit above `max`, the most the model writes.
 */
export type Refusal = (
  | {
      readonly param: string;
      readonly kind: 'parameter' | 'value';
      /** The values the upstream says it takes, when it lists them ("Supported values are: 'low', ..."). */
      readonly supported: readonly string[];
    }
  | { readonly param: string; readonly kind: 'limit'; readonly max: number }
  | { readonly param: 'messages'; readonly kind: 'tool_ids' }
) & {
  /** The words of the upstream's message that named the field, when its message (not its code) did. */
  readonly said?: string;
};

const NAME = '([A-Za-z_][A-Za-z0-9_]*)';
/**
 * OpenAI's (and Azure's) wordings, pydantic's for servers that forbid unknown fields (e.g. vLLM, SGLang), and
 * Google's.
 */
const PARAMETER_REFUSALS = [
  new RegExp(`Unrecognized request argument supplied: ${NAME}`),
  new RegExp(`Unsupported parameter: '${NAME}'`),
  new RegExp(`'${NAME}' is not supported with this model`),
  new RegExp(`'loc': \\('body', '${NAME}'\\)[^}]{0,200}Extra inputs are not permitted`),
  new RegExp(`"loc":\\s*\\["body",\\s*"${NAME}"\\][^}]{0,200}Extra inputs are not permitted`),
  new RegExp(`(?:^|; )body\\.${NAME}: Extra inputs are not permitted`),
  // Google's (Gemini's OpenAI endpoint): a top-level field it has no place for; "at 'x'" would be a nested one.
  new RegExp(`Unknown name "${NAME}": Cannot find field`),
];
const VALUE_REFUSAL = new RegExp(`Unsupported value: '${NAME}'`);
/** Ollama's: an effort it has no level for, and any effort to a model that does not think. */
const OLLAMA_EFFORT_VALUE = /invalid reasoning value: ['"]?[A-Za-z]+['"]? \(must be ([^)]{0,200})\)/;
const OLLAMA_NO_THINKING = /does not support thinking/;
/**
 * Mistral's: a tool call id minted by another provider (Claude's `toolu_...`, OpenAI's `call_...`) in the
 * history, when a route fails over to it mid agent loop.
 */
const MISTRAL_TOOL_ID = /Tool call id was .{0,300}? but must be a-z, A-Z, 0-9, with a length of 9/;

/**
 * A token limit above what the model writes, with that most: OpenAI's and Azure's ("max_tokens is too large:
 * 50000. This model supports at most 16384 completion tokens"), Anthropic's ("max_tokens: 100000 > 64000,
 * which is the maximum allowed number of output tokens"), Groq's ("`max_tokens` must be less than or equal
 * to `8192`") and DeepSeek's ("the valid range of max_tokens is [1, 8192]").
 */
const LIMIT_REFUSALS = [
  /(?<![\w.`])(max_(?:completion_)?tokens) is too large: \d+\. This model supports at most (\d+) completion tokens/,
  /(?<![\w.`])(max_tokens): \d+ > (\d+), which is the maximum allowed number of output tokens/,
  /(?<![\w.])`?(max_(?:completion_)?tokens)`? must be less than or equal to `?(\d+)`?/,
  /valid range of (max_(?:completion_)?tokens) is \[1, (\d+)\]/,
];

/** The field an upstream's 400 refuses, by its code or OpenAI's wording; undefined for any other error. */
export function refusalOf(info: UpstreamErrorInfo): Refusal | undefined {
  if (info.status !== 400 && info.status !== 422) return undefined;
  const message = info.message;
  for (const re of LIMIT_REFUSALS) {
    const m = re.exec(message);
    const max = m ? Number(m[2]) : 0;
    if (m && Number.isSafeInteger(max) && max > 0) return { param: m[1]!, kind: 'limit', max, said: m[0] };
  }
  const param = info.param !== null && /^[A-Za-z_][A-Za-z0-9_]*$/.test(info.param) ? info.param : undefined;
  if (param !== undefined && info.code === 'unsupported_parameter')
    return { param, kind: 'parameter', supported: [] };
  if (param !== undefined && info.code === 'unsupported_value')
    return { param, kind: 'value', supported: supportedValues(message) };
  for (const re of PARAMETER_REFUSALS) {
    const m = re.exec(message);
    if (m) return { param: m[1]!, kind: 'parameter', supported: [], said: m[0] };
  }
  const v = VALUE_REFUSAL.exec(message);
  if (v) return { param: v[1]!, kind: 'value', supported: supportedValues(message), said: v[0] };
  const ollama = OLLAMA_EFFORT_VALUE.exec(message);
  if (ollama) {
    return { param: 'reasoning_effort', kind: 'value', supported: quoted(ollama[1]!), said: ollama[0] };
  }
  const none = OLLAMA_NO_THINKING.exec(message);
  if (none) return { param: 'reasoning_effort', kind: 'parameter', supported: [], said: none[0] };
  const ids = MISTRAL_TOOL_ID.exec(message);
  if (ids) return { param: 'messages', kind: 'tool_ids', said: ids[0] };
  return undefined;
}

/**
 * Some string in `value` (the body, at any depth) holds `words`: text the client wrote, which an upstream may
 * quote back. Its strings, not its serialisation, whose escapes (`\"`) would hide a quote-bearing wording.
 */
function carries(value: unknown, words: string): boolean {
  if (typeof value === 'string') return value.includes(words);
  if (value === null || typeof value !== 'object') return false;
  for (const v of Array.isArray(value) ? value : Object.values(value)) if (carries(v, words)) return true;
  return false;
}

/** "Supported values are: 'minimal', 'low', 'medium', and 'high'." -> the quoted values. */
function supportedValues(message: string): string[] {
  const at = message.search(/supported values are/i);
  return at < 0 ? [] : quoted(message.slice(at));
}

function quoted(text: string): string[] {
  return [...text.matchAll(/['"]([A-Za-z0-9_-]{1,32})['"]/g)].map((m) => m[1]!);
}

/**
 * The supported effort nearest to `value`, the lower on a tie (never spend more than asked: `minimal` to a
 * model taking `none` and `low` is sent as `none`); null when none is known.
 */
export function nearestEffort(value: string, supported: readonly string[]): string | null {
  const at = EFFORTS.indexOf(value);
  let best = -1;
  for (const s of supported) {
    const i = EFFORTS.indexOf(s);
    if (i < 0 || i === at) continue;
    if (
      best < 0 ||
      Math.abs(i - at) < Math.abs(best - at) ||
      (Math.abs(i - at) === Math.abs(best - at) && i < best)
    )
      best = i;
  }
  return at < 0 || best < 0 ? null : EFFORTS[best]!;
}

/** The fits one upstream has needed so far. Bounded: at most one per field listed above. */
export class ParamFit {
  readonly #fits = new Map<string, FieldFit>();
  /** The most output tokens the model writes, once an upstream said so: a larger limit is lowered to it. */
  #cap: number | undefined;
  /** An Anthropic upstream refused the gateway's own default limit: a body without one is given the cap. */
  #capsDefault = false;
  /** Tool call ids go as 9 letters and digits (Mistral's rule), each from its hash: pairs stay paired. */
  #shortToolIds = false;

  /**
   * `limitsOnly`: learn only output caps (an Anthropic upstream, whose body the gateway writes: the client's
   * other fields are translated, not sent as they are).
   */
  constructor(
    private readonly onLearn?: (param: string, fit: FieldFit, value?: string) => void,
    private readonly limitsOnly = false,
  ) {}

  /** The most output tokens this upstream said it writes (learned from a refusal), if it said so. */
  get outputCap(): number | undefined {
    return this.#cap;
  }

  /** The body as this upstream takes it: the same object when nothing learned applies to it. */
  apply(body: ChatBody): ChatBody {
    if (this.#fits.size === 0 && this.#cap === undefined && !this.#shortToolIds) return body;
    let out: Record<string, unknown> | undefined;
    if (this.#shortToolIds) {
      const messages = withShortToolIds(body.messages);
      if (messages !== undefined) (out ??= { ...body }).messages = messages;
    }
    const cap = this.#cap;
    if (cap !== undefined) {
      let limited = false;
      for (const name of TOKEN_LIMITS.keys()) {
        const n = body[name];
        if (n === undefined || n === null) continue; // null: no limit asked (OpenAI takes it so)
        limited = true;
        if (typeof n === 'number' && n > cap) (out ??= { ...body })[name] = cap;
      }
      // Anthropic: without the client's limit the gateway sends its default (plus thinking room), which the
      // model refused: the cap is the limit then.
      if (!limited && this.#capsDefault) (out ??= { ...body }).max_tokens = cap;
    }
    for (const [param, fit] of this.#fits) {
      if (!Object.hasOwn(body, param)) continue;
      out ??= { ...body };
      const value = out[param];
      if (fit.kind === 'drop' || fit.kind === 'local') {
        delete out[param];
        if (param === 'logprobs') delete out.top_logprobs;
      } else if (fit.kind === 'rename') {
        delete out[param];
        // The other name left null (`max_completion_tokens: null` beside `max_tokens: 100`) holds no limit.
        if (body[fit.to] === undefined || body[fit.to] === null) out[fit.to] = value;
      } else if (fit.kind === 'values' && typeof value === 'string' && fit.values.has(value)) {
        const to = fit.values.get(value)!;
        if (to === null) delete out[param];
        else out[param] = to;
      }
    }
    return (out as ChatBody | undefined) ?? body;
  }

  /**
   * Learns from an upstream's error to a request whose body was `sent` (the client's body `asked`, fitted):
   * the field it refused, when that is one of the fields above, `sent` carries it and a fit for it is now
   * known; undefined when there is nothing to fit.
   */
  learn(info: UpstreamErrorInfo | undefined, sent: ChatBody, asked: ChatBody = sent): string | undefined {
    if (!info) return undefined;
    const refusal = refusalOf(info);
    // Upstreams quote a refused value back ("Invalid value: '...'"): words the client itself sent are its own,
    // not the upstream's, or one client could set a fit (a 1-token cap, a dropped field) for every other.
    if (refusal?.said !== undefined && carries(sent, refusal.said)) return undefined;
    if (refusal?.kind === 'limit') return this.#learnCap(refusal.param, refusal.max, sent);
    if (refusal?.kind === 'tool_ids') {
      if (this.limitsOnly) return undefined;
      if (!this.#shortToolIds) {
        this.#shortToolIds = true;
        this.onLearn?.('messages', { kind: 'short_tool_ids' });
      }
      return 'messages';
    }
    if (!refusal || this.limitsOnly || !Object.hasOwn(sent, refusal.param)) return undefined;
    const { param } = refusal;
    const other = TOKEN_LIMITS.get(param); // a Map: an upstream's `constructor` is a plain string
    const known = this.#fits.get(param);
    if (other !== undefined) {
      // Renamed only: a server that refuses both names gets the client's field and relays its own 400.
      if (refusal.kind !== 'parameter' || this.#fits.has(other)) return undefined;
      return known !== undefined ? param : this.#learn(param, { kind: 'rename', to: other });
    }
    // Stop sequences the model refuses (OpenAI's reasoning models) are the gateway's to apply to its answer.
    if (param === 'stop' && refusal.kind === 'parameter')
      return known?.kind === 'local' ? param : this.#learn(param, { kind: 'local' });
    if (!DROPPABLE.has(param)) return undefined;
    if (param === 'reasoning_effort' && refusal.kind === 'value') {
      // Mapped from the client's own value, so a deployment that changed (GPT-5 to 5.1 behind one name) is
      // mapped anew. Only OpenAI's efforts are learned: a client's made-up values must not grow this map.
      const value = asked[param];
      if (typeof value !== 'string' || !EFFORTS.includes(value)) return undefined;
      const map = known?.kind === 'values' ? known.values : undefined;
      // undefined: the client's value goes as asked.
      const next = refusal.supported.includes(value) ? undefined : nearestEffort(value, refusal.supported);
      if (next === map?.get(value)) return param; // nothing new: an identical body is not sent again
      const values = new Map(map);
      if (next === undefined) values.delete(value);
      else values.set(value, next);
      if (values.size > 0) return this.#learn(param, { kind: 'values', values }, value);
      this.#fits.delete(param);
      this.onLearn?.(param, { kind: 'values', values }, value);
      return param;
    }
    return known?.kind === 'drop' ? param : this.#learn(param, { kind: 'drop' });
  }

  /**
   * An output cap, when the body sent asked for more under either name (an Anthropic upstream names its own
   * field, whichever name the client used); the token limit sent is the field returned.
   */
  #learnCap(named: string, max: number, sent: ChatBody): string | undefined {
    let limited = false;
    for (const name of [named, ...TOKEN_LIMITS.keys()]) {
      const n = sent[name];
      if (n === undefined || n === null) continue;
      limited = true;
      if (typeof n !== 'number' || n <= max) continue;
      return this.#lowerCap(name, max);
    }
    // An Anthropic upstream refusing the gateway's own default max_tokens (the client set none).
    if (limited || !this.limitsOnly) return undefined;
    this.#capsDefault = true;
    return this.#lowerCap('max_tokens', max);
  }

  #lowerCap(name: string, max: number): string {
    if (this.#cap === undefined || max < this.#cap) {
      this.#cap = max;
      this.onLearn?.(name, { kind: 'cap', max });
    }
    return name;
  }

  #learn(param: string, fit: FieldFit, value?: string): string {
    this.#fits.set(param, fit);
    this.onLearn?.(param, fit, value);
    return param;
  }

  /** For /router/status: each fitted field (a refused effort as `reasoning_effort=none`) and what it becomes. */
  snapshot(): Record<string, string> {
    const out: Record<string, string> = {};
    if (this.#cap !== undefined) out.output_tokens = `at most ${this.#cap}`;
    if (this.#shortToolIds) out.tool_call_ids = fitted({ kind: 'short_tool_ids' });
    for (const [param, fit] of this.#fits) {
      if (fit.kind !== 'values') out[param] = fitted(fit);
      else
        for (const [from, to] of fit.values)
          out[`${param}=${from}`] = to === null ? 'dropped' : `sent as ${to}`;
    }
    return out;
  }
}

function fitted(fit: Exclude<FieldFit, { kind: 'values' }>): string {
  if (fit.kind === 'cap') return `at most ${fit.max}`;
  if (fit.kind === 'short_tool_ids') return 'tool call ids sent as 9 letters and digits';
  if (fit.kind === 'local') return 'applied by the gateway';
  return fit.kind === 'drop' ? 'dropped' : `sent as ${fit.to}`;
}

/** A learned fit in words, for the log: "max_tokens (sent as max_completion_tokens)". */
export function describeFit(param: string, fit: FieldFit, value: string | undefined): string {
  if (fit.kind !== 'values') return `${param} (${fitted(fit)})`;
  const to = value === undefined ? undefined : fit.values.get(value);
  return `${param} ${value ?? ''} (${to === undefined ? 'sent as asked' : to === null ? 'dropped' : `sent as ${to}`})`;
}

const SHORT_TOOL_ID = /^[A-Za-z0-9]{9}$/;
const BASE62 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/** 9 letters and digits from the id's hash: the same id always the same, so a call and its result still pair. */
function shortToolId(id: string): string {
  const digest = createHash('sha256').update(id).digest();
  let out = '';
  for (let i = 0; i < 9; i++) out += BASE62[digest[i]! % 62];
  return out;
}

/** `messages` with every tool call id not already 9 letters and digits shortened; undefined when none is. */
function withShortToolIds(messages: unknown): unknown[] | undefined {
  if (!Array.isArray(messages)) return undefined;
  let out: unknown[] | undefined;
  const short = (id: unknown): unknown =>
    typeof id === 'string' && !SHORT_TOOL_ID.test(id) ? shortToolId(id) : id;
  for (let i = 0; i < messages.length; i++) {
    const m: unknown = messages[i];
    if (typeof m !== 'object' || m === null) continue;
    const msg = m as Record<string, unknown>;
    let next: Record<string, unknown> | undefined;
    if (Array.isArray(msg.tool_calls)) {
      const calls = msg.tool_calls.map((c: unknown) => {
        if (typeof c !== 'object' || c === null) return c;
        const call = c as Record<string, unknown>;
        const id = short(call.id);
        return id === call.id ? c : { ...call, id };
      });
      if (calls.some((c, k) => c !== (msg.tool_calls as unknown[])[k])) next = { ...msg, tool_calls: calls };
    }
    const result = short(msg.tool_call_id);
    if (result !== msg.tool_call_id) next = { ...(next ?? msg), tool_call_id: result };
    if (next !== undefined) (out ??= messages.slice())[i] = next;
  }
  return out;
}
