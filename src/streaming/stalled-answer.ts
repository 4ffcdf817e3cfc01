import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

/** Bytes libuv holds for the kernel: what a client that stopped reading leaves there. */
function queuedInLibuv(socket: Socket): number {
  return (socket as { _handle?: { writeQueueSize?: number } | null })._handle?.writeQueueSize ?? 0;
}

/** Bytes an answer still has to hand to the kernel: the stream's own buffer and libuv's write queue. */
function unsent(socket: Socket): number {
  return socket.writableLength + queuedInLibuv(socket);
}

/**
 * An answer ended on our side (a JSON answer handed over, a stream finished or cut) that its client is not
 * taking: the connection is closed once the client has taken nothing for `stallMs`, freeing the bytes queued
 * for it. Without this, a client that stopped reading held its connection and its answer for as long as it
 * stayed connected (no server timeout may cut an SSE stream idle between chunks). A client reading slowly but
 * steadily keeps its connection: what counts is that the unsent bytes go down.
 */
export function closeIfStalled(res: ServerResponse, stallMs: number): void {
  const socket = res.socket;
  if (socket === null || res.writableFinished || res.destroyed || !(stallMs > 0)) return;
  // Not handed over yet (an asynchronous hook before fastify's write): looked at again once it is.
  if (!res.writableEnded) {
    setImmediate(() => res.writableEnded && closeIfStalled(res, stallMs));
    return;
  }
  // What the kernel took whole is the client's to take (and the connection's keep-alive to end): only an
  // answer still queued here is watched, so a request answered in one write pays for no timer.
  if (!socket.writableNeedDrain && queuedInLibuv(socket) === 0) return;
  let last = unsent(socket);
  const check = setInterval(() => {
    if (res.writableFinished || socket.destroyed) return stop();
    const now = unsent(socket);
    if (now < last) {
      last = now;
      return;
    }
    socket.destroy();
    stop();
  }, stallMs);
  check.unref();
  const stop = (): void => {
    clearInterval(check);
    res.off('finish', stop);
    res.off('close', stop);
  };
  res.on('finish', stop);
  res.on('close', stop);
}
