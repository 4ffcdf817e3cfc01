/**
 * Container-operations audit (SPEC §3 reload, §6 CLI/Docker, §8 config; README Operations and Docker), run
 * against the built CLI as a real process: how the config file reaches a gateway in a container (a
 * Kubernetes ConfigMap volume, a Docker single-file bind mount, a symlinked or replaced directory), how
 * editors and tools replace it, and the signals an orchestrator sends.
 */
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { REPO_ROOT, cliWorkDir, startCli, type CliProcess } from '../helpers/cli-harness.js';
import { parseProm, value } from '../helpers/prom-text.js';
import { spawnTracked } from '../helpers/tracked-process.js';

const track = closeAfterEach();
const workDir = cliWorkDir('audit-cops');
let dirs = 0;

// ---------------------------------------------------------------------------------------------------
// helpers

/** A fresh directory under this file's work directory. */
function freshDir(name = 'd'): string {
  const d = join(workDir(), `${name}${++dirs}`);
  mkdirSync(d, { recursive: true });
  return d;
}

const STACK = /\n\s+at .+(:\d+:\d+|\(node:)/;

async function sim(name: string, o: Parameters<typeof startSimulator>[0] = {}): Promise<Simulator> {
  return track(await startSimulator({ name, ...o }));
}

async function cli(path: string, args: string[] = [], env: Record<string, string> = {}): Promise<CliProcess> {
  const c = await startCli(path, ['--port', '0', ...args], env);
  track({ close: () => c.kill() });
  return c;
}

interface Launched {
  proc: ChildProcess;
  url: string;
  logs: Record<string, unknown>[];
  stderr(): string;
  exited: Promise<number | string>;
}

/**
 * Like startCli, for a command line startCli cannot give: no --config (LLM_ROUTER_CONFIG), another working
 * directory, or the gateway exec'd by a wrapper (unshare + mount). Killed after the test.
 */
async function launch(
  cmd: string,
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string } = {},
): Promise<Launched> {
  const { proc, exited } = spawnTracked(track, cmd, args, { cwd: opts.cwd ?? REPO_ROOT, env: opts.env });
  const logs: Record<string, unknown>[] = [];
  let partial = '';
  let err = '';
  proc.stdout?.on('data', (d: Buffer) => {
    partial += d.toString();
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      if (line.trim() === '') continue;
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        logs.push({ msg: line, unparsed: true });
      }
    }
  });
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const deadline = Date.now() + 10_000;
  let url: string | undefined;
  while (url === undefined) {
    const l = logs.find((x) => typeof x.msg === 'string' && x.msg.startsWith('Server listening at '));
    if (l) url = String(l.msg).slice('Server listening at '.length);
    else if (proc.exitCode !== null || proc.signalCode !== null)
      throw new Error(`gateway exited (${proc.exitCode ?? proc.signalCode}) before listening: ${err}`);
    else if (Date.now() > deadline) throw new Error(`gateway never listened: ${err}`);
    else await sleep(25);
  }
  return { proc, url, logs, stderr: () => err, exited };
}

type Proc = Pick<Launched, 'logs' | 'url' | 'proc' | 'stderr'>;

async function getText(url: string): Promise<{ code: number; text: string }> {
  const res = await request(url, { headersTimeout: 5_000, bodyTimeout: 5_000 });
  return { code: res.statusCode, text: await res.body.text() };
}

/** The ids `GET /v1/models` lists: which config is live. */
async function models(base: string): Promise<string[]> {
  const { code, text } = await getText(`${base}/v1/models`);
  if (code !== 200) throw new Error(`/v1/models: ${code} ${text}`);
  return (JSON.parse(text) as { data: { id: string }[] }).data.map((m) => m.id);
}

async function metric(base: string, result: 'success' | 'failure'): Promise<number> {
  const m = parseProm((await getText(`${base}/metrics`)).text);
  return value(m, 'llm_router_config_reloads_total', { result }) ?? 0;
}

async function until(what: string, fn: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

/** Waits until `/v1/models` lists `route` (the config naming it is live). */
const live = (c: Proc, route: string, timeoutMs = 5_000) =>
  until(`route "${route}" to go live`, async () => (await models(c.url)).includes(route), timeoutMs);

const reloads = (c: Proc) => c.logs.filter((l) => l.msg === 'config reloaded').length;
const rejections = (c: Proc) =>
  c.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('config reload rejected'));

/** A valid config whose only route is `route` (its upstream is never called unless `sims` are given). */
function conf(route: string, opts: { sims?: Simulator[]; target?: string; extra?: string[] } = {}): string {
  const sims = opts.sims ?? [];
  const providers =
    sims.length > 0
      ? sims.map((s) => `  - { name: ${s.options.name}, base_url: "${s.url}/v1", models: [{ name: m }] }`)
      : ['  - { name: a, base_url: "http://127.0.0.1:1/v1", models: [{ name: m }] }'];
  const target = opts.target ?? (sims.length > 0 ? `${sims[0]!.options.name}/m` : 'a/m');
  return [
    'server: { host: 127.0.0.1, port: 0, shutdown_grace_ms: 5000 }',
    'providers:',
    ...providers,
    'routes:',
    `  ${route}: { strategy: priority, targets: [${target}] }`,
    ...(opts.extra ?? []),
  ].join('\n');
}

/** `text` as gateway.yaml in a fresh directory `name`, and the CLI on it (with `args` and `env`). */
async function cliOnFile(
  name: string,
  text: string,
  args: string[] = [],
  env: Record<string, string> = {},
): Promise<{ path: string; c: CliProcess }> {
  const path = join(freshDir(name), 'gateway.yaml');
  writeFileSync(path, text);
  return { path, c: await cli(path, args, env) };
}

interface Chat {
  status: number;
  provider: string | undefined;
  text: string;
}

async function chat(base: string, model: string, stream = false): Promise<Chat> {
  const res = await request(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, stream, messages: [{ role: 'user', content: 'hi' }] }),
    headersTimeout: 15_000,
    bodyTimeout: 15_000,
  });
  const p = res.headers['x-router-provider'];
  return { status: res.statusCode, provider: Array.isArray(p) ? p[0] : p, text: await res.body.text() };
}

/** A ConfigMap volume as the kubelet's atomic writer lays it out and updates it. */
class ConfigMapVolume {
  private n = 0;
  private current: string | undefined;
  constructor(readonly dir: string) {}

  /** First projection: `..TS/gateway.yaml`, `..data -> ..TS`, `gateway.yaml -> ..data/gateway.yaml`. */
  init(text: string): string {
    const ts = this.writeTs(text);
    symlinkSync(ts, join(this.dir, '..data'));
    symlinkSync(join('..data', 'gateway.yaml'), join(this.dir, 'gateway.yaml'));
    this.current = ts;
    return join(this.dir, 'gateway.yaml');
  }

  /** An update: a new timestamped dir, `..data_tmp` renamed over `..data`, the old dir removed. */
  update(text: string): void {
    const ts = this.writeTs(text);
    symlinkSync(ts, join(this.dir, '..data_tmp'));
    renameSync(join(this.dir, '..data_tmp'), join(this.dir, '..data'));
    if (this.current !== undefined) rmSync(join(this.dir, this.current), { recursive: true, force: true });
    this.current = ts;
  }

  private writeTs(text: string): string {
    const ts = `..2025_01_0${++this.n}_12_00_00.${100000000 + this.n}`;
    mkdirSync(join(this.dir, ts));
    writeFileSync(join(this.dir, ts, 'gateway.yaml'), text);
    return ts;
  }
}

/** Whether this machine lets us make a private mount namespace and bind-mount a file (root, Linux). */
function canBindMount(): boolean {
  try {
    const d = freshDir('probe');
    writeFileSync(join(d, 'a'), 'x');
    writeFileSync(join(d, 'b'), '');
    const r = spawnSync('unshare', ['-m', 'sh', '-c', `mount --bind "${d}/a" "${d}/b" && cat "${d}/b"`], {
      encoding: 'utf8',
      timeout: 5_000,
    });
    return r.status === 0 && r.stdout === 'x';
  } catch {
    return false;
  }
}

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

// ---------------------------------------------------------------------------------------------------

describe('a Kubernetes ConfigMap volume (..data symlink swapped by the kubelet)', () => {
  it('reloads on its own after each of several swaps; an invalid one in between is rejected and counted, the old keeps serving', async () => {
    const vol = new ConfigMapVolume(freshDir('cm'));
    const path = vol.init(conf('v1'));
    const c = await cli(path);
    expect(await models(c.url)).toContain('v1');

    vol.update(conf('v2'));
    await live(c, 'v2', 6_000);
    vol.update(conf('v3'));
    await live(c, 'v3', 6_000);

    // A broken update (a typo in a key): rejected with its YAML path, counted; v3 keeps serving.
    vol.update(conf('v4').replace('strategy: priority', 'strategyy: priority'));
    await until('the rejection', () => rejections(c).length >= 1, 6_000);
    expect(String(rejections(c)[0]!.error)).toContain('routes.v4.strategyy');
    expect(await models(c.url)).toContain('v3');
    expect(await metric(c.url, 'failure')).toBeGreaterThanOrEqual(1);

    vol.update(conf('v5'));
    await live(c, 'v5', 6_000);
    const ids = await models(c.url);
    expect(ids).not.toContain('v3');
    expect(ids).not.toContain('v4');
    expect(await metric(c.url, 'success')).toBeGreaterThanOrEqual(3);
    expect(c.proc.exitCode).toBeNull();
    expect(c.stderr()).not.toMatch(STACK);
  }, 40_000);
});

describe('tools that replace or rewrite the file', () => {
  it('sed -i (temp file renamed over) and a vim-style save (original renamed to a backup, new file written) both reload', async () => {
    const dir = freshDir('ed');
    const path = join(dir, 'gateway.yaml');
    writeFileSync(path, conf('s1'));
    const c = await cli(path);

    execFileSync('sed', ['-i', 's/s1:/s2:/', path]);
    await live(c, 's2', 6_000);

    // vim (backupcopy=auto): a probe file 4913, then gateway.yaml -> gateway.yaml~, a new gateway.yaml
    // created and written, the backup deleted.
    writeFileSync(join(dir, '4913'), '');
    unlinkSync(join(dir, '4913'));
    renameSync(path, `${path}~`);
    const fd = openSync(path, 'w');
    writeSync(fd, conf('s3'));
    closeSync(fd);
    unlinkSync(`${path}~`);
    await live(c, 's3', 6_000);
    expect(await models(c.url)).not.toContain('s2');
    expect(rejections(c)).toEqual([]);
  }, 30_000);

  it('truncate, then a partial write, a pause, then the rest: the partial file is rejected (old serving meanwhile), then the whole one applies', async () => {
    const { path, c } = await cliOnFile('tr', conf('t1'));
    const next = conf('t2');
    const cut = next.indexOf('strategy: prio'); // mid-line in the route: not valid YAML on its own
    const fd = openSync(path, 'r+');
    ftruncateSync(fd, 0);
    writeSync(fd, next.slice(0, cut), 0);
    await sleep(1_200); // well past the debounce: the partial file is read
    await until('the partial file to be rejected', () => rejections(c).length >= 1, 4_000);
    expect(await models(c.url)).toContain('t1');
    expect((await getText(`${c.url}/readyz`)).code).toBe(200);
    writeSync(fd, next.slice(cut), cut);
    closeSync(fd);
    await live(c, 't2', 6_000);
    expect(await models(c.url)).not.toContain('t1');
    expect(await metric(c.url, 'failure')).toBeGreaterThanOrEqual(1);
    expect(await metric(c.url, 'success')).toBeGreaterThanOrEqual(1);
  }, 30_000);

  it('deleted (a SIGHUP meanwhile is a rejected reload, the old serves), then recreated: picked up by the watch', async () => {
    const { path, c } = await cliOnFile('del', conf('d1'));
    unlinkSync(path);
    await sleep(500);
    c.proc.kill('SIGHUP');
    await until('the SIGHUP rejection', () => rejections(c).length >= 1, 4_000);
    expect(String(rejections(c)[0]!.error)).toContain(path);
    expect(String(rejections(c)[0]!.error)).toContain('ENOENT');
    expect(await models(c.url)).toContain('d1');
    await sleep(700);
    writeFileSync(path, conf('d2'));
    await live(c, 'd2', 6_000);
    expect(c.proc.exitCode).toBeNull();
    expect(c.stderr()).not.toMatch(STACK);
  }, 30_000);

  it('20 edits within one second: debounced to a few reloads, ends on the last version, requests meanwhile all served', async () => {
    const a = await sim('a');
    const { path, c } = await cliOnFile(
      'burst',
      conf('e0', { sims: [a], extra: ['  main: { targets: [a/m] }'] }),
    );
    let stop = false;
    const results: Chat[] = [];
    const traffic = (async () => {
      while (!stop) results.push(await chat(c.url, 'main'));
    })();
    for (let i = 1; i <= 20; i++) {
      writeFileSync(path, conf(`e${i}`, { sims: [a], extra: ['  main: { targets: [a/m] }'] }));
      await sleep(50);
    }
    await live(c, 'e20', 6_000);
    await sleep(800); // any reload still pending
    stop = true;
    await traffic;
    const ids = await models(c.url);
    expect(ids).toContain('e20');
    expect(ids.filter((id) => /^e\d+$/.test(id))).toEqual(['e20']);
    expect(reloads(c)).toBeGreaterThanOrEqual(1);
    expect(reloads(c)).toBeLessThanOrEqual(8);
    expect(results.length).toBeGreaterThan(0);
    expect(results.filter((r) => r.status !== 200).map((r) => `${r.status} ${r.text.slice(0, 200)}`)).toEqual(
      [],
    );
    expect(c.proc.exitCode).toBeNull();
  }, 30_000);
});

describe('where the file lives: the directory replaced, symlinks, a Docker single-file bind mount', () => {
  it('the config directory itself replaced (old kept as a backup, a new one moved into its place): the new file is picked up, and edits to it after', async () => {
    const parent = freshDir('dirswap');
    const dir = join(parent, 'conf');
    mkdirSync(dir);
    const path = join(dir, 'gateway.yaml');
    writeFileSync(path, conf('r1'));
    const c = await cli(path);
    const staged = join(parent, 'conf.new');
    mkdirSync(staged);
    writeFileSync(join(staged, 'gateway.yaml'), conf('r2'));
    renameSync(dir, join(parent, 'conf.bak'));
    renameSync(staged, dir);
    await live(c, 'r2', 5_000);
    writeFileSync(path, conf('r3')); // an edit in the directory now at the path
    await live(c, 'r3', 5_000);
  }, 30_000);

  it('a release-style directory symlink (conf -> releases/N) swapped atomically to a new release: the new file is picked up', async () => {
    const parent = freshDir('rel');
    mkdirSync(join(parent, 'releases', '1'), { recursive: true });
    writeFileSync(join(parent, 'releases', '1', 'gateway.yaml'), conf('k1'));
    symlinkSync(join('releases', '1'), join(parent, 'current'));
    const c = await cli(join(parent, 'current', 'gateway.yaml'));
    mkdirSync(join(parent, 'releases', '2'));
    writeFileSync(join(parent, 'releases', '2', 'gateway.yaml'), conf('k2'));
    symlinkSync(join('releases', '2'), join(parent, 'current.tmp'));
    renameSync(join(parent, 'current.tmp'), join(parent, 'current'));
    await live(c, 'k2', 5_000);
  }, 30_000);

  it('the config path is a symlink to a file in another directory; that file edited in place: reloaded', async () => {
    const real = join(freshDir('target'), 'gw.yaml');
    writeFileSync(real, conf('l1'));
    const path = join(freshDir('etc'), 'gateway.yaml');
    symlinkSync(real, path);
    const c = await cli(path);
    writeFileSync(real, conf('l2'));
    await live(c, 'l2', 5_000);
  }, 30_000);

  it('a Docker single-file bind mount (docker-compose.yml mounts gateway.yaml so), edited in place on the host: reloaded', async (ctx) => {
    if (!canBindMount()) ctx.skip();
    const host = join(freshDir('host'), 'gateway.yaml');
    writeFileSync(host, conf('b1'));
    const ctrDir = freshDir('ctr');
    const inCtr = join(ctrDir, 'gateway.yaml');
    writeFileSync(inCtr, '# the image default, mounted over\n');
    // The gateway in its own mount namespace, as in a container: the host's file bind-mounted over the
    // image's, as `-v ./gateway.yaml:/etc/llm-edge-router/gateway.yaml:ro` does.
    const c = await launch(
      'unshare',
      [
        '-m',
        'sh',
        '-c',
        `mount --bind "${host}" "${inCtr}" && exec "${process.execPath}" dist/main.js --port 0`,
      ],
      { env: { LLM_ROUTER_CONFIG: inCtr } },
    );
    expect(await models(c.url)).toContain('b1');
    writeFileSync(host, conf('b2')); // in place: the mounted inode's content changes
    await live(c, 'b2', 5_000);
  }, 30_000);
  it('an update that lands just after the startup read (before the watch is up) is not lost: the next event on the file brings it in', async () => {
    // A ConfigMap update during a rolling restart: the kubelet swaps the file between the gateway reading
    // it and the watcher starting. A preload makes that window deterministic: right after the loader closes
    // the config file, the next version is written over it.
    const dir = freshDir('race');
    const path = join(dir, 'gateway.yaml');
    writeFileSync(path, conf('q1'));
    writeFileSync(join(dir, 'next.yaml'), conf('q2'));
    const preload = join(dir, 'race.mjs');
    writeFileSync(
      preload,
      [
        "import fs from 'node:fs';",
        "import { syncBuiltinESMExports } from 'node:module';",
        `const target = ${JSON.stringify(path)};`,
        `const next = fs.readFileSync(${JSON.stringify(join(dir, 'next.yaml'))}, 'utf8');`,
        'let fdOf = -1; let done = false;',
        'const open = fs.openSync; const close = fs.closeSync;',
        'fs.openSync = function (p, ...rest) { const fd = open.call(this, p, ...rest); if (!done && p === target) fdOf = fd; return fd; };',
        'fs.closeSync = function (fd) { close.call(this, fd); if (!done && fd === fdOf) { done = true; fs.writeFileSync(target, next); } };',
        'syncBuiltinESMExports();',
      ].join('\n'),
    );
    const c = await startCli(path, ['--port', '0'], {}, ['--import', preload]);
    track({ close: () => c.kill() });
    expect(await models(c.url)).toContain('q1'); // what was read at start
    expect(readFileSync(path, 'utf8')).toContain('q2:'); // and the file on disk is the next version
    // Any later event on the file (here a touch, as a kubelet resync or an operator might) must bring the
    // gateway to what the file says.
    await sleep(300);
    const t = new Date();
    utimesSync(path, t, t);
    await live(c, 'q2', 5_000);
  }, 30_000);
});

describe('Docker-like runs', () => {
  it('LLM_ROUTER_CONFIG (relative, no --config) from a read-only file in a read-only directory: file watch and SIGHUP both reload', async () => {
    const dir = freshDir('etc-ro');
    const path = join(dir, 'gateway.yaml');
    writeFileSync(path, conf('o1'));
    chmodSync(path, 0o444);
    chmodSync(dir, 0o555);
    // Modes do not bind root: as root, the gateway runs as nobody, for which the file and directory are read-only
    // (when nobody can read the checkout at all: a clone under a private home is not, and there it runs as root).
    const nobody = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', process.execPath];
    const readable = (p: string) =>
      spawnSync(nobody[0]!, [...nobody.slice(1), '-e', 'require("node:fs").readFileSync(process.argv[1])', p])
        .status === 0;
    const asRoot = process.getuid?.() === 0;
    if (asRoot) chmodSync(workDir(), 0o755);
    const user = asRoot && readable(join(REPO_ROOT, 'dist/main.js')) ? nobody : [process.execPath];
    try {
      if (user === nobody) {
        // The fault is real: the gateway's user cannot write there.
        const write = spawnSync(user[0]!, [
          ...user.slice(1),
          '-e',
          'require("node:fs").writeFileSync(process.argv[1], "x")',
          join(dir, 'probe'),
        ]);
        expect(write.status, 'a write into the read-only directory as the gateway user').not.toBe(0);
        expect(String(write.stderr)).toContain('EACCES');
      }
      const c = await launch(user[0]!, [...user.slice(1), join(REPO_ROOT, 'dist/main.js'), '--port', '0'], {
        env: { LLM_ROUTER_CONFIG: 'gateway.yaml' },
        cwd: dir,
      });
      if (user === nobody)
        expect(readFileSync(`/proc/${c.proc.pid}/status`, 'utf8')).toMatch(/^Uid:\s+65534\s/m);
      expect(await models(c.url)).toContain('o1');
      // The operator (root, or the host through the mount) replaces the content.
      chmodSync(path, 0o644);
      writeFileSync(path, conf('o2'));
      chmodSync(path, 0o444);
      await live(c, 'o2', 6_000);
      await until('the reload line', () => reloads(c) >= 1, 3_000); // lines are batched
      const line = c.logs.find((l) => l.msg === 'config reloaded');
      expect(line?.why).toBe('file changed');
      chmodSync(path, 0o644);
      writeFileSync(path, conf('o3').replace('strategy: priority', 'strategy: fastest'));
      chmodSync(path, 0o444);
      await until('the file-change rejection', () => rejections(c).length >= 1, 6_000);
      c.proc.kill('SIGHUP');
      await until('the SIGHUP rejection', () => rejections(c).length >= 2, 6_000);
      const last = rejections(c).at(-1)!;
      expect(last.why).toBe('SIGHUP');
      expect(last.level).toBe(50);
      expect(String(last.error)).toContain('routes.o3.strategy');
      expect(await models(c.url)).toContain('o2');
      expect(await metric(c.url, 'failure')).toBeGreaterThanOrEqual(2);
      expect(c.proc.exitCode).toBeNull();
      expect(c.stderr()).toBe('');
    } finally {
      chmodSync(dir, 0o755);
      chmodSync(path, 0o644);
    }
  }, 30_000);

  it('a storm of SIGHUPs (configs alternating) while streams and JSON requests run: none fails, and no descriptor leaks', async () => {
    const a = await sim('a', { tokensPerS: 40, completionTokens: 20 });
    const b = await sim('b', { tokensPerS: 40, completionTokens: 20 });
    const version = (i: number) =>
      conf(`h${i}`, {
        sims: [a, b],
        extra: [`  main: { strategy: priority, targets: [${i % 2 ? 'b/m' : 'a/m'}] }`],
      });
    const { path, c } = await cliOnFile('hup', version(0));
    const pid = c.proc.pid!;
    const traffic = async (rounds: number) => {
      const out: Chat[] = [];
      await Promise.all(
        Array.from({ length: 4 }, async (_x, k) => {
          for (let i = 0; i < rounds; i++) out.push(await chat(c.url, 'main', k % 2 === 0));
        }),
      );
      return out;
    };
    // Warm up both upstreams' pools and the client's connections.
    await traffic(1);
    writeFileSync(path, version(1));
    c.proc.kill('SIGHUP');
    await live(c, 'h1');
    await traffic(1);
    await sleep(500);
    const before = fdCount(pid);

    let stop = false;
    const storm = (async () => {
      for (let i = 2; i < 32 && !stop; i++) {
        writeFileSync(path, version(i));
        c.proc.kill('SIGHUP');
        await sleep(40);
      }
    })();
    const results = await traffic(6);
    stop = true;
    await storm;
    const bad = results.filter(
      (r) => r.status !== 200 || (r.text.startsWith('data:') && !r.text.includes('[DONE]')),
    );
    expect(bad.map((r) => `${r.status} ${r.text.slice(-200)}`)).toEqual([]);
    expect(c.proc.exitCode).toBeNull();
    await sleep(1_500); // old configs retired
    await traffic(1);
    const after = fdCount(pid);
    expect(after, `fds before ${before}, after ${after}`).toBeLessThanOrEqual(before + 12);
  }, 60_000);

  it("two SIGTERMs (a process-group signal plus a forwarder's copy) while a stream runs: the drain goes on, the stream completes, exit 0", async () => {
    const a = await sim('a', { tokensPerS: 10, completionTokens: 15 });
    const { c } = await cliOnFile('term2', conf('main', { sims: [a] }));
    const res = await request(`${c.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'main', stream: true, messages: [{ role: 'user', content: 'hi' }] }),
      headersTimeout: 10_000,
      bodyTimeout: 10_000,
    });
    expect(res.statusCode).toBe(200);
    let text = '';
    const body = (async () => {
      try {
        for await (const chunk of res.body) text += (chunk as Buffer).toString();
        return 'ended';
      } catch (e) {
        return `error: ${(e as Error).message}`;
      }
    })();
    await until('the first content', () => text.includes('"content"'), 5_000);
    c.proc.kill('SIGTERM');
    await sleep(100);
    c.proc.kill('SIGTERM');
    const code = await Promise.race([c.exited, sleep(12_000).then(() => 'still running')]);
    const how = await body;
    expect({ code, how, done: text.includes('data: [DONE]') }).toEqual({ code: 0, how: 'ended', done: true });
    expect(c.stderr()).not.toMatch(STACK);
  }, 30_000);

  it('SIGTERM on an idle gateway exits 0 promptly, saying it drains; SIGINT likewise', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const { c } = await cliOnFile('idle', conf('main'));
      const t0 = Date.now();
      c.proc.kill(signal);
      const code = await Promise.race([c.exited, sleep(8_000).then(() => 'still running')]);
      expect({ signal, code }).toEqual({ signal, code: 0 });
      expect(Date.now() - t0).toBeLessThan(3_000);
      expect(c.logs.some((l) => typeof l.msg === 'string' && l.msg.startsWith('draining'))).toBe(true);
      expect(c.stderr()).toBe('');
    }
  }, 30_000);
});

describe('${VAR} in a reloaded file', () => {
  it('env is read at reload: a new ${VAR} key is used, an unset one is rejected naming path and variable; old and new keys never reach a log line', async () => {
    const OLD = 'sk-old-0123456789abcdef';
    const NEW = 'sk-new-9876543210fedcba';
    const up = await sim('a', { latencyMs: 1_200, status: 400, echoAuthInError: true });
    const withKey = (route: string, ref: string) =>
      conf(route, { sims: [up] }).replace(
        `base_url: "${up.url}/v1",`,
        `base_url: "${up.url}/v1", api_key: "${ref}",`,
      );
    const { path, c } = await cliOnFile('env', withKey('x1', '${OLD_KEY}'), [], {
      OLD_KEY: OLD,
      NEW_KEY: NEW,
    });

    // A request begun on the old key, still waiting on its upstream while the key rotates.
    const inFlight = chat(c.url, 'x1');
    await up.waitForRequests(1, 5_000);
    writeFileSync(path, withKey('x2', '${NEW_KEY}'));
    c.proc.kill('SIGHUP');
    await live(c, 'x2', 6_000);
    const first = await inFlight;
    expect(first.status).toBe(400);
    expect(up.requests[0]!.headers.authorization).toBe(`Bearer ${OLD}`);

    const second = await chat(c.url, 'x2');
    expect(second.status).toBe(400);
    expect(up.requests.at(-1)!.headers.authorization).toBe(`Bearer ${NEW}`);

    // An unset variable: rejected, naming the path and the variable; x2 keeps serving.
    writeFileSync(
      path,
      withKey('x3', '${NOT_SET_ANYWHERE}').replace(
        'api_key:',
        'headers: { x-k: "${NOT_SET_ANYWHERE}" }, api_key:',
      ),
    );
    c.proc.kill('SIGHUP');
    await until('the rejection', () => rejections(c).length >= 1, 6_000);
    const err = String(rejections(c).at(-1)!.error);
    expect(err).toContain('NOT_SET_ANYWHERE');
    expect(err).toContain('providers[0].headers.x-k');
    expect(await models(c.url)).toContain('x2');

    await sleep(400); // the batched log lines flushed
    const out = JSON.stringify(c.logs) + c.stderr();
    for (const [name, s] of [
      ['old key', OLD],
      ['new key', NEW],
    ] as const) {
      expect(first.text.includes(s), `${name} in the first answer`).toBe(false);
      expect(second.text.includes(s), `${name} in the second answer`).toBe(false);
      expect(out.includes(s), `${name} in a log line`).toBe(false);
    }
  }, 40_000);
});
