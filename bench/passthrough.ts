/**
 * The Node ceiling: the least a fastify 5 + undici 7 proxy can do for POST /v1/chat/completions (read the
 * body, forward it over a keep-alive Pool, stream the answer back). The gateway's overhead is judged
 * against this. Streaming requests (`"stream":true` in the bytes) go to --stream-upstream when given.
 *   node dist-bench/bench/passthrough.js --upstream http://127.0.0.1:PORT [--stream-upstream URL] [--port N]
 */
import { parseArgs } from 'node:util';
import Fastify from 'fastify';
import { Pool } from 'undici';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    upstream: { type: 'string' },
    'stream-upstream': { type: 'string' },
  },
});
if (values.upstream === undefined) throw new Error('passthrough: --upstream URL is required');
const poolOptions = { connections: 1_100, pipelining: 1, keepAliveTimeout: 30_000 };
const json = new Pool(values.upstream, poolOptions);
const streams = values['stream-upstream'] ? new Pool(values['stream-upstream'], poolOptions) : json;
const STREAM_MARK = Buffer.from('"stream":true');

const app = Fastify({ logger: false, keepAliveTimeout: 72_000 });
app.removeAllContentTypeParsers();
app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

app.post('/v1/chat/completions', async (req, reply) => {
  const body = req.body as Buffer;
  const pool = body.includes(STREAM_MARK) ? streams : json;
  const res = await pool.request({
    method: 'POST',
    path: '/v1/chat/completions',
    headers: { 'content-type': 'application/json' },
    body,
  });
  const type = res.headers['content-type'];
  if (typeof type === 'string') reply.header('content-type', type);
  return reply.code(res.statusCode).send(res.body);
});

const address = await app.listen({ host: '127.0.0.1', port: Number(values.port) });
process.stdout.write(`${JSON.stringify({ listening: address })}\n`);
const stop = (): void =>
  void Promise.all([app.close(), ...[...new Set([json, streams])].map((p) => p.close())]).then(() =>
    process.exit(0),
  );
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
