/**
 * A `stop` that an OpenAI reasoning model refuses ("Unsupported parameter: 'stop' is not supported with this
 * model", as o3, o4-mini and GPT-5 answer) is applied by the gateway to the answer (param-fit.ts 'local',
 * adapters/local-stops.ts). Rules held here, through the real wire with upstreams that refuse `stop` as o3
 * does:
 * - the answer is cut where the first stop begins, whichever stop is listed first, wherever it falls across
 *   deltas (a stop split over many deltas, at the very first character, beside multi-byte text); reasoning
 *   and tool call arguments are not cut; text held back as a stop's possible start still goes out when a tool
 *   call follows;
 * - the client's answer is finished at the stop: what the upstream does after it (drop its connection, send
 *   `[DONE]` without a finish) cannot turn that answer into a failure or a failover, and a client that asked
 *   for no usage is not held until the upstream has written the rest of what it would have written;
 * - the fit lives per upstream: `/router/status` shows it, a reload keeps it, another upstream of the same
 *   route that takes `stop` still gets it, and a refusal of `stop` to a request without one teaches nothing;
 * - an answer in the other form (JSON to a stream, SSE to a JSON request) is cut the same way;
 * - the OpenAI SDK, the `ai` SDK (stopSequences) and LangChain (stop bound, as a ReAct agent does) get what
 *   OpenAI itself would have given them.
 */
import type { ServerResponse } from 'node:http';
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';
import { generateText, streamText } from 'ai';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { collectChunks } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import {
  gate,
  refuseAsOpenAI,
  sendJson,
  startMock,
  type Received,
  REASONING_USAGE,
  refusedStopAsO3,
} from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';
import { sseEvents } from '../helpers/sim-wire.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;

const STOP = '\nObservation:';
const USAGE = REASONING_USAGE;
const TIMEOUTS = { connect_ms: 1000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 8000 };
const ASK = [{ role: 'user' as const, content: 'weather?' }];

/** One `chat.completion.chunk` frame of `choices` (and `usage`), as OpenAI writes them. */
function frame(choices: Json[], usage: unknown = null): string {
  const chunk = {
    id: 'chatcmpl-o3',
    object: 'chat.completion.chunk',
    created: 1,
    model: 'o3',
    choices,
    usage,
  };
  return `data: ${JSON.stringify(chunk)}\n\n`;
}
const delta = (d: Json, finish: string | null = null, index = 0): string =>
  frame([{ index, delta: d, finish_reason: finish }]);
const ROLE = delta({ role: 'assistant', content: '' });

/** Content streamed as `pieces`, one delta each, then the finish, the usage chunk and `[DONE]`. */
function textStream(pieces: readonly string[], finish = 'stop'): string {
  return `${ROLE}${pieces.map((p) => delta({ content: p })).join('')}${delta({}, finish)}${frame([], USAGE)}data: [DONE]\n\n`;
}

/** `text` in pieces of `size` characters (code points: an emoji stays whole). */
function pieces(text: string, size: number): string[] {
  const chars = [...text];
  const out: string[] = [];
  for (let i = 0; i < chars.length; i += size) out.push(chars.slice(i, i + size).join(''));
  return out;
}

function completion(content: string, extra: Json = {}): Json {
  return {
    id: 'chatcmpl-o3',
    object: 'chat.completion',
    created: 1,
    model: 'o3',
    choices: [{ index: 0, message: { role: 'assistant', content, ...extra }, finish_reason: 'stop' }],
    usage: USAGE,
  };
}

type Answer = (req: Received, res: ServerResponse, n: number) => void | Promise<void>;

/** As o3 answers: a body with `stop` is refused with OpenAI's 400; any other goes to `answer`. */
function refusesStop(answer: Answer): Answer {
  return (req, res, n) => {
    if (refusedStopAsO3(req.body, res)) return;
    return answer(req, res, n);
  };
}

/** Writes `sse` as an event stream and ends it. */
function sse(res: ServerResponse, text: string): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(text);
}

async function gatewayOver(
  upstreams: Record<string, string>,
  extra: Json = {},
): Promise<{ gw: TestGateway; client: OpenAI; config: Json }> {
  const config = {
    providers: Object.entries(upstreams).map(([name, url]) =>
      simProvider(name, url, ['o3'], { api_key: `sk-${name}-secret`, timeouts: TIMEOUTS }),
    ),
    routes: { agent: { strategy: 'priority', targets: Object.keys(upstreams).map((n) => `${n}/o3`) } },
    ...extra,
  };
  const gw = track(await startGateway(config));
  return { gw, client: new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 }), config };
}

async function one(answer: Answer) {
  const up = track(await startMock(refusesStop(answer)));
  return { up, ...(await gatewayOver({ oai: up.url })) };
}

/** The stream's text of choice `index` and its finish reasons, from the OpenAI SDK's chunks. */
function read(chunks: OpenAI.Chat.Completions.ChatCompletionChunk[], index = 0) {
  const mine = chunks.flatMap((c) => c.choices.filter((ch) => ch.index === index));
  return {
    text: mine.map((ch) => ch.delta.content ?? '').join(''),
    finishes: mine.map((ch) => ch.finish_reason).filter((f) => f != null),
  };
}

async function rawStream(gw: TestGateway, body: Json) {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer k' },
    body: JSON.stringify({ model: 'agent', messages: ASK, stream: true, ...body }),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text, events: sseEvents(text) };
}

/** The text of every content delta of a raw SSE body's choice 0, and whether it held an error event. */
function rawText(events: { data: string }[]) {
  let text = '';
  let error = false;
  const finishes: unknown[] = [];
  for (const e of events) {
    if (e.data === '[DONE]') continue;
    const obj = JSON.parse(e.data) as { error?: unknown; choices?: Json[] };
    if (obj.error !== undefined) error = true;
    for (const c of obj.choices ?? []) {
      const d = c.delta as Json | undefined;
      if (typeof d?.content === 'string') text += d.content;
      if (c.finish_reason != null) finishes.push(c.finish_reason);
    }
  }
  return { text, error, finishes, done: events.at(-1)?.data === '[DONE]' };
}

async function streamFailures(gw: TestGateway): Promise<number> {
  const samples = await scrape(gw.url);
  return samples
    .filter((s) => s.name === 'llm_router_stream_failures_total')
    .reduce((sum, s) => sum + s.value, 0);
}

async function fitsOf(gw: TestGateway): Promise<Map<string, Json>> {
  const s = (await (await fetch(`${gw.url}/router/status`)).json()) as {
    upstreams: { id: string; request_fits: Json }[];
  };
  return new Map(s.upstreams.map((u) => [u.id, u.request_fits]));
}

describe('the cut, stream by stream', () => {
  it('a stop at the very first character: an empty answer finished with stop, not a failover', async () => {
    const { up, gw, client } = await one((_req, res) =>
      sse(res, textStream(['\nObservation: sunny', '\nThought: done'])),
    );
    const chunks = await collectChunks(
      await client.chat.completions.create({
        model: 'agent',
        messages: ASK,
        stop: [STOP],
        stream: true,
        stream_options: { include_usage: true },
      }),
    );
    expect(read(chunks)).toEqual({ text: '', finishes: ['stop'] });
    expect(chunks.at(-1)?.usage?.completion_tokens).toBe(90);
    expect(up.received).toHaveLength(2); // the refused send and the fitted one: no other attempt
    expect(await streamFailures(gw)).toBe(0);
  });

  it('the stop that comes first in the text wins whatever its place in the list, split over many deltas', async () => {
    const text = 'Thought: sunny ☀️ 21°C 🌡️\nFinal Answer: sunny\nObservation: x';
    const { client } = await one((_req, res) => sse(res, textStream(pieces(text, 1))));
    const chunks = await collectChunks(
      await client.chat.completions.create({
        model: 'agent',
        messages: ASK,
        stop: [STOP, '\nFinal Answer:'],
        stream: true,
      }),
    );
    expect(read(chunks)).toEqual({ text: 'Thought: sunny ☀️ 21°C 🌡️', finishes: ['stop'] });
  });

  it('reasoning and tool call arguments that hold the stop are not cut; text held back goes out before the tool call', async () => {
    const args = '{"q":"a\\nObservation: b"}';
    const { client } = await one((_req, res) =>
      sse(
        res,
        `${ROLE}${delta({ reasoning_content: 'I think\nObservation: maybe' })}${delta({ content: 'Calling' })}${delta({ content: '\n' })}${delta(
          {
            tool_calls: [
              { index: 0, id: 'call_1', type: 'function', function: { name: 'search', arguments: '' } },
            ],
          },
        )}${delta({ tool_calls: [{ index: 0, function: { arguments: args } }] })}${delta({}, 'tool_calls')}${frame([], USAGE)}data: [DONE]\n\n`,
      ),
    );
    const chunks = await collectChunks(
      await client.chat.completions.create({ model: 'agent', messages: ASK, stop: STOP, stream: true }),
    );
    const deltas = chunks.flatMap((c) => c.choices.map((ch) => ch.delta as Json));
    expect(deltas.map((d) => d.reasoning_content ?? '').join('')).toBe('I think\nObservation: maybe');
    expect(read(chunks)).toEqual({ text: 'Calling\n', finishes: ['tool_calls'] });
    const argText = chunks
      .flatMap((c) => c.choices.flatMap((ch) => ch.delta.tool_calls ?? []))
      .map((t) => t.function?.arguments ?? '')
      .join('');
    expect(argText).toBe(args);
  });

  it('a finish chunk that carries the stop: cut there, one finish, the model usage counted once', async () => {
    const { gw, client } = await one((_req, res) =>
      sse(
        res,
        `${ROLE}${delta({ content: 'Action: search' })}${delta({ content: '[x]\nObservation: y' }, 'length')}${frame([], USAGE)}data: [DONE]\n\n`,
      ),
    );
    const chunks = await collectChunks(
      await client.chat.completions.create({
        model: 'agent',
        messages: ASK,
        stop: STOP,
        stream: true,
        stream_options: { include_usage: true },
      }),
    );
    expect(read(chunks)).toEqual({ text: 'Action: search[x]', finishes: ['stop'] });
    expect(chunks.filter((c) => c.usage != null).map((c) => c.usage?.completion_tokens)).toEqual([90]);
    await until('the request counted', async () => {
      const v = value(await scrape(gw.url), 'llm_router_tokens_total', {
        provider: 'oai',
        model: 'o3',
        kind: 'completion',
      });
      return v === 90;
    });
    expect(await streamFailures(gw)).toBe(0);
  });

  it('n = 2 with both choices in each chunk: each cut at its own stop, the other choice untouched', async () => {
    const both = (a: string, b: string): string =>
      frame([
        { index: 0, delta: { content: a }, finish_reason: null },
        { index: 1, delta: { content: b }, finish_reason: null },
      ]);
    const { client } = await one((_req, res) =>
      sse(
        res,
        `${both('', '')}${both('one\nObs', 'two, ')}${both('ervation: z', 'no stop ')}${both('tail', 'here')}${frame(
          [
            { index: 0, delta: {}, finish_reason: 'stop' },
            { index: 1, delta: {}, finish_reason: 'stop' },
          ],
        )}data: [DONE]\n\n`,
      ),
    );
    const chunks = await collectChunks(
      await client.chat.completions.create({ model: 'agent', messages: ASK, stop: STOP, n: 2, stream: true }),
    );
    expect(read(chunks, 0)).toEqual({ text: 'one', finishes: ['stop'] });
    expect(read(chunks, 1)).toEqual({ text: 'two, no stop here', finishes: ['stop'] });
  });
});

describe('after the stop, the client answer is finished', () => {
  it('a client that asked for no usage gets [DONE] without waiting for what the model writes past the stop', async () => {
    // Nothing past the stop reaches this client (no usage was asked, and the gateway adds no stream_options):
    // holding its [DONE] until the upstream is done holds an agent loop for the whole unwanted rest.
    const released = gate(1500);
    const { gw } = await one(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(`${ROLE}${delta({ content: 'Action: search[x]' })}${delta({ content: '\nObservation: y' })}`);
      await released.wait;
      res.end(`${delta({ content: ' and more' })}${delta({}, 'stop')}data: [DONE]\n\n`);
    });
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer k' },
      body: JSON.stringify({ model: 'agent', messages: ASK, stream: true, stop: [STOP] }),
    });
    let text = '';
    for await (const c of res.body) {
      text += (c as Buffer).toString('utf8');
      if (text.includes('data: [DONE]')) released.open();
    }
    expect(rawText(sseEvents(text))).toMatchObject({ text: 'Action: search[x]', finishes: ['stop'] });
    expect(await released.wait).toBe('client'); // [DONE] came while the upstream was still writing
  });

  it('an upstream that drops its connection after the stop does not turn the finished answer into an error', async () => {
    const { gw } = await one(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(`${ROLE}${delta({ content: 'Action: search[x]' })}${delta({ content: '\nObservation: y' })}`);
      res.write(delta({ content: ' the model rambles on' }));
      await new Promise((r) => setTimeout(r, 50));
      res.destroy();
    });
    const r = await rawStream(gw, { stop: [STOP], stream_options: { include_usage: true } });
    expect(r.status).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, 30)); // the request is counted after its turn
    expect({ ...rawText(r.events), streamFailures: await streamFailures(gw) }).toEqual({
      text: 'Action: search[x]',
      finishes: ['stop'],
      error: false,
      done: true,
      streamFailures: 0,
    });
  });

  it('a first content entirely cut, then [DONE] with no finish_reason: an empty answer, not a failover', async () => {
    const { up, gw } = await one((_req, res) =>
      sse(res, `${ROLE}${delta({ content: '\nObservation: sunny' })}data: [DONE]\n\n`),
    );
    const r = await rawStream(gw, { stop: STOP });
    expect(r.status).toBe(200);
    expect(rawText(r.events)).toMatchObject({ text: '', finishes: ['stop'], error: false, done: true });
    expect(up.received).toHaveLength(2);
  });
});

describe('the fit per upstream', () => {
  it('status shows it, a reload keeps it, and a sibling that takes stop still gets it (its answer relayed as it wrote it)', async () => {
    let aFails = false;
    const a = track(
      await startMock(
        refusesStop((req, res) => {
          if (aFails) return sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } });
          sendJson(res, 200, completion('Action: a\nObservation: cut'));
        }),
      ),
    );
    // b takes stop: it applies it itself, and what it answers is not the gateway's to cut again.
    const b = track(
      await startMock((_req, res) => sendJson(res, 200, completion('from b\nObservation: kept'))),
    );
    const { gw, client, config } = await gatewayOver({ a: a.url, b: b.url });
    const first = await client.chat.completions.create({ model: 'agent', messages: ASK, stop: [STOP] });
    expect(first.choices[0]?.message.content).toBe('Action: a');
    expect((await fitsOf(gw)).get('a/o3')).toEqual({ stop: 'applied by the gateway' });
    expect((await fitsOf(gw)).get('b/o3')).toEqual({});

    gw.gateway.reload(parseConfigText(JSON.stringify({ ...config, routing: { max_attempts: 3 } }), {}));
    expect((await fitsOf(gw)).get('a/o3')).toEqual({ stop: 'applied by the gateway' });
    const again = await client.chat.completions.create({ model: 'agent', messages: ASK, stop: [STOP] });
    expect(again.choices[0]?.message.content).toBe('Action: a');
    expect(a.received).toHaveLength(3); // no refused send after the reload
    expect('stop' in a.received[2]!.body).toBe(false);

    aFails = true;
    const failed = await client.chat.completions.create({ model: 'agent', messages: ASK, stop: [STOP] });
    expect(b.received.at(-1)?.body.stop).toEqual([STOP]);
    expect(failed.choices[0]?.message.content).toBe('from b\nObservation: kept');
  });

  it('a refusal of stop to a request that sent none teaches nothing and is relayed', async () => {
    const up = track(
      await startMock((_req, res) =>
        refuseAsOpenAI(
          res,
          "Unsupported parameter: 'stop' is not supported with this model.",
          'stop',
          'unsupported_parameter',
        ),
      ),
    );
    const { gw, client } = await gatewayOver({ oai: up.url });
    await expect(client.chat.completions.create({ model: 'agent', messages: ASK })).rejects.toMatchObject({
      status: 400,
    });
    expect(up.received).toHaveLength(1);
    expect((await fitsOf(gw)).get('oai/o3')).toEqual({});
  });
});

describe('an answer in the other form is cut the same way', () => {
  it('a JSON request answered with an event stream, a stream request answered with JSON', async () => {
    const { client } = await one((req, res) => {
      if (req.body.stream === true) return sendJson(res, 200, completion('Thought: json\nObservation: no'));
      sse(res, textStream(pieces('Thought: sse\nObservation: no', 3)));
    });
    const json = await client.chat.completions.create({ model: 'agent', messages: ASK, stop: STOP });
    expect(json.choices[0]?.message.content).toBe('Thought: sse');
    expect(json.choices[0]?.finish_reason).toBe('stop');
    expect(json.usage?.completion_tokens).toBe(90);
    const chunks = await collectChunks(
      await client.chat.completions.create({ model: 'agent', messages: ASK, stop: STOP, stream: true }),
    );
    expect(read(chunks)).toEqual({ text: 'Thought: json', finishes: ['stop'] });
  });
});

describe('SDKs a ReAct agent runs on', () => {
  const REACT = 'Thought: look it up\nAction: search[weather]\nObservation: sunny\nThought: done';
  const WANT = 'Thought: look it up\nAction: search[weather]';

  it('the ai SDK: generateText and streamText with stopSequences', async () => {
    const { gw } = await one((req, res) => {
      if (req.body.stream === true) return sse(res, textStream(pieces(REACT, 4)));
      sendJson(res, 200, completion(REACT));
    });
    const model = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' }).chat('agent');
    const gen = await generateText({ model, prompt: 'weather?', stopSequences: [STOP], maxRetries: 0 });
    expect(gen.text).toBe(WANT);
    expect(gen.finishReason).toBe('stop');
    const st = streamText({ model, prompt: 'weather?', stopSequences: [STOP], maxRetries: 0 });
    expect(await st.text).toBe(WANT);
    expect(await st.finishReason).toBe('stop');
  });

  it('LangChain ChatOpenAI with stop bound: invoke and stream', async () => {
    const { gw } = await one((req, res) => {
      if (req.body.stream === true) return sse(res, textStream(pieces(REACT, 2)));
      sendJson(res, 200, completion(REACT));
    });
    const lc = new ChatOpenAI({
      model: 'agent',
      apiKey: 'k',
      maxRetries: 0,
      configuration: { baseURL: `${gw.url}/v1` },
    }).withConfig({ stop: ['\nObservation'] });
    const m = await lc.invoke('weather?');
    expect(m.content).toBe(WANT);
    let streamed = '';
    for await (const c of await lc.stream('weather?'))
      streamed += typeof c.content === 'string' ? c.content : '';
    expect(streamed).toBe(WANT);
  });
});
