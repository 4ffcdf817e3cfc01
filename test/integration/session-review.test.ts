/**
 * Rules held here, each through the gateway:
 * - Provider capacity (`providers[].max_concurrency`, README): the provider's connections are shared by its
 *   routed and passthrough requests, and every strategy but `priority` ranks an upstream whose provider has
 *   every connection busy after one with a free connection — whatever holds the connections, a passthrough
 *   request included. /router/explain ranks as the real request is served, and says why a full provider's
 *   upstream went down the list.
 * - Passthrough error bodies in a charset other than UTF-8 reach the client byte for byte (compressed ones
 *   too, once decoded), and a configured secret is scrubbed from them whatever the charset (SPEC §8).
 * - CORS (`server.cors`): the gateway's own refusals (load shedding's 503, an unknown path's 404) carry
 *   Allow-Origin for an allowed origin, so a browser page can read them.
 */
import type { ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { gzipSync } from 'node:zlib';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { dig, postChat, startGateway, type Posted, type TestGateway } from '../helpers/gateway.js';
import { answerChat, chunkFrame, sendJson, startMock, type Received } from '../helpers/mock-upstream.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
const PT_KEY = 'sk-pt-SECRET-5150deadbeef';
const APP = 'https://app.example.com';

function provider(
  name: string,
  url: string,
  opts: { max?: number; firstByteMs?: number; inputPrice?: number; apiKey?: string } = {},
): Record<string, unknown> {
  return {
    name,
    kind: 'openai',
    base_url: `${url}/v1`,
    api_key: opts.apiKey ?? `sk-${name}`,
    max_concurrency: opts.max ?? 4096,
    timeouts: { connect_ms: 1000, first_byte_ms: opts.firstByteMs ?? 3000, idle_ms: 5000, total_ms: 10_000 },
    models: [
      {
        name: 'm',
        price: { input_per_mtok: opts.inputPrice ?? 1, output_per_mtok: opts.inputPrice ?? 1 },
      },
    ],
  };
}

/** Who served an answer, how many upstreams it took and what failed first. */
function served(r: Posted): { status: number; provider?: string; attempts?: string; trail?: string } {
  return {
    status: r.status,
    provider: r.headers['x-router-provider'],
    attempts: r.headers['x-router-attempts'],
    trail: r.headers['x-router-trail'] || undefined,
  };
}

/**
 * An upstream that holds what the test says until `release()`: `/files` requests (a passthrough download),
 * and chat streams whose last user message is `hold` (first words sent at once, the end held). Anything else
 * is answered at once, naming the provider.
 */
async function holdingUpstream(name: string) {
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const mock = track(
    await startMock(async (req: Received, res: ServerResponse) => {
      if (req.path.includes('/files')) {
        await Promise.race([released, sleep(4_000)]);
        sendJson(res, 200, { object: 'list', data: [] });
        return;
      }
      const msgs = req.body.messages as { content: string }[] | undefined;
      const m = String(req.body.model);
      if (msgs?.at(-1)?.content === 'hold' && req.body.stream === true) {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame(m, { role: 'assistant', content: '' }));
        res.write(chunkFrame(m, { content: `from ${name}` }));
        await Promise.race([released, sleep(4_000)]);
        res.end(`${chunkFrame(m, {}, 'stop')}data: [DONE]\n\n`);
        return;
      }
      answerChat(res, req.body, `from ${name}`);
    }),
  );
  return { url: mock.url, received: mock.received, release: () => release() };
}

function ask(gw: TestGateway, said: string, stream = false): Promise<Posted> {
  return postChat(gw, { model: 'r', stream, messages: [{ role: 'user', content: said }] });
}

describe('a provider with every connection busy is ranked after a free one', () => {
  // p is the cheaper upstream (cost strategy ranks it first) with one connection; q is free.
  async function pAndQ(opts: { passthrough?: boolean } = {}) {
    const p = await holdingUpstream('p');
    const q = await holdingUpstream('q');
    const gw = track(
      await startGateway({
        server: opts.passthrough === true ? { passthrough: 'p' } : {},
        providers: [
          provider('p', p.url, { max: 1, firstByteMs: 800, inputPrice: 0.1 }),
          provider('q', q.url, { inputPrice: 10 }),
        ],
        routes: { r: { strategy: 'cost', targets: ['p/m', 'q/m'] } },
      }),
    );
    return { p, q, gw };
  }

  // README max_concurrency: "connections to the provider ... for its routed and passthrough requests
  // together", and "every strategy but priority ranks an upstream whose provider has every connection busy
  // after the ones with a free connection". The routing check (plan.ts busyLast) reads ProviderClient.active,
  // which only runFailover counts: a passthrough request holding the connection is invisible to it, so the
  // request queues on p for first_byte_ms and fails over as queue_timeout.
  it('a passthrough request holding the provider’s only connection: the chat request goes to the free upstream at once', async () => {
    const { p, gw } = await pAndQ({ passthrough: true });
    const download = fetch(`${gw.url}/v1/files`);
    await until('the passthrough request to hold p’s connection', () =>
      p.received.some((r) => r.path.includes('/files')),
    );
    const r = await ask(gw, 'hello');
    p.release();
    expect((await download).status).toBe(200);
    expect(served(r)).toEqual({ status: 200, provider: 'q', attempts: '1', trail: undefined });
  });

  it('a routed stream holding it: explain ranks q first and the request is served by q, in one attempt', async () => {
    const { p, gw } = await pAndQ();
    const holding = ask(gw, 'hold', true);
    await until('the stream to hold p’s connection', () => p.received.length === 1);
    const explained = await postChat(
      gw,
      { model: 'r', messages: [{ role: 'user', content: 'hello' }] },
      { path: '/router/explain' },
    );
    expect(explained.status, explained.text).toBe(200);
    expect(dig(explained.json, 'candidates', 0, 'provider')).toBe('q');
    const r = await ask(gw, 'hello');
    p.release();
    expect(served(r)).toEqual({ status: 200, provider: 'q', attempts: '1', trail: undefined });
    expect((await holding).text).toContain('[DONE]');
  });

  // SPEC §2: "Every decision has a score in [0, 1] (1 = best among this request's candidates ...) and a
  // human-readable reason carrying the raw figures". busyLast moves the best-scored candidate down the list
  // but leaves its score and reason as the strategy wrote them: explain shows rank 1 scored 0 and rank 2
  // scored 1, with nothing saying why.
  it('explain says why the best-scored upstream is ranked second: its provider’s connections are all busy', async () => {
    const { p, gw } = await pAndQ();
    const holding = ask(gw, 'hold', true);
    await until('the stream to hold p’s connection', () => p.received.length === 1);
    const explained = await postChat(
      gw,
      { model: 'r', messages: [{ role: 'user', content: 'hello' }] },
      { path: '/router/explain' },
    );
    p.release();
    await holding;
    const candidates = dig(explained.json, 'candidates') as {
      provider: string;
      score: number;
      reason: string;
    }[];
    expect(candidates.map((c) => c.provider)).toEqual(['q', 'p']);
    const [first, second] = candidates;
    const consistent =
      first!.score >= second!.score || /max_concurrency|connection|busy|full/i.test(second!.reason);
    expect(consistent, JSON.stringify(candidates)).toBe(true);
  });
});

describe('passthrough error bodies in other charsets', () => {
  /** A passthrough provider whose every answer is `status` with `headers` and `body` as given. */
  async function passthroughAnswering(status: number, headers: Record<string, string>, body: Buffer) {
    const up = track(
      await startMock((_req, res) => {
        res.writeHead(status, { ...headers, 'content-length': String(body.length) });
        res.end(body);
      }),
    );
    return track(
      await startGateway({
        server: { passthrough: 'pt' },
        providers: [provider('pt', up.url, { apiKey: PT_KEY })],
        routes: { r: { strategy: 'priority', targets: ['pt/m'] } },
      }),
    );
  }

  async function postFile(gw: TestGateway) {
    const r = await request(`${gw.url}/v1/files`, {
      method: 'POST',
      body: '{}',
      headers: { 'content-type': 'application/json', 'accept-encoding': 'gzip' },
    });
    return { status: r.statusCode, headers: r.headers, bytes: Buffer.from(await r.body.arrayBuffer()) };
  }

  it('windows-1252 with our key echoed: the key is scrubbed and the accented bytes are kept', async () => {
    const text = `Clé refusée pour ${PT_KEY} — réessayez`;
    const gw = await passthroughAnswering(
      401,
      { 'content-type': 'text/plain; charset=windows-1252' },
      Buffer.from(text, 'latin1'),
    );
    const r = await postFile(gw);
    expect(r.status).toBe(401);
    const got = r.bytes.toString('latin1');
    expect(got).not.toContain(PT_KEY);
    expect(got.startsWith('Clé refusée pour ')).toBe(true);
    expect(got.endsWith(' réessayez')).toBe(true);
  });

  // passthrough.ts sendScrubbed: "byte for byte" applies to identity bodies only (byteExact needs coding ===
  // 'identity'); a gzip one is decoded as UTF-8 (content-coding.ts decodeBuffer), its Latin-1 accents become
  // U+FFFD, and it goes out as UTF-8 under the upstream's `charset=iso-8859-1`.
  it('a gzip-compressed ISO-8859-1 body is relayed decoded, with its bytes unchanged', async () => {
    const latin1 = Buffer.from('Fichier refusé: clé invalide (café)', 'latin1');
    const gw = await passthroughAnswering(
      400,
      { 'content-type': 'text/plain; charset=iso-8859-1', 'content-encoding': 'gzip' },
      gzipSync(latin1),
    );
    const r = await postFile(gw);
    expect(r.status).toBe(400);
    expect(r.headers['content-type']).toBe('text/plain; charset=iso-8859-1');
    expect(r.headers['content-encoding']).toBeUndefined();
    expect(r.bytes.toString('hex')).toBe(latin1.toString('hex'));
  });

  // SPEC §8: "the gateway scrubs every configured secret from any upstream error body it relays". A body
  // declared UTF-16 is read as latin1 (every non-UTF-8 charset is, on the premise that it is ASCII-compatible):
  // the key's characters are two bytes apart there, the scrubber never sees it, and the client decoding the
  // body as its content-type says reads our key.
  it('a UTF-16 body that echoes our key: the client never reads the key', async () => {
    const body = JSON.stringify({
      error: { message: `Incorrect API key provided: ${PT_KEY}`, type: 'invalid_request_error' },
    });
    const gw = await passthroughAnswering(
      401,
      { 'content-type': 'application/json; charset=utf-16le' },
      Buffer.from(body, 'utf16le'),
    );
    const r = await postFile(gw);
    expect(r.status).toBe(401);
    expect(r.bytes.toString('utf16le')).not.toContain(PT_KEY);
    expect(r.bytes.toString('latin1').replaceAll('\0', '')).not.toContain(PT_KEY);
  });
});

describe('server.cors: the gateway’s own refusals are readable by an allowed page', () => {
  async function corsGateway(server: Record<string, unknown>) {
    const up = track(await startMock((req, res) => answerChat(res, req.body, 'hello')));
    return track(
      await startGateway({
        server: { api_keys: ['k'], cors: { origins: [APP] }, ...server },
        providers: [provider('up', up.url)],
        routes: { r: { strategy: 'priority', targets: ['up/m'] } },
      }),
    );
  }

  it('load shedding’s 503 carries Allow-Origin and exposes Retry-After', async () => {
    const gw = await corsGateway({
      load_shedding: { max_heap_used_bytes: 1, sample_interval_ms: 100, retry_after_s: 7 },
    });
    const chat = () =>
      postChat(gw, { model: 'r', messages: [{ role: 'user', content: 'hi' }] }, { headers: { origin: APP } });
    let r = await chat();
    for (let i = 0; i < 100 && r.status !== 503; i++) {
      await sleep(10);
      r = await chat();
    }
    expect(r.status).toBe(503);
    expect(r.headers['retry-after']).toBe('7');
    expect(r.headers['access-control-allow-origin']).toBe(APP);
    expect(r.headers['access-control-expose-headers']).toContain('retry-after');
  });

  it('an unknown /v1 path’s 404 carries Allow-Origin', async () => {
    const gw = await corsGateway({});
    const r = await postChat(gw, { x: 1 }, { path: '/v1/nothing-here', headers: { origin: APP } });
    expect(r.status).toBe(404);
    expect(r.headers['access-control-allow-origin']).toBe(APP);
  });
});
