import { describe, expect, it } from 'vitest';
import type { ChunkSink, UpstreamErrorInfo, Usage } from '../../../src/upstream/adapter.js';
import { openaiAdapter, relayedAnswer } from '../../../src/upstream/adapters/openai.js';

function collect() {
  const chunks: { json: string; content: boolean }[] = [];
  const usages: Usage[] = [];
  const errors: UpstreamErrorInfo[] = [];
  let ended = false;
  const sink: ChunkSink = {
    chunk: (json, content) => chunks.push({ json, content: content > 0 }),
    usage: (u) => usages.push(u),
    error: (e) => errors.push(e),
    end: () => (ended = true),
  };
  return { sink, chunks, usages, errors, ended: () => ended };
}

const ctx = { model: 'm', includeUsage: false, created: 1 };
const provider = {
  name: 'p',
  apiKey: 'sk-1',
  headers: { 'x-extra': 'y' },
  anthropicVersion: '',
  defaultMaxTokens: 1,
};

describe('openai adapter', () => {
  it('passes the body through untouched but for the model, with the provider key and headers', () => {
    const req = openaiAdapter.chatRequest(
      { model: 'fast', messages: [{ role: 'user', content: 'x' }], odd: { a: 1 } },
      'gpt-4o-mini',
      provider,
    );
    expect(req.path).toBe('/chat/completions');
    expect(JSON.parse(req.body.toString())).toEqual({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'x' }],
      odd: { a: 1 },
    });
    expect(req.headers.authorization).toBe('Bearer sk-1');
    expect(req.headers['x-extra']).toBe('y');
    expect(
      openaiAdapter.chatRequest({ model: 'f', messages: [] }, 'm', { ...provider, apiKey: undefined }).headers
        .authorization,
    ).toBeUndefined();
  });

  it('classifies chunks: role-only preamble is not content; text, tool calls and refusals are', () => {
    const c = collect();
    const t = openaiAdapter.streamTranslator(c.sink, ctx);
    const role = '{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}';
    t.event(undefined, role);
    t.event(undefined, '{"choices":[{"index":0,"delta":{"content":"Hi"}}]}');
    t.event(
      undefined,
      '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}',
    );
    t.event(undefined, '{"choices":[{"index":0,"delta":{"refusal":"no"}}]}');
    t.event(undefined, '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}');
    t.event(undefined, '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}');
    t.event(undefined, '[DONE]');
    expect(c.chunks.map((x) => x.content)).toEqual([false, true, true, true, false, false]);
    expect(c.chunks[0]!.json).toBe(role); // relayed byte for byte, never re-serialised
    expect(c.usages).toEqual([{ prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }]);
    expect(c.ended()).toBe(true);
  });

  it('drops non-JSON data events and reports an in-stream error object', () => {
    const c = collect();
    const t = openaiAdapter.streamTranslator(c.sink, ctx);
    t.event(undefined, 'not json at all');
    t.event(undefined, '42');
    t.event(undefined, '{"error":{"message":"overloaded","type":"server_error"}}');
    expect(c.chunks).toHaveLength(0);
    expect(c.errors[0]).toMatchObject({ message: 'overloaded', type: 'server_error' });
  });

  it('reads data with leading whitespace, and a spaced [DONE]', () => {
    const c = collect();
    const t = openaiAdapter.streamTranslator(c.sink, ctx);
    t.event(undefined, '  {"choices":[{"index":0,"delta":{"content":"Hi"}}]}');
    t.event(undefined, '\t{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}');
    expect(c.chunks.map((x) => x.content)).toEqual([true, false]);
    expect(c.ended()).toBe(false);
    t.event(undefined, ' [DONE]');
    expect(c.ended()).toBe(true);
  });

  it('a close without [DONE] ends the answer only when every choice it saw has finished', () => {
    const choice = (index: number, finish: string | null) =>
      `{"choices":[{"index":${index},"delta":{"content":"x"},"finish_reason":${JSON.stringify(finish)}}]}`;
    const cut = collect();
    const a = openaiAdapter.streamTranslator(cut.sink, ctx);
    a.event(undefined, choice(0, null));
    a.event(undefined, choice(1, null));
    a.event(undefined, choice(0, 'stop'));
    a.close?.();
    expect(cut.ended()).toBe(false);
    const whole = collect();
    const b = openaiAdapter.streamTranslator(whole.sink, ctx);
    b.event(undefined, choice(0, null));
    b.event(undefined, choice(1, 'length'));
    b.event(undefined, choice(0, 'stop'));
    b.close?.();
    expect(whole.ended()).toBe(true);
    // Indexes past 30 (kept apart from the low ones) count the same way.
    const wide = collect();
    const w = openaiAdapter.streamTranslator(wide.sink, ctx);
    w.event(undefined, choice(0, null));
    w.event(undefined, choice(40, null));
    w.event(undefined, choice(0, 'stop'));
    w.close?.();
    expect(wide.ended()).toBe(false);
    const wideDone = collect();
    const w2 = openaiAdapter.streamTranslator(wideDone.sink, ctx);
    w2.event(undefined, choice(40, null));
    w2.event(undefined, choice(3, 'stop'));
    w2.event(undefined, choice(40, 'stop'));
    w2.close?.();
    expect(wideDone.ended()).toBe(true);
    const none = collect();
    const n = openaiAdapter.streamTranslator(none.sink, ctx);
    n.event(undefined, choice(0, null));
    n.close?.();
    expect(none.ended()).toBe(false);
  });

  it('an in-band rate-limit error is a 429, any other a 500', () => {
    const statusOf = (event: string): number | undefined => {
      const c = collect();
      openaiAdapter.streamTranslator(c.sink, ctx).event(undefined, event);
      return c.errors[0]?.status;
    };
    expect(
      [
        '{"error":{"message":"slow down","type":"rate_limit_error"}}',
        '{"error":{"message":"slow down","code":"rate_limit_exceeded"}}',
        '{"error":"boom"}',
      ].map(statusOf),
    ).toEqual([429, 429, 500]);
  });

  it('nothing after [DONE] or an error event is relayed: the stream is over there', () => {
    const choice = (index: number, finish: string | null) =>
      `{"choices":[{"index":${index},"delta":{"content":"x"},"finish_reason":${JSON.stringify(finish)}}]}`;
    const done = collect();
    const t = openaiAdapter.streamTranslator(done.sink, ctx);
    t.event(undefined, '[DONE]');
    t.event(undefined, choice(0, null));
    t.event(undefined, '{"error":"late"}');
    expect({ chunks: done.chunks.length, errors: done.errors.length }).toEqual({ chunks: 0, errors: 0 });
    const failed = collect();
    const u = openaiAdapter.streamTranslator(failed.sink, ctx);
    u.event(undefined, '{"error":"boom"}');
    u.event(undefined, choice(0, 'stop'));
    expect({ chunks: failed.chunks.length, errors: failed.errors.length }).toEqual({ chunks: 0, errors: 1 });
  });

  it('reads error bodies of every usual shape', () => {
    expect(
      openaiAdapter.errorInfo(
        400,
        '{"error":{"message":"bad","type":"invalid_request_error","param":"x","code":"c"}}',
      ),
    ).toEqual({
      status: 400,
      message: 'bad',
      type: 'invalid_request_error',
      param: 'x',
      code: 'c',
    });
    expect(openaiAdapter.errorInfo(500, '{"error":"boom"}').message).toBe('boom');
    expect(openaiAdapter.errorInfo(422, '{"detail":"nope"}')).toMatchObject({
      message: 'nope',
      type: 'invalid_request_error',
    });
    expect(openaiAdapter.errorInfo(503, '<html>gateway</html>')).toMatchObject({
      message: 'gateway',
      type: 'server_error',
    });
    expect(openaiAdapter.errorInfo(502, 'x'.repeat(5000)).message).toBe('upstream answered HTTP 502');
  });

  it('reads an HTML error page (a proxy or CDN in front of the API) as its title or its text, not markup', () => {
    const nginx =
      '<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n' +
      '<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n';
    expect(openaiAdapter.errorInfo(413, nginx).message).toBe('413 Request Entity Too Large');
    // Longer than a message relayed as text: its title still says what happened.
    const cdn = `<!DOCTYPE html>\n<html lang="en"><head><title>Attention Required! | Cloudflare</title></head><body>${'<div>x</div>'.repeat(100)}</body></html>`;
    expect(openaiAdapter.errorInfo(403, cdn).message).toBe('Attention Required! | Cloudflare');
    expect(
      openaiAdapter.errorInfo(
        502,
        '<!doctype html><body><p>Bad &amp; broken &#8212; try\n  &lt;later&gt;&#x21;</p></body>',
      ).message,
    ).toBe('Bad & broken \u2014 try <later>!');
    expect(
      openaiAdapter.errorInfo(502, '<html><head><title> </title></head><body>down</body></html>').message,
    ).toBe('down');
    expect(openaiAdapter.errorInfo(502, '<html><body></body></html>').message).toBe(
      'upstream answered HTTP 502',
    );
    // A long page without a title is mostly styles and scripts.
    const styled = `<html><style>${'.a{color:red}'.repeat(50)}</style><body>down</body></html>`;
    expect(openaiAdapter.errorInfo(502, styled).message).toBe('upstream answered HTTP 502');
    // Linear in the body: a hostile page of unclosed tags is read at once.
    expect(openaiAdapter.errorInfo(502, `<html>${'<title'.repeat(10_000)}`).message).toBe(
      'upstream answered HTTP 502',
    );
    // Text that is no page stays as it is.
    expect(openaiAdapter.errorInfo(400, '<unknown> field in request').message).toBe(
      '<unknown> field in request',
    );
  });

  it('reads a validation error list (FastAPI, vLLM, Mistral) however long the body', () => {
    const item = (field: string) => ({
      type: 'extra_forbidden',
      loc: ['body', field],
      msg: 'Extra inputs are not permitted',
      input: 'x'.repeat(400),
    });
    const fastApi = JSON.stringify({ detail: [item('logit_bias'), item('verbosity')] });
    expect(fastApi.length).toBeGreaterThan(500);
    expect(openaiAdapter.errorInfo(422, fastApi)).toMatchObject({
      message:
        'body.logit_bias: Extra inputs are not permitted; body.verbosity: Extra inputs are not permitted',
      type: 'invalid_request_error',
    });
    // Mistral nests the list under `message`.
    const mistral = JSON.stringify({ object: 'error', message: { detail: [item('top_p')] }, type: 'x' });
    expect(openaiAdapter.errorInfo(422, mistral).message).toBe('body.top_p: Extra inputs are not permitted');
    expect(openaiAdapter.errorInfo(422, '{"detail":[{"nothing":1}]}').message).toBe(
      '{"detail":[{"nothing":1}]}',
    );
  });
});

describe('providers whose dialect differs a little', () => {
  it("takes OpenRouter's error chunk (an `error` beside its choices) as an error event, relaying nothing", () => {
    const c = collect();
    const t = openaiAdapter.streamTranslator(c.sink, ctx);
    t.event(undefined, JSON.stringify({ choices: [{ index: 0, delta: { content: 'Hi' } }] }));
    t.event(
      undefined,
      JSON.stringify({
        error: { code: 'server_error', message: 'provider died' },
        choices: [{ index: 0, delta: { content: '' }, finish_reason: 'error' }],
      }),
    );
    expect(c.chunks).toHaveLength(1);
    expect(c.errors).toMatchObject([{ status: 500, message: 'provider died' }]);
  });

  it("takes a choice finished with reason 'error' as an error event even without an error object", () => {
    const c = collect();
    const t = openaiAdapter.streamTranslator(c.sink, ctx);
    t.event(undefined, JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: 'error' }] }));
    expect(c.chunks).toHaveLength(0);
    expect(c.errors).toHaveLength(1);
    t.close?.();
    expect(c.ended()).toBe(false);
  });

  it("counts Groq's usage, which it puts inside x_groq", () => {
    const c = collect();
    const t = openaiAdapter.streamTranslator(c.sink, ctx);
    const usage = { prompt_tokens: 43, completion_tokens: 9, total_tokens: 52 };
    t.event(
      undefined,
      JSON.stringify({
        choices: [{ index: 0, delta: {}, finish_reason: 'stop' }],
        x_groq: { id: 'r', usage },
      }),
    );
    expect(c.usages).toEqual([usage]);
  });

  it("reads Google's error list ([{error: {...}}]) for its message", () => {
    const info = openaiAdapter.errorInfo(
      400,
      JSON.stringify([{ error: { code: 400, message: 'Invalid value at x', status: 'INVALID_ARGUMENT' } }]),
    );
    expect(info).toMatchObject({ status: 400, message: 'Invalid value at x', code: '400' });
  });
});

describe('a non-streaming answer without choices', () => {
  it('is no answer (fails over), nor is an empty choices list, while an error object or a choice is read as before', () => {
    expect(
      openaiAdapter.chatResponseText!('{"id":"c","object":"chat.completion","created":1}'),
    ).toBeUndefined();
    expect(openaiAdapter.chatResponseText!('{"id":"c","note":"say \\"choices\\" here"}')).toBeUndefined();
    // An empty list is no answer either: every client reads choices[0].
    expect(openaiAdapter.chatResponseText!('{"id":"c","choices":[ ]}')).toBeUndefined();
    expect(openaiAdapter.chatResponseText!('{"id":"c","choices":[{"index":0}]}')).toMatchObject({
      body: '{"id":"c","choices":[{"index":0}]}',
    });
    expect(openaiAdapter.chatResponseText!('{"error":{"message":"x"}}')).toMatchObject({
      error: { message: 'x' },
    });
  });
});

describe('relayed non-streaming answers (read for usage only)', () => {
  const usage = { prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 };
  it('relays the bytes as they are and finds usage wherever it is', () => {
    const last = JSON.stringify({ id: 'x', choices: [{ message: { content: 'hi' } }], usage });
    expect(relayedAnswer(last)).toEqual({ body: last, usage });
    const first = JSON.stringify({ usage, id: 'x', choices: [] });
    expect(relayedAnswer(first)?.usage).toEqual(usage);
    const nested = JSON.stringify({
      choices: [],
      usage: { ...usage, prompt_tokens_details: { cached_tokens: 1 } },
    });
    expect(relayedAnswer(nested)?.usage).toMatchObject({
      ...usage,
      prompt_tokens_details: { cached_tokens: 1 },
    });
    const spaced = `\n  ${JSON.stringify({ choices: [] }).slice(0, -1)}, "usage" : ${JSON.stringify(usage)} }\n`;
    expect(relayedAnswer(spaced)?.usage).toEqual(usage);
  });
  it('reads usage alone only when plain fields and the end follow it; a body cut short is not an answer', () => {
    // OpenAI's own order: usage, then service_tier and system_fingerprint.
    const real = `${JSON.stringify({ id: 'x', choices: [], usage }).slice(0, -1)},"service_tier":"default","system_fingerprint":"fp_1","n":null}`;
    expect(relayedAnswer(real)).toEqual({ body: real, usage });
    // Cut after an inner brace, usage first: starts with { and ends with }, yet unreadable.
    const cut = `{"object":"list","usage":${JSON.stringify(usage)},"data":[{"object":"embedding","index":0,"embedding":[0.5]}`;
    expect(relayedAnswer(cut)).toBeUndefined();
    // usage inside the last element of a list, not the answer's own.
    const inner = `{"choices":[{"usage":${JSON.stringify(usage)}}]}`;
    expect(relayedAnswer(inner)).toEqual({ body: inner, usage: undefined });
  });

  it('is not fooled by "usage" inside the content', () => {
    const tricky = JSON.stringify({
      choices: [{ message: { content: 'the "usage": {"prompt_tokens": 99} text' } }],
    });
    expect(relayedAnswer(tricky)).toEqual({ body: tricky, usage: undefined });
    const both = JSON.stringify({ choices: [{ message: { content: '"usage": {' } }], usage });
    expect(relayedAnswer(both)?.usage).toEqual(usage);
    // A key ending in `"usage` is spelt `"note\"usage"`: its last seven characters look like the key.
    const fake = { prompt_tokens: 999, completion_tokens: 999, total_tokens: 1998 };
    const keyed = JSON.stringify({ choices: [], usage, meta: { 'note"usage': fake } });
    expect(relayedAnswer(keyed)?.usage).toEqual(usage);
  });
  it('an error object instead of an answer comes back as that error, not as an answer', () => {
    const r = relayedAnswer(' {"error":{"message":"overloaded","type":"server_error","code":"busy"}}');
    expect(r).toEqual({
      error: expect.objectContaining({ status: 500, message: 'overloaded', code: 'busy' }),
    });
    expect(relayedAnswer('{"error":{"type":"rate_limit_error","message":"x"}}')?.error?.status).toBe(429);
    // An answer that also carries an error field (some servers add `error: null`) is still an answer.
    const answer = '{"choices":[],"error":null}';
    expect(relayedAnswer(answer)).toEqual({ body: answer, usage: undefined });
    const embeddings = '{"data":[],"error":{"message":"partial"}}';
    expect(relayedAnswer(embeddings)?.body).toBe(embeddings);
  });

  it('refuses what is not a JSON object, so the attempt fails over', () => {
    for (const bad of ['<html>oops</html>', '[1,2]', '{"choices": [', '', '   ', '{"a":1} trailing']) {
      expect(relayedAnswer(bad), bad).toBeUndefined();
    }
  });
});

describe('relayed answers: a "usage" string value is not the usage key', () => {
  it('falls back to the full parse', () => {
    const text = JSON.stringify({
      usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 },
      choices: [{ message: { content: 'usage' } }],
      x: { prompt_tokens: 9, completion_tokens: 9 },
    });
    expect(relayedAnswer(text)?.usage).toEqual({ prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 });
  });
});
