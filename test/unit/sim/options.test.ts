import { describe, expect, it } from 'vitest';
import { parseSimArgs, resolveOptions } from '../../../src/sim/index.js';

describe('simulate flags', () => {
  it('parses every flag, in both --flag value and --flag=value forms', () => {
    expect(
      parseSimArgs([
        '--port',
        '8081',
        '--host=0.0.0.0',
        '--kind',
        'anthropic',
        '--name',
        'slow',
        '--latency-ms',
        '250',
        '--tokens-per-s=40',
        '--chunk-delay-ms',
        '5',
        '--completion-tokens',
        '16',
        '--fail-rate',
        '0.2',
        '--status',
        '529',
        '--retry-after',
        '2',
        '--hang',
        '--drop-after',
        '3',
        '--api-key',
        'k',
        '--fast',
      ]),
    ).toEqual({
      port: 8081,
      host: '0.0.0.0',
      kind: 'anthropic',
      name: 'slow',
      latencyMs: 250,
      tokensPerS: 40,
      chunkDelayMs: 5,
      completionTokens: 16,
      failRate: 0.2,
      status: 529,
      retryAfterS: 2,
      hang: true,
      dropAfterChunks: 3,
      apiKey: 'k',
      fast: true,
    });
  });

  it.each([
    [['--nope'], /unknown flag --nope/],
    [['--__proto__', 'x'], /unknown flag/],
    [['--port'], /--port needs a value/],
    [['--port', '70000'], /--port expects a port/],
    [['--fail-rate', '1.5'], /between 0 and 1/],
    [['--latency-ms', 'abc'], /non-negative number/],
    [['--completion-tokens', '2.5'], /integer/],
    [['--status', '200'], /HTTP error status/],
    [['--kind', 'gemini'], /openai or anthropic/],
    [['--hang=yes'], /takes no value/],
    [['stray'], /unexpected argument/],
  ])('rejects %j', (argv, message) => {
    expect(() => parseSimArgs(argv)).toThrow(message);
  });

  it('fills defaults and ignores undefined overrides', () => {
    expect(resolveOptions({ latencyMs: undefined, name: 'a' })).toMatchObject({
      kind: 'openai',
      name: 'a',
      latencyMs: 0,
      completionTokens: 8,
      usage: true,
      fast: false,
      hang: false,
    });
  });
});
