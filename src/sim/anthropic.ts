import {
  answerChat,
  contentChars,
  estimateTokens,
  firstArgName,
  header,
  isRecord,
  newId,
  replyJson,
  sendError,
  sseEvent,
  type ApiError,
  type ChatRenderer,
  type ChatRequest,
  type Dialect,
  type Exchange,
  type ToolTarget,
} from './common.js';
import {
  contentError,
  forcedToolError,
  invalid,
  outputConfigError,
  thinkingBudget,
  toolsError,
  undefinedToolsError,
  unknownFieldError,
} from './anthropic-validate.js';

const MODELS = ['claude-sonnet-4-5', 'claude-3-5-haiku-latest'];
const STOP = { stop: 'end_turn', length: 'max_tokens', tool: 'tool_use' } as const;
/** The thinking block a request with `thinking` enabled gets before its answer. */
export const THINKING = {
  thinking: 'Weighing the question (simulated).',
  signature: 'c2ltdWxhdGVk',
} as const;

const ERROR_TYPES = new Map<number, [type: string, message: string]>([
  [400, ['invalid_request_error', 'Invalid request (simulated).']],
  [401, ['authentication_error', 'invalid x-api-key']],
  [402, ['billing_error', 'Your credit balance is too low.']],
  [403, ['permission_error', 'Your API key does not have permission to use the specified resource.']],
  [404, ['not_found_error', 'Not found.']],
  [413, ['request_too_large', 'Request exceeds the maximum allowed number of bytes.']],
  [429, ['rate_limit_error', 'Number of requests has exceeded your rate limit (simulated).']],
  [500, ['api_error', 'Internal server error']],
  [504, ['timeout_error', 'Request timed out']],
  [529, ['overloaded_error', 'Overloaded']],
]);

function forcedError(ex: Exchange, status: number): ApiError {
  const [type, message] = ERROR_TYPES.get(status) ?? [
    status >= 500 ? 'api_error' : 'invalid_request_error',
    `Error ${status} (simulated)`,
  ];
  return { status, type, message: ex.b.errorMessage ?? message };
}

function isToolResult(message: unknown): boolean {
  return (
    isRecord(message) &&
    message.role === 'user' &&
    Array.isArray(message.content) &&
    message.content.some((block) => isRecord(block) && block.type === 'tool_result')
  );
}

function toolTarget(body: Record<string, unknown>, messages: unknown[]): ToolTarget | undefined {
  const tools = body.tools;
  if (!Array.isArray(tools) || tools.length === 0 || isToolResult(messages[messages.length - 1]))
    return undefined;
  const choice = body.tool_choice;
  if (isRecord(choice) && choice.type === 'none') return undefined;
  const wanted = isRecord(choice) && choice.type === 'tool' ? choice.name : undefined;
  for (const tool of tools) {
    if (!isRecord(tool) || typeof tool.name !== 'string') continue;
    if (wanted !== undefined && tool.name !== wanted) continue;
    return { name: tool.name, argName: firstArgName(tool.input_schema) };
  }
  return undefined;
}

/** What the real Messages API rejects, with its messages; the parsed request otherwise. */
export function parseMessages(body: unknown, countOnly = false): ChatRequest | ApiError {
  if (!isRecord(body))
    return invalid(
      'There was an error parsing the body of your request. Please check that the JSON is valid.',
    );
  const extra = unknownFieldError(body);
  if (extra) return extra;
  if (typeof body.model !== 'string' || body.model === '') return invalid('model: Field required');
  const { temperature } = body;
  if (temperature !== undefined) {
    if (typeof temperature !== 'number') return invalid('temperature: Input should be a valid number');
    if (temperature < 0) return invalid('temperature: Input should be greater than or equal to 0');
    if (temperature > 1) return invalid('temperature: Input should be less than or equal to 1');
  }
  const maxTokens = body.max_tokens;
  if (!countOnly) {
    if (maxTokens === undefined) return invalid('max_tokens: Field required');
    if (typeof maxTokens !== 'number' || !Number.isInteger(maxTokens))
      return invalid('max_tokens: Input should be a valid integer');
    if (maxTokens < 1) return invalid('max_tokens: Input should be greater than or equal to 1');
  }
  const { messages } = body;
  if (messages === undefined) return invalid('messages: Field required');
  if (!Array.isArray(messages)) return invalid('messages: Input should be a valid list');
  if (messages.length === 0) return invalid('messages: at least one message is required');
  let chars = contentChars(body.system);
  let previous: unknown;
  for (let i = 0; i < messages.length; i++) {
    const m: unknown = messages[i];
    if (!isRecord(m)) return invalid(`messages.${i}: Input should be a valid dictionary`);
    if (m.role === 'system') {
      return invalid(
        `messages.${i}: Unexpected role "system". The Messages API accepts a top-level \`system\` parameter, not "system" as an input message role.`,
      );
    }
    if (m.role !== 'user' && m.role !== 'assistant')
      return invalid(`messages.${i}.role: Input should be 'user' or 'assistant'`);
    if (i === 0 && m.role !== 'user') return invalid('messages: first message must use the "user" role');
    if (m.role === previous) {
      return invalid(
        `messages: roles must alternate between "user" and "assistant", but found multiple "${m.role}" roles in a row`,
      );
    }
    previous = m.role;
    chars += contentChars(m.content);
  }
  const list = messages as Record<string, unknown>[];
  const bad =
    toolsError(body.tools) ??
    contentError(list) ??
    undefinedToolsError(list, body.tools) ??
    forcedToolError(body);
  if (bad) return bad;
  const config = outputConfigError(body.output_config);
  if (config) return config;
  const thinking = thinkingBudget(body);
  if (typeof thinking === 'object') return thinking;
  return {
    thinking: thinking !== undefined,
    model: body.model,
    stream: body.stream === true,
    includeUsage: true,
    promptTokens: estimateTokens(chars),
    maxTokens: typeof maxTokens === 'number' ? maxTokens : undefined,
    choices: 1,
    tool: toolTarget(body, messages),
  };
}

const renderer: ChatRenderer = {
  toolIdPrefix: 'toolu_',
  json(ex, chat, plan) {
    const content: Record<string, unknown>[] = chat.thinking ? [{ type: 'thinking', ...THINKING }] : [];
    if (plan.tool)
      content.push({
        type: 'tool_use',
        id: plan.tool.id,
        name: plan.tool.name,
        input: JSON.parse(plan.tool.args) as unknown,
      });
    else if (plan.chunks.length > 0) content.push({ type: 'text', text: plan.chunks.join('') });
    return JSON.stringify({
      id: newId('msg_'),
      type: 'message',
      role: 'assistant',
      model: chat.model,
      content,
      stop_reason: STOP[plan.finish],
      stop_sequence: null,
      ...(ex.b.usage
        ? { usage: { input_tokens: chat.promptTokens, output_tokens: plan.chunks.length } }
        : {}),
    });
  },
  stream(ex, chat, plan) {
    const tool = plan.tool;
    // Thinking comes first, whole, with the preamble: the answer's block is the next one.
    const index = chat.thinking ? 1 : 0;
    const thinking = chat.thinking
      ? sseEvent('content_block_start', {
          type: 'content_block_start',
          index: 0,
          content_block: { type: 'thinking', thinking: '', signature: '' },
        }) +
        sseEvent('content_block_delta', {
          type: 'content_block_delta',
          index: 0,
          delta: { type: 'thinking_delta', thinking: THINKING.thinking },
        }) +
        sseEvent('content_block_delta', {
          type: 'content_block_delta',
          index: 0,
          delta: { type: 'signature_delta', signature: THINKING.signature },
        }) +
        sseEvent('content_block_stop', { type: 'content_block_stop', index: 0 })
      : '';
    const preamble =
      sseEvent('message_start', {
        type: 'message_start',
        message: {
          id: newId('msg_'),
          type: 'message',
          role: 'assistant',
          model: chat.model,
          content: [],
          stop_reason: null,
          stop_sequence: null,
          usage: { input_tokens: chat.promptTokens, output_tokens: 1 },
        },
      }) + thinking;
    const blockStart =
      sseEvent('content_block_start', {
        type: 'content_block_start',
        index,
        content_block: tool
          ? { type: 'tool_use', id: tool.id, name: tool.name, input: {} }
          : { type: 'text', text: '' },
      }) + sseEvent('ping', { type: 'ping' });
    // The block start and ping travel with the first delta, so dropAfterChunks 0 cuts right after message_start.
    const chunks = plan.chunks.map(
      (piece, i) =>
        (i === 0 ? blockStart : '') +
        sseEvent('content_block_delta', {
          type: 'content_block_delta',
          index,
          delta: tool
            ? { type: 'input_json_delta', partial_json: piece }
            : { type: 'text_delta', text: piece },
        }),
    );
    const outro =
      (chunks.length === 0 ? blockStart : '') +
      sseEvent('content_block_stop', { type: 'content_block_stop', index }) +
      sseEvent('message_delta', {
        type: 'message_delta',
        delta: { stop_reason: STOP[plan.finish], stop_sequence: null },
        usage: { output_tokens: plan.chunks.length },
      }) +
      sseEvent('message_stop', { type: 'message_stop' });
    const error = sseEvent('error', {
      type: 'error',
      error: { type: 'overloaded_error', message: ex.b.errorMessage ?? 'Overloaded' },
    });
    return { preamble, chunks, outro, error };
  },
};

let modelsBody: string | undefined;

export const anthropicDialect: Dialect = {
  authorized: (ex, apiKey) => header(ex, 'x-api-key') === apiKey,
  authError: (ex) => forcedError(ex, 401),
  forcedError,
  errorBody: (e) =>
    JSON.stringify({ type: 'error', error: { type: e.type ?? 'api_error', message: e.message } }),
  credential(ex) {
    const values = [header(ex, 'x-api-key'), header(ex, 'authorization')].filter((v) => v !== undefined);
    return values.length > 0 ? values.join(' ') : undefined;
  },
  async handle(ex) {
    const { method, path } = ex;
    if (header(ex, 'anthropic-version') === undefined)
      return sendError(ex, anthropicDialect, invalid('anthropic-version: header is required'));
    if (method === 'POST' && (path === '/v1/messages' || path === '/v1/messages/count_tokens')) {
      const countOnly = path !== '/v1/messages';
      const chat = parseMessages(ex.body, countOnly);
      if ('status' in chat) return sendError(ex, anthropicDialect, chat);
      if (countOnly) return replyJson(ex, JSON.stringify({ input_tokens: chat.promptTokens }));
      return answerChat(ex, chat, renderer);
    }
    if (method === 'GET' && path === '/v1/models') {
      modelsBody ??= JSON.stringify({
        data: MODELS.map((id) => ({
          type: 'model',
          id,
          display_name: id,
          created_at: '2025-01-01T00:00:00Z',
        })),
        has_more: false,
        first_id: MODELS[0],
        last_id: MODELS[MODELS.length - 1],
      });
      return replyJson(ex, modelsBody);
    }
    sendError(ex, anthropicDialect, {
      status: 404,
      type: 'not_found_error',
      message: `Not found: ${method} ${path}`,
    });
  },
};
