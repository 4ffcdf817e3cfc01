/**
 * Usage and cost as a FinOps user reconciles them against the providers' invoices (SPEC §5
 * llm_router_tokens_total / llm_router_cost_usd_total; README "Metrics", `price`, `cached_input_per_mtok`):
 *
 * - the tokens counted, the dollars counted and the request line's promptTokens / completionTokens / costUsd
 *   are the upstream's own usage, each kind of token at its own rate: OpenAI's cached prompt tokens at
 *   `cached_input_per_mtok` (the input price when unset), reasoning and audio tokens once (they are inside
 *   completion_tokens / prompt_tokens already); Anthropic's cache reads at the cached rate and its cache
 *   writes at the rate Anthropic bills them (1.25x input for the 5-minute cache, 2x for the 1-hour one),
 *   its input_tokens (which exclude both) added to them for the prompt;
 * - what the client sees as `usage` (JSON, and the stream's last chunk when it asked `include_usage`) is the
 *   upstream's, translated faithfully (total = prompt + completion), and no usage chunk comes when it did not
 *   ask;
 * - a stream whose usage the upstream would report is counted from that report, not from the gateway's
 *   estimate, when the client did not ask for usage and when the stream was cut or left mid-way (the counts
 *   the upstream already gave, such as Anthropic's message_start input, are the ones billed);
 * - a failed attempt before any content costs nothing, embeddings are prompt tokens only, an answer without
 *   usage is estimated, and many tiny requests add up without visible drift.
 */
import type { ServerResponse } from 'node:http';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { chunkFrame, fail500, sendJson, startMock, type Received } from '../helpers/mock-upstream.js';
import { scrape, select, type Sample } from '../helpers/prom-text.js';
import { sseEvents } from '../helpers/sim-wire.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;

const MSGS = [{ role: 'user', content: 'Summarise the attached contract.' }];

/** gpt-4o's list prices, with and without a cached-input price configured. */
const GPT = { input_per_mtok: 2.5, output_per_mtok: 10, cached_input_per_mtok: 1.25 };
const GPT_NO_CACHE = { input_per_mtok: 2.5, output_per_mtok: 10 };
/** Claude Sonnet 4.5's list prices (cache reads at 0.1x input). */
const CLAUDE = { input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3 };
/** gpt-4o-mini's list prices. */
const MINI = { input_per_mtok: 0.15, output_per_mtok: 0.6 };

// ------------------------------------------------------------------------------------------------------------
// Mock upstreams
// ------------------------------------------------------------------------------------------------------------

/** An OpenAI usage object as gpt-4o reports it with a cache hit, reasoning and audio details. */
const OPENAI_USAGE = {
  prompt_tokens: 2000,
  completion_tokens: 300,
  total_tokens: 2300,
  prompt_tokens_details: { cached_tokens: 1536, audio_tokens: 100 },
  completion_tokens_details: {
    reasoning_tokens: 120,
    audio_tokens: 40,
    accepted_prediction_tokens: 0,
    rejected_prediction_tokens: 0,
  },
};

/**
 * OpenAI as it is: a JSON answer with `usage`; a stream whose usage comes only when the request asked for
 * it (`stream_options.include_usage`: `"usage": null` on every chunk, then a `choices: []` chunk with it).
 */
function openAiLike(usage: Json = OPENAI_USAGE, text = 'The contract says three things.') {
  return (req: Received, res: ServerResponse): void => {
    const body = req.body;
    if (body.stream !== true) {
      sendJson(res, 200, {
        id: 'chatcmpl-usage',
        object: 'chat.completion',
        created: 1,
        model: String(body.model),
        choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }],
        usage,
        service_tier: 'default',
        system_fingerprint: 'fp_1',
      });
      return;
    }
    const asked = (body.stream_options as { include_usage?: unknown } | undefined)?.include_usage === true;
    const frame = (choices: unknown[], u?: unknown): string =>
      `data: ${JSON.stringify({
        id: 'chatcmpl-usage',
        object: 'chat.completion.chunk',
        created: 1,
        model: String(body.model),
        choices,
        ...(asked ? { usage: u ?? null } : {}),
      })}\n\n`;
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    let out = frame([{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }]);
    for (const word of text.split(' '))
      out += frame([{ index: 0, delta: { content: `${word} ` }, finish_reason: null }]);
    out += frame([{ index: 0, delta: {}, finish_reason: 'stop' }]);
    if (asked) out += frame([], usage);
    res.end(`${out}data: [DONE]\n\n`);
  };
}

function anthropicFrame(e: Json): string {
  return `event: ${String(e.type)}\ndata: ${JSON.stringify(e)}\n\n`;
}

function messageStart(usage: Json): Json {
  return {
    type: 'message_start',
    message: {
      id: 'msg_01usage',
      type: 'message',
      role: 'assistant',
      model: 'claude-sonnet-4-5-20250929',
      content: [],
      stop_reason: null,
      stop_sequence: null,
      usage,
    },
  };
}

const blockStart = { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } };
const textDelta = (text: string): Json => ({
  type: 'content_block_delta',
  index: 0,
  delta: { type: 'text_delta', text },
});

/** Anthropic's usage with a cache hit and a cache write (input_tokens excludes both). */
const ANTHROPIC_USAGE = {
  input_tokens: 5,
  cache_creation_input_tokens: 100,
  cache_read_input_tokens: 900,
  cache_creation: { ephemeral_5m_input_tokens: 100, ephemeral_1h_input_tokens: 0 },
  output_tokens: 40,
  service_tier: 'standard',
};

/** Anthropic as it is: JSON with its usage, or a stream with the input counts in message_start, output in message_delta. */
function anthropicLike(usage: Json = ANTHROPIC_USAGE) {
  return (req: Received, res: ServerResponse): void => {
    if (req.body.stream !== true) {
      sendJson(res, 200, {
        id: 'msg_01usage',
        type: 'message',
        role: 'assistant',
        model: 'claude-sonnet-4-5-20250929',
        content: [{ type: 'text', text: 'The contract says three things.' }],
        stop_reason: 'end_turn',
        stop_sequence: null,
        usage,
      });
      return;
    }
    const { output_tokens: output, ...input } = usage;
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end(
      [
        messageStart({ ...input, output_tokens: 1 }),
        blockStart,
        { type: 'ping' },
        textDelta('The contract '),
        textDelta('says three things.'),
        { type: 'content_block_stop', index: 0 },
        {
          type: 'message_delta',
          delta: { stop_reason: 'end_turn', stop_sequence: null },
          usage: { output_tokens: output },
        },
        { type: 'message_stop' },
      ]
        .map(anthropicFrame)
        .join(''),
    );
  };
}

// ------------------------------------------------------------------------------------------------------------
// Gateway, client, metrics and lines
// ------------------------------------------------------------------------------------------------------------

const FAST_TIMEOUTS = { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 2000, total_ms: 5000 };

interface Setup {
  readonly gw: TestGateway;
  /** The OpenAI-kind upstream, with what it received. */
  readonly openai: { readonly received: readonly Received[] };
}

/** A gateway with an OpenAI provider `oa` (gpt-4o priced with and without a cached price) and an Anthropic one `an`. */
async function gatewayOver(
  oa: (req: Received, res: ServerResponse, n: number) => void,
  an: (req: Received, res: ServerResponse, n: number) => void,
  extra: Json = {},
): Promise<Setup> {
  const openai = track(await startMock(oa));
  const anthropic = track(await startMock(an));
  const gw = track(
    await startGateway({
      providers: [
        {
          name: 'oa',
          kind: 'openai',
          base_url: `${openai.url}/v1`,
          api_key: 'sk-oa-test-0000',
          timeouts: FAST_TIMEOUTS,
          models: [
            { name: 'gpt-4o', price: GPT },
            { name: 'gpt-4o-nocache', price: GPT_NO_CACHE },
          ],
        },
        {
          name: 'an',
          kind: 'anthropic',
          base_url: anthropic.url,
          api_key: 'sk-ant-test-0000',
          timeouts: FAST_TIMEOUTS,
          models: [
            { name: 'claude-sonnet-4-5', price: CLAUDE },
            { name: 'claude-sonnet-4-5-noprice', price: { input_per_mtok: 3, output_per_mtok: 15 } },
          ],
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['oa/gpt-4o'] } },
      ...extra,
    }),
  );
  return { gw, openai };
}

let ids = 0;

/** POSTs a chat request with its own x-request-id; returns the status, text and that id. */
async function chat(
  gw: TestGateway,
  body: Json,
): Promise<{ status: number; text: string; json: Json; id: string }> {
  const id = `usage-${++ids}`;
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-request-id': id },
    body: JSON.stringify({ messages: MSGS, ...body }),
  });
  const text = await res.body.text();
  let json: Json = {};
  try {
    json = JSON.parse(text) as Json;
  } catch {
    /* a stream */
  }
  return { status: res.statusCode, text, json, id };
}

/** The request line of `id`, once it is written. */
async function lineOf(gw: TestGateway, id: string): Promise<Json> {
  await until(`request line ${id}`, () => gw.logs.some((l) => l.msg === 'request' && l.reqId === id));
  return gw.logs.find((l) => l.msg === 'request' && l.reqId === id)!;
}

function sumOf(samples: readonly Sample[], name: string, labels: Record<string, string>): number {
  return select(samples, name, labels).reduce((a, s) => a + s.value, 0);
}

interface Counted {
  prompt: number;
  completion: number;
  cost: number;
}

async function counted(gw: TestGateway, provider: string, model: string): Promise<Counted> {
  const m = await scrape(gw.url);
  return {
    prompt: sumOf(m, 'llm_router_tokens_total', { provider, model, kind: 'prompt' }),
    completion: sumOf(m, 'llm_router_tokens_total', { provider, model, kind: 'completion' }),
    cost: sumOf(m, 'llm_router_cost_usd_total', { provider, model }),
  };
}

/** Dollars for these tokens at these per-million prices. */
const usd = (tokensTimesPrice: number): number => tokensTimesPrice / 1e6;

/** The `data:` payloads of an SSE body, parsed (the `[DONE]` left out). */
function chunksOf(text: string): Json[] {
  return sseEvents(text)
    .filter((e) => e.data !== '' && e.data !== '[DONE]')
    .map((e) => JSON.parse(e.data) as Json);
}

/** A chunk that carries usage (OpenAI's last chunk under include_usage). */
const carriesUsage = (c: Json): boolean => c.usage !== undefined && c.usage !== null;

/** A stream request asking for usage (`stream_options.include_usage`). */
const STREAM_WITH_USAGE = { stream: true, stream_options: { include_usage: true } };

/**
 * A gateway over `oa` and `an` (openAiLike() and anthropicLike() unless given), `body` chatted to it and
 * answered 200.
 */
async function chatOk(
  body: Json,
  oa: (req: Received, res: ServerResponse) => void = openAiLike(),
  an: (req: Received, res: ServerResponse) => void = anthropicLike(),
) {
  const setup = await gatewayOver(oa, an);
  const r = await chat(setup.gw, body);
  expect(r.status).toBe(200);
  return { ...setup, r };
}

/** The request line of `id`, checked: its token counts when `tokens` is given, its costUsd when `cost` is. */
async function expectLine(
  gw: TestGateway,
  id: string,
  tokens?: { promptTokens: number; completionTokens: number },
  cost?: number,
): Promise<Json> {
  const line = await lineOf(gw, id);
  if (tokens !== undefined) expect(line).toMatchObject(tokens);
  if (cost !== undefined) expect(line.costUsd as number).toBeCloseTo(cost, 12);
  return line;
}

/** The counters of provider/model, checked: the tokens in `tokens` when given, the dollars when `cost` is. */
async function expectCounted(
  gw: TestGateway,
  provider: string,
  model: string,
  tokens?: Partial<Omit<Counted, 'cost'>>,
  cost?: number,
): Promise<Counted> {
  const c = await counted(gw, provider, model);
  if (tokens !== undefined) expect(c).toMatchObject(tokens);
  if (cost !== undefined) expect(c.cost).toBeCloseTo(cost, 12);
  return c;
}

/** The usage of a stream's one usage chunk, which must be its last chunk. */
function lastChunkUsage(text: string): unknown {
  const chunks = chunksOf(text);
  const withUsage = chunks.filter(carriesUsage);
  expect(withUsage).toHaveLength(1);
  expect(chunks[chunks.length - 1]).toBe(withUsage[0]);
  return withUsage[0]!.usage;
}

/** OpenAI's last stream chunk under include_usage: no choices, `usage`. */
const usageFrame = (model: unknown, usage: Json): string =>
  `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model, choices: [], usage })}\n\n`;

/** An OpenAI-kind provider block at `url` with the fast timeouts. */
function openaiProvider(name: string, url: string, models: Json[]): Json {
  return { name, kind: 'openai', base_url: `${url}/v1`, timeouts: FAST_TIMEOUTS, models };
}

/** A gateway over these providers and routes. */
async function gatewayWith(providers: Json[], routes: Json): Promise<TestGateway> {
  return track(await startGateway({ providers, routes }));
}

// ------------------------------------------------------------------------------------------------------------
// OpenAI usage
// ------------------------------------------------------------------------------------------------------------

describe('OpenAI usage: counted and priced as the invoice bills it', () => {
  it('JSON: cached prompt tokens at cached_input_per_mtok; reasoning and audio tokens counted once; usage relayed as sent', async () => {
    const { gw, r } = await chatOk({ model: 'oa/gpt-4o' });
    expect(r.json.usage).toEqual(OPENAI_USAGE);

    // 464 uncached prompt tokens at 2.5, 1536 cached at 1.25, 300 completion (120 of them reasoning) at 10.
    const cost = usd(464 * 2.5 + 1536 * 1.25 + 300 * 10);
    await expectLine(gw, r.id, { promptTokens: 2000, completionTokens: 300 }, cost);
    await expectCounted(gw, 'oa', 'gpt-4o', { prompt: 2000, completion: 300 }, cost);
  });

  it('JSON: without a cached price, cached prompt tokens are charged at the input price', async () => {
    const { gw, r } = await chatOk({ model: 'oa/gpt-4o-nocache' });
    const cost = usd(2000 * 2.5 + 300 * 10);
    await expectLine(gw, r.id, undefined, cost);
    await expectCounted(gw, 'oa', 'gpt-4o-nocache', { prompt: 2000, completion: 300 }, cost);
  });

  it('stream with include_usage: the last chunk is the upstream usage, and the counters and the line are that usage', async () => {
    const { gw, r } = await chatOk({ model: 'oa/gpt-4o', ...STREAM_WITH_USAGE });
    expect(lastChunkUsage(r.text)).toEqual(OPENAI_USAGE);

    const cost = usd(464 * 2.5 + 1536 * 1.25 + 300 * 10);
    await expectLine(gw, r.id, { promptTokens: 2000, completionTokens: 300 }, cost);
    await expectCounted(gw, 'oa', 'gpt-4o', { prompt: 2000, completion: 300 }, cost);
  });

  it('stream without include_usage: the upstream gets the body as the client wrote it, and the answer is counted from its text (README)', async () => {
    // The gateway does not add stream_options to a client's body (unknown and known fields alike go as
    // sent): a stream whose client did not ask for usage is counted from its text, marked estimated.
    const { gw, openai, r } = await chatOk({ model: 'oa/gpt-4o', stream: true });
    expect(openai.received[0]!.body.stream_options).toBeUndefined();
    const line = await lineOf(gw, r.id);
    expect(line.completionTokens as number).toBeGreaterThan(0);
    expect(line.promptTokens as number).toBeGreaterThan(0);
    expect(line.promptTokens as number).toBeLessThan(2000);
  });

  it('stream without include_usage: the client gets no usage chunk and no usage field, whatever the gateway asked upstream', async () => {
    const { r } = await chatOk({ model: 'oa/gpt-4o', stream: true });
    expect(r.text.endsWith('data: [DONE]\n\n')).toBe(true);
    const chunks = chunksOf(r.text);
    expect(chunks.length).toBeGreaterThan(2);
    for (const c of chunks) {
      expect(c.usage ?? null).toBeNull();
      expect((c.choices as unknown[]).length).toBe(1); // no `choices: []` usage chunk a client indexes into
    }
  });

  it('a stream whose answer is all reasoning (finish_reason length, no content) is still billed its reasoning tokens', async () => {
    const usage = {
      prompt_tokens: 50,
      completion_tokens: 512,
      total_tokens: 562,
      completion_tokens_details: { reasoning_tokens: 512 },
    };
    const { gw, r } = await chatOk({ model: 'oa/gpt-4o', ...STREAM_WITH_USAGE }, (req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const m = req.body.model;
      res.end(
        `${chunkFrame(m, { role: 'assistant', content: '' })}${chunkFrame(m, {}, 'length')}${usageFrame(m, usage)}data: [DONE]\n\n`,
      );
    });
    await expectLine(gw, r.id, { promptTokens: 50, completionTokens: 512 });
    await expectCounted(gw, 'oa', 'gpt-4o', { prompt: 50, completion: 512 }, usd(50 * 2.5 + 512 * 10));
  });
});

// ------------------------------------------------------------------------------------------------------------
// Anthropic usage
// ------------------------------------------------------------------------------------------------------------

describe('Anthropic usage: translated, counted and priced as Anthropic bills it', () => {
  it('JSON: prompt_tokens = input + cache writes + cache reads, cached_tokens = reads, total = prompt + completion; counters agree', async () => {
    const { gw, r } = await chatOk({ model: 'an/claude-sonnet-4-5' });
    const u = r.json.usage as Json;
    expect(u).toMatchObject({
      prompt_tokens: 1005,
      completion_tokens: 40,
      total_tokens: 1045,
      prompt_tokens_details: { cached_tokens: 900 },
    });
    await expectLine(gw, r.id, { promptTokens: 1005, completionTokens: 40 });
    await expectCounted(gw, 'an', 'claude-sonnet-4-5', { prompt: 1005, completion: 40 });
  });

  it('JSON: cache reads at the cached price, cache writes at the price Anthropic bills them (1.25x input for 5 minutes)', async () => {
    // Anthropic's invoice for this answer: 5 input x $3 + 100 cache-write (5m) x $3.75 + 900 cache-read x
    // $0.30 + 40 output x $15 = $0.00126. Charging cache writes at the plain input price undercounts every
    // prompt-caching workload's writes by a fifth (by half for the 1-hour cache).
    const { gw, r } = await chatOk({ model: 'an/claude-sonnet-4-5' });
    const cost = usd(5 * 3 + 100 * 3 * 1.25 + 900 * 0.3 + 40 * 15);
    await expectLine(gw, r.id, undefined, cost);
    await expectCounted(gw, 'an', 'claude-sonnet-4-5', undefined, cost);
  });

  it('JSON: 1-hour cache writes at 2x input', async () => {
    const usage = {
      input_tokens: 10,
      cache_creation_input_tokens: 2000,
      cache_read_input_tokens: 0,
      cache_creation: { ephemeral_5m_input_tokens: 0, ephemeral_1h_input_tokens: 2000 },
      output_tokens: 20,
    };
    const { gw, r } = await chatOk({ model: 'an/claude-sonnet-4-5' }, openAiLike(), anthropicLike(usage));
    expect((r.json.usage as Json).prompt_tokens).toBe(2010);
    await expectLine(gw, r.id, undefined, usd(10 * 3 + 2000 * 3 * 2 + 20 * 15));
  });

  it('JSON without a cached price: cache reads at a tenth of the input price, as Anthropic bills them (README), counts unchanged', async () => {
    const usage = { input_tokens: 5, cache_read_input_tokens: 900, output_tokens: 40 };
    const { gw, r } = await chatOk(
      { model: 'an/claude-sonnet-4-5-noprice' },
      openAiLike(),
      anthropicLike(usage),
    );
    const cost = usd(5 * 3 + 900 * 0.3 + 40 * 15);
    await expectLine(gw, r.id, { promptTokens: 905, completionTokens: 40 }, cost);
  });

  it('stream: input counts from message_start and output from message_delta make one usage chunk (when asked), the counters and the cost', async () => {
    const usage = { input_tokens: 12, cache_read_input_tokens: 3000, output_tokens: 9 };
    const { gw, r } = await chatOk(
      { model: 'an/claude-sonnet-4-5', ...STREAM_WITH_USAGE },
      openAiLike(),
      anthropicLike(usage),
    );
    expect(lastChunkUsage(r.text)).toMatchObject({
      prompt_tokens: 3012,
      completion_tokens: 9,
      total_tokens: 3021,
      prompt_tokens_details: { cached_tokens: 3000 },
    });
    const cost = usd(12 * 3 + 3000 * 0.3 + 9 * 15);
    await expectLine(gw, r.id, { promptTokens: 3012, completionTokens: 9 }, cost);
    await expectCounted(gw, 'an', 'claude-sonnet-4-5', { prompt: 3012, completion: 9 }, cost);

    // Not asked: no usage chunk, the same counts.
    const plain = await chat(gw, { model: 'an/claude-sonnet-4-5', stream: true });
    expect(chunksOf(plain.text).some(carriesUsage)).toBe(false);
    await expectLine(gw, plain.id, { promptTokens: 3012, completionTokens: 9 });
  });
});

// ------------------------------------------------------------------------------------------------------------
// Streams that do not finish
// ------------------------------------------------------------------------------------------------------------

/** An Anthropic stream that reports its input (mostly a cache read), relays some text, then `then` happens. */
function anthropicCut(then: 'reset' | 'hang') {
  return (_req: Received, res: ServerResponse): void => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(
      [
        messageStart({
          input_tokens: 40,
          cache_creation_input_tokens: 0,
          cache_read_input_tokens: 3000,
          output_tokens: 1,
        }),
        blockStart,
        textDelta('The contract '),
        textDelta('says '),
      ]
        .map(anthropicFrame)
        .join(''),
    );
    if (then === 'reset') setTimeout(() => res.destroy(), 60);
    else res.on('close', () => res.destroy());
  };
}

describe('a stream that does not finish is billed what the upstream said it read', () => {
  it('cut after content (on_stream_failure terminate): prompt = the input message_start reported, cache read at its price', async () => {
    const { gw, r } = await chatOk(
      { model: 'an/claude-sonnet-4-5', stream: true },
      openAiLike(),
      anthropicCut('reset'),
    );
    expect(r.text).toContain('stream_interrupted');
    const line = await lineOf(gw, r.id);
    expect(line.status).toBe(200);
    const completion = line.completionTokens as number;
    expect(completion).toBeGreaterThan(0); // what was relayed is paid for
    // Anthropic bills the 3,040 prompt tokens it read (3,000 from its cache) however the stream ended.
    expect(line.promptTokens).toBe(3040);
    expect(line.costUsd as number).toBeCloseTo(usd(40 * 3 + 3000 * 0.3 + completion * 15), 12);
    await expectCounted(gw, 'an', 'claude-sonnet-4-5', { prompt: 3040 });
  });

  it('a stream whose usage was relayed to the client, then reset before [DONE]: the line bills that usage', async () => {
    // The client holds a usage chunk saying 2,000 prompt tokens; the gateway's own accounting of the same
    // request must not say 8.
    const usage = { prompt_tokens: 2000, completion_tokens: 3, total_tokens: 2003 };
    const { gw, r } = await chatOk({ model: 'oa/gpt-4o-nocache', ...STREAM_WITH_USAGE }, (req, res) => {
      const m = req.body.model;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(
        `${chunkFrame(m, { role: 'assistant', content: '' })}${chunkFrame(m, { content: 'one two three' })}${chunkFrame(m, {}, 'stop')}${usageFrame(m, usage)}`,
      );
      setTimeout(() => res.destroy(), 60);
    });
    const shown = chunksOf(r.text).find(carriesUsage);
    expect(shown?.usage).toEqual(usage);
    const line = await lineOf(gw, r.id);
    expect({ prompt: line.promptTokens, completion: line.completionTokens }).toEqual({
      prompt: 2000,
      completion: 3,
    });
    await expectCounted(gw, 'oa', 'gpt-4o-nocache', undefined, usd(2000 * 2.5 + 3 * 10));
  });

  it('client leaves mid-stream: its 200 line bills the input message_start reported', async () => {
    const { gw } = await gatewayOver(openAiLike(), anthropicCut('hang'));
    const id = `usage-abort-${++ids}`;
    const ac = new AbortController();
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': id },
      body: JSON.stringify({ model: 'an/claude-sonnet-4-5', messages: MSGS, stream: true }),
      signal: ac.signal,
    });
    expect(res.statusCode).toBe(200);
    let seen = '';
    try {
      for await (const part of res.body) {
        seen += (part as Buffer).toString('utf8');
        if (seen.includes('says')) ac.abort();
      }
    } catch {
      /* aborted */
    }
    expect(seen).toContain('says');
    const line = await lineOf(gw, id);
    expect(line.status).toBe(200);
    expect(line.completionTokens as number).toBeGreaterThan(0);
    expect(line.promptTokens).toBe(3040);
  });
});

// ------------------------------------------------------------------------------------------------------------
// Failover, embeddings, no usage, precision
// ------------------------------------------------------------------------------------------------------------

describe('who pays what across failover, embeddings and estimates', () => {
  it('the LLM router call with no usage is estimated like any answer: its completion is not free', async () => {
    // README: tokens are "estimated when it reports none"; a chat answer without usage is counted from its text.
    const routerMock = track(
      await startMock((req, res) => {
        sendJson(res, 200, {
          id: 'r',
          object: 'chat.completion',
          created: 1,
          model: String(req.body.model),
          choices: [
            {
              index: 0,
              message: {
                role: 'assistant',
                content: '{"tier":"deep","reason":"a long legal analysis is asked for"}',
              },
              finish_reason: 'stop',
            },
          ],
        });
      }),
    );
    const tierMock = track(await startMock(openAiLike()));
    const gw = await gatewayWith(
      [
        openaiProvider('router', routerMock.url, [{ name: 'gpt-4o-mini', price: MINI }]),
        openaiProvider('work', tierMock.url, [
          { name: 'gpt-4o', price: GPT },
          { name: 'gpt-4o-b', price: GPT },
        ]),
      ],
      {
        auto: {
          strategy: 'priority',
          tiers: { fast: ['router/gpt-4o-mini'], balanced: ['work/gpt-4o-b'], deep: ['work/gpt-4o'] },
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 3000 },
        },
      },
    );
    const r = await chat(gw, { model: 'auto' });
    expect(r.status).toBe(200);
    const line = await lineOf(gw, r.id);
    expect(line.tier).toBe('deep');
    const c = await counted(gw, 'router', 'gpt-4o-mini');
    expect(c.prompt).toBeGreaterThan(0);
    expect(c.completion).toBeGreaterThan(0);
    expect(line.routerCostUsd as number).toBeCloseTo(usd(c.prompt * 0.15 + c.completion * 0.6), 15);
    expect(c.cost).toBeCloseTo(line.routerCostUsd as number, 15);
  });

  it('a 5xx before content costs nothing; the upstream that answered is billed its own usage', async () => {
    const bad = track(await startMock((_req, res) => fail500(res)));
    const good = track(await startMock(openAiLike()));
    const g = await gatewayWith(
      [
        openaiProvider('bad', bad.url, [{ name: 'gpt-4o', price: GPT }]),
        openaiProvider('good', good.url, [{ name: 'gpt-4o', price: GPT }]),
      ],
      { fo: { strategy: 'priority', targets: ['bad/gpt-4o', 'good/gpt-4o'] } },
    );
    for (const stream of [false, true]) {
      const r = await chat(g, {
        model: 'fo',
        stream,
        ...(stream ? { stream_options: { include_usage: true } } : {}),
      });
      expect(r.status).toBe(200);
      const line = await lineOf(g, r.id);
      expect(line).toMatchObject({
        upstream: 'good/gpt-4o',
        attempts: 2,
        promptTokens: 2000,
        completionTokens: 300,
      });
    }
    const b = await counted(g, 'bad', 'gpt-4o');
    expect(b).toEqual({ prompt: 0, completion: 0, cost: 0 });
    const cost = 2 * usd(464 * 2.5 + 1536 * 1.25 + 300 * 10);
    await expectCounted(g, 'good', 'gpt-4o', { prompt: 4000, completion: 600 }, cost);
  });

  it('embeddings: prompt tokens only, at the input price; total_tokens alone (Voyage) counts as prompt', async () => {
    const emb = track(
      await startMock((req, res) => {
        const voyage = req.body.model === 'voyage-3';
        sendJson(res, 200, {
          object: 'list',
          data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2, 0.3] }],
          model: String(req.body.model),
          usage: voyage ? { total_tokens: 70 } : { prompt_tokens: 123, total_tokens: 123 },
        });
      }),
    );
    const gw = await gatewayWith(
      [
        openaiProvider('emb', emb.url, [
          { name: 'text-embedding-3-small', capabilities: ['embeddings'], price: { input_per_mtok: 0.02 } },
          { name: 'voyage-3', capabilities: ['embeddings'], price: { input_per_mtok: 0.06 } },
        ]),
      ],
      { e: { strategy: 'priority', targets: ['emb/text-embedding-3-small'] } },
    );
    for (const model of ['e', 'emb/voyage-3']) {
      const res = await request(`${gw.url}/v1/embeddings`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-request-id': `emb-${model}` },
        body: JSON.stringify({ model, input: 'a contract clause' }),
      });
      expect(res.statusCode).toBe(200);
      await res.body.text();
    }
    const small = await lineOf(gw, 'emb-e');
    expect(small).toMatchObject({ promptTokens: 123, completionTokens: 0 });
    expect(small.costUsd as number).toBeCloseTo(usd(123 * 0.02), 15);
    const voyage = await lineOf(gw, 'emb-emb/voyage-3');
    expect(voyage).toMatchObject({ promptTokens: 70, completionTokens: 0 });
    const m = await scrape(gw.url);
    expect(sumOf(m, 'llm_router_tokens_total', { provider: 'emb', kind: 'prompt' })).toBe(193);
    expect(sumOf(m, 'llm_router_tokens_total', { provider: 'emb', kind: 'completion' })).toBe(0);
    expect(sumOf(m, 'llm_router_cost_usd_total', { provider: 'emb' })).toBeCloseTo(
      usd(123 * 0.02 + 70 * 0.06),
      15,
    );
  });

  it('an answer with no usage is estimated (prompt and completion above 0) and priced, not counted as free', async () => {
    const { gw, r } = await chatOk({ model: 'oa/gpt-4o' }, (req, res) => {
      sendJson(res, 200, {
        id: 'x',
        object: 'chat.completion',
        created: 1,
        model: String(req.body.model),
        choices: [
          {
            index: 0,
            message: { role: 'assistant', content: 'The contract says three things.' },
            finish_reason: 'stop',
          },
        ],
      });
    });
    expect(r.json.usage).toBeUndefined(); // nothing invented for the client
    const line = await lineOf(gw, r.id);
    const p = line.promptTokens as number;
    const k = line.completionTokens as number;
    expect(p).toBeGreaterThan(0);
    expect(k).toBeGreaterThan(0);
    expect(line.costUsd as number).toBeCloseTo(usd(p * 2.5 + k * 10), 12);
  });

  it('many one-token requests: each line is $0.00000015, the counter their sum without visible drift', async () => {
    const n = 40;
    const mock = track(
      await startMock(openAiLike({ prompt_tokens: 1, completion_tokens: 0, total_tokens: 1 })),
    );
    const g = await gatewayWith([openaiProvider('mini', mock.url, [{ name: 'gpt-4o-mini', price: MINI }])], {
      r: { strategy: 'priority', targets: ['mini/gpt-4o-mini'] },
    });
    const idsSent: string[] = [];
    for (let i = 0; i < n; i++) {
      const r = await chat(g, { model: 'r' });
      expect(r.status).toBe(200);
      idsSent.push(r.id);
    }
    for (const id of idsSent) expect((await lineOf(g, id)).costUsd).toBe(1.5e-7);
    const c = await counted(g, 'mini', 'gpt-4o-mini');
    expect(c.prompt).toBe(n);
    expect(Math.abs(c.cost - n * 1.5e-7)).toBeLessThan(1e-15);
  });
});
