/**
 * Readings from /proc for one process (Linux only): CPU time (utime + stime, all threads) and memory
 * (VmRSS now, VmHWM = peak RSS). Elsewhere every reading is undefined and the report says "n/a".
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

let ticksPerS: number | undefined;

/** Clock ticks per second (`getconf CLK_TCK`, 100 on every Linux we know of). */
function clockTicks(): number {
  if (ticksPerS !== undefined) return ticksPerS;
  try {
    ticksPerS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    ticksPerS = 100;
  }
  return ticksPerS;
}

/** User + system CPU milliseconds the process has used so far. */
export function cpuMs(pid: number): number | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return undefined;
  return ((utime + stime) * 1000) / clockTicks();
}

export interface MemReading {
  rssMb: number;
  /** Peak RSS since the process started. */
  hwmMb: number;
}

export function memory(pid: number): MemReading | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const kb = (name: string): number | undefined => {
    const at = text.indexOf(`${name}:`);
    if (at < 0) return undefined;
    return Number.parseInt(text.slice(at + name.length + 1).trimStart(), 10);
  };
  const rss = kb('VmRSS');
  const hwm = kb('VmHWM');
  if (rss === undefined || hwm === undefined) return undefined;
  return { rssMb: rss / 1024, hwmMb: hwm / 1024 };
}

/** Samples VmRSS every `everyMs` until stopped; returns the largest value seen (MB). */
export function sampleRss(pid: number, everyMs = 200): { stop(): number | undefined } {
  const rec = recordRss(pid, everyMs);
  return {
    stop() {
      const samples = rec.stop();
      return samples.length === 0 ? undefined : Math.max(...samples.map((s) => s.rssMb));
    },
  };
}

/** CPU ms the process spent while `fn` ran. */
export async function cpuDuring<T>(
  pid: number,
  fn: () => Promise<T>,
): Promise<{ result: T; cpuMs?: number }> {
  const before = cpuMs(pid);
  const result = await fn();
  const after = cpuMs(pid);
  return before === undefined || after === undefined ? { result } : { result, cpuMs: after - before };
}

export interface RssSample {
  /** Seconds since recording started. */
  tS: number;
  rssMb: number;
}

/**
 * Records VmRSS with the time of each reading every `everyMs` until stopped (the soak's series). Times are
 * measured, not assumed from the interval, so a late timer cannot bend the growth fit.
 */
export function recordRss(pid: number, everyMs: number): { stop(): RssSample[] } {
  const start = performance.now();
  const samples: RssSample[] = [];
  const take = (): void => {
    const m = memory(pid);
    if (m) samples.push({ tS: (performance.now() - start) / 1000, rssMb: m.rssMb });
  };
  take();
  const timer = setInterval(take, everyMs);
  return {
    stop() {
      clearInterval(timer);
      take();
      return samples;
    },
  };
}
