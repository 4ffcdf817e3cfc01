import { describe, expect, it } from 'vitest';
import { chunksOfCompletion, CompletionBuilder } from '../../../src/streaming/completion-chunks.js';

type Json = Record<string, unknown>;

const completion: Json = {
  id: 'chatcmpl-9',
  object: 'chat.completion',
  created: 7,
  model: 'm',
  system_fingerprint: 'fp',
  choices: [
    {
      index: 0,
      message: {
        role: 'assistant',
        content: null,
        refusal: null,
        tool_calls: [
          { id: 'call_a', type: 'function', function: { name: 'f', arguments: '{"x":1}' } },
          { id: 'call_b', type: 'function', function: { name: 'g', arguments: '{}' } },
        ],
      },
      logprobs: null,
      finish_reason: 'tool_calls',
    },
    {
      index: 1,
      message: { role: 'assistant', content: 'hello', refusal: null, reasoning_content: 'think' },
      logprobs: { content: [{ token: 'hello', logprob: -0.1 }] },
      finish_reason: 'stop',
    },
  ],
  usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 },
};

function parsed(out: ReturnType<typeof chunksOfCompletion>): Json[] {
  return out.chunks.map((c) => JSON.parse(c.json) as Json);
}

describe('chunksOfCompletion', () => {
  it('opens with a role chunk, gives every choice its message as one delta, tool calls numbered, then the finish reasons', () => {
    const out = chunksOfCompletion(completion, false);
    const [roles, deltas, ends] = parsed(out);
    expect(out.chunks.map((c) => c.content)).toEqual([false, true, false]);
    expect(roles!.choices).toEqual([
      { index: 0, delta: { role: 'assistant' }, logprobs: null, finish_reason: null },
      { index: 1, delta: { role: 'assistant' }, logprobs: null, finish_reason: null },
    ]);
    expect((deltas!.choices as Json[])[0]!.delta).not.toHaveProperty('role');
    expect(out.finished).toBe(true);
    expect(deltas).toMatchObject({
      id: 'chatcmpl-9',
      object: 'chat.completion.chunk',
      created: 7,
      model: 'm',
    });
    const choices = deltas!.choices as Json[];
    expect(choices[0]).toMatchObject({
      index: 0,
      finish_reason: null,
      delta: {
        tool_calls: [
          { index: 0, id: 'call_a' },
          { index: 1, id: 'call_b' },
        ],
      },
    });
    expect(choices[1]).toMatchObject({ index: 1, delta: { content: 'hello', reasoning_content: 'think' } });
    expect(ends!.choices).toEqual([
      { index: 0, delta: {}, finish_reason: 'tool_calls' },
      { index: 1, delta: {}, finish_reason: 'stop' },
    ]);
  });

  it('adds a usage chunk only when the client asked for one', () => {
    expect(chunksOfCompletion(completion, false).chunks).toHaveLength(3);
    const withUsage = parsed(chunksOfCompletion(completion, true));
    expect(withUsage[3]).toMatchObject({ choices: [], usage: completion.usage });
  });

  it('says an answer without any finish reason is not finished, and an empty one carries no content', () => {
    const out = chunksOfCompletion(
      { choices: [{ index: 0, message: { role: 'assistant', content: '' } }] },
      false,
    );
    expect(out.finished).toBe(false);
    expect(out.chunks.some((c) => c.content)).toBe(false);
  });

  it('counts a list of parts (Mistral thinking) and images (OpenRouter) as content', () => {
    const thinking = [{ type: 'thinking', thinking: [{ type: 'text', text: 'hmm' }] }];
    const image = [{ type: 'image_url', image_url: { url: 'data:image/png;base64,AAAA' } }];
    for (const message of [{ content: thinking }, { content: null, images: image }]) {
      const out = chunksOfCompletion({ choices: [{ index: 0, message, finish_reason: 'stop' }] }, false);
      expect(
        out.chunks.some((c) => c.content),
        JSON.stringify(message),
      ).toBe(true);
    }
  });
});

describe('CompletionBuilder', () => {
  it('rebuilds the completion a stream of it was made from', () => {
    const built = new CompletionBuilder();
    for (const chunk of parsed(chunksOfCompletion(completion, true))) built.add(chunk);
    expect(built.finished()).toBe(true);
    expect(built.completion()).toEqual(completion);
  });

  it('appends text and tool-call arguments by index, keeps ids and names, takes the last usage', () => {
    const built = new CompletionBuilder();
    const chunk = (delta: Json, finish: string | null = null, extra: Json = {}): Json => ({
      id: 'c',
      model: 'm',
      created: 1,
      choices: [{ index: 0, delta, finish_reason: finish }],
      ...extra,
    });
    built.add(chunk({ role: 'assistant', content: '' }));
    built.add(chunk({ content: 'Hel' }));
    built.add(chunk({ content: 'lo' }));
    built.add(
      chunk({
        tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: { name: 'f', arguments: '' } }],
      }),
    );
    built.add(chunk({ tool_calls: [{ index: 0, function: { arguments: '{"a":' } }] }));
    built.add(chunk({ tool_calls: [{ index: 0, function: { arguments: '2}' } }] }));
    built.add(chunk({}, 'tool_calls'));
    built.add({ id: 'c', choices: [], usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 } });
    expect(built.completion()).toEqual({
      id: 'c',
      model: 'm',
      created: 1,
      object: 'chat.completion',
      choices: [
        {
          index: 0,
          message: {
            role: 'assistant',
            content: 'Hello',
            refusal: null,
            tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'f', arguments: '{"a":2}' } }],
          },
          logprobs: null,
          finish_reason: 'tool_calls',
        },
      ],
      usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 },
    });
  });

  it('gives text "" to an empty answer and null beside tool calls or a refusal, as a JSON answer has them', () => {
    const build = (...deltas: Json[]): Json => {
      const built = new CompletionBuilder();
      for (const delta of deltas) built.add({ choices: [{ index: 0, delta }] });
      built.add({ choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] });
      return (built.completion().choices as { message: Json }[])[0]!.message;
    };
    expect(build({ role: 'assistant', content: '' })).toMatchObject({ content: '' });
    expect(
      build(
        { role: 'assistant', content: '' },
        { tool_calls: [{ index: 0, id: 'c', function: { name: 'f' } }] },
      ),
    ).toMatchObject({
      content: null,
    });
    expect(build({ role: 'assistant' }, { refusal: 'no' })).toMatchObject({ content: null, refusal: 'no' });
  });

  it('is not finished while no choice said why it stopped', () => {
    const built = new CompletionBuilder();
    built.add({ choices: [{ index: 0, delta: { content: 'cut' }, finish_reason: null }] });
    expect(built.finished()).toBe(false);
  });

  it('bounds the choices and tool calls an upstream can make it hold, and then is no answer (not a cut one)', () => {
    const built = new CompletionBuilder();
    for (let i = 0; i < 5000; i++)
      built.add({ choices: [{ index: i, delta: { content: 'x' }, finish_reason: 'stop' }] });
    expect((built.completion().choices as unknown[]).length).toBe(4096);
    expect(built.finished()).toBe(false);
    const calls = new CompletionBuilder();
    const many = Array.from({ length: 5000 }, (_, index) => ({
      index,
      id: `c${index}`,
      function: { name: 'f', arguments: '' },
    }));
    calls.add({ choices: [{ index: 0, delta: { tool_calls: many }, finish_reason: 'tool_calls' }] });
    expect(calls.finished()).toBe(false);
  });

  it('gathers content that comes as lists of parts, and text after them, into one list; images appended', () => {
    const built = new CompletionBuilder();
    const think = (text: string): Json => ({ type: 'thinking', thinking: [{ type: 'text', text }] });
    const img = (n: number): Json => ({
      type: 'image_url',
      image_url: { url: `data:image/png;base64,${n}` },
    });
    const delta = (d: Json, finish: string | null = null): Json => ({
      choices: [{ index: 0, delta: d, finish_reason: finish }],
    });
    built.add(delta({ role: 'assistant', content: '' }));
    built.add(delta({ content: [think('a')] }));
    built.add(delta({ content: [think('b')] }));
    built.add(delta({ content: 'The ' }));
    built.add(delta({ content: 'answer.', images: [img(1)] }));
    built.add(delta({ images: [img(2)] }, 'stop'));
    const message = (built.completion().choices as { message: Json }[])[0]!.message;
    expect(message.content).toEqual([think('a'), think('b'), { type: 'text', text: 'The answer.' }]);
    expect(message.images).toEqual([img(1), img(2)]);
  });

  it('takes an upstream __proto__ key as data, never as a prototype', () => {
    const built = new CompletionBuilder();
    built.add(
      JSON.parse(
        '{"choices":[{"index":0,"delta":{"content":"x","__proto__":{"polluted":true}},"finish_reason":"stop"}]}',
      ) as Json,
    );
    const message = (built.completion().choices as { message: Json }[])[0]!.message;
    expect(Object.getPrototypeOf(message)).toBe(Object.prototype);
    expect((message as { polluted?: unknown }).polluted).toBeUndefined();
  });
});
