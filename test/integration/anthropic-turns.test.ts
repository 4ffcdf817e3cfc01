/**
 * What the OpenAI -> Anthropic translation (src/upstream/adapters/anthropic-*.ts, routing/features.ts) does
 * where a request has no direct Messages API counterpart: a conversation whose last message does not become a
 * user turn, an image URL Claude cannot fetch, both token limits given. A hand-written Messages API mock on
 * 127.0.0.1:0 records every request and answers like Claude; the official `openai` SDK (or undici) is the client.
 */
import type { ServerResponse } from 'node:http';
import type OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { anthropicMessage, startAnthropicRoute } from '../helpers/anthropic-route.js';
import { postChat } from '../helpers/gateway.js';
import { sendJson, startMock, type Received } from '../helpers/mock-upstream.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;

const message = anthropicMessage;

type Answer = (body: Json, res: ServerResponse) => void;

const okText: Answer = (_body, res) =>
  sendJson(
    res,
    200,
    message([{ type: 'text', text: 'ok' }], 'end_turn', { input_tokens: 3, output_tokens: 1 }),
  );

/** A gateway whose route `r` is one Anthropic provider (`model`) served by the mock. */
async function setup(
  answer: Answer = okText,
  model = 'claude-sonnet-4-5',
): Promise<{ received: Received[]; client: OpenAI; url: string }> {
  const mock = track(await startMock((req, res) => answer(req.body, res)));
  const { client, url } = await startAnthropicRoute(track, mock.url, {
    apiKey: 'sk-ant-defaults',
    model,
    timeoutMs: 10_000,
  });
  return { received: mock.received, client, url };
}

const lastSent = (received: Received[]): Json => {
  expect(received.length).toBeGreaterThan(0);
  return received.at(-1)!.body;
};
const lastTurn = (received: Received[]): Json => (lastSent(received).messages as Json[]).at(-1)!;

describe('a conversation that ends with the client asking is never sent as a prefill to continue', () => {
  // Claude 4.5 and earlier take a final assistant turn as a prefill: they continue that text rather than answer
  // anew. README ("Prefill") promises that only for "a conversation that ends with an assistant message".

  it('a system reminder after the last answer (as agents add one) gets a new answer, not a continuation of that answer', async () => {
    const { received, client } = await setup();
    const r = await client.chat.completions.create({
      model: 'r',
      messages: [
        { role: 'user', content: 'Write a haiku about rain.' },
        { role: 'assistant', content: 'Soft rain on the roof' },
        { role: 'system', content: 'Now translate your last answer into French.' },
      ],
    });
    expect(r.choices[0]!.message.content).toBe('ok');
    // OpenAI answers after the system message; Claude must be given a user turn to answer, not a prefill.
    expect(lastTurn(received).role).toBe('user');
    expect(JSON.stringify(lastSent(received).system)).toContain('Now translate');
    const turns = lastSent(received).messages as Json[];
    expect(turns.at(-2)).toMatchObject({ role: 'assistant' });
  });

  it('an empty or whitespace-only last user message gets a new answer, never turns the previous answer into a prefill', async () => {
    const { received, url } = await setup();
    for (const content of ['', '   ', [{ type: 'text', text: '' }]]) {
      const before = received.length;
      const r = await postChat(
        { url },
        {
          model: 'r',
          messages: [
            { role: 'user', content: 'Hi' },
            { role: 'assistant', content: 'Hello! What shall we talk about?' },
            { role: 'user', content },
          ],
        },
      );
      expect(r.status, JSON.stringify(content)).toBe(200);
      expect(received.length).toBe(before + 1);
      expect(lastTurn(received).role, JSON.stringify(content)).toBe('user');
    }
  });
});

describe('an image the client sent is never dropped without a word', () => {
  it('an image_url Claude cannot fetch (not http(s), not a data URL) is refused with a 400 naming messages, not sent without it', async () => {
    // README: what Anthropic has no place for is refused or served elsewhere, "never a request with that part
    // dropped". Claude fetches http(s) URLs only.
    const { received, url } = await setup();
    for (const imageUrl of ['gs://bucket/cat.png', 'ftp://example.com/cat.png', 'cat.png']) {
      const before = received.length;
      const r = await postChat(
        { url },
        {
          model: 'r',
          messages: [
            {
              role: 'user',
              content: [
                { type: 'text', text: 'What animal is this?' },
                { type: 'image_url', image_url: { url: imageUrl } },
              ],
            },
          ],
        },
      );
      // The route's only upstream is Anthropic: a 400 naming the part, before any upstream is called.
      expect(r.status, imageUrl).toBe(400);
      expect(r.json.error).toMatchObject({ type: 'invalid_request_error', param: 'messages' });
      expect(received.length).toBe(before);
    }
  });
});

describe('token limits', () => {
  it('max_completion_tokens and max_tokens both given: max_completion_tokens (the current name) is the max_tokens sent', async () => {
    const { received, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 50,
      max_completion_tokens: 300,
    });
    expect(lastSent(received).max_tokens).toBe(300);
    await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 300,
      max_completion_tokens: 50,
    });
    expect(lastSent(received).max_tokens).toBe(50);
  });
});
