/**
 * Several answers and token detail in one request: `n` > 1, `logprobs` / `top_logprobs` and
 * `stream_options.include_usage`, streamed and not, through OpenAI-compatible and Anthropic-kind upstreams, as
 * the official openai SDK (its stream helper too) and raw undici see them. SPEC §2 (commit, terminate), README
 * "Failover and streams" (a close without `[DONE]` ends an answer only once every choice asked for has
 * finished), "Routing" (expected output times `n`), and the Anthropic exclusion of `n` > 1.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import OpenAI from 'openai';
import type { ChatCompletionChunk } from 'openai/resources/chat/completions';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, postTo, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { gate, sendJson, startMock, startRawUpstream } from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';

const track = closeAfterEach();
onlyLoopbackFetch();

type Json = Record<string, unknown>;
const SSE = { 'content-type': 'text/event-stream' };
const hi = [{ role: 'user' as const, content: 'hi' }];
const weather = [
  {
    type: 'function' as const,
    function: {
      name: 'weather',
      parameters: { type: 'object', properties: { city: { type: 'string' } } },
    },
  },
];

const HEAD = { id: 'chatcmpl-mc', object: 'chat.completion.chunk', created: 1700000000, model: 'up-model' };
const frame = (data: unknown): string => `data: ${JSON.stringify(data)}\n\n`;
/** One chunk of choice `index`, as OpenAI interleaves `n` > 1 streams: one choice a chunk. */
const chunkOf = (index: number, delta: Json, finish: string | null = null, extra: Json = {}): Json => ({
  ...HEAD,
  choices: [{ index, delta, logprobs: null, finish_reason: finish }],
  ...extra,
});
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The data payloads of an SSE body, in order. */
function dataOf(text: string): string[] {
  return text
    .split('\n\n')
    .filter((e) => e.trim() !== '')
    .map((e) =>
      e
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart())
        .join('\n'),
    );
}

function raw(handler: (req: IncomingMessage, res: ServerResponse) => void) {
  return startRawUpstream(track, handler);
}

/** A gateway whose route `r` is the given OpenAI-dialect upstreams in priority order. */
async function gatewayOver(
  ups: readonly { name: string; url: string }[],
  extra: Json = {},
): Promise<{ gw: TestGateway; client: OpenAI }> {
  const gw = track(
    await startGateway({
      providers: ups.map((u) => simProvider(u.name, u.url, ['m'])),
      routes: { r: { strategy: 'priority', targets: ups.map((u) => `${u.name}/m`) } },
      ...extra,
    }),
  );
  return { gw, client: new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 }) };
}

// ---------------------------------------------------------------------------------------------------------

describe('n: 3 streamed from an OpenAI-compatible upstream', () => {
  // Three interleaved choices: choice 2 opens with a tool call (the first content of any choice), choice 0
  // finishes `stop`, choice 1 `length`, and only later choice 2 `tool_calls`; then the upstream closes
  // without `[DONE]`.
  const OPENING = [
    chunkOf(0, { role: 'assistant', content: '' }),
    chunkOf(1, { role: 'assistant', content: '' }),
    chunkOf(2, { role: 'assistant', content: null }),
    chunkOf(2, {
      tool_calls: [
        { index: 0, id: 'call_w', type: 'function', function: { name: 'weather', arguments: '' } },
      ],
    }),
  ];
  const MIDDLE = [
    chunkOf(0, { content: 'Red' }),
    chunkOf(1, { content: 'Blue' }),
    chunkOf(2, { tool_calls: [{ index: 0, function: { arguments: '{"city":' } }] }),
    chunkOf(1, { content: ' and' }),
    chunkOf(0, {}, 'stop'),
    chunkOf(1, {}, 'length'),
  ];
  const LAST = [
    chunkOf(2, { tool_calls: [{ index: 0, function: { arguments: '"Oslo"}' } }] }),
    chunkOf(2, {}, 'tool_calls'),
  ];

  /** Writes OPENING, waits on `held` (when given), then MIDDLE, a pause, LAST, and closes without `[DONE]`. */
  async function threeChoices(res: ServerResponse, held?: Promise<unknown>): Promise<void> {
    res.writeHead(200, SSE);
    res.write(OPENING.map(frame).join(''));
    if (held) await held;
    res.write(MIDDLE.map(frame).join(''));
    await sleep(30);
    res.end(LAST.map(frame).join(''));
  }

  // The commit is at the first content delta of any choice (SPEC §2): choice 2's tool call, while choices 0
  // and 1 have sent only their role chunks. The client has its 200 and headers while the upstream still holds.
  it('commits at the first content of any choice, and ends with [DONE] only once all three finished', async () => {
    const g = gate(10_000);
    const up = await raw((_q, res) => void threeChoices(res, g.wait));
    const { gw } = await gatewayOver([{ name: 'a', url: up.url }]);
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', messages: hi, n: 3, stream: true, tools: weather }),
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-router-provider']).toBe('a');
    g.open();
    const text = await res.body.text();
    // Relayed as sent, in order, with nothing held back or added but the `[DONE]` a whole answer earns.
    expect(dataOf(text)).toEqual(
      [...OPENING, ...MIDDLE, ...LAST].map((c) => JSON.stringify(c)).concat('[DONE]'),
    );
  });

  it("the SDK's finalChatCompletion() assembles all three choices with their own finish reasons", async () => {
    const up = await raw((_q, res) => void threeChoices(res));
    const { client } = await gatewayOver([{ name: 'a', url: up.url }]);
    const final = await client.chat.completions
      .stream({ model: 'r', messages: hi, n: 3, tools: weather })
      .finalChatCompletion();
    expect(
      final.choices.map((c) => [
        c.index,
        c.message.content,
        c.finish_reason,
        c.message.tool_calls?.map((t) =>
          t.type === 'function' ? [t.id, t.function.name, t.function.arguments] : t,
        ),
      ]),
    ).toEqual([
      [0, 'Red', 'stop', undefined],
      [1, 'Blue and', 'length', undefined],
      [2, null, 'tool_calls', [['call_w', 'weather', '{"city":"Oslo"}']]],
    ]);
  });
});

describe('n: 3 cut after two choices finished, before the third did', () => {
  // Choices 0 and 1 finish; choice 2 has sent text and is still open when the upstream fails. Each way of
  // failing ends the client's stream as cut: an OpenAI-shaped error event, no `[DONE]`.
  const BEFORE = [
    chunkOf(0, { role: 'assistant', content: '' }),
    chunkOf(1, { role: 'assistant', content: '' }),
    chunkOf(2, { role: 'assistant', content: '' }),
    chunkOf(0, { content: 'alpha' }),
    chunkOf(1, { content: 'beta' }),
    chunkOf(2, { content: 'gamma' }),
    chunkOf(0, {}, 'stop'),
    chunkOf(2, { content: ' delta' }),
    chunkOf(1, {}, 'stop'),
    chunkOf(2, { content: ' epsilon' }),
  ];
  const CONTENT_CHUNKS = 5;
  const FAILURES: [string, (res: ServerResponse) => void][] = [
    ['a close without [DONE]', (res) => res.end()],
    [
      'an error event',
      (res) =>
        res.end(
          frame({
            error: { message: 'The server had an error', type: 'server_error', param: null, code: null },
          }) + 'data: [DONE]\n\n',
        ),
    ],
    [
      "choice 2 finishing with OpenRouter's reason `error`",
      (res) => res.end(frame(chunkOf(2, {}, 'error')) + 'data: [DONE]\n\n'),
    ],
    ['the connection dropped', (res) => res.socket?.destroy()],
  ];

  it.each(FAILURES)(
    "%s: error event, no [DONE], counted as a stream failure with every choice's text",
    async (_n, fail) => {
      const up = await raw((_q, res) => {
        res.writeHead(200, SSE);
        res.write(BEFORE.map(frame).join(''));
        setTimeout(() => fail(res), 20);
      });
      const { gw } = await gatewayOver([{ name: 'a', url: up.url }]);
      const r = await postChat(gw, { model: 'r', messages: hi, n: 3, stream: true });
      expect(r.status).toBe(200);
      const data = dataOf(r.text);
      expect(data.slice(0, BEFORE.length)).toEqual(BEFORE.map((c) => JSON.stringify(c)));
      expect(data).not.toContain('[DONE]');
      const last = JSON.parse(data[data.length - 1]!) as { error?: { code?: string; type?: string } };
      expect(last.error).toMatchObject({ code: 'stream_interrupted', type: 'upstream_error' });
      const m = await scrape(gw.url);
      expect(
        value(m, 'llm_router_stream_failures_total', { provider: 'a', model: 'm', policy: 'terminate' }),
      ).toBe(1);
      // What the client was sent is paid for: all three choices' content chunks, each at least a token.
      const completion =
        value(m, 'llm_router_tokens_total', { provider: 'a', model: 'm', kind: 'completion' }) ?? 0;
      expect(completion).toBeGreaterThanOrEqual(CONTENT_CHUNKS);
    },
  );

  it('the SDK stream throws rather than ending as a finished three-choice answer', async () => {
    const up = await raw((_q, res) => {
      res.writeHead(200, SSE);
      res.end(BEFORE.map(frame).join(''));
    });
    const { client } = await gatewayOver([{ name: 'a', url: up.url }]);
    const seen: ChatCompletionChunk[] = [];
    const run = async () => {
      const stream = await client.chat.completions.create({ model: 'r', messages: hi, n: 3, stream: true });
      for await (const c of stream) seen.push(c);
    };
    await expect(run()).rejects.toThrow(/stream interrupted/);
    expect(seen.length).toBe(BEFORE.length);
  });
});

describe('include_usage with n: 3', () => {
  // OpenAI's shape: one usage chunk with `choices: []`, after every choice's finish_reason, before `[DONE]`.
  it('from the simulator: one usage chunk, last, after all three finish reasons; counted as reported', async () => {
    const sim = track(await startSimulator({ name: 'sim', completionTokens: 4 }));
    const { gw, client } = await gatewayOver([{ name: 'sim', url: sim.url }]);
    const body = { model: 'r', messages: hi, n: 3, stream: true, stream_options: { include_usage: true } };
    const r = await postChat(gw, body);
    const chunks = dataOf(r.text);
    expect(chunks[chunks.length - 1]).toBe('[DONE]');
    const parsed = chunks.slice(0, -1).map((d) => JSON.parse(d) as { choices: Json[]; usage?: Json | null });
    const withUsage = parsed.filter((c) => c.usage != null);
    expect(withUsage).toHaveLength(1);
    expect(parsed[parsed.length - 1]).toBe(withUsage[0]);
    expect(withUsage[0]!.choices).toEqual([]);
    const finishes = parsed.flatMap((c) =>
      c.choices.filter((x) => x.finish_reason != null).map((x) => x.index),
    );
    expect(finishes.sort()).toEqual([0, 1, 2]);
    expect(withUsage[0]!.usage).toMatchObject({ completion_tokens: 12 });

    const got: ChatCompletionChunk[] = [];
    for await (const c of await client.chat.completions.create(
      body as OpenAI.Chat.ChatCompletionCreateParamsStreaming,
    ))
      got.push(c);
    expect(got.filter((c) => c.usage).map((c) => c.usage?.completion_tokens)).toEqual([12]);
    const m = await scrape(gw.url);
    expect(value(m, 'llm_router_tokens_total', { provider: 'sim', model: 'm', kind: 'completion' })).toBe(24);
  });

  // A server or proxy that ignores `stream` answers one JSON object: the client still gets its stream, every
  // choice whole (tool call, logprobs once each), and the usage chunk it asked for, last.
  it('from an upstream that ignores stream: three choices, logprobs once each, usage last', async () => {
    const lp = (tokens: string[]) => ({
      content: tokens.map((t) => ({ token: t, logprob: -0.5, bytes: [...Buffer.from(t)], top_logprobs: [] })),
      refusal: null,
    });
    const answer = {
      id: 'chatcmpl-json',
      object: 'chat.completion',
      created: 1700000000,
      model: 'up-model',
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content: 'Oui.' },
          logprobs: lp(['Oui', '.']),
          finish_reason: 'stop',
        },
        {
          index: 1,
          message: { role: 'assistant', content: 'Ja, sehr' },
          logprobs: lp(['Ja', ',', ' sehr']),
          finish_reason: 'length',
        },
        {
          index: 2,
          message: {
            role: 'assistant',
            content: null,
            tool_calls: [
              { id: 'call_j', type: 'function', function: { name: 'weather', arguments: '{"city":"Rome"}' } },
            ],
          },
          logprobs: null,
          finish_reason: 'tool_calls',
        },
      ],
      usage: { prompt_tokens: 9, completion_tokens: 11, total_tokens: 20 },
    };
    const up = track(await startMock((_r, res) => sendJson(res, 200, answer)));
    const { client } = await gatewayOver([{ name: 'a', url: up.url }]);
    const stream = client.chat.completions.stream({
      model: 'r',
      messages: hi,
      n: 3,
      tools: weather,
      logprobs: true,
      stream_options: { include_usage: true },
    });
    const chunks: ChatCompletionChunk[] = [];
    stream.on('chunk', (c) => chunks.push(c));
    const final = await stream.finalChatCompletion();
    expect(final.choices.map((c) => [c.index, c.message.content, c.finish_reason])).toEqual([
      [0, 'Oui.', 'stop'],
      [1, 'Ja, sehr', 'length'],
      [2, null, 'tool_calls'],
    ]);
    expect(final.choices.map((c) => c.logprobs?.content?.map((t) => t.token) ?? null)).toEqual([
      ['Oui', '.'],
      ['Ja', ',', ' sehr'],
      null,
    ]);
    expect(final.choices[2]!.message.tool_calls?.[0]).toMatchObject({
      id: 'call_j',
      function: { name: 'weather', arguments: '{"city":"Rome"}' },
    });
    expect(final.usage).toEqual(answer.usage);
    const last = chunks[chunks.length - 1]!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual(answer.usage);
  });
});

describe('n: 3 answered as an event stream to a non-streaming request', () => {
  // A server that always streams: its chunks are merged into the one chat.completion the client asked for,
  // each choice's text and logprobs from its own chunks only, in order.
  it('each choice gets its own interleaved text and logprobs, in order', async () => {
    const tok = (t: string, lp: number) => ({
      content: [
        {
          token: t,
          logprob: lp,
          bytes: [...Buffer.from(t)],
          top_logprobs: [{ token: t, logprob: lp, bytes: [...Buffer.from(t)] }],
        },
      ],
      refusal: null,
    });
    const frames = [
      chunkOf(0, { role: 'assistant', content: '' }),
      chunkOf(1, { role: 'assistant', content: '' }),
      chunkOf(2, { role: 'assistant', content: '' }),
      {
        ...chunkOf(1, { content: 'b1' }),
        choices: [{ index: 1, delta: { content: 'b1' }, logprobs: tok('b1', -0.1), finish_reason: null }],
      },
      {
        ...chunkOf(0, { content: 'a1' }),
        choices: [{ index: 0, delta: { content: 'a1' }, logprobs: tok('a1', -0.2), finish_reason: null }],
      },
      {
        ...chunkOf(2, { content: 'c1' }),
        choices: [{ index: 2, delta: { content: 'c1' }, logprobs: tok('c1', -0.3), finish_reason: null }],
      },
      {
        ...chunkOf(0, { content: 'a2' }),
        choices: [{ index: 0, delta: { content: 'a2' }, logprobs: tok('a2', -0.4), finish_reason: null }],
      },
      chunkOf(0, {}, 'stop'),
      {
        ...chunkOf(2, { content: 'c2' }),
        choices: [{ index: 2, delta: { content: 'c2' }, logprobs: tok('c2', -0.5), finish_reason: null }],
      },
      chunkOf(1, {}, 'length'),
      chunkOf(2, {}, 'stop'),
    ];
    const up = await raw((_q, res) => {
      res.writeHead(200, SSE);
      res.end(frames.map(frame).join('') + 'data: [DONE]\n\n');
    });
    const { client } = await gatewayOver([{ name: 'a', url: up.url }]);
    const out = await client.chat.completions.create({
      model: 'r',
      messages: hi,
      n: 3,
      logprobs: true,
      top_logprobs: 1,
    });
    expect(out.object).toBe('chat.completion');
    expect(
      out.choices.map((c) => [
        c.index,
        c.message.content,
        c.finish_reason,
        c.logprobs?.content?.map((t) => [t.token, t.logprob]),
      ]),
    ).toEqual([
      [
        0,
        'a1a2',
        'stop',
        [
          ['a1', -0.2],
          ['a2', -0.4],
        ],
      ],
      [1, 'b1', 'length', [['b1', -0.1]]],
      [
        2,
        'c1c2',
        'stop',
        [
          ['c1', -0.3],
          ['c2', -0.5],
        ],
      ],
    ]);
  });
});

describe('logprobs relayed intact', () => {
  // top_logprobs: 20 (OpenAI's most), tokens that are parts of multi-byte characters (OpenAI gives their
  // bytes; a token may be half of one), written by the upstream in pieces cut inside UTF-8 sequences.
  it('top_logprobs 20, partial UTF-8 tokens, writes cut mid-character: every chunk byte for byte', async () => {
    const pieces = ['Grüße', ' 👋', ' 日本', '語', '!'];
    const entry = (token: string, bytes: number[], i: number) => ({
      token,
      logprob: -0.01 * (i + 1),
      bytes,
      top_logprobs: Array.from({ length: 20 }, (_, k) => ({
        token: k === 0 ? token : `alt${k}-ü${'é'.repeat(k % 3)}`,
        logprob: k === 0 ? -0.01 * (i + 1) : -1 - k / 7,
        bytes: k === 0 ? bytes : [...Buffer.from(`alt${k}-ü${'é'.repeat(k % 3)}`)],
      })),
    });
    // The wave emoji as two tokens of two bytes each: neither half is a character on its own.
    const wave = [...Buffer.from('👋')];
    const frames: Json[] = [chunkOf(0, { role: 'assistant', content: '' }, null, { usage: null })];
    let i = 0;
    for (const p of pieces) {
      if (p === ' 👋') {
        frames.push({
          ...HEAD,
          choices: [
            {
              index: 0,
              delta: { content: ' 👋' },
              logprobs: {
                content: [
                  entry(' ', [32], i++),
                  entry('\\xf0\\x9f', wave.slice(0, 2), i++),
                  entry('\\x91\\x8b', wave.slice(2), i++),
                ],
                refusal: null,
              },
              finish_reason: null,
            },
          ],
        });
      } else {
        frames.push({
          ...HEAD,
          choices: [
            {
              index: 0,
              delta: { content: p },
              logprobs: { content: [entry(p, [...Buffer.from(p)], i++)], refusal: null },
              finish_reason: null,
            },
          ],
        });
      }
    }
    frames.push(chunkOf(0, {}, 'stop'));
    const wire = Buffer.from(frames.map(frame).join('') + 'data: [DONE]\n\n', 'utf8');
    const up = track(
      await startMock(async (_r, res) => {
        res.writeHead(200, SSE);
        // 7-byte writes: many of them end inside a character.
        for (let at = 0; at < wire.length; at += 7) {
          res.write(wire.subarray(at, at + 7));
          if (at % 700 === 0) await sleep(1);
        }
        res.end();
      }),
    );
    const { gw, client } = await gatewayOver([{ name: 'a', url: up.url }]);
    const body = { model: 'r', messages: hi, stream: true, logprobs: true, top_logprobs: 20 };
    const r = await postChat(gw, body);
    expect(dataOf(r.text)).toEqual(frames.map((f) => JSON.stringify(f)).concat('[DONE]'));
    expect(up.received[0]!.body).toMatchObject({ logprobs: true, top_logprobs: 20 });

    const final = await client.chat.completions
      .stream({ model: 'r', messages: hi, logprobs: true, top_logprobs: 20 })
      .finalChatCompletion();
    expect(final.choices[0]!.message.content).toBe(pieces.join(''));
    const got = final.choices[0]!.logprobs!.content!;
    expect(got).toHaveLength(7);
    expect(got.every((t) => t.top_logprobs.length === 20)).toBe(true);
    expect(Buffer.from(got.flatMap((t) => t.bytes ?? [])).toString('utf8')).toBe(pieces.join(''));
  });
});

describe('n > 1 and Anthropic-kind upstreams (Anthropic answers one choice)', () => {
  async function mixed(extraRoutes: Json = {}) {
    const claude = track(await startSimulator({ name: 'claude', kind: 'anthropic' }));
    const oai = track(await startSimulator({ name: 'oai' }));
    const gw = track(
      await startGateway({
        providers: [
          { name: 'claude', kind: 'anthropic', base_url: claude.url, models: [{ name: 'm' }] },
          simProvider('oai', oai.url, ['m']),
        ],
        routes: { mixed: { strategy: 'priority', targets: ['claude/m', 'oai/m'] }, ...extraRoutes },
      }),
    );
    return { claude, oai, gw };
  }

  it('x-router-provider pinning the Claude provider with n: 2: a 400 naming `n`, nothing sent', async () => {
    const { claude, oai, gw } = await mixed();
    const r = await postChat(
      gw,
      { model: 'mixed', messages: hi, n: 2 },
      { headers: { 'x-router-provider': 'claude' } },
    );
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ type: 'invalid_request_error', param: 'n' });
    expect(claude.requests).toHaveLength(0);
    expect(oai.requests).toHaveLength(0);
  });

  it('/router/explain for n: 2 lists only the upstream that can answer it', async () => {
    const { gw } = await mixed();
    const r = await postTo(`${gw.url}/router/explain`, { model: 'mixed', messages: hi, n: 2 });
    expect(r.status).toBe(200);
    expect((r.json.candidates as { upstream: string }[]).map((c) => c.upstream)).toEqual(['oai/m']);
  });

  // README: the router can make a request slower, never fail it; a tier it picks that cannot take the
  // request gives way to default_tier.
  it('the LLM router picking a Claude-only tier for n: 2: default_tier serves it', async () => {
    const claude = track(await startSimulator({ name: 'claude', kind: 'anthropic' }));
    const oai = track(await startSimulator({ name: 'oai' }));
    const rtr = track(
      await startMock((req, res) =>
        sendJson(res, 200, {
          id: 'r',
          object: 'chat.completion',
          created: 1,
          model: String(req.body.model),
          choices: [
            {
              index: 0,
              message: { role: 'assistant', content: '{"tier":"fast","reason":"short"}' },
              finish_reason: 'stop',
            },
          ],
          usage: { prompt_tokens: 50, completion_tokens: 9, total_tokens: 59 },
        }),
      ),
    );
    const gw = track(
      await startGateway({
        providers: [
          { name: 'claude', kind: 'anthropic', base_url: claude.url, models: [{ name: 'm' }] },
          simProvider('oai', oai.url, ['m']),
          simProvider('rtr', rtr.url, ['m']),
        ],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['claude/m'], balanced: ['oai/m'], deep: ['rtr/m'] },
            rules: [{ name: 'never', if: { last_user_message: '^never$' }, tier: 'deep' }],
            default_tier: 'balanced',
            router: { tier: 'deep', timeout_ms: 5000, cache_ttl_s: 0 },
          },
        },
      }),
    );
    const r = await postChat(gw, { model: 'auto', messages: hi, n: 2 });
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(r.headers['x-router-provider']).toBe('oai');
    expect((r.json.choices as unknown[]).length).toBe(2);
    expect(rtr.received).toHaveLength(1);
    expect(claude.requests).toHaveLength(0);
  });
});

describe('statistics learned from n > 1 answers', () => {
  // README "Routing": expected output is max_tokens, else the candidates' observed means, "times n (each
  // choice is a completion paid for)". The observed mean is then per completion: an answer of 4 choices
  // of 25 tokens each is four completions of 25, not one of 100, or n counts twice (and a cost route ranks
  // upstreams on four times the output they will write).
  it('after n: 4 answers of 25 tokens a choice, an n: 4 request is expected to cost what max_tokens 25 says', async () => {
    const up = track(
      await startMock((req, res) => {
        const n = typeof req.body.n === 'number' ? req.body.n : 1;
        sendJson(res, 200, {
          id: 'chatcmpl-n',
          object: 'chat.completion',
          created: 1,
          model: 'up-model',
          choices: Array.from({ length: n }, (_, index) => ({
            index,
            message: { role: 'assistant', content: 'word '.repeat(25).trim() },
            finish_reason: 'stop',
          })),
          usage: { prompt_tokens: 8, completion_tokens: 25 * n, total_tokens: 8 + 25 * n },
        });
      }),
    );
    const gw = track(
      await startGateway({
        providers: [
          simProvider('a', up.url, [{ name: 'm', price: { input_per_mtok: 1, output_per_mtok: 10 } }]),
        ],
        routes: { r: { strategy: 'cost', targets: ['a/m'] } },
      }),
    );
    for (let i = 0; i < 3; i++)
      expect((await postChat(gw, { model: 'r', messages: hi, n: 4 })).status).toBe(200);
    const costOf = async (extra: Json): Promise<number> => {
      const r = await postTo(`${gw.url}/router/explain`, { model: 'r', messages: hi, n: 4, ...extra });
      const reason = (r.json.candidates as { reason: string }[])[0]!.reason;
      const m = /cost \$([\d.]+)/.exec(reason);
      expect(m, reason).not.toBeNull();
      return Number(m![1]);
    };
    const byMean = await costOf({});
    const byLimit = await costOf({ max_tokens: 25 });
    expect(byMean).toBeCloseTo(byLimit, 7);
  });

  // README: the latency strategy's generation time per token; /router/status: tokens/s. Choices are written
  // side by side: an answer of 4 choices of 10 tokens over 1 s is written at 10 tokens/s, as one of 1 choice
  // of 10 tokens over 1 s is. The clock is the gateway's own (injected), so the figures are exact.
  it('an n: 4 stream is measured at the pace each answer was written, as an n: 1 stream is', async () => {
    let clock = 1_000_000;
    const stream = async (res: ServerResponse, n: number) => {
      res.writeHead(200, SSE);
      let out = '';
      for (let i = 0; i < n; i++) out += frame(chunkOf(i, { role: 'assistant', content: '' }));
      for (let i = 0; i < n; i++) out += frame(chunkOf(i, { content: 't0 ' }));
      res.write(out);
      await sleep(50);
      clock += 1000; // one second of generation after the first token
      out = '';
      for (let k = 1; k < 10; k++)
        for (let i = 0; i < n; i++) out += frame(chunkOf(i, { content: `t${k} ` }));
      for (let i = 0; i < n; i++) out += frame(chunkOf(i, {}, 'stop'));
      out += frame({
        ...HEAD,
        choices: [],
        usage: { prompt_tokens: 5, completion_tokens: 10 * n, total_tokens: 5 + 10 * n },
      });
      res.end(out + 'data: [DONE]\n\n');
    };
    const up = track(
      await startMock((req, res) => stream(res, typeof req.body.n === 'number' ? req.body.n : 1)),
    );
    const gw = track(
      await startGateway(
        {
          providers: [simProvider('four', up.url, ['m']), simProvider('one', up.url, ['m'])],
          routes: { r: { strategy: 'latency', targets: ['four/m', 'one/m'] } },
        },
        { now: () => clock },
      ),
    );
    const body = { messages: hi, stream: true, stream_options: { include_usage: true } };
    expect((await postChat(gw, { ...body, model: 'four/m', n: 4 })).status).toBe(200);
    expect((await postChat(gw, { ...body, model: 'one/m' })).status).toBe(200);
    const status = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: { id: string; stats: { tokensPerSec: number | null } }[];
    };
    const tps = Object.fromEntries(status.upstreams.map((u) => [u.id, u.stats.tokensPerSec]));
    expect(tps['one/m']).toBeCloseTo(10, 0); // 10 tokens over the 1 s after the first
    expect(tps['four/m']).toBeCloseTo(tps['one/m']!, 0);
  });
});
