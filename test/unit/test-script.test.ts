/**
 * `npm test` is scripts/test.sh: `npm run checks` (tsc, eslint, prettier), then vitest. Run here with stand-ins
 * for npm and npx on PATH, so what is held is the script's own logic: the checks' output is shown when they
 * fail (and vitest is then not run), arguments reach vitest, and either failing fails the whole.
 */
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/cli-harness.js';

const dir = mkdtempSync(join(tmpdir(), 'test-script-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
mkdirSync(join(dir, 'scripts'));
mkdirSync(join(dir, 'bin'));
copyFileSync(join(REPO_ROOT, 'scripts/test.sh'), join(dir, 'scripts/test.sh'));
for (const [name, body] of [
  ['npm', 'echo "$*" > "$CHECKS_MARK"; echo "src/x.ts: 1 lint problem"; exit "${CHECKS_RC:-0}"'],
  ['npx', 'echo "vitest ran: $*"; exit "${TESTS_RC:-0}"'],
]) {
  writeFileSync(join(dir, 'bin', name!), `#!/usr/bin/env bash\n${body}\n`);
  chmodSync(join(dir, 'bin', name!), 0o755);
}

const MARK = join(dir, 'checks-ran');

function run(checks: number, tests: number, args: string[] = []): { code: number | null; out: string } {
  const r = spawnSync('bash', [join(dir, 'scripts/test.sh'), ...args], {
    env: {
      ...process.env,
      PATH: `${join(dir, 'bin')}:${process.env.PATH}`,
      CHECKS_RC: `${checks}`,
      TESTS_RC: `${tests}`,
      CHECKS_MARK: MARK,
    },
    encoding: 'utf8',
    timeout: 10_000,
  });
  return { code: r.status, out: r.stdout + r.stderr };
}

describe('scripts/test.sh', () => {
  it("runs the checks and vitest, with its arguments; passes when both pass, the checks' output held", () => {
    const r = run(0, 0, ['test/unit']);
    expect(r.code).toBe(0);
    expect(readFileSync(MARK, 'utf8').trim()).toBe('run -s checks');
    expect(r.out).toContain('vitest ran: vitest run test/unit');
    expect(r.out).toContain('checks passed');
    expect(r.out).not.toContain('lint problem');
  });

  it('fails when the checks fail, and shows what they said; fails when vitest fails', () => {
    const checks = run(1, 0);
    expect(checks.code).not.toBe(0);
    expect(checks.out).toContain('src/x.ts: 1 lint problem');
    expect(checks.out).toContain('checks FAILED');
    expect(checks.out).not.toContain('vitest ran');
    const tests = run(0, 1);
    expect(tests.code).not.toBe(0);
    expect(tests.out).toContain('checks passed');
    expect(run(1, 1).code).not.toBe(0);
  });
});
