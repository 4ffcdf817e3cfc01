/**
 * Stop sequences an upstream is not sent, applied to the answer's text by the gateway: Anthropic takes no stop
 * sequence of whitespace alone (`"\n"`, `"\n\n"`), which completion-style prompts use to get one line, and
 * OpenAI's reasoning models (o3, o4-mini, GPT-5) refuse `stop` altogether ("Unsupported parameter: 'stop'"),
 * which agent frameworks send (a ReAct loop's `\nObservation:`), so their upstream's fit leaves it out
 * (param-fit.ts). The answer is cut where the first of them begins, as OpenAI cuts it (the sequence itself
 * is not sent), and finishes with `stop`.
 */
import { chunkHead } from '../../streaming/completion-chunks.js';
import type { AnswerText } from '../adapter.js';
import { parseJsonObject } from './common.js';

type Json = Record<string, unknown>;

/** Choices a stream's stops follow at most (ChunkStops). */
const MAX_CHOICES = 256;

const isJson = (v: unknown): v is Json => v !== null && typeof v === 'object' && !Array.isArray(v);

/** The client's stop sequences (a string or a list), the empty ones left out. */
export function stopList(stop: unknown): string[] {
  const list = typeof stop === 'string' ? [stop] : Array.isArray(stop) ? stop : [];
  return list.filter((s): s is string => typeof s === 'string' && s !== '');
}

/** The client's stop sequences that are whitespace alone. */
export function whitespaceStops(stop: unknown): string[] {
  return stopList(stop).filter((s) => s.trim() === '');
}

/**
 * The stops the gateway applies to an upstream's answer: for Anthropic those of whitespace alone (the rest it
 * is sent); for the OpenAI dialect all of them when the body `sent` (the client's `asked`, fitted) has none.
 */
export function localStopsFor(kind: string, asked: Json, sent: Json): string[] {
  if (kind === 'anthropic') return whitespaceStops(asked.stop);
  return Object.hasOwn(sent, 'stop') ? [] : stopList(asked.stop);
}

/** Where `text` is cut by the first of `stops` in it, or -1. */
export function firstStop(text: string, stops: readonly string[]): number {
  let cut = -1;
  for (const s of stops) {
    const at = text.indexOf(s);
    if (at !== -1 && (cut === -1 || at < cut)) cut = at;
  }
  return cut;
}

/** A streamed answer's text through the stops, delta by delta: a stop split over two deltas is found too. */
export class LocalStops {
  private held = '';
  /** A stop was found: nothing more of the text goes to the client. */
  stopped = false;

  constructor(private readonly stops: readonly string[]) {}

  /** What of `text` goes to the client now: up to the first stop, less a tail that may begin one. */
  feed(text: string): string {
    if (this.stopped) return '';
    const w = this.held + text;
    const cut = firstStop(w, this.stops);
    if (cut !== -1) {
      this.stopped = true;
      this.held = '';
      return w.slice(0, cut);
    }
    let keep = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, w.length); k > keep; k--) {
        if (w.endsWith(s.slice(0, k))) {
          keep = k;
          break;
        }
      }
    }
    this.held = w.slice(w.length - keep);
    return w.slice(0, w.length - keep);
  }

  /** The text held back, let go: the answer's text ended (or a tool call began) with no stop in it. */
  release(): string {
    const held = this.held;
    this.held = '';
    return held;
  }
}

/**
 * A completion's choices cut at the first of `stops` in their text, as OpenAI cuts them: what came after
 * (tool calls too) is not the answer, and the choice finishes with `stop`. True when one was cut.
 */
export function cutCompletion(completion: Json, stops: readonly string[]): boolean {
  const choices = completion.choices;
  if (!Array.isArray(choices)) return false;
  let cut = false;
  for (const choice of choices) {
    if (!isJson(choice) || !isJson(choice.message)) continue;
    const { message } = choice;
    if (typeof message.content !== 'string') continue;
    const at = firstStop(message.content, stops);
    if (at === -1) continue;
    message.content = message.content.slice(0, at);
    delete message.tool_calls;
    choice.finish_reason = 'stop';
    cut = true;
  }
  return cut;
}

/**
 * An OpenAI-dialect stream's chunks through the stops, choice by choice: a choice's content is cut at its
 * first stop (that chunk says `finish_reason: stop`), and nothing more of that choice is relayed; its usage
 * still is (the model's own count, reasoning included: the stream is read to its end for it).
 */
export class ChunkStops {
  private readonly texts = new Map<number, LocalStops>();
  private readonly stopped = new Set<number>();
  /** Choices stopped since takeStopped was last asked. */
  private fresh: number[] = [];
  /** The last chunk seen: a chunk of held text the stream's end lets go is written with its id, created, model. */
  private last: Json = {};

  constructor(private readonly stops: readonly string[]) {}

  /** `chunk` changed in place for the stops: `same` (untouched), `changed`, or `drop` (nothing of it is left). */
  apply(chunk: Json): 'same' | 'changed' | 'drop' {
    const choices = chunk.choices;
    if (!Array.isArray(choices) || choices.length === 0) return 'same';
    this.last = chunk;
    let changed = false;
    const kept: unknown[] = [];
    for (let i = 0; i < choices.length; i++) {
      const choice: unknown = choices[i];
      if (!isJson(choice)) {
        kept.push(choice);
        continue;
      }
      const at = typeof choice.index === 'number' ? choice.index : i;
      if (this.stopped.has(at)) {
        changed = true; // past its stop: nothing more of this choice
        continue;
      }
      if (this.choice(at, choice)) changed = true;
      kept.push(choice);
    }
    if (!changed) return 'same';
    chunk.choices = kept;
    return kept.length === 0 && (chunk.usage === undefined || chunk.usage === null) ? 'drop' : 'changed';
  }

  /** The choices ended at a stop since the last call. */
  takeStopped(): number[] {
    const fresh = this.fresh;
    this.fresh = [];
    return fresh;
  }

  /** Some choice ended at a stop of the gateway's. */
  anyStopped(): boolean {
    return this.stopped.size > 0;
  }

  /** A chunk of what is still held back when the stream ends without its choices finishing; undefined if none. */
  flush(): Json | undefined {
    const choices: Json[] = [];
    for (const [index, text] of this.texts) {
      const held = text.release();
      if (held !== '' && !this.stopped.has(index))
        choices.push({ index, delta: { content: held }, finish_reason: null });
    }
    return choices.length === 0 ? undefined : { ...chunkHead(this.last), choices };
  }

  private choice(at: number, choice: Json): boolean {
    const delta = isJson(choice.delta) ? choice.delta : undefined;
    const content = delta?.content;
    let text = this.texts.get(at);
    let changed = false;
    if (delta !== undefined && typeof content === 'string' && content !== '') {
      if (text === undefined) {
        // A hostile upstream's thousands of choice indexes do not grow this without bound: past it, as sent.
        if (this.texts.size >= MAX_CHOICES) return false;
        this.texts.set(at, (text = new LocalStops(this.stops)));
      }
      const out = text.feed(content);
      if (out !== content) {
        delta.content = out;
        changed = true;
      }
      if (text.stopped) {
        this.stopped.add(at);
        this.fresh.push(at);
        delete delta.tool_calls;
        choice.finish_reason = 'stop';
        return true;
      }
    }
    // Text held back as a stop's possible start goes on once the choice moves on (a tool call) or finishes.
    const finished = typeof choice.finish_reason === 'string' && choice.finish_reason !== '';
    if (text !== undefined && (finished || delta?.tool_calls !== undefined)) {
      const held = text.release();
      if (held !== '') {
        const d = delta ?? (choice.delta = {});
        d.content = `${typeof d.content === 'string' ? d.content : ''}${held}`;
        changed = true;
      }
    }
    return changed;
  }
}

/** An answer relayed as it came, cut at `stops` (adapters relaying the text: written anew only when cut). */
export function cutAnswer(answer: AnswerText | undefined, stops: readonly string[]): AnswerText | undefined {
  if (answer === undefined || answer.error !== undefined) return answer;
  const json = parseJsonObject(answer.body);
  return json !== undefined && cutCompletion(json, stops)
    ? { ...answer, body: JSON.stringify(json) }
    : answer;
}
