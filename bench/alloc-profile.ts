/**
 * Where the gateway allocates, per request. `node --heap-prof` cannot say: it keeps only the objects still
 * alive when it writes, and a request's garbage is gone by then. This keeps every sampled allocation,
 * including those already collected.
 *
 * As a preload, the first SIGWINCH starts sampling and the second writes the profile to $ALLOC_OUT, so a
 * warm-up and start-up's own allocations stay out of it. (SIGWINCH because the gateway drains on SIGUSR2,
 * as close-with-grace does, and Node keeps SIGUSR1 for its inspector.)
 *   ALLOC_OUT=/tmp/alloc.json node --import ./dist-bench/bench/alloc-profile.js dist/main.js --config ...
 *   (warm up with wrk)  kill -WINCH PID;  (wrk run: note its request count)  kill -WINCH PID
 * With ALLOC_PROMOTED=1 it keeps only objects that survived the young generation: what a request leaves for
 * the (slower, pausing) old-generation collections.
 * Run directly, it summarises a written profile per request of that run:
 *   node dist-bench/bench/alloc-profile.js /tmp/alloc.json REQUESTS
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { fileURLToPath } from 'node:url';

interface AllocNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children?: AllocNode[];
}

/** One sample per this many bytes allocated, on average. */
const SAMPLING_BYTES = 4_096;

function sampleBetweenSignals(out: string): void {
  const session = new Session();
  session.connect();
  session.post('HeapProfiler.enable');
  let sampling = false;
  process.on('SIGWINCH', () => {
    if (!sampling) {
      sampling = true;
      session.post('HeapProfiler.startSampling', {
        samplingInterval: SAMPLING_BYTES,
        includeObjectsCollectedByMajorGC: true,
        // ALLOC_PROMOTED=1: only what outlived the young generation (old-generation garbage and growth).
        includeObjectsCollectedByMinorGC: process.env.ALLOC_PROMOTED !== '1',
      });
      return;
    }
    sampling = false;
    session.post('HeapProfiler.stopSampling', (err, r) => {
      if (err) process.stderr.write(`alloc-profile: ${err.message}\n`);
      else writeFileSync(out, JSON.stringify(r.profile));
    });
  });
}

function frameName(f: AllocNode['callFrame']): string {
  const nm = f.url.lastIndexOf('node_modules/');
  const url = nm >= 0 ? f.url.slice(nm + 'node_modules/'.length) : f.url.replace(/.*\/dist[^/]*\//, '');
  return `${f.functionName || '(anonymous)'} ${url}:${f.lineNumber + 1}`;
}

function summarise(file: string, requests: number): void {
  const head = (JSON.parse(readFileSync(file, 'utf8')) as { head: AllocNode }).head;
  const bytes = new Map<string, number>();
  let total = 0;
  const stack: AllocNode[] = [head];
  for (let n = stack.pop(); n !== undefined; n = stack.pop()) {
    total += n.selfSize;
    const k = frameName(n.callFrame);
    bytes.set(k, (bytes.get(k) ?? 0) + n.selfSize);
    if (n.children) stack.push(...n.children);
  }
  const lines = [
    `allocated: ${Math.round(total / requests)} bytes per request`,
    '',
    '| bytes / request | function |',
    '|---|---|',
  ];
  for (const [k, b] of [...bytes].sort((a, b) => b[1] - a[1]).slice(0, 40)) {
    lines.push(`| ${Math.round(b / requests)} | \`${k}\` |`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [file, requests] = process.argv.slice(2);
  if (file === undefined || !(Number(requests) > 0)) {
    process.stderr.write('usage: node dist-bench/bench/alloc-profile.js PROFILE.json REQUESTS\n');
    process.exit(2);
  }
  summarise(file, Number(requests));
} else {
  const out = process.env.ALLOC_OUT;
  if (out === undefined) throw new Error('alloc-profile: set ALLOC_OUT to the file SIGWINCH writes');
  sampleBetweenSignals(out);
}
