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
  private depth = 0;
  private inString = false;
  private escaped = false;
  private state: 'before' | 'inside' | 'after' = 'before';

  /** The part of `text` that belongs to the value. */
  feed(text: string): string {
    if (this.state === 'after') return '';
    let from = 0;
    if (this.state === 'before') {
      const open = firstOpening(text);
      if (open < 0) {
        this.lead += text;
        return '';
      }
      this.state = 'inside';
      from = open;
    }
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
    return lead;
  }
}

/** The whole JSON value in `text` (JsonAnswer), or `text` when it holds none. */
export function jsonAnswerText(text: string): string {
  const answer = new JsonAnswer();
  return answer.feed(text) + answer.end();
}

function firstOpening(text: string): number {
  return text.indexOf('{');
}
