import type { ChatBody } from '../adapter.js';
import type { Block, Turn } from './anthropic-content.js';
import { forcesTool } from './anthropic-tools.js';
import type { ClaudeProfile } from './claude-profile.js';
import { asString, isObject, stringifyWithRaw, type JsonObject } from './common.js';

// Extended thinking for Anthropic: the plan a request asks for, and the rules its history sets (ClaudeProfile).

/** Anthropic's smallest thinking budget; also the least room left for thinking of any kind. */
const MIN_THINKING_BUDGET = 1024;

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
export const DEFAULT_THINKING: ThinkingPlan = { room: 4096 };

/** The thinking asked for, or undefined for none; the history may still rule it out (thinkingAllowed). */
export function thinkingFor(
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
  // A model that always thinks thinks under a small max_tokens too: at the effort asked (left out, it thought
  // at its default, high, so `low` got more thinking than `none` did).
  if (!fits && !leastThinking) return undefined;
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

export function isThinking(block: Block | undefined): boolean {
  return block !== undefined && (block.type === 'thinking' || block.type === 'redacted_thinking');
}

/**
 * Anthropic, with thinking on: no final assistant turn (a prefill), and an assistant turn still under way (a
 * tool loop: every user turn since it began carries tool results) must open with its thinking. Only its first
 * message must: without interleaved thinking Claude thinks once per turn, not after each tool result.
 */
export function thinkingAllowed(turns: Turn[]): boolean {
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

/**
 * For a model that always thinks (thinking cannot be turned off) and a tool loop whose first assistant turn
 * came back without its thinking (every SDK's tool runner drops `thinking_blocks`): the loop's tool calls
 * and results as text, so the request is a plain conversation Anthropic takes with thinking on ("a final
 * assistant message must start with a thinking block" holds only for a tool loop). Earlier, closed loops
 * keep their blocks. The model reads what it called and what came back; images in results stay images.
 */
export function openLoopAsText(turns: Turn[]): void {
  let from = turns.length;
  for (let i = turns.length - 1; i >= 0; i--) {
    const turn = turns[i]!;
    if (turn.role === 'assistant') from = i;
    else if (!turn.content.some((b) => b.type === 'tool_result')) break;
  }
  for (let i = from; i < turns.length; i++) {
    const turn = turns[i]!;
    turn.content = turn.content.flatMap((b) =>
      b.type === 'tool_use' || b.type === 'tool_result' ? asText(b) : [b],
    );
  }
}

/** A tool_use or tool_result block as text (and a result's images and documents as they are). */
function asText(block: Block): Block[] {
  if (block.type === 'tool_use') {
    const call = `[tool call ${String(block.id)}: ${String(block.name)} ${stringifyWithRaw(block.input ?? {})}]`;
    return [{ type: 'text', text: call }];
  }
  const content = block.content;
  const parts = Array.isArray(content) ? (content as Block[]) : [];
  const text =
    typeof content === 'string'
      ? content
      : parts
          .filter((p) => p.type === 'text')
          .map((p) => String(p.text))
          .join('\n');
  const result = `[tool result ${String(block.tool_use_id)}: ${text}]`;
  return [{ type: 'text', text: result }, ...parts.filter((p) => p.type !== 'text')];
}

/** Thinking off: the thinking blocks sent back go too (never a turn's only blocks, see addMessage). */
export function withoutThinking(turns: Turn[]): void {
  for (const turn of turns)
    if (turn.role === 'assistant' && turn.content.some(isThinking))
      turn.content = turn.content.filter((b) => !isThinking(b));
}

/** `thinking_blocks` sent back on an assistant message: signed thinking, or redacted thinking, as Anthropic gave them. */
export function thinkingBlocks(blocks: unknown): Block[] {
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

export function positiveInt(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isInteger(value) && value > 0 ? value : undefined;
}
