/**
 * Request validation at its numeric bounds (SPEC §8: known OpenAI fields with impossible values are refused
 * with a 400 naming the field before any upstream is called; README "Known OpenAI fields"): top_logprobs 0
 * passes and -1 is refused, n 128 passes and 129 is refused, and embeddings take at most 2048 inputs.
 */
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { dig, postTo, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, sendJson, startMock } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hi' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };

const chat = (gw: TestGateway, body: Record<string, unknown> = {}, headers: Record<string, string> = {}) =>
  postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, ...body }, { headers });

/** An OpenAI-style mock answering every chat request, and a gateway with one priority route `r` over it. */
async function chatGateway(): Promise<{ gw: TestGateway; up: Awaited<ReturnType<typeof startMock>> }> {
  const up = track(await startMock((req, res) => answerChat(res, req.body, 'ok')));
  const gw = track(
    await startGateway({
      providers: [simProvider('a', up.url, ['m'], { timeouts: RELAXED })],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
    }),
  );
  return { gw, up };
}

describe('request validation bounds (SPEC §8, README "Known OpenAI fields")', () => {
  // OpenAI takes top_logprobs 0..20: 0 is a possible value (README: values other servers take are left to
  // them), so a request with it reaches the upstream, not a 400.
  it('top_logprobs 0 is a valid value and reaches the upstream; -1 is a 400 naming it', async () => {
    const { gw, up } = await chatGateway();
    const ok = await chat(gw, { logprobs: true, top_logprobs: 0 });
    expect(ok.status, ok.text).toBe(200);
    expect(up.received.at(-1)?.body.top_logprobs).toBe(0);
    const bad = await chat(gw, { logprobs: true, top_logprobs: -1 });
    expect(bad.status).toBe(400);
    expect(dig(bad.json, 'error', 'param')).toBe('top_logprobs');
    expect(up.received).toHaveLength(1);
  });

  // OpenAI's bound on `n` is 128: 129 choices is an impossible value, refused before any upstream is called
  // (SPEC §8).
  it('n 128 passes; n 129 is a 400 naming n, and no upstream is called', async () => {
    const { gw, up } = await chatGateway();
    const bad = await chat(gw, { n: 129 });
    expect(bad.status).toBe(400);
    expect(dig(bad.json, 'error', 'param')).toBe('n');
    expect(up.received).toHaveLength(0);
    const ok = await chat(gw, { n: 128 });
    expect(ok.status, ok.text).toBe(200);
  });
});

describe('embeddings input bound (validate.ts: at most 2048 inputs, as OpenAI)', () => {
  // The 400's own message promises "at most 2048 inputs": the bound at its edge, 2048 accepted and 2049
  // refused.
  it('2048 string inputs reach the upstream; 2049 are a 400 naming input, calling nothing', async () => {
    const up = track(
      await startMock((req, res) => {
        const n = Array.isArray(req.body.input) ? req.body.input.length : 1;
        sendJson(res, 200, {
          object: 'list',
          data: Array.from({ length: n }, (_, i) => ({ object: 'embedding', index: i, embedding: [0.1] })),
          model: String(req.body.model),
          usage: { prompt_tokens: n, total_tokens: n },
        });
      }),
    );
    const gw = track(
      await startGateway({
        providers: [
          simProvider('a', up.url, [{ name: 'e', capabilities: ['embeddings'] }], { timeouts: RELAXED }),
        ],
        routes: { emb: { strategy: 'priority', targets: ['a/e'] } },
      }),
    );
    const inputs = (n: number) => Array.from({ length: n }, (_, i) => `item ${i}`);
    const bad = await postTo(`${gw.url}/v1/embeddings`, { model: 'emb', input: inputs(2049) });
    expect(bad.status, bad.text).toBe(400);
    expect(dig(bad.json, 'error', 'param')).toBe('input');
    expect(up.received).toHaveLength(0);
    const ok = await postTo(`${gw.url}/v1/embeddings`, { model: 'emb', input: inputs(2048) });
    expect(ok.status, ok.text).toBe(200);
    expect(up.received).toHaveLength(1);
  });
});
