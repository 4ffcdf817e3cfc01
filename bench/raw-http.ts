/**
 * A minimal HTTP/1.1 keep-alive client for the open-loop load generator: it writes one pre-built request
 * (the same bytes every time) and reads back just the status and the end of the answer. The load generator
 * shares its core with the simulator, and undici's full request path costs ~65 µs of that core a request
 * (measured: 1.6 CPU s for 20k requests at 5k req/s), enough to put milliseconds of the client's own
 * queueing into every target's p99; this costs a fraction of it. It is a measuring instrument, not a
 * general client: answers must carry Content-Length or be chunked, and nothing is pipelined.
 */
import { connect, type Socket } from 'node:net';
import { StringDecoder } from 'node:string_decoder';

const HEADER_END = Buffer.from('\r\n\r\n');
const LAST_CHUNK = Buffer.from('\r\n0\r\n\r\n');
const CONTENT_LENGTH = /\r\ncontent-length:[ \t]*(\d+)/i;
const CHUNKED = /\r\ntransfer-encoding:[ \t]*chunked/i;

type Done = (err: Error | undefined, status: number) => void;

/** The bytes of a POST of a JSON `body` to `url`, built once and sent as they are. */
export function postBytes(url: URL, body: string, extraHeaders = ''): Buffer {
  const payload = Buffer.from(body);
  return Buffer.concat([
    Buffer.from(
      `POST ${url.pathname} HTTP/1.1\r\nhost: ${url.host}\r\ncontent-type: application/json\r\n${extraHeaders}` +
        `content-length: ${payload.length}\r\n\r\n`,
    ),
    payload,
  ]);
}

/** An answer's head, once `buf` holds it: status, where the body starts, and its framing. */
interface Head {
  status: number;
  bodyStart: number;
  /** Content-Length, or -1 when chunked, or undefined when neither (the close would end it). */
  length: number | undefined;
}

function parseHead(buf: Buffer): Head | undefined {
  const end = buf.indexOf(HEADER_END);
  if (end < 0) return undefined;
  const head = buf.toString('latin1', 0, end);
  const length = CONTENT_LENGTH.exec(head);
  return {
    status: Number(head.slice(9, 12)),
    bodyStart: end + HEADER_END.length,
    length: length ? Number(length[1]) : CHUNKED.test(head) ? -1 : undefined,
  };
}

/** One connection: at most one request in flight. */
class Connection {
  private readonly socket: Socket;
  private buf: Buffer = Buffer.alloc(0);
  private done: Done | undefined;
  /** Where the body starts and how long it is (-1: chunked) once the head is parsed. */
  private bodyStart = -1;
  private bodyLength = 0;
  private status = 0;

  constructor(
    port: number,
    host: string,
    private readonly onFree: (c: Connection) => void,
    private readonly onGone: (c: Connection) => void,
  ) {
    this.socket = connect({ port, host, noDelay: true });
    this.socket.on('data', (chunk: Buffer) => this.read(chunk));
    const fail = (err?: Error): void => {
      const done = this.done;
      this.done = undefined;
      this.onGone(this);
      done?.(err ?? new Error('connection closed'), 0);
    };
    this.socket.on('error', fail);
    this.socket.on('close', () => fail());
  }

  send(request: Buffer, done: Done): void {
    this.done = done;
    this.buf = Buffer.alloc(0);
    this.bodyStart = -1;
    this.socket.write(request);
  }

  destroy(): void {
    this.socket.destroy();
  }

  private read(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    if (this.bodyStart < 0) {
      const head = parseHead(this.buf);
      if (!head) return;
      this.status = head.status;
      if (head.length === undefined)
        return this.finish(new Error('answer has neither Content-Length nor chunked encoding'));
      this.bodyLength = head.length;
      this.bodyStart = head.bodyStart;
    }
    const complete =
      this.bodyLength >= 0
        ? this.buf.length >= this.bodyStart + this.bodyLength
        : this.buf.indexOf(LAST_CHUNK, Math.max(this.bodyStart - 2, 0)) >= 0;
    if (complete) this.finish(undefined);
  }

  private finish(err: Error | undefined): void {
    const { done, status } = this;
    this.done = undefined;
    if (err) this.socket.destroy();
    else this.onFree(this);
    done?.(err, status);
  }
}

/** Up to `connections` keep-alive connections to one origin; requests beyond them wait in order. */
export class RawPool {
  private readonly idle: Connection[] = [];
  private readonly waiting: Done[] = [];
  private readonly open = new Set<Connection>();
  private readonly request: Buffer;
  private readonly host: string;
  private readonly port: number;

  constructor(
    url: URL,
    body: string,
    private readonly connections: number,
  ) {
    this.host = url.hostname;
    this.port = Number(url.port || 80);
    this.request = postBytes(url, body);
  }

  /** Sends the request; `done` gets the status, or an error when the connection fails first. */
  post(done: Done): void {
    const c = this.idle.pop() ?? (this.open.size < this.connections ? this.connect() : undefined);
    if (c) c.send(this.request, done);
    else this.waiting.push(done);
  }

  destroy(): void {
    for (const c of this.open) c.destroy();
    for (const done of this.waiting.splice(0)) done(new Error('pool destroyed'), 0);
  }

  private connect(): Connection {
    const c = new Connection(
      this.port,
      this.host,
      (free) => {
        const next = this.waiting.shift();
        if (next) free.send(this.request, next);
        else this.idle.push(free);
      },
      (gone) => {
        this.open.delete(gone);
        const at = this.idle.indexOf(gone);
        if (at >= 0) this.idle.splice(at, 1);
        // A request waiting for a connection gets a new one (each waiter at most once when all fail).
        const next = this.waiting.shift();
        if (next) this.connect().send(this.request, next);
      },
    );
    this.open.add(c);
    return c;
  }
}

/** How one raw stream ended. */
export interface RawStreamResult {
  status: number;
  /** Complete: the terminating chunk arrived. */
  ended: boolean;
}

const CRLF = Buffer.from('\r\n');

/**
 * One streaming POST on its own keep-alive connection, read with nothing but a chunked-encoding decoder
 * and an SSE splitter: `onEvent(text, atMs)` gets each event (the text between blank lines) with the time
 * its last bytes were read from the socket. For the streaming load generator, which shares its core with
 * the simulator: undici's request, body stream and async iteration put the client's own queueing into
 * every target's time to first token.
 */
export class RawStreamConnection {
  private readonly socket: Socket;
  private buf: Buffer = Buffer.alloc(0);
  private head = true;
  private status = 0;
  /** Bytes of the current chunk still to read; -1 while reading a size line, -2 after the last chunk. */
  private chunkLeft = -1;
  private events = '';
  private readonly text = new StringDecoder('utf8');
  /** An answer that is not chunked (an error): `chunkLeft` is then its Content-Length. */
  private plainBody = false;
  private done: ((r: RawStreamResult) => void) | undefined;
  private fail: ((err: Error) => void) | undefined;
  private onEvent: (event: string, atMs: number) => void = () => undefined;
  private closed = false;

  /** The bytes of a streaming POST of `body` to `url`. */
  static request(url: URL, body: string): Buffer {
    return postBytes(url, body, 'accept: text/event-stream\r\n');
  }

  constructor(
    url: URL,
    private readonly now: () => number,
  ) {
    this.socket = connect({ port: Number(url.port || 80), host: url.hostname, noDelay: true });
    this.socket.on('data', (chunk: Buffer) => this.read(chunk, this.now()));
    const gone = (err?: Error): void => {
      this.closed = true;
      const fail = this.fail;
      this.done = undefined;
      this.fail = undefined;
      fail?.(err ?? new Error('connection closed'));
    };
    this.socket.on('error', gone);
    this.socket.on('close', () => gone());
  }

  /** Sends `request` (see `request()`); resolves when the answer ends (a non-chunked one is not parsed). */
  stream(request: Buffer, onEvent: (event: string, atMs: number) => void): Promise<RawStreamResult> {
    if (this.closed) return Promise.reject(new Error('connection closed'));
    this.onEvent = onEvent;
    this.buf = Buffer.alloc(0);
    this.head = true;
    this.chunkLeft = -1;
    this.events = '';
    this.text.end(); // drops a character a previous answer left half-read
    return new Promise((resolve, reject) => {
      this.done = resolve;
      this.fail = reject;
      this.socket.write(request);
    });
  }

  destroy(): void {
    this.socket.destroy();
  }

  private read(chunk: Buffer, at: number): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    if (this.head) {
      const head = parseHead(this.buf);
      if (!head) return;
      this.status = head.status;
      this.buf = this.buf.subarray(head.bodyStart);
      this.head = false;
      if (head.length === undefined) return this.end(false);
      if (head.length >= 0) {
        // Not a stream (an error answer): its length says where it ends.
        this.chunkLeft = head.length;
        this.plainBody = true;
      }
    }
    if (this.plainBody) {
      if (this.buf.length >= this.chunkLeft) this.end(true);
      return;
    }
    this.decode(at);
  }

  /** Walks the chunked encoding as far as the bytes go, handing chunk data to the SSE splitter. */
  private decode(at: number): void {
    let pos = 0;
    const b = this.buf;
    while (pos < b.length) {
      if (this.chunkLeft === -1) {
        const eol = b.indexOf(CRLF, pos);
        if (eol < 0) break;
        const size = Number.parseInt(b.toString('latin1', pos, eol).split(';')[0]!, 16);
        pos = eol + 2;
        if (!(size >= 0)) return this.end(false);
        if (size === 0) {
          this.chunkLeft = -2;
          continue;
        }
        this.chunkLeft = size;
      } else if (this.chunkLeft === -2) {
        // The last chunk's (empty) trailer ends the answer.
        if (b.indexOf(CRLF, pos) < 0) break;
        this.flushEvents(at);
        return this.end(true);
      } else if (this.chunkLeft === 0) {
        if (b.length - pos < 2) break;
        pos += 2; // the CRLF after a chunk's data
        this.chunkLeft = -1;
      } else {
        const take = Math.min(this.chunkLeft, b.length - pos);
        this.events += this.text.write(b.subarray(pos, pos + take));
        pos += take;
        this.chunkLeft -= take;
      }
    }
    this.buf = b.subarray(pos);
    this.flushEvents(at);
  }

  private flushEvents(at: number): void {
    let end: number;
    while ((end = this.events.indexOf('\n\n')) >= 0) {
      const event = this.events.slice(0, end);
      this.events = this.events.slice(end + 2);
      this.onEvent(event, at);
    }
  }

  private end(ok: boolean): void {
    const done = this.done;
    this.done = undefined;
    this.fail = undefined;
    this.plainBody = false;
    if (!ok) this.socket.destroy();
    done?.({ status: this.status, ended: ok });
  }
}
