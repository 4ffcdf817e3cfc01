import { createParser, type EventSourceParser } from 'eventsource-parser';
import { StringDecoder } from 'node:string_decoder';
import { codedError } from '../resilience/classify.js';

/**
 * The one SSE parser every dialect shares: bytes in (split anywhere, even inside a UTF-8 sequence or a
 * JSON frame), whole events out. Comments (`: ping`) and `retry:` lines are ignored, and so is a byte
 * order mark before the first line (the SSE decoding rules strip one).
 */
export interface SseParser {
  feed(chunk: Uint8Array | string): void;
  /** Flushes a last event that was not followed by a blank line. */
  end(): void;
}

const BOM = 0xfeff;
const CR = 13;
const LF = 10;
/**
 * CR and CRLF line ends, given to eventsource-parser as LF: on text holding any CR, its line splitter looks
 * for the next CR and the next LF from every line start, so a chunk of LF lines ending in one CR (or the
 * reverse) cost its length squared (18 ms of blocked event loop for a 64 KiB read, 30 times an LF stream).
 */
const CR_LINE_END = /\r\n?/g;

/**
 * A stream's text with every CR and CRLF line end made LF, chunk by chunk: a CRLF split between two chunks
 * is one line end (the CR becomes LF, the LF that starts the next chunk is dropped).
 */
export function lfLineEnds(): (text: string) => string {
  /** The last text ended with a CR, now an LF: an LF starting the next one is the rest of that CRLF. */
  let crEnded = false;
  return (text) => {
    if (crEnded && text !== '') {
      crEnded = false;
      if (text.charCodeAt(0) === LF) text = text.slice(1);
    }
    if (text.indexOf('\r') < 0) return text;
    crEnded = text.charCodeAt(text.length - 1) === CR;
    return text.replace(CR_LINE_END, '\n');
  };
}

/**
 * The most characters one event (its unfinished line plus the data lines gathered for it) may hold. Chat
 * chunks are deltas of a few hundred bytes; a whole long answer in one event stays far below this. Without a
 * bound, an upstream that never ends a line would grow the gateway's memory for as long as it sends.
 */
export const MAX_SSE_EVENT_CHARS = 4 * 1024 * 1024;

/** A chunk's text, where it ends with a whole character (a Buffer, as undici's bodies give). */
function utf8(chunk: Uint8Array): string {
  return (
    Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)
  ).toString('utf8');
}

/**
 * Whether `bytes` ends with the first bytes of a UTF-8 character whose rest is still to come (a read may cut
 * one anywhere): its last lead byte announces more bytes than follow it.
 */
export function endsInsideCharacter(bytes: Uint8Array): boolean {
  const n = bytes.length;
  // A character is at most 4 bytes: its lead byte is among the last 4.
  for (let i = n - 1; i >= 0 && i >= n - 4; i--) {
    const b = bytes[i]!;
    if ((b & 0xc0) === 0x80) continue; // a continuation byte: the lead is further back
    const size = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    return n - i < size;
  }
  return false;
}

export function createSseParser(
  onEvent: (type: string | undefined, data: string) => void,
  maxEventChars = MAX_SSE_EVENT_CHARS,
): SseParser {
  /** Made at the first chunk that ends inside a character: most streams never have one. */
  let decoder: StringDecoder | undefined;
  const parser: EventSourceParser = createParser({
    onEvent: (msg) => onEvent(msg.event, msg.data),
    maxBufferSize: maxEventChars,
    // Other parse errors (a bad `retry:`, an unknown field) are ignored, as the SSE rules say, but for one:
    // llama.cpp's server reports a failure as a line of its own, `error: {...}`, and then still sends
    // `data: [DONE]`. Ignored, a cut answer would end as a finished one; it is an `error` event.
    onError: (err) => {
      if (err.type === 'unknown-field' && err.field === 'error') {
        onEvent('error', err.value ?? '');
        return;
      }
      // Thrown out of `feed()`; classified `sse_event_too_large`.
      if (err.type === 'max-buffer-size-exceeded') {
        throw codedError(
          'sse_event_too_large',
          `an upstream SSE event exceeded ${maxEventChars} characters without ending`,
        );
      }
    },
  });
  let first = true;
  const toLf = lfLineEnds();
  return {
    feed(chunk) {
      let text: string;
      if (typeof chunk === 'string') text = chunk;
      else if (decoder === undefined && !endsInsideCharacter(chunk)) text = utf8(chunk);
      else text = (decoder ??= new StringDecoder('utf8')).write(chunk as Buffer);
      if (first && text !== '') {
        first = false;
        if (text.charCodeAt(0) === BOM) text = text.slice(1);
      }
      parser.feed(toLf(text));
    },
    end() {
      const rest = decoder?.end() ?? '';
      // A last event the upstream did not close with a blank line still counts (a body that ends after
      // `data: {...finish_reason...}\n` has finished): the blank line is added; after one, it adds nothing.
      parser.feed(toLf(rest) + '\n\n');
      parser.reset({ consume: true });
    },
  };
}
