import type { IncomingMessage, ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { gzipSync } from 'node:zlib';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startRawUpstream } from '../helpers/mock-upstream.js';
import { simProvider, startGateway } from '../helpers/gateway.js';

const track = closeAfterEach();

function rawUpstream(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<{ url: string; hits: () => number }> {
  return startRawUpstream(track, handler);
}

const COMPLETION = {
  id: 'chatcmpl-x',
  object: 'chat.completion',
  created: 1,
  model: 'm',
  choices: [
    { index: 0, message: { role: 'assistant', content: 'from the raw upstream' }, finish_reason: 'stop' },
  ],
  usage: { prompt_tokens: 1, completion_tokens: 4, total_tokens: 5 },
};

async function setup(first: string, stream = false) {
  const good = track(await startSimulator({ name: 'good' }));
  const gw = track(
    await startGateway({
      providers: [simProvider('bad', first, ['m']), simProvider('good', good.url, ['m'])],
      routes: { r: { strategy: 'priority', targets: ['bad/m', 'good/m'] } },
    }),
  );
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'r', stream, messages: [{ role: 'user', content: 'hi' }] }),
  });
  return { res, text: await res.body.text(), good };
}

describe('hostile or broken upstreams', () => {
  it('a redirect is never followed: the next upstream serves', async () => {
    const elsewhere = await rawUpstream((_q, s) => s.end(JSON.stringify(COMPLETION)));
    const bad = await rawUpstream((_q, s) => {
      s.writeHead(302, { location: `${elsewhere.url}/v1/chat/completions` });
      s.end();
    });
    const { res, text, good } = await setup(bad.url);
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-router-provider']).toBe('good');
    expect(text).toContain('good');
    expect(elsewhere.hits()).toBe(0);
    expect(good.requests).toHaveLength(1);
  });

  it('a 200 that is not JSON (an HTML page) fails over instead of being relayed', async () => {
    const bad = await rawUpstream((_q, s) => {
      s.writeHead(200, { 'content-type': 'text/html' });
      s.end('<html>maintenance</html>');
    });
    const { res, text } = await setup(bad.url);
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-router-trail']).toBe('bad/m=invalid_upstream_json');
    expect(text).not.toContain('maintenance');
  });

  it('a gzip-compressed answer is decoded and relayed intact', async () => {
    const bad = await rawUpstream((_q, s) => {
      s.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      s.end(gzipSync(JSON.stringify(COMPLETION)));
    });
    const { res, text } = await setup(bad.url);
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-router-provider']).toBe('bad');
    expect(JSON.parse(text)).toEqual(COMPLETION);
  });

  it('a 400 whose gzip body will not decode is still relayed as a 400, never retried elsewhere', async () => {
    const bad = await rawUpstream((_q, s) => {
      s.writeHead(400, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      s.end(gzipSync(JSON.stringify({ error: { message: 'bad field' } })).subarray(0, 12)); // cut short
    });
    const { res, good } = await setup(bad.url);
    expect(res.statusCode).toBe(400);
    expect(res.headers['x-router-provider']).toBe('bad');
    expect(good.requests).toHaveLength(0);
  });

  it('a compressed answer that inflates past the bound fails over as body_too_large', async () => {
    const bad = await rawUpstream((_q, s) => {
      s.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      s.end(gzipSync(Buffer.alloc(70 * 1024 * 1024, 32))); // 70 MB of spaces, ~70 KB on the wire
    });
    const { res } = await setup(bad.url);
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-router-trail']).toBe('bad/m=body_too_large');
  });

  it('non-JSON data events in a stream are dropped, never relayed', async () => {
    const chunk = (delta: Record<string, unknown>) =>
      `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: null }] })}\n\n`;
    const bad = await rawUpstream((_q, s) => {
      s.writeHead(200, { 'content-type': 'text/event-stream' });
      s.write(chunk({ role: 'assistant', content: '' }));
      s.write('data: <script>alert(1)</script>\n\n');
      s.write(chunk({ content: 'Hello' }));
      s.write('data: not json either\n\n');
      s.end('data: [DONE]\n\n');
    });
    const { res, text } = await setup(bad.url, true);
    expect(res.statusCode).toBe(200);
    expect(text).toContain('"content":"Hello"');
    expect(text).not.toContain('script');
    expect(text).not.toContain('not json');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });
});

describe('a stream that ends without [DONE]', () => {
  const chunk = (delta: Record<string, unknown>, finish: string | null = null) =>
    `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;

  it('an event that never ends is cut at its bound: failed over before content, an error event after', async () => {
    const endless = (s: ServerResponse, first: string): void => {
      s.writeHead(200, { 'content-type': 'text/event-stream' });
      s.write(first);
      s.write('data: {"id":"c","choices":[{"index":0,"delta":{"content":"');
      const kib = 'a'.repeat(64 * 1024);
      let sent = 0;
      // Paced by back-pressure; stops when the gateway drops the connection (or after 64 MiB, as a bound).
      const more = (): void => {
        while (!s.destroyed && sent < 1024) {
          sent++;
          if (!s.write(kib)) return void s.once('drain', more);
        }
        s.end();
      };
      more();
    };
    const before = await rawUpstream((_q, s) => endless(s, chunk({ role: 'assistant', content: '' })));
    const early = await setup(before.url, true);
    expect(early.res.statusCode).toBe(200);
    expect(early.res.headers['x-router-trail']).toBe('bad/m=sse_event_too_large');
    expect(early.res.headers['x-router-provider']).toBe('good');
    expect(early.text.trimEnd().endsWith('data: [DONE]')).toBe(true);

    const after = await rawUpstream((_q, s) => endless(s, chunk({ content: 'Begun, ' })));
    const late = await setup(after.url, true);
    expect(late.res.statusCode).toBe(200);
    expect(late.text).toContain('Begun, ');
    expect(late.text).toContain('"code":"stream_interrupted"');
    expect(late.text).toContain('sse_event_too_large');
    expect(late.text).not.toContain('aaaa');
    expect(late.text).not.toContain('[DONE]');
  });

  it('frames without content, endlessly, are cut at their bound and failed over', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, { 'content-type': 'text/event-stream' });
      const roleOnly = chunk({ role: 'assistant' }).repeat(256);
      let sent = 0;
      // Paced by back-pressure; stops when the gateway drops the connection (or after ~80 MB, as a bound).
      const more = (): void => {
        while (!s.destroyed && sent < 2_000) {
          sent++;
          if (!s.write(roleOnly)) return void s.once('drain', more);
        }
        s.end();
      };
      more();
    });
    const { res, text } = await setup(up.url, true);
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-router-trail']).toBe('bad/m=preamble_too_large');
    expect(res.headers['x-router-provider']).toBe('good');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });

  it('after its finish_reason is a finished answer (some compatible servers omit [DONE])', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, { 'content-type': 'text/event-stream' });
      s.write(chunk({ role: 'assistant', content: '' }));
      s.write(chunk({ content: 'Complete answer.' }));
      s.end(chunk({}, 'stop'));
    });
    const { res, text } = await setup(up.url, true);
    expect(res.statusCode).toBe(200);
    expect(text).toContain('Complete answer.');
    expect(text).not.toContain('"error"');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });

  it('before any finish_reason is cut: it ends with an error event and no [DONE]', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, { 'content-type': 'text/event-stream' });
      s.write(chunk({ role: 'assistant', content: '' }));
      s.end(chunk({ content: 'Half an ans' }));
    });
    const { res, text } = await setup(up.url, true);
    expect(res.statusCode).toBe(200);
    expect(text).toContain('Half an ans');
    expect(text).toContain('"code":"stream_interrupted"');
    expect(text).not.toContain('[DONE]');
  });
});

describe("upstream wire formats other than our simulator's", () => {
  const chunk = (choices: Record<string, unknown>[]) =>
    JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices });
  const delta = (content: string, index = 0, finish: string | null = null) =>
    chunk([{ index, delta: { content }, finish_reason: finish }]);

  it('a leading BOM, an event on several data lines and data after extra spaces all reach the SDK', async () => {
    // Split where JSON allows whitespace: the joined text is valid JSON again.
    const b = delta('B');
    const cut = b.indexOf('"choices"');
    const [head, tail] = [b.slice(0, cut), b.slice(cut)];
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, { 'content-type': 'text/event-stream' });
      s.write(`\uFEFFdata: ${delta('A')}\n\n`);
      s.write(`data: ${head}\ndata: ${tail}\n\n`); // valid SSE: the lines join with a newline
      s.write(`data:   ${delta('C')}\n\n`);
      s.write(`data: ${delta('', 0, 'stop')}\n\n`);
      s.end('data:  [DONE]\n\n');
    });
    const gw = track(
      await startGateway({
        providers: [simProvider('up', up.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['up/m'] } },
      }),
    );
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const stream = await client.chat.completions.create({
      model: 'r',
      stream: true,
      messages: [{ role: 'user', content: 'hi' }],
    });
    let text = '';
    let finish: string | null | undefined;
    for await (const c of stream) {
      text += c.choices[0]?.delta.content ?? '';
      finish ??= c.choices[0]?.finish_reason;
    }
    expect(text).toBe('ABC');
    expect(finish).toBe('stop');
  });

  it('n > 1 without [DONE]: a close while one choice is unfinished is a cut stream, not a finished one', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, { 'content-type': 'text/event-stream' });
      s.write(`data: ${delta('one', 0)}\n\n`);
      s.write(`data: ${delta('two', 1)}\n\n`);
      s.end(`data: ${delta('', 0, 'stop')}\n\n`); // choice 1 never finishes
    });
    const { res, text } = await setup(up.url, true);
    expect(res.statusCode).toBe(200);
    expect(text).toContain('"code":"stream_interrupted"');
    expect(text).not.toContain('[DONE]');
  });

  it('n > 1 without [DONE]: a close after every choice finished is a finished answer', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, { 'content-type': 'text/event-stream' });
      s.write(`data: ${delta('one', 0)}\n\n`);
      s.write(`data: ${delta('two', 1)}\n\n`);
      s.write(`data: ${delta('', 0, 'stop')}\n\n`);
      s.end(`data: ${delta('', 1, 'length')}\n\n`);
    });
    const { res, text } = await setup(up.url, true);
    expect(res.statusCode).toBe(200);
    expect(text).not.toContain('"error"');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });

  it('a 200 whose body is an error object fails over like a 5xx, as the same error in a stream does', async () => {
    const bad = await rawUpstream((_q, s) => {
      s.writeHead(200, { 'content-type': 'application/json' });
      s.end(JSON.stringify({ error: { message: 'model overloaded', type: 'server_error', code: null } }));
    });
    const { res, text } = await setup(bad.url);
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-router-provider']).toBe('good');
    expect(res.headers['x-router-trail']).toBe('bad/m=error_in_answer');
    expect(text).not.toContain('overloaded');
    expect(JSON.parse(text)).toMatchObject({ object: 'chat.completion' });
  });

  it("a 429's retry-after-ms (OpenAI's header) sets the cooldown and the client's Retry-After", async () => {
    const limited = await rawUpstream((_q, s) => {
      s.writeHead(429, { 'content-type': 'application/json', 'retry-after-ms': '2500' });
      s.end(JSON.stringify({ error: { message: 'slow down', type: 'rate_limit_error', code: null } }));
    });
    const gw = track(
      await startGateway({
        providers: [simProvider('up', limited.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['up/m'] } },
      }),
    );
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', messages: [{ role: 'user', content: 'hi' }] }),
    });
    await res.body.text();
    expect(res.statusCode).toBe(429);
    expect(res.headers['retry-after']).toBe('3'); // 2.5 s, rounded up
    // The upstream is cooling down for those 2.5 s: the next request does not reach it.
    const again = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', messages: [{ role: 'user', content: 'hi' }] }),
    });
    await again.body.text();
    expect(again.statusCode).toBe(429);
    expect(Number(again.headers['retry-after'])).toBeGreaterThanOrEqual(2);
    expect(limited.hits()).toBe(1);
  });
});
