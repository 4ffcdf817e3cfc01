import type { ServerResponse } from 'node:http';
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';
import { generateText, streamText } from 'ai';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { anthropicSseFrame, claudeSse, collectChunks, joinChoices } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway, type TestGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { answerOk, sendJson, startMock, type Received } from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';

/**
 * Audit (session 28): Claude's refusal of the gateway's own default max_tokens, sent again with the room the
 * refusal states (0ece421, src/upstream/attempt-refit.ts withRoomForAnswer). README (`default_max_tokens`
 * row): when Claude refuses the default beside a prompt that fits ("input length and `max_tokens` exceed
 * context limit: 7000 + 4096 > 10000") it is sent again once with the room it states, if at least 1,024
 * tokens; else failed over as too long. A fit is not a failover: the same upstream answers (one attempt, no
 * trail); the resend is one more request of the upstream's rpm. Everything is real: the gateway on loopback,
 * node:http Claude mocks, undici, the openai SDK, the AI SDK and LangChain.
 */

const track = closeAfterEach();
onlyLoopbackFetch();

type Json = Record<string, unknown>;

const WINDOW = 10_000;
const DEFAULT_MAX = 8192;
const ASK = [{ role: 'user', content: 'Summarise the quarterly report.' }];
const TEXT = 'The report shows steady growth in every region.';

function noRoom(input: number, max: number, window: number): string {
  return `input length and \`max_tokens\` exceed context limit: ${input} + ${max} > ${window}, decrease input length or \`max_tokens\` and try again`;
}

function refuse(res: ServerResponse, message: string, status = 400): void {
  sendJson(res, status, { type: 'error', error: { type: 'invalid_request_error', message } });
}

interface ClaudeOpts {
  /** The prompt's tokens Claude states (and reports in usage). */
  readonly input: number;
  readonly window?: number;
  /** The most output tokens the model writes (checked before the window, as Anthropic does). */
  readonly cap?: number;
  /** Check the window before the cap (a server that validates in the other order). */
  readonly windowFirst?: boolean;
  /** A stream's first refusal comes in-band: a 200 and an error event before any content. */
  readonly inBand?: boolean;
  /** Delay of each answer, ms, by request index. */
  readonly delays?: readonly number[];
  /** Output tokens of an answer: all of max_tokens (stop_reason max_tokens) or a few (end_turn). */
  readonly fillsLimit?: boolean;
}

/**
 * A Claude Messages API mock that behaves as Anthropic does for max_tokens: over the output cap is "max_tokens:
 * X > CAP, which is the maximum allowed number of output tokens", input + max_tokens past the window is the
 * "exceed context limit" refusal, budget_tokens >= max_tokens is refused; otherwise it answers TEXT.
 */
function claude(o: ClaudeOpts): (r: Received, res: ServerResponse, n: number) => Promise<void> {
  const window = o.window ?? WINDOW;
  return async (r, res, n) => {
    const delay = o.delays?.[n] ?? 0;
    if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    const max = Number(r.body.max_tokens);
    const capCheck = (): boolean => {
      if (o.cap === undefined || max <= o.cap) return false;
      refuse(
        res,
        `max_tokens: ${max} > ${o.cap}, which is the maximum allowed number of output tokens for claude-sonnet-4-5`,
      );
      return true;
    };
    if (!o.windowFirst && capCheck()) return;
    if (o.input + max > window) {
      if (o.inBand === true && r.body.stream === true && n === 0) {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          anthropicSseFrame({
            type: 'error',
            error: { type: 'invalid_request_error', message: noRoom(o.input, max, window) },
          }),
        );
        return;
      }
      return refuse(res, noRoom(o.input, max, window));
    }
    if (o.windowFirst && capCheck()) return;
    const thinking = r.body.thinking as Json | undefined;
    if (thinking?.type === 'enabled' && Number(thinking.budget_tokens) >= max)
      return refuse(res, '`max_tokens` must be greater than `thinking.budget_tokens`');
    const out = o.fillsLimit === true ? max : 11;
    const stop = o.fillsLimit === true ? 'max_tokens' : 'end_turn';
    const usage = { input_tokens: o.input, output_tokens: out };
    if (r.body.stream === true) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(claudeSse([{ type: 'text', text: TEXT }], stop, usage));
      return;
    }
    sendJson(res, 200, {
      id: 'msg_01',
      type: 'message',
      role: 'assistant',
      model: String(r.body.model),
      content: [{ type: 'text', text: TEXT }],
      stop_reason: stop,
      stop_sequence: null,
      usage,
    });
  };
}

interface Setup {
  readonly model?: string;
  readonly defaultMax?: number;
  /** Model entry extras for the Claude upstream (rpm, tpm, context_window). */
  readonly modelExtra?: Json;
  readonly timeouts?: Json;
  /** A second, OpenAI-dialect upstream with a 200k window after Claude (priority). */
  readonly wide?: boolean;
}

async function gatewayOn(
  anthUrl: string,
  s: Setup = {},
): Promise<{ gw: TestGateway; wide?: Awaited<ReturnType<typeof startMock>> }> {
  const wide = s.wide === true ? track(await startMock((r, res) => answerOk(r, res))) : undefined;
  const providers: Json[] = [
    {
      name: 'anth',
      kind: 'anthropic',
      base_url: anthUrl,
      api_key: 'sk-ant-api03-room-secret-1234',
      default_max_tokens: s.defaultMax ?? DEFAULT_MAX,
      ...(s.timeouts === undefined ? {} : { timeouts: s.timeouts }),
      models: [{ name: s.model ?? 'claude-sonnet-4-5', ...s.modelExtra }],
    },
  ];
  const targets = [`anth/${s.model ?? 'claude-sonnet-4-5'}`];
  if (wide !== undefined) {
    providers.push({
      name: 'big',
      kind: 'openai',
      base_url: `${wide.url}/v1`,
      api_key: 'sk-big-0a1b2c3d4e5f6071',
      models: [{ name: 'm', context_window: 200_000 }],
    });
    targets.push('big/m');
  }
  const gw = track(
    await startGateway({
      providers,
      routing: { max_attempts: 3 },
      routes: { r: { strategy: 'priority', targets } },
    }),
  );
  return wide === undefined ? { gw } : { gw, wide };
}

function sdk(gw: TestGateway): OpenAI {
  return new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0, timeout: 20_000 });
}

function maxes(received: readonly Received[]): unknown[] {
  return received.map((r) => r.body.max_tokens);
}

/** The data frames of an SSE body, parsed (`[DONE]` as the string). */
function frames(text: string): (Json | string)[] {
  return text
    .split('\n\n')
    .map((f) => f.trim())
    .filter((f) => f.startsWith('data: '))
    .map((f) => f.slice(6))
    .map((d) => (d === '[DONE]' ? d : (JSON.parse(d) as Json)));
}

// ---------------------------------------------------------------------------------------------------------

describe('JSON: the refused default is sent again with the room; the client sees one clean answer', () => {
  it('openai SDK: content, finish_reason length at the new limit, usage, one attempt, no trail, one log line, counted once', async () => {
    const anth = track(await startMock(claude({ input: 2200, fillsLimit: true })));
    const { gw } = await gatewayOn(anth.url);
    const { data, response } = await sdk(gw)
      .chat.completions.create({ model: 'r', messages: [{ role: 'user', content: 'hi' }] })
      .withResponse();
    expect(maxes(anth.received)).toEqual([DEFAULT_MAX, WINDOW - 2200]);
    expect(data.choices[0]!.message.content).toBe(TEXT);
    expect(data.choices[0]!.finish_reason).toBe('length');
    expect(data.usage).toMatchObject({
      prompt_tokens: 2200,
      completion_tokens: WINDOW - 2200,
      total_tokens: WINDOW,
    });
    expect(response.headers.get('x-router-attempts')).toBe('1');
    expect(response.headers.get('x-router-trail') ?? '').toBe('');
    expect(response.headers.get('x-router-provider')).toBe('anth');
    const lines = gw.logs.filter((l) => l.msg === 'request');
    expect(lines).toHaveLength(1);
    expect(lines[0]!.status).toBe(200);
    const m = await scrape(gw.url);
    const labels = { provider: 'anth', model: 'claude-sonnet-4-5' };
    expect(value(m, 'llm_router_upstream_attempts_total', { ...labels, outcome: 'success' })).toBe(1);
    expect(value(m, 'llm_router_upstream_attempts_total', { ...labels, outcome: 'client_error' })).toBe(0);
    expect(value(m, 'llm_router_upstream_attempts_total', { ...labels, outcome: 'error' })).toBe(0);
    expect(value(m, 'llm_router_requests_total', { route: 'r', ...labels, status: '200' })).toBe(1);
    expect(value(m, 'llm_router_tokens_total', { ...labels, kind: 'completion' })).toBe(WINDOW - 2200);
  });

  it('Vercel AI SDK generateText and LangChain invoke: each one answer, finish length, the resent body keeps the client’s fields', async () => {
    const anth = track(await startMock(claude({ input: 3000, fillsLimit: true })));
    const { gw } = await gatewayOn(anth.url);
    const model = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' }).chat('r');
    const g = await generateText({ model, prompt: 'hi', maxRetries: 0 });
    expect(g.text).toBe(TEXT);
    expect(g.finishReason).toBe('length');
    expect([g.usage.inputTokens, g.usage.outputTokens]).toEqual([3000, WINDOW - 3000]);
    expect(maxes(anth.received)).toEqual([DEFAULT_MAX, WINDOW - 3000]);

    const lc = new ChatOpenAI({
      model: 'r',
      apiKey: 'k',
      maxRetries: 0,
      temperature: 0.3,
      configuration: { baseURL: `${gw.url}/v1` },
    });
    const msg = await lc.invoke('hi', { stop: ['\nObservation:'] });
    expect(msg.content).toBe(TEXT);
    expect(msg.response_metadata.finish_reason).toBe('length');
    const [first, second] = anth.received.slice(2);
    expect(first?.body.max_tokens).toBe(DEFAULT_MAX);
    expect(second?.body.max_tokens).toBe(WINDOW - 3000);
    // Only max_tokens differs between the two sends.
    expect({ ...second!.body, max_tokens: 0 }).toEqual({ ...first!.body, max_tokens: 0 });
    expect(second!.body.stop_sequences).toEqual(['\nObservation:']);
    expect(second!.body.temperature).toBe(0.3);
  });

  it('tools and an image go unchanged in the resend; only max_tokens is the room', async () => {
    const anth = track(await startMock(claude({ input: 4000 })));
    const { gw } = await gatewayOn(anth.url);
    const png =
      'data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==';
    const res = await postChat(gw, {
      model: 'r',
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What is this?' },
            { type: 'image_url', image_url: { url: png } },
          ],
        },
      ],
      tools: [
        { type: 'function', function: { name: 'look', parameters: { type: 'object', properties: {} } } },
      ],
      tool_choice: 'auto',
    });
    expect(res.status, res.text).toBe(200);
    expect(maxes(anth.received)).toEqual([DEFAULT_MAX, WINDOW - 4000]);
    const [a, b] = anth.received;
    expect({ ...b!.body, max_tokens: 0 }).toEqual({ ...a!.body, max_tokens: 0 });
    expect(b!.body.tools).toEqual([{ name: 'look', input_schema: { type: 'object', properties: {} } }]);
  });

  it('a client’s own limit (max_tokens or max_completion_tokens) is never changed: one send, the refusal relayed', async () => {
    const anth = track(await startMock(claude({ input: 7000 })));
    const { gw } = await gatewayOn(anth.url);
    for (const field of ['max_tokens', 'max_completion_tokens']) {
      const before = anth.received.length;
      const res = await postChat(gw, { model: 'r', messages: ASK, [field]: 5000 });
      expect(res.status, res.text).toBe(400);
      expect((res.json.error as Json).code).toBe('context_length_exceeded');
      expect(maxes(anth.received.slice(before))).toEqual([5000]);
    }
  });
});

describe('streams: the refusal before the stream, or in-band before any content', () => {
  it('a 400 before the stream: one stream, content, finish_reason length, usage, [DONE], attempts 1', async () => {
    const anth = track(await startMock(claude({ input: 2200, fillsLimit: true })));
    const { gw } = await gatewayOn(anth.url);
    const res = await postChat(gw, {
      model: 'r',
      messages: ASK,
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(res.status, res.text).toBe(200);
    expect(res.headers['x-router-attempts']).toBe('1');
    expect(res.headers['x-router-trail'] ?? '').toBe('');
    expect(maxes(anth.received)).toEqual([DEFAULT_MAX, WINDOW - 2200]);
    const fs = frames(res.text);
    expect(fs.at(-1)).toBe('[DONE]');
    const chunks = fs.filter((f): f is Json => typeof f !== 'string');
    expect(chunks.some((c) => c.error !== undefined)).toBe(false);
    const text = chunks
      .flatMap((c) => (c.choices as Json[]) ?? [])
      .map((c) => ((c.delta as Json | undefined)?.content as string | undefined) ?? '')
      .join('');
    expect(text).toBe(TEXT);
    const finishes = chunks
      .flatMap((c) => (c.choices as Json[]) ?? [])
      .map((c) => c.finish_reason)
      .filter((f) => f != null);
    expect(finishes).toEqual(['length']);
    expect(chunks.find((c) => c.usage != null)?.usage).toMatchObject({
      prompt_tokens: 2200,
      completion_tokens: WINDOW - 2200,
    });
    expect(gw.logs.filter((l) => l.msg === 'request')).toHaveLength(1);
  });

  it('openai SDK and AI SDK streamText: one clean answer each, finish length', async () => {
    const anth = track(await startMock(claude({ input: 3000, fillsLimit: true })));
    const { gw } = await gatewayOn(anth.url);
    const chunks = await collectChunks(
      await sdk(gw).chat.completions.create({
        model: 'r',
        messages: [{ role: 'user', content: 'hi' }],
        stream: true,
      }),
    );
    const { texts, finishes } = joinChoices(chunks);
    expect(texts).toEqual([TEXT]);
    expect(finishes).toEqual([['length']]);
    const model = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' }).chat('r');
    const s = streamText({ model, prompt: 'hi', maxRetries: 0 });
    expect(await s.text).toBe(TEXT);
    expect(await s.finishReason).toBe('length');
    expect(maxes(anth.received)).toEqual([DEFAULT_MAX, WINDOW - 3000, DEFAULT_MAX, WINDOW - 3000]);
  });

  it('the refusal in-band (a 200 and an error event before any content): sent again with the room, one clean stream', async () => {
    const anth = track(await startMock(claude({ input: 2200, inBand: true })));
    const { gw } = await gatewayOn(anth.url);
    const res = await postChat(gw, { model: 'r', messages: ASK, stream: true });
    expect(maxes(anth.received)).toEqual([DEFAULT_MAX, WINDOW - 2200]);
    expect(res.status, res.text).toBe(200);
    expect(frames(res.text).at(-1)).toBe('[DONE]');
  });
});

describe('thinking: the room must still hold the thinking budget Claude requires under max_tokens', () => {
  for (const [label, extra, input] of [
    ['reasoning_effort high (budget 4096), room 5000', { reasoning_effort: 'high' }, 5000],
    ['reasoning_effort high (budget 4096), room 2000', { reasoning_effort: 'high' }, 8000],
    ['client thinking budget 6000, room 3000', { thinking: { type: 'enabled', budget_tokens: 6000 } }, 7000],
  ] as const) {
    it(`${label}: Claude takes the resend (budget_tokens < max_tokens), the client gets its answer`, async () => {
      const anth = track(await startMock(claude({ input })));
      const { gw } = await gatewayOn(anth.url, { defaultMax: 4096 });
      const res = await postChat(gw, { model: 'r', messages: ASK, ...extra });
      expect(res.status, res.text).toBe(200);
      expect(anth.received).toHaveLength(2);
      const resent = anth.received[1]!.body;
      expect(resent.max_tokens).toBe(WINDOW - input);
      const thinking = resent.thinking as Json | undefined;
      if (thinking?.type === 'enabled')
        expect(Number(thinking.budget_tokens)).toBeLessThan(Number(resent.max_tokens));
    });
  }

  it('Claude 5 thinking by default: the resend with the room is taken', async () => {
    const anth = track(await startMock(claude({ input: 4000 })));
    const { gw } = await gatewayOn(anth.url, { model: 'claude-opus-5', defaultMax: 8192 });
    const res = await postChat(gw, { model: 'r', messages: ASK });
    expect(res.status, res.text).toBe(200);
    expect(anth.received).toHaveLength(2);
    expect(anth.received[1]!.body.max_tokens).toBe(WINDOW - 4000);
  });
});

describe('hostile refusal text', () => {
  /** Claude answering `message` as a 400 to the first send, "ok" after. */
  async function refusedOnce(message: string, status = 400) {
    const anth = track(
      await startMock((r, res, n) =>
        n === 0 ? refuse(res, message, status) : claude({ input: 10 })(r, res, n),
      ),
    );
    const { gw } = await gatewayOn(anth.url);
    const res = await postChat(gw, { model: 'r', messages: ASK });
    return { anth, res };
  }

  for (const [label, message] of [
    ['A > C', noRoom(12_000, DEFAULT_MAX, WINDOW)],
    ['room under 1,024', noRoom(9000, DEFAULT_MAX, WINDOW)],
    ['1e308', `input length and \`max_tokens\` exceed context limit: 1e308 + ${DEFAULT_MAX} > 10000`],
    ['negative', `input length and \`max_tokens\` exceed context limit: -5000 + ${DEFAULT_MAX} > 10000`],
    [
      '20 digits',
      'input length and `max_tokens` exceed context limit: 12345678901234567890 + 8192 > 99999999999999999999',
    ],
  ] as const) {
    it(`${label}: not sent again, the refusal relayed as context_length_exceeded`, async () => {
      const { anth, res } = await refusedOnce(message);
      expect(anth.received).toHaveLength(1);
      expect(res.status, res.text).toBe(400);
    });
  }

  it('the phrase inside a longer message (a proxy’s wrapping): sent again with the room once', async () => {
    const { anth, res } = await refusedOnce(
      `upstream said: ${noRoom(3000, DEFAULT_MAX, WINDOW)} (request id req_1)`,
    );
    expect(res.status, res.text).toBe(200);
    expect(maxes(anth.received)).toEqual([DEFAULT_MAX, 7000]);
  });

  it('the phrase twice, with different numbers: one resend, its limit below what was refused', async () => {
    const { anth, res } = await refusedOnce(
      `${noRoom(3000, DEFAULT_MAX, WINDOW)}; ${noRoom(5000, DEFAULT_MAX, WINDOW)}`,
    );
    expect(res.status, res.text).toBe(200);
    expect(anth.received).toHaveLength(2);
    expect(Number(anth.received[1]!.body.max_tokens)).toBeLessThan(DEFAULT_MAX);
  });

  it('a refusal whose "A + B > C" is false (1000 + 8192 > 10000): never resent with a larger max_tokens than the refused one', async () => {
    const { anth } = await refusedOnce(noRoom(1000, DEFAULT_MAX, WINDOW));
    for (const r of anth.received.slice(1))
      expect(Number(r.body.max_tokens)).toBeLessThanOrEqual(DEFAULT_MAX);
  });

  it('a huge stated window (100 + 8192 > 999999999999): not resent asking ~1e12 output tokens', async () => {
    const { anth } = await refusedOnce(noRoom(100, DEFAULT_MAX, 999_999_999_999));
    for (const r of anth.received.slice(1))
      expect(Number(r.body.max_tokens)).toBeLessThanOrEqual(DEFAULT_MAX);
  });

  it('a Claude that refuses the resend too: at most one resend, then the larger window answers', async () => {
    const anth = track(
      await startMock((r, res) => refuse(res, noRoom(4000, Number(r.body.max_tokens), WINDOW))),
    );
    const { gw, wide } = await gatewayOn(anth.url, { wide: true });
    const res = await postChat(gw, { model: 'r', messages: ASK });
    expect(maxes(anth.received)).toEqual([DEFAULT_MAX, WINDOW - 4000]);
    expect(wide!.received).toHaveLength(1);
    expect(res.status, res.text).toBe(200);
    expect(res.headers['x-router-trail']).toBe('anth/claude-sonnet-4-5=context_length_exceeded');
  });
});

describe('the room and the output cap together', () => {
  it('cap learned first (default 8192 > cap 4096), then the capped default refused as past the window: sent again with the room', async () => {
    // Anthropic checks the output cap first: the default is refused as over it, the gateway sends the cap
    // (its own default, fitted), and that is refused beside a 7000-token prompt on the 10k window: room 3000.
    const anth = track(await startMock(claude({ input: 7000, cap: 4096 })));
    const { gw } = await gatewayOn(anth.url);
    const res = await postChat(gw, { model: 'r', messages: ASK });
    expect(maxes(anth.received)).toEqual([DEFAULT_MAX, 4096, WINDOW - 7000]);
    expect(res.status, res.text).toBe(200);
  });

  it('a later request after the cap was learned, no client limit: the refused capped default is sent again with the room', async () => {
    const anth = track(
      await startMock((r, res, n) => claude({ input: n < 2 ? 100 : 7000, cap: 4096 })(r, res, n)),
    );
    const { gw } = await gatewayOn(anth.url);
    const first = await postChat(gw, { model: 'r', messages: ASK });
    expect(first.status, first.text).toBe(200);
    expect(maxes(anth.received)).toEqual([DEFAULT_MAX, 4096]);
    const res = await postChat(gw, { model: 'r', messages: ASK });
    expect(maxes(anth.received.slice(2))).toEqual([4096, WINDOW - 7000]);
    expect(res.status, res.text).toBe(200);
  });

  it('window checked before the cap: the room (7000) refused as over the cap 4096: no ping-pong, at most 3 sends, answered at min(room, cap)', async () => {
    const anth = track(await startMock(claude({ input: 3000, cap: 4096, windowFirst: true })));
    const { gw } = await gatewayOn(anth.url);
    const res = await postChat(gw, { model: 'r', messages: ASK });
    expect(anth.received.length, JSON.stringify(maxes(anth.received))).toBeLessThanOrEqual(3);
    expect(res.status, res.text).toBe(200);
    expect(anth.received.at(-1)!.body.max_tokens).toBe(4096);
  });
});

describe('budgets and deadlines', () => {
  it('rpm: the resend is one more request of the upstream’s rpm (2 for one client request)', async () => {
    const anth = track(await startMock(claude({ input: 2200 })));
    const { gw } = await gatewayOn(anth.url, { modelExtra: { rpm: 10, tpm: 1_000_000 } });
    const res = await postChat(gw, { model: 'r', messages: ASK });
    expect(res.status, res.text).toBe(200);
    const m = await scrape(gw.url);
    const labels = { provider: 'anth', model: 'claude-sonnet-4-5' };
    expect(value(m, 'llm_router_quota_used', { ...labels, kind: 'requests' })).toBe(2);
    // Tokens settle to Claude's usage: 2200 prompt + 11 output.
    expect(value(m, 'llm_router_quota_used', { ...labels, kind: 'tokens' })).toBe(2211);
  });

  it('rpm 2: the second request finds no room after a resend used it up (429 with Retry-After)', async () => {
    const anth = track(await startMock(claude({ input: 2200 })));
    const { gw } = await gatewayOn(anth.url, { modelExtra: { rpm: 2 } });
    expect((await postChat(gw, { model: 'r', messages: ASK })).status).toBe(200);
    const res = await postChat(gw, { model: 'r', messages: ASK });
    expect(res.status, res.text).toBe(429);
    expect(res.headers['retry-after']).toBeDefined();
    expect(anth.received).toHaveLength(2);
  });

  it('a slow refusing Claude: the resend is bounded by total_ms from the first send (no double time)', async () => {
    // Refusal after 1.2 s, the resend's answer after 1.5 s more: 2.7 s against total_ms 2 s.
    const anth = track(await startMock(claude({ input: 2200, delays: [1200, 1500] })));
    const { gw } = await gatewayOn(anth.url, {
      timeouts: { connect_ms: 2000, first_byte_ms: 10_000, idle_ms: 10_000, total_ms: 2000 },
    });
    const res = await postChat(gw, { model: 'r', messages: ASK });
    expect(anth.received.length).toBeLessThanOrEqual(2);
    expect(res.status, res.text).not.toBe(200);
  }, 20_000);

  it('a Claude that refuses after total_ms has passed: not sent again', async () => {
    const anth = track(await startMock(claude({ input: 2200, delays: [1500] })));
    const { gw } = await gatewayOn(anth.url, {
      timeouts: { connect_ms: 2000, first_byte_ms: 10_000, idle_ms: 10_000, total_ms: 1000 },
    });
    const res = await postChat(gw, { model: 'r', messages: ASK });
    expect(res.status).not.toBe(200);
    expect(anth.received).toHaveLength(1);
  }, 20_000);
});
