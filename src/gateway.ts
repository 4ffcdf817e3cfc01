import type { LoadedConfig } from './config/load.js';
import type { Logger } from './observability/logger.js';
import { createMetrics, type Metrics } from './observability/metrics.js';
import { loadTokenizer } from './routing/tokens.js';
import { Runtime, SharedState } from './runtime.js';

export interface GatewayDeps {
  readonly logger: Logger;
  /** Milliseconds; injected so tests can drive breakers and statistics. */
  readonly now?: () => number;
  readonly random?: () => number;
  readonly metrics?: Metrics;
}

/**
 * The live gateway state: the current Runtime, swapped atomically on reload. A request takes
 * `gateway.runtime` once at its start, so in-flight requests finish on the config they began with.
 */
export class Gateway {
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly now: () => number;
  readonly random: () => number;
  readonly shared: SharedState;
  private current: Runtime;
  /** Set by shutdown: /readyz turns 503 and new requests are refused. */
  draining = false;

  constructor(loaded: LoadedConfig, deps: GatewayDeps) {
    this.logger = deps.logger;
    this.metrics = deps.metrics ?? createMetrics();
    this.now = deps.now ?? (() => performance.now() + performance.timeOrigin);
    this.random = deps.random ?? Math.random;
    this.shared = new SharedState(loaded, this.now);
    // Estimates use a fast approximation until the tokenizer has loaded; it never rejects.
    void loadTokenizer();
    for (const w of loaded.warnings) this.logger.warn(w);
    if (loaded.config.state.backend === 'redis') {
      this.logger.warn('state.backend redis is not built yet: breakers and statistics stay local to this process');
    }
    this.current = new Runtime(loaded, this.shared, this.metrics, this.logger);
  }

  get runtime(): Runtime {
    return this.current;
  }

  /** Swaps in a new validated config; breakers and statistics of upstreams that remain are kept. */
  reload(loaded: LoadedConfig): void {
    const old = this.current;
    for (const w of loaded.warnings) this.logger.warn(w);
    const next = new Runtime(loaded, this.shared, this.metrics, this.logger, old);
    this.current = next;
    // Pools the new runtime does not reuse close once their in-flight requests are done.
    void old.retire(next);
  }

  async close(): Promise<void> {
    await this.current.destroy();
  }
}
