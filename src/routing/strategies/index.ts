/** Every routing strategy by its config name (SPEC §2). */
import type { StrategyName } from '../../config/schema.js';
import type { Strategy } from '../types.js';
import { costStrategy } from './cost.js';
import { hybridStrategy } from './hybrid.js';
import { latencyStrategy } from './latency.js';
import { leastBusyStrategy } from './least-busy.js';
import { priorityStrategy } from './priority.js';
import { roundRobinStrategy } from './round-robin.js';
import { weightedStrategy } from './weighted.js';

export const STRATEGIES: Readonly<Record<StrategyName, Strategy>> = Object.freeze({
  cost: costStrategy,
  latency: latencyStrategy,
  hybrid: hybridStrategy,
  'round-robin': roundRobinStrategy,
  priority: priorityStrategy,
  weighted: weightedStrategy,
  'least-busy': leastBusyStrategy,
});

/** A strategy by name; for untrusted names (the `x-router-strategy` header) undefined when unknown. */
export function getStrategy(name: StrategyName): Strategy;
export function getStrategy(name: string): Strategy | undefined;
export function getStrategy(name: string): Strategy | undefined {
  // hasOwn, so "constructor" or "__proto__" from a header never resolves to something inherited.
  return Object.hasOwn(STRATEGIES, name) ? STRATEGIES[name as StrategyName] : undefined;
}
