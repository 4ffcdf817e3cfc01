import Fastify, { type FastifyReply } from 'fastify';
import { describe, expect, it } from 'vitest';
import type { Gateway } from '../../../src/gateway.js';
import { ownReply } from '../../../src/http/chat.js';
import { ANSWERED } from '../../../src/http/report.js';

/** A route whose handler is `handle`, wrapped as the chat and embeddings routes are. */
async function answer(handle: (reply: FastifyReply) => Promise<typeof ANSWERED | undefined>) {
  const app = Fastify();
  // The handler runs on the config live at its start, held until it is done.
  app.decorate('gateway', { runtime: { hold() {}, release() {} } } as unknown as Gateway);
  app.post(
    '/x',
    ownReply(app, (_gw, _rt, _req, reply) => handle(reply)),
  );
  const res = await app.inject({ method: 'POST', url: '/x', payload: {} });
  await app.close();
  return res;
}

describe('ownReply: handlers that send their own reply', () => {
  it('leaves the reply to a handler that sends it after it has resolved', async () => {
    const res = await answer(async (reply) => {
      setImmediate(() => void reply.code(200).send({ late: true }));
      return ANSWERED;
    });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ late: true });
  });

  it('sends a failure to the error handler, as a thrown one', async () => {
    const res = await answer(async () => {
      throw Object.assign(new Error('no such model'), { statusCode: 404 });
    });
    expect(res.statusCode).toBe(404);
    expect(res.body).toContain('no such model');
  });

  it('answers 500 rather than leaving the request hanging when a handler ends without an answer', async () => {
    const res = await answer(async () => undefined);
    expect(res.statusCode).toBe(500);
  });
});
