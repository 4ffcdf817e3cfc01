/**
 * Where the gateway spends its CPU under load: `npm run bench -- --profile` starts the simulators and the
 * gateway under `node --cpu-prof`, drives it with wrk (c=64), stops it (the profile is written on exit)
 * and prints the top self-time functions and the split by package. A saved profile can be summarised too:
 *   node dist-bench/bench/cpu-profile.js /tmp/prof/CPU.*.cpuprofile
 */
import { copyFileSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startGateway, startSimulators } from './targets.js';
import { WRK_MISSING, runWrk, wrkVersion, writePostScript } from './wrk.js';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** `node:internal/...`, a package under node_modules, our own src/..., or the frame name for natives. */
function packageOf(url: string, name: string): string {
  if (url === '') return `(${name || 'native'})`;
  if (url.startsWith('node:')) return url.split('/').slice(0, 2).join('/');
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) {
    const parts = url.slice(nm + 'node_modules/'.length).split('/');
    return parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
  }
  const src = url.lastIndexOf('/src/');
  return src >= 0 ? `src/${url.slice(src + 5).split('/')[0]}` : url;
}

function shortUrl(url: string): string {
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) return url.slice(nm + 'node_modules/'.length);
  const src = url.lastIndexOf('/src/');
  return src >= 0 ? url.slice(src + 1) : url.replace(/^file:\/\//, '');
}

function frameKey(f: ProfileNode['callFrame']): string {
  return `${f.functionName || '(anonymous)'} ${f.url ? `${shortUrl(f.url)}:${f.lineNumber + 1}` : ''}`.trim();
}

/** Total (self + callees) time of our own functions: which request phase the self time belongs to. */
function inclusiveOwn(profile: CpuProfile, byId: Map<number, ProfileNode>): Map<string, number> {
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const total = new Map<string, number>();
  profile.samples.forEach((id, i) => {
    const dt = profile.timeDeltas[i] ?? 0;
    const seen = new Set<string>(); // recursion counts once per sample
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const f = byId.get(at)!.callFrame;
      if (!f.url.includes('/src/') || f.url.includes('node_modules')) continue;
      const key = frameKey(f);
      if (!seen.has(key)) total.set(key, (total.get(key) ?? 0) + dt);
      seen.add(key);
    }
  });
  return total;
}

/** Markdown: top `top` functions by self time, self time by package, and our functions by total time. */
export function summariseProfile(text: string, top = 20): string {
  const profile = JSON.parse(text) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  let totalUs = 0;
  profile.samples.forEach((id, i) => {
    const dt = profile.timeDeltas[i] ?? 0;
    selfUs.set(id, (selfUs.get(id) ?? 0) + dt);
    totalUs += dt;
  });
  const byFunction = new Map<string, number>();
  const byPackage = new Map<string, number>();
  let idleUs = 0;
  for (const [id, us] of selfUs) {
    const f = byId.get(id)!.callFrame;
    if (f.functionName === '(idle)') idleUs += us;
    const key = frameKey(f);
    byFunction.set(key, (byFunction.get(key) ?? 0) + us);
    const pkg = packageOf(f.url, f.functionName);
    byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + us);
  }
  const busyUs = totalUs - idleUs;
  const pct = (us: number): string => `${((us / busyUs) * 100).toFixed(1)}%`;
  const rows = (m: Map<string, number>, n: number): string[] =>
    [...m.entries()]
      .filter(([k]) => k !== '(idle)' && k !== '((idle))')
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([k, us]) => `| ${pct(us)} | ${(us / 1000).toFixed(0)} ms | \`${k}\` |`);
  return [
    `profile: ${(totalUs / 1e6).toFixed(1)} s sampled, ${(busyUs / 1e6).toFixed(1)} s busy (shares below are of busy time)`,
    '',
    '| self | ms | function |',
    '|---|---|---|',
    ...rows(byFunction, top),
    '',
    '| self | ms | package |',
    '|---|---|---|',
    ...rows(byPackage, 15),
    '',
    '| total | ms | our function (self + callees) |',
    '|---|---|---|',
    ...rows(inclusiveOwn(profile, byId), 15),
    '',
  ].join('\n');
}

/**
 * Runs the gateway under --cpu-prof with wrk c=64 for `seconds`; keeps the profile in `saveDir` (open it in
 * Chrome DevTools > Performance) and returns its summary.
 */
export async function profileGateway(dir: string, seconds: number, saveDir: string): Promise<string> {
  if (!wrkVersion()) throw new Error(WRK_MISSING);
  const profDir = join(dir, 'prof');
  const sims = await startSimulators();
  const gw = await startGateway(dir, sims.fast.url, sims.stream.url, {
    nodeFlags: ['--cpu-prof', `--cpu-prof-dir=${profDir}`],
  });
  const body = JSON.stringify({
    model: 'bench-chat',
    messages: [{ role: 'user', content: 'Name three uses of a keep-alive pool.' }],
    max_tokens: 64,
  });
  const script = writePostScript(dir, body);
  try {
    await runWrk(1, `${gw.server.url}/v1/chat/completions`, script, 64, 2); // warm-up, in the profile too
    const run = await runWrk(1, `${gw.server.url}/v1/chat/completions`, script, 64, seconds);
    await gw.server.stop();
    const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'));
    if (!file) throw new Error(`no .cpuprofile in ${profDir}: did the gateway exit cleanly?`);
    mkdirSync(saveDir, { recursive: true });
    const saved = join(saveDir, `gateway-${new Date().toISOString().replace(/[:.]/g, '-')}.cpuprofile`);
    copyFileSync(join(profDir, file), saved);
    return [
      `## gateway CPU profile under wrk c=64 for ${seconds} s (${run.rps.toFixed(0)} req/s while profiled)`,
      '',
      summariseProfile(readFileSync(saved, 'utf8')),
      `profile: ${saved}`,
      '',
    ].join('\n');
  } finally {
    await Promise.all([gw.server.stop(), sims.fast.stop(), sims.stream.stop()]);
  }
}

if (process.argv[1]?.endsWith('cpu-profile.js') && process.argv[2] !== undefined) {
  for (const path of process.argv.slice(2))
    process.stdout.write(`## ${path}\n\n${summariseProfile(readFileSync(path, 'utf8'))}\n`);
}
