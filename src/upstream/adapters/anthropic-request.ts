import { createHash } from 'node:crypto';
import type { AdapterProvider, ChatBody, PreparedRequest } from '../adapter.js';
import { textBlock, textBlocks, userBlocks, type Block, type Role, type Turn } from './anthropic-content.js';
import {
  DEFAULT_THINKING,
  isThinking,
  openLoopAsText,
  positiveInt,
  thinkingAllowed,
  thinkingBlocks,
  thinkingFor,
  withoutThinking,
} from './anthropic-thinking.js';
import {
  allowedTools,
  plainChoice,
  stubTools,
  toolChoice,
  toolDefinitions,
  toolResultBlock,
  ToolIds,
  toolUseBlocks,
  usesTools,
} from './anthropic-tools.js';
import { claudeProfile } from './claude-profile.js';
import {
  asNumber,
  asString,
  isObject,
  providerHeaders,
  stringifyWithRaw,
  type JsonObject,
} from './common.js';

/**
 * OpenAI Chat Completions body -> Anthropic Messages request (`POST /v1/messages`).
 *
 * Choices defended here:
 * - System and developer messages, wherever they stand, are hoisted in order into the top-level `system`
 *   (a string joined by blank lines; an array of text blocks when a part carries `cache_control`).
 * - Anthropic wants alternating turns that open with a user turn and have non-empty content: consecutive
 *   same-role turns are merged, empty ones dropped, and a first assistant turn (or no turn at all) gets a
 *   placeholder user turn "." before it, the convention other gateways use. A final assistant turn is a
 *   prefill Claude continues, except on 4.6 and later, which refuse prefills: there a user turn "Continue."
 *   follows it, as OpenAI answers after such a conversation.
 * - `response_format` json_object / json_schema becomes a system instruction (plus the schema). A forced
 *   tool would enforce the schema but turns the answer into tool arguments, clashes with the client's own
 *   tools and tool_choice, and needs its stream rewritten; an instruction keeps the answer as plain text
 *   content, streams unchanged and works on every model.
 * - A conversation with tool calls in its history but no `tools` now (a closing turn that wants only text)
 *   gets a stub definition per tool name used and `tool_choice: none`: Anthropic rejects tool_use and
 *   tool_result blocks unless tools are defined, and turning the history into prose would lose its pairing.
 * - Assistant `tool_calls` whose `arguments` are not a JSON object are sent with `input: {}`: Anthropic
 *   requires an object, and an invented wrapper key would contradict the tool's schema.
 * - Extended thinking: `reasoning_effort` low / medium / high asks a model that thinks (ClaudeProfile) for
 *   adaptive thinking at that effort (Claude 4.6 on; its text shown, which 4.7 on omit unless asked), or for a
 *   budget of 1024 / 2048 / 4096 tokens (3.7, 4.0 to 4.5), within the client's `max_tokens` (which, as OpenAI
 *   counts it, covers the reasoning), else on top of the provider's default; the client's own `thinking: {type:
 *   "enabled", budget_tokens}` or `{type: "adaptive"}` (as other gateways take it) is sent to any model.
 *   Anthropic's rules win over the wish: no thinking when a tool is forced, when the budget would be under 1024,
 *   after a prefill (a final assistant turn), or when a tool loop under way did not open with its thinking
 *   blocks (`thinking_blocks`, which answers carry and clients may send back). With thinking, `temperature` and
 *   `top_p` are not sent (Anthropic takes neither); the answer's thinking comes back as `reasoning_content`.
 * - Claude 5 on think when `thinking` is left out: without `reasoning_effort` they keep that default (with room
 *   in the default `max_tokens`, and the thinking blocks sent back), and "no thinking" (`none`, a forced tool, the
 *   rules above) is said as `thinking: {type: "disabled"}`. Fable, Mythos and Claude 5.1 on (Opus 5.5) always
 *   think (`disabled` is a 400): their thinking is never turned off (a tool loop under way without its thinking
 *   blocks goes as text: openLoopAsText), and a forced tool, which 5.1 on refuse, is asked for as `auto`.
 * - `temperature` is clamped to Anthropic's [0, 1]; `top_p` is sent only without `temperature`, since
 *   recent Claude models reject the two together; neither goes to Claude 4.7 and later (ClaudeProfile).
 * - Tool call ids are made Anthropic's: characters it refuses replaced, and an id an earlier round already
 *   used (providers that number calls per answer, `call_0` every round) renamed, its results following it;
 *   Anthropic refuses a conversation with two tool_use blocks of one id.
 * - `tool_choice` `required` and Mistral's `any` are `any`; `allowed_tools` sends only the tools it allows
 *   (`any` when its mode is required). `user` is `metadata.user_id`, hashed when past Anthropic's 256 characters.
 * - Fields Anthropic does not know are dropped (it rejects unknown fields); odd input never throws:
 *   malformed messages and parts are skipped. What it has no place for at all (legacy `functions`, audio,
 *   a file by id) keeps Anthropic upstreams out of the request's candidates (routing/features.ts).
 */

/** The placeholder user turn Anthropic needs before a leading assistant turn. */
export const PLACEHOLDER_USER_TEXT = '.';

/** The user turn after a final assistant turn, for models that take no prefill. */
export const CONTINUE_USER_TEXT = 'Continue.';

const JSON_OBJECT_INSTRUCTION =
  'Respond with one valid JSON object only: no text before or after it and no Markdown code fences.';

/** The client's own last message is the assistant's: a prefill, as the README says. */
function endsWithAssistant(messages: readonly unknown[]): boolean {
  const last = messages.at(-1);
  return typeof last === 'object' && last !== null && (last as { role?: unknown }).role === 'assistant';
}

export function buildAnthropicRequest(
  body: ChatBody,
  model: string,
  provider: AdapterProvider,
): PreparedRequest {
  const system: Block[] = [];
  const turns: Turn[] = [];
  const messages: unknown[] = Array.isArray(body.messages) ? body.messages : [];
  const claude = claudeProfile(model);
  const explicitMax = positiveInt(body.max_completion_tokens) ?? positiveInt(body.max_tokens);
  const ids = new ToolIds();
  for (const message of messages) addMessage(message, system, turns, ids);
  if (turns.at(-1)?.role === 'assistant') {
    if (!endsWithAssistant(messages)) {
      // The client's last message went to `system` (an agent's reminder) or to nothing (blank text): it asks
      // for a new answer, which Claude would write as the continuation of the last one without a user turn.
      turns.push({ role: 'user', content: [{ type: 'text', text: PLACEHOLDER_USER_TEXT }] });
    } else if (!claude.takesPrefill) {
      // A conversation that ends with the assistant is a prefill to Claude, which 4.6 on refuse (a 400); to
      // OpenAI it is history the next answer follows, which a closing user turn says.
      turns.push({ role: 'user', content: [{ type: 'text', text: CONTINUE_USER_TEXT }] });
    }
  }
  // Decided on the turns as sent: Anthropic's rules are about its merged turns, not the client's messages.
  let thinking = thinkingFor(body, explicitMax, claude);
  if (claude.alwaysThinks) {
    thinking ??= DEFAULT_THINKING;
    if (!thinkingAllowed(turns)) openLoopAsText(turns);
  } else if (thinking !== undefined && !thinkingAllowed(turns)) thinking = undefined;
  if (thinking === undefined) withoutThinking(turns);
  finishTurns(turns);

  const instruction = responseFormatInstruction(body.response_format);
  if (instruction !== undefined) system.push({ type: 'text', text: instruction });

  const out: JsonObject = { model };
  if (system.length > 0) out.system = systemValue(system);
  out.messages = turns;
  out.max_tokens = explicitMax ?? provider.defaultMaxTokens + (thinking?.room ?? 0);
  if (thinking?.thinking !== undefined) {
    out.thinking = thinking.thinking;
    if (thinking.effort !== undefined) out.output_config = { effort: thinking.effort };
  } else if (thinking === undefined && claude.thinksByDefault) {
    // Leaving `thinking` out would turn it on: Opus 5 and Sonnet 5 think unless told not to.
    out.thinking = { type: 'disabled' };
  }

  // Anthropic rejects sampling changes while thinking, and Claude 4.7 on at all.
  const sampling = thinking === undefined && claude.takesSampling;
  const temperature = sampling ? asNumber(body.temperature) : undefined;
  const topP = sampling ? asNumber(body.top_p) : undefined;
  if (temperature !== undefined) out.temperature = Math.min(Math.max(temperature, 0), 1);
  else if (topP !== undefined) out.top_p = topP;
  // No OpenAI field, but Claude's own: clients written for Claude (and LangChain's settings) send it.
  const topK = sampling ? asNumber(body.top_k) : undefined;
  if (topK !== undefined) out.top_k = topK;

  const stop = stopSequences(body.stop);
  if (stop.length > 0) out.stop_sequences = stop;
  if (body.stream === true) out.stream = true;

  // `user`, else `safety_identifier` (OpenAI's newer field for the same purpose): either names the end user.
  const user = asString(body.user) || asString(body.safety_identifier);
  if (user) out.metadata = { user_id: userId(user) };

  const allowed = allowedTools(body.tool_choice);
  const tools = toolDefinitions(body.tools, allowed?.names);
  if (tools.length > 0) {
    out.tools = tools;
    const choice = toolChoice(
      plainChoice(body.tool_choice, allowed),
      body.parallel_tool_calls === false,
      claude.takesForcedTool,
    );
    if (choice !== undefined) out.tool_choice = choice;
  } else if (usesTools(turns)) {
    out.tools = stubTools(turns);
    out.tool_choice = { type: 'none' };
  }

  return {
    path: '/v1/messages',
    headers: anthropicHeaders(provider),
    body: Buffer.from(stringifyWithRaw(out)),
  };
}

const HEADERS = new WeakMap<AdapterProvider, Readonly<Record<string, string>>>();

/** The provider's request headers: `x-api-key` and `anthropic-version`. */
function anthropicHeaders(provider: AdapterProvider): Record<string, string> {
  return providerHeaders(HEADERS, provider, apiKeyAndVersion);
}

function apiKeyAndVersion(provider: AdapterProvider, into: Record<string, string>): void {
  if (provider.apiKey) into['x-api-key'] = provider.apiKey;
  into['anthropic-version'] = provider.anthropicVersion;
}

function addMessage(message: unknown, system: Block[], turns: Turn[], ids: ToolIds): void {
  if (!isObject(message)) return;
  switch (message.role) {
    case 'system':
    case 'developer':
      appendAll(system, textBlocks(message.content));
      return;
    case 'user':
      pushTurn(turns, 'user', userBlocks(message.content));
      return;
    case 'assistant':
      addAssistant(message, turns, ids);
      return;
    case 'tool':
      pushTurn(turns, 'user', [toolResultBlock(message, ids)]);
      return;
    default:
      return;
  }
}

/**
 * An assistant message, its thinking first. Anthropic refuses a message whose thinking is not at its start
 * or is all it has ("the final block cannot be thinking": an answer cut after its thinking), so thinking alone
 * is dropped, and thinking merged into the assistant turn before goes ahead of that turn's other blocks.
 */
function addAssistant(message: JsonObject, turns: Turn[], ids: ToolIds): void {
  const text = textBlocks(message.content);
  // A refusal OpenAI answered with (`content: null, refusal`) is what the assistant said.
  const refusal = text.length === 0 ? textBlock(asString(message.refusal) ?? '') : undefined;
  if (refusal !== undefined) text.push(refusal);
  const blocks = [...text, ...toolUseBlocks(message.tool_calls, ids)];
  if (blocks.length === 0) return;
  const thinking = thinkingBlocks(message.thinking_blocks);
  const last = turns.at(-1);
  if (last?.role !== 'assistant') {
    turns.push({ role: 'assistant', content: [...thinking, ...blocks] });
    return;
  }
  // Every assistant turn holds a block that is not thinking: the index is found.
  if (thinking.length > 0) {
    const rest = last.content.splice(last.content.findIndex((b) => !isThinking(b)));
    appendAll(last.content, thinking);
    appendAll(last.content, rest);
  }
  appendAll(last.content, blocks);
}

/** `into.push(...items)` without the spread: a call's arguments live on the stack (200,000 parts overflowed it). */
function appendAll<T>(into: T[], items: readonly T[]): void {
  for (const item of items) into.push(item);
}

function pushTurn(turns: Turn[], role: Role, blocks: Block[]): void {
  if (blocks.length === 0) return;
  const last = turns.at(-1);
  if (last !== undefined && last.role === role) appendAll(last.content, blocks);
  else turns.push({ role, content: blocks });
}

function finishTurns(turns: Turn[]): void {
  for (const t of turns) if (t.role === 'user') resultsFirst(t.content);
  const last = turns.at(-1);
  // A final (prefill) assistant turn must not end with whitespace: Anthropic rejects it.
  if (last !== undefined && last.role === 'assistant') {
    const block = last.content.at(-1);
    if (block !== undefined && block.type === 'text' && typeof block.text === 'string') {
      const trimmed = block.text.trimEnd();
      if (trimmed === '') last.content.pop();
      else block.text = trimmed;
      if (last.content.length === 0) turns.pop();
    }
  }
  if (turns[0]?.role !== 'user') {
    turns.unshift({ role: 'user', content: [{ type: 'text', text: PLACEHOLDER_USER_TEXT }] });
  }
}

/**
 * A user turn's tool results ahead of its other blocks, each kind in its order: Anthropic refuses a turn after
 * tool calls that does not open with their results (a result without an id, sent as text, may come first).
 */
function resultsFirst(content: Block[]): void {
  let other = false;
  let late = false;
  for (const b of content) {
    if (b.type !== 'tool_result') other = true;
    else if (other) late = true;
  }
  if (!late) return;
  const results = content.filter((b) => b.type === 'tool_result');
  const rest = content.filter((b) => b.type !== 'tool_result');
  content.length = 0;
  appendAll(content, results);
  appendAll(content, rest);
}

function systemValue(blocks: Block[]): string | Block[] {
  if (blocks.some((b) => b.cache_control !== undefined)) return blocks;
  return blocks.map((b) => b.text).join('\n\n');
}

function stopSequences(stop: unknown): string[] {
  const list = typeof stop === 'string' ? [stop] : Array.isArray(stop) ? stop : [];
  // Anthropic rejects whitespace-only stop sequences.
  return list.filter((s): s is string => typeof s === 'string' && s.trim() !== '');
}

/** Anthropic's `metadata.user_id` takes 256 characters: a longer id is sent as its hash (stable, still unique). */
function userId(user: string): string {
  return user.length <= 256 ? user : createHash('sha256').update(user).digest('hex');
}

function responseFormatInstruction(format: unknown): string | undefined {
  if (!isObject(format)) return undefined;
  if (format.type === 'json_object') return JSON_OBJECT_INSTRUCTION;
  if (format.type !== 'json_schema') return undefined;
  const spec = isObject(format.json_schema) ? format.json_schema : {};
  if (!isObject(spec.schema)) return JSON_OBJECT_INSTRUCTION;
  const name = asString(spec.name);
  const label = name ? ` "${name}"` : '';
  return `${JSON_OBJECT_INSTRUCTION} It must conform to this JSON Schema${label}:\n${JSON.stringify(spec.schema)}`;
}
