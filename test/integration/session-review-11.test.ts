/**
 * The end of a streamed answer the gateway itself stops (a reasoning model that refuses `stop`), and the
 * masking of a key spelt across deltas at a channel's end, through the real wire:
 * - once every choice of an answer is finished (at a stop the gateway applies, or by the upstream's own
 *   finish_reason) and the client asked for no usage, nothing more can reach it: the answer ends at once,
 *   the upstream is not read on (whichever way each choice finished);
 * - text held back at a channel's end is never relayed as more than 7 characters of a key, counting what
 *   the channel already sent of it (the 3 characters before a hold);
 * - a secret that a longer configured secret starts with, spelt to the very end of a channel, is masked.
 * (CR-only framing of passthrough event streams is with the other framings in session-review-9.)
 */
import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { collectChunks, joinChoices } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway, type TestGateway } from '../helpers/gateway.js';
import { gate, startMock, type Received, refusedStopAsO3 } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;

const TIMEOUTS = { connect_ms: 1000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 8000 };
const STOP = '\nObservation:';

function frame(choices: Json[], usage: unknown = null): string {
  return `data: ${JSON.stringify({ id: 'chatcmpl-o3', object: 'chat.completion.chunk', created: 1, model: 'o3', choices, usage })}\n\n`;
}
const ch = (index: number, delta: Json, finish: string | null = null): Json => ({
  index,
  delta,
  finish_reason: finish,
});

/** As o3 answers: a body with `stop` is refused with OpenAI's 400; any other goes to `answer`. */
function refusesStop(answer: (req: Received, res: ServerResponse) => void | Promise<void>) {
  return (req: Received, res: ServerResponse): void | Promise<void> => {
    if (refusedStopAsO3(req.body, res)) return;
    return answer(req, res);
  };
}

async function o3Gateway(url: string): Promise<TestGateway> {
  return track(
    await startGateway({
      providers: [
        {
          name: 'oai',
          kind: 'openai',
          base_url: `${url}/v1`,
          api_key: 'sk-oai-secret-0001',
          timeouts: TIMEOUTS,
          models: [{ name: 'o3' }],
        },
      ],
      routes: { agent: { strategy: 'priority', targets: ['oai/o3'] } },
    }),
  );
}

/**
 * n = 2 through the OpenAI SDK without include_usage; the upstream writes `head`, then waits (bounded) for
 * the client to have read the whole answer before writing the rest of choice 0 past the stop and `[DONE]`.
 */
async function twoChoices(head: string): Promise<{ texts: string[]; finishes: string[][]; waited: string }> {
  const seen = gate(1500);
  let waited: 'client' | 'bound' | undefined;
  const up = track(
    await startMock(
      refusesStop(async (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(head);
        waited = await seen.wait;
        if (res.destroyed) return;
        res.end(
          frame([ch(0, { content: ' the model writes on past the stop' })]) +
            frame([ch(0, {}, 'stop')]) +
            'data: [DONE]\n\n',
        );
      }),
    ),
  );
  const gw = await o3Gateway(up.url);
  const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
  const stream = await client.chat.completions.create({
    model: 'agent',
    n: 2,
    stop: [STOP],
    messages: [{ role: 'user', content: 'weather?' }],
    stream: true,
  });
  const { texts, finishes } = joinChoices(await collectChunks(stream));
  seen.open();
  await seen.wait;
  return { texts, finishes, waited: waited ?? 'none' };
}

const ROLES = frame([ch(0, { role: 'assistant', content: '' }), ch(1, { role: 'assistant', content: '' })]);

describe('an answer the gateway stopped ends once every choice is finished (no include_usage)', () => {
  it('n = 2, both choices at the stop: the answer ends without waiting for the upstream', async () => {
    const r = await twoChoices(
      ROLES +
        frame([ch(0, { content: 'Thought: zero\nObservation: rain' })]) +
        frame([ch(1, { content: 'Thought: one\nObservation: sun' })]),
    );
    expect(r.texts).toEqual(['Thought: zero', 'Thought: one']);
    expect(r.finishes).toEqual([['stop'], ['stop']]);
    expect(r.waited).toBe('client');
  });

  it('n = 2, one choice finished by the upstream and the other at the stop: the answer ends there too', async () => {
    const r = await twoChoices(
      ROLES +
        frame([ch(1, { content: 'Final answer: sun' })]) +
        frame([ch(1, {}, 'stop')]) +
        frame([ch(0, { content: 'Thought: zero\nObservation: rain' })]),
    );
    expect(r.texts).toEqual(['Thought: zero', 'Final answer: sun']);
    expect(r.finishes).toEqual([['stop'], ['stop']]);
    // Both choices are finished: nothing more can reach this client, yet the gateway reads on.
    expect(r.waited).toBe('client');
  });
});

// ---------------------------------------------------------------------------------------------------------

/** A key without a well-known public prefix: every character of it is secret. */
const KEY = 'zq9-Rk7Tm2Vx4Wp8Ln6Hs';
const LONG_KEY = 'sk-live-PREFIX-12345678';
const LONG_TOKEN = `${LONG_KEY}-tail-ABCDEF99`;

/** The longest run of `key`'s characters that `text` contains. */
function longestRun(text: string, key: string): number {
  let best = 0;
  for (let i = 0; i < key.length; i++)
    for (let j = i + best + 1; j <= key.length; j++) {
      if (!text.includes(key.slice(i, j))) break;
      best = j - i;
    }
  return best;
}

async function chatGateway(url: string, extra: Json = {}): Promise<TestGateway> {
  return track(
    await startGateway({
      providers: [
        {
          name: 'up',
          kind: 'openai',
          base_url: `${url}/v1`,
          api_key: KEY,
          timeouts: TIMEOUTS,
          models: [{ name: 'm' }],
          ...extra,
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['up/m'] } },
    }),
  );
}

function contentOf(sse: string): string {
  let out = '';
  for (const line of sse.split('\n')) {
    if (!line.startsWith('data: {')) continue;
    for (const c of ((JSON.parse(line.slice(6)) as Json).choices ?? []) as Json[]) {
      const d = c.delta as Json | undefined;
      if (typeof d?.content === 'string') out += d.content;
    }
  }
  return out;
}

function streamOf(pieces: readonly string[], end: string): string {
  return (
    frame([ch(0, { role: 'assistant', content: '' })]) +
    pieces.map((p) => frame([ch(0, { content: p })])).join('') +
    end
  );
}

describe('text held back at a channel end never lets more than 7 characters of a key through', () => {
  for (const [name, end] of [
    ['the choice finishes', `${frame([ch(0, {}, 'stop')])}data: [DONE]\n\n`],
    ['[DONE] comes without a finish', 'data: [DONE]\n\n'],
  ] as const) {
    it(`3 characters sent, then 7 held when ${name}`, async () => {
      const up = track(
        await startMock((_r, res) => {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.end(streamOf(['the key is zq9', '-Rk7Tm2'], end));
        }),
      );
      const gw = await chatGateway(up.url);
      const r = await postChat(gw, { model: 'r', messages: [{ role: 'user', content: 'x' }], stream: true });
      expect(r.status).toBe(200);
      const text = contentOf(r.text);
      expect(text.startsWith('the key is ')).toBe(true);
      expect(longestRun(text, KEY)).toBeLessThan(8);
    });
  }

  it('a passthrough text delta: 3 characters sent, then 7 held when its *.done comes', async () => {
    const up = track(
      await startMock((_r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const d = (delta: string, seq: number): string =>
          `event: response.output_text.delta\ndata: ${JSON.stringify({ type: 'response.output_text.delta', sequence_number: seq, item_id: 'msg_1', output_index: 0, content_index: 0, delta })}\n\n`;
        res.end(
          d('the key is zq9', 1) +
            d('-Rk7Tm2', 2) +
            `event: response.output_text.done\ndata: ${JSON.stringify({ type: 'response.output_text.done', sequence_number: 3, item_id: 'msg_1', output_index: 0, content_index: 0, text: 'x' })}\n\n` +
            `event: response.completed\ndata: {"type":"response.completed","sequence_number":4}\n\n`,
        );
      }),
    );
    const gw = track(
      await startGateway({
        server: { passthrough: 'up' },
        providers: [
          {
            name: 'up',
            kind: 'openai',
            base_url: `${up.url}/v1`,
            api_key: KEY,
            timeouts: TIMEOUTS,
            models: [{ name: 'm' }],
          },
        ],
        routes: { r: { strategy: 'priority', targets: ['up/m'] } },
      }),
    );
    const res = await request(`${gw.url}/v1/responses`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4.1', input: 'x', stream: true }),
      headersTimeout: 5000,
      bodyTimeout: 5000,
    });
    const text = await res.body.text();
    expect(res.statusCode).toBe(200);
    expect(text).toContain('the key is ');
    let deltas = '';
    for (const line of text.split('\n'))
      if (line.startsWith('data: {')) {
        const o = JSON.parse(line.slice(6)) as Json;
        if (o.type === 'response.output_text.delta' && typeof o.delta === 'string') deltas += o.delta;
      }
    expect(deltas.startsWith('the key is ')).toBe(true);
    expect(longestRun(deltas, KEY)).toBeLessThan(8);
  });

  it('a key that a longer configured secret starts with, spelt to the channel end, is masked', async () => {
    const up = track(
      await startMock((_r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          streamOf(['key: sk-', 'live-PREFIX-', '12345678'], `${frame([ch(0, {}, 'stop')])}data: [DONE]\n\n`),
        );
      }),
    );
    const gw = await chatGateway(up.url, { api_key: LONG_KEY, headers: { 'x-api-key': LONG_TOKEN } });
    const r = await postChat(gw, { model: 'r', messages: [{ role: 'user', content: 'x' }], stream: true });
    const text = contentOf(r.text);
    expect(text.startsWith('key: ')).toBe(true);
    expect(longestRun(text, LONG_TOKEN)).toBeLessThan(8);
  });
});

// ---------------------------------------------------------------------------------------------------------
