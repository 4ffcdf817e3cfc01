import { EventEmitter } from 'node:events';

/**
 * The part of AbortSignal that undici and we use, on a plain EventEmitter: undici accepts either, and an
 * AbortController costs microseconds to build on Node 20 — two per request showed in the profile.
 */
export class Abort extends EventEmitter {
  aborted = false;
  reason: unknown = undefined;

  abort(reason?: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason ?? new Error('aborted');
    this.emit('abort');
  }
}
