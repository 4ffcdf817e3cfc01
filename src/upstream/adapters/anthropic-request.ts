import { createHash } from 'node:crypto';
import type { AdapterProvider, ChatBody, PreparedRequest } from '../adapter.js';
import { asNumber, asString, isObject, providerHeaders, type JsonObject } from './common.js';

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
 *   think (`disabled` is a 400): their thinking is never turned off, and a forced tool, which 5.1 on refuse, is
 *   asked for as `auto`.
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

type Block = JsonObject;
type Role = 'user' | 'assistant';

interface Turn {
  role: Role;
  content: Block[];
}

/** The placeholder user turn Anthropic needs before a leading assistant turn. */
export const PLACEHOLDER_USER_TEXT = '.';

/** The user turn after a final assistant turn, for models that take no prefill. */
export const CONTINUE_USER_TEXT = 'Continue.';

const JSON_OBJECT_INSTRUCTION =
  'Respond with one valid JSON object only: no text before or after it and no Markdown code fences.';

// Anthropic accepts tool ids matching ^[a-zA-Z0-9_-]+$; ids minted by other providers may not.
const INVALID_TOOL_ID_CHARS = /[^a-zA-Z0-9_-]/g;

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
  if (turns.at(-1)?.role === 'assistant' && !claude.takesPrefill) {
    // A conversation that ends with the assistant is a prefill to Claude, which 4.6 on refuse (a 400); to
    // OpenAI it is history the next answer follows, which a closing user turn says.
    turns.push({ role: 'user', content: [{ type: 'text', text: CONTINUE_USER_TEXT }] });
  }
  // Decided on the turns as sent: Anthropic's rules are about its merged turns, not the client's messages.
  let thinking = thinkingFor(body, explicitMax, claude);
  if (claude.alwaysThinks) thinking ??= DEFAULT_THINKING;
  else if (thinking !== undefined && !thinkingAllowed(turns)) thinking = undefined;
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

  const stop = stopSequences(body.stop);
  if (stop.length > 0) out.stop_sequences = stop;
  if (body.stream === true) out.stream = true;

  // `safety_identifier` supersedes `user` for the same purpose (OpenAI): either names the end user.
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
    body: JSON.stringify(out),
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

/** Anthropic's smallest thinking budget; also the least room left for thinking of any kind. */
const MIN_THINKING_BUDGET = 1024;

/**
 * What a Claude model takes, read from its name once (names carry the version as `claude-<family>-4-5`,
 * `claude-3-7-<family>`, or a date for x.0, `claude-sonnet-4-20250514`; Bedrock's and Vertex's ids too).
 * A name that carries no Claude version gets the oldest rules: no thinking from `reasoning_effort`, prefill,
 * sampling and forced tools sent as asked.
 */
interface ClaudeProfile {
  /**
   * How it takes extended thinking: with a token budget (3.7, 4.0 to 4.5), or adaptive, the model deciding how
   * much to think at an `output_config.effort` (4.6 on, Mythos, Fable: 4.7 on take nothing else, and 4.6 has the
   * budget form deprecated). Older models answer any `thinking` with a 400.
   */
  readonly thinking: 'budget' | 'adaptive' | undefined;
  /** Thinks when `thinking` is left out: Claude 5 on (Opus 5, Sonnet 5), Mythos and Fable. */
  readonly thinksByDefault: boolean;
  /** Thinks whatever is asked: Fable, Mythos and Claude 5.1 on (Opus 5.5) answer `disabled` with a 400. */
  readonly alwaysThinks: boolean;
  /** Omits the thinking's text unless asked, and takes the `xhigh` effort: Claude 4.7 on. */
  readonly from47: boolean;
  /** Continues a final assistant turn (a prefill): Claude 4.6 on answer it with a 400. */
  readonly takesPrefill: boolean;
  /**
   * Takes `temperature` and `top_p`: Claude 4.7 on (and Mythos, Fable) removed the sampling parameters and answer
   * any non-default value with a 400, so the client's are left out, as other gateways do.
   */
  readonly takesSampling: boolean;
  /** Takes a forced tool (`tool_choice` any or tool): Claude 5.1 on (Fable 5.1, Opus 5.5) answer it with a 400. */
  readonly takesForcedTool: boolean;
}

const CLAUDE_VERSION = /claude-(?:[a-z]+-)?(\d+)(?:-(\d{1,2}))?(?!\d)/;
const LATER_FAMILY = /claude-(?:mythos|fable)/;
/** Profiles by model name: the names are the configuration's, so few; bounded all the same. */
const PROFILES = new Map<string, ClaudeProfile>();

/** Fable, Mythos and Claude 5.1 on: they think whatever they are asked (the LLM router gives them room). */
export function claudeAlwaysThinks(model: string): boolean {
  return claudeProfile(model).alwaysThinks;
}

function claudeProfile(model: string): ClaudeProfile {
  let profile = PROFILES.get(model);
  if (profile === undefined) {
    profile = readProfile(model);
    if (PROFILES.size < 1024) PROFILES.set(model, profile);
  }
  return profile;
}

function readProfile(model: string): ClaudeProfile {
  const match = CLAUDE_VERSION.exec(model);
  // major × 10 + minor (46 for 4.6); Mythos and Fable count as later than any numbered model.
  const numbered = match === null ? undefined : Number(match[1]) * 10 + Number(match[2] ?? 0);
  const v = LATER_FAMILY.test(model) ? Infinity : (numbered ?? 0);
  return {
    thinking: v >= 46 ? 'adaptive' : v === 37 || (v >= 40 && v <= 45) ? 'budget' : undefined,
    thinksByDefault: v >= 50,
    alwaysThinks: v >= 51,
    from47: v >= 47,
    takesPrefill: v < 46,
    takesSampling: v < 47,
    // Fable 5.0 and Mythos Preview keep forced tools: only numbered 5.1 and later are documented to refuse them.
    takesForcedTool: numbered === undefined || numbered < 51,
  };
}

/**
 * OpenAI's `reasoning_effort` levels that ask for thinking, and the budget (or room) each stands for. `xhigh`
 * is an effort of Claude 4.7 on too; earlier models get `high` for it. (`minimal` and `none` ask for none.)
 */
const EFFORT_BUDGET: Readonly<Record<string, number>> = { low: 1024, medium: 2048, high: 4096, xhigh: 4096 };

interface ThinkingPlan {
  /** The request's `thinking`; undefined leaves the model its default (ClaudeProfile.thinksByDefault). */
  readonly thinking?: JsonObject;
  /** `output_config.effort`, for adaptive thinking. */
  readonly effort?: string;
  /** Added to the provider's default `max_tokens` when the client set none. */
  readonly room: number;
}

/** A model's own thinking, as Claude 5 on do when nothing else is asked: room for Anthropic's default effort, high. */
const DEFAULT_THINKING: ThinkingPlan = { room: 4096 };

/** The thinking asked for, or undefined for none; the history may still rule it out (thinkingAllowed). */
function thinkingFor(
  body: ChatBody,
  explicitMax: number | undefined,
  claude: ClaudeProfile,
): ThinkingPlan | undefined {
  if (forcesTool(body) && claude.takesForcedTool) return undefined;
  const effort = typeof body.reasoning_effort === 'string' ? body.reasoning_effort : undefined;
  const effortBudget =
    effort !== undefined && Object.hasOwn(EFFORT_BUDGET, effort) ? EFFORT_BUDGET[effort] : undefined;
  const asked = body.thinking;
  // Fable, Mythos and 5.1 on cannot be told not to think: "none" (an effort, or `disabled`) gets the least they do.
  const leastThinking = claude.alwaysThinks && claude.thinking === 'adaptive';
  if (isObject(asked)) {
    // The client's own Anthropic-style setting is taken as given: a contradiction is Anthropic's 400 to report.
    if (asked.type === 'adaptive')
      return adaptive(effortBudget === undefined ? undefined : effort, asString(asked.display));
    if (asked.type === 'disabled' && leastThinking) return adaptive('low', undefined);
    // But under max_tokens, which may have been lowered to the model's cap (upstream/param-fit.ts).
    const budget = asked.type === 'enabled' ? positiveInt(asked.budget_tokens) : undefined;
    return budget === undefined ? undefined : budgeted(budget, explicitMax);
  }
  if (leastThinking && (effort === 'none' || effort === 'minimal')) return adaptive('low', undefined);
  // As OpenAI counts it, the client's max_tokens covers the reasoning: thinking must fit inside it.
  const fits = explicitMax === undefined || explicitMax > MIN_THINKING_BUDGET;
  if (effortBudget === undefined)
    return effort === undefined && claude.thinksByDefault && fits ? DEFAULT_THINKING : undefined;
  if (!fits) return undefined;
  switch (claude.thinking) {
    case 'adaptive':
      // Claude 4.7 on omit the thinking's text unless asked: reasoning_effort asks for the reasoning.
      return adaptive(
        effort === 'xhigh' && !claude.from47 ? 'high' : effort,
        claude.from47 ? 'summarized' : undefined,
      );
    case 'budget':
      return budgeted(effortBudget, explicitMax);
    default:
      return undefined;
  }
}

/**
 * Thinking with `budget` tokens, kept under max_tokens (Anthropic refuses budget_tokens >= max_tokens); none
 * when keeping it under leaves less than Anthropic's 1,024 minimum.
 */
function budgeted(budget: number, explicitMax: number | undefined): ThinkingPlan | undefined {
  const within = explicitMax === undefined ? budget : Math.min(budget, explicitMax - 1);
  if (within < budget && within < MIN_THINKING_BUDGET) return undefined;
  return { thinking: { type: 'enabled', budget_tokens: within }, room: within };
}

/** Adaptive thinking at `effort` (Anthropic's default, high, when none is given), its text shown as `display`. */
function adaptive(effort: string | undefined, display: string | undefined): ThinkingPlan {
  const thinking: JsonObject = { type: 'adaptive' };
  if (display !== undefined) thinking.display = display;
  const room = EFFORT_BUDGET[effort ?? 'high'] ?? MIN_THINKING_BUDGET;
  return effort === undefined ? { thinking, room } : { thinking, room, effort };
}

/** A tool must be called: toolChoice makes the choice `{type: "any"}` or `{type: "tool"}` (no thinking beside it). */
function forcesTool(body: ChatBody): boolean {
  const type = toolChoice(plainChoice(body.tool_choice), false, true)?.type;
  return type === 'any' || type === 'tool';
}

/** The client's `tool_choice`, an `allowed_tools` one read as the plain choice it stands for. */
function plainChoice(choice: unknown, allowed = allowedTools(choice)): unknown {
  return allowed === undefined ? choice : allowed.required ? 'required' : 'auto';
}

function isThinking(block: Block | undefined): boolean {
  return block !== undefined && (block.type === 'thinking' || block.type === 'redacted_thinking');
}

/**
 * Anthropic, with thinking on: no final assistant turn (a prefill), and an assistant turn still under way (a
 * tool loop: every user turn since it began carries tool results) must open with its thinking. Only its first
 * message must: without interleaved thinking Claude thinks once per turn, not after each tool result.
 */
function thinkingAllowed(turns: Turn[]): boolean {
  let opening: Turn | undefined;
  for (let i = turns.length - 1; i >= 0; i--) {
    const turn = turns[i]!;
    if (turn.role === 'assistant') {
      if (i === turns.length - 1) return false;
      opening = turn;
    } else if (!turn.content.some((b) => b.type === 'tool_result')) break;
  }
  return opening === undefined || isThinking(opening.content[0]);
}

/** Thinking off: the thinking blocks sent back go too (never a turn's only blocks, see addMessage). */
function withoutThinking(turns: Turn[]): void {
  for (const turn of turns)
    if (turn.role === 'assistant' && turn.content.some(isThinking))
      turn.content = turn.content.filter((b) => !isThinking(b));
}

/** `thinking_blocks` sent back on an assistant message: signed thinking, or redacted thinking, as Anthropic gave them. */
function thinkingBlocks(blocks: unknown): Block[] {
  const out: Block[] = [];
  if (!Array.isArray(blocks)) return out;
  for (const b of blocks) {
    if (!isObject(b)) continue;
    // Unsigned thinking is refused by Anthropic: such a block is left out, not sent to fail.
    if (b.type === 'thinking' && typeof b.thinking === 'string' && nonEmptyString(b.signature))
      out.push({ type: 'thinking', thinking: b.thinking, signature: b.signature });
    else if (b.type === 'redacted_thinking' && nonEmptyString(b.data))
      out.push({ type: 'redacted_thinking', data: b.data });
  }
  return out;
}

function nonEmptyString(value: unknown): value is string {
  return typeof value === 'string' && value !== '';
}

function addMessage(message: unknown, system: Block[], turns: Turn[], ids: ToolIds): void {
  if (!isObject(message)) return;
  switch (message.role) {
    case 'system':
    case 'developer':
      system.push(...textBlocks(message.content));
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
  if (thinking.length > 0)
    last.content.splice(
      last.content.findIndex((b) => !isThinking(b)),
      0,
      ...thinking,
    );
  last.content.push(...blocks);
}

function pushTurn(turns: Turn[], role: Role, blocks: Block[]): void {
  if (blocks.length === 0) return;
  const last = turns.at(-1);
  if (last !== undefined && last.role === role) last.content.push(...blocks);
  else turns.push({ role, content: blocks });
}

function finishTurns(turns: Turn[]): void {
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

function textBlock(text: string, part?: JsonObject): Block | undefined {
  // Anthropic rejects empty and whitespace-only text blocks.
  if (text.trim() === '') return undefined;
  const block: Block = { type: 'text', text };
  if (part !== undefined && isObject(part.cache_control)) block.cache_control = part.cache_control;
  return block;
}

/** Text of a string or of text / refusal parts; anything else is skipped. */
function textBlocks(content: unknown): Block[] {
  if (typeof content === 'string') {
    const block = textBlock(content);
    return block === undefined ? [] : [block];
  }
  const out: Block[] = [];
  if (!Array.isArray(content)) return out;
  for (const part of content) {
    let block: Block | undefined;
    if (typeof part === 'string') block = textBlock(part);
    else if (isObject(part)) {
      const text = asString(part.text) ?? asString(part.refusal);
      if (text !== undefined && (part.type === 'text' || part.type === 'refusal'))
        block = textBlock(text, part);
    }
    if (block !== undefined) out.push(block);
  }
  return out;
}

function userBlocks(content: unknown): Block[] {
  if (!Array.isArray(content)) return textBlocks(content);
  const out: Block[] = [];
  for (const part of content) {
    let block: Block | undefined;
    if (typeof part === 'string') block = textBlock(part);
    else if (isObject(part)) {
      if (part.type === 'text' && typeof part.text === 'string') block = textBlock(part.text, part);
      else if (part.type === 'image_url') block = imageBlock(part.image_url);
      else if (part.type === 'file' && isObject(part.file)) block = fileBlock(part.file);
      if (block !== undefined && part.type !== 'text' && isObject(part.cache_control)) {
        block.cache_control = part.cache_control;
      }
    }
    if (block !== undefined) out.push(block);
  }
  return out;
}

export interface DataUrl {
  mediaType: string;
  data: string;
}

/** The image types the Messages API reads (base64 or by URL). */
export const CLAUDE_IMAGE_TYPES: ReadonlySet<string> = new Set([
  'image/jpeg',
  'image/png',
  'image/gif',
  'image/webp',
]);

/** `data:<media type>[;params];base64,<data>`; other data URLs are not something Anthropic takes. */
export function parseDataUrl(url: string): DataUrl | undefined {
  const comma = url.indexOf(',');
  if (!url.startsWith('data:') || comma < 0) return undefined;
  const meta = url.slice(5, comma);
  if (!meta.endsWith(';base64')) return undefined;
  const semicolon = meta.indexOf(';');
  let mediaType = meta.slice(0, semicolon).trim().toLowerCase();
  // Clients write image/jpg, which OpenAI takes and Anthropic's media_type enum does not.
  if (mediaType === 'image/jpg') mediaType = 'image/jpeg';
  const data = url.slice(comma + 1);
  return mediaType === '' || data === '' ? undefined : { mediaType, data };
}

function imageBlock(imageUrl: unknown): Block | undefined {
  const url =
    typeof imageUrl === 'string' ? imageUrl : isObject(imageUrl) ? asString(imageUrl.url) : undefined;
  if (url === undefined) return undefined;
  const lower = url.slice(0, 8).toLowerCase();
  if (lower.startsWith('https://') || lower.startsWith('http://')) {
    return { type: 'image', source: { type: 'url', url } };
  }
  const parsed = parseDataUrl(url);
  if (parsed === undefined) return undefined;
  return { type: 'image', source: { type: 'base64', media_type: parsed.mediaType, data: parsed.data } };
}

/** OpenAI `file` parts with inline data: PDFs become documents, images become images; file ids can't travel. */
function fileBlock(file: JsonObject): Block | undefined {
  const dataUrl = asString(file.file_data);
  const parsed = dataUrl === undefined ? undefined : parseDataUrl(dataUrl);
  if (parsed === undefined) return undefined;
  const source = { type: 'base64', media_type: parsed.mediaType, data: parsed.data };
  if (parsed.mediaType === 'application/pdf') return { type: 'document', source };
  if (parsed.mediaType === 'text/plain') {
    const data = Buffer.from(parsed.data, 'base64').toString('utf8');
    return { type: 'document', source: { type: 'text', media_type: 'text/plain', data } };
  }
  if (CLAUDE_IMAGE_TYPES.has(parsed.mediaType)) return { type: 'image', source };
  return undefined;
}

/** A file part's data URL Claude reads: a PDF or plain-text document, or an image (fileBlock's cases). */
export function claudeReadsFile(dataUrl: string): boolean {
  const type = parseDataUrl(dataUrl)?.mediaType;
  return (
    type === 'application/pdf' ||
    type === 'text/plain' ||
    (type !== undefined && CLAUDE_IMAGE_TYPES.has(type))
  );
}

function toolId(id: unknown): string | undefined {
  if (typeof id !== 'string' || id === '') return undefined;
  return id.replace(INVALID_TOOL_ID_CHARS, '_');
}

/**
 * Tool call ids as Anthropic takes them: its characters only, and unique in the conversation. A repeated
 * id (`call_0` in every round) gets a suffix; a tool result refers to the latest call of its id.
 */
class ToolIds {
  private readonly used = new Set<string>();
  private readonly latest = new Map<string, string>();

  /** The id to send for a call's `id`, or undefined for none. */
  call(raw: unknown): string | undefined {
    const id = toolId(raw);
    if (id === undefined) return undefined;
    let sent = id;
    for (let n = 2; this.used.has(sent); n++) sent = `${id}_${n}`;
    this.used.add(sent);
    this.latest.set(id, sent);
    return sent;
  }

  /** The id a result's `tool_call_id` refers to. */
  result(raw: unknown): string | undefined {
    const id = toolId(raw);
    return id === undefined ? undefined : (this.latest.get(id) ?? id);
  }
}

function toolUseBlocks(toolCalls: unknown, ids: ToolIds): Block[] {
  const out: Block[] = [];
  if (!Array.isArray(toolCalls)) return out;
  for (const call of toolCalls) {
    if (!isObject(call) || !isObject(call.function)) continue;
    const id = ids.call(call.id);
    const name = asString(call.function.name);
    // Without an id no tool_result can refer to the call, and Anthropic rejects a dangling tool_use.
    if (id === undefined || !name) continue;
    out.push({ type: 'tool_use', id, name, input: toolInput(call.function.arguments) });
  }
  return out;
}

function toolInput(args: unknown): JsonObject {
  if (isObject(args)) return args;
  if (typeof args !== 'string') return {};
  try {
    const parsed: unknown = JSON.parse(args);
    return isObject(parsed) ? parsed : {};
  } catch {
    return {};
  }
}

function toolResultBlock(message: JsonObject, ids: ToolIds): Block {
  const id = ids.result(message.tool_call_id);
  const content = message.content;
  if (id === undefined) {
    // An unlinked result still informs the model, as text.
    const text = typeof content === 'string' ? content : JSON.stringify(content ?? null);
    return { type: 'text', text: `Tool result: ${text}` };
  }
  const block: Block = { type: 'tool_result', tool_use_id: id };
  if (typeof content === 'string') {
    if (content !== '') block.content = content;
  } else {
    // Text, images and documents: a tool_result carries them all (a screenshot tool's answer is an image).
    const blocks = userBlocks(content);
    if (blocks.length > 0) block.content = blocks;
  }
  return block;
}

function systemValue(blocks: Block[]): string | Block[] {
  if (blocks.some((b) => b.cache_control !== undefined)) return blocks;
  return blocks.map((b) => b.text).join('\n\n');
}

function positiveInt(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isInteger(value) && value > 0 ? value : undefined;
}

function stopSequences(stop: unknown): string[] {
  const list = typeof stop === 'string' ? [stop] : Array.isArray(stop) ? stop : [];
  // Anthropic rejects whitespace-only stop sequences.
  return list.filter((s): s is string => typeof s === 'string' && s.trim() !== '');
}

/** The function tools, only those named in `only` when given. */
function toolDefinitions(tools: unknown, only?: ReadonlySet<string>): Block[] {
  const out: Block[] = [];
  if (!Array.isArray(tools)) return out;
  for (const tool of tools) {
    if (!isObject(tool) || (tool.type !== undefined && tool.type !== 'function') || !isObject(tool.function))
      continue;
    const fn = tool.function;
    const name = asString(fn.name);
    if (!name || (only !== undefined && !only.has(name))) continue;
    const def: Block = { name };
    const description = asString(fn.description);
    if (description) def.description = description;
    def.input_schema = inputSchema(fn.parameters);
    out.push(def);
  }
  return out;
}

function usesTools(turns: Turn[]): boolean {
  return turns.some((t) => t.content.some((b) => b.type === 'tool_use' || b.type === 'tool_result'));
}

const TOOL_NAME = /^[a-zA-Z0-9_-]{1,128}$/;
const STUB_DESCRIPTION = 'Called earlier in this conversation; not available now.';

/** One argument-free definition per tool name the history used (a generic one when none is usable). */
function stubTools(turns: Turn[]): Block[] {
  const names = new Set<string>();
  for (const turn of turns)
    for (const b of turn.content)
      if (b.type === 'tool_use' && typeof b.name === 'string' && TOOL_NAME.test(b.name)) names.add(b.name);
  if (names.size === 0) names.add('earlier_tool');
  return [...names].map((name) => ({
    name,
    description: STUB_DESCRIPTION,
    input_schema: { type: 'object', properties: {} },
  }));
}

/** Anthropic requires `input_schema.type: "object"`; OpenAI takes `parameters: {}` or none for "no arguments". */
function inputSchema(parameters: unknown): JsonObject {
  if (!isObject(parameters)) return { type: 'object', properties: {} };
  return parameters.type === undefined ? { type: 'object', ...parameters } : parameters;
}

function toolChoice(choice: unknown, disableParallel: boolean, forcible: boolean): Block | undefined {
  let out: Block | undefined;
  if (choice === 'auto') out = { type: 'auto' };
  else if (choice === 'none') return { type: 'none' };
  else if (choice === 'required' || choice === 'any') out = { type: 'any' };
  else if (isObject(choice) && choice.type === 'function' && isObject(choice.function)) {
    const name = asString(choice.function.name);
    if (name) out = { type: 'tool', name };
  }
  // A forced tool is a 400 on Claude 5.1 on: auto is the nearest they take, and answering beats failing.
  if (!forcible && out !== undefined) out = { type: 'auto' };
  if (disableParallel) {
    out ??= { type: 'auto' };
    out.disable_parallel_tool_use = true;
  }
  return out;
}

/** OpenAI's `allowed_tools` choice: the tool names it allows, and whether one must be called. */
function allowedTools(choice: unknown): { names: Set<string>; required: boolean } | undefined {
  if (!isObject(choice) || choice.type !== 'allowed_tools' || !isObject(choice.allowed_tools))
    return undefined;
  const { mode, tools } = choice.allowed_tools;
  const names = new Set<string>();
  if (Array.isArray(tools))
    for (const t of tools) {
      const name = isObject(t) && isObject(t.function) ? asString(t.function.name) : undefined;
      if (name) names.add(name);
    }
  return { names, required: mode === 'required' };
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
