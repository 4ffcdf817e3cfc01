import { readdirSync, readFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import yaml from 'js-yaml';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { parseSimArgs, type SimOptions } from '../../src/sim/index.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const read = (p: string): string => readFileSync(join(ROOT, p), 'utf8');

interface ComposeService {
  build?: unknown;
  image?: string;
  command?: string[];
  entrypoint?: string[];
  volumes?: string[];
  ports?: string[];
  healthcheck?: { test?: string[] };
  depends_on?: Record<string, unknown> | string[];
}
const compose = yaml.load(read('docker-compose.yml')) as { services: Record<string, ComposeService> };
const services = compose.services;

interface Panel {
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  targets?: { expr: string; datasource?: { uid: string } }[];
  panels?: Panel[];
}
const dashboard = JSON.parse(read('docker/grafana/dashboards/llm-edge-router.json')) as {
  uid: string;
  panels: Panel[];
};
const allPanels = (ps: readonly Panel[]): Panel[] => ps.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
const exprs = allPanels(dashboard.panels).flatMap((p) => (p.targets ?? []).map((t) => t.expr));

/** Every metric name an expression reads (a histogram's _bucket/_sum/_count map to the histogram). */
function metricNames(expr: string): string[] {
  const noLabels = expr.replace(/\{[^}]*\}/g, '').replace(/\[[^\]]*\]/g, '');
  const words = noLabels.match(/\b[a-z_][a-z0-9_]*\b/g) ?? [];
  return words.filter((w) => /^(llm_router|process|nodejs)_/.test(w));
}

describe('Grafana dashboard', () => {
  const registered = new Map(
    createMetrics()
      .registry.getMetricsAsArray()
      .map((m) => [m.name, String(m.type)]),
  );

  it('queries only metrics the gateway exports (and histogram series only of histograms)', () => {
    expect(exprs.length).toBeGreaterThan(20);
    const used = new Set<string>();
    for (const expr of exprs) {
      const names = metricNames(expr);
      expect(names.length, expr).toBeGreaterThan(0);
      for (const name of names) {
        const suffix = /_(bucket|sum|count)$/.exec(name);
        const base =
          suffix && registered.get(name.slice(0, -suffix[0].length)) === 'histogram'
            ? name.slice(0, -suffix[0].length)
            : name;
        expect(registered.has(base), `${name} in ${expr}`).toBe(true);
        if (name.endsWith('_bucket')) expect(registered.get(base), name).toBe('histogram');
        used.add(base);
      }
    }
    // Requests by upstream, latency and TTFT percentiles, failovers, breaker states, tokens and cost.
    for (const name of [
      'llm_router_requests_total',
      'llm_router_request_duration_seconds',
      'llm_router_time_to_first_token_seconds',
      'llm_router_failovers_total',
      'llm_router_circuit_state',
      'llm_router_tokens_total',
      'llm_router_cost_usd_total',
    ]) {
      expect(used, name).toContain(name);
    }
    // In fact every SPEC §5 metric has a panel.
    for (const name of createMetrics({ defaultMetrics: false })
      .registry.getMetricsAsArray()
      .map((m) => m.name)) {
      expect(used, name).toContain(name);
    }
  });

  it('uses only labels the metric has', () => {
    const labelsOf = new Map(
      createMetrics({ defaultMetrics: false })
        .registry.getMetricsAsArray()
        .map((m) => [
          m.name,
          new Set([...((m as unknown as { labelNames: string[] }).labelNames ?? []), 'le']),
        ]),
    );
    for (const expr of exprs) {
      const grouped = [...expr.matchAll(/by \(([^)]*)\)/g)].flatMap((m) =>
        m[1]!.split(',').map((s) => s.trim()),
      );
      const selected = [...expr.matchAll(/\{([^}]*)\}/g)].flatMap((m) =>
        [...m[1]!.matchAll(/([a-z_]+)\s*(?:=|!=|=~|!~)/g)].map((x) => x[1]!),
      );
      const metrics = metricNames(expr)
        .map((n) => n.replace(/_(bucket|sum|count)$/, ''))
        .filter((n) => labelsOf.has(n));
      for (const label of [...grouped, ...selected]) {
        expect(
          metrics.some((n) => labelsOf.get(n)!.has(label)),
          `${label} in ${expr}`,
        ).toBe(true);
      }
    }
  });

  it('every panel and query uses the provisioned Prometheus datasource', () => {
    const ds = yaml.load(read('docker/grafana/provisioning/datasources/prometheus.yml')) as {
      datasources: { uid: string; type: string; url: string }[];
    };
    const prom = ds.datasources[0]!;
    expect(prom).toMatchObject({ type: 'prometheus', url: 'http://prometheus:9090' });
    for (const p of allPanels(dashboard.panels).filter((x) => x.type !== 'row')) {
      expect(p.datasource?.uid, p.title).toBe(prom.uid);
      for (const t of p.targets ?? []) expect(t.datasource?.uid ?? prom.uid, p.title).toBe(prom.uid);
    }
    const provider = yaml.load(read('docker/grafana/provisioning/dashboards/llm-edge-router.yml')) as {
      providers: { type: string; options: { path: string } }[];
    };
    const path = provider.providers[0]!.options.path;
    expect(services.grafana?.volumes).toContain(`./docker/grafana/dashboards:${path}:ro`);
    expect(services.grafana?.volumes).toContain('./docker/grafana/provisioning:/etc/grafana/provisioning:ro');
  });
});

describe('Prometheus', () => {
  it('scrapes the gateway service on its port at /metrics', () => {
    const prom = yaml.load(read('docker/prometheus/prometheus.yml')) as {
      scrape_configs: { job_name: string; metrics_path?: string; static_configs: { targets: string[] }[] }[];
    };
    const job = prom.scrape_configs.find((j) => j.job_name === 'llm-edge-router')!;
    expect(job.metrics_path ?? '/metrics').toBe('/metrics');
    expect(job.static_configs.flatMap((s) => s.targets)).toEqual(['gateway:8080']);
    const gwConfig = parseConfigText(read('docker/gateway.compose.yaml'), {}).config;
    expect(gwConfig.server.port).toBe(8080);
    expect(gwConfig.server.host).toBe('0.0.0.0');
    expect(gwConfig.server.metrics_auth).toBe(false); // Prometheus scrapes without a key
    expect(services.prometheus?.volumes).toContain(
      './docker/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro',
    );
  });
});

/** The simulators `npm run demo` starts, read from src/demo.ts (`startSimulator({ ... })` literals). */
function demoSimulators(): Partial<SimOptions>[] {
  const src = read('src/demo.ts');
  return [...src.matchAll(/startSimulator\(\s*(?:moved\(\s*)?\{([^}]*)\}\)/g)].map((m) => {
    const out: Record<string, unknown> = {};
    for (const [, k, v] of m[1]!.matchAll(/(\w+):\s*('[^']*'|[\d.]+)/g)) {
      out[k!] = v!.startsWith("'") ? v!.slice(1, -1) : Number(v);
    }
    return out as Partial<SimOptions>;
  });
}

describe('docker-compose.yml', () => {
  const demo = demoSimulators();

  it('runs the demo simulators with the demo settings, one of them flaky', () => {
    expect(demo).toHaveLength(3);
    for (const d of demo) {
      const svc = services[d.name!];
      expect(svc, d.name).toBeDefined();
      expect(svc!.command?.[0]).toBe('simulate');
      const flags = parseSimArgs(svc!.command!.slice(1));
      const { host, ...rest } = flags;
      expect(host).toBe('0.0.0.0'); // reachable from the gateway container
      expect(rest, d.name).toEqual(d);
      expect(svc!.healthcheck?.test?.join(' ')).toContain(`:${d.port}/`);
    }
    expect(demo.filter((d) => (d.failRate ?? 0) > 0).map((d) => d.failRate)).toEqual([0.2]);
  });

  it('points the gateway at each simulator by service name, with the demo routes, prices and keys', () => {
    const composeCfg = parseConfigText(read('docker/gateway.compose.yaml'), {}).config;
    const demoCfg = parseConfigText(read('config/demo.yaml'), {}).config;
    const byPort = new Map(demo.map((d) => [d.port, d]));
    for (const p of composeCfg.providers) {
      const url = new URL(p.base_url);
      const sim = byPort.get(Number(url.port))!;
      expect(sim, p.name).toBeDefined();
      expect(url.hostname).toBe(sim.name);
      expect(p.kind).toBe(sim.kind);
      expect(p.api_key).toBe(sim.apiKey);
    }
    const strip = (c: typeof demoCfg) => ({
      ...c,
      server: { ...c.server, host: '', port: 0 },
      providers: c.providers.map((p) => ({ ...p, base_url: new URL(p.base_url).port })),
    });
    expect(strip(composeCfg)).toEqual(strip(demoCfg));
    const gw = services.gateway!;
    expect(gw.volumes).toContain('./docker/gateway.compose.yaml:/etc/llm-edge-router/gateway.yaml:ro');
    expect(gw.ports).toContain('8080:8080');
    expect(Object.keys(gw.depends_on ?? {}).sort()).toEqual(demo.map((d) => d.name!).sort());
  });

  it('has the gateway, Prometheus and Grafana, and builds one image for the gateway and the simulators', () => {
    expect(Object.keys(services)).toEqual(expect.arrayContaining(['gateway', 'prometheus', 'grafana']));
    for (const name of ['gateway', ...demo.map((d) => d.name!)]) {
      expect(services[name]?.build, name).toBe('.');
      expect(services[name]?.image, name).toBe('llm-edge-router:local');
    }
  });
});

describe('Dockerfile', () => {
  const df = read('Dockerfile');
  const lines = df.split('\n').filter((l) => !l.trim().startsWith('#'));
  const stages = lines.filter((l) => /^FROM /.test(l));

  it('builds in one stage and runs on node:22-slim with production dependencies only', () => {
    expect(stages).toHaveLength(2);
    expect(stages[0]).toMatch(/^FROM node:\S+ AS build$/);
    expect(stages[1]).toMatch(/^FROM node:22-slim AS runtime$/);
    const runtime = df.slice(df.indexOf(stages[1]!));
    expect(df.slice(0, df.indexOf(stages[1]!))).toMatch(/RUN npm ci[\s\S]*RUN npm run build/);
    expect(runtime).toContain('npm ci --omit=dev');
    expect(runtime).toContain('COPY --from=build /app/dist ./dist');
  });

  it('runs as a non-root user, with the config at /etc/llm-edge-router, a node HEALTHCHECK on /healthz, port 8080', () => {
    const user = lines.filter((l) => /^USER /.test(l)).at(-1);
    expect(user).toBeDefined();
    expect(user).not.toMatch(/^USER (root|0)\b/);
    expect(df).toContain('ENV LLM_ROUTER_CONFIG=/etc/llm-edge-router/gateway.yaml');
    expect(df).toMatch(/COPY \S+ \/etc\/llm-edge-router\/gateway\.yaml/);
    expect(df).toMatch(/^EXPOSE 8080$/m);
    expect(df).toMatch(/^ENTRYPOINT \["node", ?"dist\/main\.js"\]$/m);
    const hc = df.slice(df.indexOf('HEALTHCHECK'));
    expect(hc).toMatch(/CMD \["node", "-e", ".*\/healthz.*"\]/);
    expect(hc).not.toContain('curl');
  });

  it('the runtime stage has every package the built code imports (dependencies, not devDependencies)', () => {
    const pkg = JSON.parse(read('package.json')) as { dependencies: Record<string, string> };
    const files = (readdirSync(join(ROOT, 'src'), { recursive: true }) as string[]).filter((f) =>
      f.endsWith('.ts'),
    );
    const imported = new Set<string>();
    for (const f of files) {
      const text = read(join('src', f));
      for (const m of text.matchAll(/(?:from |import\(|import )'([^'./][^']*)'/g)) {
        const spec = m[1]!;
        if (spec.startsWith('node:') || builtinModules.includes(spec)) continue;
        imported.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!);
      }
    }
    expect(imported.size).toBeGreaterThan(5);
    for (const name of imported) expect(Object.keys(pkg.dependencies), name).toContain(name);
  });

  it('keeps the build context small', () => {
    const ignored = read('.dockerignore')
      .split('\n')
      .map((l) => l.trim());
    for (const p of ['node_modules', 'dist', '.git', 'test']) expect(ignored, p).toContain(p);
    for (const p of ['src', 'config', 'package.json', 'package-lock.json'])
      expect(ignored, p).not.toContain(p);
  });
});
