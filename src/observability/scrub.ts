/**
 * Removes every configured secret from text we did not write ourselves (upstream error bodies, in-stream
 * error events) before it reaches a client or a log line. An upstream that echoes our key back must not
 * hand it to the client.
 */
export class Scrubber {
  private readonly secrets: readonly string[];

  constructor(secrets: readonly string[]) {
    // Longest first, so a key that contains another is removed whole.
    this.secrets = [...secrets].filter((s) => s.length >= 4).sort((a, b) => b.length - a.length);
  }

  scrub(text: string): string {
    let out = text;
    for (const s of this.secrets) if (out.includes(s)) out = out.split(s).join('[REDACTED]');
    return out;
  }
}
