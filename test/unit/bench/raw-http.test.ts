import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { RawPool, RawStreamConnection } from '../../../bench/raw-http.js';
import { runRateLoad } from '../../../bench/rate-load.js';

let server: Server | undefined;
let pool: RawPool | undefined;
let conn: RawStreamConnection | undefined;

afterEach(async () => {
  pool?.destroy();
  pool = undefined;
  conn?.destroy();
  conn = undefined;
  server?.closeAllConnections();
  await new Promise((r) => server?.close(r) ?? r(undefined));
  server = undefined;
});

/** A real server whose handler decides each answer; returns its URL. */
async function serve(handler: Parameters<typeof createServer>[1]): Promise<URL> {
  server = createServer(handler);
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  return new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/chat/completions`);
}

const post = (p: RawPool): Promise<number> =>
  new Promise((resolve, reject) => p.post((err, status) => (err ? reject(err) : resolve(status))));

describe('RawPool (the load generator client)', () => {
  it('sends the request bytes and reads Content-Length and chunked answers on one keep-alive connection', async () => {
    const seen: string[] = [];
    const sockets = new Set<unknown>();
    const url = await serve((req, res) => {
      sockets.add(req.socket);
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        seen.push(`${req.method} ${req.url} ${req.headers['content-type']} ${body}`);
        if (seen.length === 2) {
          // No Content-Length: Node sends it chunked, in pieces.
          res.writeHead(201, { 'content-type': 'application/json' });
          res.write('{"a":');
          setTimeout(() => res.end('1}'), 5);
        } else res.writeHead(200, { 'content-length': '2' }).end('{}');
      });
    });
    pool = new RawPool(url, '{"model":"m"}', 1);
    expect(await post(pool)).toBe(200);
    expect(await post(pool)).toBe(201);
    expect(await post(pool)).toBe(200);
    expect(seen).toEqual(Array(3).fill('POST /v1/chat/completions application/json {"model":"m"}'));
    expect(sockets.size).toBe(1);
  });

  it('queues requests beyond its connections and serves them in order as connections free up', async () => {
    let open = 0;
    let most = 0;
    const url = await serve((req, res) => {
      open++;
      most = Math.max(most, open);
      req.resume().on('end', () =>
        setTimeout(() => {
          open--;
          res.writeHead(200, { 'content-length': '0' }).end();
        }, 10),
      );
    });
    pool = new RawPool(url, '{}', 2);
    const statuses = await Promise.all(Array.from({ length: 6 }, () => post(pool!)));
    expect(statuses).toEqual(Array(6).fill(200));
    expect(most).toBe(2);
  });

  it('fails the request when the server closes the connection before answering, and recovers', async () => {
    let calls = 0;
    const url = await serve((req, res) => {
      if (++calls === 1) req.socket.destroy();
      else res.writeHead(200, { 'content-length': '0' }).end();
    });
    pool = new RawPool(url, '{}', 1);
    await expect(post(pool)).rejects.toThrow();
    expect(await post(pool)).toBe(200);
  });

  it('fails a request whose answer has neither Content-Length nor chunked encoding', async () => {
    const url = await serve((req, res) => {
      // HTTP/1.0-style answer: its end is the connection's close.
      req.socket.end('HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{}');
      res.detachSocket(req.socket);
    });
    pool = new RawPool(url, '{}', 1);
    await expect(post(pool)).rejects.toThrow(/Content-Length/);
  });

  it('counts only the measured window after the warm-up, and server errors as non-2xx', async () => {
    let calls = 0;
    const url = await serve((req, res) => {
      calls++;
      req.resume().on('end', () => res.writeHead(calls % 2 ? 200 : 500, { 'content-length': '0' }).end());
    });
    const result = await runRateLoad({
      url: url.href,
      body: '{}',
      rate: 200,
      durationMs: 200,
      connections: 4,
      warmupMs: 100,
    });
    expect(result.sent).toBe(60);
    expect(calls).toBe(60);
    expect(result.ok + result.non2xx).toBe(40);
    expect(result.non2xx).toBeGreaterThan(0);
    expect(result.errors).toBe(0);
    expect(result.p99Us).toBeGreaterThan(0);
  });
});

describe('RawStreamConnection (the streaming load client)', () => {
  const events = (url: URL, body = '{"stream":true}') => {
    conn ??= new RawStreamConnection(url, () => performance.now());
    const seen: string[] = [];
    const done = conn.stream(RawStreamConnection.request(url, body), (e) => seen.push(e));
    return { seen, done };
  };

  it('decodes chunked SSE split anywhere (chunk sizes, events, UTF-8 characters) and reuses its connection', async () => {
    const sockets = new Set<unknown>();
    const body = ['data: {"content":"h"}\n\ndata: {"con', 'tent":"é"}\n', '\ndata: [DONE]\n\n'];
    const wire = Buffer.concat([
      Buffer.from('HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n'),
      ...body.map((part) => {
        const bytes = Buffer.from(part);
        return Buffer.concat([Buffer.from(`${bytes.length.toString(16)}\r\n`), bytes, Buffer.from('\r\n')]);
      }),
      Buffer.from('0\r\n\r\n'),
    ]);
    const url = await serve((req) => {
      sockets.add(req.socket);
      req.resume().on('end', () => {
        // Three bytes at a time, so every boundary (inside a size line, an event, a character) is hit.
        let at = 0;
        const next = (): void => {
          if (at >= wire.length) return;
          req.socket.write(wire.subarray(at, (at += 3)));
          setImmediate(next);
        };
        next();
      });
    });
    const first = events(url);
    expect(await first.done).toEqual({ status: 200, ended: true });
    expect(first.seen).toEqual(['data: {"content":"h"}', 'data: {"content":"é"}', 'data: [DONE]']);
    const second = events(url);
    expect(await second.done).toEqual({ status: 200, ended: true });
    expect(second.seen).toEqual(first.seen);
    expect(sockets.size).toBe(1);
  });

  it('ends on a non-chunked (error) answer without parsing it as events', async () => {
    const url = await serve((req, res) => {
      req
        .resume()
        .on('end', () => res.writeHead(429, { 'content-type': 'application/json' }).end('{"error":{}}'));
    });
    const { seen, done } = events(url);
    expect(await done).toEqual({ status: 429, ended: true });
    expect(seen).toEqual([]);
  });

  it('rejects when the connection drops mid-stream, with the events read so far delivered', async () => {
    const url = await serve((req, res) => {
      req.resume().on('end', () => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write('data: {"content":"a"}\n\n');
        setTimeout(() => req.socket.destroy(), 10);
      });
    });
    const { seen, done } = events(url);
    await expect(done).rejects.toThrow();
    expect(seen).toEqual(['data: {"content":"a"}']);
  });
});
