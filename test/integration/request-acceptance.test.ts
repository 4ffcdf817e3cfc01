import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { answerAnthropicText } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway, type Posted, type TestGateway } from '../helpers/gateway.js';
import {
  answerChat,
  refuseAsOpenAI,
  sendJson,
  startRecordingMock,
  type RecordingMock,
} from '../helpers/mock-upstream.js';

/**
 * What OpenAI accepts must not be a 400 here (and what it refuses must be). Every request below is one
 * the OpenAI Chat Completions API documents as valid (explicit nulls, every message/part/tool shape, values
 * at the documented edges); the gateway must route it and hand the upstream the body unchanged but for
 * `model`. A few refusals are pinned (SPEC §8: 400 naming the field). Real gateway on loopback, recording
 * mocks as upstreams, undici or the openai SDK as the client.
 */

const track = closeAfterEach();
type Json = Record<string, unknown>;

const USER = [{ role: 'user', content: 'hi' }];

async function openaiRoute(
  answer: (body: Json, n: number, res: ServerResponse) => void = (b, _n, res) => answerChat(res, b, 'ok'),
): Promise<{ mock: RecordingMock; gw: TestGateway }> {
  const mock = track(await startRecordingMock(answer));
  const gw = track(
    await startGateway({
      providers: [simProvider('a', mock.url, ['up-model'], { api_key: 'sk-up-0123456789' })],
      routes: { r: { strategy: 'priority', targets: ['a/up-model'] } },
    }),
  );
  return { mock, gw };
}

/** Posts `body` (model `r`), expects a 200 and the mock to have received exactly `body` but for model. */
async function acceptedUnchanged(gw: TestGateway, mock: RecordingMock, body: Json): Promise<Posted> {
  const before = mock.bodies.length;
  const r = await postChat(gw, { model: 'r', ...body });
  expect(r.status, r.text).toBe(200);
  expect(mock.bodies.length).toBe(before + 1);
  expect(mock.bodies[before]).toEqual({ ...body, model: 'up-model' });
  return r;
}

const errorOf = (r: Posted): Json => (r.json.error ?? {}) as Json;

describe('OpenAI-dialect route: documented-valid requests pass, unchanged but for model', () => {
  it('explicit null for every nullable optional field OpenAI documents', async () => {
    const { mock, gw } = await openaiRoute();
    const nulls: Json = {};
    for (const k of [
      'temperature',
      'top_p',
      'n',
      'stop',
      'max_tokens',
      'max_completion_tokens',
      'presence_penalty',
      'frequency_penalty',
      'logit_bias',
      'logprobs',
      'top_logprobs',
      'seed',
      'user',
      'tools',
      'tool_choice',
      'parallel_tool_calls',
      'response_format',
      'stream',
      'stream_options',
      'metadata',
      'service_tier',
      'reasoning_effort',
      'modalities',
      'audio',
      'prediction',
      'web_search_options',
      'store',
      'verbosity',
      'prompt_cache_key',
      'safety_identifier',
      'functions',
      'function_call',
    ])
      nulls[k] = null;
    await acceptedUnchanged(gw, mock, { messages: USER, ...nulls });
  });

  it('message-level nulls and empties: assistant content null with tool_calls, name/refusal/audio/function_call null, tool_calls []', async () => {
    const { mock, gw } = await openaiRoute();
    await acceptedUnchanged(gw, mock, {
      messages: [
        { role: 'system', content: 'sys', name: null },
        { role: 'user', content: 'weather?', name: null },
        {
          role: 'assistant',
          content: null,
          refusal: null,
          audio: null,
          function_call: null,
          name: null,
          tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get', arguments: '{}' } }],
        },
        { role: 'tool', tool_call_id: 'call_1', content: '' },
        { role: 'assistant', content: 'sunny', tool_calls: [], refusal: null, audio: null },
        { role: 'user', content: 'thanks' },
      ],
    });
  });

  it('every message role and content-part shape OpenAI documents', async () => {
    const { mock, gw } = await openaiRoute();
    await acceptedUnchanged(gw, mock, {
      messages: [
        { role: 'developer', content: [{ type: 'text', text: 'be brief' }], name: 'dev' },
        { role: 'system', content: [{ type: 'text', text: 'sys' }], name: 'ops' },
        {
          role: 'user',
          name: 'alice',
          content: [
            { type: 'text', text: 'look' },
            { type: 'image_url', image_url: { url: 'https://example.com/a.png', detail: 'high' } },
            { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgo=', detail: 'low' } },
            { type: 'input_audio', input_audio: { data: 'UklGRg==', format: 'wav' } },
            { type: 'file', file: { file_id: 'file-abc123' } },
            { type: 'file', file: { file_data: 'data:application/pdf;base64,JVBERi0=', filename: 'a.pdf' } },
          ],
        },
        {
          role: 'assistant',
          name: 'bot',
          content: [
            { type: 'text', text: 'partial' },
            { type: 'refusal', refusal: 'no' },
          ],
          tool_calls: [{ id: 'call_9', type: 'function', function: { name: 'f', arguments: '{"a":1}' } }],
        },
        { role: 'tool', tool_call_id: 'call_9', content: [{ type: 'text', text: '{"ok":true}' }] },
        { role: 'assistant', content: null, audio: { id: 'audio_abc123' } },
        { role: 'assistant', content: null, function_call: { name: 'legacy', arguments: '{}' } },
        { role: 'function', name: 'legacy', content: '42' },
        { role: 'user', content: 'go on' },
      ],
    });
  });

  it('tools of every documented kind and tool_choice of every documented form', async () => {
    const { mock, gw } = await openaiRoute();
    const tools = [
      { type: 'function', function: { name: 'noargs', description: 'no parameters at all' } },
      {
        type: 'function',
        function: {
          name: 'strict_fn',
          strict: true,
          parameters: {
            type: 'object',
            properties: { city: { type: 'string' } },
            required: ['city'],
            additionalProperties: false,
          },
        },
      },
      { type: 'custom', custom: { name: 'free', description: 'free text' } },
      { type: 'custom', custom: { name: 'txt', format: { type: 'text' } } },
      {
        type: 'custom',
        custom: {
          name: 'gram',
          format: { type: 'grammar', grammar: { syntax: 'lark', definition: 'start: "a"' } },
        },
      },
    ];
    const choices: unknown[] = [
      'none',
      'auto',
      'required',
      { type: 'function', function: { name: 'strict_fn' } },
      {
        type: 'allowed_tools',
        allowed_tools: { mode: 'auto', tools: [{ type: 'function', function: { name: 'noargs' } }] },
      },
      {
        type: 'allowed_tools',
        allowed_tools: {
          mode: 'required',
          tools: [
            { type: 'function', function: { name: 'strict_fn' } },
            { type: 'custom', custom: { name: 'free' } },
          ],
        },
      },
      { type: 'custom', custom: { name: 'gram' } },
    ];
    for (const tool_choice of choices) {
      await acceptedUnchanged(gw, mock, {
        messages: USER,
        tools,
        tool_choice,
        parallel_tool_calls: false,
      });
    }
  });

  it('response_format text / json_object / json_schema (strict or not, $defs and $ref)', async () => {
    const { mock, gw } = await openaiRoute();
    const schema = {
      type: 'object',
      $defs: { step: { type: 'object', properties: { s: { type: 'string' } }, required: ['s'] } },
      properties: { steps: { type: 'array', items: { $ref: '#/$defs/step' } } },
      required: ['steps'],
      additionalProperties: false,
    };
    for (const response_format of [
      { type: 'text' },
      { type: 'json_object' },
      { type: 'json_schema', json_schema: { name: 'plan', schema } },
      { type: 'json_schema', json_schema: { name: 'plan', strict: true, description: 'd', schema } },
    ]) {
      await acceptedUnchanged(gw, mock, { messages: USER, response_format });
    }
  });

  it('values at OpenAI documented edges', async () => {
    const { mock, gw } = await openaiRoute();
    const edges: Json[] = [
      { temperature: 0, top_p: 0 },
      { temperature: 2, top_p: 1 },
      { n: 128 },
      { stop: ['a', 'b', 'c', 'd'] },
      { stop: '\n' },
      { logit_bias: { '50256': -100, '1234': 100, '7': 0 } },
      { logprobs: true, top_logprobs: 0 },
      { logprobs: true, top_logprobs: 20 },
      { max_tokens: 1 },
      { max_completion_tokens: 1 },
      { seed: -9007199254740991 },
      { user: '' },
      { presence_penalty: -2, frequency_penalty: 2 },
      { stream: false, store: true, metadata: { a: 'b' }, service_tier: 'auto' },
      { modalities: ['text'], reasoning_effort: 'minimal', verbosity: 'low' },
      { prediction: { type: 'content', content: 'x' }, prompt_cache_key: 'k1', safety_identifier: 'h' },
      { web_search_options: { search_context_size: 'low' } },
    ];
    for (const e of edges) await acceptedUnchanged(gw, mock, { messages: USER, ...e });
  });

  it('the openai SDK: a tool loop with every nullable field it types sent as null, streamed', async () => {
    const { mock, gw } = await openaiRoute();
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const stream = await client.chat.completions.create({
      model: 'r',
      stream: true,
      stream_options: { include_usage: true },
      temperature: null,
      top_p: null,
      max_completion_tokens: null,
      stop: null,
      seed: null,
      logprobs: null,
      parallel_tool_calls: true,
      tools: [{ type: 'function', function: { name: 'get' } }],
      messages: [
        { role: 'user', content: 'q' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'c1', type: 'function', function: { name: 'get', arguments: '{}' } }],
        },
        { role: 'tool', tool_call_id: 'c1', content: [{ type: 'text', text: 'r' }] },
      ],
    });
    let text = '';
    for await (const c of stream) text += c.choices[0]?.delta.content ?? '';
    expect(text).toBe('ok');
    expect(mock.bodies[0]!.temperature).toBeNull();
    expect(mock.bodies[0]!.max_completion_tokens).toBeNull();
  });
});

describe('what OpenAI refuses is a 400 naming the field, before any upstream', () => {
  it('temperature 2.1, top_p 1.1, n 0, n 129, max_tokens 0, messages [], logit_bias 101, unknown role', async () => {
    const { mock, gw } = await openaiRoute();
    const cases: [Json, string][] = [
      [{ messages: USER, temperature: 2.1 }, 'temperature'],
      [{ messages: USER, top_p: 1.1 }, 'top_p'],
      [{ messages: USER, n: 0 }, 'n'],
      [{ messages: USER, n: 129 }, 'n'],
      [{ messages: USER, max_tokens: 0 }, 'max_tokens'],
      [{ messages: USER, max_completion_tokens: -1 }, 'max_completion_tokens'],
      [{ messages: [] }, 'messages'],
      [{ messages: USER, logit_bias: { '1': 101 } }, 'logit_bias'],
      [{ messages: USER, presence_penalty: -2.5 }, 'presence_penalty'],
      [{ messages: [{ role: 'bot', content: 'x' }] }, 'messages[0].role'],
      [{ messages: USER, stream: 'yes' }, 'stream'],
      [{ messages: USER, tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice'],
    ];
    for (const [body, param] of cases) {
      const r = await postChat(gw, { model: 'r', ...body });
      expect(r.status, `${param}: ${r.text}`).toBe(400);
      expect(errorOf(r).type).toBe('invalid_request_error');
      expect(errorOf(r).param).toBe(param);
    }
    expect(mock.bodies.length).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Explicit nulls meeting the request fits (param-fit.ts): the token limit must be renamed, never dropped
// ---------------------------------------------------------------------------------------------------------

describe('explicit null beside a token limit, on an upstream that refuses the other name', () => {
  it('max_tokens 100 with max_completion_tokens null to a GPT-5-like upstream: the limit is renamed, not lost', async () => {
    const { mock, gw } = await openaiRoute((body, _n, res) => {
      if (body.max_tokens !== undefined && body.max_tokens !== null) {
        refuseAsOpenAI(
          res,
          "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
          'max_tokens',
          'unsupported_parameter',
        );
        return;
      }
      answerChat(res, body, 'ok');
    });
    const r = await postChat(gw, {
      model: 'r',
      messages: USER,
      max_tokens: 100,
      max_completion_tokens: null,
    });
    expect(r.status, r.text).toBe(200);
    expect(mock.bodies.length).toBe(2); // refused once, sent again fitted
    const last = mock.bodies.at(-1)!;
    // README: "max_tokens and max_completion_tokens are renamed to each other, never dropped".
    expect(last.max_completion_tokens ?? last.max_tokens).toBe(100);
  });

  it('max_completion_tokens 100 with max_tokens null to a server that takes only max_tokens: renamed, not lost', async () => {
    const { mock, gw } = await openaiRoute((body, _n, res) => {
      if (body.max_completion_tokens !== undefined && body.max_completion_tokens !== null) {
        refuseAsOpenAI(res, 'Unrecognized request argument supplied: max_completion_tokens', null, null);
        return;
      }
      answerChat(res, body, 'ok');
    });
    const r = await postChat(gw, {
      model: 'r',
      messages: USER,
      max_completion_tokens: 100,
      max_tokens: null,
    });
    expect(r.status, r.text).toBe(200);
    const last = mock.bodies.at(-1)!;
    expect(last.max_tokens ?? last.max_completion_tokens).toBe(100);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Anthropic-only route: OpenAI-valid nulls must not change what is served
// ---------------------------------------------------------------------------------------------------------

async function anthropicRoute(
  answer: (body: Json, n: number, res: ServerResponse) => void,
  model = 'claude-sonnet-4-5',
): Promise<{ mock: RecordingMock; gw: TestGateway }> {
  const mock = track(await startRecordingMock(answer));
  const gw = track(
    await startGateway({
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: mock.url,
          api_key: 'sk-ant-0123456789',
          models: [{ name: model }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: [`anth/${model}`] } },
    }),
  );
  return { mock, gw };
}

const claudeOk = (body: Json, _n: number, res: ServerResponse): void =>
  answerAnthropicText(res, {
    id: 'msg_1',
    model: String(body.model),
    text: 'ok',
    stream: body.stream === true,
    inputTokens: 3,
    outputTokens: 1,
  });

describe('Anthropic route: OpenAI nulls', () => {
  it('nulls for every nullable field (legacy functions aside) are served, with no nulls sent to Anthropic', async () => {
    const { mock, gw } = await anthropicRoute(claudeOk);
    const r = await postChat(gw, {
      model: 'r',
      messages: [
        { role: 'system', content: 's', name: null },
        { role: 'user', content: 'hi', name: null },
      ],
      temperature: null,
      top_p: null,
      n: null,
      stop: null,
      max_tokens: null,
      max_completion_tokens: null,
      user: null,
      tools: null,
      tool_choice: null,
      parallel_tool_calls: null,
      response_format: null,
      stream: null,
      stream_options: null,
      reasoning_effort: null,
      modalities: null,
      audio: null,
      metadata: null,
      safety_identifier: null,
      verbosity: null,
    });
    expect(r.status, r.text).toBe(200);
    expect(mock.texts.length).toBe(1);
    expect(mock.texts[0]).not.toContain('null');
  });

  it('function_call: null or functions: null (deprecated, nullable) does not make an Anthropic route refuse the request', async () => {
    const { mock, gw } = await anthropicRoute(claudeOk);
    for (const nulls of [{ function_call: null }, { functions: null }]) {
      const r = await postChat(gw, { model: 'r', messages: USER, ...nulls });
      expect(r.status, r.text).toBe(200);
    }
    expect(mock.bodies.length).toBe(2);
  });

  it('max_tokens: null on a model whose output cap is below the default: the default is capped as without the field', async () => {
    const cap = 2048;
    const capped = (body: Json, n: number, res: ServerResponse): void => {
      const max = body.max_tokens as number;
      if (max > cap) {
        sendJson(res, 400, {
          type: 'error',
          error: {
            type: 'invalid_request_error',
            message: `max_tokens: ${max} > ${cap}, which is the maximum allowed number of output tokens for claude-3-haiku-20240307`,
          },
        });
        return;
      }
      claudeOk(body, n, res);
    };
    // Control: the field left out is capped and served (README: "for the gateway's own default max_tokens too").
    const a = await anthropicRoute(capped, 'claude-3-haiku-20240307');
    const ok = await postChat(a.gw, { model: 'r', messages: USER });
    expect(ok.status, ok.text).toBe(200);
    // The same request with OpenAI's explicit null: the client set no limit either.
    const b = await anthropicRoute(capped, 'claude-3-haiku-20240307');
    const r = await postChat(b.gw, { model: 'r', messages: USER, max_tokens: null });
    expect(r.status, r.text).toBe(200);
    expect(b.mock.bodies.at(-1)!.max_tokens).toBe(cap);
  });
});
