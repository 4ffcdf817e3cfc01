import { parseSimArgs, startSimulator } from './index.js';
import { simUsage } from './options.js';

/**
 * `llm-edge-router simulate [flags]`: starts one simulator, prints `{"listening":URL,"kind":...,"name":...}`
 * on stdout and resolves once it has closed after SIGINT/SIGTERM. Bad flags throw before anything listens.
 */
export async function runSimulateCommand(argv: string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${simUsage()}\n`);
    return;
  }
  const sim = await startSimulator(parseSimArgs(argv));
  process.stdout.write(
    `${JSON.stringify({ listening: sim.url, kind: sim.options.kind, name: sim.options.name })}\n`,
  );
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  await sim.close();
}
