type AbortListener = () => void;

/**
 * The part of AbortSignal that undici and we use: `aborted`, `reason`, and 'abort' listeners through the
 * EventEmitter calls undici makes on a signal that is not an EventTarget (`on`/`once`/`removeListener`).
 * Not an AbortController (microseconds to build on Node 20) nor an EventEmitter (its constructor and
 * `once` wrappers showed in the profile, at two or three signals per request): one event that fires at most
 * once needs only a list. Listeners run in the order they were added; one that throws stops the rest and
 * the error leaves `abort()`, as with an EventEmitter.
 */
export class Abort {
  aborted = false;
  reason: unknown = undefined;
  /** The first listener, kept apart: most signals never have a second. */
  private first: AbortListener | undefined = undefined;
  private more: AbortListener[] | undefined = undefined;

  abort(reason?: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason ?? new Error('aborted');
    const first = this.first;
    const more = this.more;
    this.first = undefined;
    this.more = undefined;
    first?.();
    if (more) for (const fn of more) fn();
  }

  /** Adds an 'abort' listener (the only event there is); it runs at most once, as abort does. */
  once(_event: 'abort', fn: AbortListener): this {
    if (this.aborted) return this;
    if (this.first === undefined) this.first = fn;
    else (this.more ??= []).push(fn);
    return this;
  }

  /** The same as `once`: the event cannot fire twice. Undici checks that a signal has `on`. */
  on(event: 'abort', fn: AbortListener): this {
    return this.once(event, fn);
  }

  removeListener(_event: 'abort', fn: AbortListener): this {
    if (this.first === fn) {
      this.first = this.more?.shift();
    } else if (this.more) {
      const i = this.more.indexOf(fn);
      if (i >= 0) this.more.splice(i, 1);
    }
    return this;
  }

  /** Listeners still waiting: for tests that check nothing is left behind. */
  listenerCount(): number {
    return (this.first === undefined ? 0 : 1) + (this.more?.length ?? 0);
  }
}
