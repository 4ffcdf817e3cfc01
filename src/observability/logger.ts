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
/** Characters gathered before one write. */
const BATCH_CHARS = 8192;

/**
 * Log lines gathered into one string and handed to the async destination ~8 KiB at a time, flushed at
 * least every 200 ms and on exit. Batching here rather than with sonic-boom's `minLength`: sonic-boom
 * measures the byte length of its whole pending buffer on every line (~2.5 µs a line at 8 KiB), and one
 * `write` per batch is cheaper still. Every logger writes through the same batcher, so lines keep their
 * order.
 */
export class LineBatcher implements pino.DestinationStream {
  private pending = '';

  constructor(private readonly out: ReturnType<typeof pino.destination>) {
    setInterval(() => this.flush(), FLUSH_INTERVAL_MS).unref();
    process.once('exit', () => this.flushSync());
  }

  write(line: string): void {
    this.pending += line;
    if (this.pending.length >= BATCH_CHARS) this.flush();
  }

  flush(cb?: (err?: Error) => void): void {
    const text = this.pending;
    if (text !== '') {
      this.pending = '';
      try {
        this.out.write(text);
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

/**
 * stdout written asynchronously in batches (see LineBatcher): no blocking write per line on the request
 * path. A stalled stdout drops lines past 16 MiB rather than growing without bound.
 */
export function createLogger(level?: string, destination?: pino.DestinationStream): Logger {
  if (destination) return pino(loggerOptions(level), destination);
  const out = pino.destination({ dest: 1, sync: false, minLength: 0, maxLength: 16 * 1024 * 1024 });
  return pino(loggerOptions(level), new LineBatcher(out));
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
