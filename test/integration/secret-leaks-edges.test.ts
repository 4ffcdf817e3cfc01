/**
 * SPEC §8 "Secrets", at its edges: no configured secret (a provider's key, a credential-named header's value,
 * the credential in a base_url) reaches a client or a log line whatever channel or spelling the upstream
 * uses, and the scrubbing is never so eager that it corrupts ordinary answers.
 *
 * - a base_url whose credential is its user name alone (`https://TOKEN@proxy/v1`, sent as Basic auth) is a
 *   secret like a password: an upstream that quotes it has it scrubbed;
 * - a configured `Authorization` with another scheme (`Api-Key KEY`, as Yandex Cloud takes it): the key
 *   after the scheme is a secret on its own;
 * - SSE comments, ids and event names of a routed stream are not relayed, so a key quoted there is not;
 * - response headers of a routed upstream (an echo of our Authorization) never reach the client;
 * - a passthrough answer from an Azure-style provider (`api-key` header) that echoes the key in a header and
 *   in a gzip body has it masked, and one answered in zstd (which the gateway cannot decode to mask) is not
 *   relayed with the key readable in it (the client's Accept-Encoding is cut to what the gateway decodes);
 * - placeholder keys (vLLM's `EMPTY`) and setting-like header values (`x-auth-mode: none`) leave successful
 *   answers that contain those words untouched.
 */
import { gzipSync } from 'node:zlib';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { dig, postTo, startGateway, type TestGateway } from '../helpers/gateway.js';
import { chunkFrame, sendJson, startMock } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hello there' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };

const UP_KEY = 'sk-up+SECRET/77c0ffee4411';
const USER_TOKEN = 'tok9SECRETf00dfacecafe';
const AZURE_KEY = '0123456789abcdefSECRET0123456789';
const YANDEX_KEY = 'AQVN1SECRETyandexKey0000abc';

function headersText(h: Record<string, unknown>): string {
  return Object.entries(h)
    .map(([k, v]) => `${k}: ${String(v)}`)
    .join('\n');
}

function openaiAnswer(model: unknown, content: string): Record<string, unknown> {
  return {
    id: 'chatcmpl-1',
    object: 'chat.completion',
    created: 1,
    model: String(model),
    choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
  };
}

/** The text of every content delta of an SSE answer, joined (what a client shows its user). */
function streamedText(sse: string): string {
  let out = '';
  for (const line of sse.split('\n')) {
    if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
    const content = dig(JSON.parse(line.slice(6)), 'choices', 0, 'delta', 'content');
    if (typeof content === 'string') out += content;
  }
  return out;
}

/**
 * A zstd frame holding `content` (< 256 bytes) as one raw (stored) block: what a zstd encoder writes for
 * input it cannot shrink, and any zstd decoder reads back (`zstd -d`). Node 20 has no zstd of its own.
 */
function zstdRawFrame(content: Buffer): Buffer {
  if (content.length > 255) throw new Error('zstdRawFrame: content too long');
  const header = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x20, content.length]);
  const block = 1 | (content.length << 3);
  return Buffer.concat([
    header,
    Buffer.from([block & 255, (block >> 8) & 255, (block >> 16) & 255]),
    content,
  ]);
}

/** A gateway whose passthrough is an Azure-style provider at `up`: its key in the `api-key` header. */
async function azurePassthrough(up: { url: string }): Promise<TestGateway> {
  return track(
    await startGateway(
      {
        server: { passthrough: 'azure' },
        providers: [
          {
            name: 'azure',
            base_url: `${up.url}/openai?api-version=2024-10-21`,
            headers: { 'api-key': '${AZURE_KEY}' },
            timeouts: RELAXED,
            models: [{ name: 'm' }],
          },
        ],
        routes: { r: { strategy: 'priority', targets: ['azure/m'] } },
      },
      { env: { AZURE_KEY } },
    ),
  );
}

async function oneRoute(
  up: { url: string },
  provider: Record<string, unknown> = {},
  env: Record<string, string> = {},
): Promise<TestGateway> {
  return track(
    await startGateway(
      {
        providers: [
          {
            name: 'a',
            base_url: `${up.url}/v1`,
            api_key: UP_KEY,
            timeouts: RELAXED,
            models: [{ name: 'm' }],
            ...provider,
          },
        ],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      },
      { env },
    ),
  );
}

describe('a base_url whose credential is its user name alone', () => {
  // `https://TOKEN@host/v1` is how many proxies and gateways take a token (curl and requests send it as
  // Basic `TOKEN:`); the README sends base_url's `user:password@` as Basic auth. The token is the whole
  // credential: an upstream that quotes it (a 400 naming the caller) must not hand it to the client or the log.
  it('an upstream 400 quoting the token has it scrubbed from the answer and the log', async () => {
    const up = track(
      await startMock((req, res) => {
        const basic = String(req.headers.authorization ?? '').replace(/^Basic /, '');
        const user = Buffer.from(basic, 'base64').toString('utf8').split(':')[0];
        sendJson(res, 400, {
          error: {
            message: `user ${user} may not call model m`,
            type: 'invalid_request_error',
            param: null,
            code: null,
          },
        });
      }),
    );
    const port = new URL(up.url).port;
    const gw = await oneRoute(
      up,
      { base_url: `http://\${USER_TOKEN}@127.0.0.1:${port}/v1`, api_key: undefined },
      { USER_TOKEN },
    );
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG });
    // The token was sent (so the upstream could quote it).
    const sent = String(up.received[0]?.headers.authorization);
    expect(sent).toBe(`Basic ${Buffer.from(`${USER_TOKEN}:`).toString('base64')}`);
    expect(r.status).toBe(400);
    expect(dig(r.json, 'error', 'message')).toBe('user [REDACTED] may not call model m');
    expect(r.text).not.toContain(USER_TOKEN);
    expect(gw.rawLogs()).not.toContain(USER_TOKEN);
  });
});

describe('a configured Authorization header with a scheme other than Bearer, Basic, Token or Key', () => {
  // Yandex Cloud's OpenAI-compatible API takes `Authorization: Api-Key <key>` (Elastic's `ApiKey`, DeepL's
  // `DeepL-Auth-Key` are the same form). The key after the scheme is the secret: an upstream that quotes the
  // key alone (as OpenAI's "Incorrect API key provided: ..." does) must not hand it to the client.
  it('an upstream 400 quoting the credential without its scheme has it scrubbed', async () => {
    const up = track(
      await startMock((req, res) => {
        const key = String(req.headers.authorization).replace(/^Api-Key /, '');
        sendJson(res, 400, {
          error: {
            message: `Incorrect API key provided: ${key}`,
            type: 'invalid_request_error',
            param: null,
            code: 'invalid_api_key',
          },
        });
      }),
    );
    const gw = await oneRoute(
      up,
      { api_key: undefined, headers: { Authorization: 'Api-Key ${YANDEX_KEY}' } },
      { YANDEX_KEY },
    );
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG });
    expect(String(up.received[0]?.headers.authorization)).toBe(`Api-Key ${YANDEX_KEY}`);
    expect(r.status).toBe(400);
    expect(dig(r.json, 'error', 'message')).toBe('Incorrect API key provided: [REDACTED]');
    expect(r.text).not.toContain(YANDEX_KEY);
    expect(gw.rawLogs()).not.toContain(YANDEX_KEY);
  });
});

describe('routed answers never carry an upstream header that echoes our key', () => {
  // A debugging proxy or a misconfigured gateway answers with the request's Authorization in a header
  // (x-echo-authorization, a WWW-Authenticate quoting it): the routed answer, success or relayed error, JSON
  // or stream, is the gateway's own and carries none of it.
  it('in a 200 (JSON and stream) and a relayed 400', async () => {
    const up = track(
      await startMock((req, res, n) => {
        const echo = {
          'x-echo-authorization': String(req.headers.authorization),
          'www-authenticate': `Bearer realm="api", error="invalid_token", token="${UP_KEY}"`,
        };
        if (n === 2) {
          sendJson(
            res,
            400,
            { error: { message: 'bad field', type: 'invalid_request_error', param: 'x', code: null } },
            echo,
          );
          return;
        }
        if (req.body.stream === true) {
          res.writeHead(200, { 'content-type': 'text/event-stream', ...echo });
          res.end(`${chunkFrame('m', { content: 'hi' })}${chunkFrame('m', {}, 'stop')}data: [DONE]\n\n`);
          return;
        }
        sendJson(res, 200, openaiAnswer(req.body.model, 'hi'), echo);
      }),
    );
    const gw = await oneRoute(up);
    const seen: string[] = [];
    for (const stream of [false, true, false]) {
      const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, stream });
      seen.push(headersText(r.headers), r.text);
    }
    expect(up.received).toHaveLength(3);
    for (const text of [...seen, gw.rawLogs()]) {
      expect(text).not.toContain(UP_KEY);
      expect(text).not.toContain('SECRET');
    }
  });
});

describe('SSE fields other than data never carry an echoed key to the client', () => {
  // A debugging proxy that annotates a stream with comments (`: saw Authorization: ...`) or ids quoting the
  // request: the routed stream is rebuilt from its data events, so none of those lines is relayed.
  it('comment, id and event lines quoting the key are not relayed', async () => {
    const up = track(
      await startMock((req, res) => {
        const auth = String(req.headers.authorization);
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(`: proxy saw authorization ${auth}\n\n`);
        res.write(`id: ${auth}\nevent: debug\n${chunkFrame('m', { content: 'hi' })}`);
        res.end(`retry: 1000\n: ${UP_KEY}\n${chunkFrame('m', {}, 'stop')}data: [DONE]\n\n`);
      }),
    );
    const gw = await oneRoute(up);
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, stream: true });
    expect(r.status).toBe(200);
    expect(streamedText(r.text)).toBe('hi');
    expect(r.text).toContain('data: [DONE]');
    expect(r.text).not.toContain(UP_KEY);
    expect(gw.rawLogs()).not.toContain(UP_KEY);
  });
});

describe('passthrough to an Azure-style provider whose key is an api-key header', () => {
  // README providers[].headers: a credential-named header's value is a secret, masked as api_key is; a
  // gzip answer is decoded to be masked. Azure's key is 32 characters of hex.
  it('a successful gzip answer and a response header that echo the api-key are masked', async () => {
    const up = track(
      await startMock((req, res) => {
        const key = String(req.headers['api-key']);
        const body = gzipSync(Buffer.from(JSON.stringify({ object: 'list', data: [], seen_key: key })));
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-encoding': 'gzip',
          'x-echo-api-key': key,
        });
        res.end(body);
      }),
    );
    const gw = await azurePassthrough(up);
    const r = await request(`${gw.url}/v1/files`, { headers: { 'accept-encoding': 'gzip' } });
    const text = await r.body.text();
    expect(r.statusCode).toBe(200);
    expect(String(up.received[0]?.headers['api-key'])).toBe(AZURE_KEY);
    expect(JSON.parse(text)).toMatchObject({ object: 'list', data: [] });
    expect(text).not.toContain(AZURE_KEY);
    expect(headersText(r.headers)).not.toContain(AZURE_KEY);
    expect(gw.rawLogs()).not.toContain(AZURE_KEY);
  });
});

describe('passthrough answers in a coding the gateway cannot decode', () => {
  // Browsers (Chrome 123+) and curl --compressed builds offer `zstd`; a CDN in front of the provider answers
  // with it. The gateway masks our key in successful passthrough answers by decoding gzip, deflate and br
  // (README), but relays a zstd one as it is: an echo of the key reaches the client, which decodes it. Offered
  // only codings it can read, the upstream could not pick one the mask cannot see through.
  it('a zstd answer that echoes the api-key does not hand the key to a client that offered zstd', async () => {
    const up = track(
      await startMock((req, res) => {
        const key = String(req.headers['api-key']);
        const json = Buffer.from(JSON.stringify({ object: 'list', data: [], seen_key: key }));
        if (String(req.headers['accept-encoding'] ?? '').includes('zstd')) {
          res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'zstd' });
          res.end(zstdRawFrame(json));
          return;
        }
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(json);
      }),
    );
    const gw = await azurePassthrough(up);
    const r = await request(`${gw.url}/v1/files`, {
      headers: { 'accept-encoding': 'gzip, deflate, br, zstd' },
    });
    const body = Buffer.from(await r.body.arrayBuffer());
    expect(r.statusCode).toBe(200);
    expect(up.received).toHaveLength(1);
    expect(body.toString('latin1')).not.toContain(AZURE_KEY);
    expect(headersText(r.headers)).not.toContain(AZURE_KEY);
  });
});

describe('placeholder keys do not corrupt ordinary answers', () => {
  // vLLM's documented placeholder key is EMPTY, and a header like `x-auth-mode: none` is a setting: README
  // says neither is masked in successful answers. An answer that says "EMPTY" or "none" arrives as written,
  // JSON and streamed.
  it('an answer containing EMPTY and none is relayed intact', async () => {
    const content = 'The list is EMPTY; choose none of the above (EMPTY, none, None).';
    const up = track(
      await startMock((req, res) => {
        if (req.body.stream === true) {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.write(chunkFrame('m', { content: content.slice(0, 14) }));
          res.write(chunkFrame('m', { content: content.slice(14) }));
          res.end(`${chunkFrame('m', {}, 'stop')}data: [DONE]\n\n`);
          return;
        }
        sendJson(res, 200, { ...openaiAnswer(req.body.model, content), mode: 'none', key: 'EMPTY' });
      }),
    );
    const gw = await oneRoute(up, { api_key: 'EMPTY', headers: { 'x-auth-mode': 'none' } });
    const json = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG });
    expect(json.status).toBe(200);
    expect(dig(json.json, 'choices', 0, 'message', 'content')).toBe(content);
    expect(json.json).toMatchObject({ mode: 'none', key: 'EMPTY' });
    const sse = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, stream: true });
    expect(sse.status).toBe(200);
    expect(streamedText(sse.text)).toBe(content);
  });
});
