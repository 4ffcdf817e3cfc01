/**
 * Open-loop load at a fixed offered rate (Debian ships no wrk2): request i is due at start + i/rate, and
 * its latency is counted from that due time, not from when it went out, so a stalled target cannot hide
 * its queue (no coordinated omission). Run as a child process on the load core; prints one JSON result.
 *   node dist-bench/bench/rate-load.js '{"url":"...","body":"...","rate":2000,"durationMs":3000,"connections":64}'
 */
import { RawPool } from './raw-http.js';
import { quantile } from './stream-load.js';

export interface RateLoadArgs {
  url: string;
  body: string;
  /** Requests per second offered. */
  rate: number;
  durationMs: number;
  connections: number;
  /**
   * Load at the same rate before the measured window, on the same connections, results not counted: the
   * client's own start-up (JIT, opening its connections) stalls its event loop for tens of milliseconds,
   * which would otherwise land in the window as added latency of whichever target it measured.
   */
  warmupMs?: number;
}

export interface RateLoadResult {
  offeredRps: number;
  achievedRps: number;
  sent: number;
  ok: number;
  non2xx: number;
  errors: number;
  /** From the due time, over the measured window (after the warm-up). */
  p50Us: number;
  p99Us: number;
  maxUs: number;
  /**
   * How late this client itself sent (fire time minus due time), p99: the floor of `p99Us` that is the
   * client's own timer and scheduling, whatever the target. A target's bursts of answers can add to it.
   */
  lateP99Us: number;
  /** Latency from when the request went out instead of when it was due, p99 (`p99Us` without lateness). */
  p99FromSendUs: number;
}

const nowMs = (): number => Number(process.hrtime.bigint()) / 1e6;
/** Whatever is still in flight this long after the last request went out counts as an error. */
const DRAIN_MS = 5_000;

export async function runRateLoad(args: RateLoadArgs): Promise<RateLoadResult> {
  const url = new URL(args.url);
  const pool = new RawPool(url, args.body, args.connections);
  const warmupMs = args.warmupMs ?? 0;
  // Without a warm-up, the first 10% of the run (connection set-up) is left out instead.
  const measured = Math.max(1, Math.round((args.rate * args.durationMs) / 1000));
  const skip = warmupMs > 0 ? Math.round((args.rate * warmupMs) / 1000) : Math.floor(measured / 10);
  const total = (warmupMs > 0 ? skip : 0) + measured;
  const latUs: number[] = [];
  const lateUs: number[] = [];
  const fromSendUs: number[] = [];
  let sent = 0;
  let done = 0;
  let ok = 0;
  let non2xx = 0;
  let errors = 0;
  const start = nowMs();
  const dueMs = (i: number): number => start + (i * 1000) / args.rate;
  let lastDone = start;

  const fire = (i: number): void => {
    const due = dueMs(i);
    const firedAt = nowMs();
    pool.post((err, status) => {
      done++;
      if (err) errors++;
      else if (i >= skip) {
        if (status >= 200 && status < 300) ok++;
        else non2xx++;
        lastDone = nowMs();
        latUs.push((lastDone - due) * 1000);
        lateUs.push((firedAt - due) * 1000);
        fromSendUs.push((lastDone - firedAt) * 1000);
      }
    });
  };

  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const due = Math.min(total, Math.floor(((nowMs() - start) * args.rate) / 1000) + 1);
      while (sent < due) fire(sent++);
      // A 1 ms timer, not a spin: spinning kept the client's lateness under 1 ms but, sharing its core with the
      // simulator, took the simulator's p99 from ~2 to 4-12 ms.
      if (sent < total) setTimeout(tick, 1);
      else resolve();
    };
    tick();
  });
  const deadline = nowMs() + DRAIN_MS;
  while (done < sent && nowMs() < deadline) await new Promise((r) => setTimeout(r, 5));
  pool.destroy();
  const windowStart = dueMs(skip);
  const elapsedS = (lastDone - windowStart) / 1000;
  return {
    offeredRps: args.rate,
    achievedRps: elapsedS > 0 ? ok / elapsedS : 0,
    sent,
    ok,
    non2xx,
    errors: errors + (sent - done),
    p50Us: quantile(latUs, 0.5),
    p99Us: quantile(latUs, 0.99),
    maxUs: quantile(latUs, 1),
    lateP99Us: quantile(lateUs, 0.99),
    p99FromSendUs: quantile(fromSendUs, 0.99),
  };
}

if (process.argv[1]?.endsWith('rate-load.js')) {
  const args = JSON.parse(process.argv[2] ?? '{}') as RateLoadArgs;
  process.stdout.write(`${JSON.stringify(await runRateLoad(args))}\n`);
}
