#!/usr/bin/env node
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { parseArgs } from 'node:util';
import type { LoadedConfig } from './config/load.js';

// The gateway's modules are imported where a command needs them: `--version`, `--help` and a usage error
// answer in Node's own start-up time, and `check` loads only the config's modules (~80 ms), not the server's
// (~250 ms more), which scripts and container health checks that call it often would pay each time.

const USAGE = `usage:
  llm-edge-router [--config PATH] [--host H] [--port N] [--log-level LEVEL]
  llm-edge-router --version
  llm-edge-router check --config PATH
  llm-edge-router simulate --port N [--latency-ms N --tokens-per-s N --fail-rate F --kind openai|anthropic ...]`;

const DEFAULT_CONFIG = 'config/gateway.yaml';
/**
 * After cutting the streams left at the grace's end, how long their error events and request lines get to go
 * out before the process exits (close-with-grace's own bound is the grace plus 1 s).
 */
const CUT_STREAMS_WAIT_MS = 500;

function fail(message: string, code = 1): never {
  process.stderr.write(`${message}\n`);
  process.exit(code);
}

async function loadOrExit(path: string): Promise<LoadedConfig> {
  const { ConfigError, loadConfigFile } = await import('./config/load.js');
  try {
    return loadConfigFile(path);
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
}

/** `check`: validate and print the routes and upstreams, exit non-zero on any error. */
async function check(path: string): Promise<void> {
  const loaded = await loadOrExit(path);
  const { config } = loaded;
  const out: string[] = [`config ${path}: ok`];
  for (const w of loaded.warnings) out.push(`warning: ${w}`);
  out.push('upstreams:');
  for (const p of config.providers) {
    const state = loaded.disabledProviders.has(p.name) ? ' (disabled: empty api_key)' : '';
    for (const m of p.models) {
      // The per-minute budget only where one is set: most upstreams have none.
      const budget = `${m.rpm === undefined ? '' : `  rpm=${m.rpm}`}${m.tpm === undefined ? '' : `  tpm=${m.tpm}`}`;
      out.push(
        `  ${p.name}/${m.name}  kind=${p.kind}  $${m.price.input_per_mtok}/$${m.price.output_per_mtok} per Mtok  ctx=${m.context_window ?? 'unset'}${budget}  [${m.capabilities.join(', ')}]${state}`,
      );
    }
  }
  out.push('routes:');
  for (const [name, r] of Object.entries(config.routes)) {
    const strategy =
      typeof r.strategy === 'object'
        ? 'hybrid (custom weights)'
        : (r.strategy ??
          `${typeof config.routing.default_strategy === 'string' ? config.routing.default_strategy : 'hybrid'} (default)`);
    if (r.targets)
      out.push(
        `  ${name}  strategy=${strategy}  targets: ${r.targets.map((t) => (typeof t === 'string' ? t : t.target)).join(', ')}`,
      );
    if (r.tiers) {
      out.push(
        `  ${name}  strategy=${strategy}  default_tier=${r.default_tier}${r.router ? `  router=${r.router.tier}` : ''}`,
      );
      for (const [tier, list] of Object.entries(r.tiers)) {
        out.push(
          `    ${tier}: ${(list ?? []).map((t) => (typeof t === 'string' ? t : t.target)).join(', ')}`,
        );
      }
    }
  }
  process.stdout.write(`${out.join('\n')}\n`);
}

/** pino's levels, and `silent`. */
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

async function serve(args: {
  config: string;
  host?: string;
  port?: string;
  logLevel?: string;
}): Promise<void> {
  const level = args.logLevel ?? process.env.LOG_LEVEL ?? 'info';
  if (!LOG_LEVELS.includes(level))
    fail(
      `${args.logLevel === undefined ? 'LOG_LEVEL' : '--log-level'}: expected one of ${LOG_LEVELS.join(', ')}, got "${level}"`,
      2,
    );
  const [
    { default: closeWithGrace },
    { buildApp },
    { cutRunning },
    { loadConfigFile },
    { MAX_TIMER_MS },
    { watchConfig },
    { createLogger },
  ] = await Promise.all([
    import('close-with-grace'),
    import('./app.js'),
    import('./http/chat.js'),
    import('./config/load.js'),
    import('./config/schema.js'),
    import('./config/watch.js'),
    import('./observability/logger.js'),
  ]);
  const logger = createLogger(level);
  const loaded = await loadOrExit(args.config);
  const app = buildApp(loaded, { logger });
  const server = loaded.config.server;
  // Number('') and Number(' ') are 0: an empty --port would listen on a random port.
  const port = args.port !== undefined ? (/^\d+$/.test(args.port) ? Number(args.port) : NaN) : server.port;
  if (!Number.isInteger(port) || port < 0 || port > 65_535)
    fail(`--port: expected a port number, got "${args.port}"`, 2);

  const reload = (why: string): void => {
    if (app.gateway.draining) return; // shutting down: the watch is closed, and so is a SIGHUP's reload
    app.gateway.tryReload(() => {
      const next = loadConfigFile(args.config);
      // An edit and a SIGHUP (a deploy script does both) are one reload: the watch need not load it again.
      watcher.loaded(next.text);
      return next;
    }, why);
  };
  const watcher = watchConfig(args.config, () => reload('file changed'), { initial: loaded.text });
  process.on('SIGHUP', () => reload('SIGHUP'));

  // Node's closeIdleConnections() passes over a connection that has not sent a whole request head yet (a
  // load balancer's pre-opened socket; fetch leaves one after an abort), and server.close() waits for it:
  // one such client held every shutdown for the whole grace period. The drain closes every idle socket.
  const sockets = new Set<Socket>();
  app.server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  // Idle: no response attached. Node detaches one when it has finished (flushed to the socket); unlike
  // closeIdleConnections(), which this replaces, an ended response still flushing to a slow client is kept.
  const closeIdle = (): void => {
    for (const socket of sockets) if (!(socket as { _httpMessage?: unknown })._httpMessage) socket.destroy();
  };

  // close-with-grace treats SIGHUP as a shutdown signal by default; here it means "reload the config".
  closeWithGrace(
    { delay: Math.min(server.shutdown_grace_ms + 1_000, MAX_TIMER_MS), logger, skip: ['SIGHUP'] },
    async ({ signal, err }) => {
      if (err) logger.error({ err }, 'fatal error; shutting down');
      logger.info({ signal }, 'draining: refusing new requests, letting streams in flight finish');
      // A repeated SIGTERM (npm or a shell forwarding it beside the process group's own copy, tini -g) is
      // not a demand to die: close-with-grace's exit(1) on a second signal would cut the streams the drain
      // is for, which its delay bounds anyway. A second Ctrl-C (SIGINT) still exits at once.
      process.removeAllListeners('SIGTERM');
      process.on('SIGTERM', () => logger.warn('SIGTERM again: already draining'));
      app.gateway.draining = true;
      watcher.close();
      const grace = new Promise<void>((resolve) => setTimeout(resolve, server.shutdown_grace_ms).unref());
      // server.close() drops idle keep-alive connections only once; a connection whose stream ends later
      // would hold the close until its keep-alive timeout, so keep sweeping while the streams finish.
      closeIdle();
      const sweep = setInterval(closeIdle, 100).unref();
      const closed = app.close();
      try {
        await Promise.race([closed, grace]);
        // Requests still running at the grace's end are ended (a stream with an error event, so a client can
        // tell a cut stream from a finished one and from a crash; a JSON request with a 503), their request
        // lines written, and then we go.
        const cut = cutRunning(app.gateway, sockets);
        if (cut > 0) {
          logger.warn({ requests: cut }, `shutdown grace over: cut ${cut} request(s) still running`);
          await Promise.race([
            closed,
            new Promise((resolve) => setTimeout(resolve, CUT_STREAMS_WAIT_MS).unref()),
          ]);
        }
      } finally {
        clearInterval(sweep);
      }
    },
  );

  const host = args.host ?? server.host;
  try {
    await app.listen({ host, port });
  } catch (err) {
    // The address is the operator's to fix (in use, a privileged port, a host not here): said in one line.
    const code = (err as NodeJS.ErrnoException).code;
    if (code === undefined || !LISTEN_ERRORS[code]) throw err;
    fail(`cannot listen on ${host}:${port}: ${LISTEN_ERRORS[code]} (${code})`);
  }
}

const LISTEN_ERRORS: Readonly<Record<string, string>> = {
  EADDRINUSE: 'the address is already in use',
  EACCES: 'permission denied (ports below 1024 need privileges)',
  EADDRNOTAVAIL: 'no such address on this machine',
  ENOTFOUND: 'the host name does not resolve',
  EAI_AGAIN: 'the host name does not resolve',
};

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (command === 'simulate') {
    try {
      await (await import('./sim/cli.js')).runSimulateCommand(rest); // the gateway never loads the simulator
    } catch (err) {
      fail(err instanceof Error ? err.message : String(err), 2);
    }
    return;
  }
  const isCheck = command === 'check';
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: isCheck ? rest : argv,
      options: {
        config: { type: 'string', short: 'c' },
        host: { type: 'string' },
        port: { type: 'string', short: 'p' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'v' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    fail(`${err instanceof Error ? err.message : String(err)}\n${USAGE}`, 2);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (values.version) {
    const pkg = createRequire(import.meta.url)('../package.json') as { version: string };
    process.stdout.write(`${pkg.version}\n`);
    return;
  }
  // Empty is unset: compose's `${LLM_ROUTER_CONFIG:-}` must not make the path "" (a message naming no file).
  const config =
    (values.config as string | undefined) ?? (process.env.LLM_ROUTER_CONFIG || undefined) ?? DEFAULT_CONFIG;
  if (isCheck) return check(config);
  await serve({
    config,
    host: values.host as string | undefined,
    port: values.port as string | undefined,
    logLevel: values['log-level'] as string | undefined,
  });
}

main(process.argv.slice(2)).catch((err: unknown) =>
  fail(err instanceof Error ? (err.stack ?? err.message) : String(err)),
);
