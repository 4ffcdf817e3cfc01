/**
 * A Realtime (WebSocket) session's text deltas with a secret the upstream spells across them masked, as a
 * Responses stream's are (passthrough-sse-mask.ts): the echo guard masks each message on its own, and finds
 * a secret only within one. Messages go on as they came unless one's delta changed (written anew) or a
 * channel that held text back ended without the secret (a message like its last delta, carrying what it
 * held, goes before the one that ended it; see streaming/delta-mask.ts).
 */
import { DeltaMask, type HeldForms } from '../streaming/delta-mask.js';
import { parseJsonObject } from '../upstream/adapters/common.js';
import {
  channelOf,
  CLOSING_TYPES,
  closedItem,
  closingTextsMasked,
  isTextDelta,
} from './passthrough-sse-mask.js';

/** Events that end the text channels before them: an item, part or transcription done, the response over. */
const ENDS = /\.(?:done|completed|failed|incomplete)$|^error$/;
/** Messages without it carry no delta: unless text is held back or a key's start is in them, not read. */
const DELTA = Buffer.from('"delta"');
const CLOSING: readonly Buffer[] = CLOSING_TYPES.map((t) => Buffer.from(t));

type Json = Record<string, unknown>;

export class RealtimeDeltaMask {
  readonly #mask: DeltaMask;
  /** The delta message each channel that holds text back last had: the shape what it held goes out in. */
  readonly #last = new Map<string, Json>();
  /** The secrets' first characters: a message without any can end in no key (a closing message's text). */
  readonly #prefixes: readonly Buffer[];

  /** `forms`, `scrubEnd`: the secrets' spellings, and a whole text's end masked (the provider's echo guard). */
  constructor(
    forms: HeldForms,
    private readonly scrubEnd: (text: string) => string,
  ) {
    this.#mask = new DeltaMask(forms);
    this.#prefixes = forms.prefixes.map((p) => Buffer.from(p));
  }

  /**
   * One text message from the upstream: undefined when it goes on as it came, alone (most do); else the
   * messages to send in its place, in order.
   */
  messages(data: Buffer): string[] | undefined {
    if (
      this.#last.size === 0 &&
      !data.includes(DELTA) &&
      !CLOSING.some((c) => data.includes(c)) &&
      !this.#prefixes.some((p) => data.includes(p))
    )
      return undefined;
    const text = data.toString('utf8');
    const obj = parseJsonObject(text);
    const type = typeof obj?.type === 'string' ? obj.type : undefined;
    if (obj === undefined || type === undefined || typeof obj.delta !== 'string' || !isTextDelta(type)) {
      // Only a message that closes the text ends what it held back: a keep-alive or an audio delta between
      // two deltas of it does not (the rest of a key would then go through unread).
      if (obj !== undefined && (type === undefined || !ENDS.test(type))) return undefined;
      const ended = this.#ended(obj === undefined ? undefined : closedItem(obj));
      const masked = obj !== undefined && closingTextsMasked(obj, this.scrubEnd);
      if (ended.length === 0 && !masked) return undefined;
      ended.push(masked ? JSON.stringify(obj) : text);
      return ended;
    }
    const channel = channelOf(obj);
    // Another channel's delta ends nothing: parallel function calls may interleave their arguments.
    const delta = this.#mask.channelText(channel, obj.delta);
    if (this.#mask.holds(channel)) this.#last.set(channel, obj);
    else this.#last.delete(channel);
    return delta === obj.delta ? undefined : [JSON.stringify({ ...obj, delta })];
  }

  /** Messages that let go of what each channel still holds: the session is over. */
  end(): string[] {
    return this.#ended();
  }

  /** A message for each channel (of item `item` only, if given) that held text back and now ends. */
  #ended(item?: unknown): string[] {
    const out: string[] = [];
    const ofItem =
      item === undefined ? undefined : (channel: string) => this.#last.get(channel)?.item_id === item;
    for (const [channel, text] of this.#mask.endChannels(ofItem)) {
      const last = this.#last.get(channel);
      this.#last.delete(channel);
      if (last !== undefined) out.push(JSON.stringify(releasedAs(last, text)));
    }
    return out;
  }
}

/**
 * The message that carries what a channel held, shaped like its last delta: with an `event_id` of its own
 * (that one's, suffixed), as each server event has: a client that keeps or dedupes events by id would
 * otherwise take the held text for a repeat of a message it has, and drop it.
 */
function releasedAs(last: Json, text: string): Json {
  const id = last.event_id;
  return typeof id === 'string' ? { ...last, event_id: `${id}_held`, delta: text } : { ...last, delta: text };
}
