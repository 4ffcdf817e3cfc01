import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { collectChunks } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import {
  answerChat,
  chunkFrame,
  fail500,
  refuseAsOpenAI,
  sendJson,
  startRecordingMock,
  type RecordingMock,
} from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';

/**
 * A request the plan let through on its token estimate, refused by an upstream as past its context window
 * (SPEC §2 failover): an upstream further down the list whose window is larger answers it; with none larger
 * the refusal is the client's answer, as any 400 is. The refusal is no fault of the upstream (its breaker and
 * reliability are untouched), and the trail and the failover metric say why the request moved.
 * - the window an upstream states is read from every wording the gateway recognises as an overflow
 *   (llama.cpp's "exceeds the available context size (4096 tokens)", Anthropic's "input length and
 *   `max_tokens` exceed context limit: N + M > W"), so an upstream with no configured window still moves on;
 * - an embedding input too long for a small embedding model (TEI's 413) goes to a larger one;
 * - on a tiered route, a larger window in another tier takes it (as the plan does for an estimate), unless the
 *   client named the tier; the x-router-tier header and the log line name the tier that served;
 * - a refusal sent as an in-stream error event before any content is the same refusal: no breaker charge,
 *   only larger windows tried, the trail says `context_length_exceeded`;
 * - the client's final error is about the upstreams that could take the request: a larger window that is
 *   rate limited gives 429 with Retry-After, one that timed out gives 504, whatever the rank order;
 * - a refusal that names both `max_tokens` and the window (vLLM) moves to the larger window with the
 *   client's limit intact; a chain of ever-larger windows is walked; hostile numbers never loop or crash.
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
  readonly price?: { input_per_mtok: number; output_per_mtok: number };
  readonly capabilities?: string[];
  readonly timeouts?: Json;
  readonly answer: (body: Json, res: ServerResponse, n: number) => void;
}

const SMALL: Model = {
  provider: 'small',
  window: 8192,
  answer: (_b, res) => refuseAsOpenAI(res, OPENAI_OVERFLOW, 'messages', 'context_length_exceeded'),
};

/** A 32k model that refuses every request as past its window. */
const MID: Model = {
  provider: 'mid',
  window: 32_768,
  answer: (_b, res) =>
    refuseAsOpenAI(
      res,
      "This model's maximum context length is 32768 tokens. However, your messages resulted in 40000 tokens.",
      'messages',
      'context_length_exceeded',
    ),
};

function large(text = 'large'): Model {
  return { provider: 'large', window: 128_000, answer: (b, res) => answerChat(res, b, text) };
}

async function mocksFor(models: readonly Model[]): Promise<RecordingMock[]> {
  const mocks: RecordingMock[] = [];
  for (const m of models) mocks.push(track(await startRecordingMock((b, n, res) => m.answer(b, res, n))));
  return mocks;
}

function providersFor(models: readonly Model[], mocks: readonly RecordingMock[]): Json[] {
  return models.map((m, i) =>
    simProvider(
      m.provider,
      mocks[i]!.url,
      [
        {
          name: 'm',
          ...(m.window === undefined ? {} : { context_window: m.window }),
          ...(m.price === undefined ? {} : { price: m.price }),
          ...(m.capabilities === undefined ? {} : { capabilities: m.capabilities }),
        },
      ],
      {
        ...(m.kind === 'anthropic' ? { kind: 'anthropic', base_url: mocks[i]!.url } : {}),
        ...(m.timeouts === undefined ? {} : { timeouts: m.timeouts }),
      },
    ),
  );
}

/** A gateway whose route `r` lists one mock upstream per model, in order, with `strategy` (priority). */
async function route(
  models: readonly Model[],
  extra: Json = {},
  strategy: unknown = 'priority',
): Promise<{ gw: TestGateway; mocks: RecordingMock[] }> {
  const mocks = await mocksFor(models);
  const gw = track(
    await startGateway({
      providers: providersFor(models, mocks),
      routes: { r: { strategy, targets: models.map((m) => `${m.provider}/m`) } },
      ...extra,
    }),
  );
  return { gw, mocks };
}

const ASK = { model: 'r', messages: [{ role: 'user', content: 'a long document, as the client sees it' }] };

async function metricsText(gw: TestGateway): Promise<string> {
  const res = await request(`${gw.url}/metrics`);
  return res.body.text();
}

/** The value of one sample line (`name{labels}`) in the metrics text, 0 when absent. */
function sample(text: string, line: string): number {
  for (const l of text.split('\n')) if (l.startsWith(`${line} `)) return Number(l.slice(line.length + 1));
  return 0;
}

function counts(mocks: readonly RecordingMock[]): number[] {
  return mocks.map((m) => m.bodies.length);
}

function content(r: { json: Json }): unknown {
  return ((r.json.choices as Json[] | undefined)?.[0]?.message as Json | undefined)?.content;
}

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

  it.each([
    'prompt is too long: 210000 tokens > 200000 maximum',
    // Less room than an answer needs (under 1,024 tokens): not sent again with it (attempt-refit.ts).
    'input length and `max_tokens` exceed context limit: 199500 + 8192 > 200000, decrease input length or `max_tokens` and try again',
  ])('Anthropic’s "%s", no window configured: a larger window answers', async (message) => {
    const { gw, mocks } = await route([
      {
        provider: 'claude',
        kind: 'anthropic',
        answer: (_b, res) =>
          sendJson(res, 400, { type: 'error', error: { type: 'invalid_request_error', message } }),
      },
      { provider: 'gemini', window: 1_048_576, answer: (b, res) => answerChat(res, b, 'a million tokens') },
    ]);
    const r = await postChat(gw, ASK);
    expect(r.status, r.text).toBe(200);
    expect(content(r)).toBe('a million tokens');
    expect(counts(mocks)).toEqual([1, 1]);
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

describe('tiers: a larger window in another tier takes a request the chosen tier refused as too long', () => {
  /** Route `r`: tier fast = small (8k), deep = large (128k); a rule sends short prompts to fast. */
  async function tiered(): Promise<{ gw: TestGateway; mocks: RecordingMock[] }> {
    const models: Model[] = [SMALL, large('deep answered')];
    const mocks = await mocksFor(models);
    const gw = track(
      await startGateway({
        providers: providersFor(models, mocks),
        routes: {
          r: {
            strategy: 'priority',
            tiers: { fast: ['small/m'], deep: ['large/m'] },
            rules: [{ name: 'short', if: { max_prompt_tokens: 400 }, tier: 'fast' }],
            default_tier: 'deep',
          },
        },
      }),
    );
    return { gw, mocks };
  }

  for (const stream of [false, true]) {
    it(`a rule picks fast on the estimate, its model refuses: deep answers, and the headers and log say so (stream: ${stream})`, async () => {
      const { gw, mocks } = await tiered();
      const r = await postChat(gw, { ...ASK, stream });
      expect(r.status, r.text).toBe(200);
      expect(r.text).toContain('deep answered');
      expect(counts(mocks)).toEqual([1, 1]);
      expect(r.headers['x-router-tier']).toBe('deep');
      expect(r.headers['x-router-tier-reason']).toContain(
        'fast refused it as past its context window: deep has a larger one',
      );
      expect(r.headers['x-router-trail']).toBe('small/m=context_length_exceeded');
      const line = gw.logs.find((l) => l.msg === 'request');
      expect(line).toMatchObject({ tier: 'deep', upstream: 'large/m', status: 200 });
      expect(typeof line?.score).toBe('number');
    });
  }

  it('a tier the client named (x-router-tier) is kept: the refusal is the answer', async () => {
    const { gw, mocks } = await tiered();
    const r = await postChat(gw, ASK, { headers: { 'x-router-tier': 'fast' } });
    expect(r.status, r.text).toBe(400);
    expect((r.json.error as Json).code).toBe('context_length_exceeded');
    expect(counts(mocks)).toEqual([1, 0]);
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

describe('the window a refusal states is read from each wording recognised as an overflow', () => {
  it.each([
    'request (9000 tokens) exceeds the available context size (4096 tokens)',
    // Older llama.cpp: the window only in its `n_ctx` field.
    'the request exceeds the available context size, try increasing it',
  ])('llama.cpp’s "%s", no window configured: the larger one answers', async (message) => {
    const { gw, mocks } = await route([
      {
        provider: 'llamacpp',
        answer: (_b, res) =>
          sendJson(res, 400, {
            error: {
              code: 400,
              message,
              type: 'exceed_context_size_error',
              n_prompt_tokens: 9000,
              n_ctx: 4096,
            },
          }),
      },
      { provider: 'same', window: 4096, answer: (b, res) => answerChat(res, b, 'no larger') },
      large('from the cloud'),
    ]);
    const r = await postChat(gw, ASK);
    expect(r.status, r.text).toBe(200);
    expect(content(r)).toBe('from the cloud');
    expect(counts(mocks)).toEqual([1, 0, 1]);
    expect(r.headers['x-router-trail']).toBe('llamacpp/m=context_length_exceeded');
  });

  it('Anthropic’s "prompt is too long" 400 to a stream: the OpenAI SDK reads the larger window’s answer', async () => {
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
      { provider: 'gemini', window: 1_048_576, answer: (b, res) => answerChat(res, b, 'streamed whole') },
    ]);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const chunks = await collectChunks(
      await client.chat.completions.create({
        model: 'r',
        stream: true,
        messages: [{ role: 'user', content: 'x' }],
      }),
    );
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe('streamed whole');
    expect(counts(mocks)).toEqual([1, 1]);
  });
});

describe('/v1/embeddings: an input too long for a small embedding model goes to a larger one', () => {
  function embedded(body: Json, res: ServerResponse): void {
    sendJson(res, 200, {
      object: 'list',
      data: [{ object: 'embedding', index: 0, embedding: [0.5, -0.25] }],
      model: String(body.model),
      usage: { prompt_tokens: 3, total_tokens: 3 },
    });
  }

  async function embeddingsRoute(refusal: (res: ServerResponse) => void) {
    const models: Model[] = [
      { provider: 'local', window: 512, capabilities: ['embeddings'], answer: (_b, res) => refusal(res) },
      { provider: 'cloud', window: 8191, capabilities: ['embeddings'], answer: (b, res) => embedded(b, res) },
    ];
    const { gw, mocks } = await route(models);
    const r = await postChat(gw, { model: 'r', input: 'a chunk of a document' }, { path: '/v1/embeddings' });
    return { r, mocks };
  }

  it('vLLM’s / OpenAI’s "maximum context length is 512 tokens" (no code): the larger model embeds it', async () => {
    const { r, mocks } = await embeddingsRoute((res) =>
      sendJson(res, 400, {
        object: 'error',
        message:
          "This model's maximum context length is 512 tokens. However, you requested 600 tokens in the input for embedding generation. Please reduce the length of the input.",
        type: 'BadRequestError',
        param: null,
        code: 400,
      }),
    );
    expect(r.status, r.text).toBe(200);
    expect(counts(mocks)).toEqual([1, 1]);
    expect(r.headers['x-router-trail']).toBe('local/m=context_length_exceeded');
  });

  it('Hugging Face TEI’s 413 "`inputs` must have less than 512 tokens. Given: 600": the larger model embeds it', async () => {
    const { r, mocks } = await embeddingsRoute((res) =>
      sendJson(res, 413, {
        message: 'Input validation error: `inputs` must have less than 512 tokens. Given: 600',
        code: 413,
        type: 'validation',
      }),
    );
    expect(r.status, r.text).toBe(200);
    expect(counts(mocks)).toEqual([1, 1]);
  });
});

describe('a refusal sent as an in-stream error event before any content', () => {
  /** A 200 stream whose only event is OpenAI's context_length_exceeded error (a proxy's way of saying it). */
  function refuseInStream(res: ServerResponse, model: unknown): void {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end(
      `${chunkFrame(model, { role: 'assistant', content: '' })}data: ${JSON.stringify({
        error: {
          message: OPENAI_OVERFLOW,
          type: 'invalid_request_error',
          param: 'messages',
          code: 'context_length_exceeded',
        },
      })}\n\n`,
    );
  }

  it('moves to a larger window only, without charging the refusing upstream’s breaker', async () => {
    const { gw, mocks } = await route(
      [
        { provider: 'small', window: 8192, answer: (b, res) => refuseInStream(res, b.model) },
        { provider: 'twin', window: 8192, answer: (b, res) => refuseInStream(res, b.model) },
        large('streamed from the large window'),
      ],
      { circuit_breaker: { failure_threshold: 1 } },
    );
    const r = await postChat(gw, { ...ASK, stream: true });
    expect(r.status, r.text).toBe(200);
    expect(r.text).toContain('streamed from the large window');
    // The twin's window is no larger: it would refuse the same prompt.
    expect(counts(mocks)).toEqual([1, 0, 1]);
    expect(r.headers['x-router-trail']).toBe('small/m=context_length_exceeded');
    const samples = await scrape(gw.url);
    expect(value(samples, 'llm_router_circuit_state', { provider: 'small', model: 'm' })).toBe(0);
  });

  it('with no larger window the client gets the 400 context_length_exceeded, not a 502', async () => {
    const { gw, mocks } = await route([
      { provider: 'small', window: 8192, answer: (b, res) => refuseInStream(res, b.model) },
    ]);
    const r = await postChat(gw, { ...ASK, stream: true });
    expect(counts(mocks)).toEqual([1]);
    expect(r.status, r.text).toBe(400);
    expect((r.json.error as Json).code).toBe('context_length_exceeded');
  });

  it('a JSON request answered 200 with the refusal as its body (no code, only the words): the same', async () => {
    const refuseInBody = (res: ServerResponse): void =>
      sendJson(res, 200, { error: { message: OPENAI_OVERFLOW, type: 'invalid_request_error' } });
    const moved = await route([
      { provider: 'small', window: 8192, answer: (_b, res) => refuseInBody(res) },
      large('answered whole'),
    ]);
    const r = await postChat(moved.gw, ASK);
    expect(r.status, r.text).toBe(200);
    expect(content(r)).toBe('answered whole');
    expect(r.headers['x-router-trail']).toBe('small/m=context_length_exceeded');

    const alone = await route([{ provider: 'small', window: 8192, answer: (_b, res) => refuseInBody(res) }]);
    const refused = await postChat(alone.gw, ASK);
    expect(refused.status, refused.text).toBe(400);
    expect((refused.json.error as Json).code).toBe('context_length_exceeded');
  });
});

describe('the final error is about the upstreams that could take the request', () => {
  it('the larger window is rate limited: 429 with its Retry-After, not a 502', async () => {
    const { gw, mocks } = await route([
      SMALL,
      {
        provider: 'large',
        window: 128_000,
        answer: (_b, res) =>
          sendJson(
            res,
            429,
            {
              error: {
                message: 'Rate limit reached',
                type: 'requests',
                param: null,
                code: 'rate_limit_exceeded',
              },
            },
            { 'retry-after': '7' },
          ),
      },
    ]);
    const r = await postChat(gw, ASK);
    expect(counts(mocks)).toEqual([1, 1]);
    expect(r.status, r.text).toBe(429);
    expect(r.headers['retry-after']).toBe('7');
  });

  it('the larger window times out: 504 timeout, not a 502', async () => {
    const { gw, mocks } = await route([
      SMALL,
      {
        provider: 'large',
        window: 128_000,
        timeouts: { first_byte_ms: 300 },
        answer: () => {
          /* never answers */
        },
      },
    ]);
    const r = await postChat(gw, ASK);
    expect(counts(mocks)).toEqual([1, 1]);
    expect(r.status, r.text).toBe(504);
    expect((r.json.error as Json).type).toBe('timeout');
  });

  it('cost strategy ranks the larger window first and it fails: a 502 as in the other order, not “shorten your prompt”', async () => {
    const { gw, mocks } = await route(
      [
        { ...SMALL, price: { input_per_mtok: 10, output_per_mtok: 10 } },
        {
          provider: 'large',
          window: 128_000,
          price: { input_per_mtok: 0.1, output_per_mtok: 0.1 },
          answer: (_b, res) => fail500(res),
        },
      ],
      {},
      'cost',
    );
    const r = await postChat(gw, ASK);
    expect(counts(mocks)).toEqual([1, 1]);
    // The larger window was tried first: its failure, not the smaller one's refusal, is what the client must know.
    expect(r.status, r.text).toBe(502);
    expect((r.json.error as Json).code).not.toBe('context_length_exceeded');
  });

  it('the larger window refuses as too long too: its own 400 (its window) is the answer', async () => {
    const { gw, mocks } = await route([SMALL, MID]);
    const r = await postChat(gw, ASK);
    expect(r.status, r.text).toBe(400);
    expect(counts(mocks)).toEqual([1, 1]);
    expect(r.json.error).toMatchObject({ code: 'context_length_exceeded' });
    expect(String((r.json.error as Json).message)).toContain('32768');
    expect(r.headers['x-router-trail']).toBe('small/m=context_length_exceeded,mid/m=context_length_exceeded');
  });

  it('a chain of ever-larger windows is walked to the one that fits, each refusal counted once', async () => {
    const { gw, mocks } = await route([SMALL, MID, large('the largest')]);
    const r = await postChat(gw, ASK);
    expect(r.status, r.text).toBe(200);
    expect(content(r)).toBe('the largest');
    expect(counts(mocks)).toEqual([1, 1, 1]);
    expect(r.headers['x-router-attempts']).toBe('3');
    const samples = await scrape(gw.url);
    for (const from of ['small', 'mid'])
      expect(
        value(samples, 'llm_router_failovers_total', {
          route: 'r',
          from_provider: from,
          reason: 'context_length_exceeded',
        }),
      ).toBe(1);
  });
});

describe('a refusal naming both max_tokens and the window', () => {
  const VLLM_BOTH =
    "'max_tokens' or 'max_completion_tokens' is too large: 4000. This model's maximum context length is 4096 tokens and your request has 200 input tokens (4000 > 4096 - 200).";

  it('vLLM: moves to the larger window with the client’s max_tokens intact, no refit of the small one', async () => {
    const { gw, mocks } = await route([
      {
        provider: 'local',
        answer: (_b, res) =>
          sendJson(res, 400, {
            object: 'error',
            message: VLLM_BOTH,
            type: 'BadRequestError',
            param: null,
            code: 400,
          }),
      },
      large('all 4000 allowed'),
    ]);
    const r = await postChat(gw, { ...ASK, max_tokens: 4000 });
    expect(r.status, r.text).toBe(200);
    expect(content(r)).toBe('all 4000 allowed');
    expect(counts(mocks)).toEqual([1, 1]);
    expect(mocks[1]!.bodies[0]!.max_tokens).toBe(4000);
    // A later request to the small one alone is sent as the client wrote it (nothing learned as a cap).
    const pinned = await postChat(
      gw,
      { ...ASK, max_tokens: 4000 },
      { headers: { 'x-router-provider': 'local' } },
    );
    expect(pinned.status).toBe(400);
    expect((pinned.json.error as Json).code).toBe('context_length_exceeded');
    expect(mocks[0]!.bodies.map((b) => b.max_tokens)).toEqual([4000, 4000]);
  });
});

describe('hostile refusals', () => {
  it('a window of 0, of 31 digits, or a megabyte of digits: no crash, no loop, each upstream called once', async () => {
    const messages = [
      "This model's maximum context length is 0 tokens.",
      `This model's maximum context length is ${'1'.repeat(31)} tokens.`,
      `This model's maximum context length is ${'9'.repeat(1_000_000)} tokens.`,
    ];
    for (const message of messages) {
      const { gw, mocks } = await route([
        { provider: 'local', answer: (_b, res) => refuseAsOpenAI(res, message, 'messages', null) },
        { provider: 'twin', answer: (_b, res) => refuseAsOpenAI(res, message, 'messages', null) },
        large('large'),
      ]);
      const r = await postChat(gw, ASK);
      // No window worth trusting is stated: the refusal is relayed (or a larger one answers), never a loop.
      expect([200, 400]).toContain(r.status);
      for (const c of counts(mocks)) expect(c).toBeLessThanOrEqual(1);
      const health = await postChat(gw, ASK, { headers: { 'x-router-provider': 'large' } });
      expect(health.status).toBe(200);
    }
  });
});
