/**
 * Edges of the OpenAI-dialect stream relay (SPEC §2 commit/terminate, §8 non-JSON data dropped, README
 * "Failover and streams"): `event: error`, the end of an answer with n > 1, `[DONE]` with blanks. (Content
 * after a choice's finish is relayed: one-api style proxies put finish_reason on every chunk, audit-providers.)
 * Hand-written upstreams on loopback writing raw SSE, a simulator as the fallback.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startRawUpstream } from '../helpers/mock-upstream.js';
import { postChat, simProvider, startGateway } from '../helpers/gateway.js';

const track = closeAfterEach();

function rawUpstream(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<{ url: string; hits: () => number }> {
  return startRawUpstream(track, handler);
}

type Json = Record<string, unknown>;
const SSE = { 'content-type': 'text/event-stream' };
const chunk = (choices: Json[], extra: Json = {}): string =>
  `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices, ...extra })}\n\n`;
const one = (delta: Json, finish: string | null = null, index = 0): string =>
  chunk([{ index, delta, finish_reason: finish }]);

/** `bad` first, a simulator `good` second (priority); a short idle bound so a hang ends the test quickly. */
async function gatewayOver(bad: string, timeouts: Json = {}) {
  const good = track(await startSimulator({ name: 'good' }));
  const gw = track(
    await startGateway({
      providers: [simProvider('bad', bad, ['m'], { timeouts }), simProvider('good', good.url, ['m'])],
      routes: { r: { strategy: 'priority', targets: ['bad/m', 'good/m'] } },
    }),
  );
  return { gw, good };
}

async function streamFrom(bad: string, extra: Json = {}, timeouts: Json = {}) {
  const { gw, good } = await gatewayOver(bad, timeouts);
  const res = await postChat(gw, {
    model: 'r',
    stream: true,
    messages: [{ role: 'user', content: 'hi' }],
    ...extra,
  });
  return { res, text: res.text, good, gw };
}

/** The data payloads of a relayed SSE body, in order. */
function dataOf(text: string): string[] {
  return text
    .split('\n\n')
    .filter((e) => e.trim() !== '')
    .map((e) =>
      e
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart())
        .join('\n'),
    );
}

describe('OpenAI stream: in-stream errors the relay must recognise', () => {
  // The OpenAI SDK throws on an `event: error` event (streaming.ts): the gateway must read the event type,
  // not relay the error's data as if it were a chunk (without its `event:` line) and end with [DONE], which
  // would hand the client a cut answer as a finished one (SPEC §2 terminate: error event, no [DONE]).
  it('an `event: error` after content, then [DONE], ends with an error event and no [DONE]', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, SSE);
      s.write(one({ role: 'assistant', content: '' }));
      s.write(one({ content: 'Half an ans' }));
      s.write('event: error\ndata: {"message":"model overloaded","code":503}\n\n');
      s.end('data: [DONE]\n\n');
    });
    const { res, text } = await streamFrom(up.url);
    expect(res.status).toBe(200);
    expect(text).toContain('Half an ans');
    expect(text).not.toContain('[DONE]');
    expect(text).toContain('"code":"stream_interrupted"');
    // The upstream's error object is not relayed as though it were a chunk.
    expect(dataOf(text)).not.toContain('{"message":"model overloaded","code":503}');
  });

  // The same, with non-JSON error text (TGI/llama.cpp-style `event: error` + plain text).
  it('an `event: error` with plain-text data after content, then [DONE], is no finished answer', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, SSE);
      s.write(one({ role: 'assistant', content: '' }));
      s.write(one({ content: 'Half an ans' }));
      s.write('event: error\ndata: upstream worker crashed\n\n');
      s.end('data: [DONE]\n\n');
    });
    const { text } = await streamFrom(up.url);
    expect(text).toContain('Half an ans');
    expect(text).not.toContain('upstream worker crashed"'); // never relayed as data of its own
    expect(text).not.toContain('[DONE]');
    expect(text).toContain('"code":"stream_interrupted"');
  });

  // Pins: an `event: error` before content is failed over invisibly (the good upstream serves, no trace of it).
  it('an `event: error` before content, then [DONE], is failed over invisibly', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, SSE);
      s.write(one({ role: 'assistant', content: '' }));
      s.write('event: error\ndata: {"message":"model overloaded"}\n\n');
      s.end('data: [DONE]\n\n');
    });
    const { res, text, good } = await streamFrom(up.url);
    expect(res.status).toBe(200);
    expect(res.headers['x-router-provider']).toBe('good');
    expect(good.requests).toHaveLength(1);
    expect(text).not.toContain('overloaded');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });
});

describe('OpenAI stream: end-of-answer judgement', () => {
  // README: a stream that closes without [DONE] "counts as finished only once every choice has sent its
  // finish_reason". The client asked for n: 2 and choice 1 never came, so the close is a cut.
  it('n: 2, choice 0 finished, closed without [DONE] before choice 1 ever came: cut, not finished', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, SSE);
      s.write(one({ role: 'assistant', content: '' }));
      s.write(one({ content: 'First choice.' }));
      s.end(one({}, 'stop'));
    });
    const { text } = await streamFrom(up.url, { n: 2 });
    expect(text).toContain('First choice.');
    expect(text).not.toContain('[DONE]');
    expect(text).toContain('"code":"stream_interrupted"');
  });

  // Pins: n: 2 interleaved, choice 0 finishes early, choice 1 still open when the upstream closes → cut.
  it('n: 2 interleaved, choice 0 finished early, closed while choice 1 is open: cut with an error event', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, SSE);
      s.write(one({ content: 'A' }, null, 0));
      s.write(one({ content: 'B' }, null, 1));
      s.write(one({}, 'stop', 0));
      s.end(one({ content: 'B2' }, null, 1));
    });
    const { text } = await streamFrom(up.url, { n: 2 });
    expect(text).toContain('B2');
    expect(text).not.toContain('[DONE]');
    expect(text).toContain('"code":"stream_interrupted"');
  });

  // Pins (README: only "[DONE] with no content and no finish_reason" fails over): a role chunk and a
  // finish_reason, then close without [DONE], is an empty answer committed to this upstream, with [DONE].
  it('role-only + finish_reason, closed without [DONE]: an empty answer, committed, [DONE]', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, SSE);
      s.write(one({ role: 'assistant', content: '' }));
      s.end(one({}, 'stop'));
    });
    const { res, text, good } = await streamFrom(up.url);
    expect(res.headers['x-router-provider']).toBe('bad');
    expect(good.requests).toHaveLength(0);
    expect(text).toContain('"finish_reason":"stop"');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });

  // The OpenAI SDK ends at any data starting with "[DONE]", so the gateway takes "[DONE] " with a trailing
  // blank as the sentinel too: on a kept-open connection the finished answer ends with [DONE], rather than
  // waiting for idle_ms and being cut with an error event.
  it('"[DONE] " with a trailing blank on a kept-open connection still ends the answer cleanly', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, SSE);
      s.write(one({ role: 'assistant', content: '' }));
      s.write(one({ content: 'Whole.' }));
      s.write(one({}, 'stop'));
      s.write('data: [DONE] \n\n'); // and the connection stays open (keep-alive server)
    });
    const { text } = await streamFrom(up.url, {}, { idle_ms: 1500 });
    expect(text).toContain('Whole.');
    expect(text).not.toContain('"error"');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });

  // Pins: [DONE] sent without its blank line, then close; comments, retry:, a BOM around it.
  it('BOM, comments, retry: and a final [DONE] without a blank line: one clean answer', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, SSE);
      s.write('\uFEFF: keep-alive\nretry: 3000\n\n');
      s.write(one({ role: 'assistant', content: '' }));
      s.write(': OPENROUTER PROCESSING\n\n');
      s.write(one({ content: 'Hi' }));
      s.write(one({}, 'stop'));
      s.end('data: [DONE]');
    });
    const { gw } = await gatewayOver(up.url);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const stream = await client.chat.completions.create({
      model: 'r',
      stream: true,
      messages: [{ role: 'user', content: 'hi' }],
    });
    let got = '';
    let finish: string | null | undefined;
    for await (const c of stream) {
      got += c.choices[0]?.delta.content ?? '';
      finish ??= c.choices[0]?.finish_reason;
    }
    expect(got).toBe('Hi');
    expect(finish).toBe('stop');
  });
});

describe('OpenAI stream: commit point', () => {
  // Pins: a usage chunk with `choices: []` and a `choices: null` chunk before content are preamble: a close
  // before content fails over invisibly.
  it('usage (choices: []) and choices: null before any content, then close: failed over invisibly', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, SSE);
      s.write(chunk([], { usage: { prompt_tokens: 3, completion_tokens: 0, total_tokens: 3 } }));
      s.write(`data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', choices: null })}\n\n`);
      s.end();
    });
    const { res, text, good } = await streamFrom(up.url);
    expect(res.headers['x-router-provider']).toBe('good');
    expect(good.requests).toHaveLength(1);
    expect(text).not.toContain('"choices":null');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });

  // Pins: a refusal delta is the commit; an error after it is a terminate, not a failover.
  it('a refusal as the first content commits; an error object after it terminates', async () => {
    const up = await rawUpstream((_q, s) => {
      s.writeHead(200, SSE);
      s.write(one({ role: 'assistant', content: null, refusal: '' }));
      s.write(one({ refusal: "I can't help" }));
      s.end(`data: ${JSON.stringify({ error: { message: 'boom', type: 'server_error' } })}\n\n`);
    });
    const { res, text, good } = await streamFrom(up.url);
    expect(res.headers['x-router-provider']).toBe('bad');
    expect(good.requests).toHaveLength(0);
    expect(text).toContain("I can't help");
    expect(text).toContain('"code":"stream_interrupted"');
    expect(text).not.toContain('[DONE]');
  });
});
