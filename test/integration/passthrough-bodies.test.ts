/**
 * The `/v1/*` passthrough as a pipe for every kind of body (SPEC §4 "any other /v1/* path is reverse-proxied
 * as is ... streaming bodies both ways"; §8 back-pressure, redirects never followed, secrets scrubbed; README
 * "HTTP surface" other `/v1/*` row and `server.body_limit_bytes`). A node:http upstream records the exact
 * bytes it was sent and answers exact bytes; clients are undici and raw sockets.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { createGzip, gzipSync } from 'node:zlib';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';

const track = closeAfterEach();
const PT_KEY = 'sk-pt-bodies-SECRET-5151';
const RELAXED = { connect_ms: 2000, first_byte_ms: 10000, idle_ms: 10000, total_ms: 60000 };
const MIB = 1024 * 1024;

interface Got {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  body: Buffer;
  ended: boolean;
}

interface Up {
  readonly url: string;
  readonly port: number;
  readonly got: Got[];
}

type Answer = (req: IncomingMessage, res: ServerResponse, got: Got) => void;

/** An upstream that reads each whole body (recording its bytes), then lets `answer` reply. */
async function upstream(answer: Answer, opts: { readBody?: boolean } = {}): Promise<Up> {
  const got: Got[] = [];
  const server = createServer({ maxHeaderSize: 64 * 1024 }, (req, res) => {
    const g: Got = {
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      body: Buffer.alloc(0),
      ended: false,
    };
    got.push(g);
    if (opts.readBody === false) {
      answer(req, res, g);
      return;
    }
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      g.body = Buffer.concat(parts);
      g.ended = true;
      answer(req, res, g);
    });
    req.on('error', () => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  track(closeableServer(server));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, port, got };
}

async function gatewayFor(
  up: Up,
  opts: { server?: Record<string, unknown>; provider?: Record<string, unknown>; basePath?: string } = {},
): Promise<TestGateway> {
  return track(
    await startGateway({
      server: { passthrough: 'pt', ...opts.server },
      providers: [
        {
          name: 'pt',
          base_url: `${up.url}${opts.basePath ?? '/v1'}`,
          api_key: PT_KEY,
          timeouts: RELAXED,
          models: [{ name: 'm' }],
          ...opts.provider,
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['pt/m'] } },
    }),
  );
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** One raw request over a fresh socket: the status line, headers, and raw body bytes (de-chunked). */
function rawRequest(
  gw: TestGateway,
  head: string,
  body: Buffer = Buffer.alloc(0),
): Promise<{ status: number; headers: Record<string, string>; body: Buffer }> {
  const port = Number(new URL(gw.url).port);
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => {
      s.write(`${head}\r\n\r\n`);
      if (body.length > 0) s.write(body);
    });
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.setTimeout(5000, () => s.destroy());
    s.on('close', () => {
      const raw = Buffer.concat(parts);
      const sep = raw.indexOf('\r\n\r\n');
      const top = raw.subarray(0, sep < 0 ? raw.length : sep).toString('latin1');
      const rest = sep < 0 ? Buffer.alloc(0) : raw.subarray(sep + 4);
      const [status = '', ...lines] = top.split('\r\n');
      const headers: Record<string, string> = {};
      for (const l of lines) {
        const c = l.indexOf(':');
        headers[l.slice(0, c).toLowerCase()] = l.slice(c + 1).trim();
      }
      const body = headers['transfer-encoding'] === 'chunked' ? unchunk(rest) : rest;
      resolve({ status: Number(status.split(' ')[1]), headers, body });
    });
    s.on('error', reject);
  });
}

function unchunk(body: Buffer): Buffer {
  const out: Buffer[] = [];
  for (let at = 0; ;) {
    const eol = body.indexOf('\r\n', at);
    if (eol < 0) break;
    const size = parseInt(body.subarray(at, eol).toString('latin1'), 16);
    if (!(size > 0)) break;
    out.push(body.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
  return Buffer.concat(out);
}

const H = 'Host: gw\r\nConnection: close';

describe('request bodies reach the upstream byte for byte', () => {
  it('binary bodies (octet-stream, audio/wav, a gzip upload) arrive identical with their headers', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"ok":true}');
    });
    const gw = await gatewayFor(up);
    const every = Buffer.alloc(2 * MIB);
    for (let i = 0; i < every.length; i++) every[i] = i % 256;
    const wav = Buffer.concat([
      Buffer.from('RIFF\x24\x08\x00\x00WAVEfmt ', 'latin1'),
      randomBytes(512 * 1024),
    ]);
    const gz = gzipSync(Buffer.from('{"purpose":"batch"}\n'.repeat(1000)));
    const sends: [string, string, Buffer, Record<string, string>][] = [
      ['/v1/uploads/upload_1/parts', 'application/octet-stream', every, {}],
      ['/v1/audio/transcriptions', 'audio/wav', wav, {}],
      ['/v1/files', 'application/jsonl', gz, { 'content-encoding': 'gzip' }],
    ];
    for (const [path, type, body, extra] of sends) {
      const r = await request(`${gw.url}${path}`, {
        method: 'POST',
        body,
        headers: { 'content-type': type, ...extra },
      });
      expect(r.statusCode, path).toBe(200);
      await r.body.text();
    }
    expect(
      up.got.map((g) => [g.url, g.headers['content-type'], sha(g.body), g.headers['content-encoding']]),
    ).toEqual(sends.map(([path, type, body, extra]) => [path, type, sha(body), extra['content-encoding']]));
  });

  it('a multipart upload streamed chunked, with no length, arrives whole with its boundary', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"id":"file-1"}');
    });
    const gw = await gatewayFor(up, { server: { body_limit_bytes: 64 * MIB } });
    const boundary = '----pt-bodies-7d1';
    const file = randomBytes(12 * MIB);
    const head = Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n` +
        `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\nContent-Type: application/octet-stream\r\n\r\n`,
    );
    const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
    const whole = Buffer.concat([head, file, tail]);
    async function* parts(): AsyncGenerator<Buffer> {
      for (let at = 0; at < whole.length; at += 300 * 1024) yield whole.subarray(at, at + 300 * 1024);
    }
    const r = await request(`${gw.url}/v1/files`, {
      method: 'POST',
      body: Readable.from(parts()),
      headers: { 'content-type': `multipart/form-data; boundary=${boundary}` },
    });
    expect(r.statusCode).toBe(200);
    expect(await r.body.json()).toEqual({ id: 'file-1' });
    expect(up.got[0]!.headers['content-type']).toBe(`multipart/form-data; boundary=${boundary}`);
    expect(up.got[0]!.body.length).toBe(whole.length);
    expect(sha(up.got[0]!.body)).toBe(sha(whole));
  });

  it('server.body_limit_bytes: a body exactly at the limit passes, one byte over gets 413 (declared or chunked)', async () => {
    const up = await upstream((_req, res, g) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ len: g.body.length }));
    });
    const gw = await gatewayFor(up, { server: { body_limit_bytes: 4096 } });
    const at = await rawRequest(
      gw,
      `POST /v1/files HTTP/1.1\r\n${H}\r\nContent-Type: application/octet-stream\r\nContent-Length: 4096`,
      Buffer.alloc(4096, 1),
    );
    expect(at.status).toBe(200);
    const over = await rawRequest(
      gw,
      `POST /v1/files HTTP/1.1\r\n${H}\r\nContent-Type: application/octet-stream\r\nContent-Length: 4097`,
      Buffer.alloc(4097, 1),
    );
    expect(over.status).toBe(413);
    expect(JSON.parse(over.body.toString()).error.code).toBe('payload_too_large');
    const chunkedAt = await rawRequest(
      gw,
      `POST /v1/files HTTP/1.1\r\n${H}\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked`,
      Buffer.from(`800\r\n${'a'.repeat(2048)}\r\n800\r\n${'b'.repeat(2048)}\r\n0\r\n\r\n`),
    );
    expect(chunkedAt.status).toBe(200);
    const chunkedOver = await rawRequest(
      gw,
      `POST /v1/files HTTP/1.1\r\n${H}\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked`,
      Buffer.from(`800\r\n${'a'.repeat(2048)}\r\n801\r\n${'b'.repeat(2049)}\r\n0\r\n\r\n`),
    );
    expect(chunkedOver.status).toBe(413);
    expect(up.got.filter((g) => g.ended).map((g) => g.body.length)).toEqual([4096, 4096]);
  });

  it('an upload declared past the limit and sent whole at once (no Expect): the client reads its 413, not a reset', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
    const gw = await gatewayFor(up, { server: { body_limit_bytes: 64 * 1024 } });
    for (let i = 0; i < 3; i++) {
      const r = await request(`${gw.url}/v1/files`, {
        method: 'POST',
        headers: { authorization: 'Bearer c', 'content-type': 'application/octet-stream' },
        body: Buffer.alloc(8 * MIB, 7),
      });
      expect(r.statusCode).toBe(413);
      expect(((await r.body.json()) as { error: { code: string } }).error.code).toBe('payload_too_large');
    }
    expect(up.got).toHaveLength(0);
  });

  it('an empty POST (with or without a content-type) reaches the upstream as an empty POST', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"object":"batch","status":"cancelling"}');
    });
    const gw = await gatewayFor(up);
    for (const ct of ['\r\nContent-Type: application/json', '']) {
      const r = await rawRequest(
        gw,
        `POST /v1/batches/batch_1/cancel HTTP/1.1\r\n${H}${ct}\r\nContent-Length: 0`,
      );
      expect(r.status).toBe(200);
    }
    expect(up.got.map((g) => [g.method, g.url, g.body.length])).toEqual([
      ['POST', '/v1/batches/batch_1/cancel', 0],
      ['POST', '/v1/batches/batch_1/cancel', 0],
    ]);
  });

  // Slow upload: the upstream stops reading the request body. A gateway that buffered the upload would let
  // the client push all of it; one with back-pressure holds the client at a few socket buffers' worth.
  it('an upload to an upstream that reads slowly gets back-pressure: the client cannot push 64 MB into the gateway', async () => {
    const total = 64 * MIB;
    let upstreamBytes = 0;
    let resume = (): void => undefined;
    const up = await upstream(
      (req, res) => {
        req.on('data', (d: Buffer) => {
          upstreamBytes += d.length;
          if (upstreamBytes > 256 * 1024 && resume === noop) {
            req.pause();
            resume = () => req.resume();
          }
        });
        req.on('end', () => {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ bytes: upstreamBytes }));
        });
      },
      { readBody: false },
    );
    const noop = resume;
    const gw = await gatewayFor(up, { server: { body_limit_bytes: 128 * MIB } });
    let pulled = 0;
    const chunk = Buffer.alloc(256 * 1024, 9);
    async function* body(): AsyncGenerator<Buffer> {
      while (pulled < total) {
        pulled += chunk.length;
        yield chunk;
      }
    }
    const answer = request(`${gw.url}/v1/files`, {
      method: 'POST',
      body: Readable.from(body()),
      headers: { 'content-type': 'application/octet-stream' },
    });
    const deadline = Date.now() + 10_000;
    while (resume === noop && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(resume).not.toBe(noop);
    await new Promise((r) => setTimeout(r, 1500));
    // Loopback socket buffers on both hops hold a few MB; 64 MB pushed means the gateway soaked it up.
    expect(pulled, 'bytes the client could push while the upstream read nothing').toBeLessThan(32 * MIB);
    resume();
    const r = await answer;
    expect(r.statusCode).toBe(200);
    expect(await r.body.json()).toEqual({ bytes: total });
  });
});

describe('paths and queries', () => {
  it('repeated, encoded and bare query keys, encoded slashes and a 12 KB path reach the upstream as sent', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
    const gw = await gatewayFor(up);
    const paths = [
      '/v1/files?a=1&b=2&a=3&%61=4&c=a+b&d=%2B&flag&include[]=x&include[]=y&f=%25',
      '/v1/vector_stores/vs_1/files/dir%2Fname.txt',
      `/v1/files/${'f'.repeat(12_000)}`,
    ];
    for (const path of paths) {
      const r = await rawRequest(gw, `GET ${path} HTTP/1.1\r\n${H}`);
      expect(r.status, path.slice(0, 60)).toBe(200);
    }
    expect(up.got.map((g) => g.url)).toEqual(paths);
  });

  it('`..` segments and a `//host` path never leave the provider base path nor reach another host', async () => {
    let stray = 0;
    const other = await upstream((_req, res) => {
      stray++;
      res.end('stray');
    });
    const up = await upstream((_req, res, g) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ url: g.url }));
    });
    const gw = await gatewayFor(up, { basePath: '/api/v1' });
    const attempts = [
      '/v1/../admin',
      '/v1/files/../../../admin',
      '/v1/files/%2e%2e%2f%2e%2e%2fadmin',
      '/v1/files/..%2F..%2Fadmin',
      `/v1//127.0.0.1:${other.port}/x`,
      `/v1/http://127.0.0.1:${other.port}/x`,
    ];
    for (const path of attempts) {
      const r = await rawRequest(gw, `GET ${path} HTTP/1.1\r\n${H}`);
      if (r.status === 200) {
        const { url } = JSON.parse(r.body.toString()) as { url: string };
        expect(url.startsWith('/api/v1/'), `${path} -> ${url}`).toBe(true);
      } else expect(r.status, path).toBe(400);
    }
    expect(stray).toBe(0);
    for (const g of up.got) expect(g.url.startsWith('/api/v1/'), g.url).toBe(true);
  });

  it('binary audio/mpeg from /v1/audio/speech, sent in odd pieces (some ending in the first bytes of the key), is identical', async () => {
    const audio = Buffer.concat([
      randomBytes(100_000),
      Buffer.from(PT_KEY.slice(0, 6)),
      randomBytes(77_777),
      Buffer.from('s'),
      randomBytes(150_001),
    ]);
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'audio/mpeg' });
      // Pieces that end right after the key's first bytes: held back by the mask only until the next one.
      const cuts = [0, 100_006, 177_783, 177_784, audio.length];
      let i = 0;
      const next = (): void => {
        if (i + 1 >= cuts.length) {
          res.end();
          return;
        }
        res.write(audio.subarray(cuts[i], cuts[i + 1]));
        i++;
        setTimeout(next, 20);
      };
      next();
    });
    const gw = await gatewayFor(up);
    const r = await request(`${gw.url}/v1/audio/speech`, {
      method: 'POST',
      body: '{"model":"tts-1","input":"hi","voice":"alloy"}',
      headers: { 'content-type': 'application/json' },
    });
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-type']).toBe('audio/mpeg');
    const got = Buffer.from(await r.body.arrayBuffer());
    expect(got.length).toBe(audio.length);
    expect(sha(got)).toBe(sha(audio));
  });

  // SPEC §8 masks the key an upstream echoes; a provider whose key is a placeholder (vLLM's `EMPTY`, a
  // local server's `none`) is common, and masking that word in every successful answer corrupts answers.
  it('a placeholder api_key (`none`) does not rewrite ordinary words in successful answers', async () => {
    const answer =
      '{"id":"resp_1","object":"response","status":"completed","tool_choice":"none","reasoning":{"effort":"none","summary":null},"output_text":"none of them"}';
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(answer);
    });
    const gw = await gatewayFor(up, { provider: { api_key: 'none' } });
    const r = await request(`${gw.url}/v1/responses/resp_1`);
    expect(r.statusCode).toBe(200);
    expect(await r.body.text()).toBe(answer);
  });

  it('a 64 MB gzip download (decoded by the gateway for masking) streams to a slow reader without buffering', async () => {
    const total = 64 * MIB;
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-encoding': 'gzip' });
      const gz = createGzip();
      gz.pipe(res);
      let sent = 0;
      const zeros = Buffer.alloc(MIB);
      const pump = (): void => {
        while (sent < total) {
          sent += zeros.length;
          if (!gz.write(zeros)) {
            gz.once('drain', pump);
            return;
          }
        }
        gz.end();
      };
      pump();
    });
    const gw = await gatewayFor(up);
    global.gc?.();
    const before = process.memoryUsage().rss;
    const r = await request(`${gw.url}/v1/files/file-1/content`);
    expect(r.statusCode).toBe(200);
    let got = 0;
    let peak = before;
    let nonZero = 0;
    let first = true;
    for await (const c of r.body as AsyncIterable<Buffer>) {
      got += c.length;
      for (let i = 0; i < c.length; i += 4096) if (c[i] !== 0) nonZero++;
      if (first) {
        first = false;
        // A slow reader: nothing read for a while, the rest of the body has to wait somewhere.
        await new Promise((res) => setTimeout(res, 1500));
        peak = Math.max(peak, process.memoryUsage().rss);
      }
    }
    peak = Math.max(peak, process.memoryUsage().rss);
    expect(got).toBe(total);
    expect(nonZero).toBe(0);
    expect(peak - before, 'resident memory grew by the body size').toBeLessThan(48 * MIB);
  });

  it('SSE from /v1/responses is relayed event by event, not held until the end', async () => {
    let release = (): void => undefined;
    const released = new Promise<void>((r) => (release = r));
    const first = 'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n';
    const second = 'event: response.completed\ndata: {"type":"response.completed","sequence_number":1}\n\n';
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(first);
      void Promise.race([released, new Promise((r) => setTimeout(r, 5000))]).then(() => res.end(second));
    });
    const gw = await gatewayFor(up);
    const r = await request(`${gw.url}/v1/responses`, {
      method: 'POST',
      body: '{"model":"gpt-4o","input":"hi","stream":true}',
      headers: { 'content-type': 'application/json' },
    });
    expect(r.statusCode).toBe(200);
    const it = (r.body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    let text = '';
    while (!text.includes('\n\n')) {
      const { value, done } = await it.next();
      if (done) break;
      text += (value as Buffer).toString();
    }
    expect(text, 'first event before the upstream sent the second').toBe(first);
    release();
    for (;;) {
      const { value, done } = await it.next();
      if (done) break;
      text += (value as Buffer).toString();
    }
    expect(text).toBe(first + second);
  });

  it('a chunked answer with trailers reaches the client with its body whole', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/jsonl', trailer: 'x-checksum' });
      res.write('{"a":1}\n');
      res.write('{"b":2}\n');
      res.addTrailers({ 'x-checksum': 'abc' });
      res.end();
    });
    const gw = await gatewayFor(up);
    const r = await request(`${gw.url}/v1/files/file-1/content`, { headers: { te: 'trailers' } });
    expect(r.statusCode).toBe(200);
    expect(await r.body.text()).toBe('{"a":1}\n{"b":2}\n');
  });
});

describe('answers without a body', () => {
  it('HEAD is relayed with the upstream headers (content-length included) and no body', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-length': '123456',
        etag: '"f1"',
      });
      res.end();
    });
    const gw = await gatewayFor(up);
    const r = await rawRequest(gw, `HEAD /v1/files/file-1/content HTTP/1.1\r\n${H}`);
    expect(r.status).toBe(200);
    expect(r.headers['content-length']).toBe('123456');
    expect(r.headers.etag).toBe('"f1"');
    expect(r.body.length).toBe(0);
    expect(up.got[0]!.method).toBe('HEAD');
  });

  // The gateway decodes a compressed success answer to mask echoed secrets; a HEAD or a 304 has no body to
  // decode (decoding nothing as gzip would fail): its headers are relayed as they are.
  it('HEAD of a gzip-encoded resource is a 200, not a 500', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, {
        'content-type': 'application/jsonl',
        'content-encoding': 'gzip',
        'content-length': '4242',
      });
      res.end();
    });
    const gw = await gatewayFor(up);
    const r = await rawRequest(gw, `HEAD /v1/files/file-1/content HTTP/1.1\r\n${H}`);
    expect(r.status).toBe(200);
    expect(r.body.length).toBe(0);
  });

  it('a 304 that carries Content-Encoding: gzip is relayed as a 304, not a 500', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(304, { etag: '"v7"', 'content-encoding': 'gzip' });
      res.end();
    });
    const gw = await gatewayFor(up);
    const r = await rawRequest(gw, `GET /v1/files/file-1/content HTTP/1.1\r\n${H}\r\nIf-None-Match: "v7"`);
    expect(r.status, r.body.toString()).toBe(304);
    expect(r.headers.etag).toBe('"v7"');
    expect(r.body.length).toBe(0);
  });
});

describe('statuses are relayed as they are', () => {
  it('201, 202 and a 206 to a Range request keep their status, headers and bytes', async () => {
    const file = randomBytes(1000);
    const up = await upstream((_req, res, g) => {
      if (g.url === '/v1/files') {
        res.writeHead(201, { 'content-type': 'application/json' });
        res.end('{"id":"file-1"}');
      } else if (g.url === '/v1/batches') {
        res.writeHead(202, { 'content-type': 'application/json' });
        res.end('{"id":"batch_1","status":"validating"}');
      } else {
        res.writeHead(206, {
          'content-type': 'application/octet-stream',
          'content-range': 'bytes 100-199/1000',
          'content-length': '100',
        });
        res.end(file.subarray(100, 200));
      }
    });
    const gw = await gatewayFor(up);
    const created = await request(`${gw.url}/v1/files`, {
      method: 'POST',
      body: 'x',
      headers: { 'content-type': 'text/plain' },
    });
    expect(created.statusCode).toBe(201);
    expect(await created.body.text()).toBe('{"id":"file-1"}');
    const accepted = await request(`${gw.url}/v1/batches`, {
      method: 'POST',
      body: '{}',
      headers: { 'content-type': 'application/json' },
    });
    expect(accepted.statusCode).toBe(202);
    expect(await accepted.body.text()).toBe('{"id":"batch_1","status":"validating"}');
    const part = await request(`${gw.url}/v1/files/file-1/content`, { headers: { range: 'bytes=100-199' } });
    expect(part.statusCode).toBe(206);
    expect(part.headers['content-range']).toBe('bytes 100-199/1000');
    expect(sha(Buffer.from(await part.body.arrayBuffer()))).toBe(sha(file.subarray(100, 200)));
    expect(up.got[2]!.headers.range).toBe('bytes=100-199');
  });

  it('404, 409 and 422 error bodies are relayed with their status and text (UTF-8 included)', async () => {
    const bodies: Record<string, [number, string]> = {
      '/v1/files/nope': [
        404,
        '{"error":{"message":"No such File object: nope","type":"invalid_request_error","param":"id","code":null}}',
      ],
      '/v1/uploads/u1/complete': [
        409,
        '{"error":{"message":"Upload déjà terminé — état ✓","type":"invalid_request_error","param":null,"code":"conflict"}}',
      ],
      '/v1/batches': [
        422,
        '{"error":{"message":"invalid jsonl line 3","type":"invalid_request_error","param":"input_file_id","code":null}}',
      ],
    };
    const up = await upstream((_req, res, g) => {
      const [status, text] = bodies[g.url]!;
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(text);
    });
    const gw = await gatewayFor(up);
    for (const [path, [status, text]] of Object.entries(bodies)) {
      const r = await request(`${gw.url}${path}`, {
        method: path === '/v1/files/nope' ? 'GET' : 'POST',
        body: path === '/v1/files/nope' ? undefined : '{}',
        headers: { 'content-type': 'application/json' },
      });
      expect(r.statusCode, path).toBe(status);
      expect(await r.body.text(), path).toBe(text);
    }
  });

  // Error bodies are read to be scrubbed; one in a declared non-UTF-8 charset must not be re-encoded.
  it('a 422 error body in ISO-8859-1 (as it declares) is relayed with its bytes unchanged', async () => {
    const latin = Buffer.from('Fichier refusé: caractère non valide', 'latin1');
    const up = await upstream((_req, res) => {
      res.writeHead(422, { 'content-type': 'text/plain; charset=iso-8859-1' });
      res.end(latin);
    });
    const gw = await gatewayFor(up);
    const r = await request(`${gw.url}/v1/files`, {
      method: 'POST',
      body: 'x',
      headers: { 'content-type': 'text/plain' },
    });
    expect(r.statusCode).toBe(422);
    expect(r.headers['content-type']).toBe('text/plain; charset=iso-8859-1');
    const got = Buffer.from(await r.body.arrayBuffer());
    expect(got.toString('latin1')).toBe(latin.toString('latin1'));
  });

  it('redirects (302, 307 with a body) are relayed, never followed', async () => {
    const up = await upstream((_req, res, g) => {
      if (g.url === '/v1/files/moved') res.writeHead(302, { location: '/v1/files/file-9' });
      else if (g.url === '/v1/files') res.writeHead(307, { location: '/v1/uploads' });
      else res.writeHead(200);
      res.end();
    });
    const gw = await gatewayFor(up);
    const moved = await request(`${gw.url}/v1/files/moved`);
    expect(moved.statusCode).toBe(302);
    expect(moved.headers.location).toBe('/v1/files/file-9');
    await moved.body.dump();
    const temp = await request(`${gw.url}/v1/files`, {
      method: 'POST',
      body: 'abc',
      headers: { 'content-type': 'text/plain' },
    });
    expect(temp.statusCode).toBe(307);
    await temp.body.dump();
    expect(up.got.map((g) => `${g.method} ${g.url}`)).toEqual(['GET /v1/files/moved', 'POST /v1/files']);
  });

  // A relative Location under the provider's base path is mapped back onto the gateway's /v1 (an existing
  // test pins that); the same Location written absolute (what many servers send) is mapped too, so the client
  // is not sent straight to the provider's address, past the gateway and its key.
  it('an absolute Location on the provider origin is mapped back like a relative one', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(301, { location: `${upRef.url}/api/v1/files/file-2` });
      res.end();
    });
    const upRef = up;
    const gw = await gatewayFor(up, { basePath: '/api/v1' });
    const r = await request(`${gw.url}/v1/files/old`);
    expect(r.statusCode).toBe(301);
    await r.body.dump();
    expect(up.got).toHaveLength(1);
    expect(r.headers.location).not.toContain(`127.0.0.1:${up.port}`);
  });
});
