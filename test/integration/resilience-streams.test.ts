import { APIError } from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import type { SimBehaviour } from '../../src/sim/index.js';
import { MSG, TIMEOUTS, contentOf, dataEvents, harness } from '../helpers/resilience-harness.js';

const h = harness();

/** Streams through the SDK; returns the text, the error the iteration threw (if any) and the headers. */
async function sdkStream(): Promise<{ text: string; error: unknown; headers: Headers }> {
  const { data: stream, response } = await h
    .sdk()
    .chat.completions.create({ model: 'r', messages: MSG as never, stream: true })
    .withResponse();
  let text = '';
  let error: unknown;
  try {
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
  } catch (err) {
    error = err;
  }
  return { text, error, headers: response.headers };
}

async function rawStream(): Promise<{
  status: number;
  headers: Record<string, unknown>;
  body: string;
  firstContentMs: number;
  endMs: number;
}> {
  const t0 = performance.now();
  const res = await request(`${h.current().url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'r', stream: true, messages: MSG }),
  });
  let body = '';
  let firstContentMs = -1;
  for await (const chunk of res.body) {
    body += (chunk as Buffer).toString('utf8');
    if (firstContentMs < 0 && contentOf(body) !== '') firstContentMs = performance.now() - t0;
  }
  return {
    status: res.statusCode,
    headers: res.headers,
    body,
    firstContentMs,
    endMs: performance.now() - t0,
  };
}

function activeTimeouts(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

describe('stream failures before the first content delta are failed over invisibly', () => {
  const cases: Array<[string, Partial<SimBehaviour>, string, string[]]> = [
    ['a 503', { status: 503 }, 'a/m=http_503', []],
    ['a 200 with the role chunk, then the connection closed', { dropAfterChunks: 0 }, 'a/m=socket_error', []],
    [
      'a 200 with an error event before any content',
      { errorEventAfterChunks: 0 },
      'a/m=stream_error_event',
      [],
    ],
    [
      'a 200 with the role chunk, then silence past idle_ms',
      { hangAfterHeaders: true },
      'a/m=idle_timeout',
      ['a'],
    ],
  ];
  for (const [what, fault, trail, tight] of cases) {
    it(`${what}: the SDK sees b's answer and no error`, async () => {
      const a = await h.sim('a', fault);
      const b = await h.sim('b');
      await h.gateway([a, b], { tight });
      const { text, error, headers } = await sdkStream();
      expect(error).toBeUndefined();
      expect(text).toBe('Hello from b here: this is a simulated');
      expect(headers.get('x-router-provider')).toBe('b');
      expect(headers.get('x-router-attempts')).toBe('2');
      expect(headers.get('x-router-trail')).toBe(trail);
      expect(a.requests).toHaveLength(1);
      expect(b.requests).toHaveLength(1);

      // The raw wire: one role chunk (b's), b's content, [DONE]; nothing of a's.
      a.reset();
      a.set(fault);
      const raw = await rawStream();
      expect(raw.status).toBe(200);
      expect(raw.body).not.toContain('"error"');
      expect(raw.body.endsWith('data: [DONE]\n\n')).toBe(true);
      expect(dataEvents(raw.body).filter((d) => d.includes('"role"'))).toHaveLength(1);
      expect(contentOf(raw.body)).toBe('Hello from b here: this is a simulated');
      await h.until(() => expect(a.inFlight()).toBe(0));
    });
  }

  it('a JSON answer cut mid-body fails over too', async () => {
    const a = await h.sim('a', { dropAfterChunks: 0 });
    const b = await h.sim('b');
    await h.gateway([a, b]);
    const r = await h.chat();
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(String(r.headers['x-router-trail'])).toMatch(/^a\/m=/);
  });
});

describe('stream failures after the commit end the stream with an error event and no [DONE]', () => {
  it('a drop after 3 content chunks: the SDK throws, the raw body has "error" and no [DONE]', async () => {
    const a = await h.sim('a', { dropAfterChunks: 3 });
    const b = await h.sim('b');
    await h.gateway([a, b], { tight: ['a'] });

    const { text, error, headers } = await sdkStream();
    expect(error).toBeInstanceOf(APIError);
    expect(String((error as APIError).message)).toContain('stream interrupted');
    expect(text).toBe('Hello from a ');
    expect(headers.get('x-router-provider')).toBe('a');
    expect(b.requests).toHaveLength(0); // committed: never failed over mid-answer

    const raw = await rawStream();
    expect(raw.status).toBe(200);
    expect(raw.body).toContain('"error"');
    expect(raw.body).not.toContain('[DONE]');
    const last = JSON.parse(dataEvents(raw.body).at(-1)!) as {
      error: { code: string; type: string; message: string };
    };
    expect(last.error.code).toBe('stream_interrupted');
    expect(last.error.message).toContain('a/m');
    expect(contentOf(raw.body)).toBe('Hello from a ');
    // A socket drop is seen at once, well within idle_ms.
    expect(raw.endMs - raw.firstContentMs).toBeLessThan(TIMEOUTS.idle_ms);
  });

  it('repeated cut streams leave no sockets, requests or timers behind', async () => {
    const a = await h.sim('a', { dropAfterChunks: 3 });
    const b = await h.sim('b');
    const gw = await h.gateway([a, b], { breaker: { failure_threshold: 1000 } });
    const cut = async (): Promise<void> => {
      const raw = await rawStream();
      expect(raw.body).toContain('stream_interrupted');
    };
    await cut();
    await h.until(async () => expect((await h.status()).get('a/m')?.pool.running).toBe(0));
    const baseline = activeTimeouts();
    for (let i = 0; i < 8; i++) await cut();
    await h.until(async () => {
      const up = (await h.status()).get('a/m');
      expect(up?.pool.running).toBe(0);
      expect(up?.pool.pending).toBe(0);
      expect(up?.in_flight).toBe(0);
      expect(a.inFlight()).toBe(0);
    });
    expect(activeTimeouts()).toBeLessThanOrEqual(baseline + 1);
    const metrics = await request(`${gw.url}/metrics`);
    const text = await metrics.body.text();
    expect(text).toMatch(/llm_router_stream_failures_total\{provider="a",model="m",policy="terminate"\} 9/);
    expect(text).toMatch(/llm_router_inflight_requests\{provider="a",model="m"\} 0/);
  });

  // Regression: undici's body timeout runs on 1 s-resolution timers (a tick every 499 ms, firing on the second
  // tick), so any idle_ms below a second cut a stalled stream after 0.5-1 s.
  it('an upstream that stalls after its first chunk is cut at idle_ms, not rounded up to undici timer ticks, and aborted', async () => {
    const a = await h.sim('a', { chunkDelayMs: 5000 });
    const b = await h.sim('b');
    const idleMs = 100;
    await h.gateway([a, b], { provider: { a: { timeouts: { ...TIMEOUTS, idle_ms: idleMs } } } });
    const raw = await rawStream();
    expect(raw.status).toBe(200);
    expect(contentOf(raw.body)).toBe('Hello ');
    expect(raw.body).not.toContain('[DONE]');
    const last = JSON.parse(dataEvents(raw.body).at(-1)!) as { error: { message: string } };
    expect(last.error.message).toContain('idle_timeout');
    const stalledMs = raw.endMs - raw.firstContentMs;
    expect(stalledMs).toBeGreaterThanOrEqual(idleMs - 20);
    expect(stalledMs).toBeLessThan(450);
    const aborted = await a.waitForAbort(1000);
    expect(aborted.finished).toBe(false);
    expect(b.requests).toHaveLength(0);
  });

  it('a slow reader is not cut for idleness: waiting on the client is not upstream idleness', async () => {
    // ~4 MB of frames: more than the socket buffers between us and the gateway absorb.
    const a = await h.sim('a', { completionTokens: 2000, reply: `${'y'.repeat(2000)} `.repeat(2000) });
    await h.gateway([a], { tight: ['a'], timeouts: { first_byte_ms: 2000 } });
    const res = await request(`${h.current().url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', stream: true, messages: MSG }),
      highWaterMark: 1024,
    });
    expect(res.statusCode).toBe(200);
    let body = '';
    let reads = 0;
    for await (const chunk of res.body) {
      body += (chunk as Buffer).toString('utf8');
      // Read slowly at first, long past idle_ms in total, while the gateway is back-pressured.
      if (reads++ < 2) await new Promise((r) => setTimeout(r, TIMEOUTS.idle_ms + 100));
    }
    expect(body).not.toContain('"error"');
    expect(body.endsWith('data: [DONE]\n\n')).toBe(true);
  });
});
