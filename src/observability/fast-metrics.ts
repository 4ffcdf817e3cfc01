import type { Registry } from 'prom-client';

/**
 * Counters and histograms for the per-request path, rendered by prom-client's Registry like its own.
 * A child here is a plain object whose `inc`/`observe` touch two numbers: prom-client's children hash their
 * label object on every call, which cost ~12% of gateway throughput in the bench profile.
 */

type Labels<L extends string> = Readonly<Record<L, string>>;

interface MetricOptions<L extends string> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly L[];
  readonly registers: readonly Registry[];
}

/** What prom-client's Registry reads from a metric (`get()`), as its own metrics return it. */
interface MetricValue {
  readonly value: number;
  readonly labels: Record<string, string | number>;
  readonly sharedLabels?: Record<string, string>;
  readonly metricName?: string;
}

abstract class FastMetric<L extends string, C extends { readonly labels: Record<string, string> }> {
  readonly name: string;
  readonly help: string;
  readonly aggregator = 'sum';
  protected readonly children = new Map<string, C>();
  private readonly labelNames: readonly L[];

  constructor(opts: MetricOptions<L>) {
    this.name = opts.name;
    this.help = opts.help;
    this.labelNames = opts.labelNames;
    // The Registry only needs `name` and `get()`; its type asks for a prom-client class.
    for (const r of opts.registers) r.registerMetric(this as never);
  }

  protected abstract create(labels: Record<string, string>): C;

  /** The child for these label values, created once (look it up outside the hot loop). */
  labels(labels: Labels<L>): C {
    let key = '';
    for (const n of this.labelNames) key += `${labels[n]}\u0000`;
    let child = this.children.get(key);
    if (!child) {
      const own: Record<string, string> = {};
      for (const n of this.labelNames) own[n] = String(labels[n]);
      child = this.create(own);
      this.children.set(key, child);
    }
    return child;
  }

  remove(labels: Labels<L>): void {
    let key = '';
    for (const n of this.labelNames) key += `${labels[n]}\u0000`;
    this.children.delete(key);
  }

  /** Drops every series whose labels `gone` picks (an upstream a reload removed). */
  removeWhere(gone: (labels: Readonly<Record<string, string>>) => boolean): void {
    for (const [key, child] of this.children) if (gone(child.labels)) this.children.delete(key);
  }

  reset(): void {
    this.children.clear();
  }
}

/** One series' number: exported once touched (an `inc(0)` primes a series), as prom-client does. */
abstract class ValueChild {
  value = 0;
  used = false;
  constructor(readonly labels: Record<string, string>) {}
}

/** Counters and gauges: one number per series. */
abstract class FastValueMetric<L extends string, C extends ValueChild> extends FastMetric<L, C> {
  abstract readonly type: string;

  get(): { name: string; help: string; type: string; aggregator: string; values: MetricValue[] } {
    const values: MetricValue[] = [];
    for (const c of this.children.values()) if (c.used) values.push({ value: c.value, labels: c.labels });
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}

export class CounterChild extends ValueChild {
  inc(v = 1): void {
    this.used = true;
    if (v > 0) this.value += v; // counters never go down; NaN and negatives are dropped
  }
}

export class FastCounter<L extends string> extends FastValueMetric<L, CounterChild> {
  readonly type = 'counter';

  protected create(labels: Record<string, string>): CounterChild {
    return new CounterChild(labels);
  }

  inc(labels: Labels<L>, v = 1): void {
    this.labels(labels).inc(v);
  }
}

export class GaugeChild extends ValueChild {
  inc(v = 1): void {
    this.used = true;
    this.value += v;
  }

  dec(v = 1): void {
    this.used = true;
    this.value -= v;
  }

  set(v: number): void {
    this.used = true;
    this.value = v;
  }
}

/** A gauge moved on every request (in-flight counts): `inc`/`dec` on a cached child touch one number. */
export class FastGauge<L extends string> extends FastValueMetric<L, GaugeChild> {
  readonly type = 'gauge';

  protected create(labels: Record<string, string>): GaugeChild {
    return new GaugeChild(labels);
  }

  set(labels: Labels<L>, v: number): void {
    this.labels(labels).set(v);
  }
}

export class HistogramChild {
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(
    readonly labels: Record<string, string>,
    private readonly bounds: readonly number[],
  ) {
    this.counts = new Float64Array(bounds.length);
  }

  observe(v: number): void {
    if (!Number.isFinite(v)) return;
    const b = this.bounds;
    for (let i = 0; i < b.length; i++) {
      if (v <= b[i]!) {
        this.counts[i]!++;
        break;
      }
    }
    this.sum += v;
    this.count++;
  }
}

export class FastHistogram<L extends string> extends FastMetric<L, HistogramChild> {
  readonly type = 'histogram';
  private readonly bounds: readonly number[];

  constructor(opts: MetricOptions<L> & { readonly buckets: readonly number[] }) {
    super(opts);
    this.bounds = [...opts.buckets].sort((a, b) => a - b);
  }

  protected create(labels: Record<string, string>): HistogramChild {
    return new HistogramChild(labels, this.bounds);
  }

  observe(labels: Labels<L>, v: number): void {
    this.labels(labels).observe(v);
  }

  get(): { name: string; help: string; type: string; aggregator: string; values: MetricValue[] } {
    const values: MetricValue[] = [];
    const bucket = `${this.name}_bucket`;
    for (const c of this.children.values()) {
      if (c.count === 0) continue; // no series until the first observation, as prom-client does
      let acc = 0;
      for (let i = 0; i < this.bounds.length; i++) {
        acc += c.counts[i]!;
        values.push({
          metricName: bucket,
          labels: { le: this.bounds[i]! },
          sharedLabels: c.labels,
          value: acc,
        });
      }
      values.push({ metricName: bucket, labels: { le: '+Inf' }, sharedLabels: c.labels, value: c.count });
      values.push({ metricName: `${this.name}_sum`, labels: {}, sharedLabels: c.labels, value: c.sum });
      values.push({ metricName: `${this.name}_count`, labels: {}, sharedLabels: c.labels, value: c.count });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}
