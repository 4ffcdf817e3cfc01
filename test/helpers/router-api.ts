import { postTo, type Posted } from './gateway.js';

type Json = Record<string, unknown>;

/** A gateway answer as the audit tests read it: postTo's (status, joined headers, text, JSON, time). */
export type RouterRes = Posted;

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
