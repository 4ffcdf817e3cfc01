/**
 * Child processes of the benchmark, each pinned to a core with `taskset -c N` when it can be: servers
 * (simulator, pass-through, gateway) that stay up for the whole run, and load clients that run once and
 * print their result. Every child is tracked so `stopAll()` leaves nothing behind, and every wait is bounded.
 */
import { spawn, spawnSync, type ChildProcess, type StdioOptions } from 'node:child_process';
import { availableParallelism } from 'node:os';

export type Core = 0 | 1;

export interface Placement {
  pinned: boolean;
  /** One line for the report, e.g. "gateway/pass-through: taskset -c 0; load + simulator: taskset -c 1". */
  description: string;
}

let placement: Placement | undefined;

export function detectPlacement(): Placement {
  if (placement) return placement;
  const cores = availableParallelism();
  const taskset = spawnSync('taskset', ['-V'], { stdio: 'ignore' }).status === 0;
  if (taskset && cores >= 2) {
    placement = {
      pinned: true,
      description:
        'target under test (gateway | pass-through) on core 0 (taskset -c 0); simulators, wrk, load clients and this orchestrator on core 1 (taskset -c 1)',
    };
  } else {
    const why = taskset ? `only ${cores} core(s)` : 'taskset not found (Debian: apt-get install util-linux)';
    placement = {
      pinned: false,
      description: `NOT pinned: ${why}; figures mix target and load on shared cores`,
    };
  }
  return placement;
}

/** Pins this process (all threads) to the load core, so the orchestrator never steals the target's core. */
export function pinSelf(core: Core): void {
  if (detectPlacement().pinned)
    spawnSync('taskset', ['-a', '-p', '-c', String(core), String(process.pid)], { stdio: 'ignore' });
}

const live = new Set<ChildProcess>();

function start(core: Core, cmd: string, args: readonly string[], stdio: StdioOptions): ChildProcess {
  const [file, argv] = detectPlacement().pinned
    ? ['taskset', ['-c', String(core), cmd, ...args]]
    : [cmd, [...args]];
  // taskset execs the command, so child.pid is the target's own pid (what /proc readings need).
  const child = spawn(file, argv, { stdio, env: { ...process.env, NODE_ENV: 'production' } });
  live.add(child);
  child.once('exit', () => live.delete(child));
  return child;
}

export interface Server {
  readonly pid: number;
  readonly url: string;
  stop(): Promise<void>;
}

async function stopChild(child: ChildProcess, graceMs = 5_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/**
 * Starts a server that prints `{"listening": URL}` as its first stdout line (the simulator CLI and
 * bench/passthrough.ts do). `readyUrl` instead: the server logs elsewhere, poll that URL for a 200.
 */
export async function startServer(
  core: Core,
  args: readonly string[],
  opts: { readyUrl?: string; stdout?: number; timeoutMs?: number } = {},
): Promise<Server> {
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const child = start(core, process.execPath, args, ['ignore', opts.stdout ?? 'pipe', 'pipe']);
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4_000)));
  const failed = new Promise<never>((_, reject) =>
    child.once('exit', (code) =>
      reject(new Error(`${args.join(' ')} exited (${code}) before it was ready:\n${stderr}`)),
    ),
  );
  failed.catch(() => undefined);
  const deadline = Date.now() + timeoutMs;
  let url: string;
  if (opts.readyUrl !== undefined) {
    url = new URL(opts.readyUrl).origin;
    await Promise.race([failed, pollReady(opts.readyUrl, deadline)]);
  } else {
    url = await Promise.race([failed, firstJsonLine(child, deadline)]);
  }
  const pid = child.pid;
  if (pid === undefined) throw new Error(`${args.join(' ')}: no pid`);
  return { pid, url, stop: () => stopChild(child) };
}

function firstJsonLine(child: ChildProcess, deadline: number): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(
      () => reject(new Error('server printed no {"listening": URL} line in time')),
      deadline - Date.now(),
    );
    const onData = (chunk: Buffer): void => {
      buf += chunk.toString();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      // Keep draining whatever follows (a listener stays attached), so the child never blocks on a full pipe.
      child.stdout?.off('data', onData).on('data', () => undefined);
      try {
        const parsed = JSON.parse(buf.slice(0, nl)) as { listening?: unknown };
        if (typeof parsed.listening === 'string') return resolve(parsed.listening);
      } catch {
        /* fall through */
      }
      reject(new Error(`unexpected first line: ${buf.slice(0, nl)}`));
    };
    child.stdout?.on('data', onData);
  });
}

async function pollReady(url: string, deadline: number): Promise<void> {
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      await res.arrayBuffer();
      if (res.ok) return;
    } catch {
      /* not listening yet */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not answer 200 in time`);
}

/** Runs a load client to completion (killed after `timeoutMs`) and returns its stdout. */
export async function runClient(
  core: Core,
  cmd: string,
  args: readonly string[],
  timeoutMs: number,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = start(core, cmd, args, ['ignore', 'pipe', 'pipe']);
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4_000)));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
  clearTimeout(timer);
  return { code, stdout, stderr };
}

export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((c) => stopChild(c, 2_000)));
}
