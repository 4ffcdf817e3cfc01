/**
 * Audit (black box): the official `openai` SDK's Realtime clients (`OpenAIRealtimeWS` from
 * 'openai/realtime/ws', and the browser-style `OpenAIRealtimeWebSocket` from 'openai/realtime/websocket')
 * through the gateway's WebSocket passthrough, against a realistic Realtime upstream built with `ws`.
 *
 * Held to: README's "other `/v1/*`" row (WebSocket part: the key from `Authorization: Bearer` or the
 * `openai-insecure-api-key.KEY` subprotocol, never forwarded; refusals relayed with status and Retry-After;
 * Realtime deltas masked across messages; shutdown closes with 1001), `server.api_keys`, SPEC §8 (no secret
 * in a response or log line), README's Metrics section (one `request` line per request).
 *
 * The SDK builds its Realtime URL from `baseURL` and always sets the scheme to `wss` (internal-base.js,
 * buildRealtimeURL: `url.protocol = 'wss'`). The gateway speaks plain HTTP only, so a user has to put TLS in
 * front of it or hand the SDK a plain TCP connector. These tests do the latter (ws's `createConnection`,
 * undici's `connect`): everything past the TCP connect is the SDK's own code.
 *
 * Everything runs on 127.0.0.1; every wait is bounded.
 */
import { createHash, randomBytes } from 'node:crypto';
import { connect, type createConnection, type Socket } from 'node:net';
import OpenAI from 'openai';
import { OpenAIRealtimeError } from 'openai/realtime/internal-base';
import { OpenAIRealtimeWebSocket } from 'openai/realtime/websocket';
import { OpenAIRealtimeWS } from 'openai/realtime/ws';
import { Agent, request, WebSocket as UndiciWebSocket } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import type { TestGateway } from '../helpers/gateway.js';
import { passthroughGateways, rawUpstream, requestLines, wsUpstream, type Upstream } from '../helpers/ws.js';

const track = closeAfterEach();
const PT_KEY = 'sk-pt-REALTIME-sdk-SECRET-4417xq';
const CLIENT_KEY = 'gw-client-key-rt-8823';
const MODEL = 'gpt-realtime';
const TIMEOUTS = { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 1000, total_ms: 3000 };
const WAIT = { timeout: 15_000, interval: 20 };

const { gateway } = passthroughGateways(track, { key: PT_KEY, timeouts: TIMEOUTS });

afterEach(() => {
  vi.unstubAllGlobals();
});

type Json = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------------------
// A Realtime upstream that speaks the protocol the SDK expects

let seq = 0;
const id = (prefix: string): string => `${prefix}_${(++seq).toString(36).padStart(6, '0')}`;

/** The events of one response, built by a scenario; `rid` is the response id. */
type Scenario = (rid: string) => Json[];

interface RtUpstream extends Upstream {
  /** Per session: every event the upstream sent, in order, as sent. */
  readonly sent: Json[][];
}

function responseCreated(rid: string): Json {
  return {
    type: 'response.created',
    event_id: id('event'),
    response: { id: rid, object: 'realtime.response', status: 'in_progress', output: [], usage: null },
  };
}

function responseDone(rid: string, output: Json[]): Json {
  return {
    type: 'response.done',
    event_id: id('event'),
    response: {
      id: rid,
      object: 'realtime.response',
      status: 'completed',
      output,
      usage: { total_tokens: 30, input_tokens: 10, output_tokens: 20 },
    },
  };
}

/** A text answer streamed as `chunks`. */
function textResponse(chunks: string[]): Scenario {
  return (rid) => {
    const item = id('item');
    const text = chunks.join('');
    const at = { response_id: rid, item_id: item, output_index: 0, content_index: 0 };
    const done = {
      id: item,
      object: 'realtime.item',
      type: 'message',
      role: 'assistant',
      status: 'completed',
    };
    return [
      responseCreated(rid),
      {
        type: 'response.output_item.added',
        event_id: id('event'),
        response_id: rid,
        output_index: 0,
        item: { ...done, status: 'in_progress', content: [] },
      },
      {
        type: 'response.content_part.added',
        event_id: id('event'),
        ...at,
        part: { type: 'output_text', text: '' },
      },
      ...chunks.map((delta) => ({ type: 'response.output_text.delta', event_id: id('event'), ...at, delta })),
      { type: 'response.output_text.done', event_id: id('event'), ...at, text },
      {
        type: 'response.content_part.done',
        event_id: id('event'),
        ...at,
        part: { type: 'output_text', text },
      },
      {
        type: 'response.output_item.done',
        event_id: id('event'),
        response_id: rid,
        output_index: 0,
        item: { ...done, content: [{ type: 'output_text', text }] },
      },
      responseDone(rid, [{ ...done, content: [{ type: 'output_text', text }] }]),
    ];
  };
}

/** An audio answer: base64 `audio` deltas, and `transcript` deltas interleaved with them. */
function audioResponse(audio: string[], transcript: string[]): Scenario {
  return (rid) => {
    const item = id('item');
    const at = { response_id: rid, item_id: item, output_index: 0, content_index: 0 };
    const text = transcript.join('');
    const done = {
      id: item,
      object: 'realtime.item',
      type: 'message',
      role: 'assistant',
      status: 'completed',
    };
    const deltas: Json[] = [];
    for (let i = 0; i < Math.max(audio.length, transcript.length); i++) {
      if (i < transcript.length)
        deltas.push({
          type: 'response.output_audio_transcript.delta',
          event_id: id('event'),
          ...at,
          delta: transcript[i],
        });
      if (i < audio.length)
        deltas.push({ type: 'response.output_audio.delta', event_id: id('event'), ...at, delta: audio[i] });
    }
    return [
      responseCreated(rid),
      {
        type: 'response.output_item.added',
        event_id: id('event'),
        response_id: rid,
        output_index: 0,
        item: { ...done, status: 'in_progress', content: [] },
      },
      {
        type: 'response.content_part.added',
        event_id: id('event'),
        ...at,
        part: { type: 'output_audio', transcript: '' },
      },
      ...deltas,
      { type: 'response.output_audio.done', event_id: id('event'), ...at },
      { type: 'response.output_audio_transcript.done', event_id: id('event'), ...at, transcript: text },
      {
        type: 'response.content_part.done',
        event_id: id('event'),
        ...at,
        part: { type: 'output_audio', transcript: text },
      },
      {
        type: 'response.output_item.done',
        event_id: id('event'),
        response_id: rid,
        output_index: 0,
        item: { ...done, content: [{ type: 'output_audio', transcript: text }] },
      },
      responseDone(rid, [{ ...done, content: [{ type: 'output_audio', transcript: text }] }]),
    ];
  };
}

/** A function call whose arguments come as `args` deltas. */
function toolResponse(name: string, args: string[]): Scenario {
  return (rid) => {
    const item = id('item');
    const callId = id('call');
    const joined = args.join('');
    const base = { id: item, object: 'realtime.item', type: 'function_call', call_id: callId, name };
    return [
      responseCreated(rid),
      {
        type: 'response.output_item.added',
        event_id: id('event'),
        response_id: rid,
        output_index: 0,
        item: { ...base, status: 'in_progress', arguments: '' },
      },
      ...args.map((delta) => ({
        type: 'response.function_call_arguments.delta',
        event_id: id('event'),
        response_id: rid,
        item_id: item,
        output_index: 0,
        call_id: callId,
        delta,
      })),
      {
        type: 'response.function_call_arguments.done',
        event_id: id('event'),
        response_id: rid,
        item_id: item,
        output_index: 0,
        call_id: callId,
        name,
        arguments: joined,
      },
      {
        type: 'response.output_item.done',
        event_id: id('event'),
        response_id: rid,
        output_index: 0,
        item: { ...base, status: 'completed', arguments: joined },
      },
      responseDone(rid, [{ ...base, status: 'completed', arguments: joined }]),
    ];
  };
}

const SESSION = {
  type: 'realtime',
  object: 'realtime.session',
  model: MODEL,
  output_modalities: ['audio'],
  instructions: 'You are a helpful assistant.',
  tools: [],
  tool_choice: 'auto',
  max_output_tokens: 'inf',
};

/**
 * A realistic Realtime upstream: `session.created` first; answers `session.update`, `conversation.item.create`
 * and `response.create` (the scenario named by `response.metadata.scenario`, default "text"); an unknown
 * client event gets an `error` event.
 */
async function realtimeUpstream(
  scenarios: Record<string, Scenario> = {},
  session: Json = SESSION,
): Promise<RtUpstream> {
  const all: Record<string, Scenario> = { text: textResponse(['Hello', ', ', 'world', '!']), ...scenarios };
  const sent: Json[][] = [];
  const up = await wsUpstream(track, {
    echo: false,
    handleProtocols: (protocols) => (protocols.has('realtime') ? 'realtime' : false),
    onSession: (ws, _req, index) => {
      sent[index] = [];
      const send = (ev: Json): void => {
        sent[index]!.push(ev);
        ws.send(JSON.stringify(ev));
      };
      let current = { ...session, id: id('sess') };
      send({ type: 'session.created', event_id: id('event'), session: current });
      ws.on('message', (data: Buffer, binary: boolean) => {
        if (binary) return;
        const ev = JSON.parse(data.toString()) as Json;
        switch (ev.type) {
          case 'session.update':
            current = { ...current, ...(ev.session as Json) };
            send({ type: 'session.updated', event_id: id('event'), session: current });
            return;
          case 'conversation.item.create': {
            const item = {
              ...(ev.item as Json),
              id: id('item'),
              object: 'realtime.item',
              status: 'completed',
            };
            send({ type: 'conversation.item.added', event_id: id('event'), previous_item_id: null, item });
            send({ type: 'conversation.item.done', event_id: id('event'), previous_item_id: null, item });
            return;
          }
          case 'response.create': {
            const meta = ((ev.response as Json | undefined)?.metadata ?? {}) as Record<string, string>;
            const name = meta.scenario ?? 'text';
            const scenario = all[name];
            if (scenario === undefined) {
              send({
                type: 'error',
                event_id: id('event'),
                error: {
                  type: 'invalid_request_error',
                  code: 'invalid_value',
                  message: `no such scenario ${name}`,
                  param: 'response.metadata',
                  event_id: ev.event_id ?? null,
                },
              });
              return;
            }
            for (const out of scenario(id('resp'))) send(out);
            return;
          }
          case 'input_audio_buffer.append':
            return;
          case 'input_audio_buffer.commit':
            send({
              type: 'input_audio_buffer.committed',
              event_id: id('event'),
              previous_item_id: null,
              item_id: id('item'),
            });
            return;
          default:
            send({
              type: 'error',
              event_id: id('event'),
              error: {
                type: 'invalid_request_error',
                code: 'unknown_event',
                message: `Invalid value: '${String(ev.type)}'.`,
                param: 'type',
                event_id: ev.event_id ?? null,
              },
            });
        }
      });
    },
  });
  return Object.assign(up, { sent });
}

// ---------------------------------------------------------------------------------------------------------
// The SDK as the client

/** ws's connector for a `wss://` URL on a plain-HTTP gateway: plain TCP to the same host and port. */
const plainConnect = ((opts: { host?: string; port?: number | string }) =>
  connect({
    host: opts.host ?? '127.0.0.1',
    port: Number(opts.port),
  })) as unknown as typeof createConnection;

interface RtSession {
  readonly rt: OpenAIRealtimeWS;
  readonly events: Json[];
  readonly errors: OpenAIRealtimeError[];
  readonly closed: Promise<{ code: number; reason: string }>;
}

function sdk(gw: TestGateway, apiKey: string): OpenAI {
  return new OpenAI({ baseURL: `${gw.url}/v1`, apiKey, maxRetries: 0 });
}

/** An `OpenAIRealtimeWS` session through the gateway, with every event and error recorded. */
function realtimeWS(client: OpenAI, model = MODEL): RtSession {
  const rt = new OpenAIRealtimeWS({ model, options: { createConnection: plainConnect } }, client);
  const events: Json[] = [];
  const errors: OpenAIRealtimeError[] = [];
  rt.on('event', (e) => events.push(e as unknown as Json));
  rt.on('error', (e) => errors.push(e));
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    rt.socket.on('close', (code, reason) => resolve({ code, reason: reason.toString() })),
  );
  track({ close: () => rt.socket.terminate() });
  return { rt, events, errors, closed };
}

/** Resolves once the session is open; rejects with what the SDK reported when it closed first. */
function opened(s: RtSession): Promise<void> {
  return new Promise((resolve, reject) => {
    if (s.rt.socket.readyState === s.rt.socket.OPEN) return resolve();
    s.rt.socket.once('open', () => resolve());
    void s.closed.then((c) =>
      reject(new Error(`closed before open (${c.code}): ${s.errors.map((e) => e.message).join('; ')}`)),
    );
  });
}

async function openSession(gw: TestGateway, apiKey = CLIENT_KEY): Promise<RtSession> {
  const s = realtimeWS(sdk(gw, apiKey));
  await opened(s);
  await vi.waitFor(() => expect(s.events.length).toBeGreaterThan(0), WAIT);
  return s;
}

/** Waits until `events` holds `n` events of `type`. */
async function untilCount(events: Json[], type: string, n: number): Promise<void> {
  await vi.waitFor(() => expect(events.filter((e) => e.type === type)).toHaveLength(n), WAIT);
}

function ask(rt: { send: OpenAIRealtimeWS['send'] }, scenario: string): void {
  rt.send({ type: 'response.create', response: { metadata: { scenario } } });
}

/** The events of each response, from its `response.created` to its `response.done`. */
function responsesOf(events: Json[]): Json[][] {
  const out: Json[][] = [];
  let cur: Json[] | undefined;
  for (const e of events) {
    if (e.type === 'response.created') cur = [];
    cur?.push(e);
    if (e.type === 'response.done' && cur) {
      out.push(cur);
      cur = undefined;
    }
  }
  return out;
}

function deltasOf(events: Json[], type: string): string {
  return events
    .filter((e) => e.type === type)
    .map((e) => String(e.delta))
    .join('');
}

async function metricsText(gw: TestGateway): Promise<string> {
  const res = await request(`${gw.url}/metrics`);
  return res.body.text();
}

/** The value of `llm_router_requests_total` with status `status` and route `none` (0 when absent). */
function unroutedCount(metrics: string, status: string): number {
  let n = 0;
  for (const line of metrics.split('\n')) {
    if (!line.startsWith('llm_router_requests_total{')) continue;
    if (!line.includes('route="none"') || !line.includes(`status="${status}"`)) continue;
    n += Number(line.split(' ').at(-1));
  }
  return n;
}

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

// ---------------------------------------------------------------------------------------------------------

describe('OpenAI SDK Realtime: opening a session through the gateway', () => {
  it('builds a wss:// URL from an http baseURL, so the SDK alone cannot reach a plain-HTTP gateway', async () => {
    const up = await realtimeUpstream();
    const gw = await gateway(`${up.url}/v1`);
    const client = sdk(gw, CLIENT_KEY);
    const rt = new OpenAIRealtimeWS({ model: MODEL }, client);
    const errors: OpenAIRealtimeError[] = [];
    rt.on('error', (e) => errors.push(e));
    track({ close: () => rt.socket.terminate() });
    // The URL keeps the gateway's host, port and /v1 path, but the scheme is forced to wss.
    expect(rt.url.protocol).toBe('wss:');
    expect(rt.url.host).toBe(new URL(gw.url).host);
    expect(`${rt.url.pathname}${rt.url.search}`).toBe(`/v1/realtime?model=${MODEL}`);
    const code = await new Promise<number>((resolve) => rt.socket.on('close', (c) => resolve(c)));
    expect(code).toBe(1006);
    expect(errors.length).toBeGreaterThan(0);
    expect(up.seen).toHaveLength(0);
  });

  it('opens with OpenAIRealtimeWS (key in Authorization) under server.api_keys; the upstream gets only the provider key', async () => {
    const up = await realtimeUpstream();
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = await openSession(gw);
    expect(s.events[0]!.type).toBe('session.created');
    expect(s.events[0]).toEqual(up.sent[0]![0]);
    s.rt.send({ type: 'session.update', session: { type: 'realtime', instructions: 'Be brief.' } });
    await untilCount(s.events, 'session.updated', 1);
    expect((s.events[1]!.session as Json).instructions).toBe('Be brief.');
    expect(up.seen).toHaveLength(1);
    const seen = up.seen[0]!;
    expect(seen.url).toBe(`/v1/realtime?model=${MODEL}`);
    expect(seen.headers.authorization).toBe(`Bearer ${PT_KEY}`);
    expect(JSON.stringify(seen.rawHeaders)).not.toContain(CLIENT_KEY);
    expect(JSON.stringify(up.got[0])).not.toContain(CLIENT_KEY);
    expect(s.errors).toEqual([]);
  });

  it('opens without server.api_keys whatever key the SDK holds, and never forwards that key', async () => {
    const up = await realtimeUpstream();
    const gw = await gateway(`${up.url}/v1`);
    const s = await openSession(gw, 'sk-user-own-openai-key-0000');
    expect(s.events[0]!.type).toBe('session.created');
    expect(up.seen[0]!.headers.authorization).toBe(`Bearer ${PT_KEY}`);
    expect(JSON.stringify(up.seen[0]!.rawHeaders)).not.toContain('sk-user-own-openai-key-0000');
  });

  it('refuses a wrong SDK key with 401 (the SDK reports "Unexpected server response: 401"), no upstream connection', async () => {
    const up = await realtimeUpstream();
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = realtimeWS(sdk(gw, 'wrong-key'));
    await expect(opened(s)).rejects.toThrow(/closed before open/);
    expect(s.errors.map((e) => e.message)).toContain('Unexpected server response: 401');
    expect(up.connections).toBe(0);
  });

  it('opens with the browser-style OpenAIRealtimeWebSocket (key in the openai-insecure-api-key subprotocol)', async () => {
    const up = await realtimeUpstream();
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    // A WHATWG WebSocket (undici's, Node 22's global) whose connector ignores the forced wss:.
    const agent = new Agent({
      connect: (opts, cb) => {
        const sock: Socket = connect({ host: opts.hostname, port: Number(opts.port) });
        sock.once('connect', () => cb(null, sock));
        sock.once('error', (err) => cb(err, null));
      },
    });
    track({ close: () => agent.close() });
    class PlainWebSocket extends UndiciWebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url, { protocols, dispatcher: agent });
      }
    }
    vi.stubGlobal('WebSocket', PlainWebSocket);
    const rt = new OpenAIRealtimeWebSocket({ model: MODEL }, sdk(gw, CLIENT_KEY));
    const socket = rt.socket as unknown as UndiciWebSocket;
    track({ close: () => socket.close() });
    const events: Json[] = [];
    const errors: OpenAIRealtimeError[] = [];
    rt.on('event', (e) => events.push(e as unknown as Json));
    rt.on('error', (e) => errors.push(e));
    await vi.waitFor(() => expect(events.map((e) => e.type)).toContain('session.created'), WAIT);
    expect(socket.protocol).toBe('realtime');
    rt.send({ type: 'response.create', response: { metadata: { scenario: 'text' } } });
    await untilCount(events, 'response.done', 1);
    expect(deltasOf(events, 'response.output_text.delta')).toBe('Hello, world!');
    // The key travelled in a subprotocol: the upstream is offered only `realtime`, with the provider's key.
    expect(up.seen[0]!.headers['sec-websocket-protocol']).toBe('realtime');
    expect(up.seen[0]!.headers.authorization).toBe(`Bearer ${PT_KEY}`);
    expect(JSON.stringify(up.seen[0]!.rawHeaders)).not.toContain(CLIENT_KEY);
    expect(errors).toEqual([]);
    const closed = new Promise<number>((resolve) => socket.addEventListener('close', (e) => resolve(e.code)));
    rt.close();
    expect(await closed).toBe(1000);
    await vi.waitFor(() => expect(up.closes[0]).toEqual({ code: 1000, reason: 'OK' }), WAIT);
  });
});

describe('OpenAI SDK Realtime: typed events through the gateway', () => {
  it('delivers text, audio (base64), transcripts, a tool call and conversation items in order and intact', async () => {
    const audio = Array.from({ length: 5 }, () => randomBytes(4800).toString('base64'));
    const up = await realtimeUpstream({
      audio: audioResponse(audio, ['Sure', ', here ', 'it is', '. ✓ 日本語']),
      tool: toolResponse('get_weather', ['{"loc', 'ation":', ' "Paris", ', '"unit": "°C"}']),
    });
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = await openSession(gw);
    const deltas: string[] = [];
    s.rt.on('response.output_text.delta', (e) => deltas.push(e.delta));
    s.rt.send({
      type: 'conversation.item.create',
      item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'Hi there' }] },
    });
    await untilCount(s.events, 'conversation.item.done', 1);
    ask(s.rt, 'text');
    ask(s.rt, 'audio');
    ask(s.rt, 'tool');
    await untilCount(s.events, 'response.done', 3);
    // Every event the upstream sent, in its order, as sent (nothing to mask in them).
    expect(s.events).toEqual(up.sent[0]);
    expect(deltas).toEqual(['Hello', ', ', 'world', '!']);
    const [, audioEvents, toolEvents] = responsesOf(s.events);
    expect(audioEvents!.filter((e) => e.type === 'response.output_audio.delta').map((e) => e.delta)).toEqual(
      audio,
    );
    expect(deltasOf(audioEvents!, 'response.output_audio_transcript.delta')).toBe(
      'Sure, here it is. ✓ 日本語',
    );
    expect(JSON.parse(deltasOf(toolEvents!, 'response.function_call_arguments.delta'))).toEqual({
      location: 'Paris',
      unit: '°C',
    });
    expect(s.errors).toEqual([]);
  });

  it("carries the SDK's input audio (20 appends of 256 KiB base64) to the upstream in order and intact", async () => {
    const up = await realtimeUpstream();
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = await openSession(gw);
    const chunks = Array.from({ length: 20 }, () => randomBytes(192 * 1024).toString('base64'));
    for (const audio of chunks) s.rt.send({ type: 'input_audio_buffer.append', audio });
    s.rt.send({ type: 'input_audio_buffer.commit' });
    await untilCount(s.events, 'input_audio_buffer.committed', 1);
    const got = up.got[0]!.map((m) => JSON.parse(m.text) as Json);
    expect(got.map((m) => m.type)).toEqual([
      ...chunks.map(() => 'input_audio_buffer.append'),
      'input_audio_buffer.commit',
    ]);
    got.slice(0, 20).forEach((m, i) => expect(sha(String(m.audio))).toBe(sha(chunks[i]!)));
    expect(s.errors).toEqual([]);
  });

  it('carries 60 responses in one session, each complete and in order', async () => {
    const up = await realtimeUpstream();
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = await openSession(gw);
    for (let i = 0; i < 60; i++) ask(s.rt, i % 2 === 0 ? 'text' : 'nope');
    await untilCount(s.events, 'response.done', 30);
    await untilCount(s.events, 'error', 30);
    expect(s.events).toEqual(up.sent[0]);
    const responses = responsesOf(s.events);
    expect(responses).toHaveLength(30);
    for (const r of responses) expect(deltasOf(r, 'response.output_text.delta')).toBe('Hello, world!');
    expect(s.errors).toHaveLength(30);
    expect(s.rt.socket.readyState).toBe(s.rt.socket.OPEN);
  });

  it('delivers a 6 MiB audio delta intact', async () => {
    const big = randomBytes(4.5 * 1024 * 1024).toString('base64');
    expect(big.length).toBeGreaterThan(6 * 1024 * 1024 - 1);
    const up = await realtimeUpstream({ big: audioResponse([big, 'AAAA'], ['a', 'b']) });
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = await openSession(gw);
    ask(s.rt, 'big');
    await untilCount(s.events, 'response.done', 1);
    const got = s.events.filter((e) => e.type === 'response.output_audio.delta').map((e) => String(e.delta));
    expect(got).toHaveLength(2);
    expect(sha(got[0]!)).toBe(sha(big));
    expect(got[1]).toBe('AAAA');
  });

  it('back-pressures the upstream while the SDK socket is paused, then delivers every audio delta in order', async () => {
    const chunk = 512 * 1024;
    const audio = Array.from({ length: 96 }, (_, i) => Buffer.alloc((chunk * 3) / 4, i).toString('base64'));
    const up = await realtimeUpstream({ flood: audioResponse(audio, []) });
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = await openSession(gw);
    s.rt.socket.pause();
    // The request still goes out: only reading is paused.
    ask(s.rt, 'flood');
    await vi.waitFor(() => expect(up.sent[0]!.length).toBeGreaterThan(90), WAIT);
    const peer = up.peers[0]!;
    // Wait until the upstream's queue stops draining: the gateway has stopped reading it.
    let last = -1;
    await vi.waitFor(
      () => {
        const now = peer.bufferedAmount;
        const steady = now === last;
        last = now;
        expect(steady).toBe(true);
      },
      { timeout: 15_000, interval: 300 },
    );
    // 48 MiB sent; the kernel's loopback buffers and the gateway's 1 MiB high-water mark hold far less.
    expect(peer.bufferedAmount).toBeGreaterThan(8 * 1024 * 1024);
    s.rt.socket.resume();
    await untilCount(s.events, 'response.done', 1);
    const got = s.events.filter((e) => e.type === 'response.output_audio.delta').map((e) => String(e.delta));
    expect(got).toHaveLength(96);
    got.forEach((d, i) => expect(Buffer.from(d, 'base64').every((b) => b === i)).toBe(true));
  });
});

describe('OpenAI SDK Realtime: the provider key never reaches the SDK', () => {
  it('masks a provider key echoed whole: session.created, a text delta, a transcript, tool arguments, an error', async () => {
    const up = await realtimeUpstream(
      {
        text: textResponse([`Your key is ${PT_KEY}.`]),
        audio: audioResponse(['AAAA'], [`spoken ${PT_KEY} here`]),
        tool: toolResponse('f', [`{"key":"${PT_KEY}"}`]),
      },
      { ...SESSION, instructions: `Use api key ${PT_KEY} for lookups.` },
    );
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = await openSession(gw);
    ask(s.rt, 'text');
    ask(s.rt, 'audio');
    ask(s.rt, 'tool');
    await untilCount(s.events, 'response.done', 3);
    up.peers[0]!.send(
      JSON.stringify({
        type: 'error',
        event_id: 'event_leak',
        error: {
          type: 'invalid_request_error',
          code: 'invalid_api_key',
          message: `Incorrect API key ${PT_KEY}`,
        },
      }),
    );
    await vi.waitFor(() => expect(s.errors).toHaveLength(1), WAIT);
    expect(JSON.stringify(s.events)).not.toContain(PT_KEY);
    expect(s.errors[0]!.message).not.toContain(PT_KEY);
    expect(JSON.stringify(s.errors[0]!.error)).not.toContain(PT_KEY);
    expect(deltasOf(s.events, 'response.output_text.delta')).toMatch(/^Your key is .+\.$/);
    expect(gw.rawLogs()).not.toContain(PT_KEY);
  });

  it('masks a provider key spelt across text, transcript and tool-argument deltas (at most 3 of its characters)', async () => {
    const oneByOne = PT_KEY.split('');
    const inThrees = PT_KEY.match(/.{1,3}/g)!;
    const up = await realtimeUpstream({
      text: textResponse(['The key is ', ...oneByOne, ' and that is all.']),
      audio: audioResponse(
        Array.from({ length: inThrees.length + 2 }, () => 'AAAA'),
        ['I say ', ...inThrees, ' twice.'],
      ),
      tool: toolResponse('f', ['{"k":"', ...oneByOne, '"}']),
    });
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = await openSession(gw);
    ask(s.rt, 'text');
    ask(s.rt, 'audio');
    ask(s.rt, 'tool');
    await untilCount(s.events, 'response.done', 3);
    const prefix = PT_KEY.slice(0, 4);
    const text = deltasOf(s.events, 'response.output_text.delta');
    const transcript = deltasOf(s.events, 'response.output_audio_transcript.delta');
    const args = deltasOf(s.events, 'response.function_call_arguments.delta');
    for (const joined of [text, transcript, args]) {
      expect(joined).not.toContain(prefix);
      expect(joined).not.toContain(PT_KEY.slice(-8));
    }
    expect(text.startsWith('The key is ')).toBe(true);
    expect(text.endsWith(' and that is all.')).toBe(true);
    expect(transcript.startsWith('I say ')).toBe(true);
    expect(transcript.endsWith(' twice.')).toBe(true);
    expect(JSON.stringify(s.events)).not.toContain(PT_KEY);
    // The audio deltas between the transcript's are untouched and still all there.
    expect(s.events.filter((e) => e.type === 'response.output_audio.delta')).toHaveLength(
      inThrees.length + 2,
    );
  });
  it('masks a key the model stops inside (max tokens): the deltas end in [REDACTED], and so must the *.done and response.done texts', async () => {
    const cut = PT_KEY.slice(0, 16);
    const up = await realtimeUpstream({ text: textResponse(['Key: ', cut]) });
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = await openSession(gw);
    ask(s.rt, 'text');
    await untilCount(s.events, 'response.done', 1);
    const text = deltasOf(s.events, 'response.output_text.delta');
    expect(text).toBe('Key: [REDACTED]');
    // README: at most the key's first 3 characters reach the client; 8 or more cut short are masked.
    const leaking = s.events.filter((e) => JSON.stringify(e).includes(PT_KEY.slice(0, 8))).map((e) => e.type);
    expect(leaking).toEqual([]);
  });

  it('releases text held for a possible key at response.done when the response ends without its *.done events (cancelled)', async () => {
    const up = await realtimeUpstream({
      cancelled: (rid) => {
        const events = textResponse(['Say sk-pt', ' nothing more'])(rid);
        const item = events.find((e) => e.type === 'response.output_text.delta')!.item_id;
        // Only the first delta, then the response ends (cancelled): no output_text.done, no output_item.done.
        const first = events.find((e) => e.type === 'response.output_text.delta')!;
        return [
          events[0]!,
          events[1]!,
          events[2]!,
          first,
          {
            type: 'response.done',
            event_id: id('event'),
            response: { id: rid, object: 'realtime.response', status: 'cancelled', output: [], item },
          },
        ];
      },
    });
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = await openSession(gw);
    ask(s.rt, 'cancelled');
    await untilCount(s.events, 'response.done', 1);
    // "sk-pt" is 5 characters of the key: under 8, it goes as written, and before response.done.
    expect(deltasOf(s.events, 'response.output_text.delta')).toBe('Say sk-pt');
    const types = s.events.map((e) => e.type);
    expect(types.lastIndexOf('response.output_text.delta')).toBeLessThan(types.indexOf('response.done'));
  });

  it('masks a key a hostile upstream writes fully \\u-escaped (every character), in the delta and in the *.done text alike', async () => {
    const up = await realtimeUpstream();
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = await openSession(gw);
    const escaped = [...PT_KEY].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('');
    const base = '"response_id":"resp_x","item_id":"item_x","output_index":0,"content_index":0';
    up.peers[0]!.send(`{"type":"response.output_text.delta","event_id":"e1",${base},"delta":"k=${escaped}"}`);
    up.peers[0]!.send(`{"type":"response.output_text.done","event_id":"e2",${base},"text":"k=${escaped}"}`);
    await untilCount(s.events, 'response.output_text.done', 1);
    expect(JSON.stringify(s.events)).not.toContain(PT_KEY);
  });
});

describe('OpenAI SDK Realtime: errors and closes', () => {
  it('surfaces an upstream error event as an OpenAIRealtimeError with its fields, the session staying open', async () => {
    const up = await realtimeUpstream();
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = await openSession(gw);
    s.rt.send({ type: 'conversation.item.retrieve', item_id: 'item_nope', event_id: 'evt_client_1' });
    await vi.waitFor(() => expect(s.errors).toHaveLength(1), WAIT);
    const err = s.errors[0]!;
    expect(err).toBeInstanceOf(OpenAIRealtimeError);
    expect(err.error).toEqual({
      type: 'invalid_request_error',
      code: 'unknown_event',
      message: "Invalid value: 'conversation.item.retrieve'.",
      param: 'type',
      event_id: 'evt_client_1',
    });
    expect(err.event_id).toBe(up.sent[0]!.at(-1)!.event_id);
    ask(s.rt, 'text');
    await untilCount(s.events, 'response.done', 1);
  });

  it.each([
    [
      401,
      {
        error: {
          message: `Incorrect API key provided: ${PT_KEY}`,
          type: 'invalid_request_error',
          code: 'invalid_api_key',
        },
      },
    ],
    [
      403,
      {
        error: {
          message: 'Project does not have access to model gpt-realtime',
          type: 'invalid_request_error',
          code: 'model_not_found',
        },
      },
    ],
    [
      429,
      {
        error: { message: 'Rate limit reached for sessions', type: 'requests', code: 'rate_limit_exceeded' },
      },
    ],
    [
      500,
      {
        error: {
          message: 'The server had an error while processing your request.',
          type: 'server_error',
          code: null,
        },
      },
    ],
  ])(
    'relays an upstream handshake refusal %i: the SDK reports the status, the answer keeps its body (key scrubbed)',
    async (status, body) => {
      const up = await rawUpstream(track, (_req, socket) => {
        const text = JSON.stringify(body);
        socket.end(
          [
            `HTTP/1.1 ${status} Refused`,
            'content-type: application/json',
            `content-length: ${Buffer.byteLength(text)}`,
            ...(status === 429 ? ['retry-after: 7'] : []),
            'connection: close',
            '',
            text,
          ].join('\r\n'),
        );
      });
      const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
      // What the SDK alone surfaces.
      const plain = realtimeWS(sdk(gw, CLIENT_KEY));
      await expect(opened(plain)).rejects.toThrow(/closed before open/);
      expect(plain.errors.map((e) => e.message)).toEqual([`Unexpected server response: ${status}`]);
      // What a user who listens on the SDK's socket reads of the answer.
      const s = realtimeWS(sdk(gw, CLIENT_KEY));
      const answer = await new Promise<{ status: number; headers: Record<string, unknown>; text: string }>(
        (resolve) =>
          s.rt.socket.on('unexpected-response', (req, res) => {
            let text = '';
            res.setEncoding('utf8');
            res.on('data', (d: string) => (text += d));
            res.on('end', () => {
              req.destroy();
              resolve({ status: res.statusCode ?? 0, headers: res.headers, text });
            });
          }),
      );
      expect(answer.status).toBe(status);
      if (status === 429) expect(answer.headers['retry-after']).toBe('7');
      expect(answer.text).not.toContain(PT_KEY);
      const relayed = JSON.parse(answer.text) as { error: Json };
      expect(relayed.error.code).toBe(body.error.code);
      if (status !== 401) expect(relayed.error.message).toBe(body.error.message);
    },
  );

  it.each([
    [1000, 'session ended'],
    [1008, 'policy violation: content'],
    [1011, 'internal error'],
  ])('relays an upstream close %i with its reason to the SDK socket', async (code, reason) => {
    const up = await realtimeUpstream();
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = await openSession(gw);
    up.peers[0]!.close(code, reason);
    expect(await s.closed).toEqual({ code, reason });
    expect(s.errors).toEqual([]);
  });

  it('relays the SDK\'s close (default 1000 "OK", and a custom code) to the upstream', async () => {
    const up = await realtimeUpstream();
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const a = await openSession(gw);
    a.rt.close();
    expect((await a.closed).code).toBe(1000);
    await vi.waitFor(() => expect(up.closes[0]).toEqual({ code: 1000, reason: 'OK' }), WAIT);
    const b = await openSession(gw);
    b.rt.close({ code: 4000, reason: 'user hung up' });
    expect(await b.closed).toEqual({ code: 4000, reason: 'user hung up' });
    await vi.waitFor(() => expect(up.closes[1]).toEqual({ code: 4000, reason: 'user hung up' }), WAIT);
  });

  it('closes an SDK session mid-response with 1001 when the gateway shuts down, the upstream told too', async () => {
    const up = await realtimeUpstream({ hang: (rid) => [responseCreated(rid)] });
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const s = await openSession(gw);
    ask(s.rt, 'hang');
    await untilCount(s.events, 'response.created', 1);
    await gw.close();
    expect((await s.closed).code).toBe(1001);
    await vi.waitFor(() => expect(up.closes[0]?.code).toBe(1001), WAIT);
  });
});

describe('OpenAI SDK Realtime: log line and metrics', () => {
  it('writes one request line per session (path, status 101, no query, no key) and counts it once', async () => {
    const up = await realtimeUpstream();
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const before = unroutedCount(await metricsText(gw), '101');
    const s = await openSession(gw);
    ask(s.rt, 'text');
    await untilCount(s.events, 'response.done', 1);
    // README: the request line logs the path proxied; a session is logged once it is over.
    expect(requestLines(gw)).toHaveLength(0);
    s.rt.close();
    await s.closed;
    await vi.waitFor(() => expect(requestLines(gw)).toHaveLength(1), WAIT);
    const line = requestLines(gw)[0]!;
    expect(line.path).toBe('/v1/realtime');
    expect(line.status).toBe(101);
    expect(typeof line.latencyMs).toBe('number');
    expect(gw.rawLogs()).not.toContain(CLIENT_KEY);
    expect(gw.rawLogs()).not.toContain(PT_KEY);
    const after = await metricsText(gw);
    expect(unroutedCount(after, '101') - before).toBe(1);
    expect(after).not.toContain(CLIENT_KEY);
    expect(after).not.toContain(PT_KEY);
    // A refused SDK session is one line too.
    const refused = realtimeWS(sdk(gw, 'bad-key'));
    await expect(opened(refused)).rejects.toThrow(/closed before open/);
    await vi.waitFor(() => expect(requestLines(gw).map((l) => l.status)).toEqual([101, 401]), WAIT);
  });
});
