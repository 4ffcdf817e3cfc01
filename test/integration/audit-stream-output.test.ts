/**
 * Audit: what the gateway WRITES to a streaming client. Its SSE must be indistinguishable from OpenAI's own
 * stream (chat.completion.chunk objects, `data: <json>\n\n` framing, `[DONE]` once and last, the usage chunk
 * with `choices: []` only when `stream_options.include_usage`), for both upstream dialects: an OpenAI-dialect
 * stream is relayed event for event (SPEC §2: "SSE relayed chunk by chunk"), an Anthropic stream is translated.
 * Expectations come from SPEC.md §2/§4, README.md and OpenAI's documented streaming format, not from src/.
 */
import type { ServerResponse } from 'node:http';
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';
import { jsonSchema, streamText, tool } from 'ai';
import OpenAI from 'openai';
import type { ChatCompletionChunk } from 'openai/resources/chat/completions';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { startMock, type MockHandler, type Received } from '../helpers/mock-upstream.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;

const hi = [{ role: 'user' as const, content: 'hi' }];
const SSE_HEAD = { 'content-type': 'text/event-stream; charset=utf-8' };
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

onlyLoopbackFetch();

// ---------------------------------------------------------------------------------------------
// Mocks

type Handler = MockHandler;
type Mock = { url: string; received: Received[] };

/** A mock upstream closed after the test. */
async function mock(handler: Handler): Promise<Mock> {
  return track(await startMock(handler));
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const OA_ID = 'chatcmpl-AuDiT0123456789';
const OA_MODEL = 'gpt-4o-2024-08-06';
/** A chunk as OpenAI writes it. */
const oa = (choices: Json[], extra: Json = {}): Json => ({
  id: OA_ID,
  object: 'chat.completion.chunk',
  created: 1741569952,
  model: OA_MODEL,
  service_tier: 'default',
  system_fingerprint: 'fp_audit',
  choices,
  ...extra,
});
const ch = (delta: Json, finish: string | null = null, index = 0): Json => ({
  index,
  delta,
  logprobs: null,
  finish_reason: finish,
});
const frame = (e: Json | string): string => `data: ${typeof e === 'string' ? e : JSON.stringify(e)}\n\n`;

/** OpenAI's text stream of `parts`, with `usage: null` on every chunk and a usage chunk when asked. */
function oaTextEvents(parts: readonly string[], includeUsage: boolean): Json[] {
  const u = includeUsage ? { usage: null } : {};
  return [
    oa([ch({ role: 'assistant', content: '', refusal: null })], u),
    ...parts.map((p) => oa([ch({ content: p })], u)),
    oa([ch({}, 'stop')], u),
    ...(includeUsage
      ? [
          oa([], {
            usage: {
              prompt_tokens: 8,
              completion_tokens: parts.length,
              total_tokens: 8 + parts.length,
              prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
              completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0 },
            },
          }),
        ]
      : []),
  ];
}

const includeUsage = (body: Json): boolean =>
  (body.stream_options as { include_usage?: boolean } | undefined)?.include_usage === true;

// Anthropic event builders
const aStart = (usage: Json = { input_tokens: 12, output_tokens: 1 }): Json => ({
  type: 'message_start',
  message: {
    id: 'msg_01AuditAuditAudit',
    type: 'message',
    role: 'assistant',
    model: 'claude-sonnet-4-5-20250929',
    content: [],
    stop_reason: null,
    stop_sequence: null,
    usage,
  },
});
const aBlock = (index: number, block: Json): Json => ({
  type: 'content_block_start',
  index,
  content_block: block,
});
const aText = (index: number, text: string): Json => ({
  type: 'content_block_delta',
  index,
  delta: { type: 'text_delta', text },
});
const aJson = (index: number, partial: string): Json => ({
  type: 'content_block_delta',
  index,
  delta: { type: 'input_json_delta', partial_json: partial },
});
const aStop = (index: number): Json => ({ type: 'content_block_stop', index });
const aDelta = (stop: string, usage: Json = { output_tokens: 6 }): Json => ({
  type: 'message_delta',
  delta: { stop_reason: stop, stop_sequence: null },
  usage,
});
const A_END: Json = { type: 'message_stop' };
const A_PING: Json = { type: 'ping' };
const aFrame = (e: Json): string => `event: ${String(e.type)}\ndata: ${JSON.stringify(e)}\n\n`;
const aSSE = (events: readonly Json[]): string => events.map(aFrame).join('');

function aMessage(content: Json[], stop: string, usage: Json = { input_tokens: 12, output_tokens: 6 }): Json {
  return {
    id: 'msg_01AuditAuditAudit',
    type: 'message',
    role: 'assistant',
    model: 'claude-sonnet-4-5-20250929',
    content,
    stop_reason: stop,
    stop_sequence: null,
    usage,
  };
}

const TEXT_PARTS = ['Hel', 'lo, ', 'wörld 🌍', '!'];
const aTextEvents = (parts: readonly string[] = TEXT_PARTS): Json[] => [
  aStart(),
  A_PING,
  aBlock(0, { type: 'text', text: '' }),
  ...parts.map((p) => aText(0, p)),
  aStop(0),
  aDelta('end_turn'),
  A_END,
];

const TOOLS = [
  {
    type: 'function' as const,
    function: {
      name: 'weather',
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
    },
  },
];
/** Text, then two parallel tool_use blocks (content indexes 1 and 2). */
const aToolEvents = (): Json[] => [
  aStart({ input_tokens: 40, output_tokens: 1 }),
  aBlock(0, { type: 'text', text: '' }),
  aText(0, 'Checking.'),
  aStop(0),
  aBlock(1, { type: 'tool_use', id: 'toolu_01A', name: 'weather', input: {} }),
  aJson(1, ''),
  aJson(1, '{"city":'),
  aJson(1, ' "Paris"}'),
  aStop(1),
  aBlock(2, { type: 'tool_use', id: 'toolu_02B', name: 'weather', input: {} }),
  aJson(2, '{"city": "Oslo"}'),
  aStop(2),
  aDelta('tool_use', { output_tokens: 30 }),
  A_END,
];
const aToolMessage = (): Json =>
  aMessage(
    [
      { type: 'text', text: 'Checking.' },
      { type: 'tool_use', id: 'toolu_01A', name: 'weather', input: { city: 'Paris' } },
      { type: 'tool_use', id: 'toolu_02B', name: 'weather', input: { city: 'Oslo' } },
    ],
    'tool_use',
    { input_tokens: 40, output_tokens: 30 },
  );

/** An Anthropic mock: JSON for `stream: false`, else `events` written in one go. */
const anthMock = (events: () => Json[], message: () => Json) =>
  mock((q, res) => {
    if (q.body.stream !== true) return json(res, 200, message());
    res.writeHead(200, SSE_HEAD);
    res.end(aSSE(events()));
  });

// ---------------------------------------------------------------------------------------------
// Gateway and raw reads

interface Setup {
  gw: TestGateway;
  baseURL: string;
  openai: OpenAI;
}

async function setup(
  m: Mock,
  kind: 'openai' | 'anthropic',
  opts: { timeouts?: Json; onStreamFailure?: string } = {},
): Promise<Setup> {
  const model = kind === 'anthropic' ? 'claude-sonnet-4-5' : 'gpt-4o';
  const gw = track(
    await startGateway({
      providers: [
        {
          name: 'p0',
          kind,
          base_url: kind === 'anthropic' ? m.url : `${m.url}/v1`,
          api_key: 'sk-audit-upstream',
          timeouts: {
            connect_ms: 2000,
            first_byte_ms: 3000,
            idle_ms: 3000,
            total_ms: 8000,
            ...opts.timeouts,
          },
          models: [{ name: model }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: [`p0/${model}`] } },
    }),
  );
  const baseURL = `${gw.url}/v1`;
  return { gw, baseURL, openai: new OpenAI({ baseURL, apiKey: 'k', maxRetries: 0 }) };
}

interface Raw {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  bytes: Buffer;
  text: string;
  /** Time of each received piece, ms from the request's start, with the text received so far. */
  pieces: { ms: number; soFar: string }[];
  headersMs: number;
  error: Error | undefined;
}

async function raw(url: string, body: Json): Promise<Raw> {
  const t0 = performance.now();
  const res = await request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer k' },
    body: JSON.stringify(body),
  });
  const headersMs = performance.now() - t0;
  const bufs: Buffer[] = [];
  const pieces: { ms: number; soFar: string }[] = [];
  let error: Error | undefined;
  try {
    for await (const c of res.body) {
      bufs.push(c as Buffer);
      pieces.push({ ms: performance.now() - t0, soFar: Buffer.concat(bufs).toString('utf8') });
    }
  } catch (err) {
    error = err as Error;
  }
  const bytes = Buffer.concat(bufs);
  return {
    status: res.statusCode,
    headers: res.headers,
    bytes,
    text: bytes.toString('utf8'),
    pieces,
    headersMs,
    error,
  };
}

const gwRaw = (s: Setup, body: Json) =>
  raw(`${s.gw.url}/v1/chat/completions`, { model: 'r', messages: hi, stream: true, ...body });

/** The SSE blocks as framed: each must be exactly one `data: ...` line; returns the data payloads. */
function framedData(text: string): string[] {
  expect(text.endsWith('\n\n'), 'the body ends with a blank line').toBe(true);
  const blocks = text.slice(0, -2).split('\n\n');
  for (const b of blocks) {
    expect(b, 'each event is one `data: ` line and nothing else').toMatch(/^data: [^\n]*$/);
  }
  return blocks.map((b) => b.slice(6));
}

/** The JSON chunks of a well-formed OpenAI stream (asserts `[DONE]` is last and only once). */
function chunksOf(text: string): Json[] {
  const data = framedData(text);
  expect(data.filter((d) => d === '[DONE]')).toHaveLength(1);
  expect(data.at(-1)).toBe('[DONE]');
  return data.slice(0, -1).map((d) => JSON.parse(d) as Json);
}

type Choice = { index: number; delta: Json; finish_reason: string | null };
const choicesOf = (c: Json): Choice[] => (c.choices as Choice[] | undefined) ?? [];

async function collect(stream: AsyncIterable<ChatCompletionChunk>): Promise<ChatCompletionChunk[]> {
  const out: ChatCompletionChunk[] = [];
  for await (const c of stream) out.push(c);
  return out;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e: unknown) => e,
  );
}

// ---------------------------------------------------------------------------------------------
// OpenAI-dialect upstream: relayed

describe('an OpenAI-dialect stream as the client receives it', () => {
  const oaMock = () =>
    mock((q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.end([...oaTextEvents(TEXT_PARTS, includeUsage(q.body)).map(frame), 'data: [DONE]\n\n'].join(''));
    });

  it('response head: 200, text/event-stream, no content-length, no BOM, body starts with "data: "', async () => {
    const s = await setup(await oaMock(), 'openai');
    const r = await gwRaw(s, {});
    expect(r.status).toBe(200);
    expect(String(r.headers['content-type'])).toMatch(/^text\/event-stream(;|$)/);
    expect(r.headers['content-length']).toBeUndefined();
    expect(r.headers['content-encoding']).toBeUndefined();
    expect(r.bytes.subarray(0, 3).equals(Buffer.from([0xef, 0xbb, 0xbf]))).toBe(false);
    expect(r.text.startsWith('data: {')).toBe(true);
    expect(r.error).toBeUndefined();
    chunksOf(r.text);
  });

  it('every event reaches the client byte-identical to what the same mock gives a direct call (with and without include_usage)', async () => {
    const m = await oaMock();
    const s = await setup(m, 'openai');
    for (const extra of [{}, { stream_options: { include_usage: true } }]) {
      const direct = await raw(`${m.url}/v1/chat/completions`, {
        model: 'gpt-4o',
        messages: hi,
        stream: true,
        ...extra,
      });
      const via = await gwRaw(s, extra);
      // SPEC §2: the SSE is relayed chunk by chunk; OpenAI's stream is what the client must see.
      expect(framedData(via.text)).toEqual(framedData(direct.text));
    }
  });

  it('the openai SDK: create() chunks, stream() events and finalChatCompletion() equal a direct call', async () => {
    const m = await oaMock();
    const s = await setup(m, 'openai');
    const direct = new OpenAI({ baseURL: `${m.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const args = { model: 'gpt-4o', messages: hi, stream_options: { include_usage: true } };
    const viaChunks = await collect(
      await s.openai.chat.completions.create({ ...args, model: 'r', stream: true }),
    );
    const dirChunks = await collect(await direct.chat.completions.create({ ...args, stream: true }));
    expect(viaChunks).toEqual(dirChunks);

    const events = async (c: OpenAI, model: string) => {
      const st = c.chat.completions.stream({ ...args, model });
      const seen: string[] = [];
      st.on('content.delta', (e) => seen.push(`delta:${e.delta}`));
      st.on('content.done', (e) => seen.push(`done:${e.content}`));
      st.on('chunk', () => seen.push('chunk'));
      const final = await st.finalChatCompletion();
      return { seen, final };
    };
    const a = await events(s.openai, 'r');
    const b = await events(direct, 'gpt-4o');
    expect(a.seen).toEqual(b.seen);
    expect(a.final).toEqual(b.final);
  });

  it('Vercel streamText: fullStream parts and textStream equal a direct call', async () => {
    const m = await oaMock();
    const s = await setup(m, 'openai');
    const run = async (baseURL: string, model: string) => {
      const st = streamText({
        model: createOpenAI({ baseURL, apiKey: 'k' }).chat(model),
        prompt: 'hi',
        maxRetries: 0,
      });
      const parts: Json[] = [];
      for await (const p of st.fullStream) parts.push(p as unknown as Json);
      const norm = JSON.parse(
        JSON.stringify(parts, (k, v: unknown) => (k === 'headers' || k === 'request' ? undefined : v)),
      ) as Json[];
      return { parts: norm, usage: await st.totalUsage, finish: await st.finishReason };
    };
    const via = await run(s.baseURL, 'r');
    const dir = await run(`${m.url}/v1`, 'gpt-4o');
    expect(via.parts.map((p) => p.type)).toEqual(dir.parts.map((p) => p.type));
    expect(via.parts).toEqual(dir.parts);
    expect(via.usage).toEqual(dir.usage);
    expect(via.finish).toBe('stop');
    expect(via.usage.outputTokens).toBe(TEXT_PARTS.length);

    const ts = streamText({
      model: createOpenAI({ baseURL: s.baseURL, apiKey: 'k' }).chat('r'),
      prompt: 'hi',
      maxRetries: 0,
    });
    const pieces: string[] = [];
    for await (const t of ts.textStream) pieces.push(t);
    expect(pieces).toEqual(TEXT_PARTS);
  });

  it('n: 2, interleaved: both choices relayed, one finish per index, [DONE] once after both', async () => {
    const m = await mock((_q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.end(
        [
          oa([ch({ role: 'assistant', content: '' }, null, 0)]),
          oa([ch({ role: 'assistant', content: '' }, null, 1)]),
          oa([ch({ content: 'A1' }, null, 0)]),
          oa([ch({ content: 'B1' }, null, 1)]),
          oa([ch({ content: 'A2' }, null, 0)]),
          oa([ch({}, 'stop', 0)]),
          oa([ch({ content: 'B2' }, null, 1)]),
          oa([ch({}, 'length', 1)]),
        ]
          .map(frame)
          .join('') + 'data: [DONE]\n\n',
      );
    });
    const s = await setup(m, 'openai');
    const r = await gwRaw(s, { n: 2 });
    const chunks = chunksOf(r.text);
    const text = (i: number) =>
      chunks
        .flatMap(choicesOf)
        .filter((c) => c.index === i)
        .map((c) => (c.delta.content as string | undefined) ?? '')
        .join('');
    expect([text(0), text(1)]).toEqual(['A1A2', 'B1B2']);
    const finishes = chunks.flatMap(choicesOf).filter((c) => c.finish_reason !== null);
    expect(finishes.map((c) => [c.index, c.finish_reason])).toEqual([
      [0, 'stop'],
      [1, 'length'],
    ]);
    const final = await s.openai.chat.completions
      .stream({ model: 'r', messages: hi, n: 2 })
      .finalChatCompletion();
    expect(final.choices.map((c) => [c.index, c.message.content, c.finish_reason])).toEqual([
      [0, 'A1A2', 'stop'],
      [1, 'B1B2', 'length'],
    ]);
  });

  it('each upstream event reaches the client when it is sent, not held for the next one', async () => {
    const m = await mock(async (_q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.write(frame(oa([ch({ role: 'assistant', content: '' })])) + frame(oa([ch({ content: 'first' })])));
      await sleep(400);
      res.write(frame(oa([ch({ content: 'second' })])));
      await sleep(400);
      res.end(frame(oa([ch({}, 'stop')])) + 'data: [DONE]\n\n');
    });
    const s = await setup(m, 'openai');
    const r = await gwRaw(s, {});
    const at = (needle: string) => r.pieces.find((p) => p.soFar.includes(needle))!.ms;
    expect(at('"second"') - at('"first"')).toBeGreaterThan(250);
    expect(at('[DONE]') - at('"second"')).toBeGreaterThan(250);
    expect(chunksOf(r.text)).toHaveLength(4);
  });

  it('upstream SSE comments (keep-alives) between chunks are not relayed as data events', async () => {
    const m = await mock(async (_q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.write(': OPENROUTER PROCESSING\n\n');
      res.write(frame(oa([ch({ role: 'assistant', content: '' })])));
      res.write(': keep-alive\n\n');
      res.write(frame(oa([ch({ content: 'x' })])));
      await sleep(20);
      res.write(': keep-alive\n\n');
      res.end(frame(oa([ch({}, 'stop')])) + 'data: [DONE]\n\n');
    });
    const s = await setup(m, 'openai');
    const r = await gwRaw(s, {});
    // Comment lines are invisible to SSE clients; what must hold is that every event is a chunk, then [DONE].
    const data = r.text
      .split('\n\n')
      .filter((b) => b !== '' && !b.startsWith(':'))
      .map((b) => b.replace(/^data: /, ''));
    expect(data.at(-1)).toBe('[DONE]');
    for (const d of data.slice(0, -1)) expect((JSON.parse(d) as Json).object).toBe('chat.completion.chunk');
    expect(data).toHaveLength(4);
  });
});

// ---------------------------------------------------------------------------------------------
// Anthropic upstream: translated

describe('a translated (Anthropic) stream has the shape of OpenAI’s', () => {
  it('framing, one stable id, object, integer created (seconds), model, role first, finish chunk, [DONE] once', async () => {
    const s = await setup(
      await anthMock(aTextEvents, () => aMessage([{ type: 'text', text: 'x' }], 'end_turn')),
      'anthropic',
    );
    const r = await gwRaw(s, {});
    expect(r.status).toBe(200);
    expect(String(r.headers['content-type'])).toMatch(/^text\/event-stream(;|$)/);
    expect(r.headers['content-length']).toBeUndefined();
    expect(r.error).toBeUndefined();
    const chunks = chunksOf(r.text);
    expect(chunks.length).toBeGreaterThanOrEqual(TEXT_PARTS.length + 1);
    const ids = new Set(chunks.map((c) => c.id));
    expect(ids.size).toBe(1);
    expect(typeof [...ids][0]).toBe('string');
    expect(String([...ids][0])).not.toBe('');
    const nowS = Math.floor(Date.now() / 1000);
    for (const c of chunks) {
      expect(c.object).toBe('chat.completion.chunk');
      expect(Number.isInteger(c.created)).toBe(true);
      expect(Math.abs((c.created as number) - nowS)).toBeLessThan(120);
      expect(typeof c.model).toBe('string');
      expect(c.model).toBe(chunks[0]!.model);
      expect(c.usage ?? null).toBeNull();
      const cs = choicesOf(c);
      expect(cs).toHaveLength(1);
      expect(cs[0]!.index).toBe(0);
      expect(cs[0]).toHaveProperty('finish_reason');
    }
    expect(new Set(chunks.map((c) => c.created)).size).toBe(1);
    const first = choicesOf(chunks[0]!)[0]!;
    expect(first.delta.role).toBe('assistant');
    // No chunk after the first carries a role (OpenAI sends it once).
    expect(chunks.slice(1).filter((c) => choicesOf(c)[0]!.delta.role !== undefined)).toEqual([]);
    const text = chunks.map((c) => (choicesOf(c)[0]!.delta.content as string | undefined) ?? '').join('');
    expect(text).toBe(TEXT_PARTS.join(''));
    const finishes = chunks.filter((c) => choicesOf(c)[0]!.finish_reason !== null);
    expect(finishes).toHaveLength(1);
    expect(finishes[0]).toBe(chunks.at(-1));
    expect(choicesOf(finishes[0]!)[0]!.finish_reason).toBe('stop');
    // Non-final chunks have finish_reason null (present), as OpenAI writes them.
    for (const c of chunks.slice(0, -1)) expect(choicesOf(c)[0]!.finish_reason).toBeNull();
  });

  it('the stream and the JSON answer name the same model', async () => {
    const s = await setup(
      await anthMock(aTextEvents, () => aMessage([{ type: 'text', text: 'x' }], 'end_turn')),
      'anthropic',
    );
    const chunks = chunksOf((await gwRaw(s, {})).text);
    const j = await s.openai.chat.completions.create({ model: 'r', messages: hi });
    expect(chunks[0]!.model).toBe(j.model);
  });

  it('pings are not relayed: a stream with pings between every event has the same chunks as one without', async () => {
    const withPings = () => aTextEvents().flatMap((e) => [e, A_PING]);
    const a = await setup(await anthMock(withPings, () => aMessage([], 'end_turn')), 'anthropic');
    const b = await setup(await anthMock(aTextEvents, () => aMessage([], 'end_turn')), 'anthropic');
    const strip = (cs: Json[]) => cs.map((c) => choicesOf(c));
    expect(strip(chunksOf((await gwRaw(a, {})).text))).toEqual(strip(chunksOf((await gwRaw(b, {})).text)));
  });

  it('include_usage: one usage chunk with choices: [] after the finish chunk, before [DONE]; none without it', async () => {
    const s = await setup(await anthMock(aTextEvents, () => aMessage([], 'end_turn')), 'anthropic');
    const chunks = chunksOf((await gwRaw(s, { stream_options: { include_usage: true } })).text);
    const withUsage = chunks.filter((c) => c.usage !== undefined && c.usage !== null);
    expect(withUsage).toHaveLength(1);
    expect(withUsage[0]).toBe(chunks.at(-1));
    expect(withUsage[0]!.choices).toEqual([]);
    expect(withUsage[0]!.id).toBe(chunks[0]!.id);
    expect(withUsage[0]!.object).toBe('chat.completion.chunk');
    expect(withUsage[0]!.usage).toMatchObject({ prompt_tokens: 12, completion_tokens: 6, total_tokens: 18 });
    expect(choicesOf(chunks.at(-2)!)[0]!.finish_reason).toBe('stop');

    const plain = chunksOf((await gwRaw(s, {})).text);
    expect(plain.filter((c) => c.usage !== undefined && c.usage !== null)).toEqual([]);
    expect(plain.filter((c) => choicesOf(c).length === 0)).toEqual([]);
  });

  it('tool calls: first delta has index, id, type, name and arguments ""; then index + argument fragments; indexes count tool calls', async () => {
    const s = await setup(await anthMock(aToolEvents, aToolMessage), 'anthropic');
    const chunks = chunksOf((await gwRaw(s, { tools: TOOLS })).text);
    type TC = { index: number; id?: string; type?: string; function?: { name?: string; arguments?: string } };
    const deltas = chunks.flatMap((c) => (choicesOf(c)[0]?.delta.tool_calls as TC[] | undefined) ?? []);
    const starts = deltas.filter((d) => d.id !== undefined);
    expect(starts).toEqual([
      { index: 0, id: 'toolu_01A', type: 'function', function: { name: 'weather', arguments: '' } },
      { index: 1, id: 'toolu_02B', type: 'function', function: { name: 'weather', arguments: '' } },
    ]);
    for (const d of deltas.filter((x) => x.id === undefined)) {
      expect(Object.keys(d).sort()).toEqual(['function', 'index']);
      expect(Object.keys(d.function!)).toEqual(['arguments']);
    }
    const args = (i: number) =>
      deltas
        .filter((d) => d.index === i)
        .map((d) => d.function?.arguments ?? '')
        .join('');
    expect(JSON.parse(args(0))).toEqual({ city: 'Paris' });
    expect(JSON.parse(args(1))).toEqual({ city: 'Oslo' });
    // Each tool-call chunk carries only tool_calls (no stray content: "" beside them).
    const last = chunks.at(-1)!;
    expect(choicesOf(last)[0]!.finish_reason).toBe('tool_calls');
    expect(choicesOf(last)[0]!.delta).toEqual({});
  });

  it('reasoning: reasoning_content string deltas before the content, then a normal finish', async () => {
    const events = (): Json[] => [
      aStart(),
      aBlock(0, { type: 'thinking', thinking: '', signature: '' }),
      { type: 'content_block_delta', index: 0, delta: { type: 'thinking_delta', thinking: 'Let me ' } },
      { type: 'content_block_delta', index: 0, delta: { type: 'thinking_delta', thinking: 'think.' } },
      { type: 'content_block_delta', index: 0, delta: { type: 'signature_delta', signature: 'EqQBsig==' } },
      aStop(0),
      aBlock(1, { type: 'text', text: '' }),
      aText(1, 'Four.'),
      aStop(1),
      aDelta('end_turn'),
      A_END,
    ];
    const s = await setup(await anthMock(events, () => aMessage([], 'end_turn')), 'anthropic');
    const chunks = chunksOf((await gwRaw(s, { reasoning_effort: 'low' })).text);
    const ds = chunks.map((c) => choicesOf(c)[0]?.delta ?? {});
    expect(ds[0]!.role).toBe('assistant');
    const reasoning = ds.filter((d) => typeof d.reasoning_content === 'string');
    expect(reasoning.map((d) => d.reasoning_content).join('')).toBe('Let me think.');
    const firstText = ds.findIndex((d) => typeof d.content === 'string' && d.content !== '');
    const lastReason = ds.findLastIndex(
      (d) => typeof d.reasoning_content === 'string' && d.reasoning_content !== '',
    );
    expect(lastReason).toBeLessThan(firstText);
    expect(ds.map((d) => (d.content as string | undefined) ?? '').join('')).toBe('Four.');
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
  });

  it('each Anthropic event reaches the client when it is sent, not held for the next one', async () => {
    const m = await mock(async (_q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.write(aSSE([aStart(), aBlock(0, { type: 'text', text: '' }), aText(0, 'first')]));
      await sleep(400);
      res.write(aFrame(aText(0, 'second')));
      await sleep(400);
      res.end(aSSE([aStop(0), aDelta('end_turn'), A_END]));
    });
    const s = await setup(m, 'anthropic');
    const r = await gwRaw(s, {});
    const at = (needle: string) => r.pieces.find((p) => p.soFar.includes(needle))!.ms;
    expect(at('"second"') - at('"first"')).toBeGreaterThan(250);
    expect(at('[DONE]') - at('"second"')).toBeGreaterThan(250);
  });

  it('headers are not sent before the first content delta (preamble held back, SPEC §2)', async () => {
    const m = await mock(async (_q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.write(aSSE([aStart(), A_PING, aBlock(0, { type: 'text', text: '' })]));
      await sleep(400);
      res.end(aSSE([aText(0, 'late'), aStop(0), aDelta('end_turn'), A_END]));
    });
    const s = await setup(m, 'anthropic');
    const r = await gwRaw(s, {});
    expect(r.headersMs).toBeGreaterThan(300);
    expect(chunksOf(r.text).length).toBeGreaterThan(1);
  });
});

describe('translated streams through each client equal the JSON answer', () => {
  it('openai SDK: stream().finalChatCompletion() and create() (JSON) give the same message, finish and usage', async () => {
    const s = await setup(await anthMock(aToolEvents, aToolMessage), 'anthropic');
    const args = { model: 'r', messages: hi, tools: TOOLS, stream_options: { include_usage: true } };
    const st = s.openai.chat.completions.stream(args);
    const evs: string[] = [];
    st.on('tool_calls.function.arguments.done', (e) => evs.push(`${e.index}:${e.name}:${e.arguments}`));
    const final = await st.finalChatCompletion();
    const { stream_options: _drop, ...jsonArgs } = args;
    const j = await s.openai.chat.completions.create(jsonArgs);
    // The helper adds `parsed: null`; the arguments' whitespace is the model's own (fragments vs re-serialised input).
    const norm = (m: Json) => ({
      ...m,
      parsed: undefined,
      tool_calls: (
        m.tool_calls as { id: string; type: string; function: { name: string; arguments: string } }[]
      ).map((t) => ({
        ...t,
        function: { ...t.function, arguments: JSON.parse(t.function.arguments) as Json },
      })),
    });
    expect(norm(final.choices[0]!.message as unknown as Json)).toEqual(
      norm(j.choices[0]!.message as unknown as Json),
    );
    expect(final.choices[0]!.finish_reason).toBe(j.choices[0]!.finish_reason);
    expect(final.usage).toMatchObject({
      prompt_tokens: j.usage!.prompt_tokens,
      completion_tokens: j.usage!.completion_tokens,
      total_tokens: j.usage!.total_tokens,
    });
    expect(final.model).toBe(j.model);
    expect(final.object).toBe('chat.completion');
    expect(evs).toEqual(['0:weather:{"city": "Paris"}', '1:weather:{"city": "Oslo"}']);
  });

  it('Vercel fullStream: text-delta, tool-input parts, tool-call, finish with usage and finishReason', async () => {
    const s = await setup(await anthMock(aToolEvents, aToolMessage), 'anthropic');
    const st = streamText({
      model: createOpenAI({ baseURL: s.baseURL, apiKey: 'k' }).chat('r'),
      prompt: 'hi',
      maxRetries: 0,
      tools: {
        weather: tool({ inputSchema: jsonSchema<{ city: string }>(TOOLS[0]!.function.parameters as never) }),
      },
    });
    const parts: Json[] = [];
    for await (const p of st.fullStream) parts.push(p as unknown as Json);
    const types = parts.map((p) => p.type);
    expect(types).not.toContain('error');
    expect(parts.filter((p) => p.type === 'text-delta').map((p) => p.text)).toEqual(['Checking.']);
    expect(
      parts.filter((p) => p.type === 'tool-call').map((p) => [p.toolCallId, p.toolName, p.input]),
    ).toEqual([
      ['toolu_01A', 'weather', { city: 'Paris' }],
      ['toolu_02B', 'weather', { city: 'Oslo' }],
    ]);
    expect(parts.filter((p) => p.type === 'tool-input-start').map((p) => p.id)).toEqual([
      'toolu_01A',
      'toolu_02B',
    ]);
    const meta = parts.find((p) => p.type === 'finish-step') as {
      response?: { id?: string; modelId?: string };
    };
    expect(meta.response?.id).toBeTruthy();
    const finish = parts.at(-1) as { type: string; finishReason: string; totalUsage: Json };
    expect(finish.type).toBe('finish');
    expect(finish.finishReason).toBe('tool-calls');
    expect(finish.totalUsage).toMatchObject({ inputTokens: 40, outputTokens: 30, totalTokens: 70 });
  });

  it('LangChain: stream() chunks concatenated equal invoke(): content, tool_calls, usage_metadata', async () => {
    const s = await setup(await anthMock(aToolEvents, aToolMessage), 'anthropic');
    const lc = new ChatOpenAI({
      model: 'r',
      apiKey: 'k',
      configuration: { baseURL: s.baseURL },
      maxRetries: 0,
      streamUsage: true,
    }).bindTools(TOOLS);
    let agg: Awaited<ReturnType<typeof lc.invoke>> | undefined;
    let sawChunks = 0;
    for await (const c of await lc.stream('hi')) {
      sawChunks++;
      agg = agg ? agg.concat(c) : c;
    }
    const inv = await lc.invoke('hi');
    expect(sawChunks).toBeGreaterThan(2);
    expect(agg!.content).toBe(inv.content);
    expect(agg!.tool_calls).toEqual(inv.tool_calls);
    expect(agg!.tool_call_chunks?.map((t) => [t.index, t.id, t.name])).toEqual([
      [0, 'toolu_01A', 'weather'],
      [1, 'toolu_02B', 'weather'],
    ]);
    expect(agg!.usage_metadata).toMatchObject({
      input_tokens: inv.usage_metadata!.input_tokens,
      output_tokens: inv.usage_metadata!.output_tokens,
      total_tokens: inv.usage_metadata!.total_tokens,
    });
    expect(agg!.response_metadata.finish_reason).toBe(inv.response_metadata.finish_reason);
    expect(agg!.id).toBe(agg!.id && String(agg!.id));
  });
});

// ---------------------------------------------------------------------------------------------
// Failures after the commit (terminate)

describe('after the commit, a failure ends the stream with OpenAI’s error event and no [DONE]', () => {
  const oaCut = () =>
    mock(async (_q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.write(
        frame(oa([ch({ role: 'assistant', content: '' })])) + frame(oa([ch({ content: 'partial ' })])),
      );
      await sleep(30);
      res.write(frame(oa([ch({ content: 'answer' })])));
      await sleep(30);
      res.destroy();
    });
  const anthErr = () =>
    mock(async (_q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.write(
        aSSE([aStart(), aBlock(0, { type: 'text', text: '' }), aText(0, 'partial '), aText(0, 'answer')]),
      );
      await sleep(30);
      res.end(aFrame({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }));
    });

  for (const [name, kind, make] of [
    ['OpenAI dialect, connection dropped', 'openai', oaCut],
    ['Anthropic, error event', 'anthropic', anthErr],
  ] as const) {
    it(`${name}: the last event is exactly data: {"error":{message,type,param,code}}, no [DONE], clean close`, async () => {
      const s = await setup(await make(), kind);
      const r = await gwRaw(s, {});
      expect(r.status).toBe(200);
      expect(r.error).toBeUndefined();
      const data = framedData(r.text);
      expect(data).not.toContain('[DONE]');
      const last = JSON.parse(data.at(-1)!) as Json;
      expect(Object.keys(last)).toEqual(['error']);
      const err = last.error as Json;
      expect(Object.keys(err).sort()).toEqual(['code', 'message', 'param', 'type']);
      expect(typeof err.message).toBe('string');
      expect(err.message).not.toBe('');
      expect(typeof err.type).toBe('string');
      expect(err.param === null || typeof err.param === 'string').toBe(true);
      expect(err.code === null || typeof err.code === 'string').toBe(true);
      const chunks = data.slice(0, -1).map((d) => JSON.parse(d) as Json);
      expect(chunks.every((c) => c.object === 'chat.completion.chunk')).toBe(true);
      expect(chunks.map((c) => (choicesOf(c)[0]?.delta.content as string | undefined) ?? '').join('')).toBe(
        'partial answer',
      );
      // No finish_reason was sent: the cut stream must not look finished.
      expect(chunks.flatMap(choicesOf).filter((c) => c.finish_reason !== null)).toEqual([]);
      if (kind === 'anthropic') expect(err.message).toContain('Overloaded');
    });

    it(`${name}: openai SDK throws APIError with the event's message; Vercel yields an error part; LangChain throws`, async () => {
      const s = await setup(await make(), kind);
      const r = await gwRaw(s, {});
      const wire = (JSON.parse(framedData(r.text).at(-1)!) as { error: { message: string } }).error;

      let text = '';
      const thrown = await rejection(
        (async () => {
          for await (const c of await s.openai.chat.completions.create({
            model: 'r',
            messages: hi,
            stream: true,
          }))
            text += c.choices[0]?.delta.content ?? '';
        })(),
      );
      expect(thrown).toBeInstanceOf(OpenAI.APIError);
      expect((thrown as Error).message).toContain(wire.message);
      expect(text).toBe('partial answer');

      const st = streamText({
        model: createOpenAI({ baseURL: s.baseURL, apiKey: 'k' }).chat('r'),
        prompt: 'hi',
        maxRetries: 0,
        onError: () => undefined,
      });
      const parts: Json[] = [];
      for await (const p of st.fullStream) parts.push(p as unknown as Json);
      const errPart = parts.find((p) => p.type === 'error');
      expect(errPart).toBeDefined();
      expect(JSON.stringify(errPart)).toContain(wire.message);
      const finish = parts.find((p) => p.type === 'finish') as { finishReason?: string } | undefined;
      expect(finish?.finishReason).not.toBe('stop');

      const lc = new ChatOpenAI({
        model: 'r',
        apiKey: 'k',
        configuration: { baseURL: s.baseURL },
        maxRetries: 0,
      });
      let lcText = '';
      const lcErr = await rejection(
        (async () => {
          for await (const c of await lc.stream('hi'))
            lcText += typeof c.content === 'string' ? c.content : '';
        })(),
      );
      expect(String((lcErr as Error).message)).toContain(wire.message);
      expect(lcText).toBe('partial answer');
    });
  }
});

// ---------------------------------------------------------------------------------------------
// Ends, odd framing and ordering of an OpenAI-dialect upstream

describe('how a relayed OpenAI-dialect stream ends', () => {
  const send = (events: readonly string[]) =>
    mock((_q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.end(events.join(''));
    });

  it('headers are not sent before the first content delta: the role chunk alone is held back (SPEC §2)', async () => {
    const m = await mock(async (_q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.write(frame(oa([ch({ role: 'assistant', content: '' })])));
      await sleep(400);
      res.end(frame(oa([ch({ content: 'late' })])) + frame(oa([ch({}, 'stop')])) + 'data: [DONE]\n\n');
    });
    const s = await setup(m, 'openai');
    const r = await gwRaw(s, {});
    expect(r.headersMs).toBeGreaterThan(300);
    expect(chunksOf(r.text)).toHaveLength(3);
  });

  it('a finished stream closed without [DONE] still ends with [DONE] for the client (README: it counts as finished)', async () => {
    const s = await setup(
      await send([
        frame(oa([ch({ role: 'assistant', content: '' })])),
        frame(oa([ch({ content: 'x' })])),
        frame(oa([ch({}, 'stop')])),
      ]),
      'openai',
    );
    const r = await gwRaw(s, {});
    const chunks = chunksOf(r.text); // OpenAI's stream always ends with data: [DONE]
    expect(choicesOf(chunks.at(-1)!)[0]!.finish_reason).toBe('stop');
    const got = await collect(
      await s.openai.chat.completions.create({ model: 'r', messages: hi, stream: true }),
    );
    expect(got.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe('x');
  });

  it('n: 2 closed after only choice 0 finished: an error event, no [DONE] (README: finished only once every choice has)', async () => {
    const s = await setup(
      await send([
        frame(oa([ch({ role: 'assistant', content: '' }, null, 0)])),
        frame(oa([ch({ content: 'A' }, null, 0)])),
        frame(oa([ch({ content: 'B' }, null, 1)])),
        frame(oa([ch({}, 'stop', 0)])),
      ]),
      'openai',
    );
    const r = await gwRaw(s, { n: 2 });
    const data = framedData(r.text);
    expect(data).not.toContain('[DONE]');
    expect(Object.keys(JSON.parse(data.at(-1)!) as Json)).toEqual(['error']);
  });

  // OpenAI's stream ends at [DONE] (no content after finish_reason); a direct SDK call stops there, and so does the relay.
  it('[DONE] sent twice, and a chunk after [DONE], by the upstream: the client sees what a direct call sees', async () => {
    const m = await send([
      frame(oa([ch({ role: 'assistant', content: '' })])),
      frame(oa([ch({ content: 'x' })])),
      frame(oa([ch({}, 'stop')])),
      'data: [DONE]\n\n',
      frame(oa([ch({ content: 'after' })])),
      'data: [DONE]\n\n',
    ]);
    const s = await setup(m, 'openai');
    const r = await gwRaw(s, {});
    const chunks = chunksOf(r.text);
    const textOf = (cs: ChatCompletionChunk[]) => cs.map((c) => c.choices[0]?.delta.content ?? '').join('');
    const direct = new OpenAI({ baseURL: `${m.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const dir = await collect(
      await direct.chat.completions.create({ model: 'gpt-4o', messages: hi, stream: true }),
    );
    const via = await collect(
      await s.openai.chat.completions.create({ model: 'r', messages: hi, stream: true }),
    );
    expect(textOf(dir)).toBe('x');
    // OpenAI's stream ends at [DONE] (and never has content after finish_reason); a direct SDK call stops there.
    expect(textOf(via)).toBe(textOf(dir));
    expect(chunks.map((c) => choicesOf(c)[0]?.delta.content ?? '').join('')).toBe('x');
  });

  it('upstream response headers (content-length, x-request-id, content-encoding) do not leak onto the relayed stream', async () => {
    const body = [
      frame(oa([ch({ role: 'assistant', content: '' })])),
      frame(oa([ch({ content: 'x' })])),
      frame(oa([ch({}, 'stop')])),
      'data: [DONE]\n\n',
    ].join('');
    const m = await mock((_q, res) => {
      res.writeHead(200, {
        'content-type': 'text/event-stream',
        'content-length': String(Buffer.byteLength(body)),
        'x-request-id': 'req_upstream_abc',
        'openai-processing-ms': '12',
      });
      res.end(body);
    });
    const s = await setup(m, 'openai');
    const r = await gwRaw(s, {});
    expect(r.error).toBeUndefined();
    const cl = r.headers['content-length'];
    if (cl !== undefined) expect(Number(cl)).toBe(r.bytes.length);
    expect(r.headers['x-request-id']).not.toBe('req_upstream_abc');
    expect(chunksOf(r.text)).toHaveLength(3);
  });

  it('an upstream error event after content is relayed in OpenAI’s shape, its message kept, no [DONE]', async () => {
    const s = await setup(
      await send([
        frame(oa([ch({ role: 'assistant', content: '' })])),
        frame(oa([ch({ content: 'part' })])),
        frame({
          error: { message: 'The server had an error while processing your request.', type: 'server_error' },
        }),
      ]),
      'openai',
    );
    const data = framedData((await gwRaw(s, {})).text);
    expect(data).not.toContain('[DONE]');
    const err = (JSON.parse(data.at(-1)!) as { error: Json }).error;
    expect(Object.keys(err).sort()).toEqual(['code', 'message', 'param', 'type']);
    expect(err.message).toContain('The server had an error while processing your request.');
    const thrown = await rejection(
      collect(await s.openai.chat.completions.create({ model: 'r', messages: hi, stream: true })),
    );
    expect(thrown).toBeInstanceOf(OpenAI.APIError);
    expect((thrown as Error).message).toContain('The server had an error');
  });

  it('a chunk whose JSON spans two data: lines (SSE joins them) reaches the client as one parsable event', async () => {
    const c = JSON.stringify(oa([ch({ content: 'two-line' })]));
    const cut = c.indexOf('"choices"');
    const s = await setup(
      await send([
        frame(oa([ch({ role: 'assistant', content: '' })])),
        `data: ${c.slice(0, cut)}\ndata: ${c.slice(cut)}\n\n`,
        frame(oa([ch({}, 'stop')])),
        'data: [DONE]\n\n',
      ]),
      'openai',
    );
    const r = await gwRaw(s, {});
    const got = await collect(
      await s.openai.chat.completions.create({ model: 'r', messages: hi, stream: true }),
    );
    expect(got.map((x) => x.choices[0]?.delta.content ?? '').join('')).toBe('two-line');
    // Whatever the framing, each event's data must parse as JSON for every client.
    const events = r.text
      .split('\n\n')
      .filter((b) => b !== '')
      .map((b) =>
        b
          .split('\n')
          .filter((l) => l.startsWith('data:'))
          .map((l) => l.replace(/^data: ?/, ''))
          .join('\n'),
      );
    expect(events.at(-1)).toBe('[DONE]');
    for (const e of events.slice(0, -1)) expect(() => JSON.parse(e) as unknown).not.toThrow();
  });

  it('non-JSON data events mid-stream are dropped, never relayed (SPEC §8)', async () => {
    const s = await setup(
      await send([
        frame(oa([ch({ role: 'assistant', content: '' })])),
        frame(oa([ch({ content: 'a' })])),
        'data: keep-alive\n\n',
        'data: \n\n',
        frame(oa([ch({ content: 'b' })])),
        frame(oa([ch({}, 'stop')])),
        'data: [DONE]\n\n',
      ]),
      'openai',
    );
    const chunks = chunksOf((await gwRaw(s, {})).text);
    expect(chunks).toHaveLength(4);
  });

  it('chunks, a usage chunk and [DONE] in one write followed at once by a close: order kept', async () => {
    const m = await mock((q, res) => {
      res.writeHead(200, SSE_HEAD);
      const many = Array.from({ length: 200 }, (_, i) => `w${i} `);
      res.end([...oaTextEvents(many, includeUsage(q.body)).map(frame), 'data: [DONE]\n\n'].join(''));
    });
    const s = await setup(m, 'openai');
    const direct = await raw(`${m.url}/v1/chat/completions`, {
      model: 'gpt-4o',
      messages: hi,
      stream: true,
      stream_options: { include_usage: true },
    });
    const via = await gwRaw(s, { stream_options: { include_usage: true } });
    expect(framedData(via.text)).toEqual(framedData(direct.text));
  });

  it('content chunks then a drop in the same write: every content chunk arrives before the error event', async () => {
    const m = await mock((_q, res) => {
      res.writeHead(200, SSE_HEAD);
      const parts = Array.from({ length: 50 }, (_, i) => frame(oa([ch({ content: `p${i} ` })])));
      res.write(frame(oa([ch({ role: 'assistant', content: '' })])) + parts.join(''), () => res.destroy());
    });
    const s = await setup(m, 'openai');
    const data = framedData((await gwRaw(s, {})).text);
    const last = JSON.parse(data.at(-1)!) as Json;
    expect(Object.keys(last)).toEqual(['error']);
    const text = data
      .slice(0, -1)
      .map((d) => (choicesOf(JSON.parse(d) as Json)[0]?.delta.content as string | undefined) ?? '')
      .join('');
    expect(text).toBe(Array.from({ length: 50 }, (_, i) => `p${i} `).join(''));
  });

  it('20 concurrent streams written in bursts: each client gets its own events, in order, as a direct call does', async () => {
    const m = await mock(async (q, res) => {
      const tag = String((q.body.messages as { content: string }[])[0]!.content);
      res.writeHead(200, SSE_HEAD);
      res.write(frame(oa([ch({ role: 'assistant', content: '' })])));
      for (let b = 0; b < 5; b++) {
        res.write(
          Array.from({ length: 8 }, (_, i) => frame(oa([ch({ content: `${tag}-${b}-${i} ` })]))).join(''),
        );
        await sleep(2);
      }
      res.end(frame(oa([ch({}, 'stop')])) + 'data: [DONE]\n\n');
    });
    const s = await setup(m, 'openai');
    const tags = Array.from({ length: 20 }, (_, i) => `t${i}`);
    const results = await Promise.all(
      tags.map(async (t) => {
        const body = { messages: [{ role: 'user', content: t }], stream: true };
        const [via, dir] = await Promise.all([
          gwRaw(s, body),
          raw(`${m.url}/v1/chat/completions`, { model: 'gpt-4o', ...body }),
        ]);
        return { via: framedData(via.text), dir: framedData(dir.text) };
      }),
    );
    for (const r of results) expect(r.via).toEqual(r.dir);
  });
});

describe('translated streams: finishes and thinking blocks', () => {
  it('thinking_blocks arrive in one chunk before the finish chunk; the finish chunk’s delta is empty', async () => {
    const events = (): Json[] => [
      aStart(),
      aBlock(0, { type: 'thinking', thinking: '', signature: '' }),
      { type: 'content_block_delta', index: 0, delta: { type: 'thinking_delta', thinking: 'Hmm.' } },
      { type: 'content_block_delta', index: 0, delta: { type: 'signature_delta', signature: 'EqQBsig==' } },
      aStop(0),
      aBlock(1, { type: 'text', text: '' }),
      aText(1, 'Done.'),
      aStop(1),
      aDelta('end_turn'),
      A_END,
    ];
    const s = await setup(await anthMock(events, () => aMessage([], 'end_turn')), 'anthropic');
    const chunks = chunksOf(
      (await gwRaw(s, { reasoning_effort: 'low', stream_options: { include_usage: true } })).text,
    );
    const withBlocks = chunks.filter((c) => choicesOf(c)[0]?.delta.thinking_blocks !== undefined);
    expect(withBlocks).toHaveLength(1);
    expect(choicesOf(withBlocks[0]!)[0]!.delta.thinking_blocks).toEqual([
      { type: 'thinking', thinking: 'Hmm.', signature: 'EqQBsig==' },
    ]);
    const fin = chunks.findIndex((c) => choicesOf(c)[0]?.finish_reason != null);
    expect(chunks.indexOf(withBlocks[0]!)).toBeLessThan(fin);
    expect(choicesOf(chunks[fin]!)[0]!.delta).toEqual({});
    expect(chunks.at(-1)!.choices).toEqual([]);
  });

  it('max_tokens in the middle of a tool call: finish_reason length, the call’s fragments as sent', async () => {
    const events = (): Json[] => [
      aStart(),
      aBlock(0, { type: 'tool_use', id: 'toolu_cut', name: 'weather', input: {} }),
      aJson(0, '{"city": "Par'),
      aStop(0),
      aDelta('max_tokens'),
      A_END,
    ];
    const s = await setup(await anthMock(events, () => aMessage([], 'max_tokens')), 'anthropic');
    const chunks = chunksOf((await gwRaw(s, { tools: TOOLS })).text);
    type TC = { index: number; id?: string; function?: { arguments?: string } };
    const deltas = chunks.flatMap((c) => (choicesOf(c)[0]?.delta.tool_calls as TC[] | undefined) ?? []);
    expect(deltas[0]).toMatchObject({ index: 0, id: 'toolu_cut' });
    expect(deltas.map((d) => d.function?.arguments ?? '').join('')).toBe('{"city": "Par');
    expect(choicesOf(chunks.at(-1)!)[0]!.finish_reason).toBe('length');
  });

  it('a tool call first (no text): tool index 0, and no content chunk is invented', async () => {
    const events = (): Json[] => [
      aStart(),
      aBlock(0, { type: 'tool_use', id: 'toolu_only', name: 'weather', input: {} }),
      aJson(0, '{"city":"Rome"}'),
      aStop(0),
      aDelta('tool_use'),
      A_END,
    ];
    const s = await setup(await anthMock(events, () => aMessage([], 'tool_use')), 'anthropic');
    const chunks = chunksOf((await gwRaw(s, { tools: TOOLS })).text);
    const contents = chunks
      .map((c) => choicesOf(c)[0]?.delta.content)
      .filter((x) => typeof x === 'string' && x !== '');
    expect(contents).toEqual([]);
    const final = await s.openai.chat.completions
      .stream({ model: 'r', messages: hi, tools: TOOLS })
      .finalChatCompletion();
    expect(final.choices[0]!.message.tool_calls).toEqual([
      { id: 'toolu_only', type: 'function', function: { name: 'weather', arguments: '{"city":"Rome"}' } },
    ]);
    expect(final.choices[0]!.finish_reason).toBe('tool_calls');
  });
});

describe('an idle upstream after the commit', () => {
  for (const kind of ['openai', 'anthropic'] as const) {
    it(`${kind}: cut at idle_ms with OpenAI's error event, no [DONE], no finish_reason`, async () => {
      const m = await mock(async (_q, res) => {
        res.writeHead(200, SSE_HEAD);
        if (kind === 'openai')
          res.write(
            frame(oa([ch({ role: 'assistant', content: '' })])) + frame(oa([ch({ content: 'stalled' })])),
          );
        else res.write(aSSE([aStart(), aBlock(0, { type: 'text', text: '' }), aText(0, 'stalled')]));
        await sleep(2500);
        res.end();
      });
      const s = await setup(m, kind, { timeouts: { idle_ms: 300 } });
      const r = await gwRaw(s, {});
      expect(r.error).toBeUndefined();
      const data = framedData(r.text);
      expect(data).not.toContain('[DONE]');
      const err = (JSON.parse(data.at(-1)!) as { error: Json }).error;
      expect(Object.keys(err).sort()).toEqual(['code', 'message', 'param', 'type']);
      const chunks = data.slice(0, -1).map((d) => JSON.parse(d) as Json);
      expect(chunks.flatMap(choicesOf).filter((c) => c.finish_reason !== null)).toEqual([]);
      expect(r.pieces.at(-1)!.ms).toBeLessThan(2000);
    });
  }
});

describe('framing the client can trust whatever the upstream writes', () => {
  it('an OpenAI-dialect upstream with CRLF framing and data: without a space: the client gets data: <json>\\n\\n events', async () => {
    const m = await mock((_q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.end(
        [
          oa([ch({ role: 'assistant', content: '' })]),
          oa([ch({ content: 'crlf' })]),
          oa([ch({}, 'stop')]),
          '[DONE]',
        ]
          .map((e) => `data:${typeof e === 'string' ? e : JSON.stringify(e)}\r\n\r\n`)
          .join(''),
      );
    });
    const s = await setup(m, 'openai');
    const chunks = chunksOf((await gwRaw(s, {})).text);
    expect(chunks.map((c) => choicesOf(c)[0]?.delta.content ?? '').join('')).toBe('crlf');
  });

  it('translated text that looks like SSE framing (blank lines, "data: [DONE]", U+2028) stays inside one JSON string', async () => {
    const tricky = ['line1\n\ndata: [DONE]\n\n', 'event: error\r\n', '\u2028sep\u2029', '\\"}'];
    const s = await setup(
      await anthMock(
        () => aTextEvents(tricky),
        () => aMessage([], 'end_turn'),
      ),
      'anthropic',
    );
    const chunks = chunksOf((await gwRaw(s, {})).text);
    expect(chunks.map((c) => (choicesOf(c)[0]?.delta.content as string | undefined) ?? '').join('')).toBe(
      tricky.join(''),
    );
    const got = await collect(
      await s.openai.chat.completions.create({ model: 'r', messages: hi, stream: true }),
    );
    expect(got.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(tricky.join(''));
  });

  // SPEC §2: the error event ends the stream; content the upstream wrote after its error must not reach the client.
  it('content after an upstream error event in the same write is not relayed after (or around) the error', async () => {
    const m = await mock((_q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.end(
        [
          frame(oa([ch({ role: 'assistant', content: '' })])),
          frame(oa([ch({ content: 'before' })])),
          frame({ error: { message: 'boom', type: 'server_error', param: null, code: null } }),
          frame(oa([ch({ content: 'AFTER' })])),
          frame(oa([ch({}, 'stop')])),
          'data: [DONE]\n\n',
        ].join(''),
      );
    });
    const s = await setup(m, 'openai');
    const data = framedData((await gwRaw(s, {})).text);
    expect(data).not.toContain('[DONE]');
    expect(Object.keys(JSON.parse(data.at(-1)!) as Json)).toEqual(['error']);
    // A direct openai SDK call throws at the error event and never yields what follows it.
    const text = data
      .slice(0, -1)
      .map((d) => (choicesOf(JSON.parse(d) as Json)[0]?.delta.content as string | undefined) ?? '')
      .join('');
    expect(text).toBe('before');
  });

  it('Anthropic content after an error event in the same write is not relayed', async () => {
    const s = await setup(
      await anthMock(
        () => [
          aStart(),
          aBlock(0, { type: 'text', text: '' }),
          aText(0, 'before'),
          { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } },
          aText(0, 'AFTER'),
          aStop(0),
          aDelta('end_turn'),
          A_END,
        ],
        () => aMessage([], 'end_turn'),
      ),
      'anthropic',
    );
    const data = framedData((await gwRaw(s, {})).text);
    expect(data).not.toContain('[DONE]');
    expect(Object.keys(JSON.parse(data.at(-1)!) as Json)).toEqual(['error']);
    const text = data
      .slice(0, -1)
      .map((d) => (choicesOf(JSON.parse(d) as Json)[0]?.delta.content as string | undefined) ?? '')
      .join('');
    expect(text).toBe('before');
  });

  it('Anthropic events after message_stop in the same write are not relayed', async () => {
    const s = await setup(
      await anthMock(
        () => [...aTextEvents(['ok']), aBlock(1, { type: 'text', text: '' }), aText(1, 'AFTER'), aStop(1)],
        () => aMessage([], 'end_turn'),
      ),
      'anthropic',
    );
    const chunks = chunksOf((await gwRaw(s, {})).text);
    expect(chunks.map((c) => (choicesOf(c)[0]?.delta.content as string | undefined) ?? '').join('')).toBe(
      'ok',
    );
  });
});
