/**
 * Removes every configured secret from text we did not write ourselves (upstream error bodies, in-stream
 * error events) before it reaches a client or a log line. An upstream that echoes our key back must not
 * hand it to the client.
 */
import { Transform } from 'node:stream';

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

/**
 * Masks secrets in a byte stream as it passes (a passthrough answer relayed as it comes): each byte of one
 * becomes `*`, so a Content-Length stays true and a binary body keeps its size. A chunk that ends in the
 * first bytes of a secret holds those back until the next chunk shows whether the secret follows; any other
 * byte is passed on at once (an SSE event ends in a blank line, which no secret starts with).
 */
export class StreamMask {
  private readonly keys: readonly Buffer[];

  constructor(secrets: readonly string[]) {
    this.keys = secrets.filter((s) => s.length >= 4).map((s) => Buffer.from(s, 'utf8'));
  }

  get empty(): boolean {
    return this.keys.length === 0;
  }

  transform(): Transform {
    let held: Buffer | undefined;
    return new Transform({
      transform: (chunk: Buffer, _enc, done) => {
        let buf = held === undefined ? chunk : Buffer.concat([held, chunk]);
        held = undefined;
        buf = this.mask(buf);
        const keep = this.partialTail(buf);
        if (keep > 0) {
          held = buf.subarray(buf.length - keep);
          buf = buf.subarray(0, buf.length - keep);
        }
        done(null, buf.length > 0 ? buf : undefined);
      },
      flush: (done) => done(null, held),
    });
  }

  /** `buf` with every whole secret masked: a copy when one is found (the chunk may be shared), else itself. */
  mask(buf: Buffer): Buffer {
    let out = buf;
    for (const key of this.keys) {
      let at = out.indexOf(key);
      while (at !== -1) {
        if (out === buf) out = Buffer.from(buf);
        out.fill(0x2a, at, at + key.length);
        at = out.indexOf(key, at + key.length);
      }
    }
    return out;
  }

  /** How many bytes at the end of `buf` are the start of a secret (the longest such run). */
  private partialTail(buf: Buffer): number {
    let keep = 0;
    for (const key of this.keys) {
      for (let at = Math.max(0, buf.length - key.length + 1); at < buf.length - keep; at++) {
        if (buf[at] === key[0] && buf.compare(key, 0, buf.length - at, at) === 0) {
          keep = buf.length - at;
          break;
        }
      }
    }
    return keep;
  }
}
