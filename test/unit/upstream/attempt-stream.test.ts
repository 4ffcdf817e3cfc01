import { describe, expect, it } from 'vitest';
import { firstBytes } from '../../../src/upstream/attempt-stream.js';

/** How a streamed answer's form (SSE or one JSON answer) is told from its first bytes, whatever their writes. */
describe('firstBytes', () => {
  it('decides on the first byte that is not blank, after a whole byte order mark', () => {
    expect(firstBytes(undefined, Buffer.from('data: {}\n\n'))).toMatchObject({
      form: 'sse',
      held: undefined,
    });
    expect(firstBytes(undefined, Buffer.from('\uFEFF: ping\n\n'))).toMatchObject({ form: 'sse' });
    expect(firstBytes(undefined, Buffer.from('\uFEFF {"id":1}'))).toMatchObject({ form: 'json' });
    expect(firstBytes(undefined, Buffer.from('<html>'))).toMatchObject({ form: 'json' });
  });

  it('holds the first bytes of a byte order mark cut across writes, then reads them with the rest', () => {
    const bom = Buffer.from('\uFEFF');
    let step = firstBytes(undefined, bom.subarray(0, 1));
    expect(step).toMatchObject({ form: undefined, held: bom.subarray(0, 1) });
    step = firstBytes(step.held, bom.subarray(1, 2));
    expect(step.held).toEqual(bom.subarray(0, 2));
    step = firstBytes(step.held, Buffer.concat([bom.subarray(2), Buffer.from('data: x\n\n')]));
    expect(step).toMatchObject({ form: 'sse', held: undefined });
    expect(step.chunk.toString()).toBe('\uFEFFdata: x\n\n');
    // A lone 0xEF followed by anything else is not a mark: read as one JSON answer (it fails as malformed).
    expect(firstBytes(Buffer.from([0xef]), Buffer.from('{'))).toMatchObject({
      form: 'json',
      held: undefined,
    });
  });

  it('holds no blanks, however many come before the first field: the SSE parser takes them', () => {
    const blanks = Buffer.alloc(64 * 1024, 0x0a);
    let held: Buffer | undefined;
    for (let i = 0; i < 256; i++) {
      const step = firstBytes(held, blanks);
      expect(step.form).toBeUndefined();
      expect(step.chunk.length).toBe(blanks.length); // read now, not kept to be joined with the next write
      held = step.held;
      expect(held).toBeUndefined();
    }
  });
});
