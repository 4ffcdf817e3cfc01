/**
 * A passthrough answer's SSE events with a secret the upstream spells across deltas masked: the Responses
 * API's `response.output_text.delta`, and every other `*.delta` event whose `delta` is text (reasoning,
 * refusals, tool arguments, transcripts; not audio: isTextDelta). The byte mask before it (scrub.ts
 * StreamMask) finds a secret only within one event. Events go on as they came, byte for byte, unless one's
 * delta changed (its data line is written anew) or a channel that held text back ended without the secret
 * (an event like its last delta, carrying `[REDACTED]`, goes before what ended it: its item's closing event,
 * or the response's end; see streaming/delta-mask.ts).
 */
import { StringDecoder } from 'node:string_decoder';
import { Transform } from 'node:stream';
import { DeltaMask, type HeldForms } from '../streaming/delta-mask.js';
import { parseJsonObject } from '../upstream/adapters/common.js';

/** An event that does not end within this many characters is relayed as it comes, unread, to its end. */
const MAX_EVENT_CHARS = 1 << 20;
/**
 * A blank line: two line endings, each CRLF, LF or CR (SSE allows any, mixed). A first CR ends a line only
 * when something other than LF follows it; a second one ends the event at once, and an LF that then comes
 * first in the next write is the rest of that CRLF (crPending).
 */
const BOUNDARY = /(?:\r\n|\r(?=[^\n])|\n)(?:\r\n|\r|\n)/g;
/** Events that end the text channels they follow: an item or content part done, the response over. */
const ENDS = /\.done$|^response\.(?:completed|failed|incomplete)$|^error$/;
const LINE = /\r\n|\r|\n/;
/**
 * The ends of closing events' types (ENDS, and the Realtime API's), as their bytes show them: such an event is
 * read even when nothing is held, its texts decoded (a `\u`-escaped key).
 */
export const CLOSING_TYPES: readonly string[] = ['done"', 'completed"', 'failed"', 'incomplete"', 'error"'];

type Json = Record<string, unknown>;

/** The delta event a channel last had: the shape its `[REDACTED]` is sent in. */
interface LastDelta {
  readonly lines: readonly string[];
  readonly obj: Json;
  readonly sep: string;
}

export function sseDeltaMask(forms: HeldForms, scrubEnd: (text: string) => string): Transform {
  const mask = new DeltaMask(forms);
  const decoder = new StringDecoder('utf8');
  const last = new Map<string, LastDelta>();
  /** Inside an event past MAX_EVENT_CHARS: relayed as it comes, unread, until its blank line. */
  let skipping = false;

  /** `[REDACTED]` events for the channels that held text back (of item `item` only, if given), now ended. */
  const ended = (item?: unknown): string => {
    let out = '';
    const ofItem =
      item === undefined ? undefined : (channel: string) => last.get(channel)?.obj.item_id === item;
    for (const [channel, text] of mask.endChannels(ofItem)) {
      const l = last.get(channel);
      last.delete(channel);
      if (l !== undefined) out += withData(l.lines, { ...l.obj, delta: text }) + l.sep;
    }
    return out;
  };

  /** One whole event (`block`, then its blank line `sep`) as it is to be relayed. */
  const event = (block: string, sep: string): string => {
    const lines = block.split(LINE);
    let data: string | undefined;
    for (const line of lines) {
      if (!line.startsWith('data:')) continue;
      const value = line.startsWith('data: ') ? line.slice(6) : line.slice(5);
      data = data === undefined ? value : `${data}\n${value}`;
    }
    // Comments (`: keep-alive`) and events without data end nothing.
    if (data === undefined) return block + sep;
    // Read: a delta, anything while text is held, and what may end in a key's start (a closing event's text).
    const read =
      data.includes('"delta"') ||
      last.size > 0 ||
      CLOSING_TYPES.some((c) => data.includes(c)) ||
      forms.prefixes.some((p) => data.includes(p));
    const obj = read ? parseJsonObject(data) : undefined;
    if (
      obj === undefined ||
      typeof obj.delta !== 'string' ||
      typeof obj.type !== 'string' ||
      !isTextDelta(obj.type)
    ) {
      // Only an event that closes the text ends what it held back: an annotation or a keep-alive between
      // two deltas of it does not (the rest of a key would then go through unread).
      const type = typeof obj?.type === 'string' ? obj.type : '';
      if (obj === undefined) return (read ? ended() : '') + block + sep;
      if (!ENDS.test(type)) return block + sep;
      const closing = closingTextsMasked(obj, scrubEnd) ? withData(lines, obj) : block;
      return ended(closedItem(obj)) + closing + sep;
    }
    const channel = channelOf(obj);
    // Another channel's delta ends nothing: parallel function calls may interleave their arguments.
    const out = mask.channelText(channel, obj.delta);
    if (mask.holds(channel)) last.set(channel, { lines, obj, sep });
    else last.delete(channel);
    return (out === obj.delta ? block : withData(lines, { ...obj, delta: out })) + sep;
  };

  /** Text of an event not ended yet, in the pieces it came in (joined once it ends), and its last 3 characters. */
  let parts: string[] = [];
  let partsChars = 0;
  let tail = '';
  /** The last event ended in a CR at the end of what had come: an LF first in the next write goes with it. */
  let crPending = false;
  const take = (input: string): string => {
    if (skipping) return skip(input);
    let text = input;
    let lead = '';
    if (crPending && text.startsWith('\n')) {
      lead = '\n';
      text = text.slice(1);
    }
    if (text !== '') crPending = false;
    // A long event arriving in small writes is kept as it came and read once it ends, not joined and read
    // over again at each write: only the new text (and the start of a boundary before it) is looked at.
    BOUNDARY.lastIndex = 0;
    if (!BOUNDARY.test(tail + text)) {
      parts.push(text);
      partsChars += text.length;
      tail = (tail + text).slice(-3);
      if (partsChars <= MAX_EVENT_CHARS) return lead;
      // Its start goes as it came; the events after it are read again (a long echoed `instructions` in
      // `response.created` must not leave the deltas that follow unmasked).
      skipping = true;
      const rest = parts.join('');
      parts = [];
      partsChars = 0;
      return lead + ended() + rest;
    }
    const buf = parts.join('') + text;
    let out = lead;
    let from = 0;
    let sep = '';
    BOUNDARY.lastIndex = 0;
    for (let m = BOUNDARY.exec(buf); m !== null; m = BOUNDARY.exec(buf)) {
      out += event(buf.slice(from, m.index), m[0]);
      from = m.index + m[0].length;
      sep = m[0];
    }
    const rest = buf.slice(from);
    parts = rest === '' ? [] : [rest];
    partsChars = rest.length;
    tail = rest.slice(-3);
    crPending = rest === '' && sep.endsWith('\r');
    return out;
  };

  /** The rest of an event too long to read, as it comes, up to its blank line; what follows is read. */
  const skip = (input: string): string => {
    BOUNDARY.lastIndex = 0;
    const m = BOUNDARY.exec(tail + input);
    if (m === null) {
      tail = (tail + input).slice(-3);
      return input;
    }
    const end = m.index + m[0].length - tail.length;
    skipping = false;
    tail = '';
    const rest = input.slice(end);
    crPending = rest === '' && m[0].endsWith('\r');
    return input.slice(0, end) + (rest === '' ? '' : take(rest));
  };

  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      const out = take(decoder.write(chunk));
      done(null, out === '' ? undefined : Buffer.from(out, 'utf8'));
    },
    flush(done) {
      let out = take(decoder.end());
      // The last event, if no blank line followed it, is read as the others are.
      const rest = parts.join('');
      parts = [];
      if (rest !== '') out += event(rest, '');
      out += ended();
      done(null, out === '' ? undefined : Buffer.from(out, 'utf8'));
    },
  });
}

/**
 * A delta that is text: not an audio delta (`response.audio.delta`, `response.output_audio.delta`), whose
 * base64 a client decodes delta by delta, and which no hold may cut.
 */
export function isTextDelta(type: string): boolean {
  return !type.endsWith('audio.delta');
}

/** The text channel a delta event is of: its type, item, output, content part and summary part. */
export function channelOf(obj: Json): string {
  return [obj.type, obj.item_id, obj.output_index, obj.content_index, obj.summary_index].join('|');
}

/**
 * The item a closing event closes (`item_id`, or an output item's `item.id`): only that item's channels end
 * there, as another item's closing (a user's transcript done mid-answer) says nothing of this one. Undefined
 * for one that closes everything (the response done, an error).
 */
export function closedItem(obj: Json): unknown {
  if (obj.item_id !== undefined) return obj.item_id;
  const item = obj.item;
  return item !== null && typeof item === 'object' ? (item as Json).id : undefined;
}

/**
 * A closing event's texts (`text`, `transcript`, `arguments`, each part's and item's, `response.done`'s
 * output) are the whole text its deltas carried: one that ends inside the key is masked there as the deltas'
 * end was (`scrubEnd`). True when any changed (the event is then written anew). Read without recursion: a
 * hostile event's nesting costs no stack.
 */
export function closingTextsMasked(obj: Json, scrubEnd: (text: string) => string): boolean {
  let changed = false;
  const stack: unknown[] = [obj];
  for (let node = stack.pop(); node !== undefined; node = stack.pop()) {
    if (node === null || typeof node !== 'object') continue;
    const entries = node as Record<string, unknown>;
    for (const key of Object.keys(entries)) {
      const v = entries[key];
      if (typeof v === 'string') {
        const out = scrubEnd(v);
        if (out !== v) {
          entries[key] = out;
          changed = true;
        }
      } else if (v !== null && typeof v === 'object') stack.push(v);
    }
  }
  return changed;
}

/** The event's lines with its data written anew from `obj` (one `data:` line, where the first one was). */
function withData(lines: readonly string[], obj: Json): string {
  const out: string[] = [];
  let written = false;
  for (const line of lines) {
    if (!line.startsWith('data:')) out.push(line);
    else if (!written) {
      out.push(`data: ${JSON.stringify(obj)}`);
      written = true;
    }
  }
  return out.join('\n');
}
