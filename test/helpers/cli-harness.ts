import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll } from 'vitest';

/** Helpers for tests that run the built CLI (`node dist/main.js ...`) as a real process. */

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const DIST_MAIN = join(REPO_ROOT, 'dist/main.js');
const LOCK = join(REPO_ROOT, 'node_modules/.cache/llm-edge-router-build.lock');

function newestMtimeMs(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtimeMs(p) : statSync(p).mtimeMs);
  }
  return newest;
}

function isFresh(): boolean {
  try {
    return statSync(DIST_MAIN).mtimeMs >= newestMtimeMs(join(REPO_ROOT, 'src'));
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Builds dist/ with tsc unless it is newer than every file in src/. Test files in parallel workers take a
 * lock (a directory) so only one of them builds; a lock older than two minutes is from a dead process.
 */
export async function ensureBuilt(): Promise<void> {
  if (isFresh()) return;
  mkdirSync(join(LOCK, '..'), { recursive: true });
  for (;;) {
    try {
      mkdirSync(LOCK);
      break;
    } catch {
      try {
        if (Date.now() - statSync(LOCK).mtimeMs > 120_000) rmSync(LOCK, { recursive: true, force: true });
      } catch {
        /* released meanwhile */
      }
      await sleep(200);
    }
  }
  try {
    if (isFresh()) return;
    const tsc = join(REPO_ROOT, 'node_modules/typescript/bin/tsc');
    const out = await run(process.execPath, [tsc, '-p', 'tsconfig.build.json']);
    // tsc emits even with type errors (someone may be mid-edit elsewhere); only a missing output is fatal.
    if (!isFresh()) throw new Error(`build failed:\n${out}`);
    // As `npm run build` leaves it: the package's bin, run by `npx llm-edge-router` (tsc writes it 0644).
    chmodSync(DIST_MAIN, 0o755);
  } finally {
    rmSync(LOCK, { recursive: true, force: true });
  }
}

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    p.on('error', reject);
    p.on('close', () => resolve(out));
  });
}

export interface CliProcess {
  readonly proc: ChildProcess;
  /** The gateway's address, from its "Server listening at" log line. */
  readonly url: string;
  /** Every JSON log line so far (stdout). */
  readonly logs: Record<string, unknown>[];
  stderr(): string;
  /** Resolves with the first log line (past or future) that matches. */
  waitForLog(
    pred: (line: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
  /** Resolves with the exit code (or the signal name) once the process has exited. */
  readonly exited: Promise<number | string>;
  /** SIGKILL if still running (for afterEach). */
  kill(): Promise<void>;
}

/** Starts `node [nodeArgs] dist/main.js --config PATH ...` and waits until it listens. */
export async function startCli(
  configPath: string,
  args: string[] = [],
  env: Record<string, string> = {},
  nodeArgs: string[] = [],
): Promise<CliProcess> {
  const proc = spawn(process.execPath, [...nodeArgs, 'dist/main.js', '--config', configPath, ...args], {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  const waiters = new Set<{
    pred: (l: Record<string, unknown>) => boolean;
    resolve: (l: Record<string, unknown>) => void;
  }>();
  let partial = '';
  let err = '';
  proc.stdout?.on('data', (d: Buffer) => {
    partial += d.toString();
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      if (line.trim() === '') continue;
      let obj: Record<string, unknown>;
      try {
        obj = JSON.parse(line) as Record<string, unknown>;
      } catch {
        obj = { msg: line, unparsed: true };
      }
      logs.push(obj);
      for (const w of waiters) {
        if (w.pred(obj)) {
          waiters.delete(w);
          w.resolve(obj);
        }
      }
    }
  });
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  // 'close', not 'exit': at 'exit' the pipes may still hold the last lines written before process.exit.
  const exited = new Promise<number | string>((resolve) => {
    proc.on('close', (code, signal) => resolve(code ?? signal ?? -1));
  });

  const waitForLog = (
    pred: (l: Record<string, unknown>) => boolean,
    timeoutMs = 5_000,
  ): Promise<Record<string, unknown>> => {
    const seen = logs.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const w = {
        pred,
        resolve: (l: Record<string, unknown>) => {
          clearTimeout(timer);
          resolve(l);
        },
      };
      const timer = setTimeout(() => {
        waiters.delete(w);
        reject(
          new Error(
            `no matching log line within ${timeoutMs} ms; stderr: ${err}; logs:\n${logs.map((l) => JSON.stringify(l)).join('\n')}`,
          ),
        );
      }, timeoutMs);
      waiters.add(w);
    });
  };

  const listening = waitForLog(
    (l) => typeof l.msg === 'string' && l.msg.startsWith('Server listening at '),
    10_000,
  );
  const early = exited.then((code) => {
    throw new Error(`gateway exited (${code}) before listening: ${err}`);
  });
  let line: Record<string, unknown>;
  try {
    line = await Promise.race([listening, early]);
  } catch (e) {
    // A gateway that never said it listens must not outlive the test (it would hold its port and CPU).
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    throw e;
  } finally {
    early.catch(() => undefined);
  }
  const url = String(line.msg).slice('Server listening at '.length);

  return {
    proc,
    url,
    logs,
    stderr: () => err,
    waitForLog,
    exited,
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await exited;
      }
    },
  };
}

/**
 * For a test file or describe block that runs the built CLI: builds dist/ (once, before its tests) and
 * makes a temporary directory for its config files, removed after them. Returns the directory's path.
 */
export function cliWorkDir(name: string): () => string {
  let dir: string | undefined;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), `ler-${name}-`));
    await ensureBuilt();
  }, 120_000);
  afterAll(() => {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });
  return () => {
    if (dir === undefined) throw new Error('cliWorkDir: read before its beforeAll ran');
    return dir;
  };
}
