import type { ServerResponse } from 'node:http';
import { gunzipSync, gzipSync } from 'node:zlib';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway, type Posted } from '../helpers/gateway.js';
import { sendJson, startMock } from '../helpers/mock-upstream.js';

/**
 * Audit: what a raw HTTP client receives for a non-streaming answer (OpenAI-dialect answers relayed byte for
 * byte, Anthropic answers in OpenAI's exact shape, headers), and Claude's signed thinking blocks through a
 * tool loop whose second round fails over (to an OpenAI-dialect upstream, to another Claude model).
 * Expectations come from README (HTTP surface, Anthropic upstreams) and SPEC §4; all upstreams are loopback
 * mocks or the simulator.
 */

const track = closeAfterEach();
type Json = Record<string, unknown>;

/** An OpenAI answer as OpenAI writes it (pretty-printed), with what a re-serializer would change. */
const RAW_OPENAI = `{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "gpt-4o-2024-08-06",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Caf\\u00e9 \\ud83d\\ude00 \\u2028 <b>&amp;</b> \\"q\\" \\/ done",
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {
      "cached_tokens": 1024,
      "audio_tokens": 0
    },
    "completion_tokens_details": {
      "reasoning_tokens": 0,
      "audio_tokens": 0,
      "accepted_prediction_tokens": 0,
      "rejected_prediction_tokens": 0
    }
  },
  "service_tier": "default",
  "system_fingerprint": "fp_fc9f1d7035",
  "zz_vendor": {"big": 12345678901234567890123, "float": 0.1000000000000000055511151231257827, "exp": 1E+2, "map": {"b": 1, "10": 2, "2": 3}}
}
`;

/** An OpenAI-dialect mock that answers every chat request with `raw`, as bytes, with `headers`. */
async function rawOpenAI(raw: string | Buffer, headers: Record<string, string> = {}, status = 200) {
  return track(
    await startMock((_req, res) => {
      const bytes = typeof raw === 'string' ? Buffer.from(raw, 'utf8') : raw;
      res.writeHead(status, {
        'content-type': 'application/json',
        'content-length': String(bytes.length),
        ...headers,
      });
      res.end(bytes);
    }),
  );
}

async function direct(url: string, body: Json): Promise<{ text: string; headers: Json }> {
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { text: await res.body.text(), headers: res.headers };
}

/** A gateway whose route `r` tries `targets` in order over `providers`. */
async function routedGateway(providers: Json[], targets: string[]) {
  return track(await startGateway({ providers, routes: { r: { strategy: 'priority', targets } } }));
}

async function openaiGateway(urls: string[], model = 'gpt-4o') {
  return routedGateway(
    urls.map((u, i) => simProvider(`p${i}`, u, [model], { api_key: `sk-p${i}` })),
    urls.map((_u, i) => `p${i}/${model}`),
  );
}

/** An OpenAI-dialect mock that fails every request with a 500 saying `message`. */
async function failingOpenAI(message: string) {
  return track(
    await startMock((_r, res) => sendJson(res, 500, { error: { message, type: 'server_error' } })),
  );
}

/** A relayed response's length header, when there is one, matches the bytes the client got. */
function lengthConsistent(p: Posted): void {
  const cl = p.headers['content-length'];
  if (cl !== undefined) expect(Number(cl)).toBe(Buffer.byteLength(p.text, 'utf8'));
}

const HI = { model: 'r', messages: [{ role: 'user', content: 'hi' }] };

/** HI to the gateway with key k (and `headers`), the answer left as undici gives it. */
function rawChat(gw: { url: string }, headers: Record<string, string> = {}) {
  return request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer k', ...headers },
    body: JSON.stringify(HI),
  });
}

describe('OpenAI-dialect non-streaming answers reach the client unchanged', () => {
  it('the body is byte-identical to a direct call of the same mock (pretty-printed, escapes, big numbers, key order)', async () => {
    const up = await rawOpenAI(RAW_OPENAI);
    const gw = await openaiGateway([up.url]);
    const viaGw = await postChat(gw, HI);
    const straight = await direct(up.url, { ...HI, model: 'gpt-4o' });
    expect(viaGw.status).toBe(200);
    expect(straight.text).toBe(RAW_OPENAI);
    expect(viaGw.text).toBe(straight.text);
  });

  it('values a JSON re-serializer changes survive: 23-digit integer, long float, numeric-looking keys order', async () => {
    const up = await rawOpenAI(RAW_OPENAI);
    const gw = await openaiGateway([up.url]);
    const p = await postChat(gw, HI);
    expect(p.text).toContain('12345678901234567890123');
    expect(p.text).toContain('0.1000000000000000055511151231257827');
    expect(p.text).toMatch(/"b": ?1, ?"10": ?2, ?"2": ?3/);
    // Every documented field, and the unknown ones, parse to what the upstream said.
    expect(p.json).toEqual(JSON.parse(RAW_OPENAI));
  });

  it('response head: JSON content-type, a length that matches, x-router-* and our x-request-id (upstream ones not leaked)', async () => {
    const up = await rawOpenAI(RAW_OPENAI, {
      'x-request-id': 'req_upstream_1',
      'openai-processing-ms': '12',
    });
    const gw = await openaiGateway([up.url]);
    const res = await rawChat(gw, { 'x-request-id': 'client-rid-7' });
    const text = await res.body.text();
    expect(res.statusCode).toBe(200);
    expect(String(res.headers['content-type'])).toMatch(/^application\/json/);
    if (res.headers['content-length'] !== undefined)
      expect(Number(res.headers['content-length'])).toBe(Buffer.byteLength(text));
    expect(res.headers['x-request-id']).toBe('client-rid-7');
    expect(res.headers['x-router-provider']).toBe('p0');
    expect(res.headers['x-router-model']).toBe('gpt-4o');
    expect(res.headers['x-router-strategy']).toBe('priority');
    expect(res.headers['x-router-attempts']).toBe('1');
    expect(
      res.headers['transfer-encoding'] === undefined || res.headers['content-length'] === undefined,
    ).toBe(true);
    expect(JSON.parse(text)).toEqual(JSON.parse(RAW_OPENAI));
  });

  it('after a failover (500 then 200) the second upstream’s body is relayed byte-identical, attempts 2 and the trail', async () => {
    const bad = await failingOpenAI('boom');
    const good = await rawOpenAI(RAW_OPENAI);
    const gw = await openaiGateway([bad.url, good.url]);
    const p = await postChat(gw, HI);
    expect(p.status).toBe(200);
    expect(p.text).toBe(RAW_OPENAI);
    lengthConsistent(p);
    expect(p.headers['x-router-provider']).toBe('p1');
    expect(p.headers['x-router-attempts']).toBe('2');
    expect(p.headers['x-router-trail']).toBe('p0/gpt-4o=http_500');
  });

  it('a gzip-encoded answer is relayed intact (with its encoding) or decoded correctly (without it)', async () => {
    const up = await rawOpenAI(gzipSync(Buffer.from(RAW_OPENAI)), { 'content-encoding': 'gzip' });
    const gw = await openaiGateway([up.url]);
    const res = await rawChat(gw);
    const bytes = Buffer.from(await res.body.arrayBuffer());
    expect(res.statusCode).toBe(200);
    if (res.headers['content-length'] !== undefined)
      expect(Number(res.headers['content-length'])).toBe(bytes.length);
    const text = res.headers['content-encoding'] === 'gzip' ? gunzipSync(bytes).toString() : bytes.toString();
    expect(JSON.parse(text)).toEqual(JSON.parse(RAW_OPENAI));
  });

  it('a compact answer with a non-ASCII model name and unicode content is relayed byte-identical too', async () => {
    const raw = JSON.stringify({
      id: 'chatcmpl-x',
      object: 'chat.completion',
      created: 1,
      model: 'qwen/Qwen3-32B-éß',
      choices: [
        { index: 0, message: { role: 'assistant', content: 'naïve — 漢字 🙂' }, finish_reason: 'stop' },
      ],
      usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 },
    });
    const up = await rawOpenAI(raw);
    const gw = await openaiGateway([up.url]);
    const p = await postChat(gw, HI);
    expect(p.text).toBe(raw);
    lengthConsistent(p);
  });
});

/** An Anthropic Messages mock: `answer(body, n, res)` writes the answer to the n-th request. */
async function anthropicMock(answer: (body: Json, n: number, res: ServerResponse) => void) {
  return track(await startMock((r, res, n) => answer(r.body, n, res)));
}

const claudeMessage = (
  content: Json[],
  stop: string,
  usage: Json = { input_tokens: 12, output_tokens: 6 },
): Json => ({
  id: 'msg_01XFDUDYJgAACzvnptvVoYEL',
  type: 'message',
  role: 'assistant',
  model: 'claude-sonnet-4-5-20250929',
  content,
  stop_reason: stop,
  stop_sequence: null,
  usage,
});

/** An Anthropic provider `name` at `url` (mock or simulator) serving `model` with key `apiKey`. */
function claudeProvider(name: string, url: string, model: string, apiKey: string): Json {
  return simProvider(name, url, [model], { kind: 'anthropic', base_url: url, api_key: apiKey });
}

/** Provider `anth`: the Claude mock at `url`, model claude-sonnet-4-5. */
const anthProvider = (url: string): Json => claudeProvider('anth', url, 'claude-sonnet-4-5', 'sk-ant-x');

async function claudeGateway(url: string, model = 'claude-sonnet-4-5') {
  return routedGateway([claudeProvider('anth', url, model, 'sk-ant-x')], [`anth/${model}`]);
}

describe('a translated Anthropic answer has OpenAI’s shape', () => {
  it('text answer: chat.completion, id, integer created (s), one choice, assistant string content, stop, usage sums', async () => {
    const msg = claudeMessage([{ type: 'text', text: 'Bonjour 🙂' }], 'end_turn', {
      input_tokens: 10,
      cache_creation_input_tokens: 5,
      cache_read_input_tokens: 20,
      output_tokens: 6,
    });
    const up = await anthropicMock((_b, _n, res) => sendJson(res, 200, msg, { 'request-id': 'req_anth' }));
    const gw = await claudeGateway(up.url);
    const before = Math.floor(Date.now() / 1000);
    const p = await postChat(gw, HI);
    expect(p.status).toBe(200);
    expect(String(p.headers['content-type'])).toMatch(/^application\/json/);
    lengthConsistent(p);
    const j = p.json;
    expect(j.object).toBe('chat.completion');
    expect(typeof j.id).toBe('string');
    expect(Number.isInteger(j.created)).toBe(true);
    expect(j.created as number).toBeGreaterThanOrEqual(before - 1);
    expect(j.created as number).toBeLessThanOrEqual(Math.ceil(Date.now() / 1000) + 1);
    expect(typeof j.model).toBe('string');
    const choices = j.choices as Json[];
    expect(choices).toHaveLength(1);
    expect(choices[0]!.index).toBe(0);
    expect(choices[0]!.finish_reason).toBe('stop');
    const m = choices[0]!.message as Json;
    expect(m.role).toBe('assistant');
    expect(m.content).toBe('Bonjour 🙂');
    expect(m).not.toHaveProperty('tool_calls');
    expect(j.usage).toMatchObject({ prompt_tokens: 35, completion_tokens: 6, total_tokens: 41 });
    expect((j.usage as Json).prompt_tokens_details).toMatchObject({ cached_tokens: 20 });
    // No Anthropic field leaks to the top level.
    for (const k of ['type', 'role', 'content', 'stop_reason', 'stop_sequence'])
      expect(j).not.toHaveProperty(k);
    expect(p.headers['x-router-provider']).toBe('anth');
    expect(p.headers['x-router-model']).toBe('claude-sonnet-4-5');
  });

  it('tool-only answer: content null, tool_calls with string arguments, finish_reason tool_calls', async () => {
    const msg = claudeMessage(
      [{ type: 'tool_use', id: 'toolu_01A', name: 'lookup', input: { q: 'é', n: 12345678901234 } }],
      'tool_use',
    );
    const up = await anthropicMock((_b, _n, res) => sendJson(res, 200, msg));
    const gw = await claudeGateway(up.url);
    const p = await postChat(gw, {
      ...HI,
      tools: [
        { type: 'function', function: { name: 'lookup', parameters: { type: 'object', properties: {} } } },
      ],
    });
    const choice = (p.json.choices as Json[])[0]!;
    expect(choice.finish_reason).toBe('tool_calls');
    const m = choice.message as Json;
    expect(m.role).toBe('assistant');
    expect(m.content).toBeNull();
    const calls = m.tool_calls as Json[];
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ id: 'toolu_01A', type: 'function', function: { name: 'lookup' } });
    const args = (calls[0]!.function as Json).arguments;
    expect(typeof args).toBe('string');
    expect(JSON.parse(args as string)).toEqual({ q: 'é', n: 12345678901234 });
    lengthConsistent(p);
  });

  it('a length header of the Anthropic body never reaches the client with the translated body', async () => {
    const msg = claudeMessage([{ type: 'text', text: 'x'.repeat(3) }], 'max_tokens');
    const up = await anthropicMock((_b, _n, res) => {
      const text = JSON.stringify(msg);
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': String(Buffer.byteLength(text)),
      });
      res.end(text);
    });
    const gw = await claudeGateway(up.url);
    const p = await postChat(gw, HI);
    expect(p.status).toBe(200);
    lengthConsistent(p);
    expect((p.json.choices as Json[])[0]!.finish_reason).toBe('length');
  });

  it('thinking answer: reasoning_content and thinking_blocks on the message, the text as content', async () => {
    const signed = { type: 'thinking', thinking: 'Let me think…', signature: 'EqQBCgIYAhIM' };
    const msg = claudeMessage([signed, { type: 'text', text: 'Answer.' }], 'end_turn');
    const up = await anthropicMock((_b, _n, res) => sendJson(res, 200, msg));
    const gw = await claudeGateway(up.url);
    const p = await postChat(gw, { ...HI, reasoning_effort: 'low' });
    const m = (p.json.choices as Json[])[0]!.message as Json;
    expect(m.content).toBe('Answer.');
    expect(m.reasoning_content).toBe('Let me think…');
    expect(m.thinking_blocks).toEqual([signed]);
  });
});

describe('Claude thinking blocks through a tool loop whose second round fails over (raw HTTP)', () => {
  const TOOLS = [
    {
      type: 'function',
      function: { name: 'lookup', parameters: { type: 'object', properties: { q: { type: 'string' } } } },
    },
  ];
  const SIGNED = { type: 'thinking', thinking: 'I should look it up.', signature: 'sig-AAAA' };
  const firstRound = claudeMessage(
    [SIGNED, { type: 'tool_use', id: 'toolu_01', name: 'lookup', input: { q: 'paris' } }],
    'tool_use',
  );

  /** Claude answers round one with thinking + a tool call, then fails with `status` (529 overloaded). */
  async function flakyClaude(status = 529) {
    return anthropicMock((_b, n, res) => {
      if (n === 0) sendJson(res, 200, firstRound);
      else
        sendJson(res, status, { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } });
    });
  }

  /** Round one through the gateway, then the follow-up messages the client sends back, raw. */
  async function roundTwo(gwUrl: string): Promise<Json[]> {
    const first = await postChat(
      { url: gwUrl },
      {
        model: 'r',
        messages: [{ role: 'user', content: 'Weather?' }],
        tools: TOOLS,
        reasoning_effort: 'low',
      },
    );
    expect(first.status).toBe(200);
    const assistant = (first.json.choices as Json[])[0]!.message as Json;
    expect(assistant.thinking_blocks).toEqual([SIGNED]);
    const call = (assistant.tool_calls as Json[])[0]!;
    return [
      { role: 'user', content: 'Weather?' },
      assistant,
      { role: 'tool', tool_call_id: call.id, content: 'sunny' },
    ];
  }

  /** Round two (`messages` from roundTwo) through the gateway, as round one was asked. */
  function roundTwoAnswer(gw: { url: string }, messages: Json[]): Promise<Posted> {
    return postChat(gw, { model: 'r', messages, tools: TOOLS, reasoning_effort: 'low' });
  }

  /** Claude (failing round two with 529), then a simulated Claude `name` serving `model`: round two's answer. */
  async function failoverToClaudeSim(name: string, model: string) {
    const claude = await flakyClaude();
    const other = track(await startSimulator({ name, kind: 'anthropic', apiKey: 'sk-sim' }));
    const gw = await routedGateway(
      [anthProvider(claude.url), claudeProvider(name, other.url, model, 'sk-sim')],
      ['anth/claude-sonnet-4-5', `${name}/${model}`],
    );
    const messages = await roundTwo(gw.url);
    return { other, p: await roundTwoAnswer(gw, messages) };
  }

  it('to an OpenAI-dialect upstream after Claude fails: Claude was sent thinking first, the OpenAI one no thinking_blocks', async () => {
    const claude = await flakyClaude();
    const oa = track(
      await startMock((r, res) =>
        sendJson(res, 200, {
          id: 'chatcmpl-z',
          object: 'chat.completion',
          created: 1,
          model: String(r.body.model),
          choices: [{ index: 0, message: { role: 'assistant', content: 'Sunny.' }, finish_reason: 'stop' }],
          usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
        }),
      ),
    );
    const gw = await routedGateway(
      [anthProvider(claude.url), simProvider('oa', oa.url, ['gpt-4o'], { api_key: 'sk-oa' })],
      ['anth/claude-sonnet-4-5', 'oa/gpt-4o'],
    );
    const messages = await roundTwo(gw.url);
    const p = await roundTwoAnswer(gw, messages);
    expect(p.status).toBe(200);
    expect((p.json.choices as Json[])[0]!.message).toMatchObject({ content: 'Sunny.' });
    expect(p.headers['x-router-provider']).toBe('oa');
    expect(p.headers['x-router-trail']).toBe('anth/claude-sonnet-4-5=http_529');
    // Claude got its signed block back first in the assistant turn, with thinking on.
    const toClaude = claude.received[1]!.body;
    expect(toClaude.thinking).toBeDefined();
    const turn = (toClaude.messages as Json[])[1]!;
    expect(turn.role).toBe('assistant');
    expect((turn.content as Json[])[0]).toEqual(SIGNED);
    // The OpenAI-dialect upstream got no thinking_blocks on any message.
    expect(oa.received).toHaveLength(1);
    const sent = oa.received[0]!.body.messages as Json[];
    expect(sent).toHaveLength(3);
    for (const m of sent) expect(m).not.toHaveProperty('thinking_blocks');
    expect(sent[1]!.tool_calls).toEqual(messages[1]!.tool_calls);
    expect(JSON.stringify(oa.received[0]!.body)).not.toContain('sig-AAAA');
  });

  it('the same failover streamed: the OpenAI-dialect upstream gets no thinking_blocks', async () => {
    const claude = await flakyClaude(500);
    const oa = track(
      await startMock((r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const c = (delta: Json, fin: string | null) =>
          `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: String(r.body.model), choices: [{ index: 0, delta, finish_reason: fin }] })}\n\n`;
        res.end(`${c({ role: 'assistant', content: 'Sunny.' }, null)}${c({}, 'stop')}data: [DONE]\n\n`);
      }),
    );
    const gw = await routedGateway(
      [anthProvider(claude.url), simProvider('oa', oa.url, ['gpt-4o'], { api_key: 'sk-oa' })],
      ['anth/claude-sonnet-4-5', 'oa/gpt-4o'],
    );
    const messages = await roundTwo(gw.url);
    const p = await postChat(gw, {
      model: 'r',
      messages,
      tools: TOOLS,
      reasoning_effort: 'low',
      stream: true,
    });
    expect(p.status).toBe(200);
    expect(p.text).toContain('Sunny.');
    expect(p.text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(((claude.received[1]!.body.messages as Json[])[1]!.content as Json[])[0]).toEqual(SIGNED);
    for (const m of oa.received[0]!.body.messages as Json[]) expect(m).not.toHaveProperty('thinking_blocks');
  });

  it('to another Claude model after Claude fails: the signed block goes first in its assistant turn, thinking on, and the request is valid', async () => {
    // The simulator enforces Anthropic's thinking rules (thinking first, tool loop opened by thinking).
    const { other, p } = await failoverToClaudeSim('opus', 'claude-opus-4-1');
    expect(p.status, p.text).toBe(200);
    expect(p.headers['x-router-provider']).toBe('opus');
    expect(p.headers['x-router-trail']).toBe('anth/claude-sonnet-4-5=http_529');
    expect(other.requests).toHaveLength(1);
    const body = other.requests[0]!.body as Json;
    expect(body.model).toBe('claude-opus-4-1');
    expect(body.thinking).toMatchObject({ type: 'enabled' });
    const turn = (body.messages as Json[])[1]!;
    expect(turn.role).toBe('assistant');
    expect((turn.content as Json[])[0]).toEqual(SIGNED);
    expect((turn.content as Json[]).map((b) => b.type)).toEqual(['thinking', 'tool_use']);
  });

  it('redacted_thinking beside thinking: both come back in thinking_blocks, in order, and go back in order to Claude', async () => {
    const redacted = { type: 'redacted_thinking', data: 'EmwKAhgBEgy3va3pzix/LafPsn4a' };
    const answer = claudeMessage(
      [redacted, SIGNED, { type: 'tool_use', id: 'toolu_01', name: 'lookup', input: { q: 'x' } }],
      'tool_use',
    );
    const claude = await anthropicMock((_b, n, res) =>
      n === 0
        ? sendJson(res, 200, answer)
        : sendJson(res, 200, claudeMessage([{ type: 'text', text: 'ok' }], 'end_turn')),
    );
    const gw = await claudeGateway(claude.url);
    const first = await postChat(gw, {
      model: 'r',
      messages: [{ role: 'user', content: 'q' }],
      tools: TOOLS,
      reasoning_effort: 'low',
    });
    const assistant = (first.json.choices as Json[])[0]!.message as Json;
    expect(assistant.thinking_blocks).toEqual([redacted, SIGNED]);
    const call = (assistant.tool_calls as Json[])[0]!;
    const p = await postChat(gw, {
      model: 'r',
      messages: [
        { role: 'user', content: 'q' },
        assistant,
        { role: 'tool', tool_call_id: call.id, content: 'r' },
      ],
      tools: TOOLS,
      reasoning_effort: 'low',
    });
    expect(p.status).toBe(200);
    const turn = (claude.received[1]!.body.messages as Json[])[1]!;
    expect((turn.content as Json[]).slice(0, 2)).toEqual([redacted, SIGNED]);
  });

  it('to a Claude 4.6 model after Claude fails: the signed block first, adaptive thinking, a request the simulator takes', async () => {
    const { other, p } = await failoverToClaudeSim('o46', 'claude-opus-4-6');
    expect(p.status, p.text).toBe(200);
    expect(p.headers['x-router-provider']).toBe('o46');
    const body = other.requests[0]!.body as Json;
    expect(body.thinking).toMatchObject({ type: 'adaptive' });
    const turn = (body.messages as Json[])[1]!;
    expect((turn.content as Json[])[0]).toEqual(SIGNED);
  });

  it('OpenAI-dialect first failing (500), then Claude: stripping thinking_blocks for the first does not lose them for Claude', async () => {
    let claudeCalls = 0;
    const claude = await anthropicMock((_b, _n, res) => {
      claudeCalls++;
      sendJson(
        res,
        200,
        claudeCalls === 1 ? firstRound : claudeMessage([{ type: 'text', text: 'Sunny.' }], 'end_turn'),
      );
    });
    const oa = await failingOpenAI('down');
    const gw = await routedGateway(
      [simProvider('oa', oa.url, ['gpt-4o'], { api_key: 'sk-oa' }), anthProvider(claude.url)],
      ['oa/gpt-4o', 'anth/claude-sonnet-4-5'],
    );
    const messages = await roundTwo(gw.url);
    const p = await roundTwoAnswer(gw, messages);
    expect(p.status, p.text).toBe(200);
    expect(p.headers['x-router-provider']).toBe('anth');
    for (const m of oa.received[1]!.body.messages as Json[]) expect(m).not.toHaveProperty('thinking_blocks');
    const toClaude = claude.received[1]!.body;
    expect(toClaude.thinking).toBeDefined();
    expect(((toClaude.messages as Json[])[1]!.content as Json[])[0]).toEqual(SIGNED);
  });
});
