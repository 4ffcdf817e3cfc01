import { fstatSync, writeSync } from 'node:fs';
import pino, { type Logger, type LoggerOptions } from 'pino';

export type { Logger };

/** Header and field names whose values never reach a log line, wherever they appear. */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers["x-api-key"]',
  'req.headers["x-admin-key"]',
  'headers.authorization',
  'headers["x-api-key"]',
  'headers["x-admin-key"]',
  '*.authorization',
  '*.api_key',
  '*.apiKey',
  'api_key',
  'apiKey',
  '*.admin_key',
  '*.api_keys',
];

export function loggerOptions(level = 'info'): LoggerOptions {
  return {
    level,
    base: undefined,
    redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
  };
}

/** Lines wait at most this long in the buffer before they are written. */
const FLUSH_INTERVAL_MS = 200;
/** Bytes gathered before one write. */
const BATCH_BYTES = 8 * 1024;
/** The buffer lines are encoded into: a batch and one more line of up to 8 KiB (UTF-8: <= 3 bytes a unit). */
const SLAB_BYTES = BATCH_BYTES + 3 * 8 * 1024;

/** What the batcher hands its batches to: sonic-boom in buffer mode, or an FdSink. */
interface BufferSink {
  write(data: Buffer): unknown;
  flushSync(): void;
  /** Has written `data` by the time `write` returns, so the batcher may hand it a view of its buffer. */
  readonly writesAtOnce?: boolean;
}

/**
 * Blocking writes to a file or character device: nothing is allocated per batch (a copy per 8 KiB batch
 * made RSS saw up by ~60 MB between collections under load). A would-block answer (a non-blocking
 * terminal) is retried for up to a second, then the batch is dropped: logging never takes the gateway down.
 */
export class FdSink implements BufferSink {
  readonly writesAtOnce = true;
  private readonly pause = new Int32Array(new SharedArrayBuffer(4));

  constructor(private readonly fd: number) {}

  write(data: Buffer): void {
    let off = 0;
    for (let tries = 0; off < data.length;) {
      try {
        off += writeSync(this.fd, data, off, data.length - off);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN' || ++tries > 1_000) return;
        Atomics.wait(this.pause, 0, 0, 1);
      }
    }
  }

  flushSync(): void {
    /* every write is already done */
  }
}

/**
 * Log lines encoded into one reused buffer as they come and handed to the destination ~8 KiB at a time,
 * flushed at least every 200 ms and on exit. Every logger writes through the same batcher, so lines keep
 * their order. Bytes rather than strings: strings were joined, then measured and encoded again by
 * sonic-boom on every write. What made the line cheap under load was the destination, though (see
 * createLogger): an 8 KiB write straight to a file costs less than its hand-off to the thread pool.
 */
export class LineBatcher implements pino.DestinationStream {
  private readonly slab = Buffer.allocUnsafe(SLAB_BYTES);
  private used = 0;

  constructor(private readonly out: BufferSink) {
    setInterval(() => this.flush(), FLUSH_INTERVAL_MS).unref();
    process.once('exit', () => this.flushSync());
  }

  write(line: string): void {
    if (this.used + line.length * 3 > SLAB_BYTES) {
      this.flush();
      if (line.length * 3 > SLAB_BYTES) {
        this.out.write(Buffer.from(line, 'utf8')); // a huge line goes on its own
        return;
      }
    }
    this.used += this.slab.write(line, this.used, 'utf8');
    if (this.used >= BATCH_BYTES) this.flush();
  }

  flush(cb?: (err?: Error) => void): void {
    if (this.used > 0) {
      // An async destination keeps the batch until it is written, while the slab is reused at once: it gets
      // a copy. A destination that writes at once gets a view.
      let batch = this.slab.subarray(0, this.used);
      if (this.out.writesAtOnce !== true) batch = Buffer.from(batch);
      this.used = 0;
      try {
        this.out.write(batch);
      } catch (err) {
        cb?.(err as Error);
        return;
      }
    }
    cb?.();
  }

  flushSync(): void {
    this.flush();
    try {
      this.out.flushSync();
    } catch {
      /* not open, or already closed: nothing more can be written */
    }
  }
}

/** sonic-boom in buffer mode; its type says strings, its buffer mode takes Buffers. */
export function bufferDestination(opts: {
  dest: string | number;
  sync?: boolean;
  mkdir?: boolean;
}): BufferSink {
  return pino.destination({
    ...opts,
    minLength: 0,
    maxLength: 16 * 1024 * 1024,
    contentMode: 'buffer',
  }) as unknown as BufferSink;
}

/**
 * Whether fd 1 is a file or a character device (/dev/null, a terminal): a write there is a copy into the
 * page cache, which costs less than handing it to the thread pool (interleaved A/B under load: ~8 µs a
 * request less). A pipe or socket can stall when its reader does, so those are written asynchronously.
 */
function stdoutIsFileLike(): boolean {
  try {
    const st = fstatSync(1);
    return st.isFile() || st.isCharacterDevice();
  } catch {
    return false;
  }
}

/**
 * stdout in batches (see LineBatcher): no write per line on the request path. Into a pipe or socket the
 * batches are written asynchronously, and a stalled reader makes the gateway drop lines past 16 MiB
 * rather than block or grow without bound; into a file they are written at once.
 */
export function createLogger(level?: string, destination?: pino.DestinationStream): Logger {
  if (destination) return pino(loggerOptions(level), destination);
  const sink = stdoutIsFileLike() ? new FdSink(1) : bufferDestination({ dest: 1, sync: false });
  return pino(loggerOptions(level), new LineBatcher(sink));
}

/**
 * Where a logger writes its lines: the per-request line is built by hand (`report.ts`) and written here
 * directly, through the same destination as every other line.
 */
export function lineStream(logger: Logger): pino.DestinationStream {
  const stream = (logger as unknown as Record<symbol, pino.DestinationStream | undefined>)[
    pino.symbols.streamSym
  ];
  if (!stream) throw new Error('logger has no destination stream');
  return stream;
}
