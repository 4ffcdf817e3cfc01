/**
 * Masks configured secrets in a streamed answer's text, whole or split across deltas. A model that echoes a
 * key sends it as several tokens, one delta each (`sk`, `-proj`, `-Xa9`, …): each frame scrubbed alone lets
 * all of it through. Per choice and text channel (content, refusal, reasoning, a list of parts' text and
 * thinking, the audio transcript, each tool call's arguments) the end of the text sent that a secret may go
 * on from is kept, so a secret that ends in this delta is found and its part here masked; a delta that ends
 * in 4 or more of a secret's first characters holds those back until the next shows whether the secret
 * follows. At most the 3 characters before the hold (an `sk-`) reach the client, as with a cut error body
 * (observability/scrub.ts cutTail). Held text whose channel ends (its choice finishes, another channel of the
 * choice starts, the stream ends) was the start of a secret the answer stopped inside: it goes as
 * `[REDACTED]` (under 8 characters, as written: a word like "token" that a key starts with). A chunk whose
 * text changed has its logprobs made to match (their tokens spell the same text).
 */
import { ANSWER_TEXT_FIELDS } from '../text.js';

const REDACTED = '[REDACTED]';
/** The shortest run of a secret's first characters that is held back. */
const MIN_HOLD = 4;
/** Held text shorter than this goes as written when its channel ends (endOfHold). */
export const MAX_RELEASED = 8;
/**
 * Channels followed in one stream at most: a hostile upstream's thousands of choice or tool indexes do not
 * grow the state without bound. Past it, channels are forgotten (forget); only when every one holds text back
 * is a new channel's delta read alone, as a channel that ends with it.
 */
const MAX_CHANNELS = 256;

interface FieldState {
  /**
   * The end of the text sent that a secret may go on from: its longest tail that is the start of one (often
   * none). A secret that ends in the next delta begins there, if it began before it.
   */
  sent: string;
  /** Characters held back: the first ones of a secret, perhaps. */
  held: string;
}

type Json = Record<string, unknown>;
type Fields = Map<string, FieldState>;
/** No channels, for the loops over every channel map when no loose channel was made. */
const NONE: Fields = new Map();

/** One choice's delta being masked: its channels, whether any text changed, the channels it carries. */
interface Current {
  readonly fields: Fields;
  changed: boolean;
  readonly seen: string[] | undefined;
}

/** The spellings of the secrets a DeltaMask follows, and each one's first 4 characters. */
export interface HeldForms {
  readonly forms: readonly string[];
  readonly prefixes: readonly string[];
}

/**
 * `forms`: every spelling of every secret (scrub.ts secretForms). A form that contains another past its start
 * (a header's `Basic <credential>` holds the credential) is masked through that one: its own first
 * characters (`Basi`) are no secret's, and holding them would mangle every answer ending in "Basic". One
 * that starts with another (an api_key, and a header holding it and more) is kept, to be masked whole.
 */
export function heldForms(forms: readonly string[]): HeldForms {
  const usable = forms.filter((f) => f.length >= MIN_HOLD);
  const kept = usable.filter((f) => !usable.some((g) => g !== f && f.includes(g) && !f.startsWith(g)));
  return { forms: kept, prefixes: kept.map((f) => f.slice(0, MIN_HOLD)) };
}

const isJson = (v: unknown): v is Json => v !== null && typeof v === 'object' && !Array.isArray(v);

export class DeltaMask {
  private readonly forms: readonly string[];
  private readonly prefixes: readonly string[];
  /** Per choice, each text channel's state (keys: see `channels`). */
  private readonly choices = new Map<number, Fields>();
  /** Channels with characters held back. */
  private holding = 0;
  /** Channels followed so far. */
  private channels = 0;
  /** Channels outside chat chunks (channelText), made at the first: a chat stream has none. */
  private loose: Fields | undefined;
  /**
   * The last chunk's id, object, created and model (its head, as completion-chunks.ts chunkHead): a chunk of
   * held text the stream's end lets go is written with them. Not the chunk itself: kept until the next one, a
   * parsed chunk outlived young-generation collections on every stream (its text and choices with it).
   */
  private lastId: unknown;
  private lastObject: unknown;
  private lastCreated: unknown;
  private lastModel: unknown;

  /** `held`: the secrets' spellings to follow (heldForms), made once per provider. */
  constructor(held: HeldForms) {
    this.forms = held.forms;
    this.prefixes = held.prefixes;
  }

  /**
   * One `chat.completion.chunk` as it is to be relayed: `json` itself when no delta changed, else the chunk
   * written anew. `chunk` is `json` parsed, when the caller has it; `content`: the chunk carries answer text.
   */
  frame(json: string, chunk: Json | undefined, content: boolean): string {
    if (this.forms.length === 0 || (!content && this.holding === 0)) return json;
    const obj = chunk ?? parse(json);
    const choices = obj?.choices;
    if (obj === undefined || !Array.isArray(choices)) return json;
    this.lastId = obj.id;
    this.lastObject = obj.object;
    this.lastCreated = obj.created;
    this.lastModel = obj.model;
    let changed = false;
    for (let i = 0; i < choices.length; i++) {
      const choice: unknown = choices[i];
      if (!isJson(choice)) continue;
      const at = typeof choice.index === 'number' ? choice.index : i;
      if (isJson(choice.delta) && this.choiceChanged(at, choice, choice.delta)) changed = true;
      if (typeof choice.finish_reason === 'string' && choice.finish_reason !== '') {
        // Its state is kept: a proxy that puts a finish_reason on every chunk (one-api's) goes on after it,
        // and a secret spelt across such chunks must still be found.
        const fields = this.choices.get(at);
        if (fields !== undefined && this.holding > 0) {
          const delta = isJson(choice.delta) ? choice.delta : (choice.delta = {});
          if (this.settle(fields, delta, undefined)) changed = true;
        }
      }
    }
    return changed ? JSON.stringify(obj) : json;
  }

  /**
   * One delta of a text channel outside chat chunks (a Responses API event's `delta`, keyed by the caller):
   * the text to send for it, as for a chunk's channel.
   */
  channelText(channel: string, d: string): string {
    return this.step((this.loose ??= new Map()), channel, d);
  }

  /** Whether a channel outside chat chunks holds text back now. */
  holds(channel: string): boolean {
    return (this.loose?.get(channel)?.held ?? '') !== '';
  }

  /**
   * The channels outside chat chunks that hold text back (those `which` picks, when given), each ended, with
   * the text the caller sends in place of what it held (endOfHold).
   */
  endChannels(which?: (channel: string) => boolean): [channel: string, text: string][] {
    const ended: [string, string][] = [];
    if (this.holding === 0 || this.loose === undefined) return ended;
    for (const [channel, st] of this.loose) {
      if (st.held === '' || which?.(channel) === false) continue;
      ended.push([channel, endOfHold(st)]);
      this.release(st);
    }
    return ended;
  }

  /**
   * The chunk that lets go of what is still held when the stream ends with no finish_reason for its choice
   * (`[DONE]` alone): each channel's held text as endOfHold gives it; undefined when none held any.
   */
  flush(): string | undefined {
    if (this.holding === 0) return undefined;
    const choices: Json[] = [];
    for (const [index, fields] of this.choices) {
      const delta: Json = {};
      if (this.settle(fields, delta, undefined)) choices.push({ index, delta, finish_reason: null });
    }
    this.choices.clear();
    if (choices.length === 0) return undefined;
    const { lastId: id, lastObject: object, lastCreated: created, lastModel: model } = this;
    return JSON.stringify({ id, object, created, model, choices });
  }

  /** Masks and holds back the text of one choice's delta; true when the delta (or its logprobs) changed. */
  private choiceChanged(at: number, choice: Json, delta: Json): boolean {
    let fields = this.choices.get(at);
    if (fields === undefined) this.choices.set(at, (fields = new Map()));
    // Only a channel held before this delta can be ended by another one starting in it.
    const cur: Current = { fields, changed: false, seen: this.holding > 0 ? [] : undefined };
    for (const field of ANSWER_TEXT_FIELDS) {
      const v = delta[field];
      if (typeof v === 'string' && v !== '') {
        const out = this.stepIn(cur, field, v);
        if (out !== v) {
          delta[field] = out;
          if (field === 'content' || field === 'refusal') matchLogprobs(choice, field, out);
        }
      } else if (Array.isArray(v)) this.parts(cur, v, field);
    }
    const audio = delta.audio;
    if (isJson(audio) && typeof audio.transcript === 'string' && audio.transcript !== '')
      audio.transcript = this.stepIn(cur, 'audio', audio.transcript);
    const calls = delta.tool_calls;
    if (Array.isArray(calls)) {
      for (let k = 0; k < calls.length; k++) {
        const call: unknown = calls[k];
        if (!isJson(call) || !isJson(call.function) || typeof call.function.arguments !== 'string') continue;
        if (call.function.arguments === '') continue;
        const key = `tool:${typeof call.index === 'number' ? call.index : k}`;
        call.function.arguments = this.stepIn(cur, key, call.function.arguments);
      }
    }
    const fn = delta.function_call;
    if (isJson(fn) && typeof fn.arguments === 'string' && fn.arguments !== '')
      fn.arguments = this.stepIn(cur, 'function_call', fn.arguments);
    // Another channel began (the answer after its reasoning, a second tool call): one that still holds text
    // ended inside a secret, and what it held goes first.
    const seen = cur.seen;
    if (seen !== undefined && seen.length > 0) {
      const others = new Map([...fields].filter(([key, st]) => st.held !== '' && !seen.includes(key)));
      if (others.size > 0 && this.settle(others, delta, seen)) cur.changed = true;
    }
    return cur.changed;
  }

  /** `step` within one choice's delta, noting the channel seen and whether its text changed. */
  private stepIn(cur: Current, key: string, text: string): string {
    cur.seen?.push(key);
    const out = this.step(cur.fields, key, text);
    if (out !== text) cur.changed = true;
    return out;
  }

  /** The text of a list of content parts (Mistral's thinking), each part's `text` and `thinking` in turn. */
  private parts(cur: Current, list: unknown[], field: string): void {
    for (const part of list) {
      if (!isJson(part)) continue;
      if (typeof part.text === 'string' && part.text !== '')
        part.text = this.stepIn(cur, `${field}:text`, part.text);
      if (typeof part.thinking === 'string' && part.thinking !== '')
        part.thinking = this.stepIn(cur, `${field}:thinking`, part.thinking);
      else if (Array.isArray(part.thinking))
        for (const inner of part.thinking)
          if (isJson(inner) && typeof inner.text === 'string' && inner.text !== '')
            inner.text = this.stepIn(cur, `${field}:thinking`, inner.text);
    }
  }

  /**
   * Ends the channels of `fields`: what each held goes into `delta` as endOfHold gives it, placed before the
   * channels `before` names when it is a field of its own. True when anything was held.
   */
  private settle(fields: Fields, delta: Json, before: readonly string[] | undefined): boolean {
    let changed = false;
    for (const [key, st] of fields) {
      if (st.held === '') continue;
      const text = endOfHold(st);
      this.release(st);
      changed = true;
      putText(delta, key, text, before !== undefined);
    }
    return changed;
  }

  /**
   * A channel's held text let go (endOfHold says as what). What of a secret it held counts as sent: a channel
   * that goes on with the rest of that secret after another channel's delta (a hostile upstream's way round
   * the hold) still has it found, and masked from there.
   */
  private release(st: FieldState): void {
    st.sent = this.startOfSecret(st.sent + st.held);
    st.held = '';
    this.holding--;
  }

  /** The text to send for one channel's delta `d`: secrets masked, a secret's possible start held back. */
  private step(fields: Fields, key: string, d: string): string {
    let st = fields.get(key);
    if (st === undefined) {
      if (this.channels >= MAX_CHANNELS && !this.forget()) {
        // No room: the delta is read as a channel of its own that ends with it (what it would hold goes as
        // endOfHold says), so no more of a secret's start than at a channel's end reaches the client.
        const alone: FieldState = { sent: '', held: '' };
        const out = this.advance(alone, d);
        if (alone.held === '') return out;
        this.holding--;
        return out + endOfHold(alone);
      }
      this.channels++;
      fields.set(key, (st = { sent: '', held: '' }));
    }
    return this.advance(st, d);
  }

  /** `step` on a channel's state. */
  private advance(st: FieldState, d: string): string {
    const w = st.held + d;
    const x = st.sent + w;
    const base = st.sent.length;

    // Whole secrets that end in this delta: their part here is masked.
    let ranges: [number, number][] | undefined;
    for (const f of this.forms) {
      for (
        let at = x.indexOf(f, Math.max(0, base - f.length + 1));
        at !== -1;
        at = x.indexOf(f, at + f.length)
      ) {
        // A secret that another, longer one starts with (an api_key and a header holding it and more), with
        // the text from it still that longer one's start: held back below, to be masked whole.
        if (this.startsLonger(x, at)) continue;
        (ranges ??= []).push([Math.max(at, base) - base, at + f.length - base]);
      }
    }
    let clearFrom = 0;
    let masked = '';
    if (ranges !== undefined) {
      ranges.sort((a, b) => a[0] - b[0]);
      for (const [from, to] of ranges) {
        if (to <= clearFrom) continue;
        if (from >= clearFrom) masked += w.slice(clearFrom, from) + REDACTED;
        clearFrom = to;
      }
    }

    // The longest tail of the text, past any masked secret, that is 4 or more of a secret's first characters.
    let hold = 0;
    for (let j = 0; j < this.forms.length; j++) {
      const f = this.forms[j] as string;
      const p = this.prefixes[j] as string;
      const from = Math.max(clearFrom > 0 ? base + clearFrom : 0, x.length - f.length + 1);
      for (let at = x.indexOf(p, from); at !== -1; at = x.indexOf(p, at + 1)) {
        if (!f.startsWith(x.slice(at))) continue;
        hold = Math.max(hold, x.length - at);
        break;
      }
    }
    const held = Math.min(hold, w.length - clearFrom);
    const out = masked + w.slice(clearFrom, w.length - held);
    if ((st.held !== '') !== held > 0) this.holding += held > 0 ? 1 : -1;
    st.held = w.slice(w.length - held);
    st.sent = this.startOfSecret(st.sent + out);
    return out === d ? d : out;
  }

  /**
   * Room for a channel when MAX_CHANNELS are followed: the channels whose text ends in no secret's start and
   * hold nothing are as good as new, and are forgotten; failing those, the ones whose text ends in fewer than
   * MIN_HOLD of a secret's first characters (honest text ending in `s` when a key starts `sk-`: a long
   * Realtime session has hundreds). False when every one holds text back.
   */
  private forget(): boolean {
    const before = this.channels;
    for (const fields of [...this.choices.values(), this.loose ?? NONE])
      for (const [key, st] of fields)
        if (st.sent === '' && st.held === '') {
          fields.delete(key);
          this.channels--;
        }
    if (this.channels < before) return true;
    for (const fields of [...this.choices.values(), this.loose ?? NONE])
      for (const [key, st] of fields)
        if (st.sent.length < MIN_HOLD && st.held === '') {
          fields.delete(key);
          this.channels--;
        }
    return this.channels < before;
  }

  /** Whether `x` from `at` to its end is the start of a secret longer than that (not the whole of it). */
  private startsLonger(x: string, at: number): boolean {
    for (const g of this.forms) if (g.length > x.length - at && g.startsWith(x.slice(at))) return true;
    return false;
  }

  /** The longest tail of `text` that some secret starts with (but is not the whole of it); '' when none. */
  private startOfSecret(text: string): string {
    let best = 0;
    for (const f of this.forms) {
      const first = f.charCodeAt(0);
      for (let at = Math.max(0, text.length - f.length + 1); at < text.length - best; at++) {
        if (text.charCodeAt(at) !== first) continue;
        let k = 1;
        while (at + k < text.length && text.charCodeAt(at + k) === f.charCodeAt(k)) k++;
        if (at + k === text.length) {
          best = text.length - at;
          break;
        }
      }
    }
    return best === 0 ? '' : text.slice(text.length - best);
  }
}

/**
 * What a channel held back when it ends: a secret's start the text stopped inside, `[REDACTED]`; but fewer
 * than 8 characters of it, with what was sent of it before, go as written, a word like "token" or "sk-proj" (a key's public prefix), which hold no
 * more than a few characters of any key and would otherwise mangle an answer ending in them.
 */
function endOfHold(st: FieldState): string {
  // What of the secret was sent before the hold (at most 3 characters) counts too.
  return st.sent.length + st.held.length < MAX_RELEASED ? st.held : REDACTED;
}

/** `text` added to channel `key` of `delta`; `first`: a field of its own goes before the delta's others. */
function putText(delta: Json, key: string, text: string, first: boolean): void {
  if (key.startsWith('tool:')) {
    const index = Number(key.slice(5));
    const calls = Array.isArray(delta.tool_calls) ? (delta.tool_calls as unknown[]) : (delta.tool_calls = []);
    let call = calls.find((c): c is Json => isJson(c) && c.index === index);
    if (call === undefined) calls.unshift((call = { index, function: { arguments: '' } }));
    const fn = isJson(call.function) ? call.function : (call.function = {});
    fn.arguments = `${typeof fn.arguments === 'string' ? fn.arguments : ''}${text}`;
    return;
  }
  if (key === 'function_call' || key === 'audio') {
    const member = key === 'audio' ? 'transcript' : 'arguments';
    const obj = isJson(delta[key]) ? (delta[key] as Json) : (delta[key] = {});
    obj[member] = `${typeof obj[member] === 'string' ? obj[member] : ''}${text}`;
    return;
  }
  const [field = key, part] = key.split(':');
  const v = delta[field];
  if (part !== undefined) {
    const piece = part === 'text' ? { type: 'text', text } : { type: 'thinking', thinking: text };
    if (Array.isArray(v)) {
      if (first) v.unshift(piece);
      else v.push(piece);
    } else if (typeof v === 'string' && v !== '') delta[field] = [{ type: 'text', text: v }, piece];
    else setField(delta, field, [piece], first);
    return;
  }
  if (typeof v === 'string') delta[field] = `${v}${text}`;
  else if (Array.isArray(v)) v.push({ type: 'text', text });
  else setField(delta, field, text, first);
}

/** Sets `delta[field]`, as its first member when `first` (SDKs read a chunk's members in order). */
function setField(delta: Json, field: string, value: unknown, first: boolean): void {
  if (!first) {
    delta[field] = value;
    return;
  }
  const rest = Object.entries(delta);
  for (const [k] of rest) delete delta[k];
  delta[field] = value;
  for (const [k, v] of rest) if (k !== field) delta[k] = v;
}

/** A choice's logprobs for `field` made to spell `text`, the delta's text as sent: one token, or none. */
function matchLogprobs(choice: Json, field: 'content' | 'refusal', text: string): void {
  const logprobs = choice.logprobs;
  if (!isJson(logprobs) || !Array.isArray(logprobs[field])) return;
  let sum = 0;
  for (const t of logprobs[field] as unknown[])
    if (isJson(t) && typeof t.logprob === 'number') sum += t.logprob;
  logprobs[field] =
    text === ''
      ? []
      : [{ token: text, logprob: sum, bytes: [...Buffer.from(text, 'utf8')], top_logprobs: [] }];
}

function parse(json: string): Json | undefined {
  try {
    const v: unknown = JSON.parse(json);
    return isJson(v) ? v : undefined;
  } catch {
    return undefined;
  }
}
