/**
 * What an OpenAI-dialect upstream's valid but less common stream content gets through the gateway (SPEC §2: a
 * stream commits at its first content delta, and a failover before it stays invisible; README: reasoning and
 * audio commit too, because they "can run for megabytes before any text"):
 *
 * - an image answer (`delta.images`: OpenRouter's and Vercel AI Gateway's image output for Gemini's and
 *   FLUX's image models, `modalities: ["image", "text"]`) is content: it commits the stream and is served
 *   whatever its size, never failed over as `preamble_too_large`;
 * - Mistral's Magistral reasoning, streamed as `delta.content` holding a list of parts
 *   (`[{"type":"thinking","thinking":[{"type":"text","text":"..."}]}]`), is content: it reaches the client as
 *   it comes, and a long one is served, not failed over;
 * - either, once relayed, reaches the client as the upstream wrote it, ended by `[DONE]`, billed its usage.
 *
 * Each test runs against a hand-written mock upstream on loopback.
 */
import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { gate, startMock } from '../helpers/mock-upstream.js';
import { scrape, select } from '../helpers/prom-text.js';
import { sseEvents } from '../helpers/sim-wire.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;
const MSG = [{ role: 'user', content: 'draw a red square' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };
const HEAD = { id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1, model: 'm' };

/** One priority route `r` over the mock as provider `oa`, model `m` ($1 / $2 per million tokens). */
async function gatewayOver(url: string): Promise<TestGateway> {
  return track(
    await startGateway({
      providers: [
        simProvider('oa', url, [{ name: 'm', price: { input_per_mtok: 1, output_per_mtok: 2 } }], {
          timeouts: RELAXED,
        }),
      ],
      routes: { r: { strategy: 'priority', targets: ['oa/m'] } },
    }),
  );
}

/** One SSE frame of a chunk with a single choice 0. */
function frame(delta: Json, finish: string | null = null, extra: Json = {}): string {
  return `data: ${JSON.stringify({ ...HEAD, choices: [{ index: 0, delta, finish_reason: finish }], ...extra })}\n\n`;
}

const ROLE = frame({ role: 'assistant', content: '' });
const DONE = 'data: [DONE]\n\n';
const USAGE = { prompt_tokens: 12, completion_tokens: 1290, total_tokens: 1302 };

function streamOut(res: ServerResponse, frames: readonly string[]): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(frames.join(''));
}

/** A `delta.images` chunk (OpenRouter's shape) carrying a PNG data URL of `base64Chars` characters. */
function imageFrame(base64Chars: number): { frame: string; url: string } {
  const url = `data:image/png;base64,${'iVBORw0KGgo'.padEnd(base64Chars, 'A')}`;
  return { frame: frame({ images: [{ type: 'image_url', image_url: { url } }] }), url };
}

/** A Magistral reasoning chunk: `delta.content` as a list holding one thinking part. */
function thinkingFrame(text: string): string {
  return frame({ content: [{ type: 'thinking', thinking: [{ type: 'text', text }] }] });
}

function client(gw: TestGateway): OpenAI {
  return new OpenAI({ apiKey: 'k', baseURL: `${gw.url}/v1`, maxRetries: 0 });
}

async function completionTokens(gw: TestGateway): Promise<number> {
  const samples = await scrape(gw.url);
  return select(samples, 'llm_router_tokens_total', {
    provider: 'oa',
    model: 'm',
    kind: 'completion',
  }).reduce((a, s) => a + s.value, 0);
}

describe('an image answer (`delta.images`) is content: it commits the stream (SPEC §2)', () => {
  // OpenRouter and Vercel AI Gateway stream a generated image as one `delta.images` chunk holding a base64
  // data URL: a 1024x1024 PNG is 1.5-3 MB of it, and an image-only answer (`modalities: ["image"]`) has no
  // text before it. Held back as preamble, it can never be served: past 1 MiB of "frames before any content"
  // the attempt fails over as preamble_too_large (the image paid for and thrown away, the upstream charged a
  // failure), and with one upstream the client gets a 502 for a valid request.
  it('an image larger than 1 MiB reaches the openai SDK whole, with its finish reason', async () => {
    const image = imageFrame(1_200_000);
    const up = track(
      await startMock((_req, res) =>
        streamOut(res, [ROLE, image.frame, frame({}, 'stop', { usage: USAGE }), DONE]),
      ),
    );
    const gw = await gatewayOver(up.url);
    const urls: string[] = [];
    let finish: string | null = null;
    const stream = await client(gw).chat.completions.create({
      model: 'r',
      messages: MSG as OpenAI.ChatCompletionMessageParam[],
      stream: true,
      // @ts-expect-error -- OpenRouter's field, not in the SDK's types: unknown fields pass through (SPEC §4)
      modalities: ['image', 'text'],
    });
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      const images = (choice?.delta as { images?: { image_url: { url: string } }[] } | undefined)?.images;
      for (const img of images ?? []) urls.push(img.image_url.url);
      if (choice?.finish_reason) finish = choice.finish_reason;
    }
    expect(urls).toEqual([image.url]);
    expect(finish).toBe('stop');
    expect(up.received).toHaveLength(1);
  });

  // Regression guard for the relay of a small image answer: the chunk as the upstream wrote it, [DONE], and
  // the answer billed its reported usage.
  it('a small image answer reaches the client as the upstream wrote it, ends with [DONE], and is billed its usage', async () => {
    const image = imageFrame(20_000);
    const finish = frame({}, 'stop', { usage: USAGE });
    const up = track(await startMock((_req, res) => streamOut(res, [ROLE, image.frame, finish, DONE])));
    const gw = await gatewayOver(up.url);
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', messages: MSG, stream: true, modalities: ['image', 'text'] }),
    });
    const text = await res.body.text();
    expect(res.statusCode, text.slice(0, 300)).toBe(200);
    expect(text).toBe(ROLE + image.frame + finish + DONE);
    await expect.poll(() => completionTokens(gw)).toBe(USAGE.completion_tokens);
  });
});

describe('Magistral reasoning (`delta.content` as a list of parts) is content: it commits the stream (SPEC §2)', () => {
  // Mistral's Magistral models stream their reasoning as `delta.content` lists of `thinking` parts, before any
  // text (BerriAI/litellm#16272 shows the wire). README: reasoning commits a stream because held back it
  // "reached the client only at the end, or failed over as preamble_too_large"; a list-valued content is the
  // same reasoning in Mistral's form.
  it('the thinking reaches the client as it comes, before the answer text', async () => {
    const seen = gate(2000);
    const first = thinkingFrame('The user wants a greeting. ');
    const up = track(
      await startMock(async (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(ROLE + first);
        // The rest of the answer (the text) only once the client has seen the thinking, or at the bound.
        await seen.wait;
        res.end(frame({ content: 'Hello!' }) + frame({}, 'stop', { usage: USAGE }) + DONE);
      }),
    );
    const gw = await gatewayOver(up.url);
    let text = '';
    const read = (async () => {
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'r', messages: MSG, stream: true }),
      });
      for await (const bytes of res.body) {
        text += (bytes as Buffer).toString('utf8');
        if (text.includes('"thinking"')) seen.open();
      }
      return res.statusCode;
    })();
    const who = await seen.wait;
    expect(await read).toBe(200);
    expect(who, 'the thinking was held back until the answer text came').toBe('client');
    expect(text.startsWith(ROLE + first)).toBe(true);
    expect(text.endsWith(DONE)).toBe(true);
  });

  it('an answer that thinks for more than 1 MiB of frames is served whole, not failed over', async () => {
    // ~6,000 thinking chunks: a few thousand tokens of reasoning, an ordinary Magistral answer.
    const thinking = Array.from({ length: 6000 }, (_, i) => thinkingFrame(`step ${i} of the reasoning, `));
    const answer = frame({ content: 'Hello!' });
    const up = track(
      await startMock((_req, res) =>
        streamOut(res, [ROLE, ...thinking, answer, frame({}, 'stop', { usage: USAGE }), DONE]),
      ),
    );
    const gw = await gatewayOver(up.url);
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', messages: MSG, stream: true }),
    });
    const text = await res.body.text();
    expect(res.statusCode, text.slice(0, 300)).toBe(200);
    const events = sseEvents(text);
    expect(events.filter((e) => e.data.includes('"thinking"'))).toHaveLength(thinking.length);
    expect(text).toContain(answer);
    expect(text.endsWith(DONE)).toBe(true);
    expect(up.received).toHaveLength(1);
  });
});
