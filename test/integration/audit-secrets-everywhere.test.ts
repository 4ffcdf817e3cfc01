/**
 * Audit (SPEC §8 "Secrets"; README providers[].headers, Logs): no configured secret (provider keys, client
 * keys, the admin key, a password inside a base_url, credential-like provider header values) appears in a
 * response, a log line, /router/*, /metrics or the CLI's output, whoever tries to put it there: a client
 * that sends one in a header, the model, the path or the query; an upstream that echoes one in a header, a
 * 429's retry headers, its answer's model, id or usage, an SSE event name or an error; the LLM router's
 * reason (CR/LF in it too); config files that fail to parse or validate, at `check` and at a reload.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { REPO_ROOT, ensureBuilt, startCli, type CliProcess } from '../helpers/cli-harness.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { sendJson, startMock, type Received } from '../helpers/mock-upstream.js';

const track = closeAfterEach();

/** Every secret: no two share a run of 8 characters, so a run found names its secret. */
const S = {
  PROV_KEY: 'sk-prov-Hq3ZfW8nYb2Lk5Rt',
  PT_KEY: 'sk-pass-Vd7Jm1Xc4Ns9Gp6E',
  RT_KEY: 'sk-rout-Ba5Tz2Qw8Ky3Mh7U',
  URL_PW: 'pw-Lr4Ce9Fo2Ij6Dv',
  HDR_TOKEN: 'tok-Wg8Sx3Pa7Zn1Qe',
  CLIENT_KEY: 'cli-Mu2Yk6Rb9Hd4Tf',
  CLIENT_KEY_2: 'cli2-Ej5Vn8Gc1Lw7Xs',
  ADMIN_KEY: 'adm-Ot3Kq7Bz6Ny2Ri',
} as const;
type SecretName = keyof typeof S;

/** Every 8-character run of every secret found in `text`, as `NAME:run` (none: []). */
function leaks(text: string, only: readonly SecretName[] = Object.keys(S) as SecretName[]): string[] {
  const out: string[] = [];
  for (const name of only) {
    const s = S[name];
    for (let i = 0; i + 8 <= s.length; i++) {
      const run = s.slice(i, i + 8);
      if (text.includes(run)) {
        out.push(`${name}:${run} in …${around(text, run)}…`);
        break;
      }
    }
  }
  return out;
}

function around(text: string, run: string): string {
  const at = text.indexOf(run);
  return text.slice(Math.max(0, at - 80), at + run.length + 40);
}

const MSG = [{ role: 'user', content: 'hello there' }];
const RELAXED = { connect_ms: 2000, first_byte_ms: 8000, idle_ms: 8000, total_ms: 15000 };

interface Res {
  status: number;
  headers: Record<string, string>;
  text: string;
}

async function call(
  url: string,
  method: 'GET' | 'POST',
  headers: Record<string, string> = {},
  body?: unknown,
): Promise<Res> {
  const res = await request(url, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    headersTimeout: 20_000,
    bodyTimeout: 20_000,
  });
  const text = await res.body.text();
  const h: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) h[k] = Array.isArray(v) ? v.join(',') : String(v);
  return { status: res.statusCode, headers: h, text };
}

function dump(r: Res): string {
  return `${r.status}\n${Object.entries(r.headers)
    .map(([k, v]) => `${k}: ${v}`)
    .join('\n')}\n\n${r.text}`;
}

function answer(
  model: unknown,
  content: string,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    id: 'chatcmpl-1',
    object: 'chat.completion',
    created: 1,
    model: String(model),
    choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
    ...extra,
  };
}

function bearer(r: Received): string {
  return String(r.headers.authorization ?? '').replace(/^Bearer /i, '');
}

/** The upstream of the routed tests: what it does depends on the model it is asked for. */
function upstreamHandler(r: Received, res: ServerResponse): void {
  const model = String(r.body.model ?? '');
  const key = bearer(r);
  switch (model) {
    case 'limited':
      // A 429 whose retry headers and body are our key (a proxy that echoes the request's credential).
      res.writeHead(429, {
        'content-type': 'application/json',
        'retry-after': key,
        'retry-after-ms': key,
        'x-ratelimit-reset-requests': key,
        'x-echo-auth': `Bearer ${key}`,
      });
      res.end(
        JSON.stringify({
          error: { message: `slow down, ${key}`, type: key, param: key, code: key },
        }),
      );
      return;
    case 'echo-answer':
      // A 200 whose model, id, fingerprint, usage and headers are the key.
      res.writeHead(200, {
        'content-type': 'application/json',
        'openai-model': key,
        'x-request-id': key,
        'openai-organization': key,
      });
      res.end(
        JSON.stringify(
          answer(key, 'fine', {
            id: key,
            system_fingerprint: key,
            usage: {
              prompt_tokens: key,
              completion_tokens: 3,
              total_tokens: key,
              prompt_tokens_details: { cached_tokens: key },
            },
          }),
        ),
      );
      return;
    case 'echo-stream': {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'x-echo-auth': key });
      const chunk = (delta: Record<string, unknown>, finish: string | null = null) =>
        JSON.stringify({
          id: key,
          object: 'chat.completion.chunk',
          created: 1,
          model: key,
          system_fingerprint: key,
          choices: [{ index: 0, delta, finish_reason: finish }],
        });
      res.write(`event: ${key}\ndata: ${chunk({ role: 'assistant', content: 'he' })}\n\n`);
      res.write(`: ${key}\nid: ${key}\ndata: ${chunk({ content: 'llo' })}\n\n`);
      res.write(`data: ${chunk({}, 'stop')}\n\n`);
      res.write(
        `data: ${JSON.stringify({ id: key, object: 'chat.completion.chunk', created: 1, model: key, choices: [], usage: { prompt_tokens: key, completion_tokens: 2, total_tokens: 7 } })}\n\n`,
      );
      res.end('data: [DONE]\n\n');
      return;
    }
    case 'fail-500':
      // An HTML error page quoting the credential, as a misconfigured proxy writes one.
      res.writeHead(500, { 'content-type': 'text/html', 'x-echo-auth': key });
      res.end(
        `<html><body><h1>500</h1><pre>Authorization: Bearer ${key}\nx-api-token: ${String(r.headers['x-api-token'])}</pre></body></html>`,
      );
      return;
    default:
      sendJson(res, 200, answer(model, 'ok'));
  }
}

describe('audit: client-sent secrets never reach a log line, /metrics or /router/status', () => {
  async function gateway(): Promise<{ gw: TestGateway; pt: Awaited<ReturnType<typeof startMock>> }> {
    const up = track(await startMock(upstreamHandler));
    const pt = track(await startMock((_r, res) => sendJson(res, 200, { object: 'list', data: [] })));
    const gw = track(
      await startGateway({
        server: { api_keys: [S.CLIENT_KEY, S.CLIENT_KEY_2], admin_key: S.ADMIN_KEY, passthrough: 'pt' },
        providers: [
          {
            name: 'up',
            base_url: `${up.url}/v1`,
            api_key: S.PROV_KEY,
            headers: { 'x-api-token': S.HDR_TOKEN },
            timeouts: RELAXED,
            models: [{ name: 'ok' }, { name: 'emb', capabilities: ['embeddings'] }],
          },
          { name: 'pt', base_url: `${pt.url}/v1`, api_key: S.PT_KEY, models: [{ name: 'm' }] },
        ],
        routes: {
          main: { strategy: 'priority', targets: ['up/ok'] },
          tiered: {
            strategy: 'priority',
            tiers: { fast: ['up/ok'], deep: ['pt/m'] },
            default_tier: 'fast',
            rules: [{ name: 'looks-like-a-key', if: { last_user_message: 'sk-' }, tier: 'deep' }],
          },
        },
      }),
    );
    return { gw, pt };
  }

  async function sideChannels(gw: TestGateway): Promise<string> {
    const metrics = await call(`${gw.url}/metrics`, 'GET');
    const status = await call(`${gw.url}/router/status`, 'GET', { authorization: `Bearer ${S.ADMIN_KEY}` });
    expect(status.status).toBe(200);
    return `--- logs\n${gw.rawLogs()}\n--- metrics\n${metrics.text}\n--- status\n${status.text}`;
  }

  it('secrets as model, x-router-* values, wrong admin/client keys, passthrough query and explain content appear in no log line, metric or status', async () => {
    const { gw, pt } = await gateway();
    const auth = { authorization: `Bearer ${S.CLIENT_KEY}` };
    const answers: Res[] = [];
    const chat = async (body: Record<string, unknown>, headers: Record<string, string> = auth) => {
      const r = await call(`${gw.url}/v1/chat/completions`, 'POST', headers, body);
      answers.push(r);
      return r;
    };

    expect((await chat({ model: S.ADMIN_KEY, messages: MSG })).status).toBe(404);
    expect((await chat({ model: `up/${S.PROV_KEY}`, messages: MSG })).status).toBe(404);
    expect((await chat({ model: S.CLIENT_KEY_2, messages: MSG, stream: true })).status).toBe(404);
    const emb = await call(`${gw.url}/v1/embeddings`, 'POST', auth, { model: S.PT_KEY, input: 'x' });
    expect(emb.status).toBe(404);
    expect(
      (await chat({ model: 'main', messages: MSG }, { ...auth, 'x-router-strategy': S.PROV_KEY })).status,
    ).toBe(400);
    expect(
      (await chat({ model: 'tiered', messages: MSG }, { ...auth, 'x-router-tier': S.ADMIN_KEY })).status,
    ).toBe(400);
    expect(
      (await chat({ model: 'main', messages: MSG }, { ...auth, 'x-router-provider': S.CLIENT_KEY_2 })).status,
    ).toBe(400);
    // Keys where no key belongs: a wrong client key, the admin key as a client key, a key in the query.
    expect(
      (await chat({ model: 'main', messages: MSG }, { authorization: `Bearer ${S.PROV_KEY}` })).status,
    ).toBe(401);
    expect(
      (await chat({ model: 'main', messages: MSG }, { authorization: `Bearer ${S.ADMIN_KEY}` })).status,
    ).toBe(401);
    expect((await call(`${gw.url}/router/status`, 'GET', { 'x-admin-key': S.PROV_KEY })).status).toBe(401);
    expect(
      (await call(`${gw.url}/router/status`, 'GET', { authorization: `Bearer ${S.CLIENT_KEY}` })).status,
    ).toBe(401);
    expect((await call(`${gw.url}/router/status?admin_key=${S.ADMIN_KEY}`, 'GET')).status).toBe(401);
    expect((await call(`${gw.url}/metrics?key=${S.ADMIN_KEY}`, 'GET')).status).toBe(200);
    // The passthrough: a client key in the query is neither forwarded nor logged.
    const listed = await call(
      `${gw.url}/v1/files?api_key=${S.CLIENT_KEY}&purpose=${S.ADMIN_KEY}`,
      'GET',
      auth,
    );
    expect(listed.status).toBe(200);
    expect(leaks(JSON.stringify(pt.received.map((r) => [r.path, r.headers])), ['CLIENT_KEY'])).toEqual([]);
    // explain: a prompt that holds the keys, on a route whose rule matches it.
    const explained = await call(
      `${gw.url}/router/explain`,
      'POST',
      { authorization: `Bearer ${S.ADMIN_KEY}` },
      { model: 'tiered', messages: [{ role: 'user', content: `my keys: ${S.PROV_KEY} ${S.HDR_TOKEN}` }] },
    );
    expect(explained.status).toBe(200);
    expect(leaks(dump(explained)), 'explain').toEqual([]);
    // A served request after all that, so the logs and metrics have a normal line too.
    expect((await chat({ model: 'main', messages: MSG })).status).toBe(200);

    expect(leaks(await sideChannels(gw))).toEqual([]);
    // Each client saw only its own words back; nothing it did not send.
    const ok = answers.at(-1)!;
    expect(leaks(dump(ok))).toEqual([]);
  });

  it('a client x-request-id that is a configured secret is not written into the request log line', async () => {
    const { gw } = await gateway();
    for (const [name, id] of [
      ['PROV_KEY', S.PROV_KEY],
      ['ADMIN_KEY', S.ADMIN_KEY],
      ['CLIENT_KEY_2', S.CLIENT_KEY_2],
    ] as const) {
      const r = await call(
        `${gw.url}/v1/chat/completions`,
        'POST',
        { authorization: `Bearer ${S.CLIENT_KEY}`, 'x-request-id': id },
        { model: 'main', messages: MSG },
      );
      expect(r.status, name).toBe(200);
    }
    const bad = await call(
      `${gw.url}/v1/chat/completions`,
      'POST',
      { authorization: `Bearer ${S.PROV_KEY}`, 'x-request-id': S.PROV_KEY },
      { model: 'main', messages: MSG },
    );
    expect(bad.status).toBe(401);
    expect(leaks(await sideChannels(gw))).toEqual([]);
  });

  it('a passthrough path that holds a configured secret is not written into the request log line', async () => {
    const { gw, pt } = await gateway();
    const r = await call(`${gw.url}/v1/files/${S.ADMIN_KEY}/content`, 'GET', {
      authorization: `Bearer ${S.CLIENT_KEY}`,
    });
    expect(r.status).toBe(200);
    expect(pt.received.at(-1)?.path).toContain(S.ADMIN_KEY); // forwarded as the client asked
    const u = await call(`${gw.url}/nowhere/${S.PROV_KEY}`, 'GET', {
      authorization: `Bearer ${S.CLIENT_KEY}`,
    });
    expect(u.status).toBe(404);
    expect(leaks(await sideChannels(gw))).toEqual([]);
  });
});

describe('audit: an upstream that echoes our credentials', () => {
  async function gateway(): Promise<TestGateway> {
    const up = track(await startMock(upstreamHandler));
    return track(
      await startGateway({
        server: { admin_key: S.ADMIN_KEY },
        providers: [
          {
            name: 'up',
            base_url: `http://gw:${S.URL_PW}@${up.url.slice(7)}/v1`,
            api_key: S.PROV_KEY,
            headers: { 'x-api-token': S.HDR_TOKEN },
            timeouts: RELAXED,
            models: [
              { name: 'ok' },
              { name: 'limited' },
              { name: 'echo-answer' },
              { name: 'echo-stream' },
              { name: 'fail-500' },
            ],
          },
        ],
        routes: {
          limited: { strategy: 'priority', targets: ['up/limited'] },
          answer: { strategy: 'priority', targets: ['up/echo-answer'] },
          stream: { strategy: 'priority', targets: ['up/echo-stream'] },
          failover: { strategy: 'priority', targets: ['up/fail-500', 'up/ok'] },
          dead: { strategy: 'priority', targets: ['up/fail-500'] },
        },
        circuit_breaker: { failure_threshold: 100 },
      }),
    );
  }

  async function everything(gw: TestGateway, answers: Res[]): Promise<string> {
    const metrics = await call(`${gw.url}/metrics`, 'GET');
    const status = await call(`${gw.url}/router/status`, 'GET', { authorization: `Bearer ${S.ADMIN_KEY}` });
    return [
      ...answers.map((a, i) => `--- answer ${i}\n${dump(a)}`),
      `--- logs\n${gw.rawLogs()}`,
      `--- metrics\n${metrics.text}`,
      `--- status\n${status.text}`,
    ].join('\n');
  }

  it("a 429 whose Retry-After, retry-after-ms, headers and error fields are our key: the client's 429 carries none of it", async () => {
    const gw = await gateway();
    const r = await call(`${gw.url}/v1/chat/completions`, 'POST', {}, { model: 'limited', messages: MSG });
    expect(r.status).toBe(429);
    expect(r.headers['retry-after'] ?? '1').toMatch(/^\d+$/);
    expect(leaks(await everything(gw, [r]))).toEqual([]);
  });

  it('a 200 whose model, id, fingerprint, usage and headers are our key: no key in the answer, log line or metric labels', async () => {
    const gw = await gateway();
    const r = await call(`${gw.url}/v1/chat/completions`, 'POST', {}, { model: 'answer', messages: MSG });
    expect(r.status).toBe(200);
    expect(r.text).toContain('fine');
    expect(leaks(await everything(gw, [r]))).toEqual([]);
  });

  it('a stream whose event names, comments, ids, model and usage are our key: none of it reaches the client, logs or metrics', async () => {
    const gw = await gateway();
    const r = await call(
      `${gw.url}/v1/chat/completions`,
      'POST',
      {},
      { model: 'stream', messages: MSG, stream: true, stream_options: { include_usage: true } },
    );
    expect(r.status).toBe(200);
    expect(r.text).toContain('[DONE]');
    expect(leaks(await everything(gw, [r]))).toEqual([]);
  });

  it('an HTML 500 quoting our key and header token: failover trail, warning line and the final 502 carry none of it', async () => {
    const gw = await gateway();
    const ok = await call(`${gw.url}/v1/chat/completions`, 'POST', {}, { model: 'failover', messages: MSG });
    expect(ok.status).toBe(200);
    expect(ok.headers['x-router-trail']).toBe('up/fail-500=http_500');
    const dead = await call(`${gw.url}/v1/chat/completions`, 'POST', {}, { model: 'dead', messages: MSG });
    expect(dead.status).toBe(502);
    const deadStream = await call(
      `${gw.url}/v1/chat/completions`,
      'POST',
      {},
      { model: 'dead', messages: MSG, stream: true },
    );
    expect(deadStream.status).toBe(502);
    expect(gw.logs.some((l) => typeof l.upstreamMessage === 'string')).toBe(true);
    expect(leaks(await everything(gw, [ok, dead, deadStream]))).toEqual([]);
  });
});

describe('audit: a base_url password sent as Basic auth, echoed back', () => {
  it('an upstream 401 that quotes the Authorization it got (Basic base64 of user:password) does not hand the password to the client', async () => {
    const up = track(
      await startMock((r, res) =>
        sendJson(res, 400, {
          error: {
            message: `bad credentials: ${String(r.headers.authorization)}`,
            type: 'invalid_request_error',
            param: null,
            code: null,
          },
        }),
      ),
    );
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'basic',
            base_url: `http://svc:${S.URL_PW}@${up.url.slice(7)}/v1`,
            timeouts: RELAXED,
            models: [{ name: 'm' }],
          },
        ],
        routes: { main: { strategy: 'priority', targets: ['basic/m'] } },
      }),
    );
    const r = await call(`${gw.url}/v1/chat/completions`, 'POST', {}, { model: 'main', messages: MSG });
    const sent = String(up.received[0]?.headers.authorization);
    const b64 = Buffer.from(`svc:${S.URL_PW}`).toString('base64');
    expect(sent).toBe(`Basic ${b64}`); // the password really went as Basic
    expect(r.status).toBe(400);
    const seen = `${dump(r)}\n${gw.rawLogs()}`;
    // The base64 of user:password is the password, readable by anyone: it must go as the password would.
    expect(seen.includes(b64.slice(4, 20)), `Basic credential in:\n${around(seen, b64.slice(4, 20))}`).toBe(
      false,
    );
    expect(leaks(seen)).toEqual([]);
  });
});

describe("audit: the LLM router's reason", () => {
  /** `reason(key)` is JSON text (a string literal's inside) placed in the router model's answer as written. */
  async function routed(reason: (key: string) => string): Promise<TestGateway> {
    const rt = track(
      await startMock((r, res) =>
        sendJson(res, 200, answer(r.body.model, `{"tier": "deep", "reason": "${reason(bearer(r))}"}`)),
      ),
    );
    const up = track(await startMock((r, res) => sendJson(res, 200, answer(r.body.model, 'answered'))));
    return track(
      await startGateway({
        server: { admin_key: S.ADMIN_KEY },
        providers: [
          {
            name: 'rt',
            base_url: `${rt.url}/v1`,
            api_key: S.RT_KEY,
            timeouts: RELAXED,
            models: [{ name: 'm' }],
          },
          {
            name: 'fast',
            base_url: `${up.url}/v1`,
            api_key: S.PROV_KEY,
            timeouts: RELAXED,
            models: [{ name: 'm' }],
          },
          {
            name: 'deep',
            base_url: `${up.url}/v1`,
            api_key: S.PT_KEY,
            timeouts: RELAXED,
            models: [{ name: 'm' }],
          },
        ],
        routes: {
          auto: {
            strategy: 'priority',
            // The router's model is the fast tier's (rt); it picks deep.
            tiers: { fast: ['rt/m'], balanced: ['fast/m'], deep: ['deep/m'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 8000, cache_ttl_s: 60 },
          },
        },
      }),
    );
  }

  it('a reason with CR/LF and a header line in it injects no header; with our key spelt plainly and \\u-escaped, no key in header, log or explain', async () => {
    // As JSON text: CR/LF, NUL, DEL and U+2028 escaped; the key once as is, once with `\u002d` for each `-`.
    const gw = await routed(
      (key) =>
        `needs depth\\r\\nx-injected: yes\\r\\n\\u0000\\u007f\\u2028 key=${key} again=${key.replaceAll('-', '\\u002d')} end`,
    );
    const r = await call(`${gw.url}/v1/chat/completions`, 'POST', {}, { model: 'auto', messages: MSG });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(r.headers['x-injected']).toBeUndefined();
    expect(r.headers['x-router-tier-reason']).toMatch(/^[\x20-\x7e]*$/);
    const explained = await call(
      `${gw.url}/router/explain`,
      'POST',
      { authorization: `Bearer ${S.ADMIN_KEY}` },
      { model: 'auto', messages: MSG },
    );
    expect(explained.status).toBe(200);
    const lines = gw.logs.filter((l) => l.msg === 'request');
    expect(lines.at(-1)?.tierReason).toEqual(expect.stringContaining('needs depth'));
    expect(leaks(`${dump(r)}\n${dump(explained)}\n${gw.rawLogs()}`, ['RT_KEY'])).toEqual([]);
  });

  it('a reason that is 200+ characters with the key at the cut: the header, cut at 200, holds no run of the key', async () => {
    const gw = await routed((key) => `${'x'.repeat(190)} ${key} tail`);
    const r = await call(`${gw.url}/v1/chat/completions`, 'POST', {}, { model: 'auto', messages: MSG });
    expect(r.status).toBe(200);
    expect(leaks(`${dump(r)}\n${gw.rawLogs()}`, ['RT_KEY'])).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------------
// The CLI: check, startup, reload, shutdown.

let dir = '';
let files = 0;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ler-audit-secrets-'));
  await ensureBuilt();
}, 180_000);
afterAll(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

function cfgFile(text: string): string {
  const path = join(dir, `c${++files}.yaml`);
  writeFileSync(path, text);
  return path;
}

function runCheck(
  path: string,
  env: Record<string, string> = {},
): Promise<{ code: number | string; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [join(REPO_ROOT, 'dist/main.js'), 'check', '--config', path], {
      cwd: REPO_ROOT,
      env: { PATH: process.env.PATH ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), 15_000);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? signal ?? -1, out });
    });
  });
}

/** A provider block in YAML, its `api_key` line as given. */
function providerYaml(keyLine: string, extra: string[] = []): string {
  return [
    'providers:',
    '  - name: a',
    '    base_url: "http://127.0.0.1:9/v1"',
    `    ${keyLine}`,
    ...extra.map((l) => `    ${l}`),
    '    models: [{ name: m }]',
    'routes:',
    '  main: { targets: [a/m] }',
  ].join('\n');
}

describe('audit: `check` output never prints a secret', () => {
  it('a valid config with a base_url password, a query key, a token header and ${VAR} keys: check prints none of them', async () => {
    const path = cfgFile(
      [
        'server: { api_keys: ["${CK}"], admin_key: "${AK}" }',
        'providers:',
        `  - name: a`,
        `    base_url: "http://svc:${S.URL_PW}@127.0.0.1:9/v1?api-version=1&key=${S.PT_KEY}"`,
        '    api_key: ${PK}',
        `    headers: { x-api-token: "${S.HDR_TOKEN}", Authorization: "Bearer ${S.RT_KEY}" }`,
        '    models: [{ name: m }]',
        'routes:',
        '  main: { targets: [a/m] }',
      ].join('\n'),
    );
    const r = await runCheck(path, { CK: S.CLIENT_KEY, AK: S.ADMIN_KEY, PK: S.PROV_KEY });
    expect(r.code, r.out).toBe(0);
    expect(r.out).toContain('a/m');
    expect(leaks(r.out)).toEqual([]);
  });

  it('rejections next to a key (unknown key, bad base_url with user:password@, ${VAR} key then a type error) name paths, never the key', async () => {
    const outs: string[] = [];
    const env = { PK: S.PROV_KEY };
    for (const text of [
      providerYaml(`api_key: ${S.PROV_KEY}`, [`api_kye: ${S.PROV_KEY}`]),
      providerYaml(`api_key: "${S.PROV_KEY}"`).replace(
        'http://127.0.0.1:9/v1',
        `http://u:${S.URL_PW}@127.0.0.1:99999/v1`,
      ),
      providerYaml('api_key: ${PK}', ['kind: ${PK}', 'timeouts: { connect_ms: "${PK}" }']),
      providerYaml(`api_key: "${S.PROV_KEY}`), // an unclosed quote
      providerYaml(`api_key: "${S.PROV_KEY}"`, [`api_key: "${S.PROV_KEY}"`]), // a duplicate key
      providerYaml(`api_key: '${S.PROV_KEY}' trailing`),
    ]) {
      const r = await runCheck(cfgFile(text), env);
      expect(r.code, r.out).not.toBe(0);
      outs.push(r.out);
    }
    expect(outs.join('\n')).toContain('api_kye');
    expect(leaks(outs.join('\n'))).toEqual([]);
  });

  it('an api_key written unquoted with a leading `*` (read as a YAML alias): the syntax error does not quote the key', async () => {
    const r = await runCheck(cfgFile(providerYaml(`api_key: *${S.PROV_KEY}`)));
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/line \d+/);
    expect(leaks(r.out)).toEqual([]);
  });

  it('an admin_key written unquoted with a leading `!` (read as a YAML tag): the syntax error does not quote the key', async () => {
    const r = await runCheck(
      cfgFile(`server:\n  admin_key: !${S.ADMIN_KEY}\n${providerYaml('api_key: x1234567')}`),
    );
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/line \d+/);
    expect(leaks(r.out)).toEqual([]);
  });

  it('a header written curl-style as its name ("Authorization: Bearer KEY": "") is refused without quoting the credential', async () => {
    const r = await runCheck(
      cfgFile(providerYaml('api_key: x1234567', [`headers: { "Authorization: Bearer ${S.HDR_TOKEN}": "" }`])),
    );
    expect(r.code).not.toBe(0);
    expect(r.out).toContain('headers');
    expect(leaks(r.out)).toEqual([]);
  });
});

describe('audit: the running CLI gateway never logs a secret', () => {
  it('startup, a request, rejected reloads (alias, tag, curl-style header, unknown key) and shutdown: stdout and stderr hold no secret', async () => {
    const up = track(await startMock((r, res) => sendJson(res, 200, answer(r.body.model, 'ok'))));
    const good = [
      'server: { host: 127.0.0.1, port: 0, shutdown_grace_ms: 1000, api_keys: ["${CK}"], admin_key: "${AK}" }',
      'providers:',
      '  - name: a',
      `    base_url: "http://svc:${S.URL_PW}@${up.url.slice(7)}/v1"`,
      '    api_key: "${PK}"',
      `    headers: { x-api-token: "${S.HDR_TOKEN}" }`,
      '    models: [{ name: m }]',
      'routes:',
      '  main: { strategy: priority, targets: [a/m] }',
    ].join('\n');
    const path = cfgFile(good);
    const c: CliProcess = await startCli(path, [], { CK: S.CLIENT_KEY, AK: S.ADMIN_KEY, PK: S.PROV_KEY });
    track({ close: () => c.kill() });
    const r = await call(
      `${c.url}/v1/chat/completions`,
      'POST',
      { authorization: `Bearer ${S.CLIENT_KEY}` },
      {
        model: 'main',
        messages: MSG,
      },
    );
    expect(r.status).toBe(200);
    expect(String(up.received[0]?.headers.authorization)).toBe(`Bearer ${S.PROV_KEY}`);

    const bads = [
      good.replace('api_key: "${PK}"', `api_key: *${S.PROV_KEY}`),
      good.replace('admin_key: "${AK}"', `admin_key: !${S.ADMIN_KEY}`),
      good.replace(
        `headers: { x-api-token: "${S.HDR_TOKEN}" }`,
        `headers: { "x-api-token: ${S.HDR_TOKEN}": "" }`,
      ),
      good.replace('api_key: "${PK}"', `api_key: "${S.PROV_KEY}", api_kye: "${S.PROV_KEY}"`),
    ];
    let n = 0;
    for (const text of bads) {
      writeFileSync(path, text);
      c.proc.kill('SIGHUP');
      const want = ++n;
      await c.waitForLog(
        () => c.logs.filter((l) => String(l.msg).startsWith('config reload rejected')).length >= want,
        15_000,
      );
    }
    // The old config serves on.
    const again = await call(
      `${c.url}/v1/chat/completions`,
      'POST',
      { authorization: `Bearer ${S.CLIENT_KEY}` },
      {
        model: 'main',
        messages: MSG,
      },
    );
    expect(again.status).toBe(200);
    c.proc.kill('SIGTERM');
    const code = await Promise.race([
      c.exited,
      new Promise<string>((resolve) => setTimeout(() => resolve('still running'), 15_000)),
    ]);
    expect(code).toBe(0);
    const rejected = c.logs.filter((l) => String(l.msg).startsWith('config reload rejected'));
    expect(rejected).toHaveLength(4);
    const all = `${c.logs.map((l) => JSON.stringify(l)).join('\n')}\n--- stderr\n${c.stderr()}`;
    expect(leaks(all)).toEqual([]);
  }, 90_000);
});
