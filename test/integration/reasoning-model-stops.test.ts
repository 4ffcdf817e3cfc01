/**
 * OpenAI's reasoning models (o3, o4-mini, GPT-5) refuse `stop` ("Unsupported parameter: 'stop' is not
 * supported with this model"), which agent frameworks send (a ReAct loop's `\nObservation:`). Behind a route
 * alias that 400 failed every such request; the gateway now learns the refusal (param-fit.ts), sends the
 * request without `stop`, and cuts the answer at the stop itself, as OpenAI would have: JSON and stream, a
 * stop split over two deltas, several choices, the model's own usage kept (the stream is read to its end for
 * it). Later requests go without `stop` at once.
 */
import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { collectChunks } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway } from '../helpers/gateway.js';
import {
  sendJson,
  startRecordingMock,
  type RecordingMock,
  REASONING_USAGE,
  refusedStopAsO3,
} from '../helpers/mock-upstream.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;

const THOUGHT =
  'Thought: I should look it up.\nAction: search[weather]\nObservation: sunny, 21 C\nThought: done';
const STOP = '\nObservation:';
const USAGE = REASONING_USAGE;

/** As o3 answers: `stop` refused; otherwise `text` per choice, streamed `size` characters a delta. */
function o3(text: string, size = 5) {
  return (body: Json, _n: number, res: ServerResponse): void => {
    if (refusedStopAsO3(body, res)) return;
    const n = typeof body.n === 'number' ? body.n : 1;
    const indexes = Array.from({ length: n }, (_, i) => i);
    const base = { id: 'chatcmpl-o3', created: 1, model: String(body.model) };
    if (body.stream !== true) {
      sendJson(res, 200, {
        ...base,
        object: 'chat.completion',
        choices: indexes.map((index) => ({
          index,
          message: { role: 'assistant', content: text },
          finish_reason: 'stop',
        })),
        usage: USAGE,
      });
      return;
    }
    const frame = (choices: Json[], usage: unknown = null) =>
      `data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices, usage })}\n\n`;
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    let out = frame(
      indexes.map((index) => ({ index, delta: { role: 'assistant', content: '' }, finish_reason: null })),
    );
    for (let at = 0; at < text.length; at += size)
      for (const index of indexes)
        out += frame([{ index, delta: { content: text.slice(at, at + size) }, finish_reason: null }]);
    out += frame(indexes.map((index) => ({ index, delta: {}, finish_reason: 'stop' })));
    out += frame([], USAGE);
    res.end(`${out}data: [DONE]\n\n`);
  };
}

async function route(mock: RecordingMock) {
  const gw = track(
    await startGateway({
      providers: [simProvider('oai', mock.url, ['o3'], { api_key: 'sk-up' })],
      routes: { agent: { strategy: 'priority', targets: ['oai/o3'] } },
    }),
  );
  return { gw, client: new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 }) };
}

const ASK = [{ role: 'user' as const, content: 'weather?' }];
const WANT = 'Thought: I should look it up.\nAction: search[weather]';

describe('a route over a model that refuses `stop`', () => {
  it('JSON: the request is sent again without stop and the answer cut there; the next goes without it', async () => {
    const mock = await startRecordingMock(o3(THOUGHT));
    const { client } = await route(mock);
    const r = await client.chat.completions.create({ model: 'agent', messages: ASK, stop: [STOP] });
    expect(r.choices[0]?.message.content).toBe(WANT);
    expect(r.choices[0]?.finish_reason).toBe('stop');
    expect(r.usage?.completion_tokens).toBe(90);
    expect(mock.bodies.map((b) => 'stop' in b)).toEqual([true, false]);
    // Learned: the next request is fitted before it is sent, and still cut.
    const again = await client.chat.completions.create({ model: 'agent', messages: ASK, stop: STOP });
    expect(again.choices[0]?.message.content).toBe(WANT);
    expect(mock.bodies.length).toBe(3);
    expect('stop' in mock.bodies[2]!).toBe(false);
  });

  it('stream: cut at a stop split over deltas, finish stop, then the model usage and [DONE]', async () => {
    // 5 characters a delta: "\nObservation:" starts inside one delta and ends two later.
    const mock = await startRecordingMock(o3(THOUGHT, 5));
    const { client } = await route(mock);
    const chunks = await collectChunks(
      await client.chat.completions.create({
        model: 'agent',
        messages: ASK,
        stop: [STOP, '\nFinal Answer:'],
        stream: true,
        stream_options: { include_usage: true },
      }),
    );
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(WANT);
    expect(chunks.flatMap((c) => c.choices.map((ch) => ch.finish_reason)).filter((f) => f != null)).toEqual([
      'stop',
    ]);
    expect(chunks.at(-1)?.usage?.completion_tokens).toBe(90);
  });

  it('n = 2 streamed: each choice is cut at its own stop and finishes once', async () => {
    const mock = await startRecordingMock(o3(THOUGHT, 7));
    const { client } = await route(mock);
    const chunks = await collectChunks(
      await client.chat.completions.create({ model: 'agent', messages: ASK, stop: STOP, n: 2, stream: true }),
    );
    for (const index of [0, 1]) {
      const mine = chunks.flatMap((c) => c.choices.filter((ch) => ch.index === index));
      expect(mine.map((ch) => ch.delta.content ?? '').join('')).toBe(WANT);
      expect(mine.map((ch) => ch.finish_reason).filter((f) => f != null)).toEqual(['stop']);
    }
  });

  it('text with no stop in it is relayed whole, a stop-like tail included', async () => {
    const text = 'All done.\nObservation';
    const mock = await startRecordingMock(o3(text, 4));
    const { client } = await route(mock);
    const chunks = await collectChunks(
      await client.chat.completions.create({ model: 'agent', messages: ASK, stop: STOP, stream: true }),
    );
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(text);
    const json = await client.chat.completions.create({ model: 'agent', messages: ASK, stop: STOP });
    expect(json.choices[0]?.message.content).toBe(text);
  });
});
