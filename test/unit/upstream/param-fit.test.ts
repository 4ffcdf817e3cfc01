import { describe, expect, it } from 'vitest';
import type { ChatBody, UpstreamErrorInfo } from '../../../src/upstream/adapter.js';
import { errorFromBody } from '../../../src/upstream/adapters/openai.js';
import { nearestEffort, ParamFit, refusalOf } from '../../../src/upstream/param-fit.js';

/** An upstream's error body as the OpenAI adapter reads it. */
const refused = (error: Record<string, unknown>, status = 400): UpstreamErrorInfo =>
  errorFromBody(status, { error: { type: 'invalid_request_error', param: null, code: null, ...error } });

// OpenAI's own answers, as clients quote them.
const MAX_TOKENS = refused({
  message:
    "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
  param: 'max_tokens',
  code: 'unsupported_parameter',
});
const TEMPERATURE = refused({
  message:
    "Unsupported value: 'temperature' does not support 0.2 with this model. Only the default (1) value is supported.",
  param: 'temperature',
  code: 'unsupported_value',
});
const EFFORT_NONE = refused({
  message:
    "Unsupported value: 'reasoning_effort' does not support 'none' with this model. Supported values are: 'minimal', 'low', 'medium', and 'high'.",
  param: 'reasoning_effort',
  code: 'unsupported_value',
});
const EFFORT_ON_4O = refused({ message: 'Unrecognized request argument supplied: reasoning_effort' });

const body = (extra: Record<string, unknown>): ChatBody =>
  ({ model: 'smart', messages: [{ role: 'user', content: 'hi' }], ...extra }) as ChatBody;

describe('refusalOf: which field an upstream 400 refuses', () => {
  it('reads OpenAI’s codes and wordings', () => {
    expect(refusalOf(MAX_TOKENS)).toMatchObject({ param: 'max_tokens', kind: 'parameter', supported: [] });
    expect(refusalOf(TEMPERATURE)).toMatchObject({ param: 'temperature', kind: 'value', supported: [] });
    expect(refusalOf(EFFORT_NONE)).toMatchObject({
      param: 'reasoning_effort',
      kind: 'value',
      supported: ['minimal', 'low', 'medium', 'high'],
    });
    expect(refusalOf(EFFORT_ON_4O)).toMatchObject({
      param: 'reasoning_effort',
      kind: 'parameter',
      supported: [],
    });
    // Without code or param (Azure, older servers), by the message alone.
    expect(
      refusalOf(refused({ message: "Unsupported parameter: 'top_p' is not supported with this model." })),
    ).toMatchObject({ param: 'top_p', kind: 'parameter' });
    // pydantic's "extra_forbidden" from servers that refuse unknown fields.
    const pydantic = refused(
      {
        message:
          "[{'type': 'extra_forbidden', 'loc': ('body', 'max_completion_tokens'), 'msg': 'Extra inputs are not permitted', 'input': 64}]",
      },
      422,
    );
    expect(refusalOf(pydantic)).toMatchObject({ param: 'max_completion_tokens', kind: 'parameter' });
    // A FastAPI detail list as the adapter words it (adapters/openai.ts), the field second.
    const list = refused(
      {
        message: 'body.foo: Extra inputs are not permitted; body.logit_bias: Extra inputs are not permitted',
      },
      422,
    );
    expect(refusalOf(list)).toMatchObject({ param: 'foo', kind: 'parameter' });
  });

  it('reads Ollama’s refusals of reasoning_effort: a value it has no level for, a model that does not think', () => {
    const minimal = refused({
      message: 'invalid reasoning value: \'minimal\' (must be "high", "medium", "low", "max", or "none")',
    });
    expect(refusalOf(minimal)).toMatchObject({
      param: 'reasoning_effort',
      kind: 'value',
      supported: ['high', 'medium', 'low', 'max', 'none'],
    });
    const fit = new ParamFit();
    expect(fit.learn(minimal, body({ reasoning_effort: 'minimal' }))).toBe('reasoning_effort');
    expect(fit.apply(body({ reasoning_effort: 'minimal' }))).toEqual(body({ reasoning_effort: 'none' }));
    const noThinking = refused({ message: '"gemma3:4b" does not support thinking' });
    expect(refusalOf(noThinking)).toMatchObject({ param: 'reasoning_effort', kind: 'parameter' });
    expect(fit.learn(noThinking, body({ reasoning_effort: 'high' }))).toBe('reasoning_effort');
    expect(fit.apply(body({ reasoning_effort: 'high' }))).toEqual(body({}));
  });

  it('is not a refusal: a value out of range (but a token limit), another status, a message about something else', () => {
    const outOfRange = refused({
      message:
        "Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20, but got 30 instead.",
      param: 'top_logprobs',
      code: 'integer_above_max_value',
    });
    expect(refusalOf(outOfRange)).toBeUndefined();
    expect(refusalOf({ ...MAX_TOKENS, status: 500 })).toBeUndefined();
    expect(refusalOf({ ...MAX_TOKENS, status: 404 })).toBeUndefined();
    expect(refusalOf(refused({ message: "Invalid value for 'messages[0].role'" }))).toBeUndefined();
  });
});

describe('nearestEffort', () => {
  it('takes the nearest listed effort, the lower on a tie, and knows only OpenAI’s efforts', () => {
    expect(nearestEffort('none', ['minimal', 'low', 'medium', 'high'])).toBe('minimal');
    expect(nearestEffort('minimal', ['none', 'low', 'medium', 'high'])).toBe('none');
    expect(nearestEffort('xhigh', ['high', 'max'])).toBe('high');
    expect(nearestEffort('xhigh', ['low', 'medium', 'high'])).toBe('high');
    expect(nearestEffort('max', ['low', 'high'])).toBe('high');
    expect(nearestEffort('none', [])).toBeNull();
    expect(nearestEffort('turbo', ['low'])).toBeNull();
  });
});

describe('ParamFit', () => {
  it('sends a body as it is until a field is refused, then fits that field in every later body', () => {
    const learned: string[] = [];
    const fit = new ParamFit((param) => learned.push(param));
    const b = body({ max_tokens: 50, temperature: 0.2, foo: 1 });
    expect(fit.apply(b)).toBe(b);

    expect(fit.learn(MAX_TOKENS, b)).toBe('max_tokens');
    const once = fit.apply(b);
    expect(once).toEqual(body({ max_completion_tokens: 50, temperature: 0.2, foo: 1 }));
    expect(b).toEqual(body({ max_tokens: 50, temperature: 0.2, foo: 1 })); // the client's body is not changed

    expect(fit.learn(TEMPERATURE, once)).toBe('temperature');
    expect(fit.apply(b)).toEqual(body({ max_completion_tokens: 50, foo: 1 }));
    expect(learned).toEqual(['max_tokens', 'temperature']);

    // A body without those fields is not copied; one with both limit names keeps the new one only.
    const plain = body({ seed: 7 });
    expect(fit.apply(plain)).toBe(plain);
    expect(fit.apply(body({ max_tokens: 9, max_completion_tokens: 50 }))).toEqual(
      body({ max_completion_tokens: 50 }),
    );
    expect(fit.snapshot()).toEqual({ max_tokens: 'sent as max_completion_tokens', temperature: 'dropped' });
  });

  it('maps a refused effort to the nearest listed one, or drops reasoning_effort where it is not taken at all', () => {
    const fit = new ParamFit();
    expect(fit.learn(EFFORT_NONE, body({ reasoning_effort: 'none' }))).toBe('reasoning_effort');
    expect(fit.apply(body({ reasoning_effort: 'none' }))).toEqual(body({ reasoning_effort: 'minimal' }));
    expect(fit.apply(body({ reasoning_effort: 'high' }))).toEqual(body({ reasoning_effort: 'high' }));
    expect(fit.snapshot()).toEqual({ 'reasoning_effort=none': 'sent as minimal' });

    const gpt4o = new ParamFit();
    expect(gpt4o.learn(EFFORT_ON_4O, body({ reasoning_effort: 'low', temperature: 0 }))).toBe(
      'reasoning_effort',
    );
    expect(gpt4o.apply(body({ reasoning_effort: 'low', temperature: 0 }))).toEqual(body({ temperature: 0 }));
  });

  it('a refused `stop` is left out of what is sent, to be applied by the gateway (local-stops.ts)', () => {
    const fit = new ParamFit();
    const stop = refused({ message: "Unsupported parameter: 'stop' is not supported with this model." });
    expect(fit.learn(stop, body({ stop: ['\n'] }))).toBe('stop');
    expect(fit.apply(body({ stop: ['\n'], temperature: 0 }))).toEqual(body({ temperature: 0 }));
    expect(fit.snapshot()).toEqual({ stop: 'applied by the gateway' });
  });

  it('learns nothing it cannot fit: fields not listed, fields the body lacks, made-up efforts, both limit names', () => {
    const fit = new ParamFit();
    const seed = refused({ message: "Unsupported parameter: 'seed' is not supported with this model." });
    expect(fit.learn(seed, body({ seed: 7 }))).toBeUndefined(); // dropping `seed` would change the answer
    expect(fit.learn(TEMPERATURE, body({}))).toBeUndefined();
    const madeUp = refused({
      message: "Unsupported value: 'reasoning_effort' does not support 'turbo' with this model.",
      param: 'reasoning_effort',
      code: 'unsupported_value',
    });
    expect(fit.learn(madeUp, body({ reasoning_effort: 'turbo' }))).toBeUndefined();
    expect(fit.learn(undefined, body({ max_tokens: 1 }))).toBeUndefined();

    // A server that refuses both names of the token limit keeps getting the client's own: never dropped.
    expect(fit.learn(MAX_TOKENS, body({ max_tokens: 5 }))).toBe('max_tokens');
    const newName = refused({
      message: "Unsupported parameter: 'max_completion_tokens' is not supported with this model.",
      param: 'max_completion_tokens',
      code: 'unsupported_parameter',
    });
    expect(fit.learn(newName, body({ max_completion_tokens: 5 }))).toBeUndefined();
    expect(fit.apply(body({ max_tokens: 5 }))).toEqual(body({ max_completion_tokens: 5 }));
  });

  it('drops top_logprobs with logprobs', () => {
    const fit = new ParamFit();
    const logprobs = refused({
      message: "Unsupported parameter: 'logprobs' is not supported with this model.",
      param: 'logprobs',
      code: 'unsupported_parameter',
    });
    expect(fit.learn(logprobs, body({ logprobs: true, top_logprobs: 3 }))).toBe('logprobs');
    expect(fit.apply(body({ logprobs: true, top_logprobs: 3, n: 1 }))).toEqual(body({ n: 1 }));
  });
});

describe('ParamFit and hostile upstreams', () => {
  it('a refused `constructor` or `__proto__` is a plain name, never a lookup', () => {
    const fit = new ParamFit();
    for (const name of ['constructor', '__proto__', 'toString']) {
      const info = refused({
        message: `Unsupported parameter: '${name}'`,
        param: name,
        code: 'unsupported_parameter',
      });
      const b = JSON.parse(`{"model":"m","messages":[],"${name}":1}`) as ChatBody;
      expect(fit.learn(info, b)).toBeUndefined();
      expect(fit.apply(b)).toBe(b);
    }
    expect(fit.snapshot()).toEqual({});
  });

  it('a wording the body itself carries teaches nothing, quotes and all (an upstream quoting the client back)', () => {
    const fit = new ParamFit();
    // Google's wording has double quotes: hidden as \" in the body's serialisation, plain in its strings.
    const said = 'Unknown name "temperature": Cannot find field';
    const echoed = body({ temperature: 0, messages: [{ role: 'user', content: `say ${said}` }] });
    expect(fit.learn(refused({ message: `Invalid value: 'say ${said}'` }), echoed)).toBeUndefined();
    expect(fit.snapshot()).toEqual({});
    // The same wording from the upstream alone is a refusal it learns.
    expect(fit.learn(refused({ message: said }), body({ temperature: 0 }))).toBe('temperature');
  });
});

describe('ParamFit: a deployment that changed behind one name', () => {
  it('maps the client’s own effort anew from the latest list, and forgets a mapping the model no longer needs', () => {
    const fit = new ParamFit();
    const asked = body({ reasoning_effort: 'none' });
    expect(fit.learn(EFFORT_NONE, asked)).toBe('reasoning_effort'); // GPT-5: none -> minimal
    const sent = fit.apply(asked);
    expect(sent.reasoning_effort).toBe('minimal');
    const gpt51 = refused({
      message:
        "Unsupported value: 'reasoning_effort' does not support 'minimal' with this model. Supported values are: 'none', 'low', 'medium', and 'high'.",
      param: 'reasoning_effort',
      code: 'unsupported_value',
    });
    expect(fit.learn(gpt51, sent, asked)).toBe('reasoning_effort');
    expect(fit.apply(asked)).toBe(asked); // none goes as none again
    expect(fit.snapshot()).toEqual({});
  });
});

describe('ParamFit: the most output tokens a model writes', () => {
  const openaiTooLarge = refused({
    message:
      'max_tokens is too large: 50000. This model supports at most 16384 completion tokens, whereas you provided 50000.',
    param: 'max_tokens',
    code: 'invalid_value',
  });

  it('reads OpenAI’s, Anthropic’s, Groq’s and DeepSeek’s wordings of a token limit above the model’s', () => {
    expect(refusalOf(openaiTooLarge)).toMatchObject({ param: 'max_tokens', kind: 'limit', max: 16384 });
    const anthropic = refused({
      message:
        'max_tokens: 100000 > 64000, which is the maximum allowed number of output tokens for claude-haiku-4-5-20251001',
    });
    expect(refusalOf(anthropic)).toMatchObject({ param: 'max_tokens', kind: 'limit', max: 64000 });
    const groq = refused({
      message:
        '`max_tokens` must be less than or equal to `8192`, the maximum value for `max_tokens` is less than the `context_window` for this model',
    });
    expect(refusalOf(groq)).toMatchObject({ param: 'max_tokens', kind: 'limit', max: 8192 });
    const deepseek = refused({
      message: 'Invalid max_tokens value, the valid range of max_tokens is [1, 8192]',
    });
    expect(refusalOf(deepseek)).toMatchObject({ param: 'max_tokens', kind: 'limit', max: 8192 });
  });

  it('lowers either name of the limit to the cap, leaves a smaller one, and keeps the smallest cap said', () => {
    const learned: string[] = [];
    const fit = new ParamFit((param, f) => learned.push(`${param}:${f.kind}`));
    expect(fit.learn(openaiTooLarge, body({ max_tokens: 50000 }))).toBe('max_tokens');
    expect(fit.apply(body({ max_tokens: 50000 }))).toEqual(body({ max_tokens: 16384 }));
    expect(fit.apply(body({ max_completion_tokens: 20000 }))).toEqual(body({ max_completion_tokens: 16384 }));
    const small = body({ max_tokens: 1000 });
    expect(fit.apply(small)).toBe(small);
    // Not above the cap: nothing to learn (a server's message about another request).
    expect(fit.learn(openaiTooLarge, body({ max_tokens: 100 }))).toBeUndefined();
    expect(fit.snapshot()).toEqual({ output_tokens: 'at most 16384' });
    expect(learned).toEqual(['max_tokens:cap']);
  });

  it('with a rename learned too, the renamed field carries the cap', () => {
    const fit = new ParamFit();
    const renamed = refused({
      message: "Unsupported parameter: 'max_tokens' is not supported with this model.",
      param: 'max_tokens',
      code: 'unsupported_parameter',
    });
    expect(fit.learn(renamed, body({ max_tokens: 200000 }))).toBe('max_tokens');
    const tooLarge = refused({
      message:
        'max_completion_tokens is too large: 200000. This model supports at most 128000 completion tokens, whereas you provided 200000.',
    });
    expect(fit.learn(tooLarge, fit.apply(body({ max_tokens: 200000 })))).toBe('max_completion_tokens');
    expect(fit.apply(body({ max_tokens: 200000 }))).toEqual(body({ max_completion_tokens: 128000 }));
  });

  it('an Anthropic upstream’s fit learns caps only, whichever name the client used', () => {
    const fit = new ParamFit(undefined, true);
    const anthropic = refused({
      message:
        'max_tokens: 20000 > 8192, which is the maximum allowed number of output tokens for claude-3-5-haiku',
    });
    expect(fit.learn(anthropic, body({ max_completion_tokens: 20000 }))).toBe('max_completion_tokens');
    expect(fit.apply(body({ max_completion_tokens: 20000 }))).toEqual(body({ max_completion_tokens: 8192 }));
    expect(fit.learn(TEMPERATURE, body({ temperature: 0.2 }))).toBeUndefined();
  });
});

describe('ParamFit caps: whose limit it is', () => {
  it('a bound on another field that ends in max_tokens is not a cap', () => {
    const other = refused({ message: '`reasoning.max_tokens` must be less than or equal to `1024`' });
    expect(refusalOf(other)).toBeUndefined();
    const dotted = refused({
      message: 'reasoning.max_tokens is too large: 9000. This model supports at most 1024 completion tokens',
    });
    expect(refusalOf(dotted)).toBeUndefined();
  });

  it('an Anthropic upstream refusing the gateway’s default limit (the client set none) sends the cap from then on', () => {
    const fit = new ParamFit(undefined, true);
    const anthropic = refused({
      message:
        'max_tokens: 34096 > 32000, which is the maximum allowed number of output tokens for claude-opus-4-1',
    });
    expect(fit.learn(anthropic, body({}))).toBe('max_tokens');
    expect(fit.apply(body({}))).toEqual(body({ max_tokens: 32000 }));
    const own = body({ max_tokens: 500 });
    expect(fit.apply(own)).toBe(own);
    // A cap learned from a client's own limit leaves a body without one to the gateway's default.
    const fromClient = new ParamFit(undefined, true);
    expect(fromClient.learn(anthropic, body({ max_tokens: 40000 }))).toBe('max_tokens');
    const none = body({});
    expect(fromClient.apply(none)).toBe(none);
    // An OpenAI-dialect upstream sent no limit: its cap message is about something else.
    expect(new ParamFit().learn(anthropic, body({}))).toBeUndefined();
  });
});

describe("ParamFit: Mistral's tool call ids", () => {
  const MISTRAL = refused({
    message: 'Tool call id was toolu_01A09q90qw90lq917835lq9 but must be a-z, A-Z, 0-9, with a length of 9.',
  });
  const history = (callId: string) =>
    ({
      model: 'mistral-large-latest',
      messages: [
        { role: 'user', content: 'weather?' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [
            { id: callId, type: 'function', function: { name: 'w', arguments: '{}' } },
            { id: 'abcDEF123', type: 'function', function: { name: 'w', arguments: '{}' } },
          ],
        },
        { role: 'tool', tool_call_id: callId, content: 'sunny' },
        { role: 'tool', tool_call_id: 'abcDEF123', content: 'rain' },
      ],
    }) as unknown as ChatBody;
  type Msg = { tool_calls?: { id: string }[]; tool_call_id?: string };

  it('learns from the refusal: ids of other providers go as 9 letters and digits, still paired', () => {
    const fit = new ParamFit();
    const body = history('toolu_01A09q90qw90lq917835lq9');
    expect(fit.apply(body)).toBe(body);
    expect(fit.learn(MISTRAL, body)).toBe('messages');
    const sent = fit.apply(body).messages as Msg[];
    const [a, b] = sent[1]!.tool_calls!;
    expect(a!.id).toMatch(/^[A-Za-z0-9]{9}$/);
    expect(sent[2]!.tool_call_id).toBe(a!.id);
    expect(b!.id).toBe('abcDEF123'); // already Mistral's shape: as sent
    expect(sent[3]!.tool_call_id).toBe('abcDEF123');
    expect((body.messages as Msg[])[1]!.tool_calls![0]!.id).toBe('toolu_01A09q90qw90lq917835lq9');
    // The same id, the same short id: the next round's history pairs with this one's.
    expect((fit.apply(history('toolu_01A09q90qw90lq917835lq9')).messages as Msg[])[2]!.tool_call_id).toBe(
      a!.id,
    );
    expect(fit.snapshot()).toEqual({ tool_call_ids: 'tool call ids sent as 9 letters and digits' });
  });

  it('a history already in Mistral ids is sent as it is', () => {
    const fit = new ParamFit();
    fit.learn(MISTRAL, history('x'));
    const body = history('Q1w2E3r4T');
    expect(fit.apply(body)).toBe(body);
  });
});
