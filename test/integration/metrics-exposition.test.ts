/**
 * /metrics as Prometheus and its users read it: the exposition itself checked by a strict reader of the text
 * format 0.0.4 (grammar, HELP/TYPE once and before the samples, families contiguous, no duplicate series,
 * escaped label values, histogram invariants, counters that never go down between scrapes), label values
 * taken from hostile config names, content negotiation (OpenMetrics Accept, HEAD, gzip), and what the numbers
 * mean (overhead within the duration, TPOT per stream, in-flight back to 0, breaker gauge = /router/status,
 * cost = the sum of the request lines, durations for requests answered before routing, metrics_auth).
 */
import type { ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { gunzipSync } from 'node:zlib';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator, type SimOptions } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { chunkFrame, refusedAsGpt5, startMock } from '../helpers/mock-upstream.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();

async function sim(name: string, o: Partial<SimOptions> = {}) {
  return track(await startSimulator({ name, ...o }));
}

async function chat(
  gw: TestGateway,
  model: string,
  extra: Record<string, unknown> = {},
  opts: { signal?: AbortSignal; headers?: Record<string, string> } = {},
) {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...opts.headers },
    body: JSON.stringify({
      model,
      messages: [{ role: 'user', content: 'Tell me about the exposition format.' }],
      ...extra,
    }),
    signal: opts.signal,
  });
  const text = await res.body.text();
  return { status: res.statusCode, text, headers: res.headers };
}

const requestLines = (gw: TestGateway) => gw.logs.filter((l) => l.msg === 'request');

/** Waits for `n` request lines (they are written at the end of the turn), then a little more. */
async function settled(gw: TestGateway, n: number): Promise<void> {
  await until('request lines', () => requestLines(gw).length >= n, 5000);
  await sleep(30);
}

// ---------------------------------------------------------------------------------------------------------
// A strict reader of the Prometheus text format 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format)
// ---------------------------------------------------------------------------------------------------------

interface StrictSample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: number;
  readonly line: number;
}
interface Family {
  readonly name: string;
  type?: string;
  help?: string;
  readonly samples: StrictSample[];
}
interface Exposition {
  readonly families: Map<string, Family>;
  readonly samples: StrictSample[];
  readonly errors: string[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

/** Go's strconv.ParseFloat as the Prometheus parser uses it (case-insensitive NaN/Inf, exponents). */
function parseValue(s: string): number | undefined {
  if (/^[+-]?(inf|infinity)$/i.test(s)) return s.startsWith('-') ? -Infinity : Infinity;
  if (/^nan$/i.test(s)) return NaN;
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s)) return undefined;
  return Number(s);
}

/** The family a sample belongs to, given the TYPEs seen so far (histogram/summary suffixes). */
function familyOf(name: string, families: Map<string, Family>): string {
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (name.endsWith(suffix)) {
      const base = name.slice(0, -suffix.length);
      const t = families.get(base)?.type;
      if (t === 'histogram' || (t === 'summary' && suffix !== '_bucket')) return base;
    }
  }
  return name;
}

function parseStrict(text: string): Exposition {
  const errors: string[] = [];
  const families = new Map<string, Family>();
  const samples: StrictSample[] = [];
  const seenSeries = new Set<string>();
  /** Families whose samples are finished (another family's sample or metadata came after them). */
  const closed = new Set<string>();
  let current: string | undefined;
  if (!text.endsWith('\n')) errors.push('the exposition does not end with a line feed');
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const fam = (name: string): Family => {
    let f = families.get(name);
    if (!f) {
      f = { name, samples: [] };
      families.set(name, f);
    }
    return f;
  };
  const switchTo = (name: string, n: number) => {
    if (current !== name) {
      if (current !== undefined) closed.add(current);
      if (closed.has(name)) errors.push(`line ${n}: family ${name} appears again after another family`);
      current = name;
    }
  };
  lines.forEach((line, i) => {
    const n = i + 1;
    if (line.trim() === '') return;
    if (line.startsWith('#')) {
      const m = /^#\s+(HELP|TYPE)\s+(\S+)(?:\s(.*))?$/.exec(line);
      if (!m) return; // a plain comment
      const [, kind, name, rest = ''] = m;
      if (!METRIC_NAME.test(name!)) errors.push(`line ${n}: bad metric name in ${kind}: ${name}`);
      switchTo(name!, n);
      const f = fam(name!);
      if (kind === 'HELP') {
        if (f.help !== undefined) errors.push(`line ${n}: second HELP for ${name}`);
        if (/\\[^\\n]/.test(rest.replace(/\\\\/g, '')))
          errors.push(`line ${n}: bad escape in HELP of ${name}`);
        f.help = rest;
      } else {
        if (f.type !== undefined) errors.push(`line ${n}: second TYPE for ${name}`);
        if (f.samples.length > 0) errors.push(`line ${n}: TYPE for ${name} after its samples`);
        if (!TYPES.has(rest.trim())) errors.push(`line ${n}: unknown type ${rest} for ${name}`);
        f.type = rest.trim();
      }
      return;
    }
    // name [ {labels} ] value [ timestamp ]
    const nm = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (!nm) {
      errors.push(`line ${n}: no metric name: ${JSON.stringify(line)}`);
      return;
    }
    const name = nm[0];
    let pos = name.length;
    const labels: Record<string, string> = {};
    if (line[pos] === '{') {
      pos++;
      for (;;) {
        while (line[pos] === ' ') pos++;
        if (line[pos] === '}') {
          pos++;
          break;
        }
        const ln = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(line.slice(pos));
        if (!ln) {
          errors.push(`line ${n}: bad label name at ${pos}: ${JSON.stringify(line)}`);
          return;
        }
        const lname = ln[0];
        pos += lname.length;
        while (line[pos] === ' ') pos++;
        if (line[pos] !== '=' || line[pos + 1] !== '"') {
          errors.push(`line ${n}: expected ="" after label ${lname}: ${JSON.stringify(line)}`);
          return;
        }
        pos += 2;
        let v = '';
        for (;;) {
          const c = line[pos];
          if (c === undefined) {
            errors.push(`line ${n}: unterminated label value: ${JSON.stringify(line)}`);
            return;
          }
          if (c === '"') {
            pos++;
            break;
          }
          if (c === '\\') {
            const e = line[pos + 1];
            if (e === '\\') v += '\\';
            else if (e === '"') v += '"';
            else if (e === 'n') v += '\n';
            else {
              errors.push(`line ${n}: invalid escape \\${e} in label value: ${JSON.stringify(line)}`);
              return;
            }
            pos += 2;
            continue;
          }
          v += c;
          pos++;
        }
        if (lname.startsWith('__')) errors.push(`line ${n}: reserved label name ${lname}`);
        if (lname in labels) errors.push(`line ${n}: label ${lname} twice`);
        labels[lname] = v;
        while (line[pos] === ' ') pos++;
        if (line[pos] === ',') pos++;
        else if (line[pos] !== '}') {
          errors.push(`line ${n}: expected , or } at ${pos}: ${JSON.stringify(line)}`);
          return;
        }
      }
    }
    const rest = line.slice(pos);
    const parts = rest.trim().split(/[ \t]+/);
    if (!/^[ \t]/.test(rest) || parts.length < 1 || parts.length > 2) {
      errors.push(`line ${n}: expected " value [timestamp]" after the labels: ${JSON.stringify(line)}`);
      return;
    }
    const value = parseValue(parts[0]!);
    if (value === undefined) {
      errors.push(`line ${n}: bad value ${parts[0]}: ${JSON.stringify(line)}`);
      return;
    }
    if (parts[1] !== undefined && !/^-?\d+$/.test(parts[1]))
      errors.push(`line ${n}: bad timestamp ${parts[1]}`);
    const family = familyOf(name, families);
    switchTo(family, n);
    const key = `${name}{${Object.keys(labels)
      .sort()
      .map((k) => `${k}=${JSON.stringify(labels[k])}`)
      .join(',')}}`;
    if (seenSeries.has(key)) errors.push(`line ${n}: duplicate series ${key}`);
    seenSeries.add(key);
    const s = { name, labels, value, line: n };
    fam(family).samples.push(s);
    samples.push(s);
  });
  // Every family with samples is typed (the gateway types all of its own), and histograms hold together.
  for (const f of families.values()) {
    if (f.samples.length > 0 && f.type === undefined) errors.push(`family ${f.name} has samples but no TYPE`);
    if (f.type === 'counter' && f.samples.some((s) => s.value < 0 || Number.isNaN(s.value)))
      errors.push(`counter ${f.name} has a negative or NaN sample`);
    if (f.type === 'histogram') errors.push(...histogramErrors(f));
  }
  return { families, samples, errors };
}

function seriesKey(labels: Record<string, string>, drop: string[] = []): string {
  return JSON.stringify(
    Object.keys(labels)
      .filter((k) => !drop.includes(k))
      .sort()
      .map((k) => [k, labels[k]]),
  );
}

function histogramErrors(f: Family): string[] {
  const errors: string[] = [];
  const byKey = new Map<string, { buckets: [number, number][]; sum?: number; count?: number }>();
  const get = (k: string) => {
    let h = byKey.get(k);
    if (!h) {
      h = { buckets: [] };
      byKey.set(k, h);
    }
    return h;
  };
  for (const s of f.samples) {
    if (s.name === `${f.name}_bucket`) {
      const le = s.labels.le;
      if (le === undefined) {
        errors.push(`${f.name}: bucket without le (line ${s.line})`);
        continue;
      }
      const bound = parseValue(le);
      if (bound === undefined) errors.push(`${f.name}: le="${le}" is not a number (line ${s.line})`);
      get(seriesKey(s.labels, ['le'])).buckets.push([bound ?? NaN, s.value]);
    } else if (s.name === `${f.name}_sum`) get(seriesKey(s.labels)).sum = s.value;
    else if (s.name === `${f.name}_count`) get(seriesKey(s.labels)).count = s.value;
    else errors.push(`${f.name}: sample ${s.name} is not a histogram series (line ${s.line})`);
  }
  for (const [k, h] of byKey) {
    const b = h.buckets;
    for (let i = 1; i < b.length; i++) {
      if (!(b[i]![0] > b[i - 1]![0])) errors.push(`${f.name}${k}: le not ascending at ${b[i]![0]}`);
      if (b[i]![1] < b[i - 1]![1])
        errors.push(`${f.name}${k}: bucket counts not cumulative at le=${b[i]![0]}`);
    }
    const inf = b.find(([le]) => le === Infinity);
    if (!inf) errors.push(`${f.name}${k}: no +Inf bucket`);
    if (h.count === undefined) errors.push(`${f.name}${k}: no _count`);
    if (h.sum === undefined) errors.push(`${f.name}${k}: no _sum`);
    if (inf && h.count !== undefined && inf[1] !== h.count)
      errors.push(`${f.name}${k}: +Inf bucket ${inf[1]} != _count ${h.count}`);
  }
  return errors;
}

async function scrapeText(gw: TestGateway, headers: Record<string, string> = {}) {
  const res = await request(`${gw.url}/metrics`, { headers });
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
}

async function scrapeStrict(gw: TestGateway): Promise<Exposition> {
  const r = await scrapeText(gw);
  expect(r.status).toBe(200);
  return parseStrict(r.text);
}

function one(x: Exposition, name: string, labels: Record<string, string>): number | undefined {
  const want = seriesKey(labels);
  return x.samples.find((s) => s.name === name && seriesKey(s.labels) === want)?.value;
}

function sumOf(x: Exposition, name: string, labels: Record<string, string> = {}): number {
  return x.samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);
}

// Names a config may carry (provider names are restricted to [A-Za-z0-9._-]; models and routes are not).
const HOSTILE_MODEL = 'we"ird\\mo\ndel} 1\n# TYPE x';
const HOSTILE_ROUTE = 'r"o\\u\nte,le="1"';
const UNICODE_MODEL = 'llama3-中文-ünï€';
const P = { input_per_mtok: 1.5, output_per_mtok: 4.25 };

describe('the exposition, read strictly (text format 0.0.4)', () => {
  it('a varied session scrapes as a valid exposition: grammar, HELP/TYPE, contiguous families, histograms, no duplicates', async () => {
    const ok = await sim('ok', { completionTokens: 5 });
    const bad = await sim('bad', { status: 500 });
    const drop = await sim('drop', { dropAfterChunks: 2, completionTokens: 6, chunkDelayMs: 5 });
    const gw = track(
      await startGateway({
        providers: [
          simProvider('ok', ok.url, [
            { name: HOSTILE_MODEL, price: P },
            { name: UNICODE_MODEL, price: P },
            { name: 'm', price: P },
          ]),
          simProvider('bad', bad.url, ['m']),
          simProvider('drop', drop.url, ['m']),
        ],
        routes: {
          [HOSTILE_ROUTE]: { strategy: 'priority', targets: [`ok/${HOSTILE_MODEL}`] },
          uni: { strategy: 'priority', targets: [`ok/${UNICODE_MODEL}`] },
          fo: { strategy: 'priority', targets: ['bad/m', 'ok/m'] },
          cut: { strategy: 'priority', targets: ['drop/m'] },
        },
        circuit_breaker: { failure_threshold: 2, open_ms: 60_000 },
      }),
    );
    expect((await chat(gw, HOSTILE_ROUTE)).status).toBe(200);
    expect((await chat(gw, HOSTILE_ROUTE, { stream: true })).status).toBe(200);
    expect((await chat(gw, 'uni', { stream: true, stream_options: { include_usage: true } })).status).toBe(
      200,
    );
    for (let i = 0; i < 3; i++) expect((await chat(gw, 'fo')).status).toBe(200);
    expect((await chat(gw, 'cut', { stream: true })).status).toBe(200);
    expect((await chat(gw, 'nope"\\\n')).status).toBe(404);
    expect((await chat(gw, 'fo', { messages: 'x' })).status).toBe(400);
    await settled(gw, 9);

    const x = await scrapeStrict(gw);
    expect(x.errors).toEqual([]);
    // Label values round-trip: the reader gets back the configured names, exactly.
    expect(
      one(x, 'llm_router_requests_total', {
        route: HOSTILE_ROUTE,
        provider: 'ok',
        model: HOSTILE_MODEL,
        status: '200',
      }),
    ).toBe(2);
    expect(
      one(x, 'llm_router_requests_total', {
        route: 'uni',
        provider: 'ok',
        model: UNICODE_MODEL,
        status: '200',
      }),
    ).toBe(1);
    expect(one(x, 'llm_router_circuit_state', { provider: 'ok', model: HOSTILE_MODEL })).toBe(0);
    expect(one(x, 'llm_router_circuit_state', { provider: 'bad', model: 'm' })).toBe(2);
    // The hostile text did not forge a family or a series of its own.
    expect(x.families.has('x')).toBe(false);
    expect(
      x.samples.some(
        (s) => s.name === 'x' || (s.labels.le === '1' && s.name === 'llm_router_requests_total'),
      ),
    ).toBe(false);
    // Every SPEC family the session touched is typed as SPEC §5 says.
    const types: Record<string, string> = {
      llm_router_requests_total: 'counter',
      llm_router_request_duration_seconds: 'histogram',
      llm_router_time_to_first_token_seconds: 'histogram',
      llm_router_time_per_output_token_seconds: 'histogram',
      llm_router_overhead_seconds: 'histogram',
      llm_router_upstream_attempts_total: 'counter',
      llm_router_failovers_total: 'counter',
      llm_router_circuit_state: 'gauge',
      llm_router_circuit_transitions_total: 'counter',
      llm_router_tokens_total: 'counter',
      llm_router_cost_usd_total: 'counter',
      llm_router_routing_decisions_total: 'counter',
      llm_router_inflight_requests: 'gauge',
      llm_router_stream_failures_total: 'counter',
      llm_router_config_reloads_total: 'counter',
    };
    for (const [name, type] of Object.entries(types)) {
      expect(x.families.get(name)?.type, name).toBe(type);
      expect(x.families.get(name)!.samples.length, name).toBeGreaterThan(0);
    }
  });

  it('counters (and histogram buckets, sums, counts) never go down from one scrape to the next', async () => {
    const ok = await sim('ok', { completionTokens: 4 });
    const bad = await sim('bad', { status: 503 });
    const gw = track(
      await startGateway({
        providers: [simProvider('ok', ok.url, [{ name: 'm', price: P }]), simProvider('bad', bad.url, ['m'])],
        routes: { fo: { strategy: 'priority', targets: ['bad/m', 'ok/m'] }, plain: { targets: ['ok/m'] } },
        circuit_breaker: { failure_threshold: 3, open_ms: 200 },
      }),
    );
    const snapshots: Exposition[] = [];
    let lines = 0;
    for (let round = 0; round < 4; round++) {
      const batch = [
        chat(gw, 'fo'),
        chat(gw, 'plain', { stream: true }),
        chat(gw, 'fo', { stream: true, stream_options: { include_usage: true } }),
        chat(gw, 'nope'),
      ];
      await Promise.all(batch);
      lines += batch.length;
      await settled(gw, lines);
      snapshots.push(await scrapeStrict(gw));
      await sleep(round === 1 ? 250 : 10); // let the breaker's open lapse once
    }
    const monotone = (f: Family) =>
      f.type === 'counter' || f.type === 'histogram' || f.name.endsWith('_total');
    const decreases: string[] = [];
    for (let i = 1; i < snapshots.length; i++) {
      expect(snapshots[i]!.errors).toEqual([]);
      const before = new Map<string, number>();
      for (const f of snapshots[i - 1]!.families.values())
        if (f.name.startsWith('llm_router_') && monotone(f))
          for (const s of f.samples) before.set(`${s.name}${seriesKey(s.labels)}`, s.value);
      for (const f of snapshots[i]!.families.values())
        if (f.name.startsWith('llm_router_') && monotone(f))
          for (const s of f.samples) {
            const k = `${s.name}${seriesKey(s.labels)}`;
            const was = before.get(k);
            if (was !== undefined && s.value < was) decreases.push(`${k}: ${was} -> ${s.value}`);
            before.delete(k);
          }
      // A series does not vanish between scrapes without a reload.
      for (const k of before.keys()) decreases.push(`${k}: vanished`);
    }
    expect(decreases).toEqual([]);
  });
});

describe('content negotiation', () => {
  async function gwWithTraffic() {
    const ok = await sim('ok');
    const gw = track(
      await startGateway({
        providers: [simProvider('ok', ok.url, ['m'])],
        routes: { r: { targets: ['ok/m'] } },
      }),
    );
    expect((await chat(gw, 'r')).status).toBe(200);
    await settled(gw, 1);
    return gw;
  }

  it('Prometheus’s OpenMetrics-first Accept gets either proper OpenMetrics or text 0.0.4 labelled as such', async () => {
    const gw = await gwWithTraffic();
    // What Prometheus 2.x/3.x sends by default.
    const accept =
      'application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2';
    const r = await scrapeText(gw, { accept, 'accept-encoding': 'identity' });
    expect(r.status).toBe(200);
    const ct = String(r.headers['content-type']);
    if (ct.startsWith('application/openmetrics-text')) {
      expect(r.text.endsWith('# EOF\n')).toBe(true);
      // OpenMetrics: a counter family is named without _total, its sample with it.
      expect(r.text).toMatch(/^# TYPE llm_router_requests counter$/m);
      expect(r.text).toMatch(/^llm_router_requests_total\{/m);
    } else {
      expect(ct).toMatch(/^text\/plain; ?version=0\.0\.4/);
      expect(r.text).not.toContain('# EOF');
      expect(parseStrict(r.text).errors).toEqual([]);
    }
  });

  it('HEAD /metrics: 200, the same content type, no body, and not counted as a request', async () => {
    const gw = await gwWithTraffic();
    const res = await request(`${gw.url}/metrics`, { method: 'HEAD' });
    expect(res.statusCode).toBe(200);
    expect(String(res.headers['content-type'])).toMatch(/^text\/plain; ?version=0\.0\.4/);
    expect(await res.body.text()).toBe('');
    await sleep(30);
    const x = await scrapeStrict(gw);
    expect(sumOf(x, 'llm_router_requests_total')).toBe(1);
    expect(sumOf(x, 'llm_router_requests_total', { route: 'none' })).toBe(0);
  });

  it('Accept-Encoding: gzip (Prometheus always sends it): the body is what content-encoding says it is', async () => {
    const gw = await gwWithTraffic();
    const res = await request(`${gw.url}/metrics`, { headers: { 'accept-encoding': 'gzip' } });
    expect(res.statusCode).toBe(200);
    const raw = Buffer.from(await res.body.arrayBuffer());
    const enc = res.headers['content-encoding'];
    const text = enc === 'gzip' ? gunzipSync(raw).toString('utf8') : raw.toString('utf8');
    if (enc !== undefined) expect(enc).toBe('gzip');
    expect(parseStrict(text).errors).toEqual([]);
    expect(text).toContain('llm_router_requests_total{route="r",provider="ok",model="m",status="200"} 1');
  });
});

describe('metrics_auth (README: /metrics behind the admin key)', () => {
  it('without the admin key: 401 OpenAI-shaped, no metric text; with it (Bearer or x-admin-key): 200', async () => {
    const ok = await sim('ok');
    const ADMIN = 'adm-0123456789-secret';
    const gw = track(
      await startGateway({
        server: { admin_key: ADMIN, metrics_auth: true, api_keys: ['client-key-123456789'] },
        providers: [simProvider('ok', ok.url, ['m'])],
        routes: { r: { targets: ['ok/m'] } },
      }),
    );
    for (const headers of <Record<string, string>[]>[
      {},
      { authorization: 'Bearer client-key-123456789' },
      { 'x-admin-key': 'wrong' },
    ]) {
      const r = await scrapeText(gw, headers);
      expect(r.status).toBe(401);
      expect(String(r.headers['content-type'])).toMatch(/application\/json/);
      const body = JSON.parse(r.text) as { error: Record<string, unknown> };
      expect(body.error.type).toBe('authentication_error');
      expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
      expect(r.text).not.toContain('llm_router_');
    }
    const head = await request(`${gw.url}/metrics`, { method: 'HEAD' });
    expect(head.statusCode).toBe(401);
    await head.body.text();
    for (const headers of <Record<string, string>[]>[
      { authorization: `bearer ${ADMIN}` },
      { 'x-admin-key': ADMIN },
    ]) {
      const r = await scrapeText(gw, headers);
      expect(r.status).toBe(200);
      expect(parseStrict(r.text).errors).toEqual([]);
      expect(r.text).not.toContain(ADMIN);
    }
  });
});

describe('what the numbers mean', () => {
  it('requests answered before routing (400, 404, 415) are observed in request_duration_seconds like they are counted', async () => {
    const ok = await sim('ok');
    const gw = track(
      await startGateway({
        providers: [simProvider('ok', ok.url, ['m'])],
        routes: { r: { targets: ['ok/m'] } },
      }),
    );
    expect((await chat(gw, 'no-such-route')).status).toBe(404);
    expect((await chat(gw, 'r', { messages: 'not a list' })).status).toBe(400);
    const r415 = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'text/plain' },
      body: 'hi',
    });
    expect(r415.statusCode).toBe(415);
    await r415.body.text();
    expect((await chat(gw, 'r')).status).toBe(200);
    await settled(gw, 4);
    const x = await scrapeStrict(gw);
    expect(x.errors).toEqual([]);
    const counted = sumOf(x, 'llm_router_requests_total');
    expect(counted).toBe(4);
    expect(sumOf(x, 'llm_router_requests_total', { route: 'none' })).toBe(3);
    // The duration histogram's _count is the number of requests it timed: every counted request.
    expect(sumOf(x, 'llm_router_request_duration_seconds_count', { route: 'none' })).toBe(3);
    expect(sumOf(x, 'llm_router_request_duration_seconds_count')).toBe(counted);
  });

  it('overhead: one observation per routed request, never more than that request’s duration', async () => {
    const slow = await sim('slow', { latencyMs: 120, completionTokens: 4, chunkDelayMs: 20 });
    const bad = await sim('bad', { status: 500, latencyMs: 80 });
    const gw = track(
      await startGateway({
        providers: [simProvider('slow', slow.url, ['m']), simProvider('bad', bad.url, ['m'])],
        routes: {
          json: { strategy: 'priority', targets: ['slow/m'] },
          fo: { strategy: 'priority', targets: ['bad/m', 'slow/m'] },
          dead: { strategy: 'priority', targets: ['bad/m'] },
        },
        circuit_breaker: { failure_threshold: 100 },
      }),
    );
    await chat(gw, 'json');
    await chat(gw, 'json', { stream: true });
    await chat(gw, 'fo');
    await chat(gw, 'fo', { stream: true });
    expect((await chat(gw, 'dead')).status).toBe(502);
    await settled(gw, 5);
    const x = await scrapeStrict(gw);
    expect(x.errors).toEqual([]);
    for (const route of ['json', 'fo', 'dead']) {
      const n = sumOf(x, 'llm_router_requests_total', { route });
      expect(sumOf(x, 'llm_router_overhead_seconds_count', { route }), route).toBe(n);
      const overhead = sumOf(x, 'llm_router_overhead_seconds_sum', { route });
      const duration = sumOf(x, 'llm_router_request_duration_seconds_sum', { route });
      expect(overhead, route).toBeGreaterThanOrEqual(0);
      expect(overhead, route).toBeLessThanOrEqual(duration);
      // The upstreams took >= 80 ms per request here; the gateway's own share is a small part of it.
      expect(overhead, route).toBeLessThan(duration / 2);
    }
  });

  it('TPOT of a stream whose first send was refused and refitted is the generation pace, not the refusal’s wait', async () => {
    const REFUSAL_MS = 400;
    const TOKENS = 4;
    const mock = track(
      await startMock(async (req, res: ServerResponse) => {
        const body = req.body;
        if ('max_tokens' in body) {
          await sleep(REFUSAL_MS); // a slow 400 (a loaded provider), then the refit's send answers at once
          refusedAsGpt5(body, res);
          return;
        }
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        let out = chunkFrame(body.model, { role: 'assistant', content: '' });
        for (let i = 0; i < TOKENS; i++) out += chunkFrame(body.model, { content: `t${i} ` });
        out += chunkFrame(body.model, {}, 'stop');
        res.end(`${out}data: [DONE]\n\n`);
      }),
    );
    const gw = track(
      await startGateway({
        providers: [simProvider('g5', mock.url, ['gpt-5-mini'])],
        routes: { r: { targets: ['g5/gpt-5-mini'] } },
      }),
    );
    const r = await chat(gw, 'r', { stream: true, max_tokens: 50 });
    expect(r.status).toBe(200);
    expect(r.text).toContain('data: [DONE]');
    expect(mock.received.length).toBe(2); // refused, then refitted
    await settled(gw, 1);
    const x = await scrapeStrict(gw);
    const labels = { provider: 'g5', model: 'gpt-5-mini' };
    expect(one(x, 'llm_router_time_per_output_token_seconds_count', labels)).toBe(1);
    const tpot = one(x, 'llm_router_time_per_output_token_seconds_sum', labels)!;
    // The tokens came back to back: whatever the pace, it is not the refusal's 400 ms spread over 4 tokens.
    expect(tpot).toBeLessThan((REFUSAL_MS / 1000 / TOKENS) * 0.5);
  });

  it('a stream cut after its first content counts in TTFT (README), once; and TPOT once per stream', async () => {
    const drop = await sim('drop', { dropAfterChunks: 3, completionTokens: 8, chunkDelayMs: 10 });
    const ok = await sim('ok', { completionTokens: 6, chunkDelayMs: 5 });
    const gw = track(
      await startGateway({
        providers: [simProvider('drop', drop.url, ['m']), simProvider('ok', ok.url, ['m'])],
        routes: { cut: { targets: ['drop/m'] }, fine: { targets: ['ok/m'] } },
      }),
    );
    const cut = await chat(gw, 'cut', { stream: true });
    expect(cut.text).toContain('"error"');
    await chat(gw, 'fine', { stream: true });
    await chat(gw, 'fine', { stream: true, stream_options: { include_usage: true } });
    await chat(gw, 'fine');
    await settled(gw, 4);
    const x = await scrapeStrict(gw);
    expect(one(x, 'llm_router_time_to_first_token_seconds_count', { provider: 'drop', model: 'm' })).toBe(1);
    expect(one(x, 'llm_router_time_to_first_token_seconds_count', { provider: 'ok', model: 'm' })).toBe(3);
    expect(one(x, 'llm_router_time_per_output_token_seconds_count', { provider: 'ok', model: 'm' })).toBe(2);
    const ttftSum = one(x, 'llm_router_time_to_first_token_seconds_sum', { provider: 'drop', model: 'm' })!;
    const durSum = sumOf(x, 'llm_router_request_duration_seconds_sum', { route: 'cut' });
    expect(ttftSum).toBeGreaterThan(0);
    expect(ttftSum).toBeLessThanOrEqual(durSum);
  });

  it('inflight_requests: 1 (and = /router/status in_flight) during a stream; back to 0 after bursts, aborts and failovers', async () => {
    const slow = await sim('slow', { completionTokens: 40, chunkDelayMs: 25 });
    const ok = await sim('ok', { completionTokens: 3 });
    const bad = await sim('bad', { status: 502 });
    const gw = track(
      await startGateway({
        providers: [
          simProvider('slow', slow.url, ['m']),
          simProvider('ok', ok.url, ['m']),
          simProvider('bad', bad.url, ['m']),
        ],
        routes: {
          long: { targets: ['slow/m'] },
          fo: { strategy: 'priority', targets: ['bad/m', 'ok/m'] },
        },
        circuit_breaker: { failure_threshold: 1000 },
      }),
    );
    const inflight = async () => {
      const x = await scrapeStrict(gw);
      return {
        slow: one(x, 'llm_router_inflight_requests', { provider: 'slow', model: 'm' }),
        ok: one(x, 'llm_router_inflight_requests', { provider: 'ok', model: 'm' }),
        bad: one(x, 'llm_router_inflight_requests', { provider: 'bad', model: 'm' }),
      };
    };
    // One stream held open: the gauge and /router/status agree on 1.
    const ac = new AbortController();
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'long', stream: true, messages: [{ role: 'user', content: 'go' }] }),
      signal: ac.signal,
    });
    const it = res.body[Symbol.asyncIterator]();
    await it.next();
    expect((await inflight()).slow).toBe(1);
    const status = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: { id: string; in_flight: number }[];
    };
    expect(status.upstreams.find((u) => u.id === 'slow/m')?.in_flight).toBe(1);
    ac.abort();
    await res.body.text().catch(() => undefined);

    // A burst: streams aborted mid-way, failovers, JSON answers.
    const work: Promise<unknown>[] = [];
    for (let i = 0; i < 4; i++) {
      const c = new AbortController();
      work.push(chat(gw, 'long', { stream: true }, { signal: c.signal }).catch(() => undefined));
      setTimeout(() => c.abort(), 60 + i * 20);
    }
    for (let i = 0; i < 4; i++) work.push(chat(gw, 'fo', i % 2 ? { stream: true } : {}));
    await Promise.all(work);
    await settled(gw, 9);
    await until(
      'inflight back to 0',
      async () => {
        const v = await inflight();
        return v.slow === 0 && v.ok === 0 && v.bad === 0;
      },
      3000,
    ).catch(() => undefined);
    expect(await inflight()).toEqual({ slow: 0, ok: 0, bad: 0 });
  });

  it('circuit_state gauge = /router/status state: closed 0, open 2, half-open 1 once open_ms lapses', async () => {
    const bad = await sim('bad', { status: 500 });
    const ok = await sim('ok');
    const gw = track(
      await startGateway({
        providers: [simProvider('bad', bad.url, ['m']), simProvider('ok', ok.url, ['m'])],
        routes: { fo: { strategy: 'priority', targets: ['bad/m', 'ok/m'] } },
        circuit_breaker: { failure_threshold: 2, open_ms: 300 },
      }),
    );
    const VALUE: Record<string, number> = { closed: 0, half_open: 1, open: 2 };
    const agree = async (want: string) => {
      const x = await scrapeStrict(gw);
      const st = (await (await request(`${gw.url}/router/status`)).body.json()) as {
        upstreams: { id: string; breaker: { state: string } }[];
      };
      const state = st.upstreams.find((u) => u.id === 'bad/m')!.breaker.state;
      expect(state).toBe(want);
      expect(one(x, 'llm_router_circuit_state', { provider: 'bad', model: 'm' })).toBe(VALUE[want]);
      expect(one(x, 'llm_router_circuit_state', { provider: 'ok', model: 'm' })).toBe(0);
    };
    await agree('closed');
    await chat(gw, 'fo');
    await chat(gw, 'fo');
    await settled(gw, 2);
    await agree('open');
    await sleep(400);
    await agree('half_open');
    const x = await scrapeStrict(gw);
    expect(one(x, 'llm_router_circuit_transitions_total', { provider: 'bad', model: 'm', to: 'open' })).toBe(
      1,
    );
  });

  it('cost_usd_total per upstream = the sum of costUsd over its request lines (JSON, stream, cut stream, failover)', async () => {
    const a = await sim('a', { completionTokens: 7 });
    const b = await sim('b', { completionTokens: 11, usage: false });
    const drop = await sim('drop', { dropAfterChunks: 3, completionTokens: 9, chunkDelayMs: 5 });
    const bad = await sim('bad', { status: 500 });
    const prices = {
      a: { input_per_mtok: 0.15, output_per_mtok: 0.6 },
      b: { input_per_mtok: 3, output_per_mtok: 15 },
      drop: { input_per_mtok: 2.5, output_per_mtok: 10 },
      bad: { input_per_mtok: 100, output_per_mtok: 100 },
    };
    const gw = track(
      await startGateway({
        providers: [
          simProvider('a', a.url, [{ name: 'm', price: prices.a }]),
          simProvider('b', b.url, [{ name: 'm', price: prices.b }]),
          simProvider('drop', drop.url, [{ name: 'm', price: prices.drop }]),
          simProvider('bad', bad.url, [{ name: 'm', price: prices.bad }]),
        ],
        routes: {
          ra: { targets: ['a/m'] },
          rb: { targets: ['b/m'] },
          cut: { targets: ['drop/m'] },
          fo: { strategy: 'priority', targets: ['bad/m', 'a/m'] },
        },
        circuit_breaker: { failure_threshold: 100 },
      }),
    );
    let n = 0;
    for (const [model, extra] of [
      ['ra', {}],
      ['ra', { stream: true }],
      ['ra', { stream: true, stream_options: { include_usage: true } }],
      ['rb', {}],
      ['rb', { stream: true }],
      ['cut', { stream: true }],
      ['fo', {}],
      ['fo', { stream: true }],
    ] as const) {
      await chat(gw, model, extra);
      n++;
    }
    await settled(gw, n);
    const x = await scrapeStrict(gw);
    const byUpstream = new Map<string, number>();
    for (const l of requestLines(gw)) {
      if (typeof l.costUsd !== 'number') continue;
      byUpstream.set(String(l.upstream), (byUpstream.get(String(l.upstream)) ?? 0) + l.costUsd);
    }
    for (const p of ['a', 'b', 'drop', 'bad']) {
      const metric = one(x, 'llm_router_cost_usd_total', { provider: p, model: 'm' }) ?? 0;
      const logged = byUpstream.get(`${p}/m`) ?? 0;
      expect(metric, p).toBeCloseTo(logged, 12);
    }
    expect(byUpstream.get('bad/m') ?? 0).toBe(0);
    // And the tokens behind it: cost = prompt x input + completion x output, per upstream.
    for (const p of ['a', 'b', 'drop'] as const) {
      const prompt = one(x, 'llm_router_tokens_total', { provider: p, model: 'm', kind: 'prompt' }) ?? 0;
      const completion =
        one(x, 'llm_router_tokens_total', { provider: p, model: 'm', kind: 'completion' }) ?? 0;
      const cost = one(x, 'llm_router_cost_usd_total', { provider: p, model: 'm' }) ?? 0;
      expect(cost, p).toBeCloseTo(
        (prompt * prices[p].input_per_mtok + completion * prices[p].output_per_mtok) / 1e6,
        12,
      );
    }
  });

  it('a tiered request that asked the LLM router: the router call’s spend is in its line as routerCostUsd', async () => {
    const router = await sim('router', { reply: '{"tier":"deep","reason":"hard"}', completionTokens: 6 });
    const deep = await sim('deep', { completionTokens: 5 });
    const bal = await sim('bal', { completionTokens: 5 });
    const gw = track(
      await startGateway({
        providers: [
          simProvider('router', router.url, [
            { name: 'm', price: { input_per_mtok: 1, output_per_mtok: 2 } },
          ]),
          simProvider('deep', deep.url, [{ name: 'm', price: { input_per_mtok: 10, output_per_mtok: 20 } }]),
          simProvider('bal', bal.url, [{ name: 'm', price: { input_per_mtok: 5, output_per_mtok: 5 } }]),
        ],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['router/m'], balanced: ['bal/m'], deep: ['deep/m'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 3000 },
          },
        },
      }),
    );
    const r = await chat(gw, 'auto');
    expect(r.status).toBe(200);
    expect(r.headers['x-router-tier']).toBe('deep');
    await settled(gw, 1);
    const x = await scrapeStrict(gw);
    const metricTotal = sumOf(x, 'llm_router_cost_usd_total');
    const routerSpend = one(x, 'llm_router_cost_usd_total', { provider: 'router', model: 'm' }) ?? 0;
    expect(routerSpend).toBeGreaterThan(0); // the router call is paid, and counted
    const lines = requestLines(gw);
    expect(lines.length).toBe(1);
    const logged = lines.reduce(
      (a, l) =>
        a +
        (typeof l.costUsd === 'number' ? l.costUsd : 0) +
        (typeof l.routerCostUsd === 'number' ? l.routerCostUsd : 0),
      0,
    );
    // A user reconciling spend per request (the line) with the counter finds every dollar in some line: the
    // answer's as costUsd, the router call's as routerCostUsd.
    expect(lines[0]!.routerCostUsd).toBeCloseTo(routerSpend, 12);
    expect(logged).toBeCloseTo(metricTotal, 12);
  });

  it('inflight of the LLM router’s upstream goes back to 0 when the client leaves during the router call', async () => {
    const router = await sim('router', { hang: true });
    const bal = await sim('bal');
    const gw = track(
      await startGateway({
        providers: [simProvider('router', router.url, ['m']), simProvider('bal', bal.url, ['m'])],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['router/m'], balanced: ['bal/m'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 20_000 },
          },
        },
      }),
    );
    const ac = new AbortController();
    const pending = chat(gw, 'auto', {}, { signal: ac.signal }).catch(() => undefined);
    await until(
      'router call in flight',
      async () =>
        one(await scrapeStrict(gw), 'llm_router_inflight_requests', { provider: 'router', model: 'm' }) === 1,
      3000,
    );
    ac.abort();
    await pending;
    await settled(gw, 1);
    await until(
      'router inflight 0',
      async () =>
        one(await scrapeStrict(gw), 'llm_router_inflight_requests', { provider: 'router', model: 'm' }) === 0,
      3000,
    ).catch(() => undefined);
    const x = await scrapeStrict(gw);
    expect(one(x, 'llm_router_inflight_requests', { provider: 'router', model: 'm' })).toBe(0);
    expect(
      one(x, 'llm_router_requests_total', { route: 'auto', provider: 'none', model: 'none', status: '499' }),
    ).toBe(1);
  });
});
