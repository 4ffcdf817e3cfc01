import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import {
  FdSink,
  LineBatcher,
  bufferDestination,
  lineStream,
  loggerOptions,
} from '../../../src/observability/logger.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function fileDestination(): { path: string; dest: ReturnType<typeof bufferDestination> } {
  const dir = mkdtempSync(join(tmpdir(), 'batcher-'));
  dirs.push(dir);
  const path = join(dir, 'out.log');
  return { path, dest: bufferDestination({ dest: path, sync: true, mkdir: true }) };
}

describe('LineBatcher', () => {
  it('holds short lines until ~8 KiB have gathered, then writes them in one go, in order, as UTF-8', () => {
    const { path, dest } = fileDestination();
    const b = new LineBatcher(dest);
    b.write('first ünï 😀\n');
    b.write('second\n');
    expect(readFileSync(path, 'utf8')).toBe('');
    const big = `${'x'.repeat(8200)}\n`;
    b.write(big);
    expect(readFileSync(path, 'utf8')).toBe(`first ünï 😀\nsecond\n${big}`);
    b.write('tail\n');
    b.flushSync();
    expect(readFileSync(path, 'utf8')).toBe(`first ünï 😀\nsecond\n${big}tail\n`);
    const huge = `${'é'.repeat(40_000)}\n`; // larger than the batcher's buffer: written on its own
    b.write('a\n');
    b.write(huge);
    b.flushSync();
    expect(readFileSync(path, 'utf8')).toBe(`first ünï 😀\nsecond\n${big}tail\na\n${huge}`);
  });

  it('writes straight from its buffer into a file descriptor, reusing the buffer batch after batch', () => {
    const { path } = fileDestination();
    const fd = openSync(path, 'w');
    try {
      const b = new LineBatcher(new FdSink(fd));
      const lines = Array.from({ length: 200 }, (_, i) => `{"n":${i},"pad":"${'é'.repeat(i)}"}\n`);
      for (const l of lines) b.write(l);
      b.flushSync();
      expect(readFileSync(path, 'utf8')).toBe(lines.join(''));
    } finally {
      closeSync(fd);
    }
  });

  it('is flushed by pino: lines from the logger and hand-built request lines share it and keep their order', () => {
    const { path, dest } = fileDestination();
    const logger = pino(loggerOptions('info'), new LineBatcher(dest));
    logger.warn('before');
    lineStream(logger).write('{"msg":"request"}\n');
    logger.child({}).info('after');
    logger.flush();
    const msgs = readFileSync(path, 'utf8')
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { msg: string }).msg);
    expect(msgs).toEqual(['before', 'request', 'after']);
  });
});
