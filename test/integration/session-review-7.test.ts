/**
 * A provider's key that a streamed answer spells across several deltas (DeltaMask, streaming/delta-mask.ts),
 * through the real wire: the frames it rewrites stay chunks the SDKs read whole (several choices, a system
 * fingerprint, usage on the finish chunk and after it); text that only starts like a key, or a placeholder
 * key, is relayed as it came; a stream commits at its first content delta even when all of it is held; no
 * channel of a chunk that carries the answer's text (content parts, logprobs tokens, an audio transcript)
 * spells the key once joined; what is held back is never lost nor moved after later text; and a configured
 * credential header's scheme word (`Basic`, `Bearer`) is no secret of its own.
 */
import type { ServerResponse } from 'node:http';
import { createOpenAI } from '@ai-sdk/openai';
import { streamText } from 'ai';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { collectChunks, claudeSse, startAnthropicRoute } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { dig, postTo, startGateway, type TestGateway } from '../helpers/gateway.js';
import { gate, startMock, startRawUpstream } from '../helpers/mock-upstream.js';
import { sseEvents } from '../helpers/sim-wire.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hello there' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };
const KEY = 'sk-proj-SECRET-0042abcdXYZ';

type Json = Record<string, unknown>;

/** One chunk frame with `choices` as given and any top-level `extra` (usage, system_fingerprint). */
function frame(choices: Json[], extra: Json = {}): string {
  return `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', ...extra, choices })}\n\n`;
}

/** A single-choice chunk frame. */
function one(delta: Json, finish: string | null = null, extra: Json = {}): string {
  return frame([{ index: 0, delta, finish_reason: finish }], extra);
}

/** `s` in pieces of `n` characters, as a model streams tokens. */
function pieces(s: string, n: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < s.length; i += n) out.push(s.slice(i, i + n));
  return out;
}

function openStream(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
}

/** Every JSON chunk of an SSE body, in order. */
function chunksOf(sse: string): Json[] {
  return sseEvents(sse)
    .filter((e) => e.data.startsWith('{'))
    .map((e) => JSON.parse(e.data) as Json);
}

/** A field of choice 0's deltas, joined. */
function joinedField(sse: string, field: string): string {
  let out = '';
  for (const c of chunksOf(sse)) {
    const v = dig(c, 'choices', 0, 'delta', field);
    if (typeof v === 'string') out += v;
  }
  return out;
}

async function oneRoute(
  up: { url: string },
  provider: Json = {},
  key: string | undefined = KEY,
): Promise<TestGateway> {
  return track(
    await startGateway({
      providers: [
        {
          name: 'a',
          base_url: `${up.url}/v1`,
          ...(key === undefined ? {} : { api_key: key }),
          timeouts: RELAXED,
          models: [{ name: 'm' }],
          ...provider,
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
    }),
  );
}

function sdk(gw: TestGateway): OpenAI {
  return new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'x', maxRetries: 0 });
}

/** Every chunk the OpenAI SDK reads of a stream of route `r`, the request with `extra` fields. */
async function sdkChunks(gw: TestGateway, extra: Record<string, unknown>) {
  const params = { model: 'r', messages: MSG as never, stream: true as const, ...extra };
  return collectChunks(await sdk(gw).chat.completions.create(params));
}

describe('frames DeltaMask rewrites stay chunks the SDKs read whole', () => {
  // Two choices interleaved, a key spelt by one and a near miss by the other, each frame with its system
  // fingerprint; usage both on the finish chunk (as some vLLM builds send it) and in the final usage chunk.
  it('n = 2 interleaved, system_fingerprint, usage: each choice read right by the OpenAI SDK', async () => {
    const a = `A says ${KEY}!`;
    const b = `B says ${KEY.slice(0, 10)}zz fine`;
    const up = await startRawUpstream(track, (_req, res) => {
      openStream(res);
      const fp = { system_fingerprint: 'fp_7' };
      res.write(
        frame(
          [0, 1].map((index) => ({ index, delta: { role: 'assistant', content: '' }, finish_reason: null })),
          fp,
        ),
      );
      const pa = pieces(a, 3);
      const pb = pieces(b, 3);
      for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
        if (i < pa.length)
          res.write(frame([{ index: 0, delta: { content: pa[i] }, finish_reason: null }], fp));
        if (i < pb.length)
          res.write(frame([{ index: 1, delta: { content: pb[i] }, finish_reason: null }], fp));
      }
      const usage = { prompt_tokens: 5, completion_tokens: 20, total_tokens: 25 };
      res.write(
        frame(
          [0, 1].map((index) => ({ index, delta: {}, finish_reason: 'stop' })),
          { ...fp, usage },
        ),
      );
      res.end(`${frame([], { ...fp, usage })}data: [DONE]\n\n`);
    });
    const gw = await oneRoute(up);
    const chunks = await sdkChunks(gw, { n: 2, stream_options: { include_usage: true } });
    const text = ['', ''];
    const finish: (string | null)[] = [null, null];
    for (const c of chunks) {
      expect(c.system_fingerprint).toBe('fp_7');
      for (const ch of c.choices) {
        text[ch.index] += ch.delta.content ?? '';
        if (ch.finish_reason) finish[ch.index] = ch.finish_reason;
      }
    }
    expect(text[0]).toMatch(/^A says (s|sk|sk-)?\[REDACTED\]!$/);
    expect(text[1]).toBe(b);
    expect(finish).toEqual(['stop', 'stop']);
    expect(chunks.at(-1)?.usage?.completion_tokens).toBe(20);
    expect(chunks.at(-1)?.choices).toEqual([]);
  });

  // Text that starts like the key and goes on otherwise is held only until the next delta shows it, then
  // relayed as it came; placeholder keys (vLLM's `EMPTY`, `none`) are no secrets to hold text for.
  it('near misses and placeholder keys: the ai SDK reads the text as the model wrote it', async () => {
    const answers = [
      `Prefix ${KEY.slice(0, 4)}, then ${KEY.slice(0, 10)}-other, ending ${KEY.slice(0, 8)}x`,
      'EMPTY or none: EMPTY',
    ];
    for (const [i, key] of [KEY, 'EMPTY'].entries()) {
      const answer = answers[i] as string;
      const up = await startRawUpstream(track, (_req, res) => {
        openStream(res);
        res.write(one({ role: 'assistant', content: '' }));
        for (const p of pieces(answer, 2)) res.write(one({ content: p }));
        res.end(`${one({}, 'stop')}data: [DONE]\n\n`);
      });
      const gw = await oneRoute(up, {}, key);
      const st = streamText({
        model: createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' }).chat('r'),
        prompt: 'hi',
        maxRetries: 0,
      });
      expect(await st.text).toBe(answer);
    }
  });

  // SPEC §2: the stream commits at its first content delta, even one DeltaMask holds whole; the client has
  // its headers before the upstream decides what the held characters were.
  it('a first content delta held whole still commits: the client has its headers before the rest', async () => {
    const seen = gate();
    const up = await startRawUpstream(track, (_req, res) => {
      openStream(res);
      res.write(one({ role: 'assistant', content: '' }));
      res.write(one({ content: KEY.slice(0, 7) }));
      void seen.wait.then(() => res.end(`${one({ content: 'ect rocks' }, 'stop')}data: [DONE]\n\n`));
    });
    const gw = await oneRoute(up);
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', messages: MSG, stream: true }),
    });
    seen.open();
    expect(await seen.wait).toBe('client');
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-router-provider']).toBe('a');
    const sse = await res.body.text();
    expect(joinedField(sse, 'content')).toBe(`${KEY.slice(0, 7)}ect rocks`);
    expect(sse.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });
});

describe('no channel of a streamed answer spells the key once joined', () => {
  // `logprobs: true`: each content delta carries its token again in `logprobs.content[].token` (and its
  // bytes). A client that joins the tokens (a highlighter, an eval harness) must not get the key back.
  it('logprobs tokens of a stream that spells the key', async () => {
    const answer = `Key: ${KEY} ok`;
    const up = await startRawUpstream(track, (_req, res) => {
      openStream(res);
      res.write(one({ role: 'assistant', content: '' }));
      for (const token of pieces(answer, 3)) {
        const logprobs = {
          content: [{ token, logprob: -0.25, bytes: [...Buffer.from(token)], top_logprobs: [] }],
          refusal: null,
        };
        res.write(frame([{ index: 0, delta: { content: token }, logprobs, finish_reason: null }]));
      }
      res.end(`${one({}, 'stop')}data: [DONE]\n\n`);
    });
    const gw = await oneRoute(up);
    const chunks = await sdkChunks(gw, { logprobs: true });
    let text = '';
    let tokens = '';
    const bytes: number[] = [];
    for (const c of chunks) {
      text += c.choices[0]?.delta.content ?? '';
      for (const lp of c.choices[0]?.logprobs?.content ?? []) {
        tokens += lp.token;
        bytes.push(...(lp.bytes ?? []));
      }
    }
    expect(text).toMatch(/^Key: (s|sk|sk-)?\[REDACTED\] ok$/);
    expect(tokens).not.toContain(KEY);
    expect(Buffer.from(bytes).toString('utf8')).not.toContain(KEY);
  });

  // README: content as a list of parts is content (Mistral's Magistral streams its thinking so).
  it('content as a list of parts (Magistral thinking), the key split across deltas', async () => {
    const answer = `I will use ${KEY} here`;
    const up = await startRawUpstream(track, (_req, res) => {
      openStream(res);
      res.write(one({ role: 'assistant', content: '' }));
      for (const text of pieces(answer, 3))
        res.write(one({ content: [{ type: 'thinking', thinking: [{ type: 'text', text }] }] }));
      res.end(`${one({ content: 'Done.' }, 'stop')}data: [DONE]\n\n`);
    });
    const gw = await oneRoute(up);
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, stream: true });
    expect(r.status).toBe(200);
    let joined = '';
    for (const c of chunksOf(r.text)) {
      const content = dig(c, 'choices', 0, 'delta', 'content');
      if (!Array.isArray(content)) continue;
      for (const part of content as Json[])
        for (const t of (part.thinking ?? []) as Json[]) joined += String(t.text ?? '');
    }
    expect(joined).toContain('I will use ');
    expect(joined).not.toContain(KEY);
  });

  // gpt-4o-audio streams the spoken answer's transcript in `delta.audio.transcript`, a piece a delta.
  it('an audio answer whose transcript spells the key across deltas', async () => {
    const answer = `Your key is ${KEY}.`;
    const up = await startRawUpstream(track, (_req, res) => {
      openStream(res);
      res.write(one({ role: 'assistant', content: null }));
      for (const transcript of pieces(answer, 3)) res.write(one({ audio: { id: 'audio_1', transcript } }));
      res.end(`${one({}, 'stop')}data: [DONE]\n\n`);
    });
    const gw = await oneRoute(up);
    const r = await postTo(`${gw.url}/v1/chat/completions`, {
      model: 'r',
      messages: MSG,
      stream: true,
      modalities: ['text', 'audio'],
      audio: { voice: 'alloy', format: 'pcm16' },
    });
    expect(r.status).toBe(200);
    let transcript = '';
    for (const c of chunksOf(r.text)) {
      const t = dig(c, 'choices', 0, 'delta', 'audio', 'transcript');
      if (typeof t === 'string') transcript += t;
    }
    expect(transcript).toContain('Your key is ');
    expect(transcript).not.toContain(KEY);
  });

  // Claude's thinking becomes reasoning_content, a piece a delta: masked across deltas as text is.
  it('an Anthropic stream whose thinking spells the key: reasoning_content masked, text intact', async () => {
    const claude = track(
      await startMock((req, res) => {
        const key = String(req.headers['x-api-key']);
        openStream(res);
        res.end(
          claudeSse(
            [
              { type: 'thinking', thinking: `Use ${key} now`, signature: 'sig' },
              { type: 'text', text: 'All set.' },
            ],
            'end_turn',
            { input_tokens: 5, output_tokens: 12 },
          ),
        );
      }),
    );
    const { url } = await startAnthropicRoute(track, claude.url, { apiKey: KEY, model: 'claude-x' });
    const r = await postTo(`${url}/v1/chat/completions`, { model: 'r', messages: MSG, stream: true });
    expect(r.status).toBe(200);
    expect(joinedField(r.text, 'reasoning_content')).toMatch(/^Use (s|sk|sk-)?\[REDACTED\] now$/);
    expect(joinedField(r.text, 'content')).toBe('All set.');
    expect(r.text).not.toContain(KEY);
  });
});

describe('held text is never lost nor moved', () => {
  // README: "an answer that stops inside the key ends in [REDACTED]". A server that ends with `[DONE]` and no
  // finish_reason (the gateway takes that as a finished answer) ends the answer just the same.
  it('an answer that stops inside the key, then `[DONE]` with no finish_reason, ends in [REDACTED]', async () => {
    const up = await startRawUpstream(track, (_req, res) => {
      openStream(res);
      res.write(one({ role: 'assistant', content: '' }));
      res.write(one({ content: 'The prefix is ' }));
      res.write(one({ content: KEY.slice(0, 12) }));
      res.end('data: [DONE]\n\n');
    });
    const gw = await oneRoute(up);
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, stream: true });
    expect(r.status).toBe(200);
    expect(r.text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(joinedField(r.text, 'content')).toMatch(/^The prefix is (s|sk|sk-)?\[REDACTED\]$/);
  });

  // Reasoning that ends in a key's first characters is followed by the answer's text: what reasoning held
  // must come out before the text, not after it in the finish chunk (the ai SDK opens a second reasoning
  // part after the text, a UI shows thinking below the answer).
  it('reasoning held at its end comes before the answer text, not after it', async () => {
    const up = await startRawUpstream(track, (_req, res) => {
      openStream(res);
      res.write(one({ role: 'assistant', content: '' }));
      for (const p of ['Thinking of ', KEY.slice(0, 12)]) res.write(one({ reasoning_content: p }));
      for (const p of ['Hel', 'lo.']) res.write(one({ content: p }));
      res.end(`${one({}, 'stop')}data: [DONE]\n\n`);
    });
    const gw = await oneRoute(up);
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, stream: true });
    expect(r.status).toBe(200);
    expect(joinedField(r.text, 'content')).toBe('Hello.');
    expect(joinedField(r.text, 'reasoning_content')).toMatch(/^Thinking of (s|sk|sk-)?\[REDACTED\]$/);
    let textSeen = false;
    const late: unknown[] = [];
    for (const c of chunksOf(r.text)) {
      const delta = dig(c, 'choices', 0, 'delta') as Json | undefined;
      if (textSeen && typeof delta?.reasoning_content === 'string' && delta.reasoning_content !== '')
        late.push(delta.reasoning_content);
      if (typeof delta?.content === 'string' && delta.content !== '') textSeen = true;
    }
    expect(late).toEqual([]);
  });
});

describe("a credential header's scheme word is no secret of its own", () => {
  // `headers: {x-proxy-auth: "Basic …", x-gateway-token: "Bearer …"}`: the credential after the scheme is the
  // secret (masked whole, as the README says); a one-word answer "Basic" or "Bearer" is ordinary text.
  it('one-word answers "Basic" and "Bearer" are relayed as written', async () => {
    const up = track(
      await startMock((req, res) => {
        openStream(res);
        res.write(one({ role: 'assistant', content: '' }));
        const messages = req.body.messages as { content: string }[];
        for (const p of pieces(String(messages.at(-1)?.content), 3)) res.write(one({ content: p }));
        res.end(`${one({}, 'stop')}data: [DONE]\n\n`);
      }),
    );
    const basic = `Basic ${Buffer.from('svc:pa55-SECRET-9999').toString('base64')}`;
    const gw = await oneRoute(up, {
      headers: { 'x-proxy-auth': basic, 'x-gateway-token': 'Bearer gw-SECRET-token-5555' },
    });
    const client = sdk(gw);
    for (const answer of ['Basic', 'Bearer']) {
      const chunks = await collectChunks(
        await client.chat.completions.create({
          model: 'r',
          messages: [{ role: 'user', content: answer }],
          stream: true,
        }),
      );
      expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(answer);
    }
  });
});
