import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';

/**
 * Calls `onChange` once a burst of writes to the config file settles (editors write in several steps, some
 * by rename). Watches the directory so a replaced file is still seen.
 */
export function watchConfig(path: string, onChange: () => void, debounceMs = 250): { close(): void } {
  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  const name = basename(path);
  try {
    watcher = watch(dirname(path), { persistent: false }, (_event, file) => {
      if (file !== null && file !== name) return;
      clearTimeout(timer);
      timer = setTimeout(onChange, debounceMs);
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
