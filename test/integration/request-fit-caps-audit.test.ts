import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { answerAnthropicText } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway, type Posted, type TestGateway } from '../helpers/gateway.js';
import {
  answerChat as answer,
  refuseAsOpenAI as refuse,
  sendJson,
  startRecordingMock,
  type RecordingMock,
} from '../helpers/mock-upstream.js';

/**
 * An audit of four recent changes: output caps learned from an upstream's 400 (upstream/param-fit.ts, Anthropic
 * upstreams included), the LLM router's minimal reasoning (routing/llm-router.ts), FastAPI/pydantic `detail`
 * lists relayed as one line (adapters/openai.ts validationMessage), and Claude 5.1+ reasoning_effort none/minimal
 * as adaptive thinking at low effort (adapters/anthropic-thinking.ts thinkingFor). Real gateway on loopback,
 * hand-written upstream mocks, the OpenAI SDK or undici as the client.
 */

const track = closeAfterEach();

type Json = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------------------
// Clients and status
// ---------------------------------------------------------------------------------------------------------

const post = postChat;

const errorOf = (r: Posted): Json => (r.json.error ?? {}) as Json;

async function fitsOf(gw: TestGateway): Promise<Map<string, Json>> {
  const s = (await (await fetch(`${gw.url}/router/status`)).json()) as {
    upstreams: { id: string; request_fits: Json }[];
  };
  return new Map(s.upstreams.map((u) => [u.id, u.request_fits]));
}

function sdk(gw: TestGateway): OpenAI {
  return new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
}

/** Streams a `hi` to route `smart` with the openai SDK, with `limit`; the text the chunks carry. */
async function streamedText(
  gw: TestGateway,
  limit: { max_tokens?: number; max_completion_tokens?: number },
): Promise<string> {
  const stream = await sdk(gw).chat.completions.create({
    model: 'smart',
    stream: true,
    ...limit,
    messages: [{ role: 'user', content: 'hi' }],
  });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
  return text;
}

const limitOf = (b: Json): unknown => b.max_completion_tokens ?? b.max_tokens;

const USER = [{ role: 'user', content: 'hi' }];

// ---------------------------------------------------------------------------------------------------------
// An OpenAI-dialect model with an output cap, worded as OpenAI does
// ---------------------------------------------------------------------------------------------------------

function refuseCap(res: ServerResponse, sent: unknown, cap: number, name = 'max_tokens'): void {
  refuse(
    res,
    `${name} is too large: ${String(sent)}. This model supports at most ${cap} completion tokens, whereas you provided ${String(sent)}.`,
    name,
    'invalid_value',
  );
}

/** OpenAI's answer to max_tokens on a reasoning model. */
function refuseMaxTokens(res: ServerResponse): void {
  refuse(
    res,
    "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
    'max_tokens',
    'unsupported_parameter',
  );
}

/** GPT-4o as OpenAI answers it: at most `cap` completion tokens. */
function capped(cap: number) {
  return (body: Json, _n: number, res: ServerResponse): void => {
    const n = limitOf(body);
    if (typeof n === 'number' && n > cap) return refuseCap(res, n, cap);
    answer(res, body, 'capped answer');
  };
}

function oneProvider(mock: RecordingMock, model = 'm', extra: Json = {}): Json {
  return {
    providers: [simProvider('a', mock.url, [model], { api_key: 'sk-up-0123456789', ...extra })],
    routes: { smart: { strategy: 'priority', targets: [`a/${model}`] } },
  };
}

/** A mock upstream answering with `handler`, alone behind route `smart` as `a/<model>`. */
async function openaiSetup(
  handler: Parameters<typeof startRecordingMock>[0],
  model?: string,
  extra?: Json,
): Promise<{ mock: RecordingMock; gw: TestGateway }> {
  const mock = track(await startRecordingMock(handler));
  return { mock, gw: track(await startGateway(oneProvider(mock, model, extra))) };
}

// ---------------------------------------------------------------------------------------------------------
// An Anthropic Messages API mock with the rules a capped, translated request can break
// ---------------------------------------------------------------------------------------------------------

const ALWAYS_THINKS = /claude-(?:opus-5-5|fable-5-1)/;
const THINKS_BY_DEFAULT = /claude-(?:(?:opus|sonnet)-5|fable|mythos)/;
const ADAPTIVE = /claude-(?:(?:opus|sonnet)-(?:4-[6-9]|5)|fable|mythos)/;
const EFFORTS = new Set(['low', 'medium', 'high', 'xhigh', 'max']);

/** What the Messages API refuses of `body` for a model writing at most `cap` tokens, or undefined. */
function claudeRefusal(body: Json, cap: number): string | undefined {
  const model = String(body.model);
  const max = body.max_tokens;
  if (typeof max !== 'number' || !Number.isInteger(max) || max < 1) return 'max_tokens: Field required';
  if (max > cap)
    return `max_tokens: ${max} > ${cap}, which is the maximum allowed number of output tokens for ${model}`;
  const thinking = body.thinking as Json | undefined;
  const choice = body.tool_choice as Json | undefined;
  const forced = choice?.type === 'any' || choice?.type === 'tool';
  if (ALWAYS_THINKS.test(model)) {
    if (thinking?.type === 'disabled')
      return '"thinking.type.disabled" is not supported for this model. Use "thinking.type.adaptive" and "output_config.effort" to control thinking behavior.';
    if (forced) return 'Forced tool use is not supported for this model: use tool_choice auto or none.';
  }
  if (thinking?.type === 'enabled') {
    const budget = thinking.budget_tokens;
    if (typeof budget !== 'number' || budget < 1024)
      return 'thinking.enabled.budget_tokens: Input should be greater than or equal to 1024';
    if (budget >= max)
      return '`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size';
  }
  if (thinking?.type === 'adaptive' && !ADAPTIVE.test(model))
    return 'thinking.type: adaptive thinking is not supported on this model';
  const effort = (body.output_config as Json | undefined)?.effort;
  if (effort !== undefined && !EFFORTS.has(String(effort)))
    return "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'";
  const on =
    thinking?.type === 'enabled' ||
    thinking?.type === 'adaptive' ||
    (thinking === undefined && THINKS_BY_DEFAULT.test(model));
  if (!on) return undefined;
  if (forced) return 'Thinking may not be enabled when tool_choice forces tool use.';
  if (body.temperature !== undefined && body.temperature !== 1)
    return '`temperature` may only be set to 1 when thinking is enabled or in interleaved mode.';
  if (body.top_p !== undefined) return '`top_p` may not be set when thinking is enabled.';
  // A tool loop's first assistant message must open with its thinking.
  const messages = body.messages as Json[];
  let opening: Json | undefined;
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i]!;
    const content = Array.isArray(m.content) ? (m.content as Json[]) : [];
    if (m.role === 'assistant') opening = m;
    else if (!content.some((b) => b.type === 'tool_result')) break;
  }
  const first = opening === undefined ? undefined : (opening.content as Json[])[0];
  if (opening !== undefined && first?.type !== 'thinking' && first?.type !== 'redacted_thinking')
    return 'messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` is enabled, a final `assistant` message must start with a thinking block.';
  return undefined;
}

/** A Claude model writing at most `cap` tokens: refuses as Anthropic, else answers `text` (JSON or SSE). */
function claude(cap: number, text = 'claude answer') {
  return (body: Json, n: number, res: ServerResponse): void => {
    const refused = claudeRefusal(body, cap);
    if (refused !== undefined)
      return sendJson(res, 400, {
        type: 'error',
        error: { type: 'invalid_request_error', message: refused },
      });
    answerAnthropicText(res, {
      id: `msg_${n}`,
      model: String(body.model),
      text,
      stream: body.stream === true,
      inputTokens: 10,
      outputTokens: 5,
    });
  };
}

function anthropicProvider(name: string, url: string, model: string, extra: Json = {}): Json {
  return simProvider(name, url, [model], {
    kind: 'anthropic',
    base_url: url,
    api_key: 'sk-ant-0123456789',
    ...extra,
  });
}

async function claudeGateway(mock: RecordingMock, model: string, extra: Json = {}): Promise<TestGateway> {
  return track(
    await startGateway({
      providers: [anthropicProvider('anth', mock.url, model, extra)],
      routes: { smart: { strategy: 'priority', targets: [`anth/${model}`] } },
    }),
  );
}

/** A mock of a Claude model writing at most `cap` tokens (answering `text`), behind route `smart`. */
async function claudeSetup(
  cap: number,
  model: string,
  text?: string,
  extra: Json = {},
): Promise<{ mock: RecordingMock; gw: TestGateway }> {
  const mock = track(await startRecordingMock(claude(cap, text)));
  return { mock, gw: await claudeGateway(mock, model, extra) };
}

// =========================================================================================================
// 1. Output caps (commit f0bd791)
// =========================================================================================================

describe('output caps on streams and failover', () => {
  it('stream: true refused for its cap (a 400 before any byte) is re-sent capped and streams the answer', async () => {
    const { mock, gw } = await openaiSetup(capped(16384), 'gpt-4o');
    const text = await streamedText(gw, { max_tokens: 32000 });
    expect(text).toBe('capped answer');
    expect(mock.bodies.map((b) => [b.stream, b.max_tokens])).toEqual([
      [true, 32000],
      [true, 16384],
    ]);
    expect((await fitsOf(gw)).get('a/gpt-4o')).toEqual({ output_tokens: 'at most 16384' });
    // Learned: the next stream is one send, already capped.
    const again = await sdk(gw).chat.completions.create({
      model: 'smart',
      stream: true,
      max_completion_tokens: 50000,
      messages: [{ role: 'user', content: 'hi' }],
    });
    for await (const chunk of again) void chunk;
    expect(mock.bodies).toHaveLength(3);
    expect(mock.bodies[2]!.max_completion_tokens).toBe(16384);
  });

  it('the context window is checked with the capped limit the upstream is sent, not the client’s', async () => {
    const mock = track(await startRecordingMock(capped(16384)));
    const cfg = oneProvider(mock, 'gpt-4o');
    (cfg.providers as { models: Json[] }[])[0]!.models[0]!.context_window = 128_000;
    const gw = track(await startGateway(cfg));
    const ask = (content: string) =>
      postChat(gw, { model: 'smart', max_tokens: 100_000, messages: [{ role: 'user', content }] });
    expect((await ask('hi')).status).toBe(200); // learns the cap: at most 16384
    // ~60k tokens of prompt: 60k + 100k is past 128k, but 60k + the 16384 it is sent fits.
    const r = await ask('The committee reviewed the quarterly report. '.repeat(7_000));
    expect(r.status, r.text.slice(0, 200)).toBe(200);
    expect(mock.bodies.at(-1)!.max_tokens).toBe(16384);
  });

  it('first upstream states its cap, the capped re-send answers 500: the second gets the client’s own limit', async () => {
    const a = track(
      await startRecordingMock((body, _n, res) => {
        const n = limitOf(body);
        if (typeof n === 'number' && n > 16384) return refuseCap(res, n, 16384);
        sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } });
      }),
    );
    const b = track(await startRecordingMock((body, _n, res) => answer(res, body, 'from b')));
    const gw = track(
      await startGateway({
        providers: [
          simProvider('a', a.url, ['m'], { api_key: 'sk-a-0123456789' }),
          simProvider('b', b.url, ['m'], { api_key: 'sk-b-0123456789' }),
        ],
        routes: { smart: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
      }),
    );
    for (const stream of [false, true]) {
      const r = await post(gw, { model: 'smart', stream, max_tokens: 32000, messages: USER });
      expect(r.status).toBe(200);
      expect(r.headers['x-router-provider']).toBe('b');
      expect(r.headers['x-router-trail']).toBe('a/m=http_500');
    }
    // a: refused then capped (first request), then capped at once (second); b: the client's 32000 both times.
    expect(a.bodies.map((x) => x.max_tokens)).toEqual([32000, 16384, 16384]);
    expect(b.bodies.map((x) => x.max_tokens)).toEqual([32000, 32000]);
    const fits = await fitsOf(gw);
    expect(fits.get('a/m')).toEqual({ output_tokens: 'at most 16384' });
    expect(fits.get('b/m')).toEqual({});
  });

  it('a reasoning model: max_tokens renamed, then max_completion_tokens capped, within one request', async () => {
    const { mock, gw } = await openaiSetup((body, _n, res) => {
      if ('max_tokens' in body) return refuseMaxTokens(res);
      const n = body.max_completion_tokens;
      if (typeof n === 'number' && n > 65536) return refuseCap(res, n, 65536, 'max_completion_tokens');
      answer(res, body, 'ok');
    }, 'o3');
    // (A model's context_window, when set, bounds what reaches the upstream at all.)
    const r = await post(gw, { model: 'smart', max_tokens: 120000, messages: USER });
    expect(r.status).toBe(200);
    expect(mock.bodies.map((b) => [b.max_tokens, b.max_completion_tokens])).toEqual([
      [120000, undefined],
      [undefined, 120000],
      [undefined, 65536],
    ]);
    expect((await fitsOf(gw)).get('a/o3')).toEqual({
      output_tokens: 'at most 65536',
      max_tokens: 'sent as max_completion_tokens',
    });
  });
});

describe('hostile or odd cap messages', () => {
  const cases: [string, string][] = [
    ['a cap of 0', 'max_tokens is too large: 32000. This model supports at most 0 completion tokens'],
    ['a negative cap', 'max_tokens is too large: 32000. This model supports at most -5 completion tokens'],
    [
      'a 20-digit cap',
      'max_tokens is too large: 32000. This model supports at most 12345678901234567890 completion tokens',
    ],
    [
      'an unsafe integer cap',
      'max_tokens is too large: 32000. This model supports at most 9007199254740993 completion tokens',
    ],
    [
      'a cap above what was sent',
      'max_tokens is too large: 32000. This model supports at most 64000 completion tokens',
    ],
    ['a cap equal to what was sent', '`max_tokens` must be less than or equal to `32000`'],
    ['an empty DeepSeek range', 'Invalid max_tokens value, the valid range of max_tokens is [1, 0]'],
    ['another field’s bound (Groq n)', '`n` must be less than or equal to `1`'],
    ['max_new_tokens (TGI)', '`max_new_tokens` must be less than or equal to `512`'],
    ['a __proto__ field', '`__proto__` must be less than or equal to `5`'],
  ];

  it.each(cases)('%s is relayed as the 400 it is: one send, nothing learned', async (_name, message) => {
    const { mock, gw } = await openaiSetup((_b, _n, res) =>
      refuse(res, message, 'max_tokens', 'invalid_value'),
    );
    const r = await post(gw, { model: 'smart', max_tokens: 32000, messages: USER });
    expect(r.status).toBe(400);
    expect(errorOf(r).message).toBe(message);
    expect(mock.bodies).toHaveLength(1);
    expect((await fitsOf(gw)).get('a/m')).toEqual({});
  });

  it('a bound on another field that merely ends in max_tokens (OpenRouter’s reasoning.max_tokens) does not cap the answer', async () => {
    const { mock, gw } = await openaiSetup((body, _n, res) => {
      const reasoning = body.reasoning as Json | undefined;
      if (typeof reasoning?.max_tokens === 'number' && reasoning.max_tokens > 1024)
        return refuse(
          res,
          '`reasoning.max_tokens` must be less than or equal to `1024`',
          'reasoning.max_tokens',
          'invalid_value',
        );
      answer(res, body, 'ok');
    });
    const r = await post(gw, {
      model: 'smart',
      max_tokens: 8000,
      reasoning: { max_tokens: 4000 },
      messages: USER,
    });
    expect(r.status).toBe(400);
    // The client's answer limit is not the field refused: nothing to fit, one send, nothing learned.
    expect(mock.bodies.map((b) => b.max_tokens)).toEqual([8000]);
    expect((await fitsOf(gw)).get('a/m')).toEqual({});
    // ...and a later request with a valid reasoning budget keeps the limit it asked for.
    const ok = await post(gw, {
      model: 'smart',
      max_tokens: 8000,
      reasoning: { max_tokens: 512 },
      messages: USER,
    });
    expect(ok.status).toBe(200);
    expect(mock.bodies.at(-1)!.max_tokens).toBe(8000);
  });

  it('an upstream lowering its stated cap on every send is bounded at 5 sends per request; its 400 is relayed', async () => {
    const { mock, gw } = await openaiSetup((body, _n, res) => {
      const n = Number(limitOf(body));
      refuseCap(res, n, n - 1);
    });
    const r = await post(gw, { model: 'smart', max_tokens: 32000, messages: USER });
    expect(r.status).toBe(400);
    expect(mock.bodies.map((b) => b.max_tokens)).toEqual([32000, 31999, 31998, 31997, 31996]);
    const r2 = await post(gw, { model: 'smart', max_tokens: 32000, messages: USER });
    expect(r2.status).toBe(400);
    expect(mock.bodies).toHaveLength(10);
  });

  it('a capped re-send keeps the client’s own __proto__ field as data', async () => {
    const { mock, gw } = await openaiSetup(capped(16384));
    const raw =
      '{"model":"smart","messages":[{"role":"user","content":"hi"}],"max_tokens":32000,"__proto__":{"polluted":1}}';
    const r = await post(gw, raw);
    expect(r.status).toBe(200);
    expect(mock.bodies).toHaveLength(2);
    expect(Object.hasOwn(mock.bodies[1]!, '__proto__')).toBe(true);
    expect(mock.bodies[1]!.max_tokens).toBe(16384);
    expect(({} as Json).polluted).toBeUndefined();
  });

  it('a smaller limit than the cap is left alone, and a later larger cap never raises a learned one', async () => {
    let cap = 8192;
    const { mock, gw } = await openaiSetup((body, _n, res) => {
      const n = Number(limitOf(body));
      if (n > cap) return refuseCap(res, n, cap);
      answer(res, body, 'ok');
    });
    expect((await post(gw, { model: 'smart', max_tokens: 20000, messages: USER })).status).toBe(200);
    expect((await post(gw, { model: 'smart', max_tokens: 100, messages: USER })).status).toBe(200);
    cap = 4096;
    expect((await post(gw, { model: 'smart', max_tokens: 20000, messages: USER })).status).toBe(200);
    expect(mock.bodies.map((b) => b.max_tokens)).toEqual([20000, 8192, 100, 8192, 4096]);
    expect((await fitsOf(gw)).get('a/m')).toEqual({ output_tokens: 'at most 4096' });
  });
});

describe('output caps and the Anthropic translation', () => {
  it('reasoning_effort high to a budget model: the capped max_tokens still holds the budget (64000 cap)', async () => {
    const { mock, gw } = await claudeSetup(64000, 'claude-sonnet-4-5');
    const r = await post(gw, {
      model: 'smart',
      max_tokens: 100000,
      reasoning_effort: 'high',
      messages: USER,
    });
    expect(r.status).toBe(200);
    expect(mock.bodies.map((b) => [b.max_tokens, b.thinking])).toEqual([
      [100000, { type: 'enabled', budget_tokens: 4096 }],
      [64000, { type: 'enabled', budget_tokens: 4096 }],
    ]);
    expect((await fitsOf(gw)).get('anth/claude-sonnet-4-5')).toEqual({ output_tokens: 'at most 64000' });
  });

  it('a cap below the effort’s budget: the budget shrinks under the capped max_tokens, or thinking goes', async () => {
    for (const [cap, thinking] of [
      [1500, { type: 'enabled', budget_tokens: 1499 }],
      [1024, undefined],
    ] as const) {
      const { mock, gw } = await claudeSetup(cap, 'claude-3-7-sonnet-20250219');
      const r = await post(gw, {
        model: 'smart',
        max_tokens: 3000,
        reasoning_effort: 'high',
        messages: USER,
      });
      expect(r.status).toBe(200);
      expect(mock.bodies[1]).toMatchObject({ max_tokens: cap });
      expect(mock.bodies[1]!.thinking).toEqual(thinking);
    }
  });

  it('Anthropic streams: a cap refusal before any byte is re-sent capped and streamed', async () => {
    const { mock, gw } = await claudeSetup(8192, 'claude-3-5-haiku-20241022', 'streamed');
    const text = await streamedText(gw, { max_completion_tokens: 20000 });
    expect(text).toBe('streamed');
    expect(mock.bodies.map((b) => [b.stream, b.max_tokens])).toEqual([
      [true, 20000],
      [true, 8192],
    ]);
  });

  it('Opus 5.5 with a cap: the capped re-send keeps adaptive thinking valid', async () => {
    const { mock, gw } = await claudeSetup(64000, 'claude-opus-5-5');
    const r = await post(gw, {
      model: 'smart',
      max_tokens: 100000,
      reasoning_effort: 'none',
      messages: USER,
    });
    expect(r.status).toBe(200);
    expect(mock.bodies[1]).toMatchObject({
      max_tokens: 64000,
      thinking: { type: 'adaptive' },
      output_config: { effort: 'low' },
    });
  });

  it('the client’s own thinking budget under a cap: the gateway does not itself send budget_tokens >= max_tokens', async () => {
    // Claude Opus 4.1 writes at most 32000 tokens; the client asked 40000 with a 32000 budget (valid as asked).
    const { mock, gw } = await claudeSetup(32000, 'claude-opus-4-1');
    const r = await post(gw, {
      model: 'smart',
      max_tokens: 40000,
      thinking: { type: 'enabled', budget_tokens: 32000 },
      messages: USER,
    });
    const sent = mock.bodies.at(-1)!;
    const budget = (sent.thinking as Json | undefined)?.budget_tokens;
    // Either the capped send lowers the budget under the cap, or the cap is not applied (the model's own 400).
    expect(typeof budget === 'number' && budget >= Number(sent.max_tokens)).toBe(false);
    expect(r.status).toBe(200);
  });

  it('the gateway’s own default max_tokens above the model’s cap is lowered to it (no client limit)', async () => {
    // default_max_tokens 8192 for a provider serving Claude 3 Haiku, which writes at most 4096.
    const { mock, gw } = await claudeSetup(4096, 'claude-3-haiku-20240307', undefined, {
      default_max_tokens: 8192,
    });
    const r = await post(gw, { model: 'smart', messages: USER });
    expect(errorOf(r).message).toBeUndefined();
    expect(r.status).toBe(200);
    expect(mock.bodies.at(-1)!.max_tokens).toBe(4096);
  });

  it('the default max_tokens plus the thinking room above the cap is lowered to it (reasoning_effort, no client limit)', async () => {
    // Opus 4.1 writes at most 32000: default 30000 + 4096 of thinking room is 34096.
    const { mock, gw } = await claudeSetup(32000, 'claude-opus-4-1', undefined, {
      default_max_tokens: 30000,
    });
    const r = await post(gw, { model: 'smart', reasoning_effort: 'high', messages: USER });
    expect(mock.bodies[0]!.max_tokens).toBe(34096);
    expect(errorOf(r).message).toBeUndefined();
    expect(r.status).toBe(200);
    const sent = mock.bodies.at(-1)!;
    expect(Number(sent.max_tokens)).toBeLessThanOrEqual(32000);
  });
});

describe('Anthropic upstreams learn caps only', () => {
  const refusals = [
    "Unsupported parameter: 'temperature' is not supported with this model.",
    "Unsupported value: 'reasoning_effort' does not support 'low' with this model. Supported values are: 'high'.",
    'body.top_p: Extra inputs are not permitted',
    "invalid reasoning value: 'low' (must be 'high')",
    'this model does not support thinking',
    'tools.0.custom.name: String should match pattern',
  ];

  it.each(refusals)('%s: relayed, one send, no fit', async (message) => {
    const mock = track(
      await startRecordingMock((_b, _n, res) =>
        sendJson(res, 400, { type: 'error', error: { type: 'invalid_request_error', message } }),
      ),
    );
    const gw = await claudeGateway(mock, 'claude-sonnet-4-5');
    const r = await post(gw, {
      model: 'smart',
      max_tokens: 100,
      temperature: 0.5,
      top_p: 0.9,
      reasoning_effort: 'low',
      tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
      messages: USER,
    });
    expect(r.status).toBe(400);
    expect(errorOf(r).message).toBe(message);
    expect(mock.bodies).toHaveLength(1);
    expect((await fitsOf(gw)).get('anth/claude-sonnet-4-5')).toEqual({});
  });

  it('a cap learned for one Anthropic upstream leaves another alone (same model name; same base_url too)', async () => {
    const small = track(await startRecordingMock(claude(8192)));
    const large = track(await startRecordingMock(claude(64000)));
    const model = 'claude-3-5-haiku-20241022';
    const gw = track(
      await startGateway({
        providers: [
          anthropicProvider('a', small.url, model),
          anthropicProvider('b', large.url, model),
          anthropicProvider('c', small.url, model),
        ],
        routes: {
          ra: { strategy: 'priority', targets: [`a/${model}`] },
          rb: { strategy: 'priority', targets: [`b/${model}`] },
          rc: { strategy: 'priority', targets: [`c/${model}`] },
        },
      }),
    );
    expect((await post(gw, { model: 'ra', max_tokens: 20000, messages: USER })).status).toBe(200);
    expect((await post(gw, { model: 'rb', max_tokens: 20000, messages: USER })).status).toBe(200);
    expect((await post(gw, { model: 'rc', max_tokens: 20000, messages: USER })).status).toBe(200);
    expect(small.bodies.map((b) => b.max_tokens)).toEqual([20000, 8192, 20000, 8192]);
    expect(large.bodies.map((b) => b.max_tokens)).toEqual([20000]);
    const fits = await fitsOf(gw);
    expect(fits.get(`a/${model}`)).toEqual({ output_tokens: 'at most 8192' });
    expect(fits.get(`b/${model}`)).toEqual({});
    expect(fits.get(`c/${model}`)).toEqual({ output_tokens: 'at most 8192' });
  });
});

// =========================================================================================================
// 2. The LLM router (commit 6472619)
// =========================================================================================================

describe('the LLM router’s reasoning_effort by model name', () => {
  const CHOICE = '{"tier": "deep", "reason": "hard"}';

  interface Model {
    /** Refuses max_tokens and temperature other than 1, as OpenAI's reasoning models do. */
    reasoning: boolean;
    /** The efforts it takes; undefined: it refuses the field. */
    efforts?: readonly string[];
  }

  /** As OpenAI answers for a model of this kind. */
  function openaiModel(spec: Model) {
    return (body: Json, _n: number, res: ServerResponse): void => {
      if (spec.reasoning) {
        if ('max_tokens' in body) return refuseMaxTokens(res);
        if ('temperature' in body && body.temperature !== 1)
          return refuse(
            res,
            `Unsupported value: 'temperature' does not support ${String(body.temperature)} with this model. Only the default (1) value is supported.`,
            'temperature',
            'unsupported_value',
          );
      }
      if ('reasoning_effort' in body) {
        const effort = String(body.reasoning_effort);
        if (spec.efforts === undefined)
          return refuse(
            res,
            'Unrecognized request argument supplied: reasoning_effort',
            'reasoning_effort',
            null,
          );
        if (!spec.efforts.includes(effort))
          return refuse(
            res,
            `Unsupported value: 'reasoning_effort' does not support '${effort}' with this model. Supported values are: ${spec.efforts.map((e) => `'${e}'`).join(', ')}.`,
            'reasoning_effort',
            'unsupported_value',
          );
      }
      answer(res, body, CHOICE);
    };
  }

  const O_SERIES: Model = { reasoning: true, efforts: ['low', 'medium', 'high'] };
  const CHAT: Model = { reasoning: false };
  const cases: [string, Model, string | undefined, string | undefined][] = [
    // model, how it answers, reasoning_effort first sent, reasoning_effort finally sent
    ['o3-mini', O_SERIES, 'minimal', 'low'],
    ['o4-mini', O_SERIES, 'minimal', 'low'],
    ['gpt-5', { reasoning: true, efforts: ['minimal', 'low', 'medium', 'high'] }, 'minimal', 'minimal'],
    ['gpt-5.1', { reasoning: true, efforts: ['none', 'low', 'medium', 'high'] }, 'minimal', 'none'],
    ['gpt-5-chat-latest', CHAT, undefined, undefined],
    ['gpt-4o', CHAT, undefined, undefined],
    ['gpt-4.1', CHAT, undefined, undefined],
    ['gpt-10', { reasoning: true, efforts: ['none', 'low', 'medium', 'high', 'xhigh'] }, 'minimal', 'none'],
    ['chatgpt-4o-latest', CHAT, undefined, undefined],
    // An Azure deployment of o3-mini: not told by name, so it reasons at its default (no 400 either).
    ['my-azure-deployment', O_SERIES, undefined, undefined],
  ];

  async function tiered(routerProvider: Json, routerTarget: string): Promise<TestGateway> {
    const plain = track(await startRecordingMock((body, _n, res) => answer(res, body, 'tier answer')));
    return track(
      await startGateway({
        providers: [routerProvider, simProvider('t', plain.url, ['balanced-m', 'deep-m'])],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: [routerTarget], balanced: ['t/balanced-m'], deep: ['t/deep-m'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 3000, cache_ttl_s: 60 },
          },
        },
      }),
    );
  }

  /** Asks route `auto` something hard: a 200 the router sent to the deep tier. */
  async function expectRoutedDeep(gw: TestGateway): Promise<void> {
    const r = await post(gw, { model: 'auto', messages: [{ role: 'user', content: 'prove it' }] });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-tier']).toBe('deep');
  }

  it.each(cases)('%s', async (model, spec, first, last) => {
    const router = track(await startRecordingMock(openaiModel(spec)));
    const gw = await tiered(simProvider('r', router.url, [model]), `r/${model}`);
    await expectRoutedDeep(gw);
    expect(router.bodies[0]!.reasoning_effort).toBe(first);
    expect(router.bodies.at(-1)!.reasoning_effort).toBe(last);
    expect(router.bodies.length).toBeLessThanOrEqual(4);
  });

  it('claude-haiku-4-5 as the router tier: no thinking, temperature 0, max_tokens 80', async () => {
    const router = track(await startRecordingMock(claude(64000, CHOICE)));
    const gw = await tiered(anthropicProvider('r', router.url, 'claude-haiku-4-5'), 'r/claude-haiku-4-5');
    await expectRoutedDeep(gw);
    expect(router.bodies).toHaveLength(1);
    const sent = router.bodies[0]!;
    expect(sent.max_tokens).toBe(80);
    expect(sent.temperature).toBe(0);
    expect(sent).not.toHaveProperty('thinking');
    expect(sent).not.toHaveProperty('output_config');
    expect(sent).not.toHaveProperty('reasoning_effort');
  });

  it('claude-opus-5-5 as the router tier: adaptive thinking at low effort, no temperature, room to think', async () => {
    const router = track(await startRecordingMock(claude(128000, CHOICE)));
    const gw = await tiered(anthropicProvider('r', router.url, 'claude-opus-5-5'), 'r/claude-opus-5-5');
    await expectRoutedDeep(gw);
    expect(router.bodies).toHaveLength(1);
    const sent = router.bodies[0]!;
    // It thinks whatever it is asked, inside max_tokens: 80 for the answer and 1,024 for the thinking.
    expect(sent).toMatchObject({
      max_tokens: 1104,
      thinking: { type: 'adaptive' },
      output_config: { effort: 'low' },
    });
    expect(sent).not.toHaveProperty('temperature');
    expect(sent).not.toHaveProperty('reasoning_effort');
  });
});

// =========================================================================================================
// 3. FastAPI / pydantic `detail` lists (commit 8a2eecb)
// =========================================================================================================

describe('validation lists relayed as one line', () => {
  const KEY = 'sk-vllm-SECRET-0123456789abcdef';

  async function detailGateway(
    detail: unknown,
    wrap: (d: unknown) => Json = (d) => ({ detail: d }),
  ): Promise<{ gw: TestGateway; mock: RecordingMock }> {
    return openaiSetup((_b, _n, res) => sendJson(res, 422, wrap(detail)), 'm', { api_key: KEY });
  }

  it('odd item shapes: object parts of loc skipped, non-string msg skipped, Mistral’s message.detail read', async () => {
    const detail = [
      { loc: ['body', { nested: true }, 'stop'], msg: 'Input should be a valid string' },
      { loc: ['body', 'x'], msg: 5 },
      null,
      'text',
      { loc: 'body', msg: 'no loc list' },
      { loc: ['body', 'n', 0], msg: 'Input should be greater than 0' },
    ];
    for (const wrap of [(d: unknown) => ({ detail: d }), (d: unknown) => ({ message: { detail: d } })]) {
      const { gw, mock } = await detailGateway(detail, wrap);
      const r = await post(gw, { model: 'smart', messages: USER });
      expect(r.status).toBe(422);
      expect(errorOf(r).message).toBe(
        'body.stop: Input should be a valid string; no loc list; body.n.0: Input should be greater than 0',
      );
      expect(mock.bodies).toHaveLength(1);
    }
  });

  it('1500 items: the first 10, the message bounded; 10k items (past the 64 KiB read) still a bounded message', async () => {
    for (const count of [1500, 10000]) {
      const detail = Array.from({ length: count }, (_, i) => ({ loc: ['body', `f${i}`], msg: 'bad' }));
      const { gw } = await detailGateway(detail);
      const r = await post(gw, { model: 'smart', messages: USER });
      expect(r.status).toBe(422);
      const message = String(errorOf(r).message);
      expect(message.length).toBeLessThanOrEqual(1001);
      if (count === 1500) {
        expect(message.split('; ')).toHaveLength(10);
        expect(message.startsWith('body.f0: bad; body.f1: bad')).toBe(true);
      }
    }
  });

  it('long messages are cut at 1000 characters', async () => {
    const detail = Array.from({ length: 10 }, (_, i) => ({ loc: ['body', `f${i}`], msg: 'x'.repeat(300) }));
    const { gw } = await detailGateway(detail);
    const r = await post(gw, { model: 'smart', messages: USER });
    const message = String(errorOf(r).message);
    expect(message.length).toBe(1001);
    expect(message.endsWith('…')).toBe(true);
  });

  it('a loc naming __proto__ is plain text: relayed, one send, nothing learned, no prototype touched', async () => {
    const detail = [{ loc: ['body', '__proto__'], msg: 'Extra inputs are not permitted', input: { a: 1 } }];
    const { gw, mock } = await detailGateway(detail);
    const raw = '{"model":"smart","messages":[{"role":"user","content":"hi"}],"__proto__":{"a":1}}';
    const r = await post(gw, raw);
    expect(r.status).toBe(422);
    expect(errorOf(r).message).toBe('body.__proto__: Extra inputs are not permitted');
    expect(mock.bodies).toHaveLength(1);
    expect((await fitsOf(gw)).get('a/m')).toEqual({});
    expect(({} as Json).a).toBeUndefined();
  });

  it('an Extra-inputs item for a droppable field is learned from the one line (body.logit_bias)', async () => {
    const { mock, gw } = await openaiSetup((body, _n, res) => {
      if ('logit_bias' in body)
        return sendJson(res, 422, {
          detail: [
            {
              type: 'extra_forbidden',
              loc: ['body', 'logit_bias'],
              msg: 'Extra inputs are not permitted',
              input: { '50256': -100, pad: 'y'.repeat(600) },
            },
          ],
        });
      answer(res, body, 'ok');
    });
    const r = await post(gw, { model: 'smart', logit_bias: { '50256': -100 }, messages: USER });
    expect(r.status).toBe(200);
    expect(mock.bodies).toHaveLength(2);
    expect(mock.bodies[1]).not.toHaveProperty('logit_bias');
  });

  it('the provider key echoed in detail[].msg, detail[].loc and detail[].input never reaches the client or the logs', async () => {
    const detail = [
      { loc: ['body', 'api_key'], msg: `Invalid key ${KEY}`, input: KEY },
      { loc: ['header', KEY], msg: 'Extra inputs are not permitted', input: { key: KEY } },
      { loc: ['body'], msg: `${'z'.repeat(960)} key=${KEY}`, input: KEY },
    ];
    const { gw } = await detailGateway(detail);
    for (const stream of [false, true]) {
      const r = await post(gw, { model: 'smart', stream, messages: USER });
      expect(r.status).toBe(422);
      expect(r.text).not.toContain(KEY);
      expect(r.text).not.toContain(KEY.slice(0, 12));
      expect(String(errorOf(r).message)).toContain('Invalid key [REDACTED]');
    }
    expect(gw.rawLogs()).not.toContain(KEY);
  });

  it('a list with no usable item falls back to the raw body, the key scrubbed from it', async () => {
    const { gw } = await detailGateway([{ loc: ['body'], msg: 5, input: KEY }]);
    const r = await post(gw, { model: 'smart', messages: USER });
    expect(r.status).toBe(422);
    expect(r.text).not.toContain(KEY);
    expect(String(errorOf(r).message)).toContain('[REDACTED]');
  });

  it('a key straddling the 1000-character cut leaves none of its characters', async () => {
    const detail = [{ loc: ['body'], msg: `${'q'.repeat(1000 - 6 - 10)}${KEY}` }];
    const { gw } = await detailGateway(detail);
    const r = await post(gw, { model: 'smart', messages: USER });
    const message = String(errorOf(r).message);
    expect(message).not.toContain(KEY.slice(0, 8));
    expect(message.endsWith('[REDACTED]…')).toBe(true);
  });
});

// =========================================================================================================
// 4. Claude 5.1+ reasoning_effort none / minimal (commit 6f3336c)
// =========================================================================================================

describe('Opus 5.5 with reasoning_effort none', () => {
  const TOOL = {
    type: 'function',
    function: { name: 'lookup', parameters: { type: 'object', properties: { q: { type: 'string' } } } },
  };
  const THINKING = { type: 'thinking', thinking: '', signature: 'sig-opus55' };

  const loop = (withThinking: boolean): Json[] => [
    { role: 'user', content: 'Look it up.' },
    {
      role: 'assistant',
      content: null,
      tool_calls: [{ id: 'toolu_1', type: 'function', function: { name: 'lookup', arguments: '{"q":"x"}' } }],
      ...(withThinking ? { thinking_blocks: [THINKING] } : {}),
    },
    { role: 'tool', tool_call_id: 'toolu_1', content: 'found' },
  ];

  it('a forced tool, tools, a tool loop sent back with its thinking, max_tokens 500: a valid request', async () => {
    const { mock, gw } = await claudeSetup(128000, 'claude-opus-5-5', 'Done.');
    const r = await post(gw, {
      model: 'smart',
      reasoning_effort: 'none',
      tools: [TOOL],
      tool_choice: 'required',
      max_tokens: 500,
      temperature: 0.2,
      messages: loop(true),
    });
    expect(errorOf(r).message).toBeUndefined();
    expect(r.status).toBe(200);
    const sent = mock.bodies[0]!;
    expect(sent).toMatchObject({
      max_tokens: 500,
      thinking: { type: 'adaptive' },
      output_config: { effort: 'low' },
      tool_choice: { type: 'auto' },
    });
    expect(sent).not.toHaveProperty('temperature');
    expect(((sent.messages as Json[])[1]!.content as Json[])[0]).toEqual(THINKING);
  });

  it('a named forced tool and reasoning_effort minimal on Fable 5.1: auto, adaptive low', async () => {
    const { mock, gw } = await claudeSetup(128000, 'claude-fable-5-1', 'ok');
    const r = await post(gw, {
      model: 'smart',
      reasoning_effort: 'minimal',
      tools: [TOOL],
      tool_choice: { type: 'function', function: { name: 'lookup' } },
      max_tokens: 500,
      messages: USER,
    });
    expect(r.status).toBe(200);
    expect(mock.bodies[0]).toMatchObject({
      thinking: { type: 'adaptive' },
      output_config: { effort: 'low' },
      tool_choice: { type: 'auto' },
      max_tokens: 500,
    });
  });

  it('the client’s own thinking {type: disabled} to Opus 5.5 gets the least it does too (adaptive, low), not its default high', async () => {
    const { mock, gw } = await claudeSetup(128000, 'claude-opus-5-5', 'ok');
    const r = await post(gw, { model: 'smart', thinking: { type: 'disabled' }, messages: USER });
    expect(r.status).toBe(200);
    // As reasoning_effort none: left out, `thinking` is Opus 5.5's default, high effort, the most, not the least.
    expect(mock.bodies[0]).toMatchObject({
      thinking: { type: 'adaptive' },
      output_config: { effort: 'low' },
    });
  });

  it('a tool loop sent back without its thinking (always-thinking model): the loop goes as text, answered', async () => {
    const { mock, gw } = await claudeSetup(128000, 'claude-opus-5-5', 'Done.');
    const r = await post(gw, {
      model: 'smart',
      reasoning_effort: 'none',
      tools: [TOOL],
      max_tokens: 500,
      messages: loop(false),
    });
    // Opus 5.5 cannot be told not to think, and Anthropic requires a tool loop's thinking: the loop's call and
    // result go as text the model reads, thinking on (README "Thinking").
    expect(r.status).toBe(200);
    expect(mock.bodies).toHaveLength(1);
    const sent = mock.bodies[0] as { messages: { content: { type: string; text?: string }[] }[] };
    expect(sent.messages.flatMap((m) => m.content.map((b) => b.type))).toEqual(['text', 'text', 'text']);
    expect(sent.messages[2]!.content[0]!.text).toBe('[tool result toolu_1: found]');
  });
});
