import { isRecord, type ApiError } from './common.js';

/**
 * The Messages API's request rules that a translating gateway can break: unknown fields, tool schemas, content
 * blocks and tool_use/tool_result pairing. Each answers the real API's error message, so a translation slip is a
 * 400 in tests exactly as it would be in production.
 */

export function invalid(message: string): ApiError {
  return { status: 400, type: 'invalid_request_error', message };
}

// An OpenAI-only field leaked by a gateway (stream_options, n, seed, ...) is "Extra inputs are not permitted".
const KNOWN_FIELDS = new Set([
  'model',
  'messages',
  'max_tokens',
  'system',
  'metadata',
  'stop_sequences',
  'stream',
  'temperature',
  'top_p',
  'top_k',
  'tools',
  'tool_choice',
  'thinking',
  'service_tier',
  'container',
  'mcp_servers',
  'context_management',
  'output_config',
]);

const EFFORTS = new Set(['low', 'medium', 'high', 'xhigh', 'max']);

/** `output_config`: the effort level of adaptive thinking (and of the whole answer). */
export function outputConfigError(config: unknown): ApiError | undefined {
  if (config === undefined) return undefined;
  if (!isRecord(config)) return invalid('output_config: Input should be a valid dictionary');
  const effort = config.effort;
  if (effort !== undefined && (typeof effort !== 'string' || !EFFORTS.has(effort)))
    return invalid("output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'");
  return undefined;
}

export function unknownFieldError(body: Record<string, unknown>): ApiError | undefined {
  for (const key of Object.keys(body)) {
    if (!KNOWN_FIELDS.has(key)) return invalid(`${key}: Extra inputs are not permitted`);
  }
  return undefined;
}

const IMAGE_MEDIA_TYPES = new Set(['image/jpeg', 'image/png', 'image/gif', 'image/webp']);
const TOOL_ID = /^[a-zA-Z0-9_-]+$/;
const TOOL_NAME = /^[a-zA-Z0-9_-]{1,128}$/;

export function toolsError(tools: unknown): ApiError | undefined {
  if (tools === undefined) return undefined;
  if (!Array.isArray(tools)) return invalid('tools: Input should be a valid list');
  for (let i = 0; i < tools.length; i++) {
    const tool: unknown = tools[i];
    if (!isRecord(tool)) return invalid(`tools.${i}: Input should be a valid dictionary`);
    // Server tools (web_search_..., bash_...) carry a versioned type and no schema.
    if (tool.type !== undefined && tool.type !== 'custom') continue;
    if (typeof tool.name !== 'string' || !TOOL_NAME.test(tool.name))
      return invalid(`tools.${i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,128}$'`);
    const schema = tool.input_schema;
    if (!isRecord(schema)) return invalid(`tools.${i}.custom.input_schema: Field required`);
    if (schema.type !== 'object')
      return invalid(`tools.${i}.custom.input_schema.type: Input should be 'object'`);
  }
  return undefined;
}

/** One content block; `at` is its path, e.g. `messages.1.content.0`. */
function blockError(block: unknown, at: string): ApiError | undefined {
  if (!isRecord(block)) return invalid(`${at}: Input should be a valid dictionary`);
  switch (block.type) {
    case 'text':
      if (typeof block.text !== 'string') return invalid(`${at}.text.text: Field required`);
      if (block.text === '') return invalid('messages: text content blocks must be non-empty');
      if (block.text.trim() === '')
        return invalid('messages: text content blocks must contain non-whitespace text');
      return undefined;
    case 'image': {
      const source = block.source;
      if (!isRecord(source)) return invalid(`${at}.image.source: Field required`);
      if (source.type === 'url') {
        return typeof source.url === 'string'
          ? undefined
          : invalid(`${at}.image.source.url.url: Field required`);
      }
      if (source.type !== 'base64')
        return invalid(
          `${at}.image.source: Input tag '${String(source.type)}' found using 'type' does not match any of the expected tags: 'base64', 'url'`,
        );
      if (typeof source.media_type !== 'string' || !IMAGE_MEDIA_TYPES.has(source.media_type))
        return invalid(
          `${at}.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'`,
        );
      if (typeof source.data !== 'string' || source.data === '')
        return invalid(`${at}.image.source.base64.data: Field required`);
      return undefined;
    }
    case 'tool_use':
      if (typeof block.id !== 'string' || !TOOL_ID.test(block.id))
        return invalid(`${at}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'`);
      if (typeof block.name !== 'string' || block.name === '')
        return invalid(`${at}.tool_use.name: Field required`);
      if (!isRecord(block.input)) return invalid(`${at}.tool_use.input: Input should be a valid dictionary`);
      return undefined;
    case 'tool_result':
      if (typeof block.tool_use_id !== 'string' || !TOOL_ID.test(block.tool_use_id))
        return invalid(`${at}.tool_result.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'`);
      if (Array.isArray(block.content)) {
        for (let k = 0; k < block.content.length; k++) {
          const inner = blockError(block.content[k], `${at}.tool_result.content.${k}`);
          if (inner) return inner;
        }
      } else if (block.content !== undefined && typeof block.content !== 'string') {
        return invalid(`${at}.tool_result.content: Input should be a valid list`);
      }
      return undefined;
    case 'thinking':
      if (typeof block.signature !== 'string' || block.signature === '')
        return invalid(`${at}.thinking.signature: Field required`);
      return undefined;
    case 'document':
    case 'redacted_thinking':
      return undefined;
    default:
      return invalid(
        `${at}: Input tag '${String(block.type)}' found using 'type' does not match any of the expected tags`,
      );
  }
}

const isThinkingBlock = (b: unknown): boolean =>
  isRecord(b) && (b.type === 'thinking' || b.type === 'redacted_thinking');

/** Where an assistant message may hold thinking: first, and never as its last block. */
function thinkingPlaceError(content: unknown[], i: number): ApiError | undefined {
  if (!content.some(isThinkingBlock)) return undefined;
  const first: unknown = content[0];
  if (!isThinkingBlock(first))
    return invalid(
      `messages.${i}.content.0: If an assistant message contains any thinking blocks, the first block must be thinking or redacted_thinking. Found ${String(isRecord(first) ? first.type : first)}.`,
    );
  if (isThinkingBlock(content.at(-1)))
    return invalid(`messages.${i}: The final block in an assistant message cannot be \`thinking\`.`);
  return undefined;
}

function idsOf(content: unknown, type: 'tool_use' | 'tool_result'): string[] {
  if (!Array.isArray(content)) return [];
  const key = type === 'tool_use' ? 'id' : 'tool_use_id';
  const out: string[] = [];
  for (const b of content) if (isRecord(b) && b.type === type && typeof b[key] === 'string') out.push(b[key]);
  return out;
}

/** A conversation that carries tool_use or tool_result blocks needs `tools` defined, even if none is wanted now. */
export function undefinedToolsError(
  messages: Record<string, unknown>[],
  tools: unknown,
): ApiError | undefined {
  if (Array.isArray(tools) && tools.length > 0) return undefined;
  for (const m of messages) {
    if (idsOf(m.content, 'tool_use').length > 0 || idsOf(m.content, 'tool_result').length > 0)
      return invalid('Requests which include `tool_use` or `tool_result` blocks must define tools.');
  }
  return undefined;
}

/** Content blocks, then the pairing rule: every tool_use answered in the next turn, every tool_result expected. */
export function contentError(messages: Record<string, unknown>[]): ApiError | undefined {
  for (let i = 0; i < messages.length; i++) {
    const { content, role } = messages[i]!;
    const last = i === messages.length - 1;
    if (typeof content === 'string') {
      if (content === '' && !(last && role === 'assistant'))
        return invalid(
          `messages.${i}: all messages must have non-empty content except for the optional final assistant message`,
        );
      continue;
    }
    if (!Array.isArray(content)) return invalid(`messages.${i}.content: Input should be a valid list`);
    if (content.length === 0 && !(last && role === 'assistant'))
      return invalid(
        `messages.${i}: all messages must have non-empty content except for the optional final assistant message`,
      );
    for (let j = 0; j < content.length; j++) {
      const err = blockError(content[j], `messages.${i}.content.${j}`);
      if (err) return err;
    }
    const bad = role === 'assistant' ? thinkingPlaceError(content, i) : undefined;
    if (bad) return bad;
  }
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i]!;
    const expected =
      i > 0 && m.role === 'user' ? new Set(idsOf(messages[i - 1]!.content, 'tool_use')) : new Set();
    const results = m.role === 'user' ? idsOf(m.content, 'tool_result') : [];
    for (const id of results) {
      if (!expected.has(id))
        return invalid(
          `messages.${i}.content: unexpected \`tool_use_id\` found in \`tool_result\` blocks: ${id}. Each \`tool_result\` block must have a corresponding \`tool_use\` block in the previous message.`,
        );
    }
    if (m.role !== 'assistant' || i === messages.length - 1) continue;
    const answered = new Set(idsOf(messages[i + 1]!.content, 'tool_result'));
    const missing = idsOf(m.content, 'tool_use').filter((id) => !answered.has(id));
    if (missing.length > 0)
      return invalid(
        `messages.${i + 1}: \`tool_use\` ids were found without \`tool_result\` blocks immediately after: ${missing.join(', ')}. Each \`tool_use\` block must have a corresponding \`tool_result\` block in the next message.`,
      );
  }
  return undefined;
}

// Claude's version in a model name, Bedrock's and Vertex's too (major × 10 + minor); Fable and Mythos are 5 on.
const CLAUDE_VERSION = /claude-(?:[a-z]+-)?(\d+)(?:-(\d{1,2}))?(?!\d)/;
const ALWAYS_THINKING_FAMILY = /claude-(?:mythos|fable)/;

function claudeVersion(model: unknown): number {
  if (typeof model !== 'string') return 0;
  const v = CLAUDE_VERSION.exec(model);
  return v === null ? 0 : Number(v[1]) * 10 + Number(v[2] ?? 0);
}

/** Claude 5.1 on (Fable 5.1, Opus 5.5) refuse a forced tool; they, Fable and Mythos always think. */
const refusesForcedTool = (model: unknown): boolean => claudeVersion(model) >= 51;
const alwaysThinks = (model: unknown): boolean =>
  refusesForcedTool(model) || (typeof model === 'string' && ALWAYS_THINKING_FAMILY.test(model));
/** Claude 5 on (Opus 5, Sonnet 5) think when `thinking` is left out. */
const thinksByDefault = (model: unknown): boolean => alwaysThinks(model) || claudeVersion(model) >= 50;

/** `tool_choice` any or tool, which Claude 5.1 on answer with a 400 whatever the thinking. */
export function forcedToolError(body: Record<string, unknown>): ApiError | undefined {
  const choice = body.tool_choice;
  if (!refusesForcedTool(body.model) || !isRecord(choice)) return undefined;
  if (choice.type !== 'any' && choice.type !== 'tool') return undefined;
  return invalid(
    `tool_choice: forced tool use (\`${String(choice.type)}\`) is not supported for this model. Use \`auto\` or \`none\`.`,
  );
}

/**
 * Extended thinking and the rules that come with it: the budget when thinking is on (0 for adaptive thinking),
 * undefined when it is off, or the API's error for a request that breaks one. Left out, thinking is adaptive on
 * Claude 5 on; Fable, Mythos and Claude 5.1 on take nothing but adaptive.
 */
export function thinkingBudget(body: Record<string, unknown>): ApiError | number | undefined {
  const t = body.thinking ?? (thinksByDefault(body.model) ? { type: 'adaptive' } : undefined);
  if (t === undefined) return undefined;
  if (!isRecord(t)) return invalid('thinking: Input should be a valid dictionary');
  if (alwaysThinks(body.model) && (t.type === 'disabled' || t.type === 'enabled'))
    return invalid(
      `"thinking.type.${String(t.type)}" is not supported for this model. Use "thinking.type.adaptive" and "output_config.effort" to control thinking behavior.`,
    );
  if (t.type === 'disabled') return undefined;
  let budget = 0; // adaptive: the model decides
  if (t.type === 'enabled') {
    const asked = t.budget_tokens;
    if (typeof asked !== 'number' || !Number.isInteger(asked))
      return invalid('thinking.enabled.budget_tokens: Field required');
    if (asked < 1024)
      return invalid('thinking.enabled.budget_tokens: Input should be greater than or equal to 1024');
    if (typeof body.max_tokens === 'number' && body.max_tokens <= asked)
      return invalid('`max_tokens` must be greater than `thinking.budget_tokens`.');
    budget = asked;
  } else if (t.type !== 'adaptive') {
    return invalid(
      `thinking: Input tag '${String(t.type)}' found using 'type' does not match any of the expected tags: 'adaptive', 'disabled', 'enabled'`,
    );
  }
  if (body.temperature !== undefined && body.temperature !== 1)
    return invalid('`temperature` may only be set to 1 when thinking is enabled.');
  if (typeof body.top_p === 'number' && body.top_p < 0.95)
    return invalid('`top_p` must be greater than or equal to 0.95 or unset when thinking is enabled.');
  if (body.top_k !== undefined) return invalid('`top_k` must be unset when thinking is enabled.');
  const choice = body.tool_choice;
  if (isRecord(choice) && (choice.type === 'any' || choice.type === 'tool'))
    return invalid('Thinking may not be enabled when tool_choice forces tool use.');
  const messages = Array.isArray(body.messages) ? (body.messages as unknown[]) : [];
  const last = messages.at(-1);
  if (isRecord(last) && last.role === 'assistant')
    return invalid(
      'messages: a final `assistant` message (prefill) is not supported when thinking is enabled.',
    );
  // A tool loop is one assistant turn: its first message (after the last user message that is not tool results)
  // must open with thinking; Claude does not think again after each tool result.
  let opening = -1;
  for (let k = messages.length - 1; k >= 0; k--) {
    const m = messages[k];
    if (!isRecord(m)) continue;
    if (m.role === 'assistant') opening = k;
    else if (idsOf(m.content, 'tool_result').length === 0) break;
  }
  const content = opening < 0 ? undefined : (messages[opening] as Record<string, unknown>).content;
  const first: unknown = Array.isArray(content) ? content[0] : undefined;
  const type = isRecord(first) ? first.type : undefined;
  if (opening >= 0 && type !== 'thinking' && type !== 'redacted_thinking')
    return invalid(
      `messages.${opening}.content.0.type: Expected \`thinking\` or \`redacted_thinking\`, but found \`${String(type)}\`. When \`thinking\` is enabled, a final \`assistant\` message must start with a thinking block (preceeding the lastmost set of \`tool_use\` and \`tool_result\` blocks). To avoid this requirement, disable \`thinking\`.`,
    );
  return budget;
}
