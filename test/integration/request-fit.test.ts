import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import {
  answerChat as answer,
  refuseAsOpenAI as refuse,
  refusedAsGpt5,
  sendJson,
  startRecordingMock,
  type RecordingMock,
} from '../helpers/mock-upstream.js';
import { postChat, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';

/**
 * A route alias in front of models that refuse some of OpenAI's own request fields (upstream/param-fit.ts):
 * mocks that answer as OpenAI's reasoning models and GPT-4o do, with OpenAI's error bodies, through the
 * openai SDK. The client sends what SDK code sends to any chat model; the gateway learns each upstream's
 * refusals from its 400s and fits the request, instead of relaying a 400 the client cannot avoid (it named
 * the route, not the model).
 */

const track = closeAfterEach();

type Json = Record<string, unknown>;

/** As OpenAI's GPT-5 answers: no `max_tokens`, no sampling but the default, efforts minimal..high. */
function reasoningModel(body: Json, _n: number, res: ServerResponse): void {
  if (refusedAsGpt5(body, res)) return;
  if (body.reasoning_effort === 'none')
    return refuse(
      res,
      "Unsupported value: 'reasoning_effort' does not support 'none' with this model. Supported values are: 'minimal', 'low', 'medium', and 'high'.",
      'reasoning_effort',
      'unsupported_value',
    );
  answer(res, body, 'thought it through');
}

/** As OpenAI's GPT-4o answers a reasoning knob. */
function chatModel(body: Json, _n: number, res: ServerResponse): void {
  if ('reasoning_effort' in body)
    return refuse(res, 'Unrecognized request argument supplied: reasoning_effort', null, null);
  answer(res, body, 'plain answer');
}

function config(mocks: readonly { name: string; mock: RecordingMock; model: string }[]): Json {
  return {
    providers: mocks.map(({ name, mock, model }) =>
      simProvider(name, mock.url, [model], { api_key: 'sk-up' }),
    ),
    routes: { smart: { strategy: 'priority', targets: mocks.map(({ name, model }) => `${name}/${model}`) } },
  };
}

async function gatewayFor(
  mocks: readonly { name: string; mock: RecordingMock; model: string }[],
): Promise<{ gw: TestGateway; client: OpenAI }> {
  const gw = track(await startGateway(config(mocks)));
  return { gw, client: new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 }) };
}

const ASK = { model: 'smart', messages: [{ role: 'user' as const, content: 'hi' }] };

describe('request fields an upstream refuses, fitted', () => {
  it('a reasoning model behind an alias answers a body with max_tokens, a temperature and effort none; later requests go fitted at once', async () => {
    const mock = track(await startRecordingMock(reasoningModel));
    const { gw, client } = await gatewayFor([{ name: 'oai', mock, model: 'gpt-5' }]);

    const first = await client.chat.completions
      .create({ ...ASK, max_tokens: 50, temperature: 0.2, reasoning_effort: 'none', seed: 7 })
      .withResponse();
    expect(first.data.choices[0]!.message.content).toBe('thought it through');
    expect(first.response.headers.get('x-router-attempts')).toBe('1'); // one upstream: a fit is not a failover
    expect(first.response.headers.get('x-router-trail')).toBe('');
    expect(mock.bodies).toHaveLength(4); // three refusals, one field each, then the answer
    const fitted = { model: 'gpt-5', max_completion_tokens: 50, reasoning_effort: 'minimal', seed: 7 };
    expect(mock.bodies[3]).toMatchObject(fitted);
    expect(mock.bodies[3]).not.toHaveProperty('max_tokens');
    expect(mock.bodies[3]).not.toHaveProperty('temperature');

    // Learned: a stream with the same fields is sent fitted the first time.
    const stream = await client.chat.completions.create({
      ...ASK,
      max_tokens: 50,
      temperature: 0.7,
      reasoning_effort: 'none',
      stream: true,
    });
    let text = '';
    for await (const c of stream) text += c.choices[0]?.delta.content ?? '';
    expect(text).toBe('thought it through');
    expect(mock.bodies).toHaveLength(5);
    expect(mock.bodies[4]).toMatchObject({
      max_completion_tokens: 50,
      reasoning_effort: 'minimal',
      stream: true,
    });
    expect(mock.bodies[4]).not.toHaveProperty('temperature');

    // A body without those fields, and an effort the model takes, go as they are.
    await client.chat.completions.create({ ...ASK, reasoning_effort: 'high', max_completion_tokens: 9 });
    expect(mock.bodies[5]).toEqual({
      ...ASK,
      model: 'gpt-5',
      reasoning_effort: 'high',
      max_completion_tokens: 9,
    });

    const status = (await (await fetch(`${gw.url}/router/status`)).json()) as {
      upstreams: { id: string; request_fits: Json }[];
    };
    expect(status.upstreams.find((u) => u.id === 'oai/gpt-5')!.request_fits).toEqual({
      max_tokens: 'sent as max_completion_tokens',
      temperature: 'dropped',
      'reasoning_effort=none': 'sent as minimal',
    });
    const learned = gw.logs.filter((l) => String(l.msg).startsWith('upstream oai/gpt-5 refused'));
    expect(learned.map((l) => l.param)).toEqual(['max_tokens', 'temperature', 'reasoning_effort']);
  });

  it('a fitted body keeps every field the fit did not touch as the client wrote it: a seed past 2^53, 1.0', async () => {
    const mock = track(await startRecordingMock(reasoningModel));
    const { gw } = await gatewayFor([{ name: 'oai', mock, model: 'gpt-5' }]);
    // Text no JavaScript object serialises to: integers past 2^53 and a 1.0 (a vendor field, unknown to us).
    const text =
      '{"model":"smart","messages":[{"role":"user","content":"hi"}],"max_tokens":50,"temperature":0.5,' +
      '"seed":9223372036854775807,"top_p":1.0,"x_vendor":{"trace":12345678901234567890}}';
    for (const round of [0, 1]) {
      const res = await postChat(gw, text);
      expect(res.status, res.text).toBe(200);
      const sent = mock.texts.at(-1)!;
      expect(sent).toContain('"seed":9223372036854775807');
      expect(sent).toContain('"top_p":1.0');
      expect(sent).toContain('"x_vendor":{"trace":12345678901234567890}');
      expect(JSON.parse(sent)).toEqual({
        model: 'gpt-5',
        messages: ASK.messages,
        max_completion_tokens: 50,
        seed: Number('9223372036854775807'),
        top_p: 1,
        x_vendor: { trace: Number('12345678901234567890') },
      });
      // Learned on the first request (two refusals, then the answer); the second goes fitted at once.
      expect(mock.texts).toHaveLength(round === 0 ? 3 : 4);
    }
  });

  it('a chat model is sent no reasoning_effort once it refused it; another upstream keeps getting it', async () => {
    const gpt4o = track(await startRecordingMock(chatModel));
    const other = track(await startRecordingMock((body, _n, res) => answer(res, body, 'other')));
    const { gw, client } = await gatewayFor([
      { name: 'a', mock: gpt4o, model: 'gpt-4o' },
      { name: 'b', mock: other, model: 'gpt-4o' },
    ]);
    // A stream: the refusal comes before anything is sent to the client, and the fitted send streams.
    const stream = await client.chat.completions.create({
      ...ASK,
      reasoning_effort: 'low',
      temperature: 0,
      stream: true,
    });
    let text = '';
    for await (const c of stream) text += c.choices[0]?.delta.content ?? '';
    expect(text).toBe('plain answer');
    expect(gpt4o.bodies.map((b) => b.reasoning_effort)).toEqual(['low', undefined]);
    expect(gpt4o.bodies[1]).toMatchObject({ temperature: 0 }); // what the model takes still goes

    await client.chat.completions.create({ ...ASK, model: 'b/gpt-4o', reasoning_effort: 'low' });
    expect(other.bodies[0]).toMatchObject({ reasoning_effort: 'low' }); // learned per upstream, not per name

    // A reload that keeps the upstream keeps what was learned.
    gw.gateway.reload(
      parseConfigText(JSON.stringify(config([{ name: 'a', mock: gpt4o, model: 'gpt-4o' }])), {}),
    );
    await client.chat.completions.create({ ...ASK, reasoning_effort: 'low' });
    expect(gpt4o.bodies).toHaveLength(3);
    expect(gpt4o.bodies[2]).not.toHaveProperty('reasoning_effort');
  });

  it('any other 400 is relayed as before, sent once: a value out of range, a field it cannot fit', async () => {
    const mock = track(
      await startRecordingMock((body, _n, res) => {
        if ('seed' in body)
          return refuse(
            res,
            "Unsupported parameter: 'seed' is not supported with this model.",
            'seed',
            'unsupported_parameter',
          );
        refuse(
          res,
          "Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20, but got 30 instead.",
          'top_logprobs',
          'integer_above_max_value',
        );
      }),
    );
    const { client } = await gatewayFor([{ name: 'oai', mock, model: 'gpt-4o' }]);
    const outOfRange = await client.chat.completions
      .create({ ...ASK, logprobs: true, top_logprobs: 30 })
      .catch((e: unknown) => e);
    expect(outOfRange).toBeInstanceOf(OpenAI.BadRequestError);
    expect((outOfRange as InstanceType<typeof OpenAI.BadRequestError>).message).toContain(
      "Invalid 'top_logprobs'",
    );
    expect(mock.bodies).toHaveLength(1);

    // Dropping `seed` would change the answer: the client hears the refusal.
    const seed = await client.chat.completions.create({ ...ASK, seed: 7 }).catch((e: unknown) => e);
    expect(seed).toBeInstanceOf(OpenAI.BadRequestError);
    expect((seed as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('seed');
    expect(mock.bodies).toHaveLength(2);
  });

  it('a server that refuses every name of the token limit gets the client’s own field and its 400 is relayed', async () => {
    const mock = track(
      await startRecordingMock((body, _n, res) => {
        for (const name of ['max_tokens', 'max_completion_tokens'])
          if (name in body)
            return refuse(res, `Unsupported parameter: '${name}'`, name, 'unsupported_parameter');
        answer(res, body, 'never');
      }),
    );
    const { client } = await gatewayFor([{ name: 'oai', mock, model: 'm' }]);
    const err = await client.chat.completions.create({ ...ASK, max_tokens: 5 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(mock.bodies.map((b) => Object.keys(b).filter((k) => k.startsWith('max_')))).toEqual([
      ['max_tokens'],
      ['max_completion_tokens'],
    ]);
  });
});

describe('the LLM router asks models that reason by default for the least reasoning', () => {
  const CHOICE = '{"tier": "deep", "reason": "hard"}';

  /** As a reasoning model answers in 80 tokens: nothing but reasoning, unless told to reason little. */
  function reasoningRouter(body: Json, _n: number, res: ServerResponse): void {
    if (refusedAsGpt5(body, res)) return;
    const little = body.reasoning_effort === 'minimal' || body.reasoning_effort === 'none';
    if (little) return answer(res, body, CHOICE);
    sendJson(res, 200, {
      id: 'chatcmpl-r',
      object: 'chat.completion',
      created: 1,
      model: String(body.model),
      choices: [{ index: 0, message: { role: 'assistant', content: '' }, finish_reason: 'length' }],
      usage: {
        prompt_tokens: 200,
        completion_tokens: 80,
        total_tokens: 280,
        completion_tokens_details: { reasoning_tokens: 80 },
      },
    });
  }

  async function tiered(router: RecordingMock, routerModel: string): Promise<TestGateway> {
    const plain = track(await startRecordingMock((body, _n, res) => answer(res, body, 'tier answer')));
    return track(
      await startGateway({
        providers: [
          simProvider('r', router.url, [routerModel]),
          simProvider('t', plain.url, ['balanced-m', 'deep-m']),
        ],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: [`r/${routerModel}`], balanced: ['t/balanced-m'], deep: ['t/deep-m'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 2000, cache_ttl_s: 60 },
          },
        },
      }),
    );
  }

  const ask = (gw: TestGateway, content: string): Promise<Response> =>
    fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'auto', messages: [{ role: 'user', content }] }),
    });

  it('a GPT-5 router tier is asked for minimal reasoning (its other refusals fitted) and its choice is read', async () => {
    const router = track(await startRecordingMock(reasoningRouter));
    const gw = await tiered(router, 'gpt-5-mini');
    const res = await ask(gw, 'prove the theorem');
    expect(res.status).toBe(200);
    expect(res.headers.get('x-router-tier')).toBe('deep');
    expect(router.bodies.at(-1)).toMatchObject({ reasoning_effort: 'minimal', max_completion_tokens: 80 });
  });

  it('an o-series router tier, whose least reasoning is low, gets room to reason before its answer', async () => {
    // As o3-mini answers: no minimal effort, and at low some hundreds of reasoning tokens before any text.
    const REASONING = 300;
    const router = track(
      await startRecordingMock((body, _n, res) => {
        if (refusedAsGpt5(body, res)) return;
        if (body.reasoning_effort === 'minimal')
          return refuse(
            res,
            "Unsupported value: 'reasoning_effort' does not support 'minimal' with this model. Supported values are: 'low', 'medium', and 'high'.",
            'reasoning_effort',
            'unsupported_value',
          );
        if (Number(body.max_completion_tokens) > REASONING + 40) return answer(res, body, CHOICE);
        sendJson(res, 200, {
          id: 'chatcmpl-o',
          object: 'chat.completion',
          created: 1,
          model: String(body.model),
          choices: [{ index: 0, message: { role: 'assistant', content: '' }, finish_reason: 'length' }],
        });
      }),
    );
    const gw = await tiered(router, 'o3-mini');
    const res = await ask(gw, 'prove the theorem');
    expect(res.headers.get('x-router-tier')).toBe('deep');
    expect(router.bodies.at(-1)).toMatchObject({ reasoning_effort: 'low', max_completion_tokens: 1104 });
  });

  it('a router tier not known to reason by default is sent no reasoning_effort', async () => {
    const router = track(await startRecordingMock((body, _n, res) => answer(res, body, CHOICE)));
    const gw = await tiered(router, 'llama-3.1-8b');
    const res = await ask(gw, 'prove the theorem');
    expect(res.headers.get('x-router-tier')).toBe('deep');
    expect(router.bodies).toHaveLength(1);
    expect(router.bodies[0]).not.toHaveProperty('reasoning_effort');
    expect(router.bodies[0]).toMatchObject({ max_tokens: 80, temperature: 0 });
  });
});

describe('a token limit above what the model writes', () => {
  it('is lowered to the most an OpenAI model says it writes, then for every request to it', async () => {
    const mock = track(
      await startRecordingMock((body, _n, res) => {
        const asked = Number(body.max_tokens ?? body.max_completion_tokens ?? 0);
        if (asked > 16384)
          return refuse(
            res,
            `max_tokens is too large: ${asked}. This model supports at most 16384 completion tokens, whereas you provided ${asked}.`,
            'max_tokens',
            'invalid_value',
          );
        answer(res, body, 'capped');
      }),
    );
    const { gw, client } = await gatewayFor([{ name: 'oai', mock, model: 'gpt-4o' }]);
    const res = await client.chat.completions.create({ ...ASK, max_tokens: 32000 });
    expect(res.choices[0]!.message.content).toBe('capped');
    expect(mock.bodies.map((b) => b.max_tokens)).toEqual([32000, 16384]);
    await client.chat.completions.create({ ...ASK, max_tokens: 20000 });
    await client.chat.completions.create({ ...ASK, max_tokens: 1000 });
    expect(mock.bodies.slice(2).map((b) => b.max_tokens)).toEqual([16384, 1000]);
    const status = (await (await fetch(`${gw.url}/router/status`)).json()) as {
      upstreams: { id: string; request_fits: Json }[];
    };
    expect(status.upstreams[0]!.request_fits).toEqual({ output_tokens: 'at most 16384' });
  });

  it('is lowered for an Anthropic upstream too (its only fit), whichever name the client used', async () => {
    const mock = track(
      await startRecordingMock((body, _n, res) => {
        const asked = Number(body.max_tokens);
        if (asked > 8192)
          return sendJson(res, 400, {
            type: 'error',
            error: {
              type: 'invalid_request_error',
              message: `max_tokens: ${asked} > 8192, which is the maximum allowed number of output tokens for claude-3-5-haiku-20241022`,
            },
          });
        sendJson(res, 200, {
          id: 'msg_1',
          type: 'message',
          role: 'assistant',
          model: 'claude-3-5-haiku-20241022',
          content: [{ type: 'text', text: 'short' }],
          stop_reason: 'end_turn',
          stop_sequence: null,
          usage: { input_tokens: 3, output_tokens: 1 },
        });
      }),
    );
    const gw = track(
      await startGateway({
        providers: [
          simProvider('anth', mock.url, ['claude-3-5-haiku-20241022'], {
            kind: 'anthropic',
            base_url: mock.url,
            api_key: 'sk-ant',
          }),
        ],
        routes: { smart: { strategy: 'priority', targets: ['anth/claude-3-5-haiku-20241022'] } },
      }),
    );
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const res = await client.chat.completions.create({
      ...ASK,
      max_completion_tokens: 20000,
      temperature: 0.3,
    });
    expect(res.choices[0]!.message.content).toBe('short');
    expect(mock.bodies.map((b) => b.max_tokens)).toEqual([20000, 8192]);
    expect(mock.bodies[1]).toMatchObject({ temperature: 0.3 }); // the rest as translated before
  });
});
