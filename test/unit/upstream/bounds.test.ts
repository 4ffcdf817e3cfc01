import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Upstream } from '../../../src/runtime.js';
import { Abort } from '../../../src/upstream/abort.js';
import { AttemptSignal, WATCHDOG_TICK_MS } from '../../../src/upstream/bounds.js';

const limits = { connect_ms: 50, first_byte_ms: 100, idle_ms: 80, total_ms: 5_000 };
/** A provider with `connected` of its `max_concurrency` (4) connections open. */
function upstreamWith(connected: number, timeouts: typeof limits = limits): Upstream {
  return {
    provider: { config: { timeouts, max_concurrency: 4 }, client: { stats: () => ({ connected }) } },
  } as unknown as Upstream;
}
const upstream = upstreamWith(0);

function codeOf(s: Abort): string | undefined {
  return (s.reason as { code?: string } | undefined)?.code;
}

describe('Abort', () => {
  it('runs each listener once, in order, and none added after it fired', () => {
    const a = new Abort();
    const seen: string[] = [];
    a.once('abort', () => seen.push('first'));
    a.on('abort', () => seen.push('second'));
    a.once('abort', () => seen.push('third'));
    a.abort(new Error('why'));
    a.abort(new Error('again'));
    a.once('abort', () => seen.push('late'));
    expect(seen).toEqual(['first', 'second', 'third']);
    expect(a.aborted).toBe(true);
    expect((a.reason as Error).message).toBe('why');
    expect(a.listenerCount()).toBe(0);
  });

  it('a removed listener never runs, wherever it stood, and the others keep their order', () => {
    const a = new Abort();
    const seen: number[] = [];
    const fns = [0, 1, 2, 3].map((i) => () => seen.push(i));
    for (const fn of fns) a.once('abort', fn);
    a.removeListener('abort', fns[0]!);
    a.removeListener('abort', fns[2]!);
    a.removeListener('abort', () => {}); // not there: nothing happens
    expect(a.listenerCount()).toBe(2);
    a.abort();
    expect(seen).toEqual([1, 3]);
    expect(a.reason).toBeInstanceOf(Error);
  });
});

describe('AttemptSignal (watchdog bounds)', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'setTimeout', 'performance'] });
  });
  afterEach(() => {
    // Every attempt here has ended: a tick with none live stops the process-wide timer before the clock
    // goes back to real time (a fake timer left armed would never tick again).
    vi.advanceTimersByTime(WATCHDOG_TICK_MS * 2);
    expect(vi.getTimerCount()).toBe(0);
    vi.useRealTimers();
  });

  const far = (): number => performance.now() + 60_000;

  it('every live attempt is checked however earlier ones ended (done, fired, in any order)', () => {
    const signals = Array.from(
      { length: 7 },
      () => new AttemptSignal(new Abort(), far(), performance.now(), upstream),
    );
    signals[0]!.done();
    signals[6]!.done();
    signals[3]!.done();
    signals[3]!.done(); // twice: no effect on the others
    signals[2]!.progress(); // reading its body: the idle bound (80 ms) now runs, not first byte (100 ms)
    vi.advanceTimersByTime(limits.idle_ms + WATCHDOG_TICK_MS);
    expect(codeOf(signals[2]!)).toBe('idle_timeout');
    expect(signals.filter((x) => x.aborted)).toHaveLength(1);
    vi.advanceTimersByTime(limits.first_byte_ms);
    expect([0, 1, 3, 4, 5, 6].map((i) => codeOf(signals[i]!))).toEqual([
      undefined,
      'first_byte_timeout',
      undefined,
      'first_byte_timeout',
      'first_byte_timeout',
      undefined,
    ]);
    for (const x of signals) x.done();
  });

  it('first_byte_ms fires after its bound, never before, and no later than one tick after', () => {
    const s = new AttemptSignal(new Abort(), far(), performance.now(), upstream);
    vi.advanceTimersByTime(limits.first_byte_ms - 1);
    expect(s.aborted).toBe(false);
    vi.advanceTimersByTime(WATCHDOG_TICK_MS + 1);
    expect(codeOf(s)).toBe('first_byte_timeout');
    expect(s.timedOut()).toBe(false);
  });

  it('first_byte_ms spent waiting for a connection, every one max_concurrency allows busy, is a queue_timeout', () => {
    const queued = new AttemptSignal(new Abort(), far(), performance.now(), upstreamWith(4));
    const sent = new AttemptSignal(new Abort(), far(), performance.now(), upstreamWith(4));
    sent.sent();
    const connecting = new AttemptSignal(new Abort(), far(), performance.now(), upstreamWith(3));
    vi.advanceTimersByTime(limits.first_byte_ms + WATCHDOG_TICK_MS);
    expect(codeOf(queued)).toBe('queue_timeout'); // the upstream never saw it
    expect(codeOf(sent)).toBe('first_byte_timeout');
    expect(codeOf(connecting)).toBe('first_byte_timeout'); // a connection of its own was being opened
  });

  it('idle_ms starts at the first body bytes and over at every chunk; a hold for the client stops it', () => {
    const s = new AttemptSignal(new Abort(), far(), performance.now(), upstream);
    vi.advanceTimersByTime(90);
    s.progress();
    for (let i = 0; i < 10; i++) {
      vi.advanceTimersByTime(limits.idle_ms - WATCHDOG_TICK_MS * 2);
      s.progress();
    }
    expect(s.aborted).toBe(false); // 10 chunks, each within idle_ms, 600+ ms in all
    s.holdIdle();
    vi.advanceTimersByTime(limits.idle_ms * 3);
    expect(s.aborted).toBe(false); // waiting on the client is not upstream idleness
    s.progress(); // the client took it: the bound runs again, from here
    vi.advanceTimersByTime(limits.idle_ms - 1);
    expect(s.aborted).toBe(false);
    vi.advanceTimersByTime(WATCHDOG_TICK_MS * 2 + 1);
    expect(codeOf(s)).toBe('idle_timeout');
  });

  it('the total bound is the request deadline when that is nearer, and says so', () => {
    const s = new AttemptSignal(new Abort(), performance.now() + 300, performance.now(), upstream);
    s.progress();
    for (let t = 0; t < 280; t += 20) {
      vi.advanceTimersByTime(20);
      s.progress();
    }
    expect(s.aborted).toBe(false);
    vi.advanceTimersByTime(WATCHDOG_TICK_MS + 10);
    expect(codeOf(s)).toBe('total_timeout');
    expect(s.timedOut()).toBe(true);
    expect(s.deadlineReached()).toBe(true);

    const own = new AttemptSignal(
      new Abort(),
      far(),
      performance.now(),
      upstreamWith(0, { ...limits, first_byte_ms: 5_000, total_ms: 200 }),
    );
    vi.advanceTimersByTime(200 + WATCHDOG_TICK_MS);
    expect(own.timedOut()).toBe(true);
    expect(own.deadlineReached()).toBe(false); // the provider's total_ms, not the request's deadline
  });

  it('total_ms that runs out while the attempt waits on its client says so (clientHeld), not otherwise', () => {
    const tight = upstreamWith(0, { ...limits, first_byte_ms: 5_000, idle_ms: 5_000, total_ms: 200 });
    const held = new AttemptSignal(new Abort(), far(), performance.now(), tight);
    held.progress();
    held.holdIdle();
    const reading = new AttemptSignal(new Abort(), far(), performance.now(), tight);
    reading.progress();
    const released = new AttemptSignal(new Abort(), far(), performance.now(), tight);
    released.holdIdle();
    released.progress(); // the client took it before the bound
    vi.advanceTimersByTime(200 + WATCHDOG_TICK_MS);
    for (const s of [held, reading, released]) expect(codeOf(s)).toBe('total_timeout');
    expect([held, reading, released].map((s) => s.clientHeld())).toEqual([true, false, false]);
  });

  it('the client going away aborts the attempt with its reason; done() leaves nothing listening', () => {
    const client = new Abort();
    const s = new AttemptSignal(client, far(), performance.now(), upstream);
    expect(client.listenerCount()).toBe(1);
    client.abort(new Error('client closed'));
    expect((s.reason as Error).message).toBe('client closed');
    s.done();

    const quiet = new Abort();
    const t = new AttemptSignal(quiet, far(), performance.now(), upstream);
    t.done();
    expect(quiet.listenerCount()).toBe(0);
    vi.advanceTimersByTime(limits.total_ms * 2);
    expect(t.aborted).toBe(false); // a finished attempt is no longer watched

    const gone = new Abort();
    gone.abort(new Error('already gone'));
    expect(new AttemptSignal(gone, far(), performance.now(), upstream).aborted).toBe(true);
  });

  it('attempts that end in any order leave the others watched, each fired once', () => {
    const all = Array.from(
      { length: 6 },
      () => new AttemptSignal(new Abort(), far(), performance.now(), upstream),
    );
    const fired: number[] = [];
    all.forEach((s, i) => s.once('abort', () => fired.push(i)));
    all[0]!.done();
    all[3]!.done();
    all[5]!.done();
    vi.advanceTimersByTime(limits.first_byte_ms + WATCHDOG_TICK_MS * 3);
    expect(fired.sort()).toEqual([1, 2, 4]);
    for (const s of all) s.done();
  });

  it('the watchdog timer stops once no attempt is live', () => {
    const s = new AttemptSignal(new Abort(), far(), performance.now(), upstream);
    expect(vi.getTimerCount()).toBe(1);
    s.done();
    vi.advanceTimersByTime(WATCHDOG_TICK_MS * 2);
    expect(vi.getTimerCount()).toBe(0);
  });
});
