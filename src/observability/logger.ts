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

/**
 * stdout written asynchronously (lines that arrive while a write is in flight go out together): no
 * blocking write per line on the request path. A stalled stdout drops lines past 16 MiB rather than
 * growing without bound; pino flushes what is left when the process exits.
 */
export function createLogger(level?: string, destination?: pino.DestinationStream): Logger {
  return pino(loggerOptions(level), destination ?? pino.destination({ dest: 1, sync: false, maxLength: 16 * 1024 * 1024 }));
}
