import OpenAI from 'openai';
import { beforeAll, describe, expect, it } from 'vitest';
import { closeAfterAll } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway, type Posted, type TestGateway } from '../helpers/gateway.js';
import { answerChat, startRecordingMock, type RecordingMock } from '../helpers/mock-upstream.js';
import { mulberry32 } from '../helpers/random.js';
import { startSimulator, type Simulator } from '../helpers/simulator.js';

/**
 * Seeded, bounded generators of Chat Completions bodies drawn from OpenAI's API reference. Every VALID body
 * (every message role, every content part, tools and tool_choice in every form, response_format, audio
 * output, predictions, web search, reasoning and sampling fields at their documented ranges, explicit nulls,
 * vendor fields) is one OpenAI accepts: the gateway must route it (200) and hand an OpenAI-compatible upstream
 * the client's body unchanged but for `model` (SPEC §4). Every INVALID body differs from a valid one by one
 * bad field of README's validated list (SPEC §8): a 400 naming that field, nothing sent upstream.
 * Real gateway on loopback, recording mocks and the simulator as upstreams, undici and the openai SDK as clients.
 */

type Json = Record<string, unknown>;
type Rand = () => number;

// ---------------------------------------------------------------------------------------------------------
// The generator of valid bodies
// ---------------------------------------------------------------------------------------------------------

const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const chance = (r: Rand, p: number): boolean => r() < p;
const int = (r: Rand, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
/** A number in [lo, hi] with at most two decimals, the edges themselves included now and then. */
const num = (r: Rand, lo: number, hi: number): number =>
  chance(r, 0.15) ? pick(r, [lo, hi]) : Math.round((lo + r() * (hi - lo)) * 100) / 100;

const TEXTS = [
  'What is the capital of France?',
  'Summarise this in one line.',
  'Prove that the square root of 2 is irrational.',
  'Derive the quadratic formula.',
  'Translate "good morning" into German.',
  'héllo wörld — ünïcode, emoji 🙂 and CJK 漢字',
  'Line one\nLine two\ttabbed "quoted" \\ backslash',
  'Write a haiku about the sea.',
  '',
];
const IMAGE_URLS = [
  'https://upload.wikimedia.org/wikipedia/commons/4/47/PNG_transparency_demonstration_1.png',
  'data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==',
  'data:image/jpeg;base64,/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAP8=',
];

function textPart(r: Rand): Json {
  return { type: 'text', text: pick(r, TEXTS) };
}

function userPart(r: Rand): Json {
  switch (int(r, 0, 5)) {
    case 0:
    case 1:
      return textPart(r);
    case 2: {
      const image_url: Json = { url: pick(r, IMAGE_URLS) };
      if (chance(r, 0.7)) image_url.detail = pick(r, ['auto', 'low', 'high']);
      return { type: 'image_url', image_url };
    }
    case 3:
      return {
        type: 'input_audio',
        input_audio: { data: 'UklGRiQAAABXQVZFZm10IBAAAAABAAEA', format: pick(r, ['wav', 'mp3']) },
      };
    case 4:
      return { type: 'file', file: { file_id: `file-${int(r, 1000, 9999)}abc` } };
    default:
      return {
        type: 'file',
        file: {
          file_data: 'data:application/pdf;base64,JVBERi0xLjQKJcfsj6IKMSAwIG9iago=',
          filename: 'doc.pdf',
        },
      };
  }
}

/** System and developer content: a string or text parts, with a `name` now and then. */
function instruction(r: Rand, role: 'system' | 'developer'): Json {
  const m: Json = {
    role,
    content: chance(r, 0.6)
      ? 'You are a helpful assistant.'
      : [textPart(r), { type: 'text', text: 'Be brief.' }],
  };
  if (chance(r, 0.25)) m.name = chance(r, 0.8) ? 'ops' : null;
  return m;
}

function userMessage(r: Rand, last: boolean): Json {
  let content: unknown;
  if (chance(r, 0.5)) content = pick(r, TEXTS);
  else {
    const parts = Array.from({ length: int(r, 1, 3) }, () => userPart(r));
    // The last user turn says something in words, as a client's turns do.
    content = last ? [textPart(r), ...parts] : parts;
  }
  const m: Json = { role: 'user', content };
  if (chance(r, 0.2)) m.name = chance(r, 0.8) ? 'alice' : null;
  return m;
}

/** An earlier assistant turn: text, parts with a refusal, tool calls (content null), audio by id, legacy call. */
function assistantTurn(r: Rand, tools: Json[]): { message: Json; answers: Json[] } {
  const message: Json = { role: 'assistant' };
  const answers: Json[] = [];
  const fnTools = tools.filter((t) => t.type === 'function');
  const customTools = tools.filter((t) => t.type === 'custom');
  const kind = int(r, 0, 5);
  if (kind <= 1 && tools.length > 0) {
    message.content = chance(r, 0.7) ? null : 'Let me check.';
    const calls: Json[] = [];
    for (let i = 0; i < int(r, 1, 2); i++) {
      const id = `call_${int(r, 100000, 999999)}_${i}`;
      const custom = customTools.length > 0 && (fnTools.length === 0 || chance(r, 0.3));
      if (custom) {
        const name = (pick(r, customTools).custom as Json).name;
        calls.push({ id, type: 'custom', custom: { name, input: 'start: "a"' } });
      } else if (fnTools.length > 0) {
        const name = (pick(r, fnTools).function as Json).name;
        calls.push({
          id,
          type: 'function',
          function: { name, arguments: pick(r, ['{}', '{"city":"Paris"}', '{"n":1e3,"deep":{"a":[1,2]}}']) },
        });
      } else continue;
      const answer: Json = {
        role: 'tool',
        tool_call_id: id,
        content: chance(r, 0.7)
          ? pick(r, ['{"ok":true}', 'sunny', ''])
          : [{ type: 'text', text: '{"temp":21}' }],
      };
      answers.push(answer);
    }
    message.tool_calls = calls;
    if (calls.length === 0) message.content = 'nothing to call';
  } else if (kind === 2) {
    message.content = [
      { type: 'text', text: 'Part of an answer.' },
      { type: 'refusal', refusal: 'I cannot help with the rest.' },
    ];
  } else if (kind === 3) {
    message.content = null;
    message.refusal = "I'm sorry, I can't help with that.";
  } else if (kind === 4) {
    message.content = null;
    message.audio = { id: `audio_${int(r, 1000, 9999)}abc` };
  } else {
    message.content = pick(r, ['Sure.', 'Here you go: 42.', '']);
  }
  if (chance(r, 0.2)) message.name = 'bot';
  for (const k of ['refusal', 'audio', 'name', 'tool_calls', 'function_call'] as const) {
    if (message[k] === undefined && chance(r, 0.1)) message[k] = null;
  }
  return { message, answers };
}

const SCHEMAS: Json[] = [
  { type: 'object', properties: {} },
  {
    type: 'object',
    properties: {
      city: { type: 'string', description: 'City name' },
      unit: { type: 'string', enum: ['c', 'f'] },
    },
    required: ['city', 'unit'],
    additionalProperties: false,
  },
  {
    type: 'object',
    properties: {
      items: {
        type: 'array',
        items: {
          type: 'object',
          properties: {
            n: { type: 'integer', minimum: 0 },
            tags: { type: 'array', items: { type: 'string' } },
          },
          required: ['n', 'tags'],
          additionalProperties: false,
        },
      },
      note: { type: ['string', 'null'] },
    },
    required: ['items', 'note'],
    additionalProperties: false,
  },
  {
    type: 'object',
    $defs: {
      node: {
        type: 'object',
        properties: { v: { type: 'number' }, next: { anyOf: [{ $ref: '#/$defs/node' }, { type: 'null' }] } },
        required: ['v', 'next'],
        additionalProperties: false,
      },
    },
    properties: { head: { $ref: '#/$defs/node' } },
    required: ['head'],
    additionalProperties: false,
  },
  {
    type: 'object',
    properties: {
      when: { type: 'string', format: 'date-time' },
      score: { type: 'number', minimum: -1, maximum: 1 },
    },
    required: ['when', 'score'],
    additionalProperties: false,
  },
];

function makeTools(r: Rand): Json[] {
  const tools: Json[] = [];
  const count = int(r, 1, 4);
  for (let i = 0; i < count; i++) {
    if (chance(r, 0.75)) {
      const fn: Json = { name: `fn_${i}` };
      if (chance(r, 0.7)) fn.description = `Function number ${i}.`;
      if (chance(r, 0.8)) fn.parameters = pick(r, SCHEMAS);
      if (chance(r, 0.5)) fn.strict = pick(r, [true, false, null]);
      tools.push({ type: 'function', function: fn });
    } else {
      const custom: Json = { name: `custom_${i}` };
      if (chance(r, 0.5)) custom.description = 'Free-form input.';
      const f = int(r, 0, 3);
      if (f === 1) custom.format = { type: 'text' };
      if (f === 2)
        custom.format = {
          type: 'grammar',
          grammar: { syntax: 'lark', definition: 'start: WORD+\n%import common.WORD' },
        };
      if (f === 3) custom.format = { type: 'grammar', grammar: { syntax: 'regex', definition: '^[a-z]+$' } };
      tools.push({ type: 'custom', custom });
    }
  }
  return tools;
}

function makeToolChoice(r: Rand, tools: Json[]): unknown {
  const fns = tools.filter((t) => t.type === 'function');
  const customs = tools.filter((t) => t.type === 'custom');
  const forms: (() => unknown)[] = [() => 'none', () => 'auto', () => 'required'];
  if (fns.length > 0)
    forms.push(() => ({ type: 'function', function: { name: (pick(r, fns).function as Json).name } }));
  if (customs.length > 0)
    forms.push(() => ({ type: 'custom', custom: { name: (pick(r, customs).custom as Json).name } }));
  forms.push(() => ({
    type: 'allowed_tools',
    allowed_tools: {
      mode: pick(r, ['auto', 'required']),
      tools: tools
        .filter(() => chance(r, 0.6))
        .map((t) =>
          t.type === 'function'
            ? { type: 'function', function: { name: (t.function as Json).name } }
            : { type: 'custom', custom: { name: (t.custom as Json).name } },
        ),
    },
  }));
  return pick(r, forms)();
}

const VOICES = [
  'alloy',
  'ash',
  'ballad',
  'coral',
  'echo',
  'fable',
  'nova',
  'onyx',
  'sage',
  'shimmer',
  'verse',
  'marin',
  'cedar',
];

/** A valid Chat Completions body (model `model`), drawn from `r`. */
function validBody(r: Rand, model: string): Json {
  const useTools = chance(r, 0.4);
  const tools = useTools ? makeTools(r) : [];
  const messages: Json[] = [];
  if (chance(r, 0.6)) messages.push(instruction(r, chance(r, 0.5) ? 'system' : 'developer'));
  for (let turn = int(r, 0, 2); turn > 0; turn--) {
    messages.push(userMessage(r, false));
    const { message, answers } = assistantTurn(r, tools);
    messages.push(message, ...answers);
    if (answers.length > 0 && chance(r, 0.5)) messages.push({ role: 'assistant', content: 'Done.' });
  }
  if (chance(r, 0.08)) {
    // The deprecated function-calling history: an assistant function_call and the function's answer.
    messages.push(
      { role: 'user', content: 'legacy call please' },
      { role: 'assistant', content: null, function_call: { name: 'legacy_fn', arguments: '{"x":1}' } },
      { role: 'function', name: 'legacy_fn', content: chance(r, 0.8) ? '{"y":2}' : null },
    );
  }
  messages.push(userMessage(r, true));

  const body: Json = { model, messages };
  const optional: Json = {};
  const stream = chance(r, 0.4);
  if (useTools) {
    optional.tools = tools;
    if (chance(r, 0.7)) optional.tool_choice = makeToolChoice(r, tools);
    if (chance(r, 0.5)) optional.parallel_tool_calls = chance(r, 0.5);
  }
  if (chance(r, 0.3)) {
    const f = int(r, 0, 2);
    optional.response_format =
      f === 0
        ? { type: 'text' }
        : f === 1
          ? { type: 'json_object' }
          : {
              type: 'json_schema',
              json_schema: {
                name: pick(r, ['answer', 'plan_v2', 'Result-1']),
                ...(chance(r, 0.5) ? { description: 'The answer.' } : {}),
                schema: pick(r, SCHEMAS),
                ...(chance(r, 0.7) ? { strict: pick(r, [true, false, null]) } : {}),
              },
            };
  }
  const audio = chance(r, 0.12);
  if (audio) {
    optional.modalities = ['text', 'audio'];
    optional.audio = {
      voice: pick(r, VOICES),
      format: stream ? 'pcm16' : pick(r, ['wav', 'aac', 'mp3', 'flac', 'opus', 'pcm16']),
    };
  } else if (chance(r, 0.15)) optional.modalities = ['text'];
  if (chance(r, 0.1))
    optional.web_search_options = chance(r, 0.5)
      ? {}
      : {
          search_context_size: pick(r, ['low', 'medium', 'high']),
          user_location: {
            type: 'approximate',
            approximate: { city: 'Paris', country: 'FR', region: 'IDF', timezone: 'Europe/Paris' },
          },
        };
  if (chance(r, 0.25)) optional.reasoning_effort = pick(r, ['minimal', 'low', 'medium', 'high']);
  if (chance(r, 0.2)) optional.verbosity = pick(r, ['low', 'medium', 'high']);
  if (chance(r, 0.2)) optional.service_tier = pick(r, ['auto', 'default', 'flex', 'scale', 'priority']);
  if (chance(r, 0.2)) optional.prompt_cache_key = `cache-${int(r, 1, 99)}`;
  if (chance(r, 0.2)) optional.safety_identifier = `user-hash-${int(r, 1, 99)}`;
  if (chance(r, 0.2)) optional.store = chance(r, 0.5);
  if (chance(r, 0.2)) optional.metadata = { session: `s${int(r, 1, 9)}`, 'trace-id': 'abc' };
  const logprobs = chance(r, 0.15) && !audio;
  if (logprobs) {
    optional.logprobs = true;
    if (chance(r, 0.7)) optional.top_logprobs = int(r, 0, 20);
  } else if (chance(r, 0.1)) optional.logprobs = false;
  if (chance(r, 0.25)) optional.seed = pick(r, [0, 42, -7, 2147483647, 9007199254740991]);
  if (chance(r, 0.25)) {
    optional.stop = chance(r, 0.4)
      ? pick(r, ['\n', 'END', '###'])
      : Array.from({ length: int(r, 1, 4) }, (_, i) => `stop${i}`);
  }
  const limit = chance(r, 0.5) ? int(r, 1, 4096) : undefined;
  if (limit !== undefined) optional[chance(r, 0.5) ? 'max_tokens' : 'max_completion_tokens'] = limit;
  const n = chance(r, 0.15) && !audio ? int(r, 2, 4) : undefined;
  if (n !== undefined) optional.n = n;
  else if (chance(r, 0.1)) optional.n = 1;
  if (chance(r, 0.35)) optional.temperature = num(r, 0, 2);
  if (chance(r, 0.25)) optional.top_p = num(r, 0, 1);
  if (chance(r, 0.2)) optional.presence_penalty = num(r, -2, 2);
  if (chance(r, 0.2)) optional.frequency_penalty = num(r, -2, 2);
  if (chance(r, 0.15))
    optional.logit_bias = { '50256': -100, [String(int(r, 1, 100000))]: int(r, -100, 100) };
  if (chance(r, 0.2)) optional.user = pick(r, ['user-123', '', 'ü@example.com']);
  // Predicted outputs take none of n > 1, logprobs, audio, tools, penalties or max_completion_tokens.
  const predictable =
    n === undefined &&
    !logprobs &&
    !audio &&
    !useTools &&
    optional.max_completion_tokens === undefined &&
    optional.presence_penalty === undefined &&
    optional.frequency_penalty === undefined;
  if (predictable && chance(r, 0.2)) {
    optional.prediction = {
      type: 'content',
      content: chance(r, 0.5) ? 'predicted text' : [{ type: 'text', text: 'predicted' }],
    };
  }
  if (stream) {
    optional.stream = true;
    if (chance(r, 0.6)) {
      const so: Json = {};
      if (chance(r, 0.8)) so.include_usage = chance(r, 0.7);
      if (chance(r, 0.4)) so.include_obfuscation = chance(r, 0.5);
      optional.stream_options = so;
    }
  } else if (chance(r, 0.2)) optional.stream = false;
  // Fields OpenAI-compatible servers take that OpenAI does not name: they pass through untouched.
  if (chance(r, 0.1)) optional.top_k = int(r, 1, 50);
  if (chance(r, 0.05)) optional.chat_template_kwargs = { enable_thinking: false };
  // Explicit nulls for optional fields left unset (OpenAI documents each as nullable).
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
    'tools',
    'tool_choice',
    'parallel_tool_calls',
  ]) {
    if (!(k in optional) && chance(r, 0.08)) optional[k] = null;
  }
  // Member order varies, as different SDKs write it.
  const keys = Object.keys(optional).sort(() => r() - 0.5);
  for (const k of keys) body[k] = optional[k];
  return body;
}

// ---------------------------------------------------------------------------------------------------------
// The generator of invalid bodies: one bad field each, from README's list of validated fields
// ---------------------------------------------------------------------------------------------------------

/** Makes `body` invalid in one field and returns the `param` the 400 must name; undefined if it does not apply. */
type Breaker = (b: Json, r: Rand) => string | undefined;

const msgs = (b: Json): Json[] => b.messages as Json[];
function indexWhere(b: Json, pred: (m: Json) => boolean): number {
  return msgs(b).findIndex(pred);
}
const lastUser = (b: Json): number => msgs(b).length - 1;

const BREAKERS: [string, Breaker][] = [
  ['messages not a list', (b) => ((b.messages = 'hi'), 'messages')],
  ['messages empty', (b) => ((b.messages = []), 'messages')],
  [
    'a message not an object',
    (b) => ((msgs(b)[lastUser(b)] = 'hello' as unknown as Json), `messages[${lastUser(b)}]`),
  ],
  [
    'unknown role',
    (b, r) => (
      (msgs(b)[lastUser(b)]!.role = pick(r, ['bot', 'User', 'model', 'ai'])),
      `messages[${lastUser(b)}].role`
    ),
  ],
  ['role missing', (b) => (delete msgs(b)[lastUser(b)]!.role, `messages[${lastUser(b)}].role`)],
  ['content a number', (b) => ((msgs(b)[lastUser(b)]!.content = 42), `messages[${lastUser(b)}].content`)],
  [
    'content an object',
    (b) => ((msgs(b)[lastUser(b)]!.content = { text: 'hi' }), `messages[${lastUser(b)}].content`),
  ],
  [
    'a part without a type',
    (b) => ((msgs(b)[lastUser(b)]!.content = [{ text: 'hi' }]), `messages[${lastUser(b)}].content[0]`),
  ],
  [
    'a text part whose text is a number',
    (b) => (
      (msgs(b)[lastUser(b)]!.content = [{ type: 'text', text: 7 }]),
      `messages[${lastUser(b)}].content[0].text`
    ),
  ],
  [
    'an image part without image_url',
    (b) => (
      (msgs(b)[lastUser(b)]!.content = [{ type: 'text', text: 'see' }, { type: 'image_url' }]),
      `messages[${lastUser(b)}].content[1].image_url`
    ),
  ],
  [
    'an image part without a url',
    (b) => (
      (msgs(b)[lastUser(b)]!.content = [{ type: 'image_url', image_url: { detail: 'low' } }]),
      `messages[${lastUser(b)}].content[0].image_url.url`
    ),
  ],
  [
    'a tool message without tool_call_id',
    (b) => {
      const i = indexWhere(b, (m) => m.role === 'tool');
      if (i < 0) return undefined;
      delete msgs(b)[i]!.tool_call_id;
      return `messages[${i}].tool_call_id`;
    },
  ],
  [
    'tool_calls not a list',
    (b) => {
      const i = indexWhere(b, (m) => Array.isArray(m.tool_calls));
      if (i < 0) return undefined;
      msgs(b)[i]!.tool_calls = { id: 'x' };
      return `messages[${i}].tool_calls`;
    },
  ],
  [
    'a tool call whose arguments are an object',
    (b) => {
      const i = indexWhere(
        b,
        (m) => Array.isArray(m.tool_calls) && (m.tool_calls as Json[]).some((c) => c.type === 'function'),
      );
      if (i < 0) return undefined;
      const calls = msgs(b)[i]!.tool_calls as Json[];
      const j = calls.findIndex((c) => c.type === 'function');
      (calls[j]!.function as Json).arguments = { city: 'Paris' };
      return `messages[${i}].tool_calls[${j}].function.arguments`;
    },
  ],
  ['n 0', (b) => ((b.n = 0), 'n')],
  ['n 1.5', (b) => ((b.n = 1.5), 'n')],
  ['n 129', (b) => ((b.n = 129), 'n')],
  ['max_tokens negative', (b) => ((b.max_tokens = -5), 'max_tokens')],
  ['max_tokens a string', (b) => ((b.max_tokens = '100'), 'max_tokens')],
  ['max_completion_tokens 0', (b) => ((b.max_completion_tokens = 0), 'max_completion_tokens')],
  ['temperature 2.01', (b) => ((b.temperature = 2.01), 'temperature')],
  ['temperature a string', (b) => ((b.temperature = '0.7'), 'temperature')],
  ['top_p 1.01', (b) => ((b.top_p = 1.01), 'top_p')],
  ['presence_penalty -2.5', (b) => ((b.presence_penalty = -2.5), 'presence_penalty')],
  ['frequency_penalty 3', (b) => ((b.frequency_penalty = 3), 'frequency_penalty')],
  ['stream a string', (b) => ((b.stream = 'true'), 'stream')],
  ['stream_options a string', (b) => ((b.stream = true), (b.stream_options = 'usage'), 'stream_options')],
  [
    'include_usage a string',
    (b) => ((b.stream = true), (b.stream_options = { include_usage: 'yes' }), 'stream_options.include_usage'),
  ],
  ['seed a fraction', (b) => ((b.seed = 1.5), 'seed')],
  ['seed a string', (b) => ((b.seed = '42'), 'seed')],
  ['user a number', (b) => ((b.user = 123), 'user')],
  ['parallel_tool_calls a string', (b) => ((b.parallel_tool_calls = 'false'), 'parallel_tool_calls')],
  ['logprobs a number', (b) => ((b.logprobs = 1), 'logprobs')],
  ['top_logprobs negative', (b) => ((b.logprobs = true), (b.top_logprobs = -1), 'top_logprobs')],
  ['logit_bias 150', (b) => ((b.logit_bias = { '50256': 150 }), 'logit_bias')],
  ['logit_bias a list', (b) => ((b.logit_bias = [1, 2]), 'logit_bias')],
  ['response_format a string', (b) => ((b.response_format = 'json_object'), 'response_format')],
  [
    'response_format without a type',
    (b) => ((b.response_format = { json_schema: { name: 'x' } }), 'response_format'),
  ],
  ['stop a list with a number', (b) => ((b.stop = ['END', 3]), 'stop')],
  ['stop a number', (b) => ((b.stop = 7), 'stop')],
  ['tools an object', (b) => ((b.tools = { type: 'function' }), delete b.tool_choice, 'tools')],
  [
    'a tool without its function',
    (b) => ((b.tools = [{ type: 'function' }]), delete b.tool_choice, 'tools[0]'),
  ],
  [
    'a tool of unknown type',
    (b) => ((b.tools = [{ type: 'retrieval', retrieval: {} }]), delete b.tool_choice, 'tools[0]'),
  ],
  [
    'a function without a name',
    (b) => (
      (b.tools = [{ type: 'function', function: { description: 'x' } }]),
      delete b.tool_choice,
      'tools[0].function.name'
    ),
  ],
  [
    'a function whose parameters are a string',
    (b) => (
      (b.tools = [{ type: 'function', function: { name: 'f', parameters: 'object' } }]),
      delete b.tool_choice,
      'tools[0].function.parameters'
    ),
  ],
  ['tool_choice an unknown word', (b) => ((b.tool_choice = 'always'), 'tool_choice')],
  [
    'tool_choice naming a function not in tools',
    (b) => (
      (b.tools = [{ type: 'function', function: { name: 'present' } }]),
      (b.tool_choice = { type: 'function', function: { name: 'absent' } }),
      'tool_choice'
    ),
  ],
];

// ---------------------------------------------------------------------------------------------------------
// Gateways
// ---------------------------------------------------------------------------------------------------------

const track = closeAfterAll();
const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x)) as T;
const short = (x: unknown, n = 400): string => {
  const s = JSON.stringify(x);
  return s.length > n ? `${s.slice(0, n)}…` : s;
};

/** What a body's answer must look like: a chat.completion with `ok`, or an SSE stream ended by [DONE]. */
function answered(body: Json, r: Posted): boolean {
  if (r.status !== 200) return false;
  if (body.stream === true)
    return r.text.includes('"content":"ok"') && r.text.trimEnd().endsWith('data: [DONE]');
  return (r.json.choices as Json[] | undefined)?.[0] !== undefined;
}

describe('an OpenAI-dialect route: every valid body is served and reaches the upstream unchanged but for model', () => {
  let mock: RecordingMock;
  let gw: TestGateway;
  beforeAll(async () => {
    mock = track(await startRecordingMock((body, _n, res) => answerChat(res, body, 'ok')));
    // As SPEC §3 writes a production model: its context window and every chat capability.
    gw = track(
      await startGateway({
        providers: [
          simProvider('openai', mock.url, [
            {
              name: 'gpt-4o-mini',
              context_window: 128000,
              capabilities: ['tools', 'json', 'vision', 'stream'],
            },
          ]),
        ],
        routes: { fast: { strategy: 'priority', targets: ['openai/gpt-4o-mini'] } },
      }),
    );
  });

  it('240 seeded bodies over undici: each a 200, and the upstream gets the exact text sent but for model', async () => {
    const r = mulberry32(0x5eed_0001);
    const problems: string[] = [];
    for (let i = 0; i < 240; i++) {
      const body = validBody(r, 'fast');
      // A quarter written by hand (curl, a config file): indented, the model spliced into that text as it is.
      const indent = chance(r, 0.25) ? pick(r, [2, '\t']) : undefined;
      const before = mock.texts.length;
      const res = await postChat(gw, JSON.stringify(body, null, indent));
      if (!answered(body, res)) {
        problems.push(`#${i} refused ${res.status} ${res.text.slice(0, 300)}\n  body ${short(body)}`);
        continue;
      }
      const sent = mock.texts[before];
      const expected = JSON.stringify({ ...body, model: 'gpt-4o-mini' }, null, indent);
      if (mock.texts.length !== before + 1)
        problems.push(`#${i}: ${mock.texts.length - before} upstream requests`);
      else if (sent !== expected) {
        const got = JSON.parse(sent!) as Json;
        const changed = [...new Set([...Object.keys(got), ...Object.keys(body)])].filter(
          (k) => k !== 'model' && JSON.stringify(got[k]) !== JSON.stringify(body[k]),
        );
        problems.push(
          `#${i} changed on the way: ${changed.join(', ') || '(member order or spacing)'}\n  body ${short(body)}`,
        );
      }
    }
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it('60 seeded bodies through the openai SDK (JSON and streams): each served, each field as the client set it', async () => {
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0, timeout: 15_000 });
    const r = mulberry32(0x5eed_0002);
    const problems: string[] = [];
    for (let i = 0; i < 60; i++) {
      const body = validBody(r, 'fast');
      const before = mock.bodies.length;
      try {
        const params = body as unknown as OpenAI.Chat.ChatCompletionCreateParams;
        if (body.stream === true) {
          const stream = await client.chat.completions.create({ ...params, stream: true });
          let text = '';
          for await (const c of stream) text += c.choices[0]?.delta.content ?? '';
          if (text !== 'ok') problems.push(`#${i} stream text ${JSON.stringify(text)}`);
        } else {
          const out = await client.chat.completions.create({
            ...params,
            stream: body.stream as false | null | undefined,
          });
          if (out.choices[0]?.message.content !== 'ok') problems.push(`#${i} answer ${short(out)}`);
        }
      } catch (err) {
        problems.push(`#${i} refused: ${(err as Error).message.slice(0, 300)}\n  body ${short(body)}`);
        continue;
      }
      const got = mock.bodies[before];
      if (mock.bodies.length !== before + 1 || got === undefined) {
        problems.push(`#${i}: ${mock.bodies.length - before} upstream requests`);
        continue;
      }
      for (const k of new Set([...Object.keys(got), ...Object.keys(body)])) {
        if (k === 'model') continue;
        if (JSON.stringify(got[k]) !== JSON.stringify(body[k]))
          problems.push(`#${i} ${k} changed: ${short(body[k], 120)} -> ${short(got[k], 120)}`);
      }
    }
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it('60 seeded bodies with one bad field each: a 400 naming that field, the upstream never called', async () => {
    const r = mulberry32(0x5eed_0003);
    const problems: string[] = [];
    const before = mock.texts.length;
    let sent = 0;
    for (let i = 0; sent < 60 && i < 600; i++) {
      const body = clone(validBody(r, 'fast'));
      const [what, breakIt] = BREAKERS[sent % BREAKERS.length]!;
      const param = breakIt(body, r);
      if (param === undefined) continue; // this body has nothing of that kind: the next one
      sent++;
      const res = await postChat(gw, body);
      const err = (res.json.error ?? {}) as Json;
      if (res.status !== 400 || err.type !== 'invalid_request_error' || err.param !== param) {
        problems.push(
          `${what}: ${res.status} param ${String(err.param)} (expected ${param}) ${res.text.slice(0, 200)}`,
        );
      }
    }
    expect(sent).toBe(60);
    expect(problems, problems.join('\n')).toEqual([]);
    expect(mock.texts.length).toBe(before);
  });
});

// ---------------------------------------------------------------------------------------------------------
// README's own tiered route: OpenAI and Claude upstreams, rules, the LLM router
// ---------------------------------------------------------------------------------------------------------

describe("README's `auto` route: a body OpenAI accepts is served when any tier of the route can serve it", () => {
  let openai: RecordingMock;
  let claude: Simulator;
  let gw: TestGateway;
  beforeAll(async () => {
    openai = track(await startRecordingMock((body, _n, res) => answerChat(res, body, 'ok')));
    claude = track(
      await startSimulator({ name: 'claude', kind: 'anthropic', reply: 'ok', completionTokens: 1 }),
    );
    // README "Tiers and the LLM router", as written there.
    gw = track(
      await startGateway({
        providers: [
          simProvider('openai', openai.url, ['gpt-4o-mini', 'gpt-4o']),
          {
            name: 'anthropic',
            kind: 'anthropic',
            base_url: claude.url,
            api_key: 'sk-ant-test-0123456789',
            models: [{ name: 'claude-haiku-4-5' }, { name: 'claude-sonnet-4-5' }],
          },
        ],
        routes: {
          auto: {
            strategy: 'hybrid',
            tiers: {
              fast: ['openai/gpt-4o-mini', 'anthropic/claude-haiku-4-5'],
              balanced: ['openai/gpt-4o'],
              deep: ['anthropic/claude-sonnet-4-5'],
            },
            rules: [
              { name: 'small', if: { max_prompt_tokens: 400, tools: false }, tier: 'fast' },
              { name: 'huge', if: { min_prompt_tokens: 20000 }, tier: 'deep' },
              { name: 'proofs', if: { last_user_message: 'prove|derive' }, tier: 'deep' },
            ],
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 1500, cache_ttl_s: 300 },
          },
        },
      }),
    );
  });

  // README: what Anthropic has no place for "leaves Anthropic upstreams out of the candidates: another upstream
  // of the route serves it". A rule's pick is no firmer than the LLM router's, which gives way to default_tier.
  it('"Prove ..." with a tool offered and n: 2: the proofs rule picks Claude-only deep, and an OpenAI model of the route serves it', async () => {
    const res = await postChat(gw, {
      model: 'auto',
      n: 2,
      tools: [
        {
          type: 'function',
          function: { name: 'lookup_theorem', parameters: { type: 'object', properties: {} } },
        },
      ],
      messages: [{ role: 'user', content: 'Prove that the square root of 2 is irrational.' }],
    });
    expect(res.status, res.text).toBe(200);
    expect(res.headers['x-router-provider']).toBe('openai');
    expect((res.json.choices as unknown[] | undefined)?.length).toBeGreaterThan(0);
  });

  it('"Derive ..." about an uploaded file (file_id): served by a tier with an OpenAI model, not refused', async () => {
    const res = await postChat(gw, {
      model: 'auto',
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'Derive the main result of this paper.' },
            { type: 'file', file: { file_id: 'file-6F2ksmvXxt4VdoqmHRw6kL' } },
          ],
        },
      ],
    });
    expect(res.status, res.text).toBe(200);
    expect(res.headers['x-router-provider']).toBe('openai');
  });

  it('80 seeded bodies: each a 200', async () => {
    const r = mulberry32(0x5eed_0004);
    const problems: string[] = [];
    for (let i = 0; i < 80; i++) {
      const body = validBody(r, 'auto');
      const res = await postChat(gw, body);
      if (res.status !== 200) {
        problems.push(
          `#${i} ${res.status} tier=${res.headers['x-router-tier']} ${res.text.slice(0, 240)}\n  body ${short(body, 300)}`,
        );
      }
    }
    expect(problems, problems.join('\n')).toEqual([]);
  });
});
