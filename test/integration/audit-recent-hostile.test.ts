/**
 * Audit: a hostile-input review of the code the last sessions added, attacked over the wire as SPEC §8 says a
 * hostile client, a hostile or broken upstream and a hostile Redis neighbour would:
 * - context-window failover (src/upstream/context-overflow.ts, failover.ts): crafted and absurd refusal texts
 *   and llama.cpp `n_ctx` values never hang, loop, try an upstream twice or move to a smaller window;
 * - per-minute budgets (quota.ts, plan.ts, redis.ts): hostile token fields, a burst racing the last slot
 *   through failover, a client that leaves, hostile windows left in Redis;
 * - /router/explain and its `excluded` list: hostile bodies, prototype names, admin key set or not;
 * - an upstream's HTML error page read as its title (adapters/common.ts htmlPageText): crafted pages,
 *   odd entities, our key in the title in the spellings an HTML page gives it.
 * Each answer must be a clear OpenAI-shaped error or a normal answer, promptly, with no secret, and the
 * gateway must serve the next request.
 */
import type { ServerResponse } from 'node:http';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway, type Posted, type TestGateway } from '../helpers/gateway.js';
import {
  answerChat,
  chunkFrame,
  refuseAsOpenAI,
  sendJson,
  startRecordingMock,
  type RecordingMock,
} from '../helpers/mock-upstream.js';
import { parseProm } from '../helpers/prom-text.js';
import { describeWithRedis, prefixes, redisClient, redisState } from '../helpers/redis.js';
import { upstreamAt } from '../helpers/resilience-harness.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;
type Answer = (body: Json, res: ServerResponse, n: number) => void;

/** A bound well above what any of these answers needs, so a slow shared machine does not fail them. */
const PROMPT_MS = 5_000;

const ASK = { model: 'r', messages: [{ role: 'user', content: 'a long document, as the client sees it' }] };

async function mock(answer: Answer): Promise<RecordingMock> {
  return track(await startRecordingMock((b, n, res) => answer(b, res, n)));
}

interface Up {
  readonly name: string;
  readonly window?: number;
  readonly limits?: Json;
  readonly kind?: 'openai' | 'anthropic';
  readonly apiKey?: string;
  readonly answer: Answer;
}

/** A gateway whose route `r` lists one mock upstream per entry (model `m`), in order, strategy priority. */
async function gatewayOver(
  ups: readonly Up[],
  extra: Json = {},
): Promise<{ gw: TestGateway; mocks: RecordingMock[] }> {
  const mocks: RecordingMock[] = [];
  for (const u of ups) mocks.push(await mock(u.answer));
  const gw = track(
    await startGateway({
      providers: ups.map((u, i) =>
        simProvider(
          u.name,
          mocks[i]!.url,
          [
            {
              name: 'm',
              ...(u.window === undefined ? {} : { context_window: u.window }),
              ...(u.limits ?? {}),
            },
          ],
          {
            ...(u.kind === 'anthropic' ? { kind: 'anthropic', base_url: mocks[i]!.url } : {}),
            ...(u.apiKey === undefined ? {} : { api_key: u.apiKey }),
          },
        ),
      ),
      routes: { r: { strategy: 'priority', targets: ups.map((u) => `${u.name}/m`) } },
      ...extra,
    }),
  );
  return { gw, mocks };
}

/** An OpenAI-shaped error body: `{error: {message: string, type: string, ...}}`. */
function expectOpenAIError(r: Posted, status: number, code?: string): Json {
  expect(r.status, r.text.slice(0, 300)).toBe(status);
  expect(r.headers['content-type']).toMatch(/application\/json/);
  const err = r.json.error as Json | undefined;
  expect(err, r.text.slice(0, 300)).toBeTypeOf('object');
  expect(typeof err!.message).toBe('string');
  expect(typeof err!.type).toBe('string');
  if (code !== undefined) expect(err!.code).toBe(code);
  return err!;
}

/** A string with a UTF-16 unit no pair completes: JSON.stringify writes it as `\udXXX`, which strict parsers refuse. */
function hasLoneSurrogate(s: string): boolean {
  return /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);
}

/** A POST's raw bytes, for a strict UTF-8 check. */
async function rawPost(gw: TestGateway, body: Json, headers: Record<string, string> = {}) {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
    headersTimeout: PROMPT_MS * 2,
    bodyTimeout: PROMPT_MS * 2,
  });
  const bytes = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, bytes };
}

async function healthy(gw: TestGateway, provider?: string): Promise<void> {
  const r = await postChat(
    gw,
    ASK,
    provider === undefined ? {} : { headers: { 'x-router-provider': provider } },
  );
  expect(r.status, r.text.slice(0, 300)).toBe(200);
}

/** An answer to `body` as JSON or a stream, "ok". */
const ok: Answer = (b, res) => answerChat(res, b, 'ok');

// ---------------------------------------------------------------------------------------------------------
describe('context-window failover: hostile refusal texts and numbers', () => {
  const crafted: [string, string][] = [
    ['the trigger words 2,500 times, no digits', 'maximum context length is '.repeat(2_600)],
    [
      'an unclosed count of 64 Ki digits',
      `request exceeds the available context size (${'9'.repeat(65_536)}`,
    ],
    ['64 Ki digits before the words', `${'1'.repeat(65_536)} maximum context length`],
    [
      'a sum that never ends',
      `input length and \`max_tokens\` exceed context limit: ${'1 + '.repeat(16_400)}> 5`,
    ],
    ['64 Ki of "tokens > "', `prompt is too long: ${'tokens > '.repeat(7_300)}9 maximum`],
    ['TGI words with 64 Ki zeros', `\`inputs\` tokens + \`max_new_tokens\` must be <= ${'0'.repeat(65_536)}`],
  ];

  it.each(crafted)(
    'a 64 KiB crafted refusal (%s) is answered promptly, each upstream called at most once',
    async (_what, message) => {
      const { gw, mocks } = await gatewayOver([
        { name: 'local', answer: (_b, res) => refuseAsOpenAI(res, message, 'messages', null) },
        { name: 'large', window: 128_000, answer: ok },
      ]);
      const t0 = performance.now();
      const r = await postChat(gw, ASK);
      expect(performance.now() - t0).toBeLessThan(PROMPT_MS);
      expect([200, 400]).toContain(r.status);
      if (r.status === 400) expectOpenAIError(r, 400);
      expect(mocks[0]!.bodies).toHaveLength(1);
      expect(mocks[1]!.bodies.length).toBeLessThanOrEqual(1);
      await healthy(gw, 'large');
    },
  );

  it('a stream whose first event is a 64 KiB in-band error is answered promptly and the gateway serves on', async () => {
    const message = `This model's maximum context length is ${'8'.repeat(65_536)}`;
    const { gw, mocks } = await gatewayOver([
      {
        name: 'local',
        answer: (_b, res) => {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.end(`data: ${JSON.stringify({ error: { message, type: 'invalid_request_error' } })}\n\n`);
        },
      },
      { name: 'large', window: 128_000, answer: ok },
    ]);
    const t0 = performance.now();
    const r = await postChat(gw, { ...ASK, stream: true });
    expect(performance.now() - t0).toBeLessThan(PROMPT_MS);
    expect([200, 400]).toContain(r.status);
    expect(mocks[0]!.bodies).toHaveLength(1);
    await healthy(gw, 'large');
  });

  // The refusing upstream has no configured window, so the window its message states decides which others
  // are larger. A number the gateway cannot read as a whole count must not be read as a tiny window: every
  // smaller upstream would then be tried (and refuse too), an attempt the README says is never made.
  const misread: [string, string][] = [
    [
      'a thousands separator',
      "This model's maximum context length is 8,192 tokens. However, you requested 9000 tokens.",
    ],
    [
      'an exponent',
      "This model's maximum context length is 1e308 tokens. However, you requested 9000 tokens.",
    ],
    [
      'a space separator',
      "This model's maximum context length is 8 192 tokens. However, you requested 9000 tokens.",
    ],
  ];

  it.each(misread)(
    'a stated window written with %s is not read as a window smaller than the next upstream’s',
    async (_what, message) => {
      const { gw, mocks } = await gatewayOver([
        {
          name: 'local',
          answer: (_b, res) => refuseAsOpenAI(res, message, 'messages', 'context_length_exceeded'),
        },
        {
          name: 'small',
          window: 4096,
          answer: (_b, res) =>
            refuseAsOpenAI(
              res,
              "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens.",
              'messages',
              'context_length_exceeded',
            ),
        },
      ]);
      const r = await postChat(gw, ASK);
      const err = expectOpenAIError(r, 400, 'context_length_exceeded');
      // The client gets the refusal of the upstream it could not fit, not a smaller model's.
      expect(err.message).toBe(message);
      expect(mocks[1]!.bodies, 'a 4096-token model tried after an 8192-token one refused').toHaveLength(0);
      expect(r.headers['x-router-attempts']).toBe('1');
    },
  );

  const nCtx: [string, unknown][] = [
    ['0', 0],
    ['negative', -4096],
    ['1e308', 1e308],
    ['2^53 + 1', '2^53+1'],
    ['a fraction', 4096.5],
    ['text', '4096'],
    ['NaN as text', 'NaN'],
    ['an object', { valueOf: 4096 }],
    ['null', null],
  ];

  it.each(nCtx)(
    'llama.cpp’s refusal with n_ctx %s (no window stated otherwise): the refusal is relayed, no other upstream tried',
    async (_what, value) => {
      const { gw, mocks } = await gatewayOver([
        {
          name: 'llama',
          answer: (_b, res) => {
            // 2^53 + 1 goes as the JSON literal an upstream would write (a double cannot hold it).
            const text = JSON.stringify({
              error: {
                code: 400,
                message: 'the request exceeds the available context size, try increasing it',
                type: 'exceed_context_size_error',
                n_prompt_tokens: 9000,
                n_ctx: value,
              },
            }).replace('"n_ctx":"2^53+1"', '"n_ctx":9007199254740993');
            res.writeHead(400, { 'content-type': 'application/json' });
            res.end(text);
          },
        },
        { name: 'small', window: 4096, answer: ok },
      ]);
      const t0 = performance.now();
      const r = await postChat(gw, ASK);
      expect(performance.now() - t0).toBeLessThan(PROMPT_MS);
      expectOpenAIError(r, 400, 'context_length_exceeded');
      expect(mocks[0]!.bodies).toHaveLength(1);
      expect(mocks[1]!.bodies).toHaveLength(0);
      await healthy(gw, 'small');
    },
  );

  it('a stream refused in-band by a larger window is not moved to a smaller one: a 400, no event stream begun', async () => {
    const { gw, mocks } = await gatewayOver([
      {
        name: 'big',
        window: 32_768,
        answer: (_b, res) => {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.write(chunkFrame('m', { role: 'assistant', content: '' }));
          res.end(
            `data: ${JSON.stringify({
              error: {
                message:
                  "This model's maximum context length is 32768 tokens. However, you requested 40000 tokens.",
                type: 'invalid_request_error',
                code: 'context_length_exceeded',
              },
            })}\n\n`,
          );
        },
      },
      { name: 'smaller', window: 8192, answer: ok },
    ]);
    const r = await postChat(gw, { ...ASK, stream: true });
    expectOpenAIError(r, 400, 'context_length_exceeded');
    expect(r.headers['content-type']).not.toMatch(/event-stream/);
    expect(mocks[0]!.bodies).toHaveLength(1);
    expect(mocks[1]!.bodies).toHaveLength(0);
    await healthy(gw, 'smaller');
  });

  it('every upstream states a tiny window: each is tried once at most, within max_attempts, and the answer is an error or an answer', async () => {
    const tiny = (name: string, window?: number): Up => ({
      name,
      ...(window === undefined ? {} : { window }),
      answer: (_b, res) =>
        refuseAsOpenAI(
          res,
          "This model's maximum context length is 1 tokens.",
          'messages',
          'context_length_exceeded',
        ),
    });
    const { gw, mocks } = await gatewayOver(
      [tiny('a'), tiny('b', 2), tiny('c', 3), tiny('d', 4), tiny('e', 5)],
      { routing: { max_attempts: 3 } },
    );
    const r = await postChat(gw, ASK);
    expect([400, 502]).toContain(r.status);
    expectOpenAIError(r, r.status);
    const calls = mocks.map((m) => m.bodies.length);
    for (const c of calls) expect(c).toBeLessThanOrEqual(1);
    expect(calls.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(3);
  });
});

// ---------------------------------------------------------------------------------------------------------
describe('an upstream’s HTML error page', () => {
  const page = (inner: string): string => `<!DOCTYPE html><html><head>${inner}</head><body>x</body></html>`;
  const html =
    (status: number, body: string): Answer =>
    (_b, res) => {
      res.writeHead(status, { 'content-type': 'text/html' });
      res.end(body);
    };

  const crafted: [string, string][] = [
    ['64 KiB of "<"', `<html>${'<'.repeat(65_536)}`],
    ['64 KiB of "<title" with no ">"', `<html>${'<title'.repeat(13_000)}`],
    ['an unclosed title attribute', `<html><head><title a="${'x'.repeat(65_536)}`],
    ['thousands of nested titles', `<html>${'<title>'.repeat(9_000)}t${'</title>'.repeat(7_000)}`],
    ['a title of 64 KiB of "&#"', `<html><title>${'&#'.repeat(32_000)}</title>`],
    ['64 KiB of entities', `<html><title>${'&#x10FFFF;'.repeat(6_500)}</title>`],
    ['a title of 64 KiB of "<>"', `<html><title>${'<>'.repeat(32_768)}</title>`],
  ];

  for (const kind of ['openai', 'anthropic'] as const) {
    it.each(crafted)(
      `${kind}: a crafted 413 page (%s) is answered promptly as valid JSON`,
      async (_what, body) => {
        const { gw } = await gatewayOver([{ name: 'p', kind, answer: html(413, body) }]);
        const t0 = performance.now();
        const r = await rawPost(gw, ASK);
        expect(performance.now() - t0).toBeLessThan(PROMPT_MS);
        expect(r.status).toBe(413);
        const text = new TextDecoder('utf-8', { fatal: true }).decode(r.bytes);
        const json = JSON.parse(text) as { error?: { message?: unknown } };
        expect(typeof json.error?.message).toBe('string');
        expect((json.error!.message as string).length).toBeLessThanOrEqual(1_100);
        // Text, not markup (a stray '<' where the bounded read cut the page is text).
        expect(json.error!.message).not.toMatch(/<[^<>]*>/);
      },
    );
  }

  for (const kind of ['openai', 'anthropic'] as const) {
    it(`${kind}: entities &#0; &#x110000; &#55296; &#xDC00; in a title give well-formed text in valid JSON`, async () => {
      const title = 'Bad request &#0; &#x110000; &#55296; &#xDC00; &#xD83D;&#xDE00; end';
      const { gw } = await gatewayOver([
        { name: 'p', kind, answer: html(400, page(`<title>${title}</title>`)) },
      ]);
      const r = await rawPost(gw, ASK);
      expect(r.status).toBe(400);
      const text = new TextDecoder('utf-8', { fatal: true }).decode(r.bytes);
      const message = (JSON.parse(text) as { error: { message: string } }).error.message;
      expect(message).toMatch(/^Bad request .* end$/);
      // A lone surrogate escaped as `\ud800` is JSON that strict parsers (Rust's serde_json, I-JSON) refuse.
      expect(hasLoneSurrogate(message), JSON.stringify(message)).toBe(false);
      expect(text).not.toMatch(/\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f])/i);
    });
  }

  // A key with the characters HTML encoders escape. Every spelling below is what a browser shows as the key.
  const KEY = 'sk-live+Ab12/Cd34=Ef56gh78Zq';
  const dec = (s: string) => [...s].map((c) => `&#${c.codePointAt(0)};`).join('');
  const spellings: [string, string][] = [
    ['as is', KEY],
    ['Go html/template (&#43;)', KEY.replaceAll('+', '&#43;')],
    ['OWASP (&#x2F;)', KEY.replaceAll('/', '&#x2F;')],
    [
      'lower-case hex (&#x2b; &#x2f; &#x3d;)',
      KEY.replaceAll('+', '&#x2b;').replaceAll('/', '&#x2f;').replaceAll('=', '&#x3d;'),
    ],
    ['every character a decimal reference', dec(KEY)],
    [
      'HTML5 named references (&plus; &sol; &equals;)',
      KEY.replaceAll('+', '&plus;').replaceAll('/', '&sol;').replaceAll('=', '&equals;'),
    ],
  ];

  /** What a browser or an HTML-aware client reads from `s`: numeric and the named references used here. */
  function decodeHtml(s: string): string {
    const named: Record<string, string> = {
      plus: '+',
      sol: '/',
      equals: '=',
      amp: '&',
      quot: '"',
      lt: '<',
      gt: '>',
    };
    return s.replace(/&(?:#(\d+)|#x([\da-f]+)|([a-z]+));/gi, (all, d?: string, h?: string, n?: string) => {
      if (n !== undefined) return named[n.toLowerCase()] ?? all;
      const cp = d !== undefined ? Number(d) : Number.parseInt(h!, 16);
      return cp > 0 && cp <= 0x10ffff ? String.fromCodePoint(cp) : all;
    });
  }

  for (const kind of ['openai', 'anthropic'] as const) {
    it.each(spellings)(
      `${kind}: our key in a 403/400 page’s title, spelt %s, never reaches the client`,
      async (_what, spelt) => {
        const title = `Access denied for key ${spelt}`;
        const { gw } = await gatewayOver([
          {
            name: 'p',
            kind,
            apiKey: KEY,
            answer: (b, res, n) => html(n === 0 ? 400 : 413, page(`<title>${title}</title>`))(b, res, n),
          },
        ]);
        for (let i = 0; i < 2; i++) {
          const r = await postChat(gw, ASK);
          expect([400, 413]).toContain(r.status);
          expectOpenAIError(r, r.status);
          expect(r.text).not.toContain(KEY);
          expect(r.text).not.toContain(spelt);
          expect(decodeHtml((r.json.error as Json).message as string)).not.toContain(KEY);
        }
        expect(gw.rawLogs()).not.toContain(KEY);
      },
    );
  }
});

// ---------------------------------------------------------------------------------------------------------
describe('per-minute budgets under hostile requests', () => {
  /** Every llm_router_quota_* sample, for a NaN/Infinity/negative check. */
  async function quotaSamples(gw: TestGateway) {
    const res = await request(`${gw.url}/metrics`);
    return parseProm(await res.body.text()).filter((s) => s.name.startsWith('llm_router_quota_'));
  }

  it('hostile token fields never leave the window NaN, Infinity or negative, and the budget still counts right', async () => {
    const usage = { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 };
    const { gw, mocks } = await gatewayOver([
      {
        name: 'a',
        limits: { rpm: 100, tpm: 1000 },
        answer: (b, res) => {
          const n = typeof b.n === 'number' ? b.n : 1;
          sendJson(res, 200, {
            id: 'x',
            object: 'chat.completion',
            created: 1,
            model: 'm',
            choices: Array.from({ length: n }, (_, index) => ({
              index,
              message: { role: 'assistant', content: 'hi' },
              finish_reason: 'stop',
            })),
            usage,
          });
        },
      },
    ]);
    const hostile: [Json | string, number][] = [
      [{ ...ASK, max_tokens: 1e9, n: 128 }, 200],
      [{ ...ASK, max_completion_tokens: 1, max_tokens: 1e9 }, 200],
      [{ ...ASK, max_tokens: null, max_completion_tokens: null }, 200],
      [{ ...ASK, max_tokens: -1 }, 400],
      [{ ...ASK, max_tokens: 0.5 }, 400],
      [{ ...ASK, max_tokens: 0 }, 400],
      [{ ...ASK, max_tokens: '1e9' }, 400],
      [{ ...ASK, max_completion_tokens: 1e10 }, 400],
      [{ ...ASK, n: 0 }, 400],
      [{ ...ASK, n: 1e9 }, 400],
      [{ ...ASK, n: 1.5 }, 400],
      // JSON numbers past a double: JSON.parse reads them as Infinity.
      [`{"model":"r","messages":[{"role":"user","content":"x"}],"max_tokens":1e400}`, 400],
      [`{"model":"r","messages":[{"role":"user","content":"x"}],"n":-1e400}`, 400],
    ];
    for (const [body, status] of hostile) {
      const r = await postChat(gw, body);
      expect(
        r.status,
        `${typeof body === 'string' ? body : JSON.stringify(body).slice(0, 200)} → ${r.text.slice(0, 200)}`,
      ).toBe(status);
      if (status === 400) expectOpenAIError(r, 400);
      for (const s of await quotaSamples(gw)) {
        expect(Number.isFinite(s.value), `${s.name}${JSON.stringify(s.labels)} ${s.value}`).toBe(true);
        expect(s.value).toBeGreaterThanOrEqual(0);
      }
    }
    // Three requests reached the upstream, each settled to its reported 7 tokens.
    expect(mocks[0]!.bodies).toHaveLength(3);
    const q = (await upstreamAt(gw.url, 'a/m')).quota as Json;
    expect(q.requests_last_minute).toBe(3);
    expect(q.tokens_last_minute).toBe(21);
    // The window still refuses what does not fit (7 used: 994 more is too many) and takes what does.
    const tooMuch = await postChat(gw, { ...ASK, max_tokens: 994 });
    expect(tooMuch.status).toBe(429);
    expect(Number(tooMuch.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    const fits = await postChat(gw, { ...ASK, max_tokens: 900 });
    expect(fits.status).toBe(200);
  });

  it('a burst racing the last slots through failover: exactly rpm requests reach the limited upstream', async () => {
    const { gw, mocks } = await gatewayOver(
      [
        {
          name: 'flaky',
          answer: (_b, res) => sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } }),
        },
        { name: 'a', limits: { rpm: 3 }, answer: ok },
      ],
      { circuit_breaker: { failure_threshold: 1000 } },
    );
    const results = await Promise.all(
      Array.from({ length: 16 }, (_, i) =>
        postChat(gw, { ...ASK, ...(i % 2 === 0 ? { stream: true } : {}) }),
      ),
    );
    expect(mocks[1]!.bodies).toHaveLength(3);
    expect(results.filter((r) => r.status === 200)).toHaveLength(3);
    for (const r of results) if (r.status !== 200) expectOpenAIError(r, r.status);
    expect(((await upstreamAt(gw.url, 'a/m')).quota as Json).requests_last_minute).toBe(3);
  });

  it('a client that leaves before the answer gives its max_tokens reservation back: the next large request fits', async () => {
    let release: (() => void) | undefined;
    const { gw, mocks } = await gatewayOver([
      {
        name: 'a',
        limits: { tpm: 1000 },
        answer: (b, res, n) => {
          if (n === 0) {
            // Holds the first request until the gateway drops it.
            res.on('close', () => release?.());
            return;
          }
          answerChat(res, b, 'ok');
        },
      },
    ]);
    const dropped = new Promise<void>((r) => (release = r));
    const ac = new AbortController();
    const first = postChat(gw, { ...ASK, max_tokens: 900 }, { signal: ac.signal }).catch((e: unknown) => e);
    await until('the upstream has the request', () => mocks[0]!.bodies.length === 1, PROMPT_MS);
    expect(((await upstreamAt(gw.url, 'a/m')).quota as Json).tokens_last_minute).toBeGreaterThanOrEqual(900);
    ac.abort();
    await first;
    await Promise.race([dropped, new Promise((r) => setTimeout(r, PROMPT_MS))]);
    await until(
      'the reservation settled',
      async () => Number(((await upstreamAt(gw.url, 'a/m')).quota as Json).tokens_last_minute) < 100,
      PROMPT_MS,
    );
    const next = await postChat(gw, { ...ASK, max_tokens: 900 });
    expect(next.status).toBe(200);
  });
});

// ---------------------------------------------------------------------------------------------------------
describe('/router/explain with hostile bodies', () => {
  const PROVIDER_KEY = 'sk-provider-secret-0123456789abcdef';
  const ADMIN = 'admin-secret-9876543210';

  async function explainGateway(admin: boolean): Promise<TestGateway> {
    const a = await mock(ok);
    const e = await mock(ok);
    return track(
      await startGateway({
        server: { body_limit_bytes: 65_536, ...(admin ? { admin_key: ADMIN } : {}) },
        providers: [
          simProvider('a', a.url, [{ name: 'm', context_window: 4096, rpm: 1 }], { api_key: PROVIDER_KEY }),
          simProvider('b', a.url, [{ name: 'm', capabilities: ['stream'] }], { api_key: PROVIDER_KEY }),
          simProvider('e', e.url, [{ name: 'emb', capabilities: ['embeddings'] }], { api_key: PROVIDER_KEY }),
        ],
        routes: {
          r: { strategy: 'priority', targets: ['a/m', 'b/m'] },
          embed: { strategy: 'priority', targets: ['e/emb'] },
        },
      }),
    );
  }

  async function explain(gw: TestGateway, body: string, headers: Record<string, string> = {}) {
    const res = await request(`${gw.url}/router/explain`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body,
      headersTimeout: PROMPT_MS * 2,
      bodyTimeout: PROMPT_MS * 2,
    });
    const text = await res.body.text();
    return { status: res.statusCode, text };
  }

  const msgs = '[{"role":"user","content":"hi"}]';
  const bodies: [string, string, Record<string, string>?][] = [
    [
      '__proto__ at the top',
      `{"model":"r","messages":${msgs},"__proto__":{"stream":true,"tools":[1],"model":"x"}}`,
    ],
    ['__proto__ instead of the model', `{"__proto__":{"model":"r"},"messages":${msgs}}`],
    ['constructor.prototype', `{"model":"r","messages":${msgs},"constructor":{"prototype":{"polluted":1}}}`],
    [
      '__proto__ inside a message',
      `{"model":"r","messages":[{"role":"user","content":"hi","__proto__":{"role":"x"}}]}`,
    ],
    ['__proto__ as a message role', `{"model":"r","messages":[{"role":"__proto__","content":"hi"}]}`],
    ['model __proto__', `{"model":"__proto__","messages":${msgs}}`],
    ['model constructor', `{"model":"constructor","messages":${msgs}}`],
    ['model toString', `{"model":"toString","messages":${msgs}}`],
    ['model hasOwnProperty', `{"model":"hasOwnProperty","messages":${msgs}}`],
    ['model __proto__/m', `{"model":"__proto__/m","messages":${msgs}}`],
    ['model a/__proto__', `{"model":"a/__proto__","messages":${msgs}}`],
    ['model constructor/constructor', `{"model":"constructor/constructor","messages":${msgs}}`],
    ['embeddings with model __proto__', `{"model":"__proto__","input":"x"}`],
    ['embeddings with model constructor', `{"model":"constructor","input":["x"]}`],
    ['embeddings with input __proto__ object', `{"model":"embed","input":{"__proto__":{"length":5}}}`],
    ['x-router-provider __proto__', `{"model":"r","messages":${msgs}}`, { 'x-router-provider': '__proto__' }],
    [
      'x-router-provider constructor',
      `{"model":"r","messages":${msgs}}`,
      { 'x-router-provider': 'constructor' },
    ],
    ['x-router-tier __proto__', `{"model":"r","messages":${msgs}}`, { 'x-router-tier': '__proto__' }],
    [
      'x-router-strategy constructor',
      `{"model":"r","messages":${msgs}}`,
      { 'x-router-strategy': 'constructor' },
    ],
    [
      'nested 100,000 deep',
      `{"model":"r","messages":${msgs},"x":${'['.repeat(100_000)}${']'.repeat(100_000)}}`,
    ],
    ['an unclosed nest', `{"model":"r","messages":${msgs},"x":${'{"a":'.repeat(20_000)}`],
    ['past the body limit', `{"model":"r","messages":[{"role":"user","content":"${'x'.repeat(200_000)}"}]}`],
    ['not an object', '"__proto__"'],
    ['null', 'null'],
    ['an array', `[{"model":"r","messages":${msgs}}]`],
  ];

  for (const admin of [false, true]) {
    it.each(bodies)(
      `admin key ${admin ? 'set' : 'unset'}: %s gives 400/404/413 or an answer, no secret`,
      async (_w, body, headers) => {
        const gw = await explainGateway(admin);
        const auth: Record<string, string> = admin ? { authorization: `Bearer ${ADMIN}` } : {};
        const t0 = performance.now();
        const r = await explain(gw, body, { ...auth, ...headers });
        expect(performance.now() - t0).toBeLessThan(PROMPT_MS);
        expect([200, 400, 404, 413], r.text.slice(0, 300)).toContain(r.status);
        const json = JSON.parse(r.text) as Json;
        if (r.status !== 200) {
          const err = json.error as Json;
          expect(typeof err.message).toBe('string');
          expect(typeof err.type).toBe('string');
        } else {
          expect(Array.isArray(json.candidates)).toBe(true);
          expect(Array.isArray(json.excluded)).toBe(true);
          // `__proto__` keys are data: they neither make the request a stream nor give it tools.
          const features = json.features as Json;
          if (features !== undefined) {
            expect(features.stream).toBe(false);
            expect(features.tools).toBe(false);
          }
        }
        expect(r.text).not.toContain(PROVIDER_KEY);
        expect(r.text).not.toContain(ADMIN);
        expect(({} as Json).polluted).toBeUndefined();
        // Still serving, and the explain took nothing of a/m's rpm of 1.
        const next = await explain(gw, `{"model":"r","messages":${msgs}}`, auth);
        expect(next.status).toBe(200);
        expect((JSON.parse(next.text) as { candidates: Json[] }).candidates[0]!.upstream).toBe('a/m');
        if (admin) {
          const refused = await explain(gw, body, headers);
          expect(refused.status).toBe(401);
          expect(refused.text).not.toContain('candidates');
          expect(refused.text).not.toContain('excluded');
        }
      },
    );
  }

  it('the excluded list names the budget and the window without a secret, and a long prompt’s figures are finite', async () => {
    const gw = await explainGateway(true);
    const auth = { authorization: `Bearer ${ADMIN}` };
    // Fill a/m's rpm of 1.
    const sent = await postChat(gw, ASK);
    expect(sent.status).toBe(200);
    const long = JSON.stringify({
      model: 'r',
      max_tokens: 1e9,
      n: 128,
      messages: [{ role: 'user', content: 'word '.repeat(10_000) }],
    });
    const r = await explain(gw, long, auth);
    expect([200, 400, 429]).toContain(r.status);
    expect(r.text).not.toContain(PROVIDER_KEY);
    expect(r.text).not.toMatch(/NaN|Infinity|undefined/);
    const small = await explain(gw, `{"model":"r","messages":${msgs}}`, auth);
    expect(small.status).toBe(200);
    const excluded = (JSON.parse(small.text) as { excluded: { upstream: string; reason: string }[] })
      .excluded;
    const a = excluded.find((x) => x.upstream === 'a/m');
    expect(a?.reason).toMatch(/per-minute budget/);
    expect(small.text).not.toMatch(/NaN|Infinity/);
  });
});

// ---------------------------------------------------------------------------------------------------------
const nextPrefix = prefixes(`audit-recent-hostile-${process.pid}-`);

describeWithRedis('per-minute budgets with a hostile Redis neighbour', (redis) => {
  async function replica(a: RecordingMock, b: RecordingMock, prefix: string): Promise<TestGateway> {
    const gw = track(
      await startGateway(
        {
          providers: [
            simProvider('a', a.url, [{ name: 'm', rpm: 5, tpm: 100_000 }]),
            simProvider('b', b.url, ['m']),
          ],
          routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
          state: redisState(redis.url, prefix),
        },
        { stateSyncMs: 200 },
      ),
    );
    await gw.gateway.ready();
    await until('connected', () => gw.gateway.shared.redis!.connected, PROMPT_MS);
    return gw;
  }

  it('hundreds of crafted replicas, prototype names and odd figures: no crash, no NaN, the gateway answers promptly', async () => {
    const [a, b] = [await mock(ok), await mock(ok)];
    const prefix = nextPrefix();
    const raw = redisClient(redis.url);
    try {
      const now = Number((await raw.time())[0]) * 1000;
      const key = `${prefix}quota:a/m`;
      const fields: Record<string, string> = {
        __proto__x: JSON.stringify({ requests: 0, tokens: 0, leaving: [], at: now }),
        constructor: JSON.stringify({ requests: 0, tokens: 0, leaving: [[1000, 0, 0]], at: now }),
        fraction: JSON.stringify({ leaving: [[30_000.5, 0.25, 0.5]], at: now }),
        tiny: JSON.stringify({ leaving: [[1e-300, 5e-324, 5e-324]], at: now }),
        proto: `{"__proto__":{"leaving":[[30000,1000,1000]]},"at":${now}}`,
        nested: `{"leaving":${'['.repeat(5_000)}${']'.repeat(5_000)},"at":${now}}`,
        big: JSON.stringify({ leaving: [[30_000, 0, 0]], at: now, pad: 'x'.repeat(1_000_000) }),
        future: JSON.stringify({ leaving: [[60_000, 1, 1]], at: now + 9_000 }),
        string: JSON.stringify({ leaving: [['30000', '1', '1']], at: String(now) }),
        negativeZero: JSON.stringify({ leaving: [[-0, -0, -0]], at: now }),
      };
      // Many replicas, each with a full minute of empty buckets: work per exchange, no count.
      const empty = JSON.stringify({
        leaving: Array.from({ length: 60 }, (_, i) => [i * 1000 + 500, 0, 0]),
        at: now,
      });
      for (let i = 0; i < 500; i++) fields[`r${i}`] = empty;
      await raw.hset(key, fields);
      await raw.hset(key, '__proto__', JSON.stringify({ leaving: [[30_000, 1000, 1000]], at: now }));
      const gw = await replica(a, b, prefix);
      // One exchange read them (the stale and malformed fields deleted).
      await until('an exchange', async () => (await raw.hget(key, 'nested')) === null, PROMPT_MS);
      const t0 = performance.now();
      const r = await postChat(gw, ASK);
      expect(performance.now() - t0).toBeLessThan(PROMPT_MS);
      expect(r.status).toBe(200);
      const res = await request(`${gw.url}/metrics`);
      const samples = parseProm(await res.body.text()).filter((s) => s.name.startsWith('llm_router_quota_'));
      expect(samples.length).toBeGreaterThan(0);
      for (const s of samples) expect(Number.isFinite(s.value), `${s.name} ${s.value}`).toBe(true);
      const q = (await upstreamAt(gw.url, 'a/m')).quota as Json;
      expect(Number.isFinite(q.requests_last_minute)).toBe(true);
      expect(q.requests_last_minute as number).toBeGreaterThanOrEqual(1);
      expect(await raw.hget(key, 'string')).toBeNull();
    } finally {
      await raw.close();
    }
  });

  it('the budget key holding another type, or a hash of 1e12-request windows, never takes the gateway down', async () => {
    const [a, b] = [await mock(ok), await mock(ok)];
    const prefix = nextPrefix();
    const raw = redisClient(redis.url);
    try {
      const key = `${prefix}quota:a/m`;
      await raw.rpush(key, 'not', 'a', 'hash');
      const gw = await replica(a, b, prefix);
      await until('the wrong type replaced', async () => (await raw.type(key)) === 'hash', PROMPT_MS);
      expect((await postChat(gw, ASK)).status).toBe(200);
      const now = Number((await raw.time())[0]) * 1000;
      const full = JSON.stringify({ leaving: [[59_000, 1e12, 1e12]], at: now });
      await raw.hset(key, { h1: full, h2: full, h3: full });
      await until(
        'the windows read',
        async () => Number(((await upstreamAt(gw.url, 'a/m')).quota as Json).requests_last_minute) >= 3e12,
        PROMPT_MS,
      );
      // a/m is full: b/m serves, and /metrics says the huge figure as a finite number.
      const r = await postChat(gw, ASK);
      expect(r.status).toBe(200);
      expect(r.headers['x-router-provider']).toBe('b');
      const res = await request(`${gw.url}/metrics`);
      const samples = parseProm(await res.body.text()).filter((s) => s.name.startsWith('llm_router_quota_'));
      for (const s of samples) expect(Number.isFinite(s.value), `${s.name} ${s.value}`).toBe(true);
      // Gone from Redis: the next exchanges forget them (no window of theirs lingers past the minute's part).
      await raw.del(key);
      await until(
        'the windows forgotten',
        async () => Number(((await upstreamAt(gw.url, 'a/m')).quota as Json).requests_last_minute) < 3e12,
        PROMPT_MS,
      );
    } finally {
      await raw.close();
    }
  });
});
