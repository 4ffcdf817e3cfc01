import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { collectChunks } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import {
  answerChat,
  fail500,
  refuseAsOpenAI,
  sendJson,
  startRecordingMock,
  type RecordingMock,
} from '../helpers/mock-upstream.js';

/**
 * A request the plan let through on its token estimate, refused by an upstream as past its context window
 * (SPEC §2 failover): an upstream further down the list whose window is larger answers it; with none larger
 * the refusal is the client's answer, as any 400 is. The refusal is no fault of the upstream (its breaker and
 * reliability are untouched), and the trail and the failover metric say why the request moved.
 */

const track = closeAfterEach();

type Json = Record<string, unknown>;

const OPENAI_OVERFLOW =
  "This model's maximum context length is 8192 tokens. However, your messages resulted in 9100 tokens. Please reduce the length of the messages.";

/** vLLM's refusal: no code of its own (the status again, as a number), `object: error`. */
function refuseAsVllm(res: ServerResponse, window: number): void {
  sendJson(res, 400, {
    object: 'error',
    message: `This model's maximum context length is ${window} tokens. However, you requested 9000 tokens (8000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.`,
    type: 'BadRequestError',
    param: null,
    code: 400,
  });
}

interface Model {
  readonly provider: string;
  readonly window?: number;
  readonly kind?: 'openai' | 'anthropic';
  readonly answer: (body: Json, res: ServerResponse) => void;
}

/** An OpenAI model of 8192 tokens that refuses every request, in OpenAI's words, as past its window. */
const SMALL: Model = {
  provider: 'small',
  window: 8192,
  answer: (_b, res) => refuseAsOpenAI(res, OPENAI_OVERFLOW, 'messages', 'context_length_exceeded'),
};

/** A gateway whose route `r` (priority, `extra` merged in) lists one mock upstream per model, in order. */
async function route(
  models: readonly Model[],
  extra: Json = {},
): Promise<{ gw: TestGateway; mocks: RecordingMock[] }> {
  const mocks: RecordingMock[] = [];
  for (const m of models) mocks.push(track(await startRecordingMock((b, _n, res) => m.answer(b, res))));
  const providers = models.map((m, i) =>
    simProvider(
      m.provider,
      mocks[i]!.url,
      [{ name: 'm', ...(m.window === undefined ? {} : { context_window: m.window }) }],
      m.kind === 'anthropic' ? { kind: 'anthropic', base_url: mocks[i]!.url } : {},
    ),
  );
  const { routing, ...rest } = extra;
  const gw = track(
    await startGateway({
      providers,
      routes: { r: { strategy: 'priority', targets: models.map((m) => `${m.provider}/m`) } },
      ...(routing === undefined ? {} : { routing }),
      ...rest,
    }),
  );
  return { gw, mocks };
}

async function metricsText(gw: TestGateway): Promise<string> {
  const res = await request(`${gw.url}/metrics`);
  return res.body.text();
}

/** The value of one sample line (`name{labels}`) in the metrics text, 0 when absent. */
function sample(text: string, line: string): number {
  for (const l of text.split('\n')) if (l.startsWith(`${line} `)) return Number(l.slice(line.length + 1));
  return 0;
}

const ASK = { model: 'r', messages: [{ role: 'user', content: 'a long document, as the client sees it' }] };

describe('a refusal as past the context window fails over to a larger window', () => {
  it('OpenAI’s context_length_exceeded on the small model: the large one answers, the trail and metrics say why', async () => {
    const { gw, mocks } = await route([
      SMALL,
      { provider: 'large', window: 128_000, answer: (b, res) => answerChat(res, b, 'read it all') },
    ]);
    const r = await postChat(gw, ASK);
    expect(r.status, r.text).toBe(200);
    expect((r.json.choices as Json[])[0]!.message).toMatchObject({ content: 'read it all' });
    expect(mocks.map((m) => m.bodies.length)).toEqual([1, 1]);
    expect(r.headers['x-router-provider']).toBe('large');
    expect(r.headers['x-router-trail']).toBe('small/m=context_length_exceeded');

    const metrics = await metricsText(gw);
    expect(
      sample(
        metrics,
        'llm_router_failovers_total{route="r",from_provider="small",reason="context_length_exceeded"}',
      ),
    ).toBe(1);
    // The small model answered correctly to a request too long for it: a client error, not a fault.
    expect(
      sample(
        metrics,
        'llm_router_upstream_attempts_total{provider="small",model="m",outcome="client_error"}',
      ),
    ).toBe(1);
    expect(sample(metrics, 'llm_router_circuit_state{provider="small",model="m"}')).toBe(0);
  });

  it('skips a candidate whose window is no larger than the one that refused, to the first larger one', async () => {
    const { gw, mocks } = await route([
      SMALL,
      { provider: 'same', window: 8192, answer: (b, res) => answerChat(res, b, 'same size') },
      { provider: 'smaller', window: 4096, answer: (b, res) => answerChat(res, b, 'smaller') },
      { provider: 'large', window: 32_768, answer: (b, res) => answerChat(res, b, 'large') },
    ]);
    const r = await postChat(gw, ASK);
    expect(r.status, r.text).toBe(200);
    expect((r.json.choices as Json[])[0]!.message).toMatchObject({ content: 'large' });
    expect(mocks.map((m) => m.bodies.length)).toEqual([1, 0, 0, 1]);
  });

  it('a stream: the refusal before any byte is invisible, the OpenAI SDK reads the large model’s answer', async () => {
    const { gw, mocks } = await route([
      SMALL,
      { provider: 'large', window: 128_000, answer: (b, res) => answerChat(res, b, 'streamed whole') },
    ]);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const chunks = await collectChunks(
      await client.chat.completions.create({
        model: 'r',
        stream: true,
        messages: [{ role: 'user', content: 'long' }],
      }),
    );
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe('streamed whole');
    expect(mocks.map((m) => m.bodies.length)).toEqual([1, 1]);
  });

  it('vLLM’s refusal with no code and no configured window: the window its message states decides', async () => {
    const { gw, mocks } = await route([
      { provider: 'local', answer: (_b, res) => refuseAsVllm(res, 4096) },
      { provider: 'cloud', window: 128_000, answer: (b, res) => answerChat(res, b, 'cloud') },
    ]);
    const r = await postChat(gw, ASK);
    expect(r.status, r.text).toBe(200);
    expect(mocks.map((m) => m.bodies.length)).toEqual([1, 1]);
    expect(r.headers['x-router-trail']).toBe('local/m=context_length_exceeded');
  });

  it('Anthropic’s "prompt is too long: N tokens > M maximum" fails over to a larger window too', async () => {
    const { gw, mocks } = await route([
      {
        provider: 'claude',
        kind: 'anthropic',
        answer: (_b, res) =>
          sendJson(res, 400, {
            type: 'error',
            error: {
              type: 'invalid_request_error',
              message: 'prompt is too long: 210000 tokens > 200000 maximum',
            },
          }),
      },
      { provider: 'gemini', window: 1_048_576, answer: (b, res) => answerChat(res, b, 'a million tokens') },
    ]);
    const r = await postChat(gw, ASK);
    expect(r.status, r.text).toBe(200);
    expect((r.json.choices as Json[])[0]!.message).toMatchObject({ content: 'a million tokens' });
    expect(mocks.map((m) => m.bodies.length)).toEqual([1, 1]);
  });

  it('a larger window that then fails: a 502 whose trail has both attempts, not the first 400', async () => {
    const { gw, mocks } = await route([
      SMALL,
      { provider: 'large', window: 128_000, answer: (_b, res) => fail500(res) },
    ]);
    const r = await postChat(gw, ASK);
    expect(r.status, r.text).toBe(502);
    expect(mocks.map((m) => m.bodies.length)).toEqual([1, 1]);
    expect(r.headers['x-router-trail']).toBe('small/m=context_length_exceeded,large/m=http_500');
  });
});

describe('no larger window to try: the refusal is the client’s answer, as any 400', () => {
  async function refused(models: readonly Model[], extra: Json = {}) {
    const { gw, mocks } = await route(models, extra);
    const r = await postChat(gw, ASK);
    expect(r.status, r.text).toBe(400);
    return { r, error: r.json.error as Json, counts: mocks.map((m) => m.bodies.length) };
  }

  it('every other window the same or smaller: nothing else is called', async () => {
    const { error, counts } = await refused([
      SMALL,
      { provider: 'twin', window: 8192, answer: (b, res) => answerChat(res, b, 'twin') },
    ]);
    expect(counts).toEqual([1, 0]);
    expect(error).toEqual({
      message: OPENAI_OVERFLOW,
      type: 'invalid_request_error',
      param: 'messages',
      code: 'context_length_exceeded',
    });
  });

  it('no window configured anywhere: the 400 is relayed, given OpenAI’s code when vLLM sent none', async () => {
    const { error, counts } = await refused([
      { provider: 'local', answer: (_b, res) => refuseAsVllm(res, 4096) },
      { provider: 'other', answer: (b, res) => answerChat(res, b, 'other') },
    ]);
    expect(counts).toEqual([1, 0]);
    expect(error.code).toBe('context_length_exceeded');
    expect(String(error.message)).toContain('maximum context length is 4096 tokens');
  });

  it('routing.max_attempts 1: the larger window is not tried and the client gets the 400, not a 502', async () => {
    const { counts } = await refused(
      [SMALL, { provider: 'large', window: 128_000, answer: (b, res) => answerChat(res, b, 'large') }],
      { routing: { max_attempts: 1 } },
    );
    expect(counts).toEqual([1, 0]);
  });

  it('the larger window’s breaker open: the client gets the 400, not a 503 for an upstream it never needed', async () => {
    const { gw, mocks } = await route(
      [SMALL, { provider: 'large', window: 128_000, answer: (_b, res) => fail500(res) }],
      { circuit_breaker: { failure_threshold: 1 } },
    );
    const opened = await postChat(gw, ASK, { headers: { 'x-router-provider': 'large' } });
    expect(opened.status).toBe(502);
    expect(sample(await metricsText(gw), 'llm_router_circuit_state{provider="large",model="m"}')).toBe(2);
    const r = await postChat(gw, ASK);
    expect(r.status, r.text).toBe(400);
    expect((r.json.error as Json).code).toBe('context_length_exceeded');
    expect(mocks.map((m) => m.bodies.length)).toEqual([1, 1]);
  });

  it('another 400 (an invalid parameter) is still never failed over', async () => {
    const { error, counts } = await refused([
      {
        provider: 'small',
        window: 8192,
        answer: (_b, res) =>
          refuseAsOpenAI(
            res,
            "Invalid value for 'temperature': must be <= 2.",
            'temperature',
            'invalid_value',
          ),
      },
      { provider: 'large', window: 128_000, answer: (b, res) => answerChat(res, b, 'large') },
    ]);
    expect(counts).toEqual([1, 0]);
    expect(error.code).toBe('invalid_value');
  });
});
