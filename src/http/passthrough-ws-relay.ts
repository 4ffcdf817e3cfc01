import { WebSocket, type RawData } from 'ws';
import type { Scrubber } from '../observability/scrub.js';
import type { ProviderRuntime } from '../runtime.js';
import { echoGuard, type EchoGuard } from '../observability/scrub.js';
import { RealtimeDeltaMask } from './passthrough-ws-mask.js';

/** Past this many bytes queued for one side, the other side is no longer read until they are written. */
const HIGH_WATER_BYTES = 1024 * 1024;
/** Each side is pinged this often; one that has answered (or sent) nothing since the last ping is cut. */
const HEARTBEAT_MS = 30_000;
/** On shutdown, sessions are closed (1001) and those whose peer has not answered by then are cut. */
const SHUTDOWN_CLOSE_MS = 1_000;
/** Longest close reason a frame carries (RFC 6455 §5.5: 125 bytes of payload, 2 of them the code). */
const MAX_REASON_BYTES = 123;

interface Session {
  readonly client: WebSocket;
  readonly upstream: WebSocket;
  clientAlive: boolean;
  upstreamAlive: boolean;
  /** Sides not yet closed. */
  open: number;
}

/**
 * The open WebSocket sessions of the passthrough: each relays messages both ways as they came (text or
 * binary, back-pressured), and each side's close to the other. No timer bounds a session (a Realtime session
 * lasts minutes, and may be quiet for as long): only the heartbeat, which cuts a side that answered no ping
 * for HEARTBEAT_MS (a peer gone without a word, its TCP connection half-open). On shutdown every session is
 * closed with 1001 (going away).
 */
export class SessionRelay {
  private readonly sessions = new Set<Session>();
  private heartbeat: NodeJS.Timeout | undefined;
  private drained: (() => void) | undefined;

  /**
   * Relays between the two, both open; `ended` once both are closed. `opened` is the config the session was
   * opened with: its key is what the upstream can echo, whatever a reload has rotated it to since.
   */
  relay(
    client: WebSocket,
    upstream: WebSocket,
    ended: () => void,
    opened: { readonly provider: ProviderRuntime | undefined; readonly scrubber: Scrubber },
  ): void {
    const echo = echoGuard(opened.provider);
    const s: Session = { client, upstream, clientAlive: true, upstreamAlive: true, open: 2 };
    this.sessions.add(s);
    this.heartbeat ??= setInterval(() => this.beat(), HEARTBEAT_MS).unref();
    const closed = (): void => {
      if (--s.open > 0) return;
      this.sessions.delete(s);
      ended();
      if (this.sessions.size === 0) {
        this.stopHeartbeat();
        this.drained?.();
      }
    };
    client.on('message', (data: RawData, isBinary: boolean) => {
      s.clientAlive = true;
      forward(upstream, client, data as Buffer, isBinary);
    });
    // A model that repeats the key does so a token a delta: found across delta messages, not in one.
    const deltas = echo === undefined ? undefined : new RealtimeDeltaMask(echo.forms, echo.scrubEnd);
    upstream.on('message', (data: RawData, isBinary: boolean) => {
      s.upstreamAlive = true;
      if (echo === undefined) return forward(client, upstream, data as Buffer, isBinary);
      const messages = isBinary ? undefined : deltas?.messages(data as Buffer);
      if (messages === undefined)
        return forward(client, upstream, unechoed(data as Buffer, isBinary, echo), isBinary);
      for (const m of messages)
        forward(client, upstream, unechoed(Buffer.from(m, 'utf8'), false, echo), false);
    });
    client.on('pong', () => (s.clientAlive = true));
    upstream.on('pong', () => (s.upstreamAlive = true));
    // After a protocol error (invalid UTF-8, an oversized message) ws has sent its close frame and would wait
    // up to 30 s for the peer's: the failed side is cut now and the other told at once.
    client.on('error', () => {
      closeLike(upstream, 1006, '', 1001, 'client went away');
      client.terminate();
    });
    upstream.on('error', () => {
      closeLike(client, 1006, '', 1014, 'upstream connection failed');
      upstream.terminate();
    });
    // A client that went without a close frame is gone (1006): the upstream is told so at once.
    client.on('close', (code: number, reason: Buffer) => {
      closeLike(upstream, code, reason.toString(), 1001, 'client went away');
      closed();
    });
    upstream.on('close', (code: number, reason: Buffer) => {
      // Text a channel held back (a key's start, perhaps) goes before the close, as at a stream's end.
      if (echo !== undefined)
        for (const m of deltas?.end() ?? [])
          forward(client, upstream, unechoed(Buffer.from(m), false, echo), false);
      // An upstream close reason may echo what we sent it.
      const text = opened.scrubber.scrub(reason.toString());
      closeLike(client, code, text, 1014, 'upstream connection lost');
      closed();
    });
  }

  /** Closes every session (1001); those not closed within SHUTDOWN_CLOSE_MS are cut. */
  async closeAll(): Promise<void> {
    if (this.sessions.size > 0) {
      const done = new Promise<void>((resolve) => {
        this.drained = resolve;
        setTimeout(resolve, SHUTDOWN_CLOSE_MS).unref();
      });
      for (const s of this.sessions) {
        s.client.close(1001, 'gateway shutting down');
        s.upstream.close(1001);
      }
      await done;
      for (const s of this.sessions) {
        s.client.terminate();
        s.upstream.terminate();
      }
    }
    this.stopHeartbeat();
  }

  private beat(): void {
    for (const s of this.sessions) {
      // A side paused by back-pressure (the other reads slowly) cannot have its pong read: it is not dead.
      if (!s.clientAlive && !s.client.isPaused) s.client.terminate();
      if (!s.upstreamAlive && !s.upstream.isPaused) s.upstream.terminate();
      s.clientAlive = false;
      s.upstreamAlive = false;
      if (s.client.readyState === WebSocket.OPEN) s.client.ping();
      if (s.upstream.readyState === WebSocket.OPEN) s.upstream.ping();
    }
  }

  private stopHeartbeat(): void {
    clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }
}

/** Sends on, reading no more from `from` while `to` has more than HIGH_WATER_BYTES queued. */
function forward(to: WebSocket, from: WebSocket, data: Buffer, isBinary: boolean): void {
  if (to.readyState !== WebSocket.OPEN) return;
  to.send(data, { binary: isBinary }, () => {
    if (from.isPaused && to.bufferedAmount < HIGH_WATER_BYTES) from.resume();
  });
  if (to.bufferedAmount >= HIGH_WATER_BYTES && !from.isPaused) from.pause();
}

/**
 * Closes `ws` as its peer closed: the same code and reason, except the two a frame cannot carry: 1005 (no
 * code) closes with none, 1006 (the connection dropped) with `abnormal`.
 */
function closeLike(
  ws: WebSocket,
  code: number,
  reason: string,
  abnormal: number,
  abnormalReason: string,
): void {
  if (ws.readyState === WebSocket.CLOSED || ws.readyState === WebSocket.CLOSING) return;
  if (code === 1005) ws.close();
  else if (code === 1006) ws.close(abnormal, abnormalReason);
  else ws.close(code, Buffer.byteLength(reason) <= MAX_REASON_BYTES ? reason : '');
}

/** An upstream message that echoes what we sent it (our key) has it masked, as an HTTP answer has. */
function unechoed(data: Buffer, isBinary: boolean, echo: EchoGuard): Buffer {
  if (!echo.bytes.some((s) => data.includes(s))) return data;
  // latin1 keeps a binary message's other bytes as they were.
  const encoding = isBinary ? 'latin1' : 'utf8';
  return Buffer.from(echo.scrub(data.toString(encoding)), encoding);
}
