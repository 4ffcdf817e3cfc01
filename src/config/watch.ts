import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';

function contentOf(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined; // mid-replace, or gone: a later event will tell
  }
}

/**
 * Calls `onChange` once a burst of changes to the config file settles and its content differs from what was
 * last seen. Watches the directory, not the file, so a file replaced by rename (editors) or through a
 * swapped symlink (a Kubernetes ConfigMap's `..data`) is still seen; comparing content keeps unrelated
 * files in that directory, and saves that change nothing, from reloading.
 */
export function watchConfig(path: string, onChange: () => void, debounceMs = 250): { close(): void } {
  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  let last = contentOf(path);
  const name = basename(path);
  const settle = (): void => {
    const now = contentOf(path);
    if (now === undefined || now === last) return;
    last = now;
    onChange();
  };
  try {
    watcher = watch(dirname(path), { persistent: false }, (_event, file) => {
      // Our file, a ConfigMap's `..data` symlink swap, or an event without a name (some platforms).
      if (file !== null && file !== name && !file.startsWith('..')) return;
      clearTimeout(timer);
      timer = setTimeout(settle, debounceMs);
      timer.unref();
    });
    watcher.on('error', () => undefined);
  } catch {
    watcher = undefined; // watching is a convenience: SIGHUP still reloads
  }
  return {
    close() {
      clearTimeout(timer);
      watcher?.close();
    },
  };
}
