/**
 * Header hygiene: which headers cross the gateway, in each direction (SPEC §4, §8; README "HTTP surface",
 * `providers[].headers`). Routed chat and embeddings, the Anthropic translation, the passthrough, and
 * hostile header values from clients.
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { parseConfigText } from '../../src/config/load.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';

const track = closeAfterEach();

const UP_KEY = 'sk-up-hygiene-SECRET-90817';
const CLIENT_KEY = 'sk-client-hygiene-55501';
const RELAXED = { connect_ms: 2000, first_byte_ms: 8000, idle_ms: 8000, total_ms: 15000 };

interface Seen {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly rawHeaders: string[];
  readonly body: string;
}

type Handler = (seen: Seen, res: ServerResponse) => void;

async function recorder(handler: Handler): Promise<{ url: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      const s: Seen = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        body: Buffer.concat(parts).toString('utf8'),
      };
      seen.push(s);
      try {
        handler(s, res);
      } catch {
        res.destroy();
      }
    });
  });
  track(closeableServer(server));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

/** Lower-cased header names as they came on the wire, with how many times each came. */
function nameCounts(raw: readonly string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (let i = 0; i < raw.length; i += 2) {
    const n = raw[i]!.toLowerCase();
    m.set(n, (m.get(n) ?? 0) + 1);
  }
  return m;
}

function chatAnswer(model: string): string {
  return JSON.stringify({
    id: 'chatcmpl-up',
    object: 'chat.completion',
    created: 1,
    model,
    choices: [{ index: 0, message: { role: 'assistant', content: 'hello there' }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
  });
}

function answerOpenAI(seen: Seen, res: ServerResponse, extra: Record<string, string | string[]> = {}): void {
  const body = JSON.parse(seen.body || '{}') as { model?: string; stream?: boolean };
  if (body.stream === true) {
    res.writeHead(200, { 'content-type': 'text/event-stream', ...extra });
    const frame = (delta: object, finish: string | null): string =>
      `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: body.model, choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
    res.end(
      `${frame({ role: 'assistant', content: '' }, null)}${frame({ content: 'hello there' }, null)}${frame({}, 'stop')}data: [DONE]\n\n`,
    );
    return;
  }
  const text = chatAnswer(String(body.model));
  res.writeHead(200, {
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(text)),
    ...extra,
  });
  res.end(text);
}

function openaiProvider(url: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name: 'up',
    kind: 'openai',
    base_url: `${url}/v1`,
    api_key: UP_KEY,
    timeouts: RELAXED,
    models: [{ name: 'm' }, { name: 'emb', capabilities: ['embeddings'] }],
    ...extra,
  };
}

async function gatewayOn(
  providers: Record<string, unknown>[],
  server: Record<string, unknown> = {},
): Promise<TestGateway> {
  const first = String(providers[0]!.name);
  return track(
    await startGateway({
      server: { api_keys: [CLIENT_KEY], ...server },
      providers,
      routes: {
        r: { strategy: 'priority', targets: [`${first}/m`] },
        ...(providers[0]!.kind === 'anthropic'
          ? {}
          : { e: { strategy: 'priority', targets: [`${first}/emb`] } }),
      },
    }),
  );
}

async function post(
  gw: TestGateway,
  path: string,
  body: unknown,
  headers: Record<string, string | string[]> = {},
): Promise<{ status: number; headers: IncomingHttpHeaders; text: string }> {
  const res = await request(`${gw.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${CLIENT_KEY}`, ...headers },
    body: JSON.stringify(body),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers as IncomingHttpHeaders, text };
}

/** One raw HTTP/1.1 exchange (Connection: close), read to EOF. */
function rawExchange(gw: TestGateway, head: string, body = ''): Promise<string> {
  const { port } = new URL(gw.url);
  return new Promise((resolve, reject) => {
    const sock = connect(Number(port), '127.0.0.1');
    const parts: Buffer[] = [];
    sock.on('data', (d: Buffer) => parts.push(d));
    sock.on('end', () => resolve(Buffer.concat(parts).toString('latin1')));
    sock.on('error', reject);
    sock.setTimeout(15000, () => {
      sock.destroy();
      resolve(Buffer.concat(parts).toString('latin1'));
    });
    sock.write(Buffer.concat([Buffer.from(head, 'latin1'), Buffer.from(body, 'utf8')]));
  });
}

const CHAT = { model: 'r', messages: [{ role: 'user', content: 'hi' }] };

function anthropicAnswer(res: ServerResponse, extra: Record<string, string | string[]> = {}): void {
  const text = JSON.stringify({
    id: 'msg_1',
    type: 'message',
    role: 'assistant',
    model: 'claude-x',
    content: [{ type: 'text', text: 'hello there' }],
    stop_reason: 'end_turn',
    stop_sequence: null,
    usage: { input_tokens: 5, output_tokens: 2 },
  });
  res.writeHead(200, {
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(text)),
    ...extra,
  });
  res.end(text);
}

/** What a client may send that is its own business, or its own credential: none of it is ours to forward. */
const CLIENT_SIDE = {
  cookie: 'session=client-cookie-1',
  'x-forwarded-for': '203.0.113.9',
  'openai-organization': 'org-client',
  'openai-project': 'proj-client',
  'anthropic-version': '1999-01-01',
  'anthropic-beta': 'client-beta',
  'x-api-key': 'client-x-api-key-1',
  'api-key': 'client-azure-key-1',
  'proxy-authorization': 'Basic Y2xpZW50OnB3',
};

/** Response headers a provider sends that describe its own account, cookies and connection, not our answer. */
const PROVIDER_SIDE: Record<string, string | string[]> = {
  'set-cookie': ['__cf_bm=provider-cookie; path=/; HttpOnly', '_cfuvid=zzz; path=/'],
  'www-authenticate': 'Bearer realm="provider"',
  'x-ratelimit-remaining-requests': '4999',
  'openai-organization': 'org-provider',
  'openai-processing-ms': '12',
  'x-request-id': 'req_provider_1',
  'request-id': 'req_provider_2',
  server: 'cloudflare',
  'strict-transport-security': 'max-age=31536000',
  'alt-svc': 'h3=":443"; ma=86400',
};

describe('routed requests: what reaches the upstream', () => {
  it("the upstream gets the provider's key and none of the client's credentials, cookies or dialect headers", async () => {
    const up = await recorder((s, res) => answerOpenAI(s, res));
    const gw = await gatewayOn([openaiProvider(up.url)]);
    const chat = await post(gw, '/v1/chat/completions', CHAT, CLIENT_SIDE);
    const stream = await post(gw, '/v1/chat/completions', { ...CHAT, stream: true }, CLIENT_SIDE);
    expect([chat.status, stream.status]).toEqual([200, 200]);
    expect(up.seen).toHaveLength(2);
    for (const s of up.seen) {
      expect(s.headers.authorization).toBe(`Bearer ${UP_KEY}`);
      expect(nameCounts(s.rawHeaders).get('authorization')).toBe(1);
      for (const name of Object.keys(CLIENT_SIDE)) expect(s.headers[name], name).toBeUndefined();
      expect(JSON.stringify(s.rawHeaders)).not.toContain(CLIENT_KEY);
    }

    const anth = await recorder((_s, res) => anthropicAnswer(res));
    const agw = await gatewayOn([
      {
        name: 'an',
        kind: 'anthropic',
        base_url: anth.url,
        api_key: UP_KEY,
        timeouts: RELAXED,
        models: [{ name: 'm' }],
      },
    ]);
    const a = await post(agw, '/v1/chat/completions', CHAT, CLIENT_SIDE);
    expect(a.status, a.text).toBe(200);
    const h = anth.seen[0]!.headers;
    expect(h['x-api-key']).toBe(UP_KEY);
    expect(h['anthropic-version']).toBe('2023-06-01');
    expect(h['anthropic-beta']).toBeUndefined();
    expect(h.authorization).toBeUndefined();
    expect(h.cookie).toBeUndefined();
    expect(JSON.stringify(anth.seen[0]!.rawHeaders)).not.toContain(CLIENT_KEY);
  });

  // README: `providers[].headers` are the extra headers sent upstream, and the passthrough lets them win over
  // the provider's key (a proxy's own `Authorization`). Routed requests merge them case-sensitively into an
  // object whose own names are lower case: `Authorization` from the YAML goes out beside ours, twice.
  it('a configured Authorization header (as YAML writes it, capitalised) is sent once, and wins, as the passthrough does', async () => {
    const CFG = 'Bearer cfg-proxy-token-77881';
    const up = await recorder((s, res) => {
      if (s.url.endsWith('/embeddings')) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            object: 'list',
            data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2] }],
            model: 'emb',
            usage: { prompt_tokens: 1, total_tokens: 1 },
          }),
        );
        return;
      }
      if (s.url.endsWith('/chat/completions')) {
        answerOpenAI(s, res);
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"object":"list","data":[]}');
    });
    const gw = await gatewayOn([openaiProvider(up.url, { headers: { Authorization: CFG } })], {
      passthrough: 'up',
    });
    const chat = await post(gw, '/v1/chat/completions', CHAT);
    const emb = await post(gw, '/v1/embeddings', { model: 'e', input: 'x' });
    const files = await request(`${gw.url}/v1/files`, { headers: { authorization: `Bearer ${CLIENT_KEY}` } });
    await files.body.text();
    expect([chat.status, emb.status, files.statusCode]).toEqual([200, 200, 200]);
    const byPath = (suffix: string): Seen => up.seen.find((s) => s.url.endsWith(suffix))!;
    // The passthrough: one Authorization, the configured one.
    expect(nameCounts(byPath('/files').rawHeaders).get('authorization')).toBe(1);
    expect(byPath('/files').headers.authorization).toBe(CFG);
    // Routed: the same.
    for (const suffix of ['/chat/completions', '/embeddings']) {
      const s = byPath(suffix);
      expect(
        nameCounts(s.rawHeaders).get('authorization'),
        `${suffix}: ${JSON.stringify(s.rawHeaders)}`,
      ).toBe(1);
      expect(s.headers.authorization, suffix).toBe(CFG);
    }
  });

  it("a configured `Anthropic-Version` (capitalised) replaces the default version: one header, not '2023-06-01, 2024-10-22'", async () => {
    const up = await recorder((_s, res) => anthropicAnswer(res));
    const gw = await gatewayOn([
      {
        name: 'an',
        kind: 'anthropic',
        base_url: up.url,
        api_key: UP_KEY,
        timeouts: RELAXED,
        headers: { 'Anthropic-Version': '2024-10-22', 'Anthropic-Beta': 'prompt-caching-2024-07-31' },
        models: [{ name: 'm' }],
      },
    ]);
    const r = await post(gw, '/v1/chat/completions', CHAT);
    expect(r.status, r.text).toBe(200);
    const s = up.seen[0]!;
    expect(s.headers['anthropic-beta']).toBe('prompt-caching-2024-07-31');
    expect(nameCounts(s.rawHeaders).get('anthropic-version'), JSON.stringify(s.rawHeaders)).toBe(1);
    expect(s.headers['anthropic-version']).toBe('2024-10-22');
  });

  // SPEC §3/§8: a config is checked at load, every rejection names its YAML path. A header undici cannot send
  // (a non-Latin-1 value, a CR/LF, a name with a space) passes the check and then fails every request as an
  // opaque `upstream_failure` 502 at run time, counted against the provider's breaker, upstream never called.
  it('a providers[].headers entry that cannot be sent is refused at load, naming its path and why', () => {
    const cases: [Record<string, string>, RegExp][] = [
      [
        { 'x-note': 'café ☕' },
        /providers\[0\]\.headers\.x-note: a header value must be one line of Latin-1/,
      ],
      [
        { 'x-note': 'a\r\nx-injected: 1' },
        /providers\[0\]\.headers\.x-note: a header value must be one line/,
      ],
      // An invalid name is not printed: written curl-style, it holds the credential.
      [{ 'x note': 'v' }, /providers\[0\]\.headers: a header name holds a character no header name may/],
      [
        { 'Authorization: Bearer tok-1234567890abcdef': '' },
        /^(?![\s\S]*tok-1234)[\s\S]*providers\[0\]\.headers: a header name holds ":" \(written curl-style\?\)/,
      ],
      [
        { 'X-Note': 'a', 'x-note': 'b' },
        /providers\[0\]\.headers\.x-note: given twice \(header names are case-insensitive\)/,
      ],
    ];
    for (const [headers, why] of cases) {
      const config = { providers: [openaiProvider('http://127.0.0.1:9', { headers })], routes: {} };
      expect(() => parseConfigText(JSON.stringify(config), {}), JSON.stringify(headers)).toThrow(why);
    }
  });
});

describe('routed answers: what reaches the client', () => {
  it("a provider's cookies, auth challenge, ids and connection headers are not relayed; lengths match the body sent", async () => {
    const up = await recorder((s, res) => answerOpenAI(s, res, PROVIDER_SIDE));
    const anth = await recorder((_s, res) =>
      anthropicAnswer(res, { ...PROVIDER_SIDE, 'anthropic-ratelimit-requests-remaining': '9' }),
    );
    const gw = await gatewayOn([openaiProvider(up.url)]);
    const agw = await gatewayOn([
      {
        name: 'an',
        kind: 'anthropic',
        base_url: anth.url,
        api_key: UP_KEY,
        timeouts: RELAXED,
        models: [{ name: 'm' }],
      },
    ]);
    const answers = [
      await post(gw, '/v1/chat/completions', CHAT, { 'x-request-id': 'client-req-1' }),
      await post(gw, '/v1/chat/completions', { ...CHAT, stream: true }, { 'x-request-id': 'client-req-2' }),
      await post(agw, '/v1/chat/completions', CHAT, { 'x-request-id': 'client-req-3' }),
      await post(agw, '/v1/chat/completions', { ...CHAT, stream: true }, { 'x-request-id': 'client-req-4' }),
    ];
    answers.forEach((a, i) => {
      expect(a.status, a.text).toBe(200);
      expect(a.text).toContain('hello there');
      expect(a.headers['x-request-id']).toBe(`client-req-${i + 1}`);
      for (const name of Object.keys(PROVIDER_SIDE).filter((n) => n !== 'x-request-id'))
        expect(a.headers[name], `${i}: ${name}`).toBeUndefined();
      expect(a.headers['anthropic-ratelimit-requests-remaining']).toBeUndefined();
      const len = a.headers['content-length'];
      if (len !== undefined) expect(Number(len)).toBe(Buffer.byteLength(a.text));
      expect(a.headers['content-encoding']).toBeUndefined();
    });
  });

  // A model's route-facing `name` is any string in the config, listed by /v1/models and put in `x-router-model`.
  // One outside Latin-1 cannot go in a header: the JSON answer was never sent (the client waits forever), and
  // a stream's commit throws after it is marked committed, so the client gets a bare 200 with an error event.
  it('a model named outside Latin-1 (llama3-中文-8b) is answered, JSON and stream, its name percent-encoded in x-router-model', async () => {
    const NAME = 'llama3-中文-8b';
    const up = await recorder((s, res) => answerOpenAI(s, res));
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'up',
            base_url: `${up.url}/v1`,
            api_key: UP_KEY,
            timeouts: RELAXED,
            models: [{ name: NAME, upstream_name: 'llama3-zh' }],
          },
        ],
        routes: { r: { strategy: 'priority', targets: [`up/${NAME}`] } },
      }),
    );
    const ask = async (stream: boolean): Promise<string> => {
      try {
        const res = await request(`${gw.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ ...CHAT, stream }),
          headersTimeout: 8000,
          bodyTimeout: 8000,
        });
        const text = await res.body.text();
        expect(res.headers['x-router-model']).toBe('llama3-%E4%B8%AD%E6%96%87-8b');
        return `${res.statusCode} ${String(res.headers['content-type'])} ${text.includes('hello there') ? 'answered' : text.slice(0, 160)}`;
      } catch (err) {
        return `no answer: ${(err as Error).message}`;
      }
    };
    const got = [await ask(false), await ask(true)];
    const errors = gw.logs.filter((l) => (l.level as number) >= 50).map((l) => String(l.msg));
    expect(got, `error log lines: ${JSON.stringify(errors)}`).toEqual([
      '200 application/json; charset=utf-8 answered',
      '200 text/event-stream; charset=utf-8 answered',
    ]);
  }, 30_000);
});

describe('the passthrough, both ways', () => {
  it("strips the client's credentials, lets configured headers win over the client's, and sends the upstream's Host", async () => {
    const up = await recorder((_s, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"object":"list","data":[]}');
    });
    const gw = await gatewayOn(
      [
        openaiProvider(up.url, {
          headers: { 'OpenAI-Beta': 'assistants=v2', 'X-Proxy-Token': 'px-token-123456789' },
        }),
      ],
      { passthrough: 'up' },
    );
    const res = await request(`${gw.url}/v1/files`, {
      headers: {
        ...CLIENT_SIDE,
        authorization: `Bearer ${CLIENT_KEY}`,
        'openai-beta': 'client-beta=v1',
        'x-proxy-token': 'client-forged',
        host: 'gateway.example:8080',
      },
    });
    expect(res.statusCode).toBe(200);
    await res.body.text();
    const s = up.seen[0]!;
    expect(s.headers.authorization).toBe(`Bearer ${UP_KEY}`);
    for (const name of [
      'x-api-key',
      'api-key',
      'openai-organization',
      'openai-project',
      'proxy-authorization',
    ])
      expect(s.headers[name], name).toBeUndefined();
    expect(s.headers['openai-beta']).toBe('assistants=v2');
    expect(s.headers['x-proxy-token']).toBe('px-token-123456789');
    const counts = nameCounts(s.rawHeaders);
    for (const [name, n] of counts) expect(n, name).toBe(1);
    expect(s.headers.host).toBe(new URL(up.url).host);
    expect(JSON.stringify(s.rawHeaders)).not.toContain(CLIENT_KEY);
  });

  // README: with server.rate_limit, "answers, streamed ones too, carry x-ratelimit-limit, -remaining and
  // -reset" — the gateway's budget. The passthrough copies the upstream's headers over the reply after the
  // limiter set its own, so a provider (or a proxy in front of it) that uses the same generic names tells the
  // client it has 99,999 requests left of 100,000 when the gateway will refuse the 6th.
  it("the gateway's own x-ratelimit-* headers are not overwritten by an upstream's same-named ones", async () => {
    const up = await recorder((_s, res) => {
      res.writeHead(200, {
        'content-type': 'application/json',
        'x-ratelimit-limit': '100000',
        'x-ratelimit-remaining': '99999',
        'x-ratelimit-reset': '3600',
      });
      res.end('{"object":"list","data":[]}');
    });
    const gw = await gatewayOn([openaiProvider(up.url)], {
      passthrough: 'up',
      rate_limit: { requests_per_minute: 5 },
    });
    const seen: { status: number; limit: unknown; remaining: unknown }[] = [];
    for (let i = 0; i < 6; i++) {
      const res = await request(`${gw.url}/v1/files`, { headers: { authorization: `Bearer ${CLIENT_KEY}` } });
      await res.body.text();
      seen.push({
        status: res.statusCode,
        limit: res.headers['x-ratelimit-limit'],
        remaining: res.headers['x-ratelimit-remaining'],
      });
    }
    // The 6th is refused: the budget the headers should describe is the gateway's.
    expect(seen[5]!.status).toBe(429);
    expect(seen.slice(0, 5)).toEqual(
      [4, 3, 2, 1, 0].map((n) => ({ status: 200, limit: '5', remaining: String(n) })),
    );
    // Without a limit of the gateway's own, the upstream's are relayed as they are.
    const open = await gatewayOn([openaiProvider(up.url)], { passthrough: 'up' });
    const res = await request(`${open.url}/v1/files`, { headers: { authorization: `Bearer ${CLIENT_KEY}` } });
    await res.body.text();
    expect([res.headers['x-ratelimit-limit'], res.headers['x-ratelimit-remaining']]).toEqual([
      '100000',
      '99999',
    ]);
  });
});

describe('hostile request headers', () => {
  it('duplicate or non-ASCII x-router-* values are a 400 naming the header; a doubled x-request-id is not echoed joined', async () => {
    const up = await recorder((s, res) => answerOpenAI(s, res));
    const gw = await gatewayOn([openaiProvider(up.url)]);
    const body = JSON.stringify(CHAT);
    const head = (extra: string): string =>
      `POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${CLIENT_KEY}\r\n` +
      `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n${extra}\r\n`;
    const cases: [string, string][] = [
      ['x-router-provider: up\r\nx-router-provider: up\r\n', 'x-router-provider'],
      ['x-router-provider: up\xe9\r\n', 'x-router-provider'],
      ['x-router-strategy: co\xfft\r\n', 'x-router-strategy'],
      ['x-router-strategy: cost\r\nx-router-strategy: latency\r\n', 'x-router-strategy'],
    ];
    for (const [extra, param] of cases) {
      const out = await rawExchange(gw, head(extra), body);
      const [top = '', rest = ''] = out.split('\r\n\r\n', 2);
      expect(top.split('\r\n')[0], extra).toBe('HTTP/1.1 400 Bad Request');
      expect((JSON.parse(rest) as { error: { param: unknown } }).error.param).toBe(param);
    }
    expect(up.seen).toHaveLength(0);
    const twice = await rawExchange(gw, head('x-request-id: abc\r\nx-request-id: def\r\n'), body);
    const id = /\r\nx-request-id: ([^\r]*)\r\n/i.exec(twice)?.[1];
    expect(twice.startsWith('HTTP/1.1 200')).toBe(true);
    expect(id).toBeDefined();
    expect(id).not.toMatch(/abc|def|,/);
  });

  it('content-length and transfer-encoding together (smuggling) get a 400 OpenAI-shaped, calling nothing', async () => {
    const up = await recorder((s, res) => answerOpenAI(s, res));
    const gw = await gatewayOn([openaiProvider(up.url)]);
    const body = JSON.stringify(CHAT);
    const chunked = `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`;
    const out = await rawExchange(
      gw,
      `POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${CLIENT_KEY}\r\n` +
        `content-type: application/json\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n`,
      `${chunked}GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n`,
    );
    expect(out.startsWith('HTTP/1.1 400')).toBe(true);
    expect(out).toContain('"type":"invalid_request_error"');
    // One answer only: the smuggled GET behind it was never read as a request.
    expect(out.match(/HTTP\/1\.1 /g)).toHaveLength(1);
    expect(up.seen).toHaveLength(0);
  });
});
