import type { Server } from 'node:http';
import { afterAll, afterEach } from 'vitest';

/** Anything a test starts and must stop: gateways, simulators, adapters around servers or processes. */
export interface Closeable {
  close(): unknown;
}

/** Hands a resource to the cleanup and returns it unchanged, so `gw = track(await startGateway(...))` reads naturally. */
export type Track = <T extends Closeable>(resource: T) => T;

function tracker(register: (fn: () => Promise<void>) => void): Track {
  const tracked: Closeable[] = [];
  register(async () => {
    const errors: unknown[] = [];
    // Newest first: a gateway started after its simulators is closed before them, so it never sees them vanish.
    for (const resource of tracked.splice(0).reverse()) {
      try {
        await resource.close();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `${errors.length} resources failed to close`);
  });
  return (resource) => {
    tracked.push(resource);
    return resource;
  };
}

/**
 * Registers an afterEach that closes, newest first, everything handed to the returned `track` (gateways,
 * simulators, servers): a test never leaves a port or timer behind. Every resource is closed even when one
 * fails to; the failures are rethrown. Closing twice must be harmless (a test may close one itself).
 */
export function closeAfterEach(): Track {
  return tracker(afterEach);
}

/** {@link closeAfterEach} for resources shared by a whole file or describe block (started in beforeAll). */
export function closeAfterAll(): Track {
  return tracker(afterAll);
}

/** A node:http server as a {@link Closeable}: open connections are cut, then it stops listening. */
export function closeableServer(server: Server): Closeable {
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
