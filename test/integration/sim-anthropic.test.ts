import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startSimulator, type SimOptions, type Simulator } from '../helpers/simulator.js';
import { get, post, sseEvents } from '../helpers/sim-wire.js';

const track = closeAfterEach();
async function sim(opts: Partial<SimOptions> = {}): Promise<Simulator> {
  return track(await startSimulator({ kind: 'anthropic', ...opts }));
}

const VERSION = { 'anthropic-version': '2023-06-01' };
const msg = {
  model: 'claude-sonnet-4-5',
  max_tokens: 100,
  system: 'be brief',
  messages: [{ role: 'user', content: 'hello world!' }],
};
const tool = {
  name: 'get_weather',
  input_schema: { type: 'object', properties: { location: { type: 'string' } } },
};

function messages(
  s: Simulator,
  body: unknown,
  headers: Record<string, string> = VERSION,
): ReturnType<typeof post> {
  return post(`${s.url}/v1/messages`, body, headers);
}

describe('simulator: Anthropic messages', () => {
  it('rejects what the real API rejects, in its error shape', async () => {
    const s = await sim();
    // A tool call answered, with no thinking before it.
    const toolLoop = [
      { role: 'user', content: 'q' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 't', input: {} }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: 'r' }] },
    ];
    const cases: [unknown, string][] = [
      [{ ...msg, max_tokens: undefined }, 'max_tokens: Field required'],
      [{ ...msg, messages: [] }, 'messages: at least one message is required'],
      [
        {
          ...msg,
          messages: [
            { role: 'system', content: 'x' },
            { role: 'user', content: 'y' },
          ],
        },
        'Unexpected role "system"',
      ],
      [{ ...msg, messages: [{ role: 'tool', content: 'x' }] }, "Input should be 'user' or 'assistant'"],
      [{ ...msg, messages: [{ role: 'assistant', content: 'x' }] }, 'first message must use the "user" role'],
      [
        {
          ...msg,
          messages: [
            { role: 'user', content: 'x' },
            { role: 'user', content: 'y' },
          ],
        },
        'roles must alternate',
      ],
      [{ ...msg, stream_options: { include_usage: true } }, 'stream_options: Extra inputs are not permitted'],
      [{ ...msg, temperature: 1.5 }, 'temperature: Input should be less than or equal to 1'],
      [{ ...msg, tools: [{ name: 't', input_schema: {} }] }, "input_schema.type: Input should be 'object'"],
      [
        { ...msg, messages: [{ role: 'user', content: [{ type: 'text', text: ' ' }] }] },
        'non-whitespace text',
      ],
      [{ ...msg, messages: [{ role: 'user', content: [] }] }, 'all messages must have non-empty content'],
      [
        {
          ...msg,
          messages: [
            {
              role: 'user',
              content: [{ type: 'image', source: { type: 'base64', media_type: 'image/jpg', data: 'x' } }],
            },
          ],
        },
        "messages.0.content.0.image.source.base64.media_type: Input should be 'image/jpeg'",
      ],
      [
        {
          ...msg,
          messages: [
            { role: 'user', content: 'q' },
            { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 't', input: {} }] },
            { role: 'user', content: 'no result' },
          ],
        },
        '`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1',
      ],
      [
        { ...msg, messages: [{ role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_9' }] }] },
        'unexpected `tool_use_id` found in `tool_result` blocks: toolu_9',
      ],
      [
        {
          ...msg,
          messages: [
            { role: 'user', content: 'q' },
            { role: 'assistant', content: [{ type: 'tool_use', id: 'call.1', name: 't', input: {} }] },
          ],
        },
        "tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'",
      ],
      [
        {
          ...msg,
          messages: toolLoop,
        },
        'Requests which include `tool_use` or `tool_result` blocks must define tools.',
      ],
      [{ ...msg, thinking: { type: 'enabled', budget_tokens: 512 } }, 'greater than or equal to 1024'],
      [{ ...msg, thinking: { type: 'sometimes' } }, "expected tags: 'adaptive', 'disabled', 'enabled'"],
      [{ ...msg, output_config: { effort: 'extreme' } }, 'output_config.effort: Input should be'],
      [
        { ...msg, temperature: 0.5, thinking: { type: 'adaptive' }, output_config: { effort: 'low' } },
        '`temperature` may only be set to 1 when thinking is enabled',
      ],

      [
        { ...msg, max_tokens: 1024, thinking: { type: 'enabled', budget_tokens: 1024 } },
        '`max_tokens` must be greater than `thinking.budget_tokens`',
      ],
      [
        { ...msg, max_tokens: 4096, temperature: 0.5, thinking: { type: 'enabled', budget_tokens: 1024 } },
        '`temperature` may only be set to 1 when thinking is enabled',
      ],
      [
        {
          ...msg,
          max_tokens: 4096,
          thinking: { type: 'enabled', budget_tokens: 1024 },
          tools: [{ name: 't', input_schema: { type: 'object' } }],
          tool_choice: { type: 'any' },
        },
        'Thinking may not be enabled when tool_choice forces tool use.',
      ],
      [
        {
          ...msg,
          max_tokens: 4096,
          thinking: { type: 'enabled', budget_tokens: 1024 },
          tools: [{ name: 't', input_schema: { type: 'object' } }],
          messages: toolLoop,
        },
        'a final `assistant` message must start with a thinking block',
      ],
      // Claude 5 on think when `thinking` is left out; Fable and Claude 5.1 on cannot stop, nor take a forced tool.
      [
        {
          ...msg,
          model: 'claude-opus-5',
          tools: [{ name: 't', input_schema: { type: 'object' } }],
          messages: toolLoop,
        },
        'a final `assistant` message must start with a thinking block',
      ],
      [
        { ...msg, model: 'claude-fable-5-1', thinking: { type: 'disabled' } },
        '"thinking.type.disabled" is not supported for this model',
      ],
      [
        {
          ...msg,
          model: 'anthropic.claude-opus-5-5',
          tools: [{ name: 't', input_schema: { type: 'object' } }],
          tool_choice: { type: 'tool', name: 't' },
        },
        'forced tool use (`tool`) is not supported for this model',
      ],
    ];
    for (const [body, message] of cases) {
      const res = await messages(s, body);
      expect(res.status).toBe(400);
      const parsed = JSON.parse(res.text) as { type: string; error: { type: string; message: string } };
      expect(parsed.type).toBe('error');
      expect(parsed.error.type).toBe('invalid_request_error');
      expect(parsed.error.message).toContain(message);
    }
    const noVersion = await messages(s, msg, {});
    expect([noVersion.status, JSON.parse(noVersion.text).error.message]).toEqual([
      400,
      'anthropic-version: header is required',
    ]);
  });

  it('requires x-api-key when apiKey is set', async () => {
    const s = await sim({ apiKey: 'sk-ant-right' });
    const denied = await messages(s, msg, { ...VERSION, authorization: 'Bearer sk-ant-right' });
    expect(denied.status).toBe(401);
    expect(JSON.parse(denied.text)).toEqual({
      type: 'error',
      error: { type: 'authentication_error', message: 'invalid x-api-key' },
    });
    expect((await messages(s, msg, { ...VERSION, 'x-api-key': 'sk-ant-right' })).status).toBe(200);
  });

  it('answers a message with text, usage and stop reasons', async () => {
    const s = await sim({ name: 'claude-sim', completionTokens: 4 });
    const res = JSON.parse((await messages(s, msg)).text) as Record<string, unknown>;
    expect(res).toMatchObject({
      type: 'message',
      role: 'assistant',
      model: 'claude-sonnet-4-5',
      content: [{ type: 'text', text: 'Hello from claude-sim here:' }],
      stop_reason: 'end_turn',
      stop_sequence: null,
      usage: { input_tokens: 5, output_tokens: 4 },
    });
    expect(res.id).toMatch(/^msg_/);
    const short = JSON.parse((await messages(s, { ...msg, max_tokens: 2 })).text) as Record<string, unknown>;
    expect(short.stop_reason).toBe('max_tokens');
  });

  it('answers tools with a tool_use block, and a tool result with text', async () => {
    const s = await sim({ toolCall: true });
    const res = JSON.parse((await messages(s, { ...msg, tools: [tool] })).text) as {
      content: unknown[];
      stop_reason: string;
    };
    expect(res.stop_reason).toBe('tool_use');
    expect(res.content).toEqual([
      {
        type: 'tool_use',
        id: expect.stringMatching(/^toolu_/),
        name: 'get_weather',
        input: { location: 'Paris' },
      },
    ]);
    const after = JSON.parse(
      (
        await messages(s, {
          ...msg,
          tools: [tool],
          messages: [
            { role: 'user', content: 'weather?' },
            {
              role: 'assistant',
              content: [{ type: 'tool_use', id: 'toolu_1', name: 'get_weather', input: {} }],
            },
            { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: 'sunny' }] },
          ],
        })
      ).text,
    ) as { stop_reason: string };
    expect(after.stop_reason).toBe('end_turn');
  });

  it('streams the real event sequence', async () => {
    const s = await sim({ completionTokens: 3 });
    const res = await messages(s, { ...msg, stream: true });
    expect(res.headers['content-type']).toBe('text/event-stream');
    const events = sseEvents(res.text);
    expect(events.map((e) => e.event)).toEqual([
      'message_start',
      'content_block_start',
      'ping',
      'content_block_delta',
      'content_block_delta',
      'content_block_delta',
      'content_block_stop',
      'message_delta',
      'message_stop',
    ]);
    const data = events.map((e) => JSON.parse(e.data) as Record<string, unknown>);
    expect(data.every((d, i) => d.type === events[i]?.event)).toBe(true);
    expect(data[0]).toMatchObject({
      message: { role: 'assistant', content: [], stop_reason: null, usage: { input_tokens: 5 } },
    });
    expect(data[1]).toEqual({
      type: 'content_block_start',
      index: 0,
      content_block: { type: 'text', text: '' },
    });
    expect(
      data
        .slice(3, 6)
        .map((d) => (d.delta as { text: string }).text)
        .join(''),
    ).toBe('Hello from sim');
    expect(data[7]).toEqual({
      type: 'message_delta',
      delta: { stop_reason: 'end_turn', stop_sequence: null },
      usage: { output_tokens: 3 },
    });
  });

  it('streams tool input as input_json_delta fragments', async () => {
    const s = await sim({ toolCall: true });
    const events = sseEvents((await messages(s, { ...msg, tools: [tool], stream: true })).text).map(
      (e) => JSON.parse(e.data) as Record<string, unknown>,
    );
    expect(events[1]).toMatchObject({ content_block: { type: 'tool_use', name: 'get_weather', input: {} } });
    const partial = events
      .filter((e) => e.type === 'content_block_delta')
      .map((e) => e.delta as { type: string; partial_json: string });
    expect(partial.length).toBeGreaterThan(1);
    expect(partial.every((d) => d.type === 'input_json_delta')).toBe(true);
    expect(JSON.parse(partial.map((d) => d.partial_json).join(''))).toEqual({ location: 'Paris' });
    expect(events.find((e) => e.type === 'message_delta')).toMatchObject({
      delta: { stop_reason: 'tool_use' },
    });
  });

  it('uses Anthropic error types for forced statuses', async () => {
    const s = await sim({ status: 529 });
    const overloaded = await messages(s, msg);
    expect([overloaded.status, JSON.parse(overloaded.text).error.type]).toEqual([529, 'overloaded_error']);
    s.set({ status: 429, retryAfterS: 3 });
    const limited = await messages(s, msg);
    expect([limited.status, limited.headers['retry-after'], JSON.parse(limited.text).error.type]).toEqual([
      429,
      '3',
      'rate_limit_error',
    ]);
    s.set({ status: 413 });
    expect(JSON.parse((await messages(s, msg)).text).error.type).toBe('request_too_large');
  });

  it('mid-stream faults: error event, drop after message_start', async () => {
    const s = await sim({ errorEventAfterChunks: 2 });
    const errored = sseEvents((await messages(s, { ...msg, stream: true })).text);
    expect(errored.at(-1)).toEqual({
      event: 'error',
      data: JSON.stringify({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }),
    });
    expect(errored.filter((e) => e.event === 'content_block_delta')).toHaveLength(2);

    s.set({ errorEventAfterChunks: undefined, dropAfterChunks: 0 });
    const dropped = await messages(s, { ...msg, stream: true });
    expect(dropped.error).toBeDefined();
    expect(sseEvents(dropped.text).map((e) => e.event)).toEqual(['message_start']);
  });

  it('counts tokens, lists models, 404s unknown paths', async () => {
    const s = await sim();
    const counted = await post(
      `${s.url}/v1/messages/count_tokens`,
      { model: 'm', messages: msg.messages },
      VERSION,
    );
    expect(JSON.parse(counted.text)).toEqual({ input_tokens: 3 });
    const models = JSON.parse((await get(`${s.url}/v1/models`, VERSION)).text) as { data: { id: string }[] };
    expect(models.data.length).toBeGreaterThan(0);
    const missing = await get(`${s.url}/v1/nope`, VERSION);
    expect([missing.status, JSON.parse(missing.text).error.type]).toEqual([404, 'not_found_error']);
  });
});

describe('simulator: thinking rules of the Messages API', () => {
  const thinking = { type: 'thinking', thinking: 't', signature: 's' };
  const use = (id: string) => ({ type: 'tool_use', id, name: 't', input: {} });
  const result = (id: string) => ({ role: 'user', content: [{ type: 'tool_result', tool_use_id: id }] });
  const ask = (messages: unknown[]) => ({
    ...msg,
    max_tokens: 4096,
    thinking: { type: 'enabled', budget_tokens: 1024 },
    tools: [{ name: 't', input_schema: { type: 'object' } }],
    messages,
  });
  const q = { role: 'user', content: 'q' };

  it('a tool loop opens with thinking; later rounds need none (Claude thinks once per turn)', async () => {
    const s = await sim();
    const loop = [
      q,
      { role: 'assistant', content: [thinking, use('toolu_1')] },
      result('toolu_1'),
      { role: 'assistant', content: [use('toolu_2')] },
      result('toolu_2'),
    ];
    expect((await messages(s, ask(loop))).status).toBe(200);
  });

  it('rejects a loop that opened without thinking, thinking not first, and thinking as the last block', async () => {
    const s = await sim();
    const cases: [unknown[], string][] = [
      [
        [
          q,
          { role: 'assistant', content: [use('toolu_1')] },
          result('toolu_1'),
          { role: 'assistant', content: [thinking, use('toolu_2')] },
          result('toolu_2'),
        ],
        'messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`',
      ],
      [
        [
          q,
          { role: 'assistant', content: [{ type: 'text', text: 'a' }, thinking] },
          { role: 'user', content: 'b' },
        ],
        'messages.1.content.0: If an assistant message contains any thinking blocks, the first block must be thinking or redacted_thinking. Found text.',
      ],
      [
        [q, { role: 'assistant', content: [thinking] }, { role: 'user', content: 'b' }],
        'messages.1: The final block in an assistant message cannot be `thinking`.',
      ],
    ];
    for (const [list, message] of cases) {
      const res = await messages(s, ask(list));
      expect([res.status, (JSON.parse(res.text) as { error: { message: string } }).error.message]).toEqual([
        400,
        expect.stringContaining(message),
      ]);
    }
  });
});
