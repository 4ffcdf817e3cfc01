import { stat, statSync, watch, type FSWatcher, type Stats } from 'node:fs';
import { basename, dirname } from 'node:path';
import { withoutBom } from '../json-scan.js';
import { ConfigError, readBounded } from './load.js';

/** What the poll compares: a file replaced, a link swapped or an edit in place moves one of these. */
function identityOf(s: Stats | undefined): string {
  return s === undefined ? '' : `${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
}

function statOf(path: string): Stats | undefined {
  try {
    return statSync(path, { throwIfNoEntry: false });
  } catch {
    return undefined;
  }
}

function contentOf(path: string): string | undefined {
  try {
    return withoutBom(readBounded(path).toString('utf8')); // as the loader reads and decodes it
  } catch (err) {
    // Past the loader's limit (a log written to the wrong path): read no further; a text no config is, new
    // with each change, so the reload runs and the loader says why it refuses it.
    if (err instanceof ConfigError && err.message.includes('too large'))
      return `\u0000${identityOf(statOf(path))}`;
    return undefined; // mid-replace, or gone: a later event will tell
  }
}

export interface WatchOptions {
  /** The text the config serving now was read from: a change made before the watch began still counts. */
  readonly initial?: string;
  readonly debounceMs?: number;
  /** How often the path itself is stat'ed, ms (see below). */
  readonly pollMs?: number;
}

/**
 * Calls `onChange` once a burst of changes to the config file settles and its content differs from what was
 * last seen. Two sources of events, one content check:
 * - the directory is watched (inotify), not the file, so a file replaced by rename (editors, `sed -i`) or
 *   through a swapped symlink (a Kubernetes ConfigMap's `..data`) is seen at once;
 * - the path is stat'ed every `pollMs` (following symlinks), for what a directory watch cannot see: a
 *   single-file bind mount edited on the host (docker-compose's), a symlinked file edited where it lives,
 *   a `current -> releases/N` directory link swapped, the directory itself replaced.
 * Comparing content keeps unrelated files in that directory, and saves that change nothing, from reloading.
 */
export interface ConfigWatcher {
  /** The text a reload made some other way (SIGHUP) loaded: not loaded again when the watch sees it. */
  loaded(text: string): void;
  close(): void;
}

export function watchConfig(path: string, onChange: () => void, opts: WatchOptions = {}): ConfigWatcher {
  const debounceMs = opts.debounceMs ?? 250;
  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  // Our own poll rather than fs.watchFile: that one takes its baseline stat later, on the thread pool, so a
  // change landing before it (a busy pool) became the baseline and was never seen. Ours is taken here, before
  // the content read it stands for.
  let seen = identityOf(statOf(path));
  let last = opts.initial ?? contentOf(path);
  let closed = false;
  const name = basename(path);
  const settle = (): void => {
    const now = contentOf(path);
    if (now === undefined || now === last) return;
    last = now;
    onChange();
  };
  const soon = (): void => {
    clearTimeout(timer);
    timer = setTimeout(settle, debounceMs);
    timer.unref();
  };
  try {
    watcher = watch(dirname(path), { persistent: false }, (_event, file) => {
      // Our file, a ConfigMap's `..data` symlink swap, or an event without a name (some platforms).
      if (file !== null && file !== name && !file.startsWith('..')) return;
      soon();
    });
    watcher.on('error', () => undefined);
  } catch {
    watcher = undefined; // watching is a convenience: SIGHUP still reloads
  }
  let statting = false;
  const poll = setInterval(() => {
    if (statting) return; // a slow filesystem: one stat at a time
    statting = true;
    stat(path, (err, s) => {
      statting = false;
      if (closed) return;
      const now = identityOf(err === null ? s : undefined);
      if (now === seen) return;
      seen = now;
      soon();
    });
  }, opts.pollMs ?? 1_000);
  poll.unref();
  // Changed between the read the config serving now came from and this watch: not to be missed.
  if (opts.initial !== undefined) soon();
  return {
    loaded(text) {
      last = text;
    },
    close() {
      closed = true;
      clearTimeout(timer);
      watcher?.close();
      clearInterval(poll);
    },
  };
}
