/**
 * Numbers at their edges (SPEC §2 scores in [0, 1], §4 /router/*, §5 metrics, §8 validation): hostile,
 * fractional, huge or missing usage figures from upstreams, odd config prices and weights, odd client numbers.
 * Every figure the gateway derives must stay finite and sane, and the next request must still route.
 */
import type { ServerResponse } from 'node:http';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway, type TestGateway } from '../helpers/gateway.js';
import { chunkFrame, sendJson, startMock, type Received } from '../helpers/mock-upstream.js';
import { scrape, select, value } from '../helpers/prom-text.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;

const MSG = [{ role: 'user', content: 'Tell me about the weather in Paris today, please.' }];

/** An OpenAI JSON answer with `usage` as given (left out when `usage` is undefined). */
function jsonAnswer(res: ServerResponse, usage: unknown): void {
  const body: Json = {
    id: 'chatcmpl-1',
    object: 'chat.completion',
    created: 1,
    model: 'm',
    choices: [
      { index: 0, message: { role: 'assistant', content: 'Sunny and mild.' }, finish_reason: 'stop' },
    ],
  };
  if (usage !== undefined) body.usage = usage;
  sendJson(res, 200, body);
}

/** A stream: role chunk, two content chunks `gapMs` apart, finish, then a usage chunk (when given) and [DONE]. */
async function streamAnswer(res: ServerResponse, usage: unknown, gapMs = 30): Promise<void> {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(chunkFrame('m', { role: 'assistant', content: '' }));
  res.write(chunkFrame('m', { content: 'Sunny ' }));
  await new Promise((r) => setTimeout(r, gapMs));
  res.write(chunkFrame('m', { content: 'and mild.' }));
  res.write(chunkFrame('m', {}, 'stop'));
  if (usage !== undefined)
    res.write(
      `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [], usage })}\n\n`,
    );
  res.end('data: [DONE]\n\n');
}

async function oneUpstream(
  handler: (req: Received, res: ServerResponse, n: number) => void | Promise<void>,
  model: Json = { name: 'm', price: { input_per_mtok: 1, output_per_mtok: 2 } },
  route: Json = { strategy: 'priority', targets: ['p/m'] },
): Promise<TestGateway> {
  const up = track(await startMock(handler));
  return track(
    await startGateway({
      providers: [{ name: 'p', kind: 'openai', base_url: `${up.url}/v1`, models: [model] }],
      routes: { r: route },
    }),
  );
}

async function status(gw: TestGateway): Promise<Json> {
  const res = await request(`${gw.url}/router/status`);
  return (await res.body.json()) as Json;
}

async function explain(gw: TestGateway, body: Json, headers: Record<string, string> = {}): Promise<Json> {
  const res = await request(`${gw.url}/router/explain`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  const json = (await res.body.json()) as Json;
  expect(res.statusCode, JSON.stringify(json)).toBe(200);
  return json;
}

/** Every number-valued leaf of /router/status's upstream stats must be a finite number (null only where unmeasured). */
function statsOf(st: Json, id = 'p/m'): Json {
  const ups = st.upstreams as Json[];
  const u = ups.find((x) => x.id === id)!;
  return u.stats as Json;
}

function tokens(samples: Awaited<ReturnType<typeof scrape>>, kind: string): number | undefined {
  return value(samples, 'llm_router_tokens_total', { provider: 'p', model: 'm', kind });
}

describe('usage figures from an upstream: hostile ones never reach the counters', () => {
  it('negative, string, null, 1e30 and 2^63 usage: counters only grow, stay finite, and routing continues', async () => {
    const hostile: unknown[] = [
      { prompt_tokens: -50, completion_tokens: -7, total_tokens: -57 },
      { prompt_tokens: '12', completion_tokens: '3', total_tokens: '15' },
      { prompt_tokens: null, completion_tokens: null, total_tokens: null },
      { prompt_tokens: 1e30, completion_tokens: 1e30, total_tokens: 2e30 },
      { prompt_tokens: 2 ** 63, completion_tokens: 2 ** 63, total_tokens: 2 ** 64 },
    ];
    const gw = await oneUpstream((_q, res, n) => jsonAnswer(res, hostile[n % hostile.length]));
    let lastPrompt = 0;
    let lastCost = 0;
    for (let i = 0; i < hostile.length; i++) {
      const r = await postChat(gw, { model: 'r', messages: MSG });
      expect(r.status).toBe(200);
      // Relayed as the upstream sent it.
      expect((r.json as { usage?: unknown }).usage).toEqual(hostile[i]);
      const s = await scrape(gw.url);
      const p = tokens(s, 'prompt') ?? 0;
      const cost = value(s, 'llm_router_cost_usd_total', { provider: 'p', model: 'm' }) ?? 0;
      expect(Number.isFinite(p) && p >= lastPrompt && p < 1e6, `prompt tokens ${p}`).toBe(true);
      expect(Number.isFinite(cost) && cost >= lastCost && cost < 1, `cost ${cost}`).toBe(true);
      lastPrompt = p;
      lastCost = cost;
    }
    const st = statsOf(await status(gw));
    expect(Number.isFinite(st.outputTokens as number)).toBe(true);
    expect(st.outputTokens as number).toBeGreaterThanOrEqual(0);
    const ex = await explain(gw, { model: 'r', messages: MSG });
    for (const c of ex.candidates as Json[]) expect(c.score).toBeGreaterThanOrEqual(0);
    expect((await postChat(gw, { model: 'r', messages: MSG })).status).toBe(200);
  });

  // Only whole numbers are token counts (tokenCount, adapters/common.ts): a fraction would be divided by.
  it('a streamed usage of 1e-300 completion tokens leaves time-per-output-token finite and sane', async () => {
    const gw = await oneUpstream((_q, res) =>
      streamAnswer(res, { prompt_tokens: 9, completion_tokens: 1e-300, total_tokens: 9 }),
    );
    const r = await postChat(gw, {
      model: 'r',
      messages: MSG,
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(r.status).toBe(200);
    expect(r.text).toContain('[DONE]');
    const s = await scrape(gw.url);
    const sum = value(s, 'llm_router_time_per_output_token_seconds_sum', { provider: 'p', model: 'm' });
    // The stream took tens of milliseconds: no output token took longer than the whole request.
    if (sum !== undefined) expect(sum, `tpot sum ${sum}`).toBeLessThan(60);
    const completion = tokens(s, 'completion') ?? 0;
    expect(Number.isInteger(completion), `completion tokens counter ${completion}`).toBe(true);
  });

  it('a fractional usage (2.5 completion tokens) is not counted as a token count', async () => {
    const gw = await oneUpstream((_q, res) =>
      jsonAnswer(res, { prompt_tokens: 10.25, completion_tokens: 2.5, total_tokens: 12.75 }),
    );
    const r = await postChat(gw, { model: 'r', messages: MSG });
    expect(r.status).toBe(200);
    const s = await scrape(gw.url);
    const p = tokens(s, 'prompt')!;
    const c = tokens(s, 'completion') ?? 0;
    expect(Number.isInteger(p), `prompt tokens counter ${p}`).toBe(true);
    expect(Number.isInteger(c), `completion tokens counter ${c}`).toBe(true);
  });

  it('a streamed usage chunk with hostile figures: counters finite, stats finite, next request routes', async () => {
    const gw = await oneUpstream(
      (_q, res, n) =>
        streamAnswer(
          res,
          n === 0
            ? { prompt_tokens: -1, completion_tokens: 1e30, total_tokens: 'x' }
            : { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11 },
        ),
      { name: 'm', price: { input_per_mtok: 3, output_per_mtok: 15 } },
      { strategy: 'latency', targets: ['p/m'] },
    );
    for (let i = 0; i < 2; i++) {
      const r = await postChat(gw, {
        model: 'r',
        messages: MSG,
        stream: true,
        stream_options: { include_usage: true },
      });
      expect(r.status).toBe(200);
    }
    const s = await scrape(gw.url);
    for (const x of select(s, 'llm_router_tokens_total')) expect(Number.isFinite(x.value)).toBe(true);
    for (const x of select(s, 'llm_router_cost_usd_total')) {
      expect(Number.isFinite(x.value)).toBe(true);
      expect(x.value).toBeLessThan(1);
    }
    const st = statsOf(await status(gw));
    for (const k of [
      'ttftMs',
      'latencyMs',
      'tokensPerSec',
      'meanOutputTokens',
      'successRate',
      'outputTokens',
    ])
      expect(Number.isFinite(st[k] as number), `${k}=${String(st[k])}`).toBe(true);
    expect(st.meanOutputTokens as number).toBeLessThan(1e6);
  });
});

describe('Anthropic usage: counts at their edges', () => {
  async function anthropicGw(usage: Json): Promise<TestGateway> {
    const up = track(
      await startMock((_q, res) =>
        sendJson(res, 200, {
          id: 'msg_1',
          type: 'message',
          role: 'assistant',
          model: 'claude-haiku-4-5',
          content: [{ type: 'text', text: 'Sunny and mild.' }],
          stop_reason: 'end_turn',
          stop_sequence: null,
          usage,
        }),
      ),
    );
    return track(
      await startGateway({
        providers: [
          {
            name: 'p',
            kind: 'anthropic',
            base_url: up.url,
            api_key: 'sk-ant-test-0123456789',
            models: [{ name: 'm', price: { input_per_mtok: 1, output_per_mtok: 5 } }],
          },
        ],
        routes: { r: { strategy: 'priority', targets: ['p/m'] } },
      }),
    );
  }

  it('cache fields add into prompt_tokens and cached_tokens, all finite', async () => {
    const gw = await anthropicGw({
      input_tokens: 10,
      cache_creation_input_tokens: 200,
      cache_read_input_tokens: 3000,
      output_tokens: 7,
    });
    const r = await postChat(gw, { model: 'r', messages: MSG });
    expect(r.status).toBe(200);
    const usage = r.json.usage as Json;
    expect(usage.prompt_tokens).toBe(3210);
    expect(usage.completion_tokens).toBe(7);
    expect(usage.total_tokens).toBe(3217);
    const s = await scrape(gw.url);
    expect(tokens(s, 'prompt')).toBe(3210);
    expect(tokens(s, 'completion')).toBe(7);
  });
});

describe('config figures at their edges: scores stay in [0, 1]', () => {
  async function twoUpstreams(
    prices: [Json, Json],
    route: Json,
    routing: Json = {},
    extraModel: Json = {},
  ): Promise<TestGateway> {
    const a = track(
      await startMock((_q, res) =>
        jsonAnswer(res, { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 }),
      ),
    );
    const b = track(
      await startMock((_q, res) =>
        jsonAnswer(res, { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 }),
      ),
    );
    return track(
      await startGateway({
        providers: [
          {
            name: 'a',
            kind: 'openai',
            base_url: `${a.url}/v1`,
            models: [{ name: 'm', price: prices[0], ...extraModel }],
          },
          {
            name: 'b',
            kind: 'openai',
            base_url: `${b.url}/v1`,
            models: [{ name: 'm', price: prices[1], ...extraModel }],
          },
        ],
        routes: { r: route },
        routing,
      }),
    );
  }

  function checkScores(ex: Json): number[] {
    const scores = (ex.candidates as Json[]).map((c) => c.score as number);
    for (const s of scores) {
      expect(Number.isFinite(s), `score ${s}`).toBe(true);
      expect(s).toBeGreaterThanOrEqual(0);
      expect(s).toBeLessThanOrEqual(1);
    }
    expect(Math.max(...scores)).toBe(1);
    for (const c of ex.candidates as Json[]) expect(c.reason as string).not.toMatch(/NaN|Infinity|undefined/);
    return scores;
  }

  it('price 0 everywhere, cost strategy, max_tokens 1e9, n 128: both score 1 and the request routes', async () => {
    const gw = await twoUpstreams(
      [
        { input_per_mtok: 0, output_per_mtok: 0 },
        { input_per_mtok: 0, output_per_mtok: 0 },
      ],
      { strategy: 'cost', targets: ['a/m', 'b/m'] },
    );
    const ex = await explain(gw, { model: 'r', messages: MSG, max_tokens: 1e9, n: 128 });
    expect(checkScores(ex)).toEqual([1, 1]);
    expect((await postChat(gw, { model: 'r', messages: MSG, max_tokens: 1e9 })).status).toBe(200);
  });

  it('one free upstream against a priced one under cost and hybrid: free wins, scores in [0,1], reasons real', async () => {
    const gw = await twoUpstreams(
      [
        { input_per_mtok: 5, output_per_mtok: 15 },
        { input_per_mtok: 0, output_per_mtok: 0 },
      ],
      {
        strategy: { hybrid: { cost_weight: 1, latency_weight: 0, reliability_weight: 0 } },
        targets: ['a/m', 'b/m'],
      },
      { tie_epsilon: 0 },
    );
    const ex = await explain(gw, { model: 'r', messages: MSG, max_tokens: 1e9 });
    const scores = checkScores(ex);
    expect((ex.candidates as Json[])[0]!.upstream).toBe('b/m');
    // Far behind the free one, but not 0 (rank.ts: priced ones keep their order among themselves).
    expect(scores[1]).toBeLessThanOrEqual(0.5);
    const ex2 = await explain(gw, { model: 'r', messages: MSG }, { 'x-router-strategy': 'cost' });
    checkScores(ex2);
    expect((ex2.candidates as Json[])[0]!.upstream).toBe('b/m');
  });

  it('hybrid weights all 0 are refused at load (nothing to weigh); tie_epsilon 1 rotates cost', async () => {
    const zero = JSON.stringify({
      providers: [{ name: 'a', base_url: 'http://127.0.0.1:9/v1', models: [{ name: 'm' }] }],
      routes: {
        r: {
          strategy: { hybrid: { cost_weight: 0, latency_weight: 0, reliability_weight: 0 } },
          targets: ['a/m'],
        },
      },
    });
    expect(() => parseConfigText(zero, {})).toThrow(/routes\.r\.strategy\.hybrid: at least one/);
    const gw = await twoUpstreams(
      [
        { input_per_mtok: 5, output_per_mtok: 15 },
        { input_per_mtok: 1, output_per_mtok: 1 },
      ],
      { strategy: 'cost', targets: ['a/m', 'b/m'] },
      { tie_epsilon: 1 },
    );
    const served = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const ex = await explain(gw, { model: 'r', messages: MSG });
      checkScores(ex);
      const r = await postChat(gw, { model: 'r', messages: MSG });
      expect(r.status).toBe(200);
      served.add(r.headers['x-router-provider']!);
    }
    expect(served.size).toBe(2);
  });

  it('weights are relative and bounded: 1e308 each (a sum of Infinity, NaN scores) is refused at load with its path', () => {
    const config = (strategy: unknown, target: unknown = 'a/m'): string =>
      JSON.stringify({
        providers: [{ name: 'a', base_url: 'http://127.0.0.1:9/v1', models: [{ name: 'm' }] }],
        routes: { r: { strategy, targets: [target] } },
      });
    const huge = { hybrid: { cost_weight: 1e308, latency_weight: 1e308, reliability_weight: 1e308 } };
    expect(() => parseConfigText(config(huge), {})).toThrow(/routes\.r\.strategy\.hybrid\.cost_weight/);
    expect(() => parseConfigText(config('weighted', { target: 'a/m', weight: 1e300 }), {})).toThrow(
      /routes\.r\.targets\[0\]\.weight/,
    );
    const most = { hybrid: { cost_weight: 1e6, latency_weight: 1e6, reliability_weight: 1e6 } };
    expect(() => parseConfigText(config(most), {})).not.toThrow();
  });

  it('a context_window of 1 token leaves no upstream: 400 context_length_exceeded, not a 5xx', async () => {
    const gw = await twoUpstreams(
      [
        { input_per_mtok: 1, output_per_mtok: 1 },
        { input_per_mtok: 1, output_per_mtok: 1 },
      ],
      { strategy: 'cost', targets: ['a/m', 'b/m'] },
      {},
      { context_window: 1 },
    );
    const r = await postChat(gw, { model: 'r', messages: MSG, max_tokens: 1 });
    expect(r.status).toBe(400);
    expect((r.json.error as Json).code).toBe('context_length_exceeded');
  });
});

describe('client numbers at their edges: validated or passed untouched, never a 500', () => {
  it('max_tokens 1e308 / -0 / 1e400, n 1e308, temperature -1e-300: 400 naming the field', async () => {
    const gw = await oneUpstream((_q, res) =>
      jsonAnswer(res, { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 }),
    );
    const cases: Array<[string, string]> = [
      ['{"model":"r","messages":[{"role":"user","content":"hi"}],"max_tokens":1e308}', 'max_tokens'],
      ['{"model":"r","messages":[{"role":"user","content":"hi"}],"max_tokens":-0}', 'max_tokens'],
      ['{"model":"r","messages":[{"role":"user","content":"hi"}],"max_tokens":1e400}', 'max_tokens'],
      ['{"model":"r","messages":[{"role":"user","content":"hi"}],"n":1e308}', 'n'],
      ['{"model":"r","messages":[{"role":"user","content":"hi"}],"temperature":-1e-300}', 'temperature'],
    ];
    for (const [body, param] of cases) {
      const r = await postChat(gw, body);
      expect(r.status, body).toBe(400);
      expect((r.json.error as Json).param, body).toBe(param);
    }
  });

  it('max_tokens 1.0, temperature 1e-320, top_p -0, n 1.0: served, the numbers reach the upstream as sent', async () => {
    const seen: string[] = [];
    const up = track(
      await startMock((q, res) => {
        seen.push(JSON.stringify(q.body));
        jsonAnswer(res, { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 });
      }),
    );
    const gw = track(
      await startGateway({
        providers: [{ name: 'p', kind: 'openai', base_url: `${up.url}/v1`, models: [{ name: 'm' }] }],
        routes: { r: { strategy: 'cost', targets: ['p/m'] } },
      }),
    );
    const r = await postChat(
      gw,
      '{"model":"r","messages":[{"role":"user","content":"hi"}],"max_tokens":1.0,"temperature":1e-320,"n":1.0,"top_p":-0}',
    );
    expect(r.status, r.text).toBe(200);
    const sent = JSON.parse(seen[0]!) as Json;
    expect(sent.max_tokens).toBe(1);
    expect(sent.n).toBe(1);
    expect(sent.temperature as number).toBeGreaterThanOrEqual(0);
    expect(sent.temperature as number).toBeLessThan(1e-300);
  });
});

describe('timing at its edges: instant answers and one-chunk streams', () => {
  it('instant JSON answers and a stream whose content all arrives in one chunk keep every figure finite', async () => {
    const gw = await oneUpstream(
      (q, res) => {
        if (q.body.stream !== true) {
          jsonAnswer(res, { prompt_tokens: 5, completion_tokens: 0, total_tokens: 5 });
          return;
        }
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          chunkFrame('m', { role: 'assistant', content: 'All at once.' }) +
            chunkFrame('m', {}, 'stop') +
            `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [], usage: { prompt_tokens: 5, completion_tokens: 50, total_tokens: 55 } })}\n\n` +
            'data: [DONE]\n\n',
        );
      },
      { name: 'm', price: { input_per_mtok: 1, output_per_mtok: 2 } },
      { strategy: 'latency', targets: ['p/m'] },
    );
    for (let i = 0; i < 3; i++) {
      expect((await postChat(gw, { model: 'r', messages: MSG })).status).toBe(200);
      const r = await postChat(gw, {
        model: 'r',
        messages: MSG,
        stream: true,
        stream_options: { include_usage: true },
      });
      expect(r.status).toBe(200);
      expect(r.text).toContain('[DONE]');
    }
    const s = await scrape(gw.url);
    for (const x of s.filter((x) => x.name.startsWith('llm_router_')))
      expect(
        Number.isFinite(x.value) || x.labels.le === '+Inf',
        `${x.name} ${JSON.stringify(x.labels)} = ${x.value}`,
      ).toBe(true);
    const st = statsOf(await status(gw));
    for (const k of ['ttftMs', 'latencyMs', 'meanOutputTokens', 'successRate', 'outputTokens'])
      expect(Number.isFinite(st[k] as number), `${k}=${String(st[k])}`).toBe(true);
    expect(st.tokensPerSec === null || Number.isFinite(st.tokensPerSec as number)).toBe(true);
    const ex = await explain(gw, { model: 'r', messages: MSG, max_tokens: 1e9 });
    for (const c of ex.candidates as Json[]) {
      expect(c.score).toBe(1);
      expect(c.reason as string).not.toMatch(/NaN|Infinity|\?/);
    }
  });
});

describe('usage with one believable figure', () => {
  it('prompt_tokens alone: the reported prompt figure is counted, the completion estimated', async () => {
    const gw = await oneUpstream((_q, res) => jsonAnswer(res, { prompt_tokens: 4321, total_tokens: 4321 }));
    const r = await postChat(gw, { model: 'r', messages: MSG });
    expect(r.status).toBe(200);
    const s = await scrape(gw.url);
    // README: tokens are "the upstream's usage; estimated when it reports none" — it reported this one.
    expect(tokens(s, 'prompt')).toBe(4321);
    expect(tokens(s, 'completion') ?? 0).toBeGreaterThan(0); // "Sunny and mild." counted from its text
  });

  it('completion_tokens alone (prompt a string): the completion figure is counted, the prompt estimated', async () => {
    const gw = await oneUpstream((_q, res) =>
      jsonAnswer(res, { prompt_tokens: '12', completion_tokens: 7, total_tokens: 19 }),
    );
    expect((await postChat(gw, { model: 'r', messages: MSG })).status).toBe(200);
    const s = await scrape(gw.url);
    expect(tokens(s, 'completion')).toBe(7);
    const prompt = tokens(s, 'prompt')!;
    expect(prompt).toBeGreaterThan(0);
    expect(prompt).not.toBe(12);
  });
});
