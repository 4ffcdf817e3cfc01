import { Dispatcher, Pool as UndiciPool, buildConnector as undiciBuildConnector, errors } from 'undici';
import { describe, expect, it } from 'vitest';
import {
  ConnectTimeoutError,
  Pool,
  RequestHandler,
  buildConnector,
  requestOn,
} from '../../../src/upstream/client.js';

// The gateway loads these from undici's own modules instead of its entry point (src/upstream/client.ts).
describe('the undici parts the gateway loads', () => {
  it('Pool is the very class undici exports', () => {
    expect(Pool).toBe(UndiciPool);
  });

  it("requestOn is undici's promise request, the one its entry point puts on every dispatcher", () => {
    expect(requestOn).toBe(Dispatcher.prototype.request);
  });

  it('RequestHandler is the class that request builds, with the onConnect hook streams are watched by', () => {
    // Without it streams still work, but a request queued for a pool slot is timed as the upstream's fault.
    expect(typeof RequestHandler).toBe('function');
    expect(typeof (RequestHandler!.prototype as { onConnect?: unknown }).onConnect).toBe('function');
  });

  it('buildConnector and ConnectTimeoutError are the ones undici exports (connect_ms is kept by our own timer)', () => {
    expect(buildConnector).toBe(undiciBuildConnector);
    expect(ConnectTimeoutError).toBe(errors.ConnectTimeoutError);
    expect(new ConnectTimeoutError('x')).toMatchObject({ code: 'UND_ERR_CONNECT_TIMEOUT' });
  });
});
