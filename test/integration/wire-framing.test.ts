/**
 * Bytes and framing: SSE and JSON exactly as their specs allow them (WHATWG SSE: CR, LF and CRLF line ends,
 * `data:` with or without its space, multi-line data, comments, `id:`/`retry:`/`event:` fields, a BOM, a last
 * event without its blank line; RFC 8259 JSON with a BOM, charset or not, chunked or not, compressed; SPEC §8
 * "compressed answers are relayed intact or decoded correctly"), written by hand-made upstreams with
 * deliberate TCP write splits (inside multi-byte characters too). The client must get the same text content,
 * in a well-formed SSE stream of its own (each event `data: ...\n\n`, `[DONE]` last).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { startMock, startRawUpstream } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;
const SSE = { 'content-type': 'text/event-stream' };

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Writes `parts` as separate TCP writes (a short pause between them so they do not coalesce), then ends. */
async function trickle(res: ServerResponse, parts: (string | Buffer)[], gapMs = 8): Promise<void> {
  for (const p of parts) {
    if (res.destroyed) return;
    res.write(p);
    await sleep(gapMs);
  }
  res.end();
}

/** `bytes` cut at each offset in `cuts` (ascending). */
function cutAt(bytes: Buffer, cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let from = 0;
  for (const c of cuts) {
    if (c > from && c < bytes.length) {
      out.push(bytes.subarray(from, c));
      from = c;
    }
  }
  out.push(bytes.subarray(from));
  return out;
}

const chunkJson = (delta: Json, finish: string | null = null, extra: Json = {}): string =>
  JSON.stringify({
    id: 'chatcmpl-w',
    object: 'chat.completion.chunk',
    created: 1,
    model: 'm',
    choices: [{ index: 0, delta, finish_reason: finish }],
    ...extra,
  });

/** An OpenAI stream of `pieces` as content deltas, framed with `eol` and `data:` spelt `prefix`. */
function openaiStream(
  pieces: string[],
  opts: { eol?: string; prefix?: string; done?: boolean; usage?: Json; finalBlank?: boolean } = {},
): string {
  const eol = opts.eol ?? '\n';
  const prefix = opts.prefix ?? 'data: ';
  const ev = (data: string): string => `${prefix}${data}${eol}${eol}`;
  let s = ev(chunkJson({ role: 'assistant', content: '' }));
  for (const p of pieces) s += ev(chunkJson({ content: p }));
  s += ev(chunkJson({}, 'stop'));
  if (opts.usage)
    s += ev(
      JSON.stringify({
        id: 'chatcmpl-w',
        object: 'chat.completion.chunk',
        created: 1,
        model: 'm',
        choices: [],
        usage: opts.usage,
      }),
    );
  if (opts.done !== false) s += ev('[DONE]');
  if (opts.finalBlank === false) s = s.slice(0, s.length - 2 * eol.length) + eol; // last event: one line end only
  return s;
}

const COMPLETION = (
  content: string,
  usage: Json = { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 },
): Json => ({
  id: 'chatcmpl-j',
  object: 'chat.completion',
  created: 1,
  model: 'm',
  choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
  usage,
});

async function openaiGateway(url: string): Promise<TestGateway> {
  return track(
    await startGateway({
      providers: [{ name: 'up', kind: 'openai', base_url: `${url}/v1`, models: [{ name: 'm' }] }],
      routes: { r: { strategy: 'priority', targets: ['up/m'] } },
    }),
  );
}

async function anthropicGateway(url: string): Promise<TestGateway> {
  return track(
    await startGateway({
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: url,
          api_key: 'sk-ant-x',
          models: [{ name: 'claude-sonnet-4-5' }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['anth/claude-sonnet-4-5'] } },
    }),
  );
}

const sdk = (gw: TestGateway): OpenAI =>
  new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0, timeout: 20_000 });

/** Streams through the openai SDK: the concatenated content, the finish reason, the last usage. */
async function sdkStream(
  gw: TestGateway,
  extra: Json = {},
): Promise<{ text: string; finish: string | null; usage: unknown }> {
  const stream = await sdk(gw).chat.completions.create({
    model: 'r',
    stream: true,
    messages: [{ role: 'user', content: 'hi' }],
    ...extra,
  } as unknown as OpenAI.Chat.ChatCompletionCreateParamsStreaming);
  let text = '';
  let finish: string | null = null;
  let usage: unknown;
  for await (const c of stream) {
    text += c.choices[0]?.delta?.content ?? '';
    finish = c.choices[0]?.finish_reason ?? finish;
    if (c.usage) usage = c.usage;
  }
  return { text, finish, usage };
}

/** A raw streaming POST: status, the raw body text, headers. */
async function rawStream(
  gw: TestGateway,
  extra: Json = {},
): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer k' },
    body: JSON.stringify({ model: 'r', stream: true, messages: [{ role: 'user', content: 'hi' }], ...extra }),
  });
  const buf = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, body: buf.toString('utf8'), headers: res.headers };
}

/**
 * The gateway's own SSE, checked for form: LF line ends only, every event a run of `data: ` lines closed by a
 * blank line, `[DONE]` last; returns the content deltas joined.
 */
function clientContent(body: string): string {
  expect(body).not.toContain('\r');
  expect(body.endsWith('\n\n')).toBe(true);
  const events = body.slice(0, -2).split('\n\n');
  let text = '';
  for (const e of events) {
    const lines = e.split('\n');
    for (const l of lines)
      expect(l.startsWith('data: '), `malformed line ${JSON.stringify(l.slice(0, 80))}`).toBe(true);
    const data = lines.map((l) => l.slice(6)).join('\n');
    if (data === '[DONE]') continue;
    const obj = JSON.parse(data) as { choices?: { delta?: { content?: string } }[] };
    text += obj.choices?.[0]?.delta?.content ?? '';
  }
  expect(events.at(-1)).toBe('data: [DONE]');
  return text;
}

describe('OpenAI SSE: line ends, fields and splits the SSE spec allows', () => {
  // A byte order mark may open an event stream (the SSE decoder strips one); TCP may deliver it in pieces.
  // The body's form (SSE or one JSON answer) is told from its first bytes, a mark cut across reads included.
  for (const cut of [1, 2]) {
    it(`a BOM split after its byte ${cut} (separate TCP writes) still opens a clean stream`, async () => {
      const bytes = Buffer.concat([
        Buffer.from([0xef, 0xbb, 0xbf]),
        Buffer.from(openaiStream(['Hel', 'lo'])),
      ]);
      const up = await startRawUpstream(track, (_q, res) => {
        res.writeHead(200, SSE);
        void trickle(res, cutAt(bytes, [cut, 3, 40]));
      });
      const gw = await openaiGateway(up.url);
      const r = await rawStream(gw);
      expect(r.status).toBe(200);
      expect(clientContent(r.body)).toBe('Hello');
    });
  }

  it('CRLF, lone CR, LF and mixed line ends, cut at every 7th byte: same content, LF-framed output', async () => {
    const pieces = ['Hé', 'llo ', '世界', ' 😀', '\n', '\u2028\u0085\r', 'end'];
    const variants = [
      openaiStream(pieces, { eol: '\r\n' }),
      openaiStream(pieces, { eol: '\r' }),
      openaiStream(pieces, { eol: '\n', prefix: 'data:' }),
      // mixed: every event uses another line end
      openaiStream(pieces, { eol: '\n' })
        .split('\n\n')
        .map((e, i) => e + ['\r\n\r\n', '\r\r', '\n\r\n', '\r\n\n'][i % 4])
        .join('')
        .replace(/(\r\n\r\n|\r\r|\n\r\n|\r\n\n)$/, '\r\n\r\n'),
    ];
    let n = 0;
    const up = await startRawUpstream(track, (_q, res) => {
      const bytes = Buffer.from(variants[n++ % variants.length]!);
      res.writeHead(200, SSE);
      const cuts: number[] = [];
      for (let i = 7; i < bytes.length; i += 7) cuts.push(i);
      void trickle(res, cutAt(bytes, cuts), 1);
    });
    const gw = await openaiGateway(up.url);
    for (let i = 0; i < variants.length; i++) {
      const r = await rawStream(gw);
      expect(r.status, `variant ${i}`).toBe(200);
      expect(clientContent(r.body), `variant ${i}`).toBe(pieces.join(''));
    }
  });

  it('comments, id:, retry:, event: message, a multi-line data event and blank lines: one clean answer', async () => {
    const multi = chunkJson({ content: 'two' })
      .replace('"choices"', '\n"choices"')
      .split('\n')
      .map((l) => `data: ${l}`)
      .join('\n');
    const body =
      ': ping\n\n' +
      'retry: 1000\n\n' +
      `id: 1\nevent: message\ndata: ${chunkJson({ role: 'assistant', content: '' })}\n\n` +
      '\n\n' +
      `id: 2\ndata: ${chunkJson({ content: 'one ' })}\n: inline comment\n\n` +
      `${multi}\n\n` +
      ': ping\n\n' +
      `data: ${chunkJson({}, 'stop')}\n\n` +
      'data: [DONE]\n\n';
    const up = await startRawUpstream(track, (_q, res) => {
      res.writeHead(200, SSE);
      void trickle(res, cutAt(Buffer.from(body), [5, 30, 120, 200, 260]));
    });
    const gw = await openaiGateway(up.url);
    const r = await rawStream(gw);
    expect(r.status).toBe(200);
    expect(clientContent(r.body)).toBe('one two');
    const s = await sdkStream(gw);
    expect(s.text).toBe('one two');
    expect(s.finish).toBe('stop');
  });

  it('every multi-byte character cut at every byte offset inside it: content byte for byte', async () => {
    // emoji (4 bytes), CJK (3), e + combining acute (1 + 2), a raw-UTF-8 surrogate-pair emoji and the same
    // emoji written as the JSON escapes \ud83d\ude00
    const content = 'a😀b中c\u0301d🇫🇷e';
    const frameText = `data: ${chunkJson({ content })}\n\n`;
    const escaped = `data: ${chunkJson({ content: 'x' }).replace('"x"', '"x\\ud83d\\ude00y"')}\n\n`;
    const frame = Buffer.from(frameText);
    const start = frame.indexOf(Buffer.from(content));
    const cuts: number[][] = [];
    let at = start;
    for (const ch of content) {
      const len = Buffer.byteLength(ch);
      for (let k = 1; k < len; k++) cuts.push([at + k]);
      at += len;
    }
    let n = 0;
    const up = await startRawUpstream(track, (_q, res) => {
      const cut = cuts[n++ % cuts.length]!;
      res.writeHead(200, SSE);
      void trickle(
        res,
        [
          `data: ${chunkJson({ role: 'assistant', content: '' })}\n\n`,
          ...cutAt(frame, cut),
          Buffer.from(escaped),
          `data: ${chunkJson({}, 'stop')}\n\ndata: [DONE]\n\n`,
        ],
        3,
      );
    });
    const gw = await openaiGateway(up.url);
    for (let i = 0; i < cuts.length; i++) {
      const r = await rawStream(gw);
      expect(r.status).toBe(200);
      expect(clientContent(r.body), `cut at ${cuts[i]![0]}`).toBe(`${content}x😀y`);
    }
  });

  it('a last event without its blank line, no [DONE], finish_reason given: finished, [DONE] added', async () => {
    for (const eol of ['\n', '\r\n', '\r', '']) {
      const text = openaiStream(['fin', 'al'], { done: false }).replace(/\n\n$/, eol);
      const up = await startRawUpstream(track, (_q, res) => {
        res.writeHead(200, SSE);
        void trickle(res, cutAt(Buffer.from(text), [50]));
      });
      const gw = await openaiGateway(up.url);
      const r = await rawStream(gw);
      expect(r.status, JSON.stringify(eol)).toBe(200);
      expect(clientContent(r.body), JSON.stringify(eol)).toBe('final');
    }
  });

  it('1 MiB of content in one delta, written in 16 KiB pieces, and usage carried', async () => {
    const big = '€'.repeat((1024 * 1024) / 3) + 'z';
    const usage = { prompt_tokens: 3, completion_tokens: 349_526, total_tokens: 349_529 };
    const text = openaiStream([big], { usage });
    const up = await startRawUpstream(track, (_q, res) => {
      res.writeHead(200, SSE);
      const bytes = Buffer.from(text);
      const cuts: number[] = [];
      for (let i = 16 * 1024 + 1; i < bytes.length; i += 16 * 1024) cuts.push(i); // odd offsets: inside '€'
      void trickle(res, cutAt(bytes, cuts), 1);
    });
    const gw = await openaiGateway(up.url);
    const r = await rawStream(gw, { stream_options: { include_usage: true } });
    expect(r.status).toBe(200);
    const got = clientContent(r.body);
    expect(got.length).toBe(big.length);
    expect(got === big).toBe(true);
    const s = await sdkStream(gw, { stream_options: { include_usage: true } });
    expect(s.text === big).toBe(true);
    expect(s.usage).toEqual(usage);
  });

  it('2,000 one-character events, a few per TCP write: every character, in order', async () => {
    const pieces = Array.from({ length: 2000 }, (_, i) => String.fromCodePoint(0x4e00 + (i % 500)));
    const bytes = Buffer.from(openaiStream(pieces));
    const up = await startRawUpstream(track, (_q, res) => {
      res.writeHead(200, SSE);
      const cuts: number[] = [];
      for (let i = 997; i < bytes.length; i += 997) cuts.push(i);
      void trickle(res, cutAt(bytes, cuts), 1);
    });
    const gw = await openaiGateway(up.url);
    const s = await sdkStream(gw);
    expect(s.text).toBe(pieces.join(''));
    expect(s.finish).toBe('stop');
  });

  it('a gzip-encoded event stream, flushed event by event and cut mid-member: decoded for the client', async () => {
    const pieces = ['gz ', '😀', ' 中文'];
    const up = await startRawUpstream(track, (_q, res) => {
      res.writeHead(200, { ...SSE, 'content-encoding': 'gzip' });
      const bytes = gzipSync(Buffer.from(openaiStream(pieces, { eol: '\r\n' })));
      void trickle(res, cutAt(bytes, [5, 11, 17, 30, 45]), 3);
    });
    const gw = await openaiGateway(up.url);
    const r = await rawStream(gw);
    expect(r.status).toBe(200);
    expect(r.headers['content-encoding']).toBeUndefined();
    expect(clientContent(r.body)).toBe(pieces.join(''));
  });
});

describe('upstream error bodies: framed as real servers frame them', () => {
  const ERR = {
    error: {
      message: "This model's maximum context length is 8192 tokens",
      type: 'invalid_request_error',
      param: 'messages',
      code: 'context_length_exceeded',
    },
  };

  // SPEC §2: a 400 is returned to the client in OpenAI error shape, its message kept. A BOM before a JSON body
  // is stripped for non-streaming requests (text-handler.ts), so the same error must read the same on a stream.
  for (const stream of [false, true]) {
    it(`a 400 whose JSON error body opens with a BOM (stream: ${stream}): message and code kept`, async () => {
      const up = await startRawUpstream(track, (_q, res) => {
        res.writeHead(400, { 'content-type': 'application/json; charset=utf-8' });
        res.end(`\uFEFF${JSON.stringify(ERR)}`);
      });
      const gw = await openaiGateway(up.url);
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer k' },
        body: JSON.stringify({ model: 'r', stream, messages: [{ role: 'user', content: 'hi' }] }),
      });
      const json = (await res.body.json()) as { error: Json };
      expect(res.statusCode).toBe(400);
      expect(json.error.message).toBe(ERR.error.message);
      expect(json.error.code).toBe('context_length_exceeded');
      expect(json.error.param).toBe('messages');
    });
  }

  for (const stream of [false, true]) {
    it(`Anthropic: a 400 whose JSON error body opens with a BOM (stream: ${stream}): message kept`, async () => {
      const up = await startRawUpstream(track, (_q, res) => {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(
          `\uFEFF${JSON.stringify({ type: 'error', error: { type: 'invalid_request_error', message: 'messages.0.content: field required' } })}`,
        );
      });
      const gw = await anthropicGateway(up.url);
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer k' },
        body: JSON.stringify({ model: 'r', stream, messages: [{ role: 'user', content: 'hi' }] }),
      });
      const json = (await res.body.json()) as { error: Json };
      expect(res.statusCode).toBe(400);
      expect(json.error.message).toBe('messages.0.content: field required');
      expect(json.error.type).toBe('invalid_request_error');
    });
  }
});

describe('a refusal framed with a BOM still teaches its fit (README "OpenAI-dialect upstreams")', () => {
  // The refit happens whichever way the refusal is read: its JSON behind a BOM, on a stream or not.
  for (const stream of [false, true]) {
    it(`"Use 'max_completion_tokens' instead" behind a BOM (stream: ${stream}): fitted and answered`, async () => {
      const bodies: Json[] = [];
      const mock = await startMock((r, res) => {
        bodies.push(r.body);
        if ('max_tokens' in r.body) {
          res.writeHead(400, { 'content-type': 'application/json' });
          res.end(
            `\uFEFF${JSON.stringify({ error: { message: "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.", type: 'invalid_request_error', param: 'max_tokens', code: 'unsupported_parameter' } })}`,
          );
          return;
        }
        if (r.body.stream === true) {
          res.writeHead(200, SSE);
          res.end(openaiStream(['fitted']));
        } else {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify(COMPLETION('fitted')));
        }
      });
      track(mock);
      const gw = await openaiGateway(mock.url);
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer k' },
        body: JSON.stringify({
          model: 'r',
          stream,
          max_tokens: 50,
          messages: [{ role: 'user', content: 'hi' }],
        }),
      });
      const text = await res.body.text();
      expect(res.statusCode, text.slice(0, 300)).toBe(200);
      expect(
        stream
          ? clientContent(text)
          : (JSON.parse(text) as { choices: { message: { content: string } }[] }).choices[0]!.message.content,
      ).toBe('fitted');
      expect(bodies.at(-1)).toMatchObject({ max_completion_tokens: 50 });
    });
  }
});

describe('JSON answers: every framing RFC 8259 and HTTP allow', () => {
  const CONTENT = 'Ünïcödé 😀 中文 e\u0301 \u2028 "q" \\ end';
  const variants: { name: string; headers: Record<string, string>; body: () => Buffer; chunked: boolean }[] =
    [
      {
        name: 'BOM + charset=utf-8, content-length',
        headers: { 'content-type': 'application/json; charset=utf-8' },
        body: () => Buffer.from(`\uFEFF${JSON.stringify(COMPLETION(CONTENT))}`),
        chunked: false,
      },
      {
        name: 'no charset, chunked, cut inside characters',
        headers: { 'content-type': 'application/json' },
        body: () => Buffer.from(JSON.stringify(COMPLETION(CONTENT))),
        chunked: true,
      },
      {
        name: 'surrogate pairs as \\u escapes',
        headers: { 'content-type': 'application/json' },
        body: () => Buffer.from(JSON.stringify(COMPLETION(CONTENT)).replace('😀', '\\ud83d\\ude00')),
        chunked: true,
      },
      {
        name: 'pretty-printed with CRLF and a trailing newline',
        headers: { 'content-type': 'application/json' },
        body: () =>
          Buffer.from(JSON.stringify(COMPLETION(CONTENT), null, 2).replaceAll('\n', '\r\n') + '\r\n'),
        chunked: false,
      },
      {
        name: 'gzip',
        headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
        body: () => gzipSync(JSON.stringify(COMPLETION(CONTENT))),
        chunked: true,
      },
      {
        name: 'br',
        headers: { 'content-type': 'application/json', 'content-encoding': 'br' },
        body: () => brotliCompressSync(JSON.stringify(COMPLETION(CONTENT))),
        chunked: false,
      },
      {
        name: 'deflate (zlib)',
        headers: { 'content-type': 'application/json', 'content-encoding': 'deflate' },
        body: () => deflateSync(JSON.stringify(COMPLETION(CONTENT))),
        chunked: true,
      },
      {
        name: 'gzip of a BOM-opened body',
        headers: { 'content-type': 'application/json', 'content-encoding': 'GZIP' },
        body: () => gzipSync(`\uFEFF${JSON.stringify(COMPLETION(CONTENT))}`),
        chunked: true,
      },
    ];

  it('non-streaming: every variant gives the client the same content and usage', async () => {
    let n = 0;
    const up = await startRawUpstream(track, (_q: IncomingMessage, res) => {
      const v = variants[n++ % variants.length]!;
      const bytes = v.body();
      if (v.chunked) {
        res.writeHead(200, v.headers);
        const cuts: number[] = [];
        for (let i = 13; i < bytes.length; i += 13) cuts.push(i);
        void trickle(res, cutAt(bytes, cuts), 1);
      } else {
        res.writeHead(200, { ...v.headers, 'content-length': String(bytes.length) });
        res.end(bytes);
      }
    });
    const gw = await openaiGateway(up.url);
    for (const v of variants) {
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer k' },
        body: JSON.stringify({ model: 'r', messages: [{ role: 'user', content: 'hi' }] }),
      });
      const text = await res.body.text();
      expect(res.statusCode, `${v.name}: ${text.slice(0, 200)}`).toBe(200);
      expect(res.headers['content-encoding'], v.name).toBeUndefined();
      const json = JSON.parse(text) as { choices: { message: { content: string } }[]; usage: Json };
      expect(json.choices[0]!.message.content, v.name).toBe(CONTENT);
      expect(json.usage, v.name).toEqual({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
    }
  });

  it('streaming request answered by each JSON variant: a well-formed stream of the same content', async () => {
    let n = 0;
    const up = await startRawUpstream(track, (_q, res) => {
      const v = variants[n++ % variants.length]!;
      const bytes = v.body();
      res.writeHead(200, v.headers);
      const cuts: number[] = [];
      for (let i = 1; i < Math.min(bytes.length, 8); i++) cuts.push(i); // the first bytes one by one
      for (let i = 29; i < bytes.length; i += 29) cuts.push(i);
      void trickle(res, cutAt(bytes, cuts), 1);
    });
    const gw = await openaiGateway(up.url);
    for (const v of variants) {
      const r = await rawStream(gw);
      expect(r.status, `${v.name}: ${r.body.slice(0, 200)}`).toBe(200);
      expect(clientContent(r.body), v.name).toBe(CONTENT);
    }
  });
});

describe('Anthropic SSE: event/data pairs in every allowed framing', () => {
  const TEXT = ['Grüß ', '😀', ' 中文', ' e\u0301', '\n\n"q"'];
  function anthropicSse(eol: string, prefix: (field: string) => string): string {
    const events: Json[] = [
      {
        type: 'message_start',
        message: {
          id: 'msg_1',
          type: 'message',
          role: 'assistant',
          model: 'claude-sonnet-4-5',
          content: [],
          stop_reason: null,
          stop_sequence: null,
          usage: { input_tokens: 11, output_tokens: 1 },
        },
      },
      { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
      { type: 'ping' },
      ...TEXT.map((t) => ({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: t } })),
      { type: 'content_block_stop', index: 0 },
      {
        type: 'message_delta',
        delta: { stop_reason: 'end_turn', stop_sequence: null },
        usage: { output_tokens: 9 },
      },
      { type: 'message_stop' },
    ];
    return events
      .map(
        (e) => `${prefix('event')}${String(e.type)}${eol}${prefix('data')}${JSON.stringify(e)}${eol}${eol}`,
      )
      .join('');
  }

  it('CRLF / CR / no space after the colon, cut inside every multi-byte character: content and usage', async () => {
    const variants = [
      anthropicSse('\r\n', (f) => `${f}: `),
      anthropicSse('\r', (f) => `${f}:`),
      anthropicSse('\r\n', (f) => `${f}:`).replaceAll('\r\n\r\n', '\n\r\n'),
    ];
    let n = 0;
    const up = await startRawUpstream(track, (_q, res) => {
      const bytes = Buffer.from(variants[n++ % variants.length]!);
      res.writeHead(200, SSE);
      // cut inside every non-ASCII character, and after every CR
      const cuts: number[] = [];
      for (let i = 1; i < bytes.length; i++)
        if ((bytes[i]! & 0xc0) === 0x80 || bytes[i - 1] === 0x0d) cuts.push(i);
      void trickle(res, cutAt(bytes, cuts), 1);
    });
    const gw = await anthropicGateway(up.url);
    for (let i = 0; i < variants.length; i++) {
      const r = await rawStream(gw, { stream_options: { include_usage: true } });
      expect(r.status, `variant ${i}: ${r.body.slice(0, 200)}`).toBe(200);
      expect(clientContent(r.body), `variant ${i}`).toBe(TEXT.join(''));
      const usageEvents = r.body
        .split('\n\n')
        .filter((e) => e.includes('"usage"') && e.includes('"choices":[]'));
      expect(usageEvents.length, `variant ${i}`).toBe(1);
      const u = JSON.parse(usageEvents[0]!.slice(6)) as { usage: Json };
      expect(u.usage).toMatchObject({ prompt_tokens: 11, completion_tokens: 9, total_tokens: 20 });
    }
  });

  // As for the OpenAI dialect: a mark cut across reads still opens an event stream.
  for (const cut of [1, 2]) {
    it(`a BOM split after its byte ${cut} before \`event: message_start\`: translated, not failed`, async () => {
      const bytes = Buffer.from('\uFEFF' + anthropicSse('\n', (f) => `${f}: `));
      const up = await startRawUpstream(track, (_q, res) => {
        res.writeHead(200, SSE);
        void trickle(res, cutAt(bytes, [cut, 3, 60]));
      });
      const gw = await anthropicGateway(up.url);
      const r = await rawStream(gw);
      expect(r.status, r.body.slice(0, 200)).toBe(200);
      expect(clientContent(r.body)).toBe(TEXT.join(''));
    });
  }

  it('a last event without its blank line after message_delta (no message_stop): finished', async () => {
    const full = anthropicSse('\n', (f) => `${f}: `);
    const cut = full.slice(0, full.lastIndexOf('event: message_stop')).replace(/\n\n$/, '\n');
    const up = await startRawUpstream(track, (_q, res) => {
      res.writeHead(200, SSE);
      void trickle(res, cutAt(Buffer.from(cut), [40, 400]));
    });
    const gw = await anthropicGateway(up.url);
    const s = await sdkStream(gw);
    expect(s.text).toBe(TEXT.join(''));
    expect(s.finish).toBe('stop');
  });

  it('non-streaming Anthropic JSON with a BOM, gzip and surrogate escapes: content intact', async () => {
    const msg = {
      id: 'msg_2',
      type: 'message',
      role: 'assistant',
      model: 'claude-sonnet-4-5',
      content: [{ type: 'text', text: 'PLACEHOLDER' }],
      stop_reason: 'end_turn',
      stop_sequence: null,
      usage: { input_tokens: 5, output_tokens: 6 },
    };
    const body = `\uFEFF${JSON.stringify(msg).replace('PLACEHOLDER', 'a\\ud83d\\ude00b 中 e\\u0301')}`;
    const up = await startRawUpstream(track, (_q, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      const bytes = gzipSync(body);
      void trickle(res, cutAt(bytes, [3, 10, 20]), 2);
    });
    const gw = await anthropicGateway(up.url);
    const c = await sdk(gw).chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(c.choices[0]!.message.content).toBe('a😀b 中 e\u0301');
    expect(c.usage).toMatchObject({ prompt_tokens: 5, completion_tokens: 6 });
  });
});

describe('content-codings HTTP allows beyond one', () => {
  // RFC 9110 §8.4: codings are listed in the order applied. SPEC §8: relayed intact or decoded correctly.
  for (const stream of [false, true]) {
    it(`\`content-encoding: deflate, gzip\` (stream: ${stream}): decoded, or relayed intact`, async () => {
      const up = await startRawUpstream(track, (_q, res) => {
        const body = stream ? openaiStream(['two ', 'codings']) : JSON.stringify(COMPLETION('two codings'));
        res.writeHead(200, {
          'content-type': stream ? 'text/event-stream' : 'application/json',
          'content-encoding': 'deflate, gzip',
        });
        res.end(gzipSync(deflateSync(body)));
      });
      const gw = await openaiGateway(up.url);
      if (stream) {
        const r = await rawStream(gw);
        expect(r.status, r.body.slice(0, 200)).toBe(200);
        expect(clientContent(r.body)).toBe('two codings');
      } else {
        const res = await request(`${gw.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: 'Bearer k' },
          body: JSON.stringify({ model: 'r', messages: [{ role: 'user', content: 'hi' }] }),
        });
        const text = await res.body.text();
        expect(res.statusCode, text.slice(0, 200)).toBe(200);
        expect(
          (JSON.parse(text) as { choices: { message: { content: string } }[] }).choices[0]!.message.content,
        ).toBe('two codings');
      }
    });
  }
});
