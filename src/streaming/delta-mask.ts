/**
 * Masks configured secrets in a streamed answer's text, whole or split across deltas. A model that echoes a
 * key sends it as several tokens, one delta each (`sk`, `-proj`, `-Xa9`, …): each frame scrubbed alone lets
 * all of it through. Per choice and text field the last characters sent are kept, so a secret that ends in
 * this delta is found and its part here masked; a delta that ends in 4 or more of a secret's first characters
 * holds those back until the next shows whether the secret follows. At most the 3 characters before the hold
 * (an `sk-`) reach the client, as with a cut error body (observability/scrub.ts cutTail).
 */
import { ANSWER_TEXT_FIELDS } from '../text.js';

const REDACTED = '[REDACTED]';
/** The shortest run of a secret's first characters that is held back. */
const MIN_HOLD = 4;

interface FieldState {
  /** The last characters sent, up to one fewer than the longest secret. */
  sent: string;
  /** Characters held back: the first ones of a secret, perhaps. */
  held: string;
}

type Json = Record<string, unknown>;

export class DeltaMask {
  private readonly forms: readonly string[];
  private readonly prefixes: readonly string[];
  private readonly keep: number;
  /** Per choice, each text field's state (`tool:K` for the arguments of tool call K). */
  private readonly choices = new Map<number, Map<string, FieldState>>();
  /** Fields with characters held back. */
  private holding = 0;

  /** `forms`: every spelling of every secret (scrub.ts secretForms), each at least 4 characters. */
  constructor(forms: readonly string[]) {
    this.forms = forms.filter((f) => f.length >= MIN_HOLD);
    this.prefixes = this.forms.map((f) => f.slice(0, MIN_HOLD));
    this.keep = Math.max(0, ...this.forms.map((f) => f.length - 1));
  }

  /**
   * One `chat.completion.chunk` as it is to be relayed: `json` itself when no delta changed, else the chunk
   * written anew. `chunk` is `json` parsed, when the caller has it; `content`: the chunk carries answer text.
   */
  frame(json: string, chunk: Json | undefined, content: boolean): string {
    if (this.forms.length === 0 || (!content && this.holding === 0)) return json;
    const obj = chunk ?? parse(json);
    const choices = obj?.choices;
    if (!Array.isArray(choices)) return json;
    let changed = false;
    for (let i = 0; i < choices.length; i++) {
      const choice = choices[i] as Json | null;
      if (choice === null || typeof choice !== 'object') continue;
      const at = typeof choice.index === 'number' ? choice.index : i;
      let delta = choice.delta as Json | null | undefined;
      if (delta !== null && typeof delta === 'object' && this.deltaChanged(at, delta)) changed = true;
      if (typeof choice.finish_reason === 'string' && choice.finish_reason !== '' && this.holding > 0) {
        if (delta === null || typeof delta !== 'object') choice.delta = delta = {};
        if (this.finish(at, delta)) changed = true;
      }
    }
    return changed ? JSON.stringify(obj) : json;
  }

  private deltaChanged(at: number, delta: Json): boolean {
    let fields = this.choices.get(at);
    if (fields === undefined) this.choices.set(at, (fields = new Map()));
    let changed = false;
    for (const field of ANSWER_TEXT_FIELDS) {
      const v = delta[field];
      if (typeof v !== 'string') continue;
      const out = this.step(fields, field, v);
      if (out !== v) {
        delta[field] = out;
        changed = true;
      }
    }
    const calls = delta.tool_calls;
    if (Array.isArray(calls)) {
      for (let k = 0; k < calls.length; k++) {
        const fn = (calls[k] as { function?: Json } | null)?.function;
        if (typeof fn?.arguments !== 'string') continue;
        const index = (calls[k] as Json).index;
        const out = this.step(fields, `tool:${typeof index === 'number' ? index : k}`, fn.arguments);
        if (out !== fn.arguments) {
          fn.arguments = out;
          changed = true;
        }
      }
    }
    const fn = delta.function_call as Json | null | undefined;
    if (typeof fn?.arguments === 'string') {
      const out = this.step(fields, 'function_call', fn.arguments);
      if (out !== fn.arguments) {
        fn.arguments = out;
        changed = true;
      }
    }
    return changed;
  }

  /**
   * The choice ended: what it held back is the start of a secret the answer stopped inside, masked. It joins
   * the field's text in this last delta.
   */
  private finish(at: number, delta: Json): boolean {
    const fields = this.choices.get(at);
    if (fields === undefined) return false;
    this.choices.delete(at);
    let changed = false;
    for (const [field, st] of fields) {
      if (st.held === '') continue;
      this.holding--;
      changed = true;
      if (field.startsWith('tool:')) {
        const index = Number(field.slice(5));
        const calls = Array.isArray(delta.tool_calls)
          ? (delta.tool_calls as Json[])
          : (delta.tool_calls = []);
        let call = calls.find((c) => c !== null && typeof c === 'object' && c.index === index);
        if (call === undefined) calls.push((call = { index, function: { arguments: '' } }));
        const fn = (call.function ??= {}) as Json;
        fn.arguments = `${typeof fn.arguments === 'string' ? fn.arguments : ''}${REDACTED}`;
      } else if (field === 'function_call') {
        const fn = (delta.function_call ??= {}) as Json;
        fn.arguments = `${typeof fn.arguments === 'string' ? fn.arguments : ''}${REDACTED}`;
      } else {
        const v = delta[field];
        delta[field] = `${typeof v === 'string' ? v : ''}${REDACTED}`;
      }
    }
    return changed;
  }

  /** The text to send for one field's delta `d`: secrets masked, a secret's possible start held back. */
  private step(fields: Map<string, FieldState>, field: string, d: string): string {
    let st = fields.get(field);
    if (st === undefined) fields.set(field, (st = { sent: '', held: '' }));
    const w = st.held + d;
    if (w === '') return d;
    const x = st.sent + w;
    const base = st.sent.length;

    // Whole secrets that end in this delta: their part here is masked.
    let ranges: [number, number][] | undefined;
    for (const f of this.forms) {
      for (
        let at = x.indexOf(f, Math.max(0, base - f.length + 1));
        at !== -1;
        at = x.indexOf(f, at + f.length)
      )
        (ranges ??= []).push([Math.max(at, base) - base, at + f.length - base]);
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
      const from = Math.max(clearFrom > 0 ? base + clearFrom : 0, x.length - f.length + 1);
      const p = this.prefixes[j] as string;
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
    st.sent = (st.sent + out).slice(-this.keep);
    return out === d ? d : out;
  }
}

function parse(json: string): Json | undefined {
  try {
    const v: unknown = JSON.parse(json);
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Json) : undefined;
  } catch {
    return undefined;
  }
}
