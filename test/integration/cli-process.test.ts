/**
 * The CLI as a process (SPEC §6 CLI; README "Configuration"): an empty or blank --port exits 2 with a
 * message; the config file is watched (a file saved with a UTF-8 BOM is not reloaded at start, a touch is no
 * change, an edit reloads once, and the watch's own poll stops on close); during a SIGTERM drain a second
 * Ctrl-C still exits at once, code 1; `--version` and `check` load none of the server. The CLI tests run the
 * built dist/main.js.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { watchConfig } from '../../src/config/watch.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { cliWorkDir, ensureBuilt, REPO_ROOT, startCli, type CliProcess } from '../helpers/cli-harness.js';
import { simConfigYaml } from '../helpers/gateway.js';
import { simFactories, sleep } from '../helpers/sim-gateways.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
const { sim } = simFactories(track);
const cliDir = cliWorkDir('cli-port');

describe('CLI --port (SPEC §6)', () => {
  it('an empty or blank --port exits 2 with a message (regression: Number("") is 0, a random port)', async () => {
    await ensureBuilt();
    const dir = cliDir();
    const path = join(dir, 'ok.yaml');
    writeFileSync(
      path,
      'providers: [{ name: p, base_url: "http://127.0.0.1:9/v1", models: [{ name: m }] }]\nroutes: { r: { targets: [p/m] } }\n',
    );
    for (const port of ['', ' ']) {
      const r = spawnSync(
        process.execPath,
        [join(REPO_ROOT, 'dist/main.js'), '--config', path, '--port', port],
        {
          encoding: 'utf8',
          timeout: 8_000,
        },
      );
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toContain('--port: expected a port number');
    }
  });
});

describe('what each command loads', () => {
  /** The modules `args` loads, as file paths under the repository, from a resolve hook registered before main. */
  function loadedModules(args: string[]): { status: number | null; stdout: string; modules: string[] } {
    const hook = `export async function resolve(s, c, next) { const r = await next(s, c); process._rawDebug('LOADED ' + r.url); return r; }`;
    const register = `import { register } from 'node:module'; register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(hook)}));`;
    const r = spawnSync(
      process.execPath,
      [
        '--import',
        `data:text/javascript,${encodeURIComponent(register)}`,
        join(REPO_ROOT, 'dist/main.js'),
        ...args,
      ],
      { encoding: 'utf8', timeout: 8_000 },
    );
    const modules = [...r.stderr.matchAll(/^LOADED (\S+)$/gm)].map((m) => m[1]!);
    return { status: r.status, stdout: r.stdout, modules };
  }

  it('--version and check load none of the server (fastify, undici): they answer in start-up time', async () => {
    await ensureBuilt();
    const version = loadedModules(['--version']);
    expect(version.status).toBe(0);
    expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
    // The hook sees main itself: it works, and nothing else is loaded for the version.
    expect(version.modules.some((m) => m.endsWith('/dist/main.js'))).toBe(true);
    expect(version.modules.filter((m) => m.includes('/node_modules/') || m.includes('/dist/app.js'))).toEqual(
      [],
    );

    const check = loadedModules(['check', '--config', join(REPO_ROOT, 'config/gateway.yaml')]);
    expect(check.status).toBe(0);
    expect(check.stdout).toContain(': ok');
    expect(check.modules.some((m) => m.includes('/node_modules/js-yaml/'))).toBe(true);
    expect(
      check.modules.filter((m) =>
        /\/node_modules\/(fastify|undici|pino|prom-client)\/|\/dist\/app\.js$/.test(m),
      ),
    ).toEqual([]);
  });
});

describe('config watch and the drain through the CLI', () => {
  const dir = cliWorkDir('cli-process');
  const reloads = (c: CliProcess) => c.logs.filter((l) => l.msg === 'config reloaded');
  const cli = async (path: string): Promise<CliProcess> => {
    const c = await startCli(path, ['--port', '0']);
    track({ close: () => c.kill() });
    return c;
  };

  it('a config file saved with a UTF-8 BOM is not reloaded at start for nothing', async () => {
    // The loader strips a leading BOM (Windows editors write one), the watch reads the file as it is: the
    // watch's check at start compares like with like, so an unchanged file is no "file changed" reload,
    // logged and counted though it never happened.
    const a = await sim('a');
    const path = join(dir(), 'bom.yaml');
    writeFileSync(path, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(simConfigYaml([a]))]));
    const c = await cli(path);
    await sleep(1_600); // the start check's debounce (250 ms) and a poll (1 s), with room
    expect(reloads(c).map((l) => l.why)).toEqual([]);
  }, 20_000);

  it('a touch (mtime only) does not reload; a content change reloads once', async () => {
    const a = await sim('a');
    const path = join(dir(), 'touch.yaml');
    const text = simConfigYaml([a]);
    writeFileSync(path, text);
    const c = await cli(path);
    await sleep(500);
    const later = new Date(Date.now() + 10_000);
    utimesSync(path, later, later);
    await sleep(1_800);
    expect(reloads(c)).toHaveLength(0);
    writeFileSync(path, `${text}\n# edited\n`);
    await until('one reload', () => reloads(c).length === 1, 5_000);
    await sleep(1_300);
    expect(reloads(c)).toHaveLength(1);
    expect(reloads(c)[0]!.why).toBe('file changed');
  }, 20_000);

  it('during a SIGTERM drain a second Ctrl-C (SIGINT) still exits at once, code 1', async () => {
    const a = await sim('a', { tokensPerS: 5, completionTokens: 60 }); // a ~12 s stream
    const path = join(dir(), 'sigint.yaml');
    writeFileSync(path, simConfigYaml([a], { shutdownGraceMs: 20_000 }));
    const c = await cli(path);
    const res = await request(`${c.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'main', stream: true, messages: [{ role: 'user', content: 'hi' }] }),
      headersTimeout: 10_000,
      bodyTimeout: 20_000,
    });
    expect(res.statusCode).toBe(200);
    let text = '';
    const body = (async () => {
      try {
        for await (const chunk of res.body) text += (chunk as Buffer).toString();
      } catch {
        /* cut: expected */
      }
    })();
    await until('the first content', () => text.includes('"content"'), 5_000);
    c.proc.kill('SIGTERM');
    await c.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('draining'), 5_000);
    c.proc.kill('SIGTERM'); // ignored
    await sleep(200);
    expect(c.proc.exitCode).toBeNull();
    c.proc.kill('SIGINT');
    const code = await Promise.race([c.exited, sleep(5_000).then(() => 'still running')]);
    expect(code).toBe(1);
    await body;
  }, 30_000);
});

describe('the config watch’s own poll', () => {
  it('an in-place edit is seen once; after close() no edit calls back (interval and debounce gone)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cli-process-'));
    track({ close: () => rmSync(dir, { recursive: true, force: true }) });
    const path = join(dir, 'c.yaml');
    writeFileSync(path, 'a: 1\n');
    let calls = 0;
    const w = watchConfig(path, () => calls++, { debounceMs: 20, pollMs: 30 });
    track({ close: () => w.close() });
    writeFileSync(path, 'a: 2\n'); // same size
    await until('one change', () => calls === 1, 3_000);
    await sleep(200);
    expect(calls).toBe(1);
    writeFileSync(path, 'a: 3\n');
    w.close(); // before the poll or the debounce could fire
    await sleep(300);
    writeFileSync(path, 'a: 44\n');
    await sleep(300);
    expect(calls).toBe(1);
  });
});
