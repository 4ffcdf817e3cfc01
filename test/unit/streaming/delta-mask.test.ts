/**
 * DeltaMask: a secret echoed in a streamed answer is masked wherever the deltas split it, at most its first 3
 * characters reach the client, and text that only looks like a secret's start is relayed whole and in order.
 */
import { describe, expect, it } from 'vitest';
import { secretForms } from '../../../src/observability/scrub.js';
import { DeltaMask, heldForms } from '../../../src/streaming/delta-mask.js';

const KEY = 'sk-proj-Xa9Qw3Er5Ty7Ui';

type Chunk = { choices: { index: number; delta: Record<string, unknown>; finish_reason: string | null }[] };

function chunk(delta: Record<string, unknown>, finish: string | null = null, index = 0): Chunk {
  return { choices: [{ index, delta, finish_reason: finish }] };
}

/** Each chunk through the mask, as the client receives it. */
function relay(mask: DeltaMask, chunks: readonly Chunk[]): Chunk[] {
  return chunks.map((c) => {
    const json = JSON.stringify(c);
    return JSON.parse(mask.frame(json, JSON.parse(json) as Record<string, unknown>, true)) as Chunk;
  });
}

function text(chunks: readonly Chunk[], field = 'content', index = 0): string {
  let out = '';
  for (const c of chunks)
    for (const ch of c.choices)
      if (ch.index === index && typeof ch.delta[field] === 'string') out += ch.delta[field];
  return out;
}

/** `s` cut into pieces of the given sizes, in turn, until it is used up. */
function pieces(s: string, sizes: readonly number[]): string[] {
  const out: string[] = [];
  for (let at = 0, i = 0; at < s.length; i++) {
    const n = sizes[i % sizes.length] as number;
    out.push(s.slice(at, at + n));
    at += n;
  }
  return out;
}

describe('DeltaMask', () => {
  const answer = `Your key is ${KEY} and that is all.`;

  it.each([[[1]], [[2]], [[3, 5]], [[4]], [[7, 1, 2]], [[40]]])(
    'a key echoed a token a delta (pieces of %j) never reaches the client',
    (sizes) => {
      const mask = new DeltaMask(heldForms(secretForms([KEY])));
      const deltas = pieces(answer, sizes).map((p) => chunk({ content: p }));
      const out = relay(mask, [...deltas, chunk({}, 'stop')]);
      const got = text(out);
      expect(got).not.toContain(KEY.slice(3, 7));
      expect(got).toMatch(/^Your key is (s|sk|sk-)?\[REDACTED\] and that is all\.$/);
    },
  );

  it('text that starts like the key but is not is relayed whole, in order', () => {
    const mask = new DeltaMask(heldForms(secretForms([KEY])));
    const plain = 'Keys look like sk-proj-… and sk-proj-Xa9 then more text, sk-pro';
    const out = relay(mask, [
      ...pieces(plain, [3]).map((p) => chunk({ content: p })),
      chunk({ content: '!' }, 'stop'),
    ]);
    expect(text(out)).toBe(`${plain}!`);
  });

  it('an answer that stops inside the key ends in [REDACTED], not the key start', () => {
    const mask = new DeltaMask(heldForms(secretForms([KEY])));
    const out = relay(mask, [
      chunk({ content: 'key: sk-pr' }),
      chunk({ content: 'oj-Xa9' }),
      chunk({}, 'length'),
    ]);
    expect(text(out)).toBe('key: [REDACTED]');
    expect(out[2]?.choices[0]?.finish_reason).toBe('length');
  });

  it('two choices and a tool call each keep their own text', () => {
    const mask = new DeltaMask(heldForms(secretForms([KEY])));
    const a = pieces(`a: ${KEY}`, [5]);
    const b = pieces(`b: ${KEY}!`, [4]);
    const chunks: Chunk[] = [];
    for (let i = 0; i < Math.max(a.length, b.length); i++) {
      if (a[i] !== undefined) chunks.push(chunk({ content: a[i] }, null, 0));
      if (b[i] !== undefined)
        chunks.push(chunk({ tool_calls: [{ index: 0, function: { arguments: b[i] } }] }, null, 1));
    }
    chunks.push(chunk({}, 'stop', 0), chunk({}, 'tool_calls', 1));
    const out = relay(mask, chunks);
    // At most the key's first 3 characters, sent before the 4th showed what they were.
    expect(text(out, 'content', 0)).toBe('a: sk[REDACTED]');
    let args = '';
    for (const c of out)
      for (const ch of c.choices) {
        const calls = ch.delta.tool_calls as { function: { arguments: string } }[] | undefined;
        if (ch.index === 1 && calls) args += calls.map((t) => t.function.arguments).join('');
      }
    expect(args).toBe('b: s[REDACTED]!');
  });

  it('a chunk with no text and nothing held is relayed as the same string', () => {
    const mask = new DeltaMask(heldForms(secretForms([KEY])));
    const json = JSON.stringify(chunk({ role: 'assistant' }));
    expect(mask.frame(json, undefined, false)).toBe(json);
    const plain = JSON.stringify(chunk({ content: 'hello' }));
    expect(mask.frame(plain, undefined, true)).toBe(plain);
  });

  it("text held when the stream ends without a finish goes in a chunk with the last chunk's head", () => {
    const mask = new DeltaMask(heldForms(secretForms([KEY])));
    const head = { id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1700000000, model: 'm' };
    for (const content of ['The key is ', KEY.slice(0, 6)]) {
      const json = JSON.stringify({ ...head, created: head.created - 1, ...chunk({ content }) });
      mask.frame(json, undefined, true);
    }
    const last = JSON.stringify({
      ...head,
      system_fingerprint: 'fp',
      ...chunk({ content: KEY.slice(6, 10) }),
    });
    mask.frame(last, undefined, true);
    expect(JSON.parse(mask.flush()!)).toEqual({
      ...head,
      choices: [{ index: 0, delta: { content: '[REDACTED]' }, finish_reason: null }],
    });
  });
});

describe('DeltaMask against an upstream that steps around the hold', () => {
  const mask = (): DeltaMask => new DeltaMask(heldForms(secretForms([KEY])));

  it.each([7, 12])(
    'the key in content, broken after %i characters by one reasoning delta, then resumed: still masked',
    (n) => {
      const m = mask();
      const out = relay(m, [
        ...pieces(KEY.slice(0, n), [1]).map((p) => chunk({ content: p })),
        chunk({ reasoning_content: '.' }),
        ...pieces(KEY.slice(n), [3]).map((p) => chunk({ content: p })),
        chunk({ content: ' end' }, 'stop'),
      ]);
      const got = text(out);
      // Under 8 characters held go as written when another channel starts (a word like "token"); the rest of
      // the key, when it comes, is still found.
      expect(got).toMatch(/^sk-(proj)?\[REDACTED\](\[REDACTED\])? end$/);
      for (let i = 0; i + 8 <= KEY.length; i++) expect(got).not.toContain(KEY.slice(i, i + 8));
    },
  );

  it('a proxy that puts finish_reason on every chunk: the key one character a chunk is masked', () => {
    const out = relay(mask(), [...pieces(`k=${KEY}.`, [1]).map((p) => chunk({ content: p }, 'stop'))]);
    const got = text(out);
    for (let i = 0; i + 8 <= KEY.length; i++) expect(got).not.toContain(KEY.slice(i, i + 8));
  });

  it('256 channels with text that ends in no key start leave room for the next: the key in it is masked', () => {
    const m = mask();
    // n: 128 with reasoning and content per choice: 256 channels, each of plain text.
    for (let i = 0; i < 128; i++) relay(m, [chunk({ reasoning_content: 'hmm', content: 'ok' }, null, i)]);
    const out = relay(m, [
      ...pieces(KEY, [3]).map((p) => chunk({ tool_calls: [{ index: 0, function: { arguments: p } }] })),
      chunk({}, 'tool_calls'),
    ]);
    type Call = { function: { arguments: string } };
    const args = out
      .map((c) => (c.choices[0]?.delta.tool_calls as Call[] | undefined)?.[0]?.function.arguments ?? '')
      .join('');
    expect(args).not.toContain(KEY.slice(3, 11));
    expect(args).toContain('[REDACTED]');
  });
});

describe('DeltaMask bounds', () => {
  it('follows at most 256 channels: a hostile stream of ever new tool indexes does not grow it past that', () => {
    const mask = new DeltaMask(heldForms(secretForms([KEY])));
    const callsOf = (k: number) => ({ tool_calls: [{ index: k, function: { arguments: 'sk-p' } }] });
    type Call = { index: number; function: { arguments: string } };
    const args = Array.from({ length: 300 }, (_, k) => {
      const calls = relay(mask, [chunk(callsOf(k))])[0]?.choices[0]?.delta.tool_calls as Call[];
      return calls.find((c) => c.index === k);
    });
    // The first 256 hold their possible key start back; the rest are relayed as they came.
    expect(args.filter((a) => a?.function.arguments === '').length).toBe(256);
    expect(args.slice(256).every((a) => a?.function.arguments === 'sk-p')).toBe(true);
  });
});
