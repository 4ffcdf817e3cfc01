import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable } from 'node:stream';
import type { Track } from './cleanup.js';

/** A child process a test started, and its end: the exit code, or the signal that ended it. */
export interface TrackedProcess {
  readonly proc: ChildProcessByStdio<null, Readable, Readable>;
  readonly exited: Promise<number | string>;
}

/**
 * Spawns `cmd args` in `cwd` with only PATH (and `env`) in its environment, no stdin, stdout and stderr piped, and
 * hands it to `track`: SIGKILLed after the test if it is still running.
 */
export function spawnTracked(
  track: Track,
  cmd: string,
  args: string[],
  opts: { cwd: string; env?: Record<string, string> },
): TrackedProcess {
  const proc = spawn(cmd, args, {
    cwd: opts.cwd,
    env: { PATH: process.env.PATH ?? '', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // 'close', not 'exit': at 'exit' the pipes may still hold the last lines written before process.exit.
  const exited = new Promise<number | string>((resolve) =>
    proc.on('close', (code, signal) => resolve(code ?? signal ?? -1)),
  );
  track({
    close: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await exited;
      }
    },
  });
  return { proc, exited };
}
