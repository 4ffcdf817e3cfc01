import type { ChatBody } from '../adapter.js';
import { userBlocks, type Block, type Turn } from './anthropic-content.js';
import { asString, isObject, RawJson, type JsonObject } from './common.js';

// OpenAI tools -> Anthropic's: tool call ids, tool_use and tool_result blocks, definitions and `tool_choice`.

// Anthropic accepts tool ids matching ^[a-zA-Z0-9_-]+$; ids minted by other providers may not.
const INVALID_TOOL_ID_CHARS = /[^a-zA-Z0-9_-]/g;

function toolId(id: unknown): string | undefined {
  if (typeof id !== 'string' || id === '') return undefined;
  return id.replace(INVALID_TOOL_ID_CHARS, '_');
}

/**
 * Tool call ids as Anthropic takes them: its characters only, and unique in the conversation. A repeated
 * id (`call_0` in every round; two parallel calls under one id, as Xinference mints them) gets a suffix; a
 * tool result answers the oldest unanswered call of its id as written, else the latest.
 */
export class ToolIds {
  private readonly used = new Set<string>();
  private readonly latest = new Map<string, string>();
  /** Per id, its calls' sent ids and how many of them are answered (shift() on a long queue copied it). */
  private readonly unanswered = new Map<string, { readonly sent: string[]; answered: number }>();
  /** The suffix an id's next repeat tries first: each repeat resumed from 2 was k^2/2 steps for k repeats. */
  private readonly nextSuffix = new Map<string, number>();

  /** The id to send for a call's `id`, or undefined for none. */
  call(raw: unknown): string | undefined {
    const id = toolId(raw);
    if (id === undefined) return undefined;
    let sent = id;
    if (this.used.has(sent)) {
      let n = this.nextSuffix.get(id) ?? 2;
      while (this.used.has((sent = `${id}_${n}`))) n++;
      this.nextSuffix.set(id, n + 1);
    }
    this.used.add(sent);
    this.latest.set(id, sent);
    // Queued under the id as the client wrote it: `search.1` and `search:1` are both sent as `search_1...`,
    // and each result must find its own call, whatever order they come in.
    const key = raw as string;
    const queue = this.unanswered.get(key);
    if (queue === undefined) this.unanswered.set(key, { sent: [sent], answered: 0 });
    else queue.sent.push(sent);
    return sent;
  }

  /** The id a result's `tool_call_id` refers to. */
  result(raw: unknown): string | undefined {
    const id = toolId(raw);
    if (id === undefined) return undefined;
    const queue = this.unanswered.get(raw as string);
    if (queue !== undefined && queue.answered < queue.sent.length) return queue.sent[queue.answered++];
    return this.latest.get(id) ?? id;
  }
}

export function toolUseBlocks(toolCalls: unknown, ids: ToolIds): Block[] {
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

/** A number JSON.parse may round: 16 digits or more (an id past 2^53, a 17-digit decimal), or a look-alike. */
const LONG_NUMBER = /\d[\d.]{15}/;

function toolInput(args: unknown): JsonObject {
  if (isObject(args)) return args;
  if (typeof args !== 'string') return {};
  try {
    const parsed: unknown = JSON.parse(args);
    if (!isObject(parsed)) return {};
    // The call as Claude wrote it: parsed and re-serialised, its long numbers would be other numbers.
    return LONG_NUMBER.test(args) ? (new RawJson(args.trim()) as unknown as JsonObject) : parsed;
  } catch {
    return {};
  }
}

export function toolResultBlock(message: JsonObject, ids: ToolIds): Block {
  const id = ids.result(message.tool_call_id);
  const content = message.content;
  if (id === undefined) {
    // An unlinked result still informs the model, as text.
    const text = typeof content === 'string' ? content : JSON.stringify(content ?? null);
    return { type: 'text', text: `Tool result: ${text}` };
  }
  const block: Block = { type: 'tool_result', tool_use_id: id };
  if (typeof content === 'string') {
    // Whitespace alone (a command that printed a line break) is refused as a text block: no content is the
    // same empty result.
    if (content.trim() !== '') block.content = content;
  } else {
    // Text, images and documents: a tool_result carries them all (a screenshot tool's answer is an image).
    const blocks = userBlocks(content);
    if (blocks.length > 0) block.content = blocks;
  }
  return block;
}

/**
 * The function tools, only those named in `only` when given; a name given twice (one MCP server loaded
 * twice) once, as first defined: Anthropic refuses a repeated name, OpenAI takes it.
 */
export function toolDefinitions(tools: unknown, only?: ReadonlySet<string>): Block[] {
  const out: Block[] = [];
  if (!Array.isArray(tools)) return out;
  const named = new Set<string>();
  for (const tool of tools) {
    if (!isObject(tool) || (tool.type !== undefined && tool.type !== 'function') || !isObject(tool.function))
      continue;
    const fn = tool.function;
    const name = asString(fn.name);
    if (!name || (only !== undefined && !only.has(name)) || named.has(name)) continue;
    named.add(name);
    const def: Block = { name };
    const description = asString(fn.description);
    if (description) def.description = description;
    def.input_schema = inputSchema(fn.parameters);
    out.push(def);
  }
  return out;
}

export function usesTools(turns: Turn[]): boolean {
  return turns.some((t) => t.content.some((b) => b.type === 'tool_use' || b.type === 'tool_result'));
}

const TOOL_NAME = /^[a-zA-Z0-9_-]{1,128}$/;
const STUB_DESCRIPTION = 'Called earlier in this conversation; not available now.';

/** One argument-free definition per tool name the history used (a generic one when none is usable). */
export function stubTools(turns: Turn[]): Block[] {
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

export function toolChoice(choice: unknown, disableParallel: boolean, forcible: boolean): Block | undefined {
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
export function allowedTools(choice: unknown): { names: Set<string>; required: boolean } | undefined {
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

/** A tool must be called: toolChoice makes the choice `{type: "any"}` or `{type: "tool"}` (no thinking beside it). */
export function forcesTool(body: ChatBody): boolean {
  const type = toolChoice(plainChoice(body.tool_choice), false, true)?.type;
  return type === 'any' || type === 'tool';
}

/** The client's `tool_choice`, an `allowed_tools` one read as the plain choice it stands for. */
export function plainChoice(choice: unknown, allowed = allowedTools(choice)): unknown {
  return allowed === undefined ? choice : allowed.required ? 'required' : 'auto';
}
