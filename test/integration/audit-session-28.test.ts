/**
 * Audit (session 28): this session's new code, attacked over the wire as SPEC §8 says a hostile client or
 * upstream would, and checked with honest traffic:
 * - 6184215 Realtime delta masking (http/passthrough-ws-mask.ts, passthrough-ws-relay.ts): a key spelt across
 *   delta messages of every text type, holds ended every way, binary and huge messages, thousands of channels,
 *   order, back-pressure, close codes, honest sessions byte for byte;
 * - 3c0939f the stream head written from one object: hook headers (CORS, x-ratelimit-*, x-request-id) on a
 *   stream, on a 503 cut before commit and with `Connection: close`, each once, none missing;
 * - 801ae61 the passthrough query kept as written: hostile queries, and a gateway key in any spelling;
 * - b669ad5 the token estimate by digit groups: numeric prompts against the exact o200k count;
 * - d6e3048 JSON depth 128; 2a2a910 HTML named references and the cut-tail rule; 0849f0c x-request-id and
 *   placeholder keys.
 */
import { request as httpRequest, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import { request } from 'undici';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { WebSocket } from 'ws';
import { estimatePromptTokens, loadTokenizer } from '../../src/routing/tokens.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, chunkFrame, sendJson, startMock } from '../helpers/mock-upstream.js';
import {
  passthroughGateways,
  sleep,
  wsClients,
  wsUpstream,
  wsUrl,
  type Client,
  type Upstream,
} from '../helpers/ws.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;

/** The provider's key: `sk-p` is what a hold starts on. */
const KEY = 'sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34';
const TIMEOUTS = { connect_ms: 2000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 20000 };
const WAIT = { timeout: 15_000, interval: 20 };
/** A bound far above what an answer needs, so a slow shared machine does not fail the tests. */
const PROMPT_MS = 8_000;

const { gateway: ptGateway } = passthroughGateways(track, { key: KEY, timeouts: TIMEOUTS });

interface Msg {
  readonly text: string;
  readonly binary: boolean;
  readonly bytes: Buffer;
}
const { openClient } = wsClients<Msg>(track, {
  record: (data, binary) => ({ text: data.toString('utf8'), binary, bytes: Buffer.from(data) }),
});

/** Every run of 8 characters of the key that appears in `text` (none may reach a client). */
function keyRuns(text: string): string[] {
  const out: string[] = [];
  for (let i = 0; i + 8 <= KEY.length; i++)
    if (text.includes(KEY.slice(i, i + 8))) out.push(KEY.slice(i, i + 8));
  return out;
}

/** One upstream message to send: JSON (an event), text as it is, or binary. */
type Out = Json | { raw: string } | { bin: Buffer };

function sendOut(ws: WebSocket, m: Out): void {
  if ('raw' in m && typeof m.raw === 'string') ws.send(m.raw);
  else if ('bin' in m && Buffer.isBuffer(m.bin)) ws.send(m.bin, { binary: true });
  else ws.send(JSON.stringify(m));
}

/** A Realtime session whose upstream sends `script` as it opens (then `after`, e.g. a close). */
async function realtime(
  script: readonly Out[],
  after?: (ws: WebSocket) => void,
): Promise<{ up: Upstream; client: Client<Msg>; gw: TestGateway }> {
  const up = await wsUpstream(track, {
    echo: false,
    onSession: (ws) => {
      for (const m of script) sendOut(ws, m);
      after?.(ws);
    },
  });
  const gw = await ptGateway(`${up.url}/v1`);
  const client = await openClient(wsUrl(gw));
  return { up, client, gw };
}

const parsed = (c: Client<Msg>): Json[] =>
  c.messages.filter((m) => !m.binary && m.text.startsWith('{')).map((m) => JSON.parse(m.text) as Json);

/** The text the client got on one channel: every delta of `type` (and `item`), joined. */
function joinedOf(c: Client<Msg>, type: string, item?: string): string {
  return parsed(c)
    .filter((e) => e.type === type && (item === undefined || e.item_id === item))
    .map((e) => String(e.delta))
    .join('');
}

const allText = (c: Client<Msg>): string => c.messages.map((m) => m.text).join('\n');

/** A delta event of `type` on item `item`, as the Realtime API writes each text type. */
function delta(type: string, d: string, item = 'item_1'): Json {
  if (type === 'conversation.item.input_audio_transcription.delta')
    return { type, event_id: `ev_${d.length}`, item_id: item, content_index: 0, delta: d };
  if (type === 'response.function_call_arguments.delta')
    return { type, response_id: 'resp_1', item_id: item, output_index: 0, call_id: 'call_1', delta: d };
  return { type, response_id: 'resp_1', item_id: item, output_index: 0, content_index: 0, delta: d };
}

/** The message that closes a channel of `type`. */
function doneOf(type: string, item = 'item_1'): Json {
  const t = type.endsWith('input_audio_transcription.delta')
    ? type.replace(/\.delta$/, '.completed')
    : type.replace(/\.delta$/, '.done');
  return { type: t, item_id: item, output_index: 0, content_index: 0 };
}

const TEXT_TYPES = [
  'response.output_text.delta',
  'response.text.delta',
  'response.audio_transcript.delta',
  'response.function_call_arguments.delta',
  'conversation.item.input_audio_transcription.delta',
];

describe('Realtime: the key spelt across delta messages (6184215)', () => {
  for (const type of TEXT_TYPES) {
    it(`${type}: a key spelt a token a message reaches the client as [REDACTED], the text around it intact`, async () => {
      const parts = [
        'Your key is ',
        KEY.slice(0, 3),
        KEY.slice(3, 9),
        KEY.slice(9, 20),
        KEY.slice(20),
        ' ok.',
      ];
      const { client } = await realtime([...parts.map((p) => delta(type, p)), doneOf(type)]);
      const closing = String(doneOf(type).type);
      await vi.waitFor(() => expect(client.messages.some((m) => m.text.includes(closing))).toBe(true), WAIT);
      const text = joinedOf(client, type);
      expect(keyRuns(allText(client))).toEqual([]);
      expect(text.startsWith('Your key is ')).toBe(true);
      expect(text.endsWith(' ok.')).toBe(true);
      expect(text).toContain('[REDACTED]');
      expect(parsed(client).at(-1)?.type).toBe(closing);
    });
  }

  it('with non-delta messages, audio deltas and binary frames between the pieces: masked, and every other message unchanged and in order', async () => {
    const T = 'response.output_text.delta';
    const between: Out[] = [
      { type: 'rate_limits.updated', rate_limits: [{ name: 'tokens', remaining: 9 }] },
      { type: 'response.output_audio.delta', item_id: 'item_9', delta: 'UklGRiQAAABXQVZF' },
      { bin: Buffer.from([0, 1, 2, 0xff, 0x73, 0x6b]) },
      { type: 'input_audio_buffer.speech_started', audio_start_ms: 10 },
    ];
    const script: Out[] = [
      delta(T, 'Here: '),
      delta(T, KEY.slice(0, 6)),
      between[0]!,
      delta(T, KEY.slice(6, 14)),
      between[1]!,
      between[2]!,
      delta(T, KEY.slice(14)),
      between[3]!,
      delta(T, ' end'),
      doneOf(T),
    ];
    const { client } = await realtime(script);
    await vi.waitFor(
      () => expect(client.messages.some((m) => m.text.includes('output_text.done'))).toBe(true),
      WAIT,
    );
    expect(keyRuns(allText(client))).toEqual([]);
    expect(joinedOf(client, T)).toMatch(/^Here: .*\[REDACTED\].* end$/);
    // The other messages: byte for byte, in the order sent.
    const others = client.messages.filter((m) => m.binary || !m.text.includes('output_text'));
    expect(others.map((m) => m.bytes)).toEqual(
      between.map((m) => ('bin' in m && Buffer.isBuffer(m.bin) ? m.bin : Buffer.from(JSON.stringify(m)))),
    );
    expect(others.map((m) => m.binary)).toEqual([false, false, true, false]);
  });

  const ENDINGS: [string, Out | undefined][] = [
    ['response.done', { type: 'response.done', response: { id: 'resp_1', status: 'completed' } }],
    ['error', { type: 'error', error: { type: 'server_error', message: 'boom' } }],
    ['a message that is not JSON', { raw: 'not json at all' }],
    ['nothing: the upstream closes the session (4001)', undefined],
  ];
  for (const [name, ending] of ENDINGS) {
    it(`a hold ended by ${name}: no 8 characters of the key reach the client`, async () => {
      const T = 'response.audio_transcript.delta';
      const script: Out[] = [delta(T, 'the key: '), delta(T, KEY.slice(0, 6)), delta(T, KEY.slice(6, 15))];
      if (ending) script.push(ending, { type: 'session.updated', marker: 'after' });
      const { client } = await realtime(script, ending ? undefined : (ws) => ws.close(4001, 'bye'));
      if (ending) {
        await vi.waitFor(
          () => expect(client.messages.some((m) => m.text.includes('"after"'))).toBe(true),
          WAIT,
        );
        // The ending message itself goes on as it came, just before the marker.
        const texts = client.messages.map((m) => m.text);
        const sent = 'raw' in ending ? String(ending.raw) : JSON.stringify(ending);
        expect(texts.at(-2)).toBe(sent);
      } else {
        expect(await client.closed).toEqual({ code: 4001, reason: 'bye' });
      }
      expect(keyRuns(allText(client))).toEqual([]);
      expect(joinedOf(client, T).startsWith('the key: ')).toBe(true);
    });
  }

  it("after 3,000 items whose text ended in the key's first letter, a key spelt across a new item's deltas is still masked (and the session lives)", async () => {
    const T = 'response.output_text.delta';
    const script: Out[] = [];
    for (let i = 0; i < 3000; i++) script.push(delta(T, `item ${i} lists`, `item_${i}`));
    script.push(
      delta(T, 'then ', 'item_last'),
      delta(T, KEY.slice(0, 5), 'item_last'),
      delta(T, KEY.slice(5, 12), 'item_last'),
      delta(T, KEY.slice(12, 24), 'item_last'),
      delta(T, KEY.slice(24), 'item_last'),
      doneOf(T, 'item_last'),
      { type: 'session.updated', marker: 'after' },
    );
    const { client } = await realtime(script);
    await vi.waitFor(() => expect(client.messages.some((m) => m.text.includes('"after"'))).toBe(true), WAIT);
    expect(client.messages).toHaveLength(3000 + 7);
    expect(keyRuns(joinedOf(client, T, 'item_last'))).toEqual([]);
    expect(keyRuns(allText(client))).toEqual([]);
  });

  it("a Responses SSE stream (passthrough) after 300 items whose text ended in the key's first letter: a key spelt across deltas is still masked", async () => {
    const T = 'response.output_text.delta';
    const events: Json[] = [];
    for (let i = 0; i < 300; i++) events.push(delta(T, `item ${i} lists`, `item_${i}`));
    for (const piece of [KEY.slice(0, 5), KEY.slice(5, 12), KEY.slice(12, 24), KEY.slice(24)])
      events.push(delta(T, piece, 'item_last'));
    events.push(doneOf(T, 'item_last'));
    const body = events
      .map((e, n) => `event: ${String(e.type)}\ndata: ${JSON.stringify({ ...e, sequence_number: n })}\n\n`)
      .join('');
    const up = track(
      await startMock((_r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(body);
      }),
    );
    const gw = await ptGateway(`${up.url}/v1`);
    const res = await request(`${gw.url}/v1/responses`, {
      method: 'POST',
      body: '{"model":"m","input":"hi","stream":true}',
      headers: { 'content-type': 'application/json' },
      headersTimeout: PROMPT_MS,
      bodyTimeout: PROMPT_MS,
    });
    expect(res.statusCode).toBe(200);
    const text = await res.body.text();
    expect(text).toContain('output_text.done');
    expect(keyRuns(text)).toEqual([]);
  });

  it('thousands of channels each holding a key start: the gateway stays up, the next session is served, and no 8 key characters reach the client', async () => {
    const T = 'response.function_call_arguments.delta';
    const script: Out[] = [];
    for (let i = 0; i < 5000; i++) script.push(delta(T, `{"k":"${KEY.slice(0, 10)}`, `item_${i}`));
    script.push({ type: 'response.done', marker: 'after' });
    const { client, gw } = await realtime(script);
    await vi.waitFor(() => expect(client.messages.some((m) => m.text.includes('"after"'))).toBe(true), WAIT);
    expect(client.messages.length).toBeGreaterThanOrEqual(5001);
    const again = await openClient(wsUrl(gw));
    expect(again.ws.readyState).toBe(WebSocket.OPEN);
    const health = await request(`${gw.url}/healthz`);
    expect(health.statusCode).toBe(200);
    await health.body.dump();
    // README: at most a key's first 3 characters reach the client from a hold; 10 were held in each channel.
    expect(keyRuns(allText(client))).toEqual([]);
  });

  it('an honest session (audio, transcripts, tool arguments with near-misses of the key inside messages) reaches the client byte for byte', async () => {
    const audio = Buffer.from('sk-proj-' + 'x'.repeat(40)).toString('base64');
    const script: Out[] = [
      { type: 'session.created', session: { id: 'sess_1', model: 'gpt-realtime' } },
      delta('response.output_audio.delta', audio, 'item_a'),
      delta('response.output_audio.delta', 'c2stcHJvai1BYjEy', 'item_a'),
      delta('response.audio_transcript.delta', 'Keys look like sk- and sk-pro, ', 'item_a'),
      delta('response.audio_transcript.delta', 'or sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12MnXX here.', 'item_a'),
      doneOf('response.audio_transcript.delta', 'item_a'),
      delta('response.function_call_arguments.delta', '{"note":"not sk-pX", ', 'item_b'),
      delta('response.function_call_arguments.delta', '"n":"sk-proj-Ab1 x"}', 'item_b'),
      doneOf('response.function_call_arguments.delta', 'item_b'),
      { bin: Buffer.from('sk-proj-Ab12 binary near-miss') },
      { type: 'response.done', response: { status: 'completed', usage: { total_tokens: 12 } } },
    ];
    const { client } = await realtime(script);
    await vi.waitFor(() => expect(client.messages).toHaveLength(script.length), WAIT);
    expect(client.messages.map((m) => m.bytes)).toEqual(
      script.map((m) => ('bin' in m && Buffer.isBuffer(m.bin) ? m.bin : Buffer.from(JSON.stringify(m)))),
    );
  });

  it("honest text whose messages end in a few of the key's first characters: each channel's text joins exactly as sent", async () => {
    const T = 'response.output_text.delta';
    const parts = ['Project keys start sk-p', 'roj, others sk-', 'pub; ok sk-proj', '-ish.'];
    const { client } = await realtime([...parts.map((p) => delta(T, p)), doneOf(T)]);
    await vi.waitFor(
      () => expect(client.messages.some((m) => m.text.includes('output_text.done'))).toBe(true),
      WAIT,
    );
    expect(joinedOf(client, T)).toBe(parts.join(''));
  });

  it("another item's .completed (the user's transcript, mid-answer) does not cut an honest answer that holds the key's public prefix", async () => {
    // The commit made another channel's delta end no hold (it put [REDACTED] into honest parallel text); the
    // user's input transcription completing while the assistant's text streams is ordinary Realtime traffic.
    const T = 'response.output_text.delta';
    const { client } = await realtime([
      delta(T, 'Project keys begin with sk-proj-'),
      {
        type: 'conversation.item.input_audio_transcription.completed',
        item_id: 'item_user',
        content_index: 0,
        transcript: 'hi',
      },
      delta(T, ' and then random letters.'),
      doneOf(T),
    ]);
    await vi.waitFor(
      () => expect(client.messages.some((m) => m.text.includes('output_text.done'))).toBe(true),
      WAIT,
    );
    expect(joinedOf(client, T)).toBe('Project keys begin with sk-proj- and then random letters.');
  });

  it('huge messages (8 MiB of JSON delta, of text that is not JSON, of binary) are relayed whole, in order', async () => {
    const big = 'a'.repeat(8 * 1024 * 1024);
    const notJson = `{"type":"x","delta":"${big}`; // not JSON: cut off
    const script: Out[] = [
      delta('response.output_text.delta', big),
      { raw: notJson },
      { bin: Buffer.alloc(8 * 1024 * 1024, 0x73) },
      { type: 'session.updated', marker: 'after' },
    ];
    const { client } = await realtime(script);
    await vi.waitFor(() => expect(client.messages.some((m) => m.text.includes('"after"'))).toBe(true), {
      timeout: 30_000,
      interval: 50,
    });
    expect(client.messages.map((m) => m.bytes.length)).toEqual([
      JSON.stringify(script[0]).length,
      notJson.length,
      8 * 1024 * 1024,
      JSON.stringify(script[3]).length,
    ]);
    expect(client.messages[0]!.text).toBe(JSON.stringify(script[0]));
  }, 60_000);

  it('back-pressure with text deltas: a client that stops reading stalls the upstream; once it reads, every message arrives in order', async () => {
    const CHUNK = 256 * 1024;
    const TOTAL = 300; // 75 MiB if nothing held it back
    let acked = 0;
    let sent = 0;
    const filler = 'w'.repeat(CHUNK - 80);
    const up = await wsUpstream(track, {
      echo: false,
      onSession: (ws) => {
        const pump = (): void => {
          while (sent < TOTAL && sent - acked < 8 && ws.readyState === WebSocket.OPEN) {
            const n = sent++;
            ws.send(JSON.stringify(delta('response.output_text.delta', `${n}:${filler} sk-p`)), (err) => {
              if (err) return;
              acked += 1;
              pump();
            });
          }
        };
        ws.on('message', () => pump());
      },
    });
    const gw = await ptGateway(`${up.url}/v1`);
    const client = await openClient(wsUrl(gw));
    client.ws.pause();
    client.ws.send('go');
    await vi.waitFor(() => expect(acked).toBeGreaterThan(0), WAIT);
    let last = -1;
    for (let i = 0; i < 40 && acked !== last && acked < TOTAL; i++) {
      last = acked;
      await sleep(300);
    }
    expect(acked * CHUNK).toBeLessThan(40 * 1024 * 1024);
    client.ws.resume();
    await vi.waitFor(() => expect(client.messages).toHaveLength(TOTAL), { timeout: 30_000, interval: 50 });
    const order = parsed(client).map((e) => Number(/(\d+):w/.exec(String(e.delta))?.[1]));
    expect(order).toEqual(Array.from({ length: TOTAL }, (_, i) => i));
  }, 60_000);

  it('close codes go through unchanged both ways, with text held at the time', async () => {
    const T = 'response.output_text.delta';
    const { client, up } = await realtime([delta(T, 'start sk-proj-Ab')]);
    await vi.waitFor(() => expect(up.peers).toHaveLength(1), WAIT);
    await sleep(50);
    client.ws.close(4002, 'client bye');
    await vi.waitFor(() => expect(up.closes[0]).toEqual({ code: 4002, reason: 'client bye' }), WAIT);
    expect(await client.closed).toEqual({ code: 4002, reason: 'client bye' });

    const second = await realtime([delta(T, 'start sk-proj-Ab')], (ws) => {
      setTimeout(() => ws.close(4003, 'upstream bye'), 50);
    });
    expect(await second.client.closed).toEqual({ code: 4003, reason: 'upstream bye' });
    expect(keyRuns(allText(second.client))).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------------------
// 3c0939f: the stream head written from one object
// ---------------------------------------------------------------------------------------------------------

const APP = 'https://app.example.com';
const CLIENT_KEY = 'client-key-session28-0001';

interface RawAnswer {
  readonly status: number;
  readonly raw: string[];
  readonly headers: IncomingHttpHeaders;
  readonly text: string;
}

/** A POST with node:http, so the head's raw lines (duplicates included) can be read. */
function rawPost(url: string, body: Json, headers: Record<string, string>): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = httpRequest(
      url,
      {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(data),
          ...headers,
        },
        timeout: PROMPT_MS,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, raw: res.rawHeaders, headers: res.headers, text }),
        );
      },
    );
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.end(data);
  });
}

/** How many times each header name (lower-cased) appears in a raw head. */
function counts(raw: readonly string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    m.set(k, (m.get(k) ?? 0) + 1);
  }
  return m;
}

/** Headers every routed answer to an allowed origin carries with CORS and rate limiting on. */
const HOOK_HEADERS = [
  'x-request-id',
  'access-control-allow-origin',
  'access-control-expose-headers',
  'x-ratelimit-limit',
  'x-ratelimit-remaining',
  'x-ratelimit-reset',
  'x-router-provider',
  'x-router-model',
  'x-router-strategy',
  'x-router-attempts',
  'x-router-trail',
];

async function headGateway(answer: (body: Json, res: ServerResponse) => void): Promise<TestGateway> {
  const up = track(await startMock((r, res) => answer(r.body, res)));
  return track(
    await startGateway({
      server: {
        api_keys: [CLIENT_KEY],
        cors: { origins: [APP] },
        rate_limit: { requests_per_minute: 1000 },
      },
      providers: [{ name: 'p', base_url: `${up.url}/v1`, api_key: KEY, models: [{ name: 'm' }] }],
      routes: { r: { strategy: 'priority', targets: ['p/m'] } },
    }),
  );
}

const ASK = { model: 'r', messages: [{ role: 'user', content: 'hi' }] };
const HEAD_REQ = { authorization: `Bearer ${CLIENT_KEY}`, origin: APP, 'x-request-id': 'rid-s28-1' };

describe('the stream head (3c0939f)', () => {
  it('a streamed answer carries every hook header the JSON answer carries, each exactly once', async () => {
    const gw = await headGateway((body, res) => answerChat(res, body, 'hello'));
    const json = await rawPost(`${gw.url}/v1/chat/completions`, ASK, HEAD_REQ);
    const sse = await rawPost(`${gw.url}/v1/chat/completions`, { ...ASK, stream: true }, HEAD_REQ);
    expect(json.status).toBe(200);
    expect(sse.status).toBe(200);
    expect(sse.text).toContain('data: [DONE]');
    const j = counts(json.raw);
    const s = counts(sse.raw);
    for (const name of HOOK_HEADERS) {
      expect([name, j.get(name)]).toEqual([name, 1]);
      expect([name, s.get(name)]).toEqual([name, 1]);
    }
    for (const [name, n] of s) expect([name, n]).toEqual([name, 1]);
    expect(sse.headers['x-request-id']).toBe('rid-s28-1');
    expect(sse.headers['access-control-allow-origin']).toBe(APP);
    expect(sse.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    // Nothing the JSON answer has (but its body's own framing) is missing from the stream's head.
    const framing = new Set([
      'content-type',
      'content-length',
      'date',
      'connection',
      'keep-alive',
      'transfer-encoding',
    ]);
    const missing = [...j.keys()].filter((k) => !framing.has(k) && !s.has(k));
    expect(missing).toEqual([]);
    expect(Number(sse.headers['x-ratelimit-remaining'])).toBe(
      Number(json.headers['x-ratelimit-remaining']) - 1,
    );
  });

  it('a stream cut by shutdown before its commit: the 503 carries CORS, x-ratelimit-* and x-request-id, once each', async () => {
    let hits = 0;
    const gw = await headGateway((body, res) => {
      hits++;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunkFrame(body.model, { role: 'assistant', content: '' })); // preamble only: no commit
    });
    const pending = rawPost(`${gw.url}/v1/chat/completions`, { ...ASK, stream: true }, HEAD_REQ);
    await vi.waitFor(() => expect(hits).toBe(1), WAIT);
    await sleep(100);
    expect(gw.gateway.cutStreams()).toBe(1);
    const r = await pending;
    expect(r.status).toBe(503);
    expect(JSON.parse(r.text)).toMatchObject({ error: { code: 'gateway_shutdown' } });
    const c = counts(r.raw);
    for (const name of [
      'x-request-id',
      'access-control-allow-origin',
      'access-control-expose-headers',
      'x-ratelimit-limit',
      'x-ratelimit-remaining',
      'x-ratelimit-reset',
      'retry-after',
      'content-type',
    ])
      expect([name, c.get(name)]).toEqual([name, 1]);
    for (const [name, n] of c) expect([name, n]).toEqual([name, 1]);
    expect(r.headers['x-request-id']).toBe('rid-s28-1');
  });

  it('a client that sends Connection: close gets the stream with its headers once and `connection: close`', async () => {
    const gw = await headGateway((body, res) => answerChat(res, body, 'hello'));
    const r = await rawPost(
      `${gw.url}/v1/chat/completions`,
      { ...ASK, stream: true },
      {
        ...HEAD_REQ,
        connection: 'close',
      },
    );
    expect(r.status).toBe(200);
    expect(r.text).toContain('data: [DONE]');
    const c = counts(r.raw);
    for (const [name, n] of c) expect([name, n]).toEqual([name, 1]);
    for (const name of HOOK_HEADERS) expect([name, c.get(name)]).toEqual([name, 1]);
    expect(r.headers.connection).toBe('close');
  });
});

// ---------------------------------------------------------------------------------------------------------
// 801ae61: the passthrough query kept as written
// ---------------------------------------------------------------------------------------------------------

describe('passthrough query (801ae61)', () => {
  async function queryGateway(): Promise<{ gw: TestGateway; urls: string[] }> {
    const urls: string[] = [];
    const up = track(
      await startMock((r, res) => {
        urls.push(r.path);
        sendJson(res, 200, { object: 'list', data: [] });
      }),
    );
    const gw = track(
      await startGateway({
        server: { api_keys: [CLIENT_KEY], admin_key: 'admin-key-session28-0002', passthrough: 'p' },
        providers: [
          {
            name: 'p',
            base_url: `${up.url}/v1?api-version=2024-10-21`,
            api_key: KEY,
            models: [{ name: 'm' }],
          },
        ],
        routes: { r: { targets: ['p/m'] } },
      }),
    );
    return { gw, urls };
  }
  const get = async (gw: TestGateway, path: string): Promise<number> => {
    const res = await request(`${gw.url}${path}`, {
      headers: { authorization: `Bearer ${CLIENT_KEY}` },
      headersTimeout: PROMPT_MS,
      bodyTimeout: PROMPT_MS,
    });
    await res.body.dump();
    return res.statusCode;
  };

  it('hostile queries (10,000 empty pieces, `=`-only pieces, malformed escapes, base_url-like names) go as written', async () => {
    const { gw, urls } = await queryGateway();
    const queries = [
      '&'.repeat(10_000),
      '=&==&=x&x=&&=',
      'a=%zz&%&b=%E0%A4%A&c=%%%&d=%2',
      'p=1&'.repeat(2_000) + 'end',
      'API-VERSION=x&api-version%5B%5D=y&api_version=z',
      'q=a+b&r=%20&s=~&t=;&u=a=b=c',
    ];
    for (const q of queries)
      expect([q.slice(0, 20), await get(gw, `/v1/files?${q}`)]).toEqual([q.slice(0, 20), 200]);
    expect(urls).toEqual(queries.map((q) => `/v1/files?${q}&api-version=2024-10-21`));
    // The gateway still serves.
    expect(await get(gw, '/v1/files')).toBe(200);
  });

  it("a client's own api-version wins and the base_url's is not added (README), written as the client wrote it", async () => {
    const { gw, urls } = await queryGateway();
    expect(await get(gw, '/v1/files?api-version=2025-01-01&flag')).toBe(200);
    expect(await get(gw, '/v1/files?api%2Dversion=2025-01-01')).toBe(200);
    expect(urls).toEqual(['/v1/files?api-version=2025-01-01&flag', '/v1/files?api%2Dversion=2025-01-01']);
  });

  const pctAll = (s: string): string =>
    [...Buffer.from(s)].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join('');
  const KEY_FORMS: [string, string][] = [
    ['as a value', `key=${CLIENT_KEY}`],
    ['percent-encoded whole', `key=${pctAll(CLIENT_KEY)}`],
    ['percent-encoded in part, lower case', `api_key=${CLIENT_KEY.slice(0, 6)}%2d${CLIENT_KEY.slice(7)}`],
    ['with an empty name', `=${CLIENT_KEY}`],
    ['as a repeated parameter', `x=1&key=${CLIENT_KEY}&key=${CLIENT_KEY}&y=2`],
    ['the admin key', 'token=admin-key-session28-0002'],
    ['as a bare flag', CLIENT_KEY],
    ['as a parameter name', `${CLIENT_KEY}=1`],
    ['after "Bearer " (`+` for the space)', `authorization=Bearer+${CLIENT_KEY}`],
  ];
  for (const [name, q] of KEY_FORMS) {
    it(`a gateway key in the query ${name} is not forwarded`, async () => {
      const { gw, urls } = await queryGateway();
      expect(await get(gw, `/v1/files?${q}&z=9`)).toBe(200);
      expect(urls).toHaveLength(1);
      const forwarded = decodeURIComponent(urls[0]!.replace(/\+/g, ' '));
      expect(forwarded).not.toContain(CLIENT_KEY);
      expect(forwarded).not.toContain('admin-key-session28-0002');
      expect(urls[0]!.endsWith('z=9&api-version=2024-10-21')).toBe(true);
    });
  }
});

// ---------------------------------------------------------------------------------------------------------
// b669ad5: the token estimate by digit groups, against the exact o200k count
// ---------------------------------------------------------------------------------------------------------

describe('token estimate of numeric prompts (b669ad5)', () => {
  beforeAll(async () => {
    await loadTokenizer();
  });

  async function windowGateway(window: number): Promise<{ gw: TestGateway; calls: () => number }> {
    let calls = 0;
    const up = track(
      await startMock((r, res) => {
        calls++;
        answerChat(res, r.body, 'ok');
      }),
    );
    const gw = track(
      await startGateway({
        providers: [{ name: 'p', base_url: `${up.url}/v1`, models: [{ name: 'm', context_window: window }] }],
        routes: { r: { targets: ['p/m'] } },
      }),
    );
    return { gw, calls: () => calls };
  }

  const bodyOf = (content: string): Json => ({
    model: 'r',
    max_tokens: 100,
    messages: [{ role: 'user', content }],
  });
  const exactOf = (body: Json): number => estimatePromptTokens(body, { exactBudgetChars: 1e9 }) + 100;

  const numbers = Array.from({ length: 3000 }, (_, i) => String((i * 7919) % 10 ** (1 + (i % 6))));
  const SEPARATORS = [
    ',',
    '.',
    ';',
    ':',
    '-',
    '/',
    '|',
    '_',
    '+',
    '*',
    '=',
    '(',
    ')',
    '\t',
    '\n',
    '\r\n',
    ', ',
    ' | ',
    '  ',
    ' ',
  ];

  for (const sep of SEPARATORS) {
    it(`numbers joined by ${JSON.stringify(sep)}: served when the exact count fits with 20 % to spare, refused when it is twice the window`, async () => {
      const body = bodyOf(numbers.join(sep));
      const exact = exactOf(body);
      const fits = await windowGateway(Math.ceil(exact * 1.2));
      const ok = await postChat(fits.gw, body);
      expect([ok.status, ok.text.slice(0, 160)]).toEqual([200, expect.any(String)]);
      const small = await windowGateway(Math.floor(exact / 2));
      const refused = await postChat(small.gw, body);
      expect(refused.status).toBe(400);
      expect(JSON.stringify(refused.json)).toContain('context_length_exceeded');
      expect(small.calls()).toBe(0);
    });
  }

  it('a table of space-separated numbers (a matrix pasted into the prompt) that fits the window is served', async () => {
    const rows = Array.from({ length: 200 }, (_, r) =>
      Array.from({ length: 20 }, (_, c) => String((r * 31 + c * 17) % 1000)).join(' '),
    ).join('\n');
    const body = bodyOf(rows);
    const exact = exactOf(body);
    const { gw, calls } = await windowGateway(Math.ceil(exact * 1.2));
    const r = await postChat(gw, body);
    expect([r.status, r.text.slice(0, 200)]).toEqual([200, expect.any(String)]);
    expect(calls()).toBe(1);
  });

  it('10 MB of "9": a prompt 400 context_length_exceeded, the upstream never called, the gateway serving after', async () => {
    const { gw, calls } = await windowGateway(128_000);
    const t0 = performance.now();
    const r = await postChat(gw, bodyOf('9'.repeat(10_000_000)));
    expect(performance.now() - t0).toBeLessThan(PROMPT_MS);
    expect(r.status).toBe(400);
    expect(JSON.stringify(r.json)).toContain('context_length_exceeded');
    expect(calls()).toBe(0);
    expect((await postChat(gw, bodyOf('12 345 6789'))).status).toBe(200);
  }, 30_000);

  const UNICODE_DIGITS: [string, string][] = [
    ['Arabic-Indic ٣', '٣'],
    ['Devanagari ३', '३'],
    ['fullwidth ３', '３'],
    ['Arabic-Indic in groups ٣٤٥ ٦٧٨', '٣٤٥ '],
  ];
  for (const [name, unit] of UNICODE_DIGITS) {
    it(`${name}: a prompt twice past the window (by the exact count) is refused without calling the upstream`, async () => {
      const body = bodyOf(unit.repeat(Math.ceil(20_000 / unit.length)));
      const exact = exactOf(body);
      const { gw, calls } = await windowGateway(Math.floor(exact / 2));
      const r = await postChat(gw, body);
      expect([r.status, calls()]).toEqual([400, 0]);
      expect(JSON.stringify(r.json)).toContain('context_length_exceeded');
    });
  }
});

// ---------------------------------------------------------------------------------------------------------
// d6e3048: JSON depth 128
// ---------------------------------------------------------------------------------------------------------

describe('JSON nesting (d6e3048)', () => {
  async function depthGateway(): Promise<{ gw: TestGateway; calls: () => number }> {
    let calls = 0;
    const up = track(
      await startMock((r, res) => {
        calls++;
        if (r.path.endsWith('/embeddings'))
          sendJson(res, 200, {
            object: 'list',
            data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2] }],
            model: 'e',
            usage: { prompt_tokens: 1, total_tokens: 1 },
          });
        else answerChat(res, r.body, 'ok');
      }),
    );
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'p',
            base_url: `${up.url}/v1`,
            models: [{ name: 'm' }, { name: 'e', capabilities: ['embeddings'] }],
          },
        ],
        routes: { r: { targets: ['p/m'] }, emb: { targets: ['p/e'] } },
      }),
    );
    return { gw, calls: () => calls };
  }
  /** A body whose nesting, the top object counted, is `depth`. */
  const nested = (head: string, depth: number): string =>
    `{${head},"x":${'['.repeat(depth - 1)}${']'.repeat(depth - 1)}}`;
  const CHAT = '"model":"r","messages":[{"role":"user","content":"hi"}]';
  const EMB = '"model":"emb","input":"hi"';

  for (const [name, head, path] of [
    ['chat', CHAT, '/v1/chat/completions'],
    ['embeddings', EMB, '/v1/embeddings'],
  ] as const) {
    it(`${name}: 128 levels are served, 129 are a clear 400 before any upstream`, async () => {
      const { gw, calls } = await depthGateway();
      const ok = await postChat(gw, nested(head, 128), { path });
      expect([ok.status, ok.text.slice(0, 200)]).toEqual([200, expect.any(String)]);
      expect(calls()).toBe(1);
      const deep = await postChat(gw, nested(head, 129), { path });
      expect(deep.status).toBe(400);
      const err = (deep.json as { error: { type: string; message: string } }).error;
      expect(err.type).toBe('invalid_request_error');
      expect(err.message).toMatch(/nest|deep/i);
      expect(calls()).toBe(1);
    });
  }

  it('100,000 levels of arrays, of objects, and of both: a prompt 400 each', async () => {
    const { gw, calls } = await depthGateway();
    const N = 100_000;
    const bodies = [
      `{${CHAT},"x":${'['.repeat(N)}${']'.repeat(N)}}`,
      `{${CHAT},"x":${'{"a":'.repeat(N)}1${'}'.repeat(N)}}`,
      `{${CHAT},"x":${'[{"a":'.repeat(N / 2)}1${'}]'.repeat(N / 2)}}`,
      `{${CHAT},"x":${'['.repeat(N)}`, // never closed
    ];
    for (const b of bodies) {
      const t0 = performance.now();
      const r = await postChat(gw, b);
      expect(performance.now() - t0).toBeLessThan(PROMPT_MS);
      expect(r.status).toBe(400);
      expect((r.json as { error: { type: string } }).error.type).toBe('invalid_request_error');
    }
    expect(calls()).toBe(0);
  });

  it("a tool schema 30 optional objects deep, as zod's .nullable() writes it, is served (README)", async () => {
    const { gw, calls } = await depthGateway();
    let schema: Json = { type: 'string' };
    for (let i = 0; i < 30; i++)
      schema = { type: 'object', properties: { a: { anyOf: [schema, { type: 'null' }] } }, required: ['a'] };
    const r = await postChat(gw, {
      ...ASK,
      tools: [{ type: 'function', function: { name: 'deep', parameters: schema } }],
    });
    expect([r.status, r.text.slice(0, 200)]).toEqual([200, expect.any(String)]);
    expect(calls()).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------------------------
// 2a2a910: HTML named references, the cut-tail rule; 0849f0c: x-request-id and placeholder keys
// ---------------------------------------------------------------------------------------------------------

describe('error text from HTML pages and cut messages (2a2a910)', () => {
  async function errorGateway(answer: (res: ServerResponse) => void): Promise<TestGateway> {
    const up = track(await startMock((_r, res) => answer(res)));
    return track(
      await startGateway({
        providers: [{ name: 'p', base_url: `${up.url}/v1`, api_key: KEY, models: [{ name: 'm' }] }],
        routes: { r: { targets: ['p/m'] } },
      }),
    );
  }
  const html = (title: string) => (res: ServerResponse) => {
    res.writeHead(400, { 'content-type': 'text/html; charset=utf-8' });
    res.end(`<!DOCTYPE html><html><head><title>${title}</title></head><body><h1>x</h1></body></html>`);
  };
  const messageOf = (r: { json: Json }): string => String((r.json.error as Json | undefined)?.message);

  it('a proxy page titled with Latin-1 and HTML 4 names reads as its text', async () => {
    const gw = await errorGateway(
      html(
        'Erreur 400 &ndash; Requ&ecirc;te refus&eacute;e &hellip; &laquo;&nbsp;&Uuml;ber&nbsp;&raquo; &euro;5 &trade; &frac12;',
      ),
    );
    const r = await postChat(gw, ASK);
    expect(r.status).toBe(400);
    expect(messageOf(r)).toBe('Erreur 400 – Requête refusée … «\u00a0Über\u00a0» €5 ™ ½');
  });

  it('unknown names, names without `;` and a lone `&` stay as written', async () => {
    const gw = await errorGateway(html('R&amp;D &notaname; &eacute &amp &; & done'));
    const r = await postChat(gw, ASK);
    expect(r.status).toBe(400);
    expect(messageOf(r)).toBe('R&D &notaname; &eacute &amp &; & done');
  });

  it('our key spelt with references in a page title (numeric, HTML5 names, mixed) never reaches the client', async () => {
    // Each decodes to the key exactly: decimal, hex (either case of x), leading zeros, and plain letters mixed.
    const spelt = [...KEY].map((ch, i) => (i % 2 === 0 ? `&#${ch.charCodeAt(0)};` : ch)).join('');
    const spelt2 = KEY.replace(/-/g, '&#x2D;').replace('Ab', '&#65;b');
    const spelt3 = [...KEY]
      .map((ch, i) =>
        i % 3 === 0 ? `&#X${ch.charCodeAt(0).toString(16)};` : i % 3 === 1 ? `&#000${ch.charCodeAt(0)};` : ch,
      )
      .join('');
    for (const title of [`bad key ${spelt} sorry`, `bad key ${spelt2} sorry`, `bad key ${spelt3}`]) {
      const gw = await errorGateway(html(title));
      const r = await postChat(gw, ASK);
      expect(r.status).toBe(400);
      expect(keyRuns(r.text)).toEqual([]);
      expect(keyRuns(gw.rawLogs())).toEqual([]);
    }
  });

  it("a message cut at 1,000 characters: 8 of the key's first characters at the cut are masked, 7 go as written", async () => {
    const cutAt = (tail: string) => (res: ServerResponse) =>
      sendJson(res, 400, {
        error: {
          message: `${'x '.repeat(500).slice(0, 1000 - tail.length)}${tail}${KEY.slice(tail.length)} more`,
          type: 'invalid_request_error',
          param: null,
          code: null,
        },
      });
    const eight = await postChat(await errorGateway(cutAt(KEY.slice(0, 8))), ASK);
    expect(eight.status).toBe(400);
    expect(messageOf(eight)).not.toContain(KEY.slice(0, 8));
    expect(keyRuns(eight.text)).toEqual([]);
    const seven = await postChat(await errorGateway(cutAt(KEY.slice(0, 7))), ASK);
    expect(seven.status).toBe(400);
    expect(messageOf(seven)).toContain(`${KEY.slice(0, 7)}…`);
  });
});

describe('x-request-id and placeholder keys (0849f0c)', () => {
  async function idGateway(provider: Json, server: Json = {}): Promise<TestGateway> {
    const up = track(await startMock((r, res) => answerChat(res, r.body, 'ok')));
    const base = new URL(`${up.url}/v1`);
    const pass = typeof provider.password === 'string' ? provider.password : undefined;
    if (pass !== undefined) {
      base.username = 'user';
      base.password = pass;
    }
    const { password: _p, ...rest } = provider;
    return track(
      await startGateway({
        server,
        providers: [{ name: 'p', base_url: base.toString(), models: [{ name: 'm' }], ...rest }],
        routes: { r: { targets: ['p/m'] } },
      }),
    );
  }
  const idOf = async (gw: TestGateway, id: string): Promise<string> =>
    (await postChat(gw, ASK, { headers: { 'x-request-id': id } })).headers['x-request-id']!;

  it("a provider's placeholder key (ollama, EMPTY) in an id is echoed; a real provider key is not, and never logged", async () => {
    const ollama = await idGateway({ api_key: 'ollama' });
    expect(await idOf(ollama, 'ollama-bench-2025-0001')).toBe('ollama-bench-2025-0001');
    const empty = await idGateway({ api_key: 'EMPTY' });
    expect(await idOf(empty, 'EMPTY-run-7')).toBe('EMPTY-run-7');
    const real = await idGateway({ api_key: KEY });
    const got = await idOf(real, `trace-${KEY}`);
    expect(got).not.toContain(KEY);
    expect(got).toMatch(/^[0-9a-f-]{36}$/);
    expect(real.rawLogs()).not.toContain(KEY);
  });

  it('client and admin keys, short as they may be, are never echoed from an id', async () => {
    const gw = await idGateway({ api_key: 'none' }, { api_keys: ['team'], admin_key: 'boss' });
    const r = await postChat(gw, ASK, {
      headers: { authorization: 'Bearer team', 'x-request-id': 'team-42' },
    });
    expect(r.status).toBe(200);
    expect(r.headers['x-request-id']).not.toContain('team');
    const a = await postChat(gw, ASK, {
      headers: { authorization: 'Bearer team', 'x-request-id': 'boss-7' },
    });
    expect(a.headers['x-request-id']).not.toContain('boss');
  });

  it("a base_url's password (SPEC §8: a configured secret) in a client's id is not echoed nor logged, short as it is", async () => {
    const gw = await idGateway({ password: 'hunter2', api_key: KEY });
    const r = await postChat(gw, ASK, { headers: { 'x-request-id': 'trace-hunter2-x' } });
    expect(r.status).toBe(200);
    await vi.waitFor(() => expect(gw.logs.some((l) => l.msg === 'request')).toBe(true), WAIT);
    expect(gw.rawLogs()).not.toContain('hunter2');
    expect(r.headers['x-request-id']).not.toContain('hunter2');
  });
});
