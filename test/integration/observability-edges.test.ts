/**
 * What /metrics and the request log say, checked against scripted upstreams (SPEC §5, README "Metrics"):
 * - every kind of attempt ending lands under its own outcome, every move to another upstream is one failover
 *   with the failed upstream's provider and outcome, every request one count under the status its client got,
 *   one request line, one warning per failed attempt that was failed over, and nothing left in flight;
 * - the time per output token is the upstream's generation pace: the time a slow client held the gateway
 *   back is not in it (nor in the overhead), and an answer that came whole (no pace to measure) adds none;
 * - histogram buckets fit LLM latencies: a non-streaming answer's TTFT is its whole generation, which takes
 *   minutes, so the TTFT buckets reach that far;
 * - the per-upstream counters alerts take `increase()` of (breaker transitions, stream failures) exist at 0
 *   from the start, as the attempt and reload counters do, so the first breaker opening is an increase.
 * Each gateway is fresh, so counts are exact.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { ServerResponse } from 'node:http';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { chunkFrame, sendJson, startMock, type Received } from '../helpers/mock-upstream.js';
import { scrape, select, value, type Sample } from '../helpers/prom-text.js';
import { slowRead } from '../helpers/resilience-harness.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hi' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 10_000 };

const REQ = 'llm_router_requests_total';
const ATT = 'llm_router_upstream_attempts_total';
const FO = 'llm_router_failovers_total';
const DUR = 'llm_router_request_duration_seconds_count';
const TTFT = 'llm_router_time_to_first_token_seconds';
const TPOT = 'llm_router_time_per_output_token_seconds';
const OVH = 'llm_router_overhead_seconds';

const requestLines = (gw: TestGateway) => gw.logs.filter((l) => l.msg === 'request');

/** Scrapes once `n` request lines are written (counts and lines go at the end of the request's turn). */
async function settle(gw: TestGateway, n: number): Promise<Sample[]> {
  await until(`${n} request lines`, () => requestLines(gw).length >= n, 3000);
  await sleep(30);
  return scrape(gw.url);
}

async function chat(
  gw: TestGateway,
  body: Record<string, unknown> = {},
): Promise<{ status: number; text: string; headers: Record<string, unknown> }> {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'r', messages: MSG, ...body }),
  });
  return { status: res.statusCode, text: await res.body.text(), headers: res.headers };
}

function completion(body: Record<string, unknown>, completionTokens = 2): Record<string, unknown> {
  return {
    id: 'chatcmpl-x',
    object: 'chat.completion',
    created: 1,
    model: String(body.model),
    choices: [{ index: 0, message: { role: 'assistant', content: 'hello' }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 5, completion_tokens: completionTokens, total_tokens: 5 + completionTokens },
  };
}

/** A served answer, JSON or a stream of role, two content chunks, finish, usage and [DONE]. */
function serve(req: Received, res: ServerResponse): void {
  if (req.body.stream !== true) {
    sendJson(res, 200, completion(req.body));
    return;
  }
  const m = req.body.model;
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(
    chunkFrame(m, { role: 'assistant', content: '' }) +
      chunkFrame(m, { content: 'hel' }) +
      chunkFrame(m, { content: 'lo' }) +
      chunkFrame(m, {}, 'stop') +
      'data: [DONE]\n\n',
  );
}

const total = (samples: Sample[], name: string, labels: Record<string, string> = {}): number =>
  select(samples, name, labels).reduce((n, s) => n + s.value, 0);

describe('one scripted session, every attempt ending: counts exact', () => {
  it('attempt outcomes, failovers, statuses, durations, TTFT/TPOT, in flight, lines and warnings', async () => {
    // Upstream `a` fails in a different way on each request; `b` always answers.
    const a = track(
      await startMock(async (req, res, n) => {
        switch (n) {
          case 0: // a 5xx
            sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } });
            return;
          case 1: // 408: fail over, as a timeout
            sendJson(res, 408, { error: { message: 'request timeout', type: 'timeout' } });
            return;
          case 2: // our key is wrong there: fail over, logged at error
            sendJson(res, 401, { error: { message: 'bad key', type: 'invalid_request_error' } });
            return;
          case 3: // a client error: relayed, no failover
            sendJson(res, 400, {
              error: { message: 'bad field', type: 'invalid_request_error', param: 'x', code: null },
            });
            return;
          case 4: // no first byte within first_byte_ms
            await sleep(1500);
            if (!res.destroyed) res.destroy();
            return;
          case 5: // a 200 stream that ends before any content: failed over like a 5xx
            res.writeHead(200, { 'content-type': 'text/event-stream' });
            res.end(chunkFrame(req.body.model, { role: 'assistant', content: '' }));
            return;
          case 6: {
            // committed, then cut: the client gets the error event, no failover
            res.writeHead(200, { 'content-type': 'text/event-stream' });
            res.write(chunkFrame(req.body.model, { role: 'assistant', content: '' }));
            res.write(chunkFrame(req.body.model, { content: 'part' }));
            await sleep(50);
            res.destroy();
            return;
          }
          default: // 429 without Retry-After
            sendJson(res, 429, { error: { message: 'slow down', type: 'rate_limit_exceeded' } });
        }
      }),
    );
    const b = track(await startMock(serve));
    const gw = track(
      await startGateway({
        providers: [
          simProvider('a', a.url, ['m'], {
            timeouts: { ...RELAXED, first_byte_ms: 300 },
          }),
          simProvider('b', b.url, ['m'], { timeouts: RELAXED }),
        ],
        routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
        routing: { max_attempts: 2 },
        circuit_breaker: { failure_threshold: 50 },
      }),
    );

    const got: number[] = [];
    got.push((await chat(gw)).status); // 0: 500 -> b
    got.push((await chat(gw)).status); // 1: 408 -> b
    got.push((await chat(gw)).status); // 2: 401 -> b
    got.push((await chat(gw)).status); // 3: 400 relayed
    got.push((await chat(gw)).status); // 4: first-byte timeout -> b
    const s5 = await chat(gw, { stream: true }); // 5: ends before content -> b
    got.push(s5.status);
    const s6 = await chat(gw, { stream: true }); // 6: cut after commit
    got.push(s6.status);
    got.push((await chat(gw)).status); // 7: 429 -> b
    expect(got).toEqual([200, 200, 200, 400, 200, 200, 200, 200]);
    expect(s5.headers['x-router-provider']).toBe('b');
    expect(s6.text).toContain('"error"');
    expect(s6.text).not.toContain('[DONE]');

    const s = await settle(gw, 8);
    const att = (p: string, outcome: string) => value(s, ATT, { provider: p, model: 'm', outcome }) ?? 0;
    expect({
      error: att('a', 'error'),
      timeout: att('a', 'timeout'),
      client_error: att('a', 'client_error'),
      rate_limited: att('a', 'rate_limited'),
      success: att('a', 'success'),
    }).toEqual({ error: 4, timeout: 2, client_error: 1, rate_limited: 1, success: 0 });
    expect(att('b', 'success')).toBe(6);
    expect(total(s, ATT, { provider: 'b' })).toBe(6);

    const fo = (reason: string) => value(s, FO, { route: 'r', from_provider: 'a', reason }) ?? 0;
    expect({ error: fo('error'), timeout: fo('timeout'), rate_limited: fo('rate_limited') }).toEqual({
      error: 3,
      timeout: 2,
      rate_limited: 1,
    });
    expect(total(s, FO)).toBe(6);

    expect(value(s, REQ, { route: 'r', provider: 'b', model: 'm', status: '200' })).toBe(6);
    expect(value(s, REQ, { route: 'r', provider: 'a', model: 'm', status: '400' })).toBe(1);
    expect(value(s, REQ, { route: 'r', provider: 'a', model: 'm', status: '200' })).toBe(1);
    expect(total(s, REQ)).toBe(8);

    expect(value(s, DUR, { route: 'r', provider: 'b', model: 'm', stream: 'false' })).toBe(5);
    expect(value(s, DUR, { route: 'r', provider: 'b', model: 'm', stream: 'true' })).toBe(1);
    expect(value(s, DUR, { route: 'r', provider: 'a', model: 'm', stream: 'true' })).toBe(1);
    expect(value(s, DUR, { route: 'r', provider: 'a', model: 'm', stream: 'false' })).toBe(1);
    expect(value(s, `${OVH}_count`, { route: 'r' })).toBe(8);
    expect(select(s, `${OVH}_sum`).every((x) => x.value >= 0)).toBe(true);

    // TTFT once per served request (the cut stream's too); TPOT once per stream that had content.
    expect(value(s, `${TTFT}_count`, { provider: 'b', model: 'm' })).toBe(6);
    expect(value(s, `${TTFT}_count`, { provider: 'a', model: 'm' })).toBe(1);
    expect(value(s, `${TPOT}_count`, { provider: 'b', model: 'm' })).toBe(1);
    expect(value(s, `${TPOT}_count`, { provider: 'a', model: 'm' })).toBe(1);

    expect(
      value(s, 'llm_router_stream_failures_total', { provider: 'a', model: 'm', policy: 'terminate' }),
    ).toBe(1);
    expect(total(s, 'llm_router_inflight_requests')).toBe(0);

    // One line per request, with the status the client got.
    const lines = requestLines(gw);
    expect(lines.map((l) => l.status)).toEqual([200, 200, 200, 400, 200, 200, 200, 200]);
    // One warning per failed attempt that was failed over, naming its request; the 401 also at error.
    const warns = gw.logs.filter(
      (l) => l.level === 40 && typeof l.reqId === 'string' && l.upstream === 'a/m',
    );
    expect(warns.map((w) => w.reqId)).toEqual([0, 1, 2, 4, 5, 7].map((i) => lines[i]!.reqId));
    const errors = gw.logs.filter((l) => l.level === 50);
    expect(errors.length).toBe(1);
    expect(JSON.stringify(errors[0])).toMatch(/401/);
  });
});

/** One 4000-character content delta: 2000 of them (~8 MB of frames) outrun every socket buffer on loopback. */
const BIG_DELTA = chunkFrame('m', { content: 'y'.repeat(4000) });
const BIG_DELTAS = 2000;

describe('time per output token is the upstream’s pace', () => {
  it('a slow-reading client’s hold is in neither the TPOT nor the overhead (but is in the request duration)', async () => {
    // A clock the test moves: the first token at 200 ms, the rest generated in 1 s; then the client stalls
    // the gateway for 10 s while the upstream has nothing more to do.
    let clock = 1_000_000;
    let written = false;
    const up = track(
      await startMock(async (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame('m', { role: 'assistant', content: '' }));
        clock += 200;
        res.write(chunkFrame('m', { content: 'x' }));
        await sleep(100);
        clock += 1000;
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
    const gw = track(
      await startGateway(
        {
          providers: [
            simProvider('a', up.url, ['m'], { timeouts: { ...RELAXED, idle_ms: 60_000, total_ms: 60_000 } }),
          ],
          routes: { r: { strategy: 'priority', targets: ['a/m'] } },
        },
        { now: () => clock },
      ),
    );
    const res = await slowRead(gw, async () => {
      await until('the upstream wrote its whole answer', () => written);
      await sleep(300); // the gateway now waits on this client's full socket
      clock += 10_000;
      await sleep(200);
    });
    expect(res.status).toBe(200);
    expect(res.body.endsWith('data: [DONE]\n\n')).toBe(true);

    const s = await settle(gw, 1);
    const pair = { provider: 'a', model: 'm' };
    expect(value(s, `${TPOT}_count`, pair)).toBe(1);
    // The upstream's pace: ~1 s over ~2000 tokens (0.5 ms a token). With the client's 10 s it would be ~5.5 ms.
    expect(value(s, `${TPOT}_sum`, pair)!).toBeLessThan(0.002);
    // The client's 10 s is the request's duration, not the gateway's overhead.
    expect(
      value(s, 'llm_router_request_duration_seconds_sum', { route: 'r', ...pair, stream: 'true' })!,
    ).toBeGreaterThan(10);
    expect(value(s, `${OVH}_sum`, { route: 'r' })!).toBeLessThan(0.5);
  });

  it('a stream whose upstream sent the whole answer as one JSON object adds no TPOT (no pace to measure)', async () => {
    // Some OpenAI-compatible servers ignore `stream` and answer one chat.completion: the gateway turns it into
    // chunks, but the generation took place before the first byte, so there is no time per token to observe.
    const up = track(
      await startMock(async (req, res) => {
        await sleep(150);
        sendJson(res, 200, completion(req.body, 40));
      }),
    );
    const gw = track(
      await startGateway({
        providers: [simProvider('a', up.url, ['m'], { timeouts: RELAXED })],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const r = await chat(gw, { stream: true });
    expect(r.status).toBe(200);
    expect(r.text).toContain('hello');
    const s = await settle(gw, 1);
    const pair = { provider: 'a', model: 'm' };
    expect(value(s, `${TTFT}_count`, pair)).toBe(1);
    // A 0 s/token observation would make this upstream look infinitely fast on a TPOT dashboard.
    const n = value(s, `${TPOT}_count`, pair) ?? 0;
    expect(n, `TPOT observed: ${value(s, `${TPOT}_sum`, pair)} s/token`).toBe(0);
  });
});

describe('histogram buckets fit LLM latencies', () => {
  it('a non-streaming answer that took 90 s has a finite TTFT bucket (its TTFT is its whole generation)', async () => {
    let clock = 5_000_000;
    const up = track(
      await startMock((req, res) => {
        clock += 90_000; // a long reasoning answer
        sendJson(res, 200, completion(req.body, 3000));
      }),
    );
    const gw = track(
      await startGateway(
        {
          providers: [simProvider('a', up.url, ['m'], { timeouts: RELAXED })],
          routes: { r: { strategy: 'priority', targets: ['a/m'] } },
        },
        { now: () => clock },
      ),
    );
    expect((await chat(gw)).status).toBe(200);
    const s = await settle(gw, 1);
    const pair = { provider: 'a', model: 'm' };
    expect(value(s, `${TTFT}_count`, pair)).toBe(1);
    expect(value(s, `${TTFT}_sum`, pair)).toBeCloseTo(90, 0);
    // The request duration histogram places it (its buckets reach 300 s); the TTFT one must too, or every
    // quantile of a model's non-streaming TTFT above its top bucket reads as that bucket.
    const finite = (name: string) =>
      select(s, `${name}_bucket`, pair)
        .filter((b) => b.labels.le !== '+Inf')
        .map((b) => ({ le: Number(b.labels.le), n: b.value }));
    const durationBuckets = select(s, 'llm_router_request_duration_seconds_bucket', { route: 'r', ...pair })
      .filter((b) => b.labels.le !== '+Inf')
      .map((b) => ({ le: Number(b.labels.le), n: b.value }));
    expect(
      durationBuckets.some((b) => b.n === 1),
      'the duration histogram places it',
    ).toBe(true);
    const ttft = finite(TTFT);
    expect(
      ttft.some((b) => b.n === 1),
      `TTFT buckets: ${ttft.map((b) => b.le).join(', ')}`,
    ).toBe(true);
  });
});

describe('series alerts take increase() of exist from the start', () => {
  it('circuit transitions and stream failures of each upstream are 0 before anything happens, then 1', async () => {
    const up = track(
      await startMock((_req, res) =>
        sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } }),
      ),
    );
    const gw = track(
      await startGateway({
        providers: [simProvider('a', up.url, ['m'], { timeouts: RELAXED })],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
        circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
      }),
    );
    const pair = { provider: 'a', model: 'm' };
    const before = await scrape(gw.url);
    // As the attempt counters and config_reloads_total are (gateway.ts primeSeries, metrics.ts).
    expect(value(before, ATT, { ...pair, outcome: 'error' })).toBe(0);
    expect(value(before, 'llm_router_config_reloads_total', { result: 'failure' })).toBe(0);
    const primed = {
      open: value(before, 'llm_router_circuit_transitions_total', { ...pair, to: 'open' }),
      half_open: value(before, 'llm_router_circuit_transitions_total', { ...pair, to: 'half_open' }),
      closed: value(before, 'llm_router_circuit_transitions_total', { ...pair, to: 'closed' }),
      stream_failures: value(before, 'llm_router_stream_failures_total', { ...pair, policy: 'terminate' }),
    };
    expect(primed).toEqual({ open: 0, half_open: 0, closed: 0, stream_failures: 0 });

    expect((await chat(gw)).status).toBe(502);
    const after = await settle(gw, 1);
    expect(value(after, 'llm_router_circuit_transitions_total', { ...pair, to: 'open' })).toBe(1);
    expect(value(after, 'llm_router_circuit_state', pair)).toBe(2);
  });
});
