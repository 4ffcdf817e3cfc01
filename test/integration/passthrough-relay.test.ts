/**
 * What the `/v1/*` passthrough forwards and relays (SPEC §4: any other /v1/* path is reverse-proxied; §8
 * secrets and body limits; README "HTTP surface"): the client's OpenAI-Organization and OpenAI-Project stay
 * behind with the client's key, every configured secret is scrubbed from a relayed 400, a 1 MiB error body is
 * cut to 64 KiB, and a chunked body past body_limit_bytes is a 413.
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';

const track = closeAfterEach();
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };

const PT_KEY = 'sk-pt-review2-SECRET-4242';
const ADMIN_KEY = 'adm-review2-SECRET-777';

interface RawUpstream {
  readonly url: string;
  readonly seen: { headers: IncomingHttpHeaders; bytes: number }[];
}

/** A plain HTTP upstream (bodies of any type): `handler` answers once the request body was read. */
async function rawUpstream(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<RawUpstream> {
  const seen: RawUpstream['seen'] = [];
  const server = createServer((req, res) => {
    let bytes = 0;
    req.on('data', (d: Buffer) => (bytes += d.length));
    req.on('end', () => {
      seen.push({ headers: req.headers, bytes });
      handler(req, res);
    });
    req.on('error', () => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  track(closeableServer(server));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

async function passthroughGateway(
  up: RawUpstream,
  server: Record<string, unknown> = {},
): Promise<TestGateway> {
  return track(
    await startGateway({
      server: { passthrough: 'pt', admin_key: ADMIN_KEY, ...server },
      providers: [
        { name: 'pt', base_url: `${up.url}/v1`, api_key: PT_KEY, timeouts: RELAXED, models: [{ name: 'm' }] },
      ],
      routes: { r: { strategy: 'priority', targets: ['pt/m'] } },
    }),
  );
}

describe('passthrough requests and error answers', () => {
  // The client's OpenAI-Organization and OpenAI-Project go with the client's key, which is replaced by the
  // provider's (SPEC §4): OpenAI answers our key with another organization's header with a 401.
  it("the client's OpenAI-Organization and OpenAI-Project are not forwarded with the provider's key", async () => {
    const up = await rawUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"object":"list","data":[]}');
    });
    const gw = await passthroughGateway(up);
    const res = await request(`${gw.url}/v1/files`, {
      headers: {
        authorization: 'Bearer client-key',
        'openai-organization': 'org-client',
        'openai-project': 'proj-client',
      },
    });
    expect(res.statusCode).toBe(200);
    await res.body.text();
    const h = up.seen[0]!.headers;
    expect(h.authorization).toBe(`Bearer ${PT_KEY}`);
    expect(h['openai-organization']).toBeUndefined();
    expect(h['openai-project']).toBeUndefined();
  });

  // SPEC §8: "the gateway scrubs every configured secret from any upstream error body it relays" — a 400
  // included, and every secret (here the admin key), not only the passthrough provider's own.
  it('a passthrough 400 that echoes configured secrets has every one scrubbed', async () => {
    const up = await rawUpstream((_req, res) => {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          error: {
            message: `bad: ${PT_KEY} ${ADMIN_KEY}`,
            type: 'invalid_request_error',
            param: null,
            code: null,
          },
        }),
      );
    });
    const gw = await passthroughGateway(up);
    const res = await request(`${gw.url}/v1/files`);
    const text = await res.body.text();
    expect(res.statusCode).toBe(400);
    expect(text).toContain('bad: ');
    expect(text).not.toContain(PT_KEY);
    expect(text).not.toContain(ADMIN_KEY);
  });

  // Error answers "are read (bounded) ... past it they are cut": a 1 MiB error body reaches the client cut
  // to 64 KiB.
  it('a 1 MiB passthrough error body is relayed cut to 64 KiB', async () => {
    const up = await rawUpstream((_req, res) => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('e'.repeat(1024 * 1024));
    });
    const gw = await passthroughGateway(up);
    const res = await request(`${gw.url}/v1/files`);
    const text = await res.body.text();
    expect(res.statusCode).toBe(500);
    expect(text.length).toBeGreaterThan(0);
    expect(text.length).toBeLessThanOrEqual(64 * 1024);
  });

  // SPEC §4/§8 and README: a body past server.body_limit_bytes gets 413 — one of unknown length (chunked)
  // too, counted as it streams: one byte past the limit is refused, the limit itself goes through.
  it('a chunked passthrough body one byte past body_limit_bytes is a 413; at the limit it goes through', async () => {
    const up = await rawUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"ok":true}');
    });
    const gw = await passthroughGateway(up, { body_limit_bytes: 4096 });
    const send = async (n: number) => {
      const res = await request(`${gw.url}/v1/files`, {
        method: 'POST',
        headers: { 'content-type': 'application/octet-stream' },
        body: Readable.from([Buffer.alloc(n - 1000, 1), Buffer.alloc(1000, 2)]),
      });
      await res.body.text();
      return res.statusCode;
    };
    expect(await send(4097)).toBe(413);
    expect(await send(4096)).toBe(200);
    expect(up.seen.filter((s) => s.bytes === 4096)).toHaveLength(1);
  });
});
