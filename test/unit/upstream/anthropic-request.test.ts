import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { AdapterProvider, ChatBody } from '../../../src/upstream/adapter.js';
import { anthropicAdapter } from '../../../src/upstream/adapters/anthropic.js';
import {
  CONTINUE_USER_TEXT,
  PLACEHOLDER_USER_TEXT,
} from '../../../src/upstream/adapters/anthropic-request.js';

const fixture = (name: string): unknown =>
  JSON.parse(readFileSync(new URL(`../../fixtures/anthropic/${name}`, import.meta.url), 'utf8'));

const provider: AdapterProvider = {
  name: 'anthropic',
  apiKey: 'sk-ant-test',
  headers: undefined,
  anthropicVersion: '2023-06-01',
  defaultMaxTokens: 4096,
};

type Sent = Record<string, unknown> & { messages: { role: string; content: Record<string, unknown>[] }[] };

function build(body: Record<string, unknown>, p: AdapterProvider = provider): Sent {
  const req = anthropicAdapter.chatRequest({ model: 'x', ...body } as ChatBody, 'claude-haiku-4-5', p);
  return JSON.parse(req.body.toString()) as Sent;
}

const user = (content: unknown) => ({ role: 'user', content });

/** What a one-question request with `extra` fields becomes for `model`. */
function sentTo(model: string, extra: Record<string, unknown>): Record<string, unknown> {
  const body = { model: 'x', messages: [user('q')], ...extra } as ChatBody;
  return JSON.parse(anthropicAdapter.chatRequest(body, model, provider).body.toString()) as Record<
    string,
    unknown
  >;
}

describe('anthropic chatRequest: envelope', () => {
  it('targets /v1/messages with the key, version and provider headers', () => {
    const req = anthropicAdapter.chatRequest({ model: 'x', messages: [user('hi')] }, 'claude-haiku-4-5', {
      ...provider,
      headers: { 'anthropic-beta': 'prompt-caching-2024-07-31' },
    });
    expect(req.path).toBe('/v1/messages');
    expect(req.headers).toEqual({
      'content-type': 'application/json',
      'x-api-key': 'sk-ant-test',
      'anthropic-version': '2023-06-01',
      'anthropic-beta': 'prompt-caching-2024-07-31',
    });
  });

  it('omits x-api-key when the provider has no key', () => {
    const req = anthropicAdapter.chatRequest({ model: 'x', messages: [user('hi')] }, 'm', {
      ...provider,
      apiKey: undefined,
    });
    expect(req.headers).not.toHaveProperty('x-api-key');
  });

  it('lets provider headers override the defaults', () => {
    const req = anthropicAdapter.chatRequest({ model: 'x', messages: [user('hi')] }, 'm', {
      ...provider,
      headers: { 'anthropic-version': '2099-01-01' },
    });
    expect(req.headers['anthropic-version']).toBe('2099-01-01');
  });

  it('maps the full documented example and drops OpenAI-only fields', () => {
    const req = anthropicAdapter.chatRequest(
      fixture('openai-request.json') as ChatBody,
      'claude-sonnet-4-5',
      provider,
    );
    expect(JSON.parse(req.body.toString())).toEqual(fixture('anthropic-request.json'));
  });
});

describe('anthropic chatRequest: system and turns', () => {
  it('hoists system and developer messages, from anywhere, into one system string', () => {
    const sent = build({
      messages: [
        { role: 'system', content: 'A' },
        user('q'),
        {
          role: 'developer',
          content: [
            { type: 'text', text: 'B' },
            { type: 'text', text: 'C' },
          ],
        },
      ],
    });
    expect(sent.system).toBe('A\n\nB\n\nC');
    expect(sent.messages).toEqual([{ role: 'user', content: [{ type: 'text', text: 'q' }] }]);
  });

  it('keeps system as text blocks when a part carries cache_control', () => {
    const sent = build({
      messages: [
        { role: 'system', content: [{ type: 'text', text: 'big', cache_control: { type: 'ephemeral' } }] },
        { role: 'system', content: 'small' },
        user('q'),
      ],
    });
    expect(sent.system).toEqual([
      { type: 'text', text: 'big', cache_control: { type: 'ephemeral' } },
      { type: 'text', text: 'small' },
    ]);
  });

  it('omits system when there is none', () => {
    expect(build({ messages: [user('q')] })).not.toHaveProperty('system');
  });

  it('merges consecutive same-role turns', () => {
    const sent = build({
      messages: [
        user('a'),
        user([{ type: 'text', text: 'b' }]),
        { role: 'assistant', content: 'c' },
        { role: 'assistant', content: 'd' },
        user('e'),
      ],
    });
    expect(sent.messages).toEqual([
      {
        role: 'user',
        content: [
          { type: 'text', text: 'a' },
          { type: 'text', text: 'b' },
        ],
      },
      {
        role: 'assistant',
        content: [
          { type: 'text', text: 'c' },
          { type: 'text', text: 'd' },
        ],
      },
      { role: 'user', content: [{ type: 'text', text: 'e' }] },
    ]);
  });

  it('puts a placeholder user turn before a leading assistant turn', () => {
    const sent = build({
      messages: [{ role: 'assistant', content: 'Hi, how can I help?' }, user('weather?')],
    });
    expect(sent.messages[0]).toEqual({
      role: 'user',
      content: [{ type: 'text', text: PLACEHOLDER_USER_TEXT }],
    });
    expect(sent.messages[1]?.role).toBe('assistant');
  });

  it('sends a placeholder user turn when only system messages were given', () => {
    const sent = build({ messages: [{ role: 'system', content: 'Say hi.' }] });
    expect(sent.system).toBe('Say hi.');
    expect(sent.messages).toEqual([
      { role: 'user', content: [{ type: 'text', text: PLACEHOLDER_USER_TEXT }] },
    ]);
  });

  it('drops empty turns and empty text, then merges the neighbours', () => {
    const sent = build({ messages: [user('a'), { role: 'assistant', content: '' }, user('  '), user('b')] });
    expect(sent.messages).toEqual([
      {
        role: 'user',
        content: [
          { type: 'text', text: 'a' },
          { type: 'text', text: 'b' },
        ],
      },
    ]);
  });

  it('closes a conversation that ends with the assistant with a user turn for Claude 4.6 on, which refuse prefills', () => {
    const ending = {
      messages: [user('q'), { role: 'assistant', content: 'Sure: ' }],
      reasoning_effort: 'low',
    };
    for (const model of ['claude-opus-4-6', 'claude-sonnet-4-6', 'claude-opus-4-7', 'claude-fable-5']) {
      const sent = sentTo(model, ending) as Sent;
      expect(
        sent.messages.map((m) => m.role),
        model,
      ).toEqual(['user', 'assistant', 'user']);
      expect(sent.messages[2]!.content).toEqual([{ type: 'text', text: CONTINUE_USER_TEXT }]);
      expect(sent.messages[1]!.content).toEqual([{ type: 'text', text: 'Sure: ' }]); // not a prefill: kept as written
      expect(sent, model).toHaveProperty('thinking'); // no longer a prefill
    }
    for (const model of ['claude-sonnet-4-5', 'claude-3-7-sonnet-latest', 'my-proxy-model']) {
      const sent = sentTo(model, ending) as Sent;
      expect(
        sent.messages.map((m) => m.role),
        model,
      ).toEqual(['user', 'assistant']);
      expect(sent, model).not.toHaveProperty('thinking');
    }
  });

  it('trims trailing whitespace from a final assistant (prefill) turn', () => {
    const sent = build({ messages: [user('q'), { role: 'assistant', content: 'The answer is ' }] });
    expect(sent.messages.at(-1)).toEqual({
      role: 'assistant',
      content: [{ type: 'text', text: 'The answer is' }],
    });
  });

  it('sends assistant refusal parts as text', () => {
    const sent = build({
      messages: [
        user('q'),
        { role: 'assistant', content: [{ type: 'refusal', refusal: 'No.' }] },
        user('ok'),
      ],
    });
    expect(sent.messages[1]).toEqual({ role: 'assistant', content: [{ type: 'text', text: 'No.' }] });
  });
});

describe('anthropic chatRequest: content parts', () => {
  const parts = (content: unknown[]) => build({ messages: [user(content)] }).messages[0]?.content;

  it('maps data-URL images to base64 sources and http(s) URLs to url sources', () => {
    expect(
      parts([
        { type: 'image_url', image_url: { url: 'data:image/jpeg;base64,/9j/4AAQ' } },
        { type: 'image_url', image_url: 'HTTP://example.com/a.gif' },
        { type: 'image_url', image_url: { url: 'https://example.com/b.webp', detail: 'low' } },
      ]),
    ).toEqual([
      { type: 'image', source: { type: 'base64', media_type: 'image/jpeg', data: '/9j/4AAQ' } },
      { type: 'image', source: { type: 'url', url: 'HTTP://example.com/a.gif' } },
      { type: 'image', source: { type: 'url', url: 'https://example.com/b.webp' } },
    ]);
  });

  it('sends data:image/jpg as image/jpeg: Anthropic rejects image/jpg', () => {
    expect(parts([{ type: 'image_url', image_url: { url: 'data:IMAGE/JPG;base64,/9j/4AAQ' } }])).toEqual([
      { type: 'image', source: { type: 'base64', media_type: 'image/jpeg', data: '/9j/4AAQ' } },
    ]);
  });

  it('skips images it cannot express (non-base64 data URLs, other schemes, missing url)', () => {
    expect(
      parts([
        { type: 'text', text: 'look' },
        { type: 'image_url', image_url: { url: 'data:image/svg+xml,<svg/>' } },
        { type: 'image_url', image_url: { url: 'ftp://example.com/x.png' } },
        { type: 'image_url', image_url: {} },
        { type: 'image_url' },
      ]),
    ).toEqual([{ type: 'text', text: 'look' }]);
  });

  it('maps inline PDF file parts to documents and skips file ids', () => {
    expect(
      parts([
        { type: 'file', file: { filename: 'a.pdf', file_data: 'data:application/pdf;base64,JVBERi0=' } },
        { type: 'file', file: { file_id: 'file-abc' } },
      ]),
    ).toEqual([
      {
        type: 'document',
        source: { type: 'base64', media_type: 'application/pdf', data: 'JVBERi0=' },
        title: 'a.pdf', // the file's name: how Claude tells two documents apart
      },
    ]);
  });

  it('keeps cache_control on user parts', () => {
    expect(parts([{ type: 'text', text: 'long doc', cache_control: { type: 'ephemeral' } }])).toEqual([
      { type: 'text', text: 'long doc', cache_control: { type: 'ephemeral' } },
    ]);
  });

  it('skips audio and unknown parts', () => {
    expect(
      parts([
        { type: 'input_audio', input_audio: { data: 'x', format: 'wav' } },
        { type: 'weird' },
        { type: 'text', text: 'ok' },
      ]),
    ).toEqual([{ type: 'text', text: 'ok' }]);
  });
});

describe('anthropic chatRequest: tools', () => {
  const fnTool = (name: string, parameters?: unknown) => ({
    type: 'function',
    function: { name, parameters },
  });

  it('sends a call’s arguments with long numbers as written; a NUL in a string is only a character', () => {
    const args = '{"order_id": 12345678901234567890, "amount": 19.990000000000001, "note": "\\u0000raw-0:0"}';
    const req = anthropicAdapter.chatRequest(
      {
        model: 'x',
        messages: [
          user('order?'),
          {
            role: 'assistant',
            content: null,
            tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: args } }],
          },
          { role: 'tool', tool_call_id: 'c1', content: 'ok' },
        ],
        tools: [fnTool('f')],
      } as ChatBody,
      'claude-haiku-4-5',
      provider,
    );
    const text = req.body.toString();
    expect(text).toContain(`"input":${args}`);
    expect(JSON.parse(text)).toBeTruthy(); // still one valid JSON document
    // Short numbers go the plain way, re-serialised.
    const plain = build({
      messages: [
        user('q'),
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'c2', type: 'function', function: { name: 'f', arguments: '{ "n": 42 }' } }],
        },
        { role: 'tool', tool_call_id: 'c2', content: 'ok' },
      ],
      tools: [fnTool('f')],
    });
    expect(JSON.stringify(plain.messages[1]!.content[0])).toContain('"input":{"n":42}');
  });

  it('maps function tools, defaulting the input schema', () => {
    const sent = build({
      messages: [user('q')],
      tools: [fnTool('a', { type: 'object', properties: { x: { type: 'number' } } }), fnTool('b')],
    });
    expect(sent.tools).toEqual([
      { name: 'a', input_schema: { type: 'object', properties: { x: { type: 'number' } } } },
      { name: 'b', input_schema: { type: 'object', properties: {} } },
    ]);
  });

  it('gives an empty or typeless parameters schema the object type Anthropic requires', () => {
    const sent = build({
      messages: [user('q')],
      tools: [fnTool('a', {}), fnTool('b', { properties: { x: { type: 'string' } } })],
    });
    expect(sent.tools).toEqual([
      { name: 'a', input_schema: { type: 'object' } },
      { name: 'b', input_schema: { type: 'object', properties: { x: { type: 'string' } } } },
    ]);
  });

  it('skips non-function tools and tools without a name', () => {
    const sent = build({
      messages: [user('q')],
      tools: [{ type: 'custom', custom: { name: 'c' } }, { type: 'function', function: {} }, null, 3],
    });
    expect(sent).not.toHaveProperty('tools');
    expect(sent).not.toHaveProperty('tool_choice');
  });

  it.each([
    ['auto', { type: 'auto' }],
    ['none', { type: 'none' }],
    ['required', { type: 'any' }],
    [
      { type: 'function', function: { name: 'a' } },
      { type: 'tool', name: 'a' },
    ],
  ])('maps tool_choice %j', (choice, expected) => {
    expect(build({ messages: [user('q')], tools: [fnTool('a')], tool_choice: choice }).tool_choice).toEqual(
      expected,
    );
  });

  it('maps parallel_tool_calls:false to disable_parallel_tool_use, with or without tool_choice', () => {
    expect(
      build({ messages: [user('q')], tools: [fnTool('a')], parallel_tool_calls: false }).tool_choice,
    ).toEqual({
      type: 'auto',
      disable_parallel_tool_use: true,
    });
    expect(
      build({
        messages: [user('q')],
        tools: [fnTool('a')],
        parallel_tool_calls: false,
        tool_choice: { type: 'function', function: { name: 'a' } },
      }).tool_choice,
    ).toEqual({ type: 'tool', name: 'a', disable_parallel_tool_use: true });
    expect(
      build({ messages: [user('q')], tools: [fnTool('a')], parallel_tool_calls: true }),
    ).not.toHaveProperty('tool_choice');
  });

  it('maps assistant tool_calls to tool_use blocks and tool messages to one merged user turn', () => {
    const sent = build({
      messages: [
        user('q'),
        {
          role: 'assistant',
          content: 'Let me check.',
          tool_calls: [
            { id: 'call_a', type: 'function', function: { name: 'f', arguments: '{"n":1}' } },
            { id: 'call.b/2', type: 'function', function: { name: 'g', arguments: '' } },
          ],
        },
        { role: 'tool', tool_call_id: 'call_a', content: 'one' },
        { role: 'tool', tool_call_id: 'call.b/2', content: '' },
      ],
    });
    expect(sent.messages.slice(1)).toEqual([
      {
        role: 'assistant',
        content: [
          { type: 'text', text: 'Let me check.' },
          { type: 'tool_use', id: 'call_a', name: 'f', input: { n: 1 } },
          { type: 'tool_use', id: 'call_b_2', name: 'g', input: {} },
        ],
      },
      {
        role: 'user',
        content: [
          { type: 'tool_result', tool_use_id: 'call_a', content: 'one' },
          { type: 'tool_result', tool_use_id: 'call_b_2' },
        ],
      },
    ]);
  });

  it('sends input {} for arguments that are bad JSON or not an object', () => {
    const sent = build({
      messages: [
        user('q'),
        {
          role: 'assistant',
          tool_calls: [
            { id: 'a', function: { name: 'f', arguments: '{"unterminated' } },
            { id: 'b', function: { name: 'f', arguments: '[1,2]' } },
            { id: 'c', function: { name: 'f', arguments: 42 } },
            { id: 'd', function: { name: 'f', arguments: { already: 'object' } } },
          ],
        },
      ],
    });
    expect(sent.messages[1]?.content.map((b) => b.input)).toEqual([{}, {}, {}, { already: 'object' }]);
  });

  it('skips tool calls without an id or name, and sends an unlinked tool result as text', () => {
    const sent = build({
      messages: [
        user('q'),
        {
          role: 'assistant',
          content: 'x',
          tool_calls: [{ function: { name: 'f', arguments: '{}' } }, { id: 'k', function: {} }],
        },
        { role: 'tool', content: 'orphan' },
      ],
    });
    expect(sent.messages[1]?.content).toEqual([{ type: 'text', text: 'x' }]);
    expect(sent.messages[2]?.content).toEqual([{ type: 'text', text: 'Tool result: orphan' }]);
  });

  // Anthropic: "Requests which include `tool_use` or `tool_result` blocks must define tools."
  it('defines a stub per tool the history used, with tool_choice none, when the request has no tools', () => {
    const call = (id: string, name: string) => ({
      id,
      type: 'function',
      function: { name, arguments: '{}' },
    });
    const sent = build({
      messages: [
        user('q'),
        { role: 'assistant', tool_calls: [call('c1', 'weather'), call('c2', 'time'), call('c3', 'weather')] },
        { role: 'tool', tool_call_id: 'c1', content: 'sunny' },
        { role: 'tool', tool_call_id: 'c2', content: 'noon' },
        { role: 'tool', tool_call_id: 'c3', content: 'warm' },
        user('sum it up'),
      ],
    });
    const stub = { type: 'object', properties: {} };
    expect(sent.tools).toEqual([
      { name: 'weather', description: expect.any(String), input_schema: stub },
      { name: 'time', description: expect.any(String), input_schema: stub },
    ]);
    expect(sent.tool_choice).toEqual({ type: 'none' });
    expect(build({ messages: [user('q')], tools: [] })).not.toHaveProperty('tools');
  });

  it('keeps the client tools as they are when it sent some, and stubs a generic tool for unusable names', () => {
    const history = [
      user('q'),
      { role: 'assistant', tool_calls: [{ id: 'c1', function: { name: 'bad name!', arguments: '{}' } }] },
      { role: 'tool', tool_call_id: 'c1', content: 'r' },
    ];
    expect(build({ messages: history, tools: [fnTool('a')] }).tools).toEqual([
      { name: 'a', input_schema: { type: 'object', properties: {} } },
    ]);
    const sent = build({ messages: history });
    expect((sent.tools as { name: string }[]).map((t) => t.name)).toEqual(['earlier_tool']);
    expect(sent.tool_choice).toEqual({ type: 'none' });
  });
});

describe('anthropic chatRequest: parameters', () => {
  it('uses max_completion_tokens, then max_tokens, then the provider default', () => {
    expect(build({ messages: [user('q')], max_tokens: 100, max_completion_tokens: 200 }).max_tokens).toBe(
      200,
    );
    expect(build({ messages: [user('q')], max_tokens: 100 }).max_tokens).toBe(100);
    expect(build({ messages: [user('q')] }).max_tokens).toBe(4096);
    expect(build({ messages: [user('q')], max_tokens: -5 }).max_tokens).toBe(4096);
  });

  it('clamps temperature to [0, 1] and sends top_p only without temperature', () => {
    expect(build({ messages: [user('q')], temperature: 2 }).temperature).toBe(1);
    expect(build({ messages: [user('q')], temperature: 0.3 }).temperature).toBe(0.3);
    expect(build({ messages: [user('q')], temperature: -1 }).temperature).toBe(0);
    const both = build({ messages: [user('q')], temperature: 0.5, top_p: 0.9 });
    expect(both.temperature).toBe(0.5);
    expect(both).not.toHaveProperty('top_p');
    expect(build({ messages: [user('q')], top_p: 0.9 }).top_p).toBe(0.9);
  });

  it('sends no temperature or top_p to Claude 4.7 and later, which removed them (any value is a 400)', () => {
    for (const model of [
      'claude-opus-4-7',
      'anthropic.claude-opus-4-7',
      'claude-sonnet-5',
      'claude-mythos-preview',
    ]) {
      expect(sentTo(model, { temperature: 0.2 }), model).not.toHaveProperty('temperature');
      expect(sentTo(model, { top_p: 0.9 }), model).not.toHaveProperty('top_p');
    }
    for (const model of ['claude-opus-4-6', 'claude-sonnet-4-5', 'claude-3-5-haiku-latest', 'my-proxy-model'])
      expect([model, sentTo(model, { temperature: 0.2 }).temperature]).toEqual([model, 0.2]);
  });

  it('maps stop (string or array) to stop_sequences, skipping blank ones', () => {
    expect(build({ messages: [user('q')], stop: 'END' }).stop_sequences).toEqual(['END']);
    expect(build({ messages: [user('q')], stop: ['A', ' ', 3, 'B'] }).stop_sequences).toEqual(['A', 'B']);
    expect(build({ messages: [user('q')], stop: null })).not.toHaveProperty('stop_sequences');
  });

  it('sends stream only when true, and user as metadata.user_id', () => {
    expect(build({ messages: [user('q')], stream: false })).not.toHaveProperty('stream');
    expect(build({ messages: [user('q')], stream: true }).stream).toBe(true);
    expect(build({ messages: [user('q')], user: 'u1' }).metadata).toEqual({ user_id: 'u1' });
  });

  it('drops unknown and OpenAI-only fields', () => {
    const sent = build({
      messages: [user('q')],
      n: 2,
      seed: 1,
      presence_penalty: 1,
      logit_bias: { 1: 2 },
      stream_options: { include_usage: true },
      service_tier: 'auto',
      store: true,
      some_vendor_field: 'x',
    });
    expect(Object.keys(sent).sort()).toEqual(['max_tokens', 'messages', 'model']);
  });
});

describe('anthropic chatRequest: response_format', () => {
  it('turns json_object into a JSON-only system instruction after the client system prompt', () => {
    const sent = build({
      messages: [{ role: 'system', content: 'Be terse.' }, user('q')],
      response_format: { type: 'json_object' },
    });
    expect(sent.system).toMatch(/^Be terse\.\n\nRespond with one valid JSON object only/);
  });

  it('includes the json_schema schema and name in the instruction', () => {
    const schema = { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] };
    const sent = build({
      messages: [user('q')],
      response_format: { type: 'json_schema', json_schema: { name: 'place', schema, strict: true } },
    });
    expect(sent.system).toContain('JSON Schema "place"');
    expect(sent.system).toContain(JSON.stringify(schema));
    expect(sent).not.toHaveProperty('response_format');
  });

  it('adds nothing for response_format text', () => {
    expect(build({ messages: [user('q')], response_format: { type: 'text' } })).not.toHaveProperty('system');
  });
});

describe('anthropic chatRequest: hostile input never throws', () => {
  const hostile: unknown[] = [
    null,
    42,
    'user',
    [],
    { role: 'user', content: 42 },
    {
      role: 'user',
      content: [null, 7, [], { type: 'text', text: 9 }, { type: 'image_url', image_url: 5 }, 'loose string'],
    },
    { role: 'assistant', content: { nested: true }, tool_calls: 'nope' },
    {
      role: 'assistant',
      tool_calls: [
        null,
        1,
        { id: 5, function: 'f' },
        { id: 'x', function: { name: 'f', arguments: '{bad' } },
      ],
    },
    { role: 'tool', tool_call_id: {}, content: { obj: 1 } },
    { role: 'tool', tool_call_id: 'x', content: 12 },
    { role: '__proto__', content: 'x' },
    { role: 'system', content: [{ type: 'image_url' }, null] },
  ];

  it('maps whatever it can and skips the rest', () => {
    const sent = build({
      messages: hostile,
      tools: 'all',
      tool_choice: { type: 'function' },
      stop: { a: 1 },
      temperature: 'hot',
      max_tokens: Number.NaN,
      response_format: { type: 'json_schema', json_schema: 'x' },
      user: 12,
    });
    expect(sent.messages[0]?.role).toBe('user');
    for (let i = 1; i < sent.messages.length; i++)
      expect(sent.messages[i]?.role).not.toBe(sent.messages[i - 1]?.role);
    expect(sent.messages[0]?.content).toContainEqual({ type: 'text', text: 'loose string' });
    expect(sent.max_tokens).toBe(4096);
    expect(sent).not.toHaveProperty('temperature');
  });

  it('survives messages that are not an array', () => {
    const req = anthropicAdapter.chatRequest(
      { model: 'x', messages: 'hi' as unknown as unknown[] },
      'm',
      provider,
    );
    expect((JSON.parse(req.body.toString()) as Sent).messages).toHaveLength(1);
  });
});

describe('anthropic chatRequest: extended thinking', () => {
  const call = { id: 'c1', type: 'function', function: { name: 'f', arguments: '{}' } };
  const signed = { type: 'thinking', thinking: 'hmm', signature: 'sig' };
  const toolLoop = (assistant: Record<string, unknown>) => [
    user('q'),
    { role: 'assistant', tool_calls: [call], ...assistant },
    { role: 'tool', tool_call_id: 'c1', content: 'r' },
  ];

  it.each([
    ['low', 1024],
    ['medium', 2048],
    ['high', 4096],
  ])('reasoning_effort %s asks for %i thinking tokens on top of the default max_tokens', (effort, budget) => {
    const sent = build({ messages: [user('q')], reasoning_effort: effort, temperature: 0.2, top_p: 0.5 });
    expect(sent.thinking).toEqual({ type: 'enabled', budget_tokens: budget });
    expect(sent.max_tokens).toBe(4096 + budget);
    expect(sent).not.toHaveProperty('temperature');
    expect(sent).not.toHaveProperty('top_p');
  });

  it("fits the budget inside the client's max_tokens, and asks for none when under 1024 would be left", () => {
    const inside = build({ messages: [user('q')], reasoning_effort: 'high', max_completion_tokens: 3000 });
    expect([inside.thinking, inside.max_tokens]).toEqual([{ type: 'enabled', budget_tokens: 2999 }, 3000]);
    const small = build({
      messages: [user('q')],
      reasoning_effort: 'low',
      max_tokens: 1024,
      temperature: 0.3,
    });
    expect(small).not.toHaveProperty('thinking');
    expect([small.max_tokens, small.temperature]).toEqual([1024, 0.3]);
  });

  it('takes the client’s own thinking setting as given, and no thinking for other efforts', () => {
    const own = build({ messages: [user('q')], thinking: { type: 'enabled', budget_tokens: 5000 } });
    expect([own.thinking, own.max_tokens]).toEqual([{ type: 'enabled', budget_tokens: 5000 }, 9096]);
    for (const effort of ['minimal', 'none', 'max', 3, undefined])
      expect(build({ messages: [user('q')], reasoning_effort: effort })).not.toHaveProperty('thinking');
    const off = build({ messages: [user('q')], reasoning_effort: 'high', thinking: { type: 'disabled' } });
    expect(off).not.toHaveProperty('thinking');
  });

  it('reasoning_effort asks only models that think; an explicit thinking setting goes to any model', () => {
    const effort = { reasoning_effort: 'low', temperature: 0.5 };
    for (const model of [
      'claude-3-7-sonnet-latest',
      'claude-opus-4-1',
      'anthropic.claude-sonnet-4-20250514-v1:0',
    ])
      expect(sentTo(model, effort).thinking).toEqual({ type: 'enabled', budget_tokens: 1024 });
    for (const model of [
      'claude-3-5-haiku-latest',
      'claude-3-opus-20240229',
      'claude-2.1',
      'my-proxy-model',
    ]) {
      expect(sentTo(model, effort)).not.toHaveProperty('thinking');
      expect(sentTo(model, effort).temperature).toBe(0.5);
    }
    const own = { thinking: { type: 'enabled', budget_tokens: 2000 } };
    expect(sentTo('my-proxy-model', own).thinking).toEqual(own.thinking);
  });

  it('no thinking with a forced tool, after a prefill, or after a tool turn sent back without its thinking', () => {
    const fn = { type: 'function', function: { name: 'f' } };
    const effort = { reasoning_effort: 'medium' };
    expect(
      build({ messages: [user('q')], tools: [fn], tool_choice: 'required', ...effort }),
    ).not.toHaveProperty('thinking');
    const prefill = [user('q'), { role: 'assistant', content: 'Sure:' }];
    expect(build({ messages: prefill, ...effort })).not.toHaveProperty('thinking');
    const bare = build({ messages: toolLoop({}), tools: [fn], ...effort });
    expect(bare).not.toHaveProperty('thinking');
    expect(bare.messages[1]!.content.map((b) => b.type)).toEqual(['tool_use']);
  });

  it("sends a tool turn's thinking_blocks back first in its turn, signed or redacted, when thinking", () => {
    const fn = { type: 'function', function: { name: 'f' } };
    const redacted = { type: 'redacted_thinking', data: 'X' };
    const unsigned = [
      { type: 'thinking', thinking: 'u' },
      { type: 'thinking', thinking: 'u', signature: '' },
    ];
    const blocks = [signed, redacted, ...unsigned, { type: 'redacted_thinking', data: '' }, 7];
    const sent = build({
      messages: toolLoop({ thinking_blocks: blocks }),
      tools: [fn],
      reasoning_effort: 'low',
    });
    expect(sent.thinking).toEqual({ type: 'enabled', budget_tokens: 1024 });
    expect(sent.messages[1]!.content).toEqual([
      signed,
      redacted,
      { type: 'tool_use', id: 'c1', name: 'f', input: {} },
    ]);
    const without = build({ messages: toolLoop({ thinking_blocks: blocks }), tools: [fn] });
    expect(without.messages[1]!.content.map((b) => b.type)).toEqual(['tool_use']);
  });
});

describe('anthropic chatRequest: thinking on the turns as sent', () => {
  const signed = { type: 'thinking', thinking: 'hmm', signature: 'sig' };
  const fn = { type: 'function', function: { name: 'f' } };
  const call = (id: string) => ({ id, type: 'function', function: { name: 'f', arguments: '{}' } });
  const result = (id: string) => ({ role: 'tool', tool_call_id: id, content: 'r' });
  const effort = { tools: [fn], reasoning_effort: 'low' };

  it('a tool loop keeps thinking while its first message carries it, however many rounds followed', () => {
    const sent = build({
      messages: [
        user('q'),
        { role: 'assistant', tool_calls: [call('c1')], thinking_blocks: [signed] },
        result('c1'),
        { role: 'assistant', tool_calls: [call('c2')] },
        result('c2'),
      ],
      ...effort,
    });
    expect(sent.thinking).toEqual({ type: 'enabled', budget_tokens: 1024 });
    expect(sent.messages.map((m) => m.content.map((b) => b.type))).toEqual([
      ['text'],
      ['thinking', 'tool_use'],
      ['tool_result'],
      ['tool_use'],
      ['tool_result'],
    ]);
    const opened = build({
      messages: [
        user('q'),
        { role: 'assistant', tool_calls: [call('c1')] },
        result('c1'),
        { role: 'assistant', tool_calls: [call('c2')], thinking_blocks: [signed] },
        result('c2'),
      ],
      ...effort,
    });
    expect(opened).not.toHaveProperty('thinking');
    expect(opened.messages[3]!.content.map((b) => b.type)).toEqual(['tool_use']);
  });

  it('merged assistant messages put the thinking first; thinking alone is dropped; an emptied final assistant is no prefill', () => {
    const merged = build({
      messages: [
        user('q'),
        { role: 'assistant', content: 'Looking.' },
        { role: 'assistant', tool_calls: [call('c1')], thinking_blocks: [signed] },
        result('c1'),
      ],
      ...effort,
    });
    expect(merged.messages[1]!.content.map((b) => b.type)).toEqual(['thinking', 'text', 'tool_use']);
    const alone = build({
      messages: [user('q'), { role: 'assistant', content: '', thinking_blocks: [signed] }, user('more')],
      ...effort,
    });
    expect(alone.messages.map((m) => m.role)).toEqual(['user']);
    const blank = build({ messages: [user('q'), { role: 'assistant', content: '' }], ...effort });
    expect(blank.thinking).toEqual({ type: 'enabled', budget_tokens: 1024 });
  });

  it('reasoning_effort: a budget for Claude 3.7 and 4.0-4.5, adaptive thinking at that effort from 4.6 on', () => {
    const sent = (model: string, extra: Record<string, unknown> = {}) =>
      sentTo(model, { reasoning_effort: 'low', ...extra });
    for (const model of [
      'claude-sonnet-4-20250514',
      'claude-3-7-sonnet-20250219',
      'claude-haiku-4-5-20251001',
      'claude-opus-4-1@20250805',
      'claude-4-sonnet',
    ]) {
      expect([model, sent(model).thinking]).toEqual([model, { type: 'enabled', budget_tokens: 1024 }]);
      expect(sent(model)).not.toHaveProperty('output_config');
    }
    for (const [model, thinking] of [
      ['claude-opus-4-6', { type: 'adaptive' }],
      ['anthropic.claude-opus-4-6-v1', { type: 'adaptive' }],
      // 4.7 on omit the thinking's text unless asked for it.
      ['claude-opus-4-7', { type: 'adaptive', display: 'summarized' }],
      ['anthropic.claude-opus-4-7', { type: 'adaptive', display: 'summarized' }],
      ['claude-sonnet-5', { type: 'adaptive', display: 'summarized' }],
      ['claude-opus-5-1', { type: 'adaptive', display: 'summarized' }],
      ['claude-mythos-preview', { type: 'adaptive', display: 'summarized' }],
    ] as const) {
      const body = sent(model);
      expect([model, body.thinking, body.output_config]).toEqual([model, thinking, { effort: 'low' }]);
      expect(body.max_tokens).toBe(4096 + 1024); // room for thinking on top of the default
    }
    for (const model of ['claude-3-5-sonnet-20241022', 'claude-3-opus-latest', 'claude-2.1', 'gpt-4o'])
      expect([model, sent(model).thinking]).toEqual([model, undefined]);
    // Adaptive within the client's max_tokens, and none when it leaves no room for thinking.
    expect(sent('claude-opus-4-7', { max_tokens: 3000 }).max_tokens).toBe(3000);
    expect(sent('claude-opus-4-7', { max_tokens: 1024 })).not.toHaveProperty('thinking');
    // xhigh: Claude 4.7 on take it; 4.6 gets high, budget models high's budget.
    expect(sent('claude-opus-4-7', { reasoning_effort: 'xhigh' }).output_config).toEqual({ effort: 'xhigh' });
    expect(sent('claude-sonnet-4-6', { reasoning_effort: 'xhigh' }).output_config).toEqual({
      effort: 'high',
    });
    expect(sent('claude-sonnet-4-5', { reasoning_effort: 'xhigh' }).thinking).toEqual({
      type: 'enabled',
      budget_tokens: 4096,
    });
    for (const effort of ['minimal', 'none'])
      expect(sent('claude-opus-4-7', { reasoning_effort: effort })).not.toHaveProperty('thinking');
    // The client's own adaptive setting, with its effort.
    const own = sent('proxy-model', {
      thinking: { type: 'adaptive', display: 'omitted' },
      reasoning_effort: 'high',
    });
    expect([own.thinking, own.output_config]).toEqual([
      { type: 'adaptive', display: 'omitted' },
      { effort: 'high' },
    ]);
  });
});

describe('anthropic chatRequest: Claude 5 and later think by default', () => {
  const signed = { type: 'thinking', thinking: '', signature: 'sig' };
  const fn = { type: 'function', function: { name: 'f' } };
  const call = { id: 'c1', type: 'function', function: { name: 'f', arguments: '{}' } };
  const loop = (assistant: Record<string, unknown>) => [
    user('q'),
    { role: 'assistant', tool_calls: [call], ...assistant },
    { role: 'tool', tool_call_id: 'c1', content: 'r' },
  ];
  const send = (model: string, extra: Record<string, unknown>): Sent =>
    JSON.parse(
      anthropicAdapter
        .chatRequest({ model: 'x', messages: [user('q')], ...extra } as ChatBody, model, provider)
        .body.toString(),
    ) as Sent;

  it('without reasoning_effort Opus 5 and Sonnet 5 keep their own thinking, with room in the default max_tokens', () => {
    for (const model of ['claude-opus-5', 'claude-sonnet-5', 'anthropic.claude-sonnet-5']) {
      const sent = send(model, {});
      expect([model, sent.thinking, sent.max_tokens]).toEqual([model, undefined, 4096 + 4096]);
    }
    expect(send('claude-opus-5', { max_tokens: 300 }).max_tokens).toBe(300);
    // Claude 4.x think only when asked: nothing changes there.
    expect(send('claude-opus-4-8', {}).max_tokens).toBe(4096);
  });

  it('reasoning_effort none, a forced tool or a tiny max_tokens turn Opus 5 and Sonnet 5 off with thinking: disabled', () => {
    const disabled = { type: 'disabled' };
    for (const model of ['claude-opus-5', 'claude-sonnet-5']) {
      expect(send(model, { reasoning_effort: 'none' }).thinking).toEqual(disabled);
      expect(send(model, { reasoning_effort: 'minimal' }).thinking).toEqual(disabled);
      expect(send(model, { max_tokens: 1000 }).thinking).toEqual(disabled);
      expect(send(model, { thinking: { type: 'disabled' } }).thinking).toEqual(disabled);
      const forced = send(model, { tools: [fn], tool_choice: 'required' });
      expect([forced.thinking, forced.tool_choice]).toEqual([disabled, { type: 'any' }]);
    }
    // Leaving it out is already off before Claude 5.
    expect(send('claude-opus-4-8', { reasoning_effort: 'none' })).not.toHaveProperty('thinking');
  });

  it('a tool loop keeps its thinking_blocks on Opus 5 without reasoning_effort, and turns thinking off when they are missing', () => {
    const kept = send('claude-opus-5', { messages: loop({ thinking_blocks: [signed] }), tools: [fn] });
    expect(kept).not.toHaveProperty('thinking');
    expect(kept.messages[1]!.content.map((b) => b.type)).toEqual(['thinking', 'tool_use']);
    const bare = send('claude-opus-5', { messages: loop({}), tools: [fn] });
    expect(bare.thinking).toEqual({ type: 'disabled' });
  });

  it('Fable, Mythos and Claude 5.1 on always think: never disabled, their thinking blocks always sent back', () => {
    for (const model of ['claude-fable-5-1', 'claude-mythos-5', 'claude-mythos-preview', 'claude-opus-5-5']) {
      expect([model, send(model, { max_tokens: 500 }).thinking]).toEqual([model, undefined]);
      // Asked not to think, they are asked for the least they do: adaptive at low effort.
      for (const no of [
        { reasoning_effort: 'none' },
        { reasoning_effort: 'minimal' },
        { thinking: { type: 'disabled' } },
      ]) {
        const least = send(model, { ...no, max_tokens: 80 });
        expect([model, least.thinking, least.output_config, least.max_tokens]).toEqual([
          model,
          { type: 'adaptive' },
          { effort: 'low' },
          80,
        ]);
      }
      const sent = send(model, { messages: loop({ thinking_blocks: [signed] }), tools: [fn] });
      expect(sent.messages[1]!.content.map((b) => b.type)).toEqual(['thinking', 'tool_use']);
      expect(send(model, { reasoning_effort: 'low' }).output_config).toEqual({ effort: 'low' });
    }
  });

  it('a tool loop under way without its thinking blocks goes as text to a model that always thinks; closed loops keep theirs', () => {
    const image = { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgo=' } };
    const messages = [
      user('first'),
      { role: 'assistant', tool_calls: [{ ...call, id: 'old' }] },
      { role: 'tool', tool_call_id: 'old', content: 'old result' },
      { role: 'assistant', content: 'done with that' },
      user('now this'),
      { role: 'assistant', content: 'checking', tool_calls: [call] },
      { role: 'tool', tool_call_id: 'c1', content: [{ type: 'text', text: 'seen' }, image] },
    ];
    for (const model of ['claude-opus-5-5', 'claude-fable-5-1']) {
      const sent = send(model, { messages, tools: [fn] });
      expect(sent.messages.map((m) => m.content.map((b) => b.type))).toEqual([
        ['text'],
        ['tool_use'],
        ['tool_result'],
        ['text'],
        ['text'],
        ['text', 'text'],
        ['text', 'image'],
      ]);
      expect(sent.messages[5]!.content[1]).toEqual({ type: 'text', text: '[tool call c1: f {}]' });
      expect(sent.messages[6]!.content[0]).toEqual({ type: 'text', text: '[tool result c1: seen]' });
      expect(sent.tools).toEqual([expect.objectContaining({ name: 'f' })]); // the model may call it again
      // With its thinking sent back the loop goes as it is.
      const kept = send(model, { messages: loop({ thinking_blocks: [signed] }), tools: [fn] });
      expect(kept.messages.map((m) => m.content.map((b) => b.type))).toEqual([
        ['text'],
        ['thinking', 'tool_use'],
        ['tool_result'],
      ]);
    }
  });

  it('asks the models that always think (Opus 5.5, Fable, Mythos) for auto instead of a forced tool', () => {
    const named = { type: 'function', function: { name: 'f' } };
    for (const model of [
      'claude-opus-5-5',
      'claude-fable-5-1',
      'anthropic.claude-mythos-5-1',
      'claude-fable-5',
    ]) {
      expect(send(model, { tools: [fn], tool_choice: 'required' }).tool_choice).toEqual({ type: 'auto' });
      const one = send(model, { tools: [fn], tool_choice: named, parallel_tool_calls: false });
      expect(one.tool_choice).toEqual({ type: 'auto', disable_parallel_tool_use: true });
      // The forced tool no longer rules thinking out there.
      const effort = send(model, { tools: [fn], tool_choice: 'required', reasoning_effort: 'high' });
      expect(effort.output_config).toEqual({ effort: 'high' });
    }
    for (const model of ['claude-opus-5', 'claude-sonnet-5', 'claude-haiku-4-5'])
      expect(send(model, { tools: [fn], tool_choice: named }).tool_choice).toEqual({
        type: 'tool',
        name: 'f',
      });
  });
});

describe('a client thinking budget under a lowered max_tokens', () => {
  it('stays under max_tokens, or thinking is left out when under the 1,024 minimum', () => {
    const enabled = (budget: number) => ({ thinking: { type: 'enabled', budget_tokens: budget } });
    const sent = build({ messages: [user('q')], max_tokens: 32000, ...enabled(32000) });
    expect(sent.thinking).toEqual({ type: 'enabled', budget_tokens: 31999 });
    expect(sent.max_tokens).toBe(32000);
    const tight = build({ messages: [user('q')], max_tokens: 1000, ...enabled(4000) });
    expect(tight).not.toHaveProperty('thinking');
    const fine = build({ messages: [user('q')], max_tokens: 8000, ...enabled(2000) });
    expect(fine.thinking).toEqual({ type: 'enabled', budget_tokens: 2000 });
  });
});

// Sizes a body within the 10 MiB limit can hold. A repeated tool id resumed its suffix search from `_2` on
// every repeat (k^2/2 steps: 50,000 parallel calls under one id held a core for 100 s), and turns merged
// with `push(...blocks)` put every block on the stack (200,000 parts: a RangeError, answered 500). The
// test's own timeout is the bound: no timing here.
describe('anthropic chatRequest: conversations at the body limit', () => {
  it('60,000 parallel calls under one id: each its own id, each result paired with its call', () => {
    const n = 60_000;
    const calls = Array.from({ length: n }, (_, i) => ({
      id: 'call_0',
      type: 'function',
      function: { name: 'f', arguments: `{"i":${i}}` },
    }));
    const results = Array.from({ length: n }, (_, i) => ({
      role: 'tool',
      tool_call_id: 'call_0',
      content: `r${i}`,
    }));
    const sent = build({
      messages: [user('q'), { role: 'assistant', content: null, tool_calls: calls }, ...results],
      tools: [{ type: 'function', function: { name: 'f' } }],
    });
    const uses = sent.messages[1]!.content;
    const answers = sent.messages[2]!.content;
    expect(uses).toHaveLength(n);
    expect(new Set(uses.map((b) => b.id)).size).toBe(n);
    expect(answers.map((b) => b.tool_use_id)).toEqual(uses.map((b) => b.id));
  }, 30_000);

  it('a user message of 200,000 parts after another: one merged turn, no stack overflow', () => {
    const parts = Array.from({ length: 200_000 }, (_, i) => ({ type: 'text', text: `p${i}` }));
    const sent = build({
      messages: [user('first'), user(parts), { role: 'system', content: parts.slice(0, 100_000) }],
    });
    expect(sent.messages).toHaveLength(1);
    expect(sent.messages[0]!.content).toHaveLength(200_001);
    expect(String(sent.system).endsWith('p99999')).toBe(true);
  }, 30_000);
});
