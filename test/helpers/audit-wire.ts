import type { ServerResponse } from 'node:http';
import type { ChatCompletionChunk } from 'openai/resources/chat/completions';

/** Writes `data` in pieces of the given byte sizes (cycling), each its own write with a short pause, then ends. */
export async function writeSplit(
  res: ServerResponse,
  data: string | Buffer,
  sizes: readonly number[],
): Promise<void> {
  const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  let at = 0;
  let i = 0;
  while (at < buf.length) {
    const n = sizes[i++ % sizes.length] ?? 1;
    res.write(buf.subarray(at, at + n));
    at += n;
    await new Promise<void>((r) => setTimeout(r, 1));
  }
  res.end();
}

/** Every chunk of an SDK stream, in order. */
export async function collect(stream: AsyncIterable<ChatCompletionChunk>): Promise<ChatCompletionChunk[]> {
  const out: ChatCompletionChunk[] = [];
  for await (const c of stream) out.push(c);
  return out;
}
