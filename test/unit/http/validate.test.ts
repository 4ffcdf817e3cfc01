import { describe, expect, it } from 'vitest';
import { GatewayError } from '../../../src/errors.js';
import { jsonDepthExceeds, validateChatBody, validateEmbeddingsBody } from '../../../src/http/validate.js';

const ok = { model: 'fast', messages: [{ role: 'user', content: 'hi' }] };

function paramOf(fn: () => unknown): string | null | undefined {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(GatewayError);
    expect((err as GatewayError).status).toBe(400);
    return (err as GatewayError).param;
  }
  return undefined;
}

describe('chat body validation', () => {
  it('accepts a valid body and keeps unknown fields', () => {
    const body = {
      ...ok,
      future_field: { x: 1 },
      temperature: 0.2,
      tools: [{ type: 'function', function: { name: 'f' } }],
    };
    expect(validateChatBody(body)).toBe(body);
    const history = {
      ...ok,
      stream_options: { include_usage: true },
      messages: [
        { role: 'user', content: [{ type: 'image_url', image_url: 'https://x/cat.png' }] },
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{}' } }],
        },
        { role: 'assistant', tool_calls: [{ id: 'd', type: 'custom', custom: { name: 'g', input: 'x' } }] },
      ],
    };
    expect(validateChatBody(history)).toBe(history);
  });
  it.each([
    [null, null],
    [[], null],
    [{ messages: ok.messages }, 'model'],
    [{ model: 3, messages: ok.messages }, 'model'],
    [{ model: 'fast' }, 'messages'],
    [{ model: 'fast', messages: {} }, 'messages'],
    [{ model: 'fast', messages: [] }, 'messages'],
    [{ model: 'fast', messages: ['hi'] }, 'messages[0]'],
    [{ model: 'fast', messages: [{ role: 'root', content: 'x' }] }, 'messages[0].role'],
    [{ model: 'fast', messages: [{ role: 'user', content: 5 }] }, 'messages[0].content'],
    [
      { model: 'fast', messages: [{ role: 'user', content: [{ text: 'no type' }] }] },
      'messages[0].content[0]',
    ],
    [{ model: 'fast', messages: [{ role: 'tool', content: 'x' }] }, 'messages[0].tool_call_id'],
    [{ ...ok, n: 0 }, 'n'],
    [{ ...ok, n: 1.5 }, 'n'],
    [{ ...ok, max_tokens: -1 }, 'max_tokens'],
    [{ ...ok, max_completion_tokens: 'ten' }, 'max_completion_tokens'],
    [{ ...ok, temperature: 3 }, 'temperature'],
    [{ ...ok, stream: 'true' }, 'stream'],
    [{ ...ok, stream_options: 1 }, 'stream_options'],
    [{ ...ok, stream_options: { include_usage: 'yes' } }, 'stream_options.include_usage'],
    [
      {
        model: 'fast',
        messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 5 } }] }],
      },
      'messages[0].content[0].image_url.url',
    ],
    [{ model: 'fast', messages: [{ role: 'assistant', tool_calls: [5] }] }, 'messages[0].tool_calls[0]'],
    [
      {
        model: 'fast',
        messages: [{ role: 'assistant', tool_calls: [{ id: 'c', type: 'function', function: 'f' }] }],
      },
      'messages[0].tool_calls[0].function',
    ],
    [
      {
        model: 'fast',
        messages: [
          { role: 'assistant', tool_calls: [{ id: 'c', type: 'function', function: { arguments: '{}' } }] },
        ],
      },
      'messages[0].tool_calls[0].function.name',
    ],
    [
      {
        model: 'fast',
        messages: [
          {
            role: 'assistant',
            tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: {} } }],
          },
        ],
      },
      'messages[0].tool_calls[0].function.arguments',
    ],
    [{ ...ok, tools: {} }, 'tools'],
    [{ ...ok, tools: [{ type: 'function' }] }, 'tools[0]'],
    [{ ...ok, tools: [{ type: 'function', function: { name: '' } }] }, 'tools[0].function.name'],
    [{ ...ok, response_format: 'json' }, 'response_format'],
    [{ ...ok, stop: 4 }, 'stop'],
  ])('rejects %j naming %s', (body, param) => {
    expect(paramOf(() => validateChatBody(body))).toBe(param);
  });
});

describe('embeddings body validation', () => {
  it('accepts strings, arrays and token arrays; rejects empties and bad formats', () => {
    expect(() => validateEmbeddingsBody({ model: 'e', input: 'x' })).not.toThrow();
    expect(() =>
      validateEmbeddingsBody({ model: 'e', input: ['a', 'b'], encoding_format: 'base64' }),
    ).not.toThrow();
    expect(() => validateEmbeddingsBody({ model: 'e', input: [[1, 2, 3]] })).not.toThrow();
    expect(paramOf(() => validateEmbeddingsBody({ model: 'e', input: '' }))).toBe('input');
    expect(paramOf(() => validateEmbeddingsBody({ model: 'e', input: [{}] }))).toBe('input');
    expect(paramOf(() => validateEmbeddingsBody({ model: 'e', input: 'x', encoding_format: 'hex' }))).toBe(
      'encoding_format',
    );
  });
});

describe('JSON depth scan', () => {
  it('counts brackets outside strings only', () => {
    expect(jsonDepthExceeds('[[[]]]', 3)).toBe(false);
    expect(jsonDepthExceeds('[[[[]]]]', 3)).toBe(true);
    expect(jsonDepthExceeds(JSON.stringify({ a: '[[[[[[[[[[' }), 2)).toBe(false);
    expect(jsonDepthExceeds('{"a":"\\"[[[[[["}', 2)).toBe(false);
  });
});
