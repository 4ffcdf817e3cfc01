import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import type { ChatCompletionMessageParam, ChatCompletionTool } from 'openai/resources/chat/completions';
import { describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { sendJson, startRecordingMock, type RecordingMock } from '../helpers/mock-upstream.js';
import { simProvider, startGateway } from '../helpers/gateway.js';

/**
 * Current Claude models behind a route alias, against a hand-written Messages API mock that answers as Anthropic
 * documents each model (what's new in Claude Opus 5, Sonnet 5 and Opus 5.5; the Fable 5.1 migration guide):
 * - Opus 5 and Sonnet 5 think when `thinking` is left out; `{type: "disabled"}` turns it off.
 * - Opus 5.5 and Fable 5.1 always think (`disabled` is a 400) and refuse a forced tool (`tool_choice` any or tool).
 * - With thinking on, a tool loop's first assistant message must open with the thinking Claude gave.
 * The client only names the route, so the gateway must send each model a request it takes.
 */

const track = closeAfterEach();

type Json = Record<string, unknown>;

const invalid = (res: ServerResponse, message: string): void =>
  sendJson(res, 400, { type: 'error', error: { type: 'invalid_request_error', message } });

const ALWAYS_THINKS = /claude-(?:opus-5-5|fable-5-1)/;

/** What the API refuses of `body`, as it documents it for the model named in it, or undefined. */
function refusal(body: Json): string | undefined {
  const model = String(body.model);
  const thinking = body.thinking as Json | undefined;
  const choice = body.tool_choice as Json | undefined;
  if (ALWAYS_THINKS.test(model)) {
    if (thinking?.type === 'disabled')
      return '"thinking.type.disabled" is not supported for this model. Use "thinking.type.adaptive" and "output_config.effort" to control thinking behavior.';
    if (choice?.type === 'any' || choice?.type === 'tool')
      return 'Forced tool use is not supported for this model: use tool_choice auto or none.';
  }
  if (thinking?.type === 'disabled') return undefined;
  // Thinking is on (by default on Claude 5): a tool loop's first assistant message must open with its thinking.
  const messages = body.messages as Json[];
  let opening: Json | undefined;
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i]!;
    if (m.role === 'assistant') opening = m;
    else if (!(m.content as Json[]).some((b) => b.type === 'tool_result')) break;
  }
  const first = opening === undefined ? undefined : (opening.content as Json[])[0];
  if (opening !== undefined && first?.type !== 'thinking')
    return 'messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` is enabled, a final `assistant` message must start with a thinking block.';
  return undefined;
}

/** A Messages API mock: `answer(body, n)` gives the n-th answer's content (0-based) once the request is valid. */
async function startMock(answer: (body: Json, n: number) => Json[]): Promise<RecordingMock> {
  return startRecordingMock((body, n, res) => {
    const refused = refusal(body);
    if (refused !== undefined) return invalid(res, refused);
    const content = answer(body, n);
    sendJson(res, 200, {
      id: `msg_${n + 1}`,
      type: 'message',
      role: 'assistant',
      model: body.model,
      content,
      stop_reason: content.some((b) => b.type === 'tool_use') ? 'tool_use' : 'end_turn',
      stop_sequence: null,
      usage: { input_tokens: 10, output_tokens: 5 },
    });
  });
}

/** A gateway whose route `r` is one Anthropic provider serving `model` at `url`. */
async function gatewayFor(url: string, model: string, apiKey = 'sk-ant'): Promise<OpenAI> {
  const gw = track(
    await startGateway({
      providers: [simProvider('anth', url, [model], { kind: 'anthropic', base_url: url, api_key: apiKey })],
      routes: { r: { strategy: 'priority', targets: [`anth/${model}`] } },
    }),
  );
  return new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
}

const TOOL: ChatCompletionTool = {
  type: 'function',
  function: { name: 'lookup', parameters: { type: 'object', properties: { q: { type: 'string' } } } },
};
// With display omitted (the default from Opus 4.7 on), a thinking block comes back with empty text.
const THINKING = { type: 'thinking', thinking: '', signature: 'sig-opus5' };
const toolUse = { type: 'tool_use', id: 'toolu_1', name: 'lookup', input: { q: 'x' } };
const text = (t: string): Json => ({ type: 'text', text: t });
const thinkingOn = (body: Json): boolean => (body.thinking as Json | undefined)?.type !== 'disabled';

/** A tool loop sent back as a client that keeps only the standard fields does: no thinking_blocks. */
const BARE_LOOP: ChatCompletionMessageParam[] = [
  { role: 'user', content: 'Look it up.' },
  {
    role: 'assistant',
    content: null,
    tool_calls: [{ id: 'toolu_1', type: 'function', function: { name: 'lookup', arguments: '{}' } }],
  },
  { role: 'tool', tool_call_id: 'toolu_1', content: 'found' },
];

describe('forced tools on Claude 5.1 and later', () => {
  it.each(['claude-opus-5-5', 'claude-fable-5-1'])(
    'tool_choice required to %s gets the tool call, not a 400 (it refuses forced tool use)',
    async (model) => {
      const mock = track(await startMock(() => [THINKING, toolUse]));
      const client = await gatewayFor(mock.url, model);
      const answer = await client.chat.completions.create({
        model: 'r',
        tools: [TOOL],
        tool_choice: 'required',
        messages: [{ role: 'user', content: 'Look it up.' }],
      });
      expect(answer.choices[0]!.message.tool_calls?.[0]?.id).toBe('toolu_1');
      expect(mock.bodies[0]!.tool_choice).toEqual({ type: 'auto' });
    },
  );

  it('reasoning_effort none to Opus 5.5 is answered at the least effort (its thinking cannot be turned off)', async () => {
    const mock = track(await startMock(() => [THINKING, text('ok')]));
    const client = await gatewayFor(mock.url, 'claude-opus-5-5');
    const answer = await client.chat.completions.create({
      model: 'r',
      reasoning_effort: 'none',
      messages: [{ role: 'user', content: 'q' }],
    });
    expect(answer.choices[0]!.message.content).toBe('ok');
    // As Anthropic's refusal of `disabled` says: adaptive thinking, controlled by output_config.effort.
    expect(mock.bodies[0]).toMatchObject({
      thinking: { type: 'adaptive' },
      output_config: { effort: 'low' },
    });
  });
});

describe('Opus 5 and Sonnet 5 think by default', () => {
  it('reasoning_effort none turns their thinking off (left out, it would be on)', async () => {
    const mock = track(await startMock((body) => (thinkingOn(body) ? [THINKING, text('ok')] : [text('ok')])));
    const client = await gatewayFor(mock.url, 'claude-sonnet-5');
    const answer = await client.chat.completions.create({
      model: 'r',
      reasoning_effort: 'none',
      messages: [{ role: 'user', content: 'q' }],
    });
    expect(answer.choices[0]!.message).not.toHaveProperty('thinking_blocks');
    expect(mock.bodies[0]!.thinking).toEqual({ type: 'disabled' });
  });

  it('a tool loop without reasoning_effort sends back the thinking Claude opened it with', async () => {
    const mock = track(await startMock((_body, n) => (n === 0 ? [THINKING, toolUse] : [text('Done.')])));
    const client = await gatewayFor(mock.url, 'claude-opus-5');
    const history: ChatCompletionMessageParam[] = [{ role: 'user', content: 'Look it up.' }];
    const first = await client.chat.completions.create({ model: 'r', tools: [TOOL], messages: history });
    const reply = first.choices[0]!.message;
    history.push(reply as ChatCompletionMessageParam, {
      role: 'tool',
      tool_call_id: reply.tool_calls![0]!.id,
      content: 'found',
    });
    const second = await client.chat.completions.create({ model: 'r', tools: [TOOL], messages: history });
    expect(second.choices[0]!.message.content).toBe('Done.');
    const sent = mock.bodies[1]!.messages as Json[];
    expect((sent[1]!.content as Json[])[0]).toEqual(THINKING);
    expect(mock.bodies.map((b) => [b.thinking, b.max_tokens])).toEqual([
      [undefined, 4096 + 4096],
      [undefined, 4096 + 4096],
    ]);
  });

  it('a tool loop sent back without its thinking runs with thinking off instead of failing', async () => {
    const mock = track(await startMock(() => [text('Done.')]));
    const client = await gatewayFor(mock.url, 'claude-opus-5');
    const answer = await client.chat.completions.create({
      model: 'r',
      tools: [TOOL],
      messages: BARE_LOOP,
    });
    expect(answer.choices[0]!.message.content).toBe('Done.');
    expect(mock.bodies[0]!.thinking).toEqual({ type: 'disabled' });
  });
});

describe('the simulator, which checks the same rules', () => {
  it('takes what the gateway sends Opus 5.5 for a forced tool, and Opus 5 for a tool loop without its thinking', async () => {
    const sim = track(await startSimulator({ name: 'claude', kind: 'anthropic', apiKey: 'sk-sim' }));
    const forced = await (
      await gatewayFor(sim.url, 'claude-opus-5-5', 'sk-sim')
    ).chat.completions.create({
      model: 'r',
      tools: [TOOL],
      tool_choice: { type: 'function', function: { name: 'lookup' } },
      messages: [{ role: 'user', content: 'Look it up.' }],
    });
    expect(forced.choices[0]!.finish_reason).toBe('stop');
    expect((sim.requests[0]!.body as Json).tool_choice).toEqual({ type: 'auto' });
    const loop = await (
      await gatewayFor(sim.url, 'claude-opus-5', 'sk-sim')
    ).chat.completions.create({
      model: 'r',
      tools: [TOOL],
      messages: BARE_LOOP,
    });
    expect(loop.choices[0]!.finish_reason).toBe('stop');
    expect((sim.requests[1]!.body as Json).thinking).toEqual({ type: 'disabled' });
  });
});
