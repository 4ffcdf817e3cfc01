/**
 * A stop sequence of whitespace alone (`"\n"`, `"\n\n"`) is refused by Anthropic, so the gateway does not send
 * it and cuts Claude's answer there itself, as OpenAI would: the text ends where the first such stop begins
 * (the stop not included), `finish_reason` is `stop`, what Claude wrote past it (text, tool calls) is not
 * relayed; a JSON answer keeps Claude's usage, a stream ends at the stop with the relayed answer's estimate.
 * A stop split over two deltas is found; text that only starts like a stop is relayed whole.
 */
import type { ServerResponse } from 'node:http';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import {
  anthropicMessage,
  claudeSse,
  collectChunks,
  startAnthropicRoute,
} from '../helpers/anthropic-route.js';
import { sendJson, startMock } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
const USAGE = { input_tokens: 9, output_tokens: 12 };
type Json = Record<string, unknown>;

/** An Anthropic upstream answering every request with `blocks`, streamed when asked; the bodies it got. */
async function claude(blocks: Json[], stopReason = 'end_turn') {
  const up = track(
    await startMock((req, res: ServerResponse) => {
      const body = req.body as Json;
      if (body.stream === true) {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(claudeSse(blocks, stopReason, USAGE));
      } else sendJson(res, 200, { ...anthropicMessage(blocks, stopReason, USAGE) });
    }),
  );
  const { client } = await startAnthropicRoute(track, up.url, {
    apiKey: 'sk-ant-test-0001',
    model: 'claude-x',
  });
  return { up, client };
}

const ASK = [{ role: 'user' as const, content: 'one line please' }];

describe('whitespace stop sequences on an Anthropic upstream', () => {
  it('JSON: the answer is cut at "\\n", finish_reason stop, Claude\'s usage kept', async () => {
    const { up, client } = await claude([{ type: 'text', text: 'first line\nsecond line\nthird' }]);
    const r = await client.chat.completions.create({ model: 'r', messages: ASK, stop: ['\n', 'END'] });
    expect(r.choices[0]?.message.content).toBe('first line');
    expect(r.choices[0]?.finish_reason).toBe('stop');
    expect(r.usage?.completion_tokens).toBe(12);
    expect((up.received[0]?.body as Json).stop_sequences).toEqual(['END']);
  });

  it('stream: the text ends at "\\n\\n" even split over deltas; nothing after it, then usage and [DONE]', async () => {
    // claudeSse streams the text in 3 pieces of 10: "paragraph\n" | "\nsecond pa" | …, splitting the "\n\n".
    const text = 'paragraph\n\nsecond paragraph!!';
    expect(text.slice(0, Math.ceil(text.length / 3))).toBe('paragraph\n');
    const { client } = await claude([{ type: 'text', text }]);
    const chunks = await collectChunks(
      await client.chat.completions.create({
        model: 'r',
        messages: ASK,
        stop: '\n\n',
        stream: true,
        stream_options: { include_usage: true },
      }),
    );
    const content = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
    expect(content).toBe('paragraph');
    const finishes = chunks.map((c) => c.choices[0]?.finish_reason).filter((f) => f != null);
    expect(finishes).toEqual(['stop']);
    // The stream ended at the stop, without waiting for Claude's count: the relayed answer's estimate.
    const usage = chunks.at(-1)?.usage;
    expect(usage?.prompt_tokens).toBe(9);
    expect(usage?.completion_tokens).toBeGreaterThan(0);
    expect(usage?.completion_tokens).toBeLessThan(12);
  });

  it('text with a lone "\\n" under a "\\n\\n" stop is relayed whole, in order', async () => {
    const text = 'a\nb\nc\n';
    const { client } = await claude([{ type: 'text', text }]);
    const chunks = await collectChunks(
      await client.chat.completions.create({ model: 'r', messages: ASK, stop: ['\n\n'], stream: true }),
    );
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(text);
    const json = await client.chat.completions.create({ model: 'r', messages: ASK, stop: ['\n\n'] });
    expect(json.choices[0]?.message.content).toBe(text);
  });

  it('a tool call Claude wrote after the stop is not relayed; one before it is', async () => {
    const after = await claude(
      [
        { type: 'text', text: 'Sure.\nLet me look.' },
        { type: 'tool_use', id: 'toolu_1', name: 'find', input: { q: 'x' } },
      ],
      'tool_use',
    );
    const r = await after.client.chat.completions.create({ model: 'r', messages: ASK, stop: '\n' });
    expect(r.choices[0]?.message.content).toBe('Sure.');
    expect(r.choices[0]?.message.tool_calls).toBeUndefined();
    expect(r.choices[0]?.finish_reason).toBe('stop');
    const chunks = await collectChunks(
      await after.client.chat.completions.create({ model: 'r', messages: ASK, stop: '\n', stream: true }),
    );
    expect(chunks.some((c) => c.choices[0]?.delta.tool_calls !== undefined)).toBe(false);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe('Sure.');

    const before = await claude(
      [
        { type: 'text', text: 'Looking' },
        { type: 'tool_use', id: 'toolu_2', name: 'find', input: { q: 'y' } },
      ],
      'tool_use',
    );
    const kept = await before.client.chat.completions.create({ model: 'r', messages: ASK, stop: '\n' });
    expect(kept.choices[0]?.message.tool_calls?.[0]?.id).toBe('toolu_2');
    expect(kept.choices[0]?.finish_reason).toBe('tool_calls');
  });
});
