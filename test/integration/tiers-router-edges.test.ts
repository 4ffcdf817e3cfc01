/**
 * Tiers and the LLM router as a production user relies on them (SPEC §2 "Tiers and the LLM router", README
 * "Tiers and the LLM router"):
 * - the router model is offered the tiers the route has, so its pick is one the route can serve;
 * - the router sees what the request asks: the end of a long last user message (where people put the
 *   question after what they paste), and requests asking different things are not one cached answer;
 * - the router's answer is read as models really write it: a `<think>` block before the JSON (Qwen3,
 *   DeepSeek-R1 on servers without a reasoning parser), `content` as a list of text parts;
 * - the router call fails over across its tier's upstreams: a hanging one does not keep the healthy one
 *   unused for every tie;
 * - every outcome of a tiered request, errors included, says its tier and why;
 * - a rule pattern that can backtrack exponentially on client text is named at load.
 */
import type { ServerResponse } from 'node:http';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway, type Posted, type TestGateway } from '../helpers/gateway.js';
import { answerChat, fail500, sendJson, startMock, type Received } from '../helpers/mock-upstream.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;
type Mock = Awaited<ReturnType<typeof startMock>>;
type Handler = (req: Received, res: ServerResponse, n: number) => void | Promise<void>;

/** An upstream answering every chat request with "hi from NAME". */
const served = (name: string): Handler => {
  return (req, res) => answerChat(res, req.body, `hi from ${name}`);
};

/** A router upstream answering with `content` (a string, or any JSON the content field may hold). */
function routerAnswer(content: unknown): Handler {
  return (req, res) =>
    sendJson(res, 200, {
      id: 'chatcmpl-r',
      object: 'chat.completion',
      created: 1,
      model: String(req.body.model),
      choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 150, completion_tokens: 12, total_tokens: 162 },
    });
}

async function mock(handler: Handler): Promise<Mock> {
  return track(await startMock(handler));
}

const provider = (name: string, m: Mock): Json => ({
  name,
  kind: 'openai',
  base_url: `${m.url}/v1`,
  models: [{ name: 'm' }],
});

/** A tiered route `auto` over the given providers (each serving model `m`). */
async function gateway(providers: Record<string, Mock>, route: Json, extra: Json = {}): Promise<TestGateway> {
  return track(
    await startGateway({
      providers: Object.entries(providers).map(([name, m]) => provider(name, m)),
      routes: { auto: { strategy: 'priority', ...route } },
      circuit_breaker: { failure_threshold: 50 },
      ...extra,
    }),
  );
}

const ask = (gw: TestGateway, content: unknown, extra: Json = {}): Promise<Posted> =>
  postChat(gw, { model: 'auto', messages: [{ role: 'user', content }], ...extra });

/** All the text of the router request a mock received: its system prompt and its user turn. */
function promptText(r: Received): string {
  const messages = (r.body.messages ?? []) as { content?: unknown }[];
  return messages
    .map((m) => (typeof m.content === 'string' ? m.content : JSON.stringify(m.content)))
    .join('\n');
}

describe('the tiers the LLM router is offered', () => {
  it('a route without a deep tier: a router model that picks the hardest tier it is offered picks one the route has', async () => {
    // As a model would: a hard request gets the hardest tier the prompt offers it.
    const rt = await mock((req, res) => {
      const prompt = promptText(req);
      const hardest = /"deep"/.test(prompt) ? 'deep' : /"balanced"/.test(prompt) ? 'balanced' : 'fast';
      return routerAnswer(JSON.stringify({ tier: hardest, reason: 'multi-step proof' }))(req, res, 0);
    });
    const bal = await mock(served('bal'));
    const gw = await gateway(
      { rt, bal },
      {
        tiers: { fast: ['rt/m'], balanced: ['bal/m'] },
        default_tier: 'fast',
        router: { tier: 'fast', timeout_ms: 1000 },
      },
    );
    const r = await ask(gw, 'Prove that every bounded monotone sequence of reals converges, step by step.');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier'], r.headers['x-router-tier-reason']).toBe('balanced');
    expect(r.headers['x-router-provider']).toBe('bal');
    expect(bal.received).toHaveLength(1);
  });
});

describe('what the LLM router sees of the request', () => {
  // A log pasted first, the ask after it: the way people write long prompts.
  const pasted = Array.from(
    { length: 60 },
    (_, i) => `2024-05-01T10:00:${String(i).padStart(2, '0')} INFO worker ok`,
  ).join('\n');

  it('the question at the end of a long last user message is in the router prompt', async () => {
    const rt = await mock(routerAnswer('{"tier": "deep", "reason": "proof"}'));
    const bal = await mock(served('bal'));
    const deep = await mock(served('deep'));
    const gw = await gateway(
      { rt, bal, deep },
      {
        tiers: { fast: ['rt/m'], balanced: ['bal/m'], deep: ['deep/m'] },
        default_tier: 'balanced',
        router: { tier: 'fast', timeout_ms: 1000 },
      },
    );
    const question = 'QUESTION: prove that this scheduler can never deadlock';
    const r = await ask(gw, `Here is my log:\n${pasted}\n${question}`);
    expect(r.status, r.text).toBe(200);
    expect(rt.received).toHaveLength(1);
    expect(promptText(rt.received[0]!)).toContain(question);
  });

  it('two requests that ask different things after the same pasted text are not one cached router answer', async () => {
    const rt = await mock((req, res) => {
      const deepAsk = promptText(req).includes('prove');
      routerAnswer(JSON.stringify({ tier: deepAsk ? 'deep' : 'fast', reason: 'x' }))(req, res, 0);
    });
    const bal = await mock(served('bal'));
    const deep = await mock(served('deep'));
    const gw = await gateway(
      { rt, bal, deep },
      {
        tiers: { fast: ['rt/m'], balanced: ['bal/m'], deep: ['deep/m'] },
        default_tier: 'balanced',
        router: { tier: 'fast', timeout_ms: 1000, cache_ttl_s: 300 },
      },
    );
    // Same length, same pasted head, different asks.
    const a = await ask(gw, `Here is my log:\n${pasted}\nfix the typo in line 3 please`);
    const b = await ask(gw, `Here is my log:\n${pasted}\nprove it can never deadlock!!`);
    expect(a.status, a.text).toBe(200);
    expect(b.status, b.text).toBe(200);
    const routerCalls = rt.received.filter((q) => promptText(q).includes('route')).length;
    expect(routerCalls, `${a.headers['x-router-tier-reason']} | ${b.headers['x-router-tier-reason']}`).toBe(
      2,
    );
    expect(b.headers['x-router-tier']).toBe('deep');
  });
});

describe('router answers as models write them', () => {
  async function withAnswer(content: unknown): Promise<{ gw: TestGateway; deep: Mock; rt: Mock }> {
    const rt = await mock(routerAnswer(content));
    const bal = await mock(served('bal'));
    const deep = await mock(served('deep'));
    const gw = await gateway(
      { rt, bal, deep },
      {
        tiers: { fast: ['rt/m'], balanced: ['bal/m'], deep: ['deep/m'] },
        default_tier: 'balanced',
        router: { tier: 'fast', timeout_ms: 1000 },
      },
    );
    return { gw, deep, rt };
  }

  it('a <think> block before the JSON answer: the answer after it decides, not a draft inside it', async () => {
    const { gw, deep } = await withAnswer(
      '<think>A greeting would be {"tier": "fast"}. But this asks for a proof by induction, so not fast.</think>\n' +
        '{"tier": "deep", "reason": "proof by induction"}',
    );
    const r = await ask(gw, 'Prove by induction that 1 + 2 + ... + n = n(n+1)/2.');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier'], r.headers['x-router-tier-reason']).toBe('deep');
    expect(deep.received).toHaveLength(1);
  });

  it('`content` as a list of text parts (as Mistral and some compatible servers answer): the pick is read', async () => {
    const { gw, deep } = await withAnswer([
      { type: 'text', text: '{"tier": "deep", "reason": "multi-step math"}' },
    ]);
    const r = await ask(gw, 'Derive the closed form of the Fibonacci sequence.');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier'], r.headers['x-router-tier-reason']).toBe('deep');
    expect(deep.received).toHaveLength(1);
  });
});

describe("the router call's failover across its tier's upstreams", () => {
  it('a router upstream that hangs does not keep the healthy one beside it unused, tie after tie', async () => {
    // Accepts the request and never answers (until the gateway cuts it).
    const hang = await mock(() => new Promise<void>(() => undefined));
    const good = await mock(routerAnswer('{"tier": "deep", "reason": "hard"}'));
    const bal = await mock(served('bal'));
    const deep = await mock(served('deep'));
    const gw = await gateway(
      { hang, good, bal, deep },
      {
        tiers: { fast: ['hang/m', 'good/m'], balanced: ['bal/m'], deep: ['deep/m'] },
        default_tier: 'balanced',
        router: { tier: 'fast', timeout_ms: 500 },
      },
    );
    const tiers: string[] = [];
    for (const q of ['prove lemma one', 'prove lemma two', 'prove lemma three']) {
      const r = await ask(gw, q);
      expect(r.status, r.text).toBe(200);
      tiers.push(`${r.headers['x-router-tier']} (${r.headers['x-router-tier-reason']})`);
    }
    expect(good.received.length, tiers.join(' | ')).toBeGreaterThan(0);
    expect(
      tiers.some((t) => t.startsWith('deep')),
      tiers.join(' | '),
    ).toBe(true);
  });
});

describe('every outcome of a tiered request says its tier', () => {
  it("a 502 after the router's pick failed, and an upstream's 400 relayed: x-router-tier and its reason", async () => {
    const rt = await mock(routerAnswer('{"tier": "deep", "reason": "hard"}'));
    const bal = await mock(served('bal'));
    const deep = await mock((req, res) => {
      if (promptText(req).includes('bad')) {
        sendJson(res, 400, {
          error: { message: 'bad field', type: 'invalid_request_error', param: 'x', code: null },
        });
      } else fail500(res);
    });
    const gw = await gateway(
      { rt, bal, deep },
      {
        tiers: { fast: ['rt/m'], balanced: ['bal/m'], deep: ['deep/m'] },
        default_tier: 'balanced',
        router: { tier: 'fast', timeout_ms: 1000 },
      },
    );
    const failed = await ask(gw, 'prove the theorem');
    expect(failed.status, failed.text).toBe(502);
    expect(failed.headers['x-router-tier']).toBe('deep');
    expect(failed.headers['x-router-tier-reason']).toContain('llm router: hard');
    const refused = await ask(gw, 'a bad request');
    expect(refused.status, refused.text).toBe(400);
    expect(refused.headers['x-router-tier']).toBe('deep');
    expect(refused.headers['x-router-tier-reason']).toContain('llm router: hard');
  });
});

describe('a rule regex on untrusted text', () => {
  it('a pattern that can backtrack exponentially (`^(\\w+\\s?)+$`) is named at load, with its path', () => {
    const cfg = (pattern: string) =>
      JSON.stringify({
        providers: [
          { name: 'fast', base_url: 'http://127.0.0.1:9/v1', models: [{ name: 'm' }] },
          { name: 'bal', base_url: 'http://127.0.0.1:9/v1', models: [{ name: 'm' }] },
        ],
        routes: {
          auto: {
            tiers: { fast: ['fast/m'], balanced: ['bal/m'] },
            rules: [{ if: { last_user_message: pattern }, tier: 'fast' }],
            default_tier: 'balanced',
          },
        },
      });
    // It held the event loop ~0.9 s on a 24-character message ending in "!" (doubling with each character
    // more), and V8's linear-time fallback does not take the case-insensitive flag every rule has.
    const risky = parseConfigText(cfg('^(\\w+\\s?)+$'), {}).warnings.join('\n');
    expect(risky).toMatch(/routes\.auto\.rules\[0\]\.if\.last_user_message: .*backtrack exponentially/);
    expect(parseConfigText(cfg('\\b(prove|derive|theorem)\\b'), {}).warnings.join('\n')).not.toMatch(
      /backtrack/,
    );
  });
});
