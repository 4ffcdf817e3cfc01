import type {
  AdapterProvider,
  ChatAdapter,
  ChatBody,
  ChunkSink,
  PreparedRequest,
  StreamTranslator,
  UpstreamErrorInfo,
  Usage,
} from '../adapter.js';

/**
 * The OpenAI dialect (OpenAI itself and every compatible server: vLLM, Ollama, LM Studio, Azure-style
 * proxies). The body passes through untouched but for `model`; answers are relayed as the upstream wrote
 * them — chunks are parsed only to see whether they carry content or usage, never re-serialised.
 */
export const openaiAdapter: ChatAdapter = {
  kind: 'openai',

  chatRequest(body: ChatBody, model: string, provider: AdapterProvider): PreparedRequest {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (provider.apiKey) headers.authorization = `Bearer ${provider.apiKey}`;
    if (provider.headers) Object.assign(headers, provider.headers);
    return { path: '/chat/completions', headers, body: JSON.stringify({ ...body, model }) };
  },

  chatResponse(json: unknown): { body: unknown; usage: Usage | undefined } {
    return { body: json, usage: readUsage(json) };
  },

  streamTranslator(sink: ChunkSink): StreamTranslator {
    return {
      event(_type, data) {
        if (data === '[DONE]') {
          sink.end();
          return;
        }
        let parsed: unknown;
        try {
          parsed = JSON.parse(data);
        } catch {
          return; // non-JSON data events are dropped, never relayed (SPEC §8)
        }
        if (parsed === null || typeof parsed !== 'object') return;
        const obj = parsed as Record<string, unknown>;
        if (obj.error !== undefined && obj.choices === undefined) {
          sink.error(errorFromBody(500, obj));
          return;
        }
        const usage = readUsage(obj);
        if (usage) sink.usage(usage);
        sink.chunk(data, hasContentDelta(obj));
      },
    };
  },

  errorInfo(status: number, bodyText: string): UpstreamErrorInfo {
    let parsed: unknown;
    try {
      parsed = JSON.parse(bodyText);
    } catch {
      parsed = undefined;
    }
    return errorFromBody(status, parsed, bodyText);
  },
};

/** A content delta: text, a tool call or a refusal — the point a stream commits to its upstream. */
function hasContentDelta(chunk: Record<string, unknown>): boolean {
  const choices = chunk.choices;
  if (!Array.isArray(choices)) return false;
  for (const choice of choices) {
    const delta = (choice as { delta?: Record<string, unknown> } | null)?.delta;
    if (!delta) continue;
    if (typeof delta.content === 'string' && delta.content !== '') return true;
    if (typeof delta.refusal === 'string' && delta.refusal !== '') return true;
    if (Array.isArray(delta.tool_calls) && delta.tool_calls.length > 0) return true;
    if (delta.function_call != null) return true;
  }
  return false;
}

function readUsage(json: unknown): Usage | undefined {
  const u = (json as { usage?: unknown } | null)?.usage;
  if (u === null || typeof u !== 'object') return undefined;
  const usage = u as Partial<Usage>;
  if (typeof usage.prompt_tokens !== 'number' || typeof usage.completion_tokens !== 'number') return undefined;
  return usage as Usage;
}

const OPENAI_TYPE_BY_STATUS: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  403: 'permission_error',
  404: 'invalid_request_error',
  409: 'invalid_request_error',
  413: 'invalid_request_error',
  422: 'invalid_request_error',
  429: 'rate_limit_error',
};

/** An OpenAI-shaped error from whatever the upstream sent (`{error:{...}}`, `{error:"..."}`, `{message}`, text). */
export function errorFromBody(status: number, parsed: unknown, rawText?: string): UpstreamErrorInfo {
  const fallbackType = OPENAI_TYPE_BY_STATUS[status] ?? (status >= 500 ? 'server_error' : 'invalid_request_error');
  let message: string | undefined;
  let type: string | undefined;
  let code: string | null = null;
  let param: string | null = null;
  if (parsed !== null && typeof parsed === 'object') {
    const obj = parsed as Record<string, unknown>;
    const err = obj.error;
    if (err !== null && typeof err === 'object') {
      const e = err as Record<string, unknown>;
      if (typeof e.message === 'string') message = e.message;
      if (typeof e.type === 'string') type = e.type;
      if (typeof e.code === 'string') code = e.code;
      else if (typeof e.code === 'number') code = String(e.code);
      if (typeof e.param === 'string') param = e.param;
    } else if (typeof err === 'string') message = err;
    else if (typeof obj.message === 'string') message = obj.message;
    else if (typeof obj.detail === 'string') message = obj.detail;
  }
  if (message === undefined) {
    const text = (rawText ?? '').trim();
    message = text !== '' && text.length <= 500 ? text : `upstream answered HTTP ${status}`;
  }
  return { status, message: message.slice(0, 2000), type: type ?? fallbackType, code, param };
}
