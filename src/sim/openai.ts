import {
  answerChat,
  contentChars,
  estimateTokens,
  firstArgName,
  header,
  isRecord,
  newId,
  nowS,
  replyJson,
  sendError,
  sseData,
  type ApiError,
  type ChatRenderer,
  type ChatRequest,
  type Dialect,
  type Exchange,
  type ReplyPlan,
  type ToolTarget,
} from './common.js';

const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool', 'function']);
const MODELS = ['gpt-4o-mini', 'gpt-4o', 'text-embedding-3-small'];
const FINISH = { stop: 'stop', length: 'length', tool: 'tool_calls' } as const;

function invalid(message: string, param: string | null = null, code: string | null = null): ApiError {
  return { status: 400, type: 'invalid_request_error', message, param, code };
}

function modelOf(ex: Exchange): string {
  return isRecord(ex.body) && typeof ex.body.model === 'string' ? ex.body.model : 'unknown';
}

function forcedError(ex: Exchange, status: number): ApiError {
  const custom = ex.b.errorMessage;
  const e = (message: string, type: string, code: string | null = null): ApiError => ({
    status,
    message: custom ?? message,
    type,
    param: null,
    code,
  });
  switch (status) {
    case 400:
      return e('Invalid request (simulated).', 'invalid_request_error');
    case 401:
      return e('Incorrect API key provided.', 'invalid_request_error', 'invalid_api_key');
    case 403:
      return e(
        'Country, region, or territory not supported',
        'invalid_request_error',
        'unsupported_country_region_territory',
      );
    case 404:
      return e(
        `The model \`${modelOf(ex)}\` does not exist or you do not have access to it.`,
        'invalid_request_error',
        'model_not_found',
      );
    case 413:
      return e('Request too large.', 'invalid_request_error', 'request_too_large');
    case 429:
      return e(
        `Rate limit reached for requests on ${ex.options.name} (simulated).`,
        'requests',
        'rate_limit_exceeded',
      );
    case 503:
      return e('The server is overloaded or not ready yet.', 'server_error');
    default:
      return status >= 500
        ? e('The server had an error while processing your request. Sorry about that!', 'server_error')
        : e(`Request failed with status ${status} (simulated).`, 'invalid_request_error');
  }
}

function positiveInt(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isInteger(v) && v > 0 ? v : undefined;
}

function toolTarget(body: Record<string, unknown>, messages: unknown[]): ToolTarget | undefined {
  const tools = body.tools;
  if (!Array.isArray(tools) || tools.length === 0) return undefined;
  const last = messages[messages.length - 1];
  if (isRecord(last) && last.role === 'tool') return undefined; // answer the tool result with text
  const choice = body.tool_choice;
  if (choice === 'none') return undefined;
  const wanted = isRecord(choice) && isRecord(choice.function) ? choice.function.name : undefined;
  for (const tool of tools) {
    if (!isRecord(tool) || !isRecord(tool.function) || typeof tool.function.name !== 'string') continue;
    if (wanted !== undefined && tool.function.name !== wanted) continue;
    return { name: tool.function.name, argName: firstArgName(tool.function.parameters) };
  }
  return undefined;
}

export function parseChat(body: unknown): ChatRequest | ApiError {
  if (!isRecord(body)) {
    return invalid('We could not parse the JSON body of your request. The OpenAI API expects a JSON object.');
  }
  if (typeof body.model !== 'string' || body.model === '')
    return invalid('you must provide a model parameter', 'model');
  const { messages } = body;
  if (messages === undefined)
    return invalid("Missing required parameter: 'messages'.", 'messages', 'missing_required_parameter');
  if (!Array.isArray(messages))
    return invalid("Invalid type for 'messages': expected an array.", 'messages', 'invalid_type');
  if (messages.length === 0) {
    return invalid(
      "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
      'messages',
      'empty_array',
    );
  }
  let chars = 0;
  for (let i = 0; i < messages.length; i++) {
    const m: unknown = messages[i];
    const param = `messages[${i}].role`;
    if (!isRecord(m) || typeof m.role !== 'string')
      return invalid(`Missing required parameter: '${param}'.`, param, 'missing_required_parameter');
    if (!ROLES.has(m.role)) {
      return invalid(
        `Invalid value: '${m.role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'.`,
        param,
        'invalid_value',
      );
    }
    chars += contentChars(m.content);
  }
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== 'boolean') {
    return invalid("Invalid type for 'stream': expected a boolean.", 'stream', 'invalid_type');
  }
  const stream = body.stream === true;
  for (const [param, min, max] of INTEGER_FIELDS) {
    const bad = integerOutOfRange(body[param], param, min, max);
    if (bad) return bad;
  }
  return {
    model: body.model,
    stream,
    includeUsage: stream && isRecord(body.stream_options) && body.stream_options.include_usage === true,
    promptTokens: estimateTokens(chars),
    maxTokens: positiveInt(body.max_completion_tokens) ?? positiveInt(body.max_tokens),
    choices: positiveInt(body.n) ?? 1,
    tool: toolTarget(body, messages),
  };
}

/** Integer fields OpenAI bounds, with their least and most values. */
const INTEGER_FIELDS: readonly (readonly [string, number, number])[] = [
  ['n', 1, 128],
  ['max_tokens', 1, Number.MAX_SAFE_INTEGER],
  ['max_completion_tokens', 1, Number.MAX_SAFE_INTEGER],
];

/** OpenAI's 400 for an integer field of another type or out of its range; undefined when it is fine or absent. */
function integerOutOfRange(v: unknown, param: string, min: number, max: number): ApiError | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v))
    return invalid(`Invalid type for '${param}': expected an integer.`, param, 'invalid_type');
  if (v < min)
    return invalid(
      `Invalid '${param}': integer below minimum value. Expected a value >= ${min}, but got ${v} instead.`,
      param,
      'integer_below_min_value',
    );
  if (v > max)
    return invalid(
      `Invalid '${param}': integer above maximum value. Expected a value <= ${max}, but got ${v} instead.`,
      param,
      'integer_above_max_value',
    );
  return undefined;
}

function usageOf(
  chat: ChatRequest,
  plan: ReplyPlan,
): { prompt_tokens: number; completion_tokens: number; total_tokens: number } {
  const completion = plan.chunks.length * chat.choices;
  return {
    prompt_tokens: chat.promptTokens,
    completion_tokens: completion,
    total_tokens: chat.promptTokens + completion,
  };
}

const renderer: ChatRenderer = {
  toolIdPrefix: 'call_',
  json(ex, chat, plan) {
    const message = plan.tool
      ? {
          role: 'assistant',
          content: null,
          tool_calls: [
            {
              id: plan.tool.id,
              type: 'function',
              function: { name: plan.tool.name, arguments: plan.tool.args },
            },
          ],
          refusal: null,
        }
      : { role: 'assistant', content: plan.chunks.join(''), refusal: null };
    return JSON.stringify({
      id: newId('chatcmpl-'),
      object: 'chat.completion',
      created: nowS(),
      model: chat.model,
      choices: Array.from({ length: chat.choices }, (_, index) => ({
        index,
        message,
        logprobs: null,
        finish_reason: FINISH[plan.finish],
      })),
      ...(ex.b.usage ? { usage: usageOf(chat, plan) } : {}),
    });
  },
  stream(ex, chat, plan) {
    const head = {
      id: newId('chatcmpl-'),
      object: 'chat.completion.chunk',
      created: nowS(),
      model: chat.model,
    };
    const withUsage = chat.includeUsage && ex.b.usage;
    // With include_usage every chunk carries `usage: null`, as the real API does.
    // `n` > 1: each step sends one chunk per choice, as OpenAI interleaves them.
    const chunk = (delta: unknown, finish: string | null = null): string => {
      let out = '';
      for (let index = 0; index < chat.choices; index++)
        out += sseData({
          ...head,
          choices: [{ index, delta, logprobs: null, finish_reason: finish }],
          ...(withUsage ? { usage: null } : {}),
        });
      return out;
    };
    const tool = plan.tool;
    const preamble = tool
      ? chunk({
          role: 'assistant',
          content: null,
          tool_calls: [
            { index: 0, id: tool.id, type: 'function', function: { name: tool.name, arguments: '' } },
          ],
        })
      : chunk({ role: 'assistant', content: '' });
    const chunks = plan.chunks.map((piece) =>
      chunk(tool ? { tool_calls: [{ index: 0, function: { arguments: piece } }] } : { content: piece }),
    );
    const outro =
      chunk({}, FINISH[plan.finish]) +
      (withUsage ? sseData({ ...head, choices: [], usage: usageOf(chat, plan) }) : '') +
      'data: [DONE]\n\n';
    const message =
      ex.b.errorMessage ?? 'The server had an error while processing your request. Sorry about that!';
    const error = sseData({ error: { message, type: 'server_error', param: null, code: null } });
    return { preamble, chunks, outro, error };
  },
};

// ---------------------------------------------------------------------------------------------
// Embeddings: deterministic unit vectors from a hash of each input.

type EmbeddingInput = { key: string; tokens: number };

function embeddingInputs(input: unknown): EmbeddingInput[] | undefined {
  const isTokens = (v: unknown): v is number[] =>
    Array.isArray(v) && v.length > 0 && v.every((t) => Number.isInteger(t));
  if (typeof input === 'string')
    return input === '' ? undefined : [{ key: input, tokens: estimateTokens(input.length) }];
  if (!Array.isArray(input) || input.length === 0) return undefined;
  if (isTokens(input)) return [{ key: input.join(','), tokens: input.length }];
  const out: EmbeddingInput[] = [];
  for (const item of input) {
    if (typeof item === 'string' && item !== '') out.push({ key: item, tokens: estimateTokens(item.length) });
    else if (isTokens(item)) out.push({ key: item.join(','), tokens: item.length });
    else return undefined;
  }
  return out;
}

/** FNV-1a seed + xorshift32: cheap, deterministic, well spread. */
function vectorOf(key: string, dims: number): number[] {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  let x = h >>> 0 || 1;
  const v: number[] = new Array<number>(dims);
  let norm = 0;
  for (let d = 0; d < dims; d++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const f = x / 0x80000000 - 1;
    v[d] = f;
    norm += f * f;
  }
  const scale = norm > 0 ? 1 / Math.sqrt(norm) : 0;
  // Round through float32 so float and base64 answers carry the same numbers.
  for (let d = 0; d < dims; d++) v[d] = Math.fround((v[d] ?? 0) * scale);
  return v;
}

function base64Floats(v: readonly number[]): string {
  const buf = Buffer.allocUnsafe(v.length * 4);
  for (let i = 0; i < v.length; i++) buf.writeFloatLE(v[i] ?? 0, i * 4);
  return buf.toString('base64');
}

function embeddings(ex: Exchange): void {
  const body = ex.body;
  if (!isRecord(body))
    return sendError(ex, openaiDialect, invalid('We could not parse the JSON body of your request.'));
  if (typeof body.model !== 'string' || body.model === '')
    return sendError(ex, openaiDialect, invalid('you must provide a model parameter', 'model'));
  if (body.input === undefined)
    return sendError(
      ex,
      openaiDialect,
      invalid("Missing required parameter: 'input'.", 'input', 'missing_required_parameter'),
    );
  const inputs = embeddingInputs(body.input);
  if (!inputs)
    return sendError(
      ex,
      openaiDialect,
      invalid("'$.input' is invalid. Please check the API reference.", 'input'),
    );
  const format = body.encoding_format ?? 'float';
  if (format !== 'float' && format !== 'base64') {
    return sendError(
      ex,
      openaiDialect,
      invalid(
        "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
        'encoding_format',
        'invalid_value',
      ),
    );
  }
  const dims =
    positiveInt(body.dimensions) !== undefined && Number(body.dimensions) <= 4096
      ? Number(body.dimensions)
      : 8;
  let tokens = 0;
  const data = inputs.map((input, index) => {
    tokens += input.tokens;
    const v = vectorOf(input.key, dims);
    return { object: 'embedding', index, embedding: format === 'base64' ? base64Floats(v) : v };
  });
  replyJson(
    ex,
    JSON.stringify({
      object: 'list',
      data,
      model: body.model,
      usage: { prompt_tokens: tokens, total_tokens: tokens },
    }),
  );
}

let modelsBody: string | undefined;

function models(ex: Exchange): void {
  modelsBody ??= JSON.stringify({
    object: 'list',
    data: MODELS.map((id) => ({ id, object: 'model', created: 1_700_000_000, owned_by: 'system' })),
  });
  replyJson(ex, modelsBody);
}

/** GET /v1/models/{id}: the model object; like chat, the simulator serves any model name. */
function model(ex: Exchange, id: string): void {
  let name: string;
  try {
    name = decodeURIComponent(id);
  } catch {
    name = id;
  }
  replyJson(ex, JSON.stringify({ id: name, object: 'model', created: 1_700_000_000, owned_by: 'system' }));
}

export const openaiDialect: Dialect = {
  authorized(ex, apiKey) {
    const auth = header(ex, 'authorization');
    if (auth === undefined) return false;
    const sp = auth.indexOf(' ');
    return sp > 0 && auth.slice(0, sp).toLowerCase() === 'bearer' && auth.slice(sp + 1).trim() === apiKey;
  },
  authError: (ex) => forcedError(ex, 401),
  forcedError,
  errorBody: (e) =>
    JSON.stringify({
      error: {
        message: e.message,
        type: e.type ?? 'invalid_request_error',
        param: e.param ?? null,
        code: e.code ?? null,
      },
    }),
  credential: (ex) => header(ex, 'authorization'),
  async handle(ex) {
    const { method, path } = ex;
    if (method === 'POST' && path === '/v1/chat/completions') {
      const chat = parseChat(ex.body);
      if ('status' in chat) return sendError(ex, openaiDialect, chat);
      return answerChat(ex, chat, renderer);
    }
    if (method === 'POST' && path === '/v1/embeddings') return embeddings(ex);
    if (method === 'GET' && path === '/v1/models') return models(ex);
    if (method === 'GET' && path.startsWith('/v1/models/'))
      return model(ex, path.slice('/v1/models/'.length));
    // Everything else answers a recognisable body, for the gateway's passthrough tests.
    replyJson(ex, JSON.stringify({ object: 'list', data: [], path }));
  },
};
