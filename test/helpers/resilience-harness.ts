import OpenAI from 'openai';
import { request } from 'undici';
import { beforeAll, expect } from 'vitest';
import { startSimulator, type SimOptions, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from './cleanup.js';
import { simProvider, startGateway, type TestGateway } from './gateway.js';
import { retryUntil } from './wait.js';

/** Small bounds, for the upstreams a test makes hang, so every fault resolves in well under a second. */
export const TIMEOUTS = { connect_ms: 500, first_byte_ms: 300, idle_ms: 300, total_ms: 5000 };
/**
 * For the healthy upstreams: other suites and benchmarks share this machine's two cores, and a gateway, its
 * simulators and its client all run on one thread here, so a healthy answer can take longer than 300 ms.
 */
export const RELAXED = { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 2000, total_ms: 5000 };
export const BREAKER = {
  failure_threshold: 2,
  open_ms: 300,
  max_open_ms: 2000,
  half_open_probes: 1,
  success_threshold: 2,
};
export const MSG = [{ role: 'user', content: 'hi' }];

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: { error?: { message: string; type: string; param: unknown; code: unknown } } & Record<
    string,
    unknown
  >;
  ms: number;
}

export interface BreakerView {
  state: 'closed' | 'open' | 'half_open';
  consecutive_failures: number;
  consecutive_successes: number;
  trip_cause: string | null;
  open_ms: number;
  ms_until_half_open: number;
  probes_in_flight: number;
  opens: number;
}

export interface UpstreamView {
  id: string;
  breaker: BreakerView;
  in_flight: number;
  pool: { connected: number; free: number; pending: number; running: number; size: number };
  stats: Record<string, unknown>;
  quota?: {
    rpm: number | null;
    tpm: number | null;
    requests_last_minute: number;
    tokens_last_minute: number;
  };
}

/** The gateway's `/router/status` upstreams, by id. */
export async function routerStatus(baseUrl: string): Promise<Map<string, UpstreamView>> {
  const res = await request(`${baseUrl}/router/status`);
  const body = (await res.body.json()) as { upstreams: UpstreamView[] };
  return new Map(body.upstreams.map((u) => [u.id, u]));
}

/** One upstream of `/router/status`; throws when the gateway has no such upstream. */
export async function upstreamAt(baseUrl: string, id: string): Promise<UpstreamView> {
  const up = (await routerStatus(baseUrl)).get(id);
  if (!up) throw new Error(`no upstream ${id} in /router/status`);
  return up;
}

/** One upstream's per-minute budget window (rpm, tpm) as `/router/status` shows it: NaN when it has no limit. */
export async function quotaUsed(baseUrl: string, id: string): Promise<{ requests: number; tokens: number }> {
  const q = (await upstreamAt(baseUrl, id)).quota;
  return { requests: Number(q?.requests_last_minute), tokens: Number(q?.tokens_last_minute) };
}

/** One upstream's breaker, as `/router/status` shows it. */
export async function breakerAt(baseUrl: string, id: string): Promise<BreakerView> {
  return (await upstreamAt(baseUrl, id)).breaker;
}

export interface GatewayOptions {
  strategy?: string;
  routing?: Record<string, unknown>;
  breaker?: Record<string, unknown>;
  /** Overrides for every provider's timeouts. */
  timeouts?: Record<string, unknown>;
  /** Providers that get the small TIMEOUTS; the others get RELAXED. */
  tight?: string[];
  /** Extra provider fields by sim name (e.g. api_key). */
  provider?: Record<string, Record<string, unknown>>;
  /** The gateway's clock (ms). */
  now?: () => number;
}

/**
 * Per-file harness: simulators named a, b, c... each serving model `m`, one route `r` over them in that
 * order, a gateway with small timeouts, and everything closed in afterEach.
 */
export function harness() {
  const track = closeAfterEach();
  let gw: TestGateway | undefined;

  // The first request of a process compiles undici's HTTP parser and JITs the gateway and the simulator,
  // all on this one thread: a cold first byte can take longer than the 300 ms bound under test.
  beforeAll(async () => {
    const s = await startSimulator({ name: 'warm' });
    const g = await startGateway({
      providers: [simProvider('warm', s.url, ['m'])],
      routes: { r: { targets: ['warm/m'] } },
    });
    try {
      for (const stream of [false, true]) {
        const res = await request(`${g.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'r', messages: MSG, stream }),
        });
        await res.body.text();
      }
    } finally {
      await g.close();
      await s.close();
    }
  });

  async function sim(name: string, opts: Partial<SimOptions> = {}): Promise<Simulator> {
    return track(await startSimulator({ name, ...opts }));
  }

  /** A URL where nothing listens: a simulator started, noted and closed. */
  async function closedPortUrl(): Promise<string> {
    const s = await startSimulator({ name: 'gone' });
    const url = s.url;
    await s.close();
    return url;
  }

  async function gateway(
    list: Array<Simulator | { name: string; url: string }>,
    o: GatewayOptions = {},
  ): Promise<TestGateway> {
    const upstreams = list.map((u) => ('options' in u ? { name: u.options.name, url: u.url } : u));
    gw = track(
      await startGateway(
        {
          providers: upstreams.map((u) =>
            simProvider(u.name, u.url, ['m'], {
              timeouts: { ...(o.tight?.includes(u.name) ? TIMEOUTS : RELAXED), ...o.timeouts },
              ...o.provider?.[u.name],
            }),
          ),
          routes: { r: { strategy: o.strategy ?? 'priority', targets: upstreams.map((u) => `${u.name}/m`) } },
          routing: { max_attempts: 3, total_timeout_ms: 5000, ...o.routing },
          circuit_breaker: { ...BREAKER, ...o.breaker },
        },
        { now: o.now },
      ),
    );
    return gw;
  }

  function current(): TestGateway {
    if (!gw) throw new Error('no gateway started');
    return gw;
  }

  async function chat(
    body: Record<string, unknown> = {},
    headers: Record<string, string> = {},
  ): Promise<Reply> {
    const t0 = performance.now();
    const res = await request(`${current().url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ model: 'r', messages: MSG, ...body }),
    });
    const text = await res.body.text();
    let json: Reply['json'] = {};
    try {
      json = JSON.parse(text) as Reply['json'];
    } catch {
      /* SSE or empty */
    }
    return { status: res.statusCode, headers: res.headers, text, json, ms: performance.now() - t0 };
  }

  async function status(): Promise<Map<string, UpstreamView>> {
    return routerStatus(current().url);
  }

  async function breaker(id: string): Promise<BreakerView> {
    return breakerAt(current().url, id);
  }

  /** Polls until `check` passes (it throws while not yet), bounded. */
  function until<T>(check: () => Promise<T> | T, timeoutMs = 3000): Promise<T> {
    return retryUntil(check, timeoutMs, 10);
  }

  /** One sample of /metrics, e.g. metric('llm_router_circuit_state{provider="a",model="m"}'). */
  async function metric(series: string): Promise<number | undefined> {
    const res = await request(`${current().url}/metrics`);
    const text = await res.body.text();
    for (const line of text.split('\n')) {
      if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
    }
    return undefined;
  }

  function sdk(): OpenAI {
    return new OpenAI({ baseURL: `${current().url}/v1`, apiKey: 'client-key', maxRetries: 0 });
  }

  return { sim, closedPortUrl, gateway, chat, status, breaker, until, metric, sdk, current };
}

/** An OpenAI error body, with the fields every error must carry. */
export function expectOpenAIError(r: Reply, status: number, code?: string): void {
  expect(r.status, r.text).toBe(status);
  expect(String(r.headers['content-type'])).toContain('application/json');
  const e = r.json.error;
  expect(e, r.text).toBeDefined();
  expect(typeof e?.message).toBe('string');
  expect(typeof e?.type).toBe('string');
  expect(e).toHaveProperty('param');
  expect(e).toHaveProperty('code');
  if (code !== undefined) expect(e?.code).toBe(code);
}

/** SSE `data:` payloads of a raw body. */
export function dataEvents(body: string): string[] {
  return body
    .split('\n')
    .filter((l) => l.startsWith('data: '))
    .map((l) => l.slice(6));
}

export function contentOf(sseBody: string): string {
  let text = '';
  for (const d of dataEvents(sseBody)) {
    if (d === '[DONE]') continue;
    const j = JSON.parse(d) as { choices?: Array<{ delta?: { content?: string } }> };
    text += j.choices?.[0]?.delta?.content ?? '';
  }
  return text;
}

/**
 * A streaming request read by a slow client: the first read at once, then `pause()` (awaited) before the
 * rest is read; undici's small highWaterMark lets the gateway's writes back up into its socket.
 */
export async function slowRead(
  gw: TestGateway,
  pause: () => Promise<void>,
): Promise<{ status: number; body: string }> {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'r', stream: true, messages: MSG }),
    highWaterMark: 1024,
  });
  let body = '';
  let reads = 0;
  for await (const chunk of res.body) {
    body += (chunk as Buffer).toString('utf8');
    if (reads++ === 0) await pause();
  }
  return { status: res.statusCode, body };
}
