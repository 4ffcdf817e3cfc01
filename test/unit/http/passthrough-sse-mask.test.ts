/**
 * sseDeltaMask: a passthrough event stream's `*.delta` events are read for a secret spelt across them; every
 * event goes on byte for byte unless its delta changed, whatever the framing (CRLF, events split across
 * writes, comments); what a channel held back when it ends goes as a `[REDACTED]` event like its last delta.
 */
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { describe, expect, it } from 'vitest';
import { sseDeltaMask } from '../../../src/http/passthrough-sse-mask.js';
import { secretForms, Scrubber } from '../../../src/observability/scrub.js';
import { heldForms } from '../../../src/streaming/delta-mask.js';

const KEY = 'sk-pt-Zq8Wm2Lx7Rv4';

function delta(d: string, item = 'msg_1', n = 0): string {
  return `event: response.output_text.delta\ndata: ${JSON.stringify({ type: 'response.output_text.delta', item_id: item, output_index: 0, content_index: 0, delta: d, sequence_number: n })}\n\n`;
}

/** `body` written in pieces of `size` bytes through the mask; what comes out. */
async function through(body: string, size = 7): Promise<string> {
  const bytes = Buffer.from(body);
  const pieces: Buffer[] = [];
  for (let at = 0; at < bytes.length; at += size) pieces.push(bytes.subarray(at, at + size));
  const scrubber = new Scrubber([KEY]);
  return text(
    Readable.from(pieces).pipe(sseDeltaMask(heldForms(secretForms([KEY])), (t) => scrubber.scrub(t, true))),
  );
}

/** The `delta` of every delta event in `sse`, joined. */
function joined(sse: string): string {
  let out = '';
  for (const line of sse.split(/\r?\n/))
    if (line.startsWith('data: ')) {
      const obj = JSON.parse(line.slice(6)) as { delta?: unknown };
      if (typeof obj.delta === 'string') out += obj.delta;
    }
  return out;
}

describe('sseDeltaMask', () => {
  it('a key spelt 3 characters an event, written 7 bytes at a time, is masked in the joined text', async () => {
    const answer = `key=${KEY};`;
    let body = '';
    for (let at = 0; at < answer.length; at += 3) body += delta(answer.slice(at, at + 3));
    const out = await through(body);
    expect(joined(out)).toMatch(/^key=(s|sk|sk-)?\[REDACTED\];$/);
  });

  it('CRLF framing, comments and other events go on byte for byte when nothing is held', async () => {
    const body =
      ': keep-alive\r\n\r\n' +
      delta('plain text ').replaceAll('\n', '\r\n') +
      'event: response.completed\r\ndata: {"type":"response.completed"}\r\n\r\n';
    expect(await through(body, 5)).toBe(body);
  });

  it('CR-only and CRLF framing written a byte at a time come out byte for byte', async () => {
    const cr = delta('one ').replaceAll('\n', '\r') + delta('two').replaceAll('\n', '\r\n');
    expect(await through(cr, 1)).toBe(cr);
  });

  it('a channel that ends holding the start of the key sends [REDACTED] in an event like its last delta', async () => {
    const body = `${delta('the key: ')}${delta(KEY.slice(0, 8))}event: response.output_text.done\ndata: {"type":"response.output_text.done"}\n\n`;
    const out = await through(body);
    expect(joined(out)).toBe('the key: [REDACTED]');
    expect(out.indexOf('[REDACTED]')).toBeLessThan(out.indexOf('response.output_text.done"'));
    // At the stream's end too.
    expect(joined(await through(`${delta('x ')}${delta(KEY.slice(0, 9))}`))).toBe('x [REDACTED]');
    // Fewer than 8 characters held go as written: a word a key starts with, not the key.
    expect(joined(await through(`${delta('x ')}${delta(KEY.slice(0, 6))}`))).toBe(`x ${KEY.slice(0, 6)}`);
  });

  // Parallel function calls may interleave their arguments: another item's delta ends no hold.
  it('a delta of another item between two of the first: each item keeps its own text', async () => {
    const body = `${delta('a: sk-pt-Zq8', 'msg_1')}${delta('b: hi', 'msg_2')}${delta('Wm2', 'msg_1')}`;
    const out = await through(body);
    const lines = out.split('\n').filter((l) => l.startsWith('data: '));
    const byItem = (id: string) =>
      lines
        .map((l) => JSON.parse(l.slice(6)) as { item_id: string; delta: string })
        .filter((o) => o.item_id === id)
        .map((o) => o.delta)
        .join('');
    // What msg_1 goes on with is the rest of the key: still masked (a reset mask let it through).
    expect(byItem('msg_1')).toBe('a: [REDACTED]');
    expect(byItem('msg_2')).toBe('b: hi');
  });

  // A model stopped inside the key (max_output_tokens): the closing events carry the whole text, which ended
  // there too; masked as the deltas' end is (it went out as written in them).
  it('the .done and response.completed texts of an answer that stops inside the key end in [REDACTED] too', async () => {
    const text = `Key: ${KEY.slice(0, 12)}`;
    const done = (type: string, extra: Record<string, unknown>) =>
      `event: ${type}\ndata: ${JSON.stringify({ type, item_id: 'msg_1', ...extra })}\n\n`;
    const body =
      delta('Key: ') +
      delta(KEY.slice(0, 12)) +
      done('response.output_text.done', { output_index: 0, content_index: 0, text }) +
      done('response.completed', { response: { output: [{ content: [{ type: 'output_text', text }] }] } });
    const out = await through(body);
    expect(out).not.toContain(KEY.slice(0, 8));
    expect(out.match(/\[REDACTED\]/g)?.length).toBe(3); // the held delta, the .done text, the response's
  });

  it('a long event (base64 audio) in 1 KiB writes, then a short one, comes out whole and in order', async () => {
    const audio = `event: response.audio.delta\ndata: {"type":"response.audio.delta","delta":"${'QUJD'.repeat(50_000)}"}\n\n`;
    const body = audio + delta('after');
    expect(await through(body, 1024)).toBe(body);
  });

  it('an event that never ends within 1 MiB is relayed as it comes, unread', async () => {
    const body = `data: ${'x'.repeat((1 << 20) + 10)}`;
    expect(await through(body, 64 * 1024)).toBe(body);
  });

  it.each([
    ['\n\n', 64 * 1024],
    ['\r\n\r\n', 64 * 1024],
    ['\r\n\r\n', 7], // the blank line split across writes
  ])(
    'after an event past 1 MiB (ended by %j, written %i bytes at a time), the deltas are read again',
    async (sep, size) => {
      const long = `event: response.created\ndata: {"type":"response.created","instructions":"${'x'.repeat((1 << 20) + 10)}"}${sep}`;
      const pieces = KEY.match(/.{1,3}/g)!.map((p, i) => delta(p, 'msg_1', i));
      const out = await through(long + pieces.join('') + delta(' end'), size);
      expect(out.startsWith(long)).toBe(true);
      expect(joined(out.slice(long.length))).toBe('sk-[REDACTED] end'); // at most its first 3 characters
    },
  );
});
