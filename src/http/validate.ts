import { GatewayError } from '../errors.js';
import { nestsDeeperThan } from '../json-scan.js';
import type { ChatBody } from '../upstream/adapter.js';
import { clip } from '../text.js';

const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool', 'function']);

function bad(param: string, message: string): GatewayError {
  return new GatewayError('invalid_request', `${param}: ${message}`, { param });
}

/**
 * A body read whole but not usable (not JSON, empty, nested too deep): handed to the handler, which throws
 * its error. Refused in the parser instead, fastify closes the connection ("the client may send more
 * data"), and a request pipelined behind it on that connection was still routed, its answer never sent.
 */
export class UnusableBody {
  constructor(readonly error: GatewayError) {}
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function optionalNumber(
  body: Record<string, unknown>,
  key: string,
  min: number,
  max: number,
  integer: boolean,
): void {
  const v = body[key];
  if (v === undefined || v === null) return;
  if (typeof v !== 'number' || !Number.isFinite(v) || (integer && !Number.isInteger(v))) {
    throw bad(key, `expected ${integer ? 'an integer' : 'a number'}`);
  }
  if (v < min || v > max) throw bad(key, `must be between ${min} and ${max}`);
}

/**
 * Known OpenAI fields with a wrong type or an impossible value are rejected before any upstream is called,
 * naming the field; unknown fields pass through untouched (SPEC §8).
 */
export function validateChatBody(raw: unknown): ChatBody {
  if (raw instanceof UnusableBody) throw raw.error;
  if (!isObject(raw)) throw new GatewayError('invalid_request', 'the request body must be a JSON object');
  if (raw.model === undefined) throw bad('model', 'is required');
  if (typeof raw.model !== 'string' || raw.model === '') throw bad('model', 'expected a non-empty string');
  if (raw.messages === undefined) throw bad('messages', 'is required');
  if (!Array.isArray(raw.messages)) throw bad('messages', 'expected an array');
  if (raw.messages.length === 0) throw bad('messages', 'must contain at least one message');
  raw.messages.forEach((m, i) => {
    if (!isObject(m)) throw bad(`messages[${i}]`, 'expected an object');
    if (typeof m.role !== 'string' || !ROLES.has(m.role)) {
      throw bad(`messages[${i}].role`, `expected one of ${[...ROLES].join(', ')}`);
    }
    const c = m.content;
    if (c !== undefined && c !== null && typeof c !== 'string' && !Array.isArray(c)) {
      throw bad(`messages[${i}].content`, 'expected a string or an array of content parts');
    }
    if (Array.isArray(c)) c.forEach((part, j) => checkPart(part, `messages[${i}].content[${j}]`));
    if (m.role === 'tool' && typeof m.tool_call_id !== 'string') {
      throw bad(`messages[${i}].tool_call_id`, 'is required for tool messages');
    }
    if (m.tool_calls !== undefined && m.tool_calls !== null) {
      if (!Array.isArray(m.tool_calls)) throw bad(`messages[${i}].tool_calls`, 'expected an array');
      m.tool_calls.forEach((call, j) => checkToolCall(call, `messages[${i}].tool_calls[${j}]`));
    }
  });
  if (raw.stream !== undefined && raw.stream !== null && typeof raw.stream !== 'boolean') {
    throw bad('stream', 'expected a boolean');
  }
  if (raw.stream_options !== undefined && raw.stream_options !== null) {
    if (!isObject(raw.stream_options)) throw bad('stream_options', 'expected an object');
    const usage = raw.stream_options.include_usage;
    if (usage !== undefined && usage !== null && typeof usage !== 'boolean') {
      throw bad('stream_options.include_usage', 'expected a boolean');
    }
  }
  optionalType(raw, 'seed', 'integer');
  optionalType(raw, 'user', 'string');
  optionalType(raw, 'parallel_tool_calls', 'boolean');
  optionalType(raw, 'logprobs', 'boolean');
  optionalNumber(raw, 'top_logprobs', 0, 1e9, true); // OpenAI takes up to 20; vLLM's bound is its own
  if (raw.logit_bias !== undefined && raw.logit_bias !== null) checkLogitBias(raw.logit_bias);
  optionalNumber(raw, 'n', 1, 128, true);
  optionalNumber(raw, 'max_tokens', 1, 1e9, true);
  optionalNumber(raw, 'max_completion_tokens', 1, 1e9, true);
  optionalNumber(raw, 'temperature', 0, 2, false);
  optionalNumber(raw, 'top_p', 0, 1, false);
  optionalNumber(raw, 'presence_penalty', -2, 2, false);
  optionalNumber(raw, 'frequency_penalty', -2, 2, false);
  if (raw.tools !== undefined && raw.tools !== null) {
    if (!Array.isArray(raw.tools)) throw bad('tools', 'expected an array');
    raw.tools.forEach((t, i) => {
      // OpenAI's two tool types: a function (JSON arguments) and a custom tool (free-form input, GPT-5).
      const kind = isObject(t) && (t.type === 'function' || t.type === 'custom') ? t.type : undefined;
      const spec = kind !== undefined ? (t as Record<string, unknown>)[kind] : undefined;
      if (kind === undefined || !isObject(spec)) {
        throw bad(
          `tools[${i}]`,
          'expected {"type":"function","function":{...}} or {"type":"custom","custom":{...}}',
        );
      }
      if (typeof spec.name !== 'string' || spec.name === '') {
        throw bad(`tools[${i}].${kind}.name`, 'expected a non-empty string');
      }
      if (kind === 'function' && spec.parameters !== undefined && !isObject(spec.parameters)) {
        throw bad(`tools[${i}].function.parameters`, 'expected a JSON Schema object');
      }
    });
  }
  if (raw.tool_choice !== undefined && raw.tool_choice !== null) checkToolChoice(raw.tool_choice, raw.tools);
  if (raw.response_format !== undefined && raw.response_format !== null) {
    if (!isObject(raw.response_format) || typeof raw.response_format.type !== 'string') {
      throw bad('response_format', 'expected an object with a type');
    }
  }
  const stop = raw.stop;
  if (
    stop !== undefined &&
    stop !== null &&
    typeof stop !== 'string' &&
    !(Array.isArray(stop) && stop.every((x) => typeof x === 'string'))
  ) {
    throw bad('stop', 'expected a string or an array of strings');
  }
  return raw as ChatBody;
}

/** A content part: an object with a type; OpenAI's text and image parts with their value of the right type. */
function checkPart(part: unknown, at: string): void {
  if (!isObject(part) || typeof part.type !== 'string') {
    throw bad(at, 'expected a content part object with a type');
  }
  if (part.type === 'text' && typeof part.text !== 'string') throw bad(`${at}.text`, 'expected a string');
  if (part.type === 'image_url' && typeof part.image_url !== 'string') {
    if (!isObject(part.image_url)) throw bad(`${at}.image_url`, 'expected {"url": ...}');
    if (typeof part.image_url.url !== 'string') throw bad(`${at}.image_url.url`, 'expected a string');
  }
}

/** An assistant's earlier tool call: an object; a function call's name and arguments strings when given. */
function checkToolCall(call: unknown, at: string): void {
  if (!isObject(call)) throw bad(at, 'expected a tool call object');
  const fn = call.function;
  if (fn === undefined || fn === null) return;
  if (!isObject(fn)) throw bad(`${at}.function`, 'expected {"name": ..., "arguments": ...}');
  if (typeof fn.name !== 'string') throw bad(`${at}.function.name`, 'expected a string');
  if (fn.arguments !== undefined && fn.arguments !== null && typeof fn.arguments !== 'string') {
    throw bad(`${at}.function.arguments`, 'expected a JSON string');
  }
}

const TYPE_CHECKS = {
  integer: (v: unknown) => typeof v === 'number' && Number.isInteger(v),
  string: (v: unknown) => typeof v === 'string',
  boolean: (v: unknown) => typeof v === 'boolean',
} as const;

function optionalType(body: Record<string, unknown>, key: string, type: keyof typeof TYPE_CHECKS): void {
  const v = body[key];
  if (v !== undefined && v !== null && !TYPE_CHECKS[type](v)) {
    throw bad(key, `expected ${type === 'integer' ? 'an integer' : `a ${type}`}`);
  }
}

/** Token ids to biases from -100 to 100. */
function checkLogitBias(bias: unknown): void {
  if (!isObject(bias)) throw bad('logit_bias', 'expected an object of token ids to numbers');
  for (const v of Object.values(bias)) {
    if (typeof v !== 'number' || !(v >= -100 && v <= 100)) {
      throw bad('logit_bias', 'expected every bias to be a number from -100 to 100');
    }
  }
}

/**
 * `none`, `auto`, `required` (and `any`, Mistral's word for required), or an object; one naming a function
 * must name one of `tools`. Other object types (`allowed_tools`, `custom`) pass as they are.
 */
const TOOL_CHOICE_WORDS = new Set(['none', 'auto', 'required', 'any']);

function checkToolChoice(choice: unknown, tools: unknown): void {
  if (typeof choice === 'string') {
    if (!TOOL_CHOICE_WORDS.has(choice))
      throw bad('tool_choice', 'expected "none", "auto", "required" or an object');
    return;
  }
  if (!isObject(choice)) throw bad('tool_choice', 'expected "none", "auto", "required" or an object');
  if (choice.type !== 'function') return;
  const name = isObject(choice.function) ? choice.function.name : undefined;
  if (typeof name !== 'string')
    throw bad('tool_choice', 'expected {"type":"function","function":{"name":...}}');
  const named =
    Array.isArray(tools) &&
    tools.some((t) => isObject(t) && isObject(t.function) && t.function.name === name);
  if (!named) throw bad('tool_choice', `names function "${clip(name, 64)}", which is not in tools`);
}

const isToken = (x: unknown): boolean => typeof x === 'number' && Number.isInteger(x) && x >= 0;
const isTokens = (x: unknown): boolean => Array.isArray(x) && x.length > 0 && x.every(isToken);

/**
 * OpenAI's four input shapes: a string, an array of strings, one array of token ids, an array of token-id
 * arrays; none empty, at most 2048 inputs. A mix of them (or anything else) is not an input.
 */
function isEmbeddingsInput(input: unknown): boolean {
  if (typeof input === 'string') return input !== '';
  if (!Array.isArray(input) || input.length === 0) return false;
  if (isToken(input[0])) return input.every(isToken); // one input, as token ids
  if (input.length > 2048) return false;
  if (typeof input[0] === 'string') return input.every((x) => typeof x === 'string' && x !== '');
  return input.every(isTokens);
}

export function validateEmbeddingsBody(
  raw: unknown,
): Record<string, unknown> & { model: string; input: unknown } {
  if (raw instanceof UnusableBody) throw raw.error;
  if (!isObject(raw)) throw new GatewayError('invalid_request', 'the request body must be a JSON object');
  if (typeof raw.model !== 'string' || raw.model === '') throw bad('model', 'expected a non-empty string');
  if (!isEmbeddingsInput(raw.input)) {
    throw bad(
      'input',
      'expected a non-empty string, or a non-empty array of non-empty strings, of token ids or of token-id arrays (at most 2048 inputs)',
    );
  }
  if (
    raw.encoding_format !== undefined &&
    raw.encoding_format !== null && // the SDKs' "not given", as for every optional field here
    raw.encoding_format !== 'float' &&
    raw.encoding_format !== 'base64'
  ) {
    throw bad('encoding_format', 'expected "float" or "base64"');
  }
  optionalNumber(raw, 'dimensions', 1, 1e6, true);
  optionalType(raw, 'user', 'string');
  return raw as Record<string, unknown> & { model: string; input: unknown };
}

/** Counts `char` in `text` natively, stopping past `limit`. */
function countUpTo(text: string, char: string, limit: number): number {
  let n = 0;
  for (let i = text.indexOf(char); i !== -1 && n <= limit; i = text.indexOf(char, i + 1)) n++;
  return n;
}

/** Rejects JSON nested deeper than `maxDepth` before it is parsed (a cheap scan, strings skipped). */
export function jsonDepthExceeds(text: string, maxDepth: number): boolean {
  // Fewer opening brackets than the bound cannot nest past it: most bodies skip the char-by-char scan.
  if (countUpTo(text, '{', maxDepth) + countUpTo(text, '[', maxDepth) <= maxDepth) return false;
  return nestsDeeperThan(text, maxDepth);
}
