import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import type { ChatCompletionMessageParam, ChatCompletionTool } from 'openai/resources/chat/completions';
import { describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { THINKING } from '../../src/sim/anthropic.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { sendJson, startRecordingMock } from '../helpers/mock-upstream.js';
import { simProvider, startGateway } from '../helpers/gateway.js';

/**
 * Extended thinking through the gateway, against what Anthropic documents and what the openai SDK does with it:
 * a tool loop of several rounds (Claude thinks once per assistant turn, not after each tool result), assistant
 * messages the gateway merges, an answer cut after its thinking, several thinking blocks in one stream, and
 * models that take no thinking budget. Upstreams are a hand-written Messages API mock or the simulator, on
 * loopback.
 */

const track = closeAfterEach();

type Json = Record<string, unknown>;

/** A gateway whose route `r` is one Anthropic provider serving `model` at `url`. */
async function gatewayFor(url: string, model = 'claude-sonnet-4-5', apiKey = 'sk-ant-test'): Promise<OpenAI> {
  const gw = track(
    await startGateway({
      providers: [simProvider('anth', url, [model], { kind: 'anthropic', base_url: url, api_key: apiKey })],
      routes: { r: { strategy: 'priority', targets: [`anth/${model}`] } },
    }),
  );
  return new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
}

async function simulated(model = 'claude-sonnet-4-5'): Promise<{ sim: Simulator; client: OpenAI }> {
  const sim = track(await startSimulator({ name: 'claude', kind: 'anthropic', apiKey: 'sk-sim' }));
  return { sim, client: await gatewayFor(sim.url, model, 'sk-sim') };
}

const TOOL: ChatCompletionTool = {
  type: 'function',
  function: { name: 'lookup', parameters: { type: 'object', properties: { q: { type: 'string' } } } },
};

const message = (content: Json[], stopReason: string): Json => ({
  id: 'msg_01',
  type: 'message',
  role: 'assistant',
  model: 'claude-sonnet-4-5',
  content,
  stop_reason: stopReason,
  stop_sequence: null,
  usage: { input_tokens: 10, output_tokens: 5 },
});
const toolUse = (id: string): Json => ({ type: 'tool_use', id, name: 'lookup', input: { q: id } });
const SIGNED = { type: 'thinking', thinking: 'Plan: look up twice.', signature: 'sig-1' };

const typesOf = (m: unknown): unknown[] => ((m as Json).content as Json[]).map((b) => b.type);

describe('thinking through a tool loop of several rounds', () => {
  it('keeps thinking on after the second tool round: only the turn’s first message carries thinking, as Claude answers', async () => {
    // As Anthropic documents: with thinking, Claude thinks before its first tool call and not again after tool
    // results until the next user turn, so the second round's message has no thinking block.
    const mock = track(
      await startRecordingMock((_body, n, res) => {
        if (n === 0) sendJson(res, 200, message([SIGNED, toolUse('toolu_1')], 'tool_use'));
        else if (n === 1) sendJson(res, 200, message([toolUse('toolu_2')], 'tool_use'));
        else sendJson(res, 200, message([{ type: 'text', text: 'Done.' }], 'end_turn'));
      }),
    );
    const client = await gatewayFor(mock.url);
    const ask = { model: 'r', tools: [TOOL], reasoning_effort: 'low' as const };
    const history: ChatCompletionMessageParam[] = [{ role: 'user', content: 'Look it up.' }];
    for (let round = 0; round < 3; round++) {
      const answer = await client.chat.completions.create({ ...ask, messages: history });
      const reply = answer.choices[0]!.message;
      history.push(reply as ChatCompletionMessageParam);
      for (const call of reply.tool_calls ?? [])
        history.push({ role: 'tool', tool_call_id: call.id, content: 'found' });
    }
    expect(mock.bodies.map((b) => b.thinking)).toEqual(
      Array(3).fill({ type: 'enabled', budget_tokens: 1024 }),
    );
    const third = mock.bodies[2]!.messages as Json[];
    expect(third.map((m) => m.role)).toEqual(['user', 'assistant', 'user', 'assistant', 'user']);
    expect(typesOf(third[1])).toEqual(['thinking', 'tool_use']);
    expect((third[1]!.content as Json[])[0]).toEqual(SIGNED);
    expect(typesOf(third[3])).toEqual(['tool_use']);
  });

  it('a new user turn after a finished loop needs no thinking sent back; a loop that opened without it stays off', async () => {
    const mock = track(
      await startRecordingMock((_body, _n, res) =>
        sendJson(res, 200, message([{ type: 'text', text: 'ok' }], 'end_turn')),
      ),
    );
    const client = await gatewayFor(mock.url);
    const call = { id: 'toolu_1', type: 'function' as const, function: { name: 'lookup', arguments: '{}' } };
    const loop: ChatCompletionMessageParam[] = [
      { role: 'user', content: 'q' },
      { role: 'assistant', content: null, tool_calls: [call] },
      { role: 'tool', tool_call_id: 'toolu_1', content: 'r' },
    ];
    const ask = { model: 'r', tools: [TOOL], reasoning_effort: 'low' as const };
    await client.chat.completions.create({
      ...ask,
      messages: [...loop, { role: 'assistant', content: 'Answer.' }, { role: 'user', content: 'And?' }],
    });
    await client.chat.completions.create({ ...ask, messages: loop });
    // A user message beside tool results is still the tool loop (Anthropic merges them into one turn).
    await client.chat.completions.create({
      ...ask,
      messages: [...loop, { role: 'user', content: 'Hurry.' }],
    });
    expect(mock.bodies.map((b) => b.thinking)).toEqual([
      { type: 'enabled', budget_tokens: 1024 },
      undefined,
      undefined,
    ]);
  });
});

describe('assistant messages as Anthropic takes them', () => {
  it('an assistant message split in two (text, then tool calls with its thinking) is merged with the thinking first', async () => {
    const { sim, client } = await simulated();
    const call = { id: 'toolu_1', type: 'function' as const, function: { name: 'lookup', arguments: '{}' } };
    const answer = await client.chat.completions.create({
      model: 'r',
      tools: [TOOL],
      reasoning_effort: 'low',
      messages: [
        { role: 'user', content: 'q' },
        { role: 'assistant', content: 'Let me look.' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [call],
          thinking_blocks: [{ type: 'thinking', ...THINKING }],
        } as ChatCompletionMessageParam,
        { role: 'tool', tool_call_id: 'toolu_1', content: 'r' },
      ],
    });
    expect(answer.choices[0]!.finish_reason).toBe('stop');
    const sent = sim.requests[0]!.body as Json;
    expect(sent.thinking).toEqual({ type: 'enabled', budget_tokens: 1024 });
    expect(typesOf((sent.messages as Json[])[1])).toEqual(['thinking', 'text', 'tool_use']);
  });

  it('an answer cut right after its thinking, sent back, is not a thinking-only assistant message', async () => {
    const { sim, client } = await simulated();
    const answer = await client.chat.completions.create({
      model: 'r',
      reasoning_effort: 'low',
      messages: [
        { role: 'user', content: 'q' },
        { role: 'assistant', content: '', thinking_blocks: [{ type: 'thinking', ...THINKING }] } as Json &
          ChatCompletionMessageParam,
        { role: 'user', content: 'Go on.' },
      ],
    });
    expect(answer.choices[0]!.finish_reason).toBe('stop');
    const sent = (sim.requests[0]!.body as Json).messages as Json[];
    expect(sent.map((m) => m.role)).toEqual(['user']);
  });
});

describe('several thinking blocks in one streamed answer', () => {
  const sse = (res: ServerResponse, events: Json[]): void => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (const e of events) res.write(`event: ${String(e.type)}\ndata: ${JSON.stringify(e)}\n\n`);
    res.end();
  };
  const start = (index: number, block: Json): Json => ({
    type: 'content_block_start',
    index,
    content_block: block,
  });
  const delta = (index: number, d: Json): Json => ({ type: 'content_block_delta', index, delta: d });
  const stop = (index: number): Json => ({ type: 'content_block_stop', index });
  const REDACTED = { type: 'redacted_thinking', data: 'EmwKAhgBEgy3va3pzix' };

  it("the openai SDK's final message carries every block, and sent back, Claude gets them all first", async () => {
    const mock = track(
      await startRecordingMock((_body, n, res) => {
        if (n > 0) return sendJson(res, 200, message([{ type: 'text', text: 'Done.' }], 'end_turn'));
        sse(res, [
          { type: 'message_start', message: { ...message([], 'end_turn'), stop_reason: null } },
          start(0, { type: 'thinking', thinking: '', signature: '' }),
          delta(0, { type: 'thinking_delta', thinking: SIGNED.thinking }),
          delta(0, { type: 'signature_delta', signature: SIGNED.signature }),
          stop(0),
          start(1, REDACTED),
          stop(1),
          start(2, { type: 'tool_use', id: 'toolu_1', name: 'lookup', input: {} }),
          delta(2, { type: 'input_json_delta', partial_json: '{"q":"x"}' }),
          stop(2),
          { type: 'message_delta', delta: { stop_reason: 'tool_use' }, usage: { output_tokens: 30 } },
          { type: 'message_stop' },
        ]);
      }),
    );
    const client = await gatewayFor(mock.url);
    const ask = { model: 'r', tools: [TOOL], reasoning_effort: 'low' as const };
    const messages: ChatCompletionMessageParam[] = [{ role: 'user', content: 'q' }];
    const stream = client.chat.completions.stream({ ...ask, messages });
    const final = await stream.finalChatCompletion();
    const reply = final.choices[0]!.message;
    expect((reply as unknown as Json).thinking_blocks).toEqual([SIGNED, REDACTED]);

    await client.chat.completions.create({
      ...ask,
      messages: [
        ...messages,
        reply as ChatCompletionMessageParam,
        { role: 'tool', tool_call_id: reply.tool_calls![0]!.id, content: 'r' },
      ],
    });
    const sent = mock.bodies[1]!;
    expect(sent.thinking).toEqual({ type: 'enabled', budget_tokens: 1024 });
    expect(((sent.messages as Json[])[1]!.content as Json[]).slice(0, 2)).toEqual([SIGNED, REDACTED]);
  });
});

describe('models that take a thinking budget', () => {
  it('reasoning_effort is adaptive thinking for Claude 4.6 and later (4.7 on answer a budget with a 400)', async () => {
    const mock = track(
      await startRecordingMock((_body, _n, res) =>
        sendJson(res, 200, message([{ type: 'text', text: 'ok' }], 'end_turn')),
      ),
    );
    for (const model of ['claude-opus-4-7', 'claude-sonnet-5', 'claude-opus-4-6']) {
      const client = await gatewayFor(mock.url, model);
      await client.chat.completions.create({
        model: 'r',
        reasoning_effort: 'low',
        messages: [{ role: 'user', content: 'q' }],
      });
    }
    const low = { effort: 'low' };
    const summarized = { type: 'adaptive', display: 'summarized' }; // 4.7 on omit the text unless asked
    expect(mock.bodies.map((b) => [b.model, b.thinking, b.output_config])).toEqual([
      ['claude-opus-4-7', summarized, low],
      ['claude-sonnet-5', summarized, low],
      ['claude-opus-4-6', { type: 'adaptive' }, low],
    ]);
  });
  it('adaptive thinking through the simulator, which enforces its rules: reasoning and the signed block come back', async () => {
    const { sim, client } = await simulated('claude-opus-4-7');
    const ask = {
      model: 'r',
      messages: [{ role: 'user' as const, content: 'q' }],
      reasoning_effort: 'medium' as const,
    };
    const answer = await client.chat.completions.create({ ...ask, temperature: 0.2 });
    const m = answer.choices[0]!.message as unknown as Json;
    expect([m.reasoning_content, m.thinking_blocks]).toEqual([
      THINKING.thinking,
      [{ type: 'thinking', ...THINKING }],
    ]);
    const sent = sim.requests[0]!.body as Json;
    expect([sent.thinking, sent.output_config, sent.temperature]).toEqual([
      { type: 'adaptive', display: 'summarized' },
      { effort: 'medium' },
      undefined,
    ]);
  });
});
