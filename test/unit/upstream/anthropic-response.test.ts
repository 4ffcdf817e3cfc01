import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ANTHROPIC_CACHE, type StreamContext } from '../../../src/upstream/adapter.js';
import { anthropicAdapter } from '../../../src/upstream/adapters/anthropic.js';

const fixture = (name: string): unknown =>
  JSON.parse(readFileSync(new URL(`../../fixtures/anthropic/${name}`, import.meta.url), 'utf8'));

const ctx: StreamContext = {
  model: 'anthropic/claude-haiku-4-5',
  includeUsage: false,
  created: 1_700_000_000,
};

interface Completion {
  id: string;
  object: string;
  created: number;
  model: string;
  choices: {
    index: number;
    message: {
      role: string;
      content: string | null;
      refusal: null;
      tool_calls?: { id: string; type: string; function: { name: string; arguments: string } }[];
    };
    logprobs: null;
    finish_reason: string;
  }[];
  usage?: unknown;
}

const translate = (json: unknown) => {
  const out = anthropicAdapter.chatResponse(json, ctx)!;
  return { body: out.body as Completion, usage: out.usage };
};

describe('anthropic chatResponse', () => {
  it('translates a text answer, with cache-aware usage', () => {
    const { body, usage } = translate(fixture('text-message.json'));
    const expectedUsage = {
      prompt_tokens: 135,
      completion_tokens: 15,
      total_tokens: 150,
      prompt_tokens_details: { cached_tokens: 100, cache_write_tokens: 10 },
      [ANTHROPIC_CACHE]: { writes5m: 10, writes1h: 0 }, // the cache write, priced above the input (report.ts)
    };
    expect(body).toEqual({
      id: 'chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL',
      object: 'chat.completion',
      created: 1_700_000_000,
      model: 'anthropic/claude-haiku-4-5',
      choices: [
        {
          index: 0,
          message: {
            role: 'assistant',
            content: 'Hello, héllo 🌍! Ünïcödé "quotes" and\nnew lines — 日本語.',
            refusal: null,
          },
          logprobs: null,
          finish_reason: 'stop',
        },
      ],
      usage: expectedUsage,
    });
    expect(usage).toEqual(expectedUsage);
  });

  it('translates tool_use blocks to tool_calls, thinking to reasoning_content plus the signed blocks', () => {
    const { body } = translate(fixture('tool-message.json'));
    const choice = body.choices[0]!;
    const message = choice.message as unknown as Record<string, unknown>;
    expect(message.reasoning_content).toBe('The user wants weather for two cities.');
    expect(message.thinking_blocks).toEqual([
      {
        type: 'thinking',
        thinking: 'The user wants weather for two cities.',
        signature: 'EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds',
      },
    ]);
    expect(choice.finish_reason).toBe('tool_calls');
    expect(choice.message.content).toBe("Okay, let's check the weather for San Francisco and Zürich:");
    expect(choice.message.tool_calls).toEqual([
      {
        id: 'toolu_01T1x1fJ34qAmk2tNTrN7Up6',
        type: 'function',
        function: { name: 'get_weather', arguments: '{"location":"San Francisco, CA","unit":"fahrenheit"}' },
      },
      {
        id: 'toolu_02ZZ',
        type: 'function',
        function: { name: 'get_weather', arguments: '{"location":"Zürich 🇨🇭","unit":"celsius"}' },
      },
    ]);
  });

  it('keeps redacted thinking as a block; an answer without thinking has neither field', () => {
    const { body } = translate({
      id: 'm',
      content: [
        { type: 'redacted_thinking', data: 'ENCRYPTED' },
        { type: 'text', text: 'a' },
      ],
      stop_reason: 'end_turn',
    });
    const message = body.choices[0]!.message as unknown as Record<string, unknown>;
    expect(message.reasoning_content).toBe('');
    expect(message.thinking_blocks).toEqual([{ type: 'redacted_thinking', data: 'ENCRYPTED' }]);
    const unsigned = translate({ id: 'm', content: [{ type: 'thinking', thinking: 'hm' }] }).body.choices[0]!
      .message as unknown as Record<string, unknown>;
    expect(unsigned.reasoning_content).toBe('hm');
    expect(unsigned).not.toHaveProperty('thinking_blocks'); // Claude would refuse it back
    const plain = translate({ id: 'm', content: [{ type: 'text', text: 'a' }] }).body.choices[0]!.message;
    expect(plain).not.toHaveProperty('reasoning_content');
    expect(plain).not.toHaveProperty('thinking_blocks');
  });

  it('gives content null when the answer is only tool calls', () => {
    const { body } = translate({
      id: 'msg_1',
      content: [{ type: 'tool_use', id: 't1', name: 'f', input: {} }],
      stop_reason: 'tool_use',
    });
    expect(body.choices[0]!.message.content).toBeNull();
    expect(body.choices[0]!.message.tool_calls?.[0]?.function.arguments).toBe('{}');
  });

  it('joins several text blocks (citations split text)', () => {
    const { body } = translate({
      id: 'm',
      content: [
        { type: 'text', text: 'a' },
        { type: 'text', text: 'b' },
      ],
      stop_reason: 'end_turn',
    });
    expect(body.choices[0]!.message.content).toBe('ab');
  });

  it.each([
    ['end_turn', 'stop'],
    ['stop_sequence', 'stop'],
    ['pause_turn', 'stop'],
    ['max_tokens', 'length'],
    ['model_context_window_exceeded', 'length'],
    ['tool_use', 'tool_calls'],
    ['refusal', 'content_filter'],
    [null, 'stop'],
    ['something_new', 'stop'],
  ])('maps stop_reason %j to %j', (reason, finish) => {
    expect(translate({ id: 'm', content: [], stop_reason: reason }).body.choices[0]!.finish_reason).toBe(
      finish,
    );
  });

  it('reports no usage when the upstream gave none', () => {
    const { body, usage } = translate({ id: 'm', content: [{ type: 'text', text: 'x' }] });
    expect(usage).toBeUndefined();
    expect(body).not.toHaveProperty('usage');
  });

  it.each([null, 42, 'text', [], { content: 'not an array', usage: 'nope', id: 5 }, { hello: 'world' }])(
    'takes hostile JSON that is no message (no content list) for no answer, never throwing: %j',
    (json) => {
      expect(anthropicAdapter.chatResponse(json, ctx)).toBeUndefined();
    },
  );

  it('never throws on a content list of junk blocks: an empty answer', () => {
    const { body } = translate({ content: [null, 1, { type: 'text', text: 3 }] });
    expect(body.object).toBe('chat.completion');
    expect(body.id).toMatch(/^chatcmpl-/);
    expect(body.choices[0]!.message.content).toBe('');
  });
});

describe('anthropic errorInfo', () => {
  const body = (type: string, message: string) =>
    JSON.stringify({ type: 'error', error: { type, message }, request_id: 'req_1' });

  it.each([
    [400, 'invalid_request_error', 'invalid_request_error', null],
    [401, 'authentication_error', 'authentication_error', null],
    [402, 'billing_error', 'insufficient_quota', 'insufficient_quota'],
    [403, 'permission_error', 'permission_error', null],
    [404, 'not_found_error', 'invalid_request_error', 'model_not_found'],
    [413, 'request_too_large', 'invalid_request_error', 'request_too_large'],
    [429, 'rate_limit_error', 'rate_limit_error', 'rate_limit_exceeded'],
    [500, 'api_error', 'server_error', null],
    [504, 'timeout_error', 'server_error', 'timeout'],
    [529, 'overloaded_error', 'server_error', 'overloaded'],
  ])('maps HTTP %i %s', (status, anthropicType, type, code) => {
    expect(anthropicAdapter.errorInfo(status, body(anthropicType, 'the message'))).toEqual({
      status,
      message: 'the message',
      type,
      code,
      param: null,
    });
  });

  it("gives a prompt past the context window OpenAI's context_length_exceeded code (clients branch on it)", () => {
    for (const message of [
      'prompt is too long: 208310 tokens > 200000 maximum',
      'input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000',
    ])
      expect(anthropicAdapter.errorInfo(400, body('invalid_request_error', message))).toMatchObject({
        type: 'invalid_request_error',
        code: 'context_length_exceeded',
      });
  });

  it('falls back on the status for bodies without an Anthropic error', () => {
    expect(anthropicAdapter.errorInfo(502, '<html>Bad Gateway</html>')).toEqual({
      status: 502,
      message: 'Bad Gateway', // an HTML page (a proxy's) as its text, not markup
      type: 'server_error',
      code: null,
      param: null,
    });
    expect(anthropicAdapter.errorInfo(429, '')).toMatchObject({
      type: 'rate_limit_error',
      message: 'upstream returned HTTP 429',
    });
    expect(anthropicAdapter.errorInfo(404, '{}')).toMatchObject({
      type: 'invalid_request_error',
      code: 'model_not_found',
    });
    expect(anthropicAdapter.errorInfo(400, '{"error":"plain string"}')).toMatchObject({
      message: 'plain string',
    });
    expect(anthropicAdapter.errorInfo(503, '{"error":{"message":"m","type":"__proto__"}}')).toMatchObject({
      type: 'server_error',
    });
  });

  it('caps very long messages', () => {
    const info = anthropicAdapter.errorInfo(500, 'x'.repeat(50_000));
    expect(info.message.length).toBeLessThanOrEqual(1001);
  });
});
