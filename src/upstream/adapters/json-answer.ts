/**
 * The JSON value in an answer asked for as JSON (`response_format` json_object or json_schema) from a model
 * that is only told so in its prompt (Claude): it wraps the value in a ```json fence, or opens with a sentence
 * ("Here is the weather as JSON:"), which every SDK's parser refuses (the openai SDK's parse(), the AI SDK's
 * generateObject, LangChain's withStructuredOutput). Fed the text as it comes, this gives back only the first
 * top-level object (both formats ask for one), whole; text with no object in it is given back as it was, at
 * the end.
 */
export class JsonAnswer {
  /** Text before the value opens, held: given back only if no value ever opens. */
  private lead = '';
  /** Where in `lead` to look for an opening next (a brace not yet decided is looked at again). */
  private scanFrom = 0;
  private depth = 0;
  private inString = false;
  private escaped = false;
  private state: 'before' | 'inside' | 'after' = 'before';

  /** The part of `text` that belongs to the value. */
  feed(text: string): string {
    if (this.state === 'after') return '';
    if (this.state === 'inside') return this.scan(text, 0);
    this.lead += text;
    const open = this.opening();
    if (open < 0) return '';
    this.state = 'inside';
    const value = this.lead;
    this.lead = '';
    return this.scan(value, open);
  }

  /**
   * The first `{` in the held text that opens an object: one followed by `"` or `}` (a preface's "{city,
   * celsius}" is none). -1 when there is none yet, a brace at the end waiting for what follows.
   */
  private opening(): number {
    const s = this.lead;
    for (let i = s.indexOf('{', this.scanFrom); i >= 0; i = s.indexOf('{', i + 1)) {
      let j = i + 1;
      while (j < s.length && isSpace(s.charCodeAt(j))) j++;
      if (j === s.length) {
        this.scanFrom = i;
        return -1;
      }
      const c = s.charCodeAt(j);
      if (c === 0x22 || c === 0x7d) return i; // '"' '}'
    }
    this.scanFrom = s.length;
    return -1;
  }

  /** The part of `text` from `from` that belongs to the value, up to its close. */
  private scan(text: string, from: number): string {
    for (let i = from; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === 0x5c)
          this.escaped = true; // '\'
        else if (c === 0x22) this.inString = false; // '"'
      } else if (c === 0x22) this.inString = true;
      else if (c === 0x7b || c === 0x5b)
        this.depth++; // '{' '['
      else if ((c === 0x7d || c === 0x5d) && --this.depth === 0) {
        this.state = 'after';
        return text.slice(from, i + 1);
      }
    }
    return text.slice(from);
  }

  /** What is left to give at the end: the held text when no value ever opened. */
  end(): string {
    if (this.state !== 'before') return '';
    const lead = this.lead;
    this.lead = '';
    this.scanFrom = 0; // text after a tool call's lead-in is looked at from its own start
    return lead;
  }
}

/** The whole JSON value in `text` (JsonAnswer), or `text` when it holds none. */
export function jsonAnswerText(text: string): string {
  const answer = new JsonAnswer();
  return answer.feed(text) + answer.end();
}

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}
