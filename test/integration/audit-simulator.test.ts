/**
 * Audit: the upstream simulator as a user runs it on its own — `llm-edge-router simulate ...` through the
 * real CLI (`node dist/main.js`), with real clients (the official `openai` SDK, raw undici for the Anthropic
 * dialect, node:http for keep-alive) pointed at it, and behind the gateway as in the README's demo story.
 *
 * What it is held to:
 * - SPEC §6: "`llm-edge-router simulate --port N [--latency-ms .. --tokens-per-s .. --fail-rate .. --kind
 *   openai|anthropic]` runs the upstream simulator", "a real HTTP server that speaks the OpenAI and Anthropic
 *   APIs (JSON and SSE, usage included) with configurable latency, throughput, error rate, 429s, hangs and
 *   mid-stream drops".
 * - README "The simulator": the same, with `--port 9101 --kind openai --latency-ms 50 --tokens-per-s 100
 *   --fail-rate 0.1` as its example.
 * - `simulate --help` for the flags the README does not spell out (`--status`, `--retry-after`, `--hang`,
 *   `--drop-after`, `--api-key`, `--completion-tokens`, `--chunk-delay-ms`, `--name`).
 * - Where neither says, what a user of "a server that speaks the OpenAI API" plainly expects (each such test
 *   says JUDGEMENT in a comment).
 *
 * The in-process simulator is covered by sim-openai.test.ts / sim-anthropic.test.ts; this file goes through
 * the CLI only. Everything is on 127.0.0.1; every child process is SIGKILLed after its test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { REPO_ROOT, cliWorkDir, startCli } from '../helpers/cli-harness.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { sseEvents } from '../helpers/sim-wire.js';

onlyLoopbackFetch();
const workDir = cliWorkDir('audit-sim');
const track = closeAfterEach();

const STACK = /^\s+at .+\(.*:\d+:\d+\)|^\s+at .+:\d+:\d+$/m;
const FULL_TEXT = 'Hello from sim here: this is a simulated';

// ---------------------------------------------------------------------------------------------------
// Running the CLI

interface SimProc {
  readonly url: string;
  readonly proc: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout(): string;
  stderr(): string;
  alive(): boolean;
  close(): Promise<void>;
}

function spawnCli(args: string[]): {
  proc: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  out: () => string;
  err: () => string;
} {
  const proc = spawn(process.execPath, [join(REPO_ROOT, 'dist/main.js'), ...args], {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH ?? '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  // 'close', not 'exit': at 'exit' the pipes may still hold the last line written before process.exit.
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.on('close', (code, signal) => resolve({ code, signal })),
  );
  return { proc, exited, out: () => out, err: () => err };
}

/** `simulate --port 0 ...args`, resolved once it prints its `{"listening": URL}` line. */
async function sim(...args: string[]): Promise<SimProc> {
  const { proc, exited, out, err } = spawnCli(['simulate', '--port', '0', ...args]);
  const alive = () => proc.exitCode === null && proc.signalCode === null;
  const s: SimProc = {
    url: '',
    proc,
    exited,
    stdout: out,
    stderr: err,
    alive,
    async close() {
      if (alive()) {
        proc.kill('SIGKILL');
        await exited;
      }
    },
  };
  track(s);
  const deadline = Date.now() + 10_000;
  for (;;) {
    const m = /"listening":"(http:\/\/[^"]+)"/.exec(out());
    if (m?.[1] !== undefined) return { ...s, url: m[1] };
    if (!alive()) throw new Error(`simulate ${args.join(' ')} exited before listening: ${err()}`);
    if (Date.now() > deadline)
      throw new Error(`simulate ${args.join(' ')} never listened: ${out()} ${err()}`);
    await sleep(20);
  }
}

/** Runs a CLI invocation that should refuse to start; SIGKILLs it after `ms` if it does not exit. */
async function runExpectingExit(
  args: string[],
  ms = 5_000,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  const { proc, exited, out, err } = spawnCli(args);
  track({
    close: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await exited;
      }
    },
  });
  const timer = setTimeout(() => proc.kill('SIGKILL'), ms);
  const r = await exited;
  clearTimeout(timer);
  return { ...r, stdout: out(), stderr: err() };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function openai(s: SimProc, apiKey = 'sk-test'): OpenAI {
  return new OpenAI({ apiKey, baseURL: `${s.url}/v1`, maxRetries: 0, timeout: 10_000 });
}

const hello: { model: string; messages: OpenAI.ChatCompletionMessageParam[] } = {
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: 'Hello!' }],
};

async function raw(
  url: string,
  body: string | undefined,
  headers: Record<string, string> = { 'content-type': 'application/json' },
  method: 'POST' | 'GET' = 'POST',
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; text: string }> {
  const res = await request(url, { method, headers, body, headersTimeout: 10_000, bodyTimeout: 10_000 });
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
}

const ANTHROPIC_HEADERS = {
  'content-type': 'application/json',
  'anthropic-version': '2023-06-01',
  'x-api-key': 'sk-ant-test',
};

function messagesBody(extra: Record<string, unknown> = {}): string {
  return JSON.stringify({
    model: 'claude-haiku-4-5',
    max_tokens: 100,
    messages: [{ role: 'user', content: 'Hello!' }],
    ...extra,
  });
}

/** Time to the response headers, and to the end of the body. */
async function timed(url: string, body: string): Promise<{ ttfb: number; total: number; status: number }> {
  const t0 = performance.now();
  const res = await request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body,
    headersTimeout: 10_000,
    bodyTimeout: 10_000,
  });
  const ttfb = performance.now() - t0;
  await res.body.text();
  return { ttfb, total: performance.now() - t0, status: res.statusCode };
}

// ---------------------------------------------------------------------------------------------------

describe('simulate CLI: starting, refusing, stopping', () => {
  it('--port 0 takes a free loopback port and prints where it listens (one JSON line on stdout)', async () => {
    // JUDGEMENT: neither SPEC nor README says how the address is reported; the JSON line is what it does,
    // and a user scripting it needs the real port when asking for 0.
    const s = await sim();
    expect(s.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(s.url).not.toMatch(/:0$/);
    const line = JSON.parse(s.stdout().split('\n')[0] ?? '') as Record<string, unknown>;
    expect(line).toMatchObject({ listening: s.url, kind: 'openai' });
    const models = await raw(`${s.url}/v1/models`, undefined, {}, 'GET');
    expect(models.status).toBe(200);
  });

  it('bad flags and values: one clear line on stderr naming the flag, a non-zero exit, no stack trace', async () => {
    const cases: [string[], string][] = [
      [['--fail-rate', '2'], '--fail-rate'],
      [['--fail-rate', '-0.1'], '--fail-rate'],
      [['--fail-rate', 'half'], '--fail-rate'],
      [['--kind', 'foo'], '--kind'],
      [['--port', 'abc'], '--port'],
      [['--port', '70000'], '--port'],
      [['--latency-ms', '-5'], '--latency-ms'],
      [['--tokens-per-s', 'fast'], '--tokens-per-s'],
      [['--status', '200'], '--status'],
      [['--latency-ms'], '--latency-ms'],
      [['--bogus'], '--bogus'],
    ];
    const runs = await Promise.all(cases.map(([a]) => runExpectingExit(['simulate', ...a])));
    runs.forEach((r, i) => {
      const [args, flag] = cases[i]!;
      const what = `simulate ${args.join(' ')}: ${JSON.stringify(r)}`;
      expect(r.signal, what).toBeNull(); // it exited by itself, it was not left listening
      expect(r.code, what).not.toBe(0);
      expect(r.stdout, what).not.toContain('listening');
      expect(r.stderr.trim().split('\n'), what).toHaveLength(1);
      expect(r.stderr, what).toContain(flag);
      expect(r.stderr, what).not.toMatch(STACK);
    });
  });

  it('a port already in use: a one-line error and a non-zero exit, not a stack trace', async () => {
    const first = await sim();
    const port = new URL(first.url).port;
    const r = await runExpectingExit(['simulate', '--port', port]);
    expect(r.signal).toBeNull();
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/EADDRINUSE|in use/i);
    expect(r.stderr).not.toMatch(STACK);
    expect(first.alive()).toBe(true);
  });

  it('SIGTERM exits promptly with code 0, even with a hung request open', async () => {
    // JUDGEMENT: "exits cleanly" read as exit code 0 within a few seconds, no stack on stderr; a hung
    // connection must not keep a simulator alive past SIGTERM.
    const s = await sim('--hang');
    const pending = request(`${s.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...hello, stream: true }),
      headersTimeout: 10_000,
    }).catch((e: unknown) => e);
    await sleep(200);
    s.proc.kill('SIGTERM');
    const r = await Promise.race([s.exited, sleep(5_000).then(() => 'still running' as const)]);
    expect(r).toEqual({ code: 0, signal: null });
    expect(s.stderr()).not.toMatch(STACK);
    await pending;
  });
});

describe('simulate --kind openai (default) through the official openai SDK', () => {
  it('answers chat.completions.create with a well-formed chat.completion and consistent usage', async () => {
    const s = await sim();
    const res = await openai(s).chat.completions.create(hello);
    expect(res.object).toBe('chat.completion');
    expect(res.id).toMatch(/^chatcmpl-/);
    expect(res.model).toBe('gpt-4o-mini');
    expect(typeof res.created).toBe('number');
    expect(res.choices).toHaveLength(1);
    expect(res.choices[0]).toMatchObject({ index: 0, finish_reason: 'stop', message: { role: 'assistant' } });
    expect(res.choices[0]?.message.content).toBe(FULL_TEXT);
    const u = res.usage!;
    expect(u.prompt_tokens).toBeGreaterThan(0);
    expect(u.completion_tokens).toBeGreaterThan(0);
    expect(u.total_tokens).toBe(u.prompt_tokens + u.completion_tokens);
    // prompt_tokens follows the prompt (loosely: a 200-word prompt counts more than "Hello!").
    const big = await openai(s).chat.completions.create({
      ...hello,
      messages: [{ role: 'user', content: 'lorem ipsum '.repeat(100) }],
    });
    expect(big.usage!.prompt_tokens).toBeGreaterThan(u.prompt_tokens + 50);
  });

  it('streams: finalChatCompletion() rebuilds the same answer, and include_usage adds one usage chunk', async () => {
    const s = await sim();
    const client = openai(s);
    const plain = await client.chat.completions.create(hello);

    const runner = client.chat.completions.stream({ ...hello, stream_options: { include_usage: true } });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    runner.on('chunk', (c) => chunks.push(c));
    const final = await runner.finalChatCompletion();
    expect(final.choices[0]?.message.content).toBe(plain.choices[0]?.message.content);
    expect(final.choices[0]?.finish_reason).toBe('stop');
    const withUsage = chunks.filter((c) => c.usage);
    expect(withUsage).toHaveLength(1);
    expect(chunks.at(-1)).toBe(withUsage[0]); // the usage chunk is the last one, with no choices
    expect(withUsage[0]?.choices).toEqual([]);
    const u = withUsage[0]!.usage!;
    expect(u).toEqual(plain.usage);
    expect(u.total_tokens).toBe(u.prompt_tokens + u.completion_tokens);
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);

    // Without include_usage: no usage chunk.
    const again: OpenAI.ChatCompletionChunk[] = [];
    for await (const c of await client.chat.completions.create({ ...hello, stream: true })) again.push(c);
    expect(again.filter((c) => c.usage)).toEqual([]);
    expect(again.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(FULL_TEXT);
  });

  it('max_tokens / max_completion_tokens bound the completion and its usage, finish_reason "length"', async () => {
    const s = await sim();
    const client = openai(s);
    for (const limit of [{ max_tokens: 3 }, { max_completion_tokens: 2 }]) {
      const n = Object.values(limit)[0]!;
      const res = await client.chat.completions.create({ ...hello, ...limit });
      expect(res.choices[0]?.finish_reason).toBe('length');
      expect(res.usage?.completion_tokens).toBe(n);
      expect(res.usage?.total_tokens).toBe(res.usage!.prompt_tokens + n);
      expect(FULL_TEXT.startsWith(res.choices[0]!.message.content!)).toBe(true);
      expect(res.choices[0]!.message.content!.length).toBeLessThan(FULL_TEXT.length);

      const final = await client.chat.completions
        .stream({ ...hello, ...limit, stream_options: { include_usage: true } })
        .finalChatCompletion();
      expect(final.choices[0]?.finish_reason).toBe('length');
      expect(final.choices[0]?.message.content).toBe(res.choices[0]?.message.content);
      expect(final.usage?.completion_tokens).toBe(n);
    }
  });

  it('n: 3 answers three choices, indexed 0..2 (usage counting all of them)', async () => {
    // JUDGEMENT: README/SPEC do not mention `n`, but "speaks the OpenAI API" plainly includes it: the real API
    // returns n choices, and a client that reads choices[1] breaks on one.
    const s = await sim();
    const res = await openai(s).chat.completions.create({ ...hello, n: 3 });
    expect(res.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    for (const c of res.choices) expect(c.message.content).toBeTruthy();
    expect(res.usage?.total_tokens).toBe(res.usage!.prompt_tokens + res.usage!.completion_tokens);
  });

  it('n: 2 with stream: deltas for both choice indexes, each with its finish_reason', async () => {
    // JUDGEMENT: as above, for the streamed form.
    const s = await sim();
    const seen = new Map<number, string | null>();
    const stream = await openai(s).chat.completions.create({ ...hello, n: 2, stream: true });
    for await (const c of stream)
      for (const ch of c.choices) seen.set(ch.index, ch.finish_reason ?? seen.get(ch.index) ?? null);
    expect([...seen.keys()].sort()).toEqual([0, 1]);
    expect([...seen.values()]).toEqual(['stop', 'stop']);
  });

  it('impossible values (max_tokens: -1, n: 0) get OpenAI-shaped 400s, as messages: [] already does', async () => {
    // JUDGEMENT: the simulator copies OpenAI's own 400s for `messages` (type, empty array), so the same for
    // the other fields the real API range-checks. SDK: BadRequestError.
    const s = await sim();
    const client = openai(s);
    for (const bad of [{ max_tokens: -1 }, { n: 0 }]) {
      const err = await client.chat.completions.create({ ...hello, ...bad }).catch((e: unknown) => e);
      expect(err, JSON.stringify(bad)).toBeInstanceOf(OpenAI.BadRequestError);
      expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe(Object.keys(bad)[0]);
    }
  });

  it('GET /v1/models lists models in OpenAI list shape; models.retrieve(id) returns that model', async () => {
    const s = await sim();
    const client = openai(s);
    const ids: string[] = [];
    for await (const m of client.models.list()) {
      expect(m.object).toBe('model');
      ids.push(m.id);
    }
    expect(ids).toContain('gpt-4o-mini');
    // JUDGEMENT: GET /v1/models/{id} is part of the same API; a model object is what the SDK types promise.
    const one = await client.models.retrieve('gpt-4o-mini');
    expect(one).toMatchObject({ id: 'gpt-4o-mini', object: 'model' });
  });

  it('embeddings: one vector per input, deterministic, `dimensions` honoured, usage present', async () => {
    const s = await sim();
    const client = openai(s);
    const a = await client.embeddings.create({
      model: 'text-embedding-3-small',
      input: ['alpha', 'beta gamma'],
    });
    expect(a.object).toBe('list');
    expect(a.data.map((d) => d.index)).toEqual([0, 1]);
    expect(a.data[0]!.embedding.length).toBeGreaterThan(0);
    expect(a.usage.total_tokens).toBeGreaterThan(0);
    const b = await client.embeddings.create({
      model: 'text-embedding-3-small',
      input: ['alpha', 'beta gamma'],
    });
    expect(b.data[0]!.embedding).toEqual(a.data[0]!.embedding);
    const d = await client.embeddings.create({
      model: 'text-embedding-3-small',
      input: 'alpha',
      dimensions: 4,
    });
    expect(d.data[0]!.embedding).toHaveLength(4);
  });

  it('error answers are OpenAI-shaped and map to the SDK error classes (429 + Retry-After, 500, 503, 401)', async () => {
    // The simulators are independent: they start together.
    const [limited, broken, unavailable, keyed] = await Promise.all([
      sim('--status', '429', '--retry-after', '7'),
      sim('--fail-rate', '1'),
      sim('--status', '503'),
      sim('--api-key', 'sk-right'),
    ]);
    const e429 = await openai(limited)
      .chat.completions.create(hello)
      .catch((e: unknown) => e);
    expect(e429).toBeInstanceOf(OpenAI.RateLimitError);
    const rl = e429 as InstanceType<typeof OpenAI.RateLimitError>;
    expect(rl.status).toBe(429);
    expect(rl.headers.get('retry-after')).toBe('7');
    expect(rl.code).toBe('rate_limit_exceeded');

    const e500 = await openai(broken)
      .chat.completions.create(hello)
      .catch((e: unknown) => e);
    expect(e500).toBeInstanceOf(OpenAI.InternalServerError);
    expect((e500 as InstanceType<typeof OpenAI.InternalServerError>).status).toBe(500);
    expect((e500 as InstanceType<typeof OpenAI.InternalServerError>).type).toBe('server_error');
    // A stream request fails the same way, before any event (the SDK's create() rejects).
    const e500s = await openai(broken)
      .chat.completions.create({ ...hello, stream: true })
      .catch((e: unknown) => e);
    expect(e500s).toBeInstanceOf(OpenAI.InternalServerError);

    const e503 = await openai(unavailable)
      .chat.completions.create(hello)
      .catch((e: unknown) => e);
    expect(e503).toBeInstanceOf(OpenAI.InternalServerError);
    expect((e503 as InstanceType<typeof OpenAI.InternalServerError>).status).toBe(503);

    const e401 = await openai(keyed, 'sk-wrong')
      .chat.completions.create(hello)
      .catch((e: unknown) => e);
    expect(e401).toBeInstanceOf(OpenAI.AuthenticationError);
    expect((e401 as InstanceType<typeof OpenAI.AuthenticationError>).code).toBe('invalid_api_key');
    const ok = await openai(keyed, 'sk-right').chat.completions.create(hello);
    expect(ok.choices[0]?.message.content).toBe(FULL_TEXT);
  });

  it('bad bodies get OpenAI-shaped 400s and the server keeps serving', async () => {
    const s = await sim();
    const url = `${s.url}/v1/chat/completions`;
    for (const body of ['{bad', '[]', 'null', '"text"', '', '{"model":"m","messages":"hi"}']) {
      const r = await raw(url, body);
      expect(r.status, body).toBe(400);
      const err = (JSON.parse(r.text) as { error: Record<string, unknown> }).error;
      expect(err.type, body).toBe('invalid_request_error');
      expect(typeof err.message).toBe('string');
      expect(err).toHaveProperty('param');
      expect(err).toHaveProperty('code');
    }
    expect((await openai(s).chat.completions.create(hello)).choices[0]?.message.content).toBe(FULL_TEXT);
    expect(s.alive()).toBe(true);
  });
});

describe('simulate --kind anthropic over raw undici', () => {
  it('answers POST /v1/messages with a Messages API message; max_tokens gives stop_reason "max_tokens"', async () => {
    const s = await sim('--kind', 'anthropic');
    const r = await raw(`${s.url}/v1/messages`, messagesBody(), ANTHROPIC_HEADERS);
    expect(r.status).toBe(200);
    const msg = JSON.parse(r.text) as {
      id: string;
      type: string;
      role: string;
      model: string;
      content: { type: string; text: string }[];
      stop_reason: string;
      usage: { input_tokens: number; output_tokens: number };
    };
    expect(msg).toMatchObject({ type: 'message', role: 'assistant', model: 'claude-haiku-4-5' });
    expect(msg.id).toMatch(/^msg_/);
    expect(msg.content).toEqual([{ type: 'text', text: FULL_TEXT }]);
    expect(msg.stop_reason).toBe('end_turn');
    expect(msg.usage.input_tokens).toBeGreaterThan(0);
    expect(msg.usage.output_tokens).toBeGreaterThan(0);

    const cut = JSON.parse(
      (await raw(`${s.url}/v1/messages`, messagesBody({ max_tokens: 3 }), ANTHROPIC_HEADERS)).text,
    ) as typeof msg;
    expect(cut.stop_reason).toBe('max_tokens');
    expect(cut.usage.output_tokens).toBe(3);
    expect(FULL_TEXT.startsWith(cut.content[0]!.text)).toBe(true);
  });

  it('streams the Messages event sequence with usage and stop_reason, each `event:` naming its data type', async () => {
    const s = await sim('--kind', 'anthropic');
    const r = await raw(`${s.url}/v1/messages`, messagesBody({ stream: true }), ANTHROPIC_HEADERS);
    expect(r.status).toBe(200);
    expect(String(r.headers['content-type'])).toContain('text/event-stream');
    const events = sseEvents(r.text).map((e) => ({
      event: e.event,
      data: JSON.parse(e.data) as Record<string, unknown>,
    }));
    for (const e of events) expect(e.data.type).toBe(e.event);
    const seq = events.map((e) => e.event).filter((t) => t !== 'ping');
    const collapsed = seq.filter(
      (t, i) => !(t === 'content_block_delta' && seq[i - 1] === 'content_block_delta'),
    );
    expect(collapsed).toEqual([
      'message_start',
      'content_block_start',
      'content_block_delta',
      'content_block_stop',
      'message_delta',
      'message_stop',
    ]);
    const start = events[0]!.data as { message: { usage: { input_tokens: number } } };
    expect(start.message.usage.input_tokens).toBeGreaterThan(0);
    const text = events
      .filter((e) => e.event === 'content_block_delta')
      .map((e) => (e.data.delta as { type: string; text: string }).text)
      .join('');
    expect(text).toBe(FULL_TEXT);
    const delta = events.find((e) => e.event === 'message_delta')!.data as {
      delta: { stop_reason: string };
      usage: { output_tokens: number };
    };
    expect(delta.delta.stop_reason).toBe('end_turn');
    expect(delta.usage.output_tokens).toBeGreaterThan(0);

    const cut = await raw(
      `${s.url}/v1/messages`,
      messagesBody({ stream: true, max_tokens: 2 }),
      ANTHROPIC_HEADERS,
    );
    const cutDelta = sseEvents(cut.text).find((e) => e.event === 'message_delta');
    expect(JSON.parse(cutDelta!.data)).toMatchObject({
      delta: { stop_reason: 'max_tokens' },
      usage: { output_tokens: 2 },
    });
  });

  it('anthropic-version is required; with --api-key, x-api-key must match (401 authentication_error)', async () => {
    // The simulators are independent: they start together.
    const [open, keyed] = await Promise.all([
      sim('--kind', 'anthropic'),
      sim('--kind', 'anthropic', '--api-key', 'sk-ant-right'),
    ]);
    const noVersion = await raw(`${open.url}/v1/messages`, messagesBody(), {
      'content-type': 'application/json',
      'x-api-key': 'k',
    });
    expect(noVersion.status).toBe(400);
    expect(JSON.parse(noVersion.text)).toMatchObject({
      type: 'error',
      error: { type: 'invalid_request_error' },
    });

    const wrong = await raw(`${keyed.url}/v1/messages`, messagesBody(), {
      ...ANTHROPIC_HEADERS,
      'x-api-key': 'nope',
    });
    expect(wrong.status).toBe(401);
    expect(JSON.parse(wrong.text)).toMatchObject({ type: 'error', error: { type: 'authentication_error' } });
    const right = await raw(`${keyed.url}/v1/messages`, messagesBody(), {
      ...ANTHROPIC_HEADERS,
      'x-api-key': 'sk-ant-right',
    });
    expect(right.status).toBe(200);
  });

  it('errors are {"type":"error","error":{"type","message"}}: 5xx api_error, 429 rate_limit_error + Retry-After, 529, bad JSON', async () => {
    const shape = (text: string, type: string) => {
      const body = JSON.parse(text) as { type: string; error: { type: string; message: unknown } };
      expect(body.type).toBe('error');
      expect(body.error.type).toBe(type);
      expect(typeof body.error.message).toBe('string');
    };
    // The simulators are independent: they start together.
    const [broken, limited, overloaded, ok] = await Promise.all([
      sim('--kind', 'anthropic', '--fail-rate', '1'),
      sim('--kind', 'anthropic', '--status', '429', '--retry-after', '2'),
      sim('--kind', 'anthropic', '--status', '529'),
      sim('--kind', 'anthropic'),
    ]);
    const e500 = await raw(`${broken.url}/v1/messages`, messagesBody(), ANTHROPIC_HEADERS);
    expect(e500.status).toBeGreaterThanOrEqual(500);
    shape(e500.text, 'api_error');
    const e500s = await raw(`${broken.url}/v1/messages`, messagesBody({ stream: true }), ANTHROPIC_HEADERS);
    expect(e500s.status).toBeGreaterThanOrEqual(500);
    shape(e500s.text, 'api_error');

    const e429 = await raw(`${limited.url}/v1/messages`, messagesBody(), ANTHROPIC_HEADERS);
    expect(e429.status).toBe(429);
    expect(e429.headers['retry-after']).toBe('2');
    shape(e429.text, 'rate_limit_error');

    const e529 = await raw(`${overloaded.url}/v1/messages`, messagesBody(), ANTHROPIC_HEADERS);
    expect(e529.status).toBe(529);
    shape(e529.text, 'overloaded_error');

    for (const body of ['{bad', '[]', 'null', '']) {
      const r = await raw(`${ok.url}/v1/messages`, body, ANTHROPIC_HEADERS);
      expect(r.status, body).toBe(400);
      shape(r.text, 'invalid_request_error');
    }
    const noMax = await raw(
      `${ok.url}/v1/messages`,
      messagesBody({ max_tokens: undefined }),
      ANTHROPIC_HEADERS,
    );
    expect(noMax.status).toBe(400);
    shape(noMax.text, 'invalid_request_error');
    expect(ok.alive()).toBe(true);
  });

  it('--latency-ms and --tokens-per-s pace an Anthropic stream too; --hang holds it', async () => {
    // The simulators are independent: they start together.
    const [s, hung] = await Promise.all([
      sim('--kind', 'anthropic', '--latency-ms', '300', '--tokens-per-s', '40', '--completion-tokens', '24'),
      sim('--kind', 'anthropic', '--hang'),
    ]);
    const t0 = performance.now();
    const res = await request(`${s.url}/v1/messages`, {
      method: 'POST',
      headers: ANTHROPIC_HEADERS,
      body: messagesBody({ stream: true }),
      headersTimeout: 10_000,
      bodyTimeout: 10_000,
    });
    const ttfb = performance.now() - t0;
    const text = await res.body.text();
    const total = performance.now() - t0;
    expect(res.statusCode).toBe(200);
    expect(text).toContain('message_stop');
    expect(ttfb).toBeGreaterThanOrEqual(280);
    expect(total).toBeGreaterThanOrEqual(280 + 400); // + 24 tokens at 40/s ≈ 600 ms, loosely

    const err = await request(`${hung.url}/v1/messages`, {
      method: 'POST',
      headers: ANTHROPIC_HEADERS,
      body: messagesBody({ stream: true }),
      headersTimeout: 800,
    }).catch((e: unknown) => e);
    expect((err as { code?: string }).code).toBe('UND_ERR_HEADERS_TIMEOUT');
  });

  it('--drop-after: the stream is cut before message_stop', async () => {
    const s = await sim('--kind', 'anthropic', '--drop-after', '2');
    const res = await request(`${s.url}/v1/messages`, {
      method: 'POST',
      headers: ANTHROPIC_HEADERS,
      body: messagesBody({ stream: true }),
      headersTimeout: 5_000,
      bodyTimeout: 5_000,
    });
    expect(res.statusCode).toBe(200);
    let text = '';
    const err = await (async () => {
      for await (const c of res.body) text += (c as Buffer).toString();
    })().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error); // the socket was closed mid-body, not a clean end
    expect(text).toContain('message_start');
    expect(text).not.toContain('message_stop');
  });
});

describe('simulate flags: latency, throughput, failure rate, 429s, hangs, drops', () => {
  it('--latency-ms delays the first byte by at least that long (JSON and stream)', async () => {
    // The simulators are independent: they start together.
    const [s, quick] = await Promise.all([sim('--latency-ms', '400'), sim()]);
    const url = `${s.url}/v1/chat/completions`;
    const json = await timed(url, JSON.stringify(hello));
    const stream = await timed(url, JSON.stringify({ ...hello, stream: true }));
    expect(json.status).toBe(200);
    expect(json.ttfb).toBeGreaterThanOrEqual(380); // timers may fire a hair early on a busy box
    expect(stream.ttfb).toBeGreaterThanOrEqual(380);
    // Without the flag, the same request is much quicker (loose: proves the delay is the flag's).
    const q = await timed(`${quick.url}/v1/chat/completions`, JSON.stringify(hello));
    expect(q.ttfb).toBeLessThan(json.ttfb);
  });

  it('--tokens-per-s paces a stream: a longer answer takes proportionally longer', async () => {
    const s = await sim('--tokens-per-s', '40', '--completion-tokens', '24');
    const url = `${s.url}/v1/chat/completions`;
    const long = await timed(url, JSON.stringify({ ...hello, stream: true }));
    const short = await timed(url, JSON.stringify({ ...hello, stream: true, max_tokens: 4 }));
    // 24 tokens at 40/s ≈ 600 ms, 4 tokens ≈ 100 ms. Loose bounds only.
    expect(long.total).toBeGreaterThanOrEqual(400);
    expect(long.total - short.total).toBeGreaterThanOrEqual(250);
  });

  it('--tokens-per-s applies to non-streamed answers too: the JSON arrives after the generation time', async () => {
    // JUDGEMENT: SPEC §6 "configurable ... throughput" with no "streams only"; a real server returns a JSON
    // answer only once it has generated it, and the gateway's latency statistics / the benchmark's JSON rounds
    // would otherwise see a simulated slow model answer instantly.
    const s = await sim('--tokens-per-s', '40', '--completion-tokens', '24');
    const url = `${s.url}/v1/chat/completions`;
    const long = await timed(url, JSON.stringify(hello));
    const short = await timed(url, JSON.stringify({ ...hello, max_tokens: 4 }));
    expect(long.total).toBeGreaterThanOrEqual(400);
    expect(long.total - short.total).toBeGreaterThanOrEqual(250);
  });

  it('--completion-tokens and --name shape the answer; --chunk-delay-ms spaces the chunks', async () => {
    // The simulators are independent: they start together.
    const [s, paced] = await Promise.all([
      sim('--completion-tokens', '30', '--name', 'bob'),
      sim('--chunk-delay-ms', '60'),
    ]);
    const res = await openai(s).chat.completions.create(hello);
    expect(res.usage?.completion_tokens).toBe(30);
    expect(res.choices[0]?.message.content).toMatch(/^Hello from bob here/);

    const t = await timed(`${paced.url}/v1/chat/completions`, JSON.stringify({ ...hello, stream: true }));
    expect(t.total).toBeGreaterThanOrEqual(300); // 8 content chunks × 60 ms, loosely
  });

  it('--fail-rate 1: every request fails with an OpenAI-shaped 500', async () => {
    const s = await sim('--fail-rate', '1');
    const url = `${s.url}/v1/chat/completions`;
    const statuses: number[] = [];
    for (let i = 0; i < 20; i++) {
      const r = await raw(url, JSON.stringify(i % 2 === 0 ? hello : { ...hello, stream: true }));
      statuses.push(r.status);
      expect(JSON.parse(r.text)).toMatchObject({ error: { type: 'server_error' } });
    }
    expect(new Set(statuses)).toEqual(new Set([500]));
  });

  it('--fail-rate 0.5: about half of 100 requests fail (loose bounds), the others answer in full', async () => {
    const s = await sim('--fail-rate', '0.5');
    const url = `${s.url}/v1/chat/completions`;
    let failed = 0;
    for (let i = 0; i < 100; i++) {
      const r = await raw(url, JSON.stringify(hello));
      if (r.status === 200) expect(r.text).toContain(FULL_TEXT);
      else {
        expect(r.status).toBe(500);
        failed++;
      }
    }
    expect(failed).toBeGreaterThanOrEqual(25);
    expect(failed).toBeLessThanOrEqual(75);
  });

  it('--fail-rate 0.5 --status 429: about half the requests get the 429 (or the combination is refused)', async () => {
    // JUDGEMENT: `--status` reads as "the status of the failures"; silently failing every request when the
    // user asked for half is the one outcome a user would not expect. Refusing the combination with a clear
    // error would be fine too.
    const r = spawnCli(['simulate', '--port', '0', '--fail-rate', '0.5', '--status', '429']);
    track({
      close: async () => {
        if (r.proc.exitCode === null && r.proc.signalCode === null) {
          r.proc.kill('SIGKILL');
          await r.exited;
        }
      },
    });
    const deadline = Date.now() + 8_000;
    while (!/"listening":"[^"]+"/.test(r.out()) && r.proc.exitCode === null && Date.now() < deadline)
      await sleep(20);
    if (r.proc.exitCode !== null) {
      expect(r.proc.exitCode).not.toBe(0);
      expect(r.err()).not.toMatch(STACK);
      return;
    }
    const url = /"listening":"([^"]+)"/.exec(r.out())![1]!;
    const counts = new Map<number, number>();
    for (let i = 0; i < 100; i++) {
      const res = await raw(`${url}/v1/chat/completions`, JSON.stringify(hello));
      counts.set(res.status, (counts.get(res.status) ?? 0) + 1);
    }
    expect([...counts.keys()].sort()).toEqual([200, 429]);
    expect(counts.get(429)).toBeGreaterThanOrEqual(25);
    expect(counts.get(429)).toBeLessThanOrEqual(75);
  });

  it('--hang: no response headers ever come (the client has to give up)', async () => {
    const s = await sim('--hang');
    for (const body of [hello, { ...hello, stream: true }]) {
      const err = await request(`${s.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
        headersTimeout: 800,
      }).catch((e: unknown) => e);
      expect((err as { code?: string }).code).toBe('UND_ERR_HEADERS_TIMEOUT');
    }
    expect(s.alive()).toBe(true);
  });

  it('--drop-after: an OpenAI stream is cut mid-way (no finish_reason, no [DONE]); the SDK raises', async () => {
    const s = await sim('--drop-after', '3');
    const got: string[] = [];
    const finish: (string | null)[] = [];
    const err = await (async () => {
      const stream = await openai(s).chat.completions.create({ ...hello, stream: true });
      for await (const c of stream) {
        got.push(c.choices[0]?.delta.content ?? '');
        finish.push(c.choices[0]?.finish_reason ?? null);
      }
    })().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect(got.join('').length).toBeGreaterThan(0);
    expect(got.join('')).not.toBe(FULL_TEXT);
    expect(finish.every((f) => f === null)).toBe(true);
    expect(s.alive()).toBe(true);
  });
});

describe('the simulator as a real server', () => {
  it('answers 50 concurrent requests (JSON and streams) in full', async () => {
    const s = await sim('--latency-ms', '100', '--tokens-per-s', '200');
    const client = openai(s);
    const results = await Promise.all(
      Array.from({ length: 50 }, async (_, i) => {
        if (i % 2 === 0) return (await client.chat.completions.create(hello)).choices[0]?.message.content;
        return (
          await client.chat.completions
            .stream({ ...hello, stream_options: { include_usage: true } })
            .finalChatCompletion()
        ).choices[0]?.message.content;
      }),
    );
    expect(results).toEqual(Array.from({ length: 50 }, () => FULL_TEXT));
  });

  it('keeps connections alive between requests', async () => {
    const s = await sim();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const one = (): Promise<{ reused: boolean; status: number; connection: string | undefined }> =>
        new Promise((resolve, reject) => {
          const req = http.request(
            `${s.url}/v1/chat/completions`,
            { method: 'POST', agent, headers: { 'content-type': 'application/json' }, timeout: 5_000 },
            (res) => {
              res.resume();
              res.on('end', () =>
                resolve({
                  reused: req.reusedSocket,
                  status: res.statusCode ?? 0,
                  connection: res.headers.connection,
                }),
              );
            },
          );
          req.on('error', reject);
          req.on('timeout', () => req.destroy(new Error('timeout')));
          req.end(JSON.stringify(hello));
        });
      const a = await one();
      const b = await one();
      const c = await one();
      expect([a.status, b.status, c.status]).toEqual([200, 200, 200]);
      expect(a.connection).toBe('keep-alive');
      expect([a.reused, b.reused, c.reused]).toEqual([false, true, true]);
    } finally {
      agent.destroy();
    }
  });

  it('clients that disconnect mid-stream do not crash it or stall it', async () => {
    const s = await sim('--tokens-per-s', '20', '--completion-tokens', '200');
    for (let i = 0; i < 10; i++) {
      const ctl = new AbortController();
      const res = await request(`${s.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ ...hello, stream: true }),
        signal: ctl.signal,
        headersTimeout: 5_000,
      });
      expect(res.statusCode).toBe(200);
      const it = res.body[Symbol.asyncIterator]();
      await it.next(); // the first chunk
      ctl.abort();
      await res.body.text().catch(() => undefined);
    }
    await sleep(300); // let the aborted streams' next writes hit closed sockets
    expect(s.alive()).toBe(true);
    const fast = await openai(s).chat.completions.create({ ...hello, max_tokens: 2 });
    expect(fast.choices[0]?.finish_reason).toBe('length');
    expect(s.stderr()).not.toMatch(STACK);
  });
});

describe('two simulators behind the gateway (the README demo story)', () => {
  it('a route over a healthy and a --fail-rate 1 simulator serves every request from the healthy one', async () => {
    // The simulators are independent: they start together.
    const [good, bad] = await Promise.all([sim('--name', 'good'), sim('--name', 'bad', '--fail-rate', '1')]);
    const cfg = join(workDir(), 'gateway.yaml');
    writeFileSync(
      cfg,
      [
        'server: { host: 127.0.0.1, port: 0 }',
        'providers:',
        '  - name: bad',
        '    kind: openai',
        `    base_url: ${bad.url}/v1`,
        '    api_key: sk-bad',
        '    models: [{ name: gpt-4o-mini }]',
        '  - name: good',
        '    kind: openai',
        `    base_url: ${good.url}/v1`,
        '    api_key: sk-good',
        '    models: [{ name: gpt-4o-mini }]',
        'routes:',
        '  demo:',
        '    strategy: round-robin',
        '    targets: [bad/gpt-4o-mini, good/gpt-4o-mini]',
        'routing: { max_attempts: 2 }',
        '',
      ].join('\n'),
    );
    const gw = await startCli(cfg);
    track({ close: () => gw.kill() });
    const client = new OpenAI({ apiKey: 'unused', baseURL: `${gw.url}/v1`, maxRetries: 0, timeout: 10_000 });
    const trails: string[] = [];
    for (let i = 0; i < 12; i++) {
      const { data, response } = await client.chat.completions
        .create({ ...hello, model: 'demo' })
        .withResponse();
      expect(data.choices[0]?.message.content).toMatch(/^Hello from good here/);
      expect(response.headers.get('x-router-provider')).toBe('good');
      trails.push(response.headers.get('x-router-trail') ?? '');
    }
    for (let i = 0; i < 4; i++) {
      const final = await client.chat.completions
        .stream({ ...hello, model: 'demo', stream_options: { include_usage: true } })
        .finalChatCompletion();
      expect(final.choices[0]?.message.content).toMatch(/^Hello from good here/);
    }
    // The broken one was tried (round-robin reached it) and failed over, visibly in the trail.
    expect(trails.some((t) => t.includes('bad/gpt-4o-mini'))).toBe(true);
  });

  it('an Anthropic simulator serves, translated, what a --fail-rate 1 OpenAI simulator cannot', async () => {
    // The simulators are independent: they start together.
    const [claude, bad] = await Promise.all([
      sim('--kind', 'anthropic', '--name', 'claude'),
      sim('--name', 'bad', '--fail-rate', '1'),
    ]);
    const cfg = join(workDir(), 'gateway-anthropic.yaml');
    writeFileSync(
      cfg,
      [
        'server: { host: 127.0.0.1, port: 0 }',
        'providers:',
        '  - name: bad',
        '    kind: openai',
        `    base_url: ${bad.url}/v1`,
        '    api_key: sk-bad',
        '    models: [{ name: gpt-4o-mini }]',
        '  - name: claude',
        '    kind: anthropic',
        `    base_url: ${claude.url}`,
        '    api_key: sk-ant',
        '    models: [{ name: claude-haiku-4-5 }]',
        'routes:',
        '  demo:',
        '    strategy: priority',
        '    targets: [bad/gpt-4o-mini, claude/claude-haiku-4-5]',
        '',
      ].join('\n'),
    );
    const gw = await startCli(cfg);
    track({ close: () => gw.kill() });
    const client = new OpenAI({ apiKey: 'unused', baseURL: `${gw.url}/v1`, maxRetries: 0, timeout: 10_000 });
    const { data, response } = await client.chat.completions
      .create({ ...hello, model: 'demo' })
      .withResponse();
    expect(response.headers.get('x-router-provider')).toBe('claude');
    expect(data.choices[0]?.message.content).toMatch(/^Hello from claude here/);
    expect(data.choices[0]?.finish_reason).toBe('stop');
    expect(data.usage!.total_tokens).toBe(data.usage!.prompt_tokens + data.usage!.completion_tokens);
    const final = await client.chat.completions
      .stream({ ...hello, model: 'demo', stream_options: { include_usage: true } })
      .finalChatCompletion();
    expect(final.choices[0]?.message.content).toBe(data.choices[0]?.message.content);
  });
});
