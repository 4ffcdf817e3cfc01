/**
 * LangChain's ChatOpenAI through the gateway to a Claude (`anthropic`-kind) upstream, read the way LangChain
 * apps read an answer: usage_metadata (cache reads and writes inside input_tokens), response_metadata
 * (finish_reason, model_name), additional_kwargs.reasoning_content, withStructuredOutput jsonMode, stop
 * sequences and cache_control content blocks. Rules held here:
 * - invoke() and a concatenated stream() give one message: same content, usage_metadata, finish_reason,
 *   model_name and reasoning_content.
 * - input_tokens counts every input token (uncached, cache reads, cache writes); cache_read is the reads.
 * - a cache breakpoint a LangChain content block carries (`cache_control`) reaches Claude on that block.
 * - a JSON-mode answer is the object whatever Claude writes around it (jsonMode parses, invoke and stream).
 */
import type { ServerResponse } from 'node:http';
import type { AIMessageChunk } from '@langchain/core/messages';
import { HumanMessage, SystemMessage } from '@langchain/core/messages';
import { ChatOpenAI } from '@langchain/openai';
import { describe, expect, it } from 'vitest';
import { anthropicMessage, claudeSse } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { sendJson, startMock, type Received } from '../helpers/mock-upstream.js';

onlyLoopbackFetch();
const track = closeAfterEach();

type Json = Record<string, unknown>;

function answerClaude(
  q: Received,
  res: ServerResponse,
  blocks: Json[],
  stopReason: string,
  usage: Json,
  stopSequence: string | null = null,
): void {
  if (q.body.stream === true) {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end(claudeSse(blocks, stopReason, usage, stopSequence));
    return;
  }
  sendJson(res, 200, { ...anthropicMessage(blocks, stopReason, usage), stop_sequence: stopSequence });
}

async function claudeRoute(handler: (q: Received, res: ServerResponse) => void) {
  const mock = track(await startMock(handler));
  const gw = track(
    await startGateway({
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: mock.url,
          api_key: 'sk-ant-test-0001',
          models: [{ name: 'claude-sonnet-4-5' }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['anth/claude-sonnet-4-5'] } },
    }),
  );
  const chat = (fields: Record<string, unknown> = {}) =>
    new ChatOpenAI({
      model: 'r',
      apiKey: 'k',
      maxRetries: 0,
      configuration: { baseURL: `${gw.url}/v1` },
      ...fields,
    });
  return { mock, chat };
}

async function streamed(it: AsyncIterable<AIMessageChunk>): Promise<AIMessageChunk> {
  let agg: AIMessageChunk | undefined;
  for await (const c of it) agg = agg ? agg.concat(c) : c;
  if (agg === undefined) throw new Error('empty stream');
  return agg;
}

describe('LangChain ChatOpenAI on Claude: one message from invoke and from stream', () => {
  it('cache reads and writes: input_tokens counts both, cache_read the reads; same usage, finish and model both ways', async () => {
    const usage = {
      input_tokens: 12,
      cache_creation_input_tokens: 300,
      cache_read_input_tokens: 2000,
      output_tokens: 25,
    };
    const { chat } = await claudeRoute((q, res) =>
      answerClaude(q, res, [{ type: 'text', text: 'Bern is at 12 degrees today.' }], 'end_turn', usage),
    );
    const model = chat();
    const msg = await model.invoke('Weather in Bern?');
    const agg = await streamed(await model.stream('Weather in Bern?'));
    for (const m of [msg, agg]) {
      expect(m.content).toBe('Bern is at 12 degrees today.');
      expect(m.usage_metadata).toMatchObject({
        input_tokens: 2312,
        output_tokens: 25,
        total_tokens: 2337,
        input_token_details: { cache_read: 2000 },
      });
      expect(m.response_metadata.finish_reason).toBe('stop');
    }
    expect(agg.response_metadata.model_name).toBe(msg.response_metadata.model_name);
    expect(agg.id).toBe(msg.id);
  });

  it('thinking: additional_kwargs.reasoning_content is the thinking, content only the answer, both ways', async () => {
    const thinking = 'The user wants Bern. Twelve degrees, mild; say so briefly.';
    const { chat, mock } = await claudeRoute((q, res) =>
      answerClaude(
        q,
        res,
        [
          { type: 'thinking', thinking, signature: 'sig-EqQBCkYIBRgCIkB' },
          { type: 'text', text: 'Mild: 12 °C in Bern.' },
        ],
        'end_turn',
        { input_tokens: 40, output_tokens: 90 },
      ),
    );
    // A route name is no OpenAI reasoning model to LangChain: the effort goes as a model kwarg.
    const model = chat({ modelKwargs: { reasoning_effort: 'low' } });
    const msg = await model.invoke('Weather in Bern?');
    const agg = await streamed(await model.stream('Weather in Bern?'));
    for (const m of [msg, agg]) {
      expect(m.content).toBe('Mild: 12 °C in Bern.');
      expect(m.additional_kwargs.reasoning_content).toBe(thinking);
      expect(m.usage_metadata).toMatchObject({ input_tokens: 40, output_tokens: 90, total_tokens: 130 });
    }
    expect(mock.received[0]?.body.thinking).toMatchObject({ type: 'enabled' });
  });

  it('max_tokens reached: finish_reason "length" and the partial text, both ways', async () => {
    const { chat, mock } = await claudeRoute((q, res) =>
      answerClaude(q, res, [{ type: 'text', text: 'Bern lies on the Aar and' }], 'max_tokens', {
        input_tokens: 9,
        output_tokens: 8,
      }),
    );
    const model = chat({ maxTokens: 8 });
    const msg = await model.invoke('Tell me about Bern.');
    const agg = await streamed(await model.stream('Tell me about Bern.'));
    for (const m of [msg, agg]) {
      expect(m.content).toBe('Bern lies on the Aar and');
      expect(m.response_metadata.finish_reason).toBe('length');
      expect(m.usage_metadata).toMatchObject({ output_tokens: 8 });
    }
    expect(mock.received[0]?.body.max_tokens).toBe(8);
  });

  it('stop sequences from call options reach Claude; stopping on one is finish_reason "stop"', async () => {
    const { chat, mock } = await claudeRoute((q, res) =>
      answerClaude(
        q,
        res,
        [{ type: 'text', text: 'Thought: check the weather' }],
        'stop_sequence',
        { input_tokens: 9, output_tokens: 6 },
        '\nObservation:',
      ),
    );
    const model = chat();
    const msg = await model.invoke('Go.', { stop: ['\nObservation:', 'Final Answer'] });
    const agg = await streamed(await model.stream('Go.', { stop: ['\nObservation:'] }));
    for (const m of [msg, agg]) {
      expect(m.content).toBe('Thought: check the weather');
      expect(m.response_metadata.finish_reason).toBe('stop');
    }
    expect(mock.received[0]?.body.stop_sequences).toEqual(['\nObservation:', 'Final Answer']);
    expect(mock.received[1]?.body.stop_sequences).toEqual(['\nObservation:']);
  });
});

describe('LangChain content blocks on Claude', () => {
  it('cache_control on system and human text blocks reaches Claude on those blocks, the rest uncached', async () => {
    const { chat, mock } = await claudeRoute((q, res) =>
      answerClaude(q, res, [{ type: 'text', text: 'ok' }], 'end_turn', {
        input_tokens: 3,
        cache_read_input_tokens: 4000,
        output_tokens: 1,
      }),
    );
    const longDoc = 'Policy. '.repeat(600);
    const msg = await chat().invoke([
      new SystemMessage({
        content: [
          { type: 'text', text: 'You answer from the policy.' },
          { type: 'text', text: longDoc, cache_control: { type: 'ephemeral' } },
        ],
      }),
      new HumanMessage({
        content: [
          { type: 'text', text: 'Context block.', cache_control: { type: 'ephemeral', ttl: '1h' } },
          { type: 'text', text: 'Can I expense a taxi?' },
        ],
      }),
    ]);
    expect(msg.usage_metadata).toMatchObject({
      input_tokens: 4003,
      input_token_details: { cache_read: 4000 },
    });
    const body = mock.received[0]!.body;
    expect(body.system).toEqual([
      { type: 'text', text: 'You answer from the policy.' },
      { type: 'text', text: longDoc, cache_control: { type: 'ephemeral' } },
    ]);
    expect(body.messages).toEqual([
      {
        role: 'user',
        content: [
          { type: 'text', text: 'Context block.', cache_control: { type: 'ephemeral', ttl: '1h' } },
          { type: 'text', text: 'Can I expense a taxi?' },
        ],
      },
    ]);
  });
});

describe('withStructuredOutput jsonMode on Claude', () => {
  const schema = {
    type: 'object',
    properties: { city: { type: 'string' }, celsius: { type: 'number' } },
    required: ['city', 'celsius'],
  };
  const WEATHER = { city: 'Bern', celsius: 12 };

  const answers: Array<[string, string]> = [
    ['a fenced object', '```json\n' + JSON.stringify(WEATHER, null, 2) + '\n```'],
    ['a sentence then the object', 'Here is the result:\n' + JSON.stringify(WEATHER)],
    [
      'an object whose string holds braces, brackets and quotes, then words after it',
      JSON.stringify({ city: 'Bern {x} [1] "a}"', celsius: 12 }) + '\nDone.',
    ],
    [
      'a preface naming the fields in braces, then the fenced object',
      'Filling in {city, celsius}:\n```json\n' + JSON.stringify(WEATHER) + '\n```',
    ],
  ];
  for (const [label, text] of answers) {
    it(`${label}: invoke and stream parse the object`, async () => {
      const { chat, mock } = await claudeRoute((q, res) =>
        answerClaude(q, res, [{ type: 'text', text }], 'end_turn', { input_tokens: 20, output_tokens: 20 }),
      );
      const expected = label.startsWith('an object whose')
        ? { city: 'Bern {x} [1] "a}"', celsius: 12 }
        : WEATHER;
      const structured = chat().withStructuredOutput(schema, { method: 'jsonMode' });
      const got = await structured.invoke('Weather in Bern, as JSON.').catch((e: unknown) => String(e));
      expect(got).toEqual(expected);
      let last: unknown;
      try {
        for await (const partial of await structured.stream('Weather in Bern, as JSON.')) last = partial;
      } catch (e) {
        last = String(e);
      }
      expect(last).toEqual(expected);
      expect(mock.received[0]?.body.system).toEqual(expect.stringMatching(/JSON/));
    });
  }
});
