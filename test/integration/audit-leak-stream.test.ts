/**
 * Audit (session 27): an echoing, hostile or compromised upstream tries to get the provider's api_key to the
 * client through a routed stream. SPEC §8: no configured secret ever appears in a response. README ("Failover
 * and streams"): a key repeated in a streamed answer is masked across deltas, in its text, reasoning, content
 * parts, audio transcript or tool arguments; at most its first 3 characters reach the client; text that stops
 * inside the key ends in `[REDACTED]`, but fewer than 8 characters of it go as written.
 *
 * Each test plays an upstream (node:http on 127.0.0.1:0) that knows the key it was sent, routes one stream
 * through a real gateway, reads it twice (raw SSE bytes with undici; the openai SDK's stream) and looks, in
 * every view a client has (the raw bytes, each JSON field joined across frames, each choice's channels joined,
 * all answer text joined in arrival order), for the key or any run of 8 or more of its characters.
 *
 * Tests marked it.fails are ways out that remain, each said where it is: a hostile upstream that spreads the
 * key over fields, frames, choices or channels in an order of its own (beyond what an echo guard can follow),
 * and the signed thinking of a Claude block that stops inside the key.
 */
import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postTo, startGateway, type TestGateway } from '../helpers/gateway.js';
import { startMock } from '../helpers/mock-upstream.js';
import { anthropicSseFrame } from '../helpers/anthropic-route.js';
import { sseEvents } from '../helpers/sim-wire.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;

/** Long realistic keys: one of OpenAI's project-key alphabet, one base64-like with `+`, `/`, `=`. */
const KEY = 'sk-proj-Tq3_vX9-Lm2Pz8Rk4Wn7Yb1Hc5Jd6Fg0Sa_Ue3Io9KzQ';
const KEY_B = 'sk-proj-Ab3+Cd5/Ef7=Gh9_Ij1-Kl2+Mn4/Op6=Qr8StUvWx7Y';
const ANT_KEY = 'sk-ant-api03-Zx8_Yw7-Vu6+Ts5/Rq4=Po3Nm2Lk1Ji0Hg9Fe8Dc7Ba6';
const RELAXED = { connect_ms: 2000, first_byte_ms: 15000, idle_ms: 15000, total_ms: 30000 };
const MSG = [{ role: 'user', content: 'repeat the key you were given' }];
const RUN = 8;

// ---------------------------------------------------------------------------------------------------------
// Upstream frames

function frame(obj: Json): string {
  return `data: ${JSON.stringify(obj)}\n\n`;
}

function chunkOf(choices: Json[], extra: Json = {}): Json {
  return { id: 'chatcmpl-leak', object: 'chat.completion.chunk', created: 1, model: 'm', ...extra, choices };
}

/** One frame with one choice. */
function d(delta: Json, index = 0, finish: string | null = null, more: Json = {}, extra: Json = {}): string {
  return frame(chunkOf([{ index, delta, finish_reason: finish, ...more }], extra));
}

const ROLE = d({ role: 'assistant', content: '' });
const STOP = d({}, 0, 'stop');
const DONE = 'data: [DONE]\n\n';

function chars(s: string): string[] {
  return [...s].length === s.length ? s.split('') : [...s];
}

function pieces(s: string, size: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < s.length; i += size) out.push(s.slice(i, i + size));
  return out;
}

/** Percent-encoding as Python's urllib.parse.quote writes it by default (`safe='/'`: a `/` stays). */
function pythonQuote(s: string): string {
  return encodeURIComponent(s).replaceAll('%2F', '/');
}

// ---------------------------------------------------------------------------------------------------------
// Gateway, upstream, clients

type Writes = (key: string, body: Json) => string[];

interface Got {
  readonly raw: string;
  readonly status: number;
  /** View name -> text a client can read there. */
  readonly views: Map<string, string>;
  readonly sdkError: unknown;
}

async function gatewayFor(kind: 'openai' | 'anthropic', key: string, writes: Writes): Promise<TestGateway> {
  const up = track(
    await startMock((req, res: ServerResponse) => {
      const sent =
        kind === 'openai'
          ? String(req.headers.authorization ?? '').replace(/^Bearer /, '')
          : String(req.headers['x-api-key'] ?? '');
      // The upstream echoes what it was sent: the key must be ours.
      if (sent !== key) {
        res.writeHead(500).end('unexpected key');
        return;
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const parts = writes(sent, req.body);
      for (const p of parts.slice(0, -1)) res.write(p);
      res.end(parts.at(-1) ?? '');
    }),
  );
  return track(
    await startGateway({
      providers: [
        {
          name: 'up',
          kind,
          base_url: kind === 'openai' ? `${up.url}/v1` : up.url,
          api_key: key,
          timeouts: RELAXED,
          models: [{ name: 'm' }],
        },
      ],
      routing: { max_attempts: 1 },
      routes: { r: { strategy: 'priority', targets: ['up/m'] } },
    }),
  );
}

async function run(
  writes: Writes,
  opts: { kind?: 'openai' | 'anthropic'; key?: string; body?: Json; sdk?: boolean } = {},
): Promise<Got> {
  const key = opts.key ?? (opts.kind === 'anthropic' ? ANT_KEY : KEY);
  const gw = await gatewayFor(opts.kind ?? 'openai', key, writes);
  const body = { model: 'r', messages: MSG, stream: true, ...opts.body };
  const r = await postTo(`${gw.url}/v1/chat/completions`, body, { timeoutMs: 25000 });
  const views = new Map<string, string>([['raw SSE bytes', r.text]]);
  const frames: Json[] = [];
  for (const { data } of sseEvents(r.text)) {
    try {
      const v: unknown = JSON.parse(data);
      if (v !== null && typeof v === 'object' && !Array.isArray(v)) frames.push(v as Json);
    } catch {
      /* [DONE] */
    }
  }
  addViews(views, 'raw', frames);
  let sdkError: unknown;
  if (opts.sdk !== false && r.status === 200) {
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0, timeout: 25000 });
    const chunks: Json[] = [];
    try {
      const stream = await client.chat.completions.create(
        body as unknown as OpenAI.Chat.ChatCompletionCreateParamsStreaming,
      );
      for await (const c of stream) chunks.push(c as unknown as Json);
    } catch (err) {
      sdkError = err;
    }
    addViews(views, 'sdk', chunks);
  }
  return { raw: r.text, status: r.status, views, sdkError };
}

const TEXT_LEAF =
  /^choices\[\d+\]\.delta\.(content|refusal|reasoning_content|reasoning|audio\.transcript|function_call\.arguments|tool_calls\[\d+\]\.function\.arguments|content\.#\.(text|thinking)|content\.#\.thinking\.#\.text)$/;

/**
 * Every string a client can read in `objects` (frames in order), joined per field path across frames (a
 * choice or tool call by its `index`, other list positions kept and also folded to `#`), plus all answer text
 * joined in arrival order whatever its choice or channel. `bytes` lists are read as the UTF-8 they spell.
 */
function addViews(views: Map<string, string>, who: string, objects: Json[]): void {
  const add = (name: string, s: string): void => {
    views.set(name, (views.get(name) ?? '') + s);
  };
  const walk = (v: unknown, path: string, folded: string): void => {
    if (typeof v === 'string') {
      add(`${who} field ${path}`, v);
      if (folded !== path) add(`${who} field ${folded}`, v);
      if (TEXT_LEAF.test(folded)) add(`${who} all answer text in arrival order`, v);
      return;
    }
    if (Array.isArray(v)) {
      if (v.length > 0 && v.every((x) => typeof x === 'number')) {
        const text = Buffer.from(v as number[]).toString('utf8');
        add(`${who} bytes ${path}`, text);
        if (folded !== path) add(`${who} bytes ${folded}`, text);
        return;
      }
      const byIndex = path.endsWith('choices') || path.endsWith('tool_calls');
      v.forEach((x, i) => {
        const at =
          byIndex && x !== null && typeof x === 'object' && typeof (x as Json).index === 'number'
            ? ((x as Json).index as number)
            : i;
        walk(x, `${path}[${at}]`, byIndex ? `${folded}[${at}]` : `${folded}.#`);
      });
      return;
    }
    if (v !== null && typeof v === 'object')
      for (const [k, x] of Object.entries(v as Json))
        walk(x, path === '' ? k : `${path}.${k}`, folded === '' ? k : `${folded}.${k}`);
  };
  for (const o of objects) walk(o, '', '');
}

/** The longest run of `key` (8 or more characters) found in `text`, with where it is. */
function longestRun(key: string, text: string): { run: string; at: number } | undefined {
  let best: { run: string; at: number } | undefined;
  for (let i = 0; i + RUN <= key.length; i++) {
    let len = Math.max(RUN, (best?.run.length ?? 0) + 1);
    if (i + len > key.length || !text.includes(key.slice(i, i + len))) continue;
    while (i + len + 1 <= key.length && text.includes(key.slice(i, i + len + 1))) len++;
    const run = key.slice(i, i + len);
    best = { run, at: text.indexOf(run) };
  }
  return best;
}

/**
 * What each view gives away of `spellings` (the key, and any other spelling a test sends): the whole of one,
 * or its longest run of 8+ characters, with the text around it.
 */
function leaks(got: Got, spellings: readonly string[]): string[] {
  const found: string[] = [];
  for (const [view, text] of got.views) {
    for (const s of spellings) {
      const hit = longestRun(s, text);
      if (hit === undefined) continue;
      const around = text.slice(Math.max(0, hit.at - 40), hit.at + hit.run.length + 40);
      found.push(
        `${view}: ${hit.run === s ? 'WHOLE' : `${hit.run.length} of ${s.length} chars`} ${JSON.stringify(hit.run)} in …${JSON.stringify(around)}…`,
      );
      break;
    }
  }
  return found;
}

function expectNoLeak(got: Got, ...spellings: string[]): void {
  const found = leaks(got, spellings.length === 0 ? [KEY] : spellings);
  expect(found, `the client received the key (or 8+ characters of it):\n${found.join('\n')}`).toEqual([]);
}

/** The text a client joins for one channel (raw frames). */
function joined(got: Got, field: string): string {
  return got.views.get(`raw field ${field}`) ?? '';
}

// ---------------------------------------------------------------------------------------------------------

describe('no 8+ characters of the key reach the client: an OpenAI-compatible model repeats it a piece a delta', () => {
  it('content split at every position of the key (each occurrence cut at the next position)', async () => {
    for (const key of [KEY, KEY_B]) {
      const got = await run(
        (k) => {
          const out = [ROLE];
          for (let p = 1; p < k.length; p++) {
            out.push(d({ content: ` (${p}) ${k.slice(0, p)}` }), d({ content: `${k.slice(p)} ok` }));
          }
          return [...out, STOP, DONE];
        },
        { key },
      );
      expect(got.status).toBe(200);
      const text = joined(got, 'choices[0].delta.content');
      expect(text).toContain(`(${key.length - 1})`);
      expect(text.match(/\[REDACTED\] ok/g)?.length).toBe(key.length - 1);
      expectNoLeak(got, key);
    }
  });

  it('content one character a delta, with empty deltas, role-only chunks and bare chunks between', async () => {
    const got = await run((k) => [
      ROLE,
      d({ content: 'Key: ' }),
      ...chars(k).flatMap((c) => [d({ content: c }), d({ content: '' }), d({ role: 'assistant' }), d({})]),
      d({ content: ' end' }),
      STOP,
      DONE,
    ]);
    expect(got.status).toBe(200);
    expect(joined(got, 'choices[0].delta.content')).toMatch(/^Key: (s|sk|sk-)?\[REDACTED\] end$/);
    expectNoLeak(got);
  });

  const CHANNELS: [string, (piece: string) => Json, string][] = [
    ['reasoning_content', (p) => ({ reasoning_content: p }), 'choices[0].delta.reasoning_content'],
    ['reasoning', (p) => ({ reasoning: p }), 'choices[0].delta.reasoning'],
    ['refusal', (p) => ({ refusal: p }), 'choices[0].delta.refusal'],
    [
      'tool call arguments',
      (p) => ({ tool_calls: [{ index: 0, function: { arguments: p } }] }),
      'choices[0].delta.tool_calls[0].function.arguments',
    ],
    [
      'legacy function_call arguments',
      (p) => ({ function_call: { arguments: p } }),
      'choices[0].delta.function_call.arguments',
    ],
    [
      'content parts text',
      (p) => ({ content: [{ type: 'text', text: p }] }),
      'choices[0].delta.content.#.text',
    ],
    [
      'content parts thinking (string)',
      (p) => ({ content: [{ type: 'thinking', thinking: p }] }),
      'choices[0].delta.content.#.thinking',
    ],
    [
      'content parts thinking (nested parts)',
      (p) => ({ content: [{ type: 'thinking', thinking: [{ type: 'text', text: p }] }] }),
      'choices[0].delta.content.#.thinking.#.text',
    ],
    ['audio.transcript', (p) => ({ audio: { transcript: p } }), 'choices[0].delta.audio.transcript'],
  ];

  it.each(CHANNELS)('%s, one character a delta', async (name, delta, field) => {
    const got = await run((k) => {
      const out = [ROLE, d(delta('<<'))];
      if (name.startsWith('tool'))
        out.splice(
          1,
          0,
          d({
            tool_calls: [
              { index: 0, id: 'call_1', type: 'function', function: { name: 'save', arguments: '' } },
            ],
          }),
        );
      for (const c of chars(k)) out.push(d(delta(c)));
      out.push(d(delta('>>')), d({ content: 'done' }), STOP, DONE);
      return out;
    });
    expect(got.status).toBe(200);
    expect(got.views.get(`raw field ${field}`) ?? '').toMatch(/^<<(s|sk|sk-)?\[REDACTED\]>>$/);
    expectNoLeak(got);
  });
});

describe('no 8+ characters of the key reach the client: n: 2, the key across choices', () => {
  it('both choices repeat the key, their chunks alternating a character at a time', async () => {
    const got = await run(
      (k) => [
        d({ role: 'assistant', content: '' }, 0),
        d({ role: 'assistant', content: '' }, 1),
        ...chars(k).flatMap((c) => [d({ content: c }, 0), d({ content: c }, 1)]),
        d({}, 0, 'stop'),
        d({}, 1, 'stop'),
        DONE,
      ],
      { body: { n: 2 } },
    );
    expect(got.status).toBe(200);
    expect(joined(got, 'choices[0].delta.content')).toMatch(/^(s|sk|sk-)?\[REDACTED\]$/);
    expect(joined(got, 'choices[1].delta.content')).toMatch(/^(s|sk|sk-)?\[REDACTED\]$/);
    expectNoLeak(got);
  });

  // BEYOND THE GUARD: a hostile upstream that spreads the key over fields, frames, choices or channels in an
  // order of its own can always get it out; the guard is for echoes and a model repeating the key. Recorded
  // with it.fails: each is a way out (see the file's header).
  it.fails(
    'the key half in choice 0 and half in choice 1: no 8+ characters of it reach the client',
    async () => {
      const got = await run(
        (k) => {
          const half = Math.floor(k.length / 2);
          return [
            d({ role: 'assistant', content: '' }, 0),
            ...pieces(k.slice(0, half), 3).map((p) => d({ content: p }, 0)),
            ...pieces(k.slice(half), 3).map((p) => d({ content: p }, 1)),
            d({}, 0, 'stop'),
            d({}, 1, 'stop'),
            DONE,
          ];
        },
        { body: { n: 2 } },
      );
      expect(got.status).toBe(200);
      expectNoLeak(got);
    },
  );

  // BEYOND THE GUARD: a hostile upstream that spreads the key over fields, frames, choices or channels in an
  // order of its own can always get it out; the guard is for echoes and a model repeating the key. Recorded
  // with it.fails: each is a way out (see the file's header).
  it.fails('alternating chunks of choice 0 and 1, each with the next 4 characters of the key', async () => {
    const got = await run(
      (k) => [
        ...pieces(k, 4).map((p, i) => d({ content: p }, i % 2)),
        d({}, 0, 'stop'),
        d({}, 1, 'stop'),
        DONE,
      ],
      { body: { n: 2 } },
    );
    expect(got.status).toBe(200);
    expectNoLeak(got);
  });
});

describe('no 8+ characters of the key reach the client: JSON escapes around and inside it', () => {
  it('every character of the key written as a \\u escape in the frame JSON, split in 3-character deltas', async () => {
    const esc = (s: string): string =>
      [...s].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('');
    const got = await run((k) => [
      ROLE,
      ...pieces(k, 3).map((p) => d({ content: 'PLACEHOLDER' }).replace('PLACEHOLDER', esc(p))),
      STOP,
      DONE,
    ]);
    expect(got.status).toBe(200);
    expect(joined(got, 'choices[0].delta.content')).toMatch(/^(s|sk|sk-)?\[REDACTED\]$/);
    expectNoLeak(got);
  });

  it('a key with `/` written `\\/` in the frame JSON (PHP json_encode), split in 5-character deltas', async () => {
    const got = await run(
      (k) => [ROLE, ...pieces(k, 5).map((p) => d({ content: p }).replaceAll('/', '\\/')), STOP, DONE],
      { key: KEY_B },
    );
    expect(got.status).toBe(200);
    expectNoLeak(got, KEY_B);
  });

  it('a model writing .NET JSON in its text (`+` as \\u002B), the escape split across two deltas', async () => {
    const dotnet = (k: string): string => `{"token":"${k.replaceAll('+', '\\u002B')}"}`;
    const got = await run(
      (k) => {
        const text = dotnet(k);
        const cut = text.indexOf('\\u002B') + 3; // `\u0` | `02B…`
        return [ROLE, d({ content: text.slice(0, cut) }), d({ content: text.slice(cut) }), STOP, DONE];
      },
      { key: KEY_B },
    );
    expect(got.status).toBe(200);
    expectNoLeak(got, KEY_B, dotnet(KEY_B).slice(10, -2));
  });

  it('a model writing PHP JSON in its text (`/` as `\\/`), the escape split between `\\` and `/`', async () => {
    const php = (k: string): string => k.replaceAll('/', '\\/');
    const got = await run(
      (k) => {
        const text = `token: ${php(k)}`;
        const cut = text.indexOf('\\/') + 1;
        return [ROLE, d({ content: text.slice(0, cut) }), d({ content: text.slice(cut) }), STOP, DONE];
      },
      { key: KEY_B },
    );
    expect(got.status).toBe(200);
    expectNoLeak(got, KEY_B, php(KEY_B));
  });

  it('\\u-escaped frames cut into 7-byte TCP writes (escapes split across reads)', async () => {
    const esc = (s: string): string =>
      [...s].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('');
    const got = await run((k) => {
      const body = [
        ROLE,
        ...pieces(`Key: ${k} end`, 4).map((p) =>
          d({ content: 'PLACEHOLDER' }).replace('PLACEHOLDER', esc(p)),
        ),
        STOP,
        DONE,
      ].join('');
      return pieces(body, 7);
    });
    expect(got.status).toBe(200);
    expect(joined(got, 'choices[0].delta.content')).toMatch(/^Key: (s|sk|sk-)?\[REDACTED\] end$/);
    expectNoLeak(got);
  });

  it('surrogate pairs around the key, each half of an emoji in a delta of its own', async () => {
    const got = await run((k) => [
      ROLE,
      ...chars(`😀${k}😀 and 🧪${k}`)
        .flatMap((c) => (c.length === 2 ? [c[0]!, c[1]!] : [c]))
        .map((u) => d({ content: u })),
      STOP,
      DONE,
    ]);
    expect(got.status).toBe(200);
    expectNoLeak(got);
  });
});

describe('no 8+ characters of the key reach the client: fields that are not answer text', () => {
  it('logprobs that mirror a content split in 3-character tokens (token, bytes, top_logprobs)', async () => {
    const lp = (t: string): Json => ({
      content: [
        {
          token: t,
          logprob: -0.1,
          bytes: [...Buffer.from(t)],
          top_logprobs: [{ token: t, logprob: -0.1, bytes: [...Buffer.from(t)] }],
        },
      ],
    });
    const got = await run((k) => [
      ROLE,
      ...pieces(`Key: ${k} end`, 3).map((p) => d({ content: p }, 0, null, { logprobs: lp(p) })),
      STOP,
      DONE,
    ]);
    expect(got.status).toBe(200);
    expectNoLeak(got);
  });

  // BEYOND THE GUARD: a hostile upstream that spreads the key over fields, frames, choices or channels in an
  // order of its own can always get it out; the guard is for echoes and a model repeating the key. Recorded
  // with it.fails: each is a way out (see the file's header).
  it.fails(
    'logprobs.content[].token / bytes / top_logprobs spelling the key across frames (content innocuous)',
    async () => {
      const got = await run((k) => [
        ROLE,
        ...pieces(k, 3).map((p) =>
          d({ content: 'a' }, 0, null, {
            logprobs: {
              content: [
                {
                  token: p,
                  logprob: -0.1,
                  bytes: [...Buffer.from(p)],
                  top_logprobs: [{ token: p, logprob: -0.2, bytes: [...Buffer.from(p)] }],
                },
              ],
            },
          }),
        ),
        STOP,
        DONE,
      ]);
      expect(got.status).toBe(200);
      expectNoLeak(got);
    },
  );

  const CALL_FIELDS: [string, (p: string, first: boolean) => Json][] = [
    [
      'tool_calls[].function.name',
      (p, first) => ({
        tool_calls: [
          { index: 0, ...(first ? { id: 'call_1', type: 'function' } : {}), function: { name: p } },
        ],
      }),
    ],
    [
      'tool_calls[].id',
      (p, first) => ({
        tool_calls: [
          { index: 0, id: p, ...(first ? { type: 'function', function: { name: 'f', arguments: '' } } : {}) },
        ],
      }),
    ],
  ];
  // BEYOND THE GUARD: a hostile upstream that spreads the key over fields, frames, choices or channels in an
  // order of its own can always get it out; the guard is for echoes and a model repeating the key. Recorded
  // with it.fails: each is a way out (see the file's header).
  it.fails.each(CALL_FIELDS)('%s spelling the key across frames', async (_name, delta) => {
    const got = await run((k) => [
      ROLE,
      ...pieces(k, 3).map((p, i) => d(delta(p, i === 0))),
      d({ tool_calls: [{ index: 0, function: { arguments: '{}' } }] }),
      d({}, 0, 'tool_calls'),
      DONE,
    ]);
    expect(got.status).toBe(200);
    expectNoLeak(got);
  });

  // BEYOND THE GUARD: a hostile upstream that spreads the key over fields, frames, choices or channels in an
  // order of its own can always get it out; the guard is for echoes and a model repeating the key. Recorded
  // with it.fails: each is a way out (see the file's header).
  it.fails.each(['id', 'model', 'system_fingerprint', 'x_debug'])(
    'chunk field `%s` spelling the key across frames',
    async (field) => {
      const got = await run((k) => [
        ROLE,
        ...pieces(k, 3).map((p) => d({ content: 'a' }, 0, null, {}, { [field]: p })),
        STOP,
        DONE,
      ]);
      expect(got.status).toBe(200);
      expectNoLeak(got);
    },
  );

  it('the whole key in one frame: id, model, system_fingerprint, an extra field, a tool name and id', async () => {
    const got = await run((k) => [
      ROLE,
      d(
        { content: 'a' },
        0,
        null,
        { extra: k },
        { id: k, model: k, system_fingerprint: k, x_debug: { auth: `Bearer ${k}` } },
      ),
      d({ tool_calls: [{ index: 0, id: k, type: 'function', function: { name: k, arguments: '{}' } }] }),
      d({}, 0, 'tool_calls'),
      DONE,
    ]);
    expect(got.status).toBe(200);
    expect(got.raw).toContain('[REDACTED]');
    expectNoLeak(got);
  });

  // BEYOND THE GUARD: a hostile upstream that spreads the key over fields, frames, choices or channels in an
  // order of its own can always get it out; the guard is for echoes and a model repeating the key. Recorded
  // with it.fails: each is a way out (see the file's header).
  it.fails('an extra field holding the key with its letters \\u-escaped in the frame JSON', async () => {
    const got = await run((k) => [
      ROLE,
      d({ content: 'a' }, 0, null, {}, { x_debug: 'PLACEHOLDER' }).replace(
        'PLACEHOLDER',
        k.replace(/[a-z]/g, (c) => `\\u00${c.charCodeAt(0).toString(16)}`),
      ),
      STOP,
      DONE,
    ]);
    expect(got.status).toBe(200);
    expectNoLeak(got);
  });

  it('a usage chunk holding the key (stream_options.include_usage)', async () => {
    const got = await run(
      (k) => [
        ROLE,
        d({ content: 'hi' }),
        STOP,
        frame(
          chunkOf([], {
            usage: { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6, note: k, key: `Bearer ${k}` },
          }),
        ),
        DONE,
      ],
      { body: { stream_options: { include_usage: true } } },
    );
    expect(got.status).toBe(200);
    expect(got.raw).toContain('"prompt_tokens":5');
    expectNoLeak(got);
  });

  it('SSE comments, `event:` and `id:` lines and non-JSON data lines that hold the key', async () => {
    const got = await run((k) => [
      `: debug ${k}\n\n`,
      ROLE,
      `event: ${k}\n${d({ content: 'hi ' })}`,
      `id: ${k}\nretry: 1000\n${d({ content: 'there' })}`,
      `data: ${k}\n\n`,
      `data: key=${k} not json\n\n`,
      STOP,
      DONE,
    ]);
    expect(got.status).toBe(200);
    expect(joined(got, 'choices[0].delta.content')).toBe('hi there');
    expectNoLeak(got);
  });
});

describe('no 8+ characters of the key reach the client: error events', () => {
  it('an error event after the commit quoting the key', async () => {
    const got = await run((k) => [
      ROLE,
      d({ content: 'partial ' }),
      frame({ error: { message: `quota exceeded for ${k}`, type: 'server_error', code: k, param: k } }),
    ]);
    expect(got.status).toBe(200);
    expect(got.raw).toContain('"error"');
    expect(got.raw).not.toContain('[DONE]');
    expectNoLeak(got);
  });

  it('an error event after the commit whose message is cut (1000 characters) inside the key', async () => {
    const got = await run((k) => [
      ROLE,
      d({ content: 'partial ' }),
      frame({ error: { message: `${'x'.repeat(1000 - 20)}${k}`, type: 'server_error' } }),
    ]);
    expect(got.status).toBe(200);
    expect(got.raw).toContain('stream_interrupted');
    expectNoLeak(got);
  });

  it('an error event before any content quoting the key (failed over: the 502 names no key)', async () => {
    const got = await run(
      (k) => [ROLE, frame({ error: { message: `bad key ${k}`, type: 'invalid_request_error' } })],
      { sdk: false },
    );
    expect(got.status).toBe(502);
    expectNoLeak(got);
  });
});

describe('no 8+ characters of the key (or of its spelling) reach the client: percent-encoded and base64', () => {
  it('encodeURIComponent spelling, in 3-character deltas', async () => {
    const enc = encodeURIComponent(KEY_B);
    const got = await run(
      (k) => [
        ROLE,
        ...pieces(`https://x.test/?k=${encodeURIComponent(k)}&z=1`, 3).map((p) => d({ content: p })),
        STOP,
        DONE,
      ],
      { key: KEY_B },
    );
    expect(got.status).toBe(200);
    expectNoLeak(got, KEY_B, enc);
  });

  it('Python urllib.parse.quote spelling (`/` kept, `+` and `=` encoded), in 3-character deltas', async () => {
    const enc = pythonQuote(KEY_B);
    const got = await run(
      (k) => [
        ROLE,
        ...pieces(`https://x.test/${pythonQuote(k)}/info`, 3).map((p) => d({ content: p })),
        STOP,
        DONE,
      ],
      { key: KEY_B },
    );
    expect(got.status).toBe(200);
    expectNoLeak(got, KEY_B, enc);
  });

  it('percent-encoded with lower-case hex digits (%2b, %2f, %3d), whole in one delta', async () => {
    const lower = (k: string): string =>
      encodeURIComponent(k).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());
    const got = await run((k) => [ROLE, d({ content: `url: ${lower(k)}` }), STOP, DONE], { key: KEY_B });
    expect(got.status).toBe(200);
    expectNoLeak(got, KEY_B, lower(KEY_B));
  });

  // README promises escaped, \u-escaped, percent-encoded and HTML-escaped spellings, not base64: recorded
  // here as what a careful user would check, not as a defect.
  it('base64 of the key (not a spelling README promises to mask)', async () => {
    const b64 = Buffer.from(KEY).toString('base64');
    const got = await run((k) => [
      ROLE,
      d({ content: `b64: ${Buffer.from(k).toString('base64')}` }),
      STOP,
      DONE,
    ]);
    expect(got.status).toBe(200);
    expectNoLeak(got);
    // What the client gets for it, kept for the report.
    expect(joined(got, 'choices[0].delta.content')).toBe(`b64: ${b64}`);
  });
});

describe("no 8+ characters of the key reach the client: the key's end at the stream's end", () => {
  it('the last piece of the key in the finish_reason chunk, closed without [DONE]', async () => {
    const got = await run((k) => [
      ROLE,
      ...pieces(k, 5)
        .slice(0, -1)
        .map((p) => d({ content: p })),
      d({ content: pieces(k, 5).at(-1)! }, 0, 'stop'),
    ]);
    expect(got.status).toBe(200);
    expect(joined(got, 'choices[0].delta.content')).toMatch(/^(s|sk|sk-)?\[REDACTED\]$/);
    expectNoLeak(got);
  });

  it("the key's first 20 characters, then [DONE] with no finish_reason", async () => {
    const got = await run((k) => [ROLE, ...chars(k.slice(0, 20)).map((c) => d({ content: c })), DONE]);
    expect(got.status).toBe(200);
    expectNoLeak(got);
  });

  it("the key's first 20 characters, then finish_reason length", async () => {
    const got = await run((k) => [
      ROLE,
      ...chars(k.slice(0, 20)).map((c) => d({ content: c })),
      d({}, 0, 'length'),
      DONE,
    ]);
    expect(got.status).toBe(200);
    expect(joined(got, 'choices[0].delta.content')).toMatch(/^(s|sk|sk-)?\[REDACTED\]$/);
    expectNoLeak(got);
  });

  it("the key's first 20 characters, then the upstream closes (a cut)", async () => {
    const got = await run((k) => [
      ROLE,
      d({ content: 'x ' }),
      ...chars(k.slice(0, 20)).map((c) => d({ content: c })),
    ]);
    expect(got.status).toBe(200);
    expect(got.raw).toContain('stream_interrupted');
    expectNoLeak(got);
  });

  it("the key's first 20 characters, then an error event", async () => {
    const got = await run((k) => [
      ROLE,
      d({ content: 'x ' }),
      ...chars(k.slice(0, 20)).map((c) => d({ content: c })),
      frame({ error: { message: 'boom', type: 'server_error' } }),
    ]);
    expect(got.status).toBe(200);
    expectNoLeak(got);
  });
});

describe('no 8+ characters of the key reach the client: channel and choice boundaries mid-key', () => {
  // The code's own comment (adapters/openai.ts ChoiceEnds.see): "one-api style proxies put finish_reason on
  // every chunk". Each finish ends the choice's held text, and the next chunk starts afresh.
  it('a proxy that puts finish_reason on every chunk: the key one character a chunk', async () => {
    const got = await run((k) => [
      d({ role: 'assistant', content: '' }, 0, 'stop'),
      ...chars(`Key: ${k} end`).map((c) => d({ content: c }, 0, 'stop')),
      DONE,
    ]);
    expect(got.status).toBe(200);
    expectNoLeak(got);
  });

  it('the key in content, interrupted after 7 characters by one reasoning_content delta, then resumed', async () => {
    const got = await run((k) => [
      ROLE,
      d({ content: 'Key: ' }),
      ...chars(k.slice(0, 7)).map((c) => d({ content: c })),
      d({ reasoning_content: '.' }),
      ...pieces(k.slice(7), 3).map((p) => d({ content: p })),
      d({ content: ' end' }),
      STOP,
      DONE,
    ]);
    expect(got.status).toBe(200);
    expectNoLeak(got);
  });

  it('the key in content, interrupted after 12 characters by one reasoning_content delta, then resumed', async () => {
    const got = await run((k) => [
      ROLE,
      ...chars(k.slice(0, 12)).map((c) => d({ content: c })),
      d({ reasoning_content: '.' }),
      ...pieces(k.slice(12), 3).map((p) => d({ content: p })),
      STOP,
      DONE,
    ]);
    expect(got.status).toBe(200);
    expectNoLeak(got);
  });

  it('the key in tool 0 arguments, interrupted after 7 characters by a tool 1 fragment, then resumed', async () => {
    const got = await run((k) => [
      ROLE,
      d({
        tool_calls: [
          { index: 0, id: 'call_0', type: 'function', function: { name: 'save', arguments: '{"t":"' } },
        ],
      }),
      ...chars(k.slice(0, 7)).map((c) => d({ tool_calls: [{ index: 0, function: { arguments: c } }] })),
      d({
        tool_calls: [
          { index: 1, id: 'call_1', type: 'function', function: { name: 'noop', arguments: '{}' } },
        ],
      }),
      ...pieces(k.slice(7), 3).map((p) => d({ tool_calls: [{ index: 0, function: { arguments: p } }] })),
      d({ tool_calls: [{ index: 0, function: { arguments: '"}' } }] }),
      d({}, 0, 'tool_calls'),
      DONE,
    ]);
    expect(got.status).toBe(200);
    expectNoLeak(got);
  });

  // BEYOND THE GUARD: a hostile upstream that spreads the key over fields, frames, choices or channels in an
  // order of its own can always get it out; the guard is for echoes and a model repeating the key. Recorded
  // with it.fails: each is a way out (see the file's header).
  it.fails('content and reasoning_content alternating 7-character pieces of the key', async () => {
    const got = await run((k) => [
      ROLE,
      ...pieces(k, 7).map((p, i) => d(i % 2 === 0 ? { content: p } : { reasoning_content: p })),
      STOP,
      DONE,
    ]);
    expect(got.status).toBe(200);
    expectNoLeak(got);
  });

  // n = 128 (the most OpenAI allows) on a reasoning model: each choice's reasoning and content are two
  // channels, 256 in all, which is the DeltaMask's MAX_CHANNELS; a tool call after them is a 257th.
  it('n: 128 with reasoning and content per choice, then the key in a tool call of choice 0', async () => {
    const got = await run(
      (k) => {
        const out: string[] = [];
        for (let i = 0; i < 128; i++) out.push(d({ role: 'assistant', reasoning_content: 'think' }, i));
        for (let i = 0; i < 128; i++) out.push(d({ content: 'ok' }, i));
        out.push(
          d(
            {
              tool_calls: [
                { index: 0, id: 'call_1', type: 'function', function: { name: 'save', arguments: '' } },
              ],
            },
            0,
          ),
        );
        for (const p of pieces(`{"token":"${k}"}`, 3))
          out.push(d({ tool_calls: [{ index: 0, function: { arguments: p } }] }, 0));
        for (let i = 0; i < 128; i++) out.push(d({}, i, i === 0 ? 'tool_calls' : 'stop'));
        out.push(DONE);
        return [out.join('')];
      },
      { body: { n: 128 } },
    );
    expect(got.status).toBe(200);
    expect(joined(got, 'choices[127].delta.content')).toBe('ok');
    expectNoLeak(got);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('no 8+ characters of the key reach the client: an Anthropic upstream repeats its x-api-key', () => {
  const ev = anthropicSseFrame;
  const start = (): string[] => [
    ev({
      type: 'message_start',
      message: {
        id: 'msg_leak',
        type: 'message',
        role: 'assistant',
        model: 'm',
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: { input_tokens: 5, output_tokens: 1 },
      },
    }),
    ev({ type: 'ping' }),
  ];
  const end = (reason = 'end_turn'): string[] => [
    ev({
      type: 'message_delta',
      delta: { stop_reason: reason, stop_sequence: null },
      usage: { output_tokens: 40 },
    }),
    ev({ type: 'message_stop' }),
  ];
  const block = (index: number, content_block: Json): string =>
    ev({ type: 'content_block_start', index, content_block });
  const delta = (index: number, dl: Json): string => ev({ type: 'content_block_delta', index, delta: dl });
  const stop = (index: number): string => ev({ type: 'content_block_stop', index });

  it('text_delta one character an event, with empty deltas and pings between', async () => {
    const got = await run(
      (k) => [
        ...start(),
        block(0, { type: 'text', text: '' }),
        delta(0, { type: 'text_delta', text: 'Key: ' }),
        ...chars(k).flatMap((c) => [
          delta(0, { type: 'text_delta', text: c }),
          delta(0, { type: 'text_delta', text: '' }),
          ev({ type: 'ping' }),
        ]),
        delta(0, { type: 'text_delta', text: ' end' }),
        stop(0),
        ...end(),
      ],
      { kind: 'anthropic' },
    );
    expect(got.status).toBe(200);
    expect(joined(got, 'choices[0].delta.content')).toMatch(/^Key: (s|sk|sk-)?\[REDACTED\] end$/);
    expectNoLeak(got, ANT_KEY);
  });

  it('thinking_delta one character an event, signed (reasoning_content and thinking_blocks)', async () => {
    const got = await run(
      (k) => [
        ...start(),
        block(0, { type: 'thinking', thinking: '', signature: '' }),
        delta(0, { type: 'thinking_delta', thinking: 'The key is ' }),
        ...chars(k).map((c) => delta(0, { type: 'thinking_delta', thinking: c })),
        delta(0, { type: 'thinking_delta', thinking: ' so.' }),
        delta(0, { type: 'signature_delta', signature: 'sig-abc' }),
        stop(0),
        block(1, { type: 'text', text: '' }),
        delta(1, { type: 'text_delta', text: 'done' }),
        stop(1),
        ...end(),
      ],
      { kind: 'anthropic' },
    );
    expect(got.status).toBe(200);
    expect(got.raw).toContain('thinking_blocks');
    expectNoLeak(got, ANT_KEY);
  });

  // OPEN: the gateway's own `thinking_blocks` carries the signed thinking as Claude wrote it (sent back, it must
  // match its signature), so a block that stops inside the key is not cut there; a whole key in it is masked.
  it.fails('a thinking block that stops inside the key (all but its last 2 characters), signed', async () => {
    const got = await run(
      (k) => [
        ...start(),
        block(0, { type: 'thinking', thinking: '', signature: '' }),
        delta(0, { type: 'thinking_delta', thinking: 'The key is ' }),
        ...pieces(k.slice(0, -2), 3).map((p) => delta(0, { type: 'thinking_delta', thinking: p })),
        delta(0, { type: 'signature_delta', signature: 'sig-abc' }),
        stop(0),
        block(1, { type: 'text', text: '' }),
        delta(1, { type: 'text_delta', text: 'done' }),
        stop(1),
        ...end(),
      ],
      { kind: 'anthropic' },
    );
    expect(got.status).toBe(200);
    expect(joined(got, 'choices[0].delta.reasoning_content')).toMatch(/^The key is (s|sk|sk-)?\[REDACTED\]$/);
    expectNoLeak(got, ANT_KEY);
  });

  it('input_json_delta one character an event', async () => {
    const got = await run(
      (k) => [
        ...start(),
        block(0, { type: 'tool_use', id: 'toolu_1', name: 'save', input: {} }),
        delta(0, { type: 'input_json_delta', partial_json: '' }),
        ...chars(`{"token":"${k}"}`).map((c) => delta(0, { type: 'input_json_delta', partial_json: c })),
        stop(0),
        ...end('tool_use'),
      ],
      { kind: 'anthropic' },
    );
    expect(got.status).toBe(200);
    expect(joined(got, 'choices[0].delta.tool_calls[0].function.arguments')).toMatch(
      /^\{"token":"(s|sk|sk-)?\[REDACTED\]"\}$/,
    );
    expectNoLeak(got, ANT_KEY);
  });

  it('the key as a tool name, tool id, message id and model (whole, one event each)', async () => {
    const got = await run(
      (k) => [
        ev({
          type: 'message_start',
          message: {
            id: k,
            type: 'message',
            role: 'assistant',
            model: k,
            content: [],
            stop_reason: null,
            stop_sequence: null,
            usage: { input_tokens: 5, output_tokens: 1 },
          },
        }),
        block(0, { type: 'tool_use', id: k, name: k, input: { k } }),
        stop(0),
        ...end('tool_use'),
      ],
      { kind: 'anthropic' },
    );
    expect(got.status).toBe(200);
    expectNoLeak(got, ANT_KEY);
  });

  it('an Anthropic error event after the commit quoting the key, cut inside it', async () => {
    const got = await run(
      (k) => [
        ...start(),
        block(0, { type: 'text', text: '' }),
        delta(0, { type: 'text_delta', text: 'partial' }),
        ev({ type: 'error', error: { type: 'overloaded_error', message: `${'y'.repeat(990)}${k}` } }),
      ],
      { kind: 'anthropic' },
    );
    expect(got.status).toBe(200);
    expect(got.raw).toContain('stream_interrupted');
    expectNoLeak(got, ANT_KEY);
  });
});
