import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { closeAfterEach, closeableServer } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, refuseAsOpenAI } from '../helpers/mock-upstream.js';

/**
 * Request fits are learned per upstream and shared by every client: a refusal whose words the client itself
 * sent (an upstream quoting a refused value back) must teach nothing. Hand-written loopback upstreams answer
 * as OpenAI does.
 */

const track = closeAfterEach();
type Json = Record<string, unknown>;

/** A loopback upstream that keeps each request body as raw text (to see what a re-serialisation changed). */
async function rawMock(
  handle: (body: Json, n: number, res: ServerResponse) => void,
): Promise<{ url: string; texts: string[]; bodies: Json[]; close(): Promise<void> }> {
  const texts: string[] = [];
  const bodies: Json[] = [];
  const server = createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (text += c));
    req.on('end', () => {
      texts.push(text);
      const body = JSON.parse(text) as Json;
      bodies.push(body);
      handle(body, bodies.length - 1, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const closeable = closeableServer(server);
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    texts,
    bodies,
    close: async () => void (await closeable.close()),
  };
}

async function gatewayOver(url: string, model: string): Promise<TestGateway> {
  return track(
    await startGateway({
      providers: [simProvider('oai', url, [model], { api_key: 'sk-up' })],
      routes: { smart: { strategy: 'priority', targets: [`oai/${model}`] } },
    }),
  );
}

async function fitsOf(gw: TestGateway, id: string): Promise<Json> {
  const status = (await (await fetch(`${gw.url}/router/status`)).json()) as {
    upstreams: { id: string; request_fits?: Json }[];
  };
  return status.upstreams.find((u) => u.id === id)?.request_fits ?? {};
}

/**
 * As OpenAI's Chat Completions answers a `service_tier` it does not know: the client's value is echoed in
 * the message ("Invalid value: 'x'. Supported values are: ..."), param `service_tier`, code `invalid_value`.
 */
const TIERS = ['auto', 'default', 'flex', 'scale', 'priority'];
function gpt4o(body: Json, _n: number, res: ServerResponse): void {
  const tier = body.service_tier;
  if (tier !== undefined && !TIERS.includes(String(tier)))
    return refuseAsOpenAI(
      res,
      `Invalid value: '${String(tier)}'. Supported values are: 'auto', 'default', 'flex', 'scale', and 'priority'.`,
      'service_tier',
      'invalid_value',
    );
  answerChat(res, body, 'ok');
}

const MSG = [{ role: 'user', content: 'hi' }];

describe('a refusal that echoes the client’s own text teaches nothing (fits are shared by every client)', () => {
  // Regression: the refusal patterns were searched anywhere in the upstream's message, quoted values included.
  it('an echoed "This model supports at most 1 completion tokens" does not cap every later client’s answer', async () => {
    const up = track(await rawMock(gpt4o));
    const gw = await gatewayOver(up.url, 'gpt-4o');
    // One client (a tenant, or a prompt-injected agent) sends a bad service_tier whose text OpenAI echoes.
    const attacker = await postChat(gw, {
      model: 'smart',
      messages: MSG,
      max_tokens: 100,
      service_tier: 'x max_tokens is too large: 100. This model supports at most 1 completion tokens',
    });
    expect(attacker.status).toBe(400); // relayed, as any other 400
    // Another client, later: its own limit must reach the model (not 1: an answer cut after one token).
    const victim = await postChat(gw, { model: 'smart', messages: MSG, max_tokens: 500 });
    expect(victim.status).toBe(200);
    expect(up.bodies.at(-1)!.max_tokens).toBe(500);
    expect(await fitsOf(gw, 'oai/gpt-4o')).toEqual({});
    // The bad request was sent once: nothing in its 400 refused one of OpenAI's fields.
    expect(up.bodies).toHaveLength(2);
  });

  it('an echoed "Unsupported parameter: \'temperature\'" does not drop every later client’s temperature', async () => {
    const up = track(await rawMock(gpt4o));
    const gw = await gatewayOver(up.url, 'gpt-4o');
    const attacker = await postChat(gw, {
      model: 'smart',
      messages: MSG,
      temperature: 0,
      service_tier: "Unsupported parameter: 'temperature' is not supported with this model.",
    });
    expect(attacker.status).toBe(400);
    const victim = await postChat(gw, { model: 'smart', messages: MSG, temperature: 0 });
    expect(victim.status).toBe(200);
    expect(up.bodies.at(-1)).toMatchObject({ temperature: 0 });
    expect(await fitsOf(gw, 'oai/gpt-4o')).toEqual({});
    expect(up.bodies).toHaveLength(2);
  });
});
