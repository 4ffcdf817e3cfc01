/** Reading a streamed upstream body: relayed chunk by chunk, read to a bound, or dropped. */
import type { Readable } from 'node:stream';
import { withoutBom } from '../json-scan.js';
import { codedError } from '../resilience/classify.js';
import type { ResponseWatch, UpstreamResponse } from './client.js';

/** After each chunk of a relayed stream: go on, stop (the answer is complete), or wait for the client. */
export type ChunkVerdict = undefined | 'stop' | Promise<'stop' | undefined>;

/** How the rest of a body is read after 'stop' (relayChunks): for how long, and who counts its connection. */
export interface BodyDrain {
  /** How long the rest may take, asked at the stop; 0 drops the connection at once. */
  ms(): number;
  /** The connection stays busy while the rest is read: +1 when that begins, -1 when it is over. */
  held?(delta: 1 | -1): void;
}

const NO_DRAIN: BodyDrain = { ms: () => 0 };

/**
 * Feeds a streaming body to `onChunk` on events rather than `for await`: async iteration costs several
 * promises per chunk, on every chunk of every stream. A promise from `onChunk` pauses reading until it
 * settles (back-pressure from a slow client). Resolves at the body's end or on 'stop'; rejects on its
 * error or a close before its end. After 'stop' the rest of the body (usually just the chunked-encoding
 * terminator) is read and dropped for up to `drainMs`, so the connection goes back to the pool instead of
 * being closed: to a real provider every new connection is a TLS handshake.
 */
export function relayChunks(
  body: Readable,
  onChunk: (chunk: Buffer) => ChunkVerdict,
  drain: BodyDrain = NO_DRAIN,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const relayed = body as Relayed;
    relayed[RELAY] = new Relay(relayed, onChunk, drain, resolve, reject);
    // The same four listeners for every body, finding their relay on it: no closures per stream (with
    // `once`, a wrapper each), kept as long as the stream. Each is removed when the relay settles.
    body.on('data', onRelayData);
    body.on('end', onRelayEnd);
    body.on('error', onRelayError);
    body.on('close', onRelayClose);
  });
}

const RELAY = Symbol('relay');
type Relayed = Readable & { [RELAY]?: Relay | undefined };

/** One body being relayed: where its chunks go, and how its promise settles. */
class Relay {
  private settled = false;

  constructor(
    private readonly body: Relayed,
    private readonly onChunk: (chunk: Buffer) => ChunkVerdict,
    private readonly drain: BodyDrain,
    private readonly resolve: () => void,
    private readonly reject: (err: Error) => void,
  ) {}

  finish(err?: Error): void {
    if (this.settled) return;
    this.settled = true;
    const body = this.body;
    body.off('data', onRelayData);
    body.off('end', onRelayEnd);
    body.off('error', onRelayError);
    body.off('close', onRelayClose);
    body[RELAY] = undefined;
    if (err) this.reject(err);
    else this.resolve();
  }

  private stop(): void {
    this.finish();
    drainRest(this.body, this.drain);
  }

  data(chunk: Buffer): void {
    let verdict: ChunkVerdict;
    try {
      verdict = this.onChunk(chunk);
    } catch (err) {
      this.finish(err as Error);
      discard(this.body);
      return;
    }
    if (verdict === undefined) return;
    if (verdict === 'stop') return this.stop();
    this.body.pause();
    verdict.then(
      (v) => {
        if (this.settled) return;
        if (v === 'stop') this.stop();
        else this.body.resume();
      },
      (err: Error) => {
        this.finish(err);
        discard(this.body);
      },
    );
  }
}

function onRelayData(this: Relayed, chunk: Buffer): void {
  this[RELAY]?.data(chunk);
}

function onRelayEnd(this: Relayed): void {
  this[RELAY]?.finish();
}

function onRelayError(this: Relayed, err: Error): void {
  this[RELAY]?.finish(err);
}

function onRelayClose(this: Relayed): void {
  this[RELAY]?.finish(codedError('UND_ERR_SOCKET', 'upstream body closed before its end'));
}

const ignore = (): void => {};

/**
 * Drops a body we stopped listening to. Destroyed before its end, undici's body emits an AbortError: with
 * no listener left that would be an uncaught exception.
 */
export function discard(body: Readable): void {
  body.on('error', ignore);
  body.destroy();
}

/** Reads and drops what is left of a body for up to `drain.ms()`, then gives up on the connection. */
function drainRest(body: Readable, drain: BodyDrain): void {
  if (body.readableEnded || body.destroyed) return;
  body.on('error', ignore); // nobody else listens any more
  const ms = drain.ms();
  if (ms <= 0) {
    body.destroy();
    return;
  }
  drain.held?.(1);
  const timer = setTimeout(() => body.destroy(), ms).unref();
  body.once('close', () => {
    clearTimeout(timer);
    drain.held?.(-1);
  });
  body.resume();
}

/**
 * Reads an (error) body up to `maxBytes` and keeps only those: an error message needs no more than its first
 * bytes, and a hostile upstream cannot make us buffer without bound. `watch` sees each chunk arrive (the
 * idle bound restarts on it). A byte order mark is dropped, as the JSON path drops it (JSON.parse refuses it).
 */
export async function readBody(
  res: UpstreamResponse,
  maxBytes: number,
  watch?: ResponseWatch,
): Promise<string> {
  const parts: Buffer[] = [];
  let size = 0;
  await relayChunks(res.body, (chunk) => {
    watch?.progress();
    const room = maxBytes - size;
    if (chunk.length < room) {
      parts.push(chunk);
      size += chunk.length;
      return undefined;
    }
    parts.push(chunk.subarray(0, room));
    return 'stop';
  });
  return withoutBom(Buffer.concat(parts).toString('utf8'));
}
