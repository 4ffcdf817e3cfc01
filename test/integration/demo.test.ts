import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt, REPO_ROOT } from '../helpers/cli-harness.js';

/**
 * `npm run demo` as a newcomer runs it (the built `dist/demo.js`): three simulators on 9101-9103 and the
 * gateway, here on a free-ish port of its own so a developer's own demo on :8080 does not collide.
 */
describe('the demo', () => {
  const port = 18_000 + (process.pid % 1_000);
  let proc: ReturnType<typeof spawn> | undefined;
  let stderr = '';

  beforeAll(async () => {
    await ensureBuilt();
    proc = spawn(process.execPath, ['dist/demo.js'], {
      cwd: REPO_ROOT,
      // Its simulators on free ports: other tests run the demo side by side.
      env: { PATH: process.env.PATH ?? '', PORT: String(port), LOG_LEVEL: 'warn', DEMO_SIM_PORT: '0' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const deadline = Date.now() + 15_000;
    while (!stderr.includes('demo is up')) {
      if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`demo did not start:\n${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }, 120_000);

  afterAll(async () => {
    if (proc && proc.exitCode === null) {
      proc.kill('SIGINT');
      await once(proc, 'exit');
    }
  });

  it('serves a completion to a plain HTTP client, routed, and explains itself', async () => {
    const res = await request(`http://127.0.0.1:${port}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'fast', messages: [{ role: 'user', content: 'Hello!' }] }),
    });
    const body = (await res.body.json()) as { choices: { message: { content: string } }[] };
    expect(res.statusCode).toBe(200);
    expect(body.choices[0]!.message.content.length).toBeGreaterThan(0);
    expect(res.headers['x-router-provider']).toBeTruthy();
    const auto = await request(`http://127.0.0.1:${port}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'auto',
        messages: [{ role: 'user', content: 'Compare two sorting algorithms.' }],
      }),
    });
    expect(auto.statusCode).toBe(200);
    expect(auto.headers['x-router-tier']).toBeTruthy();
    await auto.body.dump();
  });
});

describe('the demo --help', () => {
  it('prints its usage and exits 0 without starting anything (it once started the demo on :8080)', async () => {
    await ensureBuilt();
    const proc = spawn(process.execPath, ['dist/demo.js', '--help'], {
      cwd: REPO_ROOT,
      env: { PATH: process.env.PATH ?? '', DEMO_SIM_PORT: '0', PORT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const [code] = (await once(proc, 'exit')) as [number | null];
    expect(code).toBe(0);
    expect(out).toMatch(/^usage: npm run demo/);
    expect(out).toContain('DEMO_SIM_PORT');
  }, 30_000);
});
