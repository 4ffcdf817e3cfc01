/**
 * Whitespace stop sequences on Anthropic upstreams (applied by the gateway, since Anthropic refuses them) and
 * secrets scrubbed in their HTML-escaped spellings, through the real wire:
 * - a stream cut at a local stop is a finished answer: what the upstream does after it (an error event, more
 *   text it keeps writing) never turns it into a cut stream, and the upstream is not left generating after
 *   the client's answer has ended;
 * - a stop at the very first character is an empty finished answer, not a failure to fail over from;
 * - a tool call relayed before the stop keeps `finish_reason` `tool_calls`, streamed as in JSON;
 * - with `response_format` JSON the stop applies to the JSON answer, not to Claude's preface around it;
 * - a stop Claude applied itself (`END`), a `"\n"` inside thinking, and a failover to an OpenAI upstream
 *   (which gets `stop` as the client sent it) keep the answer whole;
 * - HTML-escaped secrets are masked (passthrough bytes with Content-Length, streamed deltas), while ordinary
 *   text with `&amp;` / `&#39;` passes untouched.
 */
import type { ServerResponse } from 'node:http';
import { createOpenAI } from '@ai-sdk/openai';
import { streamText } from 'ai';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, postTo, startGateway } from '../helpers/gateway.js';
import {
  anthropicMessage,
  anthropicSseFrame,
  claudeClosing,
  claudeOpening,
  claudeSse,
  claudeTextDelta,
  collectChunks,
} from '../helpers/anthropic-route.js';
import {
  chatCompletion,
  chunkFrame,
  sendJson,
  startMock,
  watchedUpstream,
} from '../helpers/mock-upstream.js';
import { scrape, select } from '../helpers/prom-text.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;
const USAGE = { input_tokens: 9, output_tokens: 12 };
const ASK = [{ role: 'user' as const, content: 'one line please' }];

/** A gateway whose route `r` is Anthropic provider `anth` (model claude-x) at `url`, then `more` targets. */
async function gateway(
  url: string,
  opts: { extraProviders?: Json[]; extraTargets?: string[]; timeouts?: Json } = {},
) {
  return track(
    await startGateway({
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: url,
          api_key: 'sk-ant-test-0001',
          models: [{ name: 'claude-x' }],
          ...(opts.timeouts === undefined ? {} : { timeouts: opts.timeouts }),
        },
        ...(opts.extraProviders ?? []),
      ],
      routes: {
        r: { strategy: 'priority', targets: ['anth/claude-x', ...(opts.extraTargets ?? [])] },
      },
    }),
  );
}

const OVERLOADED = anthropicSseFrame({
  type: 'error',
  error: { type: 'overloaded_error', message: 'Overloaded' },
});

/** The `data:` payloads of an SSE body, in order. */
function dataLines(text: string): string[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith('data: '))
    .map((l) => l.slice(6));
}

/** The JSON chunks of an SSE body (not [DONE]). */
function chunksOf(text: string): Json[] {
  return dataLines(text)
    .filter((d) => d !== '[DONE]')
    .map((d) => JSON.parse(d) as Json);
}

function contentOf(chunks: Json[]): string {
  return chunks
    .map((c) => {
      const choice = (c.choices as Json[] | undefined)?.[0];
      const delta = choice?.delta as Json | undefined;
      return typeof delta?.content === 'string' ? delta.content : '';
    })
    .join('');
}

function finishesOf(chunks: Json[]): unknown[] {
  return chunks
    .map((c) => (c.choices as Json[] | undefined)?.[0]?.finish_reason)
    .filter((f) => f !== null && f !== undefined);
}

describe('a stream cut at a local stop is a finished answer', () => {
  it('an error event Claude sends after the stop does not turn the finished answer into a cut stream', async () => {
    const up = track(
      await startMock((_req, res: ServerResponse) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          claudeOpening() +
            claudeTextDelta('first line\nsecond') +
            claudeTextDelta(' line goes on') +
            OVERLOADED,
        );
      }),
    );
    const gw = await gateway(up.url);
    const r = await postChat(gw, { model: 'r', messages: ASK, stop: '\n', stream: true });
    expect(r.status).toBe(200);
    const chunks = chunksOf(r.text);
    expect(contentOf(chunks)).toBe('first line');
    expect(finishesOf(chunks)).toEqual(['stop']);
    // The client was told the answer finished with `stop`: an error after that contradicts it.
    expect(chunks.some((c) => c.error !== undefined)).toBe(false);
    expect(dataLines(r.text).at(-1)).toBe('[DONE]');
    const m = await scrape(gw.url);
    expect(select(m, 'llm_router_stream_failures_total').reduce((s, x) => s + x.value, 0)).toBe(0);
  });

  it('a stop at the very first character is an empty finished answer, even if Claude then fails', async () => {
    const up = track(
      await startMock((_req, res: ServerResponse) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(claudeOpening() + claudeTextDelta('\nHere is a long answer') + OVERLOADED);
      }),
    );
    const gw = await gateway(up.url);
    const r = await postChat(gw, { model: 'r', messages: ASK, stop: ['\n'], stream: true });
    expect(r.status).toBe(200);
    const chunks = chunksOf(r.text);
    expect(contentOf(chunks)).toBe('');
    expect(finishesOf(chunks)).toEqual(['stop']);
    expect(dataLines(r.text).at(-1)).toBe('[DONE]');
    expect(up.received).toHaveLength(1);
  });

  it('the upstream is not left generating after the stop: the client stream ends and the upstream is cut', async () => {
    let finishedByItself = false;
    const up = await watchedUpstream(track, (_r, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(claudeOpening() + claudeTextDelta('one line\nand then'));
      // Claude goes on writing (as it does up to max_tokens), a delta every 100 ms for 2 s.
      let n = 0;
      const t = setInterval(() => {
        if (res.destroyed) return clearInterval(t);
        if (++n < 20) {
          res.write(claudeTextDelta(` more ${n}`));
          return;
        }
        clearInterval(t);
        finishedByItself = true;
        res.end(claudeClosing(300));
      }, 100);
    });
    const gw = await gateway(up.url);
    const r = await postChat(gw, { model: 'r', messages: ASK, stop: '\n', stream: true });
    const chunks = chunksOf(r.text);
    expect(contentOf(chunks)).toBe('one line');
    expect(finishesOf(chunks)).toEqual(['stop']);
    expect(dataLines(r.text).at(-1)).toBe('[DONE]');
    // The answer ended at the stop: the gateway did not wait for (nor pay for) the rest of Claude's writing,
    // nor read it for a second to keep the connection (the close takes a moment to reach the upstream).
    expect(finishedByItself).toBe(false);
    await until('the upstream request closed', () => up.recs[0]?.closed === true, 500);
  });
});

describe('what the local stop keeps', () => {
  /** Text, a tool call, then text with the stop in it: Claude's interleaved lead-ins. */
  const BLOCKS: Json[] = [
    { type: 'text', text: 'I will check.' },
    { type: 'tool_use', id: 'toolu_1', name: 'find', input: { q: 'x' } },
    { type: 'text', text: '\nThen the other one.' },
    { type: 'tool_use', id: 'toolu_2', name: 'find', input: { q: 'y' } },
  ];

  it('a tool call relayed before the stop keeps finish_reason tool_calls, streamed as in JSON', async () => {
    const up = track(
      await startMock((req, res: ServerResponse) => {
        if ((req.body as Json).stream === true) {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.end(claudeSse(BLOCKS, 'tool_use', USAGE));
        } else sendJson(res, 200, anthropicMessage(BLOCKS, 'tool_use', USAGE));
      }),
    );
    const gw = await gateway(up.url);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const json = await client.chat.completions.create({ model: 'r', messages: ASK, stop: '\n' });
    expect(json.choices[0]?.message.tool_calls?.map((t) => t.id)).toEqual(['toolu_1']);
    expect(json.choices[0]?.finish_reason).toBe('tool_calls');

    const chunks = await collectChunks(
      await client.chat.completions.create({ model: 'r', messages: ASK, stop: '\n', stream: true }),
    );
    const ids = chunks.flatMap((c) => c.choices[0]?.delta.tool_calls?.map((t) => t.id) ?? []);
    expect(ids.filter((id) => id !== undefined)).toEqual(['toolu_1']);
    expect(chunks.map((c) => c.choices[0]?.finish_reason).filter((f) => f != null)).toEqual(['tool_calls']);
  });

  it('with response_format json_object the stop applies to the JSON answer, not to the preface Claude writes', async () => {
    const text = 'Here is the JSON you asked for:\n\n```json\n{"city": "Paris", "celsius": 21}\n```';
    const up = track(
      await startMock((req, res: ServerResponse) => {
        const blocks = [{ type: 'text', text }];
        if ((req.body as Json).stream === true) {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.end(claudeSse(blocks, 'end_turn', USAGE));
        } else sendJson(res, 200, anthropicMessage(blocks, 'end_turn', USAGE));
      }),
    );
    const gw = await gateway(up.url);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const ask = {
      model: 'r',
      messages: ASK,
      stop: ['\n\n'],
      response_format: { type: 'json_object' as const },
    };
    const json = await client.chat.completions.create(ask);
    expect(JSON.parse(json.choices[0]?.message.content ?? '')).toEqual({ city: 'Paris', celsius: 21 });
    const chunks = await collectChunks(await client.chat.completions.create({ ...ask, stream: true }));
    const streamed = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
    expect(JSON.parse(streamed)).toEqual({ city: 'Paris', celsius: 21 });
  });

  it('a stop Claude applied itself (END) and a "\\n" inside thinking leave the answer whole', async () => {
    const blocks: Json[] = [
      { type: 'thinking', thinking: 'Step one.\nStep two.', signature: 'sig-1' },
      { type: 'text', text: 'All on one line, done' },
    ];
    const up = track(
      await startMock((_req, res: ServerResponse) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(claudeSse(blocks, 'stop_sequence', USAGE, 'END'));
      }),
    );
    const gw = await gateway(up.url);
    const r = await postChat(gw, {
      model: 'r',
      messages: ASK,
      stop: ['\n', 'END'],
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = chunksOf(r.text);
    expect(contentOf(chunks)).toBe('All on one line, done');
    const reasoning = chunks
      .map((c) => ((c.choices as Json[] | undefined)?.[0]?.delta as Json | undefined)?.reasoning_content)
      .filter((x) => typeof x === 'string')
      .join('');
    expect(reasoning).toBe('Step one.\nStep two.');
    expect(finishesOf(chunks)).toEqual(['stop']);
    expect((chunks.at(-1)?.usage as Json | undefined)?.completion_tokens).toBe(12);
    expect(r.headers['x-router-provider']).toBe('anth');
    expect(up.received[0]?.body.stop_sequences).toEqual(['END']);
  });

  it('the ai SDK gets the line before "\\n" and finishReason stop', async () => {
    const up = track(
      await startMock((_req, res: ServerResponse) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(claudeSse([{ type: 'text', text: 'the first line\nthe second' }], 'end_turn', USAGE));
      }),
    );
    const gw = await gateway(up.url);
    const st = streamText({
      model: createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' }).chat('r'),
      prompt: 'one line please',
      stopSequences: ['\n'],
      maxRetries: 0,
    });
    expect(await st.text).toBe('the first line');
    expect(await st.finishReason).toBe('stop');
  });

  it('after a failover, the OpenAI upstream gets `stop` as the client sent it and its answer is relayed as is', async () => {
    const anth = track(await startMock((_req, res: ServerResponse) => sendJson(res, 529, { type: 'error' })));
    const oai = track(
      await startMock((req, res: ServerResponse) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame(req.body.model, { role: 'assistant', content: '' }));
        res.write(chunkFrame(req.body.model, { content: 'one line' }));
        res.write(chunkFrame(req.body.model, {}, 'stop'));
        res.end('data: [DONE]\n\n');
      }),
    );
    const gw = await gateway(anth.url, {
      extraProviders: [
        {
          name: 'oai',
          kind: 'openai',
          base_url: `${oai.url}/v1`,
          api_key: 'sk-oai-0002',
          models: [{ name: 'g' }],
        },
      ],
      extraTargets: ['oai/g'],
    });
    const r = await postChat(gw, { model: 'r', messages: ASK, stop: ['\n', 'END'], stream: true });
    expect(r.headers['x-router-provider']).toBe('oai');
    expect(oai.received[0]?.body.stop).toEqual(['\n', 'END']);
    expect(contentOf(chunksOf(r.text))).toBe('one line');
    expect(r.headers['x-router-attempts']).toBe('2');
  });
});

describe('secrets in HTML spellings', () => {
  const KEY = "sk-live+AbC/123'xyz0";
  const HTML_FORMS = ['sk-live&#43;AbC/123&#39;xyz0', 'sk-live+AbC&#x2F;123&#x27;xyz0'];

  it('a passthrough answer masks the HTML-escaped key byte for byte (Content-Length true) and leaves &amp; alone', async () => {
    const page = `<p>key ${HTML_FORMS[0]} rejected &amp; logged; it&#39;s <b>${HTML_FORMS[1]}</b></p>`;
    const up = track(
      await startMock((_req, res: ServerResponse) => {
        const body = JSON.stringify({ object: 'list', data: [{ text: page }] });
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-length': String(Buffer.byteLength(body)),
        });
        res.end(body);
      }),
    );
    const gw = track(
      await startGateway({
        server: { passthrough: 'oai' },
        providers: [
          { name: 'oai', kind: 'openai', base_url: `${up.url}/v1`, api_key: KEY, models: [{ name: 'g' }] },
        ],
        routes: { r: { strategy: 'priority', targets: ['oai/g'] } },
      }),
    );
    const res = await request(`${gw.url}/v1/files`, { method: 'GET' });
    const text = await res.body.text();
    expect(res.statusCode).toBe(200);
    expect(Number(res.headers['content-length'])).toBe(Buffer.byteLength(text));
    for (const f of HTML_FORMS) expect(text).not.toContain(f);
    expect(text).toContain('rejected &amp; logged; it&#39;s <b>');
    expect(text).toContain('*'.repeat(HTML_FORMS[0]!.length));
  });

  it('streamed chat deltas: the HTML-escaped key split over deltas is masked, ordinary entities pass whole', async () => {
    const form = HTML_FORMS[0]!;
    const pieces = ['Use &amp; not &#39;and&#39;: ', form.slice(0, 9), form.slice(9), ' &lt;done&gt;'];
    const up = track(
      await startMock((req, res: ServerResponse) => {
        if (req.body.stream !== true) return sendJson(res, 200, chatCompletion(req.body));
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        for (const p of pieces) res.write(chunkFrame(req.body.model, { content: p }));
        res.write(chunkFrame(req.body.model, {}, 'stop'));
        res.end('data: [DONE]\n\n');
      }),
    );
    const gw = track(
      await startGateway({
        providers: [
          { name: 'oai', kind: 'openai', base_url: `${up.url}/v1`, api_key: KEY, models: [{ name: 'g' }] },
        ],
        routes: { r: { strategy: 'priority', targets: ['oai/g'] } },
      }),
    );
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: ASK, stream: true });
    const content = contentOf(chunksOf(r.text));
    expect(content).not.toContain('&#43;AbC');
    expect(content.startsWith('Use &amp; not &#39;and&#39;: ')).toBe(true);
    expect(content.endsWith(' &lt;done&gt;')).toBe(true);
  });
});
