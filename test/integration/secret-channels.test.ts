/**
 * SPEC §8 "Secrets": no configured secret (provider keys, client keys, the admin key, a password inside a
 * base_url) ever appears in a response, a log line, /router/* or /metrics, and every configured secret is
 * scrubbed from any upstream error body relayed. secrets.test.ts and short-secret-scrubbing.test.ts cover
 * verbatim echoes; these are the channels and spellings past them: the LLM router's own answer, a
 * passthrough redirect on the provider's own origin, JSON as .NET's System.Text.Json writes it (`+` as
 * `\u002B`), successful routed answers that echo the key, an Anthropic upstream's translated errors, an
 * error event split across TCP writes after the commit, a base_url password on an unreachable upstream,
 * near-miss admin and client keys, and a streamed answer that repeats the key a few characters a delta.
 */
import type { ServerResponse } from 'node:http';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { dig, postTo, startGateway, type TestGateway } from '../helpers/gateway.js';
import { chunkFrame, sendJson, startMock, startRawUpstream } from '../helpers/mock-upstream.js';
import OpenAI from 'openai';
import { anthropicSseFrame, claudeSse } from '../helpers/anthropic-route.js';
import { sseEvents } from '../helpers/sim-wire.js';
import { freePort } from '../helpers/redis.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hello there' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };

/** Base64-looking keys, as many providers issue them: `+` and `/` are part of the key. */
const RT_KEY = 'sk-router+SECRET/8d1e55aa90';
const UP_KEY = 'sk-up+SECRET/77c0ffee4411';
const PT_KEY = 'sk-pt+SECRET/5150deadbeef';
const GOOGLE_KEY = 'AIzaSECRET-9f8e7d6c5b4a3210';
const ANT_KEY = 'sk-ant-api03-SECRET+zz/0042aa';
const URL_PASSWORD = 'urlpw-SECRET-31337';
const ADMIN_KEY = 'admin-SECRET-key-4242';
const CLIENT_KEY = 'client-SECRET-key-0001';

/**
 * JSON as ASP.NET Core's System.Text.Json writes it by default: `+` (an HTML-sensitive character for its
 * default encoder) as `\u002B`. Any JSON parser reads it back as `+`.
 */
function dotnetJson(value: unknown): string {
  return JSON.stringify(value).replaceAll('+', '\\u002B');
}

function sendDotnet(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' });
  res.end(dotnetJson(body));
}

function headersText(h: Record<string, unknown>): string {
  return Object.entries(h)
    .map(([k, v]) => `${k}: ${String(v)}`)
    .join('\n');
}

function bearerOf(headers: Record<string, string | string[] | undefined>): string {
  return String(headers.authorization ?? '').replace(/^Bearer /, '');
}

function openaiAnswer(model: unknown, content: string): Record<string, unknown> {
  return {
    id: 'chatcmpl-1',
    object: 'chat.completion',
    created: 1,
    model: String(model),
    choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
  };
}

/** The answer's text and tool arguments as a client joins them from the SSE frames. */
function joined(sse: string): { text: string; args: string } {
  let text = '';
  let args = '';
  for (const { data } of sseEvents(sse)) {
    if (!data.startsWith('{')) continue;
    const delta = dig(JSON.parse(data), 'choices', 0, 'delta') as Record<string, unknown> | undefined;
    if (typeof delta?.content === 'string') text += delta.content;
    for (const call of (delta?.tool_calls ?? []) as { function?: { arguments?: string } }[])
      args += call.function?.arguments ?? '';
  }
  return { text, args };
}

describe("the LLM router's reason never carries a configured secret", () => {
  /**
   * Route `auto`: no rule, so every request ties and the router (tier fast, provider `rt`) is asked. The
   * router's upstream picks `deep` and, like a debugging proxy in front of a model, quotes the credential it
   * was sent in its reason. `deep` and `balanced` answer normally.
   */
  async function routed(): Promise<{ gw: TestGateway; rtSeen: () => number }> {
    const rt = track(
      await startMock((req, res) =>
        sendJson(
          res,
          200,
          openaiAnswer(
            req.body.model,
            JSON.stringify({ tier: 'deep', reason: `needs depth (caller key ${bearerOf(req.headers)})` }),
          ),
        ),
      ),
    );
    const tierUp = track(
      await startMock((req, res) => sendJson(res, 200, openaiAnswer(req.body.model, 'answered'))),
    );
    const prov = (name: string, url: string, key: string) => ({
      name,
      base_url: `${url}/v1`,
      api_key: key,
      timeouts: RELAXED,
      models: [{ name: 'm' }],
    });
    const gw = track(
      await startGateway({
        providers: [
          prov('rt', rt.url, RT_KEY),
          prov('bal', tierUp.url, UP_KEY),
          prov('deep', tierUp.url, UP_KEY),
        ],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['rt/m'], balanced: ['bal/m'], deep: ['deep/m'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 5000, cache_ttl_s: 60 },
          },
        },
      }),
    );
    return { gw, rtSeen: () => rt.received.length };
  }

  // x-router-tier-reason carries the router's reason to the client: the reason is the router upstream's
  // text, so a key it quotes is a key handed to every client of the route.
  it('in the x-router-tier-reason header of the routed answer', async () => {
    const { gw, rtSeen } = await routed();
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'auto', messages: MSG });
    expect(r.status).toBe(200);
    expect(rtSeen()).toBe(1);
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(r.headers['x-router-tier-reason']).toContain('needs depth');
    expect(r.headers['x-router-tier-reason']).not.toContain(RT_KEY);
  });

  // The request line logs the tier and its reason: the same text, so the same scrub.
  it("in the request's log line", async () => {
    const { gw } = await routed();
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'auto', messages: MSG });
    expect(r.status).toBe(200);
    const line = gw.logs.find((l) => l.msg === 'request' && l.route === 'auto');
    expect(String(line?.tierReason)).toContain('needs depth');
    expect(gw.rawLogs()).not.toContain(RT_KEY);
  });

  // /router/explain shows the cached answer's reason a live request would take: never a secret on /router/*.
  it('in /router/explain (the cached answer)', async () => {
    const { gw, rtSeen } = await routed();
    expect((await postTo(`${gw.url}/v1/chat/completions`, { model: 'auto', messages: MSG })).status).toBe(
      200,
    );
    const ex = await postTo(`${gw.url}/router/explain`, { model: 'auto', messages: MSG });
    expect(ex.status).toBe(200);
    expect(rtSeen()).toBe(1); // explain read the cache, it made no call
    expect(ex.json.tier).toBe('deep');
    expect(String(ex.json.tier_reason)).toContain('needs depth');
    expect(ex.text).not.toContain(RT_KEY);
  });
});

describe('passthrough: a secret the provider echoes in a redirect or in escaped JSON', () => {
  /** A gateway whose passthrough provider `pt` (key PT_KEY) is `up`. */
  async function passthroughTo(up: { url: string }): Promise<TestGateway> {
    return track(
      await startGateway({
        server: { passthrough: 'pt' },
        providers: [
          {
            name: 'pt',
            base_url: `${up.url}/v1`,
            api_key: PT_KEY,
            timeouts: RELAXED,
            models: [{ name: 'm' }],
          },
        ],
      }),
    );
  }

  // A Google-style provider takes its key as `?key=` on base_url (a credential-named query parameter: a
  // secret, README providers[].headers). A redirect that keeps the query, on the provider's own origin, is
  // mapped onto /v1 for the client: the key must not go with it.
  it("a Location on the provider's own origin that keeps the base_url's ?key= has the key removed", async () => {
    let base = '';
    const up = await startRawUpstream(track, (req, res) => {
      res.writeHead(307, {
        location: `${base}/v1beta/openai/files/file-1/content${req.url!.slice(req.url!.indexOf('?'))}`,
      });
      res.end();
    });
    base = up.url;
    const gw = track(
      await startGateway({
        server: { passthrough: 'g' },
        providers: [
          {
            name: 'g',
            base_url: `${up.url}/v1beta/openai?key=${GOOGLE_KEY}`,
            timeouts: RELAXED,
            models: [{ name: 'm' }],
          },
        ],
      }),
    );
    const res = await request(`${gw.url}/v1/files/file-1`);
    await res.body.text();
    expect(up.hits()).toBe(1);
    expect(res.statusCode).toBe(307);
    expect(String(res.headers.location)).toMatch(/^\/v1\/files\/file-1\/content/);
    expect(String(res.headers.location)).not.toContain(GOOGLE_KEY);
  });

  // An ASP.NET upstream writes the key it echoes with `+` as `\u002B`: the client's JSON parser reads the
  // key back whole.
  it('an error body that spells the key with JSON unicode escapes is scrubbed', async () => {
    const up = track(
      await startMock((req, res) =>
        sendDotnet(res, 401, {
          error: {
            message: `Incorrect API key provided: ${bearerOf(req.headers)}.`,
            type: 'invalid_request_error',
            param: null,
            code: 'invalid_api_key',
          },
        }),
      ),
    );
    const gw = await passthroughTo(up);
    const res = await request(`${gw.url}/v1/files`);
    const text = await res.body.text();
    expect(res.statusCode).toBe(401);
    expect(bearerOf(up.received[0]!.headers)).toBe(PT_KEY);
    const message = String(dig(JSON.parse(text), 'error', 'message'));
    expect(message).toContain('Incorrect API key provided');
    expect(message).not.toContain(PT_KEY);
  });

  // README: an answer that echoes the provider's key back "has them masked": the same spelling in a 200.
  it('a successful answer that spells the key with JSON unicode escapes is masked', async () => {
    const up = track(
      await startMock((req, res) =>
        sendDotnet(res, 200, {
          object: 'list',
          data: [],
          debug: { authorization: String(req.headers.authorization) },
        }),
      ),
    );
    const gw = await passthroughTo(up);
    const res = await request(`${gw.url}/v1/files`);
    const text = await res.body.text();
    expect(res.statusCode).toBe(200);
    expect(bearerOf(up.received[0]!.headers)).toBe(PT_KEY);
    expect(JSON.stringify(JSON.parse(text))).not.toContain(PT_KEY);
  });

  /** The Responses API's event stream answering with `text`, a few characters a delta, as the SDK reads it. */
  function responsesEvents(text: string, size: number): string {
    const response = (status: string, output: unknown[]) => ({
      id: 'resp_1',
      object: 'response',
      created_at: 1,
      status,
      model: 'm',
      output,
    });
    const message = { id: 'msg_1', type: 'message', role: 'assistant', status: 'completed' };
    const part = { type: 'output_text', text, annotations: [] };
    const events: Record<string, unknown>[] = [
      { type: 'response.created', response: response('in_progress', []) },
      { type: 'response.output_item.added', output_index: 0, item: { ...message, content: [] } },
      {
        type: 'response.content_part.added',
        item_id: 'msg_1',
        output_index: 0,
        content_index: 0,
        part: { ...part, text: '' },
      },
    ];
    for (let at = 0; at < text.length; at += size)
      events.push({
        type: 'response.output_text.delta',
        item_id: 'msg_1',
        output_index: 0,
        content_index: 0,
        delta: text.slice(at, at + size),
      });
    events.push(
      { type: 'response.output_text.done', item_id: 'msg_1', output_index: 0, content_index: 0, text },
      { type: 'response.completed', response: response('completed', [{ ...message, content: [part] }]) },
    );
    return events
      .map((e, n) => `event: ${String(e.type)}\ndata: ${JSON.stringify({ ...e, sequence_number: n })}\n\n`)
      .join(': keep-alive\n\n');
  }

  // A model that repeats the key does so a token a delta: no one event holds it, the joined text does. The
  // whole text in `.done` and `response.completed` is masked byte for byte as before.
  it('a Responses API stream that spells the key across deltas: the SDK joins no key', async () => {
    const up = await startRawUpstream(track, (req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(responsesEvents(`Your key is ${bearerOf(req.headers)} — keep it.`, 3));
    });
    const gw = await passthroughTo(up);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'x', maxRetries: 0 });
    let joined = '';
    const stream = client.responses.stream({ model: 'm', input: 'hi' });
    for await (const e of stream) if (e.type === 'response.output_text.delta') joined += e.delta;
    const final = await stream.finalResponse();
    expect(joined).toMatch(/^Your key is (s|sk|sk-)?\[REDACTED\] — keep it\.$/);
    expect(final.output_text).not.toContain(PT_KEY);
    expect(final.output_text).toMatch(/^Your key is \*+ — keep it\.$/);
  });

  // Text that only starts like the key is held back a delta, then goes on whole: the joined text is the model's.
  it('a Responses API stream with a near miss: the joined text is as written', async () => {
    const text = 'Keys look like sk-pt+ but this one is not. Done.';
    const up = await startRawUpstream(track, (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(responsesEvents(text, 4));
    });
    const gw = await passthroughTo(up);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'x', maxRetries: 0 });
    let joined = '';
    for await (const e of client.responses.stream({ model: 'm', input: 'hi' }))
      if (e.type === 'response.output_text.delta') joined += e.delta;
    expect(joined).toBe(text);
  });

  it('a Responses API stream with nothing like the key in it is relayed byte for byte', async () => {
    const body = responsesEvents('Nothing secret here, only text. Done.', 4);
    const up = await startRawUpstream(track, (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(body);
    });
    const gw = await passthroughTo(up);
    const res = await request(`${gw.url}/v1/responses`, {
      method: 'POST',
      body: '{}',
      headers: { 'content-type': 'application/json' },
    });
    expect(await res.body.text()).toBe(body);
  });
});

describe('routed chat: echoes in escaped JSON, in successful answers and after the commit', () => {
  async function oneRoute(up: { url: string }, key = UP_KEY): Promise<TestGateway> {
    return track(
      await startGateway({
        providers: [
          { name: 'a', base_url: `${up.url}/v1`, api_key: key, timeouts: RELAXED, models: [{ name: 'm' }] },
        ],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
  }

  // A relayed 400 keeps the upstream's message, param and code (SPEC §2): each is the upstream's text, each
  // is scrubbed, whatever escapes the upstream's encoder used.
  it('a relayed 400 written with unicode escapes, the key in message, param and code', async () => {
    const up = track(
      await startMock((req, res) => {
        const key = bearerOf(req.headers);
        sendDotnet(res, 400, {
          error: {
            message: `key ${key} may not call this model`,
            type: 'invalid_request_error',
            param: key,
            code: key,
          },
        });
      }),
    );
    const gw = await oneRoute(up);
    for (const stream of [false, true]) {
      const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, stream });
      expect(r.status).toBe(400);
      expect(dig(r.json, 'error', 'message')).toBe('key [REDACTED] may not call this model');
      expect(r.text).not.toContain(UP_KEY);
      expect(JSON.stringify(r.json)).not.toContain(UP_KEY);
    }
    expect(gw.rawLogs()).not.toContain(UP_KEY);
  });

  // A model stopped inside the key at its max_tokens: a stream's end masks what it held; the JSON answer's
  // content ends the same way (scrub.ts stringEndsMasker). Fewer than 8 of the key's characters go as written.
  it('a JSON answer whose content stops inside the key ends in [REDACTED]; one ending in 7 of its characters does not', async () => {
    for (const [cut, expected] of [
      [12, 'Your key is [REDACTED]'],
      [7, `Your key is ${UP_KEY.slice(0, 7)}`],
    ] as const) {
      const up = track(
        await startMock((req, res) =>
          sendJson(res, 200, openaiAnswer('m', `Your key is ${bearerOf(req.headers).slice(0, cut)}`)),
        ),
      );
      const gw = await oneRoute(up);
      const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG });
      expect(r.status).toBe(200);
      expect(dig(r.json, 'choices', 0, 'message', 'content')).toBe(expected);
    }
  });

  // SPEC §8: no configured secret ever appears in a response. README: a passthrough answer that echoes the
  // provider's key "has them masked"; a routed answer that echoes it (a debugging proxy's field) is a
  // response just the same.
  it('a successful JSON answer that echoes the key in an extra field', async () => {
    const up = track(
      await startMock((req, res) =>
        sendJson(res, 200, {
          ...openaiAnswer(req.body.model, 'hi'),
          debug: { authorization: String(req.headers.authorization) },
        }),
      ),
    );
    const gw = await oneRoute(up);
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG });
    expect(r.status).toBe(200);
    expect(dig(r.json, 'choices', 0, 'message', 'content')).toBe('hi');
    expect(r.text).not.toContain(UP_KEY);
  });

  it('a successful stream whose chunks echo the key in an extra field', async () => {
    const up = track(
      await startMock((req, res) => {
        const debug = { authorization: String(req.headers.authorization) };
        const frame = (delta: Record<string, unknown>, finish: string | null = null) =>
          `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', debug, choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(`${frame({ content: 'hi' })}${frame({}, 'stop')}data: [DONE]\n\n`);
      }),
    );
    const gw = await oneRoute(up);
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, stream: true });
    expect(r.status).toBe(200);
    expect(r.text).toContain('[DONE]');
    expect(r.text).not.toContain(UP_KEY);
  });

  // After the commit, `terminate` ends the stream with the upstream's message in an error event: scrubbed
  // even when the event arrives in two TCP writes that split the key, spelt with unicode escapes.
  it('an error event after the commit, split across two writes and escaped, is scrubbed', async () => {
    const up = await startRawUpstream(track, (req, res) => {
      const key = bearerOf(req.headers);
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunkFrame('m', { role: 'assistant', content: '' }));
      res.write(chunkFrame('m', { content: 'partial answer' }));
      const event = `data: ${dotnetJson({ error: { message: `quota for ${key} exhausted`, type: 'server_error', code: key } })}\n\n`;
      const at = event.indexOf('SECRET');
      setTimeout(() => res.write(event.slice(0, at)), 20);
      setTimeout(() => res.end(event.slice(at)), 60);
    });
    const gw = await oneRoute(up);
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, stream: true });
    expect(r.status).toBe(200);
    expect(r.text).toContain('partial answer');
    expect(r.text).toContain('quota for [REDACTED] exhausted');
    expect(r.text).not.toContain('[DONE]');
    expect(r.text).not.toContain(UP_KEY);
    expect(r.text).not.toContain(UP_KEY.replace('+', '\\u002B'));
    expect(gw.rawLogs()).not.toContain(UP_KEY);
  });

  // A model that quotes the key it was given does so a token a delta: no one frame holds the key, the joined
  // text does. At most its first 3 characters come through (sent before the 4th showed what they were).
  it('an OpenAI-compatible stream, read with the OpenAI SDK: the joined text has the key masked', async () => {
    const up = await startRawUpstream(track, (req, res) => {
      const answer = `Your key is ${bearerOf(req.headers)}. Keep it safe.`;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunkFrame('m', { role: 'assistant', content: '' }));
      for (let at = 0; at < answer.length; at += 3)
        res.write(chunkFrame('m', { content: answer.slice(at, at + 3) }));
      res.end(`${chunkFrame('m', {}, 'stop')}data: [DONE]\n\n`);
    });
    const gw = await oneRoute(up);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'x', maxRetries: 0 });
    let text = '';
    for await (const part of await client.chat.completions.create({
      model: 'r',
      messages: MSG as never,
      stream: true,
    }))
      text += part.choices[0]?.delta.content ?? '';
    expect(text).toMatch(/^Your key is (s|sk|sk-)?\[REDACTED\]\. Keep it safe\.$/);
  });
});

describe('an Anthropic upstream that echoes its x-api-key', () => {
  async function anthropicRoute(
    handler: (key: string, body: Record<string, unknown>, res: ServerResponse) => void,
  ) {
    const up = track(await startMock((req, res) => handler(String(req.headers['x-api-key']), req.body, res)));
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'ant',
            kind: 'anthropic',
            base_url: up.url,
            api_key: ANT_KEY,
            timeouts: RELAXED,
            models: [{ name: 'claude-x' }],
          },
        ],
        routes: { r: { strategy: 'priority', targets: ['ant/claude-x'] } },
      }),
    );
    return { gw, up };
  }

  // Anthropic's error is translated to OpenAI's shape (type mapped, message kept): the kept message is
  // scrubbed, JSON or stream.
  it('a 400 invalid_request_error quoting the key is translated with the key scrubbed', async () => {
    const { gw, up } = await anthropicRoute((key, _body, res) =>
      sendDotnet(res, 400, {
        type: 'error',
        error: { type: 'invalid_request_error', message: `x-api-key ${key} has no access to claude-x` },
      }),
    );
    for (const stream of [false, true]) {
      const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, stream });
      expect(r.status).toBe(400);
      expect(dig(r.json, 'error', 'type')).toBe('invalid_request_error');
      expect(dig(r.json, 'error', 'message')).toBe('x-api-key [REDACTED] has no access to claude-x');
      expect(r.text).not.toContain(ANT_KEY);
    }
    expect(up.received[0]?.headers['x-api-key']).toBe(ANT_KEY);
    expect(gw.rawLogs()).not.toContain(ANT_KEY);
  });

  // An Anthropic `error` event after the first text delta ends the client's stream (terminate): its message
  // is the upstream's text, scrubbed.
  it('an error event after the commit quoting the key is scrubbed from the terminating event', async () => {
    const { gw } = await anthropicRoute((key, _body, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(
        [
          {
            type: 'message_start',
            message: {
              id: 'msg_1',
              type: 'message',
              role: 'assistant',
              model: 'claude-x',
              content: [],
              stop_reason: null,
              stop_sequence: null,
              usage: { input_tokens: 5, output_tokens: 1 },
            },
          },
          { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
          { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'partial' } },
          { type: 'error', error: { type: 'overloaded_error', message: `overloaded for key ${key}` } },
        ]
          .map(anthropicSseFrame)
          .join(''),
      );
    });
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, stream: true });
    expect(r.status).toBe(200);
    expect(r.text).toContain('partial');
    expect(r.text).toContain('overloaded for key [REDACTED]');
    expect(r.text).not.toContain(ANT_KEY);
  });

  it('an Anthropic stream: text and tool input that spell the key across deltas are masked', async () => {
    const { gw } = await anthropicRoute((key, _body, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(
        claudeSse(
          [
            { type: 'text', text: `The key: ${key} — done` },
            { type: 'tool_use', id: 'toolu_1', name: 'save', input: { token: key } },
          ],
          'tool_use',
          { input_tokens: 5, output_tokens: 30 },
        ),
      );
    });
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, stream: true });
    expect(r.status).toBe(200);
    const { text, args } = joined(r.text);
    expect(text).toMatch(/^The key: (s|sk|sk-)?\[REDACTED\] — done$/);
    expect(args).toMatch(/^\{"token":"(s|sk|sk-)?\[REDACTED\]"\}$/);
    expect(r.text).not.toContain(ANT_KEY.slice(3, 9));
  });
});

describe('a password in base_url, and keys near the configured ones', () => {
  // An upstream that cannot be reached: the 502 names the upstream and the reason, /router/status and
  // /metrics show it, the warn line logs it; the password in its base_url is in none of them.
  it('an unreachable upstream whose base_url carries a password', async () => {
    const port = await freePort();
    const gw = track(
      await startGateway(
        {
          server: { admin_key: '${ADMIN_KEY}' },
          providers: [
            {
              name: 'locked',
              base_url: `http://gw:\${URL_PASSWORD}@127.0.0.1:${port}/v1`,
              timeouts: RELAXED,
              models: [{ name: 'm' }],
            },
          ],
          routes: { r: { strategy: 'priority', targets: ['locked/m'] } },
        },
        { env: { URL_PASSWORD, ADMIN_KEY } },
      ),
    );
    const ok = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG });
    expect(ok.status).toBe(502);
    expect(dig(ok.json, 'error', 'message')).toContain('locked/m: connect_refused');
    const seen: string[] = [ok.text, headersText(ok.headers)];
    const admin = { authorization: `Bearer ${ADMIN_KEY}` };
    const status = await request(`${gw.url}/router/status`, { headers: admin });
    const statusText = await status.body.text();
    expect(status.statusCode).toBe(200);
    expect(statusText).toContain('locked/m');
    seen.push(statusText);
    const metrics = await request(`${gw.url}/metrics`, { headers: admin });
    seen.push(await metrics.body.text());
    expect(gw.rawLogs()).toContain('attempt on locked/m failed (connect_refused)');
    const basic = Buffer.from(`gw:${URL_PASSWORD}`).toString('base64');
    for (const text of [...seen, gw.rawLogs()]) {
      expect(text).not.toContain(URL_PASSWORD);
      expect(text).not.toContain(basic);
    }
  });

  // A key one character short of, or longer than, the real one is refused; neither it nor the real key is
  // written anywhere (a prefix of the real key is most of it).
  it('near-miss admin and client keys get 401 and are in no log line', async () => {
    const gw = track(
      await startGateway(
        {
          server: { api_keys: ['${CLIENT_KEY}'], admin_key: '${ADMIN_KEY}' },
          providers: [
            { name: 'a', base_url: 'http://127.0.0.1:9/v1', timeouts: RELAXED, models: [{ name: 'm' }] },
          ],
          routes: { r: { strategy: 'priority', targets: ['a/m'] } },
        },
        { env: { CLIENT_KEY, ADMIN_KEY } },
      ),
    );
    const near = (k: string) => [k.slice(0, -1), `${k}x`, ` ${k.toUpperCase()}`];
    const seen: string[] = [];
    for (const k of near(ADMIN_KEY)) {
      for (const headers of [{ authorization: `Bearer ${k}` }, { 'x-admin-key': k }]) {
        const r = await request(`${gw.url}/router/status`, { headers });
        seen.push(await r.body.text(), headersText(r.headers));
        expect(r.statusCode).toBe(401);
      }
    }
    for (const k of near(CLIENT_KEY)) {
      const r = await postTo(
        `${gw.url}/v1/chat/completions`,
        { model: 'r', messages: MSG },
        {
          headers: { authorization: `Bearer ${k}`, 'x-admin-key': ADMIN_KEY },
        },
      );
      seen.push(r.text, headersText(r.headers));
      expect(r.status).toBe(401);
    }
    for (const text of [...seen, gw.rawLogs()]) {
      for (const k of [ADMIN_KEY, CLIENT_KEY]) expect(text).not.toContain(k.slice(0, -1));
    }
  });
});
