/**
 * Text encoding end to end: what the gateway writes itself out of text it was given must stay well-formed
 * Unicode, and text it relays must keep its bytes.
 * - Text the gateway cuts short (the LLM router's conversation excerpt, a relayed upstream error message,
 *   a mid-stream error event's message, a model name quoted in a 404) is cut between characters, never
 *   between the two halves of a surrogate pair: a lone surrogate is refused by strict JSON readers
 *   (Anthropic's API, serde_json) and shown as U+FFFD by the rest.
 * - The prompt token estimate that drives tier rules and the context-window fit stays within a factor of
 *   two of o200k's count for real text in any script (CJK, emoji, Hebrew, Amharic, Sinhala, Khmer, `tree`
 *   listings), so a prompt past a model's window is not sent to it.
 * - A passthrough error body in a legacy multi-byte charset (Shift_JIS, GBK) is relayed byte for byte, as a
 *   one-byte charset's already is.
 * - Multi-byte text cut across TCP writes in an Anthropic tool call's arguments and in an error event after
 *   the commit reaches the client exact.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { dig, postChat, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, chunkFrame, sendJson, startMock, startRawUpstream } from '../helpers/mock-upstream.js';
import { sseEvents } from '../helpers/sim-wire.js';

const track = closeAfterEach();
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };

/** A lone surrogate: half of a pair, without its other half. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Where a string holds a lone surrogate (undefined: it is well-formed Unicode). */
function loneSurrogateAt(s: string): number | undefined {
  const m = LONE_SURROGATE.exec(s);
  return m === null ? undefined : m.index;
}

/** Every string anywhere inside a parsed JSON value. */
function stringsIn(value: unknown, out: string[] = []): string[] {
  if (typeof value === 'string') out.push(value);
  else if (Array.isArray(value)) for (const v of value) stringsIn(v, out);
  else if (value !== null && typeof value === 'object')
    for (const [k, v] of Object.entries(value)) {
      out.push(k);
      stringsIn(v, out);
    }
  return out;
}

function openaiProvider(name: string, url: string, models: Record<string, unknown>[] = [{ name: 'm' }]) {
  return { name, base_url: `${url}/v1`, api_key: `key-${name}`, timeouts: RELAXED, models };
}

/** Writes `parts` one TCP write at a time (a tick apart), then ends. */
async function trickle(res: ServerResponse, parts: readonly Buffer[]): Promise<void> {
  for (const p of parts) {
    if (res.destroyed) return;
    res.write(p);
    await new Promise((r) => setTimeout(r, 2));
  }
  res.end();
}

/** `text` as UTF-8 bytes, cut at each byte offset in `cuts`. */
function cutBytes(text: string, cuts: readonly number[]): Buffer[] {
  const bytes = Buffer.from(text, 'utf8');
  const out: Buffer[] = [];
  let from = 0;
  for (const c of [...cuts].sort((a, b) => a - b)) {
    if (c <= from || c >= bytes.length) continue;
    out.push(bytes.subarray(from, c));
    from = c;
  }
  out.push(bytes.subarray(from));
  return out;
}

/** The byte offsets that fall inside multi-byte characters of `text` (UTF-8). */
function insideCharacters(text: string): number[] {
  const cuts: number[] = [];
  let at = 0;
  for (const ch of text) {
    const n = Buffer.byteLength(ch, 'utf8');
    for (let k = 1; k < n; k++) cuts.push(at + k);
    at += n;
  }
  return cuts;
}

describe('text the gateway cuts short is cut between characters', () => {
  /**
   * Route `auto` with no rules: every request ties and the LLM router (tier fast, upstream `rt`) is asked,
   * with an excerpt of the conversation cut to 400 characters a message (README "Tiers and the LLM router").
   */
  async function tiered(): Promise<{ gw: TestGateway; routerBodies: string[] }> {
    const routerBodies: string[] = [];
    const rt = track(
      await startMock((req, res) => {
        routerBodies.push(JSON.stringify(req.body));
        answerChat(res, req.body, '{"tier": "deep", "reason": "hard"}');
      }),
    );
    const tierUp = track(await startMock((req, res) => answerChat(res, req.body, 'answered')));
    const gw = track(
      await startGateway({
        providers: [
          openaiProvider('rt', rt.url),
          openaiProvider('bal', tierUp.url),
          openaiProvider('deep', tierUp.url),
        ],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['rt/m'], balanced: ['bal/m'], deep: ['deep/m'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 5000, cache_ttl_s: 60 },
          },
        },
      }),
    );
    return { gw, routerBodies };
  }

  // The excerpt is cut at 400 UTF-16 units: an emoji whose two halves sit at units 399 and 400 was split,
  // and the router's model got `\ud83d…`. Anthropic's API refuses such a body ("no low surrogate in string"),
  // which sent every such request to default_tier with the router counted as failed.
  it("the LLM router's excerpt of a message with an emoji at its cut is well-formed Unicode", async () => {
    const { gw, routerBodies } = await tiered();
    // A long message is quoted by its first and last 200 UTF-16 units: an emoji across either cut.
    const contents = [
      ...[198, 199].map((lead) => `${'x'.repeat(lead)}${'😀'.repeat(20)}${' filler'.repeat(60)}`),
      ...[199, 200].map((trail) => `${' filler'.repeat(60)}${'😀'.repeat(20)}${'w'.repeat(trail)}`),
    ];
    for (const content of contents) {
      const r = await postChat(gw, { model: 'auto', messages: [{ role: 'user', content }] });
      expect(r.status, r.text).toBe(200);
    }
    expect(routerBodies).toHaveLength(4);
    for (const body of routerBodies) {
      const parsed: unknown = JSON.parse(body);
      for (const s of stringsIn(parsed)) {
        const at = loneSurrogateAt(s);
        expect(
          at,
          `lone surrogate in the router's prompt: …${JSON.stringify(s.slice(at ?? 0, (at ?? 0) + 8))}`,
        ).toBeUndefined();
      }
    }
  });

  /** An upstream that refuses every request with a 400 whose message is `message`. */
  async function refusing(message: string): Promise<TestGateway> {
    const up = track(
      await startMock((_req, res) =>
        sendJson(res, 400, { error: { message, type: 'invalid_request_error', param: null, code: null } }),
      ),
    );
    return track(
      await startGateway({
        providers: [openaiProvider('up', up.url)],
        routes: { r: { strategy: 'priority', targets: ['up/m'] } },
      }),
    );
  }

  // Upstream messages are cut at 1000 UTF-16 units (adapters/common.ts truncateMessage): a context-length
  // error that quotes the prompt back, emoji and all, lost the low half of the emoji at the cut.
  for (const stream of [false, true]) {
    it(`a relayed 400 whose long message has an emoji at the cut keeps a well-formed message (stream: ${stream})`, async () => {
      const message = `Invalid prompt: ${'x'.repeat(983)}${'😀'.repeat(40)} end`;
      const at999 = message.charCodeAt(999);
      expect(at999 >= 0xd800 && at999 <= 0xdbff).toBe(true); // the high half of a pair sits at the cut
      const gw = await refusing(message);
      const r = await postChat(gw, { model: 'r', stream, messages: [{ role: 'user', content: 'hi' }] });
      expect(r.status, r.text).toBe(400);
      const got = dig(r.json, 'error', 'message');
      expect(typeof got).toBe('string');
      // The raw body as a strict reader sees it: no `\ud83d` escape without its pair.
      expect(r.text).not.toMatch(/\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f][0-9a-f]{2})/i);
      expect(loneSurrogateAt(got as string), JSON.stringify((got as string).slice(990))).toBeUndefined();
      expect((got as string).startsWith('Invalid prompt: xxx')).toBe(true);
    });
  }

  // The same cut on an error event that ends a committed stream: the client's terminating event carried
  // the lone half too.
  it('an error event after the commit whose long message has an emoji at the cut: a well-formed error event', async () => {
    const message = `overloaded: ${'y'.repeat(987)}${'🚀'.repeat(40)}`;
    expect(message.charCodeAt(999)).toBeGreaterThanOrEqual(0xd800);
    const up = await startRawUpstream(track, (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(
        chunkFrame('m', { role: 'assistant', content: '' }) +
          chunkFrame('m', { content: 'partial answer' }) +
          `data: ${JSON.stringify({ error: { message, type: 'server_error', code: null } })}\n\n`,
      );
    });
    const gw = track(
      await startGateway({
        providers: [openaiProvider('up', up.url)],
        routes: { r: { strategy: 'priority', targets: ['up/m'] } },
      }),
    );
    const r = await postChat(gw, { model: 'r', stream: true, messages: [{ role: 'user', content: 'hi' }] });
    expect(r.status).toBe(200);
    const events = sseEvents(r.text).map((e) => e.data);
    expect(events).not.toContain('[DONE]');
    const last = JSON.parse(events.at(-1)!) as { error?: { message?: unknown } };
    expect(typeof last.error?.message).toBe('string');
    const text = last.error!.message as string;
    expect(text).toContain('overloaded: yyy');
    expect(loneSurrogateAt(text), JSON.stringify(text.slice(-40))).toBeUndefined();
  });

  // decide.ts quotes at most 200 units of an unknown model name in its 404.
  it('a 404 for an unknown model quoting a long name with an emoji at the cut is well-formed', async () => {
    const up = track(await startMock((req, res) => answerChat(res, req.body, 'x')));
    const gw = track(
      await startGateway({
        providers: [openaiProvider('up', up.url)],
        routes: { r: { strategy: 'priority', targets: ['up/m'] } },
      }),
    );
    const model = `${'m'.repeat(199)}${'🙂'.repeat(10)}`;
    const r = await postChat(gw, { model, messages: [{ role: 'user', content: 'hi' }] });
    expect(r.status).toBe(404);
    const got = dig(r.json, 'error', 'message');
    expect(typeof got).toBe('string');
    expect(loneSurrogateAt(got as string), JSON.stringify(got)).toBeUndefined();
  });
});

describe("a client's request text reaches an OpenAI-dialect upstream as written", () => {
  // Escapes a re-serialisation would rewrite: `\/`, `\u00e9`, an escaped pair, a lone surrogate, `\u0000`,
  // a raw U+2028, keys in an odd order, a 20-digit integer in a vendor field.
  const BODY =
    '{"messages":[{"content":"a\\/b caf\\u00e9 \\ud83d\\ude00 lone \\ud800 nul \\u0000 \u2028 东京","role":"user"}],' +
    '"vendor_seed":12345678901234567890,"model":"r","temperature":1.0}';

  it('byte for byte but for `model`', async () => {
    const raw: Buffer[] = [];
    const server = createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (d: Buffer) => parts.push(d));
      req.on('end', () => {
        raw.push(Buffer.concat(parts));
        answerChat(res, JSON.parse(Buffer.concat(parts).toString('utf8')) as Record<string, unknown>, 'ok');
      });
    });
    track(closeableServer(server));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const gw = track(
      await startGateway({
        providers: [openaiProvider('up', url, [{ name: 'upstream-model' }])],
        routes: { r: { strategy: 'priority', targets: ['up/upstream-model'] } },
      }),
    );
    const r = await postChat(gw, BODY);
    expect(r.status, r.text).toBe(200);
    expect(raw).toHaveLength(1);
    expect(raw[0]!.equals(Buffer.from(BODY.replace('"model":"r"', '"model":"upstream-model"'), 'utf8'))).toBe(
      true,
    );
  });
});

describe('the prompt token estimate is not wildly off in any script', () => {
  /** The tree of a small project, as `tree` prints it (box-drawing characters): a common coding prompt. */
  function treeListing(): string {
    const dirs = [
      'src',
      'lib',
      'test',
      'docs',
      'config',
      'scripts',
      'assets',
      'components',
      'utils',
      'hooks',
    ];
    const files = ['index.ts', 'app.tsx', 'README.md', 'package.json', 'server.js', 'styles.css', 'main.py'];
    let out = '.\n';
    for (let i = 0; i < 60; i++) {
      out += `├── ${dirs[i % dirs.length]}${i}\n`;
      for (let j = 0; j < 4; j++) out += `│   ${j === 3 ? '└──' : '├──'} ${files[(i + j) % files.length]}\n`;
    }
    return `${out}└── LICENSE\n`;
  }

  const SAMPLES: Record<string, string> = {
    english:
      'Please summarise the attached report and list the three most important risks for next quarter. '.repeat(
        8,
      ),
    chinese: '人工智能正在改变我们的生活方式和工作方式，许多行业都受到了深远的影响。'.repeat(8),
    japanese: 'これは日本語の文章です。東京は日本の首都であり、多くの人々が住んでいます。'.repeat(8),
    emoji: '😀🎉🚀🔥💯👍🏽 great job team! '.repeat(20),
    hebrew: 'שלום, אני רוצה לשאול שאלה לגבי ההזמנה שלי. הזמנתי מוצר לפני שבועיים והוא עדיין לא הגיע. '.repeat(
      8,
    ),
    amharic: 'ሰላም፣ ስለ ትዕዛዜ ጥያቄ መጠየቅ እፈልጋለሁ። ከሁለት ሳምንት በፊት ዕቃ አዝዣለሁ ግን እስካሁን አልደረሰም። '.repeat(8),
    sinhala: 'මම සිංහල කතා කරමි. ඔබට කෙසේද? අද කාලගුණය ඉතා හොඳයි. '.repeat(12),
    khmer: 'ខ្ញុំនិយាយភាសាខ្មែរ។ តើអ្នកសុខសប្បាយជាទេ? ថ្ងៃនេះអាកាសធាតុល្អណាស់។ '.repeat(10),
    // Scripts a neighbour's weight read 3-5x low (Odia in Devanagari's band, Lao in Thai's, Thaana in
    // Arabic's), and those neighbours.
    odia: 'ନମସ୍କାର, ମୁଁ ମୋର ଅର୍ଡର ବିଷୟରେ ପଚାରିବାକୁ ଚାହୁଁଛି। ଦୁଇ ସପ୍ତାହ ପୂର୍ବରୁ ମୁଁ ଗୋଟିଏ ଜିନିଷ ଅର୍ଡର କରିଥିଲି, କିନ୍ତୁ ଏହା ଏପର୍ଯ୍ୟନ୍ତ ଆସିନାହିଁ। '.repeat(
      6,
    ),
    lao: 'ສະບາຍດີ, ຂ້ອຍຢາກຖາມກ່ຽວກັບຄໍາສັ່ງຂອງຂ້ອຍ. ສອງອາທິດກ່ອນຂ້ອຍສັ່ງສິນຄ້າ, ແຕ່ມັນຍັງບໍ່ມາຮອດ. '.repeat(6),
    dhivehi: 'އައްސަލާމު ޢަލައިކުމް، އަހަރެންގެ އޯޑަރާ ބެހޭގޮތުން ސުވާލެއް ކުރަން ބޭނުންވޭ. '.repeat(6),
    hindi:
      'नमस्ते, मैं अपने ऑर्डर के बारे में पूछना चाहता हूं। दो हफ्ते पहले मैंने एक सामान ऑर्डर किया था, लेकिन वह अभी तक नहीं आया। '.repeat(
        6,
      ),
    thai: 'สวัสดีครับ ผมอยากสอบถามเกี่ยวกับคำสั่งซื้อของผม สองสัปดาห์ก่อนผมสั่งสินค้าไป แต่ยังไม่ได้รับเลย '.repeat(6),
    arabic: 'مرحبا، أود أن أسأل عن طلبي. لقد طلبت منتجا قبل أسبوعين ولكنه لم يصل بعد. '.repeat(6),
    tree: treeListing(),
  };

  async function explainGateway(): Promise<TestGateway> {
    const up = track(await startMock((req, res) => answerChat(res, req.body, 'x')));
    return track(
      await startGateway({
        providers: [openaiProvider('up', up.url)],
        routes: { r: { strategy: 'priority', targets: ['up/m'] } },
      }),
    );
  }

  // README: the estimate decides the context-window fit and the tier rules. routing/tokens.ts counts every
  // character from U+0080 to U+2FFF (all alphabets but Latin, box drawing, arrows, maths) as a quarter token:
  // Ethiopic is ~1.8 tokens a character in o200k, Sinhala and Khmer ~0.5.
  it('within a factor of two of o200k for CJK, emoji and twelve other scripts, and a `tree` listing', async () => {
    const gw = await explainGateway();
    const off: string[] = [];
    for (const [name, text] of Object.entries(SAMPLES)) {
      const r = await postChat(
        gw,
        { model: 'r', messages: [{ role: 'user', content: text }] },
        { path: '/router/explain' },
      );
      expect(r.status, r.text).toBe(200);
      const estimate = dig(r.json, 'features', 'promptTokens') as number;
      const exact = countTokens(text) + 4 + 3; // message framing and reply priming, as the estimate adds
      const ratio = estimate / exact;
      if (ratio < 0.5 || ratio > 2)
        off.push(`${name}: estimated ${estimate}, o200k ${exact} (×${ratio.toFixed(2)})`);
    }
    expect(off).toEqual([]);
  });

  // What the estimate is for: a model whose window the prompt does not fit is skipped (README
  // `context_window`). Underestimated, the prompt went to the small model, whose 400 (a client error: no
  // failover) reached the client while the large model would have answered.
  it('an Amharic prompt past the small model’s window goes to the large model', async () => {
    const served: string[] = [];
    const small = track(
      await startMock((req, res) => {
        served.push('small');
        sendJson(res, 400, {
          error: {
            message: "This model's maximum context length is 4096 tokens.",
            type: 'invalid_request_error',
            param: 'messages',
            code: 'context_length_exceeded',
          },
        });
      }),
    );
    const large = track(
      await startMock((req, res) => {
        served.push('large');
        answerChat(res, req.body, 'ok');
      }),
    );
    const gw = track(
      await startGateway({
        providers: [
          openaiProvider('small', small.url, [{ name: 'm', context_window: 4096 }]),
          openaiProvider('large', large.url, [{ name: 'm', context_window: 128000 }]),
        ],
        routes: { r: { strategy: 'priority', targets: ['small/m', 'large/m'] } },
      }),
    );
    const text = SAMPLES.amharic!.repeat(6);
    const exact = countTokens(text);
    expect(exact).toBeGreaterThan(5000); // well past the small model's 4096
    const r = await postChat(gw, {
      model: 'r',
      max_tokens: 100,
      messages: [{ role: 'user', content: text }],
    });
    expect(served).toEqual(['large']);
    expect(r.status, r.text.slice(0, 300)).toBe(200);
    expect(r.headers['x-router-provider']).toBe('large');
  });
});

describe('passthrough error bodies keep their bytes in any declared charset', () => {
  async function passthroughOver(status: number, contentType: string, body: Buffer): Promise<TestGateway> {
    const server = createServer((req: IncomingMessage, res: ServerResponse) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(status, { 'content-type': contentType, 'content-length': String(body.length) });
        res.end(body);
      });
    });
    track(closeableServer(server));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    return track(
      await startGateway({
        server: { passthrough: 'pt' },
        providers: [openaiProvider('pt', url)],
        routes: { r: { strategy: 'priority', targets: ['pt/m'] } },
      }),
    );
  }

  // passthrough.ts reads an error body as UTF-8 to scrub it (Latin-1 and windows-125x are read as latin1 and
  // kept): a body in a multi-byte legacy charset came out with every non-ASCII character as U+FFFD.
  const legacy: [string, string, Buffer][] = [
    // "ファイルエラー: 無効" in Shift_JIS
    [
      'Shift_JIS',
      'text/plain; charset=Shift_JIS',
      Buffer.from([
        0x83, 0x74, 0x83, 0x40, 0x83, 0x43, 0x83, 0x8b, 0x83, 0x47, 0x83, 0x89, 0x81, 0x5b, 0x3a, 0x20, 0x96,
        0xb3, 0x8c, 0xf8,
      ]),
    ],
    // "文件错误: 无效" in GBK
    [
      'GBK',
      'text/plain; charset=GBK',
      Buffer.from([0xce, 0xc4, 0xbc, 0xfe, 0xb4, 0xed, 0xce, 0xf3, 0x3a, 0x20, 0xce, 0xde, 0xd0, 0xa7]),
    ],
  ];
  for (const [name, contentType, bytes] of legacy) {
    it(`a 400 error body declared ${name} is relayed with its bytes unchanged`, async () => {
      const gw = await passthroughOver(400, contentType, bytes);
      const r = await request(`${gw.url}/v1/files`, {
        method: 'POST',
        body: 'x',
        headers: { 'content-type': 'text/plain' },
      });
      expect(r.statusCode).toBe(400);
      expect(r.headers['content-type']).toBe(contentType);
      const got = Buffer.from(await r.body.arrayBuffer());
      expect(got.toString('hex')).toBe(bytes.toString('hex'));
    });
  }
});

describe('multi-byte text cut across TCP writes reaches the client exact', () => {
  function anthropicFrame(type: string, data: Record<string, unknown>): string {
    return `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
  }

  async function anthropicGateway(url: string): Promise<TestGateway> {
    return track(
      await startGateway({
        providers: [
          {
            name: 'ant',
            kind: 'anthropic',
            base_url: url,
            api_key: 'key-ant',
            timeouts: RELAXED,
            models: [{ name: 'claude-haiku-4-5' }],
          },
        ],
        routes: { r: { strategy: 'priority', targets: ['ant/claude-haiku-4-5'] } },
      }),
    );
  }

  const ARGS_TEXT = '{"city":"東京 🗼","note":"naïve e\u0301 👨‍👩‍👧"}';

  it('Anthropic tool-call arguments cut inside every multi-byte character: the arguments exact', async () => {
    const half = Math.floor(ARGS_TEXT.length / 2);
    const sse =
      anthropicFrame('message_start', {
        message: {
          id: 'msg_1',
          type: 'message',
          role: 'assistant',
          model: 'claude-haiku-4-5',
          content: [],
          stop_reason: null,
          usage: { input_tokens: 5, output_tokens: 1 },
        },
      }) +
      anthropicFrame('content_block_start', {
        index: 0,
        content_block: { type: 'tool_use', id: 'toolu_1', name: 'weather', input: {} },
      }) +
      anthropicFrame('content_block_delta', {
        index: 0,
        delta: { type: 'input_json_delta', partial_json: ARGS_TEXT.slice(0, half) },
      }) +
      anthropicFrame('content_block_delta', {
        index: 0,
        delta: { type: 'input_json_delta', partial_json: ARGS_TEXT.slice(half) },
      }) +
      anthropicFrame('content_block_stop', { index: 0 }) +
      anthropicFrame('message_delta', { delta: { stop_reason: 'tool_use' }, usage: { output_tokens: 9 } }) +
      anthropicFrame('message_stop', {});
    const up = await startRawUpstream(track, (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      void trickle(res, cutBytes(sse, insideCharacters(sse)));
    });
    const gw = await anthropicGateway(up.url);
    const tools = [{ type: 'function', function: { name: 'weather', parameters: { type: 'object' } } }];
    const r = await postChat(gw, {
      model: 'r',
      stream: true,
      tools,
      messages: [{ role: 'user', content: 'weather?' }],
    });
    expect(r.status, r.text.slice(0, 300)).toBe(200);
    const events = sseEvents(r.text).map((e) => e.data);
    expect(events.at(-1)).toBe('[DONE]');
    let args = '';
    for (const d of events.slice(0, -1)) {
      const calls = dig(JSON.parse(d), 'choices', 0, 'delta', 'tool_calls') as
        { function?: { arguments?: string } }[] | undefined;
      for (const c of calls ?? []) args += c.function?.arguments ?? '';
    }
    expect(r.text).not.toContain('\uFFFD');
    expect(JSON.parse(args)).toEqual(JSON.parse(ARGS_TEXT));
  });

  it('an Anthropic error event after the commit, cut inside its multi-byte characters: the message exact', async () => {
    const said = 'Überlastet — 服务器过载 🔥, bitte später';
    const sse =
      anthropicFrame('message_start', {
        message: {
          id: 'msg_1',
          type: 'message',
          role: 'assistant',
          model: 'claude-haiku-4-5',
          content: [],
          stop_reason: null,
          usage: { input_tokens: 5, output_tokens: 1 },
        },
      }) +
      anthropicFrame('content_block_start', { index: 0, content_block: { type: 'text', text: '' } }) +
      anthropicFrame('content_block_delta', {
        index: 0,
        delta: { type: 'text_delta', text: 'Grüße 你好 ' },
      }) +
      anthropicFrame('error', { error: { type: 'overloaded_error', message: said } });
    const up = await startRawUpstream(track, (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      void trickle(res, cutBytes(sse, insideCharacters(sse)));
    });
    const gw = await anthropicGateway(up.url);
    const r = await postChat(gw, { model: 'r', stream: true, messages: [{ role: 'user', content: 'hi' }] });
    expect(r.status).toBe(200);
    expect(r.text).not.toContain('\uFFFD');
    const events = sseEvents(r.text).map((e) => e.data);
    expect(events).not.toContain('[DONE]');
    let content = '';
    for (const d of events.slice(0, -1))
      content += (dig(JSON.parse(d), 'choices', 0, 'delta', 'content') as string | undefined) ?? '';
    expect(content).toBe('Grüße 你好 ');
    const message = dig(JSON.parse(events.at(-1)!), 'error', 'message') as string;
    expect(message).toContain(said);
  });
});
