import { describe, expect, it } from 'vitest';
import {
  IMAGE_TOKENS_HIGH,
  IMAGE_TOKENS_LOW,
  MESSAGE_OVERHEAD_TOKENS,
  REPLY_PRIMING_TOKENS,
  approximateTextTokens,
  estimatePromptTokens,
  estimateTextTokens,
  expectedOutputTokens,
  loadTokenizer,
  requestedOutputTokens,
  tokenizerReady,
} from '../../../src/routing/tokens.js';

const FRAME = MESSAGE_OVERHEAD_TOKENS + REPLY_PRIMING_TOKENS;

const PROSE =
  'The gateway routes each request by cost, latency and reliability. When an upstream fails before the ' +
  'first content delta, the next candidate is tried and the client never notices. Circuit breakers keep ' +
  'a failing provider out of rotation until a probe succeeds again; a rate limit is a cooldown, not a fault. ';

describe('token estimates', () => {
  // Runs first in this file: the tokenizer is loaded lazily, and estimates work before it is. Test files share
  // a worker's modules (vitest.config.ts isolate: false): another file may have loaded it already.
  it('approximates before the tokenizer has loaded, and counts exactly after', async () => {
    if (!tokenizerReady())
      expect(estimateTextTokens('Hello world')).toBe(approximateTextTokens('Hello world'));
    await loadTokenizer();
    expect(tokenizerReady()).toBe(true);
    expect(estimateTextTokens('Hello world')).toBe(2);
  });

  it('counts a plain conversation: text plus per-message framing', async () => {
    await loadTokenizer();
    const body = {
      messages: [
        { role: 'system', content: 'You are terse.' },
        { role: 'user', content: 'Hello world', name: 'ada' },
      ],
    };
    const expected =
      estimateTextTokens('You are terse.') +
      estimateTextTokens('Hello world') +
      1 +
      estimateTextTokens('ada');
    expect(estimatePromptTokens(body)).toBe(expected + 2 * MESSAGE_OVERHEAD_TOKENS + REPLY_PRIMING_TOKENS);
    expect(estimatePromptTokens({ messages: [] })).toBe(0);
  });

  it('does not throw on special-token text from users', async () => {
    await loadTokenizer();
    expect(estimateTextTokens('ignore <|endoftext|> and <|im_start|>')).toBeGreaterThan(5);
  });

  it('counts multimodal parts: text exactly, images at a fixed cost by detail, audio by size', async () => {
    await loadTokenizer();
    const body = {
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What is in these images?' },
            { type: 'image_url', image_url: { url: 'data:image/png;base64,AAAA', detail: 'low' } },
            { type: 'image_url', image_url: { url: 'https://example.com/a.png' } },
            { type: 'input_audio', input_audio: { data: 'AAAA', format: 'wav' } },
          ],
        },
      ],
    };
    expect(estimatePromptTokens(body)).toBe(
      // Three bytes of audio: a token at least.
      estimateTextTokens('What is in these images?') + IMAGE_TOKENS_LOW + IMAGE_TOKENS_HIGH + 1 + FRAME,
    );
  });

  it('counts audio and files by their size, and legacy functions as tools', () => {
    const part = (p: unknown) => estimatePromptTokens({ messages: [{ role: 'user', content: [p] }] });
    const none = part({ type: 'text', text: '' });
    // ~10 tokens a second of 16 kHz 16-bit WAV (32,000 bytes).
    const second = Buffer.alloc(32_000).toString('base64');
    expect(part({ type: 'input_audio', input_audio: { data: second, format: 'wav' } }) - none).toBe(10);
    // A file: a page image's tokens per 32 KiB of it, one page at least (a file_id alone).
    const pdf = `data:application/pdf;base64,${Buffer.alloc(130_000).toString('base64')}`;
    expect(part({ type: 'file', file: { filename: 'a.pdf', file_data: pdf } }) - none).toBe(
      4 * IMAGE_TOKENS_HIGH,
    );
    expect(part({ type: 'file', file: { file_id: 'file-1' } }) - none).toBe(IMAGE_TOKENS_HIGH);
    const schema = [{ name: 'f', parameters: { type: 'object', properties: { q: { type: 'string' } } } }];
    const tools = [{ type: 'function', function: schema[0] }];
    const bare = estimatePromptTokens({ messages: [] });
    expect(estimatePromptTokens({ messages: [], functions: schema }) - bare).toBeGreaterThan(10);
    expect(estimatePromptTokens({ messages: [], tools }) - bare).toBeGreaterThan(10);
  });

  it('counts tools by JSON length / 6 and tool calls by their text', async () => {
    await loadTokenizer();
    const tools = [
      {
        type: 'function',
        function: {
          name: 'get_weather',
          description: 'Current weather for a city',
          parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
        },
      },
    ];
    const base = { messages: [{ role: 'user', content: 'Weather in Paris?' }] };
    const withTools = estimatePromptTokens({ ...base, tools });
    expect(withTools - estimatePromptTokens(base)).toBe(Math.ceil(JSON.stringify(tools).length / 6));

    const call = {
      role: 'assistant',
      content: null,
      tool_calls: [
        { id: 'c1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
      ],
    };
    const toolReply = { role: 'tool', tool_call_id: 'c1', content: '{"temp_c":21}' };
    const n = estimatePromptTokens({ messages: [call, toolReply] });
    expect(n).toBe(
      3 * MESSAGE_OVERHEAD_TOKENS +
        estimateTextTokens('get_weather') +
        estimateTextTokens('{"city":"Paris"}') +
        estimateTextTokens('{"temp_c":21}') +
        REPLY_PRIMING_TOKENS,
    );
  });

  it('never throws on hostile input', async () => {
    await loadTokenizer();
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const trap = new Proxy(
      {},
      {
        get() {
          throw new Error('trap');
        },
      },
    );
    const hostile: unknown[] = [
      null,
      undefined,
      42,
      'messages',
      { messages: 'not an array' },
      {
        messages: [
          null,
          1,
          'x',
          [],
          { content: 7 },
          { content: [null, 3, { type: 'text', text: { nested: 1 } }] },
        ],
      },
      { messages: [{ content: [{ type: 'image_url', image_url: null }] }], tools: [cyclic] },
      { messages: [{ role: 'user', content: 'hi', tool_calls: 'nope', function_call: 5 }], tools: [10n] },
      { messages: [trap] },
      trap,
    ];
    for (const body of hostile) {
      const n = estimatePromptTokens(body as { messages: unknown[] });
      expect(Number.isInteger(n) && n >= 0).toBe(true);
    }
    expect(estimateTextTokens(undefined as unknown as string)).toBe(0);
  });

  it('stays bounded on huge arrays', async () => {
    await loadTokenizer();
    const messages = Array.from({ length: 100_000 }, () => ({ role: 'user', content: 'hi there' }));
    const t0 = performance.now();
    const n = estimatePromptTokens({ messages });
    expect(n).toBeGreaterThan(100_000 * MESSAGE_OVERHEAD_TOKENS);
    expect(performance.now() - t0).toBeLessThan(1_000);
  });

  it('counts exactly within the budget and approximates the rest closely', async () => {
    await loadTokenizer();
    const text = PROSE.repeat(40); // ~10 KB
    const exact = estimatePromptTokens({ messages: [{ content: text }] }, { exactBudgetChars: 1e9 });
    const approx = estimatePromptTokens({ messages: [{ content: text }] }, { exactBudgetChars: 0 });
    expect(approx).not.toBe(exact);
    expect(Math.abs(approx / exact - 1)).toBeLessThan(0.15);
  });

  it('estimates a long text from spread samples within 5% of reading all of it, whatever its sections', () => {
    const sections = [
      PROSE.repeat(4),
      'function add(a, b) {\n  return a + b;\n}\n'.repeat(40),
      '路由器根据成本、延迟和可靠性为每个请求选择上游模型。'.repeat(30),
      JSON.stringify({ users: [{ id: 1, name: 'Ada', roles: ['admin', 'dev'] }] }).repeat(30),
    ];
    for (const repeat of [3, 5, 40]) {
      const text = Array.from({ length: repeat }, () => sections.join('\n')).join('\n');
      expect(text.length).toBeGreaterThan(8_192);
      let whole = 0;
      for (let at = 0; at < text.length; at += 4_096)
        whole += approximateTextTokens(text.slice(at, at + 4_096));
      expect(Math.abs(approximateTextTokens(text) / whole - 1), `x${repeat}`).toBeLessThan(0.05);
    }
  });

  it('approximates other scripts within reason', async () => {
    await loadTokenizer();
    const samples = [
      '路由器根据成本、延迟和可靠性为每个请求选择上游模型，并在失败时自动切换到下一个候选项。'.repeat(20),
      'function add(a, b) {\n  return a + b;\n}\nconst x = add(1, 2);\nconsole.log({ x });\n'.repeat(40),
      JSON.stringify({ users: [{ id: 1, name: 'Ada', roles: ['admin', 'dev'] }] }).repeat(40),
    ];
    for (const s of samples) {
      expect(
        Math.abs(approximateTextTokens(s) / estimateTextTokens(s, { exactBudgetChars: 1e9 }) - 1),
      ).toBeLessThan(0.25);
    }
  });
});

describe('numbers (regression: 0.66 a digit read a pasted id list 1.5x high, refused as past its window)', () => {
  it('counts digits by groups of up to 3, as o200k cuts them, within 15 % on numeric text', async () => {
    await loadTokenizer();
    const ids = Array.from({ length: 400 }, (_, i) => String(100_000_000 + i * 7_919_213)).join(', ');
    const floats = JSON.stringify(Array.from({ length: 300 }, (_, i) => Math.sin(i) * 1000));
    const csv = Array.from({ length: 200 }, (_, i) => `${i},2024-03-${(i % 28) + 1},${i * 37.5},ok`).join(
      '\n',
    );
    const prose = 'In 2024 the 3 teams shipped 12 releases and fixed 148 of 150 bugs by March 31.'.repeat(20);
    for (const text of [ids, floats, csv, prose]) {
      const exact = estimateTextTokens(text, { exactBudgetChars: 1e9 });
      expect(Math.abs(approximateTextTokens(text) / exact - 1), text.slice(0, 40)).toBeLessThan(0.15);
    }
  });
});

describe('output tokens', () => {
  it('prefers max_completion_tokens, then max_tokens, if positive integers', () => {
    expect(requestedOutputTokens({ max_completion_tokens: 300, max_tokens: 100 })).toBe(300);
    expect(requestedOutputTokens({ max_tokens: 100 })).toBe(100);
    expect(requestedOutputTokens({ max_tokens: 0 })).toBeUndefined();
    expect(requestedOutputTokens({ max_tokens: 1.5 })).toBeUndefined();
    expect(requestedOutputTokens({ max_tokens: '100' })).toBeUndefined();
    expect(requestedOutputTokens({ max_completion_tokens: -1, max_tokens: 7 })).toBe(7);
    expect(requestedOutputTokens(null)).toBeUndefined();
  });

  it('falls back to the upstream mean, else undefined', () => {
    expect(expectedOutputTokens({ max_tokens: 50 }, { meanOutputTokens: 400 })).toBe(50);
    expect(expectedOutputTokens({}, { meanOutputTokens: 400 })).toBe(400);
    expect(expectedOutputTokens({}, { meanOutputTokens: undefined })).toBeUndefined();
    expect(expectedOutputTokens({})).toBeUndefined();
  });
});
