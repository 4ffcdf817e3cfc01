import { describe, expect, it } from 'vitest';
import { openaiAdapter } from '../../../src/upstream/adapters/openai.js';
import { saysContextOverflow, statedWindow } from '../../../src/upstream/context-overflow.js';

/** Refusals as each server words a request past the model's context window, and the window each states. */
const REFUSALS: readonly [server: string, message: string, window: number | undefined][] = [
  [
    'OpenAI',
    "This model's maximum context length is 128000 tokens. However, your messages resulted in 130512 tokens. Please reduce the length of the messages.",
    128_000,
  ],
  [
    'vLLM',
    "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the messages, 1000 in the completion).",
    4096,
  ],
  [
    'vLLM, a limit past the window',
    "'max_tokens' or 'max_completion_tokens' is too large: 4000. This model's maximum context length is 4096 tokens and your request has 100 input tokens (4000 > 4096 - 100).",
    4096,
  ],
  [
    'Mistral',
    'Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 maximum context length',
    32_768,
  ],
  ['Anthropic', 'prompt is too long: 208310 tokens > 200000 maximum', 200_000],
  [
    'Gemini',
    'The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).',
    1_048_576,
  ],
  ['TGI', 'Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000', 4096],
  [
    'Anthropic, prompt and max_tokens',
    'input length and `max_tokens` exceed context limit: 190000 + 20000 > 200000, decrease input length or `max_tokens` and try again',
    200_000,
  ],
  [
    'llama.cpp',
    'request (9000 tokens) exceeds the available context size (4096 tokens), try increasing it',
    4096,
  ],
  ['llama.cpp, older', 'the request exceeds the available context size, try increasing it', undefined],
  ['TEI', 'Input validation error: `inputs` must have less than 512 tokens. Given: 600', 512],
];

describe('saysContextOverflow / statedWindow', () => {
  it.each(REFUSALS)('%s: recognised, its window read', (_server, message, window) => {
    expect(saysContextOverflow(message)).toBe(true);
    expect(statedWindow(message)).toBe(window);
  });

  it.each([
    // param-fit's to fit, not a window (the limit is cut to the model's output cap and the request resent).
    'max_tokens is too large: 50000. This model supports at most 16384 completion tokens, whereas you provided 50000.',
    "Invalid value for 'temperature': must be <= 2.",
    'Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested 41000.',
    'context is not a supported parameter',
  ])('not an overflow: %s', (message) => {
    expect(saysContextOverflow(message)).toBe(false);
    expect(statedWindow(message)).toBeUndefined();
  });

  it('a window printed in groups of three is read whole; a decimal or an exponent is no window', () => {
    expect(statedWindow("This model's maximum context length is 8,192 tokens")).toBe(8192);
    expect(statedWindow("This model's maximum context length is 128 000 tokens")).toBe(128_000);
    expect(statedWindow('1,048,576 maximum context length')).toBe(1_048_576);
    expect(statedWindow('tokens > 32,768 maximum')).toBe(32_768);
    expect(statedWindow("This model's maximum context length is 4096, you asked 5000")).toBe(4096);
    expect(statedWindow("This model's maximum context length is 1e308 tokens")).toBeUndefined();
    expect(statedWindow("This model's maximum context length is 8.5 tokens")).toBeUndefined();
    expect(statedWindow('request (9000 tokens) exceeds the available context size (4,096 tokens)')).toBe(
      4096,
    );
  });

  it('a stated window of 0 or past a safe integer is no window', () => {
    expect(statedWindow("This model's maximum context length is 0 tokens")).toBeUndefined();
    expect(statedWindow(`This model's maximum context length is ${'9'.repeat(30)} tokens`)).toBeUndefined();
  });

  it('a long hostile message is read in linear time', () => {
    const message = `${'maximum context '.repeat(20_000)}${'9'.repeat(200_000)} maximum`;
    const t0 = performance.now();
    saysContextOverflow(message);
    statedWindow(message);
    // Not a timing assertion of speed: a backtracking pattern takes minutes here, a linear one milliseconds.
    expect(performance.now() - t0).toBeLessThan(5_000);
  });
});

describe("OpenAI-compatible refusals get OpenAI's context_length_exceeded code", () => {
  const err = (message: string, code: unknown = null) =>
    JSON.stringify({ error: { message, type: 'x', code } });

  it.each(REFUSALS.filter(([server]) => !server.startsWith('Anthropic')))('%s', (_server, message) => {
    expect(openaiAdapter.errorInfo(400, err(message)).code).toBe('context_length_exceeded');
  });

  it('vLLM’s numeric code (the status again) is replaced; a code of the server’s own is kept', () => {
    expect(openaiAdapter.errorInfo(400, err(REFUSALS[1]![1], 400)).code).toBe('context_length_exceeded');
    expect(openaiAdapter.errorInfo(400, err(REFUSALS[1]![1], 'input_too_long')).code).toBe('input_too_long');
    expect(openaiAdapter.errorInfo(400, err('bad temperature', 400)).code).toBe('400');
  });

  it('TGI’s 422 and a 413 too; never a 5xx (a server fault, whatever it says)', () => {
    expect(openaiAdapter.errorInfo(422, err(REFUSALS[6]![1])).code).toBe('context_length_exceeded');
    expect(openaiAdapter.errorInfo(413, err(REFUSALS[0]![1])).code).toBe('context_length_exceeded');
    expect(openaiAdapter.errorInfo(500, err(REFUSALS[0]![1])).code).toBeNull();
  });
});
