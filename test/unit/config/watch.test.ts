import { pbkdf2 } from 'node:crypto';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MAX_CONFIG_BYTES } from '../../../src/config/load.js';
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

function watching(path: string, initial?: string) {
  let calls = 0;
  let wake: (() => void) | undefined;
  const w = watchConfig(
    path,
    () => {
      calls++;
      wake?.();
    },
    { debounceMs: DEBOUNCE_MS, pollMs: 100, ...(initial === undefined ? {} : { initial }) },
  );
  stop = () => w.close();
  return {
    watcher: w,
    calls: () => calls,
    /** Resolves once the callback has run `n` times in total (rejects after 8 s: the stat poll is slow on a loaded machine). */
    async until(n: number): Promise<void> {
      const deadline = Date.now() + 8_000;
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

  it('sees what a directory watch cannot: a symlinked file edited where it lives, a directory link swapped', async () => {
    // The config path is a link to a file in another directory, edited in place there (no event in ours).
    mkdirSync(join(dir, 'elsewhere'));
    mkdirSync(join(dir, 'conf'));
    writeFileSync(join(dir, 'elsewhere', 'real.yaml'), 'a: 1\n');
    symlinkSync(join(dir, 'elsewhere', 'real.yaml'), join(dir, 'conf', 'gateway.yaml'));
    const linked = watching(join(dir, 'conf', 'gateway.yaml'));
    await new Promise((r) => setTimeout(r, 1_100)); // mtime moves at a coarser step on some filesystems
    writeFileSync(join(dir, 'elsewhere', 'real.yaml'), 'a: 2\n');
    await linked.until(1);
    stop?.();
    // `current -> releases/1` swapped to releases/2 (Capistrano, Helm): the watched directory is the old one.
    for (const n of [1, 2]) {
      mkdirSync(join(dir, 'releases', String(n)), { recursive: true });
      writeFileSync(join(dir, 'releases', String(n), 'gateway.yaml'), `a: ${n}\n`);
    }
    symlinkSync(join(dir, 'releases', '1'), join(dir, 'current'));
    const released = watching(join(dir, 'current', 'gateway.yaml'));
    symlinkSync(join(dir, 'releases', '2'), join(dir, 'current.tmp'));
    renameSync(join(dir, 'current.tmp'), join(dir, 'current'));
    await released.until(1);
  });

  it('a change right after the watch starts is seen while the thread pool is busy (the poll baseline is taken at once)', async () => {
    // fs.watchFile took its first stat on the thread pool: a change landing before that stat ran became its
    // baseline, and a change no directory event reports (a symlinked file edited where it lives) was lost.
    mkdirSync(join(dir, 'elsewhere'));
    mkdirSync(join(dir, 'conf'));
    writeFileSync(join(dir, 'elsewhere', 'real.yaml'), 'a: 1\n');
    symlinkSync(join(dir, 'elsewhere', 'real.yaml'), join(dir, 'conf', 'gateway.yaml'));
    const busy = Array.from(
      { length: 8 },
      () => new Promise((r) => pbkdf2('x', 'salt', 150_000, 32, 'sha256', r)), // > the pool's 4 threads
    );
    const w = watching(join(dir, 'conf', 'gateway.yaml'));
    writeFileSync(join(dir, 'elsewhere', 'real.yaml'), 'a: 22\n'); // size moves: no mtime granularity needed
    await Promise.all(busy);
    await w.until(1);
  });

  it('a change made between the config read and the watch start is not lost (initial text)', async () => {
    const path = join(dir, 'gateway.yaml');
    writeFileSync(path, 'a: 2\n'); // what is on disk now; the config serving was read as `a: 1`
    const w = watching(path, 'a: 1\n');
    await w.until(1);
    await w.settle();
    expect(w.calls()).toBe(1);
  });

  it('reads a file grown past the loader limit no further, and still reports each change (the loader says why)', async () => {
    const path = join(dir, 'gateway.yaml');
    writeFileSync(path, 'a: 1\n');
    const w = watching(path);
    writeFileSync(path, 'a: 1\n#' + 'x'.repeat(MAX_CONFIG_BYTES));
    await w.until(1);
    writeFileSync(path, 'a: 1\n#' + 'y'.repeat(MAX_CONFIG_BYTES + 10));
    await w.until(2);
    writeFileSync(path, 'a: 1\n');
    await w.until(3);
  });

  it('does not report a change a reload made some other way has loaded already (SIGHUP beside an edit)', async () => {
    const path = join(dir, 'gateway.yaml');
    writeFileSync(path, 'a: 1\n');
    const w = watching(path);
    writeFileSync(path, 'a: 2\n');
    w.watcher.loaded('a: 2\n');
    await w.settle();
    await new Promise((r) => setTimeout(r, 250)); // a stat poll too
    expect(w.calls()).toBe(0);
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
