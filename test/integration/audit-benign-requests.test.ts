/**
 * Audit (session 28, lens: honest requests the gateway's older defences refuse or alter). Every request here
 * is one today's SDKs send to OpenAI when a user points `baseURL` at the gateway: every current Chat
 * Completions parameter with a valid value, alone and together, streamed and not; messages as the SDKs build
 * them (developer role, content parts with inline images, audio and files of a few hundred KB, tool loops,
 * 500-message conversations, unicode everywhere, a 1.5 MB prompt); the headers real clients send; the
 * Anthropic translation of honest requests; embeddings and models.
 *
 * What a user may expect, and where it is said:
 * - SPEC §4 and README ("OpenAI-dialect upstreams"): "The body goes as the client sent it, but for `model`" —
 *   so an OpenAI-dialect upstream gets the client's bytes with only `model` changed (checked byte for byte).
 * - SPEC §8 / README: known fields of a wrong type or impossible value are refused; valid values are not;
 *   unknown fields pass through untouched; "JSON nesting is bounded" (no number given in SPEC or README).
 * - README (`context_window`): a request whose *estimated* prompt plus `max_tokens` exceeds the window skips
 *   the upstream; the estimate is "typically within 10-25 %".
 * - README ("Anthropic upstreams"): the translation (system + developer hoisted, tools, images, stop,
 *   usage, `user` as `metadata.user_id`, fields Anthropic has no name for left out).
 * - SPEC §4: embeddings routed among embedding models; `GET /v1/models` lists routes and `provider/model`.
 *
 * Real gateway on 127.0.0.1:0, real node:http upstreams on 127.0.0.1:0 that record the exact bytes they were
 * sent, real clients (the `openai` SDK, undici).
 */
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { brotliDecompressSync, gunzipSync, gzipSync } from 'node:zlib';
import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';
import OpenAI from 'openai';
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionCreateParamsNonStreaming,
  ChatCompletionCreateParamsStreaming,
} from 'openai/resources/chat/completions';
import { request } from 'undici';
import { beforeAll, describe, expect, it } from 'vitest';
import { anthropicSseFrame } from '../helpers/anthropic-route.js';
import { closeableServer, closeAfterAll, closeAfterEach, type Track } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { PNG_1PX } from '../helpers/images.js';

type Json = Record<string, unknown>;

const track = closeAfterEach();
const shared = closeAfterAll();

const UP_KEY = 'sk-proj-UpstreamKey0123456789abcdefXYZ';
const ANTH_KEY = 'sk-ant-api03-UpstreamKey0123456789abcdef';
const CLIENT_KEY = 'sk-gw-client-9f8e7d6c5b4a3210';
const UPSTREAM_MODEL = 'gpt-4.1-2025-04-14';
const RELAXED = { connect_ms: 5000, first_byte_ms: 30000, idle_ms: 30000, total_ms: 120000 };

// ---------------------------------------------------------------------------------------------------------
// A recording upstream

interface Hit {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  /** The body exactly as it came over the wire, decoded as UTF-8. */
  readonly raw: string;
  readonly body: Json;
  /** What the upstream answered with, when it was JSON. */
  answered?: Json;
}

type Answer = (hit: Hit, res: ServerResponse, n: number) => void | Promise<void>;

interface Upstream {
  readonly url: string;
  readonly hits: Hit[];
}

async function recorder(t: Track, answer: Answer): Promise<Upstream> {
  const hits: Hit[] = [];
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      const raw = Buffer.concat(parts).toString('utf8');
      let body: Json = {};
      try {
        body = raw === '' ? {} : (JSON.parse(raw) as Json);
      } catch {
        /* left {} */
      }
      const hit: Hit = { method: req.method ?? '', path: req.url ?? '', headers: req.headers, raw, body };
      hits.push(hit);
      void Promise.resolve(answer(hit, res, hits.length - 1)).catch(() => res.destroy());
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t(closeableServer(server));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, hits };
}

function json(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

// ---------------------------------------------------------------------------------------------------------
// What an OpenAI upstream answers: n choices of text, a tool call when one is forced, a legacy function call
// when legacy functions are offered, audio when audio is asked for; usage when streamed with include_usage.

function forcedTool(body: Json): { type: 'function' | 'custom'; name: string } | undefined {
  const tools = Array.isArray(body.tools) ? (body.tools as Json[]) : [];
  if (tools.length === 0) return undefined;
  const choice = body.tool_choice as Json | string | undefined;
  if (choice === 'required') {
    const t = tools[0]!;
    const type = t.type === 'custom' ? 'custom' : 'function';
    return { type, name: String((t[type] as Json).name) };
  }
  if (typeof choice === 'object' && choice !== null) {
    if (choice.type === 'function') return { type: 'function', name: String((choice.function as Json).name) };
    if (choice.type === 'custom') return { type: 'custom', name: String((choice.custom as Json).name) };
  }
  return undefined;
}

function legacyCall(body: Json): string | undefined {
  if (!Array.isArray(body.functions) || body.functions.length === 0) return undefined;
  const fc = body.function_call as Json | string | undefined;
  if (fc === 'none') return undefined;
  if (typeof fc === 'object' && fc !== null) return String(fc.name);
  return String((body.functions[0] as Json).name);
}

const asksAudio = (body: Json): boolean =>
  Array.isArray(body.modalities) && body.modalities.includes('audio');

function choiceMessage(body: Json, i: number): { message: Json; finish: string } {
  const tool = forcedTool(body);
  if (tool?.type === 'function')
    return {
      message: {
        role: 'assistant',
        content: null,
        refusal: null,
        tool_calls: [
          {
            id: `call_${i}Ab12`,
            type: 'function',
            function: { name: tool.name, arguments: '{"city":"Paris"}' },
          },
        ],
      },
      finish: 'tool_calls',
    };
  if (tool?.type === 'custom')
    return {
      message: {
        role: 'assistant',
        content: null,
        tool_calls: [
          { id: `call_${i}Cd34`, type: 'custom', custom: { name: tool.name, input: 'SELECT 1;' } },
        ],
      },
      finish: 'tool_calls',
    };
  const fn = legacyCall(body);
  if (fn !== undefined)
    return {
      message: {
        role: 'assistant',
        content: null,
        function_call: { name: fn, arguments: '{"city":"Paris"}' },
      },
      finish: 'function_call',
    };
  if (asksAudio(body))
    return {
      message: {
        role: 'assistant',
        content: null,
        refusal: null,
        audio: {
          id: `audio_${i}`,
          data: 'UklGRiQAAABXQVZFZm10IBAAAAABAAEA',
          expires_at: 1_900_000_000,
          transcript: 'ok',
        },
      },
      finish: 'stop',
    };
  return { message: { role: 'assistant', content: `ok ${i}`, refusal: null }, finish: 'stop' };
}

const USAGE = { prompt_tokens: 19, completion_tokens: 10, total_tokens: 29 };

function answerOpenAI(hit: Hit, res: ServerResponse): void {
  const body = hit.body;
  const n = typeof body.n === 'number' ? body.n : 1;
  const model = String(body.model);
  if (body.stream !== true) {
    const answer: Json = {
      id: 'chatcmpl-BxYz0123456789',
      object: 'chat.completion',
      created: 1_760_000_000,
      model,
      choices: Array.from({ length: n }, (_, i) => {
        const { message, finish } = choiceMessage(body, i);
        return { index: i, message, logprobs: null, finish_reason: finish };
      }),
      usage: USAGE,
      service_tier: typeof body.service_tier === 'string' ? body.service_tier : 'default',
      system_fingerprint: 'fp_abc123',
    };
    hit.answered = answer;
    json(res, 200, answer, { 'x-request-id': 'req_upstream_1' });
    return;
  }
  const frame = (choices: Json[], extra: Json = {}): string =>
    `data: ${JSON.stringify({ id: 'chatcmpl-S1', object: 'chat.completion.chunk', created: 1_760_000_000, model, system_fingerprint: 'fp_abc123', choices, ...extra })}\n\n`;
  let out = '';
  for (let i = 0; i < n; i++) {
    out += frame([
      {
        index: i,
        delta: { role: 'assistant', content: '', refusal: null },
        logprobs: null,
        finish_reason: null,
      },
    ]);
    const { message, finish } = choiceMessage(body, i);
    const delta: Json = {};
    if (Array.isArray(message.tool_calls))
      delta.tool_calls = (message.tool_calls as Json[]).map((c, k) => ({ index: k, ...c }));
    else if (message.function_call !== undefined) delta.function_call = message.function_call;
    else if (message.audio !== undefined) delta.audio = message.audio;
    else delta.content = message.content;
    out += frame([{ index: i, delta, logprobs: null, finish_reason: null }]);
    out += frame([{ index: i, delta: {}, logprobs: null, finish_reason: finish }]);
  }
  if ((body.stream_options as Json | undefined)?.include_usage === true) out += frame([], { usage: USAGE });
  out += 'data: [DONE]\n\n';
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(out);
}

// ---------------------------------------------------------------------------------------------------------
// Gateways and clients

function openaiConfig(url: string, contextWindow = 1_047_576): Json {
  return {
    server: { api_keys: [CLIENT_KEY] },
    providers: [
      {
        name: 'oai',
        kind: 'openai',
        base_url: `${url}/v1`,
        api_key: UP_KEY,
        timeouts: RELAXED,
        models: [{ name: 'gpt-4.1', upstream_name: UPSTREAM_MODEL, context_window: contextWindow }],
      },
    ],
    routes: { r: { strategy: 'priority', targets: ['oai/gpt-4.1'] } },
  };
}

/** An openai SDK client on the gateway that keeps the exact body text of each request it sends. */
function sdk(gw: TestGateway, sent: string[], defaultHeaders?: Record<string, string>): OpenAI {
  return new OpenAI({
    baseURL: `${gw.url}/v1`,
    apiKey: CLIENT_KEY,
    maxRetries: 0,
    timeout: 60_000,
    defaultHeaders,
    fetch: async (input, init) => {
      if (typeof init?.body === 'string') sent.push(init.body);
      return fetch(input, init);
    },
  });
}

/**
 * The upstream got `clientText` byte for byte but for `"model":"r"`, which is the upstream's model name
 * (SPEC §4, README "OpenAI-dialect upstreams"). Reported by the first difference, not a megabyte diff.
 */
function expectVerbatim(clientText: string, hit: Hit | undefined): void {
  expect(hit, 'the upstream was called').toBeDefined();
  const from = '"model":"r"';
  const at = clientText.indexOf(from);
  expect(at, 'the client body names model r').toBeGreaterThanOrEqual(0);
  const expected =
    clientText.slice(0, at) +
    `"model":${JSON.stringify(UPSTREAM_MODEL)}` +
    clientText.slice(at + from.length);
  const got = hit!.raw;
  if (got === expected) return;
  let i = 0;
  while (i < got.length && i < expected.length && got[i] === expected[i]) i++;
  expect.fail(
    `upstream body differs from the client's at char ${i} of ${expected.length} (got ${got.length}):\n` +
      `  sent by client: ${JSON.stringify(expected.slice(Math.max(0, i - 60), i + 60))}\n` +
      `  got upstream:   ${JSON.stringify(got.slice(Math.max(0, i - 60), i + 60))}`,
  );
}

function raw(
  gw: TestGateway,
  text: string,
  headers: Record<string, string> = {},
  path = '/v1/chat/completions',
) {
  return request(`${gw.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${CLIENT_KEY}`, ...headers },
    body: text,
    headersTimeout: 60_000,
    bodyTimeout: 60_000,
  });
}

async function collect(stream: AsyncIterable<ChatCompletionChunk>): Promise<ChatCompletionChunk[]> {
  const out: ChatCompletionChunk[] = [];
  for await (const c of stream) out.push(c);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Realistic request pieces

const USER_MSG = [{ role: 'user', content: 'What is the weather in Paris today?' }];

const WEATHER_TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Get the current weather for a city.',
    parameters: {
      type: 'object',
      properties: {
        city: { type: 'string', description: 'City name, e.g. Paris' },
        unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
      },
      required: ['city', 'unit'],
      additionalProperties: false,
    },
    strict: true,
  },
};
const TIME_TOOL = {
  type: 'function',
  function: {
    name: 'get_time',
    description: 'Current local time in a timezone.',
    parameters: { type: 'object', properties: { tz: { type: 'string' } }, required: ['tz'] },
  },
};
const SQL_TOOL = {
  type: 'custom',
  custom: { name: 'run_sql', description: 'Runs one read-only SQL query.', format: { type: 'text' } },
};
const LEGACY_FUNCTIONS = [
  {
    name: 'get_weather',
    description: 'Get the current weather for a city.',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
];

/**
 * A strict json_schema `levels` objects deep (each level an object holding the next), with `$defs`, `$ref`
 * and `anyOf`, as OpenAI's structured outputs take it. `nullable` wraps each level as zod's `.nullable()`
 * and pydantic's `Optional[...]` inline it: `anyOf: [{...}, {type: "null"}]`.
 */
function nestedSchema(levels: number, nullable: boolean): Json {
  let node: Json = {
    type: 'object',
    properties: { value: { $ref: '#/$defs/leaf' }, tags: { type: 'array', items: { type: 'string' } } },
    required: ['value', 'tags'],
    additionalProperties: false,
  };
  for (let i = levels; i > 1; i--) {
    const child = nullable ? { anyOf: [node, { type: 'null' }] } : node;
    node = {
      type: 'object',
      description: `level ${i - 1}`,
      properties: { name: { type: 'string' }, [`level_${i}`]: child },
      required: ['name', `level_${i}`],
      additionalProperties: false,
    };
  }
  return {
    ...node,
    $defs: {
      leaf: {
        anyOf: [{ type: 'string' }, { type: 'number' }, { type: 'array', items: { type: 'integer' } }],
      },
    },
  };
}

/** How deeply a JSON text's arrays and objects nest (strings skipped). */
function nesting(text: string): number {
  let depth = 0;
  let max = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      for (i++; text[i] !== '"'; i++) if (text[i] === '\\') i++;
    } else if (c === '{' || c === '[') max = Math.max(max, ++depth);
    else if (c === '}' || c === ']') depth--;
  }
  return max;
}

const deepFormat = (levels: number, nullable: boolean, strict: boolean): Json => ({
  type: 'json_schema',
  json_schema: {
    name: 'org_chart',
    description: 'A deep org chart',
    schema: nestedSchema(levels, nullable),
    strict,
  },
});

/** Every current Chat Completions parameter, each with a valid value, as its own request. */
const PARAMS: readonly (readonly [string, Json])[] = [
  ['reasoning_effort', { reasoning_effort: 'high' }],
  ['reasoning_effort minimal', { reasoning_effort: 'minimal' }],
  ['verbosity', { verbosity: 'low' }],
  ['service_tier', { service_tier: 'flex' }],
  ['store + metadata', { store: true, metadata: { project: 'billing', 'trace-id': 'abc-123', tier: 'pro' } }],
  ['prediction', { prediction: { type: 'content', content: 'export const answer = 42;\n' } }],
  [
    'web_search_options',
    {
      web_search_options: {
        search_context_size: 'medium',
        user_location: {
          type: 'approximate',
          approximate: { country: 'GB', city: 'London', region: 'London', timezone: 'Europe/London' },
        },
      },
    },
  ],
  ['audio + modalities', { modalities: ['text', 'audio'], audio: { voice: 'alloy', format: 'wav' } }],
  ['prompt_cache_key', { prompt_cache_key: 'tenant-42:support-bot:v3' }],
  ['safety_identifier', { safety_identifier: '9b74c9897bac770ffc029102a200c5de' }],
  ['user', { user: 'user-1234@example.com' }],
  ['seed', { seed: 4_242_424_242 }],
  ['negative seed', { seed: -7 }],
  ['logit_bias', { logit_bias: { '50256': -100, '1734': 5.5, '198': 100 } }],
  ['logprobs + top_logprobs', { logprobs: true, top_logprobs: 20 }],
  ['n', { n: 3 }],
  ['parallel_tool_calls', { tools: [WEATHER_TOOL, TIME_TOOL], parallel_tool_calls: false }],
  ['tool_choice none', { tools: [WEATHER_TOOL], tool_choice: 'none' }],
  ['tool_choice auto', { tools: [WEATHER_TOOL], tool_choice: 'auto' }],
  ['tool_choice required', { tools: [WEATHER_TOOL, TIME_TOOL], tool_choice: 'required' }],
  [
    'tool_choice named function',
    {
      tools: [WEATHER_TOOL, TIME_TOOL],
      tool_choice: { type: 'function', function: { name: 'get_weather' } },
    },
  ],
  [
    'tool_choice allowed_tools',
    {
      tools: [WEATHER_TOOL, TIME_TOOL],
      tool_choice: {
        type: 'allowed_tools',
        allowed_tools: { mode: 'required', tools: [{ type: 'function', function: { name: 'get_time' } }] },
      },
    },
  ],
  [
    'tool_choice custom',
    { tools: [SQL_TOOL, WEATHER_TOOL], tool_choice: { type: 'custom', custom: { name: 'run_sql' } } },
  ],
  ['response_format text', { response_format: { type: 'text' } }],
  ['response_format json_object', { response_format: { type: 'json_object' } }],
  [
    'response_format json_schema strict, 22 levels, $defs, anyOf',
    { response_format: deepFormat(22, false, true) },
  ],
  ['max_completion_tokens', { max_completion_tokens: 4096 }],
  ['max_tokens', { max_tokens: 1024 }],
  ['temperature, top_p, penalties', { temperature: 0, top_p: 1, presence_penalty: 2, frequency_penalty: -2 }],
  ['stop as a string', { stop: '\nObservation:' }],
  ['stop as an array of 4', { stop: ['\n\nHuman:', '</answer>', '###', 'END'] }],
  ['functions + function_call auto', { functions: LEGACY_FUNCTIONS, function_call: 'auto' }],
  [
    'functions + function_call named',
    { functions: LEGACY_FUNCTIONS, function_call: { name: 'get_weather' } },
  ],
];

/** Everything at once that OpenAI takes together (no legacy functions beside tools, no audio beside n). */
const ALL_TOGETHER: Json = {
  model: 'r',
  messages: [
    { role: 'developer', content: 'You are a concise assistant.' },
    { role: 'user', content: 'What is the weather in Paris? Answer in JSON.' },
  ],
  reasoning_effort: 'medium',
  verbosity: 'medium',
  service_tier: 'auto',
  store: true,
  metadata: { project: 'billing', session: 's-42' },
  prediction: { type: 'content', content: '{"city":"Paris"}' },
  prompt_cache_key: 'tenant-42',
  safety_identifier: 'u-5f2a',
  user: 'u-5f2a',
  seed: 12345,
  logit_bias: { '1734': -10 },
  logprobs: true,
  top_logprobs: 5,
  n: 2,
  tools: [WEATHER_TOOL, TIME_TOOL],
  tool_choice: 'auto',
  parallel_tool_calls: true,
  response_format: deepFormat(22, false, true),
  max_completion_tokens: 2048,
  temperature: 0.7,
  top_p: 0.95,
  presence_penalty: 0.1,
  frequency_penalty: 0.1,
  stop: ['\n\nHuman:', '</answer>', '###', 'END'],
};

// =========================================================================================================

describe('every current Chat Completions parameter reaches an OpenAI upstream byte for byte', () => {
  let gw: TestGateway;
  let up: Upstream;
  const sent: string[] = [];
  let client: OpenAI;

  beforeAll(async () => {
    up = await recorder(shared, answerOpenAI);
    gw = shared(await startGateway(openaiConfig(up.url)));
    client = sdk(gw, sent);
  });

  it.each(PARAMS)('%s alone (openai SDK, not streamed)', async (_name, fields) => {
    const before = up.hits.length;
    const params = {
      model: 'r',
      messages: USER_MSG,
      ...fields,
    } as unknown as ChatCompletionCreateParamsNonStreaming;
    const completion = await client.chat.completions.create(params);
    expect(up.hits.length).toBe(before + 1);
    const hit = up.hits[before]!;
    expectVerbatim(sent.at(-1)!, hit);
    expect(hit.path).toBe('/v1/chat/completions');
    expect(completion).toEqual(hit.answered);
  });

  it.each(PARAMS)('%s alone (openai SDK, streamed with include_usage)', async (_name, fields) => {
    const before = up.hits.length;
    const params = {
      model: 'r',
      messages: USER_MSG,
      ...fields,
      stream: true,
      stream_options: { include_usage: true },
    } as unknown as ChatCompletionCreateParamsStreaming;
    const chunks = await collect(await client.chat.completions.create(params));
    expect(up.hits.length).toBe(before + 1);
    expectVerbatim(sent.at(-1)!, up.hits[before]);
    const n = typeof fields.n === 'number' ? fields.n : 1;
    const finishes = chunks.flatMap((c) =>
      c.choices.filter((x) => x.finish_reason != null).map((x) => x.index),
    );
    expect(finishes.sort()).toEqual(Array.from({ length: n }, (_, i) => i));
    expect(chunks.at(-1)?.usage).toEqual(USAGE);
  });

  it('all of them together, not streamed (undici, exact bytes)', async () => {
    const before = up.hits.length;
    const text = JSON.stringify(ALL_TOGETHER);
    const res = await raw(gw, text);
    const answer = (await res.body.json()) as Json;
    expect(res.statusCode, JSON.stringify(answer)).toBe(200);
    expectVerbatim(text, up.hits[before]);
    expect(answer).toEqual(up.hits[before]!.answered);
  });

  it('all of them together, streamed with include_usage (openai SDK): both choices and the usage arrive', async () => {
    const before = up.hits.length;
    const params = {
      ...ALL_TOGETHER,
      stream: true,
      stream_options: { include_usage: true },
    } as unknown as ChatCompletionCreateParamsStreaming;
    const chunks = await collect(await client.chat.completions.create(params));
    expectVerbatim(sent.at(-1)!, up.hits[before]);
    const text: string[] = [];
    for (const c of chunks)
      for (const x of c.choices) text[x.index] = (text[x.index] ?? '') + (x.delta.content ?? '');
    expect(text).toEqual(['ok 0', 'ok 1']);
    expect(chunks.at(-1)?.usage).toEqual(USAGE);
  });

  it('the SDK reads a forced tool call, a streamed legacy function call and a streamed audio answer', async () => {
    const forced = await client.chat.completions.create({
      model: 'r',
      messages: USER_MSG,
      tools: [WEATHER_TOOL],
      tool_choice: 'required',
    } as unknown as ChatCompletionCreateParamsNonStreaming);
    expect(forced.choices[0]?.message.tool_calls?.[0]).toMatchObject({
      type: 'function',
      function: { name: 'get_weather', arguments: '{"city":"Paris"}' },
    });
    const legacy = await client.chat.completions.create({
      model: 'r',
      messages: USER_MSG,
      functions: LEGACY_FUNCTIONS,
      stream: true,
    } as unknown as ChatCompletionCreateParamsStreaming);
    const legacyChunks = await collect(legacy);
    const fnArgs = legacyChunks.map((c) => c.choices[0]?.delta.function_call?.arguments ?? '').join('');
    expect(fnArgs).toBe('{"city":"Paris"}');
    expect(legacyChunks.some((c) => c.choices[0]?.finish_reason === 'function_call')).toBe(true);
    const spoken = await client.chat.completions.create({
      model: 'r',
      messages: USER_MSG,
      modalities: ['text', 'audio'],
      audio: { voice: 'alloy', format: 'wav' },
      stream: true,
    } as unknown as ChatCompletionCreateParamsStreaming);
    const audio = (await collect(spoken)).map(
      (c) =>
        (c.choices[0]?.delta as { audio?: { transcript?: string } } | undefined)?.audio?.transcript ?? '',
    );
    expect(audio.join('')).toBe('ok');
  });
});

// =========================================================================================================

/** A PNG of about `kb` KB: a real signature and header, then filler, base64 (as a screenshot's data URL is). */
function pngBase64(kb: number): string {
  const head = Buffer.from(PNG_1PX, 'base64').subarray(0, 33);
  const body = Buffer.alloc(kb * 1024);
  for (let i = 0; i < body.length; i++) body[i] = (i * 2654435761) >>> 24;
  return Buffer.concat([head, body]).toString('base64');
}

/** A WAV of about `kb` KB, base64 (input_audio). */
function wavBase64(kb: number): string {
  const b = Buffer.alloc(kb * 1024 + 44);
  b.write('RIFF', 0);
  b.writeUInt32LE(b.length - 8, 4);
  b.write('WAVEfmt ', 8);
  for (let i = 44; i < b.length; i++) b[i] = (i * 7) & 0xff;
  return b.toString('base64');
}

/** A PDF of about `kb` KB, base64. */
function pdfBase64(kb: number): string {
  const text = `%PDF-1.7\n${'1 0 obj << /Type /Catalog >> endobj\n'.repeat(Math.ceil((kb * 1024) / 36))}%%EOF\n`;
  return Buffer.from(text).toString('base64');
}

const UNICODE =
  'RTL: مرحبا بالعالم \u200fשלום עולם\u200f; emoji: 👩🏽‍💻🏳️‍🌈🇯🇵; CJK: 你好，世界。日本語のテキスト。한국어; ' +
  'combining: e\u0301 n\u0303 a\u0308\u0323; line/paragraph separators: one\u2028two\u2029three; ' +
  'zero-width: a\u200bb\u200cc\u200dd; math: ∀x∈ℝ: x²≥0; NBSP:\u00a0; tab:\t; quotes: “” ‘’ «»';

/** A conversation as the SDKs build it: every message and part shape OpenAI documents. */
function sdkConversation(): Json[] {
  return [
    { role: 'system', content: 'You are a helpful assistant.' },
    { role: 'developer', content: [{ type: 'text', text: 'Prefer metric units.' }], name: 'policy' },
    {
      role: 'user',
      name: 'alice',
      content: [
        { type: 'text', text: 'Here is a screenshot, a voice note and the contract.' },
        { type: 'image_url', image_url: { url: `data:image/png;base64,${pngBase64(300)}`, detail: 'high' } },
        { type: 'image_url', image_url: { url: 'https://example.com/chart.png', detail: 'low' } },
        { type: 'input_audio', input_audio: { data: wavBase64(120), format: 'wav' } },
        {
          type: 'file',
          file: { filename: 'contract.pdf', file_data: `data:application/pdf;base64,${pdfBase64(200)}` },
        },
        { type: 'file', file: { file_id: 'file-6F2ksmvXxt4VdoqmHRw6kL' } },
      ],
    },
    {
      role: 'assistant',
      content: null,
      tool_calls: [
        {
          id: 'call_abc123',
          type: 'function',
          function: { name: 'get_weather', arguments: '{"city":"Paris","unit":"celsius"}' },
        },
        {
          id: 'call_def456',
          type: 'function',
          function: { name: 'get_time', arguments: '{"tz":"Europe/Paris"}' },
        },
      ],
    },
    { role: 'tool', tool_call_id: 'call_abc123', content: '{"temp":18,"sky":"clear"}' },
    { role: 'tool', tool_call_id: 'call_def456', content: [{ type: 'text', text: '14:05' }] },
    { role: 'assistant', content: 'It is 18°C and clear; 14:05 local time.', name: 'helper' },
    { role: 'user', content: 'Say something rude.' },
    { role: 'assistant', content: null, refusal: "I'm sorry, I can't help with that." },
    { role: 'assistant', content: [{ type: 'refusal', refusal: 'Still no.' }] },
    { role: 'user', content: 'Then read it aloud.' },
    { role: 'assistant', content: null, audio: { id: 'audio_abc123' } },
    { role: 'function', name: 'get_weather', content: '{"temp":18}' },
    { role: 'user', content: UNICODE },
  ];
}

describe('messages as SDKs build them', () => {
  it('every message and part shape (developer, names, images, audio, files, tool loop, refusal, audio id) goes byte for byte', async () => {
    const up = await recorder(track, answerOpenAI);
    const gw = track(await startGateway(openaiConfig(up.url)));
    const sent: string[] = [];
    const completion = await sdk(gw, sent).chat.completions.create({
      model: 'r',
      messages: sdkConversation(),
      tools: [WEATHER_TOOL, TIME_TOOL],
    } as unknown as ChatCompletionCreateParamsNonStreaming);
    expect(sent[0]!.length).toBeGreaterThan(800_000);
    expectVerbatim(sent[0]!, up.hits[0]);
    expect(completion.choices[0]?.message.content).toBe('ok 0');
  });

  it('a 500-message agent conversation goes byte for byte, streamed', async () => {
    const up = await recorder(track, answerOpenAI);
    const gw = track(await startGateway(openaiConfig(up.url)));
    const messages: Json[] = [{ role: 'developer', content: 'You are a coding agent.' }];
    for (let i = 0; messages.length < 500; i++) {
      messages.push({
        role: 'user',
        content: `Step ${i}: open file src/module_${i}.ts and fix the bug on line ${i * 3}.`,
      });
      messages.push({
        role: 'assistant',
        content: i % 2 === 0 ? null : `Looking at module ${i}.`,
        tool_calls: [
          {
            id: `call_${i.toString(36)}x`,
            type: 'function',
            function: { name: 'get_time', arguments: `{"tz":"UTC+${i % 12}"}` },
          },
        ],
      });
      messages.push({
        role: 'tool',
        tool_call_id: `call_${i.toString(36)}x`,
        content: `export const v${i} = ${i};\n`.repeat(5),
      });
    }
    messages.length = 500;
    messages[499] = { role: 'user', content: 'Summarise what you changed.' };
    const sent: string[] = [];
    const chunks = await collect(
      await sdk(gw, sent).chat.completions.create({
        model: 'r',
        messages,
        tools: [TIME_TOOL],
        stream: true,
      } as unknown as ChatCompletionCreateParamsStreaming),
    );
    expectVerbatim(sent[0]!, up.hits[0]);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe('ok 0');
  });

  it('a 1.5 MB prompt under the body limit goes byte for byte and is answered', async () => {
    const up = await recorder(track, answerOpenAI);
    const gw = track(await startGateway(openaiConfig(up.url)));
    const paragraph =
      'The quarterly report shows revenue grew 12% while costs held flat; the team shipped the new billing ' +
      'pipeline, retired two legacy services and cut p99 latency from 480 ms to 210 ms. ';
    let doc = '';
    for (let i = 0; doc.length < 1_500_000; i++) doc += `§${i} ${paragraph}`;
    const text = JSON.stringify({
      model: 'r',
      messages: [
        { role: 'developer', content: 'Summarise the document.' },
        { role: 'user', content: doc },
      ],
      max_completion_tokens: 4096,
    });
    expect(text.length).toBeGreaterThan(1_500_000);
    expect(text.length).toBeLessThan(10 * 1024 * 1024);
    const res = await raw(gw, text);
    const body = await res.body.text();
    expect(res.statusCode, body.slice(0, 500)).toBe(200);
    expectVerbatim(text, up.hits[0]);
  });

  it('unicode everywhere (RTL, emoji, CJK, combining marks, U+2028) goes byte for byte, and comes back intact even split mid-character', async () => {
    const answerText = `Answer: ${UNICODE}`;
    const answerBytes = (model: string): Buffer =>
      Buffer.from(
        [
          `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] })}\n\n`,
          `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model, choices: [{ index: 0, delta: { content: answerText }, finish_reason: null }] })}\n\n`,
          `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model, choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] })}\n\n`,
          'data: [DONE]\n\n',
        ].join(''),
      );
    const up = await recorder(track, async (hit, res) => {
      const bytes = answerBytes(String(hit.body.model));
      // Cut inside the first 4-byte emoji, so each of its bytes crosses a read boundary.
      const emoji = bytes.indexOf(Buffer.from('👩'));
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (const [from, to] of [
        [0, emoji + 1],
        [emoji + 1, emoji + 3],
        [emoji + 3, bytes.length],
      ] as const) {
        await new Promise<void>((resolve) => res.write(bytes.subarray(from, to), () => resolve()));
        await new Promise<void>((resolve) => setTimeout(resolve, 25));
      }
      res.end();
    });
    const gw = track(await startGateway(openaiConfig(up.url)));
    const sent: string[] = [];
    const chunks = await collect(
      await sdk(gw, sent).chat.completions.create({
        model: 'r',
        messages: [
          { role: 'developer', content: UNICODE },
          { role: 'user', content: [{ type: 'text', text: UNICODE }], name: 'user_1' },
        ],
        stream: true,
      } as unknown as ChatCompletionCreateParamsStreaming),
    );
    expectVerbatim(sent[0]!, up.hits[0]);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(answerText);
  });

  it('a tool whose parameters nest 20 objects deep, each optional as zod .nullable() writes it (anyOf with null), is routed, not refused', async () => {
    const up = await recorder(track, answerOpenAI);
    const gw = track(await startGateway(openaiConfig(up.url)));
    const text = JSON.stringify({
      model: 'r',
      messages: USER_MSG,
      tools: [
        {
          type: 'function',
          function: {
            name: 'save_org_chart',
            description: 'Saves an org chart.',
            parameters: nestedSchema(20, true),
          },
        },
      ],
    });
    // The premise: an honest schema, deeper as JSON text than the gateway's undocumented bound.
    expect(nesting(text)).toBeGreaterThan(64);
    const res = await raw(gw, text);
    const body = await res.body.text();
    expect(res.statusCode, body.slice(0, 300)).toBe(200);
    expectVerbatim(text, up.hits[0]);
  });

  it('a response_format json_schema of 20 nullable levels (not strict) is routed, not refused', async () => {
    const up = await recorder(track, answerOpenAI);
    const gw = track(await startGateway(openaiConfig(up.url)));
    const text = JSON.stringify({
      model: 'r',
      messages: USER_MSG,
      response_format: deepFormat(20, true, false),
    });
    expect(nesting(text)).toBeGreaterThan(64);
    const res = await raw(gw, text);
    const body = await res.body.text();
    expect(res.statusCode, body.slice(0, 300)).toBe(200);
    expectVerbatim(text, up.hits[0]);
  });

  it('a prompt of ~90k real tokens of numbers (a pasted id list) to a 128k-window model is sent, not refused as past the window', async () => {
    const up = await recorder(track, answerOpenAI);
    const gw = track(await startGateway(openaiConfig(up.url, 128_000)));
    let seed = 7;
    const ids: string[] = [];
    for (let i = 0; i < 22_500; i++) {
      seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
      ids.push(String(100_000_000 + (seed % 900_000_000)));
    }
    const content = `Which of these order ids appear twice?\n${ids.join(' ')}`;
    const exact = countTokens(content);
    // The premise: well inside the window by OpenAI's own tokenizer (o200k), with room for the answer.
    expect(exact).toBeGreaterThan(80_000);
    expect(exact + 1_000).toBeLessThan(110_000);
    const text = JSON.stringify({
      model: 'r',
      messages: [{ role: 'user', content }],
      max_completion_tokens: 1_000,
    });
    const res = await raw(gw, text);
    const body = await res.body.text();
    expect(res.statusCode, `${exact} real tokens: ${body.slice(0, 300)}`).toBe(200);
    expectVerbatim(text, up.hits[0]);
  });
});

// =========================================================================================================

describe('headers real clients send', () => {
  it('OpenAI-Organization/Project/Beta, x-stainless-*, SDK User-Agents, Idempotency-Key, traceparent, Accept-Encoding: the request is routed and answered readably', async () => {
    const up = await recorder(track, answerOpenAI);
    const gw = track(await startGateway(openaiConfig(up.url)));
    const text = JSON.stringify({ model: 'r', messages: USER_MSG });
    for (const ua of [
      'OpenAI/Python 1.99.9',
      'OpenAI/JS 6.49.0',
      'langchain-openai/1.5.8',
      'ai-sdk/openai/3.0.141',
    ]) {
      const before = up.hits.length;
      const res = await raw(gw, text, {
        'user-agent': ua,
        'openai-organization': 'org-AbCdEf0123456789',
        'openai-project': 'proj_AbCdEf0123456789',
        'openai-beta': 'assistants=v2',
        'x-stainless-lang': 'python',
        'x-stainless-package-version': '1.99.9',
        'x-stainless-os': 'Linux',
        'x-stainless-arch': 'x64',
        'x-stainless-runtime': 'CPython',
        'x-stainless-runtime-version': '3.12.4',
        'x-stainless-async': 'false',
        'x-stainless-retry-count': '0',
        'x-stainless-read-timeout': '600',
        'idempotency-key': 'stainless-python-retry-4c1e0f5a-8b9d-4f1e-a1b2-c3d4e5f60718',
        traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
        tracestate: 'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE',
        'x-request-id': '5b2c1d9e-3f4a-4b6c-8d7e-9f0a1b2c3d4e',
        'accept-encoding': 'gzip, deflate, br',
        accept: 'application/json',
      });
      const buf = Buffer.from(await res.body.arrayBuffer());
      const coding = String(res.headers['content-encoding'] ?? '');
      const decoded = coding === 'gzip' ? gunzipSync(buf) : coding === 'br' ? brotliDecompressSync(buf) : buf;
      expect(res.statusCode, `${ua}: ${decoded.toString().slice(0, 300)}`).toBe(200);
      expect(JSON.parse(decoded.toString())).toEqual(up.hits[before]!.answered);
      expect(res.headers['x-request-id']).toBe('5b2c1d9e-3f4a-4b6c-8d7e-9f0a1b2c3d4e');
      expectVerbatim(text, up.hits[before]);
      // The upstream is called with the provider's key, never the client's.
      expect(up.hits[before]!.headers.authorization).toBe(`Bearer ${UP_KEY}`);
      expect(JSON.stringify(up.hits[before]!.headers)).not.toContain(CLIENT_KEY);
    }
  });

  it('the openai SDK with default headers of its own (organization, project) works as against OpenAI', async () => {
    const up = await recorder(track, answerOpenAI);
    const gw = track(await startGateway(openaiConfig(up.url)));
    const client = new OpenAI({
      baseURL: `${gw.url}/v1`,
      apiKey: CLIENT_KEY,
      organization: 'org-AbCdEf0123456789',
      project: 'proj_AbCdEf0123456789',
      maxRetries: 2,
      timeout: 60_000,
    });
    const { data, response } = await client.chat.completions
      .create({ model: 'r', messages: [{ role: 'user', content: 'hi' }] }, {
        idempotencyKey: 'idem-123',
      } as never)
      .withResponse();
    expect(response.status).toBe(200);
    expect(data.choices[0]?.message.content).toBe('ok 0');
  });

  it('a gzip-compressed request body (which the README does not list as accepted) gets an OpenAI-shaped 415, never a crash', async () => {
    const up = await recorder(track, answerOpenAI);
    const gw = track(await startGateway(openaiConfig(up.url)));
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'content-encoding': 'gzip',
        authorization: `Bearer ${CLIENT_KEY}`,
      },
      body: gzipSync(JSON.stringify({ model: 'r', messages: USER_MSG })),
    });
    const body = (await res.body.json()) as { error?: Json };
    expect(res.statusCode).toBe(415);
    expect(body.error).toMatchObject({
      type: expect.any(String),
      message: expect.stringContaining('content-encoding'),
    });
    expect(up.hits).toHaveLength(0);
  });
});

// =========================================================================================================

/** Anthropic's documented top-level Messages API request fields. */
const ANTHROPIC_FIELDS = new Set([
  'model',
  'messages',
  'max_tokens',
  'system',
  'metadata',
  'stop_sequences',
  'stream',
  'temperature',
  'top_p',
  'top_k',
  'tools',
  'tool_choice',
  'thinking',
  'service_tier',
  'output_config',
  'container',
  'mcp_servers',
  'context_management',
]);

function claudeStream(
  blocks: ({ type: 'text'; text: string } | { type: 'tool_use'; id: string; name: string; input: Json })[],
  stopReason: string,
  input: number,
  output: number,
): string {
  const events: Json[] = [
    {
      type: 'message_start',
      message: {
        id: 'msg_01XFDUDYJgAACzvnptvVoYEL',
        type: 'message',
        role: 'assistant',
        model: 'claude-sonnet-4-5-20250929',
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: {
          input_tokens: input,
          output_tokens: 1,
          cache_creation_input_tokens: 0,
          cache_read_input_tokens: 0,
        },
      },
    },
    { type: 'ping' },
  ];
  blocks.forEach((b, index) => {
    if (b.type === 'text') {
      events.push({ type: 'content_block_start', index, content_block: { type: 'text', text: '' } });
      for (const piece of [b.text.slice(0, 3), b.text.slice(3)])
        events.push({ type: 'content_block_delta', index, delta: { type: 'text_delta', text: piece } });
    } else {
      events.push({
        type: 'content_block_start',
        index,
        content_block: { type: 'tool_use', id: b.id, name: b.name, input: {} },
      });
      const json = JSON.stringify(b.input);
      for (const piece of ['', json.slice(0, 5), json.slice(5)])
        events.push({
          type: 'content_block_delta',
          index,
          delta: { type: 'input_json_delta', partial_json: piece },
        });
    }
    events.push({ type: 'content_block_stop', index });
  });
  events.push({
    type: 'message_delta',
    delta: { stop_reason: stopReason, stop_sequence: null },
    usage: { output_tokens: output },
  });
  events.push({ type: 'message_stop' });
  return events.map(anthropicSseFrame).join('');
}

async function anthropicGateway(answer: Answer): Promise<{ up: Upstream; gw: TestGateway; client: OpenAI }> {
  const up = await recorder(track, answer);
  const gw = track(
    await startGateway({
      server: { api_keys: [CLIENT_KEY] },
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: up.url,
          api_key: ANTH_KEY,
          timeouts: RELAXED,
          models: [{ name: 'claude-sonnet-4-5', context_window: 200_000 }],
        },
      ],
      routes: { c: { strategy: 'priority', targets: ['anth/claude-sonnet-4-5'] } },
    }),
  );
  const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: CLIENT_KEY, maxRetries: 0, timeout: 60_000 });
  return { up, gw, client };
}

describe('the Anthropic dialect: honest OpenAI requests to a Claude upstream', () => {
  it('system + developer, an image, tools, stop, streamed with usage: Claude gets what Anthropic documents, the SDK reads an OpenAI stream', async () => {
    const png = pngBase64(200);
    const { up, client } = await anthropicGateway((_hit, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(
        claudeStream(
          [
            { type: 'text', text: 'A cat. Checking the weather.' },
            {
              type: 'tool_use',
              id: 'toolu_01A09q90qw90lq917835lq9',
              name: 'get_weather',
              input: { city: 'Paris', unit: 'celsius' },
            },
          ],
          'tool_use',
          1_250,
          42,
        ),
      );
    });
    const chunks = await collect(
      await client.chat.completions.create({
        model: 'c',
        messages: [
          { role: 'system', content: 'You are terse.' },
          { role: 'developer', content: 'Answer in English.' },
          {
            role: 'user',
            content: [
              { type: 'text', text: 'What is in this image, and what is the weather in Paris?' },
              { type: 'image_url', image_url: { url: `data:image/png;base64,${png}`, detail: 'high' } },
            ],
          },
        ],
        tools: [WEATHER_TOOL as never],
        tool_choice: 'auto',
        stop: ['\n\nHuman:', '</answer>', '###', 'END'],
        max_completion_tokens: 1024,
        temperature: 0.3,
        stream: true,
        stream_options: { include_usage: true },
      }),
    );
    expect(up.hits).toHaveLength(1);
    const sent = up.hits[0]!;
    expect(sent.path).toBe('/v1/messages');
    expect(sent.headers['x-api-key']).toBe(ANTH_KEY);
    expect(sent.headers['anthropic-version']).toBe('2023-06-01');
    expect(JSON.stringify(sent.headers)).not.toContain(CLIENT_KEY);
    for (const k of Object.keys(sent.body))
      expect(ANTHROPIC_FIELDS.has(k), `Claude was sent unknown field ${k}`).toBe(true);
    expect(sent.body).toMatchObject({
      model: 'claude-sonnet-4-5',
      system: 'You are terse.\n\nAnswer in English.',
      max_tokens: 1024,
      temperature: 0.3,
      stop_sequences: ['\n\nHuman:', '</answer>', '###', 'END'],
      stream: true,
      tools: [
        {
          name: 'get_weather',
          description: 'Get the current weather for a city.',
          input_schema: WEATHER_TOOL.function.parameters,
        },
      ],
      tool_choice: { type: 'auto' },
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What is in this image, and what is the weather in Paris?' },
            { type: 'image', source: { type: 'base64', media_type: 'image/png', data: png } },
          ],
        },
      ],
    });
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
    expect(text).toBe('A cat. Checking the weather.');
    const call = chunks.flatMap((c) => c.choices[0]?.delta.tool_calls ?? []);
    expect(call[0]).toMatchObject({
      index: 0,
      id: expect.any(String),
      type: 'function',
      function: { name: 'get_weather' },
    });
    expect(call.map((c) => c.function?.arguments ?? '').join('')).toBe('{"city":"Paris","unit":"celsius"}');
    expect(chunks.flatMap((c) => c.choices.map((x) => x.finish_reason)).filter(Boolean)).toEqual([
      'tool_calls',
    ]);
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toMatchObject({ prompt_tokens: 1_250, completion_tokens: 42, total_tokens: 1_292 });
  });

  it("a tool loop's second round with OpenAI-only fields (store, metadata, service_tier, prompt_cache_key, verbosity, seed, logit_bias, parallel_tool_calls): Claude gets a valid request, the SDK an OpenAI answer", async () => {
    const { up, client } = await anthropicGateway((_hit, res) =>
      json(res, 200, {
        id: 'msg_01Aq9w938a90dw8q',
        type: 'message',
        role: 'assistant',
        model: 'claude-sonnet-4-5-20250929',
        content: [{ type: 'text', text: 'It is 18°C and clear in Paris.' }],
        stop_reason: 'end_turn',
        stop_sequence: null,
        usage: { input_tokens: 410, output_tokens: 12 },
      }),
    );
    const completion: ChatCompletion = await client.chat.completions.create({
      model: 'c',
      messages: [
        { role: 'developer', content: 'Use the tools.' },
        { role: 'user', content: 'Weather in Paris?' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [
            {
              id: 'call_abc123',
              type: 'function',
              function: { name: 'get_weather', arguments: '{"city":"Paris","unit":"celsius"}' },
            },
          ],
        },
        { role: 'tool', tool_call_id: 'call_abc123', content: '{"temp":18,"sky":"clear"}' },
      ],
      tools: [WEATHER_TOOL as never, TIME_TOOL as never],
      parallel_tool_calls: false,
      store: true,
      metadata: { project: 'billing' },
      service_tier: 'flex',
      prompt_cache_key: 'tenant-42',
      verbosity: 'low',
      seed: 42,
      logit_bias: { '1734': -5 },
      user: 'user-1234',
    } as unknown as ChatCompletionCreateParamsNonStreaming);
    const sent = up.hits[0]!.body;
    for (const k of Object.keys(sent))
      expect(ANTHROPIC_FIELDS.has(k), `Claude was sent unknown field ${k}`).toBe(true);
    // Anthropic's metadata takes user_id only; its service_tier takes auto / standard_only.
    expect(sent.metadata).toEqual({ user_id: 'user-1234' });
    if (sent.service_tier !== undefined) expect(['auto', 'standard_only']).toContain(sent.service_tier);
    expect(sent.system).toBe('Use the tools.');
    expect(sent.tool_choice).toEqual({ type: 'auto', disable_parallel_tool_use: true });
    const messages = sent.messages as Json[];
    expect(messages).toHaveLength(3);
    expect(messages[1]).toMatchObject({
      role: 'assistant',
      content: [{ type: 'tool_use', name: 'get_weather', input: { city: 'Paris', unit: 'celsius' } }],
    });
    const useId = ((messages[1]!.content as Json[])[0] as Json).id;
    expect(messages[2]).toMatchObject({
      role: 'user',
      content: [{ type: 'tool_result', tool_use_id: useId }],
    });
    expect(JSON.stringify(messages[2])).toContain('clear');
    expect(completion.object).toBe('chat.completion');
    expect(completion.choices[0]?.message).toMatchObject({
      role: 'assistant',
      content: 'It is 18°C and clear in Paris.',
    });
    expect(completion.choices[0]?.finish_reason).toBe('stop');
    expect(completion.usage).toMatchObject({ prompt_tokens: 410, completion_tokens: 12, total_tokens: 422 });
  });

  it('a PDF file part, an image by URL and a tool result made of parts reach Claude as document, image and tool_result blocks', async () => {
    const pdf = pdfBase64(150);
    const { up, client } = await anthropicGateway((_hit, res) =>
      json(res, 200, {
        id: 'msg_2',
        type: 'message',
        role: 'assistant',
        model: 'claude-sonnet-4-5-20250929',
        content: [{ type: 'text', text: 'Read both.' }],
        stop_reason: 'end_turn',
        stop_sequence: null,
        usage: { input_tokens: 3000, output_tokens: 3 },
      }),
    );
    const completion = await client.chat.completions.create({
      model: 'c',
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'Compare the contract with the chart.' },
            {
              type: 'file',
              file: { filename: 'contract.pdf', file_data: `data:application/pdf;base64,${pdf}` },
            },
            { type: 'image_url', image_url: { url: 'https://example.com/chart.png', detail: 'low' } },
          ],
        },
        {
          role: 'assistant',
          content: 'Let me take a screenshot.',
          tool_calls: [
            { id: 'call_shot1', type: 'function', function: { name: 'get_time', arguments: '{"tz":"UTC"}' } },
          ],
        },
        { role: 'tool', tool_call_id: 'call_shot1', content: [{ type: 'text', text: '12:00 UTC' }] },
      ],
      tools: [TIME_TOOL as never],
    } as unknown as ChatCompletionCreateParamsNonStreaming);
    expect(completion.choices[0]?.message.content).toBe('Read both.');
    const messages = up.hits[0]!.body.messages as Json[];
    expect(messages[0]).toEqual({
      role: 'user',
      content: [
        { type: 'text', text: 'Compare the contract with the chart.' },
        {
          type: 'document',
          source: { type: 'base64', media_type: 'application/pdf', data: pdf },
          title: 'contract.pdf',
        },
        { type: 'image', source: { type: 'url', url: 'https://example.com/chart.png' } },
      ],
    });
    expect(messages[1]).toMatchObject({
      role: 'assistant',
      content: [
        { type: 'text', text: 'Let me take a screenshot.' },
        { type: 'tool_use', name: 'get_time', input: { tz: 'UTC' } },
      ],
    });
    expect(messages[2]).toMatchObject({
      role: 'user',
      content: [{ type: 'tool_result', content: [{ type: 'text', text: '12:00 UTC' }] }],
    });
  });

  it('unicode and a 200-message conversation reach Claude intact, in order, alternating', async () => {
    const { up, client } = await anthropicGateway((_hit, res) =>
      json(res, 200, {
        id: 'msg_1',
        type: 'message',
        role: 'assistant',
        model: 'claude-sonnet-4-5-20250929',
        content: [{ type: 'text', text: `echo: ${UNICODE}` }],
        stop_reason: 'end_turn',
        stop_sequence: null,
        usage: { input_tokens: 9000, output_tokens: 80 },
      }),
    );
    const messages: Json[] = [{ role: 'system', content: UNICODE }];
    for (let i = 0; i < 100; i++) {
      messages.push({ role: 'user', content: `${i}: ${UNICODE}` });
      messages.push({ role: 'assistant', content: `reply ${i}` });
    }
    messages.push({ role: 'user', content: 'last' });
    const completion = await client.chat.completions.create({
      model: 'c',
      messages,
    } as unknown as ChatCompletionCreateParamsNonStreaming);
    const sent = up.hits[0]!.body;
    expect(sent.system).toBe(UNICODE);
    const turns = sent.messages as { role: string; content: { text?: string }[] | string }[];
    expect(turns).toHaveLength(201);
    const textOf = (t: (typeof turns)[number]): string =>
      typeof t.content === 'string' ? t.content : t.content.map((b) => b.text ?? '').join('');
    expect(textOf(turns[0]!)).toBe(`0: ${UNICODE}`);
    expect(textOf(turns[199]!)).toBe('reply 99');
    expect(textOf(turns[200]!)).toBe('last');
    expect(completion.choices[0]?.message.content).toBe(`echo: ${UNICODE}`);
  });
});

// =========================================================================================================

describe('embeddings and models with valid inputs', () => {
  async function embeddingsGateway(): Promise<{ up: Upstream; gw: TestGateway }> {
    const up = await recorder(track, (hit, res) => {
      const body = hit.body;
      const input = body.input;
      const count = Array.isArray(input) && typeof input[0] !== 'number' ? input.length : 1;
      const dims = typeof body.dimensions === 'number' ? body.dimensions : 8;
      const data = Array.from({ length: count }, (_, i) => {
        const floats = Float32Array.from({ length: dims }, (_, k) => (i + 1) * 0.25 + k / 1024);
        const embedding =
          body.encoding_format === 'base64'
            ? Buffer.from(floats.buffer).toString('base64')
            : Array.from(floats);
        return { object: 'embedding', index: i, embedding };
      });
      const answer = {
        object: 'list',
        data,
        model: String(body.model),
        usage: { prompt_tokens: 8, total_tokens: 8 },
      };
      hit.answered = answer;
      json(res, 200, answer);
    });
    const gw = track(
      await startGateway({
        server: { api_keys: [CLIENT_KEY] },
        providers: [
          {
            name: 'emb',
            kind: 'openai',
            base_url: `${up.url}/v1`,
            api_key: UP_KEY,
            timeouts: RELAXED,
            models: [{ name: 'text-embedding-3-large', capabilities: ['embeddings'], context_window: 8191 }],
          },
        ],
        routes: { e: { strategy: 'priority', targets: ['emb/text-embedding-3-large'] } },
      }),
    );
    return { up, gw };
  }

  it("the openai SDK's default embeddings call (base64 on the wire, decoded by the SDK) with dimensions and an array of strings", async () => {
    const { up, gw } = await embeddingsGateway();
    const sent: string[] = [];
    const client = new OpenAI({
      baseURL: `${gw.url}/v1`,
      apiKey: CLIENT_KEY,
      maxRetries: 0,
      timeout: 60_000,
      fetch: async (input, init) => {
        if (typeof init?.body === 'string') sent.push(init.body);
        return fetch(input, init);
      },
    });
    const out = await client.embeddings.create({
      model: 'e',
      input: ['The food was delicious.', '中文文本 and émojis 🎉', 'x'.repeat(2000)],
      dimensions: 256,
      user: 'user-1234',
    });
    expect(out.data).toHaveLength(3);
    expect(out.data[1]!.embedding).toHaveLength(256);
    expect(out.data[1]!.embedding[0]).toBeCloseTo(0.5, 5);
    const hit = up.hits[0]!;
    expect(hit.body.encoding_format).toBe('base64');
    const want = sent[0]!.replace('"model":"e"', '"model":"text-embedding-3-large"');
    expect(hit.raw).toBe(want);
  });

  it('token arrays (one, and a batch) with encoding_format float go byte for byte and come back as sent', async () => {
    const { up, gw } = await embeddingsGateway();
    for (const input of [
      [9906, 1917, 0, 100_256],
      [
        [9906, 1917],
        [40, 1093, 311, 11, 5304],
      ],
    ]) {
      const before = up.hits.length;
      const text = JSON.stringify({ model: 'e', input, encoding_format: 'float', dimensions: 16 });
      const res = await raw(gw, text, {}, '/v1/embeddings');
      const body = (await res.body.json()) as Json;
      expect(res.statusCode, JSON.stringify(body)).toBe(200);
      expect(up.hits[before]!.raw).toBe(text.replace('"model":"e"', '"model":"text-embedding-3-large"'));
      expect(body).toEqual(up.hits[before]!.answered);
    }
  });

  it('models: the SDK lists routes and provider/model names, and retrieves a provider/model id', async () => {
    const up = await recorder(track, answerOpenAI);
    const gw = track(await startGateway(openaiConfig(up.url)));
    const client = new OpenAI({
      baseURL: `${gw.url}/v1`,
      apiKey: CLIENT_KEY,
      maxRetries: 0,
      timeout: 60_000,
    });
    const ids: string[] = [];
    for await (const m of client.models.list()) ids.push(m.id);
    expect(ids).toEqual(expect.arrayContaining(['r', 'oai/gpt-4.1']));
    const one = await client.models.retrieve('oai/gpt-4.1');
    expect(one).toMatchObject({ id: 'oai/gpt-4.1', object: 'model' });
    expect(up.hits).toHaveLength(0);
  });
});
