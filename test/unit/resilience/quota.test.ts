/**
 * A deployment's per-minute budget: requests and tokens of the last 60 s, in one-second buckets, on an
 * injected clock.
 */
import { describe, expect, it } from 'vitest';
import { Quota } from '../../../src/resilience/quota.js';

function clock(startMs = 1_000_000): { now: () => number; advance: (ms: number) => void } {
  let t = startMs;
  return { now: () => t, advance: (ms) => void (t += ms) };
}

describe('Quota', () => {
  it('has room for rpm requests in a minute, then none until the oldest leaves the window', () => {
    const c = clock();
    const q = new Quota({ rpm: 3 }, c.now);
    q.take(10);
    c.advance(10_000);
    q.take(10);
    q.take(10);
    expect(q.room(1)).toBe(false);
    // The first request was sent 10 s before the others: its bucket leaves the window 50 s from now.
    expect(q.msUntilRoom(1)).toBe(50_000);
    c.advance(49_999);
    expect(q.room(1)).toBe(false);
    c.advance(1);
    expect(q.room(1)).toBe(true);
    expect(q.snapshot()).toEqual({ rpm: 3, tpm: null, requests_last_minute: 2, tokens_last_minute: 20 });
    c.advance(10_000);
    expect(q.snapshot().requests_last_minute).toBe(0);
  });

  it('counts tokens against tpm, with the waiting request its own size', () => {
    const c = clock();
    const q = new Quota({ tpm: 1_000 }, c.now);
    q.take(600);
    expect(q.room(400)).toBe(true);
    expect(q.room(401)).toBe(false);
    c.advance(30_000);
    q.take(300);
    // 100 tokens left: a 150-token request waits for the 600 to leave, a 100-token one does not wait.
    expect(q.msUntilRoom(150)).toBe(30_000);
    expect(q.msUntilRoom(100)).toBe(0);
    // Past the whole tpm: it waits for an empty window, never for ever.
    expect(q.msUntilRoom(5_000)).toBe(60_000);
  });

  it('lets a request larger than the whole tpm through an empty window', () => {
    const c = clock();
    const q = new Quota({ tpm: 100 }, c.now);
    expect(q.room(1_000)).toBe(true);
    q.take(1_000);
    expect(q.room(1)).toBe(false);
  });

  it('settles an estimate to the tokens used, in the bucket it was taken in', () => {
    const c = clock();
    const q = new Quota({ tpm: 1_000 }, c.now);
    const take = q.take(900); // prompt + max_tokens
    expect(q.room(200)).toBe(false);
    c.advance(2_000);
    q.settle(take, 150); // the answer was short
    expect(q.snapshot().tokens_last_minute).toBe(150);
    expect(q.room(800)).toBe(true);
    // Once its bucket has left the window, a late settle changes nothing.
    const late = q.take(100);
    c.advance(61_000);
    q.settle(late, 5_000);
    expect(q.snapshot().tokens_last_minute).toBe(0);
  });

  it('forgets a whole window after a long quiet spell, and keeps it when the clock steps back', () => {
    const c = clock();
    const q = new Quota({ rpm: 2 }, c.now);
    q.take(0);
    q.take(0);
    c.advance(3_600_000);
    expect(q.room(0)).toBe(true);
    q.take(0);
    q.take(0);
    c.advance(-5_000);
    expect(q.room(0)).toBe(false);
    expect(q.snapshot().requests_last_minute).toBe(2);
  });

  it('takes new limits in place (a reload), keeping what was counted', () => {
    const c = clock();
    const q = new Quota({ rpm: 1 }, c.now);
    q.take(0);
    expect(q.room(0)).toBe(false);
    q.limits = { rpm: 5 };
    expect(q.room(0)).toBe(true);
    expect(q.snapshot().requests_last_minute).toBe(1);
  });

  it("adds the other replicas' windows bucket by bucket, and waits for theirs to leave as for its own", () => {
    const c = clock();
    const q = new Quota({ rpm: 10 }, c.now);
    q.take(0);
    q.setRemote({
      requests: 8,
      tokens: 500,
      leaving: [
        [20_000, 5, 500],
        [50_000, 3, 0],
      ],
    });
    expect(q.room(0)).toBe(true);
    q.take(0);
    expect(q.room(0)).toBe(false);
    expect(q.snapshot()).toMatchObject({ requests_last_minute: 10, tokens_last_minute: 500 });
    expect(q.local()).toEqual({ requests: 2, tokens: 0, leaving: [[60_000, 2, 0]] });
    // The others' oldest five leave in 20 s: room then.
    expect(q.msUntilRoom(0)).toBe(20_000);
    // Theirs and ours in the order they leave: 3 at 15 s is not enough, 9 more at 40 s is.
    q.setRemote({
      requests: 12,
      tokens: 0,
      leaving: [
        [15_000, 3, 0],
        [40_000, 9, 0],
      ],
    });
    expect(q.msUntilRoom(0)).toBe(40_000);
    // Their buckets leave the window as time passes, between exchanges too.
    c.advance(15_000);
    expect(q.snapshot().requests_last_minute).toBe(11);
    q.setRemote(undefined);
    expect(q.room(0)).toBe(true);
  });
});
