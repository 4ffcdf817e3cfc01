/**
 * The Anthropic translation as a production user meets it (SPEC §2 failover, §4 translation; README
 * "Anthropic upstreams"), against hand-written Messages API upstreams on loopback that answer exactly as
 * Anthropic does:
 * - Anthropic words account problems as HTTP 400 `invalid_request_error` ("Your credit balance is too
 *   low...", "You have reached your specified API usage limits...", "This organization has been disabled."):
 *   they are our account's, not the client's, so the route fails over as it does for a 402; a genuine 400 is still relayed, not failed over.
 * - A tool call the client sends back reaches Claude as Claude wrote it: an id past 2^53 and a price written
 *   to 17 places keep their digits in the `tool_use` input (the answer's `arguments` keep them already).
 * - `web_search_options` (a web-grounded answer) is never silently dropped on an Anthropic upstream: it is
 *   either given to Claude as its web search tool, or Anthropic is left out (a 400 naming it when no other
 *   upstream can serve).
 * - A Claude stream's `error` event (overloaded_error) before the first content is failed over invisibly: the
 *   client sees one stream, every chunk with the next upstream's id, one role chunk, usage, `[DONE]`; after
 *   the first content it ends with an OpenAI error event and no `[DONE]`.
 */
import type { ServerResponse } from 'node:http';
import { describe, expect, it } from 'vitest';
import { anthropicSseFrame } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postTo, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, sendJson, startMock, startRecordingMock } from '../helpers/mock-upstream.js';
import { sseEvents } from '../helpers/sim-wire.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;

const MODEL = 'claude-sonnet-4-5';
const RELAXED = { connect_ms: 1000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 6000 };
const HI = [{ role: 'user', content: 'hi' }];

function messageStart(id: string, usage: Json = { input_tokens: 10, output_tokens: 1 }): Json {
  return {
    type: 'message_start',
    message: {
      id,
      type: 'message',
      role: 'assistant',
      model: MODEL,
      content: [],
      stop_reason: null,
      stop_sequence: null,
      usage,
    },
  };
}

/** A whole streamed text answer `text`, as the Messages API sends it. */
function textEvents(id: string, text: string): Json[] {
  return [
    messageStart(id),
    { type: 'ping' },
    { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
    { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text } },
    { type: 'content_block_stop', index: 0 },
    {
      type: 'message_delta',
      delta: { stop_reason: 'end_turn', stop_sequence: null },
      usage: { output_tokens: 3 },
    },
    { type: 'message_stop' },
  ];
}

function claudeText(text: string): Json {
  return {
    id: 'msg_01ReviewJson',
    type: 'message',
    role: 'assistant',
    model: MODEL,
    content: [{ type: 'text', text }],
    stop_reason: 'end_turn',
    stop_sequence: null,
    usage: { input_tokens: 10, output_tokens: 3 },
  };
}

function sse(res: ServerResponse, events: Json[]): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(events.map(anthropicSseFrame).join(''));
}

/** Answers as Claude does: the SSE sequence of `text` when the request streams, else the JSON message. */
function answerClaude(body: Json, res: ServerResponse, text: string, id = 'msg_01Review'): void {
  if (body.stream === true) sse(res, textEvents(id, text));
  else sendJson(res, 200, claudeText(text));
}

const anthropicProvider = (name: string, url: string): Json => ({
  name,
  kind: 'anthropic',
  base_url: url,
  api_key: `sk-ant-${name}-review-key-0123456789`,
  timeouts: RELAXED,
  models: [{ name: MODEL }],
});

/** A gateway whose priority route `r` is the given providers' models, in order. */
async function gatewayOver(providers: Json[], targets: string[]): Promise<TestGateway> {
  return track(await startGateway({ providers, routes: { r: { strategy: 'priority', targets } } }));
}

const chat = (gw: TestGateway, body: Json) =>
  postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: HI, ...body });

/** The `data:` payloads of an SSE body, parsed when JSON. */
function dataOf(text: string): unknown[] {
  return sseEvents(text).map((e) => {
    try {
      return JSON.parse(e.data) as unknown;
    } catch {
      return e.data;
    }
  });
}

// ---------------------------------------------------------------------------------------------

describe('Anthropic account refusals worded as a 400', () => {
  // Anthropic answers an account out of credit, past its spending limit or disabled with HTTP 400
  // invalid_request_error (not the 402 billing_error its docs list): the request is fine, our account there is
  // not, and another provider of the route can answer it (README: provider 401/402/403 fail over).
  const ACCOUNT_REFUSALS = [
    'Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.',
    'You have reached your specified API usage limits. You will regain access on 2026-04-01 at 00:00 UTC.',
    'This organization has been disabled.',
  ];

  it.each(ACCOUNT_REFUSALS)(
    'a 400 "%s" fails over to the next upstream, JSON and streamed',
    async (message) => {
      const claude = track(
        await startMock((_q, res) =>
          sendJson(res, 400, {
            type: 'error',
            error: { type: 'invalid_request_error', message },
            request_id: 'req_011CbrFTcXhtiMzr3s6EocF7',
          }),
        ),
      );
      const openai = track(await startMock((q, res) => answerChat(res, q.body, 'from openai')));
      const gw = await gatewayOver(
        [
          anthropicProvider('anth', claude.url),
          {
            name: 'oai',
            kind: 'openai',
            base_url: `${openai.url}/v1`,
            api_key: 'sk-oai-review-key-0123456789',
            timeouts: RELAXED,
            models: [{ name: 'gpt-4o-mini' }],
          },
        ],
        [`anth/${MODEL}`, 'oai/gpt-4o-mini'],
      );

      const json = await chat(gw, {});
      const streamed = await chat(gw, { stream: true });
      expect(claude.received.length).toBe(2);
      expect(
        [json, streamed].map((r) => ({
          status: r.status,
          provider: r.headers['x-router-provider'],
          trail: r.headers['x-router-trail']?.startsWith(`anth/${MODEL}=`) ?? false,
        })),
      ).toEqual([
        { status: 200, provider: 'oai', trail: true },
        { status: 200, provider: 'oai', trail: true },
      ]);
      expect(json.json).toMatchObject({ choices: [{ message: { content: 'from openai' } }] });
      expect(streamed.text).toContain('from openai');
    },
  );

  it("a genuine invalid_request_error is the client's: relayed as a 400 with its message, no failover", async () => {
    const claude = track(
      await startMock((_q, res) =>
        sendJson(res, 400, {
          type: 'error',
          error: {
            type: 'invalid_request_error',
            message: 'messages.0.content.1.image.source.base64: invalid base64 data',
          },
        }),
      ),
    );
    const openai = track(await startMock((q, res) => answerChat(res, q.body, 'from openai')));
    const gw = await gatewayOver(
      [
        anthropicProvider('anth', claude.url),
        {
          name: 'oai',
          kind: 'openai',
          base_url: `${openai.url}/v1`,
          api_key: 'sk-oai-review-key-0123456789',
          timeouts: RELAXED,
          models: [{ name: 'gpt-4o-mini' }],
        },
      ],
      [`anth/${MODEL}`, 'oai/gpt-4o-mini'],
    );
    const r = await chat(gw, {});
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({
      error: {
        type: 'invalid_request_error',
        message: 'messages.0.content.1.image.source.base64: invalid base64 data',
      },
    });
    expect(openai.received.length).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------

describe('a tool loop sent back to Claude', () => {
  // The gateway relays Claude's tool input as written (README: a 20-digit id keeps its digits in `arguments`,
  // JSON and stream). The client sends that call back on the next round: Claude must see the call it made, not
  // one whose order id and amount went through a double.
  it('tool_calls arguments with an id past 2^53 and a 17-digit price reach Claude with their digits', async () => {
    const up = track(await startRecordingMock((_b, _n, res) => sendJson(res, 200, claudeText('Refunded.'))));
    const gw = await gatewayOver([anthropicProvider('anth', up.url)], [`anth/${MODEL}`]);
    const args = '{"order_id":12345678901234567890,"amount":19.990000000000001}';
    const r = await chat(gw, {
      messages: [
        { role: 'user', content: 'Refund order 12345678901234567890.' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'toolu_01R', type: 'function', function: { name: 'refund', arguments: args } }],
        },
        { role: 'tool', tool_call_id: 'toolu_01R', content: '{"ok":true}' },
      ],
      tools: [
        {
          type: 'function',
          function: {
            name: 'refund',
            parameters: {
              type: 'object',
              properties: { order_id: { type: 'integer' }, amount: { type: 'number' } },
            },
          },
        },
      ],
    });
    expect(r.status).toBe(200);
    const sent = up.texts[0] ?? '';
    // The tool_use block as sent: its input is the arguments text the client gave, digit for digit.
    const input = /"type":"tool_use","id":"toolu_01R","name":"refund","input":(\{[^}]*\})/.exec(sent)?.[1];
    expect(input).toBe(args);
  });
});

// ---------------------------------------------------------------------------------------------

describe('web_search_options on an Anthropic upstream', () => {
  // A client asking for a web-grounded answer (gpt-4o-search-preview's `web_search_options`) must not get an
  // ungrounded one from Claude in silence: Claude's own web search tool serves it, or Anthropic is not a
  // candidate (as for audio output: README "What Anthropic has no place for").
  it('is given to Claude as its web_search tool, or refused with a 400 naming it: never dropped', async () => {
    const up = track(await startMock((q, res) => answerClaude(q.body, res, 'It is sunny.')));
    const gw = await gatewayOver([anthropicProvider('anth', up.url)], [`anth/${MODEL}`]);
    const r = await chat(gw, {
      messages: [{ role: 'user', content: 'What is the weather in Oslo right now?' }],
      web_search_options: {
        search_context_size: 'low',
        user_location: { type: 'approximate', approximate: { country: 'NO', city: 'Oslo' } },
      },
    });
    const tools = up.received[0]?.body.tools;
    const mapped =
      r.status === 200 &&
      Array.isArray(tools) &&
      tools.some(
        (t) => typeof (t as Json).type === 'string' && String((t as Json).type).startsWith('web_search'),
      );
    const refused = r.status === 400 && up.received.length === 0 && r.text.includes('web_search_options');
    expect(
      { mapped, refused },
      `status ${r.status}, Claude was sent: ${JSON.stringify(up.received[0]?.body ?? null)}`,
    ).not.toEqual({ mapped: false, refused: false });
  });
});

// ---------------------------------------------------------------------------------------------

describe('Claude stream errors around the commit', () => {
  it('overloaded_error after message_start and a ping: failed over unseen, one stream of the next upstream', async () => {
    const first = track(
      await startMock((_q, res) =>
        sse(res, [
          messageStart('msg_01First', { input_tokens: 99, output_tokens: 1 }),
          { type: 'ping' },
          { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } },
        ]),
      ),
    );
    const second = track(
      await startMock((q, res) => answerClaude(q.body, res, 'Hello there', 'msg_01Second')),
    );
    const gw = await gatewayOver(
      [anthropicProvider('a0', first.url), anthropicProvider('a1', second.url)],
      [`a0/${MODEL}`, `a1/${MODEL}`],
    );
    const r = await chat(gw, { stream: true, stream_options: { include_usage: true } });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-provider']).toBe('a1');
    expect(r.headers['x-router-trail']).toBe(`a0/${MODEL}=stream_error_event`);
    const data = dataOf(r.text);
    expect(data.at(-1)).toBe('[DONE]');
    const chunks = data.slice(0, -1) as Json[];
    expect(new Set(chunks.map((c) => c.id))).toEqual(new Set(['chatcmpl-msg_01Second']));
    expect(new Set(chunks.map((c) => c.model))).toEqual(new Set([MODEL]));
    expect(new Set(chunks.map((c) => c.created)).size).toBe(1);
    const deltas = chunks.flatMap((c) => (c.choices as Json[]).map((ch) => ch.delta as Json));
    expect(deltas.filter((d) => d.role === 'assistant')).toHaveLength(1);
    expect(deltas.map((d) => d.content ?? '').join('')).toBe('Hello there');
    // The usage is the answer's, never the failed attempt's 99 prompt tokens.
    expect(chunks.at(-1)).toMatchObject({
      choices: [],
      usage: { prompt_tokens: 10, completion_tokens: 3, total_tokens: 13 },
    });
  });

  it('overloaded_error after the first text: the text, then an OpenAI error event, no [DONE], no second upstream', async () => {
    const first = track(
      await startMock((_q, res) =>
        sse(res, [
          messageStart('msg_01Cut'),
          { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
          { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Partial' } },
          { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } },
        ]),
      ),
    );
    const second = track(await startMock((q, res) => answerClaude(q.body, res, 'unused')));
    const gw = await gatewayOver(
      [anthropicProvider('a0', first.url), anthropicProvider('a1', second.url)],
      [`a0/${MODEL}`, `a1/${MODEL}`],
    );
    const r = await chat(gw, { stream: true });
    expect(r.status).toBe(200);
    const data = dataOf(r.text);
    expect(data).not.toContain('[DONE]');
    const last = data.at(-1) as Json;
    expect(last).toMatchObject({ error: { type: 'upstream_error', code: 'stream_interrupted' } });
    expect(String((last.error as Json).message)).toContain('Overloaded');
    const text = (data.slice(0, -1) as Json[])
      .flatMap((c) => (c.choices as Json[]).map((ch) => (ch.delta as Json).content ?? ''))
      .join('');
    expect(text).toBe('Partial');
    expect(second.received.length).toBe(0);
  });
});
