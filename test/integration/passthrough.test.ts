/**
 * The `/v1/*` passthrough against real upstreams on loopback: it is bounded by the passthrough provider's
 * timeouts, answers OpenAI-shaped errors when the upstream fails, and rotates its key on reload.
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { request } from 'undici';
import { describe, expect, it, vi } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';

const track = closeAfterEach();
const PT_KEY = 'sk-pt-SECRET-4242';
const TIMEOUTS = { connect_ms: 500, first_byte_ms: 1000, idle_ms: 1000, total_ms: 2000 };
/** Generous: a bound must fire around its time, and these tests must not flake on a loaded machine. */
const SLACK_MS = 2000;

interface Seen {
  readonly method: string | undefined;
  readonly url: string | undefined;
  readonly headers: IncomingHttpHeaders;
}

interface Upstream {
  readonly url: string;
  readonly requests: Seen[];
  /** Open connections to this upstream. */
  readonly sockets: Set<Socket>;
}

/** Answers `{ who, path }` as JSON, after reading the whole request body. */
function echo(who: string) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ who, path: req.url }));
    });
  };
}

async function upstream(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<Upstream> {
  const requests: Seen[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    requests.push({ method: req.method, url: req.url, headers: req.headers });
    handler(req, res);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  track(closeableServer(server));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests, sockets };
}

function configOf(baseUrl: string | undefined, opts: { key?: string; passthrough?: boolean } = {}) {
  const providers = [
    {
      name: 'pt',
      base_url: baseUrl ?? 'http://127.0.0.1:9/v1',
      api_key: opts.key ?? PT_KEY,
      timeouts: TIMEOUTS,
      models: [{ name: 'm' }],
    },
  ];
  return {
    server: opts.passthrough === false ? {} : { passthrough: 'pt' },
    providers,
    routes: { r: { targets: ['pt/m'] } },
  };
}

async function gateway(config: Record<string, unknown>): Promise<TestGateway> {
  return track(await startGateway(config));
}

function reload(gw: TestGateway, config: Record<string, unknown>): void {
  gw.gateway.reload(parseConfigText(JSON.stringify(config), {}));
}

async function get(gw: TestGateway, path: string) {
  const started = performance.now();
  const res = await request(`${gw.url}${path}`, { headers: { authorization: 'Bearer client-key' } });
  const text = await res.body.text();
  return { status: res.statusCode, text, ms: performance.now() - started };
}

/** A GET with its path sent exactly as written (an HTTP client would resolve dot segments first). */
async function rawGet(gw: TestGateway, path: string): Promise<{ status: number; text: string }> {
  const { port } = new URL(gw.url);
  const raw = await new Promise<string>((resolve, reject) => {
    const s = connect(Number(port), '127.0.0.1', () =>
      s.end(`GET ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n`),
    );
    let data = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => (data += d));
    s.on('end', () => resolve(data));
    s.on('error', reject);
  });
  const [head = '', body = ''] = raw.split('\r\n\r\n', 2);
  return { status: Number(head.split(' ')[1]), text: body };
}

function openAIError(text: string): { message: string; type: string; param: unknown; code: unknown } {
  const body = JSON.parse(text) as {
    error: { message: string; type: string; param: unknown; code: unknown };
  };
  expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  return body.error;
}

describe('passthrough timeouts (regression: the passthrough ignored the provider timeouts)', () => {
  it('an upstream that never answers gets a 504 timeout, within about total_ms', async () => {
    const up = await upstream(() => undefined); // reads the request, never answers
    const gw = await gateway(configOf(`${up.url}/v1`));
    const r = await get(gw, '/v1/files');
    expect(r.status).toBe(504);
    const err = openAIError(r.text);
    expect(err.type).toBe('timeout');
    expect(err.code).toBe('timeout');
    expect(err.message).not.toContain(PT_KEY);
    expect(r.ms).toBeLessThan(TIMEOUTS.total_ms + SLACK_MS);
    expect(up.requests).toHaveLength(1);
  });

  it('an upstream that sends its headers and then nothing gets a 504 timeout after idle_ms', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.flushHeaders();
    });
    const gw = await gateway(configOf(`${up.url}/v1`));
    const r = await get(gw, '/v1/files/file-1/content');
    expect(r.status).toBe(504);
    expect(openAIError(r.text).type).toBe('timeout');
    expect(r.ms).toBeLessThan(TIMEOUTS.total_ms + SLACK_MS);
  });

  it('a trickling upstream (a byte every 300 ms, never idle) is cut at total_ms', async () => {
    let upstreamClosed = false;
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('.');
      const iv = setInterval(() => res.write('.'), 300);
      res.on('close', () => {
        clearInterval(iv);
        upstreamClosed = true;
      });
    });
    const gw = await gateway(configOf(`${up.url}/v1`));
    const started = performance.now();
    const res = await request(`${gw.url}/v1/files/file-1/content`);
    expect(res.statusCode).toBe(200); // the answer had started: it is cut, not replaced
    await expect(res.body.text()).rejects.toThrow();
    expect(performance.now() - started).toBeLessThan(TIMEOUTS.total_ms + SLACK_MS);
    await vi.waitFor(() => expect(upstreamClosed).toBe(true)); // and the upstream request is aborted
  });
});

describe('passthrough and a client that goes away', () => {
  it('gets its upstream request aborted at once', async () => {
    let upstreamClosed = false;
    const up = await upstream((_req, res) => res.on('close', () => (upstreamClosed = true)));
    const gw = await gateway(configOf(`${up.url}/v1`));
    const ac = new AbortController();
    const pending = request(`${gw.url}/v1/files`, { signal: ac.signal }).catch(() => undefined);
    await vi.waitFor(() => expect(up.requests).toHaveLength(1));
    ac.abort();
    await pending;
    // Well before first_byte_ms (1 s), which bounded it before.
    await vi.waitFor(() => expect(upstreamClosed).toBe(true), { timeout: TIMEOUTS.first_byte_ms / 2 });
  });
});

describe('passthrough upstream failures (regression: they fell through to a 500 internal)', () => {
  it('an unreachable upstream gets a 502 upstream_error, OpenAI-shaped, with no secret in it', async () => {
    const gw = await gateway(configOf('http://127.0.0.1:1/v1'));
    for (const path of ['/v1/files', '/v1/audio/speech']) {
      const res = await request(`${gw.url}${path}`, {
        method: path === '/v1/files' ? 'GET' : 'POST',
        headers: { 'content-type': 'application/json' },
        ...(path === '/v1/files' ? {} : { body: '{"input":"hi"}' }),
      });
      const text = await res.body.text();
      expect(res.statusCode, path).toBe(502);
      const err = openAIError(text);
      expect(err.type).toBe('upstream_error');
      expect(err.code).toBe('upstream_error');
      expect(text).not.toContain(PT_KEY);
    }
    expect(gw.rawLogs()).not.toContain(PT_KEY);
  });

  it('an upstream that resets the connection gets a 502 upstream_error', async () => {
    const up = await upstream((req) => req.socket.destroy());
    const gw = await gateway(configOf(`${up.url}/v1`));
    const r = await get(gw, '/v1/files');
    expect(r.status).toBe(502);
    expect(openAIError(r.text).type).toBe('upstream_error');
  });
});

describe('passthrough and config reload', () => {
  it('a reload rotates the key sent upstream; server.passthrough itself waits for a restart, and says so', async () => {
    const a = await upstream(echo('a'));
    const b = await upstream(echo('b'));
    const gw = await gateway(configOf(`${a.url}/v1`));
    expect((await get(gw, '/v1/files')).status).toBe(200);
    reload(gw, configOf(`${a.url}/v1`, { key: 'sk-pt-rotated' }));
    expect((await get(gw, '/v1/files')).status).toBe(200);
    expect(a.requests.map((r) => r.headers.authorization)).toEqual([
      `Bearer ${PT_KEY}`,
      'Bearer sk-pt-rotated',
    ]);
    reload(gw, configOf(`${b.url}/v1`));
    expect(gw.rawLogs()).toContain('providers.pt.base_url (passthrough)');
    expect(gw.rawLogs()).not.toContain(b.url); // names only: a base_url may carry credentials
  });
});

describe('passthrough paths and answers', () => {
  it('maps an encoded /v1 prefix, refuses a path that climbs out of base_url, relays redirects unfollowed', async () => {
    const up = await upstream((req, res) => {
      if (req.url === '/api/v1/moved') {
        res.writeHead(302, { location: '/api/v1/files' });
        res.end();
        return;
      }
      echo('up')(req, res);
    });
    const gw = await gateway(configOf(`${up.url}/api/v1`));
    const encoded = await get(gw, '/%761/files?after=x%20y');
    expect(encoded.status).toBe(200);
    expect(JSON.parse(encoded.text)).toEqual({ who: 'up', path: '/api/v1/files?after=x%20y' });

    for (const path of ['/v1/files/%2e%2e/%2E%2E/admin', '/v1/a/..%5c..%5cadmin']) {
      const r = await rawGet(gw, path);
      expect(r.status, path).toBe(400);
      expect(openAIError(r.text).type, path).toBe('invalid_request_error');
    }
    expect(up.requests).toHaveLength(1);

    const moved = await request(`${gw.url}/v1/moved`);
    expect(moved.statusCode).toBe(302);
    expect(moved.headers.location).toBe('/v1/files'); // mapped back onto the gateway's own prefix
    await moved.body.dump();
    expect(up.requests.map((r) => r.url)).toEqual(['/api/v1/files?after=x%20y', '/api/v1/moved']);
  });
});
