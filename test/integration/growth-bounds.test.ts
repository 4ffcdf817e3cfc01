/**
 * Growth bounds: nothing the gateway keeps grows without bound from what clients or upstreams send. Each test
 * sends many distinct inputs (or one endless one) and checks a structure's size, the /metrics series, what the
 * gateway read from an upstream before giving up on it, or what it handed back — never timings.
 */
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Agent, request } from 'undici';
import { describe, expect, it } from 'vitest';
import { cacheFor } from '../../src/routing/router-cache.js';
import { closeAfterEach, closeableServer } from '../helpers/cleanup.js';
import { postTo, startGateway } from '../helpers/gateway.js';
import { answerChat, chunkFrame, sendJson, startMock } from '../helpers/mock-upstream.js';
import { scrape } from '../helpers/prom-text.js';

const track = closeAfterEach();

/** Runs `fn(i)` for i in [0, n) with at most `width` at once. */
async function pool(n: number, width: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(width, n) }, worker));
}

/** A healthy OpenAI-dialect upstream answering "ok" (JSON or stream). */
async function healthy(): Promise<string> {
  const m = track(await startMock((r, res) => answerChat(res, r.body, 'ok')));
  return m.url;
}

describe('upstream-driven growth', () => {
  // Blank lines before the first event (a keep-alive some servers send, or a broken proxy) are SSE's event
  // separators: the parser takes them and holds nothing (unit: firstBytes in attempt-stream.test.ts).
  it('16 MiB of blank lines before a stream’s first event: read through, the answer comes', async () => {
    const TOTAL = 16 * 1024 * 1024;
    const blank = Buffer.alloc(64 * 1024, 0x0a);
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        let written = 0;
        const pump = (): void => {
          while (written < TOTAL && !res.destroyed) {
            written += blank.length;
            if (!res.write(blank)) {
              res.once('drain', pump);
              return;
            }
          }
          res.end(
            `${chunkFrame('m', { role: 'assistant', content: '' })}${chunkFrame('m', { content: 'after the blanks' })}` +
              `${chunkFrame('m', {}, 'stop')}data: [DONE]\n\n`,
          );
        };
        pump();
      });
    });
    track(closeableServer(server));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const gw = track(
      await startGateway({
        providers: [{ name: 'blank', base_url: `${url}/v1`, models: [{ name: 'm' }] }],
        routes: { r: { strategy: 'priority', targets: ['blank/m'] } },
      }),
    );
    const res = await postTo(
      `${gw.url}/v1/chat/completions`,
      { model: 'r', stream: true, messages: [{ role: 'user', content: 'hi' }] },
      { timeoutMs: 60000 },
    );
    expect(res.status, res.text.slice(0, 300)).toBe(200);
    expect(res.text).toContain('after the blanks');
    expect(res.text).toContain('data: [DONE]');
  }, 90_000);

  // README: "more than 1 Mi characters of frames before any content" fails the upstream; Claude's thinking
  // is held for `thinking_blocks` only up to MAX_THINKING_CHARS (2 Mi characters). Each held block counts
  // against that bound besides its text, so block after block of empty redacted_thinking (data "") before
  // any text cannot be held one by one without end (anthropic-stream.ts).
  it('an Anthropic stream of endless empty redacted_thinking blocks is not held block by block', async () => {
    const N = 100_000;
    const frame = (e: Record<string, unknown>): string =>
      `event: ${String(e.type)}\ndata: ${JSON.stringify(e)}\n\n`;
    const mock = track(
      await startMock(async (_r, res: ServerResponse) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(
          frame({
            type: 'message_start',
            message: {
              id: 'msg_1',
              type: 'message',
              role: 'assistant',
              model: 'claude-sonnet-4-5',
              content: [],
              stop_reason: null,
              usage: { input_tokens: 5, output_tokens: 0 },
            },
          }),
        );
        const block = (i: number): string =>
          frame({
            type: 'content_block_start',
            index: i,
            content_block: { type: 'redacted_thinking', data: '' },
          }) + frame({ type: 'content_block_stop', index: i });
        for (let i = 0; i < N; i += 1000) {
          let batch = '';
          for (let j = i; j < i + 1000; j++) batch += block(j);
          if (!res.write(batch)) await new Promise((r) => res.once('drain', r));
        }
        res.end(
          frame({ type: 'content_block_start', index: N, content_block: { type: 'text', text: '' } }) +
            frame({ type: 'content_block_delta', index: N, delta: { type: 'text_delta', text: 'hi' } }) +
            frame({ type: 'content_block_stop', index: N }) +
            frame({
              type: 'message_delta',
              delta: { stop_reason: 'end_turn' },
              usage: { output_tokens: 2 },
            }) +
            frame({ type: 'message_stop' }),
        );
      }),
    );
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'anth',
            kind: 'anthropic',
            base_url: mock.url,
            api_key: 'sk-ant-test-123456',
            models: [{ name: 'claude-sonnet-4-5' }],
          },
        ],
        routes: { r: { strategy: 'priority', targets: ['anth/claude-sonnet-4-5'] } },
      }),
    );
    const res = await postTo(
      `${gw.url}/v1/chat/completions`,
      { model: 'r', stream: true, messages: [{ role: 'user', content: 'hi' }] },
      { timeoutMs: 60000 },
    );
    let blocks = 0;
    if (res.status === 200) {
      for (const line of res.text.split('\n')) {
        if (!line.startsWith('data: {')) continue;
        const c = JSON.parse(line.slice(6)) as { choices?: { delta?: { thinking_blocks?: unknown[] } }[] };
        blocks += c.choices?.[0]?.delta?.thinking_blocks?.length ?? 0;
      }
    }
    // Either the upstream is failed for its endless preamble, or what is held for the client is bounded
    // (not one object per frame it chose to send).
    expect(blocks).toBeLessThan(N);
  }, 90_000);
});

describe('client-driven growth', () => {
  /** Every llm_router_* series in a scrape, as one string each. */
  async function routerSeries(url: string): Promise<string[]> {
    return (await scrape(url))
      .filter((s) => s.name.startsWith('llm_router_'))
      .map((s) => `${s.name}${JSON.stringify(s.labels)}`)
      .sort();
  }

  // SPEC §5 / README Metrics: label values come from the configuration, never from what a client sent.
  it('thousands of distinct model names, x-router-* values, paths, methods and request ids add no series', async () => {
    const good = await healthy();
    const gw = track(
      await startGateway({
        providers: [
          { name: 'good', base_url: `${good}/v1`, models: [{ name: 'm' }, { name: 'n' }] },
          { name: 'other', base_url: `${good}/v1`, models: [{ name: 'm' }] },
        ],
        routes: {
          r: { strategy: 'priority', targets: ['good/m', 'other/m'] },
          t: {
            strategy: 'priority',
            tiers: { fast: ['good/m'], deep: ['good/n'] },
            rules: [{ if: { max_prompt_tokens: 100000 }, tier: 'fast' }],
            default_tier: 'fast',
          },
        },
      }),
    );
    const agent = new Agent({ connections: 8 });
    track({ close: () => agent.close() });
    const msg = [{ role: 'user', content: 'hi' }];
    const send = async (
      path: string,
      method: string,
      body: unknown,
      headers: Record<string, string> = {},
    ): Promise<number> => {
      const res = await request(`${gw.url}${path}`, {
        method: method as 'POST',
        dispatcher: agent,
        headers: { 'content-type': 'application/json', ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      await res.body.text();
      return res.statusCode;
    };
    const kinds: ((tag: string) => Promise<number>)[] = [
      (tag) => send('/v1/chat/completions', 'POST', { model: `zz-model-${tag}`, messages: msg }),
      (tag) => send('/v1/chat/completions', 'POST', { model: `good/zz-${tag}`, messages: msg }),
      (tag) =>
        send(
          '/v1/chat/completions',
          'POST',
          { model: 'r', messages: msg },
          { 'x-router-tier': `zz-tier-${tag}` },
        ),
      (tag) =>
        send('/v1/chat/completions', 'POST', { model: 't', messages: msg }, { 'x-router-tier': `zz${tag}` }),
      (tag) =>
        send(
          '/v1/chat/completions',
          'POST',
          { model: 'r', messages: msg },
          { 'x-router-provider': `zz-prov-${tag}` },
        ),
      (tag) =>
        send(
          '/v1/chat/completions',
          'POST',
          { model: 'r', messages: msg },
          { 'x-router-strategy': `zz-strat-${tag}` },
        ),
      (tag) => send(`/v1/zz-path-${tag}`, 'GET', undefined),
      (tag) => send(`/zz-root-${tag}?q=${tag}`, 'POST', {}),
      (tag) =>
        send('/v1/chat/completions', ['PUT', 'DELETE', 'PATCH', 'OPTIONS'][Number(tag) % 4]!, undefined),
      (tag) => send(`/v1/models/zz-${tag}`, 'GET', undefined),
      (tag) => send('/v1/embeddings', 'POST', { model: `zz-emb-${tag}`, input: 'x' }),
      (tag) =>
        send(
          '/v1/chat/completions',
          'POST',
          { model: 'r', messages: msg },
          { 'x-request-id': `zz-id-${tag}` },
        ),
      (tag) => send('/v1/chat/completions', 'POST', { model: 'r', messages: msg, user: `zz-user-${tag}` }),
    ];
    const statuses = new Set<number>();
    const round = async (from: number, n: number): Promise<void> =>
      pool(n * kinds.length, 8, async (i) => {
        const k = i % kinds.length;
        statuses.add(await kinds[k]!(String(from + Math.floor(i / kinds.length))));
      });
    await round(0, 8); // every kind of answer seen once: its series exist
    const before = await routerSeries(gw.url);
    await round(1000, 300); // ~4,000 more requests, every value new
    const after = await routerSeries(gw.url);
    expect(after.filter((s) => s.includes('zz'))).toEqual([]);
    expect(after.filter((s) => !s.includes('_bucket') && !before.includes(s))).toEqual([]);
    expect(after.length).toBe(before.length);
    expect([...statuses].sort()).toContain(404);
  }, 120_000);

  // README Tiers: the LLM router's answers are "cached by prompt for cache_ttl_s" (routes.NAME.router:
  // cache 300 s / 10,000 entries, `cache_size`). Distinct prompts from clients must not grow it past that,
  // and /router/explain (a dry run) must not add entries at all.
  it('distinct prompts fill the LLM router cache only to cache_size; explain adds nothing', async () => {
    const routerUp = track(
      await startMock((r, res) => {
        if (r.body.stream === true) return answerChat(res, r.body, '{"tier":"fast","reason":"x"}');
        sendJson(res, 200, {
          id: 'c',
          object: 'chat.completion',
          created: 1,
          model: 'm',
          choices: [
            {
              index: 0,
              message: { role: 'assistant', content: '{"tier":"fast","reason":"short"}' },
              finish_reason: 'stop',
            },
          ],
          usage: { prompt_tokens: 5, completion_tokens: 5, total_tokens: 10 },
        });
      }),
    );
    const gw = track(
      await startGateway({
        providers: [{ name: 'p', base_url: `${routerUp.url}/v1`, models: [{ name: 'm' }, { name: 'n' }] }],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['p/m'], deep: ['p/n'] },
            default_tier: 'deep',
            router: { tier: 'fast', timeout_ms: 10_000, cache_size: 40 },
          },
        },
      }),
    );
    const route = gw.gateway.runtime.routes.get('auto')!;
    const agent = new Agent({ connections: 8 });
    track({ close: () => agent.close() });
    await pool(300, 8, async (i) => {
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        dispatcher: agent,
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'auto',
          messages: [{ role: 'user', content: `question number ${i}` }],
        }),
      });
      await res.body.text();
      expect(res.statusCode).toBe(200);
    });
    const cache = cacheFor(gw.gateway, route)!;
    expect(cache.size).toBeLessThanOrEqual(40);
    expect(cache.size).toBeGreaterThan(0);
    const calls = routerUp.received.length;
    await pool(300, 8, async (i) => {
      const res = await request(`${gw.url}/router/explain`, {
        method: 'POST',
        dispatcher: agent,
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'auto', messages: [{ role: 'user', content: `explained ${i}` }] }),
      });
      await res.body.text();
      expect(res.statusCode).toBe(200);
    });
    expect(cacheFor(gw.gateway, route)!.size).toBeLessThanOrEqual(40);
    expect(routerUp.received.length).toBe(calls);
    // The draws explain sets aside for the next live decision stay a decision's worth.
    expect(route.pendingRandom.length).toBeLessThanOrEqual(8);
  }, 120_000);
});

describe('the rate limiter keys', () => {
  // README server.rate_limit: per client key when server.api_keys is set, else per address ("a made-up Bearer
  // token buys no budget of its own"). Headers a client writes (forwarding headers, tokens) must neither make
  // keys of their own in the limiter's store nor buy budget.
  it('distinct made-up tokens and forwarding headers share one address budget', async () => {
    const good = await healthy();
    const gw = track(
      await startGateway({
        server: { rate_limit: { requests_per_minute: 5 } },
        providers: [{ name: 'good', base_url: `${good}/v1`, models: [{ name: 'm' }] }],
        routes: { r: { strategy: 'priority', targets: ['good/m'] } },
      }),
    );
    let ok = 0;
    let limited = 0;
    await pool(60, 4, async (i) => {
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `Bearer made-up-${i}`,
          'x-forwarded-for': `10.0.${i >> 8}.${i & 255}`,
          'x-real-ip': `10.1.0.${i}`,
          forwarded: `for=10.2.0.${i}`,
        },
        body: JSON.stringify({ model: 'r', messages: [{ role: 'user', content: 'hi' }] }),
      });
      await res.body.text();
      if (res.statusCode === 200) ok++;
      else if (res.statusCode === 429) limited++;
    });
    expect(ok).toBe(5);
    expect(limited).toBe(55);
  }, 60_000);
});
