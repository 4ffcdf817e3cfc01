/**
 * Streaming load: opens N concurrent streaming chat completions at once (one connection each) and times,
 * with process.hrtime, the first content chunk (TTFT) and the gap between content chunks as they arrive.
 * Streams are read over raw sockets (`RawStreamConnection` in raw-http.ts): this client shares its core
 * with the simulator, and its own cost per stream start would otherwise be most of what it measures.
 * Run as a child process pinned to the load core; prints one JSON StreamLoadResult on stdout.
 *   node dist-bench/bench/stream-load.js '{"url":"http://127.0.0.1:PORT/v1/chat/completions","body":"...",
 *     "streams":100,"expectedChunks":64,"timeoutMs":30000}'
 */
import { RawStreamConnection } from './raw-http.js';

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
  conn: RawStreamConnection,
  request: Buffer,
  gaps: number[] | undefined,
): Promise<OneStream> {
  const out: OneStream = { chunks: 0, ok: false };
  const t0 = nowMs();
  let last = 0;
  const r = await conn.stream(request, (event, at) => {
    if (!isContent(event)) return;
    if (out.chunks === 0) out.ttftMs = at - t0;
    else gaps?.push(at - last);
    last = at;
    out.chunks++;
  });
  out.status = r.status;
  out.ok = r.ended && r.status === 200;
  return out;
}

export async function runStreamLoad(args: StreamLoadArgs): Promise<StreamLoadResult> {
  const url = new URL(args.url);
  const conns: RawStreamConnection[] = [];
  const connection = (slot: number): RawStreamConnection =>
    (conns[slot] ??= new RawStreamConnection(url, nowMs));
  // Whatever is still open at the deadline is cut: its stream fails and counts as an error.
  const deadline = setTimeout(() => conns.forEach((c) => c.destroy()), args.timeoutMs);
  const request = RawStreamConnection.request(url, args.body);
  const short = RawStreamConnection.request(
    url,
    JSON.stringify({ ...(JSON.parse(args.body) as object), max_tokens: WARMUP_TOKENS }),
  );
  const gaps: number[] = [];
  // Uncounted first: a few short streams in turn (a cold client, connection or code path costs a first
  // stream ~15 ms), then one short stream on each slot's connection at once. The measured streams start
  // on open keep-alive connections, as an SDK client's do: opening 100 connections at once in this process
  // (which shares its core with the simulator) took 15-25 ms of every target's TTFT at 100 streams.
  for (let i = 0; i < WARMUP_STREAMS; i++)
    await oneStream(connection(0), short, undefined).catch(() => delete conns[0]);
  await Promise.all(
    Array.from({ length: args.streams }, (_, i) =>
      oneStream(connection(i), short, undefined).catch(() => delete conns[i]),
    ),
  );
  const started = nowMs();
  const waves = Math.max(1, args.waves ?? 1);
  const settled: PromiseSettledResult<OneStream>[] = [];
  const slot = async (_: unknown, i: number): Promise<void> => {
    for (let w = 0; w < waves; w++) {
      // A failed connection is not reused: the next wave of this slot opens a new one.
      const [r] = await Promise.allSettled([oneStream(connection(i), request, gaps)]);
      if (r!.status === 'rejected') delete conns[i];
      settled.push(r!);
    }
  };
  await Promise.all(Array.from({ length: args.streams }, slot));
  const wallMs = nowMs() - started;
  clearTimeout(deadline);
  conns.forEach((c) => c.destroy());
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
