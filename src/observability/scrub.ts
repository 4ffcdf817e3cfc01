/**
 * Removes every configured secret from text we did not write ourselves (upstream error bodies, in-stream
 * error events) before it reaches a client or a log line. An upstream that echoes our key back must not
 * hand it to the client.
 */
import { Transform } from 'node:stream';
import { credentialLike, providerSecrets } from '../config/secrets.js';
import { HTML5_ASCII_NAMES } from '../html.js';
import type { ProviderRuntime } from '../runtime.js';
import { heldForms, MAX_RELEASED, type HeldForms } from '../streaming/delta-mask.js';

const REDACTED = '[REDACTED]';

/** What a truncated message ends with (adapters/common.ts truncateMessage). */
const CUT = '…';

/**
 * Each secret as an echo may spell it: as is, JSON-escaped (a `"` or `\`; a `/` as `\/`, as PHP and some Java
 * encoders write it; with `\uXXXX` escapes) and URL-encoded, whichever differ; at least 4 characters; longest
 * first, so a secret that contains another is removed whole.
 */
export function secretForms(secrets: readonly string[]): string[] {
  const forms = new Set<string>();
  for (const s of secrets) {
    if (s.length < 4) continue;
    const json = JSON.stringify(s).slice(1, -1);
    forms.add(s).add(json).add(json.replaceAll('/', '\\/'));
    // Percent-encoded: as encodeURIComponent writes it, as Python's urllib quote does (`/` kept), and either
    // with lower-case hex digits.
    const url = encodeURIComponent(s);
    for (const u of [url, url.replaceAll('%2F', '/')])
      forms.add(u).add(u.replace(/%[\dA-F]{2}/g, (e) => e.toLowerCase()));
    // JSON with `\uXXXX` escapes, as encoders write by default: .NET's System.Text.Json `"&'+<>\`` and all past
    // ASCII (upper-case hex), Go's encoding/json `&<>`, Python's json.dumps all past ASCII (lower-case).
    forms.add(s.replace(/["&'+<>`\\\u007f-\uffff]/g, (c) => (c === '\\' ? '\\\\' : escapeUnit(c, true))));
    forms
      .add(json.replace(/[&<>]/g, (c) => escapeUnit(c)))
      .add(json.replace(/[\u007f-\uffff]/g, (c) => escapeUnit(c)));
    // HTML, as an error page quotes it: Go's html/template (`+` too, as `&#43;`), Python's html.escape and
    // PHP's htmlspecialchars, and OWASP's encoder (`/` as `&#x2F;`).
    for (const table of HTML_ESCAPES) forms.add(s.replace(/["&'+/<>]/g, (c) => table[c] ?? c));
    // Every ASCII character HTML5 names, by name (PHP's htmlentities with ENT_HTML5: `_` as `&lowbar;`).
    forms.add(s.replace(/[\t\n!-,./:-@[-`{-}]/g, (c) => `&${HTML5_ASCII_NAMES[c]};`));
  }
  return [...forms].sort((a, b) => b.length - a.length);
}

const HTML_BASE: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;' };
const HTML_ESCAPES: readonly Record<string, string>[] = [
  { ...HTML_BASE, '"': '&#34;', "'": '&#39;', '+': '&#43;' },
  { ...HTML_BASE, '"': '&quot;', "'": '&#x27;' },
  { ...HTML_BASE, '"': '&quot;', "'": '&#039;' },
  { ...HTML_BASE, '"': '&quot;', "'": '&#x27;', '/': '&#x2F;' },
];

/** One UTF-16 unit as JSON's `\uxxxx`, its hex digits in lower or upper case. */
function escapeUnit(c: string, upper = false): string {
  const hex = c.charCodeAt(0).toString(16).padStart(4, '0');
  return `\\u${upper ? hex.toUpperCase() : hex}`;
}

export class Scrubber {
  private readonly secrets: readonly string[];

  constructor(secrets: readonly string[]) {
    this.secrets = secretForms(secrets);
  }

  /** Whether `text` holds a secret, in any of its spellings. */
  holds(text: string): boolean {
    for (const s of this.secrets) if (text.includes(s)) return true;
    return false;
  }

  /** `text` without any secret; `cut`: the text was cut short (a bounded read), so its tail is checked too. */
  scrub(text: string, cut = false): string {
    let out = text;
    for (const s of this.secrets) if (out.includes(s)) out = out.split(s).join(REDACTED);
    if (out.endsWith(CUT)) return this.cutTail(out, out.length - CUT.length);
    return cut ? this.cutTail(out, out.length) : out;
  }

  /**
   * A message cut where it was too long (adapters/common.ts truncateMessage ends it with `…`; a bounded read
   * stops mid-body) may end in the first characters of a secret, which no longer match the whole one: those
   * go too, from MAX_RELEASED of them, as at the end of a stream (fewer are a word like "sk-live" or "token",
   * no part of the key to speak of).
   */
  private cutTail(text: string, end: number): string {
    for (const s of this.secrets) {
      for (let k = Math.min(s.length - 1, end); k >= MAX_RELEASED; k--) {
        if (text.startsWith(s.slice(0, k), end - k))
          return `${text.slice(0, end - k)}${REDACTED}${text.slice(end)}`;
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
    this.keys = secretForms(secrets).map((s) => Buffer.from(s, 'utf8'));
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
      // A body that ends inside a secret (an echo cut short): its held start is masked by the rule a stream's
      // held text ends by (streaming/delta-mask.ts): 8 or more characters masked, fewer (a word a key starts
      // with) as written.
      flush: (done) =>
        done(
          null,
          held !== undefined && held.length >= MAX_RELEASED ? Buffer.alloc(held.length, 0x2a) : held,
        ),
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

export interface EchoGuard {
  readonly mask: StreamMask;
  readonly scrub: (text: string) => string;
  /**
   * `scrub`, and a text that ends in MAX_RELEASED or more of a secret's first characters has those masked too:
   * a whole answer's text (an event stream's `*.done`) that stopped inside the key, as its deltas' end does.
   */
  readonly scrubEnd: (text: string) => string;
  /**
   * `scrub` for a JSON answer's text, and a string in it that ends in MAX_RELEASED or more of a secret's first
   * characters (an answer stopped inside the key at its max_tokens) has those masked too, as a stream's end.
   */
  readonly scrubAnswer: (json: string) => string;
  /** Every spelling of the secrets as bytes, to find in a message without decoding it (WebSocket messages). */
  readonly bytes: readonly Buffer[];
  /** Every spelling of the secrets (secretForms), to find in a streamed answer's deltas (DeltaMask). */
  readonly forms: HeldForms;
}

/**
 * A function giving `json` with each string that ends in MAX_RELEASED or more of a secret's first characters
 * masked there. A secret starts with one of `held.prefixes`, most spellings with the same few: only the places
 * of each distinct one are looked at, so an answer without any costs a search or two.
 */
export function stringEndsMasker(held: HeldForms): (json: string) => string {
  const byPrefix = new Map<string, string[]>();
  held.prefixes.forEach((p, j) => {
    const forms = byPrefix.get(p);
    if (forms === undefined) byPrefix.set(p, [held.forms[j]!]);
    else forms.push(held.forms[j]!);
  });
  // Arrays, not the Map: every JSON answer goes through here, and a Map's iteration allocates.
  const prefixes = [...byPrefix.keys()];
  const groups = [...byPrefix.values()];
  const longest = groups.map((forms) => Math.max(...forms.map((f) => f.length)));
  return (json) => {
    let out = json;
    for (let g = 0; g < prefixes.length; g++) {
      const prefix = prefixes[g]!;
      const forms = groups[g]!;
      const most = longest[g]!;
      // The end of the string the last place found is in: found once a string, however many places it holds.
      let end = -1;
      for (let at = out.indexOf(prefix); at !== -1; at = out.indexOf(prefix, at + 1)) {
        if (at >= end && (end = stringEnd(out, at)) < 0) break;
        const length = end - at;
        // Only a string's end that is shorter than a whole spelling can be one's start.
        if (length < MAX_RELEASED || length >= most) continue;
        const tail = out.slice(at, end);
        if (!forms.some((f) => length < f.length && f.startsWith(tail))) continue;
        out = `${out.slice(0, at)}${REDACTED}${out.slice(end)}`;
        end = at + REDACTED.length;
      }
    }
    return out;
  };
}

/** Where the JSON string that `at` is inside ends (its closing quote), or -1. */
function stringEnd(json: string, at: number): number {
  for (let i = json.indexOf('"', at); i !== -1; i = json.indexOf('"', i + 1)) {
    let backslashes = 0;
    while (json.charCodeAt(i - 1 - backslashes) === 0x5c) backslashes++;
    if (backslashes % 2 === 0) return i;
  }
  return -1;
}

/** Per provider (a reload makes a new one): what of ours it can echo in an answer, and how that is hidden. */
const ECHO_GUARDS = new WeakMap<ProviderRuntime, EchoGuard | null>();

export function echoGuard(provider: ProviderRuntime | undefined): EchoGuard | undefined {
  if (provider === undefined) return undefined;
  let guard = ECHO_GUARDS.get(provider);
  if (guard === undefined) {
    // Placeholders (`none`, vLLM's `EMPTY`) are no credential to find in a successful answer: masked there,
    // every "none" in a Responses API object became "****". Error bodies are still scrubbed of them.
    const secrets = providerSecrets(provider.config).filter(credentialLike);
    const scrubber = new Scrubber(secrets);
    const forms = secretForms(secrets);
    const held = heldForms(forms);
    const endsMasked = stringEndsMasker(held);
    guard =
      secrets.length === 0
        ? null
        : {
            mask: new StreamMask(secrets),
            scrub: (t) => scrubber.scrub(t),
            scrubEnd: (t) => scrubber.scrub(t, true),
            scrubAnswer: (t) => endsMasked(scrubber.scrub(t)),
            bytes: forms.map((t) => Buffer.from(t)),
            forms: held,
          };
    ECHO_GUARDS.set(provider, guard);
  }
  return guard ?? undefined;
}
