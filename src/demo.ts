#!/usr/bin/env node
/**
 * `npm run demo`: three simulated providers of different price, speed and reliability, and the gateway on
 * :8080 with config/demo.yaml. No keys, no network. Ctrl-C stops everything.
 */
import { fileURLToPath } from 'node:url';
import { buildApp } from './app.js';
import { ConfigError, loadConfigFile } from './config/load.js';
import { createLogger } from './observability/logger.js';
import { startSimulator, type Simulator } from './sim/index.js';

const root = fileURLToPath(new URL('..', import.meta.url));
/**
 * The simulators listen on 9101-9103 (config/demo.yaml's defaults), or from DEMO_SIM_PORT on; 0 gives each a
 * free port (tests running the demo side by side). config/demo.yaml reads the ports they got.
 */
const simPortBase = Number(process.env.DEMO_SIM_PORT ?? 9101);
/** A simulator's options with its port moved from the default 9101-9103 to DEMO_SIM_PORT's. */
function moved(o: SimOptionsIn & { port: number }): SimOptionsIn {
  return { ...o, port: simPortBase === 0 ? 0 : simPortBase + o.port - 9101 };
}
type SimOptionsIn = Parameters<typeof startSimulator>[0];

async function main(): Promise<void> {
  const sims: Simulator[] = [
    await startSimulator(
      moved({
        kind: 'openai',
        name: 'budget',
        port: 9101,
        latencyMs: 120,
        tokensPerS: 40,
        failRate: 0.2,
        completionTokens: 24,
      }),
    ),
    await startSimulator(
      moved({
        kind: 'openai',
        name: 'speedy',
        port: 9102,
        latencyMs: 15,
        tokensPerS: 200,
        completionTokens: 24,
      }),
    ),
    await startSimulator(
      moved({
        kind: 'anthropic',
        name: 'claude-sim',
        port: 9103,
        latencyMs: 60,
        tokensPerS: 80,
        completionTokens: 24,
        apiKey: 'demo-anthropic-key',
      }),
    ),
  ];
  const [budget, speedy, claude] = sims;
  process.env.DEMO_BUDGET_PORT = String(budget!.port);
  process.env.DEMO_SPEEDY_PORT = String(speedy!.port);
  process.env.DEMO_CLAUDE_PORT = String(claude!.port);
  let loaded;
  try {
    loaded = loadConfigFile(`${root}config/demo.yaml`);
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      process.exit(1);
    }
    throw err;
  }
  const logger = createLogger(process.env.LOG_LEVEL ?? 'info');
  const app = buildApp(loaded, { logger });
  const address = await app.listen({ host: loaded.config.server.host, port: loaded.config.server.port });
  console.error(`
llm-edge-router demo is up at ${address}
  curl ${address}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model":"fast","messages":[{"role":"user","content":"Hello!"}]}'
  routes: cheap (cost), fast (latency), smart (hybrid), auto (tiers + LLM router), embed;
          or address one upstream as provider/model
  watch:  ${address}/router/status   ${address}/metrics
`);
  const stop = async (): Promise<void> => {
    await app.close();
    await Promise.all(sims.map((s) => s.close()));
    process.exit(0);
  };
  process.once('SIGINT', () => void stop());
  process.once('SIGTERM', () => void stop());
}

const HELP = `usage: npm run demo   (node dist/demo.js)
  Three simulated providers and the gateway with config/demo.yaml; no keys, no network. Ctrl-C stops it.
  PORT            the gateway's port (default 8080)
  DEMO_SIM_PORT   the first simulator's port (default 9101; the others follow; 0: free ports)
  LOG_LEVEL       the gateway's log level (default info)
`;

if (process.argv.includes('--help') || process.argv.includes('-h')) process.stdout.write(HELP);
else
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
