/**
 * Split-key masking of event streams and the gateway's own stop sequences, through the real wire:
 * - a passthrough event stream (the Responses API's) is relayed event by event as it comes, whatever line
 *   endings frame it, a key it spells across its `*.delta` events is masked (gzip, UTF-8 split across writes,
 *   `id:`/`event:` lines kept), other events go on byte for byte, and a client that goes away aborts it;
 * - a streamed chat answer masks a key, whole or split, even when another configured secret is its prefix,
 *   and text held back in each of `n` choices at `[DONE]` is never relayed as the key, while an answer that
 *   merely ends in a word the key starts with (vLLM's `token-abc123`) is relayed as written;
 * - a stream ended at a stop the gateway applies (Anthropic's whitespace stops) is a success in every count:
 *   no stream failure, the upstream's attempt a success, nothing left in flight, the breaker untouched, and
 *   the upstream's dropped connection costs the next request nothing.
 */
import type { ServerResponse } from 'node:http';
import { gzipSync } from 'node:zlib';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { dig, postChat, startGateway, type TestGateway } from '../helpers/gateway.js';
import {
  anthropicSseFrame,
  claudeClosing,
  claudeOpening,
  claudeTextDelta,
  collectChunks,
  joinChoices,
} from '../helpers/anthropic-route.js';
import { chunkFrame, gate, startMock, watchedUpstream } from '../helpers/mock-upstream.js';
import { scrape, select } from '../helpers/prom-text.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;

const PT_KEY = 'sk-proj-SPLITKEY-4f3e2d1c0b9a';
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };

/** A gateway whose `/v1/*` passthrough goes to provider `pt` at `url` (key PT_KEY). */
async function passthroughGateway(url: string): Promise<TestGateway> {
  return track(
    await startGateway({
      server: { passthrough: 'pt' },
      providers: [
        {
          name: 'pt',
          kind: 'openai',
          base_url: `${url}/v1`,
          api_key: PT_KEY,
          timeouts: RELAXED,
          models: [{ name: 'm' }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['pt/m'] } },
    }),
  );
}

/** A Responses API `response.output_text.delta` event's data. */
function textDeltaData(delta: string, seq: number, item = 'msg_1'): Json {
  return {
    type: 'response.output_text.delta',
    sequence_number: seq,
    item_id: item,
    output_index: 0,
    content_index: 0,
    delta,
  };
}

/** One Responses API SSE event (`event:` and `data:` lines), framed with `eol`. */
function ev(data: Json, eol = '\n'): string {
  return `event: ${String(data.type)}${eol}data: ${JSON.stringify(data)}${eol}${eol}`;
}

/** The `data:` payloads of an SSE text, whatever its line endings. */
function dataOf(sse: string): string[] {
  return sse
    .split(/\r\n|\r|\n/)
    .filter((l) => l.startsWith('data:'))
    .map((l) => (l.startsWith('data: ') ? l.slice(6) : l.slice(5)));
}

/** The joined `delta` text of an SSE text's events of `type`. */
function joinedDeltas(sse: string, type = 'response.output_text.delta'): string {
  let out = '';
  for (const d of dataOf(sse)) {
    if (!d.startsWith('{')) continue;
    const obj = JSON.parse(d) as Json;
    if (obj.type === type && typeof obj.delta === 'string') out += obj.delta;
  }
  return out;
}

/** POSTs to the passthrough `/v1/responses` and reads the answer whole. */
async function postResponses(gw: TestGateway): Promise<{ status: number; headers: Json; text: string }> {
  const res = await request(`${gw.url}/v1/responses`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4.1', input: 'say it', stream: true }),
    headersTimeout: 5000,
    bodyTimeout: 5000,
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

describe('passthrough event streams: framing', () => {
  // SSE lets each line end in CRLF, LF or CR: `data: ...\r\n` then an LF blank line ends an event as well as
  // `\n\n` does. A relay that only splits on `\n\n`, `\r\n\r\n` and `\r\r` never sees such an event end, and
  // holds the whole stream (up to 1 MiB) until the upstream closes: a streamed answer arrives all at once.
  for (const [name, eol, blank] of [
    ['CRLF lines, an LF blank line', '\r\n', '\n'],
    ['LF lines, a CRLF blank line', '\n', '\r\n'],
    // CR alone: the second CR ends the event at once, not when the next write shows no LF follows.
    ['CR lines, a CR blank line', '\r', '\r'],
  ] as const) {
    it(`events framed with ${name} reach the client as they come, not at the stream's end`, async () => {
      const seen = gate(1500);
      let upstreamWaited: 'client' | 'bound' | undefined;
      const up = track(
        await startMock(async (_r, res) => {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          const frame = (d: Json): string =>
            `event: ${String(d.type)}${eol}data: ${JSON.stringify(d)}${eol}${blank}`;
          res.write(frame(textDeltaData('Hello', 1)));
          upstreamWaited = await seen.wait;
          res.end(
            frame(textDeltaData(' world', 2)) + frame({ type: 'response.completed', sequence_number: 3 }),
          );
        }),
      );
      const gw = await passthroughGateway(up.url);
      const res = await request(`${gw.url}/v1/responses`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'gpt-4.1', input: 'hi', stream: true }),
        headersTimeout: 5000,
        bodyTimeout: 5000,
      });
      let text = '';
      for await (const chunk of res.body) {
        text += (chunk as Buffer).toString('utf8');
        if (text.includes('Hello')) seen.open();
      }
      expect(upstreamWaited).toBe('client');
      expect(joinedDeltas(text)).toBe('Hello world');
    });
  }

  it('a key spelt across deltas of events framed with LF lines and a CRLF blank line is masked', async () => {
    const pieces = ['Your key is ', 'sk-pr', 'oj-SPLIT', 'KEY-4f3e', '2d1c0b9a', ' ok'];
    const up = track(
      await startMock((_r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const frame = (d: Json): string => `event: ${String(d.type)}\ndata: ${JSON.stringify(d)}\n\r\n`;
        res.end(
          pieces.map((p, i) => frame(textDeltaData(p, i + 1))).join('') +
            frame({ type: 'response.completed', sequence_number: 99 }),
        );
      }),
    );
    const gw = await passthroughGateway(up.url);
    const r = await postResponses(gw);
    const text = joinedDeltas(r.text);
    expect(text.startsWith('Your key is ')).toBe(true);
    expect(text).not.toContain('SPLITKEY');
  });

  it('a key spelt across deltas is masked when the stream is gzip-encoded (sent decoded)', async () => {
    const pieces = ['Your key is ', 'sk-pr', 'oj-SPLIT', 'KEY-4f3e', '2d1c0b9a', ' ok'];
    const up = track(
      await startMock((_r, res) => {
        const body = pieces.map((p, i) => ev(textDeltaData(p, i + 1))).join('');
        res.writeHead(200, { 'content-type': 'text/event-stream', 'content-encoding': 'gzip' });
        res.end(gzipSync(Buffer.from(body + ev({ type: 'response.completed', sequence_number: 99 }))));
      }),
    );
    const gw = await passthroughGateway(up.url);
    const r = await postResponses(gw);
    expect(r.status).toBe(200);
    expect(r.headers['content-encoding']).toBeUndefined();
    const text = joinedDeltas(r.text);
    expect(text).not.toContain(PT_KEY);
    expect(text).not.toContain('SPLITKEY');
    expect(text.startsWith('Your key is ')).toBe(true);
    expect(text.endsWith(' ok')).toBe(true);
  });

  it('written a few bytes at a time (UTF-8 characters split), the key is masked and the text intact', async () => {
    const pieces = ['Café ünïcødé → ', 'sk-pr', 'oj-SPLIT', 'KEY-4f3e', '2d1c0b9a', ' 日本語 ✓'];
    const up = track(
      await startMock(async (_r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const bytes = Buffer.from(
          pieces.map((p, i) => ev(textDeltaData(p, i + 1), '\r\n')).join('') +
            ev({ type: 'response.completed', sequence_number: 99 }, '\r\n'),
        );
        for (let at = 0; at < bytes.length; at += 5) {
          res.write(bytes.subarray(at, at + 5));
          if (at % 200 === 0) await new Promise((r) => setTimeout(r, 1));
        }
        res.end();
      }),
    );
    const gw = await passthroughGateway(up.url);
    const r = await postResponses(gw);
    const text = joinedDeltas(r.text);
    expect(text).not.toContain('SPLITKEY');
    expect(text.startsWith('Café ünïcødé → ')).toBe(true);
    expect(text.endsWith(' 日本語 ✓')).toBe(true);
    expect(r.text).not.toContain('\uFFFD');
  });

  it('an annotation event between two deltas of one text does not let the rest of the key through', async () => {
    // The Responses API sends `response.output_text.annotation.added` inside a text (a web search's
    // citation): the text goes on after it. It is no end of the text, so it must not end the hold on the key.
    const up = track(
      await startMock((_r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          ev(textDeltaData('Key: ', 1)) +
            ev(textDeltaData('sk-pr', 2)) +
            ev({
              type: 'response.output_text.annotation.added',
              sequence_number: 3,
              item_id: 'msg_1',
              output_index: 0,
              content_index: 0,
              annotation_index: 0,
              annotation: { type: 'url_citation', url: 'https://example.com', start_index: 0, end_index: 3 },
            }) +
            ev(textDeltaData('oj-SPLITKEY-4f3e2d1c0b9a', 4)) +
            ev(textDeltaData(' done', 5)) +
            ev({ type: 'response.completed', sequence_number: 6 }),
        );
      }),
    );
    const gw = await passthroughGateway(up.url);
    const r = await postResponses(gw);
    const text = joinedDeltas(r.text);
    expect(text).not.toContain('SPLITKEY-4f3e2d1c0b9a');
    expect(text.startsWith('Key: ')).toBe(true);
    expect(text.endsWith(' done')).toBe(true);
  });

  it('base64 audio deltas and id/retry lines go on byte for byte', async () => {
    const audio = Buffer.alloc(6000, 7).toString('base64');
    let sent = '';
    const up = track(
      await startMock((_r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        sent =
          'retry: 3000\n\n' +
          `id: 1\nevent: response.audio.delta\ndata: ${JSON.stringify({ type: 'response.audio.delta', sequence_number: 1, item_id: 'a', output_index: 0, content_index: 0, delta: audio })}\n\n` +
          `id: 2\nevent: response.audio.delta\ndata:${JSON.stringify({ type: 'response.audio.delta', sequence_number: 2, item_id: 'a', output_index: 0, content_index: 0, delta: audio.slice(0, 100) })}\n\n` +
          ev({ type: 'response.completed', sequence_number: 3 });
        res.end(sent);
      }),
    );
    const gw = await passthroughGateway(up.url);
    const r = await postResponses(gw);
    expect(r.text).toBe(sent);
  });

  it('a text/event-stream with a Content-Length whose delta is rewritten is relayed whole', async () => {
    const body =
      ev(textDeltaData('Key ', 1)) +
      ev(textDeltaData('sk-pr', 2)) +
      ev(textDeltaData('oj-SPLITKEY-4f3e2d1c0b9a', 3)) +
      ev({ type: 'response.completed', sequence_number: 4 });
    const up = track(
      await startMock((_r, res) => {
        res.writeHead(200, {
          'content-type': 'text/event-stream',
          'content-length': String(Buffer.byteLength(body)),
        });
        res.end(body);
      }),
    );
    const gw = await passthroughGateway(up.url);
    const r = await postResponses(gw);
    expect(r.status).toBe(200);
    expect(joinedDeltas(r.text)).not.toContain('SPLITKEY');
    expect(dataOf(r.text).filter((d) => d.includes('response.completed'))).toHaveLength(1);
  });

  it('a client that goes away mid-stream has the upstream request aborted at once', async () => {
    const up = await watchedUpstream(track, (_r, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(ev(textDeltaData('first', 1)));
      let n = 1;
      const t = setInterval(() => {
        if (res.destroyed || ++n > 40) {
          clearInterval(t);
          if (!res.destroyed) res.end();
          return;
        }
        res.write(ev(textDeltaData(` more ${n}`, n)));
      }, 50);
    });
    const gw = await passthroughGateway(up.url);
    const ac = new AbortController();
    const res = await request(`${gw.url}/v1/responses`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4.1', input: 'hi', stream: true }),
      signal: ac.signal,
    });
    let text = '';
    try {
      for await (const chunk of res.body) {
        text += (chunk as Buffer).toString('utf8');
        if (text.includes('first')) ac.abort();
      }
    } catch {
      /* aborted */
    }
    await until('the upstream request closed', () => up.recs[0]?.closed === true, 1000);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Streamed chat answers
// ---------------------------------------------------------------------------------------------------------

const UP_KEY = 'sk-live-PREFIX-12345678';
/** A second credential of the same provider that starts with its key (a proxy's token built on it). */
const UP_TOKEN = `${UP_KEY}-tail-ABCDEF99`;

/** A gateway whose route `r` is OpenAI-compatible provider `up` at `url` (key UP_KEY, x-api-key UP_TOKEN). */
async function chatGateway(url: string): Promise<TestGateway> {
  return track(
    await startGateway({
      providers: [
        {
          name: 'up',
          kind: 'openai',
          base_url: `${url}/v1`,
          api_key: UP_KEY,
          headers: { 'x-api-key': UP_TOKEN },
          timeouts: RELAXED,
          models: [{ name: 'm' }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['up/m'] } },
    }),
  );
}

/** Each choice's joined content of an SSE chat answer. */
function contents(sse: string): string[] {
  const out: string[] = [];
  for (const d of dataOf(sse)) {
    if (!d.startsWith('{')) continue;
    for (const c of ((JSON.parse(d) as Json).choices ?? []) as Json[]) {
      const i = typeof c.index === 'number' ? c.index : 0;
      const t = dig(c, 'delta', 'content');
      out[i] = (out[i] ?? '') + (typeof t === 'string' ? t : '');
    }
  }
  return out;
}

describe('streamed chat answers: a key another configured secret starts with', () => {
  it('the longer secret in one delta is masked whole, not cut after its shorter prefix', async () => {
    const up = track(
      await startMock((r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          chunkFrame(r.body.model, { role: 'assistant', content: '' }) +
            chunkFrame(r.body.model, { content: `token: ${UP_TOKEN} end` }) +
            chunkFrame(r.body.model, {}, 'stop') +
            'data: [DONE]\n\n',
        );
      }),
    );
    const gw = await chatGateway(up.url);
    const r = await postChat(gw, { model: 'r', messages: [{ role: 'user', content: 'x' }], stream: true });
    expect(r.status).toBe(200);
    const [text = ''] = contents(r.text);
    expect(text.startsWith('token: ')).toBe(true);
    expect(text).not.toContain('tail-ABCDEF99');
  });

  it('the longer secret spelt across deltas is masked whole', async () => {
    const pieces = ['token: ', 'sk-li', 've-PREFIX-', '1234', '5678-ta', 'il-ABC', 'DEF99', ' end'];
    const up = track(
      await startMock((r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          chunkFrame(r.body.model, { role: 'assistant', content: '' }) +
            pieces.map((p) => chunkFrame(r.body.model, { content: p })).join('') +
            chunkFrame(r.body.model, {}, 'stop') +
            'data: [DONE]\n\n',
        );
      }),
    );
    const gw = await chatGateway(up.url);
    const r = await postChat(gw, { model: 'r', messages: [{ role: 'user', content: 'x' }], stream: true });
    const [text = ''] = contents(r.text);
    expect(text.startsWith('token: ')).toBe(true);
    expect(text.endsWith(' end')).toBe(true);
    expect(text).not.toContain('ABCDEF99');
  });

  it('n = 2, each choice stopping inside the key at [DONE]: the OpenAI SDK reads [REDACTED] in both', async () => {
    const frame = (model: unknown, choices: Json[]): string =>
      `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: String(model), choices })}\n\n`;
    const up = track(
      await startMock((r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const m = r.body.model;
        res.end(
          frame(m, [
            { index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null },
            { index: 1, delta: { role: 'assistant', content: '' }, finish_reason: null },
          ]) +
            frame(m, [{ index: 0, delta: { content: 'zero: sk-li' }, finish_reason: null }]) +
            frame(m, [{ index: 1, delta: { content: 'one: sk-live-PRE' }, finish_reason: null }]) +
            frame(m, [{ index: 0, delta: { content: 've-PREF' }, finish_reason: null }]) +
            'data: [DONE]\n\n',
        );
      }),
    );
    const gw = await chatGateway(up.url);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const stream = await client.chat.completions.create({
      model: 'r',
      n: 2,
      messages: [{ role: 'user', content: 'x' }],
      stream: true,
    });
    const { texts } = joinChoices(await collectChunks(stream));
    expect(texts[0]?.startsWith('zero: ')).toBe(true);
    expect(texts[1]?.startsWith('one: ')).toBe(true);
    for (const t of texts) {
      expect(t).not.toContain('sk-live');
      expect(t.endsWith('[REDACTED]')).toBe(true);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// Anthropic streams ended at a stop the gateway applies
// ---------------------------------------------------------------------------------------------------------

/** Claude writing `first` (a line, a "\n", more), then more text every 50 ms for about a second, then its end. */
function claudeGoingOn(first: string) {
  return (_r: unknown, res: ServerResponse): void => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(claudeOpening() + claudeTextDelta(first));
    let n = 0;
    const t = setInterval(() => {
      if (res.destroyed) return clearInterval(t);
      if (++n < 20) {
        res.write(claudeTextDelta(` more ${n}`));
        return;
      }
      clearInterval(t);
      res.end(claudeClosing(300));
    }, 50);
  };
}

function anthProvider(name: string, url: string): Json {
  return {
    name,
    kind: 'anthropic',
    base_url: url,
    api_key: `sk-ant-${name}-test-0001`,
    timeouts: RELAXED,
    models: [{ name: 'claude-x' }],
  };
}

const ASK = [{ role: 'user', content: 'one line please' }];

describe('a stream ended at a local stop is a success in every count', () => {
  it('no stream failure, a successful attempt, nothing in flight, tokens counted, breaker untouched', async () => {
    const up = await watchedUpstream(track, claudeGoingOn('one line\nand then'));
    const gw = track(
      await startGateway({
        providers: [anthProvider('anth', up.url)],
        routes: { r: { strategy: 'priority', targets: ['anth/claude-x'] } },
      }),
    );
    const r = await postChat(gw, { model: 'r', messages: ASK, stop: '\n', stream: true });
    expect(r.status).toBe(200);
    expect(contents(r.text)[0]).toBe('one line');
    expect(dataOf(r.text).at(-1)).toBe('[DONE]');
    await until('the upstream request closed', () => up.recs[0]?.closed === true, 1000);
    // Give the gateway a moment to see its dropped upstream connection, then look at every count.
    await new Promise((res) => setTimeout(res, 100));
    const m = await scrape(gw.url);
    const sum = (name: string, labels: Record<string, string> = {}): number =>
      select(m, name, labels).reduce((a, s) => a + s.value, 0);
    expect(sum('llm_router_stream_failures_total')).toBe(0);
    expect(sum('llm_router_upstream_attempts_total', { provider: 'anth', outcome: 'success' })).toBe(1);
    expect(sum('llm_router_upstream_attempts_total', { provider: 'anth' })).toBe(1);
    expect(sum('llm_router_inflight_requests', { provider: 'anth' })).toBe(0);
    expect(sum('llm_router_requests_total', { route: 'r', status: '200' })).toBe(1);
    expect(sum('llm_router_tokens_total', { provider: 'anth', kind: 'completion' })).toBeGreaterThan(0);
    expect(sum('llm_router_tokens_total', { provider: 'anth', kind: 'prompt' })).toBe(9);
    expect(sum('llm_router_circuit_transitions_total', { provider: 'anth' })).toBe(0);
    const line = gw.logs.find((l) => l.msg === 'request');
    expect(line).toMatchObject({ route: 'r', status: 200, attempts: 1, stream: true, promptTokens: 9 });
    expect(line?.completionTokens).toBeGreaterThan(0);
    expect(line?.error).toBeUndefined();
  });

  it('the next request to the same upstream, after its connection was dropped at the stop, is answered', async () => {
    const up = await watchedUpstream(track, claudeGoingOn('line one\nrest'));
    const gw = track(
      await startGateway({
        providers: [anthProvider('anth', up.url)],
        routes: { r: { strategy: 'priority', targets: ['anth/claude-x'] } },
      }),
    );
    for (let i = 0; i < 3; i++) {
      const r = await postChat(gw, { model: 'r', messages: ASK, stop: ['\n'], stream: true });
      expect(r.status).toBe(200);
      expect(r.headers['x-router-attempts']).toBe('1');
      expect(contents(r.text)[0]).toBe('line one');
    }
    expect(up.recs).toHaveLength(3);
  });

  it('after a failover before the commit, the second Anthropic upstream ends at the stop', async () => {
    const bad = track(
      await startMock((_r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          claudeOpening() +
            anthropicSseFrame({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }),
        );
      }),
    );
    const good = await watchedUpstream(track, claudeGoingOn('kept\ncut'));
    const gw = track(
      await startGateway({
        providers: [anthProvider('a1', bad.url), anthProvider('a2', good.url)],
        routes: { r: { strategy: 'priority', targets: ['a1/claude-x', 'a2/claude-x'] } },
      }),
    );
    const r = await postChat(gw, { model: 'r', messages: ASK, stop: '\n', stream: true });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-provider']).toBe('a2');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(contents(r.text)[0]).toBe('kept');
    const m = await scrape(gw.url);
    expect(select(m, 'llm_router_stream_failures_total').reduce((a, s) => a + s.value, 0)).toBe(0);
  });

  it('a client that aborts right as the stop comes leaves nothing in flight and the next request works', async () => {
    const up = await watchedUpstream(track, claudeGoingOn('abort here\nrest'));
    const gw = track(
      await startGateway({
        providers: [anthProvider('anth', up.url)],
        routes: { r: { strategy: 'priority', targets: ['anth/claude-x'] } },
      }),
    );
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const ac = new AbortController();
    const stream = await client.chat.completions.create(
      { model: 'r', messages: [{ role: 'user', content: 'x' }], stop: '\n', stream: true },
      { signal: ac.signal },
    );
    try {
      for await (const c of stream) if (c.choices[0]?.delta.content?.includes('abort')) ac.abort();
    } catch {
      /* aborted */
    }
    await until('the upstream request closed', () => up.recs[0]?.closed === true, 1000);
    await until(
      'nothing in flight',
      async () =>
        select(await scrape(gw.url), 'llm_router_inflight_requests', { provider: 'anth' }).every(
          (s) => s.value === 0,
        ),
      1000,
    );
    const again = await postChat(gw, { model: 'r', messages: ASK, stop: '\n', stream: true });
    expect(again.status).toBe(200);
    expect(contents(again.text)[0]).toBe('abort here');
  });
});

describe('answers that only look like the start of a key', () => {
  // vLLM's documented key (`vllm serve --api-key token-abc123`) is what many local deployments use: an answer
  // that ends in the word "token" is no key, and must reach the client as written.
  it('an answer ending in the word "token" under the key token-abc123 is relayed as written', async () => {
    const up = track(
      await startMock((r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          chunkFrame(r.body.model, { role: 'assistant', content: '' }) +
            chunkFrame(r.body.model, { content: 'Each word piece is one' }) +
            chunkFrame(r.body.model, { content: ' token' }) +
            chunkFrame(r.body.model, {}, 'stop') +
            'data: [DONE]\n\n',
        );
      }),
    );
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'vllm',
            kind: 'openai',
            base_url: `${up.url}/v1`,
            api_key: 'token-abc123',
            timeouts: RELAXED,
            models: [{ name: 'm' }],
          },
        ],
        routes: { r: { strategy: 'priority', targets: ['vllm/m'] } },
      }),
    );
    const r = await postChat(gw, { model: 'r', messages: [{ role: 'user', content: 'x' }], stream: true });
    expect(contents(r.text)[0]).toBe('Each word piece is one token');
  });
});
