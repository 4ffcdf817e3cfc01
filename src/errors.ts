/**
 * The one catalogue of errors a client can see. Each has a stable `code` to branch on; the HTTP status
 * and the OpenAI error `type` come from here and nowhere else.
 */
export const ERRORS = {
  invalid_request: { status: 400, type: 'invalid_request_error' },
  unauthorized: { status: 401, type: 'authentication_error' },
  forbidden: { status: 403, type: 'permission_error' },
  not_found: { status: 404, type: 'invalid_request_error' },
  model_not_found: { status: 404, type: 'invalid_request_error' },
  request_timeout: { status: 408, type: 'invalid_request_error' },
  payload_too_large: { status: 413, type: 'invalid_request_error' },
  unsupported_media_type: { status: 415, type: 'invalid_request_error' },
  rate_limited: { status: 429, type: 'rate_limit_error' },
  internal: { status: 500, type: 'server_error' },
  upstream_error: { status: 502, type: 'upstream_error' },
  no_available_upstream: { status: 503, type: 'no_available_upstream' },
  overloaded: { status: 503, type: 'server_error' },
  gateway_shutdown: { status: 503, type: 'server_error' },
  timeout: { status: 504, type: 'timeout' },
} as const satisfies Record<string, { status: number; type: string }>;

export type ErrorCode = keyof typeof ERRORS;

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export interface GatewayErrorOptions {
  param?: string | null;
  /** Seconds, sent as `Retry-After`. */
  retryAfterS?: number;
  /** Overrides the catalogue's status (used when relaying an upstream's client error as it was). */
  status?: number;
  /** Overrides the catalogue's OpenAI type (an upstream's own error type, relayed). */
  type?: string;
  /** Overrides the code in the body (an upstream's own error code, relayed). */
  bodyCode?: string | null;
  /** Sent with `x-should-retry: false`: the same request again would fail the same way (the OpenAI SDKs read it). */
  noRetry?: boolean;
  cause?: unknown;
}

export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  readonly retryAfterS: number | undefined;
  readonly bodyCode: string | null;
  readonly noRetry: boolean;

  constructor(code: ErrorCode, message: string, opts: GatewayErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'GatewayError';
    this.code = code;
    this.status = opts.status ?? ERRORS[code].status;
    this.type = opts.type ?? ERRORS[code].type;
    this.param = opts.param ?? null;
    this.retryAfterS = opts.retryAfterS;
    this.bodyCode = opts.bodyCode === undefined ? code : opts.bodyCode;
    this.noRetry = opts.noRetry === true;
  }

  toBody(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.bodyCode } };
  }
}

export function isGatewayError(err: unknown): err is GatewayError {
  return err instanceof GatewayError;
}

/** The OpenAI-shaped body for any thrown value; unknown errors never leak their message. */
export function errorBody(err: unknown): {
  status: number;
  body: OpenAIErrorBody;
  retryAfterS?: number;
  noRetry?: boolean;
} {
  if (isGatewayError(err))
    return { status: err.status, body: err.toBody(), retryAfterS: err.retryAfterS, noRetry: err.noRetry };
  return { status: 500, body: new GatewayError('internal', 'internal gateway error').toBody() };
}
