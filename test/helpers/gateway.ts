import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { request, type Dispatcher } from 'undici';
import { buildApp } from '../../src/app.js';
import { parseConfigText } from '../../src/config/load.js';
import type { Gateway } from '../../src/gateway.js';
import { createLogger } from '../../src/observability/logger.js';
import type { Simulator } from '../../src/sim/index.js';

export interface TestGateway {
  readonly url: string;
  readonly app: FastifyInstance;
  readonly gateway: Gateway;
  /** Every log line the gateway wrote, parsed. */
  readonly logs: Record<string, unknown>[];
  /** The raw log text, for secret greps. */
  rawLogs(): string;
  close(): Promise<void>;
}

/**
 * A real gateway on 127.0.0.1:0. `config` is a config object (written as JSON, which is YAML) or YAML text;
 * `env` feeds `${VAR}` substitution.
 */
export async function startGateway(
  config: Record<string, unknown> | string,
  opts: {
    env?: Record<string, string>;
    now?: () => number;
    random?: () => number;
    /** state.backend redis: how often replicas exchange statistics, ms. */
    stateSyncMs?: number;
  } = {},
): Promise<TestGateway> {
  const text = typeof config === 'string' ? config : JSON.stringify(config);
  const loaded = parseConfigText(text, opts.env ?? {});
  const logs: Record<string, unknown>[] = [];
  let raw = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const s = chunk.toString();
      raw += s;
      for (const line of s.split('\n'))
        if (line.trim() !== '') logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const app = buildApp(loaded, {
    logger: createLogger('info', sink),
    now: opts.now,
    random: opts.random,
    stateSyncMs: opts.stateSyncMs,
  });
  const address = await app.listen({ host: '127.0.0.1', port: 0 });
  return {
    url: address,
    app,
    gateway: app.gateway,
    logs,
    rawLogs: () => raw,
    // A test's end is no drain: a connection still open from an aborted request (which Node does not count
    // as idle) held each close for seconds. The CLI's own drain is tested through the CLI.
    close: async () => {
      const closing = app.close();
      app.server.closeAllConnections();
      await closing;
    },
  };
}

/** A provider block for a simulator. */
export function simProvider(
  name: string,
  url: string,
  models: Array<string | Record<string, unknown>>,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    name,
    kind: 'openai',
    base_url: `${url}/v1`,
    models: models.map((m) => (typeof m === 'string' ? { name: m } : m)),
    ...extra,
  };
}

/**
 * A YAML config (for the CLI, or to exercise the YAML path): one provider per simulator, each serving
 * model `m`; `routes` (default: `main` over all of them) with `strategy`; then `extra` lines as they are.
 */
export function simConfigYaml(
  sims: readonly Simulator[],
  opts: {
    routes?: Record<string, string[]>;
    strategy?: string;
    shutdownGraceMs?: number;
    extra?: readonly string[];
  } = {},
): string {
  const routes = opts.routes ?? { main: sims.map((s) => `${s.options.name}/m`) };
  return [
    `server: { host: 127.0.0.1, port: 0, shutdown_grace_ms: ${opts.shutdownGraceMs ?? 2000} }`,
    'providers:',
    ...sims.map((s) => `  - { name: ${s.options.name}, base_url: "${s.url}/v1", models: [{ name: m }] }`),
    'routes:',
    ...Object.entries(routes).map(
      ([name, targets]) =>
        `  ${name}: { strategy: ${opts.strategy ?? 'priority'}, targets: [${targets.join(', ')}] }`,
    ),
    ...(opts.extra ?? []),
  ].join('\n');
}

/** A client's POST as the tests read it: status, headers (joined), text, the JSON when it is JSON, the time. */
export interface Posted {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly text: string;
  /** `{}` for a body that is not JSON (a stream). */
  readonly json: Record<string, unknown>;
  readonly ms: number;
}

/** What a test's POST may carry besides its body. */
export interface PostOptions {
  readonly headers?: Record<string, string>;
  readonly signal?: AbortSignal;
  /** Bounds undici's wait for the headers and for the body (undici's defaults when left out). */
  readonly timeoutMs?: number;
  readonly dispatcher?: Dispatcher;
}

/** POSTs `body` (JSON, or text as it is) to `url` with undici, as `content-type: application/json`. */
export async function postTo(
  url: string,
  body: Record<string, unknown> | string,
  opts: PostOptions = {},
): Promise<Posted> {
  const t0 = performance.now();
  const res = await request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...opts.headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal: opts.signal,
    dispatcher: opts.dispatcher,
    ...(opts.timeoutMs === undefined ? {} : { headersTimeout: opts.timeoutMs, bodyTimeout: opts.timeoutMs }),
  });
  const text = await res.body.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    /* a stream */
  }
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) headers[k] = Array.isArray(v) ? v.join(',') : String(v);
  return { status: res.statusCode, headers, text, json, ms: performance.now() - t0 };
}

/** POSTs `body` (JSON, or text as it is) to the gateway's chat path (or `path`) with undici, key `k` (and `headers`). */
export function postChat(
  gw: Pick<TestGateway, 'url'>,
  body: Record<string, unknown> | string,
  opts: { path?: string; signal?: AbortSignal; headers?: Record<string, string> } = {},
): Promise<Posted> {
  return postTo(`${gw.url}${opts.path ?? '/v1/chat/completions'}`, body, {
    headers: { authorization: 'Bearer k', ...opts.headers },
    signal: opts.signal,
  });
}

/** The value at `path` inside parsed JSON (object keys, array indices), or undefined. */
export function dig(value: unknown, ...path: (string | number)[]): unknown {
  let v = value;
  for (const k of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string | number, unknown>)[k];
  }
  return v;
}
