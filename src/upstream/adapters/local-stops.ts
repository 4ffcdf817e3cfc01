/**
 * Stop sequences an upstream refuses, applied to the answer's text by the gateway: Anthropic takes no stop
 * sequence of whitespace alone (`"\n"`, `"\n\n"`), which completion-style prompts use to get one line. The
 * answer is cut where the first of them begins, as OpenAI cuts it (the sequence itself is not sent), and
 * finishes with `stop`.
 */

/** The client's stop sequences (a string or a list) that are whitespace alone. */
export function whitespaceStops(stop: unknown): string[] {
  const list = typeof stop === 'string' ? [stop] : Array.isArray(stop) ? stop : [];
  return list.filter((s): s is string => typeof s === 'string' && s !== '' && s.trim() === '');
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
