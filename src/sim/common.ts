import { randomBytes } from 'node:crypto';
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { SimBehaviour, SimOptions } from './options.js';

/** One request in flight, as the dialects see it. */
export interface Exchange {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly method: string;
  /** Path without the query string. */
  readonly path: string;
  /** Parsed JSON, the raw text when not JSON, undefined when empty. */
  readonly body: unknown;
  readonly b: SimBehaviour;
  readonly options: SimOptions;
  /** Fast mode: finished response bodies by variant + model. */
  readonly cache: Map<string, Buffer>;
  closed: boolean;
  /** We cut the connection ourselves (dropAfterChunks): not a client abort. */
  dropped: boolean;
  /** Cancels the pending sleep/drain wait when the client goes away. */
  cancelWait: (() => void) | undefined;
}

export interface ApiError {
  status: number;
  message: string;
  type?: string;
  param?: string | null;
  code?: string | null;
}

export interface Dialect {
  /** True when the request carries `apiKey` where this dialect expects it. */
  authorized(ex: Exchange, apiKey: string): boolean;
  authError(ex: Exchange): ApiError;
  /** The error a forced status (or a random failure) answers with. */
  forcedError(ex: Exchange, status: number): ApiError;
  errorBody(e: ApiError): string;
  /** The request's credential header value(s), for echoAuthInError. */
  credential(ex: Exchange): string | undefined;
  handle(ex: Exchange): Promise<void> | void;
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function header(ex: Exchange, name: string): string | undefined {
  const v = ex.req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

export function newId(prefix: string): string {
  return prefix + randomBytes(12).toString('base64url');
}

export function nowS(): number {
  return Math.floor(Date.now() / 1000);
}

/** ≈ 4 characters per token, at least 1 for any non-empty text. */
export function estimateTokens(chars: number): number {
  return chars <= 0 ? 0 : Math.max(1, Math.ceil(chars / 4));
}

/** Characters of text in a message content: a string, or an array of parts with `text`. */
export function contentChars(content: unknown): number {
  if (typeof content === 'string') return content.length;
  if (!Array.isArray(content)) return 0;
  let n = 0;
  for (const part of content) {
    if (isRecord(part)) {
      if (typeof part.text === 'string') n += part.text.length;
      else if (part.content !== undefined) n += contentChars(part.content); // Anthropic tool_result
    }
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// Socket plumbing: every wait is cancelled by the response's 'close' (see server.ts).

export function sleep(ex: Exchange, ms: number): Promise<boolean> {
  if (ex.closed) return Promise.resolve(false);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      ex.cancelWait = undefined;
      resolve(true);
    }, ms);
    ex.cancelWait = () => {
      clearTimeout(timer);
      ex.cancelWait = undefined;
      resolve(false);
    };
  });
}

/** Waits for 'drain' after res.write() returned false; false when the client went away instead. */
export function drained(ex: Exchange): Promise<boolean> {
  if (ex.closed) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onDrain = (): void => {
      ex.cancelWait = undefined;
      resolve(!ex.closed);
    };
    ex.res.once('drain', onDrain);
    ex.cancelWait = () => {
      ex.res.off('drain', onDrain);
      ex.cancelWait = undefined;
      resolve(false);
    };
  });
}

/** Cuts the connection mid-response. */
export function drop(ex: Exchange): void {
  ex.dropped = true;
  const sock = ex.res.socket;
  if (!sock) return;
  // http corks the socket until the next tick: let what was written reach the client before the cut.
  setImmediate(() => {
    if (sock.destroyed) return;
    if (sock.writableLength === 0) sock.destroy();
    else sock.once('drain', () => sock.destroy());
  });
}

const JSON_TYPE = 'application/json';

export function sendJson(
  res: ServerResponse,
  status: number,
  body: string | Buffer,
  extra?: OutgoingHttpHeaders,
): void {
  const headers: OutgoingHttpHeaders = {
    'content-type': JSON_TYPE,
    'content-length': typeof body === 'string' ? Buffer.byteLength(body) : body.length,
    ...extra,
  };
  res.writeHead(status, headers);
  res.end(body);
}

/** A successful JSON answer, with the header-level faults applied. */
export function replyJson(ex: Exchange, body: string | Buffer): void {
  const { res, b } = ex;
  if (b.hangAfterHeaders) {
    res.writeHead(200, { 'content-type': JSON_TYPE });
    res.flushHeaders();
    return;
  }
  if (b.dropAfterChunks !== undefined) {
    // Announce the full length, send half: the client sees a truncated body.
    const buf = typeof body === 'string' ? Buffer.from(body) : body;
    res.writeHead(200, { 'content-type': JSON_TYPE, 'content-length': buf.length });
    res.write(buf.subarray(0, buf.length >> 1));
    drop(ex);
    return;
  }
  sendJson(res, 200, body);
}

export function sendError(ex: Exchange, dialect: Dialect, e: ApiError): void {
  let message = e.message;
  if (ex.b.echoAuthInError) {
    const credential = dialect.credential(ex);
    if (credential !== undefined) message += ` (credential: ${credential})`;
  }
  const s = e.status;
  const extra: OutgoingHttpHeaders | undefined =
    ex.b.retryAfterS !== undefined && (s === 429 || s === 503 || s === 529)
      ? { 'retry-after': String(ex.b.retryAfterS) }
      : undefined;
  sendJson(ex.res, s, dialect.errorBody({ ...e, message }), extra);
}

// ---------------------------------------------------------------------------------------------
// Streams.

export interface StreamPlan {
  /** Sent with the headers: OpenAI role chunk, Anthropic message_start. */
  preamble: string;
  /** One SSE event (or a few glued) per content chunk. */
  chunks: string[];
  /** Everything after the content: finish, usage, [DONE] / message_stop. */
  outro: string;
  /** The in-stream error event (errorEventAfterChunks). */
  error: string;
}

const SSE_HEADERS: OutgoingHttpHeaders = Object.freeze({
  'content-type': 'text/event-stream',
  'cache-control': 'no-cache',
});

export function gapMs(b: SimBehaviour): number {
  return b.chunkDelayMs ?? (b.tokensPerS > 0 ? 1000 / b.tokensPerS : 0);
}

export function sseEvent(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

export function sseData(data: unknown): string {
  return `data: ${JSON.stringify(data)}\n\n`;
}

export async function streamSse(ex: Exchange, plan: StreamPlan): Promise<void> {
  const { res, b } = ex;
  res.writeHead(200, SSE_HEADERS);
  if (!res.write(plan.preamble) && !(await drained(ex))) return;
  if (b.hangAfterHeaders) return; // the response's 'close' cleans up
  const n = plan.chunks.length;
  const dropAt = b.dropAfterChunks === undefined ? -1 : Math.min(b.dropAfterChunks, n);
  const errorAt = b.errorEventAfterChunks === undefined ? -1 : Math.min(b.errorEventAfterChunks, n);
  const gap = ex.options.fast ? 0 : gapMs(b);
  for (let i = 0; i < n || i === dropAt || i === errorAt; i++) {
    if (i === dropAt) return drop(ex);
    if (i === errorAt) {
      res.end(plan.error);
      return;
    }
    if (i > 0 && gap > 0 && !(await sleep(ex, gap))) return;
    if (!res.write(plan.chunks[i]) && !(await drained(ex))) return;
  }
  if (b.endDelayMs !== undefined && b.endDelayMs > 0) {
    if (!res.write(plan.outro) && !(await drained(ex))) return;
    if (!(await sleep(ex, b.endDelayMs))) return;
    res.end();
    return;
  }
  res.end(plan.outro);
}

// ---------------------------------------------------------------------------------------------
// Replies: what to say, independent of the dialect's wire format.

export interface ToolTarget {
  name: string;
  /** The argument to fill, from the tool's JSON schema (default "location"). */
  argName: string;
}

export interface ChatRequest {
  model: string;
  stream: boolean;
  includeUsage: boolean;
  promptTokens: number;
  maxTokens: number | undefined;
  /** `n`: how many choices to answer (OpenAI; 1 for Anthropic). */
  choices: number;
  /** Set when the request offers a tool and a tool call is allowed (not after a tool result). */
  tool: ToolTarget | undefined;
  /** Anthropic extended thinking asked for: the answer opens with a thinking block. */
  thinking?: boolean;
}

export interface ReplyPlan {
  /** Text pieces, or the tool call's argument fragments. */
  chunks: string[];
  tool: { id: string; name: string; args: string } | undefined;
  finish: 'stop' | 'length' | 'tool';
}

export interface ChatRenderer {
  toolIdPrefix: string;
  json(ex: Exchange, chat: ChatRequest, plan: ReplyPlan): string;
  stream(ex: Exchange, chat: ChatRequest, plan: ReplyPlan): StreamPlan;
}

const WORDS = [
  'Hello',
  'from',
  '',
  'here:',
  'this',
  'is',
  'a',
  'simulated',
  'reply',
  'made',
  'of',
  'plain',
  'words',
  'for',
  'tests.',
];
const WORD_BREAK = /(?<=\s)(?=\S)/;

/** Deterministic default reply: n words, the third one the simulator's name. */
export function defaultReplyChunks(name: string, n: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const word = WORDS[i % WORDS.length] || name;
    out.push(i < n - 1 ? `${word} ` : word);
  }
  return out;
}

/** Splits into n contiguous pieces (fewer when the text is shorter), concatenating back to the text. */
export function splitEven(units: readonly string[], n: number): string[] {
  const out: string[] = [];
  const len = units.length;
  if (n <= 0 || len === 0) return out;
  for (let i = 0; i < n; i++) {
    const piece = units.slice(Math.floor((i * len) / n), Math.floor(((i + 1) * len) / n)).join('');
    if (piece !== '') out.push(piece);
  }
  return out;
}

/** Word boundaries when there are enough words, else code points. */
export function splitText(text: string, n: number): string[] {
  const words = text.split(WORD_BREAK);
  return splitEven(words.length >= n ? words : Array.from(text), n);
}

export function toolAllowed(b: SimBehaviour, chat: ChatRequest): boolean {
  return b.toolCall === true && chat.tool !== undefined;
}

export function planReply(ex: Exchange, chat: ChatRequest, toolIdPrefix: string): ReplyPlan {
  const { b } = ex;
  if (toolAllowed(b, chat) && chat.tool) {
    const args = JSON.stringify({ [chat.tool.argName]: 'Paris' });
    return {
      chunks: splitEven(Array.from(args), 4),
      tool: { id: newId(toolIdPrefix), name: chat.tool.name, args },
      finish: 'tool',
    };
  }
  const routerAnswer = b.reply === undefined ? tierRouterAnswer(ex.body) : undefined;
  let chunks =
    routerAnswer !== undefined
      ? splitText(routerAnswer, 4)
      : b.reply === undefined
        ? defaultReplyChunks(ex.options.name, b.completionTokens)
        : splitText(b.reply, b.completionTokens);
  let finish: ReplyPlan['finish'] = 'stop';
  if (chat.maxTokens !== undefined && chunks.length > chat.maxTokens) {
    chunks = chunks.slice(0, chat.maxTokens);
    finish = 'length';
  }
  return { chunks, tool: undefined, finish };
}

const ROUTER_PROMPT_START = 'You route requests to one of three model tiers.';

/**
 * The gateway's LLM-router classification request, recognised by its system prompt, gets a plausible
 * `{"tier","reason"}` answer (by the excerpt's length) so the demo's `auto` route works with no real model.
 */
export function tierRouterAnswer(body: unknown): string | undefined {
  if (!isRecord(body)) return undefined;
  const system = isRecord(body) && typeof body.system === 'string' ? body.system : undefined;
  const messages = Array.isArray(body.messages) ? body.messages : [];
  const first = messages[0];
  const prompt = system ?? (isRecord(first) && typeof first.content === 'string' ? first.content : '');
  if (!prompt.startsWith(ROUTER_PROMPT_START)) return undefined;
  const last = messages[messages.length - 1];
  const text = isRecord(last) && typeof last.content === 'string' ? last.content : '';
  const excerpt = text.slice(text.indexOf('Conversation excerpt'));
  const tier = excerpt.length > 600 ? 'deep' : excerpt.length > 200 ? 'balanced' : 'fast';
  return JSON.stringify({ tier, reason: `simulated router: excerpt of ${excerpt.length} chars` });
}

/** First property of a tool's JSON schema, the argument the simulated call fills. */
export function firstArgName(schema: unknown): string {
  if (isRecord(schema) && isRecord(schema.properties)) {
    const first = Object.keys(schema.properties)[0];
    if (first !== undefined) return first;
  }
  return 'location';
}

const FAST_CACHE_MAX = 256;

export async function answerChat(ex: Exchange, chat: ChatRequest, render: ChatRenderer): Promise<void> {
  // Fast mode reuses whole bodies per (variant, model): same id, created and usage for every answer.
  const cacheable =
    ex.options.fast &&
    !toolAllowed(ex.b, chat) &&
    (chat.maxTokens === undefined || chat.maxTokens >= ex.b.completionTokens);
  const key = cacheable ? `${chat.stream ? 's' : 'j'}${chat.includeUsage ? 'u' : '-'}${chat.model}` : '';
  let body = cacheable ? ex.cache.get(key) : undefined;
  if (body !== undefined && !chat.stream) return replyJson(ex, body);
  if (
    body !== undefined &&
    !ex.b.hangAfterHeaders &&
    ex.b.dropAfterChunks === undefined &&
    ex.b.errorEventAfterChunks === undefined
  ) {
    ex.res.writeHead(200, SSE_HEADERS);
    ex.res.end(body);
    return;
  }
  const plan = planReply(ex, chat, render.toolIdPrefix);
  if (!chat.stream) {
    // A whole answer arrives once it is generated: as long after the first token as its stream's last.
    const gap = ex.options.fast ? 0 : gapMs(ex.b);
    if (gap > 0 && plan.chunks.length > 1 && !(await sleep(ex, gap * (plan.chunks.length - 1)))) return;
    const text = render.json(ex, chat, plan);
    if (cacheable) body = remember(ex.cache, key, Buffer.from(text));
    return replyJson(ex, body ?? text);
  }
  const stream = render.stream(ex, chat, plan);
  if (cacheable)
    remember(ex.cache, key, Buffer.from(stream.preamble + stream.chunks.join('') + stream.outro));
  await streamSse(ex, stream);
}

function remember(cache: Map<string, Buffer>, key: string, body: Buffer): Buffer {
  if (cache.size >= FAST_CACHE_MAX) cache.clear(); // bounded: benchmarks use a handful of models
  cache.set(key, body);
  return body;
}
