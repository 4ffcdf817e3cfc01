import type { Upstream } from '../runtime.js';
import { codedError } from '../resilience/classify.js';
import { Abort } from './abort.js';

/** How often live attempts are checked against their bounds: a bound fires up to this late, never early. */
export const WATCHDOG_TICK_MS = 10;

/**
 * Waiting for the answer's first body byte: the first-byte bound runs. Not its headers: a server that sends
 * them at once (vLLM, and others built on Starlette) would otherwise have idle_ms, not first_byte_ms, for its
 * queueing and prefill, and a first token after idle_ms was cut as idle.
 */
const FIRST_BYTE = 0;
/** Reading the body: the idle bound runs. */
const BODY = 1;
const DONE = 2;

/**
 * Every live attempt's bounds, checked on one coarse timer instead of two or three native timers per
 * attempt plus a re-arm on every streamed chunk (setTimeout, clearTimeout and refresh each read the loop's
 * clock and relink a timer list). An attempt costs an array slot; a chunk costs setting a flag. The timer
 * runs only while some attempt is live, and never keeps the process alive.
 *
 * An array with swap-removal, not a Set: the Set's hash table is rebuilt as entries come and go, and each
 * rebuilt table of this long-lived Set outlived two scavenges into the old generation (~85 bytes of
 * old-generation garbage a request, measured with the allocation sampler keeping only objects that
 * survive young collections).
 */
class Watchdog {
  private readonly live: AttemptSignal[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly onTick = (): void => this.tick();

  add(s: AttemptSignal): void {
    s.slot = this.live.length;
    this.live.push(s);
    if (this.timer === undefined) this.timer = setInterval(this.onTick, WATCHDOG_TICK_MS).unref();
  }

  remove(s: AttemptSignal): void {
    const i = s.slot;
    if (i < 0) return;
    s.slot = -1;
    const last = this.live.pop()!;
    if (last !== s) {
      this.live[i] = last;
      last.slot = i;
    }
  }

  private tick(): void {
    const live = this.live;
    if (live.length === 0) {
      clearInterval(this.timer);
      this.timer = undefined;
      return;
    }
    const t = performance.now();
    // Backwards: an attempt that fires removes itself, and the one swapped into its slot was checked already.
    for (let i = live.length - 1; i >= 0; i--) live[i]?.check(t);
  }
}

const watchdog = new Watchdog();

/**
 * An attempt-scoped abort: the client going away, the total bound, and the provider's first-byte and idle
 * bounds. The last two are undici's too, but undici runs them on 1 s-resolution fast timers (any bound under
 * a second fires 0.5-1 s in); the watchdog keeps them within WATCHDOG_TICK_MS of the configured
 * millisecond, and undici's stay as a backstop. First byte is measured from dispatch, so it includes
 * connecting and any wait for a pool slot. The signal undici is given is this object itself.
 */
export class AttemptSignal extends Abort {
  /** The total bound (not a first-byte or idle timeout) fired. */
  private expired = false;
  /** ... while the gateway was waiting on the client, not the upstream (see clientHeld). */
  private expiredHeld = false;
  /** The gateway is waiting on the client, not the upstream: that time is not upstream idleness. */
  private idleHeld = false;
  /** Body bytes arrived since the last check: the idle bound starts over at the next. */
  private moved = false;
  private phase = FIRST_BYTE;
  /** The request left the pool's queue for a connection. */
  private sentFlag = false;
  /** performance.now() at creation, and how long the request then waited for its connection (undefined: still). */
  private readonly createdAt = performance.now();
  private queuedFor: number | undefined;
  /** On performance.now()'s clock. */
  private readonly totalAt: number;
  private firstByteAt: number;
  private idleFrom = 0;
  private readonly idleMs: number;
  /** The request's deadline, not the provider's total_ms, set the total bound. */
  private readonly deadlineBound: boolean;
  private readonly client: Abort;
  private readonly onClientAbort: () => void;
  /** This attempt's index in the watchdog's list; -1 when not in it. */
  slot = -1;

  /**
   * `deadline`, `startedAt` and `totalFrom` are on the attempt's own clock (`AttemptInput.now`): the provider's
   * total_ms counts from `totalFrom` (an attempt's first send, when this one sends it again), else from now.
   */
  constructor(
    client: Abort,
    deadline: number,
    startedAt: number,
    private readonly upstream: Upstream,
    totalFrom = startedAt,
  ) {
    super();
    const limits = upstream.provider.config.timeouts;
    this.client = client;
    this.idleMs = limits.idle_ms;
    const left = deadline - startedAt;
    const totalLeft = limits.total_ms - (startedAt - totalFrom);
    this.deadlineBound = left <= totalLeft;
    const t = performance.now();
    this.totalAt = t + Math.max(1, Math.min(left, totalLeft));
    this.firstByteAt = t + limits.first_byte_ms;
    this.onClientAbort = () => this.abort(client.reason);
    if (client.aborted) {
      this.abort(client.reason);
      this.phase = DONE;
      return;
    }
    client.once('abort', this.onClientAbort);
    watchdog.add(this);
  }

  /** The watchdog's check at time `t` (performance.now()). */
  check(t: number): void {
    if (t >= this.totalAt) {
      this.expired = true;
      this.expiredHeld = this.idleHeld;
      return this.fire('total_timeout');
    }
    if (this.phase === FIRST_BYTE) {
      if (t >= this.firstByteAt) this.fire(this.queued() ? 'queue_timeout' : 'first_byte_timeout');
    } else if (this.moved) {
      this.moved = false;
      this.idleFrom = t;
    } else if (!this.idleHeld && t - this.idleFrom >= this.idleMs) {
      this.fire('idle_timeout');
    }
  }

  private fire(code: string): void {
    this.phase = DONE;
    watchdog.remove(this);
    this.abort(codedError(code, `upstream ${code}`));
  }

  timedOut(): boolean {
    return this.expired;
  }

  /** ... and that bound was the request's deadline rather than the provider's total_ms. */
  deadlineReached(): boolean {
    return this.expired && this.deadlineBound;
  }

  /**
   * ... and it fired while the attempt waited for its client to take what it had been given: a client that reads
   * slower than total_ms, not a slow upstream (whose breaker five such clients opened, with "timeouts").
   */
  clientHeld(): boolean {
    return this.expired && this.expiredHeld && !this.deadlineBound;
  }

  /**
   * The request has a connection. One that waited for it (the provider at max_concurrency) gets the upstream's
   * whole first_byte_ms from now: its wait was the pool's, bounded by the same figure (queue_timeout), and
   * charged to the upstream it made a first_byte_timeout (a breaker failure, a slow-TTFT sample) for an answer
   * on its way in time.
   */
  sent(): void {
    this.sentFlag = true;
    this.queuedFor ??= performance.now() - this.createdAt;
    if (this.phase === FIRST_BYTE)
      this.firstByteAt = performance.now() + this.upstream.provider.config.timeouts.first_byte_ms;
  }

  /** How long the request waited in the pool's queue for its connection, ms; undefined if it never got one. */
  queuedMs(): number | undefined {
    return this.queuedFor;
  }

  /**
   * Still waiting for a connection with every one the provider's `max_concurrency` allows open and busy: its
   * first byte never had a chance (the upstream has not seen the request). Not sent with fewer open, it is
   * connecting: that wait is the upstream's.
   */
  private queued(): boolean {
    if (this.sentFlag) return false;
    const provider = this.upstream.provider;
    return provider.client.stats().connected >= provider.config.max_concurrency;
  }

  /**
   * Body bytes arrived (or the client took what it was given): the idle bound starts over at the next check;
   * the first ones meet the first-byte bound.
   */
  progress(): void {
    if (this.phase === FIRST_BYTE) this.phase = BODY;
    this.idleHeld = false;
    this.moved = true;
  }

  holdIdle(): void {
    this.idleHeld = true;
  }

  done(): void {
    this.phase = DONE;
    watchdog.remove(this);
    this.client.removeListener('abort', this.onClientAbort);
  }
}
