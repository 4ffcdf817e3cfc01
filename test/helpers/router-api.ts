import { request } from 'undici';
import { postTo } from './gateway.js';

type Json = Record<string, unknown>;

/** A gateway answer as the audit tests read it: status, headers (joined), text, the JSON when it is JSON. */
export interface RouterRes {
  status: number;
  headers: Record<string, string>;
  text: string;
  /** `{}` for a body that is not JSON (a stream). */
  json: Json;
}

/**
 * POSTs `body` as JSON to the gateway's chat path (or `path`) with undici, no key unless `headers` has one;
 * `timeoutMs` bounds headers and body (undici's defaults when left out).
 */
export function postJson(
  gw: { url: string },
  body: Json,
  headers: Record<string, string> = {},
  path = '/v1/chat/completions',
  opts: { timeoutMs?: number } = {},
): Promise<RouterRes> {
  return postTo(`${gw.url}${path}`, body, { headers, timeoutMs: opts.timeoutMs });
}

/** One ranked upstream of `/router/explain`. */
export interface Candidate {
  rank: number;
  upstream: string;
  score: number;
  reason: string;
}

/** `/router/status` upstreams by id. */
export async function upstreamStatus(gw: {
  url: string;
}): Promise<Map<string, Json & { breaker: Json; stats: Json }>> {
  const res = await request(`${gw.url}/router/status`);
  const body = (await res.body.json()) as {
    upstreams: Array<Json & { id: string; breaker: Json; stats: Json }>;
  };
  return new Map(body.upstreams.map((u) => [u.id, u]));
}

/** Retries `check` every `stepMs` until it stops throwing; past `ms` its last error is thrown. */
export async function retryUntil<T>(check: () => T | Promise<T>, ms: number, stepMs: number): Promise<T> {
  const end = performance.now() + ms;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (performance.now() > end) throw err;
      await new Promise<void>((r) => setTimeout(r, stepMs));
    }
  }
}
