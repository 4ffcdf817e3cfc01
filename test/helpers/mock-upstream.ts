import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { closeableServer, type Track } from './cleanup.js';

/** For hand-written upstream mocks: a JSON answer with its status and any extra headers. */
export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

/**
 * A gate a mock upstream waits on for the client's word ("I have seen the first part"), bounded so a test
 * that never opens it still ends: `wait` resolves 'client' when opened, 'bound' when the bound ran out.
 */
export function gate(boundMs = 3000): { open(): void; wait: Promise<'client' | 'bound'> } {
  let open!: () => void;
  const wait = new Promise<'client' | 'bound'>((resolve) => {
    const t = setTimeout(() => resolve('bound'), boundMs);
    open = () => {
      clearTimeout(t);
      resolve('client');
    };
  });
  return { open, wait };
}

/** A hand-written upstream on loopback that keeps the JSON bodies it was sent, in order. */
export interface RecordingMock {
  url: string;
  bodies: Record<string, unknown>[];
  /** The same bodies as the text that came over the wire. */
  texts: string[];
  close(): Promise<void>;
}

/** Starts a RecordingMock on 127.0.0.1:0: `answer(body, n, res)` writes the answer to the n-th request (0-based). */
export async function startRecordingMock(
  answer: (body: Record<string, unknown>, n: number, res: ServerResponse) => void,
): Promise<RecordingMock> {
  const bodies: Record<string, unknown>[] = [];
  const texts: string[] = [];
  const server = createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (text += c));
    req.on('end', () => {
      const body = JSON.parse(text) as Record<string, unknown>;
      bodies.push(body);
      texts.push(text);
      answer(body, bodies.length - 1, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const closeable = closeableServer(server);
  return {
    url: `http://127.0.0.1:${port}`,
    bodies,
    texts,
    close: async () => void (await closeable.close()),
  };
}

type Json = Record<string, unknown>;

/** An OpenAI 400 as OpenAI words it: `{error: {message, type: invalid_request_error, param, code}}`. */
export function refuseAsOpenAI(
  res: ServerResponse,
  message: string,
  param: string | null,
  code: string | null,
): void {
  sendJson(res, 400, { error: { message, type: 'invalid_request_error', param, code } });
}

/** One `chat.completion.chunk` SSE frame of `model` with a single choice. */
export function chunkFrame(model: unknown, delta: Json, finish: string | null = null): string {
  const chunk = {
    id: 'c',
    object: 'chat.completion.chunk',
    created: 1,
    model: String(model),
    choices: [{ index: 0, delta, finish_reason: finish }],
  };
  return `data: ${JSON.stringify(chunk)}\n\n`;
}

/** A `chat.completion` object answering `body` with "hi", its usage saying `completionTokens`. */
export function chatCompletion(body: Json, completionTokens = 2): Json {
  return {
    id: 'chatcmpl-x',
    object: 'chat.completion',
    created: 1,
    model: String(body.model),
    choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 5, completion_tokens: completionTokens, total_tokens: 5 + completionTokens },
  };
}

/** A 500 in OpenAI's error shape. */
export function fail500(res: ServerResponse): void {
  sendJson(res, 500, { error: { message: 'boom', type: 'server_error', param: null, code: null } });
}

/** A Chat Completions answer of `text` to `body`: JSON, or (`stream: true`) role, text and finish chunks. */
export function answerChat(res: ServerResponse, body: Json, text: string): void {
  if (body.stream !== true) {
    sendJson(res, 200, {
      id: 'chatcmpl-1',
      object: 'chat.completion',
      created: 1,
      model: String(body.model),
      choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
    });
    return;
  }
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  const m = body.model;
  res.end(
    `${chunkFrame(m, { role: 'assistant', content: '' })}${chunkFrame(m, { content: text })}${chunkFrame(m, {}, 'stop')}data: [DONE]\n\n`,
  );
}

/** As o3, o4-mini and GPT-5 answer a body with `stop` ("Unsupported parameter"): true when it was refused so. */
export function refusedStopAsO3(body: Json, res: ServerResponse): boolean {
  if (!('stop' in body)) return false;
  refuseAsOpenAI(
    res,
    "Unsupported parameter: 'stop' is not supported with this model.",
    'stop',
    'unsupported_parameter',
  );
  return true;
}

/**
 * As OpenAI's reasoning models (GPT-5, o-series) answer `max_tokens` and a `temperature` other than 1: true
 * when `body` was refused so.
 */
export function refusedAsGpt5(body: Json, res: ServerResponse): boolean {
  if ('max_tokens' in body) {
    refuseAsOpenAI(
      res,
      "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
      'max_tokens',
      'unsupported_parameter',
    );
    return true;
  }
  if ('temperature' in body && body.temperature !== 1) {
    refuseAsOpenAI(
      res,
      `Unsupported value: 'temperature' does not support ${String(body.temperature)} with this model. Only the default (1) value is supported.`,
      'temperature',
      'unsupported_value',
    );
    return true;
  }
  return false;
}

/** One request a mock received: its path, headers and JSON body (`{}` when it had none). */
export interface Received {
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: Json;
}

export type MockHandler = (req: Received, res: ServerResponse, n: number) => void | Promise<void>;

/**
 * A hand-written upstream on 127.0.0.1:0 that keeps every request it was sent (path, headers, body) and
 * hands each to `handler` with its 0-based index; a handler that throws gets its connection destroyed.
 */
export async function startMock(
  handler: MockHandler,
): Promise<{ url: string; received: Received[]; close(): Promise<void> }> {
  const received: Received[] = [];
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      const r: Received = {
        path: req.url ?? '',
        headers: req.headers,
        body: JSON.parse(Buffer.concat(parts).toString('utf8') || '{}') as Json,
      };
      received.push(r);
      void Promise.resolve(handler(r, res, received.length - 1)).catch(() => res.destroy());
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const closeable = closeableServer(server);
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    received,
    close: async () => void (await closeable.close()),
  };
}

/**
 * An upstream that misbehaves exactly as a test says (a real server on 127.0.0.1:0, handed to `track`): the
 * handler runs once the request body has been read.
 */
export async function startRawUpstream(
  track: Track,
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<{ url: string; hits: () => number }> {
  let hits = 0;
  const server = createServer((req, res) => {
    hits++;
    req.resume();
    req.on('end', () => handler(req, res));
  });
  track(closeableServer(server));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, hits: () => hits };
}

/** One request a watched upstream received, when, and whether the gateway cut it before its answer ended. */
export interface WatchedRequest extends Received {
  readonly at: number;
  /** The gateway closed this request before the mock finished answering. */
  closed: boolean;
}
export type WatchedHandler = (r: WatchedRequest, res: ServerResponse, n: number) => void;

/** A hand-written upstream on loopback (handed to `track`) that keeps each request and whether it was cut. */
export async function watchedUpstream(
  track: Track,
  handler: WatchedHandler,
): Promise<{ readonly url: string; readonly recs: WatchedRequest[] }> {
  const recs: WatchedRequest[] = [];
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      const r: WatchedRequest = {
        path: req.url ?? '',
        headers: req.headers,
        body: JSON.parse(Buffer.concat(parts).toString('utf8') || '{}') as Json,
        at: performance.now(),
        closed: false,
      };
      recs.push(r);
      res.on('close', () => {
        if (!res.writableFinished) r.closed = true;
      });
      handler(r, res, recs.length - 1);
    });
  });
  track(closeableServer(server));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, recs };
}

/** A mock upstream's address and how many requests it has had. */
export interface CountedUpstream {
  readonly url: string;
  readonly calls: number;
}

/** A mock upstream (closed after the test); `answer` writes the n-th answer (0-based). */
export async function countedUpstream(
  track: Track,
  answer: (body: Record<string, unknown>, res: ServerResponse, n: number) => void | Promise<void>,
): Promise<CountedUpstream> {
  const m = track(await startMock((r, res, n) => answer(r.body, res, n)));
  return {
    url: m.url,
    get calls() {
      return m.received.length;
    },
  };
}

/** A reasoning model's usage (o3's shape): 90 completion tokens, 64 of them hidden reasoning. */
export const REASONING_USAGE = {
  prompt_tokens: 20,
  completion_tokens: 90,
  total_tokens: 110,
  completion_tokens_details: { reasoning_tokens: 64 },
};

/** "ok" as JSON or as a stream (role, text, finish, `[DONE]`), whichever `r` asked for. */
export function answerOk(r: Received, res: ServerResponse): void {
  const m = r.body.model;
  if (r.body.stream === true) {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end(
      `${chunkFrame(m, { role: 'assistant', content: '' })}${chunkFrame(m, { content: 'ok' })}${chunkFrame(m, {}, 'stop')}data: [DONE]\n\n`,
    );
    return;
  }
  sendJson(res, 200, {
    id: 'chatcmpl-1',
    object: 'chat.completion',
    created: 1,
    model: String(m),
    choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6 },
  });
}

/** The first `n` requests go to `first`, the rest are answered "ok". */
export function thenAnswerOk(first: WatchedHandler, n = 1): WatchedHandler {
  return (r, res, i) => (i < n ? first(r, res, i) : answerOk(r, res));
}
