import { createServer, type AddressInfo } from 'node:net';
import { errors, fetch, request } from 'undici';
import { describe, expect, it } from 'vitest';
import {
  classifyError,
  classifyStatus,
  parseRetryAfter,
  retryAfterFromHeaders,
} from '../../../src/resilience/classify.js';

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve())));
  return port;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

function coded(code: string, extra: Record<string, unknown> = {}): Error {
  return Object.assign(new Error('message text is never read'), { code }, extra);
}

describe('classifyStatus', () => {
  it.each([200, 201, 204, 299])('%i is a success', (status) => {
    expect(classifyStatus(status)).toEqual({
      outcome: 'success',
      retryable: false,
      reason: `http_${status}`,
    });
  });

  it('408 is a retryable timeout', () => {
    expect(classifyStatus(408)).toEqual({ outcome: 'timeout', retryable: true, reason: 'http_408' });
  });

  it('429 is a retryable rate limit', () => {
    expect(classifyStatus(429)).toEqual({ outcome: 'rate_limited', retryable: true, reason: 'http_429' });
  });

  it.each([500, 502, 503, 504, 529, 599])('%i is a retryable error', (status) => {
    expect(classifyStatus(status)).toEqual({ outcome: 'error', retryable: true, reason: `http_${status}` });
  });

  it.each([401, 403, 405, 407, 409])(
    '%i (our key, base_url or proxy is wrong; a lock timeout) is a retryable error',
    (status) => {
      expect(classifyStatus(status)).toEqual({ outcome: 'error', retryable: true, reason: `http_${status}` });
    },
  );

  it.each([400, 404, 413, 415, 422, 451])('%i is a client error, not retried', (status) => {
    expect(classifyStatus(status)).toEqual({
      outcome: 'client_error',
      retryable: false,
      reason: `http_${status}`,
    });
  });

  it('redirects (never followed) and out-of-range statuses are retryable errors', () => {
    expect(classifyStatus(302)).toEqual({ outcome: 'error', retryable: true, reason: 'http_302' });
    expect(classifyStatus(600)).toEqual({ outcome: 'error', retryable: true, reason: 'http_600' });
    expect(classifyStatus(0)).toEqual({ outcome: 'error', retryable: true, reason: 'http_0' });
  });

  it('returns shared frozen results (no allocation per attempt)', () => {
    expect(classifyStatus(502)).toBe(classifyStatus(502));
    expect(Object.isFrozen(classifyStatus(502))).toBe(true);
  });
});

describe('classifyError', () => {
  it('undici timeouts map to connect, first-byte and idle timeouts', () => {
    expect(classifyError(new errors.ConnectTimeoutError())).toEqual({
      outcome: 'timeout',
      retryable: true,
      reason: 'connect_timeout',
    });
    expect(classifyError(new errors.HeadersTimeoutError())).toEqual({
      outcome: 'timeout',
      retryable: true,
      reason: 'first_byte_timeout',
    });
    expect(classifyError(new errors.BodyTimeoutError())).toEqual({
      outcome: 'timeout',
      retryable: true,
      reason: 'idle_timeout',
    });
  });

  it('an undici SocketError is a retryable socket error', () => {
    expect(classifyError(new errors.SocketError('other side closed'))).toEqual({
      outcome: 'error',
      retryable: true,
      reason: 'socket_error',
    });
  });

  it('a real refused connection (undici request) is connect_refused', async () => {
    const port = await closedPort();
    const err = await rejection(request(`http://127.0.0.1:${port}/`));
    expect(classifyError(err)).toEqual({ outcome: 'error', retryable: true, reason: 'connect_refused' });
  });

  it('walks err.cause: fetch wraps the refused connection in "TypeError: fetch failed"', async () => {
    const port = await closedPort();
    const err = await rejection(fetch(`http://127.0.0.1:${port}/`));
    expect(err).toBeInstanceOf(TypeError);
    expect(classifyError(err).reason).toBe('connect_refused');
  });

  it.each([
    ['ENOTFOUND', 'dns_failure'],
    ['EHOSTUNREACH', 'host_unreachable'],
    ['ECONNRESET', 'connection_reset'],
    ['EPIPE', 'connection_reset'],
    ['UND_ERR_SOCKET', 'socket_error'],
  ])('Node error code %s is a retryable error (%s)', (code, reason) => {
    expect(classifyError(coded(code))).toEqual({ outcome: 'error', retryable: true, reason });
  });

  it.each([
    ['first_byte_timeout', 'timeout'],
    ['idle_timeout', 'timeout'],
    ['total_timeout', 'timeout'],
    ['stream_ended_before_content', 'error'],
    ['stream_error_event', 'error'],
  ] as const)('our own code %s is a retryable %s', (code, outcome) => {
    expect(classifyError(coded(code))).toEqual({ outcome, retryable: true, reason: code });
  });

  it('an AbortSignal.timeout abort is total_timeout (its numeric DOMException code is ignored)', () => {
    const err = new DOMException('The operation was aborted due to timeout', 'TimeoutError');
    expect(classifyError(err)).toEqual({ outcome: 'timeout', retryable: true, reason: 'total_timeout' });
    expect(classifyError(new DOMException('aborted', 'AbortError')).reason).toBe('total_timeout');
    expect(classifyError(new errors.RequestAbortedError()).reason).toBe('total_timeout');
  });

  it('the outermost known code wins over a wrapped one', () => {
    const ours = coded('first_byte_timeout', { cause: new errors.SocketError('closed') });
    expect(classifyError(ours).reason).toBe('first_byte_timeout');
    const wrapped = new Error('wrapper', { cause: new Error('middle', { cause: coded('ECONNRESET') }) });
    expect(classifyError(wrapped).reason).toBe('connection_reset');
  });

  it('looks into an AggregateError (one error per address)', () => {
    const agg = new AggregateError([coded('ECONNREFUSED'), coded('ECONNREFUSED')], 'connect failed');
    expect(classifyError(agg).reason).toBe('connect_refused');
  });

  it('never reads the message, and survives cause cycles and non-errors', () => {
    expect(classifyError(new Error('ECONNREFUSED timeout 429'))).toEqual({
      outcome: 'error',
      retryable: true,
      reason: 'upstream_failure',
    });
    const a: { cause?: unknown } = {};
    const b = { cause: a };
    a.cause = b;
    expect(classifyError(a).reason).toBe('upstream_failure');
    for (const v of [undefined, null, 'ECONNRESET', 42, { code: 23 }, { code: 'EWHATEVER' }]) {
      expect(classifyError(v).reason).toBe('upstream_failure');
    }
  });
});

describe('parseRetryAfter', () => {
  const NOW = Date.UTC(2025, 0, 1, 12, 0, 0);

  it('parses delay-seconds', () => {
    expect(parseRetryAfter('0', NOW)).toBe(0);
    expect(parseRetryAfter('30', NOW)).toBe(30_000);
    expect(parseRetryAfter(' 7 ', NOW)).toBe(7_000);
  });

  it('parses decimal seconds, rounding up to whole ms without float noise', () => {
    expect(parseRetryAfter('1.5', NOW)).toBe(1_500);
    expect(parseRetryAfter('1.1', NOW)).toBe(1_100);
    expect(parseRetryAfter('0.0001', NOW)).toBe(1);
  });

  it('parses an IMF-fixdate HTTP date relative to now', () => {
    expect(parseRetryAfter('Wed, 01 Jan 2025 12:00:45 GMT', NOW)).toBe(45_000);
  });

  it('parses the obsolete RFC 850 and asctime forms as GMT', () => {
    expect(parseRetryAfter('Wednesday, 01-Jan-25 12:01:00 GMT', NOW)).toBe(60_000);
    expect(parseRetryAfter('Wed Jan  1 12:00:10 2025', NOW)).toBe(10_000);
  });

  it('a date in the past is 0', () => {
    expect(parseRetryAfter('Tue, 31 Dec 2024 12:00:00 GMT', NOW)).toBe(0);
  });

  it('clamps to 24 hours', () => {
    expect(parseRetryAfter('999999999', NOW)).toBe(86_400_000);
    expect(parseRetryAfter('9'.repeat(400), NOW)).toBe(86_400_000);
    expect(parseRetryAfter('Fri, 01 Jan 2100 00:00:00 GMT', NOW)).toBe(86_400_000);
  });

  it('takes the first of repeated headers', () => {
    expect(parseRetryAfter(['2', '9'], NOW)).toBe(2_000);
  });

  it.each([
    undefined,
    '',
    '   ',
    'soon',
    '-5',
    '+5',
    '1e3',
    '0x10',
    '5s',
    '1.',
    '.5',
    'Infinity',
    'NaN',
    'Sun 5',
    '2025-01-01T12:00:45Z',
    'Wed, 01 Jan 2025 12:00:45',
    'Wed, 99 Jan 2025 12:00:45 GMT',
    'Wed, 01 Foo 2025 12:00:45 GMT',
  ])('garbage %j is undefined', (value) => {
    expect(parseRetryAfter(value, NOW)).toBeUndefined();
  });

  it('an empty list of headers is undefined', () => {
    expect(parseRetryAfter([], NOW)).toBeUndefined();
  });
});

describe('402 payment required (regression: an Anthropic "credit balance too low" was relayed, not failed over)', () => {
  it('is a retryable error: the account problem is ours, another provider may answer', () => {
    expect(classifyStatus(402)).toMatchObject({ outcome: 'error', retryable: true });
  });
});

describe('424 failed dependency', () => {
  it("is a retryable error: TGI's failed generation (out of memory) is the upstream's fault, not the request's", () => {
    expect(classifyStatus(424)).toMatchObject({ outcome: 'error', retryable: true });
    expect(classifyStatus(422)).toMatchObject({ outcome: 'client_error', retryable: false });
  });
});

describe('retryAfterFromHeaders', () => {
  const NOW = Date.UTC(2025, 0, 1, 12, 0, 0);

  it("prefers OpenAI's retry-after-ms, rounded up to a whole ms", () => {
    expect(retryAfterFromHeaders({ 'retry-after-ms': '1500', 'retry-after': '9' }, NOW)).toBe(1_500);
    expect(retryAfterFromHeaders({ 'retry-after-ms': ' 20.2 ' }, NOW)).toBe(21);
    expect(retryAfterFromHeaders({ 'retry-after-ms': ['300', '900'] }, NOW)).toBe(300);
    expect(retryAfterFromHeaders({ 'retry-after-ms': '9'.repeat(400) }, NOW)).toBe(86_400_000);
  });

  it('falls back to Retry-After when retry-after-ms is absent or not a number', () => {
    expect(retryAfterFromHeaders({ 'retry-after': '2' }, NOW)).toBe(2_000);
    expect(retryAfterFromHeaders({ 'retry-after-ms': 'soon', 'retry-after': '2' }, NOW)).toBe(2_000);
    expect(retryAfterFromHeaders({ 'retry-after-ms': '-5' }, NOW)).toBeUndefined();
    expect(retryAfterFromHeaders({}, NOW)).toBeUndefined();
  });
});
