/**
 * A whole `chat.completion` as the chunks of a stream, and a stream's chunks as one `chat.completion`: for
 * an upstream that answers in the other form than it was asked (a server or proxy that ignores `stream`, or
 * one that always streams). Relayed as it came, the client's SDK would fail on it; failed over, a working
 * upstream would be counted as broken. Both are rare paths: nothing here runs for an upstream that answers
 * in the form it was asked.
 */

import { ANSWER_TEXT_FIELDS } from '../text.js';
import { isObject, type JsonObject as Json } from '../upstream/adapters/common.js';

/** Top-level fields a chunk carries over from its completion. */
const CARRIED = ['id', 'created', 'model', 'system_fingerprint', 'service_tier'] as const;

/** A chunk's id, object, created and model: the head a chunk the gateway writes after it carries. */
export function chunkHead(chunk: Json): Json {
  return { id: chunk.id, object: chunk.object, created: chunk.created, model: chunk.model };
}

export interface CompletionChunks {
  /** Chunk JSON texts in order: deltas, then finish reasons, then (when asked for) the usage. */
  readonly chunks: { readonly json: string; readonly content: boolean }[];
  /** Some choice said why it stopped (an answer with no content is then an empty answer, not none). */
  readonly finished: boolean;
}

/**
 * The stream a client would have got for `completion`: one chunk with every choice's message as its delta
 * (tool calls numbered), one with the finish reasons, and a usage chunk when the client asked for one.
 */
export function chunksOfCompletion(completion: Json, includeUsage: boolean): CompletionChunks {
  const head: Json = { object: 'chat.completion.chunk' };
  for (const key of CARRIED) if (completion[key] !== undefined) head[key] = completion[key];
  const choices = Array.isArray(completion.choices) ? completion.choices.filter(isObject) : [];
  const deltas: Json[] = [];
  const ends: Json[] = [];
  let content = false;
  let finished = false;
  for (const [i, choice] of choices.entries()) {
    const index = typeof choice.index === 'number' ? choice.index : i;
    const message = isObject(choice.message) ? choice.message : {};
    const { role: _role, ...delta }: Json = message;
    if (Array.isArray(message.tool_calls)) {
      delta.tool_calls = message.tool_calls.map((call: unknown, k) =>
        isObject(call) ? { index: k, ...call } : call,
      );
    }
    content ||= carriesContent(delta);
    deltas.push({ index, delta, logprobs: choice.logprobs ?? null, finish_reason: null });
    const reason = typeof choice.finish_reason === 'string' ? choice.finish_reason : null;
    finished ||= reason !== null;
    ends.push({ index, delta: {}, finish_reason: reason });
  }
  // A role chunk first, as OpenAI's streams open: the openai SDK keeps a first chunk's logprobs object and
  // appends that same chunk's list to it again (every logprob twice).
  const roles = deltas.map(({ index }) => ({
    index,
    delta: { role: 'assistant' },
    logprobs: null,
    finish_reason: null,
  }));
  const chunks = [
    { json: JSON.stringify({ ...head, choices: roles }), content: false },
    { json: JSON.stringify({ ...head, choices: deltas }), content },
    { json: JSON.stringify({ ...head, choices: ends }), content: false },
  ];
  if (includeUsage && isObject(completion.usage))
    chunks.push({ json: JSON.stringify({ ...head, choices: [], usage: completion.usage }), content: false });
  return { chunks, finished };
}

function carriesContent(delta: Json): boolean {
  for (const key of APPENDED) {
    const v = delta[key];
    if ((typeof v === 'string' || Array.isArray(v)) && v.length > 0) return true; // text, or a list of parts
  }
  for (const key of ['tool_calls', 'images']) {
    const v = delta[key];
    if (Array.isArray(v) && v.length > 0) return true;
  }
  return delta.function_call != null || delta.audio != null;
}

/** One choice as it is built from its deltas. */
interface BuiltChoice {
  readonly index: number;
  readonly message: Json;
  /** Tool calls by their `index` in the deltas. */
  readonly toolCalls: Map<
    number,
    { id?: unknown; type?: unknown; function: { name: string; arguments: string } }
  >;
  logprobs: Json | null;
  finish_reason: string | null;
}

/** Delta fields that arrive in pieces: appended (so are `images`). Every other field replaces what came before. */
const APPENDED: ReadonlySet<string> = new Set(ANSWER_TEXT_FIELDS);
/**
 * Bounds the choices and tool calls one answer may build, together (OpenAI's `n` is at most 128): past it the
 * answer is no answer (`finished()` false), never a truncated one served as whole.
 */
const MAX_PARTS = 4096;

/**
 * Merges a stream's chunks into the `chat.completion` a non-streaming call would have answered, as the
 * OpenAI SDK's stream helper does: text fields appended, tool calls gathered by their `index` (arguments
 * appended), other fields replaced, logprobs lists appended, the last usage seen kept.
 */
export class CompletionBuilder {
  private readonly head: Json = {};
  private readonly choices = new Map<number, BuiltChoice>();
  private usage: unknown;
  /** Choices and tool calls made so far; past MAX_PARTS the answer is refused. */
  private parts = 0;
  /** Counts one more part; false past the bound. */
  private readonly take = (): boolean => ++this.parts <= MAX_PARTS;

  add(chunk: Json): void {
    for (const key of CARRIED)
      if (this.head[key] === undefined && chunk[key] !== undefined && chunk[key] !== '')
        this.head[key] = chunk[key];
    if (isObject(chunk.usage)) this.usage = chunk.usage;
    if (!Array.isArray(chunk.choices)) return;
    for (const raw of chunk.choices) {
      if (!isObject(raw)) continue;
      const choice = this.choice(typeof raw.index === 'number' ? raw.index : 0);
      if (!choice) continue;
      if (isObject(raw.delta)) mergeDelta(choice, raw.delta, this.take);
      if (isObject(raw.logprobs)) choice.logprobs = mergeLogprobs(choice.logprobs, raw.logprobs);
      if (typeof raw.finish_reason === 'string' && raw.finish_reason !== '')
        choice.finish_reason = raw.finish_reason;
    }
  }

  /** Some choice said why it stopped. */
  finished(): boolean {
    if (this.parts > MAX_PARTS) return false;
    for (const choice of this.choices.values()) if (choice.finish_reason !== null) return true;
    return false;
  }

  completion(): Json {
    const choices = [...this.choices.values()]
      .sort((a, b) => a.index - b.index)
      .map(({ index, message, toolCalls, logprobs, finish_reason }) => {
        const calls = [...toolCalls.entries()].sort((a, b) => a[0] - b[0]).map(([, call]) => call);
        // As a JSON answer has it: no text beside tool calls or a refusal is null, an empty text answer "".
        const text =
          typeof message.content === 'string' && message.content !== '' ? message.content : undefined;
        const refused = typeof message.refusal === 'string' && message.refusal !== '';
        const content = text ?? (calls.length > 0 || refused ? null : (message.content ?? ''));
        return {
          index,
          message: calls.length > 0 ? { ...message, content, tool_calls: calls } : { ...message, content },
          logprobs,
          finish_reason,
        };
      });
    const out: Json = { ...this.head, object: 'chat.completion', choices };
    if (this.usage !== undefined) out.usage = this.usage;
    return out;
  }

  private choice(index: number): BuiltChoice | undefined {
    let choice = this.choices.get(index);
    if (!choice && this.take()) {
      choice = {
        index,
        message: { role: 'assistant', content: null, refusal: null },
        toolCalls: new Map(),
        logprobs: null,
        finish_reason: null,
      };
      this.choices.set(index, choice);
    }
    return choice;
  }
}

function mergeDelta(choice: BuiltChoice, delta: Json, take: () => boolean): void {
  const { message } = choice;
  for (const [key, value] of Object.entries(delta)) {
    // An upstream's `__proto__` key is data, never this object's prototype (SPEC §8).
    if (value === null || value === undefined || key === '__proto__') continue;
    if (key === 'tool_calls') {
      if (Array.isArray(value))
        for (const part of value) if (isObject(part)) mergeToolCall(choice, part, take);
    } else if (key === 'function_call' || key === 'audio') {
      if (isObject(value)) message[key] = mergeFragments(message[key], value);
    } else if (APPENDED.has(key) && (typeof value === 'string' || Array.isArray(value))) {
      message[key] = appended(message[key], value);
    } else if (key === 'images' && Array.isArray(value)) {
      message.images = appendAll(Array.isArray(message.images) ? message.images : [], value);
    } else message[key] = value;
  }
}

/**
 * A text field with its next piece: text appended to text; once a piece is a list of parts (Mistral's
 * thinking), the field is a list (text pieces become, or extend, a text part).
 */
function appended(had: unknown, piece: string | readonly unknown[]): string | unknown[] {
  if (typeof piece === 'string' && !Array.isArray(had)) return (typeof had === 'string' ? had : '') + piece;
  const list: unknown[] = Array.isArray(had)
    ? had
    : typeof had === 'string' && had !== ''
      ? [{ type: 'text', text: had }]
      : [];
  if (typeof piece !== 'string') appendAll(list, piece);
  else if (piece !== '') {
    const last = list.at(-1);
    if (isObject(last) && last.type === 'text' && typeof last.text === 'string') last.text += piece;
    else list.push({ type: 'text', text: piece });
  }
  return list;
}

/** `items` pushed one by one: a spread of an upstream's list that long overflows the stack. */
function appendAll(list: unknown[], items: readonly unknown[]): unknown[] {
  for (const item of items) list.push(item);
  return list;
}

function mergeToolCall(choice: BuiltChoice, part: Json, take: () => boolean): void {
  const at = typeof part.index === 'number' ? part.index : choice.toolCalls.size;
  let call = choice.toolCalls.get(at);
  if (!call) {
    if (!take()) return;
    call = { function: { name: '', arguments: '' } };
    choice.toolCalls.set(at, call);
  }
  if (part.id != null) call.id = part.id;
  if (part.type != null) call.type = part.type;
  const fn = isObject(part.function) ? part.function : {};
  if (typeof fn.name === 'string' && fn.name !== '') call.function.name = fn.name;
  if (typeof fn.arguments === 'string') call.function.arguments += fn.arguments;
}

/** A legacy `function_call` or an `audio` part: its `arguments`, `data` and `transcript` come in pieces. */
function mergeFragments(had: unknown, part: Json): Json {
  const out: Json = isObject(had) ? { ...had } : {};
  for (const [key, value] of Object.entries(part)) {
    if (value === null || value === undefined || key === '__proto__') continue;
    const piece = key === 'arguments' || key === 'data' || key === 'transcript';
    out[key] = piece && typeof value === 'string' && typeof out[key] === 'string' ? out[key] + value : value;
  }
  return out;
}

function mergeLogprobs(had: Json | null, part: Json): Json {
  const out: Json = had ?? {};
  for (const [key, value] of Object.entries(part)) {
    if (key === '__proto__') continue;
    const list = out[key];
    if (Array.isArray(value)) {
      if (Array.isArray(list)) for (const item of value as unknown[]) list.push(item);
      else out[key] = [...(value as unknown[])];
    } else if (value !== null && list === undefined) out[key] = value;
  }
  return out;
}
