import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Abort } from '../upstream/abort.js';
import { closeIfStalled } from './stalled-answer.js';

/**
 * The client side of a relayed SSE stream. Nothing is sent before `commit()` (the first content delta), so
 * a failover before it stays invisible; after it, writes respect back-pressure: `drain()` waits until the
 * client has taken what it was given, so the gateway never holds more than a socket buffer for it.
 */
export class SseWriter {
  private committedFlag = false;

  constructor(
    private readonly res: ServerResponse,
    private readonly gone: Abort,
    /**
     * Called once, just before the first byte goes out (fastify's `reply.hijack()`): the headers set on the
     * reply so far (its `x-request-id`, CORS), which go out first. A fresh object, ours to add to.
     */
    private readonly onCommit?: () => OutgoingHttpHeaders,
    /** The `x-request-id` and `x-router-*` headers of a 503 sent by `cut()` before the stream began. */
    private readonly cutHeaders?: () => Record<string, string>,
    /** Once ended, how long a client may take none of what is left before its connection goes (0: never). */
    private readonly tailStallMs = 0,
  ) {}

  get closed(): boolean {
    return this.res.destroyed || this.res.writableEnded;
  }

  commit(headers: Record<string, string>): void {
    if (this.committedFlag) return;
    this.committedFlag = true;
    // One object for the whole head, none set on the response before: Node then writes it as it is, where
    // headers already set make it set each one again (~1 KB more a stream, kept as long as the stream).
    const head = Object.assign(this.onCommit?.() ?? {}, headers);
    head['content-type'] = 'text/event-stream; charset=utf-8';
    head['cache-control'] = 'no-cache';
    // No `connection` of ours: Node keeps the connection or closes it as the client asked (one that sent
    // `Connection: close` is closed after the stream, and told so).
    head['x-accel-buffering'] = 'no';
    this.res.writeHead(200, head);
    flattenHead(this.res);
    // No flushHeaders(): the frames that committed the stream are written next, in the same tick, and the
    // head goes out with them in one write instead of a packet of its own.
  }

  write(text: string): void {
    if (!this.closed) this.res.write(text);
  }

  /** Resolves when the client can take more, or at once when it is gone. */
  drain(): Promise<void> | undefined {
    const res = this.res;
    if (!res.writableNeedDrain || this.closed || this.gone.aborted) return undefined;
    return new Promise((resolve) => {
      const done = (): void => {
        res.off('drain', done);
        res.off('close', done);
        resolve();
      };
      res.on('drain', done);
      res.on('close', done);
    });
  }

  /**
   * Ends the stream from our side (the gateway is shutting down): a committed stream gets `error` as an SSE
   * error event and no `[DONE]`, as any cut stream does; one not yet begun gets it as a 503 instead.
   */
  cut(error: Record<string, unknown>): void {
    if (this.closed) return;
    const body = JSON.stringify({ error });
    if (this.committedFlag) {
      this.res.end(dataFrame(body));
      closeIfStalled(this.res, this.tailStallMs);
      return;
    }
    this.committedFlag = true;
    const head = Object.assign(this.onCommit?.() ?? {}, this.cutHeaders?.());
    if (this.res.headersSent) this.res.end();
    else {
      head['content-type'] = 'application/json; charset=utf-8';
      head['retry-after'] = '1';
      this.res.writeHead(503, head);
      this.res.end(body);
    }
    closeIfStalled(this.res, this.tailStallMs);
  }

  end(text?: string): void {
    if (this.closed) return;
    if (text !== undefined) this.res.end(text);
    else this.res.end();
    closeIfStalled(this.res, this.tailStallMs);
  }
}

/**
 * Node keeps the head it wrote (`_header`) for as long as the response lasts, as it built it: a `+=` per header
 * line, ~50 linked pieces (~1.5 KB) for a stream's dozen headers, which every young-generation collection of
 * a long stream's life copies until they are promoted. Reading a character of it makes V8 flatten it in place:
 * one string of its length (~0.4 KB) instead (heap snapshot of 1,000 live streams).
 */
function flattenHead(res: ServerResponse): void {
  const head = (res as { _header?: unknown })._header;
  if (typeof head === 'string') head.charCodeAt(0);
}

export const DONE_FRAME = 'data: [DONE]\n\n';

/**
 * One SSE event carrying `data`. Data an upstream sent on several `data:` lines (valid SSE: the parser
 * joins them with `\n`) goes out on as many lines again: one line with a raw newline would cut the event.
 */
export function dataFrame(data: string): string {
  if (data.indexOf('\n') < 0) return `data: ${data}\n\n`;
  return `data: ${data.replaceAll('\n', '\ndata: ')}\n\n`;
}
