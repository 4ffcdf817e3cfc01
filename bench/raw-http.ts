/**
 * A minimal HTTP/1.1 keep-alive client for the open-loop load generator: it writes one pre-built request
 * (the same bytes every time) and reads back just the status and the end of the answer. The load generator
 * shares its core with the simulator, and undici's full request path costs ~65 µs of that core a request
 * (measured: 1.6 CPU s for 20k requests at 5k req/s), enough to put milliseconds of the client's own
 * queueing into every target's p99; this costs a fraction of it. It is a measuring instrument, not a
 * general client: answers must carry Content-Length or be chunked, and nothing is pipelined.
 */
import { connect, type Socket } from 'node:net';

const HEADER_END = Buffer.from('\r\n\r\n');
const LAST_CHUNK = Buffer.from('\r\n0\r\n\r\n');
const CONTENT_LENGTH = /\r\ncontent-length:[ \t]*(\d+)/i;
const CHUNKED = /\r\ntransfer-encoding:[ \t]*chunked/i;

type Done = (err: Error | undefined, status: number) => void;

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
      const end = this.buf.indexOf(HEADER_END);
      if (end < 0) return;
      const head = this.buf.toString('latin1', 0, end);
      this.status = Number(head.slice(9, 12));
      const length = CONTENT_LENGTH.exec(head);
      if (length) this.bodyLength = Number(length[1]);
      else if (CHUNKED.test(head)) this.bodyLength = -1;
      else return this.finish(new Error('answer has neither Content-Length nor chunked encoding'));
      this.bodyStart = end + HEADER_END.length;
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
    const payload = Buffer.from(body);
    this.request = Buffer.concat([
      Buffer.from(
        `POST ${url.pathname} HTTP/1.1\r\nhost: ${url.host}\r\ncontent-type: application/json\r\n` +
          `content-length: ${payload.length}\r\n\r\n`,
      ),
      payload,
    ]);
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
