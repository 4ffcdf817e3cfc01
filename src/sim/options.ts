export type SimKind = 'openai' | 'anthropic';

export interface SimBehaviour {
  /** Delay before the response headers. */
  latencyMs: number;
  /** Stream pacing in content chunks per second; 0 = no delay between chunks. */
  tokensPerS: number;
  /** Explicit gap between content chunks; overrides tokensPerS. */
  chunkDelayMs?: number;
  /** Number of content chunks ("tokens") in a reply. */
  completionTokens: number;
  /** 0..1, probability of a random failure (a 500, or `status`). */
  failRate: number;
  /** With `failRate`, the status of its failures; without, forced on every request. Dialect-correct bodies. */
  status?: number;
  /** Sent as Retry-After with 429, 503 and 529. */
  retryAfterS?: number;
  errorMessage?: string;
  /** Accept the request, never send headers (until the client goes away). */
  hang: boolean;
  /** Send 200 headers and the stream preamble, then nothing more. */
  hangAfterHeaders?: boolean;
  /** Destroy the socket after K content chunks (0 = right after the preamble). */
  dropAfterChunks?: number;
  /** After K content chunks, send an in-stream error event and end the response. */
  errorEventAfterChunks?: number;
  /** Streams: send the last event ([DONE] / message_stop), then keep the body open this long before ending it. */
  endDelayMs?: number;
  /** Reply text, split into completionTokens chunks. */
  reply?: string;
  /** Answer requests that carry tools with a call to the first tool. */
  toolCall?: boolean;
  /** Error bodies echo the request's credential, to test that the gateway scrubs secrets. */
  echoAuthInError?: boolean;
  /** Include usage in JSON answers (OpenAI streams: only with stream_options.include_usage). */
  usage: boolean;
}

export interface SimOptions extends SimBehaviour {
  kind: SimKind;
  name: string;
  /** When set, requests must carry it (OpenAI: Authorization: Bearer; Anthropic: x-api-key). */
  apiKey?: string;
  /** Benchmark mode: cached response bodies, no recording, no delays, no script. */
  fast: boolean;
  host?: string;
  port?: number;
}

export const DEFAULT_BEHAVIOUR: Readonly<SimBehaviour> = Object.freeze({
  latencyMs: 0,
  tokensPerS: 0,
  completionTokens: 8,
  failRate: 0,
  hang: false,
  usage: true,
});

export function resolveOptions(partial: Partial<SimOptions> = {}): SimOptions {
  const defined = Object.fromEntries(Object.entries(partial).filter(([, v]) => v !== undefined));
  const options: SimOptions = {
    ...DEFAULT_BEHAVIOUR,
    kind: 'openai',
    name: 'sim',
    fast: false,
    host: '127.0.0.1',
    port: 0,
    ...defined,
  };
  if (options.kind !== 'openai' && options.kind !== 'anthropic') {
    throw new Error(`simulator: kind must be "openai" or "anthropic", got ${JSON.stringify(options.kind)}`);
  }
  return options;
}

/** The behaviour part of the options: what set() and script() can change. */
export function behaviourOf(options: SimOptions): SimBehaviour {
  const { kind: _k, name: _n, apiKey: _a, fast: _f, host: _h, port: _p, ...behaviour } = options;
  return behaviour;
}

type FlagType = 'int' | 'number' | 'rate' | 'status' | 'port' | 'string' | 'kind' | 'boolean';
type FlagKey = keyof SimOptions;

// A Map, not an object literal, so `--__proto__` or `--constructor` are unknown flags, not lookups.
const FLAGS = new Map<string, { key: FlagKey; type: FlagType }>([
  ['port', { key: 'port', type: 'port' }],
  ['host', { key: 'host', type: 'string' }],
  ['kind', { key: 'kind', type: 'kind' }],
  ['name', { key: 'name', type: 'string' }],
  ['latency-ms', { key: 'latencyMs', type: 'number' }],
  ['tokens-per-s', { key: 'tokensPerS', type: 'number' }],
  ['chunk-delay-ms', { key: 'chunkDelayMs', type: 'number' }],
  ['completion-tokens', { key: 'completionTokens', type: 'int' }],
  ['fail-rate', { key: 'failRate', type: 'rate' }],
  ['status', { key: 'status', type: 'status' }],
  ['retry-after', { key: 'retryAfterS', type: 'number' }],
  ['hang', { key: 'hang', type: 'boolean' }],
  ['drop-after', { key: 'dropAfterChunks', type: 'int' }],
  ['api-key', { key: 'apiKey', type: 'string' }],
  ['fast', { key: 'fast', type: 'boolean' }],
]);

function parseValue(flag: string, type: FlagType, raw: string): string | number {
  const bad = (want: string): Error =>
    new Error(`simulate: --${flag} expects ${want}, got ${JSON.stringify(raw)}`);
  switch (type) {
    case 'string':
      if (raw === '') throw bad('a non-empty value');
      return raw;
    case 'kind':
      if (raw !== 'openai' && raw !== 'anthropic') throw bad('openai or anthropic');
      return raw;
    default: {
      const n = raw.trim() === '' ? Number.NaN : Number(raw);
      if (!Number.isFinite(n) || n < 0) throw bad('a non-negative number');
      if (type === 'int' && !Number.isInteger(n)) throw bad('a non-negative integer');
      if (type === 'rate' && n > 1) throw bad('a number between 0 and 1');
      if (type === 'port' && (!Number.isInteger(n) || n > 65535)) throw bad('a port number (0-65535)');
      if (type === 'status' && (!Number.isInteger(n) || n < 400 || n > 599))
        throw bad('an HTTP error status (400-599)');
      return n;
    }
  }
}

/** Parses `simulate` flags (`--flag value` or `--flag=value`); throws a clear Error on anything unknown or bad. */
/** `simulate --help`: every flag, with the kind of value it takes. */
export function simUsage(): string {
  const flags = [...FLAGS].map(
    ([name, spec]) => `  --${name}${spec.type === 'boolean' ? '' : ` <${spec.type}>`}`,
  );
  return `usage: llm-edge-router simulate [flags]\n${flags.join('\n')}`;
}

export function parseSimArgs(argv: readonly string[]): Partial<SimOptions> {
  const out: Record<string, unknown> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? '';
    if (!arg.startsWith('--')) throw new Error(`simulate: unexpected argument ${JSON.stringify(arg)}`);
    const eq = arg.indexOf('=');
    const flag = arg.slice(2, eq < 0 ? undefined : eq);
    const spec = FLAGS.get(flag);
    if (!spec)
      throw new Error(
        `simulate: unknown flag --${flag} (known: ${[...FLAGS.keys()].map((f) => `--${f}`).join(', ')})`,
      );
    if (spec.type === 'boolean') {
      if (eq >= 0) throw new Error(`simulate: --${flag} takes no value`);
      out[spec.key] = true;
      continue;
    }
    let raw: string | undefined;
    if (eq >= 0) raw = arg.slice(eq + 1);
    else {
      raw = argv[i + 1];
      if (raw === undefined || raw.startsWith('--')) throw new Error(`simulate: --${flag} needs a value`);
      i++;
    }
    out[spec.key] = parseValue(flag, spec.type, raw);
  }
  return out as Partial<SimOptions>;
}
