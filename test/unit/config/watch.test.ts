import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { watchConfig } from '../../../src/config/watch.js';

/**
 * Real files and real fs events (the watcher is the I/O edge): each test waits for the callback, bounded,
 * and asserts the count after one more debounce window.
 */
const DEBOUNCE_MS = 40;
let dir: string;
let stop: (() => void) | undefined;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ler-watch-'));
});
afterEach(() => {
  stop?.();
  stop = undefined;
  rmSync(dir, { recursive: true, force: true });
});

function watching(path: string) {
  let calls = 0;
  let wake: (() => void) | undefined;
  const w = watchConfig(
    path,
    () => {
      calls++;
      wake?.();
    },
    DEBOUNCE_MS,
  );
  stop = () => w.close();
  return {
    calls: () => calls,
    /** Resolves once the callback has run `n` times in total (rejects after 3 s). */
    async until(n: number): Promise<void> {
      const deadline = Date.now() + 3_000;
      while (calls < n) {
        if (Date.now() > deadline) throw new Error(`${calls} of ${n} reloads`);
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 50);
        });
      }
    },
    /** Lets any pending event and its debounce pass. */
    settle: () => new Promise((r) => setTimeout(r, DEBOUNCE_MS * 5)),
  };
}

describe('watchConfig', () => {
  it('fires once per burst of writes, and not for a save that changes nothing', async () => {
    const path = join(dir, 'gateway.yaml');
    writeFileSync(path, 'a: 1\n');
    const w = watching(path);
    writeFileSync(path, 'a: 2\n');
    writeFileSync(path, 'a: 3\n');
    await w.until(1);
    await w.settle();
    expect(w.calls()).toBe(1);
    writeFileSync(path, 'a: 3\n');
    await w.settle();
    expect(w.calls()).toBe(1);
  });

  it('sees a file replaced by rename, and ignores other files in the directory', async () => {
    const path = join(dir, 'gateway.yaml');
    writeFileSync(path, 'a: 1\n');
    const w = watching(path);
    writeFileSync(join(dir, 'other.yaml'), 'x');
    await w.settle();
    expect(w.calls()).toBe(0);
    writeFileSync(join(dir, 'gateway.yaml.tmp'), 'a: 2\n');
    renameSync(join(dir, 'gateway.yaml.tmp'), path);
    await w.until(1);
  });

  it('sees a Kubernetes ConfigMap update (the ..data symlink swapped)', async () => {
    // /cfg/gateway.yaml -> ..data/gateway.yaml, ..data -> ..v1; an update writes ..v2 and renames a new
    // ..data symlink over the old one. The file itself never changes.
    mkdirSync(join(dir, '..v1'));
    writeFileSync(join(dir, '..v1', 'gateway.yaml'), 'a: 1\n');
    symlinkSync('..v1', join(dir, '..data'));
    symlinkSync(join('..data', 'gateway.yaml'), join(dir, 'gateway.yaml'));
    const w = watching(join(dir, 'gateway.yaml'));
    mkdirSync(join(dir, '..v2'));
    writeFileSync(join(dir, '..v2', 'gateway.yaml'), 'a: 2\n');
    symlinkSync('..v2', join(dir, '..data_tmp'));
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
    await w.until(1);
  });

  it('stops on close', async () => {
    const path = join(dir, 'gateway.yaml');
    writeFileSync(path, 'a: 1\n');
    const w = watching(path);
    stop?.();
    writeFileSync(path, 'a: 2\n');
    await w.settle();
    expect(w.calls()).toBe(0);
  });
});
