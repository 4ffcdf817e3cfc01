/**
 * Secrets as short as the config collects them are scrubbed from relayed upstream errors (SPEC §8 Secrets;
 * README providers[].headers: credential-named header values of 8+ characters with a digit are secrets): an
 * 8-character token header and a 4-character api_key echoed in an upstream 400 never reach the client.
 */
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postTo, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { sendJson, startMock } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hi' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };

const chat = (gw: TestGateway, body: Record<string, unknown> = {}, headers: Record<string, string> = {}) =>
  postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, ...body }, { headers });

describe('credential-named provider headers are secrets from 8 characters with a digit (README providers[].headers)', () => {
  // README: header values named like a credential are "scrubbed as api_key is, when they look like one (8+
  // characters with a digit, or 20+)": 8 characters with a digit is enough.
  it('an upstream 400 that echoes an 8-character token header has it scrubbed', async () => {
    const TOKEN = 'tok12345';
    const up = track(
      await startMock((req, res) =>
        sendJson(res, 400, {
          error: {
            message: `bad proxy token ${String(req.headers['x-proxy-token'])}`,
            type: 'invalid_request_error',
            param: null,
            code: null,
          },
        }),
      ),
    );
    const gw = track(
      await startGateway({
        providers: [
          simProvider('a', up.url, ['m'], { timeouts: RELAXED, headers: { 'x-proxy-token': TOKEN } }),
        ],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const r = await chat(gw);
    expect(r.status).toBe(400);
    expect(up.received[0]?.headers['x-proxy-token']).toBe(TOKEN);
    expect(r.text).toContain('bad proxy token');
    expect(r.text).not.toContain(TOKEN);
    expect(gw.rawLogs()).not.toContain(TOKEN);
  });
});

describe('a configured secret of 4 characters is scrubbed too (SPEC §8 secrets)', () => {
  // The config collects every secret of 4 or more characters (secrets.ts collectSecrets) and SPEC §8 says no
  // configured secret ever reaches a client: a 4-character key an upstream echoes in its error is scrubbed.
  it('an upstream 400 echoing a 4-character api_key has it replaced', async () => {
    const KEY = 'k9Zq';
    const up = track(
      await startMock((req, res) =>
        sendJson(res, 400, {
          error: {
            message: `invalid api key: ${String(req.headers.authorization)}`,
            type: 'invalid_request_error',
            param: null,
            code: null,
          },
        }),
      ),
    );
    const gw = track(
      await startGateway({
        providers: [simProvider('a', up.url, ['m'], { timeouts: RELAXED, api_key: KEY })],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const r = await chat(gw);
    expect(r.status).toBe(400);
    expect(up.received[0]?.headers.authorization).toBe(`Bearer ${KEY}`);
    expect(r.text).toContain('invalid api key');
    expect(r.text).not.toContain(KEY);
  });
});
