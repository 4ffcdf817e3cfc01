/**
 * What a bench run collects (written as JSON to bench/results/) and the markdown summary printed on
 * stdout: medians over rounds, and the gateway's figures as "added" over direct and over the pass-through.
 * The soak (`--soak`) has its own result, growth fit and summary at the end of the file.
 */
import type { RssSample } from './proc.js';
import type { RoutingBenchResult } from './routing.js';
import type { RateLoadResult } from './rate-load.js';
import { WARMUP_STREAMS, type StreamLoadResult } from './stream-load.js';
import { TARGETS, type TargetName } from './targets.js';
import type { WrkResult } from './wrk.js';

export type PerTarget<T> = Record<TargetName, T[]>;

export interface SweepStep {
  offeredRps: number;
  direct: RateLoadResult[];
  passthrough: RateLoadResult[];
  gateway: RateLoadResult[];
  addedP99Us: number;
  pass: boolean;
  /** The bare pass-through held to the same test: the rig's own limit. */
  passthroughAddedP99Us: number;
  passthroughPass: boolean;
}

export interface BenchResults {
  meta: {
    date: string;
    quick: boolean;
    node: string;
    wrk: string | undefined;
    placement: string;
    rounds: number;
    wrkDurationS: number;
    loadAvgAtStart: number[];
    body: string;
  };
  wrk?: {
    c1: PerTarget<WrkResult>;
    sat: PerTarget<WrkResult>;
    satConnections: number;
    satCpuMs: PerTarget<number>;
  };
  sweep?: { steps: SweepStep[]; bestRps: number | undefined };
  streams: { streams: number; runs: PerTarget<StreamLoadResult> }[];
  memory: { idleMb?: number; wrkLoadMb?: number; streamLoadMb?: number; afterMb?: number; hwmMb?: number };
  /** The pass-through under the same loads: what any Node proxy holds for them. */
  passthroughMemory?: { idleMb?: number; wrkLoadMb?: number; streamLoadMb?: number };
  gatewayLogLines?: number;
  /** Requests sent to the gateway in the whole run (wrk counts completed ones), to compare with the log. */
  gatewayRequests: number;
  routing?: RoutingBenchResult;
  skipped: string[];
}

export function median(values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

export function emptyPerTarget<T>(): PerTarget<T> {
  return { direct: [], passthrough: [], gateway: [] };
}

const LABEL: Record<TargetName, string> = {
  direct: 'direct (simulator)',
  passthrough: 'pass-through',
  gateway: 'gateway',
};

const fmt = (n: number, digits = 0): string => (Number.isFinite(n) ? n.toFixed(digits) : 'n/a');
const us = (n: number): string =>
  Number.isFinite(n)
    ? n >= 1_000
      ? `${(n / 1000).toFixed(n >= 10_000 ? 1 : 2)} ms`
      : `${n.toFixed(0)} µs`
    : 'n/a';
const signedUs = (n: number): string =>
  Number.isFinite(n) ? `${n >= 0 ? '+' : '−'}${us(Math.abs(n))}` : 'n/a';
const ms = (n: number, digits = 2): string => (Number.isFinite(n) ? `${n.toFixed(digits)} ms` : 'n/a');
const signedMs = (n: number): string =>
  Number.isFinite(n) ? `${n >= 0 ? '+' : '−'}${ms(Math.abs(n))}` : 'n/a';
const mb = (n: number | undefined): string =>
  n !== undefined && Number.isFinite(n) ? `${n.toFixed(0)} MB` : 'n/a';

function table(head: string[], rows: string[][]): string[] {
  return [
    `| ${head.join(' | ')} |`,
    `|${head.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ];
}

function wrkSection(r: BenchResults, out: string[]): void {
  const w = r.wrk;
  if (!w) return;
  const m = (t: TargetName, pick: (x: WrkResult) => number, which: 'c1' | 'sat'): number =>
    median(w[which][t].map(pick));
  const cpuPer1k = (t: TargetName): number => {
    const per = w.satCpuMs[t].map((cpu, i) => (cpu / (w.sat[t][i]?.requests ?? Number.NaN)) * 1000);
    return median(per);
  };
  const bad = (t: TargetName): number =>
    [...w.c1[t], ...w.sat[t]].reduce((sum, x) => sum + x.errors + x.non2xx, 0);
  out.push(`### Non-streaming (wrk --latency, POST ${r.meta.body.length}-byte JSON, fast simulator)`, '');
  out.push(
    ...table(
      [
        'target',
        'c=1 p50',
        'c=1 p99',
        `c=${w.satConnections} req/s`,
        `c=${w.satConnections} p99`,
        'CPU ms / 1k req',
        'errors + non-2xx',
      ],
      TARGETS.map((t) => [
        LABEL[t],
        us(m(t, (x) => x.p50Us, 'c1')),
        us(m(t, (x) => x.p99Us, 'c1')),
        fmt(m(t, (x) => x.rps, 'sat')),
        us(m(t, (x) => x.p99Us, 'sat')),
        t === 'direct' ? '—' : fmt(cpuPer1k(t), 1),
        String(bad(t)),
      ]),
    ),
    '',
  );
  const g = (pick: (x: WrkResult) => number, t: TargetName): number =>
    m('gateway', pick, 'c1') - m(t, pick, 'c1');
  const satGw = m('gateway', (x) => x.rps, 'sat');
  out.push(
    ...table(
      ['gateway figure', 'value'],
      [
        [
          'added latency c=1, p50 / p99, vs direct',
          `${signedUs(g((x) => x.p50Us, 'direct'))} / ${signedUs(g((x) => x.p99Us, 'direct'))}`,
        ],
        [
          'added latency c=1, p50 / p99, vs pass-through',
          `${signedUs(g((x) => x.p50Us, 'passthrough'))} / ${signedUs(g((x) => x.p99Us, 'passthrough'))}`,
        ],
        [
          `saturation c=${w.satConnections}, gateway / pass-through`,
          fmt(satGw / m('passthrough', (x) => x.rps, 'sat'), 2),
        ],
        ['highest offered rate with added p99 < 1 ms and 0 errors', bestRate(r, satGw)],
      ],
    ),
    '',
  );
}

function bestRate(r: BenchResults, satRps: number): string {
  const sweep = r.sweep;
  if (!sweep) return 'n/a';
  if (sweep.bestRps === undefined)
    return `below ${fmt(sweep.steps[0]?.offeredRps ?? Number.NaN)} req/s (the lowest step tried)`;
  const share = Number.isFinite(satRps) ? ` (${fmt((sweep.bestRps / satRps) * 100)}% of saturation)` : '';
  const last = sweep.steps.at(-1);
  return `${fmt(sweep.bestRps)} req/s${share}${last?.pass ? ', the highest step tried' : ''}`;
}

function memorySection(r: BenchResults, out: string[]): void {
  const mem = r.memory;
  const pt = r.passthroughMemory;
  out.push(
    ...table(
      ['RSS', 'idle', 'under wrk load', 'under most streams', 'after', 'peak (VmHWM)'],
      [
        ['gateway', mb(mem.idleMb), mb(mem.wrkLoadMb), mb(mem.streamLoadMb), mb(mem.afterMb), mb(mem.hwmMb)],
        ['pass-through', mb(pt?.idleMb), mb(pt?.wrkLoadMb), mb(pt?.streamLoadMb), '', ''],
      ],
    ),
    '',
  );
}

function sweepSection(r: BenchResults, out: string[]): void {
  if (!r.sweep) return;
  out.push(
    '### Offered-rate sweep (open-loop raw HTTP/1.1 client, uncounted warm-up per run, latency from due time)',
    '',
  );
  out.push(
    ...table(
      [
        'offered req/s',
        'direct p99',
        'gateway p99',
        'added p99',
        'gateway achieved req/s',
        'errors + non-2xx',
        '< 1 ms',
        'pass-through added p99 (< 1 ms)',
        'client sent late, p99 (direct / gateway)',
      ],
      r.sweep.steps.map((s) => [
        fmt(s.offeredRps),
        us(median(s.direct.map((x) => x.p99Us))),
        us(median(s.gateway.map((x) => x.p99Us))),
        signedUs(s.addedP99Us),
        fmt(median(s.gateway.map((x) => x.achievedRps))),
        String([...s.direct, ...s.gateway].reduce((sum, x) => sum + x.errors + x.non2xx, 0)),
        s.pass ? 'yes' : 'no',
        `${signedUs(s.passthroughAddedP99Us)} (${s.passthroughPass ? 'yes' : 'no'})`,
        `${us(median(s.direct.map((x) => x.lateP99Us)))} / ${us(median(s.gateway.map((x) => x.lateP99Us)))}`,
      ]),
    ),
    '',
    `highest offered rate with added p99 < 1 ms and 0 errors: ${bestRate(r, Number.NaN)}`,
    '',
    `the bare pass-through held to the same test: ${passthroughVerdict(r.sweep.steps)}`,
    '',
    // Latency counts from the due time (no coordinated omission), so the client's own lateness is in every
    // target's p99: when it is near 1 ms, the step's verdict says more about the client's core than the target.
    'client sent late: how far behind its schedule the load client itself sent (timers, its core shared with the simulator): a floor under every p99 in that row',
    '',
  );
}

/** Where the pass-through first fails the sweep's test, among the steps the gateway's run went through. */
function passthroughVerdict(steps: readonly SweepStep[]): string {
  const failed = steps.find((s) => !s.passthroughPass);
  if (failed === undefined) return 'passes every step tried';
  return `fails from ${fmt(failed.offeredRps)} req/s${failed === steps[0] ? ' (the lowest step tried)' : ''}`;
}

function streamSection(r: BenchResults, out: string[]): void {
  if (r.streams.length === 0) return;
  out.push(`### Streaming (64 content chunks 20 ms apart; all streams opened at once)`, '');
  const rows: string[][] = [];
  for (const s of r.streams) {
    const m = (t: TargetName, pick: (x: StreamLoadResult) => number): number => median(s.runs[t].map(pick));
    for (const t of TARGETS) {
      const added =
        t === 'direct' ? '' : ` (${signedMs(m(t, (x) => x.ttftP99Ms) - m('direct', (x) => x.ttftP99Ms))})`;
      rows.push([
        String(s.streams),
        LABEL[t],
        ms(m(t, (x) => x.ttftP50Ms)),
        ms(m(t, (x) => x.ttftP99Ms)) + added,
        ms(m(t, (x) => x.gapP99Ms)) +
          (t === 'direct' ? '' : ` (${signedMs(m(t, (x) => x.gapP99Ms) - m('direct', (x) => x.gapP99Ms))})`),
        String(s.runs[t].reduce((sum, x) => sum + x.chunksLost, 0)),
        String(s.runs[t].reduce((sum, x) => sum + x.errors + x.non2xx, 0)),
      ]);
    }
  }
  out.push(
    ...table(
      [
        'streams',
        'target',
        'TTFT p50',
        'TTFT p99 (added)',
        'chunk gap p99 (added)',
        'chunks lost',
        'errors + non-2xx',
      ],
      rows,
    ),
    '',
  );
}

function routingSection(r: BenchResults, out: string[]): void {
  const rb = r.routing;
  if (!rb) return;
  out.push('### Routing micro-benchmarks (in-process, per call, median)', '');
  out.push(
    ...table(
      ['case', 'p50'],
      [
        ['one decision over 10 candidates (slowest strategy)', us(rb.decisionNsP50 / 1000)],
        ['one decision, hybrid', us(rb.perStrategy.hybrid.p50Ns / 1000)],
        [
          `token estimate, ~${rb.promptTokens}-token prompt (approximate: what the gateway uses)`,
          us(rb.tokenEstimate2kApproxNs / 1000),
        ],
        [
          `token estimate, ~${rb.promptTokens}-token prompt (exact BPE, for comparison)`,
          us(rb.tokenEstimate2kExactNs / 1000),
        ],
      ],
    ),
    '',
  );
}

export function markdown(r: BenchResults): string {
  const out: string[] = [
    `## llm-edge-router bench${r.meta.quick ? ' (--quick)' : ''}: ${r.meta.date}`,
    '',
    `- node ${r.meta.node}, ${r.meta.wrk ?? 'wrk: not installed'}; load average at start ${r.meta.loadAvgAtStart.map((x) => x.toFixed(2)).join(' ')}`,
    `- placement: ${r.meta.placement}`,
    `- ${r.meta.rounds} rounds after a dropped warm-up, targets alternating; medians shown; wrk runs of ${r.meta.wrkDurationS} s`,
    '- a shared machine makes every figure noisy: compare runs of the same machine, never absolute numbers',
    ...r.skipped.map((s) => `- SKIPPED: ${s}`),
    '',
  ];
  wrkSection(r, out);
  memorySection(r, out);
  sweepSection(r, out);
  streamSection(r, out);
  routingSection(r, out);
  if (r.gatewayLogLines !== undefined) {
    out.push(
      `gateway log at info: ${r.gatewayLogLines} lines for ~${r.gatewayRequests} requests (one line per request expected)`,
      '',
    );
  }
  return out.join('\n');
}

export interface SoakSegment {
  durationS: number;
  wrk: WrkResult;
  streams: StreamLoadResult;
}

export interface SoakResults {
  meta: {
    date: string;
    node: string;
    wrk: string | undefined;
    placement: string;
    minutes: number;
    segmentS: number;
    wrkConnections: number;
    /** Concurrent streams in each wave; a segment runs several waves, one after another. */
    streams: number;
    sampleEveryS: number;
    warmupS: number;
    limitMibPerMin: number;
    loadAvgAtStart: number[];
  };
  segments: SoakSegment[];
  /** Gateway VmRSS through the soak, seconds from the start of the load. */
  samples: RssSample[];
  rss: {
    idleMb?: number;
    firstMb?: number;
    /** The first sample at or after the warm-up: where the fit starts. */
    warmMb?: number;
    lastMb?: number;
    maxMb?: number;
    /** 2 s after the load stopped. */
    afterMb?: number;
    hwmMb?: number;
  };
  /** Least-squares slope of RSS over the samples from `warmupS` on; undefined with fewer than 3 of them. */
  slopeMibPerMin?: number;
  /** The slope's standard error: how far the RSS sawtooth alone can move it. */
  slopeStdErrMibPerMin?: number;
  fitSamples: number;
  totals: {
    /** Completed requests, as wrk counts them. */
    requests: number;
    /** Counted streams (each stream-load child also sends 3 short uncounted ones first). */
    streams: number;
    wrkErrors: number;
    wrkNon2xx: number;
    streamErrors: number;
    streamNon2xx: number;
    chunksLost: number;
  };
  gatewayLogLines?: number;
  pass: boolean;
}

/**
 * Least-squares slope of RSS (MiB) against time (minutes), with its standard error: RSS saws up and down by
 * several MiB between collections, so a slope near the limit means little without it. NaN below 3 samples.
 */
export function rssSlope(samples: readonly RssSample[]): { perMin: number; stdErr: number } {
  const n = samples.length;
  const xs = samples.map((p) => p.tS / 60);
  const mx = xs.reduce((a, x) => a + x, 0) / n;
  const my = samples.reduce((a, p) => a + p.rssMb, 0) / n;
  let sxy = 0;
  let sxx = 0;
  samples.forEach((p, i) => {
    sxy += (xs[i]! - mx) * (p.rssMb - my);
    sxx += (xs[i]! - mx) ** 2;
  });
  if (n < 3 || sxx === 0) return { perMin: Number.NaN, stdErr: Number.NaN };
  const perMin = sxy / sxx;
  const residuals = samples.reduce((a, p, i) => a + (p.rssMb - my - perMin * (xs[i]! - mx)) ** 2, 0);
  return { perMin, stdErr: Math.sqrt(residuals / (n - 2) / sxx) };
}

/**
 * Derives the soak's figures from what it recorded. The fit skips the warm-up: under load the heap, the
 * connection pools and V8's code grow to their steady size in the first minute, and that climb is not a leak.
 */
export function soakResults(
  meta: SoakResults['meta'],
  segments: SoakSegment[],
  samples: RssSample[],
  idle: { rssMb: number } | undefined,
  after: { rssMb: number; hwmMb: number } | undefined,
): SoakResults {
  const fit = samples.filter((s) => s.tS >= meta.warmupS);
  const slope = rssSlope(fit);
  const sum = (pick: (s: SoakSegment) => number): number => segments.reduce((t, s) => t + pick(s), 0);
  const rssMbs = samples.map((s) => s.rssMb);
  return {
    meta,
    segments,
    samples,
    rss: {
      idleMb: idle?.rssMb,
      firstMb: samples[0]?.rssMb,
      warmMb: fit[0]?.rssMb,
      lastMb: samples.at(-1)?.rssMb,
      maxMb: rssMbs.length > 0 ? Math.max(...rssMbs) : undefined,
      afterMb: after?.rssMb,
      hwmMb: after?.hwmMb,
    },
    slopeMibPerMin: Number.isFinite(slope.perMin) ? slope.perMin : undefined,
    slopeStdErrMibPerMin: Number.isFinite(slope.stdErr) ? slope.stdErr : undefined,
    fitSamples: fit.length,
    totals: {
      requests: sum((s) => s.wrk.requests),
      streams: sum((s) => s.streams.streams * s.streams.waves),
      wrkErrors: sum((s) => s.wrk.errors),
      wrkNon2xx: sum((s) => s.wrk.non2xx),
      streamErrors: sum((s) => s.streams.errors),
      streamNon2xx: sum((s) => s.streams.non2xx),
      chunksLost: sum((s) => s.streams.chunksLost),
    },
    pass: Number.isFinite(slope.perMin) && slope.perMin < meta.limitMibPerMin,
  };
}

const mib = (n: number | undefined): string =>
  n !== undefined && Number.isFinite(n) ? `${n.toFixed(1)} MiB` : 'n/a';

export function soakMarkdown(r: SoakResults): string {
  const m = r.meta;
  const t = r.totals;
  const fit = r.samples.filter((s) => s.tS >= m.warmupS);
  const span = fit.length > 0 ? `${fmt(fit[0]!.tS)}–${fmt(fit.at(-1)!.tS)} s` : 'none';
  const slope = r.slopeMibPerMin;
  const verdict =
    slope === undefined
      ? 'n/a (fewer than 3 samples after the warm-up: run longer)'
      : `${slope >= 0 ? '+' : '−'}${Math.abs(slope).toFixed(2)} ± ${fmt(r.slopeStdErrMibPerMin ?? Number.NaN, 2)} MiB/min (± standard error) over ${r.fitSamples} samples (${span}): ${r.pass ? 'PASS' : 'FAIL'} (limit < ${m.limitMibPerMin} MiB/min)`;
  // One reading per full minute (the sample nearest to it) shows the shape the slope summarises.
  const byMinute: string[] = [];
  for (let min = 0; min <= Math.floor((r.samples.at(-1)?.tS ?? 0) / 60 + 0.05); min++) {
    const near = r.samples.reduce<RssSample | undefined>(
      (best, s) => (!best || Math.abs(s.tS - min * 60) < Math.abs(best.tS - min * 60) ? s : best),
      undefined,
    );
    if (near) byMinute.push(`${min} min ${near.rssMb.toFixed(1)}`);
  }
  const clean = t.wrkErrors + t.wrkNon2xx + t.streamErrors + t.streamNon2xx + t.chunksLost === 0;
  return [
    `## llm-edge-router memory soak: ${m.date}`,
    '',
    `- node ${m.node}, ${m.wrk ?? 'wrk: not installed'}; load average at start ${m.loadAvgAtStart.map((x) => x.toFixed(2)).join(' ')}`,
    `- placement: ${m.placement}`,
    `- ${m.minutes} min of ${m.segmentS} s segments on the gateway: wrk -c${m.wrkConnections} (JSON) alongside waves of ${m.streams} streams (64 chunks 20 ms apart); VmRSS every ${m.sampleEveryS} s`,
    `- the first ${m.warmupS} s are warm-up (heap, pools and compiled code grow to their steady size) and left out of the fit`,
    '',
    ...table(
      [
        'gateway RSS',
        'idle',
        'load start',
        `at ${m.warmupS} s`,
        'last',
        'max',
        'after (2 s idle)',
        'peak (VmHWM)',
      ],
      [
        [
          'VmRSS',
          mib(r.rss.idleMb),
          mib(r.rss.firstMb),
          mib(r.rss.warmMb),
          mib(r.rss.lastMb),
          mib(r.rss.maxMb),
          mib(r.rss.afterMb),
          mib(r.rss.hwmMb),
        ],
      ],
    ),
    '',
    `RSS growth after warm-up (least squares): ${verdict}`,
    '',
    `RSS by minute (MiB): ${byMinute.join(', ')}`,
    '',
    `load: ${t.requests} requests (wrk, completed) and ${t.streams} streams; wrk errors ${t.wrkErrors}, non-2xx ${t.wrkNon2xx}; stream errors ${t.streamErrors}, non-2xx ${t.streamNon2xx}, chunks lost ${t.chunksLost}${clean ? '' : ' (NOT clean: the RSS figures describe a gateway that was failing requests)'}`,
    '',
    ...(r.gatewayLogLines === undefined
      ? []
      : [
          `gateway log at info: ${r.gatewayLogLines} lines for ~${t.requests + t.streams + WARMUP_STREAMS * r.segments.length} requests (one line per request expected)`,
          '',
        ]),
  ].join('\n');
}
