/**
 * Removes every configured secret from text we did not write ourselves (upstream error bodies, in-stream
 * error events) before it reaches a client or a log line. An upstream that echoes our key back must not
 * hand it to the client.
 */
/** What a truncated message ends with (adapters/common.ts truncateMessage). */
const CUT = '…';

export class Scrubber {
  private readonly secrets: readonly string[];

  constructor(secrets: readonly string[]) {
    // Longest first, so a key that contains another is removed whole.
    this.secrets = [...secrets].filter((s) => s.length >= 4).sort((a, b) => b.length - a.length);
  }

  scrub(text: string): string {
    let out = text;
    for (const s of this.secrets) if (out.includes(s)) out = out.split(s).join('[REDACTED]');
    return out.endsWith(CUT) ? this.cutTail(out) : out;
  }

  /**
   * A message cut where it was too long (adapters/common.ts truncateMessage ends it with `…`) may end in the
   * first characters of a secret, which no longer match the whole one: those go too.
   */
  private cutTail(text: string): string {
    const end = text.length - CUT.length;
    for (const s of this.secrets) {
      for (let k = Math.min(s.length - 1, end); k >= 4; k--) {
        if (text.startsWith(s.slice(0, k), end - k)) return `${text.slice(0, end - k)}[REDACTED]${CUT}`;
      }
    }
    return text;
  }
}
