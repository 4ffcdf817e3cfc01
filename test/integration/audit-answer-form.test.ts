/**
 * Audit: upstreams that answer in the other form than they were asked (README "Failover and streams": a JSON
 * answer to `stream: true` is streamed to the client, an event stream answering a non-streaming request is
 * merged into one `chat.completion`; what is no answer in either form fails over as `invalid_upstream_json`).
 *
 * The method: the same mock answer, once in the form asked for ("right") and once in the other ("wrong"),
 * through real clients (the openai SDK, the Vercel AI SDK, LangChain) and raw undici: what the client ends up
 * with must be the same either way. Then broken wrong-form answers (they must fail over), odd wire shapes of
 * valid ones (they must be delivered), and the bookkeeping (headers, metrics, the request log line, the LLM
 * router's own call). Judgement calls are marked "JUDGEMENT".
 */
import type { ServerResponse } from 'node:http';
import { gzipSync } from 'node:zlib';
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';
import { generateText, jsonSchema, streamText, tool } from 'ai';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway, type TestGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { sendJson, startMock, type Received } from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';

const track = closeAfterEach();
onlyLoopbackFetch();

type Json = Record<string, unknown>;
type Kind = 'openai' | 'anthropic';
/** right: the form asked for; wrong: the other one. */
type Form = 'right' | 'wrong';

const hi = [{ role: 'user' as const, content: 'hi' }];
const weatherTools = [
  {
    type: 'function' as const,
    function: {
      name: 'weather',
      parameters: { type: 'object', properties: { city: { type: 'string' } } },
    },
  },
  {
    type: 'function' as const,
    function: { name: 'time', parameters: { type: 'object', properties: { tz: { type: 'string' } } } },
  },
];

// ---------------------------------------------------------------------------------------------
// OpenAI answers, and their event-stream form as OpenAI streams them.

const oaUsage = { prompt_tokens: 21, completion_tokens: 13, total_tokens: 34 };

function oaAnswer(choices: Json[], usage: Json = oaUsage): Json {
  return {
    id: 'chatcmpl-audit',
    object: 'chat.completion',
    created: 1700000000,
    model: 'up-model',
    choices: choices.map((c, index) => ({ index, logprobs: null, ...c })),
    usage,
  };
}

function split2(s: string): string[] {
  if (s.length < 2) return [s];
  const mid = Math.ceil(s.length / 2);
  return [s.slice(0, mid), s.slice(mid)];
}

function frame(data: unknown): string {
  return `data: ${JSON.stringify(data)}\n\n`;
}

/** The chunks OpenAI would have streamed for `answer` (its usage chunk last, when `usage`), and `[DONE]`. */
function oaFrames(answer: Json, usage: boolean): string {
  const base = {
    id: answer.id,
    object: 'chat.completion.chunk',
    created: answer.created,
    model: answer.model,
  };
  const chunk = (index: number, delta: Json, extra: Json = {}) =>
    frame({ ...base, choices: [{ index, delta, logprobs: null, finish_reason: null, ...extra }] });
  let out = '';
  for (const c of answer.choices as Json[]) {
    const i = c.index as number;
    const m = c.message as Json;
    out += chunk(
      i,
      typeof m.content === 'string' ? { role: 'assistant', content: '' } : { role: 'assistant' },
    );
    if (typeof m.reasoning_content === 'string')
      for (const p of split2(m.reasoning_content)) out += chunk(i, { reasoning_content: p });
    const lp = (c.logprobs as { content?: Json[] } | null)?.content;
    if (lp && typeof m.content === 'string') {
      for (const t of lp)
        out += chunk(i, { content: t.token }, { logprobs: { content: [t], refusal: null } });
    } else if (typeof m.content === 'string' && m.content !== '') {
      for (const p of split2(m.content)) out += chunk(i, { content: p });
    }
    if (typeof m.refusal === 'string') for (const p of split2(m.refusal)) out += chunk(i, { refusal: p });
    const calls = (m.tool_calls as Json[] | undefined) ?? [];
    calls.forEach((tc, j) => {
      const fn = tc.function as { name: string; arguments: string };
      out += chunk(i, {
        tool_calls: [{ index: j, id: tc.id, type: 'function', function: { name: fn.name, arguments: '' } }],
      });
      for (const p of split2(fn.arguments))
        out += chunk(i, { tool_calls: [{ index: j, function: { arguments: p } }] });
    });
    out += chunk(i, {}, { finish_reason: c.finish_reason });
  }
  if (usage) out += frame({ ...base, choices: [], usage: answer.usage });
  return `${out}data: [DONE]\n\n`;
}

const OA: Record<string, { answer: Json; body?: Json }> = {
  text: {
    answer: oaAnswer([
      { message: { role: 'assistant', content: 'Hello from the audit' }, finish_reason: 'stop' },
    ]),
  },
  empty: { answer: oaAnswer([{ message: { role: 'assistant', content: '' }, finish_reason: 'stop' }]) },
  length: {
    answer: oaAnswer([
      { message: { role: 'assistant', content: 'It was the best of' }, finish_reason: 'length' },
    ]),
    body: { max_tokens: 5 },
  },
  refusal: {
    answer: oaAnswer([
      {
        message: { role: 'assistant', content: null, refusal: "I'm sorry, I can't help with that." },
        finish_reason: 'stop',
      },
    ]),
  },
  parallelTools: {
    answer: oaAnswer([
      {
        message: {
          role: 'assistant',
          content: null,
          tool_calls: [
            { id: 'call_a', type: 'function', function: { name: 'weather', arguments: '{"city":"Oslo"}' } },
            { id: 'call_b', type: 'function', function: { name: 'time', arguments: '{"tz":"Europe/Oslo"}' } },
          ],
        },
        finish_reason: 'tool_calls',
      },
    ]),
    body: { tools: weatherTools },
  },
  toolsAndText: {
    answer: oaAnswer([
      {
        message: {
          role: 'assistant',
          content: 'Let me look that up.',
          tool_calls: [
            { id: 'call_c', type: 'function', function: { name: 'weather', arguments: '{"city":"Bergen"}' } },
          ],
        },
        finish_reason: 'tool_calls',
      },
    ]),
    body: { tools: weatherTools },
  },
  n2: {
    answer: oaAnswer([
      { message: { role: 'assistant', content: 'First choice' }, finish_reason: 'stop' },
      { message: { role: 'assistant', content: 'Second one' }, finish_reason: 'length' },
    ]),
    body: { n: 2 },
  },
  // JUDGEMENT (stream side): the gateway streams a JSON answer as one chunk carrying role, the whole content and
  // the whole logprobs; the openai SDK (v6 ChatCompletionStream) keeps a first chunk's logprobs object by
  // reference and then appends its content again, so the client gets every logprob twice. OpenAI's own streams
  // open with a role chunk whose logprobs are empty, which is what would avoid it.
  logprobs: {
    answer: oaAnswer([
      {
        message: { role: 'assistant', content: 'Hi there' },
        logprobs: {
          content: [
            { token: 'Hi', logprob: -0.1, bytes: [72, 105], top_logprobs: [] },
            { token: ' there', logprob: -0.4, bytes: [32, 116, 104, 101, 114, 101], top_logprobs: [] },
          ],
          refusal: null,
        },
        finish_reason: 'stop',
      },
    ]),
    body: { logprobs: true },
  },
  reasoning: {
    answer: oaAnswer([
      {
        message: {
          role: 'assistant',
          content: 'The answer is 4.',
          reasoning_content: 'Two plus two is four.',
        },
        finish_reason: 'stop',
      },
    ]),
  },
};

// ---------------------------------------------------------------------------------------------
// Anthropic Messages answers, and their event-stream form.

function anMessage(
  content: Json[],
  stopReason: string,
  usage: Json = { input_tokens: 17, output_tokens: 11 },
): Json {
  return {
    id: 'msg_audit',
    type: 'message',
    role: 'assistant',
    model: 'claude-audit',
    content,
    stop_reason: stopReason,
    stop_sequence: null,
    usage,
  };
}

function anFrames(msg: Json): string {
  const ev = (type: string, data: Json) => `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
  const usage = msg.usage as { input_tokens: number; output_tokens: number };
  let out = ev('message_start', {
    message: { ...msg, content: [], stop_reason: null, usage: { ...usage, output_tokens: 1 } },
  });
  out += ev('ping', {});
  (msg.content as Json[]).forEach((b, index) => {
    if (b.type === 'text') {
      out += ev('content_block_start', { index, content_block: { type: 'text', text: '' } });
      for (const p of split2(b.text as string))
        if (p !== '') out += ev('content_block_delta', { index, delta: { type: 'text_delta', text: p } });
    } else if (b.type === 'thinking') {
      out += ev('content_block_start', {
        index,
        content_block: { type: 'thinking', thinking: '', signature: '' },
      });
      for (const p of split2(b.thinking as string))
        out += ev('content_block_delta', { index, delta: { type: 'thinking_delta', thinking: p } });
      out += ev('content_block_delta', { index, delta: { type: 'signature_delta', signature: b.signature } });
    } else if (b.type === 'redacted_thinking') {
      out += ev('content_block_start', { index, content_block: b });
    } else if (b.type === 'tool_use') {
      out += ev('content_block_start', { index, content_block: { ...b, input: {} } });
      for (const p of split2(JSON.stringify(b.input)))
        out += ev('content_block_delta', { index, delta: { type: 'input_json_delta', partial_json: p } });
    }
    out += ev('content_block_stop', { index });
  });
  out += ev('message_delta', {
    delta: { stop_reason: msg.stop_reason, stop_sequence: null },
    usage: { output_tokens: usage.output_tokens },
  });
  return out + ev('message_stop', {});
}

const AN: Record<string, { answer: Json; body?: Json }> = {
  text: { answer: anMessage([{ type: 'text', text: 'Hello from Claude' }], 'end_turn') },
  empty: { answer: anMessage([{ type: 'text', text: '' }], 'end_turn') },
  noBlocks: { answer: anMessage([], 'end_turn') },
  length: {
    answer: anMessage([{ type: 'text', text: 'It was the best of' }], 'max_tokens'),
    body: { max_tokens: 5 },
  },
  refusal: { answer: anMessage([{ type: 'text', text: 'I cannot' }], 'refusal') },
  // A tool-only answer: the JSON translation gives `content: null` (as OpenAI does); compare the merged one.
  parallelTools: {
    answer: anMessage(
      [
        { type: 'tool_use', id: 'toolu_a', name: 'weather', input: { city: 'Oslo' } },
        { type: 'tool_use', id: 'toolu_b', name: 'time', input: { tz: 'Europe/Oslo' } },
      ],
      'tool_use',
    ),
    body: { tools: weatherTools },
  },
  toolsAndText: {
    answer: anMessage(
      [
        { type: 'text', text: 'Let me look that up.' },
        { type: 'tool_use', id: 'toolu_c', name: 'weather', input: { city: 'Bergen' } },
      ],
      'tool_use',
    ),
    body: { tools: weatherTools },
  },
  thinking: {
    answer: anMessage(
      [
        {
          type: 'thinking',
          thinking: 'Let me think about this carefully.',
          signature: 'sig-EqQBCgIYAhIM1gbcDa9GJwZA',
        },
        { type: 'text', text: 'The answer is 4.' },
      ],
      'end_turn',
    ),
    body: { reasoning_effort: 'low' },
  },
  redacted: {
    answer: anMessage(
      [
        { type: 'redacted_thinking', data: 'EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIw' },
        { type: 'thinking', thinking: 'Some visible thought.', signature: 'sig-visible' },
        { type: 'text', text: 'Done.' },
      ],
      'end_turn',
    ),
    body: { reasoning_effort: 'low' },
  },
};

// ---------------------------------------------------------------------------------------------
// The mock and the gateway.

function sse(res: ServerResponse, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(200, { 'content-type': 'text/event-stream', ...headers });
  res.end(body);
}

/** Answers `answer` (OpenAI chat.completion or Anthropic message) in the right or the wrong form. */
function answerIn(kind: Kind, answer: Json, form: () => Form) {
  return (req: Received, res: ServerResponse): void => {
    const asked = req.body.stream === true;
    const streamIt = form() === 'right' ? asked : !asked;
    if (!streamIt) return sendJson(res, 200, answer);
    if (kind === 'anthropic') return sse(res, anFrames(answer));
    // An upstream that always streams sends its usage chunk whether asked or not (vLLM, OpenRouter).
    sse(res, oaFrames(answer, true));
  };
}

interface Setup {
  gw: TestGateway;
  url: string;
  openai: OpenAI;
  mocks: { url: string; received: Received[] }[];
}

const PRICE = { input_per_mtok: 1, output_per_mtok: 2 };

/** A gateway over mocks p0, p1, ... (priority), model `up-model`, route `r`. */
async function gatewayOver(
  handlers: ((req: Received, res: ServerResponse, n: number) => void | Promise<void>)[],
  kinds: Kind[] = handlers.map(() => 'openai'),
  extra: Json = {},
): Promise<Setup> {
  const mocks = await Promise.all(handlers.map(async (h) => track(await startMock(h))));
  const providers = mocks.map((m, i) => ({
    name: `p${i}`,
    kind: kinds[i],
    base_url: kinds[i] === 'anthropic' ? m.url : `${m.url}/v1`,
    api_key: 'sk-up',
    models: [{ name: 'up-model', price: PRICE }],
    timeouts: { first_byte_ms: 5000, idle_ms: 5000, total_ms: 15000 },
  }));
  const gw = track(
    await startGateway({
      providers,
      routes: { r: { strategy: 'priority', targets: providers.map((p) => `${p.name}/up-model`) } },
      ...extra,
    }),
  );
  return {
    gw,
    url: gw.url,
    mocks,
    openai: new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0, timeout: 15000 }),
  };
}

/** One gateway over one mock answering `answer`; `set(form)` switches its form between requests. */
async function switchable(kind: Kind, answer: Json): Promise<Setup & { set(f: Form): void }> {
  let form: Form = 'right';
  const s = await gatewayOver([answerIn(kind, answer, () => form)], [kind]);
  return { ...s, set: (f) => void (form = f) };
}

/** The SSE `data:` payloads of a raw stream body, in order. */
function dataOf(text: string): string[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith('data:'))
    .map((l) => l.slice(5).trim());
}

/** What the OpenAI SDK accumulates from a stream, with `reasoning_content` concatenated (the SDK overwrites it). */
async function sdkStream(openai: OpenAI, body: Json): Promise<{ final: Json; chunks: Json[] }> {
  const stream = openai.chat.completions.stream({ model: 'r', messages: hi, ...body } as never);
  const chunks: Json[] = [];
  const reasoning = new Map<number, string>();
  for await (const c of stream) {
    chunks.push(c as unknown as Json);
    for (const ch of c.choices) {
      const r = (ch.delta as Json).reasoning_content;
      if (typeof r === 'string') reasoning.set(ch.index, (reasoning.get(ch.index) ?? '') + r);
    }
  }
  const final = (await stream.finalChatCompletion()) as unknown as Json;
  for (const ch of final.choices as { index: number; message: Json }[]) {
    if (reasoning.has(ch.index)) ch.message.reasoning_content = reasoning.get(ch.index);
  }
  return { final, chunks };
}

/**
 * What is compared between the two forms: the whole answer, less two things reported on their own: `created`
 * of a translated Anthropic answer (the gateway's clock, which may tick between the two calls) and a
 * `refusal: null` (present or absent; see the test of it below).
 */
function comparable(answer: unknown, kind: Kind): Json {
  const a = structuredClone(answer) as Json;
  if (kind === 'anthropic') delete a.created;
  for (const c of (a.choices as Json[] | undefined) ?? []) {
    const m = c.message as Json | undefined;
    if (m && m.refusal === null) delete m.refusal;
    const lp = c.logprobs as Json | null | undefined;
    if (lp && lp.refusal === null) delete lp.refusal;
  }
  return a;
}

const tokens = (samples: Awaited<ReturnType<typeof scrape>>, kind: string) =>
  value(samples, 'llm_router_tokens_total', { provider: 'p0', model: 'up-model', kind });
const attempts = (samples: Awaited<ReturnType<typeof scrape>>, outcome: string, provider = 'p0') =>
  value(samples, 'llm_router_upstream_attempts_total', { provider, model: 'up-model', outcome });

// ---------------------------------------------------------------------------------------------

describe.each([
  ['openai', OA],
  ['anthropic', AN],
] as const)('%s upstream: the wrong form gives the openai SDK what the right form gives', (kind, cases) => {
  for (const [name, c] of Object.entries(cases)) {
    it(`${name}: stream: true answered with JSON`, async () => {
      const s = await switchable(kind, c.answer);
      const body = { ...c.body, stream_options: { include_usage: true } };
      const right = await sdkStream(s.openai, body);
      s.set('wrong');
      const wrong = await sdkStream(s.openai, body);
      expect(comparable(wrong.final, kind)).toEqual(comparable(right.final, kind));
      // The usage chunk the client asked for, as the right form gave it.
      expect(wrong.chunks.at(-1)?.usage).toEqual(right.chunks.at(-1)?.usage);
      expect(wrong.chunks.at(-1)?.usage).toBeTruthy();
      expect(s.mocks[0]!.received.map((r) => r.body.stream)).toEqual([true, true]);
    });

    it(`${name}: a non-streaming request answered with an event stream`, async () => {
      const s = await switchable(kind, c.answer);
      const right = await s.openai.chat.completions.create({ model: 'r', messages: hi, ...c.body } as never);
      s.set('wrong');
      const wrong = await s.openai.chat.completions.create({ model: 'r', messages: hi, ...c.body } as never);
      expect(comparable(wrong, kind)).toEqual(comparable(right, kind));
    });
  }
});

it('anthropic: the chat.completion merged from an event stream has refusal: null, as the JSON translation has', async () => {
  // JUDGEMENT: `message.refusal` is `string | null` in OpenAI's answer type, and the right form carries it as
  // null; a client testing `refusal === null` reads the merged answer differently.
  const s = await switchable('anthropic', AN.text!.answer);
  const right = await s.openai.chat.completions.create({ model: 'r', messages: hi });
  s.set('wrong');
  const wrong = await s.openai.chat.completions.create({ model: 'r', messages: hi });
  expect(right.choices[0]!.message.refusal).toBeNull();
  expect(wrong.choices[0]!.message).toEqual(right.choices[0]!.message);
});

// ---------------------------------------------------------------------------------------------

describe('other clients get the same from either form', () => {
  const toolsAi = {
    weather: tool({
      inputSchema: jsonSchema<{ city: string }>({ type: 'object', properties: { city: { type: 'string' } } }),
    }),
    time: tool({
      inputSchema: jsonSchema<{ tz: string }>({ type: 'object', properties: { tz: { type: 'string' } } }),
    }),
  };

  for (const [kind, label, answer] of [
    ['openai', 'openai tools and text', OA.toolsAndText!.answer],
    ['anthropic', 'anthropic tools and text', AN.toolsAndText!.answer],
    ['openai', 'openai reasoning_content', OA.reasoning!.answer],
    ['anthropic', 'anthropic thinking', AN.thinking!.answer],
  ] as const) {
    it(`Vercel AI SDK generateText and streamText: ${label}`, async () => {
      const s = await switchable(kind, answer);
      const model = createOpenAI({ baseURL: `${s.url}/v1`, apiKey: 'k' }).chat('r');
      const gen = async () => {
        const r = await generateText({ model, prompt: 'hi', tools: toolsAi, maxRetries: 0 });
        return {
          text: r.text,
          reasoning: r.reasoningText,
          toolCalls: r.toolCalls.map((t) => [t.toolCallId, t.toolName, t.input]),
          finish: r.finishReason,
          usage: [r.usage.inputTokens, r.usage.outputTokens],
        };
      };
      const str = async () => {
        const r = streamText({ model, prompt: 'hi', tools: toolsAi, maxRetries: 0 });
        return {
          text: await r.text,
          reasoning: await r.reasoningText,
          toolCalls: (await r.toolCalls).map((t) => [t.toolCallId, t.toolName, t.input]),
          finish: await r.finishReason,
          usage: [(await r.usage).inputTokens, (await r.usage).outputTokens],
        };
      };
      const rightGen = await gen();
      const rightStr = await str();
      s.set('wrong');
      expect(await gen()).toEqual(rightGen);
      expect(await str()).toEqual(rightStr);
      expect(rightGen.text.length + rightGen.toolCalls.length).toBeGreaterThan(0);
    });

    it(`LangChain ChatOpenAI invoke and stream: ${label}`, async () => {
      const s = await switchable(kind, answer);
      const lc = new ChatOpenAI({
        model: 'r',
        apiKey: 'k',
        maxRetries: 0,
        streamUsage: true,
        configuration: { baseURL: `${s.url}/v1` },
      }).bindTools([
        { type: 'function', function: { name: 'weather', parameters: { type: 'object', properties: {} } } },
        { type: 'function', function: { name: 'time', parameters: { type: 'object', properties: {} } } },
      ]);
      const inv = async () => {
        const m = await lc.invoke('hi');
        return {
          content: m.content,
          tools: m.tool_calls?.map((t) => [t.id, t.name, t.args]),
          usage: [m.usage_metadata?.input_tokens, m.usage_metadata?.output_tokens],
          reasoning: m.additional_kwargs.reasoning_content,
        };
      };
      const str = async () => {
        let content = '';
        const calls = new Map<number, { id?: string; name?: string; args: string }>();
        let usage: unknown;
        let reasoning = '';
        for await (const c of await lc.stream('hi')) {
          content += typeof c.content === 'string' ? c.content : '';
          for (const t of c.tool_call_chunks ?? []) {
            const e = calls.get(t.index ?? 0) ?? { args: '' };
            if (t.id) e.id = t.id;
            if (t.name) e.name = t.name;
            e.args += t.args ?? '';
            calls.set(t.index ?? 0, e);
          }
          if (c.usage_metadata) usage = [c.usage_metadata.input_tokens, c.usage_metadata.output_tokens];
          const r = c.additional_kwargs.reasoning_content;
          if (typeof r === 'string') reasoning += r;
        }
        return {
          content,
          tools: [...calls.values()].map((e) => [e.id, e.name, e.args === '' ? {} : JSON.parse(e.args)]),
          usage,
          reasoning,
        };
      };
      const rightInv = await inv();
      const rightStr = await str();
      s.set('wrong');
      expect(await inv()).toEqual(rightInv);
      expect(await str()).toEqual(rightStr);
    });
  }
});

// ---------------------------------------------------------------------------------------------

describe('usage: the client and /metrics see the upstream usage in either form', () => {
  const cases = [
    ['openai', OA.text!.answer, { prompt: 21, completion: 13 }],
    ['anthropic', AN.text!.answer, { prompt: 17, completion: 11 }],
  ] as const;
  for (const [kind, answer, usage] of cases) {
    for (const includeUsage of [true, false]) {
      it(`${kind}: JSON answering stream: true, include_usage ${includeUsage}`, async () => {
        const s = await gatewayOver([answerIn(kind, answer, () => 'wrong')], [kind]);
        const res = await postChat(s, {
          model: 'r',
          messages: hi,
          stream: true,
          stream_options: { include_usage: includeUsage },
        });
        expect(res.status).toBe(200);
        const data = dataOf(res.text);
        expect(data.at(-1)).toBe('[DONE]');
        const usageChunks = data
          .slice(0, -1)
          .map((d) => JSON.parse(d) as Json)
          .filter((c) => c.usage != null);
        if (includeUsage) {
          expect(usageChunks).toHaveLength(1);
          expect(usageChunks[0]!.usage).toMatchObject({
            prompt_tokens: usage.prompt,
            completion_tokens: usage.completion,
            total_tokens: usage.prompt + usage.completion,
          });
          expect(usageChunks[0]!.choices).toEqual([]);
        } else {
          expect(usageChunks).toEqual([]);
        }
        const m = await scrape(s.url);
        expect(tokens(m, 'prompt')).toBe(usage.prompt);
        expect(tokens(m, 'completion')).toBe(usage.completion);
        expect(value(m, 'llm_router_cost_usd_total', { provider: 'p0', model: 'up-model' })).toBeCloseTo(
          (usage.prompt * 1 + usage.completion * 2) / 1e6,
          12,
        );
      });
    }

    it(`${kind}: an event stream answering a non-streaming request`, async () => {
      const s = await gatewayOver([answerIn(kind, answer, () => 'wrong')], [kind]);
      const res = await postChat(s, { model: 'r', messages: hi });
      expect(res.status).toBe(200);
      expect(res.json.usage).toMatchObject({
        prompt_tokens: usage.prompt,
        completion_tokens: usage.completion,
        total_tokens: usage.prompt + usage.completion,
      });
      const m = await scrape(s.url);
      expect(tokens(m, 'prompt')).toBe(usage.prompt);
      expect(tokens(m, 'completion')).toBe(usage.completion);
      expect(value(m, 'llm_router_cost_usd_total', { provider: 'p0', model: 'up-model' })).toBeCloseTo(
        (usage.prompt * 1 + usage.completion * 2) / 1e6,
        12,
      );
    });
  }
});

// ---------------------------------------------------------------------------------------------

const FALLBACK_TEXT = 'from the fallback';
/** p1: a healthy upstream that answers in the right form. */
const fallback = answerIn(
  'openai',
  oaAnswer([{ message: { role: 'assistant', content: FALLBACK_TEXT }, finish_reason: 'stop' }]),
  () => 'right',
);

function raw(
  res: ServerResponse,
  status: number,
  contentType: string,
  body: string | Buffer,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, { 'content-type': contentType, ...headers });
  res.end(body);
}

/** The text the client got: from a raw stream's content deltas, or a JSON answer's message. */
function textOf(res: { text: string; json: Json }): string {
  if (Array.isArray(res.json.choices)) {
    return ((res.json.choices as Json[])[0]!.message as Json).content as string;
  }
  let text = '';
  for (const d of dataOf(res.text)) {
    if (d === '[DONE]') continue;
    const c = JSON.parse(d) as { choices?: { delta?: { content?: string } }[] };
    text += c.choices?.[0]?.delta?.content ?? '';
  }
  return text;
}

describe('what is no answer in either form fails over (to p1), invisibly', () => {
  const textSse = (frames: string) => (_req: Received, res: ServerResponse) => sse(res, frames);
  const base = { id: 'c', object: 'chat.completion.chunk', created: 1, model: 'up-model' };
  const ch = (index: number, delta: Json, finish: string | null = null) =>
    frame({ ...base, choices: [{ index, delta, finish_reason: finish }] });
  const anEv = (type: string, data: Json) => `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
  const anStart = anEv('message_start', {
    message: {
      id: 'msg_x',
      type: 'message',
      role: 'assistant',
      model: 'c',
      content: [],
      usage: { input_tokens: 3, output_tokens: 1 },
    },
  });
  const anText =
    anEv('content_block_start', { index: 0, content_block: { type: 'text', text: '' } }) +
    anEv('content_block_delta', { index: 0, delta: { type: 'text_delta', text: 'half' } });

  const cases: {
    name: string;
    kind: Kind;
    stream: boolean;
    handler: (req: Received, res: ServerResponse) => void;
    /** The trail reason, when README names it. */
    reason?: string;
    body?: Json;
  }[] = [
    // README: "What is no answer in either form ... is failed over as invalid_upstream_json"; a non-streaming
    // request gets that reason for the same bodies (cases below), a streaming one gets another.
    {
      name: 'a JSON array answering stream: true',
      kind: 'openai',
      stream: true,
      handler: (_q, res) => sendJson(res, 200, [OA.text!.answer]),
      reason: 'invalid_upstream_json',
    },
    {
      name: 'an HTML page (200) answering stream: true',
      kind: 'openai',
      stream: true,
      handler: (_q, res) => raw(res, 200, 'text/html', '<html><body>Welcome to nginx!</body></html>'),
      reason: 'invalid_upstream_json',
    },
    {
      name: 'truncated JSON answering stream: true',
      kind: 'openai',
      stream: true,
      handler: (_q, res) => raw(res, 200, 'application/json', JSON.stringify(OA.text!.answer).slice(0, 60)),
      reason: 'invalid_upstream_json',
    },
    {
      name: 'a JSON array answering a non-streaming request',
      kind: 'openai',
      stream: false,
      handler: (_q, res) => sendJson(res, 200, [OA.text!.answer]),
      reason: 'invalid_upstream_json',
    },
    {
      name: 'an HTML page (200) answering a non-streaming request',
      kind: 'openai',
      stream: false,
      handler: (_q, res) => raw(res, 200, 'text/html', '<!doctype html><p>captive portal</p>'),
      reason: 'invalid_upstream_json',
    },
    {
      name: 'an event stream of only [DONE] answering a non-streaming request',
      kind: 'openai',
      stream: false,
      handler: textSse('data: [DONE]\n\n'),
      reason: 'invalid_upstream_json',
    },
    {
      name: 'an event stream with content then [DONE] but no finish_reason, to a non-streaming request',
      kind: 'openai',
      stream: false,
      handler: textSse(ch(0, { role: 'assistant', content: 'partial' }) + 'data: [DONE]\n\n'),
    },
    {
      name: 'an event stream of n: 2 cut after one choice finished, to a non-streaming request',
      kind: 'openai',
      stream: false,
      body: { n: 2 },
      handler: textSse(ch(0, { content: 'one' }) + ch(1, { content: 'two' }) + ch(0, {}, 'stop')),
      reason: 'invalid_upstream_json',
    },
    {
      name: 'an OpenRouter-style error chunk (error beside choices, finish_reason error), to a non-streaming request',
      kind: 'openai',
      stream: false,
      handler: textSse(
        ch(0, { role: 'assistant', content: '' }) +
          frame({
            ...base,
            error: { code: 502, message: 'provider down' },
            choices: [{ index: 0, delta: { content: '' }, finish_reason: 'error' }],
          }) +
          'data: [DONE]\n\n',
      ),
    },
    {
      name: 'an Anthropic error object (200) answering stream: true',
      kind: 'anthropic',
      stream: true,
      handler: (_q, res) =>
        sendJson(res, 200, { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }),
    },
    {
      // The right form (a non-streaming request) takes this object as an empty answer too: not only the
      // conversion's doing, but the conversion streams it as a finished empty answer (finish_reason stop).
      name: 'an Anthropic JSON object that is no message answering stream: true',
      kind: 'anthropic',
      stream: true,
      handler: (_q, res) => sendJson(res, 200, { hello: 'world' }),
      reason: 'invalid_upstream_json',
    },
    {
      name: 'an Anthropic error event answering a non-streaming request',
      kind: 'anthropic',
      stream: false,
      handler: textSse(
        anStart + anEv('error', { error: { type: 'overloaded_error', message: 'Overloaded' } }),
      ),
    },
    {
      name: 'an Anthropic event stream cut before its message_delta, to a non-streaming request',
      kind: 'anthropic',
      stream: false,
      handler: textSse(anStart + anText),
      reason: 'invalid_upstream_json',
    },
    {
      name: 'an Anthropic event stream of only message_start, to a non-streaming request',
      kind: 'anthropic',
      stream: false,
      handler: textSse(anStart + anEv('ping', {})),
      reason: 'invalid_upstream_json',
    },
  ];

  for (const c of cases) {
    it(c.name, async () => {
      const s = await gatewayOver([c.handler, fallback], [c.kind, 'openai']);
      const res = await postChat(s, { model: 'r', messages: hi, stream: c.stream, ...c.body });
      expect(res.status).toBe(200);
      expect(res.headers['x-router-provider']).toBe('p1');
      expect(res.headers['x-router-attempts']).toBe('2');
      if (c.reason) expect(res.headers['x-router-trail']).toBe(`p0/up-model=${c.reason}`);
      else expect(res.headers['x-router-trail']).toMatch(/^p0\/up-model=\w+$/);
      expect(textOf(res)).toBe(FALLBACK_TEXT);
      if (c.stream) expect(dataOf(res.text).at(-1)).toBe('[DONE]');
      expect(s.mocks[0]!.received).toHaveLength(1);
      const m = await scrape(s.url);
      expect(attempts(m, 'success', 'p0') ?? 0).toBe(0);
      expect(attempts(m, 'success', 'p1')).toBe(1);
      // The failover counter's `reason` label is a class (`error`), not the trail's reason: any one series.
      const moved = m.filter(
        (x) => x.name === 'llm_router_failovers_total' && x.labels.from_provider === 'p0',
      );
      expect(moved.reduce((n, x) => n + x.value, 0)).toBe(1);
    });
  }
});

describe('usage where other servers put it, in an event stream answering a non-streaming request', () => {
  const base = { id: 'g', object: 'chat.completion.chunk', created: 1, model: 'up-model' };
  const ch = (delta: Json, finish: string | null = null, extra: Json = {}) =>
    frame({ ...base, choices: [{ index: 0, delta, finish_reason: finish }], ...extra });

  it('on the finish chunk itself (beside its choices)', async () => {
    const s = await gatewayOver([
      (_q, res) =>
        sse(
          res,
          ch({ role: 'assistant', content: 'Hey' }) +
            ch({}, 'stop', { usage: { prompt_tokens: 8, completion_tokens: 4, total_tokens: 12 } }) +
            'data: [DONE]\n\n',
        ),
    ]);
    const res = await postChat(s, { model: 'r', messages: hi });
    expect(res.json.usage).toMatchObject({ prompt_tokens: 8, completion_tokens: 4, total_tokens: 12 });
    const m = await scrape(s.url);
    expect([tokens(m, 'prompt'), tokens(m, 'completion')]).toEqual([8, 4]);
  });

  it("Groq's, inside x_groq", async () => {
    const s = await gatewayOver([
      (_q, res) =>
        sse(
          res,
          ch({ role: 'assistant', content: 'Hey' }) +
            ch({}, 'stop', {
              x_groq: { id: 'req_1', usage: { prompt_tokens: 9, completion_tokens: 5, total_tokens: 14 } },
            }) +
            'data: [DONE]\n\n',
        ),
    ]);
    const res = await postChat(s, { model: 'r', messages: hi });
    expect(res.status).toBe(200);
    expect(textOf(res)).toBe('Hey');
    const m = await scrape(s.url);
    expect([tokens(m, 'prompt'), tokens(m, 'completion')]).toEqual([9, 5]);
    // JUDGEMENT: a chat.completion carries its usage; the one the upstream reported is known here.
    expect(res.json.usage).toMatchObject({ prompt_tokens: 9, completion_tokens: 5 });
  });
});

describe('finished streams without their closing frame are answers (README: finished once every choice has its finish_reason)', () => {
  it('openai: finish_reason on every choice but no [DONE], to a non-streaming request', async () => {
    const s = await gatewayOver([
      (_q, res) => sse(res, oaFrames(OA.n2!.answer, true).replace('data: [DONE]\n\n', '')),
      fallback,
    ]);
    const res = await postChat(s, { model: 'r', messages: hi, n: 2 });
    expect(res.headers['x-router-provider']).toBe('p0');
    const choices = res.json.choices as { message: Json; finish_reason: string }[];
    expect(choices.map((c) => [c.message.content, c.finish_reason])).toEqual([
      ['First choice', 'stop'],
      ['Second one', 'length'],
    ]);
  });

  it('anthropic: message_delta with its stop reason but no message_stop, to a non-streaming request', async () => {
    const frames = anFrames(AN.text!.answer);
    const s = await gatewayOver(
      [(_q, res) => sse(res, frames.slice(0, frames.lastIndexOf('event: message_stop'))), fallback],
      ['anthropic', 'openai'],
    );
    const res = await postChat(s, { model: 'r', messages: hi });
    expect(res.headers['x-router-provider']).toBe('p0');
    expect(textOf(res)).toBe('Hello from Claude');
  });
});

// ---------------------------------------------------------------------------------------------

describe('valid wrong-form answers on odd wires are delivered whole (by p0, no failover)', () => {
  const jsonText = JSON.stringify(OA.text!.answer);
  const sseText = oaFrames(OA.text!.answer, true);
  const anJsonText = JSON.stringify(AN.text!.answer);
  const anSseText = anFrames(AN.text!.answer);

  async function byteByByte(res: ServerResponse, contentType: string, body: string): Promise<void> {
    res.writeHead(200, { 'content-type': contentType });
    for (const b of Buffer.from(body)) {
      res.write(Buffer.from([b]));
      await new Promise((r) => setImmediate(r));
    }
    res.end();
  }

  const cases: {
    name: string;
    kind: Kind;
    stream: boolean;
    handler: (req: Received, res: ServerResponse) => void | Promise<void>;
    want: string;
  }[] = [
    {
      name: 'gzip-encoded JSON answering stream: true',
      kind: 'openai',
      stream: true,
      handler: (_q, res) =>
        raw(res, 200, 'application/json', gzipSync(jsonText), { 'content-encoding': 'gzip' }),
      want: 'Hello from the audit',
    },
    {
      name: 'gzip-encoded event stream answering a non-streaming request',
      kind: 'openai',
      stream: false,
      handler: (_q, res) =>
        raw(res, 200, 'text/event-stream', gzipSync(sseText), { 'content-encoding': 'gzip' }),
      want: 'Hello from the audit',
    },
    {
      name: 'anthropic: gzip-encoded Messages JSON answering stream: true',
      kind: 'anthropic',
      stream: true,
      handler: (_q, res) =>
        raw(res, 200, 'application/json', gzipSync(anJsonText), { 'content-encoding': 'gzip' }),
      want: 'Hello from Claude',
    },
    {
      name: 'anthropic: gzip-encoded event stream answering a non-streaming request',
      kind: 'anthropic',
      stream: false,
      handler: (_q, res) =>
        raw(res, 200, 'text/event-stream', gzipSync(anSseText), { 'content-encoding': 'gzip' }),
      want: 'Hello from Claude',
    },
    {
      // JUDGEMENT: the body, not a lying label, says which form it is (a `{` is never an SSE field line).
      name: 'JSON labelled text/event-stream answering stream: true',
      kind: 'openai',
      stream: true,
      handler: (_q, res) => raw(res, 200, 'text/event-stream', jsonText),
      want: 'Hello from the audit',
    },
    {
      // JUDGEMENT: as above, the other way.
      name: 'an event stream labelled application/json answering a non-streaming request',
      kind: 'openai',
      stream: false,
      handler: (_q, res) => raw(res, 200, 'application/json', sseText),
      want: 'Hello from the audit',
    },
    {
      name: 'anthropic: Messages JSON labelled text/event-stream answering stream: true',
      kind: 'anthropic',
      stream: true,
      handler: (_q, res) => raw(res, 200, 'text/event-stream', anJsonText),
      want: 'Hello from Claude',
    },
    {
      name: 'blank lines before the JSON answering stream: true',
      kind: 'openai',
      stream: true,
      handler: (_q, res) => raw(res, 200, 'application/json', `\r\n\r\n\n${jsonText}\n`),
      want: 'Hello from the audit',
    },
    {
      name: 'a BOM before the event stream answering a non-streaming request',
      kind: 'openai',
      stream: false,
      handler: (_q, res) => raw(res, 200, 'text/event-stream', `\uFEFF${sseText}`),
      want: 'Hello from the audit',
    },
    {
      name: 'blank lines before the event stream answering a non-streaming request',
      kind: 'openai',
      stream: false,
      handler: (_q, res) => raw(res, 200, 'text/event-stream', `\n\n\r\n${sseText}`),
      want: 'Hello from the audit',
    },
    {
      name: 'JSON one byte per write answering stream: true',
      kind: 'openai',
      stream: true,
      handler: (_q, res) => byteByByte(res, 'application/json', jsonText),
      want: 'Hello from the audit',
    },
    {
      name: 'anthropic: Messages JSON one byte per write answering stream: true',
      kind: 'anthropic',
      stream: true,
      handler: (_q, res) => byteByByte(res, 'application/json', anJsonText),
      want: 'Hello from Claude',
    },
    {
      name: 'an event stream one byte per write answering a non-streaming request',
      kind: 'openai',
      stream: false,
      handler: (_q, res) => byteByByte(res, 'text/event-stream', sseText),
      want: 'Hello from the audit',
    },
  ];

  for (const c of cases) {
    it(
      c.name,
      async () => {
        const s = await gatewayOver([c.handler, fallback], [c.kind, 'openai']);
        const res = await postChat(s, {
          model: 'r',
          messages: hi,
          stream: c.stream,
          ...(c.stream ? { stream_options: { include_usage: true } } : {}),
        });
        expect(res.status).toBe(200);
        expect({
          provider: res.headers['x-router-provider'],
          trail: res.headers['x-router-trail'] ?? '',
        }).toEqual({
          provider: 'p0',
          trail: '',
        });
        expect(textOf(res)).toBe(c.want);
        if (c.stream) {
          expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
          expect(dataOf(res.text).at(-1)).toBe('[DONE]');
        } else {
          expect(res.headers['content-type']).toMatch(/^application\/json/);
        }
      },
      20_000,
    );
  }

  it('a BOM before a JSON answer: stream: true gets what a non-streaming request gets', async () => {
    // JUDGEMENT: RFC 8259 lets a parser refuse a BOM, and the gateway's JSON path does (a non-streaming request
    // fails over with invalid_upstream_json), while its SSE path skips one. The conversion must at least not
    // differ from the right form: same upstream, same trail.
    const s = await gatewayOver([
      (_q, res) => raw(res, 200, 'application/json', `\uFEFF${jsonText}`),
      fallback,
    ]);
    const asJson = await postChat(s, { model: 'r', messages: hi });
    const asStream = await postChat(s, { model: 'r', messages: hi, stream: true });
    expect(asStream.status).toBe(asJson.status);
    expect(asStream.headers['x-router-provider']).toBe(asJson.headers['x-router-provider']);
    expect(asStream.headers['x-router-trail']).toBe(asJson.headers['x-router-trail']);
    expect(textOf(asStream)).toBe(textOf(asJson));
  });

  it('a JSON answer of several MB to stream: true reaches the client whole', async () => {
    const big = 'lorem ipsum dolor sit amet '.repeat(230_000); // ~6.2 MB
    const answer = oaAnswer([{ message: { role: 'assistant', content: big }, finish_reason: 'stop' }]);
    const s = await gatewayOver([(_q, res) => sendJson(res, 200, answer), fallback]);
    const res = await postChat(s, { model: 'r', messages: hi, stream: true });
    expect(res.status).toBe(200);
    expect(res.headers['x-router-provider']).toBe('p0');
    const data = dataOf(res.text);
    expect(data.at(-1)).toBe('[DONE]');
    const text = textOf(res);
    expect(text.length).toBe(big.length);
    expect(text === big).toBe(true);
  }, 30_000);

  it('anthropic: a Messages JSON of several MB to stream: true reaches the client whole', async () => {
    const big = 'sit amet consectetur '.repeat(300_000); // ~6.3 MB
    const answer = anMessage([{ type: 'text', text: big }], 'end_turn');
    const s = await gatewayOver([(_q, res) => sendJson(res, 200, answer), fallback], ['anthropic', 'openai']);
    const res = await postChat(s, { model: 'r', messages: hi, stream: true });
    expect(res.status).toBe(200);
    expect(res.headers['x-router-provider']).toBe('p0');
    const text = textOf(res);
    expect(text.length).toBe(big.length);
    expect(text === big).toBe(true);
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------

describe('bookkeeping: a wrong-form answer is a success of its upstream', () => {
  const cases = [
    ['openai', true, OA.text!.answer, { prompt: 21, completion: 13 }],
    ['openai', false, OA.text!.answer, { prompt: 21, completion: 13 }],
    ['anthropic', true, AN.text!.answer, { prompt: 17, completion: 11 }],
    ['anthropic', false, AN.text!.answer, { prompt: 17, completion: 11 }],
  ] as const;
  for (const [kind, stream, answer, usage] of cases) {
    it(`${kind}, client stream: ${stream}: headers, attempts, TTFT, breaker, the request line`, async () => {
      const N = 6; // past the breaker's failure_threshold (5): a miscount would open it
      const s = await gatewayOver([answerIn(kind, answer, () => 'wrong'), fallback], [kind, 'openai']);
      for (let i = 0; i < N; i++) {
        const res = await postChat(s, { model: 'r', messages: hi, stream });
        expect(res.status).toBe(200);
        expect(res.headers).toMatchObject({
          'x-router-provider': 'p0',
          'x-router-model': 'up-model',
          'x-router-strategy': 'priority',
          'x-router-attempts': '1',
        });
        expect(res.headers['x-router-trail'] ?? '').toBe('');
        expect(res.headers['x-request-id']).toBeTruthy();
      }
      expect(s.mocks[1]!.received).toHaveLength(0);
      const m = await scrape(s.url);
      expect(attempts(m, 'success')).toBe(N);
      for (const outcome of ['error', 'timeout', 'rate_limited', 'client_error'])
        expect(attempts(m, outcome) ?? 0, outcome).toBe(0);
      expect(
        value(m, 'llm_router_time_to_first_token_seconds_count', { provider: 'p0', model: 'up-model' }),
      ).toBe(N);
      expect(
        value(m, 'llm_router_requests_total', {
          route: 'r',
          provider: 'p0',
          model: 'up-model',
          status: '200',
        }),
      ).toBe(N);
      // JUDGEMENT: the duration histogram's `stream` label says what the client got (its own form).
      expect(
        value(m, 'llm_router_request_duration_seconds_count', {
          route: 'r',
          provider: 'p0',
          model: 'up-model',
          stream: String(stream),
        }),
      ).toBe(N);
      expect(value(m, 'llm_router_circuit_state', { provider: 'p0', model: 'up-model' })).toBe(0);
      expect(tokens(m, 'prompt')).toBe(N * usage.prompt);
      expect(tokens(m, 'completion')).toBe(N * usage.completion);

      const lines = s.gw.logs.filter((l) => l.msg === 'request');
      expect(lines).toHaveLength(N);
      for (const l of lines) {
        expect(l).toMatchObject({
          route: 'r',
          upstream: 'p0/up-model',
          attempts: 1,
          status: 200,
          stream,
          promptTokens: usage.prompt,
          completionTokens: usage.completion,
        });
        expect(l.costUsd as number).toBeCloseTo((usage.prompt + 2 * usage.completion) / 1e6, 12);
        expect(typeof l.ttftMs).toBe('number');
        expect(l.trail ?? '').toBe('');
      }
      const status = (await (await request(`${s.url}/router/status`)).body.json()) as {
        upstreams: { id: string; breaker: { state: string; consecutive_failures: number } }[];
      };
      expect(status.upstreams.find((u) => u.id === 'p0/up-model')?.breaker).toMatchObject({
        state: 'closed',
        consecutive_failures: 0,
      });
    });
  }

  it('a wrong-form non-answer is an error of p0, the trail and the request line say so, TTFT only of p1', async () => {
    const s = await gatewayOver([(_q, res) => sse(res, 'data: [DONE]\n\n'), fallback]);
    const res = await postChat(s, { model: 'r', messages: hi });
    expect(res.headers['x-router-trail']).toBe('p0/up-model=invalid_upstream_json');
    expect(res.headers['x-router-attempts']).toBe('2');
    const m = await scrape(s.url);
    expect(attempts(m, 'error')).toBe(1);
    expect(attempts(m, 'success', 'p1')).toBe(1);
    expect(
      value(m, 'llm_router_time_to_first_token_seconds_count', { provider: 'p0', model: 'up-model' }) ?? 0,
    ).toBe(0);
    expect(
      value(m, 'llm_router_time_to_first_token_seconds_count', { provider: 'p1', model: 'up-model' }),
    ).toBe(1);
    const lines = s.gw.logs.filter((l) => l.msg === 'request');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ upstream: 'p1/up-model', attempts: 2, status: 200 });
    expect(String(lines[0]!.trail)).toContain('p0/up-model=invalid_upstream_json');
  });
});

// ---------------------------------------------------------------------------------------------

describe("the LLM router's own call, to a router-tier upstream that answers in the other form", () => {
  const ROUTER_REPLY = '{"tier": "deep", "reason": "needs a proof"}';

  async function tiered(kind: Kind, routerForm: 'always-stream' | 'always-json') {
    const routerAnswer =
      kind === 'anthropic'
        ? anMessage([{ type: 'text', text: ROUTER_REPLY }], 'end_turn', {
            input_tokens: 40,
            output_tokens: 12,
          })
        : oaAnswer([{ message: { role: 'assistant', content: ROUTER_REPLY }, finish_reason: 'stop' }]);
    const rt = track(
      await startMock((req, res) => {
        const streamIt = routerForm === 'always-stream';
        if (!streamIt) return sendJson(res, 200, routerAnswer);
        sse(
          res,
          kind === 'anthropic' ? anFrames(routerAnswer) : oaFrames(routerAnswer, req.body.stream !== true),
        );
      }),
    );
    const answer = (text: string) =>
      answerIn(
        'openai',
        oaAnswer([{ message: { role: 'assistant', content: text }, finish_reason: 'stop' }]),
        () => 'right',
      );
    const bal = track(await startMock(answer('balanced answer')));
    const deep = track(await startMock(answer('deep answer')));
    const prov = (name: string, url: string, k: Kind) => ({
      name,
      kind: k,
      base_url: k === 'anthropic' ? url : `${url}/v1`,
      api_key: 'sk-up',
      models: [{ name: 'up-model' }],
    });
    const gw = track(
      await startGateway({
        providers: [
          prov('rt', rt.url, kind),
          prov('bal', bal.url, 'openai'),
          prov('deep', deep.url, 'openai'),
        ],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['rt/up-model'], balanced: ['bal/up-model'], deep: ['deep/up-model'] },
            rules: [{ name: 'greeting', if: { last_user_message: '^hello$' }, tier: 'balanced' }],
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 5000, cache_ttl_s: 60 },
          },
        },
      }),
    );
    return { gw, rt, bal, deep };
  }

  for (const kind of ['openai', 'anthropic'] as const) {
    for (const form of ['always-stream', 'always-json'] as const) {
      it(`${kind}, ${form}: the tier is the router's pick`, async () => {
        const { gw, rt, deep, bal } = await tiered(kind, form);
        for (const stream of [false, true]) {
          const res = await postChat(gw, {
            model: 'auto',
            messages: [{ role: 'user', content: `Prove that sqrt(2) is irrational (${String(stream)})` }],
            stream,
          });
          expect(res.status).toBe(200);
          expect(res.headers['x-router-tier']).toBe('deep');
          expect(res.headers['x-router-tier-reason']).toBe('no rule matched; llm router: needs a proof');
          expect(textOf(res)).toBe('deep answer');
        }
        expect(rt.received).toHaveLength(2);
        expect(deep.received).toHaveLength(2);
        expect(bal.received).toHaveLength(0);
        const m = await scrape(gw.url);
        expect(value(m, 'llm_router_llm_router_requests_total', { tier: 'deep', outcome: 'chosen' })).toBe(2);
        expect(attempts(m, 'success', 'rt')).toBe(2);
      });
    }
  }
});
