/**
 * `npm run bench [-- --quick] [-- --rounds N] [-- --profile] [-- --soak [--soak-minutes N]]`: the gateway
 * against the simulator (direct) and a minimal pass-through, in one run with one placement, rounds
 * alternating between targets after a dropped warm-up. Markdown on stdout, everything measured as JSON in
 * bench/results/. `--profile` runs only a CPU profile; `--soak` only a memory soak (default 5 min: the
 * gateway under mixed JSON and streaming load, VmRSS every 5 s, growth after a 1-minute warm-up must stay
 * under 1 MiB/min). See bench/README.md.
 */
import { createReadStream, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { detectPlacement, pinSelf, runClient, stopAll } from './children.js';
import { profileGateway } from './cpu-profile.js';
import { cpuDuring, memory, recordRss, sampleRss, type RssSample } from './proc.js';
import type { RateLoadArgs, RateLoadResult } from './rate-load.js';
import {
  emptyPerTarget,
  markdown,
  median,
  soakMarkdown,
  soakResults,
  type BenchResults,
  type SoakResults,
  type SoakSegment,
  type SweepStep,
} from './report.js';
import { runRoutingBench } from './routing.js';
import { WARMUP_STREAMS, type StreamLoadArgs, type StreamLoadResult } from './stream-load.js';
import { STREAM_CHUNKS, STREAM_GAP_MS, TARGETS, startRig, type Rig, type TargetName } from './targets.js';
import { WRK_MISSING, runWrk, wrkVersion, writePostScript, type WrkResult } from './wrk.js';

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    profile: { type: 'boolean', default: false },
    soak: { type: 'boolean', default: false },
    'soak-minutes': { type: 'string' },
  },
});
const quick = flags.quick === true;
const plan = {
  rounds: Math.max(quick ? 2 : 3, Number(flags.rounds ?? 0) || 0),
  warmS: quick ? 1 : 3,
  wrkS: quick ? 2 : 5,
  satConnections: 64,
  /** Three in a full run, so a step's verdict is a real median, not one stalled run of two. */
  sweepRounds: quick ? 1 : 3,
  sweepStepMs: quick ? 1_500 : 3_000,
  /** Load before each step's measured window, in the same client process (see rate-load.ts). */
  sweepWarmupMs: quick ? 500 : 1_000,
  /** Offered rates as fractions of the gateway's measured saturation throughput. */
  sweepFractions: quick ? [0.1, 0.25, 0.45, 0.7] : [0.05, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9],
  /**
   * Short streams each target serves before the streaming rounds, uncounted: the stream path's code is
   * cold after the JSON phases (1-stream TTFT 2.0-3.5 ms through either proxy when cold, 1.3-1.6 warm;
   * 100 at once: gateway 33-50 ms cold, 11-14 warm), and a gateway in service runs it warm.
   */
  streamWarmup: { streams: 50, waves: quick ? 20 : 40 },
  /** Concurrent streams, and streams each opens in turn (more samples at concurrency 1). */
  streams: quick
    ? [
        { n: 1, waves: 3 },
        { n: 100, waves: 1 },
      ]
    : [
        { n: 1, waves: 8 },
        { n: 100, waves: 1 },
        { n: 1_000, waves: 1 },
      ],
};
/** `--soak-minutes N` alone implies `--soak`: it never starts the full bench by accident. */
const soak = flags.soak === true || flags['soak-minutes'] !== undefined;
const soakPlan = {
  minutes: Number(flags['soak-minutes'] ?? 5),
  segmentS: 20,
  wrkConnections: 32,
  /** Concurrent streams per wave; a segment runs as many waves as fill about half of it (see soakPhase). */
  streams: 100,
  sampleEveryMs: 5_000,
  /** Under load the heap grows to its steady size in the first minute: the growth fit starts after it. */
  warmupS: 60,
  limitMibPerMin: 1,
};
/** The fit needs a few samples after the warm-up. */
const SOAK_MIN_MINUTES = 1.5;
const ADDED_P99_LIMIT_US = 1_000;
/** The offered rate the goal names: added p99 under the limit up to at least this. */
const GOAL_RPS = 5_000;
const here = (file: string): string => fileURLToPath(new URL(file, import.meta.url));
const RESULTS_DIR = here('../../bench/results');

const message = (content: string): { role: string; content: string } => ({ role: 'user', content });
const CHAT_BODY = JSON.stringify({
  model: 'bench-chat',
  messages: [
    { role: 'system', content: 'You are a concise assistant.' },
    message('Name three uses of a keep-alive pool.'),
  ],
  max_tokens: 64,
});
const STREAM_BODY = JSON.stringify({
  model: 'bench-stream',
  stream: true,
  messages: [message('Tell me a story in exactly sixty-four tokens.')],
  max_tokens: 256,
});

const SHORT_STREAM_TOKENS = 2;
const SHORT_STREAM_BODY = JSON.stringify({
  ...(JSON.parse(STREAM_BODY) as object),
  max_tokens: SHORT_STREAM_TOKENS,
});
/** What one stream-load child sends: its uncounted short streams, then `streams` × `waves`. */
const streamsSent = (a: StreamLoadArgs): number => WARMUP_STREAMS + a.streams * (1 + (a.waves ?? 1));

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const t0 = Date.now();
const log = (line: string): void =>
  void process.stderr.write(`bench +${((Date.now() - t0) / 1000).toFixed(0)}s: ${line}\n`);
/** Round r starts at target r mod 3, so every target takes every position once in three rounds. */
const rotated = (r: number): TargetName[] => TARGETS.map((_, i) => TARGETS[(i + r) % TARGETS.length]!);

async function childJson<A, R>(script: string, args: A, timeoutMs: number): Promise<R> {
  const r = await runClient(1, process.execPath, [here(script), JSON.stringify(args)], timeoutMs);
  if (r.code !== 0) throw new Error(`${script} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as R;
}

/** The highest RSS seen under a load, for the gateway and (as its baseline) the pass-through. */
function keepPeak(
  out: BenchResults,
  t: TargetName,
  key: 'wrkLoadMb' | 'streamLoadMb',
  peak: number | undefined,
): void {
  if (peak === undefined || t === 'direct') return;
  const mem = t === 'gateway' ? out.memory : (out.passthroughMemory ??= {});
  mem[key] = Math.max(mem[key] ?? 0, peak);
}

async function wrkPhase(rig: Rig, dir: string, out: BenchResults): Promise<void> {
  const script = writePostScript(dir, CHAT_BODY);
  const c1 = emptyPerTarget<WrkResult>();
  const sat = emptyPerTarget<WrkResult>();
  const satCpuMs = emptyPerTarget<number>();
  log(`warm-up: wrk c=${plan.satConnections} ${plan.warmS} s per target (dropped)`);
  for (const t of TARGETS) {
    const warm = await runWrk(1, rig.targets[t].chatUrl, script, plan.satConnections, plan.warmS);
    if (t === 'gateway') out.gatewayRequests += warm.requests;
  }
  for (let r = 0; r < plan.rounds; r++) {
    for (const t of rotated(r)) {
      const { chatUrl, pid } = rig.targets[t];
      log(`round ${r + 1}/${plan.rounds} ${t}: wrk c=1, c=${plan.satConnections}`);
      c1[t].push(await runWrk(1, chatUrl, script, 1, plan.wrkS));
      const rss = t === 'direct' ? undefined : sampleRss(pid);
      const run = await cpuDuring(pid, () => runWrk(1, chatUrl, script, plan.satConnections, plan.wrkS));
      keepPeak(out, t, 'wrkLoadMb', rss?.stop());
      sat[t].push(run.result);
      if (t === 'gateway') out.gatewayRequests += run.result.requests + (c1[t].at(-1)?.requests ?? 0);
      satCpuMs[t].push(run.cpuMs ?? Number.NaN);
    }
  }
  out.wrk = { c1, sat, satConnections: plan.satConnections, satCpuMs };
}

/** One target's sweep step against direct: added p99, and whether it is under the limit, clean and kept up. */
function stepVerdict(
  runs: readonly RateLoadResult[],
  direct: readonly RateLoadResult[],
  rate: number,
): { addedP99Us: number; pass: boolean } {
  const addedP99Us = median(runs.map((x) => x.p99Us)) - median(direct.map((x) => x.p99Us));
  const clean = [...direct, ...runs].every((x) => x.errors === 0 && x.non2xx === 0);
  const keptUp = median(runs.map((x) => x.achievedRps)) >= 0.9 * rate;
  return { addedP99Us, pass: addedP99Us < ADDED_P99_LIMIT_US && clean && keptUp };
}

async function sweepPhase(rig: Rig, out: BenchResults): Promise<void> {
  const satRps = out.wrk ? median(out.wrk.sat.gateway.map((x) => x.rps)) : Number.NaN;
  // The goal's own rate is a step too, when the gateway can sustain it, so the verdict does not fall to
  // the step below it.
  const rates = Number.isFinite(satRps)
    ? [
        ...plan.sweepFractions.map((f) => Math.max(50, Math.round((f * satRps) / 50) * 50)),
        ...(GOAL_RPS < satRps ? [GOAL_RPS] : []),
      ].sort((a, b) => a - b)
    : [250, 500, 1_000, 2_000, 4_000, GOAL_RPS];
  const steps: SweepStep[] = [];
  let bestRps: number | undefined;
  for (const t of TARGETS) {
    log(`sweep warm-up ${t} (dropped)`);
    const args: RateLoadArgs = {
      url: rig.targets[t].chatUrl,
      body: CHAT_BODY,
      rate: rates[0]!,
      durationMs: 1_000,
      warmupMs: plan.sweepWarmupMs,
      connections: 256,
    };
    const warm = await childJson<RateLoadArgs, RateLoadResult>('./rate-load.js', args, 20_000);
    if (t === 'gateway') out.gatewayRequests += warm.sent;
  }
  for (const [i, rate] of [...new Set(rates)].entries()) {
    const runs = emptyPerTarget<RateLoadResult>();
    for (let r = 0; r < plan.sweepRounds; r++) {
      for (const t of rotated(i + r)) {
        log(`sweep ${rate} req/s ${t}`);
        const args: RateLoadArgs = {
          url: rig.targets[t].chatUrl,
          body: CHAT_BODY,
          rate,
          durationMs: plan.sweepStepMs,
          connections: 256,
          warmupMs: plan.sweepWarmupMs,
        };
        const res = await childJson<RateLoadArgs, RateLoadResult>(
          './rate-load.js',
          args,
          plan.sweepWarmupMs + plan.sweepStepMs + 20_000,
        );
        runs[t].push(res);
        if (t === 'gateway') out.gatewayRequests += res.sent;
      }
    }
    const { addedP99Us, pass } = stepVerdict(runs.gateway, runs.direct, rate);
    // The same test of the bare pass-through: when it fails too, the rig (the client's own p99) is the limit.
    const pt = stepVerdict(runs.passthrough, runs.direct, rate);
    steps.push({
      offeredRps: rate,
      direct: runs.direct,
      passthrough: runs.passthrough,
      gateway: runs.gateway,
      addedP99Us,
      pass,
      passthroughAddedP99Us: pt.addedP99Us,
      passthroughPass: pt.pass,
    });
    if (!pass) break;
    bestRps = rate;
  }
  out.sweep = { steps, bestRps };
}

async function streamPhase(rig: Rig, out: BenchResults): Promise<void> {
  const { streams, waves: warmWaves } = plan.streamWarmup;
  log(`stream warm-up: ${streams} × ${warmWaves} short streams per target (dropped)`);
  for (const t of TARGETS) {
    const args: StreamLoadArgs = {
      url: rig.targets[t].streamUrl,
      body: SHORT_STREAM_BODY,
      streams,
      waves: warmWaves,
      expectedChunks: SHORT_STREAM_TOKENS,
      timeoutMs: 60_000,
    };
    await childJson<StreamLoadArgs, StreamLoadResult>('./stream-load.js', args, 90_000);
    if (t === 'gateway') out.gatewayRequests += streamsSent(args);
  }
  for (const { n, waves } of plan.streams) {
    const runs = emptyPerTarget<StreamLoadResult>();
    for (let r = 0; r < plan.rounds; r++) {
      for (const t of rotated(r)) {
        log(`streams ${n}×${waves} round ${r + 1}/${plan.rounds} ${t}`);
        const rss = t === 'direct' ? undefined : sampleRss(rig.targets[t].pid);
        const args: StreamLoadArgs = {
          url: rig.targets[t].streamUrl,
          body: STREAM_BODY,
          streams: n,
          waves,
          expectedChunks: STREAM_CHUNKS,
          timeoutMs: 60_000,
        };
        runs[t].push(await childJson<StreamLoadArgs, StreamLoadResult>('./stream-load.js', args, 90_000));
        if (t === 'gateway') out.gatewayRequests += streamsSent(args);
        keepPeak(out, t, 'streamLoadMb', rss?.stop());
      }
    }
    out.streams.push({ streams: n, runs });
  }
}

/**
 * The soak's load: segments of wrk on the gateway's JSON path, each alongside one stream-load child, so both
 * paths run all along while `recordRss` reads the gateway's VmRSS. The streams fill about half a segment
 * (a stream lasts STREAM_CHUNKS × STREAM_GAP_MS), so a slowed gateway does not push them far past wrk's end.
 * Bounded: no segment starts after the planned minutes, and every child has a kill timeout of its segment
 * plus at most 40 s.
 */
async function soakPhase(rig: Rig, dir: string): Promise<{ segments: SoakSegment[]; samples: RssSample[] }> {
  const script = writePostScript(dir, CHAT_BODY);
  const { chatUrl, streamUrl } = rig.targets.gateway;
  const streamS = (STREAM_CHUNKS * STREAM_GAP_MS) / 1000;
  const durationMs = soakPlan.minutes * 60_000;
  const segments: SoakSegment[] = [];
  let samples: RssSample[] = [];
  const rss = recordRss(rig.gatewayPid, soakPlan.sampleEveryMs);
  const start = Date.now();
  try {
    for (let left = durationMs; left > 0; left = durationMs - (Date.now() - start)) {
      const segS = Math.min(soakPlan.segmentS, Math.ceil(left / 1000));
      const waves = Math.max(1, Math.floor(segS / 2 / streamS));
      const args: StreamLoadArgs = {
        url: streamUrl,
        body: STREAM_BODY,
        streams: soakPlan.streams,
        waves,
        expectedChunks: STREAM_CHUNKS,
        timeoutMs: (segS + 30) * 1_000,
      };
      const at = ((Date.now() - start) / 60_000).toFixed(1);
      const now = memory(rig.gatewayPid)?.rssMb.toFixed(1) ?? 'n/a';
      const load = `wrk c=${soakPlan.wrkConnections} ${segS} s + ${waves}×${soakPlan.streams} streams`;
      log(`soak ${at}/${soakPlan.minutes} min, RSS ${now} MiB: ${load}`);
      const [wrk, streams] = await Promise.all([
        runWrk(1, chatUrl, script, soakPlan.wrkConnections, segS),
        childJson<StreamLoadArgs, StreamLoadResult>('./stream-load.js', args, args.timeoutMs + 10_000),
      ]);
      segments.push({ durationS: segS, wrk, streams });
    }
  } finally {
    samples = rss.stop();
  }
  return { segments, samples };
}

/** `--soak`: only the soak, on the usual rig; markdown on stdout, JSON in bench/results/soak-DATE.json. */
async function soakRun(dir: string): Promise<void> {
  if (!(soakPlan.minutes >= SOAK_MIN_MINUTES))
    throw new Error(`--soak-minutes must be at least ${SOAK_MIN_MINUTES}: the first minute is warm-up`);
  const wrk = wrkVersion();
  if (!wrk) throw new Error(WRK_MISSING);
  const meta: SoakResults['meta'] = {
    date: new Date().toISOString(),
    node: process.version,
    wrk,
    placement: detectPlacement().description,
    minutes: soakPlan.minutes,
    segmentS: soakPlan.segmentS,
    wrkConnections: soakPlan.wrkConnections,
    streams: soakPlan.streams,
    sampleEveryS: soakPlan.sampleEveryMs / 1000,
    warmupS: soakPlan.warmupS,
    limitMibPerMin: soakPlan.limitMibPerMin,
    loadAvgAtStart: loadavg(),
  };
  let result: SoakResults;
  let rig: Rig | undefined;
  try {
    rig = await startRig(dir);
    await sleep(1_000);
    const idle = memory(rig.gatewayPid);
    const { segments, samples } = await soakPhase(rig, dir);
    await sleep(2_000);
    result = soakResults(meta, segments, samples, idle, memory(rig.gatewayPid));
    result.gatewayLogLines = await countLines(rig.gatewayLogPath);
  } finally {
    await rig?.stop();
  }
  mkdirSync(RESULTS_DIR, { recursive: true });
  const file = join(RESULTS_DIR, `soak-${meta.date.replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(`\n${soakMarkdown(result)}\nJSON: ${file}\n`);
}

async function countLines(path: string): Promise<number> {
  let lines = 0;
  for await (const chunk of createReadStream(path)) {
    const buf = chunk as Buffer;
    for (let at = buf.indexOf(10); at >= 0; at = buf.indexOf(10, at + 1)) lines++;
  }
  return lines;
}

async function main(): Promise<void> {
  pinSelf(1);
  const dir = mkdtempSync(join(tmpdir(), 'llm-bench-'));
  const onSignal = (): void =>
    void stopAll().finally(() => (rmSync(dir, { recursive: true, force: true }), process.exit(130)));
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  if (flags.profile) {
    try {
      process.stdout.write(await profileGateway(dir, quick ? 5 : 15, RESULTS_DIR));
    } finally {
      await stopAll();
      rmSync(dir, { recursive: true, force: true });
    }
    return;
  }
  if (soak) {
    try {
      await soakRun(dir);
    } finally {
      await stopAll();
      rmSync(dir, { recursive: true, force: true });
    }
    return;
  }
  const wrk = wrkVersion();
  if (!wrk) process.stderr.write(`\n${WRK_MISSING}\n\n`);
  const out: BenchResults = {
    meta: {
      date: new Date().toISOString(),
      quick,
      node: process.version,
      wrk,
      placement: detectPlacement().description,
      rounds: plan.rounds,
      wrkDurationS: plan.wrkS,
      loadAvgAtStart: loadavg(),
      body: CHAT_BODY,
    },
    streams: [],
    memory: {},
    gatewayRequests: 0,
    skipped: wrk
      ? []
      : ['wrk figures (latency, saturation, CPU per request): wrk is not installed (apt-get install -y wrk)'],
  };
  let rig: Rig | undefined;
  try {
    rig = await startRig(dir);
    await sleep(1_000);
    out.memory.idleMb = memory(rig.gatewayPid)?.rssMb;
    (out.passthroughMemory ??= {}).idleMb = memory(rig.targets.passthrough.pid)?.rssMb;
    if (wrk) await wrkPhase(rig, dir, out);
    await sweepPhase(rig, out);
    await streamPhase(rig, out);
    await sleep(2_000);
    const after = memory(rig.gatewayPid);
    out.memory.afterMb = after?.rssMb;
    out.memory.hwmMb = after?.hwmMb;
    out.gatewayLogLines = await countLines(rig.gatewayLogPath);
  } finally {
    await rig?.stop();
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  }
  log('routing micro-benchmarks (in-process, core 1)');
  out.routing = await runRoutingBench();
  mkdirSync(RESULTS_DIR, { recursive: true });
  const file = join(RESULTS_DIR, `bench-${out.meta.date.replace(/[:.]/g, '-')}${quick ? '-quick' : ''}.json`);
  writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
  process.stdout.write(`\n${markdown(out)}\nJSON: ${file}\n`);
}

main().catch(async (err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  await stopAll();
  process.exit(1);
});
