/**
 * Audit (session 28): did session 27's secret-masking and passthrough fixes (95685be..9fd2c15) break honest
 * traffic? Each test sends benign but awkward traffic a production user sends, through a real gateway on
 * 127.0.0.1:0 in front of a node:http upstream on 127.0.0.1:0, and asserts it arrives as SPEC/README say:
 *
 * - SPEC §2: a stream is relayed chunk by chunk; SPEC §8: only configured secrets are scrubbed. README
 *   ("Failover and streams"): a delta that ends in 4 or more of a key's first characters is held back until
 *   the next shows whether the key follows; held text whose channel ends goes as written under 8 characters,
 *   as `[REDACTED]` from 8. So text that merely resembles the key (its first 7 characters, the key minus its
 *   last character followed by more text, the key's prefix and other text, entities, percent-encodings,
 *   Python quoting, unicode, emoji) reaches the client whole, and held text is let go at the next delta.
 * - README (other `/v1/*` row): a passthrough answer that echoes our key has it masked; an event stream's
 *   deltas are read, "and only an event that closes the text, a `*.done` or the response's end, ends what
 *   was held back"; a query parameter holding a gateway key is not forwarded (any other is).
 * - README: an `x-request-id` of up to 128 letters, digits and `._:+/=@-` is echoed and logged.
 * - README `server.body_limit_bytes`: larger bodies get 413; a chunked passthrough upload past the limit
 *   gets its 413 and the rest is read and dropped, so the client reads the 413 (the connection goes on).
 * - README: an HTML error page is relayed as its `<title>` (readable text, not markup); a JSON error keeps
 *   its message.
 * - README (Anthropic-compatible servers): usage that is a real count is counted as given.
 * - README (errors): `x-should-retry: false` only when every attempt failed on the gateway's own setup.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { gate } from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';
import { until } from '../helpers/wait.js';
import { wsClients, wsUpstream } from '../helpers/ws.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;

/** The provider's key: realistic, 56 characters, with `_`, `+`, `/`, `=` so every spelling differs. */
const KEY = 'sk-live-Rt7Kp2Xq9Wm4Zb8Nc3Vd6Hf1Jg5Ls0Ay_Qe2Tu7+Io4/Pa8=';
const CLIENT_KEY = 'sk-live-gw-Ck5Mn8Pq2Rs6Tv9Wx3Yz7Ab1Cd4Ef0Gh';
const ADMIN_KEY = 'sk-live-admin-Jk3Lm6No9Pq2Rs5Tu8Vw1Xy4Za7Bc';
const AUTH = { authorization: `Bearer ${CLIENT_KEY}` };
const RELAXED = { connect_ms: 2000, first_byte_ms: 15000, idle_ms: 15000, total_ms: 30000 };
const MSG = [{ role: 'user', content: 'tell me about API key formats' }];

/**
 * Honest text full of near-misses of KEY: its first 7 characters, the key minus its last character followed
 * by more text, its prefix followed by other text, Python quoting of a prefix, entities and percent-encodings
 * of ordinary text, "sk-" alone, unicode and emoji.
 */
const NEAR_MISS_TEXT = [
  `Keys look like ${KEY.slice(0, 7)}, then more. `,
  `A copy one short: ${KEY.slice(0, -1)} (not the key). `,
  `An example: ${KEY.slice(0, 20)}EXAMPLE-not-real. `,
  `Python: print('${KEY.slice(0, 12)}') and "${KEY.slice(0, 9)}". `,
  `Entities &amp; &lt;b&gt; &lowbar; &#39; &plus; and %20 %2F %2f a%3Db. `,
  `The word sk- alone, sk-live- twice: sk-live-docs. `,
  `Unicode: naïve café 中文 Ελληνικά 👩‍💻🎉 — done.`,
].join('');

// ---------------------------------------------------------------------------------------------------------
// Upstream

interface Got {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  body: Buffer;
}

interface Up {
  readonly url: string;
  readonly got: Got[];
}

type Answer = (req: IncomingMessage, res: ServerResponse, got: Got, n: number) => void | Promise<void>;

/** A node:http upstream on loopback that records each request (its bytes too) and lets `answer` reply. */
async function upstream(answer: Answer, opts: { readBody?: boolean } = {}): Promise<Up> {
  const got: Got[] = [];
  const server = createServer((req, res) => {
    req.socket.setNoDelay(true);
    const g: Got = {
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      body: Buffer.alloc(0),
    };
    got.push(g);
    const n = got.length - 1;
    const run = (): void => void Promise.resolve(answer(req, res, g, n)).catch(() => res.destroy());
    if (opts.readBody === false) {
      run();
      return;
    }
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      g.body = Buffer.concat(parts);
      run();
    });
    req.on('error', () => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  track(closeableServer(server));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, got };
}

const bodyOf = (g: Got): Json => JSON.parse(g.body.toString('utf8') || '{}') as Json;

/** Writes `text` and resolves once it is handed to the socket (so each write is a read of its own, mostly). */
function write(res: ServerResponse, text: string | Buffer): Promise<void> {
  return new Promise((resolve) => res.write(text, () => resolve()));
}

function frame(obj: Json): string {
  return `data: ${JSON.stringify(obj)}\n\n`;
}

function chunkOf(choices: Json[]): Json {
  return { id: 'chatcmpl-benign', object: 'chat.completion.chunk', created: 1, model: 'm', choices };
}

/** One chat chunk frame with one choice. */
function d(delta: Json, index = 0, finish: string | null = null): string {
  return frame(chunkOf([{ index, delta, finish_reason: finish }]));
}

const DONE = 'data: [DONE]\n\n';

/** `s` cut into pieces of `size` code points (a model's deltas never split a surrogate pair). */
function pieces(s: string, size: number): string[] {
  const cps = [...s];
  const out: string[] = [];
  for (let i = 0; i < cps.length; i += size) out.push(cps.slice(i, i + size).join(''));
  return out;
}

/** `s` cut at the given code-point offsets. */
function cutAt(s: string, offsets: readonly number[]): string[] {
  const cps = [...s];
  const out: string[] = [];
  let from = 0;
  for (const at of [...offsets, cps.length]) {
    out.push(cps.slice(from, at).join(''));
    from = at;
  }
  return out.filter((p) => p !== '');
}

/** Code-point offsets in `s` that fall inside each near-miss of KEY (after its 4th, 8th, 15th character). */
function insideNearMisses(s: string): number[] {
  const cps = [...s];
  const text = cps.join('');
  const out: number[] = [];
  for (let at = text.indexOf('sk-'); at !== -1; at = text.indexOf('sk-', at + 1)) {
    const cp = [...text.slice(0, at)].length;
    for (const k of [4, 8, 15]) if (cp + k < cps.length) out.push(cp + k);
  }
  return [...new Set(out)].sort((a, b) => a - b);
}

// ---------------------------------------------------------------------------------------------------------
// Gateway and client

/** A keyed gateway (client key, admin key) whose route `r` and passthrough are provider `up` with KEY. */
async function gatewayFor(
  up: Up,
  opts: { server?: Json; provider?: Json; more?: Json[]; routes?: Json } = {},
): Promise<TestGateway> {
  return track(
    await startGateway({
      server: { api_keys: [CLIENT_KEY], admin_key: ADMIN_KEY, passthrough: 'up', ...opts.server },
      providers: [
        {
          name: 'up',
          kind: 'openai',
          base_url: `${up.url}/v1`,
          api_key: KEY,
          timeouts: RELAXED,
          models: [{ name: 'm' }],
          ...opts.provider,
        },
        ...(opts.more ?? []),
      ],
      routes: opts.routes ?? { r: { strategy: 'priority', targets: ['up/m'] } },
    }),
  );
}

interface Streamed {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly raw: string;
}

/** POSTs a streaming chat request and reads the raw SSE text; `onText` sees the raw text so far. */
async function streamChat(
  gw: TestGateway,
  body: Json,
  onText?: (raw: string) => void,
  headers: Record<string, string> = {},
): Promise<Streamed> {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...AUTH, ...headers },
    body: JSON.stringify({ model: 'r', messages: MSG, stream: true, ...body }),
    headersTimeout: 20_000,
    bodyTimeout: 20_000,
  });
  let raw = '';
  res.body.setEncoding('utf8');
  for await (const piece of res.body as AsyncIterable<string>) {
    raw += piece;
    onText?.(raw);
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) out[k] = Array.isArray(v) ? v.join(',') : String(v);
  return { status: res.statusCode, headers: out, raw };
}

/** The `data:` payloads of an SSE text, in order (`[DONE]` included as text). */
function dataOf(raw: string): string[] {
  const out: string[] = [];
  for (const block of raw.split(/\r?\n\r?\n/)) {
    const lines = block.split(/\r?\n/).filter((l) => l.startsWith('data:'));
    if (lines.length > 0) out.push(lines.map((l) => l.replace(/^data: ?/, '')).join('\n'));
  }
  return out;
}

/** Each choice's channels joined across a chat stream: content, reasoning_content, each tool call's arguments. */
function channels(raw: string): Map<number, Map<string, string>> {
  const out = new Map<number, Map<string, string>>();
  for (const data of dataOf(raw)) {
    if (data === '[DONE]') continue;
    const obj = JSON.parse(data) as Json;
    for (const c of (obj.choices as Json[] | undefined) ?? []) {
      const at = c.index as number;
      let m = out.get(at);
      if (m === undefined) out.set(at, (m = new Map()));
      const delta = (c.delta ?? {}) as Json;
      const add = (k: string, v: unknown): void => {
        if (typeof v === 'string' && v !== '') m.set(k, (m.get(k) ?? '') + v);
      };
      add('content', delta.content);
      add('reasoning_content', delta.reasoning_content);
      for (const call of (delta.tool_calls as Json[] | undefined) ?? [])
        add(`tool:${String(call.index)}`, (call.function as Json | undefined)?.arguments);
    }
  }
  return out;
}

const contentOf = (raw: string, index = 0): string => channels(raw).get(index)?.get('content') ?? '';

// ---------------------------------------------------------------------------------------------------------
// Raw HTTP/1.1 over one keep-alive socket

interface RawAnswer {
  readonly status: number;
  readonly head: string;
  readonly body: string;
}

/** A client that sends requests on one socket and reads each answer whole (Content-Length or chunked). */
async function rawClient(url: string): Promise<{
  send(bytes: string | Buffer): void;
  answer(timeoutMs?: number): Promise<RawAnswer>;
  readonly closed: boolean;
  close(): void;
}> {
  const { port } = new URL(url);
  const socket: Socket = connect(Number(port), '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  let buf = Buffer.alloc(0);
  let closed = false;
  let wake: (() => void) | undefined;
  socket.on('data', (c: Buffer) => {
    buf = Buffer.concat([buf, c]);
    wake?.();
  });
  socket.on('close', () => {
    closed = true;
    wake?.();
  });
  socket.on('error', () => undefined);
  const take = (): RawAnswer | undefined => {
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) return undefined;
    const head = buf.subarray(0, end).toString('latin1');
    const status = Number(head.split(' ')[1]);
    const rest = buf.subarray(end + 4);
    const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    if (length) {
      const n = Number(length[1]);
      if (rest.length < n) return undefined;
      buf = rest.subarray(n);
      return { status, head, body: rest.subarray(0, n).toString('utf8') };
    }
    if (/\r\ntransfer-encoding:\s*chunked/i.test(head)) {
      let at = 0;
      const parts: Buffer[] = [];
      for (;;) {
        const eol = rest.indexOf('\r\n', at);
        if (eol < 0) return undefined;
        const size = Number.parseInt(rest.subarray(at, eol).toString('latin1'), 16);
        if (rest.length < eol + 2 + size + 2) return undefined;
        if (size === 0) {
          buf = rest.subarray(eol + 4);
          return { status, head, body: Buffer.concat(parts).toString('utf8') };
        }
        parts.push(rest.subarray(eol + 2, eol + 2 + size));
        at = eol + 2 + size + 2;
      }
    }
    if (!closed) return undefined;
    buf = Buffer.alloc(0);
    return { status, head, body: rest.toString('utf8') };
  };
  const client = {
    send: (bytes: string | Buffer) => void socket.write(bytes),
    answer: async (timeoutMs = 15_000): Promise<RawAnswer> => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const a = take();
        if (a) return a;
        if (closed) throw new Error(`connection closed before a whole answer (${buf.length} bytes read)`);
        const left = deadline - Date.now();
        if (left <= 0) throw new Error('no whole answer in time');
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, left);
          wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        wake = undefined;
      }
    },
    get closed() {
      return closed;
    },
    close: () => socket.destroy(),
  };
  track({ close: () => socket.destroy() });
  return client;
}

/** A chunked HTTP/1.1 request's bytes: `parts` as chunks, then the last chunk. */
function chunkedRequest(method: string, path: string, parts: readonly Buffer[], host: string): Buffer {
  const head =
    `${method} ${path} HTTP/1.1\r\nhost: ${host}\r\nauthorization: Bearer ${CLIENT_KEY}\r\n` +
    'content-type: application/octet-stream\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n';
  const body = parts.flatMap((p) => [Buffer.from(`${p.length.toString(16)}\r\n`), p, Buffer.from('\r\n')]);
  return Buffer.concat([Buffer.from(head), ...body, Buffer.from('0\r\n\r\n')]);
}

function getRequest(path: string, host: string): string {
  return `GET ${path} HTTP/1.1\r\nhost: ${host}\r\nauthorization: Bearer ${CLIENT_KEY}\r\nconnection: keep-alive\r\n\r\n`;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

// ---------------------------------------------------------------------------------------------------------
// Routed answers

describe('routed answers whose text only resembles the provider key reach the client whole', () => {
  it('a JSON answer: content, reasoning and tool arguments full of near-misses come back exactly', async () => {
    const message = {
      role: 'assistant',
      content: NEAR_MISS_TEXT,
      reasoning_content: `Thinking about ${KEY.slice(0, -1)}… and ${KEY.slice(0, 7)}`,
      tool_calls: [
        {
          id: 'call_1',
          type: 'function',
          function: {
            name: 'store_hint',
            arguments: JSON.stringify({ hint: KEY.slice(0, 30), note: "a &amp; b %20 'q' 👍" }),
          },
        },
      ],
    };
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          id: 'chatcmpl-1',
          object: 'chat.completion',
          created: 1,
          model: 'm',
          choices: [{ index: 0, message, finish_reason: 'tool_calls' }],
          usage: { prompt_tokens: 9, completion_tokens: 99, total_tokens: 108 },
        }),
      );
    });
    const gw = await gatewayFor(up);
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...AUTH },
      body: JSON.stringify({ model: 'r', messages: MSG }),
    });
    const text = await res.body.text();
    expect(res.statusCode).toBe(200);
    const got = JSON.parse(text) as { choices: { message: Json }[] };
    expect(got.choices[0]?.message).toEqual(message);
    expect(text).not.toContain('[REDACTED]');
  });

  it('a one-choice stream cut inside every near-miss: the whole text arrives, one frame per upstream frame', async () => {
    const deltas = cutAt(NEAR_MISS_TEXT, insideNearMisses(NEAR_MISS_TEXT));
    const frames = [
      d({ role: 'assistant', content: '' }),
      ...deltas.map((t) => d({ content: t })),
      d({}, 0, 'stop'),
      DONE,
    ];
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (const f of frames) await write(res, f);
      res.end();
    });
    const gw = await gatewayFor(up);
    const got = await streamChat(gw, {});
    expect(got.status).toBe(200);
    expect(contentOf(got.raw)).toBe(NEAR_MISS_TEXT);
    expect(got.raw).not.toContain('REDACTED');
    expect(dataOf(got.raw)).toHaveLength(frames.length);
    expect(dataOf(got.raw).at(-1)).toBe('[DONE]');
  });

  it('a one-choice stream sent one code point a delta: the whole text arrives', async () => {
    const deltas = pieces(NEAR_MISS_TEXT, 1);
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(
        d({ role: 'assistant', content: '' }) +
          deltas.map((t) => d({ content: t })).join('') +
          d({}, 0, 'stop') +
          DONE,
      );
    });
    const gw = await gatewayFor(up);
    const got = await streamChat(gw, {});
    expect(contentOf(got.raw)).toBe(NEAR_MISS_TEXT);
    expect(dataOf(got.raw)).toHaveLength(deltas.length + 3);
  });

  it('n=3: three interleaved choices, each cut inside its near-misses at other places, arrive whole', async () => {
    const texts = [
      NEAR_MISS_TEXT,
      `Choice two: ${KEY.slice(0, 44)} is a prefix, ${KEY.slice(0, 7)} too; 🎉 &amp; %20.`,
      `Choice three: 'sk-' then "${KEY.slice(0, 10)}…" then ${KEY.slice(0, -1)}! end`,
    ];
    const split = texts.map((t, i) => pieces(t, [3, 5, 7][i]!));
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      await write(
        res,
        frame(
          chunkOf(
            [0, 1, 2].map((index) => ({
              index,
              delta: { role: 'assistant', content: '' },
              finish_reason: null,
            })),
          ),
        ),
      );
      const longest = Math.max(...split.map((s) => s.length));
      for (let k = 0; k < longest; k++)
        for (let i = 0; i < 3; i++) {
          const t = split[i]![k];
          if (t !== undefined) await write(res, d({ content: t }, i));
        }
      for (let i = 0; i < 3; i++) await write(res, d({}, i, 'stop'));
      res.end(DONE);
    });
    const gw = await gatewayFor(up);
    const got = await streamChat(gw, { n: 3 });
    expect(got.status).toBe(200);
    for (let i = 0; i < 3; i++) expect(contentOf(got.raw, i)).toBe(texts[i]);
    expect(got.raw).not.toContain('REDACTED');
  });

  it('a stream whose TCP writes split UTF-8 characters and near-misses byte by byte arrives whole', async () => {
    const deltas = pieces(NEAR_MISS_TEXT, 4);
    const body = Buffer.from(
      d({ role: 'assistant', content: '' }) +
        deltas.map((t) => d({ content: t })).join('') +
        d({}, 0, 'stop') +
        DONE,
      'utf8',
    );
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (let at = 0; at < body.length; at += 7) await write(res, body.subarray(at, at + 7));
      res.end();
    });
    const gw = await gatewayFor(up);
    const got = await streamChat(gw, {});
    expect(contentOf(got.raw)).toBe(NEAR_MISS_TEXT);
    expect(dataOf(got.raw)).toHaveLength(deltas.length + 3);
  });

  it('tool-call argument deltas of two calls, cut inside near-misses, arrive as the upstream wrote them', async () => {
    const args = [
      JSON.stringify({ key_prefix: KEY.slice(0, 7), example: `${KEY.slice(0, 22)}XXXX`, q: 'a&b<c>"d"' }),
      JSON.stringify({ path: '/v1/files?after=sk-live-&limit=10', text: `${KEY.slice(0, -1)}?`, e: '😀' }),
    ];
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      await write(res, d({ role: 'assistant', content: null }));
      for (let i = 0; i < 2; i++) {
        await write(
          res,
          d({
            tool_calls: [
              { index: i, id: `call_${i}`, type: 'function', function: { name: 'f', arguments: '' } },
            ],
          }),
        );
        for (const p of cutAt(args[i]!, insideNearMisses(args[i]!)))
          await write(res, d({ tool_calls: [{ index: i, function: { arguments: p } }] }));
      }
      await write(res, d({}, 0, 'tool_calls'));
      res.end(DONE);
    });
    const gw = await gatewayFor(up);
    const got = await streamChat(gw, {
      tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
    });
    expect(got.status).toBe(200);
    const ch = channels(got.raw).get(0);
    expect(ch?.get('tool:0')).toBe(args[0]);
    expect(ch?.get('tool:1')).toBe(args[1]);
    expect(got.raw).not.toContain('REDACTED');
  });

  it('reasoning deltas then content deltas, each cut inside near-misses, arrive whole in their own channels', async () => {
    const reasoning = `The user asks about ${KEY.slice(0, 7)} keys; ${KEY.slice(0, 30)}… is only an example. `;
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      await write(res, d({ role: 'assistant', content: '' }));
      for (const p of cutAt(reasoning, insideNearMisses(reasoning)))
        await write(res, d({ reasoning_content: p }));
      for (const p of cutAt(NEAR_MISS_TEXT, insideNearMisses(NEAR_MISS_TEXT)))
        await write(res, d({ content: p }));
      await write(res, d({}, 0, 'stop'));
      res.end(DONE);
    });
    const gw = await gatewayFor(up);
    const got = await streamChat(gw, {});
    const ch = channels(got.raw).get(0);
    expect(ch?.get('reasoning_content')).toBe(reasoning);
    expect(ch?.get('content')).toBe(NEAR_MISS_TEXT);
    expect(got.raw).not.toContain('REDACTED');
  });

  it('text held back at a near-miss is let go as soon as the next delta comes, before the stream ends', async () => {
    const first = 'Your live keys start with ';
    const heldPart = KEY.slice(0, 14); // 14 characters of the key: held until the next delta
    const next = ' and go on with 48 more characters.';
    const seenFirst = gate(8000);
    const seenNext = gate(8000);
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      await write(res, d({ role: 'assistant', content: '' }) + d({ content: first + heldPart }));
      await seenFirst.wait;
      await write(res, d({ content: next }));
      await seenNext.wait;
      res.end(d({}, 0, 'stop') + DONE);
    });
    const gw = await gatewayFor(up);
    const got = await streamChat(gw, {}, (raw) => {
      const text = contentOf(raw);
      if (text.startsWith(first)) seenFirst.open();
      if (text === first + heldPart + next) seenNext.open();
    });
    expect(await seenFirst.wait).toBe('client');
    // The held characters went out with the next delta, while the upstream still held the stream open.
    expect(await seenNext.wait).toBe('client');
    expect(contentOf(got.raw)).toBe(first + heldPart + next);
  });

  it("a choice that ends in fewer than 8 of the key's first characters ends as written (README)", async () => {
    const endings = ['the word sk-', `prefix ${KEY.slice(0, 4)}`, `prefix ${KEY.slice(0, 7)}`];
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      await write(
        res,
        frame(
          chunkOf(
            [0, 1, 2].map((index) => ({
              index,
              delta: { role: 'assistant', content: '' },
              finish_reason: null,
            })),
          ),
        ),
      );
      for (let i = 0; i < 3; i++)
        for (const p of pieces(endings[i]!, 3)) await write(res, d({ content: p }, i));
      for (let i = 0; i < 3; i++) await write(res, d({}, i, 'stop'));
      res.end(DONE);
    });
    const gw = await gatewayFor(up);
    const got = await streamChat(gw, { n: 3 });
    for (let i = 0; i < 3; i++) expect(contentOf(got.raw, i)).toBe(endings[i]);
  });

  it('n=128 choices of reasoning, text and a tool call each (384 channels), cut inside near-misses, arrive whole', async () => {
    // More than the 256 channels the mask follows: each choice thinks, writes and calls a tool, every part
    // cut inside a near-miss of the key and resolved by its next delta, the choices interleaved.
    const N = 128;
    const parts = (i: number): [string, string, string][] => [
      ['reasoning_content', `choice ${i} considers ${KEY.slice(0, 10)}`, `-docs, a prefix. `],
      ['content', `See ${KEY.slice(0, 12)}`, `-example for ${KEY.slice(0, 7)} keys (${i}) 👍 `],
      ['tool', `{"hint":"${KEY.slice(0, 9)}`, `-hint-${i}"}`],
    ];
    const deltaOf = (field: string, text: string, first: boolean): Json =>
      field !== 'tool'
        ? { [field]: text }
        : first
          ? {
              tool_calls: [
                { index: 0, id: 'call_x', type: 'function', function: { name: 'f', arguments: text } },
              ],
            }
          : { tool_calls: [{ index: 0, function: { arguments: text } }] };
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      let out = '';
      for (let i = 0; i < N; i++) out += d({ role: 'assistant', content: '' }, i);
      await write(res, out);
      for (let channel = 0; channel < 3; channel++)
        for (const first of [true, false]) {
          out = '';
          for (let i = 0; i < N; i++) {
            const [field, a, b] = parts(i)[channel]!;
            out += d(deltaOf(field, first ? a : b, first), i);
          }
          await write(res, out);
        }
      out = '';
      for (let i = 0; i < N; i++) out += d({}, i, 'tool_calls');
      res.end(out + DONE);
    });
    const gw = await gatewayFor(up);
    const got = await streamChat(gw, {
      n: N,
      tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
    });
    expect(got.status).toBe(200);
    const ch = channels(got.raw);
    const wrong: string[] = [];
    for (let i = 0; i < N; i++)
      for (const [field, a, b] of parts(i)) {
        const key = field === 'tool' ? 'tool:0' : field;
        if (ch.get(i)?.get(key) !== a + b) wrong.push(`${i}/${key}: ${String(ch.get(i)?.get(key))}`);
      }
    expect(wrong).toEqual([]);
    expect(got.raw).not.toContain('REDACTED');
  });

  it('the openai SDK reads a stream of near-misses as the upstream wrote it', async () => {
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      await write(res, d({ role: 'assistant', content: '' }));
      for (const p of cutAt(NEAR_MISS_TEXT, insideNearMisses(NEAR_MISS_TEXT)))
        await write(res, d({ content: p }));
      res.end(d({}, 0, 'stop') + DONE);
    });
    const gw = await gatewayFor(up);
    const client = new OpenAI({
      baseURL: `${gw.url}/v1`,
      apiKey: CLIENT_KEY,
      maxRetries: 0,
      timeout: 20_000,
    });
    const stream = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      stream: true,
    });
    let text = '';
    for await (const c of stream) text += c.choices[0]?.delta.content ?? '';
    expect(text).toBe(NEAR_MISS_TEXT);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Anthropic dialect

function sse(e: Json): string {
  return `event: ${String(e.type)}\ndata: ${JSON.stringify(e)}\n\n`;
}

/** A gateway whose route `r` is one Anthropic provider `anth` (key KEY) at `up`. */
async function anthropicGateway(up: Up): Promise<TestGateway> {
  return track(
    await startGateway({
      server: { api_keys: [CLIENT_KEY], admin_key: ADMIN_KEY },
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: up.url,
          api_key: KEY,
          timeouts: RELAXED,
          models: [{ name: 'claude-sonnet-4-5' }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['anth/claude-sonnet-4-5'] } },
    }),
  );
}

function messageStart(usage: Json): Json {
  return {
    type: 'message_start',
    message: {
      id: 'msg_01Benign',
      type: 'message',
      role: 'assistant',
      model: 'claude-sonnet-4-5-20250929',
      content: [],
      stop_reason: null,
      stop_sequence: null,
      usage,
    },
  };
}

/** The request line the gateway logged for the answer with this `x-request-id`. */
function requestLineOf(gw: TestGateway, id: string): Json | undefined {
  return gw.logs.find((l) => l.msg === 'request' && l.reqId === id);
}

describe('Anthropic answers: near-misses pass whole, honest usage is counted as given', () => {
  it('a Claude stream (thinking, text, tool input) cut inside near-misses arrives whole in each channel', async () => {
    const thinking = `Keys begin ${KEY.slice(0, 7)}; ${KEY.slice(0, 25)}… is a placeholder, not a key.`;
    const input = JSON.stringify({ query: `${KEY.slice(0, 12)} docs`, note: '&lt; 👩‍💻 %20' });
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const events: Json[] = [messageStart({ input_tokens: 20, output_tokens: 1 }), { type: 'ping' }];
      events.push({
        type: 'content_block_start',
        index: 0,
        content_block: { type: 'thinking', thinking: '', signature: '' },
      });
      for (const p of cutAt(thinking, insideNearMisses(thinking)))
        events.push({
          type: 'content_block_delta',
          index: 0,
          delta: { type: 'thinking_delta', thinking: p },
        });
      events.push({
        type: 'content_block_delta',
        index: 0,
        delta: { type: 'signature_delta', signature: 'EqQBsig' },
      });
      events.push({ type: 'content_block_stop', index: 0 });
      events.push({ type: 'content_block_start', index: 1, content_block: { type: 'text', text: '' } });
      for (const p of cutAt(NEAR_MISS_TEXT, insideNearMisses(NEAR_MISS_TEXT)))
        events.push({ type: 'content_block_delta', index: 1, delta: { type: 'text_delta', text: p } });
      events.push({ type: 'content_block_stop', index: 1 });
      events.push({
        type: 'content_block_start',
        index: 2,
        content_block: { type: 'tool_use', id: 'toolu_01A', name: 'search', input: {} },
      });
      for (const p of cutAt(input, insideNearMisses(input)))
        events.push({
          type: 'content_block_delta',
          index: 2,
          delta: { type: 'input_json_delta', partial_json: p },
        });
      events.push({ type: 'content_block_stop', index: 2 });
      events.push({
        type: 'message_delta',
        delta: { stop_reason: 'tool_use', stop_sequence: null },
        usage: { output_tokens: 120 },
      });
      events.push({ type: 'message_stop' });
      for (const e of events) await write(res, sse(e));
      res.end();
    });
    const gw = await anthropicGateway(up);
    const got = await streamChat(gw, {
      reasoning_effort: 'low',
      tools: [{ type: 'function', function: { name: 'search', parameters: { type: 'object' } } }],
    });
    expect(got.status).toBe(200);
    const ch = channels(got.raw).get(0);
    expect(ch?.get('reasoning_content')).toBe(thinking);
    expect(ch?.get('content')).toBe(NEAR_MISS_TEXT);
    expect(ch?.get('tool:0')).toBe(input);
    expect(got.raw).not.toContain('REDACTED');
  });

  it('a JSON answer with a large cached prompt (0 uncached, 180,000 read, 2,048 written) is counted as given', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          id: 'msg_01Cache',
          type: 'message',
          role: 'assistant',
          model: 'claude-sonnet-4-5-20250929',
          content: [{ type: 'text', text: 'Done.' }],
          stop_reason: 'end_turn',
          stop_sequence: null,
          usage: {
            input_tokens: 0,
            cache_creation_input_tokens: 2048,
            cache_read_input_tokens: 180000,
            cache_creation: { ephemeral_5m_input_tokens: 2048, ephemeral_1h_input_tokens: 0 },
            output_tokens: 42,
          },
        }),
      );
    });
    const gw = await anthropicGateway(up);
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...AUTH, 'x-request-id': 'usage-json-1' },
      body: JSON.stringify({ model: 'r', messages: MSG }),
    });
    const body = (await res.body.json()) as { usage: Json };
    expect(res.statusCode).toBe(200);
    expect(body.usage).toMatchObject({ prompt_tokens: 182048, completion_tokens: 42, total_tokens: 182090 });
    const samples = await scrape(gw.url);
    const labels = { provider: 'anth', model: 'claude-sonnet-4-5' };
    expect(value(samples, 'llm_router_tokens_total', { ...labels, kind: 'prompt' })).toBe(182048);
    expect(value(samples, 'llm_router_tokens_total', { ...labels, kind: 'completion' })).toBe(42);
    await until('the request line', () => requestLineOf(gw, 'usage-json-1') !== undefined);
    expect(requestLineOf(gw, 'usage-json-1')).toMatchObject({ promptTokens: 182048, completionTokens: 42 });
  });

  it('a stream whose message_delta repeats every count (as Claude now does) is counted as given', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(
        [
          messageStart({
            input_tokens: 12,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 180000,
            output_tokens: 1,
          }),
          { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
          { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Short answer.' } },
          { type: 'content_block_stop', index: 0 },
          {
            type: 'message_delta',
            delta: { stop_reason: 'end_turn', stop_sequence: null },
            usage: {
              input_tokens: 12,
              cache_creation_input_tokens: 0,
              cache_read_input_tokens: 180000,
              output_tokens: 350,
            },
          },
          { type: 'message_stop' },
        ]
          .map(sse)
          .join(''),
      );
    });
    const gw = await anthropicGateway(up);
    const got = await streamChat(gw, { stream_options: { include_usage: true } }, undefined, {
      'x-request-id': 'usage-stream-1',
    });
    expect(got.status).toBe(200);
    const usage = dataOf(got.raw)
      .filter((x) => x !== '[DONE]')
      .map((x) => JSON.parse(x) as Json)
      .find((c) => c.usage != null)?.usage;
    expect(usage).toMatchObject({ prompt_tokens: 180012, completion_tokens: 350, total_tokens: 180362 });
    const samples = await scrape(gw.url);
    const labels = { provider: 'anth', model: 'claude-sonnet-4-5' };
    expect(value(samples, 'llm_router_tokens_total', { ...labels, kind: 'prompt' })).toBe(180012);
    expect(value(samples, 'llm_router_tokens_total', { ...labels, kind: 'completion' })).toBe(350);
    await until('the request line', () => requestLineOf(gw, 'usage-stream-1') !== undefined);
    expect(requestLineOf(gw, 'usage-stream-1')).toMatchObject({
      promptTokens: 180012,
      completionTokens: 350,
    });
  });

  it('an answer whose usage says 0 output tokens (an empty answer) is counted as 0, not estimated', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          id: 'msg_01Empty',
          type: 'message',
          role: 'assistant',
          model: 'claude-sonnet-4-5-20250929',
          content: [],
          stop_reason: 'end_turn',
          stop_sequence: null,
          usage: {
            input_tokens: 7,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
            output_tokens: 0,
          },
        }),
      );
    });
    const gw = await anthropicGateway(up);
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...AUTH, 'x-request-id': 'usage-zero-1' },
      body: JSON.stringify({ model: 'r', messages: MSG }),
    });
    const body = (await res.body.json()) as { usage: Json };
    expect(res.statusCode).toBe(200);
    expect(body.usage).toMatchObject({ prompt_tokens: 7, completion_tokens: 0, total_tokens: 7 });
    const samples = await scrape(gw.url);
    const labels = { provider: 'anth', model: 'claude-sonnet-4-5' };
    expect(value(samples, 'llm_router_tokens_total', { ...labels, kind: 'prompt' })).toBe(7);
    expect(value(samples, 'llm_router_tokens_total', { ...labels, kind: 'completion' })).toBe(0);
    await until('the request line', () => requestLineOf(gw, 'usage-zero-1') !== undefined);
    expect(requestLineOf(gw, 'usage-zero-1')).toMatchObject({ promptTokens: 7, completionTokens: 0 });
  });
});

// ---------------------------------------------------------------------------------------------------------
// Passthrough answers

/** A Responses API stream's events, each `event:` + `data:`, numbered in order. */
function responsesEvents(list: Json[]): string[] {
  return list.map(
    (e, i) => `event: ${String(e.type)}\ndata: ${JSON.stringify({ ...e, sequence_number: i })}\n\n`,
  );
}

/** Each Responses channel's deltas joined (by type, item and indexes), from an SSE text. */
function responsesDeltas(raw: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const data of dataOf(raw)) {
    let obj: Json;
    try {
      obj = JSON.parse(data) as Json;
    } catch {
      continue;
    }
    if (typeof obj.delta !== 'string') continue;
    const k = [obj.type, obj.item_id, obj.output_index, obj.content_index, obj.summary_index].join('|');
    out.set(k, (out.get(k) ?? '') + obj.delta);
  }
  return out;
}

/** A Responses stream: reasoning summary, a message's text, a function call's arguments, each in `split` deltas. */
function responsesStream(
  text: string,
  split: (s: string) => string[],
): { events: string[]; expected: Map<string, string> } {
  const summary = `Summary: ${KEY.slice(0, 7)} keys, ${KEY.slice(0, 33)}… as an example.`;
  const args = JSON.stringify({
    prefix: KEY.slice(0, 16),
    url: '/v1/files?limit=10&after=abc',
    amp: 'a&amp;b',
  });
  const list: Json[] = [
    {
      type: 'response.created',
      response: { id: 'resp_1', object: 'response', status: 'in_progress', output: [] },
    },
    {
      type: 'response.output_item.added',
      output_index: 0,
      item: { id: 'rs_1', type: 'reasoning', summary: [] },
    },
    ...split(summary).map((delta) => ({
      type: 'response.reasoning_summary_text.delta',
      item_id: 'rs_1',
      output_index: 0,
      summary_index: 0,
      delta,
    })),
    {
      type: 'response.reasoning_summary_text.done',
      item_id: 'rs_1',
      output_index: 0,
      summary_index: 0,
      text: summary,
    },
    {
      type: 'response.output_item.added',
      output_index: 1,
      item: { id: 'msg_1', type: 'message', role: 'assistant', content: [] },
    },
    {
      type: 'response.content_part.added',
      item_id: 'msg_1',
      output_index: 1,
      content_index: 0,
      part: { type: 'output_text', text: '' },
    },
    ...split(text).map((delta) => ({
      type: 'response.output_text.delta',
      item_id: 'msg_1',
      output_index: 1,
      content_index: 0,
      delta,
      logprobs: [],
    })),
    { type: 'response.output_text.done', item_id: 'msg_1', output_index: 1, content_index: 0, text },
    {
      type: 'response.output_item.added',
      output_index: 2,
      item: { id: 'fc_1', type: 'function_call', name: 'f', arguments: '' },
    },
    ...split(args).map((delta) => ({
      type: 'response.function_call_arguments.delta',
      item_id: 'fc_1',
      output_index: 2,
      delta,
    })),
    { type: 'response.function_call_arguments.done', item_id: 'fc_1', output_index: 2, arguments: args },
    { type: 'response.completed', response: { id: 'resp_1', object: 'response', status: 'completed' } },
  ];
  const expected = new Map([
    ['response.reasoning_summary_text.delta|rs_1|0||0', summary],
    ['response.output_text.delta|msg_1|1|0|', text],
    ['response.function_call_arguments.delta|fc_1|2||', args],
  ]);
  return { events: responsesEvents(list), expected };
}

async function passthroughStream(gw: TestGateway, path = '/v1/responses'): Promise<Streamed> {
  const res = await request(`${gw.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...AUTH },
    body: JSON.stringify({ model: 'gpt-4.1', input: 'hi', stream: true }),
    headersTimeout: 20_000,
    bodyTimeout: 20_000,
  });
  const raw = await res.body.text();
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) out[k] = Array.isArray(v) ? v.join(',') : String(v);
  return { status: res.statusCode, headers: out, raw };
}

describe('passthrough answers whose text only resembles the provider key are relayed as sent', () => {
  it("a Responses stream with no delta ending in a key's start, in 5-byte TCP writes, is relayed byte for byte", async () => {
    // Deltas cut after spaces: none ends in a key's first characters, so none is held or written anew.
    const words = (t: string): string[] => t.match(/\S*\s*/g)?.filter((w) => w !== '') ?? [t];
    const { events } = responsesStream(NEAR_MISS_TEXT, words);
    const body = Buffer.from(events.join(''), 'utf8');
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8' });
      for (let at = 0; at < body.length; at += 5) await write(res, body.subarray(at, at + 5));
      res.end();
    });
    const gw = await gatewayFor(up);
    const got = await passthroughStream(gw);
    expect(got.status).toBe(200);
    expect(got.raw).toBe(body.toString('utf8'));
  });

  it("a Responses stream cut inside every near-miss: each channel's deltas join to its text, no event lost", async () => {
    const { events, expected } = responsesStream(NEAR_MISS_TEXT, (s) => cutAt(s, insideNearMisses(s)));
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (const e of events) await write(res, e);
      res.end();
    });
    const gw = await gatewayFor(up);
    const got = await passthroughStream(gw);
    expect(got.status).toBe(200);
    expect(Object.fromEntries(responsesDeltas(got.raw))).toEqual(Object.fromEntries(expected));
    expect(dataOf(got.raw)).toHaveLength(events.length);
    expect(got.raw).not.toContain('REDACTED');
  });

  it("a Responses delta that ends inside a near-miss is let go when the channel's next delta comes", async () => {
    const seen = gate(8000);
    const first = `Your keys start ${KEY.slice(0, 14)}`;
    const next = ' — and that is only a prefix.';
    const ev = (delta: string, i: number): string =>
      `event: response.output_text.delta\ndata: ${JSON.stringify({ type: 'response.output_text.delta', item_id: 'msg_1', output_index: 0, content_index: 0, delta, sequence_number: i })}\n\n`;
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      await write(res, ev(first, 1));
      await write(res, ev(next, 2));
      await seen.wait;
      res.end(
        `event: response.output_text.done\ndata: ${JSON.stringify({ type: 'response.output_text.done', item_id: 'msg_1', output_index: 0, content_index: 0, text: first + next, sequence_number: 3 })}\n\n`,
      );
    });
    const gw = await gatewayFor(up);
    const res = await request(`${gw.url}/v1/responses`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...AUTH },
      body: JSON.stringify({ model: 'gpt-4.1', input: 'hi', stream: true }),
      bodyTimeout: 20_000,
    });
    let raw = '';
    res.body.setEncoding('utf8');
    for await (const p of res.body as AsyncIterable<string>) {
      raw += p;
      if ([...responsesDeltas(raw).values()].join('') === first + next) seen.open();
    }
    expect(await seen.wait).toBe('client');
    expect([...responsesDeltas(raw).values()].join('')).toBe(first + next);
  });

  it('a Responses stream whose response.created echoes 1.5 MB of instructions, then near-miss deltas, arrives whole', async () => {
    // An event past the 1 Mi characters the mask reads is relayed as it comes; the events after it are read
    // again (c315bdc). Honest: a long system prompt echoed back in response.created.
    const instructions = `You are a helpful assistant. ${'Follow the policy &amp; be concise. '.repeat(42_000)}`;
    const created = responsesEvents([
      {
        type: 'response.created',
        response: { id: 'resp_big', object: 'response', status: 'in_progress', instructions },
      },
    ])[0]!;
    const { events, expected } = responsesStream(NEAR_MISS_TEXT, (t) => cutAt(t, insideNearMisses(t)));
    const all = Buffer.from(created + events.slice(1).join(''), 'utf8');
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (let at = 0; at < all.length; at += 64 * 1024) await write(res, all.subarray(at, at + 64 * 1024));
      res.end();
    });
    const gw = await gatewayFor(up);
    const got = await passthroughStream(gw);
    expect(got.status).toBe(200);
    expect(got.raw.startsWith(created)).toBe(true);
    expect(Object.fromEntries(responsesDeltas(got.raw))).toEqual(Object.fromEntries(expected));
    expect(dataOf(got.raw)).toHaveLength(events.length);
    expect(got.raw).not.toContain('REDACTED');
  });

  it('two Responses channels interleaved (parallel function calls), one paused inside a near-miss: both arrive whole', async () => {
    const a = JSON.stringify({ prefix: KEY.slice(0, 12), n: 1 });
    const b = JSON.stringify({ prefix: KEY.slice(0, 7), n: 2 });
    const cutA = cutAt(a, [[...a].indexOf('R') + 4]); // the first piece ends in "sk-live-Rt7K"
    const list: Json[] = [
      { type: 'response.function_call_arguments.delta', item_id: 'fc_a', output_index: 0, delta: cutA[0] },
      { type: 'response.function_call_arguments.delta', item_id: 'fc_b', output_index: 1, delta: b },
      { type: 'response.function_call_arguments.delta', item_id: 'fc_a', output_index: 0, delta: cutA[1] },
      { type: 'response.function_call_arguments.done', item_id: 'fc_a', output_index: 0, arguments: a },
      { type: 'response.function_call_arguments.done', item_id: 'fc_b', output_index: 1, arguments: b },
      { type: 'response.completed', response: { id: 'resp_1', status: 'completed' } },
    ];
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(responsesEvents(list).join(''));
    });
    const gw = await gatewayFor(up);
    const got = await passthroughStream(gw);
    const deltas = responsesDeltas(got.raw);
    expect(deltas.get('response.function_call_arguments.delta|fc_a|0||')).toBe(a);
    expect(deltas.get('response.function_call_arguments.delta|fc_b|1||')).toBe(b);
    expect(got.raw).not.toContain('REDACTED');
  });

  it('a Responses stream of 300 output items written item after item, cut inside near-misses, arrives whole', async () => {
    const N = 300;
    const list: Json[] = [];
    const texts: string[] = [];
    for (let i = 0; i < N; i++) {
      const text = `item ${i}: ${KEY.slice(0, 11)}-example and ${KEY.slice(0, 5)} 🙂`;
      texts.push(text);
      for (const delta of cutAt(text, insideNearMisses(text)))
        list.push({
          type: 'response.output_text.delta',
          item_id: `msg_${i}`,
          output_index: i,
          content_index: 0,
          delta,
        });
      list.push({
        type: 'response.output_text.done',
        item_id: `msg_${i}`,
        output_index: i,
        content_index: 0,
        text,
      });
    }
    list.push({ type: 'response.completed', response: { id: 'resp_1', status: 'completed' } });
    const events = responsesEvents(list);
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (let k = 0; k < events.length; k += 50) await write(res, events.slice(k, k + 50).join(''));
      res.end();
    });
    const gw = await gatewayFor(up);
    const got = await passthroughStream(gw);
    const deltas = responsesDeltas(got.raw);
    const wrong: number[] = [];
    for (let i = 0; i < N; i++)
      if (deltas.get(`response.output_text.delta|msg_${i}|${i}|0|`) !== texts[i]) wrong.push(i);
    expect(wrong).toEqual([]);
    expect(dataOf(got.raw)).toHaveLength(events.length);
  });

  it("a plain passthrough body (a file's content) in small writes cut inside near-misses is relayed byte for byte", async () => {
    const file = Buffer.from(
      `${NEAR_MISS_TEXT}\n${NEAR_MISS_TEXT.toUpperCase()}\nlast line ends ${KEY.slice(0, 7)}`,
      'utf8',
    );
    const cuts: number[] = [];
    for (let at = file.indexOf('sk-'); at !== -1; at = file.indexOf('sk-', at + 1))
      cuts.push(at + 2, at + 6, at + 11);
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
      let from = 0;
      for (const at of [...new Set(cuts)].sort((x, y) => x - y)) {
        if (at <= from || at >= file.length) continue;
        await write(res, file.subarray(from, at));
        from = at;
      }
      res.end(file.subarray(from));
    });
    const gw = await gatewayFor(up);
    const res = await request(`${gw.url}/v1/files/file-abc123/content`, { headers: AUTH });
    const got = Buffer.from(await res.body.arrayBuffer());
    expect(res.statusCode).toBe(200);
    expect(got.toString('utf8')).toBe(file.toString('utf8'));
  });

  it('a plain passthrough body with Content-Length, near-misses inside, keeps its bytes and its length', async () => {
    const json = Buffer.from(
      JSON.stringify({
        object: 'list',
        data: [{ id: 'file-1', filename: `notes ${KEY.slice(0, -1)}.txt`, purpose: 'assistants' }],
        note: NEAR_MISS_TEXT,
      }),
      'utf8',
    );
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(json.length) });
      const half = json.indexOf('sk-') + 9;
      await write(res, json.subarray(0, half));
      res.end(json.subarray(half));
    });
    const gw = await gatewayFor(up);
    const res = await request(`${gw.url}/v1/files`, { headers: AUTH });
    const got = Buffer.from(await res.body.arrayBuffer());
    expect(res.statusCode).toBe(200);
    expect(sha(got)).toBe(sha(json));
    expect(res.headers['content-length']).toBe(String(json.length));
  });

  it('a plain passthrough body paused inside a near-miss sends the held bytes with the next write', async () => {
    const seen = gate(8000);
    const first = `line one mentions ${KEY.slice(0, 14)}`;
    const next = ' only as a prefix\n';
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      await write(res, first);
      await write(res, next);
      await seen.wait;
      res.end('end\n');
    });
    const gw = await gatewayFor(up);
    const res = await request(`${gw.url}/v1/files/file-1/content`, { headers: AUTH, bodyTimeout: 20_000 });
    let raw = '';
    res.body.setEncoding('utf8');
    for await (const p of res.body as AsyncIterable<string>) {
      raw += p;
      if (raw.startsWith(first + next)) seen.open();
    }
    expect(await seen.wait).toBe('client');
    expect(raw).toBe(`${first}${next}end\n`);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Passthrough requests: queries, ids, uploads

describe('honest passthrough requests go through unchanged', () => {
  const QUERIES = [
    'limit=10&after=abc',
    'limit=10&order=desc&after=file-abc123',
    'include[]=file_search_call.results&include[]=message.output_text.logprobs',
    'purpose=batch&purpose=assistants',
    'after=&limit=',
    'flag',
    'q=%E4%B8%AD%E6%96%87%20%F0%9F%98%80&lang=zh',
    'q=a+b%2Bc&x=%7E~',
    `after=${CLIENT_KEY.slice(0, 20)}`,
    `after=${KEY.slice(0, -1)}`,
    `note=${encodeURIComponent(CLIENT_KEY.slice(0, -1))}&id=${ADMIN_KEY.slice(0, 14)}`,
  ];

  it('each honest query string reaches the provider exactly as the client wrote it', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"object":"list","data":[]}');
    });
    const gw = await gatewayFor(up);
    for (const q of QUERIES) {
      const res = await request(`${gw.url}/v1/files?${q}`, { headers: AUTH });
      await res.body.text();
      expect(res.statusCode, q).toBe(200);
      expect(up.got.at(-1)?.url, q).toBe(`/v1/files?${q}`);
    }
  });

  it('a Realtime WebSocket handshake keeps its honest query, and a session relays near-miss text as sent', async () => {
    const ws = await wsUpstream(track);
    const gw = await gatewayFor({ url: ws.url, got: [] });
    const { openClient } = wsClients(track, { record: (data) => data.toString('utf8') });
    const q = `model=gpt-4o-realtime-preview-2024-12-17&intent=transcription&after=${CLIENT_KEY.slice(0, 20)}&x=`;
    const client = await openClient(`${gw.url.replace('http', 'ws')}/v1/realtime?${q}`, { headers: AUTH });
    expect(ws.seen[0]?.url).toBe(`/v1/realtime?${q}`);
    const event = JSON.stringify({
      type: 'response.text.delta',
      response_id: 'resp_1',
      item_id: 'item_1',
      output_index: 0,
      content_index: 0,
      delta: NEAR_MISS_TEXT,
    });
    client.ws.send(event);
    await until('the echo', () => client.messages.length > 0, 10_000);
    expect(client.messages[0]).toBe(event);
  });

  it('with a base_url query (Azure api-version), each honest query keeps all its parameters and values', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"object":"list","data":[]}');
    });
    const gw = await gatewayFor(up, { provider: { base_url: `${up.url}/v1?api-version=2024-10-21` } });
    for (const q of QUERIES) {
      const res = await request(`${gw.url}/v1/files?${q}`, { headers: AUTH });
      await res.body.text();
      expect(res.statusCode, q).toBe(200);
      const sent = up.got.at(-1)?.url ?? '';
      expect(sent.split('?')[0], q).toBe('/v1/files');
      const params = [...new URLSearchParams(sent.slice(sent.indexOf('?') + 1))];
      expect(params, q).toEqual([...new URLSearchParams(q), ['api-version', '2024-10-21']]);
    }
  });

  const IDS = [
    '3f2b8c1e-9d4a-4f6b-8e2a-1c5d7e9f0a1b',
    'a'.repeat(64) + 'B'.repeat(63) + '9',
    'trace:2025-01-01/span=7f3a',
    'user@example.com+retry.1_a-b',
    'YWJjZGVmZ2hpamtsbW5vcA==',
    `${CLIENT_KEY.slice(0, 20)}-req-1`,
    `${KEY.slice(0, 24)}:job/42`,
  ];

  it('honest x-request-id values are echoed and logged, on routed and proxied requests alike', async () => {
    const up = await upstream((req, res, g) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      if (req.url?.startsWith('/v1/chat/completions'))
        res.end(
          JSON.stringify({
            id: 'chatcmpl-1',
            object: 'chat.completion',
            created: 1,
            model: String(bodyOf(g).model),
            choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
            usage: { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6 },
          }),
        );
      else res.end('{"object":"list","data":[]}');
    });
    const gw = await gatewayFor(up);
    for (const id of IDS) {
      const chat = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...AUTH, 'x-request-id': id },
        body: JSON.stringify({ model: 'r', messages: MSG }),
      });
      await chat.body.text();
      expect(chat.statusCode, id).toBe(200);
      expect(chat.headers['x-request-id'], id).toBe(id);
      const proxied = await request(`${gw.url}/v1/files`, { headers: { ...AUTH, 'x-request-id': id } });
      await proxied.body.text();
      expect(proxied.statusCode, id).toBe(200);
      expect(proxied.headers['x-request-id'], id).toBe(id);
    }
    await until(
      'every request line',
      () => gw.logs.filter((l) => l.msg === 'request').length >= IDS.length * 2,
    );
    for (const id of IDS)
      expect(
        gw.logs.filter((l) => l.msg === 'request' && l.reqId === id),
        id,
      ).toHaveLength(2);
  });

  it('honest x-request-id values are echoed on refusals too (401, 413, 404)', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
    const gw = await gatewayFor(up, { server: { body_limit_bytes: 1024 } });
    for (const id of IDS) {
      const unauthorized = await request(`${gw.url}/v1/files`, {
        headers: { authorization: 'Bearer sk-live-wrong-key-0000000000000000', 'x-request-id': id },
      });
      await unauthorized.body.text();
      expect(unauthorized.statusCode, id).toBe(401);
      expect(unauthorized.headers['x-request-id'], id).toBe(id);
      const tooLarge = await request(`${gw.url}/v1/files`, {
        method: 'POST',
        headers: { ...AUTH, 'x-request-id': id, 'content-type': 'application/octet-stream' },
        body: Buffer.alloc(2048, 0x61),
      });
      await tooLarge.body.text();
      expect(tooLarge.statusCode, id).toBe(413);
      expect(tooLarge.headers['x-request-id'], id).toBe(id);
      const unknown = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { ...AUTH, 'x-request-id': id, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'no-such-route', messages: MSG }),
      });
      await unknown.body.text();
      expect(unknown.statusCode, id).toBe(404);
      expect(unknown.headers['x-request-id'], id).toBe(id);
    }
  });

  it("an x-request-id that merely contains a local provider's placeholder key word is echoed", async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"object":"list","data":[]}');
    });
    // Ollama's documented client key is the word "ollama"; vLLM's examples use "EMPTY".
    const gw = await gatewayFor(up, {
      more: [{ name: 'local', base_url: `${up.url}/v1`, api_key: 'ollama', models: [{ name: 'llama3' }] }],
    });
    const id = 'ollama-bench-2025-0001';
    const res = await request(`${gw.url}/v1/files`, { headers: { ...AUTH, 'x-request-id': id } });
    await res.body.text();
    expect(res.headers['x-request-id']).toBe(id);
  });
});

describe('honest uploads near the passthrough body limit', () => {
  const LIMIT = 64 * 1024;

  async function uploadGateway(): Promise<{ up: Up; gw: TestGateway; host: string }> {
    const up = await upstream((_req, res, g) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: 'file-1', object: 'file', bytes: g.body.length, sha: sha(g.body) }));
    });
    const gw = await gatewayFor(up, { server: { body_limit_bytes: LIMIT } });
    return { up, gw, host: new URL(gw.url).host };
  }

  const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + 13) & 0xff));

  it('with Content-Length: one byte under and exactly at the limit reach the provider whole; one over gets 413', async () => {
    const { up, gw } = await uploadGateway();
    for (const n of [LIMIT - 1, LIMIT]) {
      const body = bytes(n);
      const res = await request(`${gw.url}/v1/files`, {
        method: 'POST',
        headers: { ...AUTH, 'content-type': 'application/octet-stream', 'content-length': String(n) },
        body,
      });
      const json = (await res.body.json()) as Json;
      expect(res.statusCode, String(n)).toBe(200);
      expect(json, String(n)).toMatchObject({ bytes: n, sha: sha(body) });
    }
    const over = await request(`${gw.url}/v1/files`, {
      method: 'POST',
      headers: { ...AUTH, 'content-type': 'application/octet-stream', 'content-length': String(LIMIT + 1) },
      body: bytes(LIMIT + 1),
    });
    await over.body.text();
    expect(over.statusCode).toBe(413);
    expect(up.got).toHaveLength(2);
  });

  it('chunked: one byte under and exactly at the limit reach the provider whole, on one keep-alive connection', async () => {
    const { up, gw, host } = await uploadGateway();
    const c = await rawClient(gw.url);
    for (const n of [LIMIT - 1, LIMIT]) {
      const body = bytes(n);
      const parts = [body.subarray(0, 1000), body.subarray(1000, 40_000), body.subarray(40_000)];
      c.send(chunkedRequest('POST', '/v1/files', parts, host));
      const a = await c.answer();
      expect(a.status, String(n)).toBe(200);
      expect(JSON.parse(a.body), String(n)).toMatchObject({ bytes: n, sha: sha(body) });
    }
    expect(up.got).toHaveLength(2);
    expect(c.closed).toBe(false);
  });

  it('chunked: one byte over the limit gets a 413, and the next request on that connection is served', async () => {
    const { up, gw, host } = await uploadGateway();
    const c = await rawClient(gw.url);
    const body = bytes(LIMIT + 1);
    c.send(chunkedRequest('POST', '/v1/files', [body.subarray(0, 30_000), body.subarray(30_000)], host));
    const first = await c.answer();
    expect(first.status).toBe(413);
    expect(JSON.parse(first.body)).toMatchObject({ error: { type: expect.any(String) } });
    c.send(getRequest('/v1/files?limit=1', host));
    const second = await c.answer();
    expect(second.status).toBe(200);
    const small = bytes(100);
    c.send(chunkedRequest('POST', '/v1/files', [small], host));
    const third = await c.answer();
    expect(third.status).toBe(200);
    expect(JSON.parse(third.body)).toMatchObject({ bytes: 100, sha: sha(small) });
    expect(up.got.filter((g) => g.method === 'GET')).toHaveLength(1);
  });

  it('chunked: an upload the provider refuses before reading it leaves the connection usable', async () => {
    let n = 0;
    const up = await upstream(
      (req, res) => {
        n++;
        if (req.method === 'POST') {
          res.writeHead(400, { 'content-type': 'application/json' });
          res.end(
            JSON.stringify({
              error: {
                message: 'Invalid file format: expected .jsonl & UTF-8 <= 512 MB',
                type: 'invalid_request_error',
                param: 'file',
                code: null,
              },
            }),
          );
          req.resume();
          return;
        }
        req.resume();
        req.on('end', () => {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end('{"object":"list","data":[]}');
        });
      },
      { readBody: false },
    );
    const gw = await gatewayFor(up, { server: { body_limit_bytes: 1024 * 1024 } });
    const host = new URL(gw.url).host;
    const c = await rawClient(gw.url);
    const body = bytes(256 * 1024);
    c.send(
      chunkedRequest('POST', '/v1/files', [body.subarray(0, 64 * 1024), body.subarray(64 * 1024)], host),
    );
    const first = await c.answer();
    expect(first.status).toBe(400);
    expect(JSON.parse(first.body)).toMatchObject({
      error: { message: 'Invalid file format: expected .jsonl & UTF-8 <= 512 MB' },
    });
    c.send(getRequest('/v1/files', host));
    const second = await c.answer();
    expect(second.status).toBe(200);
    expect(n).toBe(2);
  });

  it('an upload through undici with a streamed body of unknown length under the limit arrives whole', async () => {
    const { gw } = await uploadGateway();
    const body = bytes(LIMIT - 10);
    const res = await request(`${gw.url}/v1/files`, {
      method: 'POST',
      headers: { ...AUTH, 'content-type': 'application/octet-stream' },
      body: Readable.from([body.subarray(0, 5000), body.subarray(5000, 50_000), body.subarray(50_000)]),
    });
    const json = (await res.body.json()) as Json;
    expect(res.statusCode).toBe(200);
    expect(json).toMatchObject({ bytes: LIMIT - 10, sha: sha(body) });
  });
});

// ---------------------------------------------------------------------------------------------------------
// Honest errors

async function postChatJson(
  gw: TestGateway,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, unknown>; body: Json }> {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...AUTH, ...headers },
    body: JSON.stringify({ model: 'r', messages: MSG }),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, body: JSON.parse(text) as Json };
}

const messageOf = (body: Json): unknown => (body.error as Json | undefined)?.message;

describe('honest upstream errors reach the client readable', () => {
  it("a proxy's HTML 400 page with &amp; &#39; &quot; in its title: the title, its characters decoded", async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(400, { 'content-type': 'text/html' });
      res.end(
        '<!DOCTYPE html>\n<html><head><title>400 Bad Request: Tom &amp; Jerry&#39;s &quot;edge&quot; proxy</title></head>' +
          '<body><h1>400 Bad Request</h1><p>Your browser sent a request that this server could not understand.</p></body></html>',
      );
    });
    const gw = await gatewayFor(up);
    const got = await postChatJson(gw);
    expect(got.status).toBe(400);
    expect(messageOf(got.body)).toBe('400 Bad Request: Tom & Jerry\'s "edge" proxy');
  });

  it("a proxy's HTML 400 page whose title uses named entities past ASCII (&ndash; &eacute;) reads as text", async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(400, { 'content-type': 'text/html; charset=utf-8' });
      res.end(
        '<html><head><title>Erreur 400 &ndash; Requ&ecirc;te refus&eacute;e par le proxy</title></head>' +
          '<body><p>La requ&ecirc;te est invalide.</p></body></html>',
      );
    });
    const gw = await gatewayFor(up);
    const got = await postChatJson(gw);
    expect(got.status).toBe(400);
    expect(messageOf(got.body)).toBe('Erreur 400 – Requête refusée par le proxy');
  });

  it('a JSON 400 whose message holds <, >, & and a literal &amp; keeps it character for character', async () => {
    const message =
      'Invalid \'messages[0].content\': string too long (must be < 32768 & > 0 chars); got <b>x</b> and "a &amp; b" %20 &lowbar;';
    const up = await upstream((_req, res) => {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          error: {
            message,
            type: 'invalid_request_error',
            param: 'messages[0].content',
            code: 'string_above_max_length',
          },
        }),
      );
    });
    const gw = await gatewayFor(up);
    const got = await postChatJson(gw);
    expect(got.status).toBe(400);
    expect(got.body.error).toMatchObject({
      message,
      param: 'messages[0].content',
      code: 'string_above_max_length',
    });
  });

  it('a passthrough JSON 400 whose message holds <, & and near-misses of the key is relayed byte for byte', async () => {
    const body = JSON.stringify({
      error: {
        message: `Invalid purpose 'fine-tune<x>' & file ${KEY.slice(0, 20)}… not found; see "a &amp; b"`,
        type: 'invalid_request_error',
        param: 'purpose',
        code: null,
      },
    });
    const up = await upstream((_req, res) => {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(body);
    });
    const gw = await gatewayFor(up);
    const res = await request(`${gw.url}/v1/files`, {
      method: 'POST',
      headers: { ...AUTH, 'content-type': 'application/json' },
      body: '{}',
    });
    expect(res.statusCode).toBe(400);
    expect(await res.body.text()).toBe(body);
  });

  it('a JSON 400 cut to 1,000 characters just after "sk-live" (7 characters, no key) keeps them', async () => {
    // Long messages are cut to 1,000 characters and end in "…"; this one's cut falls after "sk-live", the
    // start of every key of the provider, which README lets through as written when a stream ends in it
    // ("fewer than 8 characters of a key ... go as written").
    const lead = 'Invalid value in messages[3].content: ';
    const message = `${lead}${'x'.repeat(1000 - lead.length - 'keys like sk-live'.length)}keys like sk-live-and more text after the cut`;
    const up = await upstream((_req, res) => {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message, type: 'invalid_request_error', param: null, code: null } }));
    });
    const gw = await gatewayFor(up);
    const got = await postChatJson(gw);
    expect(got.status).toBe(400);
    const m = String(messageOf(got.body));
    expect(m.endsWith('…')).toBe(true);
    expect(m).toContain('keys like sk-live');
    expect(m).not.toContain('[REDACTED]');
  });

  it('a 502 after honest 500s (JSON and an HTML 502 page) does not say x-should-retry: false', async () => {
    const failing = await upstream((_req, res) => {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          error: {
            message: 'The server had an error while processing your request. Sorry about that!',
            type: 'server_error',
            param: null,
            code: null,
          },
        }),
      );
    });
    const page = await upstream((_req, res) => {
      res.writeHead(502, { 'content-type': 'text/html' });
      res.end(
        '<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>',
      );
    });
    const gw = await gatewayFor(failing, {
      more: [
        {
          name: 'second',
          base_url: `${page.url}/v1`,
          api_key: `${KEY}2`,
          timeouts: RELAXED,
          models: [{ name: 'm' }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['up/m', 'second/m'] } },
    });
    const got = await postChatJson(gw);
    expect(got.status).toBe(502);
    expect(got.headers['x-router-attempts']).toBe('2');
    expect(got.headers['x-should-retry']).not.toBe('false');
  });

  it('the openai SDK retries a 502 that followed honest 500s (as it retries any 5xx)', async () => {
    const failing = await upstream((_req, res) => {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          error: { message: 'Internal error', type: 'server_error', param: null, code: null },
        }),
      );
    });
    const gw = await gatewayFor(failing);
    const client = new OpenAI({
      baseURL: `${gw.url}/v1`,
      apiKey: CLIENT_KEY,
      maxRetries: 1,
      timeout: 20_000,
    });
    await expect(
      client.chat.completions.create({ model: 'r', messages: [{ role: 'user', content: 'hi' }] }),
    ).rejects.toMatchObject({ status: 502 });
    expect(failing.got).toHaveLength(2);
  });
});
