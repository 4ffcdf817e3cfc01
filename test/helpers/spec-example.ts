import { readFileSync } from 'node:fs';

/**
 * SPEC §3's configuration example, as SPEC prints it (test/fixtures/spec-example.yaml): the audits that load
 * it whole fill in loopback URLs and the models it routes to without declaring them.
 */
export function specExample(): string {
  return readFileSync(new URL('../fixtures/spec-example.yaml', import.meta.url), 'utf8');
}
