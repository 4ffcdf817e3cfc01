/**
 * The streaming relay's contract at its edges (SPEC §2 "Failover" for streams, §8 slow clients and upstream
 * bounds), against hand-written upstreams that write bytes exactly as each test says:
 * - time the gateway spends waiting on a slow client is not the upstream's: it neither trips the upstream's
 *   breaker through `total_ms` nor dilutes the tokens/s the latency strategy routes by;
 * - `idle_ms` is the bound between chunks: an upstream that sends its headers at once and its first chunk
 *   within `first_byte_ms` is not cut for idleness;
 * - a stream that has ended (`[DONE]`) does not keep its provider's connection from the next request;
 * - SSE bytes split anywhere (inside a UTF-8 character, between CR and LF, inside `data:` or `[DONE]`), and a
 *   single event larger than any socket read, reach the client intact, with one `[DONE]`.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { chunkFrame, startMock } from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';
import { until } from '../helpers/wait.js';
import { contentOf, dataEvents, slowRead, upstreamAt } from '../helpers/resilience-harness.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hi' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 10_000 };

/** One 4000-character content delta: 2000 of them (~8 MB of frames) outrun every socket buffer on loopback. */
const BIG_DELTA = chunkFrame('m', { content: 'y'.repeat(4000) });
const BIG_DELTAS = 2000;

/** A gateway with one priority route `r` over the given providers (each serving model `m`). */
async function gatewayOf(
  providers: Record<string, unknown>[],
  extra: Record<string, unknown> = {},
  opts: { now?: () => number } = {},
): Promise<TestGateway> {
  const targets = providers.map((p) => `${String(p.name)}/m`);
  return track(
    await startGateway(
      { providers, routes: { r: { strategy: 'priority', targets } }, ...extra },
      opts.now ? { now: opts.now } : {},
    ),
  );
}

describe('a slow client is not the upstream’s fault (SPEC §8 back-pressure)', () => {
  it('a client that reads an answer slower than total_ms does not trip the upstream’s breaker', async () => {
    // The upstream writes its whole answer at once; only the client is slow.
    const up = track(
      await startMock((_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame('m', { role: 'assistant', content: '' }));
        for (let i = 0; i < BIG_DELTAS; i++) res.write(BIG_DELTA);
        res.write(chunkFrame('m', {}, 'stop'));
        res.end('data: [DONE]\n\n');
      }),
    );
    const gw = await gatewayOf(
      [simProvider('a', up.url, ['m'], { timeouts: { ...RELAXED, total_ms: 600 } })],
      { circuit_breaker: { failure_threshold: 1, open_ms: 30_000 } },
    );
    const slow = await slowRead(gw, () => sleep(1200));
    expect(slow.status).toBe(200);

    const a = await upstreamAt(gw.url, 'a/m');
    expect(a.breaker.state, JSON.stringify(a.breaker)).toBe('closed');
    expect((a.stats.failuresByKind as Record<string, number>).timeout).toBe(0);
    const samples = await scrape(gw.url);
    const timeouts =
      value(samples, 'llm_router_upstream_attempts_total', {
        provider: 'a',
        model: 'm',
        outcome: 'timeout',
      }) ?? 0;
    expect(timeouts).toBe(0);
    // And the next client, reading at its own pace, is served by the same (healthy) upstream.
    const next = await postChat(gw, { model: 'r', stream: true, messages: MSG });
    expect(next.status, next.text.slice(0, 300)).toBe(200);
    expect(next.text.endsWith('data: [DONE]\n\n')).toBe(true);
  });

  it('the tokens/s routing learns is the upstream’s pace, not diluted by the time a slow client took', async () => {
    // A clock the test moves: the upstream "generates" for 1 s, the client then stalls the gateway for 10 s.
    let clock = 1_000_000;
    let written = false;
    const up = track(
      await startMock(async (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame('m', { role: 'assistant', content: '' }));
        clock += 200; // time to first token
        res.write(chunkFrame('m', { content: 'x' }));
        await sleep(100);
        clock += 1000; // the whole answer's generation, 2001 tokens: ~2000 tokens/s
        for (let i = 0; i < BIG_DELTAS; i++) res.write(BIG_DELTA);
        res.write(chunkFrame('m', {}, 'stop'));
        const usage = { prompt_tokens: 5, completion_tokens: BIG_DELTAS + 1, total_tokens: BIG_DELTAS + 6 };
        res.write(
          `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [], usage })}\n\n`,
        );
        res.end('data: [DONE]\n\n');
        written = true;
      }),
    );
    const gw = await gatewayOf(
      [simProvider('a', up.url, ['m'], { timeouts: { ...RELAXED, idle_ms: 60_000, total_ms: 60_000 } })],
      {},
      { now: () => clock },
    );
    const slow = await slowRead(gw, async () => {
      await until('the upstream wrote its whole answer', () => written);
      await sleep(300); // the gateway now waits on this client's full socket
      clock += 10_000;
      await sleep(200);
    });
    expect(slow.status).toBe(200);
    expect(slow.body.endsWith('data: [DONE]\n\n')).toBe(true);

    const stats = (await upstreamAt(gw.url, 'a/m')).stats;
    // Counting the client's 10 s would make it ~180 tokens/s, and the latency strategy would shun a fast upstream.
    expect(stats.tokensPerSec, JSON.stringify(stats)).toBeGreaterThan(1000);
  });
});

describe('the bounds of an upstream stream (README: idle_ms is between chunks)', () => {
  it('headers sent at once, first chunk after idle_ms but within first_byte_ms: served, not cut for idleness', async () => {
    // vLLM and other Starlette servers send the response head as soon as the request is accepted; the first
    // chunk comes after queueing and prefill, which first_byte_ms is there to bound.
    const up = track(
      await startMock(async (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.flushHeaders();
        await sleep(700);
        res.write(chunkFrame('m', { role: 'assistant', content: 'hello' }));
        res.write(chunkFrame('m', {}, 'stop'));
        res.end('data: [DONE]\n\n');
      }),
    );
    const gw = await gatewayOf([
      simProvider('a', up.url, ['m'], {
        timeouts: { connect_ms: 1000, first_byte_ms: 3000, idle_ms: 300, total_ms: 5000 },
      }),
    ]);
    const r = await postChat(gw, { model: 'r', stream: true, messages: MSG });
    expect(r.status, r.text.slice(0, 300)).toBe(200);
    expect(contentOf(r.text)).toBe('hello');
    expect(r.text.endsWith('data: [DONE]\n\n')).toBe(true);
  });

  it('a stream ended by [DONE] on a connection the upstream keeps open does not hold the only connection', async () => {
    // max_concurrency 1: a local single-slot server. The first answer is over at its [DONE]; the next request
    // must not wait on (and time out behind) a connection that carries nothing more.
    const up = track(
      await startMock((_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame('m', { role: 'assistant', content: 'hello' }));
        res.write(chunkFrame('m', {}, 'stop'));
        res.write('data: [DONE]\n\n'); // and the response is never ended
      }),
    );
    const gw = await gatewayOf([
      simProvider('a', up.url, ['m'], {
        max_concurrency: 1,
        timeouts: { connect_ms: 1000, first_byte_ms: 500, idle_ms: 3000, total_ms: 5000 },
      }),
    ]);
    const first = await postChat(gw, { model: 'r', stream: true, messages: MSG });
    expect(first.status).toBe(200);
    expect(first.text.endsWith('data: [DONE]\n\n')).toBe(true);
    const second = await postChat(gw, { model: 'r', stream: true, messages: MSG });
    expect(second.status, second.text.slice(0, 300)).toBe(200);
    expect(contentOf(second.text)).toBe('hello');
  });
});

describe('bytes split anywhere reach the client intact', () => {
  it('a BOM, `data:`, CR|LF, multi-byte UTF-8 and [DONE] each cut across TCP writes: one clean answer', async () => {
    const text = 'héllo 👋 世界';
    const frame = (delta: Record<string, unknown>, finish: string | null = null): Buffer =>
      Buffer.from(chunkFrame('m', delta, finish).replaceAll('\n', '\r\n'));
    const bytes = Buffer.concat([
      Buffer.from([0xef, 0xbb, 0xbf]),
      frame({ role: 'assistant', content: '' }),
      frame({ content: text }),
      frame({}, 'stop'),
      Buffer.from('data: [DONE]\r\n\r\n'),
    ]);
    // Cut points: inside the BOM, inside "data:", inside each multi-byte character, between every CR and LF.
    const cuts = new Set<number>([1, 5]);
    const at = (needle: Buffer | string, from = 0): number => bytes.indexOf(needle, from);
    for (const ch of ['é', '👋', '世', '界']) {
      const i = at(Buffer.from(ch));
      for (let k = 1; k < Buffer.byteLength(ch); k++) cuts.add(i + k);
    }
    for (let i = at('\r\n'); i >= 0; i = at('\r\n', i + 1)) cuts.add(i + 1);
    const done = at('[DONE]');
    cuts.add(done + 3);
    const pieces: Buffer[] = [];
    let last = 0;
    for (const c of [...cuts].sort((x, y) => x - y)) {
      pieces.push(bytes.subarray(last, c));
      last = c;
    }
    pieces.push(bytes.subarray(last));
    const up = track(
      await startMock(async (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        for (const p of pieces) {
          res.write(p);
          await sleep(3);
        }
        res.end();
      }),
    );
    const gw = await gatewayOf([simProvider('a', up.url, ['m'], { timeouts: RELAXED })]);
    const r = await postChat(gw, { model: 'r', stream: true, messages: MSG });
    expect(r.status).toBe(200);
    expect(r.text.startsWith('data: ')).toBe(true);
    expect(contentOf(r.text)).toBe(text);
    expect(r.text).not.toContain('\uFFFD');
    expect(r.text).not.toContain('\r');
    const events = dataEvents(r.text);
    expect(events.filter((e) => e === '[DONE]')).toHaveLength(1);
    expect(events.at(-1)).toBe('[DONE]');
  });

  it('one 1 MiB content delta (far past a socket read) is relayed as one parsable event', async () => {
    const huge = 'z'.repeat(1024 * 1024);
    const up = track(
      await startMock((_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame('m', { role: 'assistant', content: '' }));
        res.write(chunkFrame('m', { content: huge }));
        res.write(chunkFrame('m', {}, 'stop'));
        res.end('data: [DONE]\n\n');
      }),
    );
    const gw = await gatewayOf([simProvider('a', up.url, ['m'], { timeouts: RELAXED })]);
    const r = await postChat(gw, { model: 'r', stream: true, messages: MSG });
    expect(r.status).toBe(200);
    expect(contentOf(r.text)).toBe(huge);
    expect(dataEvents(r.text).at(-1)).toBe('[DONE]');
  });
});
