/**
 * Streaming load: opens N concurrent streaming chat completions at once (one connection each) and times,
 * with process.hrtime, the first content chunk (TTFT) and the gap between content chunks as they arrive.
 * Run as a child process pinned to the load core; prints one JSON StreamLoadResult on stdout.
 *   node dist-bench/bench/stream-load.js '{"url":"http://127.0.0.1:PORT/v1/chat/completions","body":"...",
 *     "streams":100,"expectedChunks":64,"timeoutMs":30000}'
 */
import { setMaxListeners } from 'node:events';
import { Pool } from 'undici';

export interface StreamLoadArgs {
  url: string;
  body: string;
  streams: number;
  /** Streams each slot opens one after another (default 1): more samples at low concurrency. */
  waves?: number;
  /** Content chunks each stream should carry (the simulator's --completion-tokens). */
  expectedChunks: number;
  timeoutMs: number;
}

export interface StreamLoadResult {
  streams: number;
  waves: number;
  completed: number;
  non2xx: number;
  errors: number;
  ttftP50Ms: number;
  ttftP99Ms: number;
  gapP50Ms: number;
  gapP99Ms: number;
  gapMaxMs: number;
  chunksReceived: number;
  /** expectedChunks × streams × waves − content chunks received. */
  chunksLost: number;
  wallMs: number;
}

export function quantile(values: number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = values.slice().sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

export const WARMUP_STREAMS = 3;
const WARMUP_TOKENS = 2;
const nowMs = (): number => Number(process.hrtime.bigint()) / 1e6;
const CONTENT = '"content":"';
const EMPTY_CONTENT = '"content":""';

/** True for an SSE event that carries non-empty text (not the role preamble, finish, usage or [DONE]). */
function isContent(event: string): boolean {
  const at = event.indexOf(CONTENT);
  return at >= 0 && !event.startsWith(EMPTY_CONTENT, at);
}

interface OneStream {
  ttftMs?: number;
  chunks: number;
  ok: boolean;
  status?: number;
}

async function oneStream(
  pool: Pool,
  path: string,
  args: StreamLoadArgs,
  gaps: number[],
  signal: AbortSignal,
): Promise<OneStream> {
  const out: OneStream = { chunks: 0, ok: false };
  const t0 = nowMs();
  const res = await pool.request({
    method: 'POST',
    path,
    headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
    body: args.body,
    signal,
  });
  out.status = res.statusCode;
  if (res.statusCode !== 200) {
    await res.body.dump();
    return out;
  }
  let pending = '';
  let last = 0;
  for await (const chunk of res.body) {
    const at = nowMs();
    pending += (chunk as Buffer).toString('utf8');
    let end: number;
    while ((end = pending.indexOf('\n\n')) >= 0) {
      const event = pending.slice(0, end);
      pending = pending.slice(end + 2);
      if (!isContent(event)) continue;
      if (out.chunks === 0) out.ttftMs = at - t0;
      else gaps.push(at - last);
      last = at;
      out.chunks++;
    }
  }
  out.ok = true;
  return out;
}

export async function runStreamLoad(args: StreamLoadArgs): Promise<StreamLoadResult> {
  const url = new URL(args.url);
  const pool = new Pool(url.origin, {
    connections: args.streams,
    pipelining: 1,
    bodyTimeout: args.timeoutMs,
  });
  const signal = AbortSignal.timeout(args.timeoutMs);
  setMaxListeners(args.streams + 10, signal); // one listener per concurrent stream is expected, not a leak
  const gaps: number[] = [];
  // A few short streams first (uncounted): a cold client, connection or code path costs a first stream ~15 ms.
  const warm = {
    ...args,
    body: JSON.stringify({ ...(JSON.parse(args.body) as object), max_tokens: WARMUP_TOKENS }),
  };
  for (let i = 0; i < WARMUP_STREAMS; i++)
    await oneStream(pool, url.pathname, warm, [], signal).catch(() => undefined);
  const started = nowMs();
  const waves = Math.max(1, args.waves ?? 1);
  const settled: PromiseSettledResult<OneStream>[] = [];
  const slot = async (): Promise<void> => {
    for (let w = 0; w < waves; w++) {
      const [r] = await Promise.allSettled([oneStream(pool, url.pathname, args, gaps, signal)]);
      settled.push(r!);
    }
  };
  await Promise.all(Array.from({ length: args.streams }, slot));
  const wallMs = nowMs() - started;
  await pool.destroy();
  const ttfts: number[] = [];
  let completed = 0;
  let non2xx = 0;
  let errors = 0;
  let received = 0;
  for (const s of settled) {
    if (s.status === 'rejected') {
      errors++;
      continue;
    }
    const r = s.value;
    received += r.chunks;
    if (r.status !== 200) non2xx++;
    else if (r.ok) completed++;
    if (r.ttftMs !== undefined) ttfts.push(r.ttftMs);
  }
  return {
    streams: args.streams,
    waves,
    completed,
    non2xx,
    errors,
    ttftP50Ms: quantile(ttfts, 0.5),
    ttftP99Ms: quantile(ttfts, 0.99),
    gapP50Ms: quantile(gaps, 0.5),
    gapP99Ms: quantile(gaps, 0.99),
    gapMaxMs: quantile(gaps, 1),
    chunksReceived: received,
    chunksLost: Math.max(0, args.expectedChunks * args.streams * waves - received),
    wallMs,
  };
}

if (process.argv[1]?.endsWith('stream-load.js')) {
  const args = JSON.parse(process.argv[2] ?? '{}') as StreamLoadArgs;
  const result = await runStreamLoad(args);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
