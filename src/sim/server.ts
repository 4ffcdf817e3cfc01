import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { anthropicDialect } from './anthropic.js';
import { sendError, sleep, type Dialect, type Exchange } from './common.js';
import { openaiDialect } from './openai.js';
import { behaviourOf, resolveOptions, type SimBehaviour, type SimOptions } from './options.js';

export interface RecordedRequest {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  /** Parsed JSON, or the raw text when not JSON. */
  body: unknown;
  /** The body exactly as it arrived (UTF-8). */
  text: string;
  receivedAt: number;
  /** The client closed the connection before the response finished. */
  aborted: boolean;
  /** The response was fully sent. */
  finished: boolean;
}

export interface Simulator {
  /** e.g. http://127.0.0.1:PORT (no trailing slash; OpenAI paths are under /v1). */
  readonly url: string;
  readonly port: number;
  /** The start options (set() does not change them). */
  readonly options: SimOptions;
  readonly requests: RecordedRequest[];
  /** Changes behaviour for following requests. */
  set(patch: Partial<SimBehaviour>): void;
  /** Each following request consumes one step (merged over the current behaviour); then back to normal. */
  script(steps: Partial<SimBehaviour>[]): void;
  /** Clears requests and script, restores the start behaviour. */
  reset(): void;
  waitForRequests(n: number, timeoutMs?: number): Promise<void>;
  /** Resolves with the next request the client aborted (one already aborted and not yet returned counts). */
  waitForAbort(timeoutMs?: number): Promise<RecordedRequest>;
  /** Requests whose response has not finished. */
  inFlight(): number;
  /** TCP connections accepted so far: fewer than requests when clients keep them alive. */
  connections(): number;
  /** Closes the server and destroys every open socket, hanging ones included. */
  close(): Promise<void>;
}

interface Waiter<T> {
  resolve(value: T): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

const DEFAULT_WAIT_MS = 5_000;
/** Idle keep-alive of client connections, about what provider front ends allow. */
const KEEP_ALIVE_MS = 65_000;

function parseBody(text: string): unknown {
  if (text === '') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

export async function startSimulator(opts: Partial<SimOptions> = {}): Promise<Simulator> {
  const options = Object.freeze(resolveOptions(opts));
  const dialect: Dialect = options.kind === 'anthropic' ? anthropicDialect : openaiDialect;
  const start = behaviourOf(options);
  let current: SimBehaviour = { ...start };
  let steps: Partial<SimBehaviour>[] = [];
  const requests: RecordedRequest[] = [];
  const cache = new Map<string, Buffer>();
  const sockets = new Set<Socket>();
  let inFlight = 0;
  let closing = false;

  const requestWaiters = new Set<Waiter<void> & { n: number }>();
  const abortWaiters: Waiter<RecordedRequest>[] = [];
  const abortedUnclaimed: RecordedRequest[] = [];

  function onRecorded(): void {
    for (const w of requestWaiters) {
      if (requests.length >= w.n) {
        clearTimeout(w.timer);
        requestWaiters.delete(w);
        w.resolve();
      }
    }
  }

  function onAborted(record: RecordedRequest): void {
    const w = abortWaiters.shift();
    if (w) {
      clearTimeout(w.timer);
      w.resolve(record);
    } else if (!closing) abortedUnclaimed.push(record);
  }

  function onRequest(req: IncomingMessage, res: ServerResponse): void {
    let ex: Exchange | undefined;
    let record: RecordedRequest | undefined;
    inFlight++;
    res.once('close', () => {
      inFlight--;
      if (!ex) return;
      ex.closed = true;
      ex.cancelWait?.();
      if (record && !res.writableFinished && !ex.dropped) {
        record.aborted = true;
        onAborted(record);
      }
    });
    // A client that vanishes mid-request must not crash the simulator.
    req.on('error', noop);
    res.on('error', noop);
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      const text = (parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts)).toString('utf8');
      const body = parseBody(text);
      const url = req.url ?? '/';
      const q = url.indexOf('?');
      const path = q < 0 ? url : url.slice(0, q);
      const method = req.method ?? 'GET';
      let b = current;
      if (!options.fast) {
        const step = steps.shift();
        if (step) b = { ...current, ...step };
        record = {
          method,
          path,
          headers: req.headers,
          body,
          text,
          receivedAt: Date.now(),
          aborted: false,
          finished: false,
        };
        const r = record;
        res.once('finish', () => (r.finished = true));
        requests.push(r);
        onRecorded();
      }
      ex = {
        req,
        res,
        method,
        path,
        body,
        b,
        options,
        cache,
        closed: false,
        dropped: false,
        cancelWait: undefined,
      };
      run(ex).catch((err: unknown) => {
        // A bug in the simulator: answer 500 when still possible, never leave the client hanging.
        const e = ex;
        if (!e || e.closed) return;
        if (!res.headersSent)
          sendError(e, dialect, {
            status: 500,
            type: 'api_error',
            message: `simulator error: ${String(err)}`,
          });
        else res.destroy();
      });
    });
  }

  async function run(ex: Exchange): Promise<void> {
    const { b } = ex;
    if (b.hang) return; // never answer; the response's 'close' cleans up
    if (b.latencyMs > 0 && !options.fast && !(await sleep(ex, b.latencyMs))) return;
    if (options.apiKey !== undefined && !dialect.authorized(ex, options.apiKey))
      return sendError(ex, dialect, dialect.authError(ex));
    // With a fail rate, `status` is what the failures answer (500 if unset); without one, every answer.
    const forced = b.failRate > 0 ? (Math.random() < b.failRate ? (b.status ?? 500) : undefined) : b.status;
    if (forced !== undefined && forced >= 400) return sendError(ex, dialect, dialect.forcedError(ex, forced));
    await dialect.handle(ex);
  }

  const server = createServer(onRequest);
  // Providers keep idle connections for a minute or more (Node's default is 5 s): a client's pool should
  // not have to reconnect after every pause, in tests, the demo or the benchmark.
  server.keepAliveTimeout = KEEP_ALIVE_MS;
  let accepted = 0;
  server.on('connection', (sock: Socket) => {
    accepted++;
    sockets.add(sock);
    sock.once('close', () => sockets.delete(sock));
  });
  server.on('clientError', (_err, sock: Socket) => sock.destroy());

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  if (address === null || typeof address === 'string')
    throw new Error('simulator: server has no TCP address');
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `http://${host}:${address.port}`;

  const sim: Simulator = {
    url,
    port: address.port,
    options,
    requests,
    set(patch) {
      current = { ...current, ...patch };
      cache.clear();
    },
    script(next) {
      steps = [...next];
    },
    reset() {
      requests.length = 0;
      abortedUnclaimed.length = 0;
      steps = [];
      current = { ...start };
      cache.clear();
    },
    waitForRequests(n, timeoutMs = DEFAULT_WAIT_MS) {
      if (requests.length >= n) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const w = {
          n,
          resolve,
          reject,
          timer: setTimeout(() => {
            requestWaiters.delete(w);
            reject(
              new Error(
                `simulator ${options.name}: ${requests.length} of ${n} requests after ${timeoutMs} ms`,
              ),
            );
          }, timeoutMs),
        };
        requestWaiters.add(w);
      });
    },
    waitForAbort(timeoutMs = DEFAULT_WAIT_MS) {
      const ready = abortedUnclaimed.shift();
      if (ready) return Promise.resolve(ready);
      return new Promise<RecordedRequest>((resolve, reject) => {
        const w: Waiter<RecordedRequest> = {
          resolve,
          reject,
          timer: setTimeout(() => {
            abortWaiters.splice(abortWaiters.indexOf(w), 1);
            reject(new Error(`simulator ${options.name}: no aborted request after ${timeoutMs} ms`));
          }, timeoutMs),
        };
        abortWaiters.push(w);
      });
    },
    inFlight: () => inFlight,
    connections: () => accepted,
    async close() {
      if (closing) return;
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      for (const sock of sockets) sock.destroy();
      const err = new Error(`simulator ${options.name} closed`);
      for (const w of requestWaiters) {
        clearTimeout(w.timer);
        w.reject(err);
      }
      requestWaiters.clear();
      for (const w of abortWaiters.splice(0)) {
        clearTimeout(w.timer);
        w.reject(err);
      }
      await closed;
    },
  };
  return sim;
}

function noop(): void {}
