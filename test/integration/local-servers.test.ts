/**
 * Self-hosted OpenAI-compatible servers (llama.cpp's llama-server, TGI, vLLM, Ollama) behind the gateway, each
 * mocked as it writes to the wire, seen by the official `openai` SDK and by undici: what the client gets, what
 * /metrics counts, and whether failover and the breaker react as SPEC §2 says. Shapes already pinned elsewhere
 * (audit-providers, audit-client-mocks, openai-stream-edges: CRLF, `data:` without a space, `timings`, usage
 * chunks, vLLM's flat 400, `event: error`) are not repeated here.
 *
 * Sources for the shapes:
 * - llama.cpp tools/server: a streamed error is written by `server_sent_event(sink, "error", error_data)`, i.e.
 *   an SSE line `error: {"code":500,"message":...,"type":"server_error"}`, and the OAI-compatible handler then
 *   writes `data: [DONE]` all the same; mid-generation errors come from `send_error(slot, ...)` ("Compute
 *   error." when the KV cache fills under parallel load, "context shift is disabled").
 * - TGI router/src/server.rs: `InferError::GenerationError(_) => StatusCode::FAILED_DEPENDENCY` (424, e.g.
 *   "Request failed during generation: Server error: CUDA out of memory"), body `{"error": "...",
 *   "error_type": "generation"}`; in a stream the same error is a `data:` event of that object.
 * - Ollama: `{"error":"model \"x\" not found, try pulling it first"}` with a 404, a string, not an object.
 * - vLLM (speculative decoding, or its output collector merging deltas when the reader lags) streams several
 *   tokens per chunk and, without `stream_options.include_usage`, no usage at all.
 */
import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import type { ChatCompletionChunk } from 'openai/resources/chat/completions';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway, type TestGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { answerChat, sendJson, startMock, type MockHandler } from '../helpers/mock-upstream.js';
import { scrape, select, type Sample } from '../helpers/prom-text.js';

const track = closeAfterEach();
onlyLoopbackFetch();

type Json = Record<string, unknown>;
const hi = [{ role: 'user' as const, content: 'hi' }];
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const SSE_HEAD = { 'content-type': 'text/event-stream' };

interface Upstream {
  readonly name: string;
  readonly handler: MockHandler;
}

/** A gateway with route `r` (priority) over `ups` in order, each serving model `m`; no provider key (local). */
async function gatewayOver(ups: readonly Upstream[], extra: Json = {}) {
  const mocks = await Promise.all(ups.map(async (u) => track(await startMock(u.handler))));
  const providers = ups.map((u, i) => ({
    name: u.name,
    kind: 'openai',
    base_url: `${mocks[i]!.url}/v1`,
    timeouts: { connect_ms: 1000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 8000 },
    models: [{ name: 'm' }],
  }));
  const gw = track(
    await startGateway({
      providers,
      routes: { r: { strategy: 'priority', targets: ups.map((u) => `${u.name}/m`) } },
      ...extra,
    }),
  );
  return { gw, mocks, openai: new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 }) };
}

/** The sum of the samples of `name` with these labels (0 when none). */
function sum(s: readonly Sample[], name: string, labels: Record<string, string>): number {
  return select(s, name, labels).reduce((a, x) => a + x.value, 0);
}

/** /metrics once the gateway's end-of-turn bookkeeping has run. */
async function settled(gw: TestGateway): Promise<Sample[]> {
  await sleep(30);
  return scrape(gw.url);
}

/** The data payloads of a relayed SSE body, in order (`[DONE]` included as text). */
function dataOf(text: string): string[] {
  return text
    .split(/\r?\n\r?\n/)
    .map((block) =>
      block
        .split(/\r?\n/)
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).replace(/^ /, ''))
        .join('\n'),
    )
    .filter((d) => d !== '');
}

const contentOf = (payloads: readonly string[]): string =>
  payloads
    .filter((d) => d !== '[DONE]')
    .map((d) => JSON.parse(d) as Json)
    .map((e) => ((e.choices as Json[] | undefined)?.[0]?.delta as Json | undefined)?.content ?? '')
    .join('');

async function collect(stream: AsyncIterable<ChatCompletionChunk>): Promise<ChatCompletionChunk[]> {
  const out: ChatCompletionChunk[] = [];
  for await (const c of stream) out.push(c);
  return out;
}

// ---------------------------------------------------------------------------------------------
// llama.cpp (llama-server)

/** One chunk as llama-server writes it (choices first, its build as system_fingerprint). */
const lcChunk = (delta: Json, finish: string | null = null): Json => ({
  choices: [{ finish_reason: finish, index: 0, delta }],
  created: 1750000000,
  id: 'chatcmpl-lc7Qx',
  model: 'gemma-3-1b',
  system_fingerprint: 'b5710-a1b2c3d4',
  object: 'chat.completion.chunk',
});
const lcData = (chunk: Json): string => `data: ${JSON.stringify(chunk)}\n\n`;
/** llama-server's streamed error: an SSE line whose field is `error`, not `data`. */
const lcError = (message: string): string =>
  `error: ${JSON.stringify({ code: 500, message, type: 'server_error' })}\n\n`;

async function writeEach(res: ServerResponse, parts: readonly string[]): Promise<void> {
  res.writeHead(200, SSE_HEAD);
  for (const p of parts) {
    res.write(p);
    await sleep(3);
  }
  res.end();
}

describe('llama.cpp: a streamed error is an `error:` line, followed by `data: [DONE]`', () => {
  it('before any content: failed over invisibly to the next upstream', async () => {
    const { openai, mocks } = await gatewayOver([
      {
        name: 'llamacpp',
        handler: (_q, res) =>
          void writeEach(res, [
            lcError('the request exceeds the available context size, try increasing it'),
            'data: [DONE]\n\n',
          ]),
      },
      { name: 'backup', handler: (q, res) => answerChat(res, q.body, 'from backup') },
    ]);
    const { data, response } = await openai.chat.completions
      .create({ model: 'r', messages: hi, stream: true })
      .withResponse();
    const chunks = await collect(data);
    expect(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('')).toBe('from backup');
    expect(response.headers.get('x-router-provider')).toBe('backup');
    expect(response.headers.get('x-router-attempts')).toBe('2');
    expect(mocks[1]!.received).toHaveLength(1);
  });

  it('after content: the stream ends with an error event and no [DONE], counted as a stream failure', async () => {
    // SPEC §2: after the commit a failure ends the stream with `data: {"error":...}` and withholds `[DONE]`,
    // so a client can always tell a cut stream from a finished one.
    const { gw, openai } = await gatewayOver([
      {
        name: 'llamacpp',
        handler: (_q, res) =>
          void writeEach(res, [
            lcData(lcChunk({ role: 'assistant', content: null })),
            lcData(lcChunk({ content: 'The answer' })),
            lcData(lcChunk({ content: ' is' })),
            lcError('Compute error.'),
            'data: [DONE]\n\n',
          ]),
      },
    ]);
    const raw = await postChat(gw, { model: 'r', messages: hi, stream: true });
    expect(raw.status).toBe(200);
    const payloads = dataOf(raw.text);
    expect(contentOf(payloads)).toBe('The answer is');
    expect(payloads).not.toContain('[DONE]');
    expect(JSON.parse(payloads.at(-1)!) as Json).toHaveProperty('error');
    const s = await settled(gw);
    expect(sum(s, 'llm_router_stream_failures_total', { provider: 'llamacpp', model: 'm' })).toBe(1);

    // The SDK user: the loop throws instead of ending as if the answer were whole.
    const seen: string[] = [];
    const err = await (async () => {
      for await (const c of await openai.chat.completions.create({ model: 'r', messages: hi, stream: true }))
        seen.push(c.choices[0]?.delta?.content ?? '');
    })().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(seen.join('')).toBe('The answer is');
    expect(err).toBeInstanceOf(OpenAI.APIError);
  });
});

// ---------------------------------------------------------------------------------------------
// TGI (text-generation-inference)

describe('TGI', () => {
  it('424 for a failed generation (a server fault, CUDA out of memory) is failed over like a 5xx, not relayed as a client error', async () => {
    // SPEC §2 fails over on 5xx and relays the client's own errors (400, 404, 413, 422); TGI answers its
    // GenerationError with 424 Failed Dependency: the upstream broke, the request was fine.
    const { gw, openai, mocks } = await gatewayOver([
      {
        name: 'tgi',
        handler: (_q, res) =>
          sendJson(res, 424, {
            error:
              'Request failed during generation: Server error: CUDA out of memory. Tried to allocate 2.00 GiB',
            error_type: 'generation',
          }),
      },
      { name: 'backup', handler: (q, res) => answerChat(res, q.body, 'from backup') },
    ]);
    const got = await openai.chat.completions
      .create({ model: 'r', messages: hi })
      .withResponse()
      .then(
        ({ data, response }) => ({
          text: data.choices[0]?.message.content,
          provider: response.headers.get('x-router-provider'),
          trail: response.headers.get('x-router-trail'),
        }),
        (e: unknown) => ({ status: e instanceof OpenAI.APIError ? e.status : String(e) }),
      );
    expect(got).toEqual({ text: 'from backup', provider: 'backup', trail: 'tgi/m=http_424' });
    expect(mocks[1]!.received).toHaveLength(1);
    const s = await settled(gw);
    expect(sum(s, 'llm_router_upstream_attempts_total', { provider: 'tgi', outcome: 'error' })).toBe(1);
    expect(sum(s, 'llm_router_upstream_attempts_total', { provider: 'tgi', outcome: 'client_error' })).toBe(
      0,
    );
  });

  it('stream: a string `error` event with error_type after content ends the stream with an error event carrying its message, no [DONE]', async () => {
    const tgiChunk = (content: string): Json => ({
      object: 'chat.completion.chunk',
      id: '',
      created: 1722450000,
      model: 'meta-llama/Llama-3.1-8B-Instruct',
      system_fingerprint: '3.0.1-sha-bb9095a',
      choices: [{ index: 0, delta: { role: 'assistant', content }, logprobs: null, finish_reason: null }],
      usage: null,
    });
    const { gw } = await gatewayOver([
      {
        name: 'tgi',
        handler: (_q, res) =>
          void writeEach(res, [
            `data:${JSON.stringify(tgiChunk('Half'))}\n\n`,
            `data:${JSON.stringify(tgiChunk(' an answer'))}\n\n`,
            `data:${JSON.stringify({ error: 'Request failed during generation: Server error: CUDA out of memory.', error_type: 'generation' })}\n\n`,
          ]),
      },
    ]);
    const raw = await postChat(gw, { model: 'r', messages: hi, stream: true });
    const payloads = dataOf(raw.text);
    expect(contentOf(payloads)).toBe('Half an answer');
    expect(payloads).not.toContain('[DONE]');
    const last = JSON.parse(payloads.at(-1)!) as { error?: { message?: string } };
    expect(last.error?.message).toContain('CUDA out of memory');
    const s = await settled(gw);
    expect(sum(s, 'llm_router_stream_failures_total', { provider: 'tgi', model: 'm' })).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------------
// Ollama

describe('Ollama', () => {
  it('404 `{"error": "model ... not found, try pulling it first"}` (a string): relayed as a 404 with its message, never failed over, and it opens no breaker', async () => {
    const message = 'model "llama3.2:3b" not found, try pulling it first';
    const { gw, openai, mocks } = await gatewayOver(
      [
        { name: 'ollama', handler: (_q, res) => sendJson(res, 404, { error: message }) },
        { name: 'backup', handler: (q, res) => answerChat(res, q.body, 'from backup') },
      ],
      { circuit_breaker: { failure_threshold: 2 } },
    );
    for (const stream of [false, true, false]) {
      const err = await (
        stream
          ? openai.chat.completions.create({ model: 'r', messages: hi, stream: true }).then(collect)
          : openai.chat.completions.create({ model: 'r', messages: hi })
      ).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(OpenAI.NotFoundError);
      expect((err as InstanceType<typeof OpenAI.APIError>).message).toContain(message);
    }
    expect(mocks[1]!.received).toHaveLength(0);
    const s = await settled(gw);
    expect(
      sum(s, 'llm_router_upstream_attempts_total', { provider: 'ollama', outcome: 'client_error' }),
    ).toBe(3);
    expect(sum(s, 'llm_router_circuit_state', { provider: 'ollama', model: 'm' })).toBe(0);
    expect(sum(s, 'llm_router_requests_total', { route: 'r', provider: 'ollama', status: '404' })).toBe(3);
  });
});

// ---------------------------------------------------------------------------------------------
// Streams without usage (vLLM, Ollama and llama.cpp send none unless stream_options asks)

describe('an answer without usage', () => {
  // Four deltas of ~16 tokens each, as vLLM streams under speculative decoding or when its output collector
  // merges the deltas a slow reader has not taken yet.
  const PIECES = [
    'Speculative decoding accepts several draft tokens per step, so each delta ',
    'carries a handful of tokens instead of one; a server under load also merges ',
    'the deltas its reader has not taken yet into a single larger chunk before ',
    'it writes it, and neither sends any usage unless stream_options asks for it.',
  ];
  const TEXT = PIECES.join('');
  const frame = (delta: Json, finish: string | null = null): string =>
    `data: ${JSON.stringify({ id: 'chatcmpl-vllm-9', object: 'chat.completion.chunk', created: 1, model: 'Qwen/Qwen3-8B', choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] })}\n\n`;

  const vllm: Upstream = {
    name: 'vllm',
    handler: (q, res) => {
      if (q.body.stream !== true) {
        sendJson(res, 200, {
          id: 'chatcmpl-vllm-9',
          object: 'chat.completion',
          created: 1,
          model: 'Qwen/Qwen3-8B',
          choices: [
            {
              index: 0,
              message: { role: 'assistant', content: TEXT },
              logprobs: null,
              finish_reason: 'stop',
            },
          ],
        });
        return;
      }
      void writeEach(res, [
        frame({ role: 'assistant', content: '' }),
        ...PIECES.map((p) => frame({ content: p })),
        frame({ content: '' }, 'stop'),
        'data: [DONE]\n\n',
      ]);
    },
  };

  it('is counted alike in llm_router_tokens_total whether it was streamed or not (estimated from its text, not one token per chunk)', async () => {
    // README: llm_router_tokens_total is "the upstream's usage ...; estimated when it reports none".
    const { gw } = await gatewayOver([vllm]);
    const k = { provider: 'vllm', model: 'm', kind: 'completion' };
    const json = await postChat(gw, { model: 'r', messages: hi });
    expect(json.status).toBe(200);
    const afterJson = sum(await settled(gw), 'llm_router_tokens_total', k);
    const streamed = await postChat(gw, { model: 'r', messages: hi, stream: true });
    expect(contentOf(dataOf(streamed.text))).toBe(TEXT);
    const afterStream = sum(await settled(gw), 'llm_router_tokens_total', k);
    expect(afterJson).toBeGreaterThan(40); // ~300 characters of English
    expect(afterStream - afterJson).toBeGreaterThanOrEqual(Math.floor(afterJson * 0.8));
  });
});
