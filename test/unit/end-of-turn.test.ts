import { afterEach, describe, expect, it, vi } from 'vitest';
import { afterThisTurn, flushTurn, inTurnOrder } from '../../src/end-of-turn.js';

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('work queued for the end of the turn', () => {
  afterEach(() => vi.restoreAllMocks());

  it('runs after the current code and its microtasks, in order, with its arguments', async () => {
    const seen: string[] = [];
    const job = (a: string, b: number, c: boolean, d: null, e: undefined): void => {
      seen.push(`${a}${b}${String(c)}${String(d)}${String(e)}`);
    };
    afterThisTurn(job, 'x', 1, true, null, undefined);
    void Promise.resolve().then(() => seen.push('microtask'));
    afterThisTurn(job, 'y', 2, false, null, undefined);
    seen.push('now');
    await nextTurn();
    expect(seen).toEqual(['now', 'microtask', 'x1truenullundefined', 'y2falsenullundefined']);
  });

  it('runs at once on flushTurn, and not again at the end of the turn', async () => {
    let runs = 0;
    afterThisTurn(() => runs++, 0, 0, 0, 0, 0);
    flushTurn();
    expect(runs).toBe(1);
    await nextTurn();
    expect(runs).toBe(1);
  });

  it('turns a job that throws into a process warning and still runs the rest', async () => {
    const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    const seen: number[] = [];
    afterThisTurn((n: number) => seen.push(n), 1, 0, 0, 0, 0);
    afterThisTurn(
      () => {
        throw new Error('broken job');
      },
      0,
      0,
      0,
      0,
      0,
    );
    afterThisTurn((n: number) => seen.push(n), 3, 0, 0, 0, 0);
    await nextTurn();
    expect(seen).toEqual([1, 3]);
    expect(warn).toHaveBeenCalledTimes(1);
    expect(String(warn.mock.calls[0]?.[0])).toContain('broken job');
  });

  it("runs a turn's first write at once and its later writes at the end of the turn, in order", async () => {
    const seen: string[] = [];
    const write = (what: string): void => {
      seen.push(what);
    };
    await nextTurn(); // a fresh turn
    inTurnOrder(write, 'first', 0, 0, 0);
    inTurnOrder(write, 'second', 0, 0, 0);
    afterThisTurn(write, 'bookkeeping', 0, 0, 0);
    inTurnOrder(write, 'third', 0, 0, 0);
    seen.push('now');
    await nextTurn();
    expect(seen).toEqual(['first', 'now', 'second', 'bookkeeping', 'third']);
    inTurnOrder(write, 'next turn', 0, 0, 0); // a new turn's first write goes at once again
    expect(seen.at(-1)).toBe('next turn');
  });
});
