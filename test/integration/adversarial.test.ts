/**
 * Hostile upstreams and hostile clients against the gateway's bounds: memory that must not grow with what
 * an upstream sends, work that must not grow faster than it, requests that must end within their bounds,
 * and failures that must never escape as an uncaught exception. Each upstream is a raw node:http server on
 * 127.0.0.1:0 that misbehaves exactly as its test says.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { createGzip } from 'node:zlib';
import { createParser } from 'eventsource-parser';
import { request } from 'undici';
import { describe, expect, it, vi } from 'vitest';
import { createSseParser, lfLineEnds } from '../../src/streaming/sse.js';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { mulberry32 } from '../helpers/random.js';

const track = closeAfterEach();
const TIMEOUTS = { connect_ms: 500, first_byte_ms: 2000, idle_ms: 2000, total_ms: 5000 };

interface RawUpstream {
  readonly url: string;
  hits(): number;
  /** Open connections to this upstream. */
  readonly sockets: Set<Socket>;
}

/** A raw upstream that calls `handler` once the request body has arrived. */
async function rawUpstream(
  handler: (req: IncomingMessage, res: ServerResponse, body: string) => void,
): Promise<RawUpstream> {
  let hits = 0;
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    hits++;
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d: string) => (body += d));
    req.on('end', () => handler(req, res, body));
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  track(closeableServer(server));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    hits: () => hits,
    sockets,
  };
}

function provider(name: string, url: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name,
    kind: 'openai',
    base_url: `${url}/v1`,
    timeouts: TIMEOUTS,
    models: [{ name: 'm' }],
    ...extra,
  };
}

async function gatewayOf(config: Record<string, unknown>): Promise<TestGateway> {
  return track(await startGateway(config));
}

/** The gateway still serves: a plain JSON request to its health endpoint answers. */
async function stillServing(gw: TestGateway): Promise<void> {
  const res = await request(`${gw.url}/healthz`);
  expect(res.statusCode).toBe(200);
  await res.body.dump();
}

describe('passthrough error bodies', () => {
  it('an error body past its 64 KiB bound, still streaming, is cut without an uncaught error', async () => {
    let upstreamClosed = false;
    const up = await rawUpstream((_q, res) => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      const block = Buffer.alloc(16 * 1024, 'x');
      const pump = (): void => {
        while (!res.destroyed && res.write(block));
      };
      res.on('drain', pump);
      res.on('close', () => (upstreamClosed = true));
      pump();
    });
    const gw = await gatewayOf({
      server: { passthrough: 'pt' },
      providers: [provider('pt', up.url)],
      routes: { r: { targets: ['pt/m'] } },
    });
    const res = await request(`${gw.url}/v1/files`);
    const text = await res.body.text();
    expect(res.statusCode).toBe(500);
    expect(text.length).toBeLessThanOrEqual(64 * 1024);
    await vi.waitFor(() => expect(upstreamClosed).toBe(true));
    await stillServing(gw);
  });
});

/** A non-streaming chat completion whose message is `content`. */
function completion(content: string): string {
  return JSON.stringify({
    id: 'chatcmpl-x',
    object: 'chat.completion',
    created: 1,
    model: 'm',
    choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
  });
}

/**
 * A chat on a tiered route whose rules never match, so the LLM router (served by `routerUrl`, tier fast) is
 * asked; its `default_tier` balanced is served by an upstream answering "served".
 */
async function askTiered(routerUrl: string) {
  const serve = await rawUpstream((_q, res) => res.end(completion('served')));
  const gw = await gatewayOf({
    providers: [provider('router', routerUrl), provider('bal', serve.url)],
    routes: {
      auto: {
        strategy: 'priority',
        tiers: { fast: ['router/m'], balanced: ['bal/m'] },
        default_tier: 'balanced',
        router: { tier: 'fast', timeout_ms: 2000 },
      },
    },
  });
  return request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'auto', messages: [{ role: 'user', content: 'which tier?' }] }),
  });
}

describe('the LLM router answer', () => {
  it('an answer of nested braces is read in work linear in its braces, not one JSON.parse per pair', async () => {
    // 200 nested objects, none with a `tier`: every `{` can open a candidate, every `}` close one.
    const hostile = `${'{"a":'.repeat(200)}1${'}'.repeat(200)}`;
    const router = await rawUpstream((_q, res) => res.end(completion(hostile)));
    const parse = vi.spyOn(JSON, 'parse');
    try {
      const res = await askTiered(router.url);
      expect(res.statusCode).toBe(200);
      expect(res.headers['x-router-tier']).toBe('balanced');
      expect(res.headers['x-router-tier-reason']).toContain('unparsable');
      await res.body.dump();
      // Before: 200 x 200 candidate spans, each parsed (and each parse reading up to the whole answer):
      // ~40,000 JSON.parse calls here, and 14 s of blocked event loop for a 4,000-character answer.
      expect(parse.mock.calls.length).toBeLessThan(1_000);
    } finally {
      parse.mockRestore();
    }
    expect(router.hits()).toBe(1);
  });

  it('an answer far larger than 80 tokens of JSON is refused unread, not buffered (up to 64 MiB) and parsed', async () => {
    const router = await rawUpstream((_q, res) => res.end(completion('fast '.repeat(100_000)))); // ~500 KB
    const res = await askTiered(router.url);
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    // Before: read whole (all ~500 KB) and parsed, to be found unparsable; now refused at 256 KiB, unread.
    expect(res.headers['x-router-tier']).toBe('balanced');
    expect(res.headers['x-router-tier-reason']).toContain('llm router failed; default_tier');
  });
});

/** A non-streaming chat on a route trying `badUrl` first and a good upstream ("from good") after it. */
async function chatFailingOverFrom(badUrl: string) {
  const good = await rawUpstream((_q, res) => res.end(completion('from good')));
  const gw = await gatewayOf({
    providers: [provider('bad', badUrl), provider('good', good.url)],
    routes: { r: { strategy: 'priority', targets: ['bad/m', 'good/m'] } },
  });
  return request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'r', messages: [{ role: 'user', content: 'hi' }] }),
  });
}

/** Each `data:` payload of an SSE body, in order. */
function dataEvents(body: string): string[] {
  return body
    .split('\n\n')
    .filter((e) => e.startsWith('data: '))
    .map((e) => e.slice('data: '.length));
}

/** Tool calls folded from a chat stream's chunks, as an OpenAI client folds them: index -> arguments. */
function toolArguments(body: string): string[] {
  const args: string[] = [];
  for (const data of dataEvents(body)) {
    if (data === '[DONE]') continue;
    const chunk = JSON.parse(data) as {
      choices?: { delta?: { tool_calls?: { index: number; function?: { arguments?: string } }[] } }[];
    };
    for (const call of chunk.choices?.[0]?.delta?.tool_calls ?? [])
      args[call.index] = (args[call.index] ?? '') + (call.function?.arguments ?? '');
  }
  return args;
}

function anthropicEvent(type: string, data: Record<string, unknown>): string {
  return `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
}

describe('the Anthropic stream translation', () => {
  it('tool blocks never stopped are each closed by the next start: one is held, not every one with its start input', async () => {
    const BLOCKS = 50;
    const bulk = 'z'.repeat(64 * 1024); // each start's input: held until its block stopped, which never came
    const up = await rawUpstream((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(anthropicEvent('message_start', { message: { id: 'msg_1', usage: { input_tokens: 1 } } }));
      for (let i = 0; i < BLOCKS; i++) {
        res.write(
          anthropicEvent('content_block_start', {
            index: i,
            content_block: { type: 'tool_use', id: `toolu_${i}`, name: 'f', input: { i, bulk } },
          }),
        );
      }
      res.write(
        anthropicEvent('message_delta', { delta: { stop_reason: 'tool_use' }, usage: { output_tokens: 1 } }),
      );
      res.end(anthropicEvent('message_stop', {}));
    });
    const gw = await gatewayOf({
      providers: [provider('anth', up.url, { kind: 'anthropic', base_url: up.url })],
      routes: { r: { targets: ['anth/m'] } },
    });
    const { status, body } = await streamFrom(gw);
    expect(status).toBe(200);
    // A block left open is closed by the next start (its call gets its start's input then, not at the end).
    const args = toolArguments(body);
    expect(args).toHaveLength(BLOCKS);
    args.forEach((a, i) => expect(JSON.parse(a)).toEqual({ i, bulk }));
    expect(body.endsWith('data: [DONE]\n\n')).toBe(true);
  });
});

/** A chat completion chunk with one choice per entry of `choices` ([index, content, finish_reason]). */
function chunkOf(choices: readonly [number, string, string | null][]): string {
  return `data: ${JSON.stringify({
    id: 'c',
    object: 'chat.completion.chunk',
    created: 1,
    model: 'm',
    choices: choices.map(([index, content, finish]) => ({
      index,
      delta: { content },
      finish_reason: finish,
    })),
  })}\n\n`;
}

async function streamFrom(
  gw: TestGateway,
): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'r', stream: true, messages: [{ role: 'user', content: 'hi' }] }),
  });
  return { status: res.statusCode, body: await res.body.text(), headers: res.headers };
}

describe('the OpenAI stream translation', () => {
  it('tracks a bounded number of choice indexes: past it, a close without [DONE] is a cut stream', async () => {
    // 5,000 distinct indexes, every one finished, then a close without [DONE]: each index was an entry the
    // gateway kept for the whole stream, however many an upstream invented.
    const INDEXES = 5_000;
    const up = await rawUpstream((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (let i = 0; i < INDEXES; i += 500) {
        const batch: [number, string, string][] = [];
        for (let j = i; j < i + 500; j++) batch.push([j, 'x', 'stop']);
        res.write(chunkOf(batch));
      }
      res.end();
    });
    const gw = await gatewayOf({ providers: [provider('a', up.url)], routes: { r: { targets: ['a/m'] } } });
    const { status, body } = await streamFrom(gw);
    expect(status).toBe(200);
    expect(dataEvents(body)).toHaveLength(INDEXES / 500 + 1); // every chunk relayed, then the error event
    expect(body).toContain('"code":"stream_interrupted"');
    expect(body).not.toContain('[DONE]');
  });
});

/**
 * An upstream answering 200 with `head`, then `block` after `block` for as long as its socket drains, up
 * to `capBytes`: how far it got shows whether anyone downstream applies back-pressure.
 */
async function floodingUpstream(
  contentType: string,
  head: string,
  block: string,
  capBytes: number,
): Promise<RawUpstream & { written(): number; stalled(): boolean; closed(): boolean }> {
  let written = 0;
  let waiting = false;
  let closed = false;
  let lastDrainAt = 0;
  const up = await rawUpstream((_q, res) => {
    res.writeHead(200, { 'content-type': contentType });
    res.write(head);
    const pump = (): void => {
      waiting = false;
      lastDrainAt = performance.now();
      while (!res.destroyed && written < capBytes) {
        written += block.length;
        if (!res.write(block)) {
          waiting = true;
          return;
        }
      }
    };
    res.on('drain', pump);
    res.on('close', () => (closed = true));
    pump();
  });
  return {
    ...up,
    written: () => written,
    // Waiting on a drain that has not come for a while: the bytes stopped moving.
    stalled: () => waiting && performance.now() - lastDrainAt > 300,
    closed: () => closed,
  };
}

/** A client that sends `head` (a whole HTTP/1.1 request) on a raw socket and never reads a byte. */
async function nonReadingClient(gw: TestGateway, head: string): Promise<Socket> {
  const { port } = new URL(gw.url);
  const socket = await new Promise<Socket>((resolve, reject) => {
    const s = connect(Number(port), '127.0.0.1', () => resolve(s));
    s.on('error', reject);
  });
  socket.pause();
  socket.write(head);
  return socket;
}

function postHead(path: string, body: string): string {
  return [
    `POST ${path} HTTP/1.1`,
    'host: 127.0.0.1',
    'content-type: application/json',
    `content-length: ${Buffer.byteLength(body)}`,
    '',
    body,
  ].join('\r\n');
}

describe('a client that never reads', () => {
  const CAP = 128 * 1024 * 1024;
  /** Socket buffers on loopback hold some MB between the two ends; a gateway that buffered would reach CAP. */
  const HELD_BY_SOCKETS = 40 * 1024 * 1024;

  it('of a chat stream: the upstream is back-pressured, and aborted at once when the client goes', async () => {
    const block = chunkOf([[0, 'y'.repeat(4000), null]]);
    const up = await floodingUpstream('text/event-stream', '', block, CAP);
    const gw = await gatewayOf({ providers: [provider('a', up.url)], routes: { r: { targets: ['a/m'] } } });
    const body = JSON.stringify({ model: 'r', stream: true, messages: [{ role: 'user', content: 'hi' }] });
    const client = await nonReadingClient(gw, postHead('/v1/chat/completions', body));
    await vi.waitFor(() => expect(up.stalled()).toBe(true), { timeout: 4000, interval: 50 });
    expect(up.written()).toBeLessThan(HELD_BY_SOCKETS);
    expect(up.closed()).toBe(false);
    client.destroy();
    await vi.waitFor(() => expect(up.closed()).toBe(true), { timeout: 1000 });
    await stillServing(gw);
  });

  it('of a passthrough download: the upstream is back-pressured, and aborted at once when the client goes', async () => {
    const up = await floodingUpstream('application/octet-stream', '', 'b'.repeat(64 * 1024), CAP);
    const gw = await gatewayOf({
      server: { passthrough: 'pt' },
      providers: [provider('pt', up.url)],
      routes: { r: { targets: ['pt/m'] } },
    });
    const client = await nonReadingClient(gw, 'GET /v1/files/f/content HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n');
    await vi.waitFor(() => expect(up.stalled()).toBe(true), { timeout: 4000, interval: 50 });
    expect(up.written()).toBeLessThan(HELD_BY_SOCKETS);
    expect(up.closed()).toBe(false);
    client.destroy();
    await vi.waitFor(() => expect(up.closed()).toBe(true), { timeout: 1000 });
    await stillServing(gw);
  });
});

describe('SSE line ends', () => {
  it('CR and CRLF turned into LF before parsing give the events eventsource-parser itself gives, however split', () => {
    const random = mulberry32(7); // seeded: a failing case is reproducible
    const ends = ['\n', '\r', '\r\n'];
    const end = (): string => ends[Math.floor(random() * ends.length)]!;
    for (let round = 0; round < 2000; round++) {
      let text = '';
      for (let i = 0, n = 1 + Math.floor(random() * 6); i < n; i++) {
        if (random() < 0.3) text += `event: t${i}${end()}`;
        text += `data: d${i}${end()}`;
        if (random() < 0.3) text += `data: more${i}${end()}`;
        if (random() < 0.2) text += `: ping${end()}`;
        text += end();
      }
      text += '\n'; // a CR last is the end of its line to us, possibly half a CRLF to a parser fed the text whole
      const want: string[] = [];
      const reference = createParser({ onEvent: (m) => want.push(`${m.event}|${m.data}`) });
      reference.feed(text);
      const got: string[] = [];
      const parser = createSseParser((type, data) => got.push(`${type}|${data}`));
      const bytes = Buffer.from(text);
      for (let at = 0; at < bytes.length;) {
        const len = Math.floor(random() * 5);
        parser.feed(bytes.subarray(at, at + len));
        at += len;
      }
      parser.end();
      expect(got, JSON.stringify(text)).toEqual(want);
    }
  });

  it('what reaches eventsource-parser holds no CR (its costly path: a read of LFs and one CR cost its length squared)', () => {
    const random = mulberry32(11);
    const pieces = ['\n', '\r', '\r\n', 'data: x', ': ping', ''];
    for (let round = 0; round < 500; round++) {
      const toLf = lfLineEnds();
      let text = '';
      let out = '';
      for (let i = 0; i < 12; i++) {
        const piece =
          pieces[Math.floor(random() * pieces.length)]! + pieces[Math.floor(random() * pieces.length)]!;
        text += piece;
        const fed = toLf(piece);
        expect(fed).not.toContain('\r');
        out += fed;
      }
      expect(out, JSON.stringify(text)).toBe(text.replace(/\r\n?/g, '\n'));
    }
  });

  it('CR and CRLF streams are relayed as LF streams', async () => {
    const up = await rawUpstream((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      // 2 MiB of blank lines, each 64 KiB ending in a lone CR: 18 ms of parsing a read before, 0.7 ms now.
      for (let i = 0; i < 32; i++) res.write(`${'\n'.repeat(64 * 1024 - 1)}\r`);
      res.write(chunkOf([[0, 'cr ', null]]).replaceAll('\n', '\r'));
      res.write(
        chunkOf([[0, 'crlf ', null]])
          .replaceAll('\n', '\r\n')
          .slice(0, -1),
      ); // its last LF comes next
      res.write(`\n${chunkOf([[0, 'lf', 'stop']])}`);
      res.end('data: [DONE]\r\n\r\n');
    });
    const gw = await gatewayOf({ providers: [provider('a', up.url)], routes: { r: { targets: ['a/m'] } } });
    const { status, body } = await streamFrom(gw);
    expect(status).toBe(200);
    const content = dataEvents(body)
      .filter((d) => d !== '[DONE]')
      .map((d) => (JSON.parse(d) as { choices: { delta: { content: string } }[] }).choices[0]!.delta.content)
      .join('');
    expect(content).toBe('cr crlf lf');
    expect(body.endsWith('data: [DONE]\n\n')).toBe(true);
  });
});

describe('error bodies', () => {
  it('a non-streaming 503 whose body never ends is cut at its 64 KiB bound and failed over, not read on', async () => {
    const CAP = 256 * 1024 * 1024;
    let written = 0;
    let closed = false;
    const bad = await rawUpstream((_q, res) => {
      res.writeHead(503, { 'content-type': 'text/plain' });
      const block = Buffer.alloc(64 * 1024, 'e');
      const pump = (): void => {
        while (!res.destroyed && written < CAP) {
          written += block.length;
          if (!res.write(block)) return;
        }
      };
      res.on('drain', pump);
      res.on('close', () => (closed = true));
      pump();
    });
    const res = await chatFailingOverFrom(bad.url);
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toContain('from good');
    expect(res.headers['x-router-trail']).toBe('bad/m=http_503');
    // Before: read on at loopback speed until the upstream stopped sending (here its cap), then idle_ms.
    expect(written).toBeLessThan(CAP / 4);
    expect(closed).toBe(true);
  });
});

describe('a client that goes away before its stream commits', () => {
  it('gets its upstream request aborted at once, while the upstream is still sending preamble and pings', async () => {
    let closed = false;
    let timer: NodeJS.Timeout | undefined;
    const up = await rawUpstream((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { role: 'assistant' } }] })}\n\n`);
      timer = setInterval(() => res.write(': ping\n\n'), 20);
      res.on('close', () => {
        clearInterval(timer);
        closed = true;
      });
    });
    const gw = await gatewayOf({ providers: [provider('a', up.url)], routes: { r: { targets: ['a/m'] } } });
    const body = JSON.stringify({ model: 'r', stream: true, messages: [{ role: 'user', content: 'hi' }] });
    const client = await nonReadingClient(gw, postHead('/v1/chat/completions', body));
    await vi.waitFor(() => expect(up.hits()).toBe(1));
    client.destroy();
    // Well within idle_ms and total_ms, which the pings would otherwise have kept at bay until total_ms.
    await vi.waitFor(() => expect(closed).toBe(true), { timeout: 1000 });
    clearInterval(timer);
    await stillServing(gw);
  });
});

describe('compressed streams', () => {
  it('a gzip stream inflating to one endless line is cut at the SSE event bound and failed over', async () => {
    const bad = await rawUpstream((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'content-encoding': 'gzip' });
      const gz = createGzip();
      gz.pipe(res);
      gz.write('data: {"x":"');
      // 64 MiB of one line: ~64 KiB on the wire.
      const block = Buffer.alloc(1024 * 1024, 'a');
      let n = 0;
      const pump = (): void => {
        while (n < 64 && !res.destroyed) {
          n++;
          if (!gz.write(block)) return void gz.once('drain', pump);
        }
      };
      pump();
    });
    const good = await rawUpstream((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunkOf([[0, 'from good', 'stop']]));
      res.end('data: [DONE]\n\n');
    });
    const gw = await gatewayOf({
      providers: [provider('bad', bad.url), provider('good', good.url)],
      routes: { r: { strategy: 'priority', targets: ['bad/m', 'good/m'] } },
    });
    const { status, body, headers } = await streamFrom(gw);
    expect(status).toBe(200);
    expect(headers['x-router-trail']).toBe('bad/m=sse_event_too_large');
    expect(body).toContain('from good');
  });

  it("response headers past undici's bound (16 KiB) fail over as headers_too_large", async () => {
    const bad = await rawUpstream((_q, res) => {
      const socket = res.socket!;
      socket.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n`);
      for (let i = 0; i < 2000; i++) socket.write(`x-junk-${i}: ${'j'.repeat(100)}\r\n`);
      socket.end('\r\n{}');
    });
    const res = await chatFailingOverFrom(bad.url);
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-router-trail']).toBe('bad/m=headers_too_large');
    expect(await res.body.text()).toContain('from good');
  });
});

describe('usage figures', () => {
  it('absurd usage (1e308, negative) is relayed as sent but not counted: the counters stay finite', async () => {
    const answer = JSON.parse(completion('x')) as Record<string, unknown>;
    answer.usage = { prompt_tokens: 1e308, completion_tokens: -5, total_tokens: 1e308 };
    const up = await rawUpstream((_q, res) => res.end(JSON.stringify(answer)));
    const priced = { models: [{ name: 'm', price: { input_per_mtok: 1, output_per_mtok: 1 } }] };
    const gw = await gatewayOf({
      providers: [provider('a', up.url, priced)],
      routes: { r: { targets: ['a/m'] } },
    });
    for (let i = 0; i < 2; i++) {
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'r', messages: [{ role: 'user', content: 'hi' }] }),
      });
      expect(res.statusCode).toBe(200);
      expect(await res.body.text()).toContain('"prompt_tokens":1e+308'); // the client gets what was sent
    }
    const metrics = await (await request(`${gw.url}/metrics`)).body.text();
    const counted = metrics.split('\n').filter((l) => /^llm_router_(tokens|cost_usd)_total\{/.test(l));
    expect(counted.length).toBeGreaterThan(0);
    for (const line of counted) expect(line, line).toMatch(/ \d+(\.\d+)?(e-\d+)?$/); // finite, never +Inf
  });
});
