import type { IncomingHttpHeaders } from 'node:http';
import { codedError } from '../resilience/classify.js';
import { withoutBom } from '../json-scan.js';
import type { Abort } from './abort.js';
import type { ResponseWatch, TextResponse } from './client.js';
import { codingsOf, decodeBuffer } from './content-coding.js';
import type { Dispatcher } from 'undici';

/**
 * Collects one whole answer straight from undici's dispatch: no Readable body, no stream events per chunk
 * (on every non-streaming request that machinery cost more than the rest of the attempt). A class rather
 * than a handler object of closures: one allocation per request. Bodies past `maxBytes` (`errorMaxBytes`
 * for error statuses) are refused; a compressed answer is decoded within the same bound.
 */
export class TextHandler implements Dispatcher.DispatchHandler {
  private readonly parts: Buffer[] = [];
  private size = 0;
  private limit: number;
  private statusCode = 0;
  private headers: IncomingHttpHeaders = {};
  private truncated = false;
  private controller: Dispatcher.DispatchController | undefined;
  // Until undici starts the request (it may wait for a pool slot) an abort can only settle our promise.
  private readonly onAbort = (): void => {
    if (this.controller) this.controller.abort(this.signal.reason as Error);
    else this.reject(this.signal.reason as Error);
  };

  constructor(
    private readonly signal: Abort,
    maxBytes: number,
    private readonly errorMaxBytes: number,
    private readonly watch: ResponseWatch | undefined,
    private readonly resolve: (r: TextResponse) => void,
    private readonly reject: (err: Error) => void,
  ) {
    this.limit = maxBytes;
    if (signal.aborted) reject(signal.reason as Error);
    else signal.once('abort', this.onAbort);
  }

  settle(): void {
    this.signal.removeListener('abort', this.onAbort);
  }

  onRequestStart(c: Dispatcher.DispatchController): void {
    this.controller = c;
    if (this.signal.aborted) c.abort(this.signal.reason as Error);
    else this.watch?.sent();
  }

  onResponseStart(_c: Dispatcher.DispatchController, status: number, h: IncomingHttpHeaders): void {
    // An informational head (103 Early Hints, an unasked 100) is not the answer, nor its first byte.
    if (status < 200) return;
    this.statusCode = status;
    this.headers = h;
    if (status >= 300) this.limit = this.errorMaxBytes;
  }

  onResponseData(c: Dispatcher.DispatchController, chunk: Buffer): void {
    this.watch?.progress();
    if (this.truncated) return;
    this.size += chunk.length;
    if (this.size > this.limit) {
      if (this.statusCode >= 200 && this.statusCode < 300) {
        c.abort(codedError('body_too_large', `upstream body larger than ${this.limit} bytes`));
        return;
      }
      // An error message needs no more than its first bytes; the rest is not waited for (a body that never
      // ended held the attempt until idle_ms or total_ms, read at the upstream's pace, and lost its status).
      this.truncated = true;
      c.abort(codedError('body_too_large', 'error body cut at its bound'));
      return;
    }
    this.parts.push(chunk);
  }

  onResponseEnd(): void {
    this.settle();
    const parts = this.parts;
    const raw = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    const status = this.statusCode;
    let text: string;
    try {
      text = withoutBom(decodeBuffer(raw, codingsOf(this.headers['content-encoding']), this.limit));
    } catch (err) {
      // An error body that will not decode (cut short above, or inflating past its bound) loses its message,
      // never its status: a 400 must stay a client error and a 429 keep its Retry-After.
      if (status >= 200 && status < 300) return this.reject(err as Error);
      text = '';
    }
    this.resolve({ statusCode: status, headers: this.headers, text });
  }

  onResponseError(_c: Dispatcher.DispatchController, err: Error): void {
    // Cut by us, or broken (stalled past idle_ms, total_ms) after an error status came: what was read is the
    // answer. Its status is what counts (a 400 stays a client error, a 429 keeps its Retry-After), not the
    // stall that cut its message short.
    if (this.truncated || this.statusCode >= 300) return this.onResponseEnd();
    this.settle();
    this.reject(err);
  }
}
