import { createParser, type EventSourceParser } from 'eventsource-parser';
import { StringDecoder } from 'node:string_decoder';

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

export function createSseParser(onEvent: (type: string | undefined, data: string) => void): SseParser {
  const decoder = new StringDecoder('utf8');
  const parser: EventSourceParser = createParser({
    onEvent: (msg) => onEvent(msg.event, msg.data),
  });
  let first = true;
  return {
    feed(chunk) {
      let text = typeof chunk === 'string' ? chunk : decoder.write(chunk as Buffer);
      if (first && text !== '') {
        first = false;
        if (text.charCodeAt(0) === BOM) text = text.slice(1);
      }
      parser.feed(text);
    },
    end() {
      const rest = decoder.end();
      if (rest) parser.feed(rest);
      parser.reset({ consume: true });
    },
  };
}
