import { describe, expect, it } from 'vitest';
import { Scrubber, StreamMask, secretForms, stringEndsMasker } from '../../../src/observability/scrub.js';
import { heldForms } from '../../../src/streaming/delta-mask.js';
import { truncateMessage } from '../../../src/upstream/adapters/common.js';

const KEY = 'sk-live-7f3a9c1e5b2d4f6a8c0e';

describe('Scrubber', () => {
  it('removes every configured secret, longest first', () => {
    const s = new Scrubber([KEY, 'sk-live', 'abc']);
    expect(s.scrub(`bad key ${KEY} and ${KEY}`)).toBe('bad key [REDACTED] and [REDACTED]');
    expect(s.scrub('abc')).toBe('abc'); // under 4 characters: not a secret worth matching
  });

  it('a secret cut where an upstream message was truncated leaves none of its characters from 8 on', () => {
    const s = new Scrubber([KEY]);
    for (const at of [975, 990, 992]) {
      const message = truncateMessage(`${'x'.repeat(at)}${KEY} rest`);
      const out = s.scrub(message);
      expect(out.endsWith('[REDACTED]…')).toBe(true);
      expect(out).not.toContain(KEY.slice(0, 4));
    }
    // Fewer than 8 are a word like "sk-live" as much as a key's start: as written, as at a stream's end.
    expect(s.scrub(truncateMessage(`${'x'.repeat(993)}${KEY} rest`))).toBe(
      `${'x'.repeat(993)}${KEY.slice(0, 7)}…`,
    );
    // A message that was not cut, or is cut elsewhere, keeps its text.
    expect(s.scrub('ends with sk-l')).toBe('ends with sk-l');
    expect(s.scrub(truncateMessage('y'.repeat(1200)))).toBe(`${'y'.repeat(1000)}…`);
  });
});

describe('secret forms (regression: only the literal spelling was matched)', () => {
  const PW = 'p@ss/w"rd-42';

  it('Scrubber removes a secret JSON-escaped (with or without \\/) and URL-encoded too', () => {
    const s = new Scrubber([PW]);
    for (const echo of [
      PW,
      JSON.stringify(PW).slice(1, -1),
      JSON.stringify(PW).slice(1, -1).replaceAll('/', '\\/'),
      encodeURIComponent(PW),
    ])
      expect(s.scrub(`{"echo":"${echo}"}`), echo).toBe('{"echo":"[REDACTED]"}');
  });

  it('Scrubber removes a secret as JSON encoders write it with \\u escapes (.NET, Go, Python)', () => {
    const secret = 'sk+<a&b>\'c`"\\é-9';
    const s = new Scrubber([secret]);
    const dotnet = 'sk\\u002B\\u003Ca\\u0026b\\u003E\\u0027c\\u0060\\u0022\\\\\\u00E9-9';
    const go = 'sk+\\u003ca\\u0026b\\u003e\'c`\\"\\\\é-9';
    const python = 'sk+<a&b>\'c`\\"\\\\\\u00e9-9';
    for (const echo of [dotnet, go, python]) {
      // Each is the secret, as a JSON parser reads it back.
      expect(JSON.parse(`"${echo}"`)).toBe(secret);
      expect(s.scrub(`{"echo":"${echo}"}`), echo).toBe('{"echo":"[REDACTED]"}');
    }
  });
  it('Scrubber removes a secret as an HTML error page quotes it (Go templates, Python, PHP, OWASP)', () => {
    const secret = 'sk+up/SECRET"x\'y&<z>';
    const s = new Scrubber([secret]);
    for (const echo of [
      'sk&#43;up/SECRET&#34;x&#39;y&amp;&lt;z&gt;',
      'sk+up/SECRET&quot;x&#x27;y&amp;&lt;z&gt;',
      'sk+up/SECRET&quot;x&#039;y&amp;&lt;z&gt;',
      'sk+up&#x2F;SECRET&quot;x&#x27;y&amp;&lt;z&gt;',
    ])
      expect(s.scrub(`<p>key ${echo} refused</p>`), echo).toBe('<p>key [REDACTED] refused</p>');
  });

  it("Scrubber removes a secret percent-encoded as Python's quote writes it (`/` kept), or in lower-case hex", () => {
    const s = new Scrubber(['sk-proj-Ab3+Cd5/Ef7=Gh9']);
    for (const echo of [
      'sk-proj-Ab3%2BCd5/Ef7%3DGh9',
      'sk-proj-Ab3%2bCd5%2fEf7%3dGh9',
      'sk-proj-Ab3%2bCd5/Ef7%3dGh9',
    ])
      expect(s.scrub(`url /x/${echo}/info`), echo).toBe('url /x/[REDACTED]/info');
  });

  it("Scrubber removes a secret spelt with HTML5's named references (PHP's htmlentities, ENT_HTML5)", () => {
    const s = new Scrubber(['sk-live_Ab12+Cd/Ef=gh.Z9']);
    const echo = 'sk-live&lowbar;Ab12&plus;Cd&sol;Ef&equals;gh&period;Z9';
    expect(s.scrub(`<title>Access denied for key ${echo}</title>`)).toBe(
      '<title>Access denied for key [REDACTED]</title>',
    );
  });

  it('Scrubber checks the tail of a text cut by a bounded read, said by `cut`', () => {
    const s = new Scrubber([KEY]);
    expect(s.scrub(`body ${KEY.slice(0, 10)}`, true)).toBe('body [REDACTED]');
    expect(s.scrub(`body ${KEY.slice(0, 10)}`)).toBe(`body ${KEY.slice(0, 10)}`);
  });

  it('StreamMask masks the longer of two secrets whole when one starts the other', async () => {
    const t = new StreamMask([KEY, `${KEY}-TAIL-5678`]).transform();
    t.end(Buffer.from(`x ${KEY}-TAIL-5678 y`));
    const out = ((await t.toArray()) as Buffer[]).map((b) => b.toString()).join('');
    expect(out).toBe(`x ${'*'.repeat(KEY.length + 10)} y`);
  });
});

describe('StreamMask', () => {
  /** What the mask passes on as each of `chunks` goes in (then at the end), and the whole output. */
  async function through(mask: StreamMask, chunks: string[]): Promise<{ parts: string[]; all: string }> {
    const t = mask.transform();
    const parts: string[] = [];
    const take = (): void => {
      const out = t.read() as Buffer | null;
      if (out !== null) parts.push(out.toString());
    };
    for (const c of chunks) {
      t.write(Buffer.from(c));
      take();
    }
    t.end();
    await new Promise((resolve) => setImmediate(resolve));
    take();
    return { parts, all: parts.join('') };
  }

  it("a body that ends in 8 or more of a secret's first bytes has them masked; fewer go as written", async () => {
    const mask = new StreamMask([KEY]);
    expect((await through(mask, ['echo: ', KEY.slice(0, 12)])).all).toBe(`echo: ${'*'.repeat(12)}`);
    expect((await through(mask, ['echo: ', KEY.slice(0, 5)])).all).toBe(`echo: ${KEY.slice(0, 5)}`);
  });

  it('masks a secret byte for byte, so the length (and a Content-Length) stays true', async () => {
    const { all } = await through(new StreamMask([KEY]), [`{"auth":"Bearer ${KEY}"}`]);
    expect(all).toBe(`{"auth":"Bearer ${'*'.repeat(KEY.length)}"}`);
  });

  it('masks a secret split across chunks at every cut, and holds back only the start of one', async () => {
    const body = `data: {"echo":"${KEY}"}\n\n`;
    for (let cut = 1; cut < body.length; cut++) {
      const { all } = await through(new StreamMask([KEY]), [body.slice(0, cut), body.slice(cut)]);
      expect(all, `cut at ${cut}`).toBe(body.replace(KEY, '*'.repeat(KEY.length)));
    }
    // A chunk that ends in an event's blank line is passed on whole at once: nothing held for the next.
    const { parts } = await through(new StreamMask([KEY]), ['data: {"a":1}\n\n', 'data: {"b":2}\n\n']);
    expect(parts).toEqual(['data: {"a":1}\n\n', 'data: {"b":2}\n\n']);
  });

  it('gives back a held start of a secret that turns out not to be one at the next chunk; at the end, masks it', async () => {
    const start = KEY.slice(0, 10);
    expect((await through(new StreamMask([KEY]), [`x ${start}`, 'y'])).all).toBe(`x ${start}y`);
    // A body that ends there stopped inside the key (8 characters or more of it: see the test above).
    expect((await through(new StreamMask([KEY]), [`x ${start}`])).all).toBe(`x ${'*'.repeat(10)}`);
  });
});

describe('stringEndsMasker (a JSON answer stopped inside the key at its max_tokens)', () => {
  const stringEndsMasked = stringEndsMasker(heldForms(secretForms([KEY])));
  const answer = (content: string) => JSON.stringify({ choices: [{ message: { content } }], x: 'sk-l' });

  it('a string ending in 8 or more of the key’s first characters has them masked; fewer, or more text after, kept', () => {
    expect(stringEndsMasked(answer(`the key is ${KEY.slice(0, 12)}`))).toBe(answer('the key is [REDACTED]'));
    for (const honest of [
      `ends in ${KEY.slice(0, 7)}`,
      `${KEY.slice(0, 12)} and more`,
      'sk-live is a prefix',
    ])
      expect(stringEndsMasked(answer(honest))).toBe(answer(honest));
  });

  it('escaped quotes inside the string, and many starts of the key in one string, read right', () => {
    const tricky = `say \\"hi\\" ${KEY.slice(0, 3)}${KEY.slice(0, 3)} ${KEY.slice(0, 10)}`;
    expect(stringEndsMasked(answer(tricky))).toBe(answer(tricky.replace(KEY.slice(0, 10), '[REDACTED]')));
    const many = `${KEY.slice(0, 5)} `.repeat(20_000);
    expect(stringEndsMasked(answer(many))).toBe(answer(many));
  });
});
