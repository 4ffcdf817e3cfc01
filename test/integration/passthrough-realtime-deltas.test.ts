/**
 * A Realtime (WebSocket) session whose upstream spells the provider's key across delta messages, a token a
 * message, as a model repeating it does: the joined text carries no key, as a Responses stream's does
 * (secret-channels.test.ts). Honest text that only starts like the key is held a message and goes on whole;
 * a channel that ends while holding lets its text go before the message that ended it. Audio deltas are
 * base64 a client decodes one by one: relayed byte for byte, on the WebSocket and in an SSE answer alike.
 */
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import type { WebSocket } from 'ws';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startRawUpstream } from '../helpers/mock-upstream.js';
import { passthroughGateways, wsClients, wsUpstream, wsUrl } from '../helpers/ws.js';

const track = closeAfterEach();
/** Every character of it is one base64 has too: an audio delta can end in its first ones. */
const KEY = 'AIzaSyRealtime0Key1With2Base64Letters';
const TIMEOUTS = { connect_ms: 2000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 20000 };

const { gateway } = passthroughGateways(track, { key: KEY, timeouts: TIMEOUTS });
const { openClient } = wsClients<string>(track, { record: (data) => data.toString('utf8') });

type Event = Record<string, unknown> & { type: string };

/** A session whose upstream sends `events`, one message each, as the session opens. */
async function sessionOf(events: readonly Event[], until: (messages: string[]) => boolean): Promise<Event[]> {
  const up = await wsUpstream(track, {
    echo: false,
    onSession: (ws: WebSocket) => {
      for (const e of events) ws.send(JSON.stringify(e));
    },
  });
  const gw = await gateway(`${up.url}/v1`);
  const c = await openClient(wsUrl(gw));
  const deadline = Date.now() + 10_000;
  while (!until(c.messages) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  return c.messages.map((m) => JSON.parse(m) as Event);
}

const textDelta = (delta: string, type = 'response.output_text.delta'): Event => ({
  type,
  item_id: 'item_1',
  output_index: 0,
  content_index: 0,
  delta,
});
const textDone = (type = 'response.output_text.done'): Event => ({
  type,
  item_id: 'item_1',
  output_index: 0,
  content_index: 0,
});
const joined = (events: readonly Event[], type = 'response.output_text.delta'): string =>
  events
    .filter((e) => e.type === type)
    .map((e) => String(e.delta))
    .join('');
const hasDone = (messages: string[]): boolean => messages.some((m) => m.includes('.done"'));

describe('Realtime text deltas that spell the key across messages', () => {
  for (const type of ['response.output_text.delta', 'response.audio_transcript.delta']) {
    it(`${type}: the joined text carries no key, the text around it as sent`, async () => {
      const parts = [
        'Your key is ',
        KEY.slice(0, 5),
        KEY.slice(5, 13),
        KEY.slice(13, 30),
        KEY.slice(30),
        ' ok.',
      ];
      const got = await sessionOf(
        [...parts.map((p) => textDelta(p, type)), textDone(type.replace('.delta', '.done'))],
        hasDone,
      );
      const text = joined(got, type);
      expect(text).not.toContain(KEY);
      expect(text).not.toContain(KEY.slice(0, 8));
      expect(text).toMatch(/^Your key is .*\[REDACTED\].* ok\.$/);
      expect(got.at(-1)?.type).toBe(type.replace('.delta', '.done'));
    });
  }

  it('honest text that starts like the key: held a message, then joined exactly as sent, message for message', async () => {
    const parts = ['Google keys start with AIzaS', 'y and then go on; this one ', 'does not.'];
    const got = await sessionOf([...parts.map((p) => textDelta(p)), textDone()], hasDone);
    expect(joined(got)).toBe(parts.join(''));
    expect(got.map((e) => e.type)).toEqual([
      ...parts.map(() => 'response.output_text.delta'),
      'response.output_text.done',
    ]);
  });

  it('a channel that ends while holding the start of the key: what it held goes before the .done, an event of its own', async () => {
    const events = [textDelta('The key: '), textDelta(KEY.slice(0, 12)), textDone()].map((e, i) => ({
      ...e,
      event_id: `event_${i}`,
    }));
    const got = await sessionOf(events, hasDone);
    const types = got.map((e) => e.type);
    expect(types.at(-1)).toBe('response.output_text.done');
    expect(joined(got)).toBe('The key: [REDACTED]');
    // The message that lets the held text go is not a repeat of the delta it is shaped like.
    const ids = got.map((e) => e.event_id);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('a session the upstream closes while a channel holds honest text: the text goes before the close', async () => {
    const up = await wsUpstream(track, {
      echo: false,
      onSession: (ws: WebSocket) => {
        ws.send(JSON.stringify(textDelta('Google keys begin AIza')));
        setTimeout(() => ws.close(1000, 'bye'), 50);
      },
    });
    const gw = await gateway(`${up.url}/v1`);
    const c = await openClient(wsUrl(gw));
    expect((await c.closed).code).toBe(1000);
    expect(joined(c.messages.map((m) => JSON.parse(m) as Event))).toBe('Google keys begin AIza');
  });

  // Another item's closing message (the user's transcript done mid-answer) ends no hold of this one.
  it("a .completed of another item between two deltas: this item's text arrives whole", async () => {
    const got = await sessionOf(
      [
        textDelta('Keys begin AIzaSyRe'),
        {
          type: 'conversation.item.input_audio_transcription.completed',
          item_id: 'user_1',
          transcript: 'hm',
        },
        textDelta('ally not a key.'),
        textDone(),
      ],
      hasDone,
    );
    expect(joined(got)).toBe('Keys begin AIzaSyReally not a key.');
  });

  // Parallel function calls may interleave: another channel's delta ends no hold (it once put [REDACTED]
  // in place of the 8 held characters here).
  it("two channels interleaved, one holding 8 of the key's first characters: each keeps its own text", async () => {
    const other = (delta: string): Event => ({ ...textDelta(delta), item_id: 'item_2' });
    const got = await sessionOf(
      [textDelta('one AIzaSyRe'), other('two '), textDelta('ally not'), other('words'), textDone()],
      hasDone,
    );
    const of = (item: string): string =>
      got
        .filter((e) => e.type === 'response.output_text.delta' && e.item_id === item)
        .map((e) => String(e.delta))
        .join('');
    expect(of('item_1')).toBe('one AIzaSyReally not');
    expect(of('item_2')).toBe('two words');
  });
});

describe('audio deltas (base64, decoded delta by delta) are not held', () => {
  /** Base64 that ends in the key's first characters: held back, the client could not decode it. */
  const audio = ['UklGRiQAAABXQVZFZm10IAIza', 'AIzaSy', 'AAAA'];

  it('a Realtime response.output_audio.delta ending like the key goes on as it came', async () => {
    const events = [
      ...audio.map((delta) => ({ ...textDelta(delta, 'response.output_audio.delta') })),
      textDone('response.output_audio.done'),
    ];
    const got = await sessionOf(events, hasDone);
    expect(got).toEqual(events);
  });

  it('a Responses SSE response.audio.delta ending like the key is relayed byte for byte', async () => {
    const body =
      audio
        .map((delta, n) => {
          const e = { ...textDelta(delta, 'response.audio.delta'), sequence_number: n };
          return `event: response.audio.delta\ndata: ${JSON.stringify(e)}\n\n`;
        })
        .join('') +
      `event: response.audio.done\ndata: ${JSON.stringify(textDone('response.audio.done'))}\n\n`;
    const up = await startRawUpstream(track, (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(body);
    });
    const gw = await gateway(`${up.url}/v1`);
    const res = await request(`${gw.url}/v1/responses`, {
      method: 'POST',
      body: '{"model":"m","input":"hi","stream":true}',
      headers: { 'content-type': 'application/json' },
    });
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe(body);
  });
});
