/**
 * WebSocket upgrades (the OpenAI Realtime API) through the `/v1/*` passthrough, against a real `ws` upstream
 * on loopback: frames relayed both ways, the provider's key in place of the client's, close codes carried
 * across, a refused upstream handshake refused to the client, and no session outliving the gateway.
 */
import { createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { connect } from 'node:net';
import { describe, expect, it, vi } from 'vitest';
import { WebSocket, type RawData } from 'ws';
import { parseConfigText } from '../../src/config/load.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway } from '../helpers/gateway.js';
import {
  closeServer,
  gwPort,
  listen,
  openAIError,
  passthroughGateways,
  sleep,
  wsClients,
  wsUpstream,
  wsUrl,
  type Client,
  type Upstream,
} from '../helpers/ws.js';

const track = closeAfterEach();
const PT_KEY = 'sk-pt-SECRET-4242';
const CLIENT_KEY = 'client-key-7373';
const TIMEOUTS = { connect_ms: 500, first_byte_ms: 1000, idle_ms: 500, total_ms: 1000 };
/** Generous: a bound must fire around its time, and these tests must not flake on a loaded machine. */
const SLACK_MS = 2000;

/** What a client here keeps of each message: its text and its kind. */
type Message = { text: string; binary: boolean };

const { configOf, gateway } = passthroughGateways(track, { key: PT_KEY, timeouts: TIMEOUTS });
const { openClient, refusedHandshake } = wsClients<Message>(track, {
  record: (data, binary) => ({ text: String(data), binary }),
  deflate: true,
});

/**
 * A `ws` server that says `hello` as a session opens, then echoes every message as it came (text or binary),
 * but answers `headers` with its handshake's headers;
 * a plain HTTP request gets `{ path, body, upgrade }` back.
 */
function helloUpstream(
  opts: { handleProtocols?: (protocols: Set<string>) => string | false } = {},
): Promise<Upstream> {
  return wsUpstream(track, {
    handleProtocols: opts.handleProtocols,
    echo: false,
    ignoreErrors: false,
    onRequest: (req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (d: string) => (body += d));
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ path: req.url, body, upgrade: req.headers.upgrade ?? null }));
      });
    },
    onSession: (ws, req) => {
      ws.on('message', (data: RawData, isBinary: boolean) =>
        // `headers` asks for what it was sent, as an echo service (httpbin's /anything) would answer.
        ws.send(String(data) === 'headers' ? JSON.stringify(req.headers) : data, { binary: isBinary }),
      );
      ws.send('hello');
    },
  });
}

/** An HTTP server that answers every upgrade with `status` and a body echoing the credentials it was sent. */
async function refusingUpstream(status: number): Promise<string> {
  const server = createServer();
  const sockets = new Set<Socket>();
  server.on('upgrade', (req, socket: Socket) => {
    const body = JSON.stringify({
      error: { message: `refused ${String(req.headers.authorization)}`, type: 'x', param: null, code: null },
    });
    socket.end(
      `HTTP/1.1 ${status} Refused\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
        `connection: close\r\n\r\n${body}`,
    );
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await listen(server);
  track({ close: () => closeServer(server, sockets) });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** Accepts the connection, reads the upgrade request, never answers it; counts connections the gateway ended. */
async function silentUpstream(): Promise<{ url: string; ended: () => number; upgrades: () => number }> {
  const server = createServer();
  const sockets = new Set<Socket>();
  let upgrades = 0;
  let ended = 0;
  server.on('upgrade', (_req, socket: Socket) => {
    upgrades += 1;
    socket.on('end', () => (ended += 1));
    socket.resume();
  });
  server.on('connection', (s: Socket) => sockets.add(s));
  await listen(server);
  track({ close: () => closeServer(server, sockets) });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    ended: () => ended,
    upgrades: () => upgrades,
  };
}

/** Waits for the `count`-th message the client got. */
async function received(client: Client<Message>, count: number): Promise<void> {
  await vi.waitFor(() => expect(client.messages.length).toBeGreaterThanOrEqual(count));
}

describe('passthrough WebSocket relay (regression: the Realtime API was not proxied)', () => {
  it('relays text and binary frames both ways, to base_url path with the query kept', async () => {
    const up = await helloUpstream();
    const gw = await gateway(`${up.url}/api/v1`);
    const client = await openClient(wsUrl(gw, '/v1/realtime?model=gpt-realtime&x=a%20b'));
    await received(client, 1); // the upstream's greeting, sent as its side opened, is not lost
    client.ws.send('{"type":"session.update"}');
    client.ws.send(Buffer.from([0, 1, 2, 255]));
    await received(client, 3);
    expect(client.messages).toEqual([
      { text: 'hello', binary: false },
      { text: '{"type":"session.update"}', binary: false },
      { text: Buffer.from([0, 1, 2, 255]).toString(), binary: true },
    ]);
    expect(up.seen.map((s) => s.url)).toEqual(['/api/v1/realtime?model=gpt-realtime&x=a%20b']);
  });

  it('gives the upstream the provider key and headers, never the client key, organization or project', async () => {
    const up = await helloUpstream();
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY], headers: { 'X-Provider': 'p1' } });
    const client = await openClient(wsUrl(gw, '/v1/realtime?model=m'), {
      headers: {
        authorization: `Bearer ${CLIENT_KEY}`,
        'openai-organization': 'org-client',
        'openai-project': 'proj-client',
        'openai-beta': 'realtime=v1',
        'x-ordinary': 'kept',
      },
    });
    await received(client, 1);
    expect(up.seen).toHaveLength(1);
    const seen = up.seen[0]!.headers;
    expect(seen.authorization).toBe(`Bearer ${PT_KEY}`);
    expect(seen['x-provider']).toBe('p1');
    expect(seen['openai-beta']).toBe('realtime=v1');
    expect(seen['x-ordinary']).toBe('kept');
    expect(seen['openai-organization']).toBeUndefined();
    expect(seen['openai-project']).toBeUndefined();
    expect(JSON.stringify(seen)).not.toContain(CLIENT_KEY);
    // An upstream that hands back what we sent it does not hand the client our key.
    client.ws.send('headers');
    await received(client, 2);
    expect(client.messages[1]!.text).toContain('"authorization":"Bearer [REDACTED]"');
    expect(client.messages[1]!.text).not.toContain(PT_KEY);
  });

  it('accepts the client key as the browser SDK sends it (subprotocol), and never forwards it', async () => {
    const up = await helloUpstream({ handleProtocols: (p) => (p.has('realtime') ? 'realtime' : false) });
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const client = await openClient(wsUrl(gw, '/v1/realtime?model=m'), {
      protocols: ['realtime', `openai-insecure-api-key.${CLIENT_KEY}`],
    });
    expect(client.ws.protocol).toBe('realtime'); // the upstream's choice, never the key
    await received(client, 1);
    const seen = up.seen[0]!.headers;
    expect(seen['sec-websocket-protocol']).toBe('realtime');
    expect(seen.authorization).toBe(`Bearer ${PT_KEY}`);
    expect(JSON.stringify(seen)).not.toContain(CLIENT_KEY);

    const wrong = await refusedHandshake(wsUrl(gw, '/v1/realtime?model=m'), {
      protocols: ['realtime', 'openai-insecure-api-key.not-the-key'],
    });
    expect(wrong.status).toBe(401);
    expect(up.seen).toHaveLength(1);
  });

  it('carries close codes and reasons across, both ways', async () => {
    const up = await helloUpstream();
    const gw = await gateway(`${up.url}/v1`);

    const a = await openClient(wsUrl(gw, '/v1/realtime'));
    await received(a, 1);
    a.ws.close(4001, 'client done');
    expect(await a.closed).toEqual({ code: 4001, reason: 'client done' });
    await vi.waitFor(() => expect(up.ended).toEqual([{ code: 4001, reason: 'client done' }]));

    const b = await openClient(wsUrl(gw, '/v1/realtime'));
    await received(b, 1);
    up.peers[1]!.close(4002, 'upstream done');
    expect(await b.closed).toEqual({ code: 4002, reason: 'upstream done' });
    await vi.waitFor(() => expect(up.ended).toHaveLength(2));
  });

  it('closes the upstream at once when the client vanishes, and the client when the upstream does', async () => {
    const up = await helloUpstream();
    const gw = await gateway(`${up.url}/v1`);
    const a = await openClient(wsUrl(gw, '/v1/realtime'));
    await received(a, 1);
    a.ws.terminate(); // no close frame: the TCP connection just ends
    await vi.waitFor(() => expect(up.ended).toHaveLength(1), { timeout: TIMEOUTS.first_byte_ms });

    const b = await openClient(wsUrl(gw, '/v1/realtime'));
    await received(b, 1);
    up.peers[1]!.terminate();
    const closed = await b.closed;
    expect(closed.code).not.toBe(1000); // a failure, not a normal end
    expect(closed.code).toBeGreaterThanOrEqual(1000);
  });

  it('keeps a session open past total_ms and idle_ms (they bound HTTP exchanges, not sessions)', async () => {
    const up = await helloUpstream();
    const gw = await gateway(`${up.url}/v1`);
    const client = await openClient(wsUrl(gw, '/v1/realtime'));
    await received(client, 1);
    // Waiting is the point here: nothing may happen in this time.
    await sleep(TIMEOUTS.total_ms + 500);
    expect(client.ws.readyState).toBe(WebSocket.OPEN);
    client.ws.send('still here');
    await received(client, 2);
    expect(client.messages[1]).toEqual({ text: 'still here', binary: false });
  });
});

describe('passthrough WebSocket refusals', () => {
  it('needs the client key (api_keys set): without a valid one, 401 before any upstream connection', async () => {
    const up = await helloUpstream();
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const refusals: Record<string, string>[] = [{}, { authorization: 'Bearer wrong' }];
    for (const headers of refusals) {
      const r = await refusedHandshake(wsUrl(gw, '/v1/realtime?model=m'), { headers });
      expect(r.status).toBe(401);
      expect(openAIError(r.text).type).toBe('authentication_error');
    }
    expect(up.connections).toBe(0);
    const client = await openClient(wsUrl(gw, '/v1/realtime?model=m'), {
      headers: { authorization: `bearer ${CLIENT_KEY}` }, // the scheme is case-insensitive
    });
    await received(client, 1);
    expect(up.seen).toHaveLength(1);
  });

  it('fails the client handshake with the status of an upstream that refuses its own, with no secret in it', async () => {
    for (const status of [401, 500]) {
      const url = await refusingUpstream(status);
      const gw = await gateway(`${url}/v1`);
      const r = await refusedHandshake(wsUrl(gw, '/v1/realtime'));
      expect(r.status).toBe(status);
      expect(r.text).toContain('refused'); // the upstream's own body, scrubbed
      expect(r.text).not.toContain(PT_KEY);
      expect(r.ms).toBeLessThan(SLACK_MS);
    }
  });

  it('answers 502 when the upstream cannot be reached and 504 when its handshake never comes', async () => {
    const gw = await gateway('http://127.0.0.1:1/v1');
    const unreachable = await refusedHandshake(wsUrl(gw, '/v1/realtime'));
    expect(unreachable.status).toBe(502);
    expect(openAIError(unreachable.text).type).toBe('upstream_error');
    expect(unreachable.text).not.toContain(PT_KEY);

    const silent = await silentUpstream();
    const gw2 = await gateway(`${silent.url}/v1`);
    const stalled = await refusedHandshake(wsUrl(gw2, '/v1/realtime'));
    expect(stalled.status).toBe(504);
    expect(openAIError(stalled.text).type).toBe('timeout');
    expect(stalled.ms).toBeLessThan(TIMEOUTS.connect_ms + TIMEOUTS.first_byte_ms + SLACK_MS);
    await vi.waitFor(() => expect(silent.ended()).toBe(1)); // and the gateway gave up its connection
  });

  it('refuses with an OpenAI-shaped 404 without a passthrough, and on a routed path', async () => {
    const up = await helloUpstream();
    const none = await gateway(`${up.url}/v1`, { passthrough: false });
    const r = await refusedHandshake(wsUrl(none, '/v1/realtime'));
    expect(r.status).toBe(404);
    expect(openAIError(r.text).type).toBe('invalid_request_error');

    const gw = await gateway(`${up.url}/v1`);
    for (const path of ['/v1/chat/completions', '/v1/embeddings']) {
      const routed = await refusedHandshake(wsUrl(gw, path));
      expect(routed.status, path).toBe(404);
      expect(openAIError(routed.text).type, path).toBe('invalid_request_error');
    }
    expect(up.connections).toBe(0);
  });

  it('still answers a non-WebSocket upgrade (h2c, with a body) as plain HTTP/1.1 beside a session', async () => {
    const up = await helloUpstream();
    const gw = await gateway(`${up.url}/v1`);
    const client = await openClient(wsUrl(gw, '/v1/realtime'));
    await received(client, 1);
    // `curl --http2 -d` against an http:// URL: a POST asking to upgrade to h2c.
    const body = '{"input":"hi"}';
    const raw = await new Promise<string>((resolve, reject) => {
      const s = connect(gwPort(gw), '127.0.0.1', () =>
        s.write(
          [
            'POST /v1/files HTTP/1.1',
            'host: 127.0.0.1',
            'connection: Upgrade, HTTP2-Settings, close',
            'upgrade: h2c',
            'http2-settings: AAMAAABkAAQAoAAAAAIAAAAA',
            'content-type: application/json',
            `content-length: ${body.length}`,
            '',
            body,
          ].join('\r\n'),
        ),
      );
      let data = '';
      s.setEncoding('latin1');
      s.on('data', (d: string) => (data += d));
      s.setTimeout(3000, () => s.destroy());
      s.on('close', () => resolve(data));
      s.on('error', reject);
    });
    expect(raw).toMatch(/^HTTP\/1\.1 200 /);
    expect(raw).toContain(JSON.stringify({ path: '/v1/files', body, upgrade: null }));
    expect(client.ws.readyState).toBe(WebSocket.OPEN);
  });
});

describe('passthrough WebSocket and shutdown', () => {
  it('closes open sessions when the gateway closes, without hanging', async () => {
    const up = await helloUpstream();
    const gw = await startGateway(configOf(`${up.url}/v1`));
    track(gw);
    const client = await openClient(wsUrl(gw, '/v1/realtime'));
    await received(client, 1);
    const started = performance.now();
    await gw.close();
    expect(performance.now() - started).toBeLessThan(SLACK_MS);
    expect((await client.closed).code).toBe(1001); // going away
    await vi.waitFor(() => expect(up.ended).toHaveLength(1));
  });

  it('answers a handshake still waiting for its upstream with 503 when the gateway closes', async () => {
    const silent = await silentUpstream();
    const gw = await startGateway(configOf(`${silent.url}/v1`));
    track(gw);
    const refusal = refusedHandshake(wsUrl(gw, '/v1/realtime'));
    await vi.waitFor(() => expect(silent.upgrades()).toBe(1));
    const started = performance.now();
    await gw.close();
    expect(performance.now() - started).toBeLessThan(TIMEOUTS.connect_ms); // not the handshake's own bound
    const r = await refusal;
    expect(r.status).toBe(503);
    expect(openAIError(r.text).type).toBe('server_error');
    await vi.waitFor(() => expect(silent.ended()).toBe(1));
  });
});

describe('a key rotated by a reload while a session is open (regression: the old key was no longer masked)', () => {
  it('keeps masking the key the session was opened with', async () => {
    const up = await helloUpstream();
    const gw = await gateway(`${up.url}/v1`);
    const client = await openClient(wsUrl(gw, '/v1/realtime?model=m'));
    await received(client, 1);
    const rotated = configOf(`${up.url}/v1`);
    (rotated.providers as { api_key: string }[])[0]!.api_key = 'sk-pt-NEW-SECRET-9999';
    gw.gateway.reload(parseConfigText(JSON.stringify(rotated), {}));
    client.ws.send('headers');
    await received(client, 2);
    expect(client.messages[1]!.text).toContain('"authorization":"Bearer [REDACTED]"');
    expect(client.messages[1]!.text).not.toContain(PT_KEY);
  });
});

describe("a base_url's query on a WebSocket passthrough", () => {
  it('goes upstream after the client query', async () => {
    const up = await helloUpstream();
    const gw = await gateway(`${up.url}/v1?api-version=2024-10-21`);
    const client = await openClient(wsUrl(gw, '/v1/realtime?model=m'));
    await received(client, 1);
    expect(up.seen[0]!.url).toBe('/v1/realtime?model=m&api-version=2024-10-21');
  });
});
