import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { FastCounter, FastGauge, FastHistogram } from '../../../src/observability/fast-metrics.js';

/** The fast metrics must render exactly what prom-client's own would for the same observations. */
describe('fast metrics', () => {
  it('render like prom-client counters and histograms, series appearing once touched', async () => {
    const ours = new Registry();
    const theirs = new Registry();
    const labelNames = ['route', 'status'] as const;
    const buckets = [0.01, 0.1, 1];
    const c1 = new FastCounter({ name: 'x_total', help: 'h', labelNames, registers: [ours] });
    const c2 = new Counter({ name: 'x_total', help: 'h', labelNames, registers: [theirs] });
    const h1 = new FastHistogram({ name: 'y_seconds', help: 'h', labelNames, buckets, registers: [ours] });
    const h2 = new Histogram({ name: 'y_seconds', help: 'h', labelNames, buckets, registers: [theirs] });

    const a = { route: 'a', status: '200' };
    const b = { route: 'b"q', status: '500' };
    c1.labels(a).inc();
    c1.inc(a, 2.5);
    c1.labels(b).inc(0);
    c2.labels(a).inc();
    c2.inc(a, 2.5);
    c2.labels(b).inc(0);
    for (const v of [0.005, 0.01, 0.5, 3, 0.2]) {
      h1.labels(a).observe(v);
      h2.labels(a).observe(v);
    }
    h1.labels(b); // looked up, never observed: no series
    h2.labels(b);
    expect(await ours.metrics()).toBe(await theirs.metrics());
  });

  it('render gauges like prom-client: up, down, set, removed, series appearing once touched', async () => {
    const ours = new Registry();
    const theirs = new Registry();
    const labelNames = ['provider', 'model'] as const;
    const g1 = new FastGauge({ name: 'g', help: 'h', labelNames, registers: [ours] });
    const g2 = new Gauge({ name: 'g', help: 'h', labelNames, registers: [theirs] });
    const a = { provider: 'a', model: 'm' };
    const b = { provider: 'b', model: 'm' };
    const c = { provider: 'c', model: 'm' };
    for (const g of [g1, g2]) {
      g.labels(a).inc(0);
      g.labels(a).inc();
      g.labels(a).inc();
      g.labels(a).dec();
      g.set(b, 7);
      g.labels(c).inc();
      g.remove(c);
    }
    expect(await ours.metrics()).toBe(await theirs.metrics());
    expect(await ours.metrics()).toContain('g{provider="a",model="m"} 1\n');
  });

  it('drop what a counter cannot take and what a histogram cannot place', () => {
    const r = new Registry();
    const c = new FastCounter({ name: 'c_total', help: 'h', labelNames: ['k'] as const, registers: [r] });
    const h = new FastHistogram({
      name: 'h',
      help: 'h',
      labelNames: ['k'] as const,
      buckets: [1],
      registers: [r],
    });
    const child = c.labels({ k: 'v' });
    child.inc(-5);
    child.inc(Number.NaN);
    child.inc(0.25);
    expect(child.value).toBe(0.25);
    h.labels({ k: 'v' }).observe(Number.NaN);
    expect(h.labels({ k: 'v' }).count).toBe(0);
  });
});
